//! Reconcile of `CommunicationIdentity`, following DESIGN.md's steps: finalizer, service
//! and credentials, the ACS user, whether a new token is needed, revoke when asked,
//! issue, write the Secret, record status, requeue for the renewal time; and on deletion
//! delete (or keep and revoke) the user before the finalizer goes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use crate::acs::{self, AccessToken, AcsError};
use crate::api::conditions::{reasons, types};
use crate::api::{
    CommunicationIdentity, CommunicationIdentityStatus, DeletionPolicy,
    RENEW_REQUESTED_AT_ANNOTATION, REVOKE_REQUESTED_AT_ANNOTATION, Scope,
};

use super::context::Context;
use super::error::Error;
use super::renewal::{
    Jitter, TokenInputs, TokenReason, needs_new_token, renewal_time, request_pending, requeue_after,
};
use super::secret::{self, Observed, TokenSecret};
use super::services::{self, ResolveError, ResolvedService};
use super::status::{FIELD_MANAGER, apply_status, is_true, set_condition};

/// Finalizer that keeps an identity until its ACS user is deleted (or its tokens revoked).
pub const FINALIZER: &str = "acs-operator.dev/cleanup";
/// While a foreign Secret holds our name, look again this often (its deletion is not
/// visible to the label-filtered Secret watch).
const CONFLICT_RECHECK: Duration = Duration::from_secs(10);
/// Even a fresh token is looked at again this often, to heal anything a missed event hid.
const MAX_REQUEUE: Duration = Duration::from_secs(3600);
const KIND: &str = "CommunicationIdentity";

pub async fn reconcile(
    obj: Arc<CommunicationIdentity>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<CommunicationIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, obj.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(o) => apply(o, &ctx).await,
            FinalizerEvent::Cleanup(o) => cleanup(o, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let label = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .observe_reconcile(KIND, label, started.elapsed());
    if result.is_ok() {
        ctx.reset_backoff(&ObjectRef::from_obj(obj.as_ref()));
    }
    result
}

pub fn error_policy(obj: Arc<CommunicationIdentity>, err: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.next_backoff(
        ObjectRef::from_obj(obj.as_ref()),
        err.is_transient(),
        err.retry_after(),
    );
    tracing::warn!(
        namespace = obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        error = %err,
        kind = err.metric_label(),
        retry_in_secs = delay.as_secs_f64(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Where a reconcile got to, so a failure can be described precisely.
#[derive(Default)]
struct Progress {
    /// The Secret holds an unexpired token that status describes (and it was not just
    /// revoked): a failure now is a renewal failure, not an outage.
    valid_token: bool,
    /// `Ready=False` reason for a failure at the current step.
    failing_step: &'static str,
}

async fn apply(obj: Arc<CommunicationIdentity>, ctx: &Context) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<CommunicationIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    // Decide from the object as stored, not as cached: the watch event of the Secret we
    // just wrote often triggers the next reconcile before the cache has our status patch,
    // and a stale status makes the fresh Secret look edited and a handled renew/revoke
    // request look pending, so the token was issued (and revoked) twice.
    let obj = match api.get_opt(&name).await? {
        Some(fresh) if fresh.metadata.deletion_timestamp.is_none() => Arc::new(fresh),
        // Gone or being deleted: the event that says so is on its way.
        _ => return Ok(Action::await_change()),
    };
    let mut st = obj.status.clone().unwrap_or_default();
    let mut progress = Progress::default();
    let outcome = converge(&obj, ctx, &api, &mut st, &mut progress).await;
    st.observed_generation = obj.metadata.generation;
    if let Err(e) = &outcome {
        record_failure(&obj, ctx, &mut st, &progress, e).await;
    }
    // The intermediate write of userId (if any) already happened; this records the rest.
    let written = apply_status(&api, &name, obj.status.as_ref(), &st).await;
    update_metrics(ctx, &ns, &name, &st);
    match (outcome, written) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
        (Ok(action), Ok(_)) => Ok(action),
    }
}

fn update_metrics(ctx: &Context, ns: &str, name: &str, st: &CommunicationIdentityStatus) {
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == types::READY)
        .map(|c| c.status == "True");
    ctx.metrics.set_identity_ready(ns, name, ready);
    if let Some(exp) = &st.token_expires_on {
        ctx.metrics.set_token_expiry(ns, name, exp.0.as_second());
    }
}

fn acs_scopes(scopes: &std::collections::BTreeSet<Scope>) -> Vec<acs::TokenScope> {
    scopes
        .iter()
        .map(|s| {
            s.as_str()
                .parse::<acs::TokenScope>()
                .unwrap_or_else(|_| acs::TokenScope::Other(s.as_str().to_string()))
        })
        .collect()
}

/// Whole seconds: what ACS returns, what status shows, and what workloads parse most
/// easily; status and the Secret must agree to the second.
fn whole_seconds(t: Timestamp) -> Timestamp {
    t.round(jiff::Unit::Second).unwrap_or(t)
}

fn rfc3339(t: Timestamp) -> String {
    whole_seconds(t).to_string()
}

async fn converge(
    obj: &CommunicationIdentity,
    ctx: &Context,
    api: &Api<CommunicationIdentity>,
    st: &mut CommunicationIdentityStatus,
    progress: &mut Progress,
) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let uid = obj.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let generation = obj.metadata.generation;
    let oref = ObjectRef::from_obj(obj);

    progress.failing_step = reasons::INVALID_SPEC;
    let lifetime = obj.spec.token_lifetime()?;
    let renew_before = obj.spec.renew_before()?;

    progress.failing_step = reasons::SERVICE_NOT_READY;
    let svc = resolve_for(obj, ctx, oref.clone()).await?;

    // The Secret: ours, missing, edited, or someone else's.
    let secret_name = obj.effective_secret_name().unwrap_or(&name).to_string();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets.get_opt(&secret_name).await?;
    let expires_str = st.token_expires_on.as_ref().map(|t| rfc3339(t.0));
    let observed = secret::observe(
        existing.as_ref(),
        &uid,
        st.user_id.as_deref(),
        expires_str.as_deref(),
        &svc.endpoint,
    );
    let now = Timestamp::now();
    let secret_state = match observed {
        Observed::NotOwned => {
            let msg = format!(
                "Secret `{secret_name}` exists and is not owned by this CommunicationIdentity; it is never overwritten. \
                 Delete or rename that Secret, or create an identity with another spec.secretName"
            );
            if !is_true(&st.conditions, types::SECRET_CONFLICT) {
                publish(
                    ctx,
                    obj,
                    EventType::Warning,
                    reasons::SECRET_CONFLICT,
                    "WriteSecret",
                    &msg,
                )
                .await;
            }
            set_condition(
                &mut st.conditions,
                types::SECRET_CONFLICT,
                true,
                reasons::SECRET_NOT_OWNED,
                &msg,
                generation,
                now,
            );
            set_condition(
                &mut st.conditions,
                types::READY,
                false,
                reasons::SECRET_CONFLICT,
                &msg,
                generation,
                now,
            );
            return Ok(Action::requeue(CONFLICT_RECHECK));
        }
        Observed::Ours(s) => s,
    };
    if st
        .conditions
        .iter()
        .any(|c| c.type_ == types::SECRET_CONFLICT)
    {
        set_condition(
            &mut st.conditions,
            types::SECRET_CONFLICT,
            false,
            reasons::SECRET_OWNED,
            format!("Secret `{secret_name}` is owned by this identity"),
            generation,
            now,
        );
    }
    progress.valid_token = secret_state == super::renewal::SecretState::Matches
        && st.token_expires_on.as_ref().is_some_and(|t| t.0 > now);

    let scopes = acs_scopes(&obj.spec.scopes);
    let minutes = u32::try_from(lifetime.as_secs() / 60).unwrap_or(1440);

    // The ACS user: recorded, adopted, or created (with its first token in the same call).
    let mut fresh: Option<(AccessToken, Timestamp)> = None;
    let user_id = match (st.user_id.clone(), obj.spec.existing_user_id.clone()) {
        (Some(u), _) => u,
        (None, Some(adopted)) => {
            st.user_id = Some(adopted.clone());
            publish(
                ctx,
                obj,
                EventType::Normal,
                "UserAdopted",
                "AdoptUser",
                &format!("Adopted existing ACS user {adopted}"),
            )
            .await;
            adopted
        }
        (None, None) => {
            progress.failing_step = reasons::USER_CREATE_FAILED;
            let issued_at = Timestamp::now();
            let custom_id = custom_id_for(&uid);
            let created = svc
                .client
                .create_user(Some(&scopes), Some(minutes), Some(&custom_id))
                .await?;
            st.user_id = Some(created.user.id.clone());
            // Record the id at once: a crash after this point must not leak the user.
            apply_status(api, &name, obj.status.as_ref(), st).await?;
            let verb = if created.created {
                "Created"
            } else {
                "Found (idempotent create)"
            };
            publish(
                ctx,
                obj,
                EventType::Normal,
                "UserCreated",
                "CreateUser",
                &format!("{verb} ACS user {} at {}", created.user.id, svc.endpoint),
            )
            .await;
            if let Some(t) = created.token {
                fresh = Some((t, issued_at));
            }
            created.user.id
        }
    };

    let renewal_at = match (&st.last_token_issued_at, &st.token_expires_on) {
        (Some(i), Some(e)) => {
            Some(renewal_time(i.0, e.0, lifetime, renew_before, Jitter::from_uid(&uid)).at)
        }
        _ => None,
    };
    let renew_req = obj
        .annotations()
        .get(RENEW_REQUESTED_AT_ANNOTATION)
        .map(String::as_str);
    let revoke_req = obj
        .annotations()
        .get(REVOKE_REQUESTED_AT_ANNOTATION)
        .map(String::as_str);
    let token_lifetime = st
        .token_lifetime
        .as_deref()
        .and_then(|l| crate::api::duration::parse_duration(l).ok());
    let inputs = TokenInputs {
        now,
        secret: secret_state,
        desired_scopes: &obj.spec.scopes,
        desired_lifetime: lifetime,
        token_expires_on: st.token_expires_on.as_ref().map(|t| t.0),
        token_scopes: st.token_scopes.as_ref(),
        token_lifetime,
        renewal_time: renewal_at,
        renew_requested: renew_req,
        renew_handled: st.last_renew_request_handled.as_deref(),
        revoke_requested: revoke_req,
        revoke_handled: st.last_revoke_request_handled.as_deref(),
    };
    let reason = needs_new_token(&inputs);
    let reason = match (&fresh, reason) {
        // A revoke request on a brand-new user: its only token is the fresh one.
        (Some(_), Some(TokenReason::RevokeRequested)) => {
            st.last_revoke_request_handled = revoke_req.map(str::to_string);
            Some(TokenReason::NoToken)
        }
        (Some(_), _) => Some(TokenReason::NoToken),
        (None, r) => r,
    };

    if let Some(reason) = reason {
        if reason == TokenReason::RevokeRequested {
            progress.failing_step = reasons::REVOKE_FAILED;
            svc.client
                .revoke_tokens(&user_id)
                .await
                .map_err(|e| user_error(e, progress))?;
            progress.valid_token = false;
            st.last_revoked_at = Some(Time(Timestamp::now()));
            st.last_revoke_request_handled = revoke_req.map(str::to_string);
            publish(
                ctx,
                obj,
                EventType::Normal,
                "TokensRevoked",
                "RevokeTokens",
                &format!("Revoked every token of ACS user {user_id} (requested)"),
            )
            .await;
        }
        let (token, issued_at) = match fresh {
            Some(f) => f,
            None => {
                progress.failing_step = reasons::TOKEN_ISSUE_FAILED;
                let issued_at = Timestamp::now();
                let token = svc
                    .client
                    .issue_token(&user_id, &scopes, Some(minutes))
                    .await
                    .map_err(|e| user_error(e, progress))?;
                (token, issued_at)
            }
        };
        progress.failing_step = reasons::TOKEN_ISSUE_FAILED;
        let expires_on = rfc3339(token.expires_on);
        let desired = secret::build(
            obj,
            &TokenSecret {
                name: &secret_name,
                token: token.token.expose_secret(),
                expires_on: &expires_on,
                user_id: &user_id,
                endpoint: &svc.endpoint,
            },
        );
        secrets
            .patch(
                &secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await?;
        st.token_expires_on = Some(Time(whole_seconds(token.expires_on)));
        st.last_token_issued_at = Some(Time(whole_seconds(issued_at)));
        st.token_scopes = Some(obj.spec.scopes.clone());
        st.token_lifetime = Some(obj.spec.token_lifetime.clone());
        st.secret_name = Some(secret_name.clone());
        if request_pending(renew_req, st.last_renew_request_handled.as_deref()) {
            st.last_renew_request_handled = renew_req.map(str::to_string);
        }
        let scope_list: Vec<&str> = obj.spec.scopes.iter().map(|s| s.as_str()).collect();
        publish(
            ctx,
            obj,
            EventType::Normal,
            "TokenIssued",
            "IssueToken",
            &format!(
                "Issued a token ({}) valid until {expires_on} into Secret {secret_name}; reason: {}",
                scope_list.join(", "),
                reason.as_str()
            ),
        )
        .await;
        tracing::info!(namespace = %ns, name = %name, user = %user_id, expires_on = %expires_on, reason = reason.as_str(), "token issued");
    } else if st.secret_name.is_none() {
        st.secret_name = Some(secret_name.clone());
    }

    // Schedule from the token in force (status is authoritative: it describes the Secret).
    let (Some(issued), Some(expires)) = (&st.last_token_issued_at, &st.token_expires_on) else {
        return Err(Error::MissingField("status.tokenExpiresOn"));
    };
    let renewal = renewal_time(
        issued.0,
        expires.0,
        lifetime,
        renew_before,
        Jitter::from_uid(&uid),
    );
    st.renewal_time = Some(Time(whole_seconds(renewal.at)));
    let now = Timestamp::now();
    set_condition(
        &mut st.conditions,
        types::READY,
        true,
        reasons::TOKEN_ISSUED,
        format!(
            "Secret {secret_name} holds a token for user {user_id} valid until {}; renewal at {}",
            rfc3339(expires.0),
            rfc3339(renewal.at)
        ),
        generation,
        now,
    );
    if st
        .conditions
        .iter()
        .any(|c| c.type_ == types::RENEWAL_FAILING)
    {
        set_condition(
            &mut st.conditions,
            types::RENEWAL_FAILING,
            false,
            reasons::RENEWAL_SUCCEEDED,
            "The last renewal succeeded",
            generation,
            now,
        );
    }
    Ok(Action::requeue(
        requeue_after(now, renewal.at).min(MAX_REQUEUE),
    ))
}

/// An ACS error at the user/token step, with 404 and 401 mapped to the reasons a
/// person acts on.
fn user_error(e: AcsError, progress: &mut Progress) -> Error {
    if e.is_not_found() {
        progress.failing_step = reasons::USER_NOT_FOUND;
    }
    e.into()
}

/// A custom id derived from the object's UID: a create retried after a crash returns the
/// same user instead of a new one (api-versions that support custom ids).
pub fn custom_id_for(uid: &str) -> String {
    format!("k8s-{uid}")
}

async fn resolve_for(
    obj: &CommunicationIdentity,
    ctx: &Context,
    oref: ObjectRef<CommunicationIdentity>,
) -> Result<ResolvedService, ResolveError> {
    let ns = obj.namespace().unwrap_or_default();
    let key = services::service_key_for(obj, ctx.default_service.as_ref())
        .ok_or(ResolveError::NoService)?;
    match services::resolve(&ctx.client, &ctx.clients, &ctx.client_settings, &key, &ns).await {
        Ok(svc) => {
            ctx.credentials.depend(oref, &svc.credential);
            Ok(svc)
        }
        Err(e) => {
            if let Some(c) = e.credential() {
                ctx.credentials.depend(oref, c);
            }
            Err(e)
        }
    }
}

/// Describes a failure in conditions, events and metrics. A still-valid token is never
/// touched: the identity stays Ready and `RenewalFailing` says what is wrong.
async fn record_failure(
    obj: &CommunicationIdentity,
    ctx: &Context,
    st: &mut CommunicationIdentityStatus,
    progress: &Progress,
    e: &Error,
) {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let generation = obj.metadata.generation;
    let now = Timestamp::now();
    let reason = match e {
        Error::Resolve(r) => r.reason(),
        Error::Spec(_) => reasons::INVALID_SPEC,
        Error::Acs(a) if a.is_unauthorized() => reasons::UNAUTHORIZED,
        _ => progress.failing_step,
    };
    let message = e.to_string();
    if progress.valid_token {
        let until = st
            .token_expires_on
            .as_ref()
            .map(|t| rfc3339(t.0))
            .unwrap_or_default();
        let msg =
            format!("{message}; the current token stays in the Secret and is valid until {until}");
        set_condition(
            &mut st.conditions,
            types::RENEWAL_FAILING,
            true,
            reasons::RENEWAL_FAILED,
            &msg,
            generation,
            now,
        );
        ctx.metrics.renewal_failed(&ns, &name, reason);
        publish(
            ctx,
            obj,
            EventType::Warning,
            reasons::RENEWAL_FAILED,
            "RenewToken",
            &msg,
        )
        .await;
    } else {
        let had_token = st.token_expires_on.is_some();
        let reason = if had_token
            && st.token_expires_on.as_ref().is_some_and(|t| t.0 <= now)
            && reason == reasons::TOKEN_ISSUE_FAILED
        {
            reasons::TOKEN_EXPIRED
        } else {
            reason
        };
        set_condition(
            &mut st.conditions,
            types::READY,
            false,
            reason,
            &message,
            generation,
            now,
        );
        if had_token {
            set_condition(
                &mut st.conditions,
                types::RENEWAL_FAILING,
                true,
                reasons::RENEWAL_FAILED,
                &message,
                generation,
                now,
            );
            ctx.metrics.renewal_failed(&ns, &name, reason);
        }
        publish(ctx, obj, EventType::Warning, reason, "Reconcile", &message).await;
    }
}

async fn cleanup(obj: Arc<CommunicationIdentity>, ctx: &Context) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let oref = ObjectRef::from_obj(obj.as_ref());
    let st = obj.status.clone().unwrap_or_default();
    let policy = obj.spec.effective_deletion_policy();
    let recorded = st
        .user_id
        .clone()
        .or_else(|| obj.spec.existing_user_id.clone());

    let svc = match resolve_for(&obj, ctx, oref.clone()).await {
        Ok(svc) => Some(svc),
        Err(e) => {
            // The service may be gone with a terminating namespace; the last client
            // known for it still holds the credentials.
            let cached = services::service_key_for(&obj, ctx.default_service.as_ref())
                .and_then(|k| ctx.clients.cached(&k));
            match (cached, &recorded) {
                (Some(svc), _) => Some(svc),
                // Nothing was ever recorded: no user to clean up.
                (None, None) => None,
                (None, _) if namespace_terminating(ctx, &ns).await => {
                    let msg = format!(
                        "Cannot clean up ACS user {} ({e}); the namespace is being deleted, so the finalizer is released \
                         and the user is left in ACS",
                        recorded.as_deref().unwrap_or("(unknown)")
                    );
                    // The event goes with the namespace (or is refused in it): the log is
                    // the one record of the user left behind that outlives the namespace.
                    tracing::warn!(
                        namespace = %ns,
                        name = %name,
                        user = recorded.as_deref().unwrap_or("(unknown)"),
                        error = %e,
                        "namespace is being deleted and the service or its credentials are gone: \
                         finalizer released, ACS user left behind"
                    );
                    publish(
                        ctx,
                        &obj,
                        EventType::Warning,
                        reasons::CLEANUP_FAILED,
                        "Cleanup",
                        &msg,
                    )
                    .await;
                    None
                }
                (None, _) => {
                    let msg = format!(
                        "Cannot clean up ACS user {}: {e}. Fix the service or its credentials, or to abandon the user \
                         remove the finalizer: kubectl patch communicationidentity {name} -n {ns} --type=merge \
                         -p '{{\"metadata\":{{\"finalizers\":null}}}}'",
                        recorded.as_deref().unwrap_or("(unknown)")
                    );
                    cleanup_failed(obj.as_ref(), ctx, &msg).await;
                    return Err(e.into());
                }
            }
        }
    };

    if let Some(svc) = svc {
        let user = match recorded {
            Some(u) => Some(u),
            // Created but the id never reached status (crash): an idempotent create with
            // the same custom id finds it, so it can be deleted rather than leaked.
            None if obj.spec.existing_user_id.is_none()
                && svc.client.supports_custom_id()
                && policy == DeletionPolicy::Delete =>
            {
                let uid = obj.uid().unwrap_or_default();
                Some(
                    svc.client
                        .create_user(None, None, Some(&custom_id_for(&uid)))
                        .await?
                        .user
                        .id,
                )
            }
            None => None,
        };
        if let Some(user) = user {
            let result = match policy {
                DeletionPolicy::Delete => svc.client.delete_user(&user).await,
                DeletionPolicy::Retain => svc.client.revoke_tokens(&user).await,
            };
            match result {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    cleanup_failed(
                        obj.as_ref(),
                        ctx,
                        &format!("Cannot clean up ACS user {user}: {e}"),
                    )
                    .await;
                    return Err(e.into());
                }
            }
            let (reason, note) = match policy {
                DeletionPolicy::Delete => (
                    "UserDeleted",
                    format!("Deleted ACS user {user} (deletionPolicy Delete)"),
                ),
                DeletionPolicy::Retain => (
                    "TokensRevoked",
                    format!(
                        "Revoked the tokens of ACS user {user} and kept the user (deletionPolicy Retain)"
                    ),
                ),
            };
            publish(ctx, &obj, EventType::Normal, reason, "Cleanup", &note).await;
            tracing::info!(namespace = %ns, name = %name, user = %user, policy = ?policy, "identity cleaned up");
        }
    }
    ctx.credentials.forget(&oref);
    ctx.metrics.forget_identity(&ns, &name);
    Ok(Action::await_change())
}

async fn cleanup_failed(obj: &CommunicationIdentity, ctx: &Context, msg: &str) {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<CommunicationIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    let mut st = obj.status.clone().unwrap_or_default();
    set_condition(
        &mut st.conditions,
        types::READY,
        false,
        reasons::CLEANUP_FAILED,
        msg,
        obj.metadata.generation,
        Timestamp::now(),
    );
    if let Err(e) = apply_status(&api, &obj.name_any(), obj.status.as_ref(), &st).await {
        tracing::warn!(error = %e, "writing cleanup status failed");
    }
    publish(
        ctx,
        obj,
        EventType::Warning,
        reasons::CLEANUP_FAILED,
        "Cleanup",
        msg,
    )
    .await;
}

async fn namespace_terminating(ctx: &Context, ns: &str) -> bool {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.get_opt(ns).await {
        Ok(Some(n)) => n.metadata.deletion_timestamp.is_some(),
        Ok(None) => true,
        Err(_) => false,
    }
}

async fn publish(
    ctx: &Context,
    obj: &CommunicationIdentity,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::debug!(error = %e, "publishing an event failed");
    }
}
