//! What ACS has said of one client's credentials, and the gate that keeps the requests of a
//! client whose credentials ACS refuses off its resource's shared quota.
//!
//! A tenant's service may name another team's ACS resource with a made-up key. Its
//! requests are refused (401 or 403), but each one took a turn of the resource's budget,
//! one per identity per retry, and slowed the team's renewals. Once refused, a caller's
//! request is sent only once per probe interval to ask again; the others get the refusal
//! back at once, with no request and no turn. An api-version ACS does not serve is
//! refused the same way (400, before the key is checked) and gated alike.
//!
//! A client that has worked is gated only by a second refusal in a row (concurrent
//! requests refused at once count as two): a single refusal may be a token rotating, and
//! gating every identity of a working team on it would turn one answer into an outage of
//! the interval.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::error::{AcsError, Operation};

pub struct CredentialStanding {
    /// A request succeeded since the last refusal. Read on every budget computation, so
    /// kept outside the lock; written only under it, so `worked` implies no refusal held.
    worked: AtomicBool,
    state: Mutex<State>,
    probe_every: Duration,
}

#[derive(Default)]
struct State {
    ever_worked: bool,
    /// Refusals in a row, since the last answer that accepted the credentials.
    refusals: u32,
    /// Set while refusals gate callers.
    refused: Option<Refused>,
}

/// The refusal replayed to callers, and when one of them may next ask ACS again.
struct Refused {
    error: AcsError,
    next_probe: Instant,
}

/// What ACS has said of a client's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Nothing that settles it yet (no answer, or one refusal of a key that had worked).
    Unproven,
    /// A request succeeded since the last refusal.
    Worked,
    /// ACS's refusals gate callers (see the module's doc): the client's requests take no
    /// turn of its resource's budget, so its quota has no say in the budget either.
    Refused,
}

/// What a caller's request may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Nothing is refused: the request takes its turn of the quota as usual.
    Open,
    /// The credentials are refused and this request asks again: sent once, without a
    /// turn of the quota and without retries.
    Probe,
}

fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

impl CredentialStanding {
    pub fn new(probe_every: Duration) -> Self {
        CredentialStanding {
            worked: AtomicBool::new(false),
            state: Mutex::default(),
            probe_every,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// ACS answered a request with success since it last refused the credentials.
    pub fn has_worked(&self) -> bool {
        self.worked.load(Ordering::Relaxed)
    }

    /// What ACS's answers say of the credentials now.
    pub fn standing(&self) -> Standing {
        if self.has_worked() {
            Standing::Worked
        } else if self.lock().refused.is_some() {
            Standing::Refused
        } else {
            Standing::Unproven
        }
    }

    /// ACS answered with success.
    pub fn succeeded(&self) {
        if self.has_worked() {
            return;
        }
        let mut st = self.lock();
        st.ever_worked = true;
        st.refusals = 0;
        st.refused = None;
        self.worked.store(true, Ordering::Relaxed);
    }

    /// ACS answered with an error that shows it took the credentials (a 404, a 400, a
    /// user of another resource): whatever it refused before, it does not now.
    pub fn accepted(&self) {
        if self.has_worked() {
            return;
        }
        let mut st = self.lock();
        st.refusals = 0;
        st.refused = None;
    }

    /// ACS refused the credentials with `error` (already in the form callers see).
    pub fn refused(&self, error: &AcsError, now: Instant) {
        let mut st = self.lock();
        self.worked.store(false, Ordering::Relaxed);
        st.refusals = st.refusals.saturating_add(1);
        if !st.ever_worked || st.refusals >= 2 {
            let next_probe = st
                .refused
                .as_ref()
                .map_or_else(|| after(now, self.probe_every), |r| r.next_probe);
            st.refused = Some(Refused {
                error: error.clone(),
                next_probe,
            });
        }
    }

    /// Whether a caller's request for `op` may go, or the refusal it gets instead. While
    /// `op` is paused (ACS's 429; `paused` is asked only when a probe is due) no probe
    /// goes, and the next caller after the pause asks.
    pub fn gate(
        &self,
        op: Operation,
        now: Instant,
        paused: impl FnOnce(Instant) -> bool,
    ) -> Result<Gate, AcsError> {
        let mut st = self.lock();
        let Some(r) = st.refused.as_mut() else {
            return Ok(Gate::Open);
        };
        if now < r.next_probe || paused(now) {
            return Err(r.error.replayed_for(op));
        }
        r.next_probe = after(now, self.probe_every);
        Ok(Gate::Probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(status: u16) -> AcsError {
        AcsError::service(
            Operation::CreateUser,
            status,
            Some("Denied".into()),
            Some("Denied by the key".into()),
            None,
        )
        .with_client_request_id("id-1")
    }

    const OP: Operation = Operation::IssueToken;

    #[derive(Clone, Copy, Debug)]
    enum Answer {
        Success,
        Accepted,
        Refused,
    }

    /// Answers given, whether the key counts as working, and what a caller's request may
    /// do right after the last answer and once the probe interval has passed (`None`: the
    /// refusal is replayed).
    type Case = (&'static [Answer], bool, Option<Gate>, Option<Gate>);

    /// Answers in order (one second apart), then what a caller's request may do.
    #[test]
    fn refusals_gate_callers_as_the_table_says() {
        use Answer::*;
        let cases: &[Case] = &[
            (&[], false, Some(Gate::Open), Some(Gate::Open)),
            (&[Success], true, Some(Gate::Open), Some(Gate::Open)),
            // A key that never worked is gated by its first refusal.
            (&[Refused], false, None, Some(Gate::Probe)),
            // A working key only by a second in a row.
            (
                &[Success, Refused],
                false,
                Some(Gate::Open),
                Some(Gate::Open),
            ),
            (&[Success, Refused, Refused], false, None, Some(Gate::Probe)),
            (
                &[Success, Refused, Accepted, Refused],
                false,
                Some(Gate::Open),
                Some(Gate::Open),
            ),
            // Any answer that took the key ends the gate.
            (
                &[Refused, Success],
                true,
                Some(Gate::Open),
                Some(Gate::Open),
            ),
            (
                &[Refused, Accepted],
                false,
                Some(Gate::Open),
                Some(Gate::Open),
            ),
            (&[Refused, Refused, Refused], false, None, Some(Gate::Probe)),
        ];
        let every = Duration::from_secs(10);
        for (answers, worked, at_once, later) in cases {
            let start = Instant::now();
            let standing = CredentialStanding::new(every);
            let mut now = start;
            for a in *answers {
                now += Duration::from_secs(1);
                match a {
                    Success => standing.succeeded(),
                    Accepted => standing.accepted(),
                    Refused => standing.refused(&refusal(401), now),
                }
            }
            let what = format!("{answers:?}");
            assert_eq!(standing.has_worked(), *worked, "{what}");
            assert_eq!(standing.gate(OP, now, |_| false).ok(), *at_once, "{what}");
            assert_eq!(
                standing.gate(OP, now + every * 4, |_| false).ok(),
                *later,
                "{what}"
            );
            assert_eq!(
                standing.standing() == Standing::Refused,
                later == &Some(Gate::Probe),
                "{what}"
            );
        }
    }

    #[test]
    fn a_probe_goes_once_per_interval_and_never_while_paused() {
        let every = Duration::from_secs(10);
        let standing = CredentialStanding::new(every);
        let t0 = Instant::now();
        standing.refused(&refusal(403), t0);
        let replay = standing.gate(OP, t0, |_| false).unwrap_err();
        // The refusal as callers see it, for the operation asked, with no request id.
        assert!(
            matches!(
                &replay,
                AcsError::Service {
                    operation: Operation::IssueToken,
                    status: 403,
                    client_request_id: None,
                    ..
                }
            ),
            "{replay:?}"
        );
        assert_eq!(
            replay.to_string(),
            refusal(403).replayed_for(OP).to_string()
        );
        let t1 = t0 + every;
        assert!(standing.gate(OP, t1, |_| true).is_err(), "paused: no probe");
        assert_eq!(standing.gate(OP, t1, |_| false), Ok(Gate::Probe));
        assert!(
            standing.gate(OP, t1, |_| false).is_err(),
            "one probe per interval"
        );
        assert!(standing.gate(OP, t1 + every / 2, |_| false).is_err());
        assert_eq!(standing.gate(OP, t1 + every, |_| false), Ok(Gate::Probe));
        // A refused probe keeps the schedule; a time past any Instant is no overflow.
        standing.refused(&refusal(403), t1 + every);
        assert!(standing.gate(OP, t1 + every, |_| false).is_err());
        let far = CredentialStanding::new(Duration::MAX);
        far.refused(&refusal(401), t0);
        assert_eq!(far.gate(OP, t0, |_| false), Ok(Gate::Probe));
    }
}
