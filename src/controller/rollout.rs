//! Rollout restarts: `spec.rolloutRestartTargets` restarted once per token change, the way
//! `kubectl rollout restart` does (a patch of the pod template's annotations), paced by a
//! process-wide budget so a renewal wave does not restart every workload at once.
//!
//! The decisions ([`plan`], [`conclude`], [`RestartBudget::try_take`]) are pure; [`act`]
//! only patches and records. The patched annotation's value is the token's issue time,
//! so a patch repeated after a crash (Secret and status written, restart recorded not
//! yet) changes nothing and restarts nothing a second time.

use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::api::conditions::{reasons, types};
use crate::api::{
    CommunicationIdentity, CommunicationIdentityStatus, RESTARTED_AT_ANNOTATION,
    RolloutRestartTarget,
};
use crate::controller::context::Context;
use crate::controller::events::EventType;
use crate::controller::identity::decide::rfc3339;
use crate::controller::identity::steps::publish;

/// Default `--rollout-restarts-per-minute`.
pub const DEFAULT_ROLLOUT_RESTARTS_PER_MINUTE: u32 = 30;
/// Window of the restart budget.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(60);
/// Retry of a rollout whose patch failed for a transient reason.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Field manager of the restart patches.
pub const FIELD_MANAGER: &str = "acs-identity-operator";

/// What to do about an identity's rollout targets, given its (about to be written) status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutPlan {
    /// Nothing to do: no targets, or the current token was rolled out.
    Nothing,
    /// Targets are gone: forget what was rolled out (so adding them again restarts nothing).
    Forget,
    /// Targets are set but nothing was recorded yet (the identity's first token, or targets
    /// just added): record the current token as rolled out without restarting; the
    /// workloads start with (or already have) it.
    Baseline(String),
    /// The token changed since the last rollout: restart these targets for `revision`.
    Restart {
        revision: String,
        targets: Vec<RolloutRestartTarget>,
    },
}

/// The revision of a status: the issue time of the token in the Secret.
pub fn revision(st: &CommunicationIdentityStatus) -> Option<String> {
    st.last_token_issued_at.as_ref().map(|t| rfc3339(t.0))
}

/// Whether (and what) to restart. Pure.
pub fn plan(targets: &[RolloutRestartTarget], st: &CommunicationIdentityStatus) -> RolloutPlan {
    if targets.is_empty() {
        return if st.rolled_out_token_issued_at.is_some() {
            RolloutPlan::Forget
        } else {
            RolloutPlan::Nothing
        };
    }
    let Some(current) = revision(st) else {
        return RolloutPlan::Nothing;
    };
    match &st.rolled_out_token_issued_at {
        None => RolloutPlan::Baseline(current),
        Some(done) if *done == current => RolloutPlan::Nothing,
        Some(_) => {
            let mut targets = targets.to_vec();
            targets.sort();
            targets.dedup();
            RolloutPlan::Restart {
                revision: current,
                targets,
            }
        }
    }
}

/// How patching one target ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetOutcome {
    Restarted,
    NotFound,
    Forbidden,
    /// Any other failure (API server unavailable, a conflict): worth retrying.
    Failed(String),
}

impl TargetOutcome {
    /// Classifies a patch result by its API status code.
    pub fn from_result<T>(r: &Result<T, kube::Error>) -> TargetOutcome {
        match r {
            Ok(_) => TargetOutcome::Restarted,
            Err(kube::Error::Api(s)) if s.code == 404 => TargetOutcome::NotFound,
            Err(kube::Error::Api(s)) if s.code == 403 => TargetOutcome::Forbidden,
            Err(e) => TargetOutcome::Failed(e.to_string()),
        }
    }
}

/// The record of a rollout attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conclusion {
    /// Whether the revision counts as rolled out (false: retry after
    /// [`RETRY_AFTER_FAILURE`]). Missing or forbidden targets are not retried for this
    /// token: only a person can fix them, and a retry loop would cost API writes.
    pub done: bool,
    /// `RolloutRestarted` condition: status and reason.
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What the outcomes of one rollout mean. Pure.
pub fn conclude(revision: &str, outcomes: &[(RolloutRestartTarget, TargetOutcome)]) -> Conclusion {
    let list = |want: fn(&TargetOutcome) -> bool| -> Vec<String> {
        outcomes
            .iter()
            .filter(|(_, o)| want(o))
            .map(|(t, _)| t.to_string())
            .collect()
    };
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(t, o)| match o {
            TargetOutcome::Failed(e) => Some(format!("{t}: {e}")),
            _ => None,
        })
        .collect();
    let missing = list(|o| *o == TargetOutcome::NotFound);
    let forbidden = list(|o| *o == TargetOutcome::Forbidden);
    let restarted = list(|o| *o == TargetOutcome::Restarted);
    if !failed.is_empty() {
        return Conclusion {
            done: false,
            ok: false,
            reason: reasons::ROLLOUT_RESTART_FAILED,
            message: format!(
                "restarting for the token issued at {revision} failed, retrying: {}",
                failed.join("; ")
            ),
        };
    }
    if !forbidden.is_empty() {
        return Conclusion {
            done: true,
            ok: false,
            reason: reasons::ROLLOUT_RESTART_FORBIDDEN,
            message: format!(
                "the operator may not patch {} (install the chart with rolloutRestart.enabled=true); \
                 the token in the Secret is not affected",
                forbidden.join(", ")
            ),
        };
    }
    if !missing.is_empty() {
        return Conclusion {
            done: true,
            ok: false,
            reason: reasons::ROLLOUT_TARGET_NOT_FOUND,
            message: format!(
                "{} not found in this namespace (check spec.rolloutRestartTargets); restarted: {}",
                missing.join(", "),
                if restarted.is_empty() {
                    "none".to_string()
                } else {
                    restarted.join(", ")
                }
            ),
        };
    }
    Conclusion {
        done: true,
        ok: true,
        reason: reasons::ROLLOUT_RESTARTED,
        message: format!(
            "restarted {} for the token issued at {revision}",
            restarted.join(", ")
        ),
    }
}

/// The process-wide limit on restarts: at most `per_window` targets restarted per
/// [`BUDGET_WINDOW`]. An identity with more targets than that still goes, alone, in a
/// fresh window.
#[derive(Debug)]
pub struct RestartBudget {
    per_window: u32,
    window: Duration,
    state: Mutex<Window>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: Option<Timestamp>,
    used: u32,
}

impl RestartBudget {
    pub fn new(per_window: u32, window: Duration) -> Self {
        RestartBudget {
            per_window: per_window.max(1),
            window,
            state: Mutex::new(Window {
                start: None,
                used: 0,
            }),
        }
    }

    /// Takes `n` restarts at `now`, or says how long until the next window.
    pub fn try_take(&self, now: Timestamp, n: u32) -> Result<(), Duration> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let end = w
            .start
            .and_then(|s| s.checked_add(self.window).ok())
            .unwrap_or(now);
        if w.start.is_none() || now >= end {
            *w = Window {
                start: Some(now),
                used: 0,
            };
        }
        if w.used == 0 || w.used.saturating_add(n) <= self.per_window {
            w.used = w.used.saturating_add(n);
            return Ok(());
        }
        let wait = end
            .duration_since(now)
            .unsigned_abs()
            .max(Duration::from_secs(1));
        Err(wait)
    }
}

/// Rolls the token in `st` out to the identity's targets when it changed, recording what
/// was done in `st` (written by the caller with the rest of the status). Never fails the
/// token path: problems become a condition and a Warning event. Returns when to look
/// again, if sooner than usual (the budget is spent, or a patch failed).
pub async fn act(
    ctx: &Context,
    obj: &CommunicationIdentity,
    st: &mut CommunicationIdentityStatus,
) -> Option<Duration> {
    let now = ctx.clock.now();
    match plan(&obj.spec.rollout_restart_targets, st) {
        RolloutPlan::Nothing => None,
        RolloutPlan::Forget => {
            st.rolled_out_token_issued_at = None;
            st.conditions
                .retain(|c| c.type_ != types::ROLLOUT_RESTARTED);
            None
        }
        RolloutPlan::Baseline(revision) => {
            st.rolled_out_token_issued_at = Some(revision);
            None
        }
        RolloutPlan::Restart { revision, targets } => {
            let n = u32::try_from(targets.len()).unwrap_or(u32::MAX);
            if let Err(wait) = ctx.rollout_budget.try_take(now, n) {
                tracing::debug!(
                    namespace = %obj.namespace().unwrap_or_default(),
                    name = %obj.name_any(),
                    wait_s = wait.as_secs(),
                    "rollout restart budget spent; waiting for the next window"
                );
                return Some(wait);
            }
            let ns = obj.namespace().unwrap_or_default();
            let mut outcomes = Vec::with_capacity(targets.len());
            for t in targets {
                let result = patch_target(ctx, &ns, &t, &revision).await;
                outcomes.push((t, TargetOutcome::from_result(&result)));
            }
            let c = conclude(&revision, &outcomes);
            let previous = st
                .conditions
                .iter()
                .find(|x| x.type_ == types::ROLLOUT_RESTARTED)
                .map(|x| (x.status.clone(), x.reason.clone()));
            let fresh =
                previous.as_ref().map(|(s, r)| (s == "True", r.as_str())) != Some((c.ok, c.reason));
            crate::controller::status::set_condition(
                &mut st.conditions,
                types::ROLLOUT_RESTARTED,
                c.ok,
                c.reason,
                c.message.clone(),
                obj.metadata.generation,
                now,
            );
            if c.ok {
                publish(
                    ctx,
                    obj,
                    EventType::Normal,
                    c.reason,
                    "RolloutRestart",
                    &c.message,
                )
                .await;
            } else if fresh {
                publish(
                    ctx,
                    obj,
                    EventType::Warning,
                    c.reason,
                    "RolloutRestart",
                    &c.message,
                )
                .await;
            }
            tracing::info!(namespace = %ns, name = %obj.name_any(), reason = c.reason, "{}", c.message);
            if c.done {
                st.rolled_out_token_issued_at = Some(revision);
                st.last_rollout_restart_at =
                    Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
                None
            } else {
                Some(RETRY_AFTER_FAILURE)
            }
        }
    }
}

/// The restart itself: what `kubectl rollout restart` does, with our annotation.
async fn patch_target(
    ctx: &Context,
    ns: &str,
    target: &RolloutRestartTarget,
    revision: &str,
) -> Result<DynamicObject, kube::Error> {
    let ar = ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: target.kind.as_str().into(),
        plural: target.kind.plural().into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let body = serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: revision}}}}
    });
    api.patch(
        &target.name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(body),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RolloutTargetKind::{DaemonSet, Deployment};

    fn t(kind: crate::api::RolloutTargetKind, name: &str) -> RolloutRestartTarget {
        RolloutRestartTarget {
            kind,
            name: name.into(),
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn status(issued: Option<&str>, rolled: Option<&str>) -> CommunicationIdentityStatus {
        CommunicationIdentityStatus {
            last_token_issued_at: issued.map(|s| Time(ts(s))),
            rolled_out_token_issued_at: rolled.map(Into::into),
            ..Default::default()
        }
    }

    const T1: &str = "2026-01-01T00:00:00Z";
    const T2: &str = "2026-01-01T16:00:00Z";

    #[test]
    fn plan_table() {
        let targets = vec![
            t(Deployment, "web"),
            t(DaemonSet, "agent"),
            t(Deployment, "web"),
        ];
        let cases: Vec<(
            &str,
            Vec<RolloutRestartTarget>,
            CommunicationIdentityStatus,
            RolloutPlan,
        )> = vec![
            (
                "no targets, nothing recorded",
                vec![],
                status(Some(T1), None),
                RolloutPlan::Nothing,
            ),
            (
                "targets removed",
                vec![],
                status(Some(T1), Some(T1)),
                RolloutPlan::Forget,
            ),
            (
                "no token yet",
                targets.clone(),
                status(None, None),
                RolloutPlan::Nothing,
            ),
            (
                "first token (or targets just set): record, no restart",
                targets.clone(),
                status(Some(T1), None),
                RolloutPlan::Baseline(T1.into()),
            ),
            (
                "rolled out already (re-reconcile, operator restart)",
                targets.clone(),
                status(Some(T1), Some(T1)),
                RolloutPlan::Nothing,
            ),
            (
                "token changed: restart each target once, sorted, deduplicated",
                targets.clone(),
                status(Some(T2), Some(T1)),
                RolloutPlan::Restart {
                    revision: T2.into(),
                    targets: vec![t(Deployment, "web"), t(DaemonSet, "agent")]
                        .into_iter()
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                },
            ),
        ];
        for (what, targets, st, want) in cases {
            assert_eq!(plan(&targets, &st), want, "{what}");
        }
    }

    /// (what, outcomes, done, condition status, reason)
    type ConcludeCase = (
        &'static str,
        Vec<(RolloutRestartTarget, TargetOutcome)>,
        bool,
        bool,
        &'static str,
    );

    #[test]
    fn conclude_table() {
        use TargetOutcome::*;
        let web = t(Deployment, "web");
        let agent = t(DaemonSet, "agent");
        let cases: Vec<ConcludeCase> = vec![
            (
                "all restarted",
                vec![(web.clone(), Restarted), (agent.clone(), Restarted)],
                true,
                true,
                reasons::ROLLOUT_RESTARTED,
            ),
            (
                "one missing: done, not retried",
                vec![(web.clone(), Restarted), (agent.clone(), NotFound)],
                true,
                false,
                reasons::ROLLOUT_TARGET_NOT_FOUND,
            ),
            (
                "forbidden wins over missing",
                vec![(web.clone(), Forbidden), (agent.clone(), NotFound)],
                true,
                false,
                reasons::ROLLOUT_RESTART_FORBIDDEN,
            ),
            (
                "transient: retried",
                vec![
                    (web.clone(), Failed("503".into())),
                    (agent.clone(), Forbidden),
                ],
                false,
                false,
                reasons::ROLLOUT_RESTART_FAILED,
            ),
        ];
        for (what, outcomes, done, ok, reason) in cases {
            let c = conclude(T2, &outcomes);
            assert_eq!(
                (c.done, c.ok, c.reason),
                (done, ok, reason),
                "{what}: {}",
                c.message
            );
        }
        let c = conclude(T2, &[(agent, NotFound)]);
        assert!(c.message.contains("DaemonSet/agent"), "{}", c.message);
    }

    #[test]
    fn budget_spreads_a_wave_over_windows() {
        let b = RestartBudget::new(3, Duration::from_secs(60));
        let t0 = ts(T1);
        assert_eq!(b.try_take(t0, 2), Ok(()));
        assert_eq!(b.try_take(t0, 1), Ok(()));
        // Spent: wait for the rest of the window.
        let later = t0.checked_add(Duration::from_secs(20)).unwrap();
        assert_eq!(b.try_take(later, 1), Err(Duration::from_secs(40)));
        // A new window.
        let next = t0.checked_add(Duration::from_secs(60)).unwrap();
        assert_eq!(b.try_take(next, 2), Ok(()));
        assert_eq!(b.try_take(next, 2), Err(Duration::from_secs(60)));
        // More targets than the budget: alone in a fresh window.
        let b = RestartBudget::new(3, Duration::from_secs(60));
        assert_eq!(b.try_take(t0, 16), Ok(()));
        assert!(b.try_take(t0, 1).is_err());
    }
}
