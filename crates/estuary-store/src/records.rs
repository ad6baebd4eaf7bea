use serde::Serialize;

/// One issued certificate as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateRecord {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Subject (RFC 4514).
    pub subject: String,
    /// subjectAltName entries.
    pub sans: Vec<String>,
    /// notBefore, UNIX seconds.
    pub not_before: i64,
    /// notAfter, UNIX seconds.
    pub not_after: i64,
    /// SHA-256 thumbprint, upper-case hex.
    pub sha256_thumbprint: String,
    /// SHA-1 thumbprint, upper-case hex.
    pub sha1_thumbprint: String,
    /// Profile issued under.
    pub profile: String,
    /// EST label of the request (empty for the default path).
    pub label: String,
    /// Where this line of certificates began (RFC 7030 §3.3.2 credentials): the request's own
    /// label when a password or a bootstrap certificate authenticated it, else the origin of
    /// the client certificate that did (a renewal keeps its origin). `client-cert:label:NAME`
    /// rules match this, so re-issuing a certificate under another label cannot widen what it
    /// may do.
    pub origin_label: String,
    /// Who asked (`basic:estuser`, `cert:<subject>`, ...).
    pub requester: String,
    /// Key type (`p256`, `rsa2048`, ...).
    pub key_type: String,
    /// When it was issued, UNIX seconds.
    pub issued_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// DER encoding.
    #[serde(skip)]
    pub der: Vec<u8>,
}

/// What happened to a request, as written to the audit trail (the `outcome` column, which
/// stays TEXT: [`Outcome::as_str`] is the stored form, [`Outcome::from_stored`] reads it back).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// A certificate was issued.
    Issued,
    /// The request was refused.
    Denied,
    /// A request from an unauthenticated client was refused (rate-limited summary rows).
    DeniedUnauthenticated,
    /// The request waits for an operator's approval.
    Pending,
    /// An operator approved a pending request.
    Approved,
    /// An operator rejected a pending request.
    Rejected,
    /// A request already answered was sent again and answered the same way.
    Repeated,
    /// A certificate was revoked.
    Revoked,
    /// A stored outcome this version does not know (written by a newer version, say); kept
    /// as it was read.
    Other(String),
}

impl Outcome {
    /// Stored form.
    pub fn as_str(&self) -> &str {
        match self {
            Outcome::Issued => "issued",
            Outcome::Denied => "denied",
            Outcome::DeniedUnauthenticated => "denied-unauthenticated",
            Outcome::Pending => "pending",
            Outcome::Approved => "approved",
            Outcome::Rejected => "rejected",
            Outcome::Repeated => "repeated",
            Outcome::Revoked => "revoked",
            Outcome::Other(s) => s,
        }
    }

    /// Reads the stored form; never fails (unknown text becomes [`Outcome::Other`]).
    pub fn from_stored(s: &str) -> Self {
        match s {
            "issued" => Outcome::Issued,
            "denied" => Outcome::Denied,
            "denied-unauthenticated" => Outcome::DeniedUnauthenticated,
            "pending" => Outcome::Pending,
            "approved" => Outcome::Approved,
            "rejected" => Outcome::Rejected,
            "repeated" => Outcome::Repeated,
            "revoked" => Outcome::Revoked,
            other => Outcome::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// UNIX seconds.
    pub time: i64,
    /// The request id (also in the log line).
    pub request_id: String,
    /// Peer address.
    pub peer: String,
    /// Authenticated identity, or what was claimed.
    pub requester: String,
    /// `basic`, `client-cert`, `bootstrap-cert`, `none`.
    pub auth_method: String,
    /// EST label.
    pub label: String,
    /// EST operation (`simpleenroll`, ...).
    pub operation: String,
    /// Outcome.
    pub outcome: Outcome,
    /// HTTP status sent.
    pub status: u16,
    /// Serial of the issued certificate.
    pub serial: Option<String>,
    /// Why it was denied.
    pub reason: Option<String>,
}

/// A query over issued certificates.
#[derive(Debug, Clone, Default)]
pub struct CertificateFilter {
    /// Only certificates whose notAfter is before this UNIX time (and not yet past `now`, if set).
    pub expiring_before: Option<i64>,
    /// Only those not yet expired at this UNIX time.
    pub valid_at: Option<i64>,
    /// Only those whose subject contains this text (case-insensitive).
    pub subject_contains: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
}

/// The state of an enrollment request waiting for approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    /// Waiting for an operator.
    Pending,
    /// Approved; the certificate is issued when the client asks again.
    Approved,
    /// Rejected, with a reason.
    Rejected,
    /// The certificate was issued.
    Issued,
}

impl RequestStatus {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Rejected => "rejected",
            RequestStatus::Issued => "issued",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => RequestStatus::Pending,
            "approved" => RequestStatus::Approved,
            "rejected" => RequestStatus::Rejected,
            "issued" => RequestStatus::Issued,
            _ => return None,
        })
    }
}

/// A new request waiting for approval.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// SHA-256 of the CSR DER, lower-case hex (the client repeats the same CSR).
    pub csr_sha256: String,
    /// The CSR.
    pub csr: Vec<u8>,
    /// Subject asked for.
    pub subject: String,
    /// EST label.
    pub label: String,
    /// EST operation.
    pub operation: String,
    /// Who asked.
    pub requester: String,
    /// From where.
    pub peer: String,
    /// The peer's address as rate limits key it (IPv4, or an IPv6 /64), for the pending cap.
    pub peer_key: String,
    /// SHA-256 of the CSR's public key (SubjectPublicKeyInfo DER), lower-case hex.
    pub key_sha256: String,
    /// UNIX time.
    pub created_at: i64,
}

/// How many requests are waiting for approval, by the three things that bound them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingCounts {
    /// Made by this identity.
    pub by_requester: u64,
    /// Made from this address.
    pub by_address: u64,
    /// For this public key.
    pub by_key: u64,
}

/// What the server needs to know about one of its certificates presented as a TLS client
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStatus {
    /// Whether it is revoked.
    pub revoked: bool,
    /// The EST label it was issued under (empty for the unlabeled path).
    pub label: String,
    /// Where its line of certificates began (see [`CertificateRecord::origin_label`]).
    pub origin_label: String,
    /// The profile it was issued under.
    pub profile: String,
}

/// A request waiting for approval, or decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentRequest {
    /// Id for `estuary requests approve ID`.
    pub id: i64,
    /// SHA-256 of the CSR.
    pub csr_sha256: String,
    /// The CSR DER.
    #[serde(skip)]
    pub csr: Vec<u8>,
    /// Subject asked for.
    pub subject: String,
    /// EST label.
    pub label: String,
    /// EST operation.
    pub operation: String,
    /// Who asked.
    pub requester: String,
    /// From where.
    pub peer: String,
    /// UNIX time.
    pub created_at: i64,
    /// State.
    pub status: RequestStatus,
    /// When decided.
    pub decided_at: Option<i64>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Why rejected.
    pub reason: Option<String>,
    /// The issued certificate.
    pub serial: Option<String>,
}

/// What `revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationOutcome {
    /// Revoked now.
    Revoked {
        /// Its serial.
        serial: String,
        /// Its subject.
        subject: String,
    },
    /// It was already revoked.
    AlreadyRevoked {
        /// Its serial.
        serial: String,
    },
    /// No such certificate.
    NotFound,
}

/// A revoked certificate, for the CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// Serial, lower-case hex.
    pub serial: String,
    /// UNIX time.
    pub revoked_at: i64,
    /// RFC 5280 reason name, if given.
    pub reason: Option<String>,
}

/// A CRL as recorded in the store, which every server node serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedCrl {
    /// Which CA key signed it (the caller's identifier, see [`crate::Store::newest_crl`]).
    pub issuer: String,
    /// Its CRL number (RFC 5280 §5.2.3).
    pub number: u64,
    /// thisUpdate, UNIX seconds.
    pub this_update: i64,
    /// nextUpdate, UNIX seconds.
    pub next_update: i64,
    /// The store's revocation counter it covers (see [`crate::Store::revocation_version`]).
    pub revocation_version: i64,
    /// DER encoding.
    pub der: Vec<u8>,
}

/// Signs a CRL given its number; returns the DER, thisUpdate and nextUpdate (UNIX seconds),
/// or why it failed. Called by [`crate::Store::publish_crl`] under its lock.
pub type CrlSigner = Box<dyn FnOnce(u64) -> Result<(Vec<u8>, i64, i64), String> + Send + 'static>;
