//! Go/Kubernetes-style duration strings (`90m`, `1h30m`, `24h`, `45s`), as cert-manager's
//! `duration` and `renewBefore` fields use them.
//!
//! The accepted grammar is exactly what [`DURATION_PATTERN`] admits in the CRD schema, so
//! anything the apiserver lets through parses here, and the CEL `duration()` function (Go's
//! `time.ParseDuration`) agrees on the value. Units are restricted to `h`, `m` and `s`:
//! sub-second units make no sense for token lifetimes, and `ms` would be easy to misread
//! as minutes.

use std::{fmt, time::Duration};

/// The OpenAPI `pattern` for duration fields: one or more `<number><unit>` groups,
/// with unit `h`, `m` or `s` and an optional decimal fraction (`1.5h`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$";

/// Longest duration string the schema accepts; bounds CEL's cost estimate and keeps
/// obviously absurd input out.
pub const DURATION_MAX_LENGTH: u32 = 32;

/// Why a duration string was refused. Messages name the offending input so they can go
/// straight into a condition message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration is empty; use a value such as `90m`, `1h30m` or `24h`")]
    Empty,
    #[error(
        "invalid duration `{input}`: expected a number at position {position}; use a value such as `90m`, `1h30m` or `24h`"
    )]
    ExpectedNumber { input: String, position: usize },
    #[error(
        "invalid duration `{input}`: number at position {position} has no unit; add `h`, `m` or `s`"
    )]
    MissingUnit { input: String, position: usize },
    #[error("invalid duration `{input}`: unit `{unit}` is not supported; use `h`, `m` or `s`")]
    UnknownUnit { input: String, unit: String },
    #[error("invalid duration `{input}`: the value is too large")]
    Overflow { input: String },
}

/// Parses a Go-style duration restricted to `h`, `m` and `s` units. Sign prefixes are
/// refused: every duration in this API is a positive span.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let bytes = input.as_bytes();
    let mut pos = 0;
    let mut total_nanos: u128 = 0;
    while pos < bytes.len() {
        let start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos == start {
            return Err(DurationError::ExpectedNumber {
                input: input.to_owned(),
                position: start,
            });
        }
        let whole = &input[start..pos];
        let mut fraction = "";
        if pos < bytes.len() && bytes[pos] == b'.' {
            let frac_start = pos + 1;
            pos = frac_start;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            if pos == frac_start {
                return Err(DurationError::ExpectedNumber {
                    input: input.to_owned(),
                    position: frac_start,
                });
            }
            fraction = &input[frac_start..pos];
        }
        let unit_start = pos;
        while pos < bytes.len() && !bytes[pos].is_ascii_digit() && bytes[pos] != b'.' {
            pos += 1;
        }
        let unit = &input[unit_start..pos];
        let unit_nanos: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "" => {
                return Err(DurationError::MissingUnit {
                    input: input.to_owned(),
                    position: start,
                });
            }
            other => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: other.to_owned(),
                });
            }
        };
        let overflow = || DurationError::Overflow {
            input: input.to_owned(),
        };
        let whole: u128 = whole.parse().map_err(|_| overflow())?;
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(overflow)?;
        if !fraction.is_empty() {
            // Digits beyond nanosecond precision cannot change the result; dropping them
            // keeps the arithmetic in range whatever the input length.
            let digits = &fraction[..fraction.len().min(18)];
            let numerator: u128 = digits.parse().map_err(|_| overflow())?;
            let denominator = 10u128.pow(digits.len() as u32);
            nanos = nanos
                .checked_add(numerator * unit_nanos / denominator)
                .ok_or_else(overflow)?;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(overflow)?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| DurationError::Overflow {
        input: input.to_owned(),
    })?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats a duration compactly in the same grammar (`1h30m`, `24h`, `45s`, `1.5s`), so that
/// `parse_duration(&format_duration(d)) == d` for whole nanoseconds. Zero components are
/// left out (Go would print `1h30m0s`; both parse to the same value).
pub fn format_duration(d: Duration) -> String {
    FormatDuration(d).to_string()
}

/// [`Display`](fmt::Display) adapter behind [`format_duration`], for use in messages without
/// an intermediate `String`.
#[derive(Debug, Clone, Copy)]
pub struct FormatDuration(pub Duration);

impl fmt::Display for FormatDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if total == 0 && nanos == 0 {
            return f.write_str("0s");
        }
        let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if nanos > 0 {
            let frac = format!("{nanos:09}");
            write!(f, "{s}.{}s", frac.trim_end_matches('0'))?;
        } else if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn parses_single_units() {
        assert_eq!(parse_duration("90m"), Ok(secs(90 * 60)));
        assert_eq!(parse_duration("24h"), Ok(secs(24 * 3600)));
        assert_eq!(parse_duration("45s"), Ok(secs(45)));
        assert_eq!(parse_duration("0s"), Ok(secs(0)));
    }

    #[test]
    fn parses_compound_and_fractional() {
        assert_eq!(parse_duration("1h30m"), Ok(secs(5400)));
        assert_eq!(parse_duration("1h30m0s"), Ok(secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(secs(5400)));
        assert_eq!(
            parse_duration("2m30.25s"),
            Ok(Duration::from_millis(150_250))
        );
        // Go accepts repeated and unordered units; so does the schema pattern.
        assert_eq!(parse_duration("30m1h"), Ok(secs(5400)));
    }

    #[test]
    fn refuses_bad_input_with_clear_errors() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("90"),
            Err(DurationError::MissingUnit { position: 0, .. })
        ));
        assert!(matches!(
            parse_duration("1d"),
            Err(DurationError::UnknownUnit { ref unit, .. }) if unit == "d"
        ));
        assert!(matches!(
            parse_duration("500ms"),
            Err(DurationError::UnknownUnit { ref unit, .. }) if unit == "ms"
        ));
        assert!(matches!(
            parse_duration("-1h"),
            Err(DurationError::ExpectedNumber { position: 0, .. })
        ));
        assert!(matches!(
            parse_duration("h"),
            Err(DurationError::ExpectedNumber { .. })
        ));
        assert!(matches!(
            parse_duration("1.h"),
            Err(DurationError::ExpectedNumber { position: 2, .. })
        ));
        assert!(matches!(
            parse_duration(" 1h"),
            Err(DurationError::ExpectedNumber { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999999999999999999999999h"),
            Err(DurationError::Overflow { .. })
        ));
        let msg = parse_duration("1d").unwrap_err().to_string();
        assert!(
            msg.contains("`1d`") && msg.contains("`h`, `m` or `s`"),
            "{msg}"
        );
    }

    #[test]
    fn formats_compactly_and_round_trips() {
        assert_eq!(format_duration(secs(5400)), "1h30m");
        assert_eq!(format_duration(secs(24 * 3600)), "24h");
        assert_eq!(format_duration(secs(8 * 3600)), "8h");
        assert_eq!(format_duration(secs(45)), "45s");
        assert_eq!(format_duration(secs(3661)), "1h1m1s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        for d in [
            secs(1),
            secs(59),
            secs(3599),
            secs(86_399),
            Duration::from_nanos(1),
            Duration::from_millis(123_456),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
