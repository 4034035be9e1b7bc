//! Durations as typed on the command line: `90s`, `30m`, `24h`, `7d`, or `1h30m`.

use crate::error::{ClientError, Result};

/// Parses a duration into whole seconds. Units: `s`, `m`, `h`, `d`; parts may be combined
/// (`1d12h`). Zero is rejected, since no credential should expire on creation.
pub fn parse_duration(input: &str) -> Result<u64> {
    let invalid = |reason: &str| ClientError::InvalidDuration {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(invalid("it is empty"));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(invalid(&format!("unknown unit {c:?}"))),
        };
        if digits.is_empty() {
            return Err(invalid("a unit must follow a number"));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| invalid("the number is too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| invalid("it is too large"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(invalid("the last number has no unit"));
    }
    if total == 0 {
        return Err(invalid("it must be longer than zero"));
    }
    Ok(total)
}

/// Formats seconds compactly for humans: `45s`, `30m`, `23h59m`, `6d23h`.
pub fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_units() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("24h").unwrap(), 86_400);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
    }

    #[test]
    fn combined_units() {
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("1d12h").unwrap(), 129_600);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "24",
            "h",
            "10x",
            "0h",
            "1.5h",
            "-1h",
            "99999999999999999999d",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.to_string().contains("24h"), "{err}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_duration(45), "45s");
        assert_eq!(format_duration(1800), "30m");
        assert_eq!(format_duration(86_399), "23h59m");
        assert_eq!(format_duration(7200), "2h");
        assert_eq!(format_duration(604_800), "7d");
        assert_eq!(format_duration(601_200), "6d23h");
    }
}
