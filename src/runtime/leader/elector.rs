//! Talking to the API server: campaigning, renewing in the background, releasing.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::LeaderError;
use super::config::LeaseConfig;
use super::decide::{Observation, Verdict, claimed_spec, released_spec, verdict};

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
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
                // Someone wrote or deleted the Lease since our last renewal: decide
                // again from what is there now.
                Err(e) if is_conflict(&e) || is_not_found(&e) => {
                    tracing::debug!(error = %e, "Lease changed since our last renewal; reading it again");
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
