/// Errors of the CA. `Policy` refusals are meant for the client; the rest are internal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Signing failed (the key backend said no).
    #[error("signing failed: {0}")]
    Signing(String),
    /// Key generation or loading failed.
    #[error("key error: {0}")]
    Key(String),
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
}
