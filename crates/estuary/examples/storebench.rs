//! The SQLite store's cost per issued certificate, alone: `record_issued` (the certificate,
//! its audit event, one durable commit) from N writers at once, so that commits carry the
//! batch sizes the server sees at that load. Prints the process's CPU time per certificate
//! (the writer thread and the submitting tasks), the bytes written to storage per certificate
//! (`/proc/self/io`) and the certificates per second.
//!
//! `taskset -c 0 cargo run --release --example storebench [WRITERS...]` (default 1 4 16 64)
//!
//! A fresh database in a temporary directory for each run; records (those of `estuary bench prefill`) are
//! made before the clock starts. Use it to compare schema or commit changes: the server's own figures (`estuary
//! bench`) move by 20% between runs on a shared machine, this one by a few percent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use estuary_store::Store;

/// The records `estuary bench prefill` writes.
#[path = "../src/bench_cmd/synthetic.rs"]
mod synthetic;

fn main() {
    let writers: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("writers: a number"))
        .collect();
    let writers = if writers.is_empty() {
        vec![1, 4, 16, 64]
    } else {
        writers
    };
    println!(
        "{:>8} {:>10} {:>12} {:>14} {:>12}",
        "writers", "certs", "certs/s", "CPU µs/cert", "bytes/cert"
    );
    for n in writers {
        // A lone writer pays an fsync per certificate: fewer of them.
        let count = if n == 1 { 2_000 } else { 20_000 };
        run(n, count);
    }
}

fn run(writers: usize, count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store: Arc<dyn Store> =
            Arc::new(estuary_store::SqliteStore::open(&dir.path().join("estuary.db")).unwrap());
        // Warm up: the tables' first pages, the writer thread.
        for i in 0..200 {
            let (c, a) = synthetic::record(1, i).unwrap();
            store.record_issued(c, a, None).await.unwrap();
        }
        let records: Vec<_> = (0..count as u64)
            .map(|i| synthetic::record(2, i).unwrap())
            .collect();
        let mut queues: Vec<Vec<_>> = (0..writers).map(|_| Vec::new()).collect();
        for (i, r) in records.into_iter().enumerate() {
            queues[i % writers].push(r);
        }
        let cpu_before = cpu_time();
        let written_before = storage_writes();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for queue in queues {
            let store = store.clone();
            tasks.spawn(async move {
                for (c, a) in queue {
                    store.record_issued(c, a, None).await.unwrap();
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let elapsed = started.elapsed();
        let cpu = cpu_time() - cpu_before;
        let written = storage_writes() - written_before;
        println!(
            "{:>8} {:>10} {:>12.0} {:>14.1} {:>12.0}",
            writers,
            count,
            count as f64 / elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / count as f64,
            written as f64 / count as f64,
        );
    });
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Bytes this process caused to be written to storage.
fn storage_writes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
