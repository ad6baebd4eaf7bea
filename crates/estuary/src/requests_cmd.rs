//! `estuary requests`: enrollment requests waiting for manual approval (RFC 7030 §4.2.3).

use std::process::ExitCode;

use anyhow::bail;
use estuary_store::{AuditRecord, RequestStatus};

use crate::certs_cmd::{format_time, operator, unix_now};
use crate::StoreArgs;

#[derive(Debug, clap::Subcommand)]
pub enum RequestsCommand {
    /// List requests, newest first (pending ones by default).
    List {
        #[command(flatten)]
        data: StoreArgs,
        /// Show requests in every state.
        #[arg(long)]
        all: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request: the certificate is issued when the client asks again.
    Approve {
        /// Request id (from `estuary requests list`).
        id: i64,
        #[command(flatten)]
        data: StoreArgs,
    },
    /// Reject a pending request: the client's next attempt gets 403 with the reason.
    Reject {
        /// Request id.
        id: i64,
        /// Why (sent to the client and kept in the audit trail).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        data: StoreArgs,
    },
}

pub fn run(cmd: RequestsCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cmd {
            RequestsCommand::List { data, all, json } => {
                let store = data.open_store().await?;
                let requests = store
                    .list_requests(if all {
                        None
                    } else {
                        Some(RequestStatus::Pending)
                    })
                    .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&requests)?);
                } else {
                    println!(
                        "{:<6} {:<9} {:<20} {:<12} {:<24} {:<22} SUBJECT",
                        "ID", "STATUS", "CREATED", "LABEL", "REQUESTER", "PEER"
                    );
                    for r in &requests {
                        println!(
                            "{:<6} {:<9} {:<20} {:<12} {:<24} {:<22} {}",
                            r.id,
                            r.status.as_str(),
                            format_time(r.created_at),
                            if r.label.is_empty() {
                                "(default)"
                            } else {
                                &r.label
                            },
                            r.requester,
                            r.peer,
                            r.subject
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            RequestsCommand::Approve { id, data } => decide(&data, id, true, None).await,
            RequestsCommand::Reject { id, reason, data } => decide(&data, id, false, reason).await,
        }
    })
}

async fn decide(
    data: &StoreArgs,
    id: i64,
    approve: bool,
    reason: Option<String>,
) -> anyhow::Result<ExitCode> {
    let store = data.open_store_for_changes().await?;
    let Some(request) = store.get_request(id).await? else {
        bail!("no request {id}");
    };
    let by = operator();
    if !store
        .decide_request(id, approve, reason.clone(), &by)
        .await?
    {
        bail!("request {id} is {}, not pending", request.status.as_str());
    }
    store
        .record_audit(AuditRecord {
            time: unix_now(),
            request_id: format!("request-{id}"),
            peer: request.peer.clone(),
            requester: request.requester.clone(),
            auth_method: by.clone(),
            label: request.label.clone(),
            operation: request.operation.clone(),
            outcome: if approve {
                estuary_store::Outcome::Approved
            } else {
                estuary_store::Outcome::Rejected
            },
            status: 0,
            serial: None,
            reason: reason.clone(),
        })
        .await?;
    println!(
        "request {id} ({}) {}; the client gets {} when it asks again",
        request.subject,
        if approve { "approved" } else { "rejected" },
        if approve { "its certificate" } else { "403" }
    );
    Ok(ExitCode::SUCCESS)
}
