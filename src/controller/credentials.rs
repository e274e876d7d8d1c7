//! Watches on the credential Secrets that services name, so identities are reconciled
//! as soon as a connection string is fixed or rotated, without caching every Secret of
//! the cluster: one metadata-only watch per referenced Secret, by field selector.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::mpsc;

use super::services::CredentialRef;

type Key = (String, String); // (namespace, name)

/// Registry of credential-Secret watches and the identities that depend on each Secret.
pub struct CredentialWatches<K: Resource<DynamicType = ()>> {
    inner: Arc<Inner<K>>,
}

impl<K: Resource<DynamicType = ()>> Clone for CredentialWatches<K> {
    fn clone(&self) -> Self {
        CredentialWatches {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K: Resource<DynamicType = ()>> {
    client: Client,
    trigger: mpsc::UnboundedSender<ObjectRef<K>>,
    dependents: Mutex<HashMap<Key, HashSet<ObjectRef<K>>>>,
    watching: Mutex<HashSet<Key>>,
}

impl<K: Resource<DynamicType = ()> + Send + Sync + 'static> CredentialWatches<K> {
    /// The receiver yields objects to reconcile; feed it to `Controller::reconcile_on`.
    pub fn new(client: Client) -> (Self, mpsc::UnboundedReceiver<ObjectRef<K>>) {
        let (trigger, rx) = mpsc::unbounded_channel();
        let inner = Inner {
            client,
            trigger,
            dependents: Mutex::default(),
            watching: Mutex::default(),
        };
        (
            CredentialWatches {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Notes that `identity` uses the Secret `credential` and makes sure it is watched.
    /// An identity depends on one credential at a time.
    pub fn depend(&self, identity: ObjectRef<K>, credential: &CredentialRef) {
        let key = (credential.namespace.clone(), credential.name.clone());
        {
            let mut deps = self
                .inner
                .dependents
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (k, set) in deps.iter_mut() {
                if *k != key {
                    set.remove(&identity);
                }
            }
            deps.entry(key.clone()).or_default().insert(identity);
        }
        let mut watching = self
            .inner
            .watching
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if watching.insert(key.clone()) {
            tokio::spawn(watch_secret(self.inner.clone(), key));
        }
    }

    pub fn forget(&self, identity: &ObjectRef<K>) {
        let mut deps = self
            .inner
            .dependents
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for set in deps.values_mut() {
            set.remove(identity);
        }
    }
}

async fn watch_secret<K: Resource<DynamicType = ()> + Send + Sync + 'static>(
    inner: Arc<Inner<K>>,
    key: Key,
) {
    let (ns, name) = &key;
    let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(inner.client.clone(), ns);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    // Any change, including creation and deletion, re-triggers the dependents: the
    // reconcile re-reads the Secret and decides.
    let mut changes = watcher(api, config)
        .default_backoff()
        .touched_objects()
        .boxed();
    loop {
        let event = changes.next().await;
        match event {
            None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(namespace = %ns, secret = %name, error = %e, "credential Secret watch error");
                continue;
            }
        }
        let dependents: Vec<_> = inner
            .dependents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for d in dependents {
            let _ = inner.trigger.send(d);
        }
    }
    inner
        .watching
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
}
