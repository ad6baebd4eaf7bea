//! The PostgreSQL store: one database shared by several server nodes.
//!
//! Every node keeps a small pool of connections. An issued certificate, its thumbprints, its
//! audit event and the approval it completes are one transaction, committed with
//! `synchronous_commit = on` before the certificate is released; PostgreSQL's WAL writer
//! flushes the commits of concurrent requests together (group commit), so no batching of our
//! own is needed. Nothing another node needs is kept in one node's memory: approvals,
//! revocations and CRLs are rows, and the CRL is signed by one node at a time under an
//! advisory lock.

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::location::PostgresUrl;
use crate::{
    normalize_hex, unix_now, AuditRecord, CertificateFilter, CertificateRecord, CertificateStatus,
    CrlSigner, EnrollmentRequest, NewRequest, OpenMode, Outcome, PendingCounts, PublishedCrl,
    RequestStatus, RevocationOutcome, RevokedCertificate, Store, StoreError,
};

/// Connections per node. Enough for the writes in flight under load (PostgreSQL flushes
/// their commits together) without taking a large share of `max_connections` (100 by default)
/// when several nodes share the database.
const POOL_SIZE: usize = 16;

/// The longest one store operation may take (enough for a CRL signed by a slow HSM).
const OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Publishing a CRL may wait for another node's signer (up to `lock_timeout`) and then sign
/// (an HSM); it gets more time than one statement.
const CRL_PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Settings of every pooled connection (PostgreSQL's own deadlines, below ours): a statement
/// or a lock wait never outlasts [`OPERATION_TIMEOUT`], and a session left in a transaction by a
/// node that died is ended.
const SESSION_OPTIONS: &str =
    "-c statement_timeout=10s -c lock_timeout=10s -c idle_in_transaction_session_timeout=60s";

/// Advisory lock keys (`pg_advisory_lock`): schema changes, and the CRL signer.
const SCHEMA_LOCK: i64 = 0x4553_5430_0001;
const CRL_LOCK: i64 = 0x4553_5430_0002;

/// How many recorded CRLs are kept (the newest is served; older ones for the record).
const CRLS_KEPT: i64 = 16;

/// Versioned schema changes, applied in order at `serve` start under [`SCHEMA_LOCK`], each in
/// its own transaction with the version it brings the database to.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE certificates (
    serial            TEXT PRIMARY KEY,
    subject           TEXT NOT NULL,
    sans              TEXT NOT NULL,
    not_before        BIGINT NOT NULL,
    not_after         BIGINT NOT NULL,
    sha256            TEXT NOT NULL,
    sha1              TEXT NOT NULL,
    profile           TEXT NOT NULL,
    label             TEXT NOT NULL,
    origin_label      TEXT NOT NULL,
    requester         TEXT NOT NULL,
    key_type          TEXT NOT NULL,
    issued_at         BIGINT NOT NULL,
    revoked_at        BIGINT,
    revocation_reason TEXT,
    der               BYTEA NOT NULL
);
CREATE INDEX certificates_not_after ON certificates (not_after);
CREATE INDEX certificates_issued_at ON certificates (issued_at);
CREATE INDEX certificates_revoked ON certificates (revoked_at) WHERE revoked_at IS NOT NULL;
-- As in SQLite: thumbprints (random keys) have no index on the write path; an operator's
-- lookup scans these narrow rows.
CREATE TABLE thumbprints (
    sha256_head TEXT NOT NULL,
    sha1_head   TEXT NOT NULL,
    serial      TEXT NOT NULL
);
CREATE TABLE audit (
    id          BIGSERIAL PRIMARY KEY,
    time        BIGINT NOT NULL,
    request_id  TEXT NOT NULL,
    peer        TEXT NOT NULL,
    requester   TEXT NOT NULL,
    auth_method TEXT NOT NULL,
    label       TEXT NOT NULL,
    operation   TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    status      INTEGER NOT NULL,
    serial      TEXT,
    reason      TEXT
);
CREATE INDEX audit_time ON audit (time);
CREATE TABLE requests (
    id          BIGSERIAL PRIMARY KEY,
    csr_sha256  TEXT NOT NULL UNIQUE,
    csr         BYTEA NOT NULL,
    subject     TEXT NOT NULL,
    label       TEXT NOT NULL,
    operation   TEXT NOT NULL,
    requester   TEXT NOT NULL,
    peer        TEXT NOT NULL,
    peer_key    TEXT NOT NULL,
    key_sha256  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    status      TEXT NOT NULL,
    decided_at  BIGINT,
    decided_by  TEXT,
    reason      TEXT,
    serial      TEXT
);
CREATE INDEX requests_status ON requests (status, requester);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE crls (
    number             BIGINT PRIMARY KEY,
    issuer             TEXT NOT NULL,
    this_update        BIGINT NOT NULL,
    next_update        BIGINT NOT NULL,
    revocation_version BIGINT NOT NULL,
    der                BYTEA NOT NULL
);
"#,
)];

/// The schema version this binary writes.
const SCHEMA_VERSION: i32 = 1;

/// PostgreSQL-backed [`Store`].
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    redacted_url: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.redacted_url)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, checks the schema (creating or upgrading it under an advisory lock when
    /// `mode` allows), and keeps a pool of connections. An unreachable database or a wrong
    /// password is an error here, at start.
    pub async fn connect(url: &PostgresUrl, mode: OpenMode) -> Result<Self, StoreError> {
        let tls = url.tls_connector()?;
        // Durable before the response, whatever the database's default: a commit returns
        // only once it is flushed to disk (PostgreSQL still flushes concurrent commits together).
        let mut config = url.config.clone();
        let options = match config.get_options() {
            Some(given) => format!("{given} -c synchronous_commit=on"),
            None => "-c synchronous_commit=on".to_string(),
        };
        config.options(&options);
        // A peer that vanished without closing (a power cut, a dropped route) is noticed by
        // the kernel instead of after hours.
        config.keepalives_idle(std::time::Duration::from_secs(30));
        config.tcp_user_timeout(std::time::Duration::from_secs(20));
        let unreachable = |e: tokio_postgres::Error| {
            StoreError::Pool(format!(
                "cannot connect to {}: {}",
                url.redacted(),
                source_chain(&e)
            ))
        };
        // Schema work on a connection of its own: the session's advisory lock goes with it.
        let (mut client, connection) = config.connect(tls.clone()).await.map_err(unreachable)?;
        let connection = tokio::spawn(connection);
        let outcome = create_or_upgrade(&mut client, mode, url.redacted()).await;
        drop(client);
        let _ = connection.await;
        outcome?;

        let pooled = format!("{options} {SESSION_OPTIONS}");
        config.options(&pooled);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(std::time::Duration::from_secs(30)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        Ok(PostgresStore {
            pool,
            redacted_url: url.redacted().to_string(),
        })
    }

    /// Runs one store operation with a deadline: a database that stops answering (a hung
    /// server, a network that drops packets) must not hold requests for ever, nor leave the node
    /// looking healthy. On timeout the caller gets [`StoreError::Pool`] (503 for devices), and
    /// every idle connection is closed, so that the next operation opens a new one rather than
    /// reuse the one that hung.
    async fn timed<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.timed_for(OPERATION_TIMEOUT, operation).await
    }

    /// [`Self::timed`] with another deadline.
    async fn timed_for<T>(
        &self,
        deadline: std::time::Duration,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // A statement of its own: the operation (and the connection it holds) is dropped, back
        // into the pool, before the pool is emptied.
        let outcome = tokio::time::timeout(deadline, operation).await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                self.pool.retain(|_, _| false);
                Err(StoreError::Pool(format!(
                    "{}: no answer within {} s",
                    self.redacted_url,
                    deadline.as_secs()
                )))
            }
        }
    }

    /// A pooled connection (store operations, and a copy into this database: see `migrate`).
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Pool(format!(
                "cannot connect to {}: {}",
                self.redacted_url,
                source_chain(&e)
            )),
            other => StoreError::Pool(format!("{}: {other}", self.redacted_url)),
        })
    }

    /// Sets the recorded schema version (tests of the refusal of a newer schema).
    #[cfg(feature = "test-support")]
    pub async fn set_schema_version_for_tests(&self, version: i32) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("UPDATE estuary_schema SET version = $1", &[&version])
            .await?;
        Ok(())
    }

    /// Whether this node's connections use TLS (`pg_stat_ssl`).
    #[cfg(feature = "test-support")]
    pub async fn connection_is_encrypted_for_tests(&self) -> Result<bool, StoreError> {
        Ok(self
            .client()
            .await?
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?
            .try_get(0)?)
    }

    /// A setting as this node's connections see it (`current_setting`).
    #[cfg(feature = "test-support")]
    pub async fn setting_for_tests(&self, name: &str) -> Result<String, StoreError> {
        Ok(self
            .client()
            .await?
            .query_one("SELECT current_setting($1)", &[&name])
            .await?
            .try_get(0)?)
    }
}

/// The error and its causes on one line ("db error: FATAL: password authentication failed").
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

async fn create_or_upgrade(
    client: &mut tokio_postgres::Client,
    mode: OpenMode,
    url: &str,
) -> Result<(), StoreError> {
    // Two nodes started together: one migrates, the other waits and then finds it done. A
    // command that only reads the schema's version takes no lock (one stuck session must not
    // block every `certs` command).
    if mode == OpenMode::CreateOrUpgrade {
        // Not for ever: a session stuck holding the lock makes the start fail, and say so.
        client.batch_execute("SET lock_timeout = '60s'").await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        client.batch_execute("SET lock_timeout = 0").await?;
    }
    let exists: bool = client
        .query_one("SELECT to_regclass('estuary_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    let version: i32 = if exists {
        client
            .query_opt("SELECT version FROM estuary_schema", &[])
            .await?
            .map_or(0, |row| row.get(0))
    } else {
        0
    };
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version.into(),
            supported: SCHEMA_VERSION.into(),
        });
    }
    if mode == OpenMode::Existing {
        return match version {
            0 => Err(StoreError::NoSchema(url.to_string())),
            v if v < SCHEMA_VERSION => Err(StoreError::SchemaTooOld {
                found: v.into(),
                current: SCHEMA_VERSION.into(),
            }),
            _ => Ok(()),
        };
    }
    for (target, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > version) {
        tracing::info!(
            from = version,
            to = target,
            "upgrading the PostgreSQL schema"
        );
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS estuary_schema (version INTEGER NOT NULL); DELETE FROM estuary_schema",
        )
        .await?;
        tx.execute(
            "INSERT INTO estuary_schema (version) VALUES ($1)",
            &[target],
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// An issued certificate, its thumbprint row and its audit event: one statement (data-modifying
/// CTEs run once, all or nothing).
const RECORD_ISSUED: &str = "WITH certificate AS (
    INSERT INTO certificates (serial, subject, sans, not_before, not_after, sha256, sha1, profile, label, requester, key_type, issued_at, revoked_at, der, origin_label)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
    RETURNING serial
), thumbprint AS (
    INSERT INTO thumbprints (sha256_head, sha1_head, serial)
    SELECT substr($6, 1, 16), substr($7, 1, 16), serial FROM certificate
)
INSERT INTO audit (time, request_id, peer, requester, auth_method, label, operation, outcome, status, serial, reason)
SELECT $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26 FROM certificate";

const CERT_COLUMNS: &str = "serial, subject, sans, not_before, not_after, sha256, sha1, profile, label, requester, key_type, issued_at, revoked_at, der, origin_label";

fn certificate_from_row(row: &Row) -> Result<CertificateRecord, tokio_postgres::Error> {
    let sans: String = row.try_get(2)?;
    Ok(CertificateRecord {
        serial: row.try_get(0)?,
        subject: row.try_get(1)?,
        sans: sans
            .lines()
            .map(str::to_string)
            .filter(|s| !s.is_empty())
            .collect(),
        not_before: row.try_get(3)?,
        not_after: row.try_get(4)?,
        sha256_thumbprint: row.try_get(5)?,
        sha1_thumbprint: row.try_get(6)?,
        profile: row.try_get(7)?,
        label: row.try_get(8)?,
        requester: row.try_get(9)?,
        key_type: row.try_get(10)?,
        issued_at: row.try_get(11)?,
        revoked_at: row.try_get(12)?,
        der: row.try_get(13)?,
        origin_label: row.try_get(14)?,
    })
}

const REQUEST_COLUMNS: &str = "id, csr_sha256, csr, subject, label, operation, requester, peer, created_at, status, decided_at, decided_by, reason, serial";

fn request_from_row(row: &Row) -> Result<EnrollmentRequest, tokio_postgres::Error> {
    let status: String = row.try_get(9)?;
    Ok(EnrollmentRequest {
        id: row.try_get(0)?,
        csr_sha256: row.try_get(1)?,
        csr: row.try_get(2)?,
        subject: row.try_get(3)?,
        label: row.try_get(4)?,
        operation: row.try_get(5)?,
        requester: row.try_get(6)?,
        peer: row.try_get(7)?,
        created_at: row.try_get(8)?,
        status: RequestStatus::parse(&status).unwrap_or(RequestStatus::Pending),
        decided_at: row.try_get(10)?,
        decided_by: row.try_get(11)?,
        reason: row.try_get(12)?,
        serial: row.try_get(13)?,
    })
}

fn crl_from_row(row: &Row) -> Result<PublishedCrl, tokio_postgres::Error> {
    Ok(PublishedCrl {
        number: row.try_get::<_, i64>(0)?.max(0) as u64,
        this_update: row.try_get(1)?,
        next_update: row.try_get(2)?,
        revocation_version: row.try_get(3)?,
        der: row.try_get(4)?,
        issuer: row.try_get(5)?,
    })
}

async fn insert_audit(
    client: &impl GenericClient,
    a: &AuditRecord,
) -> Result<(), tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "INSERT INTO audit (time, request_id, peer, requester, auth_method, label, operation, outcome, status, serial, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &a.time,
                &a.request_id,
                &a.peer,
                &a.requester,
                &a.auth_method,
                &a.label,
                &a.operation,
                &a.outcome.as_str(),
                &i32::from(a.status),
                &a.serial,
                &a.reason,
            ],
        )
        .await?;
    Ok(())
}

/// The serial of the certificate named by serial or thumbprint (see the SQLite store's
/// `serial_for_key`: the same narrow-table scan for thumbprints).
async fn serial_for_key(
    client: &impl GenericClient,
    hex: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let lookup = |sql: &'static str, key: String| async move {
        let statement = client.prepare_cached(sql).await?;
        Ok::<_, tokio_postgres::Error>(
            client
                .query_opt(&statement, &[&key])
                .await?
                .map(|row| row.get::<_, String>(0)),
        )
    };
    if let Some(serial) = lookup(
        "SELECT serial FROM certificates WHERE serial = $1",
        hex.to_ascii_lowercase(),
    )
    .await?
    {
        return Ok(Some(serial));
    }
    let thumbprint = hex.to_ascii_uppercase();
    match hex.len() {
        64 => {
            lookup(
                "SELECT serial FROM certificates WHERE sha256 = $1 AND serial IN
                 (SELECT serial FROM thumbprints WHERE sha256_head = substr($1, 1, 16))",
                thumbprint,
            )
            .await
        }
        40 => {
            lookup(
                "SELECT serial FROM certificates WHERE sha1 = $1 AND serial IN
                 (SELECT serial FROM thumbprints WHERE sha1_head = substr($1, 1, 16))",
                thumbprint,
            )
            .await
        }
        _ => Ok(None),
    }
}

async fn certificate_with_serial(
    client: &impl GenericClient,
    serial: &str,
) -> Result<Option<CertificateRecord>, StoreError> {
    let sql = format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1");
    let statement = client.prepare_cached(&sql).await?;
    Ok(client
        .query_opt(&statement, &[&serial])
        .await?
        .map(|row| certificate_from_row(&row))
        .transpose()?)
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn record_issued(
        &self,
        c: CertificateRecord,
        audit: AuditRecord,
        completes_request: Option<i64>,
    ) -> Result<(), StoreError> {
        self.timed(async move {
            let mut client = self.client().await?;
            let sans = c.sans.join("\n");
            let status = i32::from(audit.status);
            let outcome = audit.outcome.as_str();
            let params: [&(dyn ToSql + Sync); 26] = [
                &c.serial,
                &c.subject,
                &sans,
                &c.not_before,
                &c.not_after,
                &c.sha256_thumbprint,
                &c.sha1_thumbprint,
                &c.profile,
                &c.label,
                &c.requester,
                &c.key_type,
                &c.issued_at,
                &c.revoked_at,
                &c.der,
                &c.origin_label,
                &audit.time,
                &audit.request_id,
                &audit.peer,
                &audit.requester,
                &audit.auth_method,
                &audit.label,
                &audit.operation,
                &outcome,
                &status,
                &audit.serial,
                &audit.reason,
            ];
            let duplicate = |e: tokio_postgres::Error| {
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    StoreError::DuplicateSerial(c.serial.clone())
                } else {
                    StoreError::from(e)
                }
            };
            let Some(id) = completes_request else {
                // The common case: one statement, so one round trip and its own transaction,
                // committed (synchronous_commit = on, see `connect`) before it returns.
                let statement = client.prepare_cached(RECORD_ISSUED).await?;
                client
                    .execute(&statement, &params)
                    .await
                    .map_err(duplicate)?;
                return Ok(());
            };
            let tx = client.transaction().await?;
            let statement = tx.prepare_cached(RECORD_ISSUED).await?;
            tx.execute(&statement, &params).await.map_err(duplicate)?;
            // Row-locked: of two nodes issuing for the same approval, the second finds it already
            // issued once the first commits.
            let changed = tx
                .execute(
                    "UPDATE requests SET status = 'issued', serial = $1 WHERE id = $2 AND status = 'approved'",
                    &[&c.serial, &id],
                )
                .await?;
            if changed != 1 {
                return Err(StoreError::RequestNotApproved(id));
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn record_audit(&self, audit: AuditRecord) -> Result<(), StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            insert_audit(&client, &audit).await?;
            Ok(())
        })
        .await
    }

    async fn is_revoked(&self, serial_hex: &str) -> Result<Option<bool>, StoreError> {
        self.timed(async move {
            let serial = normalize_hex(serial_hex).to_ascii_lowercase();
            let client = self.client().await?;
            let statement = client
                .prepare_cached("SELECT revoked_at IS NOT NULL FROM certificates WHERE serial = $1")
                .await?;
            Ok(client
                .query_opt(&statement, &[&serial])
                .await?
                .map(|row| row.get::<_, bool>(0)))
        })
        .await
    }

    async fn certificate_status(
        &self,
        serial_hex: &str,
    ) -> Result<Option<CertificateStatus>, StoreError> {
        self.timed(async move {
            let serial = normalize_hex(serial_hex).to_ascii_lowercase();
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT revoked_at IS NOT NULL, label, profile, origin_label FROM certificates WHERE serial = $1",
                )
                .await?;
            let Some(row) = client.query_opt(&statement, &[&serial]).await? else {
                return Ok(None);
            };
            Ok(Some(CertificateStatus {
                revoked: row.try_get(0)?,
                label: row.try_get(1)?,
                profile: row.try_get(2)?,
                origin_label: row.try_get(3)?,
            }))
        })
        .await
    }

    async fn prune_audit(&self, before_unix: i64) -> Result<u64, StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            let mut total = 0u64;
            loop {
                // In slices: no long transaction holds up the nodes' writes.
                let n = client
                    .execute(
                        "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE time < $1 LIMIT 10000)",
                        &[&before_unix],
                    )
                    .await?;
                total += n;
                if n < 10_000 {
                    return Ok(total);
                }
            }
        })
        .await
    }

    async fn find_certificate(&self, key: &str) -> Result<Option<CertificateRecord>, StoreError> {
        self.timed(async move {
            let hex = normalize_hex(key);
            let client = self.client().await?;
            let Some(serial) = serial_for_key(&client, &hex).await? else {
                return Ok(None);
            };
            certificate_with_serial(&client, &serial).await
        })
        .await
    }

    async fn certificate_by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            certificate_with_serial(&client, &serial.to_ascii_lowercase()).await
        })
        .await
    }

    async fn list_certificates(
        &self,
        filter: &CertificateFilter,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        self.timed(async move {
            let mut sql = format!("SELECT {CERT_COLUMNS} FROM certificates WHERE TRUE");
            let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
            if let Some(before) = filter.expiring_before {
                args.push(Box::new(before));
                sql.push_str(&format!(" AND not_after <= ${}", args.len()));
            }
            if let Some(at) = filter.valid_at {
                args.push(Box::new(at));
                sql.push_str(&format!(" AND not_after > ${}", args.len()));
            }
            if let Some(text) = &filter.subject_contains {
                args.push(Box::new(text.clone()));
                sql.push_str(&format!(
                    " AND strpos(lower(subject), lower(${})) > 0",
                    args.len()
                ));
            }
            args.push(Box::new(i64::from(filter.limit.unwrap_or(u32::MAX))));
            if filter.expiring_before.is_some() {
                sql.push_str(&format!(
                    " ORDER BY not_after, serial LIMIT ${}",
                    args.len()
                ));
            } else {
                sql.push_str(&format!(
                    " ORDER BY issued_at DESC, serial DESC LIMIT ${}",
                    args.len()
                ));
            }
            let client = self.client().await?;
            let params: Vec<&(dyn ToSql + Sync)> = args
                .iter()
                .map(|a| a.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = client.query(&sql, &params).await?;
            Ok(rows
                .iter()
                .map(certificate_from_row)
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn list_audit(
        &self,
        since_unix: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT time, request_id, peer, requester, auth_method, label, operation, outcome, status, serial, reason
                     FROM audit WHERE time >= $1 ORDER BY id DESC LIMIT $2",
                    &[&since_unix, &i64::from(limit)],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(AuditRecord {
                        time: row.try_get(0)?,
                        request_id: row.try_get(1)?,
                        peer: row.try_get(2)?,
                        requester: row.try_get(3)?,
                        auth_method: row.try_get(4)?,
                        label: row.try_get(5)?,
                        operation: row.try_get(6)?,
                        outcome: Outcome::from_stored(row.try_get(7)?),
                        status: u16::try_from(row.try_get::<_, i32>(8)?).unwrap_or(0),
                        serial: row.try_get(9)?,
                        reason: row.try_get(10)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn find_request(
        &self,
        csr_sha256: &str,
    ) -> Result<Option<EnrollmentRequest>, StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE csr_sha256 = $1");
            let statement = client.prepare_cached(&sql).await?;
            Ok(client
                .query_opt(&statement, &[&csr_sha256])
                .await?
                .map(|row| request_from_row(&row))
                .transpose()?)
        })
        .await
    }

    async fn get_request(&self, id: i64) -> Result<Option<EnrollmentRequest>, StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1");
            Ok(client
                .query_opt(&sql, &[&id])
                .await?
                .map(|row| request_from_row(&row))
                .transpose()?)
        })
        .await
    }

    async fn create_request(&self, r: NewRequest) -> Result<EnrollmentRequest, StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO requests (csr_sha256, csr, subject, label, operation, requester, peer, peer_key, key_sha256, created_at, status)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending') ON CONFLICT (csr_sha256) DO NOTHING",
                    &[&r.csr_sha256, &r.csr, &r.subject, &r.label, &r.operation, &r.requester, &r.peer, &r.peer_key, &r.key_sha256, &r.created_at],
                )
                .await?;
            let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE csr_sha256 = $1");
            Ok(request_from_row(
                &client.query_one(&sql, &[&r.csr_sha256]).await?,
            )?)
        })
        .await
    }

    async fn pending_count(&self, requester: &str) -> Result<u64, StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            let n: i64 = client
                .query_one(
                    "SELECT COUNT(*) FROM requests WHERE status = 'pending' AND requester = $1",
                    &[&requester],
                )
                .await?
                .try_get(0)?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn pending_counts(
        &self,
        requester: &str,
        peer_key: &str,
        key_sha256: &str,
    ) -> Result<PendingCounts, StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT COUNT(*) FILTER (WHERE requester = $1), COUNT(*) FILTER (WHERE peer_key = $2),
                            COUNT(*) FILTER (WHERE key_sha256 = $3)
                     FROM requests WHERE status = 'pending'",
                    &[&requester, &peer_key, &key_sha256],
                )
                .await?;
            let count =
                |i: usize| -> Result<u64, StoreError> { Ok(row.try_get::<_, i64>(i)?.max(0) as u64) };
            Ok(PendingCounts {
                by_requester: count(0)?,
                by_address: count(1)?,
                by_key: count(2)?,
            })
        })
        .await
    }

    async fn retire_request(&self, id: i64) -> Result<(), StoreError> {
        self.timed(async move {
            self.client()
                .await?
                .execute(
                    "UPDATE requests SET csr_sha256 = csr_sha256 || ':retired:' || id WHERE id = $1 AND strpos(csr_sha256, ':') = 0",
                    &[&id],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn decide_request(
        &self,
        id: i64,
        approve: bool,
        reason: Option<String>,
        by: &str,
    ) -> Result<bool, StoreError> {
        self.timed(async move {
            let status = if approve { "approved" } else { "rejected" };
            let changed = self
                .client()
                .await?
                .execute(
                    "UPDATE requests SET status = $1, decided_at = $2, decided_by = $3, reason = $4
                     WHERE id = $5 AND status = 'pending'",
                    &[&status, &unix_now(), &by, &reason, &id],
                )
                .await?;
            Ok(changed == 1)
        })
        .await
    }

    async fn list_requests(
        &self,
        status: Option<RequestStatus>,
    ) -> Result<Vec<EnrollmentRequest>, StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            let sql = format!(
                "SELECT {REQUEST_COLUMNS} FROM requests WHERE $1::TEXT IS NULL OR status = $1 ORDER BY id DESC LIMIT 10000"
            );
            let rows = client
                .query(&sql, &[&status.map(RequestStatus::as_str)])
                .await?;
            Ok(rows
                .iter()
                .map(request_from_row)
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn revoke(
        &self,
        key: &str,
        reason: Option<String>,
        mut audit: AuditRecord,
    ) -> Result<RevocationOutcome, StoreError> {
        self.timed(async move {
            let hex = normalize_hex(key);
            let mut client = self.client().await?;
            // Found before the transaction: a thumbprint is a scan.
            let Some(serial) = serial_for_key(&client, &hex).await? else {
                return Ok(RevocationOutcome::NotFound);
            };
            let tx = client.transaction().await?;
            let found = tx
                .query_opt(
                    "SELECT serial, subject, revoked_at FROM certificates WHERE serial = $1 FOR UPDATE",
                    &[&serial],
                )
                .await?;
            let outcome = match found {
                None => RevocationOutcome::NotFound,
                Some(row) => {
                    let serial: String = row.try_get(0)?;
                    let subject: String = row.try_get(1)?;
                    if row.try_get::<_, Option<i64>>(2)?.is_some() {
                        RevocationOutcome::AlreadyRevoked { serial }
                    } else {
                        tx.execute(
                            "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 WHERE serial = $3",
                            &[&audit.time, &reason, &serial],
                        )
                        .await?;
                        // Every node's CRL publisher and client-certificate check reads this.
                        tx.execute(
                            "INSERT INTO meta (key, value) VALUES ('revocation_version', 1)
                             ON CONFLICT (key) DO UPDATE SET value = meta.value + 1",
                            &[],
                        )
                        .await?;
                        audit.serial = Some(serial.clone());
                        insert_audit(&tx, &audit).await?;
                        RevocationOutcome::Revoked { serial, subject }
                    }
                }
            };
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }

    async fn revoked(&self) -> Result<Vec<RevokedCertificate>, StoreError> {
        self.timed(async move {
            // RFC 5280 §3.3: expired certificates leave the CRL.
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT serial, revoked_at, revocation_reason FROM certificates
                     WHERE revoked_at IS NOT NULL AND not_after > $1 ORDER BY revoked_at",
                    &[&unix_now()],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(RevokedCertificate {
                        serial: row.try_get(0)?,
                        revoked_at: row.try_get(1)?,
                        reason: row.try_get(2)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn revocation_version(&self) -> Result<i64, StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached("SELECT value FROM meta WHERE key = 'revocation_version'")
                .await?;
            Ok(client
                .query_opt(&statement, &[])
                .await?
                .map_or(Ok(0), |row| row.try_get(0))?)
        })
        .await
    }

    async fn newest_crl(
        &self,
        issuer: &str,
        newer_than: u64,
    ) -> Result<Option<PublishedCrl>, StoreError> {
        self.timed(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT number, this_update, next_update, revocation_version, der, issuer FROM crls
                     WHERE issuer = $1 AND number > $2 ORDER BY number DESC LIMIT 1",
                )
                .await?;
            let newer_than = i64::try_from(newer_than).unwrap_or(i64::MAX);
            Ok(client
                .query_opt(&statement, &[&issuer, &newer_than])
                .await?
                .map(|row| crl_from_row(&row))
                .transpose()?)
        })
        .await
    }

    async fn publish_crl(
        &self,
        issuer: &str,
        revocation_version: i64,
        fresh_since: i64,
        sign: CrlSigner,
    ) -> Result<PublishedCrl, StoreError> {
        self.timed_for(CRL_PUBLISH_TIMEOUT, async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // One signer at a time across the nodes; released with the transaction.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CRL_LOCK])
                .await?;
            if let Some(row) = tx
                .query_opt(
                    "SELECT number, this_update, next_update, revocation_version, der, issuer FROM crls WHERE issuer = $1 ORDER BY number DESC LIMIT 1",
                    &[&issuer],
                )
                .await?
            {
                let newest = crl_from_row(&row)?;
                if newest.revocation_version >= revocation_version && newest.this_update >= fresh_since
                {
                    tx.commit().await?;
                    return Ok(newest);
                }
            }
            let number: i64 = tx
                .query_one(
                    "INSERT INTO meta (key, value) VALUES ('crl_number', 1)
                     ON CONFLICT (key) DO UPDATE SET value = meta.value + 1 RETURNING value",
                    &[],
                )
                .await?
                .try_get(0)?;
            let number = number.max(1) as u64;
            // The signer may be an HSM: off the async threads. If it fails, the transaction rolls
            // back and the number is not used up.
            let (der, this_update, next_update) = tokio::task::spawn_blocking(move || sign(number))
                .await
                .map_err(|_| StoreError::Closed)?
                .map_err(StoreError::CrlSigning)?;
            let published = PublishedCrl {
                issuer: issuer.to_string(),
                number,
                this_update,
                next_update,
                revocation_version,
                der,
            };
            tx.execute(
                "INSERT INTO crls (number, this_update, next_update, revocation_version, der, issuer) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&(number as i64), &this_update, &next_update, &revocation_version, &published.der, &issuer],
            )
            .await?;
            tx.execute(
                "DELETE FROM crls WHERE number <= $1",
                &[&(number as i64 - CRLS_KEPT)],
            )
            .await?;
            tx.batch_execute("SET LOCAL synchronous_commit = on")
                .await?;
            tx.commit().await?;
            Ok(published)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed(async move {
            self.client().await?.query_one("SELECT 1", &[]).await?;
            Ok(())
        })
        .await
    }

    async fn bind_ca_key(&self, key_id: i64, replace: bool) -> Result<i64, StoreError> {
        // One statement: the insert's row when it inserted (or replaced), else the row already
        // there (a data-modifying CTE's row is not visible to the rest of the statement).
        let sql = if replace {
            "INSERT INTO meta (key, value) VALUES ('ca_key_id', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value RETURNING value"
        } else {
            "WITH inserted AS (
                 INSERT INTO meta (key, value) VALUES ('ca_key_id', $1)
                 ON CONFLICT (key) DO NOTHING RETURNING value)
             SELECT value FROM inserted
             UNION ALL SELECT value FROM meta WHERE key = 'ca_key_id'
             LIMIT 1"
        };
        self.timed(async move {
            let client = self.client().await?;
            if let Some(row) = client.query_opt(sql, &[&key_id]).await? {
                return Ok(row.try_get(0)?);
            }
            // Another node inserted it concurrently, after this statement's snapshot: its row
            // is there for the next statement.
            let row = client
                .query_one("SELECT value FROM meta WHERE key = 'ca_key_id'", &[])
                .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    async fn recorded_ca_key(&self) -> Result<Option<i64>, StoreError> {
        self.timed(async move {
            let row = self
                .client()
                .await?
                .query_opt("SELECT value FROM meta WHERE key = 'ca_key_id'", &[])
                .await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
        .await
    }
}
