//! The two comparable workloads (N CommunicationIdentities, N ExternalSecrets from one
//! Password generator) and a watch that timestamps when each object turns Ready, renews,
//! and disappears.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Which operator's custom resource a workload is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Ours: `CommunicationIdentity`.
    Identity,
    /// The peer: `ExternalSecret` (external-secrets.io/v1).
    ExternalSecret,
}

impl Kind {
    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::Identity => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("acs-operator.dev", "v1alpha1", "CommunicationIdentity"),
                "communicationidentities",
            ),
            Kind::ExternalSecret => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret"),
                "externalsecrets",
            ),
        }
    }

    /// The `i`-th object of the workload. `period` is the renewal (ours, via the emulator's
    /// lifetime scale) or refresh (peer, `refreshInterval`) period.
    pub fn object(self, name: &str, period: Duration) -> Value {
        match self {
            Kind::Identity => json!({
                "apiVersion": "acs-operator.dev/v1alpha1",
                "kind": "CommunicationIdentity",
                "metadata": {"name": name},
                "spec": {
                    "serviceRef": {"kind": "CommunicationService", "name": SERVICE},
                    "scopes": ["chat", "voip"],
                    "tokenLifetime": "1h",
                },
            }),
            Kind::ExternalSecret => json!({
                "apiVersion": "external-secrets.io/v1",
                "kind": "ExternalSecret",
                "metadata": {"name": name},
                "spec": {
                    "refreshInterval": format!("{}s", period.as_secs()),
                    "target": {"name": name},
                    "dataFrom": [{"sourceRef": {"generatorRef": {
                        "apiVersion": "generators.external-secrets.io/v1alpha1",
                        "kind": "Password",
                        "name": GENERATOR,
                    }}}],
                },
            }),
        }
    }

    /// The value that changes each time the object gets a fresh token / refresh.
    fn issue_marker(self, obj: &DynamicObject) -> Option<String> {
        let field = match self {
            Kind::Identity => "lastTokenIssuedAt",
            Kind::ExternalSecret => "refreshTime",
        };
        obj.data["status"][field].as_str().map(str::to_string)
    }
}

/// The CommunicationService every identity of the workload uses.
pub const SERVICE: &str = "acs";
/// The Password generator every ExternalSecret uses.
pub const GENERATOR: &str = "token";

fn is_ready(obj: &DynamicObject) -> bool {
    obj.data["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// What the watch saw of one object, as offsets from the tracker's start.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub created: Option<Duration>,
    pub ready: Option<Duration>,
    /// The issue marker when the object first turned Ready.
    first_marker: Option<String>,
    /// When the marker first moved past `first_marker` (the first renewal/refresh).
    pub renewed: Option<Duration>,
    pub present: bool,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Seen>,
    /// Names seen during a re-list (between Init and InitDone).
    relist: Option<Vec<String>>,
}

/// A watch over one namespace's objects of one kind, recording when things happen.
pub struct Tracker {
    pub start: Instant,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    pub async fn start(client: Client, ns: &str, kind: Kind) -> Tracker {
        let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &kind.api_resource());
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        let start = Instant::now();
        let (s, c) = (state.clone(), changed.clone());
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            loop {
                let ev = match stream.try_next().await {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("operator-bench: watch error (retrying): {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let now = start.elapsed();
                let mut st = s.lock().expect("tracker lock");
                match ev {
                    watcher::Event::Init => st.relist = Some(Vec::new()),
                    watcher::Event::InitApply(obj) => {
                        if let Some(l) = st.relist.as_mut() {
                            l.push(obj.metadata.name.clone().unwrap_or_default());
                        }
                        observe(&mut st, kind, &obj, now);
                    }
                    watcher::Event::InitDone => {
                        if let Some(live) = st.relist.take() {
                            let live: std::collections::HashSet<_> = live.into_iter().collect();
                            for (name, seen) in st.objects.iter_mut() {
                                if !live.contains(name) {
                                    seen.present = false;
                                }
                            }
                        }
                    }
                    watcher::Event::Apply(obj) => observe(&mut st, kind, &obj, now),
                    watcher::Event::Delete(obj) => {
                        let name = obj.metadata.name.unwrap_or_default();
                        st.objects.entry(name).or_default().present = false;
                    }
                }
                drop(st);
                c.notify_waiters();
            }
        });
        Tracker {
            start,
            state,
            changed,
            task,
        }
    }

    /// Records that `name` was created (the create call returned) at `at`.
    pub fn created(&self, name: &str, at: Instant) {
        let mut st = self.state.lock().expect("tracker lock");
        st.objects.entry(name.to_string()).or_default().created =
            Some(at.saturating_duration_since(self.start));
    }

    /// A handle that reads the counts from another task.
    pub fn handle(&self) -> TrackerHandle {
        TrackerHandle {
            state: self.state.clone(),
        }
    }

    /// A copy of everything seen so far.
    pub fn snapshot(&self) -> HashMap<String, Seen> {
        self.state.lock().expect("tracker lock").objects.clone()
    }

    /// Waits until `done` holds for the snapshot, or `timeout`; returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&HashMap<String, Seen>) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if done(&self.state.lock().expect("tracker lock").objects) {
                return true;
            }
            // The periodic wake-up only guards against a missed notification.
            match tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            })
            .await
            {
                Ok(()) => {}
                Err(_) => return done(&self.state.lock().expect("tracker lock").objects),
            }
        }
    }
}

/// Shares a tracker's counts with a sampling task.
pub struct TrackerHandle {
    state: Arc<Mutex<State>>,
}

impl TrackerHandle {
    /// How many objects are Ready, have renewed, and exist, right now.
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.state.lock().expect("tracker lock");
        st.objects.values().fold((0, 0, 0), |(r, n, p), s| {
            (
                r + usize::from(s.ready.is_some()),
                n + usize::from(s.renewed.is_some()),
                p + usize::from(s.present),
            )
        })
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn observe(st: &mut State, kind: Kind, obj: &DynamicObject, now: Duration) {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let seen = st.objects.entry(name).or_default();
    seen.present = true;
    let marker = kind.issue_marker(obj);
    if seen.ready.is_none() {
        if is_ready(obj) {
            seen.ready = Some(now);
            seen.first_marker = marker;
        }
    } else if seen.renewed.is_none() && marker.is_some() && marker != seen.first_marker {
        seen.renewed = Some(now);
    }
}

/// Creates `names` as objects of `kind` with `concurrency` requests in flight; the tracker
/// learns each create's completion time. Returns the number of failed creates.
pub async fn create_all(
    client: Client,
    ns: &str,
    kind: Kind,
    names: &[String],
    period: Duration,
    concurrency: usize,
    tracker: &Tracker,
) -> usize {
    let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &kind.api_resource());
    let results: Vec<bool> = futures::stream::iter(names.iter())
        .map(|name| {
            let api = api.clone();
            async move {
                let obj: DynamicObject = serde_json::from_value(kind.object(name, period))
                    .expect("workload objects are valid");
                let ok = match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => true,
                    Err(e) => {
                        eprintln!("operator-bench: creating {name}: {e}");
                        false
                    }
                };
                if ok {
                    tracker.created(name, Instant::now());
                }
                ok
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.iter().filter(|ok| !**ok).count()
}

/// Deletes each named object with `concurrency` requests in flight: at tens of thousands
/// of objects one deletecollection call outlasts the client's timeout. Returns the
/// number of failed deletes (an object already gone is not a failure).
pub async fn delete_each(
    client: Client,
    ns: &str,
    kind: Kind,
    names: &[String],
    concurrency: usize,
) -> usize {
    let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &kind.api_resource());
    futures::stream::iter(names.iter())
        .map(|name| {
            let api = api.clone();
            async move {
                match api.delete(name, &DeleteParams::background()).await {
                    Ok(_) => false,
                    Err(kube::Error::Api(e)) if e.code == 404 => false,
                    Err(e) => {
                        eprintln!("operator-bench: deleting {name}: {e}");
                        true
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .filter(|failed| futures::future::ready(*failed))
        .count()
        .await
}

/// Deletes every object of `kind` in `ns` (one deletecollection call, retried: on a
/// loaded API server a connection can drop under a call that lasts seconds).
pub async fn delete_all(client: Client, ns: &str, kind: Kind) -> Result<(), String> {
    let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &kind.api_resource());
    let mut attempt = 1;
    loop {
        match api
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 5 => {
                eprintln!(
                    "operator-bench: deleting every {kind:?} in {ns} (attempt {attempt}): {e}; retrying"
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(format!("deleting every {kind:?} in {ns}: {e}")),
        }
    }
}
