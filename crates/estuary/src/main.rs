//! `estuary`: the EST server, its administration commands, and the device side (client, agent, check).
#![forbid(unsafe_code)]

mod agent_cmd;
mod audit_cmd;
mod bench_cmd;
mod ca_cmd;
mod certs_cmd;
mod check_cmd;
mod client_cmd;
mod config_cmd;
mod config_edit;
mod log_writer;
mod requests_cmd;
mod serve_cmd;
mod store_cmd;
mod user_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Estuary: an EST (RFC 7030) certificate enrollment server with its own CA.
#[derive(Debug, Parser)]
#[command(name = "estuary", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the EST server (creates the CA, TLS certificate, config and database on first start).
    Serve(serve_cmd::ServeArgs),
    /// Manage HTTP Basic users in the config file.
    #[command(subcommand)]
    User(user_cmd::UserCommand),
    /// Read the certificate store, and revoke certificates.
    #[command(subcommand)]
    Certs(certs_cmd::CertsCommand),
    /// Enrollment requests waiting for manual approval.
    #[command(subcommand)]
    Requests(requests_cmd::RequestsCommand),
    /// Check a config file and show what each label allows.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Read the audit trail (every enrollment decision).
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// The certificate store as a whole: copy a SQLite store into PostgreSQL (`store migrate`).
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Set up the CA: import an existing one, create an issuing CA under an offline root, show it.
    #[command(subcommand)]
    Ca(ca_cmd::CaCommand),
    /// One-shot EST operations against any RFC 7030 server.
    #[command(subcommand)]
    Client(client_cmd::ClientCommand),
    /// Keep the certificates of an IoT Edge config file (/etc/aziot/config.toml) enrolled and renewed.
    Agent(agent_cmd::AgentArgs),
    /// Check the EST settings of an IoT Edge config file against the server (like `iotedge check`).
    Check(check_cmd::CheckArgs),
    /// Load-test any RFC 7030 server: requests/s, latency percentiles, status counts, and the
    /// server's CPU time per request and peak RSS (`bench prefill` fills a store first;
    /// `bench fleet` simulates a fleet's renewal load without a server).
    Bench(bench_cmd::BenchArgs),
}

/// Where the data directory and config file are.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Data directory: CA, TLS identity, config and database.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./estuary-data",
        env = "ESTUARY_DATA_DIR"
    )]
    pub data_dir: PathBuf,
    /// Config file (default: DATA_DIR/estuary.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// [`DataArgs`] and the certificate store, for the commands that use the store (`serve`,
/// `certs`, `audit`, `requests`, `bench prefill`).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Certificate store: sqlite:PATH or postgres://USER:PASSWORD@HOST:PORT/DB (default: the
    /// config's [database] url, else sqlite:DATA_DIR/estuary.db). Prefer ESTUARY_DATABASE (or
    /// the config file) for a URL with a password: the command line shows in `ps`.
    #[arg(
        long,
        value_name = "URL",
        env = "ESTUARY_DATABASE",
        hide_env_values = true
    )]
    pub database: Option<String>,
}

/// The data directory's fields (`data_dir`, `config`, `config_path()`) read through.
impl std::ops::Deref for StoreArgs {
    type Target = DataArgs;
    fn deref(&self) -> &DataArgs {
        &self.data
    }
}

impl StoreArgs {
    /// The store to use: `--database`/`ESTUARY_DATABASE`, else the config file's
    /// `[database] url`, else `sqlite:DATA_DIR/estuary.db`.
    pub fn database_url(&self) -> anyhow::Result<estuary_store::DatabaseUrl> {
        if let Some(url) = &self.database {
            return Ok(url.parse()?);
        }
        if let Some(url) = self.configured_database()? {
            return Ok(url);
        }
        Ok(estuary_store::DatabaseUrl::Sqlite(
            self.data_dir.join(estuary_server::DATABASE_FILE),
        ))
    }

    /// Opens the store for a command other than `serve` (which alone creates or upgrades
    /// the schema).
    pub async fn open_store(&self) -> anyhow::Result<std::sync::Arc<dyn estuary_store::Store>> {
        let url = self.database_url()?;
        match &url {
            estuary_store::DatabaseUrl::Sqlite(path) if !path.exists() => {
                return Err(estuary_store::StoreError::Missing(path.clone()).into());
            }
            estuary_store::DatabaseUrl::Postgres(postgres) => {
                if let Some(warning) = postgres.unauthenticated_server_warning() {
                    eprintln!("warning: {warning}");
                }
            }
            estuary_store::DatabaseUrl::Sqlite(_) => {}
        }
        Ok(estuary_store::open(&url, estuary_store::OpenMode::Existing).await?)
    }

    /// [`Self::open_store`] for a command that changes the store (a revocation, an approval, a
    /// pruning): refused on a SQLite store copied into PostgreSQL, where the change would never
    /// reach the servers.
    pub async fn open_store_for_changes(
        &self,
    ) -> anyhow::Result<std::sync::Arc<dyn estuary_store::Store>> {
        if let estuary_store::DatabaseUrl::Sqlite(path) = self.database_url()? {
            estuary_server::copied_away(&path)?;
        }
        self.open_store().await
    }
}

impl DataArgs {
    /// The config file path in use.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| self.data_dir.join(estuary_server::CONFIG_FILE))
    }

    /// The config file's `[database] url`, if the file exists and names one.
    pub fn configured_database(&self) -> anyhow::Result<Option<estuary_store::DatabaseUrl>> {
        let path = self.config_path();
        if !path.exists() {
            return Ok(None);
        }
        let config = estuary_server::config::ConfigFile::read(&path).map_err(anyhow::Error::msg)?;
        config.database.resolve().map_err(anyhow::Error::msg)
    }
}

fn main() -> ExitCode {
    // `estuary certs list | head` closes the pipe early: end quietly, as a SIGPIPE would,
    // instead of printing a panic (println! panics on a closed stdout).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = log_writer::panic_payload_text(info).unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        // The server's message goes behind its log lines, through the log writer: a stderr
        // that is not taking lines must not hold the panicking thread (a tokio worker) forever.
        let queued = log_writer::queue_last_words(&log_writer::panic_message(info)).is_some();
        log_writer::flush_before_panic_message();
        if !queued {
            default_hook(info);
        }
    }));
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `config check FILE --data-dir DIR`: whether DIR was given (flag or ESTUARY_DATA_DIR),
    // not the default; relative paths in FILE are then taken from DIR, as `serve` does.
    let check_data_dir_given = matches
        .subcommand_matches("config")
        .and_then(|m| m.subcommand_matches("check"))
        .and_then(|m| m.value_source("data_dir"))
        .is_some_and(|source| source != clap::parser::ValueSource::DefaultValue);
    let filter = tracing_subscriber::EnvFilter::try_from_env("ESTUARY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The server's lines go through a buffer and a thread of their own (`log_writer`: a
    // line per request must not cost a write on the request's thread, nor wait for a slow
    // journald); the other commands write theirs at once, in order with what they print.
    let (log_writer, log_flush) = match &cli.command {
        Command::Serve(_) => match log_writer::start(std::io::stderr()) {
            Ok((writer, flush)) => (BoxMakeWriter::new(writer), Some(flush)),
            Err(_) => (BoxMakeWriter::new(std::io::stderr), None),
        },
        _ => (BoxMakeWriter::new(std::io::stderr), None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve_cmd::run(args),
        Command::User(cmd) => user_cmd::run(cmd),
        Command::Certs(cmd) => certs_cmd::run(cmd),
        Command::Audit(cmd) => audit_cmd::run(cmd),
        Command::Store(cmd) => store_cmd::run(cmd),
        Command::Requests(cmd) => requests_cmd::run(cmd),
        Command::Config(cmd) => config_cmd::run(cmd, check_data_dir_given),
        Command::Ca(cmd) => ca_cmd::run(cmd),
        Command::Client(cmd) => client_cmd::run(cmd),
        Command::Agent(args) => agent_cmd::run(args),
        Command::Check(args) => check_cmd::run(args),
        Command::Bench(args) => bench_cmd::run(args),
    };
    // The server's error goes behind its last lines, through the log writer (whose flush at
    // exit waits at most 2 s for a stderr that is not taking lines); other commands print it.
    let error_line = result
        .as_ref()
        .err()
        .map(|e| format!("error: {}\n", error_chain(e)));
    let error_queued_through = match (&error_line, &log_flush) {
        (Some(line), Some(_)) => log_writer::queue_last_words(line),
        _ => None,
    };
    drop(log_flush);
    match result {
        Ok(code) => code,
        Err(e) => {
            let line = error_line.unwrap_or_default();
            match error_queued_through {
                Some(through) if log_writer::written_through(through) => {}
                // The flush ran out of time before reaching it (a slow stderr, a full buffer
                // ahead of it): the reason for the exit must not be lost with the lines.
                Some(_) => {
                    log_writer::write_to_stderr_within(&line, std::time::Duration::from_secs(1))
                }
                None => eprint!("{line}"),
            }
            // A PIN the token refused: an exit status systemd does not restart on (each start
            // would try the PIN again, and an HSM locks it after a few tries).
            let pin_refused = e.chain().any(|cause| {
                // The server's error wraps the CA's transparently (no source of its own).
                let ca_error = cause.downcast_ref::<estuary_ca::CaError>().or_else(|| {
                    match cause.downcast_ref::<estuary_server::error::ServerError>() {
                        Some(estuary_server::error::ServerError::Ca(ca)) => Some(ca),
                        _ => None,
                    }
                });
                matches!(ca_error, Some(estuary_ca::CaError::PinRefused(_)))
            });
            if pin_refused {
                ExitCode::from(estuary_ca::PIN_REFUSED_EXIT_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// An error and its causes, `outer: cause: ...`, as `{:#}` prints them, but without repeating a
/// cause whose text the message already holds (the library errors keep their cause as
/// `source()` and also show it in their own message).
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod error_chain_tests {
    /// Library errors show their cause and also return it as `source()`: printed once.
    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::other("disk full");
        let e = anyhow::Error::new(estuary_client::ClientError::Io {
            path: "/x".into(),
            source: io,
        })
        .context("writing state");
        assert_eq!(super::error_chain(&e), "writing state: /x: disk full");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_chain(&plain), "outer: inner");
    }
}
