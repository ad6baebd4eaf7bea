//! Human durations as written in config files and on command lines: `30s`, `60m`, `12h`,
//! `1d`, `90d`, plus the spellings IoT Edge uses (`min`, `day`).

use std::time::Duration;

use crate::WireError;

/// Parses `N` followed by a unit: `s`/`sec`, `m`/`min`, `h`/`hour`, `d`/`day`, `w`/`week`
/// (plural forms too). A bare number is rejected: the unit is always explicit.
pub fn parse_duration(text: &str) -> Result<Duration, WireError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| WireError::NotADuration(text.to_string()))?;
    // Case-sensitive on purpose: "60M" is not silently 60 minutes (or months).
    let unit_secs = match unit.trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 604_800,
        "" => {
            return Err(WireError::DurationWithoutUnit {
                text: text.to_string(),
                n,
            })
        }
        other => {
            return Err(WireError::UnknownDurationUnit {
                text: text.to_string(),
                unit: other.to_string(),
            })
        }
    };
    if n == 0 {
        return Err(WireError::ZeroDuration(text.to_string()));
    }
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| WireError::DurationTooLong(text.to_string()))
}

/// Formats a duration in the largest unit that divides it exactly (`86400s` -> `1d`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, secs) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= secs && s.is_multiple_of(secs) {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_duration("30s").ok(), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("60m").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_duration("60min").ok(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_duration("12h").ok(),
            Some(Duration::from_secs(43_200))
        );
        assert_eq!(parse_duration("1d").ok(), Some(Duration::from_secs(86_400)));
        assert_eq!(
            parse_duration("2day").ok(),
            Some(Duration::from_secs(172_800))
        );
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("60M").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(
            parse_duration("5x").map_err(|e| e.to_string()),
            Err(r#""5x": unknown unit "x"; accepted: s, m/min, h, d/day, w"#.to_string())
        );
        assert_eq!(
            parse_duration("10").map_err(|e| e.to_string()),
            Err(r#""10" has no unit; write e.g. 10s, 10m, 10h or 10d"#.to_string())
        );
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    }
}
