//! `estuary bench fleet`: the renewal load a fleet of agents puts on an EST server, simulated
//! on a compressed clock (no server, nothing sent).
//!
//! Each device enrolls once (at a time spread over `--enrolled-over`), then renews at the time
//! the agent itself would compute ([`RenewPolicy::renewal_due`], the same code `estuary agent`
//! runs, jitter included), gets a new certificate of the same validity, and so on until
//! `--duration`. Every request succeeds at once: the simulation shows when the requests come,
//! not how a server copes with them. Event-driven (a binary heap of next renewals), so 100,000
//! devices over a week of 1-day certificates take well under a second.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use estuary_client::agent::policy::{Jitter, RenewPolicy, Threshold};

/// `estuary bench fleet` options.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// How many devices.
    #[arg(long, default_value_t = 100_000)]
    devices: u32,
    /// Validity of every certificate the server issues (e.g. 1d, 90d, 2h).
    #[arg(long, value_name = "DURATION", default_value = "1d")]
    validity: String,
    /// Renewal threshold, as in the agent's auto_renew: N% of the lifetime or a time before
    /// expiry.
    #[arg(long, value_name = "THRESHOLD", default_value = "80%")]
    threshold: String,
    /// Retry period, as in the agent's auto_renew (a renewal never comes sooner than this after
    /// the last success).
    #[arg(long, value_name = "PERIOD", default_value = "4%")]
    retry: String,
    /// Renewal jitter, as the agent's [agent] renewal_jitter (0% to 50%; default none, as IoT
    /// Edge).
    #[arg(long, value_name = "N%", default_value = "0%")]
    jitter: String,
    /// The devices' first enrollments are spread evenly over this long; 0s: all at once (the
    /// worst case: a factory roll-out, or a fleet back after a CA outage).
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    enrolled_over: String,
    /// Simulated time, from the first enrollment.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    duration: String,
    /// Width of a histogram bar.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    bucket: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The most histogram buckets a run may have.
const MAX_BUCKETS: u64 = 100_000;
/// The most devices (a few bytes each in memory).
const MAX_DEVICES: u32 = 10_000_000;
/// The most renewals one run simulates (a few seconds per hundred million).
const MAX_RENEWALS: u64 = 500_000_000;

/// The simulation's inputs, parsed.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    pub devices: u32,
    pub validity: Duration,
    pub policy: RenewPolicy,
    pub enrolled_over: Duration,
    pub duration: Duration,
    pub bucket: Duration,
}

/// What the simulation saw.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub enrollments: u64,
    pub renewals: u64,
    /// Fewest and most renewals of one device.
    pub per_device: (u32, u32),
    /// Renewals in each bucket (the last one may be shorter).
    pub buckets: Vec<u64>,
    /// Most renewals in one second of the simulated clock, and the second's start (seconds
    /// from the first enrollment).
    pub peak_per_second: u64,
    pub peak_second: u64,
}

impl Outcome {
    /// Renewals per second over the whole duration.
    pub fn mean_per_second(&self, fleet: &Fleet) -> f64 {
        self.renewals as f64 / fleet.duration.as_secs_f64()
    }

    /// Peak second / mean: 1 is a perfectly flat load; 100,000 is every device at once.
    pub fn peak_to_mean(&self, fleet: &Fleet) -> f64 {
        let mean = self.mean_per_second(fleet);
        if mean > 0.0 {
            self.peak_per_second as f64 / mean
        } else {
            0.0
        }
    }

    /// The busiest bucket: its index and renewals.
    pub fn peak_bucket(&self) -> (usize, u64) {
        self.buckets
            .iter()
            .copied()
            .enumerate()
            .max_by_key(|&(i, n)| (n, Reverse(i)))
            .unwrap_or((0, 0))
    }
}

fn duration_or_zero(name: &str, text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    if t.trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(Duration::ZERO);
    }
    duration(name, t)
}

fn duration(name: &str, text: &str) -> anyhow::Result<Duration> {
    estuary_wire::duration::parse_duration(text).with_context(|| format!("--{name}"))
}

impl Fleet {
    fn from_args(args: &FleetArgs) -> anyhow::Result<Fleet> {
        let (threshold, _) = Threshold::parse(&args.threshold)
            .map_err(anyhow::Error::msg)
            .context("--threshold")?;
        let (retry, _) = Threshold::parse_retry(&args.retry)
            .map_err(anyhow::Error::msg)
            .context("--retry")?;
        let jitter = Jitter::parse(&args.jitter)
            .map_err(anyhow::Error::msg)
            .context("--jitter")?;
        let fleet = Fleet {
            devices: args.devices,
            validity: duration("validity", &args.validity)?,
            policy: RenewPolicy {
                threshold,
                retry,
                rotate_key: false,
                jitter,
            },
            enrolled_over: duration_or_zero("enrolled-over", &args.enrolled_over)?,
            duration: duration("duration", &args.duration)?,
            bucket: duration("bucket", &args.bucket)?,
        };
        if !(1..=MAX_DEVICES).contains(&fleet.devices) {
            bail!("--devices must be 1 to {MAX_DEVICES}");
        }
        if fleet.bucket > fleet.duration {
            bail!("--bucket must not be longer than --duration");
        }
        if fleet.buckets() > MAX_BUCKETS {
            bail!(
                "--duration / --bucket makes more than {MAX_BUCKETS} buckets; use a wider --bucket"
            );
        }
        Ok(fleet)
    }

    fn buckets(&self) -> u64 {
        self.duration.as_nanos().div_ceil(self.bucket.as_nanos()) as u64
    }

    /// Runs the simulation.
    pub fn simulate(&self) -> anyhow::Result<Outcome> {
        // Any fixed origin: the policy works on wall-clock times.
        let origin = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let end = self.duration.as_nanos() as u64;
        let bucket = self.bucket.as_nanos() as u64;
        let mut buckets = vec![0u64; self.buckets() as usize];
        let mut per_device = vec![0u32; self.devices as usize];
        let (mut peak_per_second, mut peak_second) = (0u64, 0u64);
        let (mut second, mut in_second) = (u64::MAX, 0u64);
        let mut renewals = 0u64;
        let mut enrollments = 0u64;

        // The next renewal of the certificate issued to `device` at `issued` (ns from origin),
        // the `generation`-th one: as the agent computes it. The certificate's DER, which the
        // agent's jitter hashes, is stood for by the device and the generation.
        let next = |device: u32, generation: u32, issued: u64| -> u64 {
            let not_before = origin + Duration::from_nanos(issued);
            let not_after = not_before + self.validity;
            let mut key = [0u8; 8];
            key[..4].copy_from_slice(&device.to_be_bytes());
            key[4..].copy_from_slice(&generation.to_be_bytes());
            let due = self
                .policy
                .renewal_due(not_before, not_after, &key, Some(not_before));
            due.duration_since(origin).unwrap_or_default().as_nanos() as u64
        };

        let mut heap = BinaryHeap::with_capacity(self.devices as usize);
        let spread = self.enrolled_over.as_nanos();
        for device in 0..self.devices {
            let at = (spread * u128::from(device) / u128::from(self.devices)) as u64;
            if at < end {
                enrollments += 1;
                heap.push(Reverse((next(device, 0, at), device, 1u32)));
            }
        }
        while let Some(Reverse((at, device, generation))) = heap.pop() {
            if at >= end {
                break;
            }
            renewals += 1;
            if renewals > MAX_RENEWALS {
                bail!(
                    "more than {MAX_RENEWALS} renewals to simulate: use fewer --devices, a shorter --duration or a longer --validity"
                );
            }
            per_device[device as usize] += 1;
            buckets[(at / bucket) as usize] += 1;
            // Events come out in time order: one pass finds the busiest second.
            let s = at / 1_000_000_000;
            if s == second {
                in_second += 1;
            } else {
                (second, in_second) = (s, 1);
            }
            if in_second > peak_per_second {
                (peak_per_second, peak_second) = (in_second, s);
            }
            heap.push(Reverse((
                next(device, generation, at),
                device,
                generation + 1,
            )));
        }
        let enrolled = &per_device[..];
        Ok(Outcome {
            enrollments,
            renewals,
            per_device: (
                enrolled.iter().copied().min().unwrap_or(0),
                enrolled.iter().copied().max().unwrap_or(0),
            ),
            buckets,
            peak_per_second,
            peak_second,
        })
    }
}

/// `1d 19:12:00`: a time from the first enrollment.
fn offset(secs: u64) -> String {
    format!(
        "{}d {:02}:{:02}:{:02}",
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn report_json(fleet: &Fleet, outcome: &Outcome, elapsed: Duration) -> serde_json::Value {
    let (peak_bucket, peak_bucket_renewals) = outcome.peak_bucket();
    serde_json::json!({
        "simulation": true,
        "devices": fleet.devices,
        "validity_seconds": fleet.validity.as_secs_f64(),
        "threshold": fleet.policy.threshold.to_string(),
        "retry": fleet.policy.retry.to_string(),
        "jitter": fleet.policy.jitter.to_string(),
        "enrolled_over_seconds": fleet.enrolled_over.as_secs_f64(),
        "duration_seconds": fleet.duration.as_secs_f64(),
        "bucket_seconds": fleet.bucket.as_secs_f64(),
        "enrollments": outcome.enrollments,
        "renewals": outcome.renewals,
        "renewals_per_device": { "min": outcome.per_device.0, "max": outcome.per_device.1 },
        "mean_per_second": outcome.mean_per_second(fleet),
        "peak_per_second": outcome.peak_per_second,
        "peak_second_at_seconds": outcome.peak_second,
        "peak_to_mean": outcome.peak_to_mean(fleet),
        "peak_bucket": {
            "start_seconds": (peak_bucket as u64 * fleet.bucket.as_secs()),
            "renewals": peak_bucket_renewals,
        },
        "buckets": outcome.buckets,
        "elapsed_seconds": elapsed.as_secs_f64(),
    })
}

fn report_text(fleet: &Fleet, outcome: &Outcome, elapsed: Duration) -> String {
    use std::fmt::Write as _;
    let fmt = estuary_wire::duration::format_duration;
    let mut out = String::new();
    let p = &fleet.policy;
    let _ = writeln!(
        out,
        "fleet simulation (no server): {} devices, {} certificates, threshold {}, retry {}, jitter {}, enrolled over {}; {} simulated in {:.2}s",
        fleet.devices,
        fmt(fleet.validity),
        p.threshold,
        p.retry,
        if p.jitter == Jitter::NONE { "none".to_string() } else { p.jitter.to_string() },
        if fleet.enrolled_over.is_zero() { "0s (all at once)".to_string() } else { fmt(fleet.enrolled_over) },
        fmt(fleet.duration),
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "enrollments: {}   renewals: {} ({} to {} per device)",
        outcome.enrollments, outcome.renewals, outcome.per_device.0, outcome.per_device.1
    );
    let (peak_bucket, peak_bucket_renewals) = outcome.peak_bucket();
    let bucket_secs = fleet.bucket.as_secs();
    let _ = writeln!(
        out,
        "mean: {:.2} renewals/s   peak second: {} renewals (at {})   peak/mean: {:.1}",
        outcome.mean_per_second(fleet),
        outcome.peak_per_second,
        offset(outcome.peak_second),
        outcome.peak_to_mean(fleet)
    );
    let _ = writeln!(
        out,
        "busiest {}: {} renewals from {} ({:.2}/s)",
        fmt(fleet.bucket),
        peak_bucket_renewals,
        offset(peak_bucket as u64 * bucket_secs),
        peak_bucket_renewals as f64 / fleet.bucket.as_secs_f64()
    );
    let _ = writeln!(out, "renewals per {}:", fmt(fleet.bucket));
    const WIDTH: u64 = 50;
    let max = peak_bucket_renewals.max(1);
    let mut i = 0;
    while i < outcome.buckets.len() {
        let n = outcome.buckets[i];
        let start = offset(i as u64 * bucket_secs);
        if n == 0 {
            let run = outcome.buckets[i..].iter().take_while(|&&n| n == 0).count();
            if run > 1 {
                let last = offset((i + run - 1) as u64 * bucket_secs);
                let _ = writeln!(out, "  {start} .. {last} {:>8}  ({run} buckets)", 0);
                i += run;
                continue;
            }
        }
        let bar = if n == 0 { 0 } else { (n * WIDTH).div_ceil(max) };
        let _ = writeln!(out, "  {start} {n:>20}  {}", "#".repeat(bar as usize));
        i += 1;
    }
    out
}

pub fn run(args: &FleetArgs) -> anyhow::Result<ExitCode> {
    let fleet = Fleet::from_args(args)?;
    let started = Instant::now();
    let outcome = fleet.simulate()?;
    let elapsed = started.elapsed();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(&fleet, &outcome, elapsed))?
        );
    } else {
        print!("{}", report_text(&fleet, &outcome, elapsed));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(devices: u32, jitter: &str, enrolled_over: &str) -> Fleet {
        Fleet::from_args(&FleetArgs {
            devices,
            validity: "1d".into(),
            threshold: "80%".into(),
            retry: "4%".into(),
            jitter: jitter.into(),
            enrolled_over: enrolled_over.into(),
            duration: "7d".into(),
            bucket: "1h".into(),
            json: false,
        })
        .unwrap()
    }

    #[test]
    fn every_device_renews_once_per_threshold() {
        for (jitter, over) in [("0%", "0s"), ("10%", "0s"), ("0%", "1h"), ("10%", "6h")] {
            let f = fleet(2000, jitter, over);
            let o = f.simulate().unwrap();
            assert_eq!(o.enrollments, 2000);
            // 7d / (1d x 80%) = 8.75: 8 renewals (+-1); with 10% jitter each comes up to 10%
            // of the life sooner, so up to 7d / (1d x 70%) = 10.
            let expected = (7.0f64 / 0.8).floor() as u32;
            let most = if jitter == "0%" {
                expected + 1
            } else {
                (7.0f64 / 0.7).floor() as u32
            };
            assert!(
                o.per_device.0 + 1 >= expected && o.per_device.1 <= most,
                "{jitter} {over}: {:?}",
                o.per_device
            );
            assert_eq!(o.buckets.len(), 168);
            assert_eq!(o.buckets.iter().sum::<u64>(), o.renewals);
        }
        // All at once, no jitter: exactly 8 each, all in the same second.
        let o = fleet(2000, "0%", "0s").simulate().unwrap();
        assert_eq!(o.per_device, (8, 8));
        assert_eq!(o.peak_per_second, 2000);
        assert_eq!(o.peak_second, 86_400 * 8 / 10);
    }

    #[test]
    fn jitter_flattens_an_all_at_once_fleet() {
        let storm = fleet(20_000, "0%", "0s").simulate().unwrap();
        let jittered = fleet(20_000, "10%", "0s").simulate().unwrap();
        assert_eq!(storm.peak_per_second, 20_000);
        assert!(
            jittered.peak_per_second * 100 < storm.peak_per_second,
            "{} vs {}",
            jittered.peak_per_second,
            storm.peak_per_second
        );
        let f = fleet(20_000, "10%", "0s");
        assert!(jittered.peak_to_mean(&f) < storm.peak_to_mean(&f));
    }

    #[test]
    fn enrolling_over_an_hour_spreads_the_renewals() {
        let storm = fleet(20_000, "0%", "0s").simulate().unwrap();
        let spread = fleet(20_000, "0%", "1h").simulate().unwrap();
        // 20,000 over 3600 s: 5 or 6 a second, hour after hour.
        assert!(spread.peak_per_second <= 7, "{}", spread.peak_per_second);
        assert!(spread.peak_per_second < storm.peak_per_second);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let f = fleet(100, "10%", "0s");
        let o = f.simulate().unwrap();
        let v = report_json(&f, &o, Duration::from_millis(5));
        for key in [
            "devices",
            "validity_seconds",
            "threshold",
            "retry",
            "jitter",
            "enrolled_over_seconds",
            "duration_seconds",
            "bucket_seconds",
            "enrollments",
            "renewals",
            "mean_per_second",
            "peak_per_second",
            "peak_second_at_seconds",
            "peak_to_mean",
            "elapsed_seconds",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["simulation"], true);
        assert_eq!(v["jitter"], "10%");
        assert_eq!(v["buckets"].as_array().unwrap().len(), 168);
        assert!(v["peak_bucket"]["renewals"].as_u64().unwrap() > 0);
        assert!(v["renewals_per_device"]["min"].as_u64().unwrap() >= 8);
        let text = report_text(&f, &o, Duration::from_millis(5));
        assert!(
            text.contains("no server") && text.contains("peak/mean"),
            "{text}"
        );
    }

    #[test]
    fn bad_options_are_errors() {
        let args = |jitter: &str, bucket: &str, devices: u32| FleetArgs {
            devices,
            validity: "1d".into(),
            threshold: "80%".into(),
            retry: "4%".into(),
            jitter: jitter.into(),
            enrolled_over: "0s".into(),
            duration: "7d".into(),
            bucket: bucket.into(),
            json: false,
        };
        assert!(Fleet::from_args(&args("60%", "1h", 10)).is_err());
        assert!(Fleet::from_args(&args("10%", "8d", 10)).is_err());
        assert!(Fleet::from_args(&args("10%", "1s", 10)).is_err());
        assert!(Fleet::from_args(&args("10%", "1h", 0)).is_err());
        assert!(Fleet::from_args(&args("10%", "1h", MAX_DEVICES + 1)).is_err());
        assert!(Fleet::from_args(&args("10%", "1h", 10)).is_ok());
    }
}
