//! Client-side quota: one token bucket per operation, so that the operator stays under
//! ACS's published limits instead of collecting 429s. A request waits for its turn; it
//! does not fail.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::Operation;

/// `requests` per `per`, e.g. 1000 per 30 s. The bucket holds up to `requests` tokens, so
/// a burst of that size goes through at once and the rest flows at `requests / per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: u32,
    pub per: Duration,
}

impl Rate {
    pub const fn new(requests: u32, per: Duration) -> Self {
        Self { requests, per }
    }

    pub fn is_valid(&self) -> bool {
        self.requests > 0 && !self.per.is_zero()
    }
}

/// Per-operation limits; `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaConfig {
    pub create_user: Option<Rate>,
    pub get_user: Option<Rate>,
    pub issue_token: Option<Rate>,
    pub revoke_tokens: Option<Rate>,
    pub delete_user: Option<Rate>,
}

const THIRTY_SECONDS: Duration = Duration::from_secs(30);

impl Default for QuotaConfig {
    /// ACS's published limits. ACS publishes none for get; reads are cheap for it, so
    /// allow as many as creates and issues.
    fn default() -> Self {
        Self {
            create_user: Some(Rate::new(1000, THIRTY_SECONDS)),
            get_user: Some(Rate::new(1000, THIRTY_SECONDS)),
            issue_token: Some(Rate::new(1000, THIRTY_SECONDS)),
            revoke_tokens: Some(Rate::new(500, THIRTY_SECONDS)),
            delete_user: Some(Rate::new(500, THIRTY_SECONDS)),
        }
    }
}

impl QuotaConfig {
    pub fn unlimited() -> Self {
        Self {
            create_user: None,
            get_user: None,
            issue_token: None,
            revoke_tokens: None,
            delete_user: None,
        }
    }

    pub fn rate(&self, op: Operation) -> Option<Rate> {
        match op {
            Operation::CreateUser => self.create_user,
            Operation::GetUser => self.get_user,
            Operation::IssueToken => self.issue_token,
            Operation::RevokeTokens => self.revoke_tokens,
            Operation::DeleteUser => self.delete_user,
        }
    }

    /// The first operation whose rate is zero requests or a zero period.
    pub fn invalid_operation(&self) -> Option<Operation> {
        Operation::ALL
            .into_iter()
            .find(|op| self.rate(*op).is_some_and(|r| !r.is_valid()))
    }
}

/// A token bucket over an injected clock: no sleeping inside, so it is plain arithmetic.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    /// May go negative: each reservation beyond the available tokens queues behind the
    /// previous ones, so waiters are served in order and never all wake at once.
    tokens: f64,
    last: Instant,
    /// Set by a 429 with `Retry-After`: nothing is granted before it.
    paused_until: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket. `rate` must be valid (see `Rate::is_valid`).
    pub fn new(rate: Rate, now: Instant) -> Self {
        let capacity = f64::from(rate.requests.max(1));
        let per = rate.per.as_secs_f64().max(f64::MIN_POSITIVE);
        Self {
            capacity,
            per_second: capacity / per,
            tokens: capacity,
            last: now,
            paused_until: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that went backwards (or an older `now` from a racing caller) adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if elapsed > 0.0 {
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
            self.last = now;
        }
    }

    /// Takes one token and returns how long the caller must wait before using it (zero
    /// when one was available).
    pub fn reserve(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        // While paused `last` is the end of the pause, so the debt is repaid from then on.
        let paused = self.paused_for(now);
        if self.tokens >= 0.0 {
            paused
        } else {
            paused + Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }

    /// Tokens available at `now` (negative while reservations are queued).
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Nothing is granted before `until` (the server said so), and after it the bucket
    /// restarts empty, so the queued callers resume at the steady rate instead of in one
    /// burst that would be throttled again.
    pub fn pause_until(&mut self, until: Instant, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.min(0.0);
        self.last = self.last.max(until);
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
    }

    /// How much longer a pause lasts at `now`.
    pub fn paused_for(&self, now: Instant) -> Duration {
        self.paused_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }
}

/// The per-operation buckets of one client, shared by every caller of that client.
#[derive(Debug)]
pub struct ClientQuota {
    slots: [Mutex<Slot>; 5],
}

/// One operation's bucket (none when unlimited) and, for unlimited operations, a pause.
#[derive(Debug)]
struct Slot {
    bucket: Option<TokenBucket>,
    paused_until: Option<Instant>,
}

fn index(op: Operation) -> usize {
    match op {
        Operation::CreateUser => 0,
        Operation::GetUser => 1,
        Operation::IssueToken => 2,
        Operation::RevokeTokens => 3,
        Operation::DeleteUser => 4,
    }
}

impl ClientQuota {
    pub fn new(config: &QuotaConfig) -> Self {
        let now = Instant::now();
        let slot = |op| {
            Mutex::new(Slot {
                bucket: config
                    .rate(op)
                    .filter(Rate::is_valid)
                    .map(|r| TokenBucket::new(r, now)),
                paused_until: None,
            })
        };
        Self {
            slots: [
                slot(Operation::CreateUser),
                slot(Operation::GetUser),
                slot(Operation::IssueToken),
                slot(Operation::RevokeTokens),
                slot(Operation::DeleteUser),
            ],
        }
    }

    fn slot(&self, op: Operation) -> std::sync::MutexGuard<'_, Slot> {
        // A poisoned lock only means another task panicked mid-update of plain numbers;
        // the slot is still usable.
        self.slots[index(op)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// How long a request for `op` must wait at `now`, with its token reserved.
    pub fn reserve(&self, op: Operation, now: Instant) -> Duration {
        let mut slot = self.slot(op);
        match slot.bucket.as_mut() {
            Some(bucket) => bucket.reserve(now),
            None => slot
                .paused_until
                .map_or(Duration::ZERO, |until| until.saturating_duration_since(now)),
        }
    }

    /// Holds back every request for `op` until `until` (ACS answered 429 with
    /// `Retry-After`). A later, shorter pause never shortens a longer one.
    pub fn pause(&self, op: Operation, until: Instant) {
        let now = Instant::now();
        let mut slot = self.slot(op);
        match slot.bucket.as_mut() {
            Some(bucket) => bucket.pause_until(until, now),
            None => slot.paused_until = Some(slot.paused_until.map_or(until, |u| u.max(until))),
        }
        tracing::debug!(operation = %op, pause_ms = until.saturating_duration_since(now).as_millis() as u64, "ACS throttled; pausing this operation for every caller of the client");
    }

    /// How much longer `op` is paused at `now` (zero when it is not).
    pub fn paused_for(&self, op: Operation, now: Instant) -> Duration {
        let slot = self.slot(op);
        match &slot.bucket {
            Some(bucket) => bucket.paused_for(now),
            None => slot
                .paused_until
                .map_or(Duration::ZERO, |until| until.saturating_duration_since(now)),
        }
    }

    /// Waits until a request for `op` may be sent; returns how long it waited.
    pub async fn acquire(&self, op: Operation) -> Duration {
        let wait = self.reserve(op, Instant::now());
        if !wait.is_zero() {
            tracing::debug!(operation = %op, wait_ms = wait.as_millis() as u64, "waiting for client-side ACS quota");
            tokio::time::sleep(wait).await;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_up_to_capacity_then_waits_in_order() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::new(3, Duration::from_secs(3)), t0);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        // One token a second: the 4th waits 1 s, the 5th 2 s.
        assert_eq!(b.reserve(t0), Duration::from_secs(1));
        assert_eq!(b.reserve(t0), Duration::from_secs(2));
    }

    #[test]
    fn refills_with_time_and_caps_at_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::new(10, Duration::from_secs(1)), t0);
        for _ in 0..10 {
            b.reserve(t0);
        }
        assert!(b.available(t0).abs() < 1e-9);
        assert!((b.available(t0 + ms(500)) - 5.0).abs() < 1e-9);
        assert!((b.available(t0 + Duration::from_secs(60)) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn acs_default_create_rate() {
        // 1000 per 30 s: after the burst, one every 30 ms.
        let t0 = Instant::now();
        let rate = QuotaConfig::default().rate(Operation::CreateUser).unwrap();
        let mut b = TokenBucket::new(rate, t0);
        for _ in 0..1000 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
        let w = b.reserve(t0);
        assert!((w.as_secs_f64() - 0.030).abs() < 1e-6, "{w:?}");
        // 30 s later the bucket is full again (the debt of one is repaid first).
        let mut granted = 0;
        let t1 = t0 + Duration::from_secs(30) + ms(30);
        while b.reserve(t1).is_zero() {
            granted += 1;
        }
        assert_eq!(granted, 1000);
    }

    #[test]
    fn backwards_clock_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(Rate::new(1, Duration::from_secs(1)), t0);
        b.reserve(t0);
        assert_eq!(
            b.reserve(t0 - Duration::from_secs(5)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_pause_holds_everyone_back_then_resumes_at_the_steady_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::new(10, Duration::from_secs(1)), t0);
        // Full bucket, yet ACS said 429 with Retry-After: 2 s.
        b.pause_until(t0 + Duration::from_secs(2), t0);
        assert_eq!(b.paused_for(t0), Duration::from_secs(2));
        let close = |got: Duration, want: Duration| {
            assert!(
                got.abs_diff(want) < Duration::from_micros(1),
                "{got:?} != {want:?}"
            );
        };
        // Callers during the pause queue behind it, one refill interval apart.
        close(b.reserve(t0 + ms(500)), ms(1600));
        close(b.reserve(t0 + ms(500)), ms(1700));
        // After the pause no burst: the queue is served at the steady rate.
        close(b.reserve(t0 + Duration::from_secs(2)), ms(300));
        assert_eq!(b.paused_for(t0 + Duration::from_secs(3)), Duration::ZERO);
    }

    #[test]
    fn unlimited_operations_can_be_paused_too() {
        let t0 = Instant::now();
        let q = ClientQuota::new(&QuotaConfig::unlimited());
        q.pause(Operation::GetUser, t0 + Duration::from_secs(5));
        q.pause(Operation::GetUser, t0 + Duration::from_secs(1));
        assert_eq!(
            q.reserve(Operation::GetUser, t0),
            Duration::from_secs(5),
            "a shorter pause does not cut a longer one"
        );
        assert_eq!(q.paused_for(Operation::IssueToken, t0), Duration::ZERO);
        assert_eq!(
            q.paused_for(Operation::GetUser, t0 + Duration::from_secs(6)),
            Duration::ZERO
        );
    }

    #[test]
    fn defaults_match_published_limits() {
        let q = QuotaConfig::default();
        assert_eq!(q.issue_token, Some(Rate::new(1000, THIRTY_SECONDS)));
        assert_eq!(q.delete_user, Some(Rate::new(500, THIRTY_SECONDS)));
        assert_eq!(q.revoke_tokens, Some(Rate::new(500, THIRTY_SECONDS)));
        assert_eq!(q.invalid_operation(), None);
        let bad = QuotaConfig {
            get_user: Some(Rate::new(0, THIRTY_SECONDS)),
            ..QuotaConfig::unlimited()
        };
        assert_eq!(bad.invalid_operation(), Some(Operation::GetUser));
    }

    #[test]
    fn quota_is_per_operation_and_unlimited_when_unset() {
        let t0 = Instant::now();
        let q = ClientQuota::new(&QuotaConfig {
            delete_user: Some(Rate::new(1, Duration::from_secs(10))),
            ..QuotaConfig::unlimited()
        });
        assert_eq!(q.reserve(Operation::DeleteUser, t0), Duration::ZERO);
        assert!(q.reserve(Operation::DeleteUser, t0) > Duration::from_secs(9));
        for _ in 0..100 {
            assert_eq!(q.reserve(Operation::IssueToken, t0), Duration::ZERO);
        }
    }
}
