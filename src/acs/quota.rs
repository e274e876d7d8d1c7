//! Client-side quota: one token bucket per operation, so that the operator stays under
//! ACS's published limits instead of collecting 429s. A request waits for its turn; it
//! does not fail.

use std::collections::VecDeque;
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

/// A sliding-window limiter over an injected clock, mirroring how ACS counts: at most
/// `requests` sent in any window of `per`. (A token bucket of the same rate would admit a
/// full burst and then refill, up to twice the limit in the first window: ACS answers
/// 429 to that.) No sleeping inside, so it is plain arithmetic.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    limit: usize,
    window: Duration,
    /// Send times granted, ascending; some lie in the future (queued callers). Only the
    /// last `limit` matter.
    granted: VecDeque<Instant>,
    /// Set by a 429 with `Retry-After`: nothing is granted before it.
    paused_until: Option<Instant>,
}

/// Added to the window: a request sent exactly one window after another may arrive a
/// little sooner than that after it (network jitter); this keeps it outside ACS's window.
const WINDOW_MARGIN_FRACTION: f64 = 0.01;

impl SlidingWindow {
    /// An empty window. `rate` must be valid (see `Rate::is_valid`).
    pub fn new(rate: Rate, _now: Instant) -> Self {
        let limit = rate.requests.max(1) as usize;
        let window = rate.per + rate.per.mul_f64(WINDOW_MARGIN_FRACTION);
        Self {
            limit,
            window,
            granted: VecDeque::with_capacity(limit.min(4096)),
            paused_until: None,
        }
    }

    /// Reserves a send time and returns how long the caller must wait for it (zero when
    /// it may send now). Callers are served in order, spaced so that no window holds
    /// more than the limit.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let mut at = now.max(self.paused_until.unwrap_or(now));
        // Never ahead of someone already queued.
        if let Some(&last) = self.granted.back() {
            at = at.max(last);
        }
        if self.granted.len() >= self.limit {
            let nth_back = self.granted[self.granted.len() - self.limit];
            at = at.max(nth_back + self.window);
        }
        self.granted.push_back(at);
        while self.granted.len() > self.limit {
            self.granted.pop_front();
        }
        at.saturating_duration_since(now)
    }

    /// Requests that could still be granted at `now` without waiting.
    pub fn available(&mut self, now: Instant) -> f64 {
        let taken = self
            .granted
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < self.window)
            .count();
        self.limit as f64 - taken as f64
    }

    /// Nothing is granted before `until` (the server said so). Callers already queued
    /// keep their order and resume after it, still spaced by the window.
    pub fn pause_until(&mut self, until: Instant, now: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
        for t in self.granted.iter_mut() {
            if *t > now && *t < until {
                *t = until;
            }
        }
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
    bucket: Option<SlidingWindow>,
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
                    .map(|r| SlidingWindow::new(r, now)),
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

    fn window(per: Duration) -> Duration {
        per + per.mul_f64(WINDOW_MARGIN_FRACTION)
    }

    #[test]
    fn the_limit_at_once_then_one_window_later() {
        let t0 = Instant::now();
        let mut b = SlidingWindow::new(Rate::new(3, Duration::from_secs(3)), t0);
        for _ in 0..3 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
        // The next three wait for the first three to leave the window, in order.
        let w = window(Duration::from_secs(3));
        for _ in 0..3 {
            assert_eq!(b.reserve(t0), w);
        }
        assert_eq!(b.reserve(t0), w * 2);
        assert!(b.available(t0) <= 0.0);
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 3.0);
    }

    #[test]
    fn no_window_ever_holds_more_than_acs_allows() {
        // ACS: 1,000 creates in any 30 s. Callers arrive in bursts and trickles.
        let rate = QuotaConfig::default().rate(Operation::CreateUser).unwrap();
        let t0 = Instant::now();
        let mut b = SlidingWindow::new(rate, t0);
        let mut sent = vec![];
        let mut now = t0;
        for i in 0..5_000u64 {
            now += ms(if i % 700 < 500 { 0 } else { 37 });
            sent.push(now + b.reserve(now));
        }
        sent.sort();
        for (i, &t) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|&&u| u < t + rate.per).count();
            assert!(
                in_window <= 1000,
                "{in_window} requests within 30 s of request {i}"
            );
        }
        // And not much slower than the bound: 5,000 need 4 windows after the first burst.
        let span = *sent.last().unwrap() - t0;
        assert!(span < Duration::from_secs(135), "{span:?}");
    }

    #[test]
    fn a_clock_going_backwards_never_bunches_requests() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = SlidingWindow::new(Rate::new(1, Duration::from_secs(1)), t0);
        b.reserve(t0);
        let earlier = t0 - Duration::from_secs(5);
        assert!(earlier + b.reserve(earlier) >= t0 + Duration::from_secs(1));
    }

    #[test]
    fn a_pause_holds_everyone_back_then_resumes_within_the_window() {
        let t0 = Instant::now();
        let mut b = SlidingWindow::new(Rate::new(10, Duration::from_secs(1)), t0);
        // Nothing sent yet, but ACS said 429 with Retry-After: 2 s.
        b.pause_until(t0 + Duration::from_secs(2), t0);
        assert_eq!(b.paused_for(t0), Duration::from_secs(2));
        assert_eq!(b.reserve(t0 + ms(500)), ms(1500));
        assert_eq!(b.reserve(t0 + ms(600)), ms(1400));
        assert_eq!(b.paused_for(t0 + Duration::from_secs(3)), Duration::ZERO);
        // A second 429 while callers are queued moves them behind the new pause.
        b.pause_until(t0 + Duration::from_secs(4), t0 + ms(700));
        assert_eq!(b.reserve(t0 + ms(800)), ms(3200));
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
