//! Renewal policy: when to renew and how long to wait after a failure.

use std::time::{Duration, SystemTime};

use crate::ClientError;

/// The part of a certificate's life that passes before a time threshold may renew it.
pub const MIN_LIFE_BEFORE_RENEWAL: f64 = 0.5;

/// A point in a certificate's life, as IoT Edge writes it: `N%` of the lifetime, or a time
/// before expiry (`Nmin`, `Nday`; Estuary also accepts `Ns`, `Nm`, `Nh`, `Nd`, `Nw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    /// Percentage of the lifetime (1-99).
    Percent(u8),
    /// A fixed duration.
    Time(Duration),
}

impl Threshold {
    /// Parses a threshold or retry value. `units_ok_for_iot_edge` is false when IoT Edge itself
    /// would reject the spelling ("bad units for policy"): it knows only `%`, `min` and `day`.
    pub fn parse(text: &str) -> Result<(Threshold, bool), ClientError> {
        Self::parse_as(text, false)
    }

    /// Parses a retry period (the wait after a failure): as [`Threshold::parse`], with an error
    /// that says what a retry period is.
    pub fn parse_retry(text: &str) -> Result<(Threshold, bool), ClientError> {
        Self::parse_as(text, true)
    }

    fn parse_as(text: &str, retry: bool) -> Result<(Threshold, bool), ClientError> {
        let t = text.trim();
        if let Some(n) = t.strip_suffix('%') {
            let n: u8 = n
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=99).contains(n))
                .ok_or_else(|| {
                    ClientError::Config(format!("{text:?}: a percentage must be 1% to 99%"))
                })?;
            return Ok((Threshold::Percent(n), true));
        }
        // The example names only spellings IoT Edge accepts too: the wire parser's own
        // suggestion ("60m") is one that `estuary check` then flags.
        let d = estuary_wire::duration::parse_duration(t).map_err(|_| {
            ClientError::Config(if retry {
                format!(
                    "{text:?} is not a retry period (how long to wait after a failed attempt); write it as IoT Edge does: N% of the certificate's lifetime (1-99) or a time in Nmin or Nday, e.g. \"4%\", \"10min\", \"1day\"; accepted: N%, Nmin, Nday (Estuary alone also reads Ns, Nm, Nh, Nd, Nw)"
                )
            } else {
                format!(
                    "{text:?} is not a renewal threshold; write it as IoT Edge does: N% of the lifetime (1-99) or a time before expiry in Nmin or Nday, e.g. \"80%\", \"60min\", \"1day\"; accepted: N%, Nmin, Nday (Estuary alone also reads Ns, Nm, Nh, Nd, Nw)"
                )
            })
        })?;
        let unit = t.trim_start_matches(|c: char| c.is_ascii_digit()).trim();
        let iot_edge_ok = matches!(unit, "min" | "day");
        Ok((Threshold::Time(d), iot_edge_ok))
    }

    /// When to renew a certificate valid from `not_before` to `not_after`:
    /// `not_before + lifetime * N%`, or `not_after - T`. A time threshold never renews before
    /// half the life actually issued has passed ([`MIN_LIFE_BEFORE_RENEWAL`]): a threshold
    /// longer than the certificate's life (`60m` with 2-minute certificates) would otherwise
    /// renew at once, again and again.
    pub fn renewal_time(self, not_before: SystemTime, not_after: SystemTime) -> SystemTime {
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        match self {
            Threshold::Percent(p) => not_before + lifetime.mul_f64(f64::from(p) / 100.0),
            Threshold::Time(before) => {
                let floor = not_before + lifetime.mul_f64(MIN_LIFE_BEFORE_RENEWAL);
                not_after.checked_sub(before).unwrap_or(floor).max(floor)
            }
        }
    }

    /// Whether the floor of [`Threshold::renewal_time`] overrides this threshold for a
    /// certificate of `lifetime` (a time threshold longer than half of it).
    pub fn shortened_for(self, lifetime: Duration) -> bool {
        matches!(self, Threshold::Time(before) if before > lifetime.mul_f64(1.0 - MIN_LIFE_BEFORE_RENEWAL))
    }

    /// How long to wait after a failure: `N%` of the lifetime (of `lifetime`, or of one day
    /// when there is no certificate yet), or the duration; at least one second.
    pub fn retry_period(self, lifetime: Option<Duration>) -> Duration {
        let d = match self {
            Threshold::Percent(p) => lifetime
                .unwrap_or(Duration::from_secs(86_400))
                .mul_f64(f64::from(p) / 100.0),
            Threshold::Time(d) => d,
        };
        d.max(Duration::from_secs(1))
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Percent(p) => write!(f, "{p}%"),
            Threshold::Time(d) => f.write_str(&estuary_wire::duration::format_duration(*d)),
        }
    }
}

/// The largest renewal jitter: more could only hit the floor of half the life.
pub const MAX_JITTER_PERCENT: u8 = 50;

/// Renewal jitter (Estuary only, `[agent] renewal_jitter`): each certificate is renewed earlier
/// than its threshold by its own amount in `[0, N% of its lifetime)`, so that a fleet enrolled
/// at once does not renew at once. The amount is derived from a hash of the certificate itself
/// (its DER, serial included): the same certificate always gets the same amount, so a restart
/// does not re-roll it, and each new certificate gets a new one. `0%` (the default) is none:
/// IoT Edge's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Jitter(u8);

impl Jitter {
    /// No jitter: IoT Edge's behaviour.
    pub const NONE: Jitter = Jitter(0);

    /// `N%` of the lifetime, 0 to [`MAX_JITTER_PERCENT`].
    pub fn percent(p: u8) -> Result<Jitter, ClientError> {
        if p > MAX_JITTER_PERCENT {
            return Err(ClientError::Config(format!(
                "a renewal jitter of {p}% is more than {MAX_JITTER_PERCENT}% of the lifetime (renewal never comes before half the life)"
            )));
        }
        Ok(Jitter(p))
    }

    /// Parses `N%` (0% to 50%).
    pub fn parse(text: &str) -> Result<Jitter, ClientError> {
        let bad = || {
            ClientError::Config(format!(
                "{text:?} is not a renewal jitter; write it as a percentage of the certificate's lifetime, 0% to {MAX_JITTER_PERCENT}%, e.g. \"10%\""
            ))
        };
        let n: u8 = text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(bad)?;
        Self::percent(n).map_err(|_| bad())
    }

    /// The percentage (0: none).
    pub fn as_percent(self) -> u8 {
        self.0
    }

    /// How much earlier the certificate identified by `key` (its DER) is renewed: in
    /// `[0, lifetime x N%)`, the same for the same key.
    pub fn offset(self, lifetime: Duration, key: &[u8]) -> Duration {
        if self.0 == 0 {
            return Duration::ZERO;
        }
        let max = lifetime.mul_f64(f64::from(self.0) / 100.0);
        let offset = max.mul_f64(stable_fraction(key));
        // Rounding to nanoseconds must not reach the bound.
        if offset >= max {
            max.saturating_sub(Duration::from_nanos(1))
        } else {
            offset
        }
    }
}

impl std::fmt::Display for Jitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// A number in `[0, 1)` derived from `key` alone, the same in every build and on every
/// platform (FNV-1a, then the SplitMix64 finalizer to spread the bits).
pub fn stable_fraction(key: &[u8]) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The auto-renew settings of one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewPolicy {
    /// When to renew.
    pub threshold: Threshold,
    /// How long to wait after a failure.
    pub retry: Threshold,
    /// A new key on each renewal.
    pub rotate_key: bool,
    /// Renew earlier by a per-certificate amount (Estuary only; none by default).
    pub jitter: Jitter,
}

impl RenewPolicy {
    /// IoT Edge's default: 80%, retry 4%, no jitter.
    pub fn iot_edge_default(rotate_key: bool) -> Self {
        RenewPolicy {
            threshold: Threshold::Percent(80),
            retry: Threshold::Percent(4),
            rotate_key,
            jitter: Jitter::NONE,
        }
    }

    /// When to renew the certificate `key` (its DER) valid from `not_before` to `not_after`:
    /// [`Threshold::renewal_time`], moved earlier by [`Jitter::offset`], but never before half
    /// the life ([`MIN_LIFE_BEFORE_RENEWAL`]) and never later than the threshold. Without
    /// jitter, exactly the threshold's time.
    pub fn renewal_time(
        self,
        not_before: SystemTime,
        not_after: SystemTime,
        key: &[u8],
    ) -> SystemTime {
        let at = self.threshold.renewal_time(not_before, not_after);
        if self.jitter == Jitter::NONE {
            return at;
        }
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        let floor = not_before + lifetime.mul_f64(MIN_LIFE_BEFORE_RENEWAL);
        if at <= floor {
            return at;
        }
        at.checked_sub(self.jitter.offset(lifetime, key))
            .map_or(floor, |t| t.max(floor))
    }

    /// When the agent renews a valid certificate: at [`RenewPolicy::renewal_time`], but not
    /// sooner than one retry period after the last success (so that a device clock running far
    /// ahead cannot cause a renewal storm), and never before its notBefore.
    pub fn renewal_due(
        self,
        not_before: SystemTime,
        not_after: SystemTime,
        key: &[u8],
        last_success: Option<SystemTime>,
    ) -> SystemTime {
        let at = self.renewal_time(not_before, not_after, key);
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        let earliest = last_success.map(|last| {
            let wait = self.retry.retry_period(Some(lifetime));
            last.checked_add(wait)
                .or_else(|| last.checked_add(Duration::from_secs(100 * 365 * 86_400)))
                .unwrap_or(last)
        });
        earliest.map_or(at, |e| at.max(e)).max(not_before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iot_edge_and_estuary_spellings() {
        assert_eq!(
            Threshold::parse("80%").ok(),
            Some((Threshold::Percent(80), true))
        );
        assert_eq!(
            Threshold::parse("60min").ok(),
            Some((Threshold::Time(Duration::from_secs(3600)), true))
        );
        assert_eq!(
            Threshold::parse("1day").ok(),
            Some((Threshold::Time(Duration::from_secs(86_400)), true))
        );
        // The tutorial's "60m": IoT Edge rejects it, Estuary accepts it and says so.
        assert_eq!(
            Threshold::parse("60m").ok(),
            Some((Threshold::Time(Duration::from_secs(3600)), false))
        );
        assert_eq!(
            Threshold::parse("2h").ok(),
            Some((Threshold::Time(Duration::from_secs(7200)), false))
        );
        assert!(Threshold::parse("0%").is_err());
        assert!(Threshold::parse("100%").is_err());
        assert!(Threshold::parse("soon").is_err());
    }

    #[test]
    fn computes_renewal_and_retry_times() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let na = nb + Duration::from_secs(100);
        assert_eq!(
            Threshold::Percent(80).renewal_time(nb, na),
            nb + Duration::from_secs(80)
        );
        assert_eq!(
            Threshold::Time(Duration::from_secs(30)).renewal_time(nb, na),
            nb + Duration::from_secs(70)
        );
        // Longer than the life (or than half of it): renewed at half the life, never at once.
        assert_eq!(
            Threshold::Time(Duration::from_secs(300)).renewal_time(nb, na),
            nb + Duration::from_secs(50)
        );
        assert_eq!(
            Threshold::Time(Duration::from_secs(60)).renewal_time(nb, na),
            nb + Duration::from_secs(50)
        );
        assert!(
            Threshold::Time(Duration::from_secs(300)).shortened_for(na.duration_since(nb).unwrap())
        );
        assert!(
            !Threshold::Time(Duration::from_secs(30)).shortened_for(na.duration_since(nb).unwrap())
        );
        assert!(!Threshold::Percent(90).shortened_for(na.duration_since(nb).unwrap()));
        assert_eq!(
            Threshold::Percent(4).retry_period(Some(Duration::from_secs(100))),
            Duration::from_secs(4)
        );
        assert_eq!(
            Threshold::Percent(4).retry_period(Some(Duration::from_secs(10))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn parses_jitter() {
        assert_eq!(Jitter::parse("10%").ok(), Some(Jitter(10)));
        assert_eq!(Jitter::parse(" 0% ").ok(), Some(Jitter::NONE));
        assert_eq!(Jitter::parse("50%").ok(), Some(Jitter(50)));
        for bad in ["51%", "10", "-1%", "1h", "ten%"] {
            let e = Jitter::parse(bad).unwrap_err().to_string();
            assert!(e.contains("renewal jitter") && e.contains("10%"), "{e}");
        }
        assert_eq!(Jitter(10).to_string(), "10%");
    }

    #[test]
    fn without_jitter_the_renewal_time_is_the_thresholds() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let na = nb + Duration::from_secs(86_400);
        for threshold in [
            Threshold::Percent(80),
            Threshold::Percent(30),
            Threshold::Time(Duration::from_secs(3600)),
            Threshold::Time(Duration::from_secs(86_400 * 2)),
        ] {
            let policy = RenewPolicy {
                threshold,
                ..RenewPolicy::iot_edge_default(false)
            };
            assert_eq!(policy.jitter, Jitter::NONE);
            for key in [&b""[..], b"a", b"another certificate"] {
                assert_eq!(
                    policy.renewal_time(nb, na, key),
                    threshold.renewal_time(nb, na)
                );
            }
        }
    }

    #[test]
    fn jitter_is_bounded_deterministic_and_spread() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let life = Duration::from_secs(86_400);
        let na = nb + life;
        let policy = RenewPolicy {
            jitter: Jitter(10),
            ..RenewPolicy::iot_edge_default(false)
        };
        let at = nb + life.mul_f64(0.8);
        let earliest = nb + life.mul_f64(0.7);
        let mut offsets = Vec::new();
        for i in 0u32..2000 {
            let key = i.to_be_bytes();
            let t = policy.renewal_time(nb, na, &key);
            assert!(t <= at && t > earliest, "{i}: {t:?}");
            // The same certificate, the same time (a restart does not re-roll it).
            assert_eq!(t, policy.renewal_time(nb, na, &key));
            offsets.push(at.duration_since(t).unwrap().as_secs_f64() / life.as_secs_f64());
        }
        // Spread over the whole range, not bunched: every tenth of it is used.
        let mut deciles = [0u32; 10];
        for o in &offsets {
            deciles[((o / 0.1) * 10.0) as usize] += 1;
        }
        assert!(deciles.iter().all(|&n| n > 120), "{deciles:?}");
        // Stable across builds: a fixed key, a fixed fraction.
        assert_eq!(stable_fraction(b"estuary"), stable_fraction(b"estuary"));
        assert_ne!(stable_fraction(b"estuary"), stable_fraction(b"estuarz"));
        assert!((0.0..1.0).contains(&stable_fraction(&[])));
    }

    #[test]
    fn jitter_never_goes_below_half_the_life() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let life = Duration::from_secs(1000);
        let na = nb + life;
        let half = nb + Duration::from_secs(500);
        // 55% - up to 50%: the floor holds.
        let policy = RenewPolicy {
            threshold: Threshold::Percent(55),
            jitter: Jitter(50),
            ..RenewPolicy::iot_edge_default(false)
        };
        let times: Vec<_> = (0u32..500)
            .map(|i| policy.renewal_time(nb, na, &i.to_le_bytes()))
            .collect();
        assert!(times
            .iter()
            .all(|t| *t >= half && *t <= nb + Duration::from_secs(550)));
        assert!(times.contains(&half));
        // A threshold already before half the life is not moved at all (never later).
        let early = RenewPolicy {
            threshold: Threshold::Percent(30),
            jitter: Jitter(10),
            ..RenewPolicy::iot_edge_default(false)
        };
        assert_eq!(
            early.renewal_time(nb, na, b"x"),
            nb + Duration::from_secs(300)
        );
        // A time threshold longer than half the life: the floor, jitter or not.
        let long = RenewPolicy {
            threshold: Threshold::Time(Duration::from_secs(900)),
            jitter: Jitter(10),
            ..RenewPolicy::iot_edge_default(false)
        };
        assert_eq!(long.renewal_time(nb, na, b"x"), half);
    }
}
