//! What every reconcile shares: the API client, event recorder, metrics, ACS clients,
//! the default service, per-object error backoff, and the credential-Secret watches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;

use crate::api::{CommunicationIdentity, ServiceKind};
use crate::runtime::metrics::Metrics;

use super::credentials::CredentialWatches;
use super::services::{ClientCache, ClientSettings};

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub clients: ClientCache,
    pub client_settings: ClientSettings,
    pub default_service: Option<(ServiceKind, String)>,
    pub credentials: CredentialWatches<CommunicationIdentity>,
    backoff: Mutex<HashMap<ObjectRef<CommunicationIdentity>, u32>>,
}

/// First retry after a transient failure; doubled per failure up to the cap.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Retry interval for failures a person must fix (bad credentials, spec, conflicts);
/// a fix to the credential Secret or the object triggers a reconcile at once anyway.
pub const SLOW_RETRY: Duration = Duration::from_secs(60);

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        client_settings: ClientSettings,
        default_service: Option<(ServiceKind, String)>,
        credentials: CredentialWatches<CommunicationIdentity>,
    ) -> Self {
        let reporter = Reporter {
            controller: "acs-identity-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            clients: ClientCache::default(),
            client_settings,
            default_service,
            credentials,
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

    pub fn reset_backoff(&self, obj: &ObjectRef<CommunicationIdentity>) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(obj);
    }
}
