//! Per-operation rate limits over a sliding window, answered with 429 and `Retry-After`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::config::{EmulatedOperation, QuotaLimit};

/// The admission times of the last `max` requests of one operation: a request is
/// admitted when fewer than `max` fall inside the window ending now.
#[derive(Debug)]
struct Window {
    limit: QuotaLimit,
    admitted: VecDeque<Instant>,
}

impl Window {
    fn try_admit(&mut self, now: Instant) -> Result<(), Duration> {
        while let Some(&oldest) = self.admitted.front() {
            if now.saturating_duration_since(oldest) >= self.limit.window {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
        if self.admitted.len() < self.limit.max as usize {
            self.admitted.push_back(now);
            return Ok(());
        }
        // Full: a slot frees when the oldest admission leaves the window.
        let oldest = self.admitted.front().copied().unwrap_or(now);
        Err(self
            .limit
            .window
            .saturating_sub(now.saturating_duration_since(oldest)))
    }
}

#[derive(Debug, Default)]
pub struct Quotas {
    windows: BTreeMap<EmulatedOperation, Window>,
}

impl Quotas {
    pub fn new(limits: &BTreeMap<EmulatedOperation, QuotaLimit>) -> Self {
        let mut quotas = Self::default();
        for (op, limit) in limits {
            quotas.set(*op, Some(*limit));
        }
        quotas
    }

    /// Replaces one operation's limit (`None` lifts it); its window starts empty.
    pub fn set(&mut self, operation: EmulatedOperation, limit: Option<QuotaLimit>) {
        match limit {
            Some(limit) => {
                self.windows.insert(
                    operation,
                    Window {
                        limit,
                        admitted: VecDeque::new(),
                    },
                );
            }
            None => {
                self.windows.remove(&operation);
            }
        }
    }

    /// `Err(seconds)` is the whole number of seconds to put in `Retry-After` (at least 1,
    /// so a client that honours it is never early).
    pub fn try_admit(&mut self, operation: EmulatedOperation, now: Instant) -> Result<(), u64> {
        let Some(window) = self.windows.get_mut(&operation) else {
            return Ok(());
        };
        window.try_admit(now).map_err(retry_after_seconds)
    }
}

fn retry_after_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(max: u32, secs: u64) -> Quotas {
        Quotas::new(&BTreeMap::from([(
            EmulatedOperation::Issue,
            QuotaLimit {
                max,
                window: Duration::from_secs(secs),
            },
        )]))
    }

    #[test]
    fn admits_up_to_max_then_says_when_to_come_back() {
        let mut q = quotas(3, 30);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(
                q.try_admit(EmulatedOperation::Issue, t0 + Duration::from_secs(i)),
                Ok(())
            );
        }
        // The oldest admission (t0) leaves the window at t0+30: 20 s after t0+10.
        assert_eq!(
            q.try_admit(EmulatedOperation::Issue, t0 + Duration::from_secs(10)),
            Err(20)
        );
        assert_eq!(
            q.try_admit(EmulatedOperation::Issue, t0 + Duration::from_millis(29_500)),
            Err(1)
        );
        assert_eq!(
            q.try_admit(EmulatedOperation::Issue, t0 + Duration::from_secs(30)),
            Ok(())
        );
        // t0+1 is now the oldest; one slot is still taken by it until t0+31.
        assert_eq!(
            q.try_admit(EmulatedOperation::Issue, t0 + Duration::from_secs(30)),
            Err(1)
        );
    }

    #[test]
    fn a_limit_set_later_applies_at_once_and_none_lifts_it() {
        let mut q = Quotas::default();
        let t0 = Instant::now();
        assert!(q.try_admit(EmulatedOperation::Issue, t0).is_ok());
        q.set(
            EmulatedOperation::Issue,
            Some(QuotaLimit {
                max: 1,
                window: Duration::from_secs(10),
            }),
        );
        assert!(q.try_admit(EmulatedOperation::Issue, t0).is_ok());
        assert_eq!(q.try_admit(EmulatedOperation::Issue, t0), Err(10));
        assert!(q.try_admit(EmulatedOperation::Create, t0).is_ok());
        q.set(EmulatedOperation::Issue, None);
        assert!(q.try_admit(EmulatedOperation::Issue, t0).is_ok());
    }

    #[test]
    fn rejected_requests_do_not_use_up_the_quota() {
        let mut q = quotas(1, 10);
        let t0 = Instant::now();
        assert!(q.try_admit(EmulatedOperation::Issue, t0).is_ok());
        for s in 1..10 {
            assert!(
                q.try_admit(EmulatedOperation::Issue, t0 + Duration::from_secs(s))
                    .is_err()
            );
        }
        assert!(
            q.try_admit(EmulatedOperation::Issue, t0 + Duration::from_secs(10))
                .is_ok()
        );
    }

    #[test]
    fn operations_without_a_limit_are_always_admitted() {
        let mut q = quotas(1, 10);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(q.try_admit(EmulatedOperation::Get, t0).is_ok());
        }
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(7)), 7);
    }
}
