//! Retry policy: exponential backoff with full jitter, never sooner than the server's
//! `Retry-After`. The delay computation is a pure function so it can be tested exactly.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first; 1 disables retries.
    pub max_attempts: u32,
    /// The backoff ceiling of the first retry; doubles with each retry.
    pub base_delay: Duration,
    /// No computed backoff exceeds this.
    pub max_delay: Duration,
    /// A `Retry-After` longer than this ends the retries and returns the error (with its
    /// `retry_after`) to the caller, who can requeue, instead of blocking a reconcile.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    pub fn no_retries() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The backoff ceiling before retry number `retry` (1 for the first retry):
    /// `min(max_delay, base_delay * 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        self.base_delay
            .checked_mul(1u32 << exp)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// How long to wait before the next attempt after `attempts_made` attempts failed with
    /// a retryable error, or `None` to give up. `unit_random` in `[0, 1)` draws the full
    /// jitter (uniform in `[0, ceiling]`), which spreads out clients that failed together.
    pub fn next_delay(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        unit_random: f64,
    ) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        if retry_after.is_some_and(|ra| ra > self.max_retry_after) {
            return None;
        }
        let jitter = if unit_random.is_finite() {
            unit_random.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let backoff = self.ceiling(attempts_made).mul_f64(jitter);
        Some(match retry_after {
            Some(ra) => backoff.max(ra),
            None => backoff,
        })
    }
}

/// The longest wait any answer can impose. The endpoint may be a tenant's own server: a
/// `Retry-After` of `u64::MAX` seconds must neither overflow time arithmetic nor freeze an
/// identity for centuries. ACS itself asks for seconds.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The wait a response asks for: Azure's `retry-after-ms` / `x-ms-retry-after-ms` first
/// (finer grained), then `Retry-After` as seconds or as an HTTP date relative to `now`.
/// Never more than [`MAX_RETRY_AFTER`].
pub fn retry_after_from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after_ms)
        {
            return Some(ms);
        }
    }
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, now)
}

/// A millisecond count, at most [`MAX_RETRY_AFTER`]; digits beyond `u64` saturate.
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms = value.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_millis(ms).min(MAX_RETRY_AFTER))
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>`; a date in the past means now.
/// Never more than [`MAX_RETRY_AFTER`], however many digits or however far the date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    // Some servers send fractional seconds; accept them rather than ignoring the hint.
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn ceiling_doubles_and_caps() {
        let p = policy();
        let got: Vec<u128> = (1..=6).map(|r| p.ceiling(r).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.ceiling(200), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let p = policy();
        assert_eq!(p.next_delay(3, None, 0.0), Some(Duration::ZERO));
        assert_eq!(p.next_delay(3, None, 0.5), Some(Duration::from_millis(200)));
        assert_eq!(p.next_delay(3, None, 1.0), Some(Duration::from_millis(400)));
        // Garbage randomness cannot produce a longer wait than the ceiling.
        assert_eq!(p.next_delay(3, None, 7.0), Some(Duration::from_millis(400)));
        assert_eq!(p.next_delay(3, None, f64::NAN), Some(Duration::ZERO));
    }

    #[test]
    fn attempts_are_bounded() {
        let p = policy();
        assert!(p.next_delay(5, None, 0.5).is_some());
        assert_eq!(p.next_delay(6, None, 0.5), None);
        assert_eq!(RetryPolicy::no_retries().next_delay(1, None, 0.5), None);
    }

    #[test]
    fn never_sooner_than_retry_after() {
        let p = policy();
        let ra = Duration::from_secs(5);
        for r in [0.0, 0.3, 0.99] {
            assert_eq!(p.next_delay(1, Some(ra), r), Some(ra));
        }
        // A short Retry-After does not shorten the backoff.
        assert_eq!(
            p.next_delay(4, Some(Duration::from_millis(10)), 1.0),
            Some(Duration::from_millis(800))
        );
    }

    #[test]
    fn retry_after_beyond_bound_gives_up() {
        assert_eq!(
            policy().next_delay(1, Some(Duration::from_secs(31)), 0.5),
            None
        );
    }

    #[test]
    fn parses_retry_after_seconds_and_dates() {
        let now = httpdate::parse_http_date("Tue, 24 Nov 2026 22:35:05 GMT").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Tue, 24 Nov 2026 22:35:35 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Tue, 24 Nov 2026 22:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn every_retry_after_is_bounded_at_full_width() {
        let now = httpdate::parse_http_date("Tue, 24 Nov 2026 22:35:05 GMT").unwrap();
        for value in [
            "18446744073709551615",
            "184467440737095516150000",
            "3601",
            "1e300",
            "86400.5",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(
                parse_retry_after(value, now),
                Some(MAX_RETRY_AFTER),
                "{value}"
            );
        }
        for value in ["18446744073709551615", "99999999999999999999999", "3600001"] {
            assert_eq!(
                parse_retry_after_ms(value),
                Some(MAX_RETRY_AFTER),
                "{value}"
            );
        }
        assert_eq!(parse_retry_after_ms("-1"), None);
        assert_eq!(parse_retry_after_ms("1.5"), None);
        assert_eq!(
            parse_retry_after_ms("250"),
            Some(Duration::from_millis(250))
        );
        // Whatever came back, adding it to the clock cannot overflow.
        let wait = parse_retry_after("18446744073709551615", now).unwrap();
        assert!(std::time::Instant::now().checked_add(wait).is_some());
    }

    #[test]
    fn millisecond_headers_win() {
        let now = SystemTime::UNIX_EPOCH;
        let mut h = HeaderMap::new();
        h.insert("retry-after", "9".parse().unwrap());
        assert_eq!(
            retry_after_from_headers(&h, now),
            Some(Duration::from_secs(9))
        );
        h.insert("x-ms-retry-after-ms", "250".parse().unwrap());
        assert_eq!(
            retry_after_from_headers(&h, now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_after_from_headers(&HeaderMap::new(), now), None);
    }
}
