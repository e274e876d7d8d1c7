//! Wiring: the caches (reflectors), one identity controller per watched scope sharing one
//! process-wide context, the service controllers, and readiness once every cache synced.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::{
    ClusterCommunicationService, CommunicationIdentity, CommunicationService, ServiceKind,
};
use crate::runtime::Readiness;
use crate::runtime::metrics::Metrics;

use super::clients::{ClientCache, ClientSettings};
use super::context::{Clock, Context, ContextParts, Leadership, SystemClock};
use super::credentials::CredentialWatches;
use super::identity;
use super::resolver::{Resolver, service_key_for};
use super::secret::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use super::service::{self, ServiceContext};
use super::stores::{SecretMeta, Stores, WatchScope, Watched, slim};

/// Default `--min-token-interval`.
pub const DEFAULT_MIN_TOKEN_INTERVAL: Duration = Duration::from_secs(15);
/// Default `--abandon-cleanup-after`: a terminating namespace waits at most this long for
/// cleanups that fail (bad key, ACS resource gone) before the finalizers are released.
pub const DEFAULT_ABANDON_CLEANUP_AFTER: Duration = Duration::from_secs(300);
/// Default `--max-concurrent-reconciles`.
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: usize = 16;

#[derive(Clone)]
pub struct OperatorConfig {
    pub default_service: Option<(ServiceKind, String)>,
    /// Empty: every namespace.
    pub watch_namespaces: Vec<String>,
    pub client_settings: ClientSettings,
    /// Where ClusterCommunicationService credential Secrets must live.
    pub cluster_resource_namespace: String,
    pub max_concurrent_reconciles: usize,
    pub min_token_interval: Duration,
    pub abandon_cleanup_after: Duration,
    /// Workloads restarted for token changes per minute, across every identity.
    pub rollout_restarts_per_minute: u32,
    pub leadership: Leadership,
    pub clock: Arc<dyn Clock>,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            default_service: None,
            watch_namespaces: vec![],
            client_settings: ClientSettings::default(),
            cluster_resource_namespace: "acs-system".into(),
            max_concurrent_reconciles: DEFAULT_MAX_CONCURRENT_RECONCILES,
            min_token_interval: DEFAULT_MIN_TOKEN_INTERVAL,
            abandon_cleanup_after: DEFAULT_ABANDON_CLEANUP_AFTER,
            rollout_restarts_per_minute: super::rollout::DEFAULT_ROLLOUT_RESTARTS_PER_MINUTE,
            leadership: Leadership::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

fn api_for<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch feeding a reflector, with the cached objects slimmed.
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Watched,
{
    reflected_with(api, config, slim::<K>, |_: &K| {})
}

/// [`reflected`] with a slimming function of its own, and `on_delete` called for each
/// object the watch saw deleted.
fn reflected_with<K>(
    api: Api<K>,
    config: watcher::Config,
    slimmed: fn(&mut K),
    on_delete: impl Fn(&K) + Send + 'static,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Watched,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api, config).default_backoff().modify(slimmed),
    )
    .inspect(move |event| {
        if let Ok(watcher::Event::Delete(obj)) = event {
            on_delete(obj);
        }
    })
    .touched_objects();
    (reader, stream)
}

use reflector::reflector;

/// A watch whose store keeps `summary` of each object instead of the object: the stream
/// still yields the objects (owner references for the controller's triggers), and only
/// the summary stays in memory.
fn reflected_as<K, C>(
    api: Api<K>,
    config: watcher::Config,
    summary: fn(&K) -> C,
) -> (
    Store<C>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Watched,
    C: reflector::Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (reader, mut writer) = reflector::store::<C>();
    let stream = watcher(api, config)
        .default_backoff()
        .inspect_ok(move |event| {
            let summarised = match event {
                watcher::Event::Apply(o) => watcher::Event::Apply(summary(o)),
                watcher::Event::Delete(o) => watcher::Event::Delete(summary(o)),
                watcher::Event::InitApply(o) => watcher::Event::InitApply(summary(o)),
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitDone => watcher::Event::InitDone,
            };
            writer.apply_watcher_event(&summarised);
        })
        .touched_objects();
    (reader, stream)
}

/// Identities that use a service, across every scope.
fn using_service(
    stores: &[Store<CommunicationIdentity>],
    default: Option<&(ServiceKind, String)>,
    kind: ServiceKind,
    ns: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<CommunicationIdentity>> {
    stores
        .iter()
        .flat_map(|s| s.state())
        .filter(|i| {
            service_key_for(i, default).is_some_and(|k| {
                k.kind == kind && k.name == name && (ns.is_none() || k.namespace.as_deref() == ns)
            })
        })
        .map(|i| ObjectRef::from_obj(i.as_ref()))
        .collect()
}

/// The streams of one watched scope, before a controller consumes them.
struct ScopeParts {
    ns: Option<String>,
    identities: Store<CommunicationIdentity>,
    identity_stream: BoxStream<'static, Result<CommunicationIdentity, watcher::Error>>,
    service_stream: BoxStream<'static, Result<CommunicationService, watcher::Error>>,
    secret_stream: BoxStream<'static, Result<PartialObjectMeta<Secret>, watcher::Error>>,
    triggers: mpsc::UnboundedReceiver<ObjectRef<CommunicationIdentity>>,
}

/// The identity side of the operator, wired but not running: the shared context, the
/// cluster-wide cache tasks, each scope's streams, and the readiness of every cache.
struct Wired {
    ctx: Arc<Context>,
    identity_stores: Vec<Store<CommunicationIdentity>>,
    cache_tasks: Vec<BoxFuture<'static, ()>>,
    scopes: Vec<ScopeParts>,
    ready: BoxFuture<'static, ()>,
}

fn wire(
    client: &Client,
    config: &OperatorConfig,
    metrics: Arc<Metrics>,
    readiness: Readiness,
) -> Wired {
    let scopes_ns: Vec<Option<String>> = if config.watch_namespaces.is_empty() {
        vec![None]
    } else {
        config.watch_namespaces.iter().cloned().map(Some).collect()
    };
    let mut ready: Vec<BoxFuture<'static, bool>> = vec![];
    fn wait<K: reflector::Lookup + Clone + Send + Sync + 'static>(
        s: &Store<K>,
    ) -> BoxFuture<'static, bool>
    where
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let s = s.clone();
        async move { s.wait_until_ready().await.is_ok() }.boxed()
    }

    // Cluster-wide caches: cluster services and Namespace labels.
    let (css_store, css_stream) = reflected(
        Api::<ClusterCommunicationService>::all(client.clone()),
        watcher::Config::default(),
    );
    let (ns_store, ns_stream) = reflected(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    );
    ready.push(wait(&css_store));
    ready.push(wait(&ns_store));

    // Per scope: identities, namespaced services, owned Secrets.
    let mut scopes = vec![];
    let mut parts = vec![];
    // Identities the watch saw deleted, for `identity::gone` (the context that holds what
    // is dropped is built from the stores these watches fill).
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<ObjectRef<CommunicationIdentity>>();
    for ns in &scopes_ns {
        let gone_tx = gone_tx.clone();
        // Lists are consistent reads (not `any_semantic`): a new leader's or a restarted
        // process's first list has no memory of our writes to check it against, so it
        // must not come from a lagging watch cache.
        let (id_store, id_stream) = reflected_with(
            api_for::<CommunicationIdentity>(client, ns),
            watcher::Config::default(),
            slim::<CommunicationIdentity>,
            move |id: &CommunicationIdentity| {
                let _ = gone_tx.send(ObjectRef::from_obj(id));
            },
        );
        let (svc_store, svc_stream) = reflected(
            api_for::<CommunicationService>(client, ns),
            watcher::Config::default(),
        );
        // Only Secrets labelled as ours, and only their metadata: memory does not grow with
        // the cluster's other Secrets.
        let (sec_store, sec_stream) = reflected_as(
            api_for::<PartialObjectMeta<Secret>>(client, ns),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
            SecretMeta::of,
        );
        ready.extend([wait(&id_store), wait(&svc_store), wait(&sec_store)]);
        let (tx, rx) = mpsc::unbounded_channel();
        scopes.push(WatchScope {
            namespace: ns.clone(),
            identities: id_store.clone(),
            services: svc_store,
            secrets: sec_store,
            trigger: tx,
        });
        parts.push(ScopeParts {
            ns: ns.clone(),
            identities: id_store,
            identity_stream: id_stream.boxed(),
            service_stream: svc_stream.boxed(),
            secret_stream: sec_stream.boxed(),
            triggers: rx,
        });
    }
    let (synced_tx, synced_rx) = watch::channel(false);
    let stores = Stores::new(scopes, css_store, ns_store, synced_rx);
    let identity_stores: Vec<Store<CommunicationIdentity>> =
        stores.scopes.iter().map(|s| s.identities.clone()).collect();

    let credentials = {
        let stores = stores.clone();
        CredentialWatches::new(client.clone(), move |id| stores.trigger(id))
    };
    let resolver = Resolver {
        kube: client.clone(),
        stores: stores.clone(),
        clients: Arc::new(ClientCache::new(config.client_settings.clone())),
        credentials,
        default_service: config.default_service.clone(),
        cluster_resource_namespace: config.cluster_resource_namespace.clone(),
    };
    let ctx = Arc::new(Context::new(ContextParts {
        client: client.clone(),
        metrics,
        stores: stores.clone(),
        resolver,
        clock: config.clock.clone(),
        max_concurrent_reconciles: config.max_concurrent_reconciles,
        leadership: config.leadership.clone(),
        min_token_interval: config.min_token_interval,
        abandon_cleanup_after: config.abandon_cleanup_after,
        rollout_restarts_per_minute: config.rollout_restarts_per_minute,
    }));

    // Cluster services and namespace labels change which identities may use what.
    let mut cache_tasks: Vec<BoxFuture<'static, ()>> = vec![];
    {
        let wakeups = ctx.wakeups.clone();
        cache_tasks.push(async move { wakeups.run().await }.boxed());
    }
    {
        let ctx = ctx.clone();
        cache_tasks.push(
            async move {
                while let Some(deleted) = gone_rx.recv().await {
                    identity::gone::deleted(&ctx, &deleted);
                }
            }
            .boxed(),
        );
    }
    {
        let ctx = ctx.clone();
        cache_tasks.push(async move { identity::gone::sweep_periodically(&ctx).await }.boxed());
    }
    {
        let stores = stores.clone();
        let ids = identity_stores.clone();
        let default = config.default_service.clone();
        cache_tasks.push(
            css_stream
                .for_each(move |ev| {
                    if let Ok(css) = ev {
                        for id in using_service(
                            &ids,
                            default.as_ref(),
                            ServiceKind::ClusterCommunicationService,
                            None,
                            &css.name_any(),
                        ) {
                            stores.trigger(id);
                        }
                    }
                    futures::future::ready(())
                })
                .boxed(),
        );
    }
    {
        let stores = stores.clone();
        let ids = identity_stores.clone();
        cache_tasks.push(
            ns_stream
                .for_each(move |ev| {
                    if let Ok(ns) = ev {
                        let name = ns.name_any();
                        for id in ids.iter().flat_map(|s| s.state()) {
                            if id.namespace().as_deref() == Some(name.as_str()) {
                                stores.trigger(ObjectRef::from_obj(id.as_ref()));
                            }
                        }
                    }
                    futures::future::ready(())
                })
                .boxed(),
        );
    }
    let warm_ctx = ctx.clone();
    let ready = async move {
        if futures::future::join_all(ready)
            .await
            .into_iter()
            .all(|ok| ok)
        {
            // Before any reconcile runs: confirm the token Secrets from one paged LIST, so
            // a restart or failover makes no GET per identity (issue 19).
            let (listed, confirmed) = identity::warm::confirm_secrets(&warm_ctx).await;
            tracing::info!(listed, confirmed, "token Secrets confirmed from a LIST");
            let _ = synced_tx.send(true);
            readiness.set_ready(true);
            tracing::info!("caches synced; ready");
            // Keep the sender alive: reconciles wait on its value.
            futures::future::pending::<()>().await;
        }
    }
    .boxed();
    Wired {
        ctx,
        identity_stores,
        cache_tasks,
        scopes: parts,
        ready,
    }
}

/// Runs every controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let wired = wire(&client, &config, metrics.clone(), readiness);
    let caches = futures::future::join_all(wired.cache_tasks);
    let mut tasks: Vec<BoxFuture<'static, ()>> = vec![];
    for scope in wired.scopes {
        let ids = wired.identity_stores.clone();
        let default = config.default_service.clone();
        tracing::debug!(scope = ?scope.ns, "identity controller starting");
        let concurrency = u16::try_from(config.max_concurrent_reconciles).unwrap_or(u16::MAX);
        tasks.push(
            Controller::for_stream(scope.identity_stream, scope.identities)
                .with_config(ControllerConfig::default().concurrency(concurrency))
                .owns_stream(scope.secret_stream)
                .watches_stream(scope.service_stream, move |svc: CommunicationService| {
                    using_service(
                        &ids,
                        default.as_ref(),
                        ServiceKind::CommunicationService,
                        svc.namespace().as_deref(),
                        &svc.name_any(),
                    )
                })
                .reconcile_on(UnboundedReceiverStream::new(scope.triggers))
                .graceful_shutdown_on(shutdown.clone())
                .run(
                    identity::reconcile,
                    identity::error_policy,
                    wired.ctx.clone(),
                )
                .for_each(|res| async move {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "identity controller event");
                    }
                })
                .boxed(),
        );
    }
    let scopes_ns: Vec<Option<String>> = if config.watch_namespaces.is_empty() {
        vec![None]
    } else {
        config.watch_namespaces.iter().cloned().map(Some).collect()
    };
    for ns in scopes_ns {
        tasks.push(namespaced_service_controller(
            client.clone(),
            &config,
            wired.ctx.resolver.clients.clone(),
            metrics.clone(),
            ns,
            shutdown.clone(),
        ));
    }
    tasks.push(cluster_service_controller(
        client.clone(),
        &config,
        wired.ctx.resolver.clients.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    // Polled in the controllers' own task, never spawned: `Store::wait_until_ready` keeps
    // a single waker (kube-runtime's DelayedInit wraps a oneshot), so a waiter in another
    // task loses its waker to the controller's own wait and never wakes.
    // The controllers end on shutdown (after their in-flight work); the caches and the
    // readiness wait never do on their own.
    tokio::select! {
        _ = futures::future::join_all(tasks) => {}
        _ = caches => {}
        _ = wired.ready => {}
    }
}

/// The identity reconcile's context with its caches running, and no controller: for tests
/// that call [`identity::reconcile`] themselves. Resolves once every cache has synced; the
/// caches stop when the returned task is aborted.
pub async fn caches_only(
    client: Client,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
    let wired = wire(&client, &config, metrics, Readiness::new());
    let ctx = wired.ctx.clone();
    let mut tasks = wired.cache_tasks;
    for scope in wired.scopes {
        tasks.push(scope.identity_stream.for_each(|_| async {}).boxed());
        tasks.push(scope.service_stream.for_each(|_| async {}).boxed());
        tasks.push(scope.secret_stream.for_each(|_| async {}).boxed());
    }
    let ready = wired.ready;
    let handle = tokio::spawn(async move {
        tokio::select! {
            _ = futures::future::join_all(tasks) => {}
            _ = ready => {}
        }
    });
    ctx.stores.synced().await;
    (ctx, handle)
}

fn namespaced_service_controller(
    client: Client,
    config: &OperatorConfig,
    clients: Arc<ClientCache>,
    metrics: Arc<Metrics>,
    ns: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()> {
    let api = api_for::<CommunicationService>(&client, &ns);
    service_controller(
        api,
        client,
        config,
        clients,
        metrics,
        shutdown,
        service::reconcile_namespaced,
    )
}

fn cluster_service_controller(
    client: Client,
    config: &OperatorConfig,
    clients: Arc<ClientCache>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()> {
    let api = Api::<ClusterCommunicationService>::all(client.clone());
    service_controller(
        api,
        client,
        config,
        clients,
        metrics,
        shutdown,
        service::reconcile_cluster,
    )
}

/// A service controller of either kind: status from its credentials, re-run when the
/// service or its credential Secret changes.
// `Error` is large and returned once per reconcile (see resolver.rs).
#[allow(clippy::result_large_err)]
fn service_controller<K, F, Fut>(
    api: Api<K>,
    client: Client,
    config: &OperatorConfig,
    clients: Arc<ClientCache>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    reconcile: F,
) -> BoxFuture<'static, ()>
where
    K: Watched,
    F: FnMut(Arc<K>, Arc<ServiceContext<K>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<kube::runtime::controller::Action, super::Error>>
        + Send
        + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<ObjectRef<K>>();
    let credentials = CredentialWatches::new(client.clone(), move |o| {
        let _ = tx.send(o);
    });
    let ctx = Arc::new(ServiceContext {
        client,
        metrics: metrics.clone(),
        credentials,
        clients,
        cluster_resource_namespace: config.cluster_resource_namespace.clone(),
    });
    // The panic boundary: a service a tenant wrote must not end the process.
    let mut reconcile = reconcile;
    let kind = K::kind(&()).to_string();
    let guarded = move |obj: Arc<K>, ctx: Arc<ServiceContext<K>>| {
        let name = obj.name_any();
        let fut = reconcile(obj, ctx);
        let (metrics, kind) = (metrics.clone(), kind.clone());
        async move {
            super::panics::catch(fut).await.unwrap_or_else(|message| {
                metrics.reconcile_panicked(&kind);
                tracing::error!(kind = %kind, name = %name, panic = %message, "reconcile panicked; caught, retrying with backoff");
                Err(super::Error::Panicked(message))
            })
        }
    };
    // A deleted service loses its series.
    let forget = ctx.metrics.clone();
    let kind = K::kind(&()).to_string();
    let (store, stream) =
        reflected_with(api, watcher::Config::default(), slim::<K>, move |o: &K| {
            forget.forget_service(&kind, &o.namespace().unwrap_or_default(), &o.name_any());
        });
    Controller::for_stream(stream, store)
        .reconcile_on(UnboundedReceiverStream::new(rx))
        .graceful_shutdown_on(shutdown)
        .run(guarded, service::error_policy, ctx)
        .for_each(|_| async {})
        .boxed()
}
