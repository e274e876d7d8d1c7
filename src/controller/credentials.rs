//! Watches on the credential Secrets that services name, so dependents are reconciled as
//! soon as a connection string is fixed or rotated, without caching every Secret of the
//! cluster: one metadata-only watch per referenced Secret, by field selector. The watch
//! also tells the current resourceVersion, so a parsed credential is re-read only when the
//! Secret changed. A watch stops when nothing depends on its Secret any more.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::task::AbortHandle;

/// Where a service's connection string lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

type SecretId = (String, String); // (namespace, name)

/// What the watch of one Secret knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretVersion {
    /// Not listed yet.
    Unknown,
    Absent,
    Present(String),
}

/// Registry of credential-Secret watches and the dependents (`D`: an identity or a service
/// reference) of each Secret; `notify` is called for each dependent when its Secret changes.
pub struct CredentialWatches<D> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for CredentialWatches<D> {
    fn clone(&self) -> Self {
        CredentialWatches {
            inner: self.inner.clone(),
        }
    }
}

type Notify<D> = Arc<dyn Fn(D) + Send + Sync>;

struct Inner<D> {
    client: Client,
    notify: Notify<D>,
    state: Mutex<State<D>>,
}

/// A dependent and its Secret's id are each held once, behind an `Arc`, by both maps: with
/// an identity per dependent, a copy in each map was a fixed part of the operator's memory
/// per identity (issue 19).
struct State<D> {
    dependents: HashMap<Arc<SecretId>, HashSet<Arc<D>>>,
    uses: HashMap<Arc<D>, Arc<SecretId>>,
    watches: HashMap<Arc<SecretId>, (AbortHandle, SecretVersion)>,
}

impl<D: Clone + Eq + Hash + Send + Sync + 'static> CredentialWatches<D> {
    pub fn new(client: Client, notify: impl Fn(D) + Send + Sync + 'static) -> Self {
        CredentialWatches {
            inner: Arc::new(Inner {
                client,
                notify: Arc::new(notify),
                state: Mutex::new(State {
                    dependents: HashMap::new(),
                    uses: HashMap::new(),
                    watches: HashMap::new(),
                }),
            }),
        }
    }

    /// Notes that `dependent` uses the Secret of `credential` (one Secret at a time) and
    /// makes sure it is watched; returns what the watch knows of its version.
    pub fn depend(&self, dependent: D, credential: &CredentialRef) -> SecretVersion {
        let id = (credential.namespace.clone(), credential.name.clone());
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let (dependent, previous) = match st.uses.get_key_value(&dependent) {
            Some((held, previous)) => (held.clone(), Some(previous.clone())),
            None => (Arc::new(dependent), None),
        };
        if let Some(previous) = previous.filter(|p| **p != id) {
            release(&mut st, &dependent, &previous);
        }
        let id = match st.dependents.get_key_value(&id) {
            Some((shared, _)) => shared.clone(),
            None => Arc::new(id),
        };
        st.uses.insert(dependent.clone(), id.clone());
        st.dependents
            .entry(id.clone())
            .or_default()
            .insert(dependent);
        if let Some((_, version)) = st.watches.get(&id) {
            return version.clone();
        }
        let task = tokio::spawn(watch_secret(self.inner.clone(), id.clone()));
        st.watches
            .insert(id, (task.abort_handle(), SecretVersion::Unknown));
        SecretVersion::Unknown
    }

    /// `dependent` no longer uses any Secret; a watch nobody needs is stopped.
    pub fn forget(&self, dependent: &D) {
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((held, id)) = st.uses.remove_entry(dependent) {
            release(&mut st, &held, &id);
        }
    }

    /// Keeps the dependents for which `keep` holds; the others are forgotten.
    pub fn retain(&self, mut keep: impl FnMut(&D) -> bool) {
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<(Arc<D>, Arc<SecretId>)> = st.uses.extract_if(|d, _| !keep(d)).collect();
        for (dependent, id) in gone {
            release(&mut st, &dependent, &id);
        }
    }

    /// Number of Secrets watched (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .watches
            .len()
    }
}

fn release<D: Eq + Hash>(st: &mut State<D>, dependent: &D, id: &SecretId) {
    let empty = st.dependents.get_mut(id).is_some_and(|set| {
        set.remove(dependent);
        set.is_empty()
    });
    if empty {
        st.dependents.remove(id);
        if let Some((handle, _)) = st.watches.remove(id) {
            handle.abort();
        }
    }
}

async fn watch_secret<D: Clone + Eq + Hash + Send + Sync + 'static>(
    inner: Arc<Inner<D>>,
    id: Arc<SecretId>,
) {
    let (ns, name) = &*id;
    let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(inner.client.clone(), ns);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listed: Option<String> = None;
    while let Some(event) = events.next().await {
        let version = match event {
            Ok(watcher::Event::Apply(s)) => SecretVersion::Present(rv(&s)),
            Ok(watcher::Event::Delete(_)) => SecretVersion::Absent,
            Ok(watcher::Event::Init) => {
                listed = None;
                continue;
            }
            Ok(watcher::Event::InitApply(s)) => {
                listed = Some(rv(&s));
                continue;
            }
            Ok(watcher::Event::InitDone) => match listed.take() {
                Some(v) => SecretVersion::Present(v),
                None => SecretVersion::Absent,
            },
            Err(e) => {
                tracing::debug!(namespace = %ns, secret = %name, error = %e, "credential Secret watch error");
                continue;
            }
        };
        let dependents: Vec<D> = {
            let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            match st.watches.get_mut(&id) {
                Some((_, v)) if *v == version => continue,
                Some((_, v)) => *v = version,
                None => return,
            }
            st.dependents
                .get(&id)
                .map(|s| s.iter().map(|d| D::clone(d)).collect())
                .unwrap_or_default()
        };
        for d in dependents {
            (inner.notify)(d);
        }
    }
}

fn rv(s: &PartialObjectMeta<Secret>) -> String {
    s.resource_version().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Watches of an API server nobody listens at: they only retry, which these tests do
    /// not need.
    fn unanswered_watches() -> CredentialWatches<String> {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        CredentialWatches::new(Client::try_from(config).unwrap(), |_| {})
    }

    fn cred(name: &str) -> CredentialRef {
        CredentialRef {
            namespace: "team-a".into(),
            name: name.into(),
            key: "connectionString".into(),
        }
    }

    #[tokio::test]
    async fn each_secret_is_watched_while_someone_uses_it_and_its_id_is_held_once() {
        let watches = unanswered_watches();
        watches.depend("a".into(), &cred("one"));
        watches.depend("b".into(), &cred("one"));
        watches.depend("a".into(), &cred("one"));
        assert_eq!(watches.watched(), 1);
        {
            let st = watches.inner.state.lock().unwrap();
            let (key, _) = st
                .dependents
                .get_key_value(&("team-a".into(), "one".into()))
                .unwrap();
            assert!(st.uses.values().all(|id| Arc::ptr_eq(id, key)));
            assert_eq!(st.dependents[key].len(), 2);
        }
        watches.depend("b".into(), &cred("two"));
        assert_eq!(watches.watched(), 2);
        watches.forget(&"a".to_string());
        assert_eq!(watches.watched(), 1, "nobody uses `one` any more");
        watches.forget(&"b".to_string());
        assert_eq!(watches.watched(), 0);
        let st = watches.inner.state.lock().unwrap();
        assert!(st.uses.is_empty() && st.dependents.is_empty());
    }

    #[tokio::test]
    async fn dependents_not_kept_are_forgotten_and_their_watches_stopped() {
        let watches = unanswered_watches();
        watches.depend("a".into(), &cred("one"));
        watches.depend("b".into(), &cred("one"));
        watches.depend("c".into(), &cred("two"));
        watches.retain(|d| d == "b");
        assert_eq!(watches.watched(), 1, "`two` has nobody left");
        watches.retain(|_| false);
        assert_eq!(watches.watched(), 0);
        let st = watches.inner.state.lock().unwrap();
        assert!(st.uses.is_empty() && st.dependents.is_empty());
    }
}
