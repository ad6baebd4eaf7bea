//! `estuary certs`.

use std::process::ExitCode;

use anyhow::bail;
use estuary_store::{CertificateFilter, CertificateRecord};
use estuary_wire::duration::parse_duration;

use crate::StoreArgs;

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// List issued certificates, newest first (with --expiring-within: the soonest to expire
    /// first).
    List {
        #[command(flatten)]
        data: StoreArgs,
        /// Only certificates not yet expired that expire within this time (e.g. 7d, 12h), the
        /// soonest first; revoked ones are listed too, with their status.
        #[arg(long, value_name = "DURATION")]
        expiring_within: Option<String>,
        /// Only certificates whose subject contains this text (case-insensitive).
        #[arg(long, value_name = "TEXT")]
        subject: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a certificate: it stops authenticating at once and is listed in the next CRL
    /// (the running server re-signs it within a second).
    Revoke {
        /// Serial (hex) or thumbprint (hex, colons allowed).
        key: String,
        /// RFC 5280 §5.3.1 reason: keyCompromise, cACompromise, affiliationChanged, superseded,
        /// cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise, unspecified
        /// (published without a reasonCode, as §5.3.1 asks). removeFromCRL is refused: it is
        /// only for delta CRLs.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        data: StoreArgs,
    },
    /// Show one certificate by serial or SHA-256/SHA-1 thumbprint, with its PEM.
    Show {
        /// Serial (hex) or thumbprint (hex, colons allowed).
        key: String,
        #[command(flatten)]
        data: StoreArgs,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cmd {
            CertsCommand::List {
                data,
                expiring_within,
                subject,
                limit,
                json,
            } => {
                let store = data.open_store().await?;
                let now = unix_now();
                let mut filter = CertificateFilter {
                    subject_contains: subject,
                    limit: Some(limit),
                    ..Default::default()
                };
                if let Some(w) = expiring_within {
                    let d = parse_duration(&w)
                        .map_err(|e| anyhow::anyhow!("--expiring-within: {e}"))?;
                    filter.valid_at = Some(now);
                    filter.expiring_before = Some(now.saturating_add(d.as_secs() as i64));
                }
                let certs = store.list_certificates(&filter).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&certs)?);
                } else {
                    println!(
                        "{:<34} {:<9} {:<20} {:<8} SUBJECT",
                        "SERIAL", "STATUS", "NOT AFTER", "PROFILE"
                    );
                    for c in &certs {
                        println!(
                            "{:<34} {:<9} {:<20} {:<8} {}",
                            c.serial,
                            status(c, now),
                            format_time(c.not_after),
                            c.profile,
                            c.subject
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            CertsCommand::Revoke { key, reason, data } => {
                let reason = match reason {
                    // RFC 5280 §5.3.1: removeFromCRL (delta CRLs only) is refused here.
                    Some(r) => Some(
                        estuary_ca::crl::RevocationReason::for_revocation(&r)
                            .map_err(|e| anyhow::anyhow!("--reason: {e}"))?
                            .as_str()
                            .to_string(),
                    ),
                    None => None,
                };
                let store = data.open_store_for_changes().await?;
                let audit = estuary_store::AuditRecord {
                    time: unix_now(),
                    request_id: "cli".into(),
                    peer: "-".into(),
                    requester: operator(),
                    auth_method: "cli".into(),
                    label: String::new(),
                    operation: "revoke".into(),
                    outcome: estuary_store::Outcome::Revoked,
                    status: 0,
                    serial: None,
                    reason: reason.clone(),
                };
                match store.revoke(&key, reason, audit).await? {
                    estuary_store::RevocationOutcome::Revoked { serial, subject } => {
                        println!("revoked {serial} ({subject})");
                        Ok(ExitCode::SUCCESS)
                    }
                    estuary_store::RevocationOutcome::AlreadyRevoked { serial } => {
                        println!("{serial} was already revoked");
                        Ok(ExitCode::SUCCESS)
                    }
                    estuary_store::RevocationOutcome::NotFound => {
                        bail!("no certificate with serial or thumbprint {key}")
                    }
                }
            }
            CertsCommand::Show { key, data, json } => {
                let store = data.open_store().await?;
                let Some(c) = store.find_certificate(&key).await? else {
                    bail!("no certificate with serial or thumbprint {key}");
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&c)?);
                    return Ok(ExitCode::SUCCESS);
                }
                let now = unix_now();
                println!("Serial:             {}", c.serial);
                println!("Subject:            {}", c.subject);
                println!("SANs:               {}", c.sans.join(", "));
                println!("Not before:         {}", format_time(c.not_before));
                println!("Not after:          {}", format_time(c.not_after));
                println!("Status:             {}", status(&c, now));
                println!("Profile:            {}", c.profile);
                println!(
                    "Label:              {}",
                    if c.label.is_empty() {
                        "(default)"
                    } else {
                        &c.label
                    }
                );
                println!("Requested by:       {}", c.requester);
                println!("Key type:           {}", c.key_type);
                println!("Issued at:          {}", format_time(c.issued_at));
                println!("SHA-256 thumbprint: {}", c.sha256_thumbprint);
                println!("SHA-1 thumbprint:   {}", c.sha1_thumbprint);
                print!(
                    "{}",
                    estuary_ca::bootstrap::pem_certificates(std::slice::from_ref(&c.der))
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn status(c: &CertificateRecord, now: i64) -> &'static str {
    if c.revoked_at.is_some() {
        "revoked"
    } else if c.not_after <= now {
        "expired"
    } else {
        "valid"
    }
}

/// Now, in UNIX seconds (the store's time unit).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `2026-11-28 21:04:05Z` for a UNIX time from the store.
pub fn format_time(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    estuary_client::files::format_time(t)
}

/// Who an administrative action is recorded as: `cli:$USER`.
pub fn operator() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "operator".into())
    )
}
