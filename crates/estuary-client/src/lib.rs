//! Estuary's device side.
//!
//! - [`EstClient`]: one-shot EST operations against any RFC 7030 server (`cacerts`,
//!   `simpleenroll`, `simplereenroll`, `csrattrs`, `serverkeygen`).
//! - [`csr`]: building PKCS#10 requests (subject and SAN byte for byte, for re-enrollment).
//! - [`files`]: certificates and keys on disk, written atomically, keys 0600.
//! - [`agent`]: the IoT Edge certificate lifecycle (`/etc/aziot/config.toml`): enroll, renew on
//!   schedule, rotate keys, fall back to the bootstrap certificate.
//! - [`check`]: `estuary check`, the EST part of `iotedge check`.
//! - [`upstream`]: a registration authority's client towards its upstream EST server.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod check;
pub mod csr;
pub mod files;
mod http;
mod tls;
pub mod upstream;
mod url;

pub use http::{
    pending_instructions, ClientError, EnrollOutcome, EstClient, EstClientBuilder,
    ServerKeyGenResult, APPROVAL_REQUEST_HEADER,
};
pub use upstream::{
    ForwardOutcome, Forwarded, Provisioned, RaIdentity, UpstreamClient, UpstreamConfig,
    UpstreamCrl, UpstreamCrlCache, UpstreamError,
};
pub use url::EstUrl;
