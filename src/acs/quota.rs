//! Client-side quota: one sliding window per operation, so that the operator stays under
//! ACS's published limits instead of collecting 429s.
//!
//! Two ways to wait for a turn: [`ClientQuota::acquire`] sleeps (tools, benchmarks), and
//! [`ClientQuota::try_acquire`] never does: it reserves the caller's turn and says when to
//! come back, so a reconcile can give its permit back and requeue for exactly that time
//! (issue 15: a reconcile waiting for a year-long quota froze every other tenant).
//!
//! Every number here may come from a tenant (the window, the counts) or from an endpoint
//! (a 429's pause), so every sum of times is checked: no input can panic the process.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::Operation;
use super::retry::MAX_RETRY_AFTER;

/// The longest quota window accepted. ACS counts in 30 s windows; an hour leaves room for
/// a stricter budget of one's own without letting a window overflow time arithmetic.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// The most requests one window may grant (the CRD's bound too).
pub const MAX_REQUESTS: u32 = 1_000_000;

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

    /// At least one and at most [`MAX_REQUESTS`] requests in a positive window of at most
    /// [`MAX_WINDOW`].
    pub fn is_valid(&self) -> bool {
        (1..=MAX_REQUESTS).contains(&self.requests) && !self.per.is_zero() && self.per <= MAX_WINDOW
    }

    /// Requests per second, to compare two rates for the same operation.
    fn per_second(&self) -> f64 {
        f64::from(self.requests) / self.per.as_secs_f64().max(1e-9)
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

    /// Per operation, the more generous of the two (unlimited above any rate; of two
    /// equal rates, the smaller burst): what one resource's budget allows when several
    /// services name it, so that one service's stricter setting never slows the others
    /// down (ACS's own 429s still pause all).
    pub fn most_generous(&self, other: &QuotaConfig) -> QuotaConfig {
        self.per_operation(other, |a, b| match (a, b) {
            (Some(a), Some(b)) => {
                let (ra, rb) = (a.per_second(), b.per_second());
                Some(if rb > ra || (rb == ra && b.requests < a.requests) {
                    b
                } else {
                    a
                })
            }
            _ => None,
        })
    }

    /// Per operation, this rate if it stays within `limit` both in rate and in burst (the
    /// requests one window lets through at once), else `limit`'s: caps what a service
    /// whose credentials have not worked yet may add to its resource's budget. A long
    /// window with as many requests per second as the limit is still a larger burst
    /// (120,000 in an hour against 1,000 in 30 s), so it is capped too.
    pub fn within(&self, limit: &QuotaConfig) -> QuotaConfig {
        self.per_operation(limit, |a, l| match (a, l) {
            (Some(a), Some(l)) => Some(
                if a.requests <= l.requests && a.per_second() <= l.per_second() {
                    a
                } else {
                    l
                },
            ),
            (None, l) => l,
            (a, None) => a,
        })
    }

    fn per_operation(
        &self,
        other: &QuotaConfig,
        pick: impl Fn(Option<Rate>, Option<Rate>) -> Option<Rate>,
    ) -> QuotaConfig {
        QuotaConfig {
            create_user: pick(self.create_user, other.create_user),
            get_user: pick(self.get_user, other.get_user),
            issue_token: pick(self.issue_token, other.issue_token),
            revoke_tokens: pick(self.revoke_tokens, other.revoke_tokens),
            delete_user: pick(self.delete_user, other.delete_user),
        }
    }

    /// The first operation whose rate is out of bounds (see [`Rate::is_valid`]).
    pub fn invalid_operation(&self) -> Option<Operation> {
        Operation::ALL
            .into_iter()
            .find(|op| self.rate(*op).is_some_and(|r| !r.is_valid()))
    }
}

/// How long a reservation stays held for a caller that does not come back (its object
/// was deleted, another replica took over): then its turn goes to nobody, which only
/// makes the budget stricter for a moment.
const RESERVATION_GRACE: Duration = Duration::from_secs(120);

/// A turn this close to now is served now: requeueing for a few milliseconds costs more
/// than it saves.
const SERVE_NOW_WITHIN: Duration = Duration::from_millis(20);

/// A sliding-window limiter over an injected clock, mirroring how ACS counts: at most
/// `requests` sent in any window of `per`. (A token bucket of the same rate would admit a
/// full burst and then refill, up to twice the limit in the first window: ACS answers
/// 429 to that.) No sleeping inside, so it is plain arithmetic.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    rate: Rate,
    limit: usize,
    window: Duration,
    /// Send times granted, ascending; some lie in the future (queued callers). Only the
    /// last `limit` matter.
    granted: VecDeque<Instant>,
    /// Set by a 429 with `Retry-After`: nothing is granted before it.
    paused_until: Option<Instant>,
    /// Turns reserved by callers that came back later instead of waiting.
    reserved: HashMap<String, Instant>,
    /// The same reservations in the order they were made (times ascending), to drop the
    /// ones nobody came back for without scanning them all.
    reserved_order: VecDeque<(Instant, String)>,
    /// When callers were actually let through, ascending (the last `limit`). `granted`
    /// plans turns, but a caller told to come back may come back well after its turn (a
    /// busy controller queue in a renewal wave), and late callers bunched with punctual
    /// ones would put more than the limit into one of ACS's windows: this is the check
    /// made at the moment of sending.
    sent: VecDeque<Instant>,
    /// The free slot callers were last held for, and how many were held for it since.
    last_hold: Option<(Instant, u32)>,
}

/// Added to the window: a request sent exactly one window after another may arrive a
/// little sooner than that after it (network jitter); this keeps it outside ACS's window.
const WINDOW_MARGIN_FRACTION: f64 = 0.01;

/// `t + d`, or the latest representable time near it; never panics.
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(MAX_WINDOW * 2))
        .unwrap_or(t)
}

impl SlidingWindow {
    /// An empty window. A rate out of bounds is clamped into them.
    pub fn new(rate: Rate, _now: Instant) -> Self {
        let (rate, limit, window) = Self::bounded(rate);
        Self {
            rate,
            limit,
            window,
            granted: VecDeque::with_capacity(limit.min(4096)),
            paused_until: None,
            reserved: HashMap::new(),
            reserved_order: VecDeque::new(),
            sent: VecDeque::new(),
            last_hold: None,
        }
    }

    /// `rate` clamped into bounds, its limit and its window (with the margin).
    fn bounded(rate: Rate) -> (Rate, usize, Duration) {
        let rate = Rate {
            requests: rate.requests.clamp(1, MAX_REQUESTS),
            per: rate.per.clamp(Duration::from_millis(1), MAX_WINDOW),
        };
        let window = rate
            .per
            .saturating_add(rate.per.mul_f64(WINDOW_MARGIN_FRACTION));
        (rate, rate.requests as usize, window)
    }

    /// Reserves a send time and returns how long the caller must wait for it (zero when
    /// it may send now). Callers are served in order, spaced so that no window holds
    /// more than the limit.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let at = self.next_turn(now);
        // The caller sleeps until its turn and sends then.
        self.record_sent(at);
        at.saturating_duration_since(now)
    }

    fn next_turn(&mut self, now: Instant) -> Instant {
        let mut at = now.max(self.paused_until.unwrap_or(now));
        // Never ahead of someone already queued.
        if let Some(&last) = self.granted.back() {
            at = at.max(last);
        }
        if self.granted.len() >= self.limit {
            let nth_back = self.granted[self.granted.len() - self.limit];
            at = at.max(later(nth_back, self.window));
        }
        self.granted.push_back(at);
        while self.granted.len() > self.limit {
            self.granted.pop_front();
        }
        at
    }

    /// `caller` may send now (`Ok`), or its turn is reserved and it should come back at
    /// the returned time. Coming back early changes nothing; coming back at or after the
    /// time is served without queueing again.
    pub fn try_reserve(&mut self, caller: &str, now: Instant) -> Result<(), Instant> {
        self.forget_abandoned(now);
        if let Some(&at) = self.reserved.get(caller) {
            // A pause that came after the reservation moves it too.
            let at = at.max(self.paused_until.unwrap_or(at));
            if !self.serve_now(at, now) {
                return Err(at);
            }
            return self.send_or_hold(caller, now);
        }
        let at = self.next_turn(now);
        if self.serve_now(at, now) {
            return self.send_or_hold(caller, now);
        }
        self.hold(caller, at);
        Err(at)
    }

    /// A caller whose turn has come sends now, unless the sends actually made in the
    /// last window already reach the limit (callers before it came back late): then its
    /// turn moves to when the oldest of them leaves the window.
    fn send_or_hold(&mut self, caller: &str, now: Instant) -> Result<(), Instant> {
        if let Some(free) = self.window_full_until(now) {
            // Callers held for the same free slot come back spaced at the rate, not all at
            // once (each would find the window full again but one).
            let at = self.spaced_after(free);
            self.hold(caller, at);
            return Err(at);
        }
        self.reserved.remove(caller);
        self.record_sent(now);
        Ok(())
    }

    /// `free`, or one send's spacing (window / limit) after the last caller held for it.
    fn spaced_after(&mut self, free: Instant) -> Instant {
        let spacing = self.window / u32::try_from(self.limit).unwrap_or(u32::MAX);
        match &mut self.last_hold {
            Some((at, n)) if *at == free => {
                *n = n.saturating_add(1);
                later(free, spacing.saturating_mul(*n))
            }
            other => {
                *other = Some((free, 0));
                free
            }
        }
    }

    fn hold(&mut self, caller: &str, at: Instant) {
        self.reserved.insert(caller.to_string(), at);
        self.reserved_order.push_back((at, caller.to_string()));
    }

    /// When a send becomes possible, if it is not now. A send a moment early is let
    /// through (a requeue costs more), but by no more than half the window's margin, so
    /// it still falls outside ACS's window.
    fn window_full_until(&self, now: Instant) -> Option<Instant> {
        let n = self.sent.len();
        if n < self.limit {
            return None;
        }
        let free = later(self.sent[n - self.limit], self.window);
        let early = SERVE_NOW_WITHIN.min(self.window.saturating_sub(self.rate.per) / 2);
        (free > later(now, early)).then_some(free)
    }

    fn record_sent(&mut self, at: Instant) {
        let i = self.sent.partition_point(|t| *t <= at);
        self.sent.insert(i, at);
        while self.sent.len() > self.limit {
            self.sent.pop_front();
        }
    }

    /// A turn a few milliseconds away is served now, but never inside a 429's pause:
    /// ACS asked for that wait, and a request a moment early is answered 429 again.
    fn serve_now(&self, at: Instant, now: Instant) -> bool {
        at <= later(now, SERVE_NOW_WITHIN) && self.paused_until.is_none_or(|p| p <= now)
    }

    fn forget_abandoned(&mut self, now: Instant) {
        while let Some((at, caller)) = self.reserved_order.front() {
            if later(*at, RESERVATION_GRACE) > now {
                break;
            }
            if self.reserved.get(caller) == Some(at) {
                self.reserved.remove(caller);
            }
            self.reserved_order.pop_front();
        }
        // Entries served already leave their order entry behind; keep that list short.
        if self.reserved_order.len() > 2 * self.reserved.len() + 64 {
            let reserved = &self.reserved;
            self.reserved_order
                .retain(|(at, caller)| reserved.get(caller) == Some(at));
        }
    }

    /// Callers holding a reserved turn.
    #[cfg(test)]
    pub fn reserved_count(&self) -> usize {
        self.reserved.len()
    }

    /// Requests that could still be granted at `now` without waiting.
    #[cfg(test)]
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

    /// Takes `rate`, more or less generous than the current one; the send times granted
    /// and made so far still count against it.
    fn set_rate(&mut self, rate: Rate) {
        let (rate, limit, window) = Self::bounded(rate);
        if rate == self.rate {
            return;
        }
        if rate.per_second() < self.rate.per_second() {
            // Turns planned at the old rate would come too close together: every waiting
            // caller plans its turn again at the new one when it comes back.
            self.reserved.clear();
            self.reserved_order.clear();
        }
        self.rate = rate;
        self.limit = limit;
        self.window = window;
        while self.granted.len() > self.limit {
            self.granted.pop_front();
        }
        while self.sent.len() > self.limit {
            self.sent.pop_front();
        }
    }
}

/// The per-operation buckets of one ACS resource, shared by every client of that
/// resource whatever its key, api-version or service.
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

    /// The operation's budget in requests per second; `None` when it is unlimited.
    pub fn limit_per_second(&self, op: Operation) -> Option<f64> {
        self.slot(op).bucket.as_ref().map(|b| b.rate.per_second())
    }

    fn slot(&self, op: Operation) -> std::sync::MutexGuard<'_, Slot> {
        // A poisoned lock only means another task panicked mid-update of plain numbers;
        // the slot is still usable.
        self.slots[index(op)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The resource's budget becomes `config` (see [`QuotaConfig::most_generous`] for
    /// how several services' quotas make one): a lower rate applies at once, with the
    /// requests already sent counting against it; a pause ACS asked for still holds.
    pub fn set(&self, config: &QuotaConfig) {
        let now = Instant::now();
        for op in Operation::ALL {
            let mut slot = self.slot(op);
            match (config.rate(op).filter(Rate::is_valid), slot.bucket.as_mut()) {
                (Some(rate), Some(bucket)) => bucket.set_rate(rate),
                (Some(rate), None) => {
                    let mut bucket = SlidingWindow::new(rate, now);
                    if let Some(until) = slot.paused_until.filter(|u| *u > now) {
                        bucket.pause_until(until, now);
                    }
                    slot.bucket = Some(bucket);
                }
                (None, Some(_)) => {
                    if let Some(bucket) = slot.bucket.take() {
                        slot.paused_until = bucket.paused_until;
                    }
                }
                (None, None) => {}
            }
        }
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

    /// `caller` may send `op` now, or should come back at the returned time (its turn is
    /// kept for it). Never sleeps.
    pub fn try_acquire(&self, op: Operation, caller: &str, now: Instant) -> Result<(), Instant> {
        let mut slot = self.slot(op);
        match slot.bucket.as_mut() {
            Some(bucket) => bucket.try_reserve(caller, now),
            None => match slot.paused_until {
                Some(until) if until > now => Err(until),
                _ => Ok(()),
            },
        }
    }

    /// Holds back every request for `op` for `wait` (ACS answered 429 with
    /// `Retry-After`, bounded by [`MAX_RETRY_AFTER`]). A later, shorter pause never
    /// shortens a longer one.
    pub fn pause(&self, op: Operation, wait: Duration) {
        let now = Instant::now();
        let until = later(now, wait.min(MAX_RETRY_AFTER));
        let mut slot = self.slot(op);
        match slot.bucket.as_mut() {
            Some(bucket) => bucket.pause_until(until, now),
            None => slot.paused_until = Some(slot.paused_until.map_or(until, |u| u.max(until))),
        }
        tracing::debug!(operation = %op, pause_ms = until.saturating_duration_since(now).as_millis() as u64, "ACS throttled; pausing this operation for every client of the resource");
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
    fn a_caller_is_never_served_early_inside_a_pause() {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(2);
        let mut b = SlidingWindow::new(Rate::new(10, Duration::from_secs(1)), t0);
        b.pause_until(end, t0);
        // (when the caller comes, served?): the few-millisecond slack for queued turns
        // never applies before the pause ends (reliability: requests 3-18 ms early).
        for (at, served) in [
            (t0, false),
            (end - ms(15), false),
            (end - ms(1), false),
            (end, true),
            (end + ms(5), true),
        ] {
            assert_eq!(
                b.try_reserve("a", at).is_ok(),
                served,
                "at {:?} before the end",
                end.saturating_duration_since(at)
            );
        }
        // Outside a pause a turn a few milliseconds away is still served at once (within
        // half the window's margin: ACS's 30 s window has 300 ms of it).
        let mut c = SlidingWindow::new(Rate::new(1, THIRTY_SECONDS), t0);
        assert!(c.try_reserve("a", t0).is_ok());
        let next = t0 + window(THIRTY_SECONDS);
        assert_eq!(c.try_reserve("b", t0), Err(next));
        assert!(c.try_reserve("b", next - ms(10)).is_ok());
    }

    #[test]
    fn unlimited_operations_can_be_paused_too() {
        let t0 = Instant::now();
        let q = ClientQuota::new(&QuotaConfig::unlimited());
        q.pause(Operation::GetUser, Duration::from_secs(5));
        q.pause(Operation::GetUser, Duration::from_secs(1));
        let left = q.reserve(Operation::GetUser, t0);
        assert!(
            left > Duration::from_secs(4) && left <= Duration::from_secs(6),
            "a shorter pause does not cut a longer one: {left:?}"
        );
        assert_eq!(q.paused_for(Operation::IssueToken, t0), Duration::ZERO);
        assert_eq!(
            q.paused_for(Operation::GetUser, t0 + Duration::from_secs(6)),
            Duration::ZERO
        );
    }

    #[test]
    fn windows_and_pauses_of_any_size_never_panic() {
        let t0 = Instant::now();
        for per in [Duration::MAX, Duration::from_secs(u64::MAX / 2), MAX_WINDOW] {
            let mut b = SlidingWindow::new(Rate::new(1, per), t0);
            b.reserve(t0);
            // The limit+1-th request used to add the window to an Instant and overflow.
            let wait = b.reserve(t0);
            assert!(wait <= MAX_WINDOW * 2, "{wait:?}");
            assert!(b.try_reserve("x", t0).is_err());
        }
        let q = ClientQuota::new(&QuotaConfig::default());
        q.pause(Operation::IssueToken, Duration::MAX);
        assert!(
            q.paused_for(Operation::IssueToken, t0) <= MAX_RETRY_AFTER + Duration::from_secs(1)
        );
        assert!(!Rate::new(1, Duration::from_secs(3601)).is_valid());
        assert!(!Rate::new(MAX_REQUESTS + 1, THIRTY_SECONDS).is_valid());
    }

    #[test]
    fn a_caller_that_comes_back_later_keeps_its_turn() {
        let t0 = Instant::now();
        let mut b = SlidingWindow::new(Rate::new(2, Duration::from_secs(10)), t0);
        assert_eq!(b.try_reserve("a", t0), Ok(()));
        assert_eq!(b.try_reserve("b", t0), Ok(()));
        let at_c = b.try_reserve("c", t0).unwrap_err();
        let at_d = b.try_reserve("d", t0).unwrap_err();
        assert!(at_c >= t0 + Duration::from_secs(10) && at_d >= at_c);
        // Asking again early neither queues again nor moves the turn.
        assert_eq!(b.try_reserve("c", t0 + Duration::from_secs(1)), Err(at_c));
        assert_eq!(b.reserved_count(), 2);
        // At its time the caller is served, and a newcomer queues behind d.
        assert_eq!(b.try_reserve("c", at_c), Ok(()));
        let at_e = b.try_reserve("e", at_c).unwrap_err();
        assert!(at_e > at_d, "{at_e:?} {at_d:?}");
        // Nobody came back for d: after the grace its reservation is forgotten.
        let much_later = at_e + RESERVATION_GRACE + Duration::from_secs(1);
        b.try_reserve("f", much_later).unwrap();
        assert_eq!(b.reserved_count(), 0);
    }

    #[test]
    fn waiting_callers_are_served_at_the_rate_in_order() {
        // 20 callers, 5 per second: each comes back exactly when told, and no window of
        // one second ever holds more than 5 sends.
        let t0 = Instant::now();
        let mut b = SlidingWindow::new(Rate::new(5, Duration::from_secs(1)), t0);
        let mut sent = vec![];
        let mut waiting: Vec<(Instant, String)> = vec![];
        for i in 0..20 {
            let caller = format!("c{i}");
            match b.try_reserve(&caller, t0) {
                Ok(()) => sent.push(t0),
                Err(at) => waiting.push((at, caller)),
            }
        }
        waiting.sort();
        for (at, caller) in waiting {
            assert_eq!(b.try_reserve(&caller, at), Ok(()), "{caller}");
            sent.push(at);
        }
        assert_eq!(sent.len(), 20);
        for (i, &t) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .filter(|&&u| u < t + Duration::from_secs(1))
                .count();
            assert!(in_window <= 5, "{in_window} sends within 1 s of send {i}");
        }
        let span = *sent.last().unwrap() - t0;
        assert!(span < Duration::from_secs(4), "{span:?}");
    }

    #[test]
    fn a_shared_budget_takes_the_more_generous_rate() {
        let t0 = Instant::now();
        let strict = QuotaConfig {
            create_user: Some(Rate::new(1, MAX_WINDOW)),
            revoke_tokens: None,
            ..QuotaConfig::default()
        };
        for (a, b) in [
            (QuotaConfig::default(), strict.clone()),
            (strict.clone(), QuotaConfig::default()),
        ] {
            let both = a.most_generous(&b);
            assert_eq!(both.create_user, QuotaConfig::default().create_user);
            assert_eq!(both.revoke_tokens, None, "unlimited is the most generous");
            let q = ClientQuota::new(&a);
            q.set(&both);
            for i in 0..10 {
                assert_eq!(
                    q.try_acquire(Operation::CreateUser, &format!("c{i}"), t0),
                    Ok(())
                );
            }
        }
    }

    #[test]
    fn an_unproven_quota_is_capped_in_rate_and_in_burst() {
        let acs = QuotaConfig::default();
        let limit = acs.issue_token;
        let issue = |requests: u32, per: Duration| QuotaConfig {
            issue_token: Some(Rate::new(requests, per)),
            ..QuotaConfig::default()
        };
        let hour = Duration::from_secs(3600);
        // (asked, what it may add)
        let cases = [
            (issue(10, hour), Some(Rate::new(10, hour))),
            (issue(1000, THIRTY_SECONDS), limit),
            (issue(500, Duration::from_secs(1)), limit),
            // As many per second as ACS allows, or fewer, but a burst of an hour's worth.
            (issue(120_000, hour), limit),
            (issue(119_999, hour), limit),
        ];
        for (asked, want) in cases {
            assert_eq!(asked.within(&acs).issue_token, want, "{asked:?}");
        }
        assert_eq!(
            QuotaConfig::unlimited().within(&acs).revoke_tokens,
            acs.revoke_tokens,
            "unlimited is capped too"
        );
        assert_eq!(acs.within(&QuotaConfig::unlimited()).issue_token, limit);
    }

    #[test]
    fn of_two_equal_rates_the_budget_takes_the_smaller_burst() {
        let hour = Duration::from_secs(3600);
        let burst = QuotaConfig {
            issue_token: Some(Rate::new(120_000, hour)),
            ..QuotaConfig::default()
        };
        let acs = QuotaConfig::default();
        for (a, b) in [(&burst, &acs), (&acs, &burst)] {
            assert_eq!(a.most_generous(b).issue_token, acs.issue_token);
        }
    }

    #[test]
    fn a_lowered_quota_applies_at_once_and_counts_what_was_sent() {
        let t0 = Instant::now();
        let q = ClientQuota::new(&QuotaConfig::unlimited());
        q.pause(Operation::IssueToken, Duration::from_secs(60));
        for i in 0..5 {
            q.set(&QuotaConfig::default());
            assert!(
                q.try_acquire(Operation::IssueToken, &format!("p{i}"), t0)
                    .is_err(),
                "a pause survives the change from unlimited to a rate"
            );
        }
        let q = ClientQuota::new(&QuotaConfig::default());
        let after = t0 + Duration::from_secs(1);
        for i in 0..3 {
            assert_eq!(
                q.try_acquire(Operation::IssueToken, &format!("a{i}"), t0),
                Ok(())
            );
        }
        q.set(&QuotaConfig {
            issue_token: Some(Rate::new(3, Duration::from_secs(10))),
            ..QuotaConfig::default()
        });
        assert_eq!(q.limit_per_second(Operation::IssueToken), Some(0.3));
        let next = q
            .try_acquire(Operation::IssueToken, "b", after)
            .unwrap_err();
        assert!(
            next >= t0 + Duration::from_secs(10),
            "the three sent before the change fill the new window: {:?}",
            next - t0
        );
        q.set(&QuotaConfig::unlimited());
        assert_eq!(q.try_acquire(Operation::IssueToken, "b", after), Ok(()));
    }

    #[test]
    fn callers_coming_back_late_never_overfill_a_window() {
        // ACS's limit: 5 per second here. Every caller is told when to come back; some
        // come back up to 0.8 s late (a busy controller queue), then bunch with punctual
        // ones. The sends actually made must still never put more than 5 in any second.
        let per = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut b = SlidingWindow::new(Rate::new(5, per), t0);
        let mut sent = vec![];
        let mut waiting: Vec<(Instant, String)> = vec![];
        for i in 0..60u64 {
            let caller = format!("c{i}");
            match b.try_reserve(&caller, t0) {
                Ok(()) => sent.push(t0),
                Err(at) => waiting.push((at, caller)),
            }
        }
        let mut rounds = 0;
        while !waiting.is_empty() {
            rounds += 1;
            assert!(rounds < 10_000, "callers never served");
            waiting.sort();
            let (at, caller) = waiting.remove(0);
            let i: u64 = caller[1..].parse().unwrap();
            // Late by 0..800 ms, differently for each caller and each return.
            let late = ms((i * 7919 + rounds * 104_729) % 800);
            let back = at
                + if i.is_multiple_of(3) {
                    late
                } else {
                    Duration::ZERO
                };
            match b.try_reserve(&caller, back) {
                Ok(()) => sent.push(back),
                Err(next) => {
                    assert!(next >= at, "a turn never moves earlier");
                    waiting.push((next, caller));
                }
            }
        }
        assert_eq!(sent.len(), 60);
        sent.sort();
        for (i, &t) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().filter(|&&u| u < t + per).count();
            assert!(in_window <= 5, "{in_window} sends within 1 s of send {i}");
        }
        // And at about the rate: 55 waiting callers need 11 windows, plus lateness.
        let span = *sent.last().unwrap() - t0;
        assert!(span < Duration::from_secs(14), "{span:?}");
    }

    #[test]
    fn callers_held_for_one_free_slot_come_back_spaced() {
        let t0 = Instant::now();
        let w = window(Duration::from_secs(1));
        let mut b = SlidingWindow::new(Rate::new(1, Duration::from_secs(1)), t0);
        assert_eq!(b.try_reserve("a", t0), Ok(()));
        for c in ["b", "c", "d"] {
            assert!(b.try_reserve(c, t0).is_err());
        }
        // All three come back long after their turns, at the same moment: one sends, and
        // the other two are held one send's spacing apart, not for the same instant.
        let late = t0 + Duration::from_millis(3500);
        assert_eq!(b.try_reserve("b", late), Ok(()));
        let c = b.try_reserve("c", late).unwrap_err();
        let d = b.try_reserve("d", late).unwrap_err();
        assert_eq!(c, late + w);
        assert_eq!(d, late + w + w);
        assert_eq!(b.try_reserve("c", c), Ok(()));
        assert_eq!(b.try_reserve("d", d), Ok(()));
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
