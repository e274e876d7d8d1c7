//! What every identity reconcile shares, process-wide: the API client, event publisher,
//! metrics, caches, the service resolver (one ACS client per resource), the memory of our
//! own writes, the clock, the concurrency limit, leadership, and per-object backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::Client;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Semaphore, watch};

use crate::api::CommunicationIdentity;
use crate::runtime::metrics::Metrics;

use super::events::EventPublisher;
use super::memory::Memory;
use super::resolver::Resolver;
use super::shares::Shares;
use super::stores::Stores;
use super::wakeups::Wakeups;

/// The time source of every decision; tests inject their own.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Whether this process may write. Without leader election it always may.
#[derive(Clone, Default)]
pub struct Leadership(Option<watch::Receiver<bool>>);

impl Leadership {
    pub fn elected(leading: watch::Receiver<bool>) -> Self {
        Leadership(Some(leading))
    }

    /// Resolves once leadership is lost; never without leader election.
    pub async fn lost(&self) {
        match &self.0 {
            Some(rx) => {
                let mut rx = rx.clone();
                let _ = rx.wait_for(|leading| !*leading).await;
            }
            None => std::future::pending().await,
        }
    }
}

pub struct Context {
    pub client: Client,
    pub events: EventPublisher,
    pub metrics: Arc<Metrics>,
    pub stores: Stores,
    pub resolver: Resolver,
    pub memory: Memory,
    /// Each identity's next look (its renewal), outside the controller's scheduler.
    pub wakeups: Arc<Wakeups>,
    pub clock: Arc<dyn Clock>,
    pub limiter: Semaphore,
    /// Each ACS resource's and namespace's share of the calls in flight.
    pub shares: Arc<Shares>,
    pub leadership: Leadership,
    /// At most one token per identity per this interval, whatever fails.
    pub min_token_interval: Duration,
    /// In a terminating namespace, a cleanup that keeps failing releases the finalizer
    /// once the namespace has been terminating this long (`--abandon-cleanup-after`).
    pub abandon_cleanup_after: Duration,
    /// Restarts of `spec.rolloutRestartTargets`, process-wide (`--rollout-restarts-per-minute`).
    pub rollout_budget: crate::controller::rollout::RestartBudget,
    backoff: Mutex<HashMap<ObjectRef<CommunicationIdentity>, u32>>,
}

/// First retry after a transient failure; doubled per failure up to the cap.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Short, because the failures it paces (an ACS or API server outage) end, and tokens
/// must be renewed within seconds of their return; the client's quota and a 429's pause
/// keep the retries from crowding ACS.
pub const BACKOFF_CAP: Duration = Duration::from_secs(8);
/// Retry interval for failures a person must fix (bad credentials, spec, conflicts);
/// a fix to the credential Secret or the object triggers a reconcile at once anyway.
pub const SLOW_RETRY: Duration = Duration::from_secs(60);

pub struct ContextParts {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub stores: Stores,
    pub resolver: Resolver,
    pub clock: Arc<dyn Clock>,
    pub max_concurrent_reconciles: usize,
    pub leadership: Leadership,
    pub min_token_interval: Duration,
    pub abandon_cleanup_after: Duration,
    pub rollout_restarts_per_minute: u32,
}

impl Context {
    pub fn new(p: ContextParts) -> Self {
        let shares = {
            let stores = p.stores.clone();
            Shares::new(p.max_concurrent_reconciles.max(1), move |who| {
                stores.trigger(who)
            })
        };
        let wakeups = {
            let stores = p.stores.clone();
            Arc::new(Wakeups::new(move |who| stores.trigger(who)))
        };
        Context {
            wakeups,
            events: EventPublisher::new(
                p.client.clone(),
                "acs-identity-operator",
                std::env::var("POD_NAME").ok(),
            ),
            client: p.client,
            metrics: p.metrics,
            stores: p.stores,
            resolver: p.resolver,
            memory: Memory::default(),
            clock: p.clock,
            limiter: Semaphore::new(p.max_concurrent_reconciles.max(1)),
            shares,
            leadership: p.leadership,
            abandon_cleanup_after: p.abandon_cleanup_after,
            min_token_interval: p.min_token_interval,
            rollout_budget: crate::controller::rollout::RestartBudget::new(
                p.rollout_restarts_per_minute,
                crate::controller::rollout::BUDGET_WINDOW,
            ),
            backoff: Mutex::new(HashMap::new()),
        }
    }

    /// Records one more failure of `obj` and returns how long to wait: exponential with
    /// full jitter for transient errors (never below `retry_after`), slow for the rest.
    pub fn next_backoff(
        &self,
        obj: ObjectRef<CommunicationIdentity>,
        transient: bool,
        retry_after: Option<Duration>,
    ) -> Duration {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(obj).or_insert(0);
        *n = n.saturating_add(1);
        let delay = if transient {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1u32 << (*n - 1).min(10))
                .min(BACKOFF_CAP);
            // Full jitter, but at least one base step so a failing object never spins.
            BACKOFF_BASE.max(ceiling.mul_f64(rand::random::<f64>()))
        } else {
            SLOW_RETRY
        };
        delay.max(retry_after.unwrap_or_default())
    }

    /// Keeps the failure counts of the identities for which `keep` holds.
    pub fn retain_backoff(&self, mut keep: impl FnMut(&ObjectRef<CommunicationIdentity>) -> bool) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|obj, _| keep(obj));
    }

    pub fn reset_backoff(&self, obj: &ObjectRef<CommunicationIdentity>) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(obj);
    }
}
