//! What the bench counts: answers by status class, latencies, and the CPU time and memory of
//! processes (read from /proc; Linux only, `None` elsewhere).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on every Linux architecture).
const USER_HZ: u64 = 100;

/// One connection slot's tally, merged at the end.
#[derive(Debug, Default)]
pub struct Tally {
    /// Latency of every answered request, in microseconds.
    pub latencies_us: Vec<u64>,
    pub status_codes: BTreeMap<u16, u64>,
    pub connection_errors: u64,
    /// Distinct connection error texts and how often each happened.
    pub errors: BTreeMap<String, u64>,
    /// Whether this connection slot got at least one 2xx answer.
    pub served: bool,
    /// TCP connections (TLS handshakes) made.
    pub connects: u64,
    /// Of those, the handshakes that resumed an earlier session.
    pub resumed: u64,
}

/// Most distinct error texts kept.
const MAX_ERROR_TEXTS: usize = 10;

impl Tally {
    pub fn answer(&mut self, status: u16, latency: Duration) {
        self.latencies_us.push(latency.as_micros() as u64);
        *self.status_codes.entry(status).or_default() += 1;
        if (200..300).contains(&status) {
            self.served = true;
        }
    }

    pub fn error(&mut self, text: String) {
        self.connection_errors += 1;
        if self.errors.len() < MAX_ERROR_TEXTS || self.errors.contains_key(&text) {
            *self.errors.entry(text).or_default() += 1;
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.status_codes {
            *self.status_codes.entry(k).or_default() += v;
        }
        self.connection_errors += other.connection_errors;
        for (k, v) in other.errors {
            if self.errors.len() < MAX_ERROR_TEXTS || self.errors.contains_key(&k) {
                *self.errors.entry(k).or_default() += v;
            }
        }
        self.connects += other.connects;
        self.resumed += other.resumed;
    }
}

/// Answers by class. `2xx` is every 2xx but 202 (which EST uses for "pending approval").
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Classes {
    #[serde(rename = "2xx")]
    pub ok: u64,
    #[serde(rename = "202")]
    pub accepted: u64,
    #[serde(rename = "3xx")]
    pub redirect: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
    /// 1xx final answers or codes outside 100..600.
    pub other: u64,
    pub connection_errors: u64,
}

pub fn classes(codes: &BTreeMap<u16, u64>, connection_errors: u64) -> Classes {
    let mut c = Classes {
        connection_errors,
        ..Classes::default()
    };
    for (&code, &n) in codes {
        match code {
            202 => c.accepted += n,
            200..=299 => c.ok += n,
            300..=399 => c.redirect += n,
            400..=499 => c.client_error += n,
            500..=599 => c.server_error += n,
            _ => c.other += n,
        }
    }
    c
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Percentiles of `sorted` (nearest rank).
pub fn latency(sorted: &[u64]) -> Option<Latency> {
    let last = sorted.len().checked_sub(1)?;
    let at = |p: f64| {
        let rank = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
        sorted[rank.min(last)] as f64 / 1000.0
    };
    Some(Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: sorted[last] as f64 / 1000.0,
    })
}

/// User + system CPU time of a process so far (`self` for this one).
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// Bytes a process has caused to be written to storage (`write_bytes` of `/proc/PID/io`,
/// counted when pages are dirtied: the store's WAL and database file, checkpoints, and logs to
/// a file; not what goes to a pipe or socket). `None` where it cannot be read (another user's
/// process without ptrace rights, a kernel without task I/O accounting).
pub fn storage_writes(pid: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Resident memory of a process now, in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's RSS every 100 ms until stopped.
pub struct RssSampler {
    pid: String,
    start_kib: u64,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What [`RssSampler`] saw, in KiB: the first and last samples, and the highest of all.
#[derive(Debug, Clone, Copy)]
pub struct RssSamples {
    pub start_kib: u64,
    pub end_kib: u64,
    pub peak_kib: u64,
}

impl RssSampler {
    pub fn start(pid: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let start_kib = rss_kib(&pid).unwrap_or(0);
        let peak = Arc::new(AtomicU64::new(start_kib));
        let thread = {
            let (stop, peak, pid) = (stop.clone(), peak.clone(), pid.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(&pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        RssSampler {
            pid,
            start_kib,
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling and takes the last sample.
    pub fn finish(mut self) -> RssSamples {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let end_kib = rss_kib(&self.pid).unwrap_or(0);
        RssSamples {
            start_kib: self.start_kib,
            end_kib,
            peak_kib: self.peak.load(Ordering::Relaxed).max(end_kib),
        }
    }
}

/// `--rate`: `N`, `N/s`, `N/m` or `N/min`; requests per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, per) = match t.split_once('/') {
        Some((n, unit)) => (n.trim(), unit.trim()),
        None => (t, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: write a rate as N/s, e.g. 2000/s"))?;
    let seconds = match per {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        other => return Err(format!("{text:?}: unknown unit {other:?} (use /s or /min)")),
    };
    let rate = n / seconds;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("{text:?}: the rate must be above 0"));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_keep_202_apart_from_other_2xx() {
        let codes = BTreeMap::from([(200, 5), (202, 2), (401, 3), (429, 1), (503, 4), (301, 1)]);
        let c = classes(&codes, 7);
        assert_eq!(
            c,
            Classes {
                ok: 5,
                accepted: 2,
                redirect: 1,
                client_error: 4,
                server_error: 4,
                other: 0,
                connection_errors: 7
            }
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let l = latency(&v).unwrap();
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        assert!(latency(&[]).is_none());
        assert_eq!(latency(&[2000]).unwrap().p99, 2.0);
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2000/s").unwrap(), 2000.0);
        assert_eq!(parse_rate("50").unwrap(), 50.0);
        assert_eq!(parse_rate("120/min").unwrap(), 2.0);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5/h").is_err());
    }

    #[test]
    fn own_cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_time("self").is_some());
            assert!(rss_kib("self").unwrap() > 0);
        }
    }
}
