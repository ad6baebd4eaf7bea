//! Copying a SQLite store into a new PostgreSQL database (`estuary store migrate`), for a
//! server that grows from one node into several (docs/cluster.md).
//!
//! Everything the store holds goes across, as it is: certificates (with their revocations),
//! thumbprints, the audit trail, enrollment requests (their ids kept, so that an operator's
//! `requests approve ID` still names the same one), the CRLs with their numbers (so that the
//! next CRL's number is still above every one published: RFC 5280 §5.2.3), and the counters
//! (`meta`). The copy is all or nothing:
//!
//! - **The SQLite file is locked exclusively for the whole copy** (`lock_for_copy`): the copy is
//!   refused while any other process has it open, so a server still running on it cannot
//!   record a certificate the copy would miss. Afterwards the file is marked as copied, and
//!   `estuary serve` and the commands that change a store refuse it (see the server's
//!   `copied_away`).
//! - **The PostgreSQL side is one transaction**, with its tables locked against writers, and the
//!   database must hold no records yet (a node started on it records its first CRL: copy
//!   before starting nodes). Nothing is merged. Every step answers within 60 s, or the copy
//!   stops.
//! - Every table's row count is compared between the two before the commit.

use std::path::Path;

use rusqlite::Connection;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

pub use crate::sqlite::{copied_to_postgres_at, forget_copy_to_postgres};
use crate::{OpenMode, PostgresStore, PostgresUrl, StoreError};

/// How many rows of each table were copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Issued certificates (revoked ones included).
    pub certificates: u64,
    /// Thumbprint rows (one per certificate).
    pub thumbprints: u64,
    /// Audit events.
    pub audit: u64,
    /// Enrollment requests, answered or waiting.
    pub requests: u64,
    /// Signed CRLs kept.
    pub crls: u64,
    /// Counters (the revocation version, the last CRL number).
    pub meta: u64,
    /// Whether the SQLite store now says it was copied (a server refuses to start on it).
    pub marked: bool,
}

/// One table's copy: what is read from SQLite (in this column order) and the PostgreSQL
/// column types it is written as.
struct TableCopy {
    table: &'static str,
    /// The PostgreSQL columns, in COPY order.
    columns: &'static str,
    /// The SELECT on SQLite giving those columns, in order.
    select: &'static str,
    types: &'static [Type],
}

const TABLES: &[TableCopy] = &[
    TableCopy {
        table: "certificates",
        columns: "serial, subject, sans, not_before, not_after, sha256, sha1, profile, label, origin_label, requester, key_type, issued_at, revoked_at, revocation_reason, der",
        // A certificate recorded before registration authorities has no origin label: it is
        // its label (as both stores read it).
        select: "SELECT serial, subject, sans, not_before, not_after, sha256, sha1, profile, label, COALESCE(origin_label, label), requester, key_type, issued_at, revoked_at, revocation_reason, der FROM certificates ORDER BY rowid",
        types: &[
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::BYTEA,
        ],
    },
    TableCopy {
        table: "thumbprints",
        columns: "sha256_head, sha1_head, serial",
        select: "SELECT sha256_head, sha1_head, serial FROM thumbprints ORDER BY rowid",
        types: &[Type::TEXT, Type::TEXT, Type::TEXT],
    },
    TableCopy {
        table: "audit",
        columns: "id, time, request_id, peer, requester, auth_method, label, operation, outcome, status, serial, reason",
        select: "SELECT id, time, request_id, peer, requester, auth_method, label, operation, outcome, status, serial, reason FROM audit ORDER BY id",
        types: &[
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT4,
            Type::TEXT,
            Type::TEXT,
        ],
    },
    TableCopy {
        table: "requests",
        columns: "id, csr_sha256, csr, subject, label, operation, requester, peer, peer_key, key_sha256, created_at, status, decided_at, decided_by, reason, serial",
        select: "SELECT id, csr_sha256, csr, subject, label, operation, requester, peer, peer_key, key_sha256, created_at, status, decided_at, decided_by, reason, serial FROM requests ORDER BY id",
        types: &[
            Type::INT8,
            Type::TEXT,
            Type::BYTEA,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
        ],
    },
    TableCopy {
        table: "crls",
        columns: "number, issuer, this_update, next_update, revocation_version, der",
        select: "SELECT number, issuer, this_update, next_update, revocation_version, der FROM crls ORDER BY number",
        types: &[
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::BYTEA,
        ],
    },
    TableCopy {
        table: "meta",
        columns: "key, value",
        // The mark of an earlier copy stays in the SQLite file.
        select: "SELECT key, value FROM meta WHERE key <> 'copied_to_postgres' ORDER BY key",
        types: &[Type::TEXT, Type::INT8],
    },
];

/// A SQLite value as the PostgreSQL type it is copied into.
enum Value {
    Text(Option<String>),
    Int8(Option<i64>),
    Int4(Option<i32>),
    Bytes(Option<Vec<u8>>),
}

impl Value {
    fn read(row: &rusqlite::Row<'_>, index: usize, ty: &Type) -> Result<Value, StoreError> {
        Ok(match *ty {
            // PostgreSQL's text cannot hold a NUL: written as the subjects already write one
            // (`\00`), where an earlier version recorded it raw (in a SAN).
            Type::TEXT => Value::Text(
                row.get::<_, Option<String>>(index)?
                    .map(|text| text.replace('\0', "\\00")),
            ),
            Type::INT8 => Value::Int8(row.get(index)?),
            Type::INT4 => {
                let wide: Option<i64> = row.get(index)?;
                Value::Int4(
                    wide.map(|v| {
                        i32::try_from(v).map_err(|_| {
                            StoreError::CopyRefused(format!(
                                "value {v} of column {index} does not fit PostgreSQL's INTEGER"
                            ))
                        })
                    })
                    .transpose()?,
                )
            }
            _ => Value::Bytes(row.get(index)?),
        })
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Value::Text(v) => v,
            Value::Int8(v) => v,
            Value::Int4(v) => v,
            Value::Bytes(v) => v,
        }
    }
}

/// How long the copy waits for PostgreSQL to answer any one step before it gives up (a
/// database that stops answering must not hold both stores locked for ever).
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// `step`, or an error if PostgreSQL gives no answer within [`ANSWER_WITHIN`].
async fn answered<T, E: Into<StoreError>>(
    what: &str,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(ANSWER_WITHIN, step).await {
        Ok(outcome) => outcome.map_err(Into::into),
        Err(_) => Err(StoreError::CopyRefused(format!(
            "PostgreSQL gave no answer for {} s ({what}); nothing was copied",
            ANSWER_WITHIN.as_secs()
        ))),
    }
}

/// Copies the SQLite store at `source` into the PostgreSQL database `target`, creating its
/// schema, then marks the SQLite store as copied (see [`copied_to_postgres_at`]). `progress` is
/// told each table's name and how many of its rows are copied so far (every 50,000 rows, and at
/// its end).
///
/// The future holds SQLite handles across its awaits, so it is not `Send`: run it with
/// `block_on`, not `tokio::spawn`.
pub async fn sqlite_to_postgres(
    source: &Path,
    target: &PostgresUrl,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<CopyReport, StoreError> {
    let sqlite = crate::sqlite::lock_for_copy(source)?;

    // A database of an older schema is one in use: refused below as holding records, and not
    // upgraded first (that is its nodes' `serve` to do). A new one gets the schema.
    let existing = answered(
        "connecting",
        PostgresStore::connect(target, OpenMode::Existing),
    )
    .await;
    let store = match existing {
        Ok(store) => store,
        Err(StoreError::NoSchema(_)) => {
            answered(
                "connecting",
                PostgresStore::connect(target, OpenMode::CreateOrUpgrade),
            )
            .await?
        }
        Err(StoreError::SchemaTooOld { found, .. }) => {
            return Err(StoreError::CopyRefused(format!(
                "{} holds an Estuary store already (schema version {found}): the copy goes only into a database nothing has used yet. Nothing was copied",
                target.redacted()
            )))
        }
        Err(e) => return Err(e),
    };
    let mut client = answered("connecting", store.client()).await?;
    let tx = answered("starting the transaction", client.transaction()).await?;
    // A copy of a large store takes longer than the pool's 10 s statement limit; a COPY in
    // progress is not idle, so the idle-in-transaction limit stays.
    answered(
        "locking the tables",
        tx.batch_execute(
            "SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = '10s';
             LOCK TABLE certificates, thumbprints, audit, requests, crls, meta IN EXCLUSIVE MODE",
        ),
    )
    .await?;
    let mut held = Vec::new();
    for t in TABLES {
        let rows = count_rows(&tx, t.table).await?;
        if rows > 0 {
            held.push(format!("{}: {rows}", t.table));
        }
    }
    if !held.is_empty() {
        return Err(StoreError::CopyRefused(format!(
            "{} already holds records ({}), from a node started on it (a node records its first CRL when it starts) or an earlier copy: the copy goes only into a database nothing has used yet. Nothing was copied; drop and create the database to start over",
            target.redacted(),
            held.join(", ")
        )));
    }

    let mut report = CopyReport::default();
    for t in TABLES {
        let copied = copy_table(&sqlite, &tx, t, progress).await?;
        match t.table {
            "certificates" => report.certificates = copied,
            "thumbprints" => report.thumbprints = copied,
            "audit" => report.audit = copied,
            "requests" => report.requests = copied,
            "crls" => report.crls = copied,
            _ => report.meta = copied,
        }
    }
    // New audit events and requests continue after the highest id SQLite ever gave (its
    // AUTOINCREMENT high-water mark survives deleted rows: an id is never given twice).
    for table in ["audit", "requests"] {
        let used: i64 = sqlite.query_row(
            &format!(
                "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0),
                            COALESCE((SELECT MAX(id) FROM {table}), 0))"
            ),
            [],
            |row| row.get(0),
        )?;
        if used > 0 {
            let sql = format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), $1)");
            answered("setting the id sequences", tx.execute(&sql, &[&used])).await?;
        }
    }
    // PostgreSQL numbers the next CRL from the `crl_number` counter alone, where SQLite takes
    // the larger of it and the highest recorded number: the counter starts at least there, so
    // that no number is ever signed twice (RFC 5280 §5.2.3).
    answered(
        "setting the CRL number",
        tx.execute(
            "INSERT INTO meta (key, value) SELECT 'crl_number', COALESCE(MAX(number), 0) FROM crls
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, EXCLUDED.value)",
            &[],
        ),
    )
    .await?;
    // Every table holds what the source held, checked before the commit.
    for t in TABLES {
        let in_sqlite: i64 =
            sqlite.query_row(&format!("SELECT count(*) FROM ({})", t.select), [], |row| {
                row.get(0)
            })?;
        let in_postgres = count_rows(&tx, t.table).await?;
        // The CRL number's row may be new.
        let expected = if t.table == "meta" {
            in_postgres.clamp(in_sqlite, in_sqlite + 1)
        } else {
            in_sqlite
        };
        if in_postgres != expected {
            return Err(StoreError::CopyRefused(format!(
                "{} would hold {in_postgres} rows of {} where the SQLite store holds {in_sqlite}; nothing was copied",
                target.redacted(),
                t.table
            )));
        }
    }
    let unknown = |why: String| {
        StoreError::CopyRefused(format!(
            "the commit into {} failed or its answer was lost ({why}): if `estuary certs list --database` finds the certificates there, the copy is done; if not, run the copy again",
            target.redacted()
        ))
    };
    match tokio::time::timeout(ANSWER_WITHIN, tx.commit()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(unknown(StoreError::from(e).to_string())),
        Err(_) => {
            return Err(unknown(format!(
                "no answer for {} s",
                ANSWER_WITHIN.as_secs()
            )))
        }
    }
    // The SQLite store says it was copied, so that a server started on it by mistake refuses.
    // The copy is done whatever happens here: a store left unmarked is only reported.
    report.marked = sqlite.execute_batch("ROLLBACK").is_ok()
        && crate::sqlite::mark_copied_to_postgres(&sqlite).is_ok();
    Ok(report)
}

async fn count_rows(tx: &tokio_postgres::Transaction<'_>, table: &str) -> Result<i64, StoreError> {
    let sql = format!("SELECT count(*) FROM {table}");
    Ok(answered("counting rows", tx.query_one(&sql, &[]))
        .await?
        .get(0))
}

async fn copy_table(
    sqlite: &Connection,
    tx: &tokio_postgres::Transaction<'_>,
    t: &TableCopy,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<u64, StoreError> {
    let copy = format!("COPY {} ({}) FROM STDIN BINARY", t.table, t.columns);
    let sink = answered("starting a COPY", tx.copy_in(&copy)).await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, t.types));
    let mut statement = sqlite.prepare(t.select)?;
    let mut rows = statement.query([])?;
    let mut copied = 0u64;
    let mut values = Vec::with_capacity(t.types.len());
    while let Some(row) = rows.next()? {
        values.clear();
        for (i, ty) in t.types.iter().enumerate() {
            values.push(Value::read(row, i, ty)?);
        }
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(Value::as_sql).collect();
        answered("copying rows", writer.as_mut().write(&params)).await?;
        copied += 1;
        if copied.is_multiple_of(50_000) {
            progress(t.table, copied);
        }
    }
    answered("ending a COPY", writer.finish()).await?;
    progress(t.table, copied);
    Ok(copied)
}
