//! `estuary bench prefill`: synthetic certificate records through the store's own write path,
//! to compare a server's rate at different store sizes.

use std::process::ExitCode;
use std::time::Instant;

use super::synthetic::record;
use crate::StoreArgs;

/// Writes in flight at once.
const IN_FLIGHT: usize = 2048;

pub fn run(data: &StoreArgs, count: u64) -> anyhow::Result<ExitCode> {
    let url = data.database_url()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // The database must exist (a started server made it): never a new one in a wrong place.
        let store = data.open_store_for_changes().await?;
        // Request ids unique across runs: this run's start time (ns).
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..count {
            let store = store.clone();
            tasks.spawn(async move {
                let (certificate, audit) = record(run_id, i)?;
                anyhow::Ok(store.record_issued(certificate, audit, None).await?)
            });
            if tasks.len() >= IN_FLIGHT {
                if let Some(done) = tasks.join_next().await {
                    done??;
                }
            }
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        println!(
            "prefilled {count} certificates into {url} in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    })
}
