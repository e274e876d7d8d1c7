//! Pure formatting for people: timestamps with a relative hint, short durations and
//! aligned tables in kubectl's style. No I/O, so every rule here is unit-tested.

use jiff::{SignedDuration, Timestamp};

/// What an empty cell shows.
pub const NONE: &str = "-";

/// A timestamp as RFC 3339 in UTC, to the second: `2026-11-26T10:00:00Z`.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A duration's magnitude, short and rounded down: `42s`, `5m`, `23h`, `3h20m`, `2d`,
/// `1d4h`.
pub fn human_duration(d: SignedDuration) -> String {
    let secs = d.as_secs().unsigned_abs();
    let (days, hours, mins) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{mins}m"),
        3_600..86_400 if mins == 0 => format!("{hours}h"),
        3_600..86_400 => format!("{hours}h{mins}m"),
        _ if hours == 0 => format!("{days}d"),
        _ => format!("{days}d{hours}h"),
    }
}

/// `t` relative to `now`: `in 23h`, `5m ago`, or `now` within the second.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    let d = t.duration_since(now);
    match d.as_secs() {
        0 => "now".to_string(),
        s if s > 0 => format!("in {}", human_duration(d)),
        _ => format!("{} ago", human_duration(d)),
    }
}

/// `2026-11-26T10:00:00Z (in 23h)`.
pub fn when(t: Timestamp, now: Timestamp) -> String {
    format!("{} ({})", rfc3339(t), relative(t, now))
}

/// [`when`] for an optional time, `-` when absent.
pub fn when_opt(t: Option<Timestamp>, now: Timestamp) -> String {
    t.map_or_else(|| NONE.to_string(), |t| when(t, now))
}

/// Columns padded to their widest cell and separated by three spaces, as `kubectl get`
/// prints them; no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `label:` padded so the values of a block of lines start in one column.
pub fn field(out: &mut String, label: &str, value: impl std::fmt::Display) {
    out.push_str(&format!("{:<20}{value}\n", format!("{label}:")));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    #[test]
    fn durations_are_short_and_rounded_down() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3_599, "59m"),
            (3_600, "1h"),
            (23 * 3_600, "23h"),
            (23 * 3_600 + 59 * 60 + 59, "23h59m"),
            (3 * 3_600 + 20 * 60, "3h20m"),
            (2 * 86_400, "2d"),
            (86_400 + 4 * 3_600 + 59, "1d4h"),
            (-90, "1m"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                human_duration(SignedDuration::from_secs(secs)),
                want,
                "{secs}s"
            );
        }
    }

    #[test]
    fn relative_times_say_in_or_ago() {
        let now = ts("2026-11-25T11:00:00Z");
        assert_eq!(relative(ts("2026-11-26T10:00:00Z"), now), "in 23h");
        assert_eq!(relative(ts("2026-11-25T10:55:00Z"), now), "5m ago");
        assert_eq!(relative(ts("2026-11-25T11:00:00.4Z"), now), "now");
        assert_eq!(
            when(ts("2026-11-26T10:00:00Z"), now),
            "2026-11-26T10:00:00Z (in 23h)"
        );
        assert_eq!(
            when(ts("2026-11-23T09:00:00.123Z"), now),
            "2026-11-23T09:00:00Z (2d1h ago)"
        );
        assert_eq!(when_opt(None, now), "-");
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let rows = vec![
            vec!["app".to_string(), "True".to_string(), "-".to_string()],
            vec![
                "a-longer-name".to_string(),
                "False".to_string(),
                "x".to_string(),
            ],
        ];
        let out = table(&["NAME", "READY", "R"], &rows);
        assert_eq!(
            out,
            "NAME            READY   R\n\
             app             True    -\n\
             a-longer-name   False   x\n"
        );
        assert_eq!(table(&["NAME"], &[]), "NAME\n");
    }
}
