//! End-to-end tests: the real `estuary` binary on real TLS sockets, real SQLite files, and real
//! third-party clients (openssl, curl, strongSwan pki).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

mod harness;

mod agent;
mod ca;
mod client;
mod errors;
mod hardening;
mod iot_edge;
mod issuance;
mod lifecycle;
mod policy;
mod strongswan;
mod tutorial;
