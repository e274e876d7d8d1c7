//! Conditions and status writes: conditions keyed by type whose `lastTransitionTime`
//! moves only when the status value changes, and status written only when something
//! changed (a write re-triggers the watch and costs an API call).
//!
//! Status belongs to the operator alone, so a write replaces it whole with a JSON patch.
//! A server-side apply said the same but cost the API server about half again as much
//! CPU per write (the custom resource's schema is walked to merge field ownership): at
//! thousands of new identities it was the largest cost of the whole reconcile.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicBool, Ordering};

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "acs-identity-operator";

/// Sets condition `type_`, keeping `lastTransitionTime` when the status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: jiff::Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    // The API server keeps whole seconds: a finer time would never compare equal to the
    // stored one, and every reconcile would write status again.
    let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// Where an object stands for kstatus (Argo CD, Flux): done, still working, or waiting for
/// a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// Nothing in progress and nothing for a person to do.
    Done { reason: &'a str, message: &'a str },
    /// Work toward the current spec is under way (`Reconciling=True`).
    Reconciling { reason: &'a str, message: &'a str },
    /// No progress without a person (`Stalled=True`).
    Stalled { reason: &'a str, message: &'a str },
}

/// Sets kstatus' `Reconciling` and `Stalled` from `progress`: each is written True when it
/// applies and, once present, False when it no longer does; an object that never needed
/// one carries none (no write on upgrade for objects that are fine).
pub fn set_progress(
    conditions: &mut Vec<Condition>,
    progress: Progress<'_>,
    generation: Option<i64>,
    now: jiff::Timestamp,
) {
    use crate::api::conditions::types::{RECONCILING, STALLED};
    let (reconciling, stalled) = match progress {
        Progress::Done { .. } => (false, false),
        Progress::Reconciling { .. } => (true, false),
        Progress::Stalled { .. } => (false, true),
    };
    let (reason, message) = match progress {
        Progress::Done { reason, message }
        | Progress::Reconciling { reason, message }
        | Progress::Stalled { reason, message } => (reason, message),
    };
    for (type_, value) in [(RECONCILING, reconciling), (STALLED, stalled)] {
        if value || condition(conditions, type_).is_some() {
            let message = match (value, progress) {
                (true, _) | (false, Progress::Done { .. }) => message.to_string(),
                (false, _) if type_ == RECONCILING => format!("waiting for a person: {message}"),
                (false, _) => "nothing needs a person".to_string(),
            };
            set_condition(conditions, type_, value, reason, message, generation, now);
        }
    }
}

pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    condition(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Replaces status with `status` when it differs from `current`; returns the object as
/// written (its resourceVersion), or `None` when nothing changed. With `expected_rv` the
/// write is conditional on the object's resourceVersion: a status someone wrote after the
/// one the caller decided from is never overwritten (the API server answers 409, or 422
/// to the JSON patch used where RBAC allows no PUT; see [`precondition_failed`]).
pub async fn replace_status<K, S>(
    api: &Api<K>,
    name: &str,
    current: Option<&S>,
    status: &S,
    expected_rv: Option<&str>,
) -> Result<Option<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(None);
    }
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    if let Some(rv) = expected_rv {
        match put_status(api, name, rv, status, &params).await {
            // RBAC written for the JSON patch (before 0.2) grants `patch` on the status
            // subresource but not `update`: the patch below still works there.
            Err(kube::Error::Api(e)) if rbac_refused_update(&e) => put_forbidden(&e.message),
            written => return written.map(Some),
        }
    }
    let mut ops = vec![];
    if let Some(rv) = expected_rv {
        ops.push(
            serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
        );
    }
    ops.push(serde_json::json!({"op": "add", "path": "/status", "value": status}));
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    let written = api
        .patch_status(
            name,
            &PatchParams {
                field_manager: params.field_manager,
                ..Default::default()
            },
            &Patch::<()>::Json(patch),
        )
        .await?;
    Ok(Some(written))
}

/// Said once per process: each status write then costs a refused PUT and a patch, which
/// the chart's Role (granting `update`) avoids.
static PUT_FORBIDDEN_SAID: AtomicBool = AtomicBool::new(false);

fn put_forbidden(message: &str) {
    if !PUT_FORBIDDEN_SAID.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            error = %message,
            "RBAC refuses `update` on the status subresource; writing status with a JSON patch after each refused PUT (grant `update`, as the chart's Role does)"
        );
    } else {
        tracing::debug!(error = %message, "status PUT forbidden; writing status with a JSON patch");
    }
}

/// RBAC's refusal of the verb, not an admission policy's denial (also a 403 Forbidden),
/// which a patch would meet again.
fn rbac_refused_update(e: &kube::core::Status) -> bool {
    e.code == 403 && e.reason == "Forbidden" && e.message.contains("cannot update resource")
}

/// A PUT of the status subresource carrying only the object's name, its resourceVersion
/// and the status: the API server keeps everything else of the stored object. It costs
/// the API server less than the JSON patch with a `test` of the resourceVersion that it
/// replaces, which was applied by encoding the stored object, patching and decoding it
/// again (5.4 % of kube-apiserver's time creating 5,000 identities, issue 19).
async fn put_status<K, S>(
    api: &Api<K>,
    name: &str,
    rv: &str,
    status: &S,
    params: &PostParams,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let mut metadata = serde_json::json!({"name": name, "resourceVersion": rv});
    if let Some(ns) = api.namespace() {
        metadata["namespace"] = ns.into();
    }
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
        "status": status,
    });
    let mut req = kube::core::Request::new(api.resource_url())
        .replace_subresource(
            "status",
            name,
            params,
            serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?,
        )
        .map_err(kube::Error::BuildRequest)?;
    req.extensions_mut().insert("replace_status");
    api.clone().into_client().request::<K>(req).await
}

/// What kube-apiserver answers (422, reason `Invalid`, no details) when a JSON patch's
/// `test` operation fails: its generic text, unlike a validation error or an admission
/// denial, which name the field or the policy.
const FAILED_PATCH_TEST: &str = "the server rejected our request due to an error in our request";

/// Whether a write failed on its precondition (a JSON-patch `test`, 422, or a
/// resourceVersion conflict, 409): someone else wrote the object since it was read. An
/// admission policy denying the write is not one (it is retried with backoff).
pub fn precondition_failed(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == 409
        || (r.code == 422 && r.reason == "Invalid" && r.message == FAILED_PATCH_TEST))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure as the API server answers it.
    fn status(code: u16, reason: &str, message: &str) -> kube::core::Status {
        serde_json::from_value(serde_json::json!({
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }))
        .expect("a Status")
    }

    #[test]
    fn only_rbac_refusing_the_update_verb_falls_back_to_a_patch() {
        let cases = [
            (
                403,
                "Forbidden",
                "communicationidentities.acs-operator.dev \"app\" is forbidden: User \"system:serviceaccount:ns:op\" cannot update resource \"communicationidentities/status\" in API group \"acs-operator.dev\" in the namespace \"ns\"",
                true,
            ),
            (
                403,
                "Forbidden",
                "communicationidentities.acs-operator.dev \"app\" is forbidden: ValidatingAdmissionPolicy 'deny' with binding 'deny' denied request: no",
                false,
            ),
            (409, "Conflict", "the object has been modified", false),
            (422, "Invalid", "cannot update resource", false),
        ];
        for (code, reason, message, want) in cases {
            assert_eq!(
                rbac_refused_update(&status(code, reason, message)),
                want,
                "{code} {message}"
            );
        }
    }

    #[test]
    fn only_a_failed_patch_test_or_a_conflict_is_a_precondition_failure() {
        let api = |code: u16, reason: &str, message: &str| {
            kube::Error::Api(Box::new(status(code, reason, message)))
        };
        let cases = [
            (api(422, "Invalid", FAILED_PATCH_TEST), true),
            (api(409, "Conflict", "Operation cannot be fulfilled"), true),
            (
                api(
                    422,
                    "Invalid",
                    "ValidatingAdmissionPolicy 'p' with binding 'p' denied request: status writes denied by test",
                ),
                false,
            ),
            (
                api(
                    422,
                    "Invalid",
                    "CommunicationIdentity.acs-operator.dev \"a\" is invalid: status.userId: Invalid value",
                ),
                false,
            ),
            (api(403, "Forbidden", "forbidden"), false),
            (api(500, "InternalError", FAILED_PATCH_TEST), false),
        ];
        for (e, want) in cases {
            assert_eq!(precondition_failed(&e), want, "{e}");
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: jiff::Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let mut c = vec![];
        set_condition(&mut c, "Ready", true, "TokenIssued", "a", Some(1), t0);
        set_condition(&mut c, "Ready", true, "TokenIssued", "b", Some(2), t1);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Time(t0));
        assert_eq!(
            (c[0].message.as_str(), c[0].observed_generation),
            ("b", Some(2))
        );
        set_condition(&mut c, "Ready", false, "TokenExpired", "c", Some(2), t1);
        assert_eq!(c[0].last_transition_time, Time(t1));
        assert!(!is_true(&c, "Ready"));
    }

    #[test]
    fn progress_conditions_appear_when_needed_and_stay_as_false() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut c = vec![];
        let done = Progress::Done {
            reason: "TokenIssued",
            message: "ok",
        };
        set_progress(&mut c, done, Some(1), t0);
        assert!(c.is_empty(), "nothing written for an object that is fine");
        let working = Progress::Reconciling {
            reason: "Pending",
            message: "first token",
        };
        set_progress(&mut c, working, Some(1), t0);
        assert!(is_true(&c, "Reconciling"));
        assert!(condition(&c, "Stalled").is_none());
        let stuck = Progress::Stalled {
            reason: "Unauthorized",
            message: "401",
        };
        set_progress(&mut c, stuck, Some(2), t0);
        assert!(is_true(&c, "Stalled") && !is_true(&c, "Reconciling"));
        let r = condition(&c, "Reconciling").unwrap();
        assert_eq!(
            (r.reason.as_str(), r.observed_generation),
            ("Unauthorized", Some(2))
        );
        set_progress(&mut c, done, Some(2), t0);
        assert!(!is_true(&c, "Stalled") && !is_true(&c, "Reconciling"));
        assert_eq!(c.len(), 2);
    }
}
