//! The embedded SQLite store.
//!
//! Writes go through one writer thread that commits in batches (group commit): every request
//! waiting for a write shares the same fsync, so durability costs one fsync per batch rather
//! than per certificate, and no request holds a lock while it signs. Reads use a small pool
//! of read-only connections (WAL mode lets them run beside the writer). Every query is an
//! index lookup or an indexed range, so the cost of an enrollment does not grow with the
//! number of certificates stored.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use crate::{
    normalize_hex, unix_now, AuditRecord, CertificateFilter, CertificateRecord, CertificateStatus,
    CrlSigner, EnrollmentRequest, NewRequest, Outcome, PendingCounts, PublishedCrl, RequestStatus,
    RevocationOutcome, RevokedCertificate, Store, StoreError,
};

/// How many recorded CRLs are kept (the newest is served).
const CRLS_KEPT: i64 = 16;

const CRL_COLUMNS: &str = "number, this_update, next_update, revocation_version, der, issuer";

fn newest_crl(conn: &Connection, issuer: &str) -> Result<Option<PublishedCrl>, StoreError> {
    let sql =
        format!("SELECT {CRL_COLUMNS} FROM crls WHERE issuer = ?1 ORDER BY number DESC LIMIT 1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![issuer], crl_from_row)
        .optional()?)
}

fn crl_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PublishedCrl> {
    Ok(PublishedCrl {
        number: row.get::<_, i64>(0)?.max(0) as u64,
        this_update: row.get(1)?,
        next_update: row.get(2)?,
        revocation_version: row.get(3)?,
        der: row.get(4)?,
        issuer: row.get(5)?,
    })
}

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// The certificates table. Its indexes (below) are all on keys that grow with time, so a new
/// row is written beside the last one and a commit touches the same few pages however large
/// the store is: serials begin with the issuing time, and thumbprints, which are random, have no
/// index (an operator's lookup by thumbprint scans the narrow `thumbprints` table; see
/// `serial_for_key`).
const CERTIFICATES_TABLE: &str = r#"
CREATE TABLE IF NOT EXISTS certificates (
    serial            TEXT PRIMARY KEY NOT NULL,
    subject           TEXT NOT NULL,
    sans              TEXT NOT NULL,
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    sha256            TEXT NOT NULL,
    sha1              TEXT NOT NULL,
    profile           TEXT NOT NULL,
    label             TEXT NOT NULL,
    origin_label      TEXT,
    requester         TEXT NOT NULL,
    key_type          TEXT NOT NULL,
    issued_at         INTEGER NOT NULL,
    revoked_at        INTEGER,
    revocation_reason TEXT,
    der               BLOB NOT NULL
);
"#;

const SCHEMA: &str = r#"
CREATE INDEX IF NOT EXISTS certificates_not_after ON certificates (not_after);
CREATE INDEX IF NOT EXISTS certificates_issued_at ON certificates (issued_at);
CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        INTEGER NOT NULL,
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
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE INDEX IF NOT EXISTS certificates_revoked ON certificates (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS requests (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    csr_sha256  TEXT NOT NULL UNIQUE,
    csr         BLOB NOT NULL,
    subject     TEXT NOT NULL,
    label       TEXT NOT NULL,
    operation   TEXT NOT NULL,
    requester   TEXT NOT NULL,
    peer        TEXT NOT NULL,
    peer_key    TEXT NOT NULL DEFAULT '',
    key_sha256  TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    decided_at  INTEGER,
    decided_by  TEXT,
    reason      TEXT,
    serial      TEXT
);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, requester);
-- The first 16 hex digits of each certificate's thumbprints, in the order certificates were
-- issued and without an index: a new row goes beside the last one, and a lookup by thumbprint
-- scans these narrow rows (about 70 MB for a million certificates) instead of the whole
-- certificates table.
CREATE TABLE IF NOT EXISTS thumbprints (
    sha256_head TEXT NOT NULL,
    sha1_head   TEXT NOT NULL,
    serial      TEXT NOT NULL
);
-- Filled by a trigger, so that every writer of certificates fills it (an older binary still
-- running on this database too).
CREATE TRIGGER IF NOT EXISTS certificates_thumbprints AFTER INSERT ON certificates BEGIN
    INSERT INTO thumbprints (sha256_head, sha1_head, serial)
        VALUES (substr(NEW.sha256, 1, 16), substr(NEW.sha1, 1, 16), NEW.serial);
END;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
-- Version 6: the CRLs signed, newest served (the same table as in PostgreSQL, where every
-- node serves the newest).
CREATE TABLE IF NOT EXISTS crls (
    number             INTEGER PRIMARY KEY NOT NULL,
    issuer             TEXT NOT NULL,
    this_update        INTEGER NOT NULL,
    next_update        INTEGER NOT NULL,
    revocation_version INTEGER NOT NULL,
    der                BLOB NOT NULL
);
"#;

/// The schema version this binary writes.
const SCHEMA_VERSION: i64 = 6;

/// Whether the database has the table `name` (a store of the first version had no
/// `user_version`; one of an older schema, no `meta`).
fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .exists([name])?)
}

/// The database's schema version (0 for a new, empty one).
fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// A connection without the writer's settings (a reader, a copy, a mark), with a busy timeout.
fn open_with(
    path: &Path,
    flags: OpenFlags,
    busy: std::time::Duration,
) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(busy)?;
    Ok(conn)
}

/// Opens an existing store for a copy of it (`migrate`) and takes its exclusive lock, held
/// until the connection closes: no other process can have the store open during the copy, so
/// nothing is recorded that the copy would miss. The store must have this binary's schema;
/// nothing is written to it before [`mark_copied_to_postgres`].
pub(crate) fn lock_for_copy(path: &Path) -> Result<Connection, StoreError> {
    match std::fs::symlink_metadata(path) {
        Err(_) => return Err(StoreError::Missing(path.to_path_buf())),
        Ok(meta) if !meta.file_type().is_file() => {
            return Err(StoreError::NotARegularFile(path.to_path_buf()))
        }
        Ok(_) => {}
    }
    // The exclusive locking mode takes the file's exclusive lock and keeps it until the
    // connection closes: it is refused while any other connection has the store open (a server
    // idle on it included, whatever its user, PID namespace or container), where BEGIN
    // IMMEDIATE would only wait out one that is writing. A lock held elsewhere is waited for up
    // to 10 s.
    let conn = open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE, MARK_BUSY_TIMEOUT)?;
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    conn.execute_batch("BEGIN EXCLUSIVE").map_err(|e| {
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        if busy {
            StoreError::CopyRefused(format!(
                "{} stayed open elsewhere for 10 s: is a server still running on it? Stop it, then copy",
                path.display()
            ))
        } else {
            StoreError::from(e)
        }
    })?;
    let version = schema_version(&conn)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < SCHEMA_VERSION {
        return Err(StoreError::SchemaTooOld {
            found: version,
            current: SCHEMA_VERSION,
        });
    }
    Ok(conn)
}

/// The `meta` key of a store copied into PostgreSQL (UNIX seconds of the copy).
const COPIED_TO_POSTGRES: &str = "copied_to_postgres";

/// How long the copy and the mark's readers wait for another connection's lock.
const MARK_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Records in a store locked by [`lock_for_copy`] that it was copied into PostgreSQL.
pub(crate) fn mark_copied_to_postgres(conn: &Connection) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        rusqlite::params![COPIED_TO_POSTGRES, crate::unix_now()],
    )?;
    Ok(())
}

/// Removes the mark [`crate::migrate::sqlite_to_postgres`] leaves in a SQLite store it copied
/// (`mark_copied_to_postgres`): the file is served again (the PostgreSQL copy is abandoned).
pub fn forget_copy_to_postgres(path: &Path) -> Result<(), StoreError> {
    let conn = open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE, MARK_BUSY_TIMEOUT)?;
    conn.execute("DELETE FROM meta WHERE key = ?1", [COPIED_TO_POSTGRES])?;
    Ok(())
}

/// When the SQLite store at `path` was copied into PostgreSQL by
/// [`crate::migrate::sqlite_to_postgres`] (UNIX seconds), if it was; `None` for a store never
/// copied (or one of an older schema without the table). Read only.
pub fn copied_to_postgres_at(path: &Path) -> Result<Option<i64>, StoreError> {
    let conn = open_with(path, OpenFlags::SQLITE_OPEN_READ_ONLY, MARK_BUSY_TIMEOUT)?;
    if !has_table(&conn, "meta")? {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [COPIED_TO_POSTGRES],
            |row| row.get(0),
        )
        .optional()?)
}

/// Creates the tables of a new database, or brings an existing one to [`SCHEMA_VERSION`], in
/// one transaction: a failure (a full disk during the version 5 rebuild) leaves the database
/// as it was. Returns whether a table was rebuilt.
fn create_or_upgrade(conn: &Connection) -> Result<bool, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let outcome = (|| {
        conn.execute_batch(CERTIFICATES_TABLE)?;
        conn.execute_batch(SCHEMA)?;
        let rebuilt = migrate(conn)?;
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
        Ok(rebuilt)
    })();
    match outcome {
        Ok(rebuilt) => {
            conn.execute_batch("COMMIT")?;
            Ok(rebuilt)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            // The rolled-back rebuild may have left a large write-ahead log behind.
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            Err(e)
        }
    }
}

/// Brings an existing database to [`SCHEMA_VERSION`] (new tables come from [`SCHEMA`]); runs
/// inside [`create_or_upgrade`]'s transaction. Returns whether a table was rebuilt.
fn migrate(conn: &Connection) -> Result<bool, StoreError> {
    let has_column = |table: &str, column: &str| -> Result<bool, StoreError> {
        let mut stmt = conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?;
        Ok(stmt.exists(params![table, column])?)
    };
    // Version 3: pending approvals are also capped per address and per public key.
    for column in ["peer_key", "key_sha256"] {
        if !has_column("requests", column)? {
            conn.execute_batch(&format!(
                "ALTER TABLE requests ADD COLUMN {column} TEXT NOT NULL DEFAULT ''"
            ))?;
        }
    }
    // Version 4: where a line of certificates began (NULL for older rows: their own label).
    if !has_column("certificates", "origin_label")? {
        conn.execute_batch("ALTER TABLE certificates ADD COLUMN origin_label TEXT")?;
    }
    // Version 5: no index of thumbprints. A random key puts every insert on a random page of
    // an index: one more page read and written per certificate once the store is large.
    // Dropping the UNIQUE of `sha256` means rebuilding the table (once; SQLite cannot drop a
    // constraint in place).
    conn.execute_batch("DROP INDEX IF EXISTS certificates_sha1")?;
    let certificates_sql: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'certificates'",
        [],
        |r| r.get(0),
    )?;
    let rebuild = certificates_sql.contains("UNIQUE");
    if rebuild {
        let bytes = conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get::<_, i64>(0),
        )?;
        tracing::info!(
            database_mib = bytes >> 20,
            "upgrading the store to schema version 5: rebuilding the certificates table without \
             its thumbprint indexes (once; it needs free disk space of about the database's size \
             again, and takes about 13 s per million certificates)"
        );
        let columns = "serial, subject, sans, not_before, not_after, sha256, sha1, profile, label, origin_label, requester, key_type, issued_at, revoked_at, revocation_reason, der";
        conn.execute_batch(&format!(
            "{new_table}
             INSERT INTO certificates_v5 ({columns}) SELECT {columns} FROM certificates;
             DROP TABLE certificates;
             ALTER TABLE certificates_v5 RENAME TO certificates;
             {SCHEMA}
             DELETE FROM thumbprints;
             INSERT INTO thumbprints (sha256_head, sha1_head, serial)
                 SELECT substr(sha256, 1, 16), substr(sha1, 1, 16), serial FROM certificates ORDER BY rowid;",
            new_table = CERTIFICATES_TABLE.replace(
                "CREATE TABLE IF NOT EXISTS certificates (",
                "CREATE TABLE certificates_v5 ("
            ),
        ))?;
    }
    Ok(rebuild)
}

enum WriteJob {
    Issued(
        Box<CertificateRecord>,
        Box<AuditRecord>,
        Option<i64>,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    Audit(Box<AuditRecord>, oneshot::Sender<Result<(), StoreError>>),
}

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::SyncSender<WriteJob>,
    readers: Arc<Mutex<Vec<Connection>>>,
    inline_reads: Arc<InlineReads>,
}

/// Whether point reads run on the calling (async) thread now: they stop for
/// [`INLINE_READ_PAUSE`] after one took longer than [`INLINE_READ_BUDGET`] (its pages were not in
/// the page cache, the disk is slow, SQLite retried its read lock).
#[derive(Debug)]
struct InlineReads {
    since: std::time::Instant,
    /// Milliseconds after `since` from which point reads may run inline again.
    paused_until_ms: std::sync::atomic::AtomicU64,
}

/// The longest an inline point read may take before point reads go to blocking threads.
const INLINE_READ_BUDGET: std::time::Duration = std::time::Duration::from_millis(2);
/// How long point reads stay on blocking threads after a slow one.
const INLINE_READ_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);

impl InlineReads {
    fn new() -> Self {
        InlineReads {
            since: std::time::Instant::now(),
            paused_until_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn allowed(&self) -> bool {
        self.now_ms()
            >= self
                .paused_until_ms
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records how long an inline read took; a slow one pauses inline reads.
    fn took(&self, elapsed: std::time::Duration) {
        if elapsed > INLINE_READ_BUDGET {
            let until = self
                .now_ms()
                .saturating_add(INLINE_READ_PAUSE.as_millis() as u64);
            self.paused_until_ms
                .store(until, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                elapsed_us = elapsed.as_micros() as u64,
                "a point read on the async thread was slow; point reads go to blocking threads for {} s",
                INLINE_READ_PAUSE.as_secs()
            );
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer thread. The
    /// database is created with mode 0600, so that SQLite creates its `-wal` and `-shm` files
    /// with that mode too; existing files that others can read are tightened to 0600.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_writer(path, true)
    }

    /// Opens an existing database for a command other than `serve`: one of an older schema
    /// is refused rather than upgraded, since the server that still uses it may be running
    /// (an upgrade can hold the database for seconds and change what that server reads).
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        Self::open_writer(path, false)
    }

    fn open_writer(path: &Path, may_upgrade: bool) -> Result<Self, StoreError> {
        make_private(path)?;
        let conn = Connection::open(path)?;
        // Set first, so that what follows waits for a running server's commit instead of
        // failing with "database is locked".
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        // The version is read before anything is written (the journal mode below writes an
        // empty file's header): a newer database, or one a command may not use, is left
        // untouched.
        let version = schema_version(&conn)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        // A command (`may_upgrade` false) runs beside a server that may be using the database:
        // it neither creates the schema (an empty database, as for PostgreSQL) nor upgrades it,
        // and, finding it current, takes no write lock. `serve` checks every table and index.
        if !may_upgrade && version < SCHEMA_VERSION {
            if version == 0 && !has_table(&conn, "certificates")? {
                return Err(StoreError::NoSchema(path.display().to_string()));
            }
            return Err(StoreError::SchemaTooOld {
                found: version,
                current: SCHEMA_VERSION,
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is on disk when it returns (a certificate is never released unrecorded).
        conn.pragma_update(None, "synchronous", "FULL")?;
        if may_upgrade && create_or_upgrade(&conn)? {
            // Give the rebuild's write-ahead log back to the disk.
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        }
        let (tx, rx) = mpsc::sync_channel::<WriteJob>(4096);
        std::thread::Builder::new()
            .name("estuary-store-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(StoreError::WriterThread)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            inline_reads: Arc::new(InlineReads::new()),
        })
    }

    async fn submit(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), StoreError>>) -> WriteJob,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let job = make(tx);
        // Straight into the writer's queue; only when it is full (the disk is behind) does
        // the wait for room move off the async threads, as back-pressure.
        match self.writer.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
            Err(mpsc::TrySendError::Full(job)) => {
                let writer = self.writer.clone();
                tokio::task::spawn_blocking(move || writer.send(job))
                    .await
                    .map_err(|_| StoreError::Closed)?
                    .map_err(|_| StoreError::Closed)?;
            }
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Rare writes (requests, revocations, CRL numbers) on a connection of their own: SQLite
    /// serializes them with the writer thread's batches.
    async fn admin_write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = Connection::open(&path)?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.busy_timeout(std::time::Duration::from_secs(30))?;
            f(&mut conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// A read on a blocking thread (it may scan, or wait for the disk).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || read_pooled(&readers, &path, f))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// A point read by primary key on the calling thread, when a pooled connection is free.
    /// It reads a few pages that are in the page cache under load (microseconds), less than
    /// the hand-off to a blocking thread and back costs; in WAL mode a reader does not wait for
    /// the writer. It never waits for a lock on the calling thread: a database that is busy (a
    /// reader blocked by recovery after a crash, say) and a pool with no free connection send
    /// the read to a blocking thread, as [`Self::read`] does. A read that was slow all the same
    /// (pages not cached, a slow disk, SQLite's own short retries) sends point reads to blocking
    /// threads for the next [`INLINE_READ_PAUSE`], so that a cold or slow disk costs the async
    /// thread one read, not one per request.
    async fn read_point<T: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if !self.inline_reads.allowed() {
            return self.read(f).await;
        }
        let pooled = self.readers.lock().map_err(|_| StoreError::Closed)?.pop();
        let Some(conn) = pooled else {
            return self.read(f).await;
        };
        let started = std::time::Instant::now();
        let result = conn
            .busy_timeout(std::time::Duration::ZERO)
            .map_err(StoreError::from)
            .and_then(|()| f(&conn));
        self.inline_reads.took(started.elapsed());
        let restored = conn.busy_timeout(READER_BUSY_TIMEOUT).is_ok();
        if restored {
            return_reader(&self.readers, conn);
        }
        match result {
            Err(StoreError::Database(e)) if is_busy(&e) => self.read(f).await,
            result => result,
        }
    }
}

/// How long a read waits for a busy database (on a blocking thread).
const READER_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Runs `f` on a pooled read-only connection, opening one if none is free.
fn read_pooled<T>(
    readers: &Mutex<Vec<Connection>>,
    path: &Path,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let pooled = readers.lock().map_err(|_| StoreError::Closed)?.pop();
    let conn = match pooled {
        Some(c) => c,
        None => open_with(path, OpenFlags::SQLITE_OPEN_READ_ONLY, READER_BUSY_TIMEOUT)?,
    };
    let result = f(&conn);
    return_reader(readers, conn);
    result
}

/// Gives a read-only connection back to the pool (at most 16 are kept).
fn return_reader(readers: &Mutex<Vec<Connection>>, conn: Connection) {
    if let Ok(mut pool) = readers.lock() {
        if pool.len() < 16 {
            pool.push(conn);
        }
    }
}

/// Creates `path` empty with mode 0600 if it does not exist (SQLite gives the `-wal` and
/// `-shm` files the database file's mode), and takes group and other permissions away from the
/// database, `-wal` and `-shm` files that exist: they hold every certificate and the audit
/// trail.
fn make_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |p: &Path, e: std::io::Error| StoreError::Io {
        path: p.to_path_buf(),
        source: e,
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(path, e)),
    }
    let mut name = path.as_os_str().to_os_string();
    let base = name.clone();
    for suffix in ["", "-wal", "-shm"] {
        name.clone_from(&base);
        name.push(suffix);
        let file = Path::new(&name);
        // Never through a symbolic link: whoever owns the directory could point one at any
        // file, and an admin command run as root would change that file's mode (or SQLite
        // would open it).
        let Ok(meta) = std::fs::symlink_metadata(file) else {
            continue;
        };
        if !meta.file_type().is_file() {
            return Err(StoreError::NotARegularFile(file.to_path_buf()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            if let Err(e) =
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode & !0o077))
            {
                tracing::warn!(path = %file.display(), error = %e, "cannot make the database file private (mode 0600)");
            }
        }
    }
    Ok(())
}

/// How long the writer waits for more jobs before it commits a batch, when the last batch
/// showed that requests are writing concurrently (PostgreSQL's `commit_delay` idea). Each
/// commit writes every page it touched and syncs once, whether it carries one certificate or
/// fifty, so under load a slightly later commit for many is cheaper than an early one for a
/// few; a lone request (the previous batch held one job) is committed at once.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

/// Whether the store's writer thread wakes up preempting the thread that is running.
///
/// Under load the writer runs under `SCHED_BATCH` (Linux, sched(7)): the same share of the
/// CPU and the same nice value, but its wakeups (a job arrives, the commit delay ends, a sync
/// completes) do not interrupt the request handling it shares a core with; it runs when the
/// async thread waits or its time slice ends, and by then finds more jobs queued. On one
/// core, batches grew from about 8 to about 36 certificates with 64 keep-alive connections
/// (from ~4 to ~14 with 16 clients making a new connection per request), the process's
/// context switches fell by three quarters, and server CPU per enrollment by 7-10%
/// (docs/performance.md). At light load the same policy only adds latency (a commit waits for
/// the end of a time slice), so the writer switches on its batches: `SCHED_BATCH` from a batch
/// of [`BATCH_POLICY_FROM`] jobs, back to `SCHED_OTHER` below [`BATCH_POLICY_UNTIL`]. A
/// thread the operator put under another policy (real-time, idle) is left alone.
struct WriterScheduling {
    adjustable: bool,
    batch: bool,
}

/// Batches of this many jobs or more put the writer under `SCHED_BATCH`.
const BATCH_POLICY_FROM: usize = 8;
/// Batches of fewer jobs put it back under `SCHED_OTHER`.
const BATCH_POLICY_UNTIL: usize = 3;

impl WriterScheduling {
    fn for_current_thread() -> Self {
        WriterScheduling {
            adjustable: crate::thread_policy::adjustable(),
            batch: false,
        }
    }

    /// Called after each commit with the number of jobs it carried.
    fn after_batch(&mut self, jobs: usize) {
        let want_batch = if self.batch {
            jobs >= BATCH_POLICY_UNTIL
        } else {
            jobs >= BATCH_POLICY_FROM
        };
        if self.adjustable && want_batch != self.batch {
            if crate::thread_policy::set_batch(want_batch) {
                self.batch = want_batch;
            } else {
                tracing::debug!("sched_setscheduler refused; the store writer keeps its policy");
                self.adjustable = false;
            }
        }
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<WriteJob>) {
    let mut concurrent = false;
    let mut scheduling = WriterScheduling::for_current_thread();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        drain_into(&rx, &mut batch);
        if concurrent && batch.len() < MAX_BATCH {
            std::thread::sleep(COMMIT_DELAY);
            drain_into(&rx, &mut batch);
        }
        concurrent = batch.len() > 1;
        let results = commit_batch(&mut conn, &batch);
        scheduling.after_batch(batch.len());
        for (job, result) in batch.into_iter().zip(results) {
            let reply = match job {
                WriteJob::Issued(_, _, _, reply) | WriteJob::Audit(_, reply) => reply,
            };
            let _ = reply.send(result);
        }
    }
}

/// Moves the jobs already queued into `batch`, up to [`MAX_BATCH`].
fn drain_into(rx: &mpsc::Receiver<WriteJob>, batch: &mut Vec<WriteJob>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// One transaction for the batch. The common case, every job succeeds, runs without
/// savepoints; when one fails (a duplicate serial, a request no longer approved), the batch is
/// done again with [`commit_batch_each`], so that one failure does not undo the others.
fn commit_batch(conn: &mut Connection, batch: &[WriteJob]) -> Vec<Result<(), StoreError>> {
    let all_at_once = (|| -> Result<bool, rusqlite::Error> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for job in batch {
            if apply(&tx, job).is_err() {
                // Dropping the transaction rolls it back.
                return Ok(false);
            }
        }
        tx.commit()?;
        Ok(true)
    })();
    match all_at_once {
        Ok(true) => batch.iter().map(|_| Ok(())).collect(),
        // A job failed (or the commit did): once more, job by job.
        Ok(false) | Err(_) => commit_batch_each(conn, batch),
    }
}

/// One job's rows.
fn apply(conn: &Connection, job: &WriteJob) -> Result<(), rusqlite::Error> {
    match job {
        WriteJob::Issued(cert, audit, request, _) => insert_certificate(conn, cert)
            .and_then(|()| insert_audit(conn, audit))
            .and_then(|()| match request {
                Some(id) => conn
                    .execute(
                        "UPDATE requests SET status = 'issued', serial = ?1 WHERE id = ?2 AND status = 'approved'",
                        params![cert.serial, id],
                    )
                    .and_then(|changed| {
                        if changed == 1 {
                            Ok(())
                        } else {
                            Err(rusqlite::Error::QueryReturnedNoRows)
                        }
                    }),
                None => Ok(()),
            }),
        WriteJob::Audit(audit, _) => insert_audit(conn, audit),
    }
}

/// One transaction for the batch; each job in its own savepoint so one failure (a duplicate
/// serial) does not undo the others. If the commit fails, every job fails.
fn commit_batch_each(conn: &mut Connection, batch: &[WriteJob]) -> Vec<Result<(), StoreError>> {
    let attempt = (|| -> Result<Vec<Result<(), StoreError>>, rusqlite::Error> {
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            let mut sp = tx.savepoint()?;
            let result = apply(&sp, job);
            match result {
                Ok(()) => {
                    sp.commit()?;
                    results.push(Ok(()));
                }
                Err(e) => {
                    // Undo this job only; if even that fails, the whole batch fails.
                    sp.rollback()?;
                    drop(sp);
                    results.push(Err(classify(e, job)));
                }
            }
        }
        tx.commit()?;
        Ok(results)
    })();
    match attempt {
        Ok(results) => results,
        Err(e) => {
            // Every job of the batch failed with the same error: they share it.
            let e = std::sync::Arc::new(e);
            batch
                .iter()
                .map(|_| Err(StoreError::Database(e.clone())))
                .collect()
        }
    }
}

fn classify(e: rusqlite::Error, job: &WriteJob) -> StoreError {
    if let (rusqlite::Error::QueryReturnedNoRows, WriteJob::Issued(_, _, Some(id), _)) = (&e, job) {
        return StoreError::RequestNotApproved(*id);
    }
    if let (rusqlite::Error::SqliteFailure(f, _), WriteJob::Issued(cert, _, _, _)) = (&e, job) {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            return StoreError::DuplicateSerial(cert.serial.clone());
        }
    }
    StoreError::from(e)
}

fn insert_certificate(conn: &Connection, c: &CertificateRecord) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO certificates (serial, subject, sans, not_before, not_after, sha256, sha1, profile, label, requester, key_type, issued_at, revoked_at, der, origin_label)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        c.serial,
        c.subject,
        c.sans.join("\n"),
        c.not_before,
        c.not_after,
        c.sha256_thumbprint,
        c.sha1_thumbprint,
        c.profile,
        c.label,
        c.requester,
        c.key_type,
        c.issued_at,
        c.revoked_at,
        c.der,
        c.origin_label,
    ])?;
    Ok(())
}

fn insert_audit(conn: &Connection, a: &AuditRecord) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO audit (time, request_id, peer, requester, auth_method, label, operation, outcome, status, serial, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        a.time,
        a.request_id,
        a.peer,
        a.requester,
        a.auth_method,
        a.label,
        a.operation,
        a.outcome.as_str(),
        a.status,
        a.serial,
        a.reason,
    ])?;
    Ok(())
}

const REQUEST_COLUMNS: &str = "id, csr_sha256, csr, subject, label, operation, requester, peer, created_at, status, decided_at, decided_by, reason, serial";

fn request_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EnrollmentRequest> {
    let status: String = row.get(9)?;
    Ok(EnrollmentRequest {
        id: row.get(0)?,
        csr_sha256: row.get(1)?,
        csr: row.get(2)?,
        subject: row.get(3)?,
        label: row.get(4)?,
        operation: row.get(5)?,
        requester: row.get(6)?,
        peer: row.get(7)?,
        created_at: row.get(8)?,
        status: RequestStatus::parse(&status).unwrap_or(RequestStatus::Pending),
        decided_at: row.get(10)?,
        decided_by: row.get(11)?,
        reason: row.get(12)?,
        serial: row.get(13)?,
    })
}

const CERT_COLUMNS: &str = "serial, subject, sans, not_before, not_after, sha256, sha1, profile, label, requester, key_type, issued_at, revoked_at, der, COALESCE(origin_label, label)";

fn certificate_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CertificateRecord> {
    let sans: String = row.get(2)?;
    Ok(CertificateRecord {
        serial: row.get(0)?,
        subject: row.get(1)?,
        sans: sans
            .lines()
            .map(str::to_string)
            .filter(|s| !s.is_empty())
            .collect(),
        not_before: row.get(3)?,
        not_after: row.get(4)?,
        sha256_thumbprint: row.get(5)?,
        sha1_thumbprint: row.get(6)?,
        profile: row.get(7)?,
        label: row.get(8)?,
        origin_label: row.get(14)?,
        requester: row.get(9)?,
        key_type: row.get(10)?,
        issued_at: row.get(11)?,
        revoked_at: row.get(12)?,
        der: row.get(13)?,
    })
}

/// The serial of the certificate a person named by its serial, SHA-256 thumbprint or SHA-1
/// thumbprint (hex, as [`normalize_hex`] leaves it). A serial is found through the primary
/// key; a thumbprint (64 or 40 hex digits that are not a serial) by a scan of the narrow
/// `thumbprints` table, which keeps random keys out of the write path (see
/// [`CERTIFICATES_TABLE`]).
fn serial_for_key(conn: &Connection, hex: &str) -> Result<Option<String>, rusqlite::Error> {
    let lookup = |sql: &str, key: String| {
        conn.prepare_cached(sql)?
            .query_row(params![key], |row| row.get::<_, String>(0))
            .optional()
    };
    if let Some(serial) = lookup(
        "SELECT serial FROM certificates WHERE serial = ?1",
        hex.to_ascii_lowercase(),
    )? {
        return Ok(Some(serial));
    }
    let thumbprint = hex.to_ascii_uppercase();
    match hex.len() {
        64 => lookup(
            "SELECT serial FROM certificates WHERE sha256 = ?1 AND serial IN
             (SELECT serial FROM thumbprints WHERE sha256_head = substr(?1, 1, 16))",
            thumbprint,
        ),
        40 => lookup(
            "SELECT serial FROM certificates WHERE sha1 = ?1 AND serial IN
             (SELECT serial FROM thumbprints WHERE sha1_head = substr(?1, 1, 16))",
            thumbprint,
        ),
        _ => Ok(None),
    }
}

/// The record of the certificate with this serial (as recorded: lower-case hex).
fn certificate_with_serial(
    conn: &Connection,
    serial: &str,
) -> Result<Option<CertificateRecord>, StoreError> {
    let sql = format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![serial], certificate_from_row)
        .optional()?)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn record_issued(
        &self,
        certificate: CertificateRecord,
        audit: AuditRecord,
        completes_request: Option<i64>,
    ) -> Result<(), StoreError> {
        self.submit(|reply| {
            WriteJob::Issued(
                Box::new(certificate),
                Box::new(audit),
                completes_request,
                reply,
            )
        })
        .await
    }

    async fn record_audit(&self, audit: AuditRecord) -> Result<(), StoreError> {
        self.submit(|reply| WriteJob::Audit(Box::new(audit), reply))
            .await
    }

    async fn is_revoked(&self, serial_hex: &str) -> Result<Option<bool>, StoreError> {
        let serial = normalize_hex(serial_hex).to_ascii_lowercase();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT revoked_at FROM certificates WHERE serial = ?1")?
                .query_row(params![serial], |row| row.get::<_, Option<i64>>(0))
                .optional()?
                .map(|revoked_at| revoked_at.is_some()))
        })
        .await
    }

    async fn certificate_status(
        &self,
        serial_hex: &str,
    ) -> Result<Option<CertificateStatus>, StoreError> {
        let serial = normalize_hex(serial_hex).to_ascii_lowercase();
        self.read_point(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT revoked_at, label, profile, COALESCE(origin_label, label) FROM certificates WHERE serial = ?1",
                )?
                .query_row(params![serial], |row| {
                    Ok(CertificateStatus {
                        revoked: row.get::<_, Option<i64>>(0)?.is_some(),
                        label: row.get(1)?,
                        profile: row.get(2)?,
                        origin_label: row.get(3)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn prune_audit(&self, before_unix: i64) -> Result<u64, StoreError> {
        self.admin_write(move |conn| {
            // In slices, so that the writer thread is not held up by one long transaction.
            let mut total = 0u64;
            loop {
                let n = conn.execute(
                    "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE time < ?1 LIMIT 10000)",
                    params![before_unix],
                )?;
                total += n as u64;
                if n < 10_000 {
                    return Ok(total);
                }
            }
        })
        .await
    }

    async fn find_certificate(&self, key: &str) -> Result<Option<CertificateRecord>, StoreError> {
        let hex = normalize_hex(key);
        self.read(move |conn| {
            let Some(serial) = serial_for_key(conn, &hex)? else {
                return Ok(None);
            };
            certificate_with_serial(conn, &serial)
        })
        .await
    }

    async fn certificate_by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        let serial = serial.to_ascii_lowercase();
        self.read(move |conn| certificate_with_serial(conn, &serial))
            .await
    }

    async fn list_certificates(
        &self,
        filter: &CertificateFilter,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let filter = filter.clone();
        self.read(move |conn| {
            let mut sql = format!("SELECT {CERT_COLUMNS} FROM certificates WHERE 1=1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(before) = filter.expiring_before {
                sql.push_str(" AND not_after <= ?");
                args.push(before.into());
            }
            if let Some(at) = filter.valid_at {
                sql.push_str(" AND not_after > ?");
                args.push(at.into());
            }
            if let Some(text) = &filter.subject_contains {
                sql.push_str(" AND instr(lower(subject), lower(?)) > 0");
                args.push(text.clone().into());
            }
            // Expiring certificates soonest first: a range of the not_after index that stops
            // at the limit, however many certificates expire in the window.
            if filter.expiring_before.is_some() {
                sql.push_str(" ORDER BY not_after, serial LIMIT ?");
            } else {
                sql.push_str(" ORDER BY issued_at DESC, serial DESC LIMIT ?");
            }
            args.push(i64::from(filter.limit.unwrap_or(u32::MAX)).into());
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), certificate_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn list_audit(
        &self,
        since_unix: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT time, request_id, peer, requester, auth_method, label, operation, outcome, status, serial, reason
                 FROM audit WHERE time >= ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![since_unix, limit], |row| {
                Ok(AuditRecord {
                    time: row.get(0)?,
                    request_id: row.get(1)?,
                    peer: row.get(2)?,
                    requester: row.get(3)?,
                    auth_method: row.get(4)?,
                    label: row.get(5)?,
                    operation: row.get(6)?,
                    outcome: Outcome::from_stored(&row.get::<_, String>(7)?),
                    status: row.get(8)?,
                    serial: row.get(9)?,
                    reason: row.get(10)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn find_request(
        &self,
        csr_sha256: &str,
    ) -> Result<Option<EnrollmentRequest>, StoreError> {
        let hash = csr_sha256.to_string();
        self.read(move |conn| {
            let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE csr_sha256 = ?1");
            Ok(conn
                .prepare_cached(&sql)?
                .query_row(params![hash], request_from_row)
                .optional()?)
        })
        .await
    }

    async fn get_request(&self, id: i64) -> Result<Option<EnrollmentRequest>, StoreError> {
        self.read(move |conn| {
            let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1");
            Ok(conn
                .prepare_cached(&sql)?
                .query_row(params![id], request_from_row)
                .optional()?)
        })
        .await
    }

    async fn create_request(&self, r: NewRequest) -> Result<EnrollmentRequest, StoreError> {
        self.admin_write(move |conn| {
            conn.execute(
                "INSERT INTO requests (csr_sha256, csr, subject, label, operation, requester, peer, peer_key, key_sha256, created_at, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending') ON CONFLICT (csr_sha256) DO NOTHING",
                params![r.csr_sha256, r.csr, r.subject, r.label, r.operation, r.requester, r.peer, r.peer_key, r.key_sha256, r.created_at],
            )?;
            let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE csr_sha256 = ?1");
            Ok(conn.query_row(&sql, params![r.csr_sha256], request_from_row)?)
        })
        .await
    }

    async fn pending_count(&self, requester: &str) -> Result<u64, StoreError> {
        let requester = requester.to_string();
        self.read(move |conn| {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM requests WHERE status = 'pending' AND requester = ?1",
                )?
                .query_row(params![requester], |row| row.get(0))?;
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
        let (requester, peer_key, key) = (
            requester.to_string(),
            peer_key.to_string(),
            key_sha256.to_string(),
        );
        self.read(move |conn| {
            let (r, a, k): (i64, i64, i64) = conn
                .prepare_cached(
                    "SELECT COALESCE(SUM(requester = ?1), 0), COALESCE(SUM(peer_key = ?2), 0), COALESCE(SUM(key_sha256 = ?3), 0)
                     FROM requests WHERE status = 'pending'",
                )?
                .query_row(params![requester, peer_key, key], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
            Ok(PendingCounts {
                by_requester: r.max(0) as u64,
                by_address: a.max(0) as u64,
                by_key: k.max(0) as u64,
            })
        })
        .await
    }

    async fn retire_request(&self, id: i64) -> Result<(), StoreError> {
        self.admin_write(move |conn| {
            conn.execute(
                "UPDATE requests SET csr_sha256 = csr_sha256 || ':retired:' || id WHERE id = ?1 AND instr(csr_sha256, ':') = 0",
                params![id],
            )?;
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
        let by = by.to_string();
        let now = unix_now();
        self.admin_write(move |conn| {
            let status = if approve { "approved" } else { "rejected" };
            let changed = conn.execute(
                "UPDATE requests SET status = ?1, decided_at = ?2, decided_by = ?3, reason = ?4
                 WHERE id = ?5 AND status = 'pending'",
                params![status, now, by, reason, id],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn list_requests(
        &self,
        status: Option<RequestStatus>,
    ) -> Result<Vec<EnrollmentRequest>, StoreError> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {REQUEST_COLUMNS} FROM requests WHERE ?1 IS NULL OR status = ?1 ORDER BY id DESC LIMIT 10000"
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params![status.map(RequestStatus::as_str)], request_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn revoke(
        &self,
        key: &str,
        reason: Option<String>,
        mut audit: AuditRecord,
    ) -> Result<RevocationOutcome, StoreError> {
        let hex = normalize_hex(key);
        self.admin_write(move |conn| {
            // Which certificate, found before the write lock is taken (a thumbprint is a scan:
            // enrollments must not wait behind it).
            let serial = serial_for_key(conn, &hex)?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let found: Option<(String, String, Option<i64>)> = match serial {
                None => None,
                Some(serial) => tx
                    .query_row(
                        "SELECT serial, subject, revoked_at FROM certificates WHERE serial = ?1",
                        params![serial],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )
                    .optional()?,
            };
            let outcome = match found {
                None => RevocationOutcome::NotFound,
                Some((serial, _, Some(_))) => RevocationOutcome::AlreadyRevoked { serial },
                Some((serial, subject, None)) => {
                    tx.execute(
                        "UPDATE certificates SET revoked_at = ?1, revocation_reason = ?2 WHERE serial = ?3",
                        params![audit.time, reason, serial],
                    )?;
                    tx.execute(
                        "INSERT INTO meta (key, value) VALUES ('revocation_version', 1)
                         ON CONFLICT (key) DO UPDATE SET value = value + 1",
                        [],
                    )?;
                    audit.serial = Some(serial.clone());
                    insert_audit(&tx, &audit)?;
                    RevocationOutcome::Revoked { serial, subject }
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn revoked(&self) -> Result<Vec<RevokedCertificate>, StoreError> {
        // Certificates past their notAfter leave the CRL (RFC 5280 §3.3: an expired
        // certificate needs no revocation entry), so the CRL does not grow for ever.
        let now = unix_now();
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT serial, revoked_at, revocation_reason FROM certificates
                 WHERE revoked_at IS NOT NULL AND not_after > ?1 ORDER BY revoked_at",
            )?;
            let rows = stmt.query_map(params![now], |row| {
                Ok(RevokedCertificate {
                    serial: row.get(0)?,
                    revoked_at: row.get(1)?,
                    reason: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn revocation_version(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT value FROM meta WHERE key = 'revocation_version'")?
                .query_row([], |row| row.get(0))
                .optional()?
                .unwrap_or(0))
        })
        .await
    }

    async fn newest_crl(
        &self,
        issuer: &str,
        newer_than: u64,
    ) -> Result<Option<PublishedCrl>, StoreError> {
        let issuer = issuer.to_string();
        self.read(move |conn| Ok(newest_crl(conn, &issuer)?.filter(|crl| crl.number > newer_than)))
            .await
    }

    async fn publish_crl(
        &self,
        issuer: &str,
        revocation_version: i64,
        fresh_since: i64,
        sign: CrlSigner,
    ) -> Result<PublishedCrl, StoreError> {
        let issuer = issuer.to_string();
        self.admin_write(move |conn| {
            // The write lock makes this the only signer (another process on the same file
            // waits here).
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(newest) = newest_crl(&tx, &issuer)? {
                if newest.revocation_version >= revocation_version
                    && newest.this_update >= fresh_since
                {
                    return Ok(newest);
                }
            }
            // Above every number used, whichever counter an older version kept.
            let number: i64 = tx.query_row(
                "INSERT INTO meta (key, value) VALUES ('crl_number', 1 + (SELECT COALESCE(MAX(number), 0) FROM crls))
                 ON CONFLICT (key) DO UPDATE SET value = MAX(value, (SELECT COALESCE(MAX(number), 0) FROM crls)) + 1
                 RETURNING value",
                [],
                |row| row.get(0),
            )?;
            let number = number.max(1);
            // On failure the transaction is dropped (rolled back): the number is not used up.
            let (der, this_update, next_update) =
                sign(number as u64).map_err(StoreError::CrlSigning)?;
            tx.execute(
                "INSERT INTO crls (number, this_update, next_update, revocation_version, der, issuer) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![number, this_update, next_update, revocation_version, der, issuer],
            )?;
            tx.execute(
                "DELETE FROM crls WHERE number <= ?1",
                params![number - CRLS_KEPT],
            )?;
            tx.commit()?;
            Ok(PublishedCrl {
                issuer,
                number: number as u64,
                this_update,
                next_update,
                revocation_version,
                der,
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn bind_ca_key(&self, key_id: i64, replace: bool) -> Result<i64, StoreError> {
        self.admin_write(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let record = if replace {
                "INSERT INTO meta (key, value) VALUES ('ca_key_id', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            } else {
                "INSERT INTO meta (key, value) VALUES ('ca_key_id', ?1) ON CONFLICT (key) DO NOTHING"
            };
            tx.execute(record, [key_id])?;
            let recorded: i64 =
                tx.query_row("SELECT value FROM meta WHERE key = 'ca_key_id'", [], |row| {
                    row.get(0)
                })?;
            tx.commit()?;
            Ok(recorded)
        })
        .await
    }

    async fn recorded_ca_key(&self) -> Result<Option<i64>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT value FROM meta WHERE key = 'ca_key_id'",
                    [],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command beside a running server opens a current store without a write lock: it does
    /// not wait for (or, after the busy timeout, fail on) a server holding one.
    #[tokio::test]
    async fn opening_an_existing_store_takes_no_write_lock(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("estuary.db");
        drop(SqliteStore::open(&path)?);
        let server = Connection::open(&path)?;
        server.execute_batch("BEGIN IMMEDIATE")?;
        let store = SqliteStore::open_existing(&path)?;
        assert_eq!(store.recorded_ca_key().await?, None);
        server.execute_batch("COMMIT")?;
        // An empty file is no store to a command: it does not create the schema.
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"")?;
        assert!(matches!(
            SqliteStore::open_existing(&empty),
            Err(StoreError::NoSchema(_))
        ));
        assert_eq!(std::fs::metadata(&empty)?.len(), 0);
        Ok(())
    }

    /// The writer goes under SCHED_BATCH after a large batch and back after a small one (where
    /// the thread's policy may be changed at all; elsewhere it stays as it is).
    #[test]
    fn writer_scheduling_follows_the_batch_size() {
        let (adjustable, policies) = std::thread::spawn(|| {
            let mut scheduling = WriterScheduling::for_current_thread();
            let mut seen = vec![crate::thread_policy::is_batch()];
            for jobs in [
                1,
                BATCH_POLICY_FROM,
                BATCH_POLICY_UNTIL,
                BATCH_POLICY_UNTIL - 1,
            ] {
                scheduling.after_batch(jobs);
                seen.push(crate::thread_policy::is_batch());
            }
            (crate::thread_policy::adjustable() || scheduling.batch, seen)
        })
        .join()
        .unwrap();
        if adjustable {
            assert_eq!(policies, [false, false, true, true, false]);
        } else {
            assert!(policies.iter().all(|p| *p == policies[0]), "{policies:?}");
        }
    }

    fn cert(serial: &str, subject: &str, not_after: i64) -> CertificateRecord {
        CertificateRecord {
            serial: serial.into(),
            subject: subject.into(),
            sans: vec!["DNS:a".into(), "IP:127.0.0.1".into()],
            not_before: 0,
            not_after,
            sha256_thumbprint: format!("{serial}AA").to_ascii_uppercase(),
            sha1_thumbprint: format!("{serial}BB").to_ascii_uppercase(),
            profile: "device".into(),
            label: String::new(),
            origin_label: String::new(),
            requester: "basic:estuser".into(),
            key_type: "p256".into(),
            issued_at: 1,
            revoked_at: None,
            der: vec![0x30, 0x00],
        }
    }

    fn audit(outcome: &str) -> AuditRecord {
        let outcome = Outcome::from_stored(outcome);
        AuditRecord {
            time: 10,
            request_id: "r1".into(),
            peer: "127.0.0.1:1".into(),
            requester: "basic:estuser".into(),
            auth_method: "basic".into(),
            label: String::new(),
            operation: "simpleenroll".into(),
            outcome,
            status: 200,
            serial: None,
            reason: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_survive_reopen_and_duplicates_are_refused(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("estuary.db");
        {
            let store = SqliteStore::open(&path)?;
            store
                .record_issued(cert("0a", "CN=one", 100), audit("issued"), None)
                .await?;
            let dup = store
                .record_issued(cert("0a", "CN=two", 100), audit("issued"), None)
                .await;
            assert!(matches!(dup, Err(StoreError::DuplicateSerial(_))));
            store.record_audit(audit("denied")).await?;
        }
        let store = SqliteStore::open_existing(&path)?;
        let found = store.find_certificate("0A").await?;
        assert_eq!(found.map(|c| c.subject), Some("CN=one".to_string()));
        // Thumbprints (64 or 40 hex digits, colons allowed) are found without an index.
        let mut with_thumbprints = cert("0b", "CN=three", 100);
        with_thumbprints.sha256_thumbprint = "CD".repeat(32);
        with_thumbprints.sha1_thumbprint = "AB".repeat(20);
        store
            .record_issued(with_thumbprints, audit("issued"), None)
            .await?;
        for key in ["cd".repeat(32), "ab:".repeat(20)] {
            let found = store.find_certificate(&key).await?;
            assert_eq!(found.map(|c| c.serial), Some("0b".to_string()), "{key}");
        }
        assert!(store.find_certificate(&"ef".repeat(32)).await?.is_none());
        assert_eq!(store.is_revoked("0a").await?, Some(false));
        assert_eq!(store.is_revoked("ff").await?, None);
        assert_eq!(store.list_audit(0, 10).await?.len(), 3);
        let status = store.certificate_status("0a").await?;
        assert_eq!(
            status.map(|s| (s.revoked, s.label, s.profile)),
            Some((false, String::new(), "device".to_string()))
        );
        assert_eq!(store.certificate_status("ff").await?, None);
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_point_read_is_done_again_off_the_async_thread(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("estuary.db"))?;
        store
            .record_issued(cert("0a", "CN=one", 100), audit("issued"), None)
            .await?;
        // The first read opens a pooled reader; the next ones are point reads on this thread.
        assert!(store.certificate_status("0a").await?.is_some());
        let async_thread = std::thread::current().id();
        let calls = std::sync::Arc::new(Mutex::new(Vec::new()));
        let answer = store
            .read_point({
                let calls = calls.clone();
                move |_conn| {
                    let mut calls = calls.lock().map_err(|_| StoreError::Closed)?;
                    calls.push(std::thread::current().id());
                    if calls.len() == 1 {
                        // What SQLite answers a reader that cannot get in without waiting.
                        return Err(StoreError::from(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                            None,
                        )));
                    }
                    Ok(7)
                }
            })
            .await?;
        assert_eq!(answer, 7);
        let calls = calls.lock().map_err(|_| "poisoned")?.clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0], async_thread, "first tried on the calling thread");
        assert_ne!(
            calls[1], async_thread,
            "then on a blocking thread, where it may wait"
        );
        // Point reads do not wait on the calling thread: the busy timeout is back for others.
        assert!(store.certificate_status("0a").await?.is_some());
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn after_a_slow_point_read_point_reads_go_to_blocking_threads(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("estuary.db"))?;
        // The first read opens a pooled reader.
        assert!(store.certificate_status("0a").await?.is_none());
        let async_thread = std::thread::current().id();
        let thread_of = |slow: bool| {
            store.read_point(move |_conn| {
                if slow {
                    // As if its pages came from a slow disk.
                    std::thread::sleep(INLINE_READ_BUDGET * 2);
                }
                Ok(std::thread::current().id())
            })
        };
        assert_eq!(thread_of(false).await?, async_thread);
        assert_eq!(thread_of(true).await?, async_thread, "tried inline");
        assert_ne!(
            thread_of(false).await?,
            async_thread,
            "paused after the slow one"
        );
        assert!(!store.inline_reads.allowed());
        Ok(())
    }

    #[tokio::test]
    async fn database_files_behind_symbolic_links_are_refused_and_left_alone(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("estuary.db");
        drop(SqliteStore::open(&path)?);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"x")?;
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644))?;
        let wal = dir.path().join("estuary.db-wal");
        let _ = std::fs::remove_file(&wal);
        std::os::unix::fs::symlink(&victim, &wal)?;
        let err = SqliteStore::open(&path).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let mode = std::fs::metadata(&victim)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "the link's target was not touched");
        Ok(())
    }

    #[tokio::test]
    async fn unknown_outcomes_read_back_as_other() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("estuary.db"))?;
        store.record_audit(audit("from-the-future")).await?;
        store.record_audit(audit("denied-unauthenticated")).await?;
        let outcomes: Vec<Outcome> = store
            .list_audit(0, 10)
            .await?
            .into_iter()
            .map(|a| a.outcome)
            .collect();
        assert_eq!(
            outcomes,
            [
                Outcome::DeniedUnauthenticated,
                Outcome::Other("from-the-future".into())
            ]
        );
        assert_eq!(outcomes[1].as_str(), "from-the-future");
        Ok(())
    }

    #[tokio::test]
    async fn audit_events_are_pruned_by_age() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("estuary.db"))?;
        for time in [10, 20, 30] {
            let mut a = audit("denied");
            a.time = time;
            store.record_audit(a).await?;
        }
        assert_eq!(store.prune_audit(25).await?, 2);
        assert_eq!(store.list_audit(0, 10).await?.len(), 1);
        assert_eq!(store.prune_audit(25).await?, 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_version_2_database_is_migrated_and_a_newer_one_refused(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("estuary.db");
        {
            let conn = Connection::open(&path)?;
            conn.execute_batch(
                "CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, csr_sha256 TEXT NOT NULL UNIQUE,
                 csr BLOB NOT NULL, subject TEXT NOT NULL, label TEXT NOT NULL, operation TEXT NOT NULL,
                 requester TEXT NOT NULL, peer TEXT NOT NULL, created_at INTEGER NOT NULL, status TEXT NOT NULL,
                 decided_at INTEGER, decided_by TEXT, reason TEXT, serial TEXT);
                 INSERT INTO requests (csr_sha256, csr, subject, label, operation, requester, peer, created_at, status)
                 VALUES ('h', x'00', 'CN=a', '', 'simpleenroll', 'basic:u', '1.2.3.4:5', 1, 'pending');
                 PRAGMA user_version = 2;",
            )?;
        }
        let store = SqliteStore::open(&path)?;
        assert_eq!(
            store.pending_counts("basic:u", "", "").await?.by_requester,
            1
        );
        drop(store);
        Connection::open(&path)?.execute_batch("PRAGMA user_version = 99")?;
        let err = SqliteStore::open(&path).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_4_store_loses_its_thumbprint_indexes_and_keeps_its_rows(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("estuary.db");
        {
            // The certificates table as version 4 made it.
            let conn = Connection::open(&path)?;
            conn.execute_batch(
                "CREATE TABLE certificates (serial TEXT PRIMARY KEY NOT NULL, subject TEXT NOT NULL,
                 sans TEXT NOT NULL, not_before INTEGER NOT NULL, not_after INTEGER NOT NULL,
                 sha256 TEXT NOT NULL UNIQUE, sha1 TEXT NOT NULL, profile TEXT NOT NULL,
                 label TEXT NOT NULL, origin_label TEXT, requester TEXT NOT NULL,
                 key_type TEXT NOT NULL, issued_at INTEGER NOT NULL, revoked_at INTEGER,
                 revocation_reason TEXT, der BLOB NOT NULL);
                 CREATE INDEX certificates_sha1 ON certificates (sha1);
                 CREATE INDEX certificates_not_after ON certificates (not_after);
                 INSERT INTO certificates VALUES ('0c', 'CN=old', '', 1, 2,
                   'EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE', 'BB', 'device', '',
                   NULL, 'basic:u', 'p256', 1, 5, 'keyCompromise', x'30');
                 PRAGMA user_version = 4;",
            )?;
        }
        // A command other than serve refuses the old schema and leaves it as it is.
        let refused = SqliteStore::open_existing(&path).map(|_| ()).unwrap_err();
        assert!(
            matches!(refused, StoreError::SchemaTooOld { found: 4, .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("estuary serve"), "{refused}");
        let version: i64 =
            Connection::open(&path)?.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        assert_eq!(version, 4);
        // The server upgrades it.
        let store = SqliteStore::open(&path)?;
        let old = store.find_certificate("0c").await?;
        assert_eq!(
            old.map(|c| (c.subject, c.revoked_at)),
            Some(("CN=old".to_string(), Some(5)))
        );
        // Its thumbprint was carried into the thumbprints table.
        let by_thumbprint = store.find_certificate(&"ee".repeat(32)).await?;
        assert_eq!(by_thumbprint.map(|c| c.serial), Some("0c".to_string()));
        store
            .record_issued(cert("0d", "CN=new", 100), audit("issued"), None)
            .await?;
        drop(store);
        let conn = Connection::open(&path)?;
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'certificates' ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        assert_eq!(
            indexes,
            [
                "certificates_issued_at",
                "certificates_not_after",
                "certificates_revoked",
                "sqlite_autoindex_certificates_1"
            ]
        );
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        assert_eq!(version, SCHEMA_VERSION);
        Ok(())
    }

    /// Regression: estuary.db, -wal and -shm were created 0644 (the whole certificate store
    /// and audit trail readable by every local user).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_files_are_private() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("estuary.db");
        let store = SqliteStore::open(&path)?;
        store
            .record_issued(cert("0a", "CN=one", 100), audit("issued"), None)
            .await?;
        assert_eq!(store.revoked().await?.len(), 0);
        for suffix in ["", "-wal", "-shm"] {
            let p = dir.path().join(format!("estuary.db{suffix}"));
            assert_eq!(mode(&p)?, 0o600, "{}", p.display());
        }
        drop(store);

        // Files an older version left readable are tightened at the next open.
        let open = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&path, open.clone())?;
        let store = SqliteStore::open(&path)?;
        assert_eq!(mode(&path)?, 0o600);
        assert!(store.find_certificate("0a").await?.is_some());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_commit() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("estuary.db"))?;
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.record_issued(cert(&format!("{i:04x}"), "CN=x", i), audit("issued"), None)
                    .await
            }));
        }
        for t in tasks {
            t.await??;
        }
        let filter = CertificateFilter {
            expiring_before: Some(49),
            ..Default::default()
        };
        assert_eq!(store.list_certificates(&filter).await?.len(), 50);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_duplicate_in_a_batch_fails_alone() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("estuary.db"))?;
        store
            .record_issued(cert("0007", "CN=first", 1), audit("issued"), None)
            .await?;
        // Many writes at once, so that they share batches with the duplicate.
        let mut tasks = Vec::new();
        for i in 0..100 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.record_issued(
                    cert(&format!("{i:04x}"), "CN=x", 1000 + i),
                    audit("issued"),
                    None,
                )
                .await
            }));
        }
        let mut duplicates = 0;
        for t in tasks {
            match t.await? {
                Ok(()) => {}
                Err(StoreError::DuplicateSerial(_)) => duplicates += 1,
                Err(e) => return Err(e.into()),
            }
        }
        assert_eq!(duplicates, 1);
        let all = store
            .list_certificates(&CertificateFilter::default())
            .await?;
        assert_eq!(all.len(), 100);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_and_revocations() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("estuary.db");
        let store = SqliteStore::open(&path)?;
        let new = NewRequest {
            csr_sha256: "ab".into(),
            csr: vec![1, 2],
            subject: "CN=x".into(),
            label: "manual".into(),
            operation: "simpleenroll".into(),
            requester: "basic:u".into(),
            peer: "127.0.0.1:1".into(),
            peer_key: "127.0.0.1".into(),
            key_sha256: "k1".into(),
            created_at: 5,
        };
        let created = store.create_request(new.clone()).await?;
        assert_eq!(created.status, RequestStatus::Pending);
        assert_eq!(
            store.pending_counts("basic:u", "127.0.0.1", "k1").await?,
            PendingCounts {
                by_requester: 1,
                by_address: 1,
                by_key: 1
            }
        );
        assert_eq!(
            store.pending_counts("basic:v", "::/64", "k2").await?,
            PendingCounts::default()
        );
        assert_eq!(
            store.create_request(new).await?.id,
            created.id,
            "same CSR, same request"
        );
        assert!(store.decide_request(created.id, true, None, "op").await?);
        assert!(
            !store.decide_request(created.id, false, None, "op").await?,
            "only pending requests are decided"
        );
        store
            .record_issued(
                cert("0b", "CN=x", 4_000_000_000),
                audit("issued"),
                Some(created.id),
            )
            .await?;
        let done = store.find_request("ab").await?.unwrap();
        assert_eq!(
            (done.status, done.serial.as_deref()),
            (RequestStatus::Issued, Some("0b"))
        );

        assert_eq!(store.revocation_version().await?, 0);
        let outcome = store
            .revoke("0b", Some("keyCompromise".into()), audit("revoked"))
            .await?;
        assert!(matches!(outcome, RevocationOutcome::Revoked { .. }));
        assert!(matches!(
            store.revoke("0b", None, audit("revoked")).await?,
            RevocationOutcome::AlreadyRevoked { .. }
        ));
        assert!(matches!(
            store.revoke("ff", None, audit("revoked")).await?,
            RevocationOutcome::NotFound
        ));
        assert_eq!(store.revocation_version().await?, 1);
        assert_eq!(store.is_revoked("0b").await?, Some(true));
        assert_eq!(store.revoked().await?.len(), 1);
        // An expired certificate leaves the CRL.
        store
            .record_issued(cert("0c", "CN=old", 100), audit("issued"), None)
            .await?;
        store.revoke("0c", None, audit("revoked")).await?;
        assert_eq!(store.revoked().await?.len(), 1);
        Ok(())
    }
}
