//! Refusals of requests that proved no identity (401 without or with wrong credentials, a
//! 429 before authentication, an unknown label) are not written to the audit trail one by one:
//! anyone can send them, and a durable write each would let an anonymous client fill the disk.
//! They are counted in metrics and in the log, and summed here into one audit event a minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use estuary_store::AuditRecord;

use crate::est::truncate;

/// Most distinct addresses remembered per period; the rest are counted as "others".
const MAX_ADDRESSES: usize = 1024;
/// Refusals of one authenticated identity written one by one per period; the rest are summed.
pub const INDIVIDUAL_PER_IDENTITY: u64 = 10;
/// Most distinct identities remembered per period.
const MAX_IDENTITIES: usize = 1024;

/// Unauthenticated refusals since the last summary.
#[derive(Debug, Default)]
pub struct DenialTally {
    inner: Mutex<Period>,
}

#[derive(Debug)]
struct Period {
    started: std::time::Instant,
    total: u64,
    by_status: BTreeMap<u16, u64>,
    by_address: HashMap<String, u64>,
    other_addresses: u64,
    /// Refusals per authenticated identity this period (written one by one up to
    /// [`INDIVIDUAL_PER_IDENTITY`]).
    by_identity: HashMap<String, u64>,
    /// Refusals of authenticated identities summed rather than written.
    identity_overflow: u64,
}

impl Default for Period {
    fn default() -> Self {
        Period {
            started: std::time::Instant::now(),
            total: 0,
            by_status: BTreeMap::new(),
            by_address: HashMap::new(),
            other_addresses: 0,
            by_identity: HashMap::new(),
            identity_overflow: 0,
        }
    }
}

impl DenialTally {
    /// Counts one refusal.
    pub fn count(&self, address: &str, status: u16) {
        let Ok(mut p) = self.inner.lock() else {
            return;
        };
        p.total += 1;
        *p.by_status.entry(status).or_default() += 1;
        if let Some(n) = p.by_address.get_mut(address) {
            *n += 1;
        } else if p.by_address.len() < MAX_ADDRESSES {
            p.by_address.insert(address.to_string(), 1);
        } else {
            p.other_addresses += 1;
        }
    }

    /// Whether a refusal of this authenticated identity gets its own audit event: the first
    /// [`INDIVIDUAL_PER_IDENTITY`] a minute do; the rest (one identity looping on a refused
    /// request) are summed into the minute's summary, so no credential holder can fill the disk.
    pub fn admit_authenticated(&self, identity: &str) -> bool {
        let Ok(mut p) = self.inner.lock() else {
            return false;
        };
        let known = p.by_identity.len() < MAX_IDENTITIES || p.by_identity.contains_key(identity);
        if !known {
            p.identity_overflow += 1;
            return false;
        }
        let n = p.by_identity.entry(identity.to_string()).or_default();
        *n += 1;
        if *n <= INDIVIDUAL_PER_IDENTITY {
            true
        } else {
            p.identity_overflow += 1;
            false
        }
    }

    /// The summary of the period that ends now (and a new period), or `None` if it was quiet.
    pub fn take_summary(&self, now_unix: i64) -> Option<AuditRecord> {
        let period = std::mem::take(&mut *self.inner.lock().ok()?);
        let seconds = period.started.elapsed().as_secs().max(1);
        if period.total == 0 && period.identity_overflow == 0 {
            return None;
        }
        let mut noisy: Vec<(&String, &u64)> = period
            .by_identity
            .iter()
            .filter(|(_, n)| **n > INDIVIDUAL_PER_IDENTITY)
            .collect();
        noisy.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let authenticated = if period.identity_overflow > 0 {
            format!(
                "; {} more refusals of authenticated identities (over {INDIVIDUAL_PER_IDENTITY} a minute each) not written one by one, most: {}",
                period.identity_overflow,
                noisy
                    .iter()
                    .take(5)
                    .map(|(i, n)| format!("{} ({n})", truncate(i, 128)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        };
        let statuses: Vec<String> = period
            .by_status
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        let mut top: Vec<(&String, &u64)> = period.by_address.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<String> = top
            .iter()
            .take(5)
            .map(|(a, n)| format!("{a} ({n})"))
            .collect();
        let addresses = period.by_address.len() + usize::from(period.other_addresses > 0);
        Some(AuditRecord {
            time: now_unix,
            request_id: "-".into(),
            peer: top.first().cloned().unwrap_or_default(),
            requester: "-".into(),
            auth_method: "none".into(),
            label: String::new(),
            operation: "*".into(),
            outcome: estuary_store::Outcome::DeniedUnauthenticated,
            status: 0,
            serial: None,
            reason: Some(format!(
                "{} requests without a valid identity refused in the last {seconds} s ({}) from {}{} address(es); most: {}{authenticated}",
                period.total,
                statuses.join(", "),
                if period.other_addresses > 0 { "over " } else { "" },
                addresses,
                top.join(", ")
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_becomes_one_event() {
        let tally = DenialTally::default();
        assert!(tally.take_summary(1).is_none());
        for i in 0..5000u32 {
            tally.count(&format!("10.0.{}.{}", i / 256, i % 256), 401);
        }
        tally.count("10.0.0.1", 429);
        let event = tally.take_summary(2).map(|e| e.reason.unwrap_or_default());
        let text = event.unwrap_or_default();
        assert!(text.starts_with("5001 requests"), "{text}");
        assert!(text.contains("401: 5000, 429: 1"), "{text}");
        assert!(text.contains("over 1025 address"), "{text}");
        assert!(text.contains("10.0.0.1 (2)"), "{text}");
        assert!(tally.take_summary(3).is_none(), "a new period starts");
    }

    #[test]
    fn one_identity_looping_on_a_refusal_is_summed_after_ten() {
        let tally = DenialTally::default();
        let written = (0..100)
            .filter(|_| tally.admit_authenticated("basic:fleet"))
            .count();
        assert_eq!(written as u64, INDIVIDUAL_PER_IDENTITY);
        assert!(tally.admit_authenticated("basic:other"));
        let text = tally
            .take_summary(1)
            .and_then(|e| e.reason)
            .unwrap_or_default();
        assert!(
            text.contains("90 more refusals of authenticated identities"),
            "{text}"
        );
        assert!(text.contains("basic:fleet (100)"), "{text}");
        assert!(tally.admit_authenticated("basic:fleet"), "a new minute");
    }
}
