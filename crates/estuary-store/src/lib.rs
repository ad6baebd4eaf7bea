//! Estuary's certificate store.
//!
//! [`Store`] is the interface the server uses: record an issued certificate (durably, before
//! the response is released), record audit events, answer revocation and lookup queries.
//! [`SqliteStore`] is the embedded implementation (one server); [`PostgresStore`] lets several
//! server nodes share one database. [`open`] picks one from a [`DatabaseUrl`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod location;
pub mod migrate;
mod postgres;
mod records;
mod sqlite;
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod test_support;
pub mod thread_policy;

use std::sync::Arc;

pub use location::{DatabaseUrl, PostgresUrl};
pub use postgres::PostgresStore;
pub use records::{
    AuditRecord, CertificateFilter, CertificateRecord, CertificateStatus, EnrollmentRequest,
    NewRequest, Outcome, PendingCounts, RequestStatus, RevocationOutcome, RevokedCertificate,
};
pub use records::{CrlSigner, PublishedCrl};
pub use sqlite::SqliteStore;

/// Whether opening a store may create or upgrade its schema: only `serve` does (a command run
/// beside a running server must not change what it reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// `serve`: create the schema, or upgrade an older one (under a lock, for PostgreSQL).
    CreateOrUpgrade,
    /// Every other command: the schema must exist and be this binary's.
    Existing,
}

/// Opens the store a [`DatabaseUrl`] names.
pub async fn open(url: &DatabaseUrl, mode: OpenMode) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match url {
        DatabaseUrl::Sqlite(path) => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || match mode {
                OpenMode::CreateOrUpgrade => SqliteStore::open(&path),
                OpenMode::Existing => SqliteStore::open_existing(&path),
            })
            .await
            .map_err(|_| StoreError::Closed)??;
            Arc::new(store)
        }
        DatabaseUrl::Postgres(url) => Arc::new(PostgresStore::connect(url, mode).await?),
    })
}

/// Normalizes a serial or thumbprint typed by a person: no colons, spaces or dashes, no `0x`.
fn normalize_hex(key: &str) -> String {
    key.chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect::<String>()
        .trim_start_matches("0x")
        .to_string()
}

/// Now, in UNIX seconds (the stores' time unit).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What PostgreSQL said ("permission denied for sequence audit_id_seq"), not only "db error".
fn postgres_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A certificate with this serial number is already recorded (the caller re-issues with a new serial).
    #[error("serial number {0} already recorded")]
    DuplicateSerial(String),
    /// The database failed. Shared because a failed write batch fails all its jobs with the
    /// same error.
    #[error("database error: {0}")]
    Database(#[source] std::sync::Arc<rusqlite::Error>),
    /// PostgreSQL failed (or could not be reached).
    #[error("database error: {}", postgres_detail(.0))]
    Postgres(#[source] std::sync::Arc<tokio_postgres::Error>),
    /// No connection to PostgreSQL could be had from the pool.
    #[error("database error: {0}")]
    Pool(String),
    /// A `--database` / `[database] url` that cannot be used.
    #[error("database URL: {0}")]
    BadUrl(String),
    /// A PostgreSQL database without Estuary's tables, opened by a command other than `serve`.
    #[error(
        "database error: {0} has no Estuary tables (has `estuary serve` run with this --database?)"
    )]
    NoSchema(String),
    /// Signing the CRL failed (the store recorded nothing, and used no CRL number).
    #[error("CRL signing failed: {0}")]
    CrlSigning(String),
    /// The database was written by a newer version of Estuary.
    #[error("database error: the database has schema version {found}, newer than this binary understands ({supported}); use a newer estuary")]
    SchemaTooNew {
        /// The database's schema version.
        found: i64,
        /// The newest version this binary understands.
        supported: i64,
    },
    /// A command other than `serve` found a database of an older schema (only the server
    /// upgrades it).
    #[error("database error: the database has schema version {found}, older than this binary's ({current}); start `estuary serve` of this version once to upgrade it (other commands never change the schema)")]
    SchemaTooOld {
        /// The database's schema version.
        found: i64,
        /// The version this binary writes.
        current: i64,
    },
    /// The database file to open read-only does not exist.
    #[error("database error: {} does not exist (has the server run with this data directory? A server on PostgreSQL is found through --database, ESTUARY_DATABASE or the config's [database] url)", .0.display())]
    Missing(std::path::PathBuf),
    /// A database file is a symbolic link or something else than a regular file.
    #[error("database error: {} is not a regular file (a symbolic link?): refusing to open the database through it", .0.display())]
    NotARegularFile(std::path::PathBuf),
    /// A database file could not be created or its mode changed.
    #[error("database error: {}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("database error: cannot start writer thread: {0}")]
    WriterThread(#[source] std::io::Error),
    /// The request to complete is no longer approved (another retry issued it first).
    #[error("request {0} is not approved (any more)")]
    RequestNotApproved(i64),
    /// The store's writer has stopped (shutting down).
    #[error("store is shut down")]
    Closed,

    /// A copy between stores that cannot go ahead, or did not give what it should.
    #[error("store copy: {0}")]
    CopyRefused(String),

    /// `serve` on a SQLite store that `estuary store migrate` copied into PostgreSQL.
    #[error("{} was copied into PostgreSQL ({copied}, estuary store migrate): use that database ([database] url in estuary.toml, --database or ESTUARY_DATABASE). What a server or a command changed in this file would be missing there. To use the file as the store again all the same (the PostgreSQL copy abandoned), run with ESTUARY_SERVE_COPIED_STORE=1 (a server started so removes the mark)", path.display())]
    CopiedToPostgres {
        /// The SQLite file.
        path: std::path::PathBuf,
        /// When it was copied (RFC 3339, UTC).
        copied: String,
    },
}

impl StoreError {
    /// Whether the database could not be reached (down, restarting, out of connections): the
    /// request may succeed if repeated later, so the server answers 503 with Retry-After.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Pool(_) | StoreError::Closed => true,
            StoreError::Postgres(e) => {
                let io =
                    std::error::Error::source(e.as_ref()).is_some_and(|s| s.is::<std::io::Error>());
                // Class 08 connection exception; 57P01-03 shutting down or starting up; 57014
                // a statement cancelled by statement_timeout; 53300 too many connections. Other
                // errors (a decoding or protocol error, a constraint) are bugs: 500, not 503.
                let transient = e.code().is_some_and(|code| {
                    let code = code.code();
                    code.starts_with("08")
                        || code.starts_with("57")
                        || code == "53300"
                        || code == "55P03"
                });
                e.is_closed() || io || transient
            }
            _ => false,
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Postgres(std::sync::Arc::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::from(e),
            other => StoreError::Pool(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(std::sync::Arc::new(e))
    }
}

/// The certificate store interface.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records an issued certificate and its audit event in one durable transaction.
    /// Returns only once both are committed; the certificate must not be released before.
    /// When `completes_request` is given, that pending request is marked issued in the same
    /// transaction.
    async fn record_issued(
        &self,
        certificate: CertificateRecord,
        audit: AuditRecord,
        completes_request: Option<i64>,
    ) -> Result<(), StoreError>;

    /// Records an audit event (a denial, for example), durably.
    async fn record_audit(&self, audit: AuditRecord) -> Result<(), StoreError>;

    /// Whether the certificate with this serial (lower-case hex) is revoked; `None` if unknown.
    async fn is_revoked(&self, serial_hex: &str) -> Result<Option<bool>, StoreError>;

    /// Revocation state, label and profile of the certificate with this serial (lower-case
    /// hex); `None` if this server did not issue it.
    async fn certificate_status(
        &self,
        serial_hex: &str,
    ) -> Result<Option<CertificateStatus>, StoreError>;

    /// Deletes audit events older than `before_unix`; returns how many.
    async fn prune_audit(&self, before_unix: i64) -> Result<u64, StoreError>;

    /// A certificate by serial (hex) or SHA-256/SHA-1 thumbprint (hex, any case, colons
    /// allowed), for operators: a thumbprint may be a scan. Request paths use
    /// [`Store::certificate_by_serial`].
    async fn find_certificate(&self, key: &str) -> Result<Option<CertificateRecord>, StoreError>;

    /// A certificate by its serial (lower-case hex, as recorded): one primary-key lookup.
    async fn certificate_by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, StoreError>;

    /// Certificates matching a filter, newest first.
    async fn list_certificates(
        &self,
        filter: &CertificateFilter,
    ) -> Result<Vec<CertificateRecord>, StoreError>;

    /// Audit events since a UNIX time, newest first.
    async fn list_audit(&self, since_unix: i64, limit: u32)
        -> Result<Vec<AuditRecord>, StoreError>;

    /// The request for a CSR (by the SHA-256 of its DER, lower-case hex), if one was made.
    async fn find_request(&self, csr_sha256: &str)
        -> Result<Option<EnrollmentRequest>, StoreError>;

    /// A request by id.
    async fn get_request(&self, id: i64) -> Result<Option<EnrollmentRequest>, StoreError>;

    /// Records a request waiting for approval (RFC 7030 §4.2.3); returns it with its id.
    /// If a request for the same CSR exists, that one is returned.
    async fn create_request(&self, request: NewRequest) -> Result<EnrollmentRequest, StoreError>;

    /// How many requests by `requester` are pending.
    async fn pending_count(&self, requester: &str) -> Result<u64, StoreError>;

    /// How many requests are pending by this requester, from this address key and for this
    /// public key (see [`NewRequest`]).
    async fn pending_counts(
        &self,
        requester: &str,
        peer_key: &str,
        key_sha256: &str,
    ) -> Result<PendingCounts, StoreError>;

    /// Takes an answered request out of the lookup by CSR (it stays listed), so that the same
    /// CSR sent again starts a new request.
    async fn retire_request(&self, id: i64) -> Result<(), StoreError>;

    /// Approves or rejects a pending request; `false` if it is not pending.
    async fn decide_request(
        &self,
        id: i64,
        approve: bool,
        reason: Option<String>,
        by: &str,
    ) -> Result<bool, StoreError>;

    /// Requests, newest first, optionally only those with a status.
    async fn list_requests(
        &self,
        status: Option<RequestStatus>,
    ) -> Result<Vec<EnrollmentRequest>, StoreError>;

    /// Revokes a certificate by serial or thumbprint, and records the audit event.
    async fn revoke(
        &self,
        key: &str,
        reason: Option<String>,
        audit: AuditRecord,
    ) -> Result<RevocationOutcome, StoreError>;

    /// Every revoked certificate that has not expired yet (for the CRL).
    async fn revoked(&self) -> Result<Vec<RevokedCertificate>, StoreError>;

    /// A counter that changes whenever the set of revoked certificates changes.
    async fn revocation_version(&self) -> Result<i64, StoreError>;

    /// The newest CRL any server node recorded with [`Store::publish_crl`] for this issuer
    /// (an identifier of the CA key, so that a CRL of a replaced CA is never served), if its
    /// number is above `newer_than` (so that a node polling for news transfers no CRL when
    /// there is none).
    async fn newest_crl(
        &self,
        issuer: &str,
        newer_than: u64,
    ) -> Result<Option<PublishedCrl>, StoreError>;

    /// Records the next CRL of `issuer`, one signer at a time across every server sharing this
    /// store (a write lock in SQLite, an advisory lock in PostgreSQL). Under the lock: if the
    /// issuer's newest recorded CRL already covers `revocation_version` and was issued at or after
    /// `fresh_since` (UNIX seconds), another node has just signed it: that one is returned and
    /// `sign` is not called. Otherwise `sign` gets the next CRL number (RFC 5280 §5.2.3: one
    /// increasing sequence for the whole store), and what it signs is recorded with it. When
    /// `sign` fails, nothing is recorded and the number is not used up.
    async fn publish_crl(
        &self,
        issuer: &str,
        revocation_version: i64,
        fresh_since: i64,
        sign: CrlSigner,
    ) -> Result<PublishedCrl, StoreError>;

    /// Whether the store answers (for /readyz).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Binds the store to the CA key whose id is `key_id` (8 bytes of a hash of its public key,
    /// as the server computes it): the first call
    /// records it, and every call returns the id recorded, which differs from `key_id` when the
    /// store holds another CA's certificates (a node set up with another CA, on a shared
    /// database). With `replace`, `key_id` takes the place of what was recorded (a CA replaced
    /// on purpose).
    async fn bind_ca_key(&self, key_id: i64, replace: bool) -> Result<i64, StoreError>;

    /// The CA key id [`Store::bind_ca_key`] recorded, if any, without recording one
    /// (`estuary config check`).
    async fn recorded_ca_key(&self) -> Result<Option<i64>, StoreError>;
}
