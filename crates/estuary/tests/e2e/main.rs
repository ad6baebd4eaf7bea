//! End-to-end tests: the real `estuary` binary on real TLS sockets, real SQLite files, and real
//! third-party clients (openssl, curl, strongSwan pki, Bouncy Castle).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

mod harness;

pub(crate) mod agent;
mod bench;
mod bouncycastle;
mod ca;
mod chain;
mod client;
mod cluster;
mod errors;
mod hardening;
pub(crate) mod hsm;
mod iot_edge;
mod issuance;
mod libest;
mod lifecycle;
mod operator;
mod policy;
mod security;
mod strongswan;
mod tutorial;
