//! The act side of the identity reconcile: every ACS call and every write a plan's step
//! makes (revoke, create or adopt the user, issue, the token Secret, status, events,
//! metrics), in the order the plan gives; a cleanup plan's (delete or revoke, the bounded
//! release); the finalizer patch; and the report of a caught panic. What to do was chosen
//! by [`super::decide`]; the choices a step's outcome still implies (which event, whether a
//! failure is news, until when the old token stands) are asked of it too.

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::api::CommunicationIdentity;
use crate::api::CommunicationIdentityStatus;
use crate::api::conditions::{reasons, types};
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::controller::events::EventType;
use crate::controller::resolver::ResolvedService;
use crate::controller::secret::TokenSecret;
use crate::controller::shares::ShareGuard;
use crate::controller::status::set_condition;

use super::cleanup::{CleanupPlan, Failed, after_failure, force_command};
use super::decide::{self, Facts, Issued, Plan, TokenPlan, UserPlan, rfc3339};
use super::steps::{SecretWrite, StepError, acs_scopes, publish, write_secret, write_status};
use super::{RecordGuard, must_record};

/// How long a step that only waited for its quota turn should be requeued for.
pub(super) fn waiting<T>(outcome: &Result<T, StepError>) -> Option<std::time::Duration> {
    outcome.as_ref().err().and_then(StepError::quota_wait)
}

/// Records a plan that needs no step: its status (when changed) and its warning.
pub(super) async fn record(
    ctx: &Context,
    obj: &CommunicationIdentity,
    current: &CommunicationIdentityStatus,
    plan: &Plan,
) -> Result<(), Error> {
    if let Some((reason, message)) = &plan.warning {
        publish(ctx, obj, EventType::Warning, reason, "Reconcile", message).await;
    }
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    if let Some(reason) = plan.failure.filter(|_| decide::had_token(current)) {
        ctx.metrics.renewal_failed(&ns, &name, reason);
    }
    update_metrics(ctx, &ns, &name, &plan.status);
    write_status(ctx, obj, current, &plan.status)
        .await
        .map_err(|e| Error::Step(StepError::WriteStatus(e)))
}

/// Writes `st` over `current` (a status recorded before a step, such as `Ready=False` on a
/// token that expired before ACS was asked).
pub(super) async fn record_status(
    ctx: &Context,
    obj: &CommunicationIdentity,
    current: &CommunicationIdentityStatus,
    st: &CommunicationIdentityStatus,
) -> Result<(), Error> {
    write_status(ctx, obj, current, st)
        .await
        .map_err(|e| Error::Step(StepError::WriteStatus(e)))
}

/// Writes the status a step left (on failure with the failure described) and returns the
/// step's error, if any.
pub(super) async fn finish(
    ctx: &Context,
    obj: &CommunicationIdentity,
    facts: &Facts<'_>,
    mut st: CommunicationIdentityStatus,
    outcome: Result<(), StepError>,
) -> Result<(), Error> {
    let now = ctx.clock.now();
    if outcome.is_ok() {
        ctx.memory.valid_until(
            &ObjectRef::from_obj(obj),
            &obj.uid().unwrap_or_default(),
            None,
        );
    }
    if let Err(e) = &outcome {
        let message = e.to_string();
        let failure = decide::record_failure(&mut st, facts, now, e.reason(), &message);
        if let Some((reason, message)) = &failure.event {
            publish(ctx, obj, EventType::Warning, reason, "Reconcile", message).await;
        }
        ctx.memory.valid_until(
            &ObjectRef::from_obj(obj),
            &obj.uid().unwrap_or_default(),
            failure.valid_until,
        );
        if failure.renewal_failed {
            ctx.metrics.renewal_failed(
                &obj.namespace().unwrap_or_default(),
                &obj.name_any(),
                e.reason(),
            );
        }
    }
    decide::settle(&mut st, facts);
    update_metrics(
        ctx,
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
        &st,
    );
    let written = write_status(ctx, obj, facts.status, &st).await;
    if written.is_err() {
        ctx.memory.status_unrecorded(
            &ObjectRef::from_obj(obj),
            &obj.uid().unwrap_or_default(),
            &st,
        );
    }
    if let (Err(_), Err(e)) = (&outcome, &written) {
        tracing::warn!(
            namespace = %obj.namespace().unwrap_or_default(),
            name = %obj.name_any(),
            error = %e,
            "recording the failure in status failed too"
        );
    }
    match (outcome, written) {
        (Err(e), _) => Err(Error::Step(e)),
        (Ok(()), Err(e)) => Err(Error::Step(StepError::WriteStatus(e))),
        (Ok(()), Ok(())) => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn revoke(
    ctx: &Context,
    obj: &CommunicationIdentity,
    svc: &ResolvedService,
    user: &str,
    request: &str,
    st: &mut CommunicationIdentityStatus,
    facts: &Facts<'_>,
    next_token_in: std::time::Duration,
) -> Result<(), StepError> {
    svc.client
        .revoke_tokens(user)
        .await
        .map_err(|source| StepError::RevokeTokens {
            user: user.to_string(),
            source,
        })?;
    let now = ctx.clock.now();
    let next =
        (!next_token_in.is_zero()).then(|| crate::controller::renewal::add(now, next_token_in));
    decide::record_revoked(st, request, now, facts.generation, next);
    publish(
        ctx,
        obj,
        EventType::Normal,
        "TokensRevoked",
        "RevokeTokens",
        &format!("Revoked every token of ACS user {user} (requested)"),
    )
    .await;
    tracing::info!(namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any(), user = %user, "tokens revoked");
    Ok(())
}

/// Revoke (when asked), get a token (creating or adopting the user if needed), write the
/// Secret, and fill `st`; returns the renewal time. `share` is given back once the ACS
/// calls are done, before the Secret is written.
#[allow(clippy::too_many_arguments)]
pub(super) async fn issue(
    ctx: &Context,
    obj: &CommunicationIdentity,
    facts: &Facts<'_>,
    svc: &ResolvedService,
    tp: &TokenPlan,
    secret_name: &str,
    st: &mut CommunicationIdentityStatus,
    share: Option<ShareGuard>,
) -> Result<Timestamp, StepError> {
    let oref = ObjectRef::from_obj(obj);
    let uid = obj.uid().unwrap_or_default();
    if let Some((user, request)) = decide::revoke_before_issue(tp) {
        revoke(
            ctx,
            obj,
            svc,
            user,
            request,
            st,
            facts,
            std::time::Duration::ZERO,
        )
        .await?;
    }
    let scopes = acs_scopes(&tp.scopes);
    let issued_at = ctx.clock.now();
    let mut record_guard: Option<RecordGuard> = None;
    let (user, token) = match &tp.user {
        UserPlan::Existing(user) | UserPlan::Adopt(user) => {
            let token = svc
                .client
                .issue_token(user, &scopes, Some(tp.lifetime_minutes))
                .await
                .map_err(|source| StepError::IssueToken {
                    user: user.clone(),
                    source,
                })?;
            (user.clone(), token)
        }
        UserPlan::Create { custom_id } => {
            // Without a custom id a repeated create makes a second user: from the request
            // on, losing the Lease waits for the record (the Secret, below).
            let recording = custom_id.is_none().then(must_record);
            let created = svc
                .client
                .create_user(Some(&scopes), Some(tp.lifetime_minutes), custom_id.as_deref())
                .await
                .map_err(|source| {
                    if source.is_outcome_unknown() {
                        // No custom id: a retry could make a second user, so none is made
                        // automatically; say what is known.
                        tracing::warn!(
                            namespace = %obj.namespace().unwrap_or_default(),
                            name = %obj.name_any(),
                            endpoint = %svc.endpoint,
                            api_version = %svc.client.api_version(),
                            "the answer to a create-user request was lost; ACS may hold a user this identity \
                             does not know (its api-version has no custom ids), and the create is not retried \
                             automatically"
                        );
                    }
                    StepError::CreateUser {
                        endpoint: svc.endpoint.clone(),
                        source,
                    }
                })?;
            let user = created.user.id.clone();
            decide::record_user(st, &user, &svc.endpoint);
            // Remembered until a status write holds it; the token Secret written next
            // (with its mark) is the durable record, so no status write comes first.
            ctx.memory.user_created(&oref, &uid, &user, &svc.endpoint);
            record_guard = recording;
            let mut token = created.token.ok_or_else(|| StepError::NoTokenInCreate {
                user: user.clone(),
                endpoint: svc.endpoint.clone(),
            })?;
            if let Some(request) = decide::revoke_after_create(tp) {
                revoke(
                    ctx,
                    obj,
                    svc,
                    &user,
                    request,
                    st,
                    facts,
                    std::time::Duration::ZERO,
                )
                .await?;
                token = svc
                    .client
                    .issue_token(&user, &scopes, Some(tp.lifetime_minutes))
                    .await
                    .map_err(|source| StepError::IssueToken {
                        user: user.clone(),
                        source,
                    })?;
            }
            (user, token)
        }
    };
    // The floor counts tokens received: a request that failed gave the identity nothing
    // (its retries are paced by the error backoff), while a token that cannot be written
    // or came back expired must not be followed by another at once.
    ctx.memory.token_requested(&oref, &uid, issued_at);
    drop(share);
    if let Some(message) = decide::refuse_token(facts, issued_at, token.expires_on) {
        return Err(StepError::TokenRefused { user, message });
    }
    let expires_on = rfc3339(token.expires_on);
    let mark = svc.client.user_record(&uid, &user);
    let written = write_secret(
        ctx,
        obj,
        &TokenSecret {
            name: secret_name,
            token: token.token.expose_secret(),
            expires_on: &expires_on,
            user_id: &user,
            endpoint: &svc.endpoint,
            issued_at: &rfc3339(issued_at),
            user_record: mark.as_deref(),
        },
        ctx.clock.now(),
        SecretWrite::for_facts(&facts.secret, obj),
    )
    .await;
    // The user is recorded (or the write failed and memory keeps it): the Lease's loss
    // may now be honoured.
    drop(record_guard);
    match written {
        // A create refused for a taken name, after no read (gather::trust_cache): the
        // Secret may be someone else's or one of ours the cache has not shown yet.
        Err(e) if e.is_secret_taken() => {
            return Err(if taken_by_us(ctx, obj, secret_name).await? {
                StepError::SecretWrittenMeanwhile {
                    name: secret_name.to_string(),
                }
            } else {
                e
            });
        }
        other => other?,
    }
    let renewal = decide::record_issued(
        facts,
        st,
        &Issued {
            user: &user,
            endpoint: &svc.endpoint,
            issued_at,
            expires_on: token.expires_on,
            secret_name,
        },
    );
    let scope_list: Vec<&str> = tp.scopes.iter().map(|s| s.as_str()).collect();
    let (reason, action, what) = decide::issued_event(&tp.user);
    publish(
        ctx,
        obj,
        EventType::Normal,
        reason,
        action,
        &format!(
            "{what} {user} at {}; token ({}) valid until {expires_on} written to Secret {secret_name}; reason: {}",
            svc.endpoint,
            scope_list.join(", "),
            tp.reason.as_str()
        ),
    )
    .await;
    tracing::info!(
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        user = %user,
        expires_on = %expires_on,
        reason = tp.reason.as_str(),
        "token issued"
    );
    Ok(renewal)
}

/// Whether the Secret a create found in its way is this identity's (written by another
/// attempt of this operator: a replica before a failover, a pass whose answer was lost).
async fn taken_by_us(
    ctx: &Context,
    obj: &CommunicationIdentity,
    name: &str,
) -> Result<bool, StepError> {
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let found = api
        .get_metadata_opt(name)
        .await
        .map_err(|source| StepError::ReadSecret {
            name: name.to_string(),
            source,
        })?;
    Ok(found.is_some_and(|s| {
        crate::controller::secret::owned_by(&s.metadata, &obj.uid().unwrap_or_default())
    }))
}

pub(super) fn update_metrics(
    ctx: &Context,
    ns: &str,
    name: &str,
    st: &CommunicationIdentityStatus,
) {
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == types::READY)
        .map(|c| c.status == "True");
    ctx.metrics.set_identity_ready(ns, name, ready);
    if let Some(exp) = &st.token_expires_on {
        ctx.metrics.set_token_expiry(ns, name, exp.0.as_second());
    }
    ctx.metrics
        .set_renewal_time(ns, name, st.renewal_time.as_ref().map(|t| t.0.as_second()));
}

/// Carries out a cleanup plan (see [`super::cleanup::decide_cleanup`]): the ACS call that
/// deletes the user or revokes its tokens (a user found by its custom id is recorded in
/// status before it is deleted), the events, and the bounded release when it cannot
/// finish. `endpoint`: the resource the client reaches.
#[allow(clippy::too_many_arguments)]
pub(super) async fn clean_up(
    ctx: &Context,
    obj: &CommunicationIdentity,
    status: &CommunicationIdentityStatus,
    plan: &CleanupPlan,
    client: Option<std::sync::Arc<crate::acs::AcsClient>>,
    endpoint: Option<String>,
    share: Option<ShareGuard>,
    (terminating, terminating_for): (bool, Option<std::time::Duration>),
) -> Result<Action, Error> {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let blocked = Blocked {
        ctx,
        obj,
        status,
        user: status.user_id.as_deref(),
        terminating,
        terminating_for,
    };
    let done = match (plan, client) {
        (CleanupPlan::Done, _) => None,
        (CleanupPlan::Untouched(note), _) => {
            tracing::info!(namespace = %ns, name = %name, "{note}");
            None
        }
        (CleanupPlan::Abandon(msg), _) => {
            blocked.release(msg).await;
            None
        }
        (CleanupPlan::Stuck(reason, msg), _) => {
            return blocked.fail(reason, msg).await;
        }
        (CleanupPlan::Delete(user), Some(c)) => {
            Some((user.clone(), c.delete_user(user).await, true))
        }
        (CleanupPlan::Revoke(user), Some(c)) => {
            Some((user.clone(), c.revoke_tokens(user).await, false))
        }
        (CleanupPlan::FindAndDelete(custom_id), Some(c)) => {
            let found = match c.create_user(None, None, Some(custom_id)).await {
                Err(e) if e.is_quota_wait() => {
                    return Err(Error::Waiting(e.retry_after().unwrap_or_default()));
                }
                Ok(found) => found,
                Err(source) => {
                    drop(share);
                    let who = format!("with custom id {custom_id}");
                    let blocked = Blocked {
                        user: Some(&who),
                        ..blocked
                    };
                    return blocked.acs_failed(source).await;
                }
            };
            let user = found.user.id;
            // Recorded before the delete: a cleanup interrupted after it deletes by id
            // (404 is done) instead of "finding" with the custom id again, which would
            // create a new user once the first is gone.
            let mut st = status.clone();
            st.user_id = Some(user.clone());
            st.user_endpoint = endpoint;
            if let Err(e) = write_status(ctx, obj, status, &st).await {
                // Someone wrote the identity since it was read: look again at once.
                let someone_else = crate::controller::status::precondition_failed(&e);
                let err = StepError::RecordUser {
                    user: user.clone(),
                    source: e,
                };
                if someone_else {
                    return Err(Error::Step(err));
                }
                // Never deleted unrecorded; reported, and bounded like any failed step (a
                // status write denied for good must not keep the namespace Terminating).
                drop(share);
                let blocked = Blocked {
                    user: Some(&user),
                    ..blocked
                };
                return blocked.fail(err.reason(), &err.to_string()).await;
            }
            let r = c.delete_user(&user).await;
            Some((user, r, true))
        }
        (_, None) => {
            return Err(Error::CleanupBlocked(
                "no service to reach the ACS user".into(),
            ));
        }
    };
    drop(share);
    if let Some((user, result, deleted)) = done {
        match result {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            // Nothing was sent; the finalizer stays until the turn comes.
            Err(e) if e.is_quota_wait() => {
                return Err(Error::Waiting(e.retry_after().unwrap_or_default()));
            }
            Err(source) => {
                let blocked = Blocked {
                    user: Some(&user),
                    ..blocked
                };
                return blocked.acs_failed(source).await;
            }
        }
        let (reason, note) = if deleted {
            (
                "UserDeleted",
                format!("Deleted ACS user {user} (deletionPolicy Delete)"),
            )
        } else {
            (
                "TokensRevoked",
                format!(
                    "Revoked the tokens of ACS user {user} and kept the user (deletionPolicy Retain)"
                ),
            )
        };
        publish(ctx, obj, EventType::Normal, reason, "Cleanup", &note).await;
        tracing::info!(namespace = %ns, name = %name, user = %user, "identity cleaned up");
    }
    super::gone::forget(ctx, &ObjectRef::from_obj(obj));
    Ok(Action::await_change())
}

/// A cleanup that cannot finish: reported (condition `CleanupFailed` with the command to
/// force removal, a Warning event when new), and in a terminating namespace released once
/// the bound has passed.
struct Blocked<'a> {
    ctx: &'a Context,
    obj: &'a CommunicationIdentity,
    status: &'a crate::api::CommunicationIdentityStatus,
    user: Option<&'a str>,
    terminating: bool,
    terminating_for: Option<std::time::Duration>,
}

impl Blocked<'_> {
    /// The cleanup's ACS request for `self.user` failed: logged with the ids Azure support
    /// traces it by (the condition and the event keep a message that does not change with
    /// every attempt), then reported like any failed cleanup.
    async fn acs_failed(&self, source: crate::acs::AcsError) -> Result<Action, Error> {
        tracing::warn!(
            namespace = %self.obj.namespace().unwrap_or_default(),
            name = %self.obj.name_any(),
            error = %source,
            client_request_id = source.client_request_id().unwrap_or(""),
            ms_cv = source.ms_cv().unwrap_or(""),
            "ACS cleanup request failed"
        );
        let err = StepError::DeleteUser {
            user: self.user.unwrap_or("(unknown)").to_string(),
            source,
        };
        self.fail(reasons::CLEANUP_FAILED, &err.to_string()).await
    }

    async fn fail(&self, reason: &str, problem: &str) -> Result<Action, Error> {
        let (ctx, obj) = (self.ctx, self.obj);
        let bound = ctx.abandon_cleanup_after;
        match after_failure(self.terminating, self.terminating_for, bound) {
            Failed::Release => {
                let msg = format!(
                    "{problem}; the namespace has been terminating for {} or more (--abandon-cleanup-after), \
                     so the finalizer is released and ACS user {} is left in ACS",
                    crate::api::duration::format_duration(bound),
                    self.user.unwrap_or("(unknown)")
                );
                self.release(&msg).await;
                super::gone::forget(ctx, &ObjectRef::from_obj(obj));
                Ok(Action::await_change())
            }
            Failed::Retry { within } => {
                let force = force_command(&obj.name_any(), &obj.namespace().unwrap_or_default());
                let msg = if problem.contains("finalizers\":null") {
                    problem.to_string()
                } else {
                    match within {
                        Some(left) => format!(
                            "{problem}. The namespace is being deleted: the finalizer is released in {} \
                             (--abandon-cleanup-after), or {force}",
                            crate::api::duration::format_duration(left)
                        ),
                        None => {
                            let fix = if reason == reasons::STATUS_WRITE_FAILED {
                                "Let the operator write this identity's status (an admission \
                                 policy or a webhook may deny it)"
                            } else {
                                "Fix the service or its credentials"
                            };
                            format!("{problem}. {fix}, or {force}")
                        }
                    }
                };
                let mut st = self.status.clone();
                set_condition(
                    &mut st.conditions,
                    types::READY,
                    false,
                    reason,
                    &msg,
                    obj.metadata.generation,
                    ctx.clock.now(),
                );
                let new =
                    crate::controller::status::condition(&self.status.conditions, types::READY)
                        .is_none_or(|c| c.reason != reason || c.status != "False");
                if let Err(e) = write_status(ctx, obj, self.status, &st).await {
                    tracing::warn!(error = %e, "writing cleanup status failed");
                }
                if new {
                    publish(ctx, obj, EventType::Warning, reason, "Cleanup", &msg).await;
                }
                Err(match within {
                    Some(left) => Error::CleanupAbandonsIn(msg, left),
                    None => Error::CleanupBlocked(msg),
                })
            }
        }
    }

    /// Releases the finalizer, leaving the user: the log line is the record that outlives
    /// the namespace (the event goes with it).
    async fn release(&self, msg: &str) {
        tracing::warn!(
            namespace = %self.obj.namespace().unwrap_or_default(),
            name = %self.obj.name_any(),
            user = self.user.unwrap_or("(unknown)"),
            "namespace is being deleted and cleanup cannot finish: finalizer released, ACS user left behind"
        );
        publish(
            self.ctx,
            self.obj,
            EventType::Warning,
            reasons::CLEANUP_FAILED,
            "Cleanup",
            msg,
        )
        .await;
    }
}

/// A caught panic, told where a person looks: a log line (with the message), a metric,
/// a Warning event and `Stalled=True` on the object (without the message: it is ours, not
/// the user's, and could quote anything).
pub(super) async fn report_panic(ctx: &Context, obj: &CommunicationIdentity, message: &str) {
    ctx.metrics.reconcile_panicked(super::KIND);
    tracing::error!(
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        panic = %message,
        "reconcile panicked; caught, retrying with backoff"
    );
    let text = "The operator failed on this object (a bug, now in its log); it retries with \
                backoff and keeps serving every other object. Report it with the operator's log.";
    publish(
        ctx,
        obj,
        EventType::Warning,
        crate::api::conditions::reasons::RECONCILE_PANICKED,
        "Reconcile",
        text,
    )
    .await;
    let current = obj.status.clone().unwrap_or_default();
    let mut st = current.clone();
    crate::controller::status::set_condition(
        &mut st.conditions,
        types::STALLED,
        true,
        crate::api::conditions::reasons::RECONCILE_PANICKED,
        text,
        obj.metadata.generation,
        ctx.clock.now(),
    );
    if let Err(e) = write_status(ctx, obj, &current, &st).await {
        tracing::warn!(error = %e, "recording the panic in status failed");
    }
}

/// Adds our finalizer; the JSON patch's `test` fails (422) instead of writing over a
/// finalizer list that changed since the object was read.
pub(super) async fn add_finalizer(
    api: &kube::Api<CommunicationIdentity>,
    obj: &CommunicationIdentity,
) -> Result<CommunicationIdentity, kube::Error> {
    let ops = if obj.finalizers().is_empty() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [super::FINALIZER]},
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": obj.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": super::FINALIZER},
        ])
    };
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
    api.patch(
        &obj.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::<()>::Json(patch),
    )
    .await
}
