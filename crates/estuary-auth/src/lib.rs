//! Request authentication for Estuary.
//!
//! Turns what a request carries (an `Authorization: Basic` header, the TLS client certificate
//! chain) into a typed [`Requester`], or says why not. No I/O: revocation is checked by the
//! caller against the store, because it must be current on every request.
//!
//! - [`basic`]: users with argon2id password hashes (RFC 7617 Basic, RFC 7030 §3.2.3).
//! - [`certs`]: client certificates issued by this CA, and bootstrap trust anchors
//!   (RFC 7030 §3.3.2).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod basic;
pub mod certs;
mod error;

pub use error::{AuthError, AuthFailure};

pub use basic::{hash_password, parse_basic_authorization, BasicUsers};
pub use certs::{
    common_names, BootstrapCrl, CertAuthFailure, ClientCertVerifier, VerifiedClientCert,
};

/// Who made a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// A Basic-auth user from the config.
    BasicUser {
        /// User name.
        name: String,
    },
    /// A client certificate issued by this CA.
    ClientCert(VerifiedClientCert),
    /// A client certificate chaining to a configured bootstrap trust anchor.
    BootstrapCert(VerifiedClientCert),
    /// A registration authority (RFC 7030 §3.7): a certificate issued by this CA with the
    /// extended key usage id-kp-cmcRA (RFC 6402), named by its CN. It forwards requests for
    /// other subjects; the subjects it may ask for are the server's rule for that RA.
    RegistrationAuthority {
        /// The CN of its certificate.
        name: String,
        /// Its certificate.
        certificate: VerifiedClientCert,
    },
}

impl Requester {
    /// The method, as logged and audited: `basic`, `client-cert`, `bootstrap-cert`, `ra-cert`.
    pub fn method(&self) -> &'static str {
        match self {
            Requester::BasicUser { .. } => "basic",
            Requester::ClientCert(_) => "client-cert",
            Requester::BootstrapCert(_) => "bootstrap-cert",
            Requester::RegistrationAuthority { .. } => "ra-cert",
        }
    }

    /// A short identity for logs, the audit trail and the store (`basic:estuser`, `cert:CN=dev1`).
    pub fn identity(&self) -> String {
        match self {
            Requester::BasicUser { name } => format!("basic:{name}"),
            Requester::ClientCert(c) => format!("cert:{}", c.subject),
            // The CA's name too: two manufacturers may issue the same subject.
            Requester::BootstrapCert(c) => format!("bootstrap:{}:{}", c.anchor, c.subject),
            Requester::RegistrationAuthority { name, .. } => format!("ra:{name}"),
        }
    }
}
