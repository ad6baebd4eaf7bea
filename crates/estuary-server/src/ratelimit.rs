//! Rate limits: token buckets per source address and per authenticated identity, refilled
//! continuously at `N per minute`, sharded so that no lock is shared by all requests.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Buckets kept per shard before idle ones are dropped.
const MAX_PER_SHARD: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The rate-limit key of an address: IPv4 as is, IPv6 by /64 (one host may own a whole /64).
pub fn address_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Token buckets keyed by a string (an address or an identity).
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: f64,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimiter {
    /// `per_minute` requests per minute per key, with a burst of the same size; 0 = unlimited.
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute: f64::from(per_minute),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The budget per minute.
    pub fn per_minute(&self) -> u32 {
        self.per_minute as u32
    }

    /// Whether limiting is on.
    pub fn enabled(&self) -> bool {
        self.per_minute > 0.0
    }

    /// Takes `cost` tokens for `key`. `Err(wait)` when there are not enough: how long until
    /// one request would be allowed again.
    pub fn take(&self, key: &str, cost: u32) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let Ok(mut shard) = self.shards[(h.finish() as usize) % SHARDS].lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let rate = self.per_minute / 60.0;
        if shard.len() >= MAX_PER_SHARD {
            // Drop buckets that are full again (idle keys); they would start full anyway.
            let full = self.per_minute;
            shard.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < full
            });
            if shard.len() >= MAX_PER_SHARD {
                // Still full of active keys (a flood of addresses): drop the half used least
                // recently. Clearing the shard instead would hand every depleted bucket,
                // a password guesser's included, a fresh budget.
                let mut ages: Vec<Instant> = shard.values().map(|b| b.updated).collect();
                let middle = ages.len() / 2;
                let (_, cutoff, _) = ages.select_nth_unstable(middle);
                let cutoff = *cutoff;
                shard.retain(|_, b| b.updated > cutoff);
            }
        }
        let bucket = shard.entry(key.to_string()).or_insert(Bucket {
            tokens: self.per_minute,
            updated: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate)
            .min(self.per_minute);
        bucket.updated = now;
        let cost = f64::from(cost);
        if bucket.tokens >= 1.0 {
            // A request is allowed while any token is left; its full cost may drive the
            // bucket negative (a failed login costs more than one request).
            bucket.tokens -= cost;
            return Ok(());
        }
        let missing = 1.0 - bucket.tokens;
        // Whole seconds, rounded up: Retry-After is in seconds (RFC 9110 §10.2.3).
        Err(Duration::from_secs((missing / rate).ceil().max(1.0) as u64))
    }

    /// Gives back tokens taken for a request that turned out to be one the limit is not for
    /// (a registration authority's, which carries many devices' requests from one address);
    /// never above the burst.
    pub fn refund(&self, key: &str, tokens: u32) {
        if !self.enabled() || tokens == 0 {
            return;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        if let Ok(mut shard) = self.shards[(h.finish() as usize) % SHARDS].lock() {
            if let Some(b) = shard.get_mut(key) {
                b.tokens = (b.tokens + f64::from(tokens)).min(self.per_minute);
            }
        }
    }

    /// Charges extra tokens after the fact (a failed authentication).
    pub fn charge(&self, key: &str, cost: u32) {
        if !self.enabled() || cost == 0 {
            return;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        if let Ok(mut shard) = self.shards[(h.finish() as usize) % SHARDS].lock() {
            if let Some(b) = shard.get_mut(key) {
                b.tokens -= f64::from(cost);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_refills() {
        let limiter = RateLimiter::new(3);
        assert!(limiter.take("a", 1).is_ok());
        assert!(limiter.take("a", 1).is_ok());
        assert!(limiter.take("a", 1).is_ok());
        let wait = limiter.take("a", 1).unwrap_err();
        assert!(wait >= Duration::from_secs(1));
        assert!(limiter.take("b", 1).is_ok(), "keys are independent");
        limiter.charge("b", 10);
        assert!(limiter.take("b", 1).is_err(), "failed logins cost more");
        assert!(RateLimiter::new(0).take("x", 100).is_ok());
        // A refund is capped at the burst.
        let limiter = RateLimiter::new(2);
        assert!(limiter.take("ra", 1).is_ok());
        assert!(limiter.take("ra", 1).is_ok());
        limiter.refund("ra", 5);
        assert!(limiter.take("ra", 1).is_ok());
        assert!(limiter.take("ra", 1).is_ok());
        assert!(limiter.take("ra", 1).is_err());
    }

    #[test]
    fn a_flood_of_keys_does_not_refill_a_depleted_bucket() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(limiter.take("guesser", 1).is_ok());
        }
        assert!(limiter.take("guesser", 1).is_err());
        // Enough other keys to overflow every shard many times over.
        for i in 0..(SHARDS * MAX_PER_SHARD * 2) {
            let _ = limiter.take(&format!("flood-{i}"), 1);
            if i % 1000 == 0 {
                // The guesser keeps trying, so it stays among the recently used.
                let _ = limiter.take("guesser", 1);
            }
        }
        assert!(
            limiter.take("guesser", 1).is_err(),
            "the guesser's bucket survived"
        );
    }
}
