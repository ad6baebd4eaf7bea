//! `estuary audit`.

use std::process::ExitCode;

use estuary_store::{SqliteStore, Store};
use estuary_wire::duration::parse_duration;

use crate::certs_cmd::{format_time, unix_now};
use crate::DataArgs;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first: who asked, from where, and what was decided.
    List {
        #[command(flatten)]
        data: DataArgs,
        /// Only events within this time (e.g. 1h, 7d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::List {
        data,
        since,
        limit,
        json,
    } = cmd;
    let since_unix = match since {
        Some(s) => {
            let d = parse_duration(&s).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
            unix_now().saturating_sub(d.as_secs() as i64)
        }
        None => 0,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = SqliteStore::open_existing(&data.data_dir.join(estuary_server::DATABASE_FILE))?;
        let events = store.list_audit(since_unix, limit).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&events)?);
        } else {
            println!(
                "{:<20} {:<8} {:<4} {:<15} {:<22} {:<24} DETAIL",
                "TIME", "OUTCOME", "CODE", "OPERATION", "PEER", "REQUESTER"
            );
            for e in &events {
                println!(
                    "{:<20} {:<8} {:<4} {:<15} {:<22} {:<24} {}",
                    format_time(e.time),
                    e.outcome,
                    e.status,
                    if e.label.is_empty() {
                        e.operation.clone()
                    } else {
                        format!("{}/{}", e.label, e.operation)
                    },
                    e.peer,
                    e.requester,
                    e.serial.as_deref().or(e.reason.as_deref()).unwrap_or("")
                );
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
