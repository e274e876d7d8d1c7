//! Deletion of an identity: what to do with its ACS user, decided (purely) from the status
//! we last wrote rather than the cached object, then done (by [`super::act::clean_up`])
//! before the finalizer goes.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::api::conditions::reasons;
use crate::api::{CommunicationIdentity, DeletionPolicy};
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::controller::resolver::ResolvedService;

use super::act;
use super::decide::{ServiceFacts, custom_id_for};
use super::gather::{current_status, recorded_user, service_facts};

#[derive(Debug, Clone)]
pub struct CleanupFacts<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    /// `status.userId` as we last wrote it.
    pub user: Option<&'a str>,
    pub user_endpoint: Option<&'a str>,
    pub adopted: bool,
    pub policy: DeletionPolicy,
    /// The service that reaches the user's resource, if any; else why not.
    pub service: Result<ServiceFacts, String>,
    pub namespace_terminating: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupPlan {
    /// Nothing in ACS belongs to this identity.
    Done,
    /// An adopted user through a service that does not allow adoption: never touched.
    Untouched(String),
    Delete(String),
    Revoke(String),
    /// The id never reached status (crash after create): an idempotent create with the
    /// same custom id finds the user, which is then deleted.
    FindAndDelete(String),
    /// The namespace is going and the user cannot be reached: release, and say so loudly.
    Abandon(String),
    /// Keep the finalizer until a person fixes the service or removes it.
    Stuck(&'static str, String),
}

/// The command that releases the finalizer by hand, as the docs give it.
pub fn force_command(name: &str, namespace: &str) -> String {
    format!(
        "to abandon the user remove the finalizer: kubectl patch communicationidentity {name} -n {namespace} \
         --type=merge -p '{{\"metadata\":{{\"finalizers\":null}}}}'"
    )
}

/// What a failed cleanup step leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// Keep the finalizer and retry; `within` bounds the wait when the namespace is going.
    Retry { within: Option<std::time::Duration> },
    /// The namespace has been terminating for the bound: release, leaving the user.
    Release,
}

/// After a failed cleanup step: in a terminating namespace the finalizer is released once
/// the namespace has been terminating for `bound` (`terminating_for` unknown: the
/// namespace is gone from the cache, so it went long ago); elsewhere retry.
pub fn after_failure(
    terminating: bool,
    terminating_for: Option<std::time::Duration>,
    bound: std::time::Duration,
) -> Failed {
    if !terminating {
        return Failed::Retry { within: None };
    }
    match terminating_for {
        Some(t) if t < bound => Failed::Retry {
            within: Some(bound - t),
        },
        _ => Failed::Release,
    }
}

pub fn decide_cleanup(f: &CleanupFacts<'_>) -> CleanupPlan {
    let force = force_command(f.name, f.namespace);
    let Some(user) = f.user else {
        return match &f.service {
            Ok(s) if !f.adopted && f.policy == DeletionPolicy::Delete && s.custom_ids => {
                CleanupPlan::FindAndDelete(custom_id_for(f.uid))
            }
            _ => CleanupPlan::Done,
        };
    };
    let svc = match &f.service {
        Ok(s) => s,
        Err(problem) if f.namespace_terminating => {
            return CleanupPlan::Abandon(format!(
                "Cannot clean up ACS user {user} ({problem}); the namespace is being deleted, so the finalizer is \
                 released and the user is left in ACS"
            ));
        }
        Err(problem) => {
            return CleanupPlan::Stuck(
                reasons::CLEANUP_FAILED,
                format!(
                    "Cannot clean up ACS user {user}: {problem}. Fix the service or its credentials, or {force}"
                ),
            );
        }
    };
    if f.adopted && !svc.allow_adoption {
        return CleanupPlan::Untouched(format!(
            "ACS user {user} was adopted through {}, which does not allow adoption: it is left untouched",
            svc.name
        ));
    }
    if let Some(home) = f.user_endpoint
        && home != svc.endpoint
    {
        let msg = format!(
            "ACS user {user} lives on {home}, but {} now points at {}; it is never asked about this user",
            svc.name, svc.endpoint
        );
        return if f.namespace_terminating {
            CleanupPlan::Abandon(format!(
                "{msg}; the namespace is being deleted, so the user is left in ACS"
            ))
        } else {
            // Every cleanup that cannot go on says so with one reason and the command.
            CleanupPlan::Stuck(
                reasons::CLEANUP_FAILED,
                format!("{msg}. Point the service back at {home}, or {force}"),
            )
        };
    }
    match f.policy {
        DeletionPolicy::Delete => CleanupPlan::Delete(user.to_string()),
        DeletionPolicy::Retain => CleanupPlan::Revoke(user.to_string()),
    }
}

pub async fn cleanup(obj: Arc<CommunicationIdentity>, ctx: &Context) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let uid = obj.uid().unwrap_or_default();
    // Until the identity is gone: an alert on cleanup that does not finish reads it.
    if let Some(t) = &obj.metadata.deletion_timestamp {
        ctx.metrics.set_deletion_time(&ns, &name, t.0.as_second());
    }
    let oref = ObjectRef::from_obj(obj.as_ref());
    let remembered = ctx.memory.get(&oref, &uid);
    let mut status = current_status(ctx, &obj, &remembered)
        .await
        .map_err(Error::Kube)?;
    // The service may be gone with a terminating namespace: the last one this process
    // resolved still reaches the resource.
    // A service pointed elsewhere since: the one remembered still reaches the user's home.
    let home = status.user_endpoint.as_deref();
    let remembered_home = remembered
        .service
        .as_deref()
        .filter(|s| home.is_none_or(|h| h == s.endpoint))
        .cloned();
    let (resolved, problem): (Option<ResolvedService>, String) =
        match ctx.resolver.resolve(&obj).await {
            Ok(svc) if home.is_some_and(|h| h != svc.endpoint) && remembered_home.is_some() => {
                (remembered_home, String::new())
            }
            Ok(svc) => (Some(svc), String::new()),
            Err(e) => (remembered_home, e.to_string()),
        };
    // No user in status on a version without custom ids: the token Secret may record the
    // one created (a status write that failed after the create).
    if status.user_id.is_none()
        && obj.spec.existing_user_id.is_none()
        && let Some(svc) = resolved.as_ref().filter(|s| !s.client.supports_custom_id())
        && let Some(rec) = recorded_user(ctx, &obj).await
        && rec.endpoint == svc.endpoint
        && svc.client.verify_user_record(&uid, &rec.user, &rec.mark)
    {
        status.user_id = Some(rec.user);
        status.user_endpoint = Some(rec.endpoint);
    }
    let service = match &resolved {
        Some(svc) => service_facts(&Ok(svc.clone())).map_err(|p| p.message),
        None => Err(problem),
    };
    let namespace = ctx.stores.namespace(&ns);
    let terminating = namespace
        .as_ref()
        .is_none_or(|n| n.metadata.deletion_timestamp.is_some());
    let terminating_for = namespace
        .as_ref()
        .and_then(|n| n.metadata.deletion_timestamp.as_ref())
        .map(|t| crate::controller::renewal::to_std(ctx.clock.now().duration_since(t.0)));
    let facts = CleanupFacts {
        namespace: &ns,
        name: &name,
        uid: &uid,
        user: status.user_id.as_deref(),
        user_endpoint: status.user_endpoint.as_deref(),
        adopted: obj.spec.existing_user_id.is_some(),
        policy: obj.spec.effective_deletion_policy(),
        service,
        namespace_terminating: terminating,
    };
    let plan = decide_cleanup(&facts);
    // ACS calls take a place in the resource's and namespace's share, and speak for this
    // identity so that a quota turn is reserved for it instead of waited for.
    let acs_step = matches!(
        plan,
        CleanupPlan::Delete(_) | CleanupPlan::Revoke(_) | CleanupPlan::FindAndDelete(_)
    );
    let share = match (&resolved, acs_step) {
        (Some(svc), true) => match ctx.shares.try_enter(&svc.endpoint, &ns, &oref) {
            Some(share) => Some(share),
            None => return Err(Error::Waiting(crate::controller::shares::FULL_SHARE_RETRY)),
        },
        _ => None,
    };
    let client = resolved
        .as_ref()
        .map(|s| std::sync::Arc::new(s.client.for_caller(&uid)));
    act::clean_up(
        ctx,
        &obj,
        &status,
        &plan,
        client,
        resolved.as_ref().map(|s| s.endpoint.clone()),
        share,
        (terminating, terminating_for),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(endpoint: &str, allow_adoption: bool, custom_ids: bool) -> Result<ServiceFacts, String> {
        Ok(ServiceFacts {
            name: "ClusterCommunicationService `shared`".into(),
            endpoint: endpoint.into(),
            allow_adoption,
            custom_ids,
            token_scopes: None,
        })
    }

    fn facts<'a>() -> CleanupFacts<'a> {
        CleanupFacts {
            namespace: "team-a",
            name: "app",
            uid: "uid-1",
            user: Some("8:acs:u"),
            user_endpoint: Some("https://a"),
            adopted: false,
            policy: DeletionPolicy::Delete,
            service: svc("https://a", false, true),
            namespace_terminating: false,
        }
    }

    /// Any failure in a terminating namespace ends in releasing the finalizer once the
    /// namespace has been terminating for the bound; elsewhere it never does.
    #[test]
    fn failed_cleanup_is_released_after_the_bound_only_in_a_terminating_namespace() {
        use std::time::Duration;
        let bound = Duration::from_secs(300);
        let rows = [
            (
                "namespace alive",
                false,
                None,
                Failed::Retry { within: None },
            ),
            (
                "alive, deletion long ago is irrelevant",
                false,
                Some(Duration::from_secs(9999)),
                Failed::Retry { within: None },
            ),
            (
                "terminating for 60 s",
                true,
                Some(Duration::from_secs(60)),
                Failed::Retry {
                    within: Some(Duration::from_secs(240)),
                },
            ),
            (
                "terminating for the bound",
                true,
                Some(bound),
                Failed::Release,
            ),
            ("namespace gone from the cache", true, None, Failed::Release),
        ];
        for (name, terminating, since, want) in rows {
            assert_eq!(after_failure(terminating, since, bound), want, "{name}");
        }
    }

    #[test]
    fn cleanup_table() {
        let base = facts();
        type Row<'a> = (&'a str, CleanupFacts<'a>, fn(&CleanupPlan) -> bool);
        let rows: Vec<Row<'_>> = vec![
            ("delete policy deletes", base.clone(), |p| {
                *p == CleanupPlan::Delete("8:acs:u".into())
            }),
            (
                "retain policy revokes",
                CleanupFacts {
                    policy: DeletionPolicy::Retain,
                    ..base.clone()
                },
                |p| *p == CleanupPlan::Revoke("8:acs:u".into()),
            ),
            (
                "unrecorded user with custom ids is found and deleted",
                CleanupFacts {
                    user: None,
                    user_endpoint: None,
                    ..base.clone()
                },
                |p| *p == CleanupPlan::FindAndDelete("k8s-uid-1".into()),
            ),
            (
                "unrecorded user without custom ids: nothing known",
                CleanupFacts {
                    user: None,
                    service: svc("https://a", false, false),
                    ..base.clone()
                },
                |p| *p == CleanupPlan::Done,
            ),
            (
                "unrecorded adopted user is never searched",
                CleanupFacts {
                    user: None,
                    adopted: true,
                    ..base.clone()
                },
                |p| *p == CleanupPlan::Done,
            ),
            (
                "adopted user through a service that forbids adoption is untouched",
                CleanupFacts {
                    adopted: true,
                    ..base.clone()
                },
                |p| matches!(p, CleanupPlan::Untouched(_)),
            ),
            (
                "adopted user through a service that allows it is handled",
                CleanupFacts {
                    adopted: true,
                    policy: DeletionPolicy::Retain,
                    service: svc("https://a", true, true),
                    ..base.clone()
                },
                |p| *p == CleanupPlan::Revoke("8:acs:u".into()),
            ),
            (
                "another resource is never asked about the user",
                CleanupFacts {
                    service: svc("https://b", false, true),
                    ..base.clone()
                },
                |p| {
                    matches!(p, CleanupPlan::Stuck(r, m) if *r == reasons::CLEANUP_FAILED
                        && m.contains("now points at https://b") && m.contains("finalizers\":null"))
                },
            ),
            (
                "service changed in a terminating namespace: released",
                CleanupFacts {
                    service: svc("https://b", false, true),
                    namespace_terminating: true,
                    ..base.clone()
                },
                |p| matches!(p, CleanupPlan::Abandon(_)),
            ),
            (
                "no service: stuck with the command to force removal",
                CleanupFacts {
                    service: Err("gone".into()),
                    ..base.clone()
                },
                |p| matches!(p, CleanupPlan::Stuck(_, m) if m.contains("kubectl patch communicationidentity app -n team-a")),
            ),
            (
                "no service in a terminating namespace: released loudly",
                CleanupFacts {
                    service: Err("gone".into()),
                    namespace_terminating: true,
                    ..base.clone()
                },
                |p| matches!(p, CleanupPlan::Abandon(m) if m.contains("8:acs:u")),
            ),
        ];
        for (name, f, ok) in rows {
            let plan = decide_cleanup(&f);
            assert!(ok(&plan), "{name}: got {plan:?}");
        }
    }
}
