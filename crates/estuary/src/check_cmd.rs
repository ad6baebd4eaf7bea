//! `estuary check`: the EST part of `iotedge check`.

use std::path::PathBuf;
use std::process::ExitCode;

use estuary_client::check::{run_checks, CheckOptions};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The IoT Edge config file.
    #[arg(long, value_name = "FILE", default_value = crate::agent_cmd::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Do not enroll a test certificate (then credentials and the enrollment response are not checked).
    #[arg(long)]
    no_enroll: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(run_checks(
        &args.config,
        &CheckOptions {
            no_enroll: args.no_enroll,
        },
    ));
    let mut failed = 0;
    for r in &results {
        if r.ok {
            println!("✔ {}", r.message);
        } else {
            failed += 1;
            println!("✘ {}", r.message);
            if let Some(h) = &r.hint {
                println!("    → {h}");
            }
        }
    }
    println!("{} checks, {} failed", results.len(), failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
