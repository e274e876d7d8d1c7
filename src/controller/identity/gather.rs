//! Gathering what `decide` needs, from caches: the service (resolver), the status as we
//! last wrote it (memory), and the token Secret's metadata (owned-Secret store). The one
//! API read is the Secret itself when the cache cannot vouch for it: never seen by this
//! process (first reconcile after a start), changed by someone else, or gone.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use crate::api::{CommunicationIdentity, CommunicationIdentityStatus};
use crate::controller::context::Context;
use crate::controller::memory::{
    Freshness, Remembered, StatusSource, freshness, status_source, with_created_user,
};
use crate::controller::resolver::{ResolveError, ResolvedService};
use crate::controller::secret;

use super::decide::{SecretFacts, ServiceFacts, ServiceProblem, rfc3339};
use super::steps::StepError;

/// A Secret written this recently but absent from the cache is taken as "the watch has
/// not delivered it yet" rather than deleted; after this, it is read to find out.
const CACHE_LAG: std::time::Duration = std::time::Duration::from_secs(30);

/// The status to decide from, never older than our last write: the cached one, our copy
/// while the cache lags, or (a lagging cache after the copy was dropped: a relist from a
/// lagging watch cache, a new leader's first list) the identity read from the API server.
/// A user this process created and no status holds yet is filled in.
pub async fn current_status(
    ctx: &Context,
    obj: &CommunicationIdentity,
    remembered: &Remembered,
) -> Result<CommunicationIdentityStatus, kube::Error> {
    let oref = ObjectRef::from_obj(obj);
    let uid = obj.uid().unwrap_or_default();
    let cached_rv = obj.resource_version();
    let status = match status_source(cached_rv.as_deref(), remembered) {
        StatusSource::Ours(copy) => *copy,
        StatusSource::Cached => {
            if remembered.status.is_some() {
                ctx.memory.cache_caught_up(&oref, &uid);
            }
            obj.status.clone().unwrap_or_default()
        }
        StatusSource::Reread => {
            let api: Api<CommunicationIdentity> =
                Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
            let fresh = api.get(&obj.name_any()).await?;
            let status = fresh.status.clone().unwrap_or_default();
            tracing::debug!(
                namespace = %obj.namespace().unwrap_or_default(),
                name = %obj.name_any(),
                cached = cached_rv.as_deref().unwrap_or(""),
                read = fresh.resource_version().as_deref().unwrap_or(""),
                "the cache holds a status older than our last write; read the identity"
            );
            ctx.memory
                .status_read(&oref, &uid, fresh.resource_version(), &status);
            status
        }
    };
    Ok(with_created_user(status, remembered))
}

pub fn service_facts(
    resolved: &Result<ResolvedService, ResolveError>,
) -> Result<ServiceFacts, ServiceProblem> {
    match resolved {
        Ok(svc) => Ok(ServiceFacts {
            name: svc.key.to_string(),
            endpoint: svc.endpoint.clone(),
            allow_adoption: svc.allow_adoption,
            custom_ids: svc.client.supports_custom_id(),
        }),
        Err(e) => Err(ServiceProblem {
            reason: e.reason(),
            message: e.to_string(),
            transient: e.is_transient(),
            forbids_use: e.forbids_use(),
        }),
    }
}

/// The token Secret as `decide` sees it.
pub struct SecretObservation {
    pub facts: SecretFacts,
    /// The issued-at time the Secret carries.
    pub issued_at: Option<Timestamp>,
    /// Taken on trust from memory because the cache lags: look again this soon.
    pub recheck: Option<std::time::Duration>,
    /// Read when status holds no user: the user the Secret records (to be checked
    /// against its mark before it is trusted).
    pub recorded_user: Option<secret::RecordedUser>,
    /// The status whose write failed, when the Secret read holds exactly the token it
    /// describes (and status does not): decide from it, not from the older status.
    pub unrecorded: Option<CommunicationIdentityStatus>,
}

impl SecretObservation {
    fn of(facts: SecretFacts, issued_at: Option<Timestamp>) -> Self {
        SecretObservation {
            facts,
            issued_at,
            recheck: None,
            recorded_user: None,
            unrecorded: None,
        }
    }
}

pub async fn observe_secret(
    ctx: &Context,
    identity: &CommunicationIdentity,
    status: &CommunicationIdentityStatus,
    remembered: &Remembered,
    secret_name: &str,
    now: Timestamp,
) -> Result<SecretObservation, StepError> {
    let ns = identity.namespace().unwrap_or_default();
    let uid = identity.uid().unwrap_or_default();
    let status_is_ours = remembered.status_is_ours(status);
    match ctx.stores.secret(&ns, secret_name) {
        Some(meta) => {
            if !secret::owned_by(&meta.metadata, &uid) {
                return Ok(SecretObservation::of(SecretFacts::NotOwned, None));
            }
            let fresh = freshness(
                meta.resource_version().as_deref(),
                remembered.secret_rv.as_deref(),
            );
            if fresh == Freshness::Same && !remembered.secret_seen {
                ctx.memory.secret_seen(&ObjectRef::from_obj(identity), &uid);
            }
            if status_is_ours
                && status.user_id.is_some()
                && matches!(fresh, Freshness::Same | Freshness::Older)
            {
                let template_current =
                    fresh == Freshness::Older || secret::template_current(&meta.metadata, identity);
                return Ok(SecretObservation::of(
                    SecretFacts::Ours {
                        intact: true,
                        template_current,
                    },
                    secret::issued_at(&meta.metadata),
                ));
            }
        }
        None => {
            let recent = remembered
                .secret_written_at
                .is_some_and(|t| now.duration_since(t).unsigned_abs() < CACHE_LAG);
            if status_is_ours && remembered.secret_rv.is_some() && !remembered.secret_seen && recent
            {
                return Ok(SecretObservation {
                    facts: SecretFacts::Ours {
                        intact: true,
                        template_current: true,
                    },
                    issued_at: remembered.last_token_request,
                    recheck: Some(CACHE_LAG),
                    recorded_user: None,
                    unrecorded: None,
                });
            }
        }
    }
    tracing::debug!(
        namespace = %ns,
        secret = %secret_name,
        cached = ctx.stores.secret(&ns, secret_name).is_some(),
        status_is_ours,
        "the cached Secret cannot be trusted; reading it"
    );
    read_secret(
        ctx,
        identity,
        status,
        remembered.unrecorded.as_deref(),
        secret_name,
    )
    .await
}

/// Reads the Secret and checks it against status; an intact one is remembered so the
/// next reconciles trust the cache again.
async fn read_secret(
    ctx: &Context,
    identity: &CommunicationIdentity,
    status: &CommunicationIdentityStatus,
    unrecorded: Option<&CommunicationIdentityStatus>,
    secret_name: &str,
) -> Result<SecretObservation, StepError> {
    let ns = identity.namespace().unwrap_or_default();
    let uid = identity.uid().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let found = api
        .get_opt(secret_name)
        .await
        .map_err(|source| StepError::ReadSecret {
            name: secret_name.to_string(),
            source,
        })?;
    let Some(found) = found else {
        return Ok(SecretObservation::of(SecretFacts::Missing, None));
    };
    if !secret::owned_by(&found.metadata, &uid) {
        return Ok(SecretObservation::of(SecretFacts::NotOwned, None));
    }
    let recorded_user = status
        .user_id
        .is_none()
        .then(|| secret::recorded_user(&found))
        .flatten();
    let describes = |st: &CommunicationIdentityStatus| {
        let expires = st.token_expires_on.as_ref().map(|t| rfc3339(t.0));
        secret::intact(&found, st, expires.as_deref())
    };
    // A status write of ours failed after the Secret was written: if the Secret holds
    // exactly what that status said, it is the truth, and the older status is not.
    let unrecorded = unrecorded
        .filter(|u| u.user_id.is_some() && !describes(status) && describes(u))
        .cloned();
    let status = unrecorded.as_ref().unwrap_or(status);
    let intact = describes(status);
    if intact {
        let rv = found.resource_version();
        let identity_rv = identity.resource_version();
        ctx.memory.secret_confirmed(
            &ObjectRef::from_obj(identity),
            &uid,
            rv,
            status,
            identity_rv,
        );
    }
    Ok(SecretObservation {
        recorded_user,
        unrecorded,
        ..SecretObservation::of(
            SecretFacts::Ours {
                intact,
                template_current: secret::template_current(&found.metadata, identity),
            },
            secret::issued_at(&found.metadata),
        )
    })
}
