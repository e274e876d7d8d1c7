//! The pure decisions of leader election: may a candidate take, renew, or must it wait;
//! what it writes. Times are injected so the rules are tested without a cluster.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

/// What a candidate may do with a Lease, given what it knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody holds it, or the holder went silent: take it.
    Take,
    /// It is ours: renew it.
    Renew,
    /// Someone else holds it and may still be alive.
    Wait { holder: String },
}

/// When a candidate first saw the Lease's current record (identified by its
/// `resourceVersion`, which every write changes), on its own monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub resource_version: String,
    pub since: Instant,
}

impl Observation {
    /// Keeps the earlier time when the record is unchanged; restarts the clock when it
    /// changed (the holder renewed, or someone else wrote).
    pub fn update(previous: Option<Observation>, resource_version: &str, now: Instant) -> Self {
        match previous {
            Some(p) if p.resource_version == resource_version => p,
            _ => Observation {
                resource_version: resource_version.to_string(),
                since: now,
            },
        }
    }
}

/// The holder's lease duration, or `fallback` when the Lease has none (a writer that
/// isn't client-go compatible): assuming our own duration is the safe guess.
fn holder_duration(spec: &LeaseSpec, fallback: Duration) -> Duration {
    match spec.lease_duration_seconds {
        Some(s) if s > 0 => Duration::from_secs(s.unsigned_abs().into()),
        _ => fallback,
    }
}

/// Whether the record seen since `observed_since` is older than its holder's lease
/// duration, by the observer's clock.
pub fn is_expired(
    spec: &LeaseSpec,
    observed_since: Instant,
    now: Instant,
    fallback: Duration,
) -> bool {
    now.saturating_duration_since(observed_since) >= holder_duration(spec, fallback)
}

/// The decision for candidate `me` about a Lease whose current record it has seen since
/// `observed_since`. `fallback` is the duration assumed when the Lease states none.
pub fn verdict(
    spec: Option<&LeaseSpec>,
    me: &str,
    observed_since: Instant,
    now: Instant,
    fallback: Duration,
) -> Verdict {
    let Some(spec) = spec else {
        return Verdict::Take;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Verdict::Take,
        Some(holder) if holder == me => Verdict::Renew,
        Some(_) if is_expired(spec, observed_since, now, fallback) => Verdict::Take,
        Some(holder) => Verdict::Wait {
            holder: holder.to_string(),
        },
    }
}

/// The spec `me` writes to take or renew a Lease. A renewal keeps `acquireTime` and the
/// transition count; a takeover starts a new term. Fields of coordinated leader election
/// (`preferredHolder`, `strategy`) are kept as they were.
pub fn claimed_spec(
    current: Option<&LeaseSpec>,
    me: &str,
    lease_duration_seconds: i32,
    now: jiff::Timestamp,
) -> LeaseSpec {
    let Some(current) = current.cloned() else {
        // Creating the Lease starts the first term; client-go counts it as no transition.
        return LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(lease_duration_seconds),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        };
    };
    let ours = current.holder_identity.as_deref() == Some(me);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(lease_duration_seconds),
        acquire_time: if ours {
            current.acquire_time.or(Some(MicroTime(now)))
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: if ours {
            current.lease_transitions.or(Some(0))
        } else {
            Some(current.lease_transitions.unwrap_or(0).saturating_add(1))
        },
        ..current
    }
}

/// The spec a leader writes when it steps down cleanly: no holder, so the next
/// candidate takes it at once (client-go writes the same).
pub fn released_spec(current: &LeaseSpec, now: jiff::Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, duration_secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(duration_secs),
            lease_transitions: Some(4),
            acquire_time: Some(MicroTime(jiff::Timestamp::from_second(1_000).expect("ts"))),
            renew_time: Some(MicroTime(jiff::Timestamp::from_second(1_010).expect("ts"))),
            ..LeaseSpec::default()
        }
    }

    const FALLBACK: Duration = Duration::from_secs(15);

    #[test]
    fn an_absent_or_unheld_lease_can_be_taken() {
        let t0 = Instant::now();
        assert_eq!(verdict(None, "me", t0, t0, FALLBACK), Verdict::Take);
        let mut spec = held_by("", 15);
        assert_eq!(verdict(Some(&spec), "me", t0, t0, FALLBACK), Verdict::Take);
        spec.holder_identity = None;
        assert_eq!(verdict(Some(&spec), "me", t0, t0, FALLBACK), Verdict::Take);
    }

    #[test]
    fn our_own_lease_is_renewed_even_when_it_looks_expired() {
        let t0 = Instant::now();
        let spec = held_by("me", 15);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            verdict(Some(&spec), "me", t0, later, FALLBACK),
            Verdict::Renew
        );
    }

    #[test]
    fn another_holder_is_waited_for_until_its_record_is_a_lease_duration_old() {
        let t0 = Instant::now();
        let spec = held_by("other", 3);
        let wait = Verdict::Wait {
            holder: "other".into(),
        };
        assert_eq!(verdict(Some(&spec), "me", t0, t0, FALLBACK), wait);
        let almost = t0 + Duration::from_millis(2_999);
        assert_eq!(verdict(Some(&spec), "me", t0, almost, FALLBACK), wait);
        let expired = t0 + Duration::from_secs(3);
        assert_eq!(
            verdict(Some(&spec), "me", t0, expired, FALLBACK),
            Verdict::Take
        );
    }

    #[test]
    fn a_lease_without_duration_is_assumed_to_last_our_duration() {
        let t0 = Instant::now();
        let mut spec = held_by("other", 0);
        spec.lease_duration_seconds = None;
        assert!(!is_expired(
            &spec,
            t0,
            t0 + Duration::from_secs(14),
            FALLBACK
        ));
        assert!(is_expired(
            &spec,
            t0,
            t0 + Duration::from_secs(15),
            FALLBACK
        ));
        spec.lease_duration_seconds = Some(-5);
        assert!(!is_expired(
            &spec,
            t0,
            t0 + Duration::from_secs(14),
            FALLBACK
        ));
    }

    #[test]
    fn the_expiry_clock_restarts_only_when_the_record_changes() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        let first = Observation::update(None, "100", t0);
        assert_eq!(first.since, t0);
        let same = Observation::update(Some(first.clone()), "100", t1);
        assert_eq!(
            same.since, t0,
            "an unchanged record keeps its first-seen time"
        );
        let renewed = Observation::update(Some(same), "101", t1);
        assert_eq!(renewed.since, t1, "a renewal restarts the clock");
    }

    #[test]
    fn wall_clock_times_in_the_lease_are_never_compared() {
        // renewTime says the lease lapsed long ago (a skewed writer); we only trust our
        // own observation, which just started.
        let t0 = Instant::now();
        let spec = held_by("other", 15);
        assert_eq!(
            verdict(Some(&spec), "me", t0, t0 + Duration::from_secs(1), FALLBACK),
            Verdict::Wait {
                holder: "other".into()
            }
        );
    }

    #[test]
    fn taking_over_starts_a_new_term() {
        let now = jiff::Timestamp::from_second(2_000).expect("ts");
        let spec = claimed_spec(Some(&held_by("other", 15)), "me", 3, now);
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_transitions, Some(5));

        let fresh = claimed_spec(None, "me", 15, now);
        assert_eq!(fresh.lease_transitions, Some(0));
        assert_eq!(fresh.holder_identity.as_deref(), Some("me"));
    }

    #[test]
    fn renewing_keeps_the_term() {
        let now = jiff::Timestamp::from_second(2_000).expect("ts");
        let mut current = held_by("me", 15);
        current.preferred_holder = Some("someone".into());
        let spec = claimed_spec(Some(&current), "me", 15, now);
        assert_eq!(spec.acquire_time, current.acquire_time);
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.preferred_holder.as_deref(), Some("someone"));
    }

    #[test]
    fn a_released_lease_has_no_holder_and_can_be_taken_at_once() {
        let now = jiff::Timestamp::from_second(2_000).expect("ts");
        let released = released_spec(&held_by("me", 15), now);
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_transitions, Some(4));
        let t0 = Instant::now();
        assert_eq!(
            verdict(Some(&released), "other", t0, t0, FALLBACK),
            Verdict::Take
        );
    }
}
