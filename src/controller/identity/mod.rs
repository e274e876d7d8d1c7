//! Reconcile of `CommunicationIdentity` in three phases: gather (caches, memory of our
//! own writes, at most one API read), decide (a pure function, [`decide::decide`]), act
//! (the plan's step, then status). Deletion has its own pure decision in [`cleanup`].
//!
//! Every reconcile holds a permit of the process-wide limit
//! (`--max-concurrent-reconciles`) and is cancelled the moment leadership is lost, so a
//! replica that is no longer leader makes no further API or ACS write. Its ACS calls also
//! take a place in their resource's and namespace's share ([`crate::controller::shares`]);
//! waiting for a share, for quota or for a 429's pause holds no permit: the identity is
//! requeued for the time its turn comes. A panic is caught, reported on the object and
//! retried with backoff; it never ends the process.

mod act;
pub(crate) mod cleanup;
pub mod decide;
pub(crate) mod gather;
pub mod gone;
pub(crate) mod steps;
pub mod warm;

use std::sync::Arc;
use std::time::Instant;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Error as FinalizerError, Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use crate::api::{
    CommunicationIdentity, RENEW_REQUESTED_AT_ANNOTATION, REVOKE_REQUESTED_AT_ANNOTATION,
};
use crate::controller::panics;
use crate::controller::resolver::ResolvedService;
use crate::controller::shares::FULL_SHARE_RETRY;

use super::context::Context;
use super::error::Error;
use act::{finish, issue, record, revoke, update_metrics, waiting};
use decide::{Facts, Step};

/// Finalizer that keeps an identity until its ACS user is deleted (or its tokens revoked).
pub const FINALIZER: &str = "acs-operator.dev/cleanup";
const KIND: &str = "CommunicationIdentity";

/// No reconcile runs longer. Every ACS call is bounded by the client (attempt timeout,
/// call deadline) and a reconcile makes at most four, so this fires only when the API
/// server stops answering: the permit comes back and the identity is retried.
pub const RECONCILE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// After the Lease is lost, a reconcile inside [`must_record`] (a create sent, its user not
/// yet written anywhere) runs on for at most this long to write the Secret that records
/// the user; another replica takes over no sooner than the Lease's duration after our
/// last renewal, so the record is normally there when it looks.
pub const RECORD_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

tokio::task_local! {
    static RECORDING: Arc<std::sync::atomic::AtomicUsize>;
}

/// Held from just before a request whose answer must be recorded (a create without a
/// custom id: repeating it makes a second user) until the record is written. While one is
/// held, losing the Lease does not drop the reconcile at once (issue 16, item 5).
pub(crate) struct RecordGuard(Option<Arc<std::sync::atomic::AtomicUsize>>);

pub(crate) fn must_record() -> RecordGuard {
    RecordGuard(
        RECORDING
            .try_with(|r| {
                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                r.clone()
            })
            .ok(),
    )
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if let Some(r) = &self.0 {
            r.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

// `Error` is large (it carries the service and Secret it is about) and returned once per
// reconcile: boxing it would buy nothing.
#[allow(clippy::result_large_err)]
pub async fn reconcile(
    obj: Arc<CommunicationIdentity>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.stores.synced().await;
    let Ok(_permit) = ctx.limiter.acquire().await else {
        return Err(Error::Cancelled);
    };
    let started = Instant::now();
    let _in_flight = ctx.metrics.reconcile_started(KIND);
    let recording = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let work = RECORDING.scope(recording.clone(), async {
        match tokio::time::timeout(
            RECONCILE_DEADLINE,
            panics::catch(finalized(obj.clone(), &ctx)),
        )
        .await
        {
            Ok(r) => r.unwrap_or_else(|m| Err(Error::Panicked(m))),
            Err(_) => Err(Error::DeadlineExceeded(RECONCILE_DEADLINE)),
        }
    });
    tokio::pin!(work);
    let result = tokio::select! {
        biased;
        // Dropping the reconcile future aborts its in-flight requests: after the Lease is
        // lost the new leader writes, and we must not. One exception: a create whose user
        // is not recorded yet finishes and writes its record first (bounded by
        // RECORD_GRACE), or the user would leak.
        _ = ctx.leadership.lost() => {
            let finish = async {
                while recording.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                    tokio::select! {
                        _ = &mut work => break,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
                    }
                }
            };
            if tokio::time::timeout(RECORD_GRACE, finish).await.is_err() {
                tracing::warn!(
                    namespace = %obj.namespace().unwrap_or_default(),
                    name = %obj.name_any(),
                    "leadership lost while a created ACS user was being recorded; gave up after {}s",
                    RECORD_GRACE.as_secs()
                );
            }
            Err(Error::Cancelled)
        }
        r = &mut work => r,
    };
    if let Err(Error::Panicked(message)) = &result {
        act::report_panic(&ctx, &obj, message).await;
    }
    let label = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .observe_reconcile(KIND, label, started.elapsed());
    if let Err(e) = &result {
        ctx.metrics.reconcile_failed(KIND, e.metric_label());
    }
    if result.is_ok() {
        ctx.reset_backoff(&ObjectRef::from_obj(obj.as_ref()));
    }
    result
}

async fn finalized(obj: Arc<CommunicationIdentity>, ctx: &Context) -> Result<Action, Error> {
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<CommunicationIdentity> = Api::namespaced(ctx.client.clone(), &ns);
    // A cache that has not seen the finalizer we added would make the helper add it again,
    // and its JSON-patch test fails (422): fill in what we know we wrote.
    let oref = ObjectRef::from_obj(obj.as_ref());
    let uid = obj.uid().unwrap_or_default();
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    let obj = if !has_finalizer && ctx.memory.get(&oref, &uid).finalizer_added {
        let mut o = (*obj).clone();
        o.finalizers_mut().push(FINALIZER.to_string());
        Arc::new(o)
    } else {
        obj
    };
    let adding = !obj.finalizers().iter().any(|f| f == FINALIZER)
        && obj.metadata.deletion_timestamp.is_none();
    // Go on with the object as the finalizer patch left it instead of waiting for its
    // watch event: a new identity then takes one pass through the queue, not two.
    let obj = if adding {
        let patched = act::add_finalizer(&api, &obj)
            .await
            .map_err(|e| Error::Finalizer(Box::new(FinalizerError::AddFinalizer(e))))?;
        ctx.memory.finalizer_added(&oref, &uid);
        Arc::new(patched)
    } else {
        obj
    };
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            FinalizerEvent::Apply(o) => apply(o, ctx).await,
            FinalizerEvent::Cleanup(o) => cleanup::cleanup(o, ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(obj: Arc<CommunicationIdentity>, err: &Error, ctx: Arc<Context>) -> Action {
    if matches!(err, Error::Cancelled) {
        return Action::await_change();
    }
    if let Some(wait) = err.waiting() {
        // A turn, not a failure: no backoff, no warning.
        return Action::requeue(wait);
    }
    let oref = ObjectRef::from_obj(obj.as_ref());
    let mut delay = ctx.next_backoff(oref.clone(), err.is_transient(), err.retry_after());
    if let Some(latest) = err.look_again_within() {
        delay = delay.min(latest.max(std::time::Duration::from_millis(500)));
    }
    // A failing renewal looks again when the token in the Secret expires, so `Ready`
    // turns False on time (never before a server-requested wait). An expiry already past
    // shortens nothing: the backoff stands (issue 15: it was 0.5 s forever after).
    let valid_until = ctx
        .memory
        .get(&oref, &obj.uid().unwrap_or_default())
        .valid_until
        .filter(|until| *until > ctx.clock.now());
    if let Some(until) = valid_until {
        let left = crate::controller::renewal::to_std(until.duration_since(ctx.clock.now()));
        let at_expiry = (left + std::time::Duration::from_millis(500))
            .max(err.retry_after().unwrap_or_default());
        delay = delay.min(at_expiry.max(std::time::Duration::from_millis(500)));
    }
    warn_reconcile_failed(
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
        err,
        delay,
    );
    Action::requeue(delay)
}

/// The one warning of a failed reconcile. When an ACS request failed it names the
/// `client_request_id` (and `ms_cv`, when ACS answered) that Azure support traces the
/// request by: not secrets, and kept out of the error's message, which conditions and
/// events carry and which must not change with every attempt.
fn warn_reconcile_failed(namespace: &str, name: &str, err: &Error, retry_in: std::time::Duration) {
    let acs = failed_acs_request(err);
    tracing::warn!(
        namespace,
        name = %name,
        error = %err,
        kind = err.metric_label(),
        retry_in_secs = retry_in.as_secs_f64(),
        client_request_id = acs
            .and_then(crate::acs::AcsError::client_request_id)
            .map(tracing::field::display),
        ms_cv = acs
            .and_then(crate::acs::AcsError::ms_cv)
            .map(tracing::field::display),
        "reconcile failed"
    );
}

/// The ACS error behind a reconcile's error, through the finalizer's wrapping and the
/// steps' `source`s.
fn failed_acs_request(err: &Error) -> Option<&crate::acs::AcsError> {
    if let Error::Finalizer(inner) = err {
        return match inner.as_ref() {
            FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => {
                failed_acs_request(e)
            }
            _ => None,
        };
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(acs) = e.downcast_ref::<crate::acs::AcsError>() {
            return Some(acs);
        }
        next = e.source();
    }
    None
}

async fn apply(obj: Arc<CommunicationIdentity>, ctx: &Context) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let uid = obj.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let oref = ObjectRef::from_obj(obj.as_ref());
    let now = ctx.clock.now();

    // Gather.
    let remembered = ctx.memory.get(&oref, &uid);
    let mut status = gather::current_status(ctx, &obj, &remembered)
        .await
        .map_err(Error::Kube)?;
    let resolved = ctx.resolver.resolve(&obj).await;
    // Remember the service that reaches the user's resource: cleanup may need it after
    // the service went (or was pointed elsewhere).
    if let Ok(svc) = &resolved
        && status
            .user_endpoint
            .as_deref()
            .is_none_or(|home| home == svc.endpoint)
    {
        ctx.memory.service_resolved(&oref, &uid, svc);
    }
    let secret_name = obj.effective_secret_name().unwrap_or(&name).to_string();
    // Creates are idempotent only with custom ids: only then may a first token skip the
    // read of its Secret (gather::trust_cache).
    let custom_ids = resolved
        .as_ref()
        .is_ok_and(|svc| svc.client.supports_custom_id());
    let observed = gather::observe_secret(
        ctx,
        &obj,
        &status,
        &remembered,
        &secret_name,
        custom_ids,
        now,
    )
    .await?;
    let (secret, annotated) = (observed.facts, observed.issued_at);
    if let Some(unrecorded) = observed.unrecorded {
        tracing::debug!(namespace = %ns, name = %name,
            "status misses our last (failed) status write; the token Secret holds what it described: deciding from it");
        status = unrecorded;
    }
    // No user in status, but the token Secret records one this operator created (a status
    // write after the create failed, or the process ended before it): issue for that user
    // instead of creating another. The mark proves the operator wrote it for this object.
    if let (Some(rec), Ok(svc)) = (&observed.recorded_user, &resolved)
        && decide::use_recorded_user(&status, &obj.spec, &rec.endpoint, &svc.endpoint, || {
            svc.client.verify_user_record(&uid, &rec.user, &rec.mark)
        })
    {
        tracing::info!(namespace = %ns, name = %name, user = %rec.user,
            "status holds no user; the token Secret records the ACS user created for this identity: using it");
        status.user_id = Some(rec.user.clone());
        status.user_endpoint = Some(rec.endpoint.clone());
        ctx.memory
            .user_created(&oref, &uid, &rec.user, &rec.endpoint);
    }
    let last_token_request = decide::last_token_request(remembered.last_token_request, annotated);
    let annotations = obj.annotations();
    let facts = Facts {
        now,
        uid: &uid,
        generation: obj.metadata.generation,
        spec: &obj.spec,
        secret_name: &secret_name,
        renew_requested: annotations
            .get(RENEW_REQUESTED_AT_ANNOTATION)
            .map(String::as_str),
        revoke_requested: annotations
            .get(REVOKE_REQUESTED_AT_ANNOTATION)
            .map(String::as_str),
        status: &status,
        service: gather::service_facts(&resolved),
        secret,
        last_token_request,
        min_token_interval: ctx.min_token_interval,
    };

    // Decide.
    let mut plan = decide::decide(&facts);
    if let Some(recheck) = observed.recheck {
        plan.requeue = plan.requeue.min(recheck);
    }

    // Act. ACS steps take a place in their resource's and namespace's share first, and
    // speak for this identity so that a quota turn is reserved for it, not waited for.
    let (resolved, share) = match resolved {
        Ok(svc) if matches!(plan.step, Step::RevokeOnly { .. } | Step::Token(_)) => {
            let Some(share) = ctx.shares.try_enter(&svc.endpoint, &ns, &oref) else {
                tracing::debug!(namespace = %ns, name = %name, endpoint = %svc.endpoint, "share of ACS calls full; waiting for a place");
                return Ok(Action::requeue(FULL_SHARE_RETRY));
            };
            let client = Arc::new(svc.client.for_caller(&uid));
            (Ok(ResolvedService { client, ..svc }), Some(share))
        }
        other => (other, None),
    };
    let next_look = match (&plan.step, resolved) {
        (Step::Wait, _) => {
            // The token may have changed in an earlier reconcile whose rollout was not
            // done yet (the budget was spent, a crash after the status write).
            let mut plan = plan;
            let again = crate::controller::rollout::act(ctx, &obj, &mut plan.status).await;
            record(ctx, &obj, &status, &plan).await?;
            again.map_or(plan.requeue, |a| a.min(plan.requeue))
        }
        (Step::RefreshSecretMetadata, _) => {
            let outcome =
                steps::refresh_secret_metadata(ctx, &obj, &plan.status, &secret_name, now).await;
            finish(ctx, &obj, &facts, plan.status.clone(), outcome).await?;
            plan.requeue
        }
        (Step::RevokeOnly { user, request }, Ok(svc)) => {
            let mut st = plan.status.clone();
            let outcome = revoke(
                ctx,
                &obj,
                &svc,
                user,
                request,
                &mut st,
                &facts,
                plan.requeue,
            )
            .await;
            drop(share);
            if let Some(wait) = waiting(&outcome) {
                return Ok(Action::requeue(wait));
            }
            finish(ctx, &obj, &facts, st, outcome).await?;
            plan.requeue
        }
        (Step::Token(tp), Ok(svc)) => {
            let early = decide::expired_before_acting(&facts, &plan.status);
            if let Some(early) = &early {
                act::record_status(ctx, &obj, &status, early).await?;
            }
            let facts = Facts {
                status: early.as_ref().unwrap_or(&status),
                ..facts.clone()
            };
            let mut st = early.clone().unwrap_or_else(|| plan.status.clone());
            let planned = st.clone();
            let outcome = issue(ctx, &obj, &facts, &svc, tp, &secret_name, &mut st, share).await;
            if let Some(wait) = waiting(&outcome) {
                // Whatever was done before the wait (a revoke) is recorded; nothing else:
                // not the plan's own conditions (a first token's Reconciling), which the
                // pass after the wait writes with its token: one status write, not two.
                if st != planned {
                    finish(ctx, &obj, &facts, st, Ok(())).await?;
                }
                return Ok(Action::requeue(wait));
            }
            let mut requeue = match &outcome {
                Ok(renewal) => crate::controller::renewal::requeue_after(ctx.clock.now(), *renewal)
                    .min(decide::MAX_REQUEUE),
                Err(_) => plan.requeue,
            };
            if outcome.is_ok() {
                // The new token reaches the workloads that read it once; recorded in the
                // same status write as the token.
                if let Some(again) = crate::controller::rollout::act(ctx, &obj, &mut st).await {
                    requeue = requeue.min(again);
                }
            }
            finish(ctx, &obj, &facts, st, outcome.map(|_| ())).await?;
            requeue
        }
        // decide only plans ACS steps with a resolved service.
        (_, Err(e)) => return Err(Error::Resolve(e)),
    };
    update_metrics(
        ctx,
        &ns,
        &name,
        &ctx.memory
            .get(&oref, &uid)
            .status
            .map_or(status, |ours| *ours),
    );
    // The next look waits outside the controller's scheduler (see `wakeups`), which then
    // holds nothing for a healthy identity.
    ctx.wakeups.look_after(&oref, next_look);
    Ok(Action::await_change())
}

#[cfg(test)]
mod reconcile_failed_tests {
    use std::sync::{Arc, Mutex};

    use super::steps::StepError;
    use super::*;
    use crate::acs::{AcsError, Operation};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(err: &Error) -> String {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            warn_reconcile_failed("team-a", "app", err, std::time::Duration::from_secs(2));
        });
        String::from_utf8(capture.0.lock().unwrap().clone()).unwrap()
    }

    /// The warning names the failed request's id at the default level, through the
    /// finalizer's wrapping; the message (the condition's) does not.
    #[test]
    fn the_warning_names_the_failed_requests_client_request_id() {
        let id = "0b3f3c1e-5a0e-4c55-9d55-1f5f5f5f5f5f";
        let acs = AcsError::service(Operation::IssueToken, 503, None, None, None)
            .with_client_request_id(id)
            .with_ms_cv(Some("Zm9vYmFy.0"));
        let step = StepError::IssueToken {
            user: "8:acs:x".into(),
            source: acs,
        };
        assert!(!step.to_string().contains(id), "{step}");
        let err = Error::Finalizer(Box::new(FinalizerError::ApplyFailed(Error::Step(step))));
        assert_eq!(
            logged(&err).trim(),
            format!(
                "WARN reconcile failed namespace=\"team-a\" name=app \
                 error=finalizer: failed to apply object: issuing a token for ACS user 8:acs:x: \
                 ACS issue_token failed with HTTP 503 kind=\"server_error\" \
                 retry_in_secs=2.0 client_request_id={id} ms_cv=Zm9vYmFy.0"
            )
        );
        // Nothing sent to ACS: no ids.
        let line = logged(&Error::MissingField("metadata.uid"));
        assert!(
            !line.contains("client_request_id") && !line.contains("ms_cv"),
            "{line}"
        );
    }
}
