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

/// The auto-renew settings of one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewPolicy {
    /// When to renew.
    pub threshold: Threshold,
    /// How long to wait after a failure.
    pub retry: Threshold,
    /// A new key on each renewal.
    pub rotate_key: bool,
}

impl RenewPolicy {
    /// IoT Edge's default: 80%, retry 4%.
    pub fn iot_edge_default(rotate_key: bool) -> Self {
        RenewPolicy {
            threshold: Threshold::Percent(80),
            retry: Threshold::Percent(4),
            rotate_key,
        }
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
}
