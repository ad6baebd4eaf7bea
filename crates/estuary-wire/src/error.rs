/// Everything that can be wrong with an EST message. The messages are safe to show to a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The body is not valid base64 (after removing whitespace).
    #[error("body is not valid base64: {0}")]
    Base64(#[source] base64::DecodeError),
    /// The body is empty.
    #[error("body is empty")]
    Empty,
    /// The bytes are not a DER PKCS#10 certification request.
    #[error("body is not a PKCS#10 certification request: {0}")]
    NotACsr(#[source] der::Error),
    /// The CSR's self-signature does not verify (no proof of possession).
    #[error("CSR signature does not verify with the CSR's own public key (RFC 2986 proof of possession)")]
    BadCsrSignature,
    /// A signature or key algorithm we do not accept.
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// A signature that does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// Malformed DER in some structure.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// What the decoder said.
        detail: String,
    },
    /// A key type name that is not one of `p256`, `p384`, `rsa2048`, `rsa3072`, `rsa4096`,
    /// `ed25519`.
    #[error("unknown key type {0:?}; accepted: p256, p384, rsa2048, rsa3072, rsa4096, ed25519")]
    UnknownKeyType(String),
    /// A duration without a leading number.
    #[error("{0:?} is not a duration; write a number and a unit, e.g. 30s, 60m, 12h, 1d")]
    NotADuration(String),
    /// A duration without a unit.
    #[error("{text:?} has no unit; write e.g. {n}s, {n}m, {n}h or {n}d")]
    DurationWithoutUnit {
        /// What was written.
        text: String,
        /// The number.
        n: u64,
    },
    /// A duration with a unit we do not know.
    #[error("{text:?}: unknown unit {unit:?}; accepted: s, m/min, h, d/day, w")]
    UnknownDurationUnit {
        /// What was written.
        text: String,
        /// The unit.
        unit: String,
    },
    /// A zero duration.
    #[error("{0:?}: a duration must be greater than zero")]
    ZeroDuration(String),
    /// A duration that overflows.
    #[error("{0:?} is too long")]
    DurationTooLong(String),
}

impl WireError {
    pub(crate) fn malformed(what: &'static str, err: impl std::fmt::Display) -> Self {
        WireError::Malformed {
            what,
            detail: err.to_string(),
        }
    }
}
