//! Prometheus metrics (text exposition format 0.0.4), kept in atomics and sharded maps so that
//! counting never serializes requests.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use estuary_auth::AuthFailure;

const SHARDS: usize = 16;

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// A counter with labels, sharded by label hash.
#[derive(Debug)]
struct LabeledCounter {
    shards: Vec<Mutex<HashMap<Vec<String>, u64>>>,
}

impl Default for LabeledCounter {
    fn default() -> Self {
        LabeledCounter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl LabeledCounter {
    fn inc(&self, labels: Vec<String>) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        labels.hash(&mut h);
        let shard = (h.finish() as usize) % SHARDS;
        if let Ok(mut m) = self.shards[shard].lock() {
            *m.entry(labels).or_insert(0) += 1;
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label_names: &[&str]) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let mut rows: Vec<(Vec<String>, u64)> = Vec::new();
        for shard in &self.shards {
            if let Ok(m) = shard.lock() {
                rows.extend(m.iter().map(|(k, v)| (k.clone(), *v)));
            }
        }
        rows.sort();
        for (labels, value) in rows {
            let pairs: Vec<String> = label_names
                .iter()
                .zip(labels.iter())
                .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{name}{{{}}} {value}", pairs.join(","));
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `estuary_requests_total`, on the hot path: keyed without allocating for the endpoint and
/// status (the label is usually empty, which does not allocate either).
#[derive(Debug)]
struct RequestCounter {
    shards: Vec<Mutex<HashMap<RequestKey, u64>>>,
}

/// (endpoint, label, status).
type RequestKey = (&'static str, String, u16);

impl Default for RequestCounter {
    fn default() -> Self {
        RequestCounter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl RequestCounter {
    fn inc(&self, endpoint: &'static str, label: &str, status: u16) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (endpoint, label, status).hash(&mut h);
        if let Ok(mut m) = self.shards[(h.finish() as usize) % SHARDS].lock() {
            match m.get_mut(&(endpoint, label.to_string(), status)) {
                Some(v) => *v += 1,
                None => {
                    m.insert((endpoint, label.to_string(), status), 1);
                }
            }
        }
    }

    fn render(&self, out: &mut String) {
        let name = "estuary_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} EST requests by endpoint, label and HTTP status.\n# TYPE {name} counter"
        );
        let mut rows: Vec<(RequestKey, u64)> = Vec::new();
        for shard in &self.shards {
            if let Ok(m) = shard.lock() {
                rows.extend(m.iter().map(|(k, v)| (k.clone(), *v)));
            }
        }
        rows.sort();
        for ((endpoint, label, status), value) in rows {
            let _ = writeln!(
                out,
                "{name}{{endpoint=\"{endpoint}\",label=\"{}\",status=\"{status}\"}} {value}",
                escape(&label)
            );
        }
    }
}

/// Log lines dropped because stderr was not taking them (the buffer of `estuary serve`'s log
/// writer was full): counted by that writer, which lives in the binary, for the whole process.
pub static LOG_LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Everything `/metrics` shows.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: RequestCounter,
    auth_failures: LabeledCounter,
    issued: LabeledCounter,
    /// Time from a verified CSR to a signed certificate.
    pub issuance_seconds: Histogram,
    /// Time of the durable store write before release.
    pub store_seconds: Histogram,
    /// Open connections (TLS and being handshaked).
    pub open_connections: AtomicI64,
    /// Requests refused by a rate limit.
    rate_limited: AtomicU64,
    /// Configuration reloads (ok, failed).
    reloads: LabeledCounter,
}

impl Metrics {
    /// Counts a request.
    pub fn request(&self, endpoint: &'static str, label: &str, status: u16) {
        self.requests.inc(endpoint, label, status);
    }

    /// Counts a failed authentication, under its [`AuthFailure::code`].
    pub fn auth_failure(&self, failure: &AuthFailure) {
        self.auth_failures.inc(vec![failure.code().to_string()]);
    }

    /// Counts an issued certificate.
    pub fn issued(&self, profile: &str, label: &str) {
        self.issued
            .inc(vec![profile.to_string(), label.to_string()]);
    }

    /// Counts a rate-limited request.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a configuration reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .inc(vec![if ok { "ok" } else { "failed" }.to_string()]);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.requests.render(&mut out);
        self.issued.render(
            &mut out,
            "estuary_certificates_issued_total",
            "Certificates issued, by profile and label.",
            &["profile", "label"],
        );
        self.auth_failures.render(
            &mut out,
            "estuary_auth_failures_total",
            "Failed authentications by reason.",
            &["reason"],
        );
        self.reloads.render(
            &mut out,
            "estuary_config_reloads_total",
            "Configuration reloads (SIGHUP) by result.",
            &["result"],
        );
        let _ = writeln!(
            out,
            "# HELP estuary_rate_limited_total Requests refused with 429.\n# TYPE estuary_rate_limited_total counter\nestuary_rate_limited_total {}",
            self.rate_limited.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP estuary_log_lines_dropped_total Log lines dropped because stderr was not taking them.\n# TYPE estuary_log_lines_dropped_total counter\nestuary_log_lines_dropped_total {}",
            LOG_LINES_DROPPED.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP estuary_open_connections Open client connections.\n# TYPE estuary_open_connections gauge\nestuary_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        self.issuance_seconds.render(
            &mut out,
            "estuary_issuance_duration_seconds",
            "Time to build and sign a certificate.",
        );
        self.store_seconds.render(
            &mut out,
            "estuary_store_duration_seconds",
            "Time to record an issued certificate durably.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request("simpleenroll", "", 200);
        m.request("simpleenroll", "", 200);
        m.auth_failure(&AuthFailure::WrongPassword);
        m.auth_failure(&estuary_auth::CertAuthFailure::Expired.into());
        m.issuance_seconds.observe(Duration::from_micros(300));
        let text = m.render();
        assert!(text.contains(
            "estuary_requests_total{endpoint=\"simpleenroll\",label=\"\",status=\"200\"} 2"
        ));
        assert!(text.contains("estuary_auth_failures_total{reason=\"wrong_password\"} 1"));
        assert!(text.contains("estuary_auth_failures_total{reason=\"certificate_expired\"} 1"));
        assert!(text.contains("estuary_issuance_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("estuary_issuance_duration_seconds_count 1"));
        assert!(text.contains(
            "# TYPE estuary_log_lines_dropped_total counter\nestuary_log_lines_dropped_total "
        ));
    }
}
