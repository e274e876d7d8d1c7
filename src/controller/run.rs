//! Wiring: one identity controller (and one service controller) per watched namespace,
//! or one for the whole cluster; a cluster service controller; readiness once every
//! cache has synced.

use std::sync::Arc;

use futures::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::{
    ClusterCommunicationService, CommunicationIdentity, CommunicationService, ServiceKind,
};
use crate::runtime::Readiness;
use crate::runtime::metrics::Metrics;

use super::context::Context;
use super::credentials::CredentialWatches;
use super::identity;
use super::secret::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use super::service::{self, ServiceContext};
use super::services::{ClientCache, ClientSettings, service_key_for};

#[derive(Clone, Default)]
pub struct OperatorConfig {
    pub default_service: Option<(ServiceKind, String)>,
    /// Empty: every namespace.
    pub watch_namespaces: Vec<String>,
    pub client_settings: ClientSettings,
}

/// Runs every controller until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let scopes: Vec<Option<String>> = if config.watch_namespaces.is_empty() {
        vec![None]
    } else {
        config.watch_namespaces.iter().cloned().map(Some).collect()
    };
    let mut tasks: Vec<BoxFuture<'static, ()>> = vec![];
    let mut stores: Vec<BoxFuture<'static, bool>> = vec![];

    for ns in scopes {
        let (store, task) = identity_controller(
            client.clone(),
            &config,
            metrics.clone(),
            ns.clone(),
            shutdown.clone(),
        );
        stores.push(async move { store.wait_until_ready().await.is_ok() }.boxed());
        tasks.push(task);
        tasks.push(namespaced_service_controller(
            client.clone(),
            &config,
            metrics.clone(),
            ns,
            shutdown.clone(),
        ));
    }
    tasks.push(cluster_service_controller(
        client.clone(),
        &config,
        metrics.clone(),
        shutdown.clone(),
    ));

    let ready = async move {
        if futures::future::join_all(stores)
            .await
            .into_iter()
            .all(|ok| ok)
        {
            readiness.set_ready(true);
            tracing::info!("caches synced; ready");
        }
    };
    // Polled in the controllers' own task, never spawned: `Store::wait_until_ready` keeps
    // a single waker (kube-runtime's DelayedInit wraps a oneshot), so a waiter in another
    // task loses its waker to the controller's own wait and never wakes (`/readyz` stayed
    // 503 forever), or takes the controller's. In one task every wake re-polls both.
    futures::future::join(ready, futures::future::join_all(tasks)).await;
}

fn api_for<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn identity_controller(
    client: Client,
    config: &OperatorConfig,
    metrics: Arc<Metrics>,
    ns: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (Store<CommunicationIdentity>, BoxFuture<'static, ()>) {
    let identities: Api<CommunicationIdentity> = api_for(&client, &ns);
    let (credentials, triggers) = CredentialWatches::new(client.clone());
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics,
        config.client_settings.clone(),
        config.default_service.clone(),
        credentials,
    ));
    // Only Secrets labelled as ours, and only their metadata: memory does not grow with
    // the cluster's other Secrets.
    let owned = watcher(
        api_for::<PartialObjectMeta<Secret>>(&client, &ns),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
    )
    .default_backoff()
    .touched_objects();

    let controller = Controller::new(identities, watcher::Config::default().any_semantic());
    let store = controller.store();
    let default_service = config.default_service.clone();
    let by_service = {
        let store = store.clone();
        let default_service = default_service.clone();
        move |kind: ServiceKind, svc_ns: Option<String>, svc_name: String| {
            store
                .state()
                .into_iter()
                .filter(|i| {
                    service_key_for(i, default_service.as_ref()).is_some_and(|k| {
                        k.kind == kind
                            && k.name == svc_name
                            && (svc_ns.is_none() || k.namespace == svc_ns)
                    })
                })
                .map(|i| ObjectRef::from_obj(i.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let by_service_cluster = by_service.clone();
    let task = controller
        .owns_stream(owned)
        .watches(
            api_for::<CommunicationService>(&client, &ns),
            watcher::Config::default(),
            move |svc| {
                by_service(
                    ServiceKind::CommunicationService,
                    svc.namespace(),
                    svc.name_any(),
                )
            },
        )
        .watches(
            Api::<ClusterCommunicationService>::all(client.clone()),
            watcher::Config::default(),
            move |svc| {
                by_service_cluster(
                    ServiceKind::ClusterCommunicationService,
                    None,
                    svc.name_any(),
                )
            },
        )
        .reconcile_on(UnboundedReceiverStream::new(triggers))
        .graceful_shutdown_on(shutdown)
        .run(identity::reconcile, identity::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "identity controller event");
            }
        })
        .boxed();
    (store, task)
}

fn namespaced_service_controller(
    client: Client,
    config: &OperatorConfig,
    metrics: Arc<Metrics>,
    ns: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()> {
    let api = api_for::<CommunicationService>(&client, &ns);
    service_controller(
        api,
        client,
        config,
        metrics,
        shutdown,
        service::reconcile_namespaced,
    )
}

fn cluster_service_controller(
    client: Client,
    config: &OperatorConfig,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()> {
    let api = Api::<ClusterCommunicationService>::all(client.clone());
    service_controller(
        api,
        client,
        config,
        metrics,
        shutdown,
        service::reconcile_cluster,
    )
}

/// A service controller of either kind: status from its credentials, re-run when the
/// service or its credential Secret changes.
fn service_controller<K, F, Fut>(
    api: Api<K>,
    client: Client,
    config: &OperatorConfig,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    reconcile: F,
) -> BoxFuture<'static, ()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: FnMut(Arc<K>, Arc<ServiceContext<K>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<kube::runtime::controller::Action, super::Error>>
        + Send
        + 'static,
{
    let (credentials, triggers) = CredentialWatches::new(client.clone());
    let ctx = Arc::new(ServiceContext {
        client,
        metrics,
        credentials,
        clients: ClientCache::default(),
        settings: config.client_settings.clone(),
    });
    Controller::new(api, watcher::Config::default())
        .reconcile_on(UnboundedReceiverStream::new(triggers))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, service::error_policy, ctx)
        .for_each(|_| async {})
        .boxed()
}
