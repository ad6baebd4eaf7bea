//! EST wire formats, shared by the server, the client and the tests. No I/O here.
//!
//! - [`body`]: the base64 transfer encoding of EST bodies (RFC 7030 §4, RFC 8951 §3).
//! - [`csr`]: decoding and checking PKCS#10 requests (RFC 2986, RFC 7030 §4.2).
//! - [`pkcs7`]: the certs-only CMS SignedData used by `/cacerts` and enrollment responses (RFC 7030 §4.1.3, §4.2.3).
//! - [`signature`]: X.509 signature verification over aws-lc-rs, for CSRs and certificate chains.
//! - [`media`]: content types and the exact checks real clients apply.
//! - [`operation`]: the EST operations and their path segments.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod csr;
pub mod csrattrs;
pub mod duration;
pub mod media;
pub mod multipart;
pub mod name;
pub mod operation;
pub mod pkcs7;
pub mod proxy_protocol;
pub mod signature;

mod error;
pub use error::WireError;

mod key_type;
pub use key_type::KeyType;

#[cfg(test)]
mod mutation_tests;
