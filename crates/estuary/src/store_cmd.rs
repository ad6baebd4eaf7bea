//! `estuary store`: operations on the certificate store as a whole.

use std::path::PathBuf;
use std::process::ExitCode;

use estuary_store::DatabaseUrl;

use crate::DataArgs;

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Copy a SQLite store (certificates, revocations, CRLs, requests, audit trail) into a new
    /// PostgreSQL database, to move a server onto several nodes. Stop the server first; copy
    /// before any node starts on the database.
    Migrate(MigrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The SQLite store to copy (default: the one this data directory's server uses:
    /// ESTUARY_DATABASE or the config's [database] url when it names sqlite:PATH, else
    /// DATA_DIR/estuary.db).
    #[arg(long, value_name = "PATH")]
    from: Option<PathBuf>,
    /// The PostgreSQL database to copy into: postgres://USER:PASSWORD@HOST:PORT/DB (default:
    /// ESTUARY_DATABASE or the config's [database] url, when it names PostgreSQL). Prefer ESTUARY_MIGRATE_TO or the
    /// config file for a URL with a password: the command line shows in `ps`.
    #[arg(
        long,
        value_name = "URL",
        env = "ESTUARY_MIGRATE_TO",
        hide_env_values = true
    )]
    to: Option<String>,
}

pub fn run(cmd: StoreCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StoreCommand::Migrate(args) => migrate(args),
    }
}

fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    // The SQLite store this data directory's server uses or used: the first `sqlite:` of
    // ESTUARY_DATABASE and the config's [database] url, else DATA_DIR/estuary.db. A
    // `postgres://` there is where the copy goes unless --to says otherwise.
    let from_environment = match std::env::var("ESTUARY_DATABASE") {
        Ok(url) if !url.is_empty() => Some(url.parse::<DatabaseUrl>()?),
        _ => None,
    };
    let named = [from_environment, args.data.configured_database()?];
    let configured_file = named.iter().flatten().find_map(|url| match url {
        DatabaseUrl::Sqlite(path) => Some(path.clone()),
        DatabaseUrl::Postgres(_) => None,
    });
    let default_target = named.iter().flatten().find_map(|url| match url {
        DatabaseUrl::Postgres(url) => Some(url.clone()),
        DatabaseUrl::Sqlite(_) => None,
    });
    let live =
        configured_file.unwrap_or_else(|| args.data.data_dir.join(estuary_server::DATABASE_FILE));
    let source = match &args.from {
        // Another file than the server's own (a snapshot) would leave the live store unmarked
        // and its newer records behind.
        Some(from) if live.exists() && !same_file(from, &live) => anyhow::bail!(
            "the server of this data directory uses {}, not {}: copy the store it uses (or give another --data-dir)",
            live.display(),
            from.display()
        ),
        Some(from) => from.clone(),
        None => live,
    };
    if !source.exists() {
        anyhow::bail!(
            "the SQLite store to copy, {}, does not exist: check --data-dir or --from",
            source.display()
        );
    }
    if let Some((pid, name)) = process_holding_open(&source) {
        anyhow::bail!(
            "process {pid} ({name}) has {} open: stop the server, then copy (what it issued after the copy would be missing from PostgreSQL)",
            source.display()
        );
    }
    let target = match (&args.to, default_target) {
        (Some(url), _) => url.parse::<DatabaseUrl>()?,
        (None, Some(url)) => DatabaseUrl::Postgres(url),
        (None, None) => anyhow::bail!(
            "no database to copy into: give --to postgres://... (or ESTUARY_MIGRATE_TO), or set [database] url in {}",
            args.data.config_path().display()
        ),
    };
    let DatabaseUrl::Postgres(target) = target else {
        anyhow::bail!("the copy goes into PostgreSQL: --to must be a postgres:// URL");
    };
    if let Some(warning) = target.unauthenticated_server_warning() {
        eprintln!("warning: {warning}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let mut progress = |table: &str, rows: u64| eprintln!("  {table}: {rows} copied");
    eprintln!(
        "copying {} into {} (the SQLite store is locked until the copy ends; its server must be stopped)",
        source.display(),
        target.redacted()
    );
    // Not `Send` (it holds SQLite handles across awaits): on this thread.
    let report = runtime.block_on(estuary_store::migrate::sqlite_to_postgres(
        &source,
        &target,
        &mut progress,
    ))?;
    println!(
        "copied from {} into {} in {:.1} s: certificates {}, audit events {}, requests {}, CRLs {}; every table's row count checked",
        source.display(),
        target.redacted(),
        started.elapsed().as_secs_f64(),
        report.certificates,
        report.audit,
        report.requests,
        report.crls,
    );
    println!(
        "next: set [database] url in each node's estuary.toml to this database and start the nodes (docs/cluster.md)"
    );
    if report.marked {
        println!(
            "{} is marked as copied: a server started on it refuses (what it issued would be missing from PostgreSQL)",
            source.display()
        );
    } else {
        eprintln!(
            "warning: {} could not be marked as copied: do not start a server on it again (what it issued would be missing from PostgreSQL)",
            source.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Another process with `file` open (a server still running on it), found through
/// `/proc/PID/fd`; best effort: processes of other users are not visible without privileges.
fn process_holding_open(file: &std::path::Path) -> Option<(u32, String)> {
    let file = std::fs::canonicalize(file).ok()?;
    let own = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == file));
        if holds {
            let name = std::fs::read_to_string(entry.path().join("comm"))
                .map(|n| n.trim().to_string())
                .unwrap_or_default();
            return Some((pid, name));
        }
    }
    None
}

/// Whether two paths name one file (the same inode once resolved).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
