/// Errors of the CA. `Policy` refusals are meant for the client; the rest are internal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Signing failed (the key backend said no).
    #[error("signing failed: {0}")]
    Signing(String),
    /// A PKCS#11 token or key that cannot be used as asked (no such key, wrong PIN, no
    /// library, a label already taken).
    #[error("PKCS#11: {0}")]
    Token(String),
    /// The token refused the PIN (incorrect, locked or expired). Not worth retrying with the
    /// same PIN: a real HSM locks it after a few failed logins (`estuary serve` exits with
    /// [`PIN_REFUSED_EXIT_CODE`](crate::PIN_REFUSED_EXIT_CODE), which the systemd unit does not
    /// restart).
    #[error("PKCS#11: {0}")]
    PinRefused(String),
    /// The PKCS#11 token does not answer (removed, device error, session lost twice): the
    /// server answers 503, the request may be repeated.
    #[error("the CA key's PKCS#11 token is unavailable: {0}")]
    KeyUnavailable(String),
    /// A PKCS#11 URI that does not parse (RFC 7512).
    #[error(transparent)]
    Pkcs11Uri(#[from] crate::pkcs11::UriError),
    /// Key generation or loading failed.
    #[error("key error: {0}")]
    Key(String),
    /// The key backend (rcgen / aws-lc-rs) refused to make or load a key.
    #[error("key error: {0}")]
    KeyPair(#[source] rcgen::Error),
    /// A key's public key does not decode.
    #[error("key error: public key: {0}")]
    PublicKey(#[source] der::Error),
    /// The key backend failed to sign.
    #[error("signing failed: {0}")]
    SignatureFailed(#[source] rcgen::Error),
    /// A value that cannot go into a certificate or CRL (a serial, a URI).
    #[error("signing failed: {what}: {source}")]
    BadValue {
        /// Which value, as given.
        what: String,
        /// The encoder's error.
        #[source]
        source: der::Error,
    },
    /// A file whose contents are not what they should be, with the error they caused.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<CaError>,
    },
    /// A file whose contents are wrong, with the decoder's or verifier's error.
    #[error("{}: {what}: {source}", path.display())]
    BadFileContents {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        what: String,
        /// The error that says why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A PEM file that does not parse.
    #[error("{}: {source}", path.display())]
    Pem {
        /// The file.
        path: std::path::PathBuf,
        /// The PEM parser's error.
        #[source]
        source: pem::PemError,
    },
    /// Encoding a certificate failed.
    #[error("certificate encoding failed: {0}")]
    Encoding(#[from] der::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A stored CA file is not what it should be.
    #[error("{path}: {detail}")]
    BadFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Wire-format error while reading a certificate.
    #[error(transparent)]
    Wire(#[from] estuary_wire::WireError),
    /// A name in a profile's configuration that is not one of the accepted ones.
    #[error("unknown {what} {name:?}; accepted: {accepted}")]
    UnknownName {
        /// What kind of name (`SAN type`, `key usage`, ...).
        what: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        accepted: &'static str,
    },
    /// A profile's CN pattern is not a valid regular expression.
    #[error("{pattern:?} is not a valid regular expression: {source}")]
    BadPattern {
        /// The pattern as written.
        pattern: String,
        /// The regex compiler's error.
        #[source]
        source: regex_lite::Error,
    },
    /// A checked request's key was replaced by one of another type than the one checked.
    #[error("the key to certify is {given}, but the request was checked for {checked}")]
    KeyTypeChanged {
        /// The key type the profile check saw.
        checked: estuary_wire::KeyType,
        /// The key type given.
        given: estuary_wire::KeyType,
    },
}
