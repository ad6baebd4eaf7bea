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

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A certificate was issued.
    Issued,
    /// The request was refused.
    Denied,
}

impl Outcome {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Issued => "issued",
            Outcome::Denied => "denied",
        }
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
    pub outcome: String,
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
