//! `estuary agent`: the IoT Edge certificate lifecycle, and `estuary agent status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use estuary_client::agent::{Agent, AgentConfig};
use estuary_client::files::format_time;

/// The IoT Edge config file.
pub const DEFAULT_CONFIG: &str = "/etc/aziot/config.toml";
/// Where the agent keeps its certificates when neither --state-dir nor [agent] state_dir says.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/estuary-agent";

/// `--once` exit status when the only problem is requests waiting for manual approval
/// (EX_TEMPFAIL, as `estuary client enroll`): run it again once they are approved.
pub const EXIT_PENDING: u8 = 75;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The IoT Edge config file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// State directory (certificates, keys, state.json); default: [agent] state_dir, else /var/lib/estuary-agent.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// One pass: enroll what is missing, renew what is due (ignoring the back-off of earlier
    /// failures), then exit; non-zero if any certificate is missing or expired afterwards
    /// (75 when they only wait for manual approval on the server: run it again once approved).
    #[arg(long)]
    once: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Each certificate: subject, expiry, next renewal, last error.
    Status {
        /// The IoT Edge config file.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// State directory.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

fn open(config_path: &Path, state_dir: Option<PathBuf>) -> anyhow::Result<Agent> {
    let config = AgentConfig::read(config_path).map_err(anyhow::Error::msg)?;
    for (key, message) in &config.iot_edge_incompatibilities {
        tracing::warn!("{key} = {message} (accepted by Estuary)");
    }
    let state_dir = state_dir
        .or_else(|| config.state_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    Agent::new(config, &state_dir).map_err(anyhow::Error::msg)
}

fn from_unix(s: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.max(0) as u64)
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match args.command {
        Some(AgentCommand::Status { config, state_dir }) => {
            let agent = open(&config, state_dir)?;
            println!("state directory: {}", agent.state().root().display());
            for c in agent.status_report() {
                println!("{}:", c.id);
                println!("  url:           {}", c.url);
                println!(
                    "  subject:       {}",
                    c.subject.as_deref().unwrap_or("(no certificate yet)")
                );
                if let Some(t) = c.not_before {
                    println!("  valid from:    {}", format_time(t));
                }
                if let Some(t) = c.not_after {
                    let expired = t <= std::time::SystemTime::now();
                    println!(
                        "  expires:       {}{}",
                        format_time(t),
                        if expired { " (EXPIRED)" } else { "" }
                    );
                }
                if let Some(t) = c.next_renewal {
                    println!("  next renewal:  {}", format_time(t));
                }
                println!("  issued so far: {}", c.status.issued_count);
                if c.status.used_bootstrap {
                    println!("  last request authenticated with the bootstrap certificate");
                }
                println!(
                    "  last error:    {}",
                    c.status.last_error.as_deref().unwrap_or("none")
                );
                if let Some(t) = c.next_retry {
                    println!(
                        "  next retry:    {} (`estuary agent --once` tries now)",
                        format_time(t)
                    );
                }
                if let Some(t) = c.status.last_attempt {
                    println!("  last attempt:  {}", format_time(from_unix(t)));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let mut agent = open(&args.run.config, args.run.state_dir)?;
            tracing::info!(state_dir = %agent.state().root().display(), "agent started");
            runtime.block_on(async {
                if args.run.once {
                    // "Make sure the certificates exist now": stored back-off does not apply.
                    let report = agent.pass_now().await;
                    for (id, e) in &report.failed {
                        eprintln!("{id}: {e}");
                    }
                    if report.missing_or_expired.is_empty() {
                        return Ok(ExitCode::SUCCESS);
                    }
                    let ids: Vec<&str> = report
                        .missing_or_expired
                        .iter()
                        .map(|i| i.as_str())
                        .collect();
                    eprintln!("missing or expired: {}", ids.join(", "));
                    // Only waiting for approval: EX_TEMPFAIL, as `client enroll` (run again later).
                    let only_pending = report
                        .missing_or_expired
                        .iter()
                        .chain(report.failed.iter().map(|(id, _)| id))
                        .all(|id| report.pending.contains(id));
                    if only_pending {
                        return Ok(ExitCode::from(EXIT_PENDING));
                    }
                    return Ok(ExitCode::FAILURE);
                }
                agent.run(crate::serve_cmd::shutdown_signal()).await;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}
