//! When to renew a token, and whether a new one is needed now. Pure functions of plain
//! inputs so that every rule is unit-tested without an apiserver or ACS.
//!
//! Renewal follows cert-manager (`renewalTime = notAfter - renewBefore`, computed from the
//! expiry the service actually returned) with DESIGN.md's twist for short tokens: when
//! ACS grants less than was asked (a service policy, the emulator's lifetime scale), the
//! configured renewBefore says nothing useful about that token, so renew at two thirds of
//! its real lifetime. A minimum delay after issuance keeps a broken clock or a tiny token
//! from turning into a hot loop of issue calls.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Never schedule a renewal sooner than this after a token was issued.
pub const MIN_RENEWAL_DELAY: Duration = Duration::from_secs(15);

/// Largest jitter, as a fraction of the renew-before window. Small enough that renewal
/// still happens well before expiry; large enough to spread a thousand identities
/// created by one `kubectl apply` over minutes (24h token: up to 24 min).
pub const MAX_JITTER_FRACTION: f64 = 0.05;

/// A granted lifetime counts as "shorter than requested" only when it falls short by more
/// than this fraction (or [`SHORT_TOKEN_MIN_TOLERANCE`]): the issue time is our clock, the
/// expiry is ACS's, and the two differ by request latency and skew.
pub const SHORT_TOKEN_TOLERANCE_FRACTION: f64 = 0.05;
/// Lower bound of the tolerance above.
pub const SHORT_TOKEN_MIN_TOLERANCE: Duration = Duration::from_secs(60);

/// Deterministic per-object jitter in `[0, 1)`, derived from the object's UID so a
/// restarted operator computes the same renewal time (no status churn) while identities
/// created together get different ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter(f64);

impl Jitter {
    /// No jitter: renewal times in tests are exact.
    #[cfg(test)]
    pub const NONE: Jitter = Jitter(0.0);

    /// Jitter from a UID: FNV-1a, chosen because it is stable across Rust releases
    /// (unlike `DefaultHasher`) and needs no dependency, followed by the murmur3 finalizer
    /// because FNV's high bits barely move for UIDs that differ only at the end.
    pub fn from_uid(uid: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in uid.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^= hash >> 33;
        // 53 bits fit an f64 mantissa exactly, giving a uniform value in [0, 1).
        Jitter((hash >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// The fraction in `[0, 1)`.
    pub fn fraction(self) -> f64 {
        self.0
    }
}

/// Which rule produced a renewal time; worth an event or log line when it is not the
/// ordinary one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalBasis {
    /// `expiresOn - renewBefore - jitter`.
    RenewBefore,
    /// The token came back shorter than requested (or renewBefore did not fit in it):
    /// two thirds of its real lifetime, minus jitter.
    TwoThirdsOfGrantedLifetime,
    /// Clamped to `issuedAt + MIN_RENEWAL_DELAY` (token already expired, or tiny).
    MinimumDelay,
}

/// When to renew, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    pub at: Timestamp,
    pub basis: RenewalBasis,
    /// The lifetime ACS actually granted (`expiresOn - issuedAt`, zero if negative).
    pub granted_lifetime: Duration,
}

/// Computes the renewal time of a token issued at `issued_at` (our clock, when the request
/// was sent) that expires at `expires_on` (as ACS returned it), requested with
/// `lifetime_requested` and a resolved `renew_before` (< lifetime, see
/// [`crate::api::CommunicationIdentitySpec::renew_before`]).
///
/// Recomputing from status on every reconcile is cheap and deterministic, so a change of
/// `renewBefore` alone reschedules without issuing a token.
pub fn renewal_time(
    issued_at: Timestamp,
    expires_on: Timestamp,
    lifetime_requested: Duration,
    renew_before: Duration,
    jitter: Jitter,
) -> Renewal {
    let granted = to_std(expires_on.duration_since(issued_at));
    let tolerance =
        SHORT_TOKEN_MIN_TOLERANCE.max(lifetime_requested.mul_f64(SHORT_TOKEN_TOLERANCE_FRACTION));
    let shorter_than_requested = granted + tolerance < lifetime_requested;

    let (window, basis) = if shorter_than_requested || renew_before >= granted {
        (granted / 3, RenewalBasis::TwoThirdsOfGrantedLifetime)
    } else {
        (renew_before, RenewalBasis::RenewBefore)
    };
    // Jitter only moves renewal earlier, so it never eats into the safety margin.
    let window = window + window.mul_f64(MAX_JITTER_FRACTION * jitter.fraction().clamp(0.0, 1.0));
    let at = sub(expires_on, window);

    let earliest = add(issued_at, MIN_RENEWAL_DELAY);
    if at < earliest {
        Renewal {
            at: earliest,
            basis: RenewalBasis::MinimumDelay,
            granted_lifetime: granted,
        }
    } else {
        Renewal {
            at,
            basis,
            granted_lifetime: granted,
        }
    }
}

/// How long to wait before reconciling for renewal. Never zero: an overdue renewal that
/// keeps failing is retried by the error policy, not by spinning here.
pub fn requeue_after(now: Timestamp, renewal_at: Timestamp) -> Duration {
    to_std(renewal_at.duration_since(now)).max(Duration::from_secs(1))
}

/// A request annotation is pending when it is set and differs from the value last
/// handled. Values are compared, not parsed as times: any new value is a new request,
/// which needs no clock agreement with whoever set it and cannot be replayed (the
/// handled value is recorded in status).
pub fn request_pending(requested: Option<&str>, handled: Option<&str>) -> bool {
    match requested.map(str::trim) {
        None | Some("") => false,
        Some(r) => handled.map(str::trim) != Some(r),
    }
}

pub(crate) fn to_std(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

pub(crate) fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

pub(crate) fn sub(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_sub(d).ok())
        .unwrap_or(Timestamp::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const H: u64 = 3600;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid timestamp")
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn ordinary_token_renews_renew_before_ahead_of_expiry() {
        let r = renewal_time(
            ts(0),
            ts(24 * 3600),
            secs(24 * H),
            secs(8 * H),
            Jitter::NONE,
        );
        assert_eq!(r.at, ts(16 * 3600));
        assert_eq!(r.basis, RenewalBasis::RenewBefore);
        assert_eq!(r.granted_lifetime, secs(24 * H));
    }

    #[test]
    fn small_clock_skew_is_not_a_short_token() {
        // ACS's clock is 30 s behind ours: still the configured renewBefore.
        let r = renewal_time(
            ts(0),
            ts(24 * 3600 - 30),
            secs(24 * H),
            secs(8 * H),
            Jitter::NONE,
        );
        assert_eq!(r.basis, RenewalBasis::RenewBefore);
        assert_eq!(r.at, ts(16 * 3600 - 30));
    }

    #[test]
    fn short_token_renews_at_two_thirds_of_real_lifetime() {
        // Asked 24h, got 12h: renewBefore (8h) would fit, but the design says 2/3.
        let r = renewal_time(
            ts(0),
            ts(12 * 3600),
            secs(24 * H),
            secs(8 * H),
            Jitter::NONE,
        );
        assert_eq!(r.basis, RenewalBasis::TwoThirdsOfGrantedLifetime);
        assert_eq!(r.at, ts(8 * 3600));
        // Emulator lifetime scale: 24h -> 86.4s; renewBefore 8h >= lifetime.
        let r = renewal_time(ts(0), ts(90), secs(24 * H), secs(8 * H), Jitter::NONE);
        assert_eq!(r.basis, RenewalBasis::TwoThirdsOfGrantedLifetime);
        assert_eq!(r.at, ts(60));
    }

    #[test]
    fn renew_before_not_fitting_falls_back_to_two_thirds() {
        // Inconsistent inputs (admission bypassed): renewBefore >= granted lifetime.
        let r = renewal_time(ts(0), ts(3600), secs(H), secs(2 * H), Jitter::NONE);
        assert_eq!(r.basis, RenewalBasis::TwoThirdsOfGrantedLifetime);
        assert_eq!(r.at, ts(2400));
    }

    #[test]
    fn never_a_hot_loop() {
        // Already expired when received.
        let r = renewal_time(ts(0), ts(-10), secs(H), secs(20 * 60), Jitter::NONE);
        assert_eq!(r.basis, RenewalBasis::MinimumDelay);
        assert_eq!(r.at, ts(15));
        assert_eq!(r.granted_lifetime, Duration::ZERO);
        // Tiny token: two thirds of 6s is below the minimum delay.
        let r = renewal_time(ts(0), ts(6), secs(H), secs(20 * 60), Jitter::NONE);
        assert_eq!(r.basis, RenewalBasis::MinimumDelay);
        assert_eq!(r.at, ts(15));
        // requeue_after is never zero, even when overdue.
        assert_eq!(requeue_after(ts(100), ts(50)), secs(1));
        assert_eq!(requeue_after(ts(0), ts(60)), secs(60));
    }

    #[test]
    fn jitter_is_deterministic_bounded_and_spread() {
        let a = Jitter::from_uid("7f1c2a9e-0000-4000-8000-000000000001");
        assert_eq!(a, Jitter::from_uid("7f1c2a9e-0000-4000-8000-000000000001"));
        let fractions: Vec<f64> = (0..1000)
            .map(|n| Jitter::from_uid(&format!("uid-{n}")).fraction())
            .collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        let low = fractions.iter().filter(|f| **f < 0.5).count();
        assert!(
            (400..600).contains(&low),
            "poorly spread: {low} of 1000 below 0.5"
        );
        let distinct: BTreeSet<u64> = fractions.iter().map(|f| (f * 1e6) as u64).collect();
        assert!(distinct.len() > 990);
    }

    #[test]
    fn jitter_moves_renewal_earlier_by_at_most_five_percent() {
        let base = renewal_time(
            ts(0),
            ts(24 * 3600),
            secs(24 * H),
            secs(8 * H),
            Jitter::NONE,
        );
        for n in 0..200 {
            let j = Jitter::from_uid(&format!("uid-{n}"));
            let r = renewal_time(ts(0), ts(24 * 3600), secs(24 * H), secs(8 * H), j);
            assert!(r.at <= base.at);
            let earlier = to_std(base.at.duration_since(r.at));
            assert!(earlier <= secs(8 * H).mul_f64(MAX_JITTER_FRACTION));
        }
        let max = renewal_time(
            ts(0),
            ts(24 * 3600),
            secs(24 * H),
            secs(8 * H),
            Jitter(0.999_999),
        );
        assert!(to_std(base.at.duration_since(max.at)) > secs(23 * 60));
    }
}
