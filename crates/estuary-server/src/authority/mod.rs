//! The authority behind the EST endpoints: who turns an admitted request into a certificate.
//!
//! The HTTP layer ([`crate::est`]) decodes a request, authenticates it
//! ([`crate::authenticate`]), applies the label's rules at the layer that sees the device
//! ([`crate::admission`]), and hands the result to an [`Authority`]:
//!
//! - [`LocalAuthority`]: this server's own CA. Profile check, manual approval, signing, the
//!   durable record and the audit trail.
//! - [`UpstreamAuthority`]: a registration authority (RFC 7030 §3.7) with no CA of its own. It
//!   forwards the request to the EST server above it with its RA certificate, keeps an
//!   inventory and audit trail of what went through it, and serves the upstream's CA
//!   certificates and CRL from a cache.
//!
//! A new kind of authority (an external CA, a signing service) implements [`Authority`].

pub mod local;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use estuary_auth::Requester;
use estuary_ca::FileKeySigner;
use estuary_store::CertificateStatus;
use estuary_wire::csr::VerifiedCsr;

use crate::config::{LabelPolicy, Settings};
use crate::error::{EstError, ServerError};
use crate::est::Operation;

pub use local::LocalAuthority;
pub use upstream::UpstreamAuthority;

/// An enrollment that the label's rules admitted: who asks, under which label, for what.
#[derive(Debug)]
pub struct EnrollRequest<'a> {
    /// The identity the request is made as (chosen by [`crate::admission`]).
    pub requester: &'a Requester,
    /// When a registration authority forwards the request: who asked it (for the audit
    /// trail only; never used to authorize).
    pub on_behalf_of: Option<String>,
    /// The label's name (`""` for the default label).
    pub label_name: &'a str,
    /// The label's policy.
    pub label: &'a LabelPolicy,
    /// The serial (lower-case hex) of the certificate this request renews: the client
    /// certificate of a renewal, or what a registration authority says it forwards a renewal
    /// of. The authority refuses the renewal of a certificate it has revoked.
    pub renewing_serial: Option<String>,
    /// Where the line of a renewed certificate began (see [`crate::admission::Admitted`]).
    pub origin_label: Option<String>,
    /// `simpleenroll`, `simplereenroll` or `serverkeygen`.
    pub operation: Operation,
    /// The verified CSR.
    pub csr: VerifiedCsr,
    /// The request body as received (kept with a request waiting for approval).
    pub body: &'a [u8],
    /// For the audit trail.
    pub context: RequestContext<'a>,
}

/// Who sent a request, as the audit trail records it.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The request id (log line, `X-Request-Id`).
    pub request_id: &'a str,
    /// The peer address.
    pub peer: SocketAddr,
    /// How the requester authenticated (`basic`, `client-cert`, ...).
    pub auth_method: &'a str,
}

/// What an authority did with an enrollment.
#[derive(Debug)]
pub enum Enrollment {
    /// Issued now: the certificate (DER) and, for `serverkeygen`, the key made for it.
    Issued {
        /// The certificate (DER, as signed).
        certificate: Vec<u8>,
        /// Its serial number, lower-case hex.
        serial: String,
        /// The key made by the server (RFC 7030 §4.4), sent once and never kept.
        server_key: Option<Box<FileKeySigner>>,
    },
    /// Issued earlier for this same request (a client that missed the answer asks again).
    Repeated {
        /// The certificate.
        certificate: Vec<u8>,
        /// Its serial number.
        serial: String,
    },
    /// Waiting for a decision (RFC 7030 §4.2.3: 202 with `Retry-After`).
    Pending {
        /// The waiting request's id at this server, when it keeps one.
        id: Option<i64>,
        /// When to ask again.
        retry_after: Duration,
    },
}

/// What an authority knows of a client certificate that chains to its CA.
#[derive(Debug, Clone)]
pub enum Standing {
    /// Revoked: refused.
    Revoked,
    /// Not issued through this server, and this server must know every certificate it
    /// accepts (a CA's own store): refused.
    Unknown,
    /// Good. With its label, profile and origin when this server recorded it.
    Good(Option<CertificateStatus>),
}

/// The seam between the EST endpoints and whoever issues certificates.
#[async_trait::async_trait]
pub trait Authority: Send + Sync + std::fmt::Debug {
    /// The `/cacerts` body: a certs-only PKCS#7 (DER) of the CA chain (RFC 7030 §4.1.3).
    fn cacerts(&self) -> Bytes;

    /// The CA certificates (DER, issuing CA first) that client certificates chain to.
    fn chain_der(&self) -> Vec<Vec<u8>>;

    /// Enrolls an admitted request. A refusal is an [`EstError`] (403, 503, ...).
    async fn enroll(&self, request: EnrollRequest<'_>) -> Result<Enrollment, EstError>;

    /// The standing of a client certificate (lower-case hex serial) that chains to
    /// [`Authority::chain_der`].
    async fn standing(&self, serial_hex: &str) -> Result<Standing, EstError>;

    /// The current CRL (DER), served at `/crl`.
    fn crl(&self) -> Option<Bytes>;

    /// Whether the CRL is current (for `/readyz`).
    fn crl_is_fresh(&self) -> bool;

    /// Whether certificates are issued here or forwarded (for the logs and `/readyz`).
    fn describe(&self) -> String;

    /// Prometheus lines of the authority's own state (a registration authority's upstream).
    fn render_metrics(&self, _out: &mut String) {}

    /// What makes this server unable to serve now, beyond the store and the CRL (for
    /// `/readyz`): a registration authority whose own certificates have expired.
    fn readiness_problems(&self) -> Vec<String> {
        Vec::new()
    }

    /// Takes the reloadable part of new settings (validity, CRL URL, approval delay).
    fn reconfigure(&self, settings: &Settings) -> Result<(), ServerError>;

    /// Work before the server may answer (the first CRL).
    async fn start(&self) -> Result<(), EstError>;

    /// Background work for as long as the server runs (CRL refresh, cache refresh, renewal
    /// of the authority's own certificates). Never returns.
    async fn run(self: std::sync::Arc<Self>);
}
