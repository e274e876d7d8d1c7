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
    AuthenticationMethod, AuthenticationStatus, ClusterCommunicationService, CommunicationService,
    CommunicationServiceStatus, Quota, ServiceKind,
};
use crate::runtime::metrics::Metrics;

use super::clients::ClientCache;
use super::credentials::CredentialWatches;
use super::error::Error;
use super::resolver::TokenSource;
use super::resolver::{
    ResolveError, ServiceCredential, ServiceKey, client_for, cluster_service_credential,
    entra_client_for, namespaced_service_credential,
};
use super::status::{Progress, replace_status, set_condition, set_progress};
use super::stores::Watched;

/// Credentials are re-checked this often even without a watch event.
const RECHECK: Duration = Duration::from_secs(300);
/// A service whose Entra token could not be obtained is re-checked this often.
const ENTRA_RECHECK: Duration = Duration::from_secs(30);

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
    /// `Err`: the spec names a credential it may not use (checked before any read).
    credential: Result<ServiceCredential, ResolveError>,
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
    let key = ServiceKey {
        kind: ServiceKind::CommunicationService,
        namespace: Some(ns.clone()),
        name: obj.name_any(),
    };
    let view = ServiceView {
        // A namespaced service reads its Secret from its own namespace only.
        credential: namespaced_service_credential(
            &key,
            &ns,
            &obj.spec,
            ctx.clients.settings().entra.namespaced_ambient,
        ),
        key,
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
    let key = ServiceKey {
        kind: ServiceKind::ClusterCommunicationService,
        namespace: None,
        name: obj.name_any(),
    };
    let view = ServiceView {
        credential: cluster_service_credential(&key, &obj.spec, &ctx.cluster_resource_namespace),
        key,
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
    K: Watched,
{
    let started = Instant::now();
    let _in_flight = ctx.metrics.reconcile_started(&K::kind(&()));
    let resolved = check(obj, &view, ctx).await;
    let mut st = view.status.cloned().unwrap_or_default();
    st.observed_generation = view.generation;
    let now = Timestamp::now();
    match &resolved {
        Ok((endpoint, auth)) => {
            st.endpoint = Some(endpoint.clone());
            let (reason, msg) = match auth.method {
                AuthenticationMethod::ConnectionString => (
                    reasons::CREDENTIALS_RESOLVED,
                    format!("Connection string for {endpoint} resolved"),
                ),
                _ => (
                    reasons::ENTRA_TOKEN_ACQUIRED,
                    format!(
                        "Entra ID token for {endpoint} obtained (client {}, tenant {})",
                        auth.client_id.as_deref().unwrap_or("?"),
                        auth.tenant_id.as_deref().unwrap_or("?")
                    ),
                ),
            };
            st.authentication = Some(auth.clone());
            set_condition(
                &mut st.conditions,
                types::READY,
                true,
                reason,
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
    // An Entra problem (a missing grant, a federation not yet propagated, an outage) is
    // re-checked soon: the fix is made elsewhere and raises no watch event here.
    let entra_problem = matches!(&resolved, Err(ResolveError::Entra { .. }));
    Ok(Action::requeue(if entra_problem {
        ENTRA_RECHECK
    } else {
        RECHECK
    }))
}

/// Checks the service's credentials: where the Secret or ServiceAccount lives, that the
/// Secret holds a connection string (or that an Entra token is obtained), that the
/// endpoint is allowed, and that a client builds. Returns the endpoint and what
/// authenticates.
async fn check<K>(
    obj: &K,
    view: &ServiceView<'_>,
    ctx: &ServiceContext<K>,
) -> Result<(String, AuthenticationStatus), ResolveError>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    // Checked before the Secret is watched or read: a Secret elsewhere is never read.
    let credential = match &view.credential {
        Ok(c) => c,
        Err(e) => {
            ctx.credentials.forget(&ObjectRef::from_obj(obj));
            return Err(clone_refusal(e));
        }
    };
    match credential {
        ServiceCredential::ConnectionString(credential) => {
            // Watch the credential Secret whether or not it resolves: a fix must be noticed.
            let version = ctx.credentials.depend(ObjectRef::from_obj(obj), credential);
            let (endpoint, _client) = client_for(
                &ctx.clients,
                &ctx.client,
                &view.key,
                credential,
                &version,
                view.api_version,
                view.quota,
            )
            .await?;
            Ok((
                endpoint,
                AuthenticationStatus {
                    method: AuthenticationMethod::ConnectionString,
                    client_id: None,
                    tenant_id: None,
                    token_expires_on: None,
                },
            ))
        }
        ServiceCredential::Entra(entra) => {
            ctx.credentials.forget(&ObjectRef::from_obj(obj));
            let (endpoint, _client) = entra_client_for(
                &ctx.clients,
                &ctx.client,
                &view.key,
                entra,
                view.api_version,
                view.quota,
            )
            .await?;
            let shown = ctx.clients.entra_shown(entra);
            Ok((
                endpoint,
                AuthenticationStatus {
                    method: match entra.source {
                        TokenSource::Ambient => AuthenticationMethod::Ambient,
                        TokenSource::ServiceAccount { .. } => {
                            AuthenticationMethod::WorkloadIdentity
                        }
                    },
                    client_id: shown.as_ref().map(|s| s.0.clone()),
                    tenant_id: shown.as_ref().map(|s| s.1.clone()),
                    token_expires_on: shown.map(|s| s.2.to_string()),
                },
            ))
        }
    }
}

/// The refusals `namespaced_service_credential` and `cluster_service_credential` give,
/// again (they are plain data).
fn clone_refusal(e: &ResolveError) -> ResolveError {
    match e {
        ResolveError::SecretNamespaceNotAllowed {
            service,
            namespace,
            allowed,
        } => ResolveError::SecretNamespaceNotAllowed {
            service: service.clone(),
            namespace: namespace.clone(),
            allowed: allowed.clone(),
        },
        ResolveError::ServiceAccountNamespaceNotAllowed {
            service,
            namespace,
            name,
            allowed,
            cluster,
        } => ResolveError::ServiceAccountNamespaceNotAllowed {
            service: service.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            allowed: allowed.clone(),
            cluster: *cluster,
        },
        ResolveError::AmbientNotAllowed { service } => ResolveError::AmbientNotAllowed {
            service: service.clone(),
        },
        ResolveError::AmbientAuthorityNotAllowed { service } => {
            ResolveError::AmbientAuthorityNotAllowed {
                service: service.clone(),
            }
        }
        other => ResolveError::BadClient {
            service: match other {
                ResolveError::BadClient { service, .. } => service.clone(),
                _ => ServiceKey {
                    kind: ServiceKind::CommunicationService,
                    namespace: None,
                    name: String::new(),
                },
            },
            reason: other.to_string(),
        },
    }
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
