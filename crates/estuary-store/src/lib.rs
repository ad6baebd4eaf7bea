//! Estuary's certificate store.
//!
//! [`Store`] is the interface the server uses: record an issued certificate (durably, before
//! the response is released), record audit events, answer revocation and lookup queries.
//! [`SqliteStore`] is the embedded implementation; a PostgreSQL store for several server
//! nodes implements the same trait.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod records;
mod sqlite;

pub use records::{AuditRecord, CertificateFilter, CertificateRecord, Outcome};
pub use sqlite::SqliteStore;

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A certificate with this serial number is already recorded (the caller re-issues with a new serial).
    #[error("serial number {0} already recorded")]
    DuplicateSerial(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// The store's writer has stopped (shutting down).
    #[error("store is shut down")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// The certificate store interface.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records an issued certificate and its audit event in one durable transaction.
    /// Returns only once both are committed; the certificate must not be released before.
    async fn record_issued(
        &self,
        certificate: CertificateRecord,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;

    /// Records an audit event (a denial, for example), durably.
    async fn record_audit(&self, audit: AuditRecord) -> Result<(), StoreError>;

    /// Whether the certificate with this serial (lower-case hex) is revoked; `None` if unknown.
    async fn is_revoked(&self, serial_hex: &str) -> Result<Option<bool>, StoreError>;

    /// A certificate by serial (hex) or SHA-256/SHA-1 thumbprint (hex, any case, colons allowed).
    async fn find_certificate(&self, key: &str) -> Result<Option<CertificateRecord>, StoreError>;

    /// Certificates matching a filter, newest first.
    async fn list_certificates(
        &self,
        filter: &CertificateFilter,
    ) -> Result<Vec<CertificateRecord>, StoreError>;

    /// Audit events since a UNIX time, newest first.
    async fn list_audit(&self, since_unix: i64, limit: u32)
        -> Result<Vec<AuditRecord>, StoreError>;
}
