//! Reconcile of `CommunicationService` and `ClusterCommunicationService`: `Ready` tells
//! whether the credentials resolve and parse, and `status.endpoint` which ACS resource
//! they name. Re-run whenever the service or its credential Secret changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::conditions::{reasons, types};
use crate::api::{
    ClusterCommunicationService, CommunicationService, CommunicationServiceStatus, Quota,
    ServiceKind,
};
use crate::runtime::metrics::Metrics;

use super::clients::ClientCache;
use super::credentials::{CredentialRef, CredentialWatches};
use super::error::Error;
use super::resolver::{
    ResolveError, ServiceKey, check_cluster_secret_namespace, client_for, namespaced_credential,
};
use super::status::{Progress, replace_status, set_condition, set_progress};

/// Credentials are re-checked this often even without a watch event.
const RECHECK: Duration = Duration::from_secs(300);

pub struct ServiceContext<K: Resource<DynamicType = ()>> {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub credentials: CredentialWatches<ObjectRef<K>>,
    /// The identities' cache: a service's credentials are parsed once for both.
    pub clients: Arc<ClientCache>,
    pub cluster_resource_namespace: String,
}

/// What both kinds have in common, as the reconcile needs it.
struct ServiceView<'a> {
    key: ServiceKey,
    credential: CredentialRef,
    api_version: &'a str,
    quota: &'a Quota,
    status: Option<&'a CommunicationServiceStatus>,
    generation: Option<i64>,
}

pub async fn reconcile_namespaced(
    obj: Arc<CommunicationService>,
    ctx: Arc<ServiceContext<CommunicationService>>,
) -> Result<Action, Error> {
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let view = ServiceView {
        key: ServiceKey {
            kind: ServiceKind::CommunicationService,
            namespace: Some(ns.clone()),
            name: obj.name_any(),
        },
        // A namespaced service reads its Secret from its own namespace only.
        credential: namespaced_credential(&ns, &obj.spec.connection_string_secret_ref),
        api_version: &obj.spec.api_version,
        quota: &obj.spec.quota,
        status: obj.status.as_ref(),
        generation: obj.metadata.generation,
    };
    let api: Api<CommunicationService> = Api::namespaced(ctx.client.clone(), &ns);
    reconcile_view(obj.as_ref(), &api, view, &ctx).await
}

pub async fn reconcile_cluster(
    obj: Arc<ClusterCommunicationService>,
    ctx: Arc<ServiceContext<ClusterCommunicationService>>,
) -> Result<Action, Error> {
    // The namespace selector is checked per identity; here only the credentials matter.
    let view = ServiceView {
        key: ServiceKey {
            kind: ServiceKind::ClusterCommunicationService,
            namespace: None,
            name: obj.name_any(),
        },
        credential: CredentialRef {
            namespace: obj.spec.connection_string_secret_ref.namespace.clone(),
            name: obj.spec.connection_string_secret_ref.name.clone(),
            key: obj.spec.connection_string_secret_ref.key.clone(),
        },
        api_version: &obj.spec.api_version,
        quota: &obj.spec.quota,
        status: obj.status.as_ref(),
        generation: obj.metadata.generation,
    };
    let api: Api<ClusterCommunicationService> = Api::all(ctx.client.clone());
    reconcile_view(obj.as_ref(), &api, view, &ctx).await
}

async fn reconcile_view<K>(
    obj: &K,
    api: &Api<K>,
    view: ServiceView<'_>,
    ctx: &ServiceContext<K>,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let started = Instant::now();
    let _in_flight = ctx.metrics.reconcile_started(&K::kind(&()));
    let resolved = check(obj, &view, ctx).await;
    let mut st = view.status.cloned().unwrap_or_default();
    st.observed_generation = view.generation;
    let now = Timestamp::now();
    match &resolved {
        Ok(endpoint) => {
            st.endpoint = Some(endpoint.clone());
            let msg = format!("Connection string for {endpoint} resolved");
            set_condition(
                &mut st.conditions,
                types::READY,
                true,
                reasons::CREDENTIALS_RESOLVED,
                msg,
                view.generation,
                now,
            );
            let done = Progress::Done {
                reason: reasons::CREDENTIALS_RESOLVED,
                message: "the credentials resolve and parse",
            };
            set_progress(&mut st.conditions, done, view.generation, now);
        }
        Err(e) => {
            let (reason, msg) = (e.reason(), e.to_string());
            set_condition(
                &mut st.conditions,
                types::READY,
                false,
                reason,
                &msg,
                view.generation,
                now,
            );
            // kstatus, as for identities: a person fixes the Secret, the key or the
            // endpoint (Stalled); the API server not answering heals (Reconciling).
            let progress = if e.is_transient() {
                Progress::Reconciling {
                    reason,
                    message: &msg,
                }
            } else {
                Progress::Stalled {
                    reason,
                    message: &msg,
                }
            };
            set_progress(&mut st.conditions, progress, view.generation, now);
        }
    }
    let result = replace_status(api, &obj.name_any(), view.status, &st, None).await;
    let label = if result.is_ok() { "ok" } else { "error" };
    let kind = K::kind(&());
    ctx.metrics
        .observe_reconcile(&kind, label, started.elapsed());
    ctx.metrics.set_service_ready(
        &kind,
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
        Some(resolved.is_ok()),
    );
    if result.is_err() {
        ctx.metrics.reconcile_failed(&kind, "kube");
    }
    result?;
    Ok(Action::requeue(RECHECK))
}

/// Checks the service's credentials: where the Secret lives (cluster services), that it
/// holds a connection string, that its endpoint is allowed, and that a client builds.
/// Returns the endpoint.
async fn check<K>(
    obj: &K,
    view: &ServiceView<'_>,
    ctx: &ServiceContext<K>,
) -> Result<String, ResolveError>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    if view.key.kind == ServiceKind::ClusterCommunicationService {
        // Checked before the Secret is watched or read: a Secret elsewhere is never read.
        if let Err(e) = check_cluster_secret_namespace(
            &view.key,
            &view.credential.namespace,
            &ctx.cluster_resource_namespace,
        ) {
            ctx.credentials.forget(&ObjectRef::from_obj(obj));
            return Err(e);
        }
    }
    // Watch the credential Secret whether or not it resolves: a fix must be noticed.
    let version = ctx
        .credentials
        .depend(ObjectRef::from_obj(obj), &view.credential);
    let (endpoint, _client) = client_for(
        &ctx.clients,
        &ctx.client,
        &view.key,
        &view.credential,
        &version,
        view.api_version,
        view.quota,
    )
    .await?;
    Ok(endpoint)
}

pub fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<ServiceContext<K>>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    tracing::warn!(error = %err, "service reconcile failed");
    Action::requeue(if err.is_transient() {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(60)
    })
}
