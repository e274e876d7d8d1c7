//! Reconcile of `CommunicationService` and `ClusterCommunicationService`: `Ready` tells
//! whether the credentials resolve and parse, and `status.endpoint` which ACS resource
//! they name. Re-run whenever the service or its credential Secret changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};

use crate::api::conditions::{reasons, types};
use crate::api::{
    ClusterCommunicationService, CommunicationService, CommunicationServiceStatus, ServiceKind,
};
use crate::runtime::metrics::Metrics;

use super::credentials::CredentialWatches;
use super::error::Error;
use super::services::{self, ClientCache, ClientSettings, ServiceKey};
use super::status::{apply_status, set_condition};

/// Credentials are re-checked this often even without a watch event.
const RECHECK: Duration = Duration::from_secs(300);

pub struct ServiceContext<K: kube::Resource<DynamicType = ()>> {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub credentials: CredentialWatches<K>,
    /// Separate from the identities' cache: only used to validate and learn the endpoint.
    pub clients: ClientCache,
    pub settings: ClientSettings,
}

async fn resolve_status(
    client: &Client,
    cache: &ClientCache,
    settings: &ClientSettings,
    key: &ServiceKey,
    namespace_for_check: &str,
    current: Option<&CommunicationServiceStatus>,
    generation: Option<i64>,
) -> (CommunicationServiceStatus, Option<services::CredentialRef>) {
    let mut st = current.cloned().unwrap_or_default();
    st.observed_generation = generation;
    let now = Timestamp::now();
    let credential =
        match services::resolve(client, cache, settings, key, namespace_for_check).await {
            Ok(svc) => {
                st.endpoint = Some(svc.endpoint.clone());
                set_condition(
                    &mut st.conditions,
                    types::READY,
                    true,
                    reasons::CREDENTIALS_RESOLVED,
                    format!("Connection string for {} resolved", svc.endpoint),
                    generation,
                    now,
                );
                Some(svc.credential)
            }
            Err(e) => {
                set_condition(
                    &mut st.conditions,
                    types::READY,
                    false,
                    e.reason(),
                    e.to_string(),
                    generation,
                    now,
                );
                e.credential().cloned()
            }
        };
    (st, credential)
}

pub async fn reconcile_namespaced(
    obj: Arc<CommunicationService>,
    ctx: Arc<ServiceContext<CommunicationService>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let key = ServiceKey {
        kind: ServiceKind::CommunicationService,
        namespace: Some(ns.clone()),
        name: obj.name_any(),
    };
    let (st, credential) = resolve_status(
        &ctx.client,
        &ctx.clients,
        &ctx.settings,
        &key,
        &ns,
        obj.status.as_ref(),
        obj.metadata.generation,
    )
    .await;
    if let Some(c) = credential {
        ctx.credentials
            .depend(ObjectRef::from_obj(obj.as_ref()), &c);
    }
    let api: Api<CommunicationService> = Api::namespaced(ctx.client.clone(), &ns);
    let result = apply_status(&api, &obj.name_any(), obj.status.as_ref(), &st).await;
    ctx.metrics.observe_reconcile(
        "CommunicationService",
        if result.is_ok() { "ok" } else { "error" },
        started.elapsed(),
    );
    result?;
    Ok(Action::requeue(RECHECK))
}

pub async fn reconcile_cluster(
    obj: Arc<ClusterCommunicationService>,
    ctx: Arc<ServiceContext<ClusterCommunicationService>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let key = ServiceKey {
        kind: ServiceKind::ClusterCommunicationService,
        namespace: None,
        name: obj.name_any(),
    };
    // The selector is checked per identity; here only the credentials matter, so check
    // against the credential Secret's own namespace view by skipping the selector.
    let (st, credential) = resolve_cluster_status(&ctx, &key, obj.as_ref()).await;
    if let Some(c) = credential {
        ctx.credentials
            .depend(ObjectRef::from_obj(obj.as_ref()), &c);
    }
    let api: Api<ClusterCommunicationService> = Api::all(ctx.client.clone());
    let result = apply_status(&api, &obj.name_any(), obj.status.as_ref(), &st).await;
    ctx.metrics.observe_reconcile(
        "ClusterCommunicationService",
        if result.is_ok() { "ok" } else { "error" },
        started.elapsed(),
    );
    result?;
    Ok(Action::requeue(RECHECK))
}

async fn resolve_cluster_status(
    ctx: &ServiceContext<ClusterCommunicationService>,
    key: &ServiceKey,
    obj: &ClusterCommunicationService,
) -> (CommunicationServiceStatus, Option<services::CredentialRef>) {
    let r = &obj.spec.connection_string_secret_ref;
    let credential = services::CredentialRef {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        key: r.key.clone(),
    };
    let mut st = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    st.observed_generation = generation;
    let now = Timestamp::now();
    match services::check_credentials(
        &ctx.client,
        &ctx.clients,
        &ctx.settings,
        key,
        &credential,
        &obj.spec.api_version,
        &obj.spec.quota,
    )
    .await
    {
        Ok(svc) => {
            st.endpoint = Some(svc.endpoint.clone());
            set_condition(
                &mut st.conditions,
                types::READY,
                true,
                reasons::CREDENTIALS_RESOLVED,
                format!("Connection string for {} resolved", svc.endpoint),
                generation,
                now,
            );
        }
        Err(e) => set_condition(
            &mut st.conditions,
            types::READY,
            false,
            e.reason(),
            e.to_string(),
            generation,
            now,
        ),
    }
    (st, Some(credential))
}

pub fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<ServiceContext<K>>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    tracing::warn!(error = %err, "service reconcile failed");
    Action::requeue(if err.is_transient() {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(60)
    })
}
