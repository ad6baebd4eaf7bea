//! `estuary audit`.

use std::process::ExitCode;

use estuary_wire::duration::parse_duration;

use crate::certs_cmd::{format_time, unix_now};
use crate::StoreArgs;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first: who asked, from where, and what was decided.
    List {
        #[command(flatten)]
        data: StoreArgs,
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
    /// Delete audit events older than the retention (`[audit] retention` in the config, or
    /// --older-than). The server also does this hourly.
    Prune {
        #[command(flatten)]
        data: StoreArgs,
        /// Delete events older than this (e.g. 30d) instead of the configured retention.
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let (data, since, limit, json) = match cmd {
        AuditCommand::List {
            data,
            since,
            limit,
            json,
        } => (data, since, limit, json),
        AuditCommand::Prune { data, older_than } => return prune(data, older_than),
    };
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
        let store = data.open_store().await?;
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

fn prune(data: StoreArgs, older_than: Option<String>) -> anyhow::Result<ExitCode> {
    let retention = match older_than {
        Some(d) => parse_duration(&d).map_err(|e| anyhow::anyhow!("--older-than: {e}"))?,
        None => {
            let path = data.config_path();
            let settings = estuary_server::config::ConfigFile::read(&path)
                .and_then(|f| f.resolve().map_err(|e| e.in_file(&path)))
                .map_err(anyhow::Error::msg)?;
            match settings.audit_retention {
                Some(r) => r,
                None => {
                    eprintln!(
                        "{}: [audit] retention is empty (keep for ever); give --older-than to prune anyway",
                        path.display()
                    );
                    return Ok(ExitCode::from(2));
                }
            }
        }
    };
    let before = unix_now().saturating_sub(retention.as_secs() as i64);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = data.open_store_for_changes().await?;
        let deleted = store.prune_audit(before).await?;
        println!(
            "deleted {deleted} audit event(s) from before {}",
            format_time(before)
        );
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
