//! Leader election over a `coordination.k8s.io/v1` Lease, so that several replicas can
//! run with one active.
//!
//! The protocol is client-go's `leaderelection`, so the Lease reads the same to people
//! and tools:
//! - a candidate takes the Lease when it has no holder, or when its record has not
//!   changed for the holder's `leaseDurationSeconds` *as measured by the candidate's own
//!   monotonic clock* since it first saw that record. Wall clocks of different nodes
//!   never get compared, so clock skew cannot make two replicas lead at once (it only
//!   means a fresh candidate waits one lease duration before taking an abandoned Lease);
//! - every write is a create (fails if the Lease exists) or a replace carrying the
//!   `resourceVersion` that was read (fails if anyone wrote in between), so of two
//!   candidates racing for the same Lease exactly one wins;
//! - the leader renews every `retry_period` and steps down when it could not renew for
//!   `renew_deadline`, which is shorter than the lease duration: it stops acting before
//!   anyone else may start;
//! - on a clean shutdown the leader releases the Lease (no holder), so a standby takes
//!   over at its next poll instead of after a lease duration.
//!
//! The process exits when it loses the Lease (see [`LeaderHandle::lost`]); a restarted
//! process campaigns afresh with clean caches, which is simpler and safer than stopping
//! and restarting controllers in place.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election settings: {0}")]
    Config(String),
    #[error("Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Lease {namespace}/{name}: no answer from the API server within {timeout:?}")]
    Timeout {
        namespace: String,
        name: String,
        timeout: Duration,
    },
}

/// Which Lease to hold, as whom, and how fast to react.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per process: two processes with one identity would both believe they lead.
    pub identity: String,
    /// How long others wait for a silent leader before taking over. Written to the Lease
    /// in whole seconds, rounded up.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down; shorter than
    /// `lease_duration`.
    pub renew_deadline: Duration,
    /// Time between renewals, and between a candidate's attempts.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Defaults: 15 s lease, 10 s renew deadline, 2 s retry period (client-go's), and
    /// [`default_identity`].
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: default_identity(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    pub fn validate(&self) -> Result<(), LeaderError> {
        let fail = |m: String| Err(LeaderError::Config(m));
        if self.namespace.is_empty() || self.name.is_empty() {
            return fail("the Lease namespace and name must not be empty".into());
        }
        if self.identity.is_empty() {
            return fail("the leader identity must not be empty".into());
        }
        if self.retry_period.is_zero() {
            return fail("the retry period must be positive".into());
        }
        if self.lease_duration < Duration::from_secs(1) {
            return fail("the lease duration must be at least 1s".into());
        }
        if self.lease_duration > Duration::from_secs(i32::MAX as u64) {
            return fail("the lease duration is too long".into());
        }
        if self.renew_deadline >= self.lease_duration {
            return fail(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return fail(format!(
                "the retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }

    fn lease_duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// `$POD_NAME`, else `$HOSTNAME`, else the kernel's hostname, plus a random suffix: the
/// suffix keeps a restarted container (same pod name) from passing as its predecessor.
pub fn default_identity() -> String {
    let base = ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .chain(std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "acs-identity-operator".to_string());
    format!("{base}-{:08x}", rand::random::<u32>())
}

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

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// Adds up to 20% to a candidate's poll interval so standbys started together don't
/// poll in lockstep.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}

/// The campaign and renewal state of one candidate.
struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observation>,
    /// The Lease as we last wrote it while holding it: renewals replace it directly
    /// (one request) and fall back to read-then-write on a conflict.
    held: Option<Lease>,
}

impl Elector {
    fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            held: None,
        }
    }

    fn api_error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    fn timeout_error(&self, timeout: Duration) -> LeaderError {
        LeaderError::Timeout {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            timeout,
        }
    }

    /// One round: `Ok(true)` when we hold the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let me = self.config.identity.clone();
        let duration = self.config.lease_duration_seconds();
        if let Some(mut lease) = self.held.take() {
            lease.spec = Some(claimed_spec(
                lease.spec.as_ref(),
                &me,
                duration,
                jiff::Timestamp::now(),
            ));
            match self
                .api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(written) => {
                    self.held = Some(written);
                    return Ok(true);
                }
                Err(e) if is_conflict(&e) => {
                    tracing::debug!("Lease changed since our last renewal; reading it again");
                }
                Err(e) => return Err(self.api_error(e)),
            }
        }

        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(claimed_spec(None, &me, duration, jiff::Timestamp::now())),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(written) => {
                    self.held = Some(written);
                    Ok(true)
                }
                // Another candidate created it first.
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.api_error(e)),
            };
        };

        let now = Instant::now();
        let rv = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let observed = Observation::update(self.observed.take(), &rv, now);
        let since = observed.since;
        self.observed = Some(observed);
        match verdict(
            current.spec.as_ref(),
            &me,
            since,
            now,
            self.config.lease_duration,
        ) {
            Verdict::Wait { holder } => {
                tracing::debug!(%holder, "Lease is held by another replica");
                Ok(false)
            }
            Verdict::Take | Verdict::Renew => {
                let mut next = current;
                next.spec = Some(claimed_spec(
                    next.spec.as_ref(),
                    &me,
                    duration,
                    jiff::Timestamp::now(),
                ));
                // `next.metadata.resourceVersion` is what we read: the write fails if
                // anyone wrote since, and then the winner's record is what we observe.
                match self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &next)
                    .await
                {
                    Ok(written) => {
                        self.held = Some(written);
                        Ok(true)
                    }
                    Err(e) if is_conflict(&e) => Ok(false),
                    Err(e) => Err(self.api_error(e)),
                }
            }
        }
    }

    /// One bounded round, so a hung API call cannot outlive the renew deadline.
    async fn try_within(&mut self, timeout: Duration) -> Result<bool, LeaderError> {
        match tokio::time::timeout(timeout, self.try_acquire_or_renew()).await {
            Ok(result) => result,
            Err(_) => {
                // The write may or may not have landed; the next round reads it back.
                self.held = None;
                Err(self.timeout_error(timeout))
            }
        }
    }

    /// Clears the holder if it is still us. Conflicts are retried against a fresh read;
    /// a Lease someone else holds (or that is gone) is left alone.
    async fn release(&mut self) -> Result<(), LeaderError> {
        let me = self.config.identity.clone();
        let mut candidate = self.held.take();
        for _ in 0..3 {
            let mut lease = match candidate.take() {
                Some(lease) => lease,
                None => match self
                    .api
                    .get_opt(&self.config.name)
                    .await
                    .map_err(|e| self.api_error(e))?
                {
                    Some(lease) => lease,
                    None => return Ok(()),
                },
            };
            let Some(spec) = lease.spec.as_ref() else {
                return Ok(());
            };
            if spec.holder_identity.as_deref() != Some(me.as_str()) {
                return Ok(());
            }
            lease.spec = Some(released_spec(spec, jiff::Timestamp::now()));
            match self
                .api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => {
                    tracing::info!(identity = %me, "released the leader Lease");
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(self.api_error(e)),
            }
        }
        tracing::warn!("could not release the leader Lease after repeated conflicts");
        Ok(())
    }
}

/// Blocks until this process holds the Lease, then renews it in the background.
///
/// Returns `Ok(None)` when `shutdown` resolves first (after releasing the Lease in case
/// a last attempt won it), and an error only for invalid settings: API errors while
/// campaigning are logged and retried, since the API server or RBAC may recover.
pub async fn run_leader_election(
    client: Client,
    config: LeaseConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<LeaderHandle>, LeaderError> {
    config.validate()?;
    let mut elector = Elector::new(client, config);
    let retry = elector.config.retry_period;
    let attempt_timeout = elector.config.renew_deadline;
    tracing::info!(
        identity = %elector.config.identity,
        lease = %format!("{}/{}", elector.config.namespace, elector.config.name),
        "campaigning for the leader Lease"
    );
    tokio::pin!(shutdown);
    let mut last_error_logged: Option<Instant> = None;
    loop {
        let won = tokio::select! {
            biased;
            _ = &mut shutdown => None,
            result = elector.try_within(attempt_timeout) => Some(result),
        };
        match won {
            None => {
                // An attempt cut short may still have won the Lease on the server.
                elector.held = None;
                if let Err(e) = elector.release().await {
                    tracing::warn!(error = %e, "could not check the Lease on shutdown");
                }
                return Ok(None);
            }
            Some(Ok(true)) => break,
            Some(Ok(false)) => {}
            Some(Err(e)) => {
                // Once a minute is enough to see a persistent problem (RBAC, namespace).
                let quiet =
                    last_error_logged.is_some_and(|t| t.elapsed() < Duration::from_secs(60));
                if quiet {
                    tracing::debug!(error = %e, "leader election attempt failed");
                } else {
                    tracing::warn!(error = %e, "leader election attempt failed; retrying");
                    last_error_logged = Some(Instant::now());
                }
            }
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                return Ok(None);
            }
            _ = tokio::time::sleep(jittered(retry)) => {}
        }
    }
    tracing::info!(identity = %elector.config.identity, "became the leader");
    Ok(Some(LeaderHandle::spawn(elector)))
}

/// Held by the leader. [`LeaderHandle::lost`] resolves when leadership ends;
/// [`LeaderHandle::release`] hands it over on a clean shutdown. Dropping the handle
/// stops renewing without releasing: the others take over after the lease duration.
pub struct LeaderHandle {
    identity: String,
    leading: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Elector>>,
}

impl std::fmt::Debug for LeaderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderHandle")
            .field("identity", &self.identity)
            .field("leading", &*self.leading.borrow())
            .finish_non_exhaustive()
    }
}

impl LeaderHandle {
    fn spawn(elector: Elector) -> Self {
        let identity = elector.config.identity.clone();
        let (leading_tx, leading) = watch::channel(true);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(renew(elector, leading_tx, stop_rx));
        Self {
            identity,
            leading,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether we still lead. Becomes `false` once, never back.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// A receiver of the leading flag, for tasks that want to stop work on loss.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Resolves when leadership is lost (someone else holds the Lease, or renewals
    /// failed for the renew deadline). The process should exit then.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.leading.clone();
        async move {
            // A closed channel means the renewal task is gone: no longer leading either.
            let _ = rx.wait_for(|leading| !*leading).await;
        }
    }

    /// Stops renewing and, if the Lease is still ours, clears its holder so a standby
    /// takes over at once. Call on shutdown after the controller stopped.
    pub async fn release(mut self) -> Result<(), LeaderError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(mut elector) => {
                let timeout = elector.config.renew_deadline;
                match tokio::time::timeout(timeout, elector.release()).await {
                    Ok(result) => result,
                    Err(_) => Err(elector.timeout_error(timeout)),
                }
            }
            // Only a panic in the renewal task gets here; the Lease then simply expires.
            Err(e) => {
                tracing::error!(error = %e, "Lease renewal task failed; not releasing");
                Ok(())
            }
        }
    }
}

impl Drop for LeaderHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Renews every retry period until stopped or until leadership is lost, then hands the
/// elector back (for `release`).
async fn renew(
    mut elector: Elector,
    leading: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) -> Elector {
    let retry = elector.config.retry_period;
    let deadline = elector.config.renew_deadline;
    // Counted from before the request that renewed: the server's record is at least
    // that recent, so others can't take over before `last_renewal + lease_duration`.
    let mut last_renewal = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return elector,
            _ = tokio::time::sleep(retry) => {}
        }
        let started = Instant::now();
        let remaining = (last_renewal + deadline).saturating_duration_since(started);
        if remaining.is_zero() {
            tracing::error!(identity = %elector.config.identity, "could not renew the leader Lease within the renew deadline; stepping down");
            break;
        }
        let result = tokio::select! {
            biased;
            _ = &mut stop => return elector,
            result = elector.try_within(remaining) => result,
        };
        match result {
            Ok(true) => last_renewal = started,
            Ok(false) => {
                tracing::error!(identity = %elector.config.identity, "another replica took the leader Lease; stepping down");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the leader Lease failed; retrying until the renew deadline");
            }
        }
    }
    leading.send_replace(false);
    elector
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

    #[test]
    fn settings_are_validated() {
        let mut c = LeaseConfig::new("ns", "lease");
        assert!(c.validate().is_ok());
        c.renew_deadline = c.lease_duration;
        assert!(c.validate().is_err());
        let mut c = LeaseConfig::new("ns", "lease");
        c.retry_period = c.renew_deadline;
        assert!(c.validate().is_err());
        let mut c = LeaseConfig::new("ns", "lease");
        c.identity.clear();
        assert!(c.validate().is_err());
        let mut c = LeaseConfig::new("ns", "lease");
        c.lease_duration = Duration::from_millis(500);
        c.renew_deadline = Duration::from_millis(400);
        c.retry_period = Duration::from_millis(100);
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_written_duration_rounds_up() {
        let mut c = LeaseConfig::new("ns", "lease");
        c.lease_duration = Duration::from_millis(2_500);
        assert_eq!(c.lease_duration_seconds(), 3);
        c.lease_duration = Duration::from_secs(15);
        assert_eq!(c.lease_duration_seconds(), 15);
    }

    #[test]
    fn default_identities_are_unique_per_process_start() {
        let a = default_identity();
        let b = default_identity();
        assert!(!a.is_empty());
        assert_ne!(a, b);
    }
}
