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
use super::steps::{SecretWrite, StepError};

/// A Secret written this recently but absent from the cache is taken as "the watch has
/// not delivered it yet" rather than deleted; after this, it is read to find out.
const CACHE_LAG: std::time::Duration = std::time::Duration::from_secs(30);

/// The status to decide from, never older than our last write: the cached one, our copy
/// while the cache lags, or (a lagging cache after the copy was dropped: a relist from a
/// lagging watch cache) the identity read from the API server. A new leader's or a
/// restarted process's first list knows no write of ours; it is a consistent list
/// (`run.rs`), and every status write carries a precondition. A user this process created
/// and no status holds yet is filled in.
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
            token_scopes: crate::acs::api_versions::lookup(svc.client.api_version())
                .map(|v| v.token_scopes),
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
    custom_ids: bool,
    now: Timestamp,
) -> Result<SecretObservation, StepError> {
    let ns = identity.namespace().unwrap_or_default();
    let uid = identity.uid().unwrap_or_default();
    let status_is_ours = remembered.status_is_ours(status);
    let cached = ctx.stores.secret(&ns, secret_name);
    if let Some(meta) = &cached
        && !remembered.secret_seen
        && freshness(meta.resource_version(), remembered.secret_rv.as_deref()) == Freshness::Same
    {
        ctx.memory.secret_seen(&ObjectRef::from_obj(identity), &uid);
    }
    let seen = cached.as_ref().map(|meta| CachedSecret {
        owned: meta.owned_by(&uid),
        resource_version: meta.resource_version().map(str::to_string),
    });
    let creates = SecretWrite::for_facts(&SecretFacts::Missing, identity) == SecretWrite::Create;
    let first_token = custom_ids && first_token(status, remembered);
    let verdict = trust_cache(
        seen.as_ref(),
        remembered,
        status_is_ours,
        status.user_id.is_some(),
        first_token,
        creates,
        now,
    );
    match (verdict, &cached) {
        (CacheVerdict::NotOwned, _) => {
            return Ok(SecretObservation::of(SecretFacts::NotOwned, None));
        }
        (CacheVerdict::Ours { lagging }, Some(meta)) => {
            let template_current = lagging || meta.template_current(identity);
            return Ok(SecretObservation::of(
                SecretFacts::Ours {
                    intact: true,
                    template_current,
                },
                meta.issued_at(),
            ));
        }
        (CacheVerdict::Missing, _) => {
            return Ok(SecretObservation::of(SecretFacts::Missing, None));
        }
        (CacheVerdict::NotSeenYet, _) => {
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
        (CacheVerdict::Ours { .. } | CacheVerdict::Read, _) => {}
    }
    tracing::debug!(
        namespace = %ns,
        secret = %secret_name,
        cached = cached.is_some(),
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

/// What the owned-Secret cache shows of the token Secret.
#[derive(Debug, Clone)]
pub struct CachedSecret {
    /// It carries this identity's owner reference.
    pub owned: bool,
    pub resource_version: Option<String>,
}

/// Whether the cached token Secret can be decided from without a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheVerdict {
    /// The cached Secret belongs to someone else: never written over.
    NotOwned,
    /// Status is ours and the cache holds our last write of the Secret, or a version older
    /// than it (`lagging`: the write is ours, its template was current when written).
    Ours { lagging: bool },
    /// Absent from the cache although we wrote it moments ago and the cache has never
    /// shown that write: the cache lags; taken on trust and looked at again soon.
    NotSeenYet,
    /// Absent from the cache for an identity whose Secret will be written by a plain
    /// create, and either at its first token on an api-version with custom ids (its create
    /// finds the user an earlier attempt made, so no user can leak) or read as absent by
    /// this process moments ago: taken as missing without a read. The create is refused
    /// (409) if a Secret has the name (the cache holds only Secrets with our label: someone
    /// else's, or ours from another replica the cache has not shown yet), which is then
    /// read to tell the two apart. At the cost, in that rare case, of the token the create
    /// could not store: one GET fewer per new identity (issue 19).
    Missing,
    /// Anything else (someone wrote after us, status is not ours, nothing remembered, a
    /// deletion): read it from the API server.
    Read,
}

/// An identity at its very first token: no user or token in status, nothing remembered
/// (a write, a created user, a request, a failed status write).
pub fn first_token(status: &CommunicationIdentityStatus, remembered: &Remembered) -> bool {
    status.user_id.is_none()
        && !super::decide::had_token(status)
        && remembered.secret_rv.is_none()
        && remembered.secret_written_at.is_none()
        && remembered.created_user.is_none()
        && remembered.unrecorded.is_none()
        && remembered.last_token_request.is_none()
}

/// The one rule that says whether the Secret cache can be trusted (issue 16, 19: no GET
/// per identity when status, Secret and memory agree; a GET whenever they might not).
pub fn trust_cache(
    cached: Option<&CachedSecret>,
    remembered: &Remembered,
    status_is_ours: bool,
    status_has_user: bool,
    first_token: bool,
    creates: bool,
    now: Timestamp,
) -> CacheVerdict {
    match cached {
        Some(c) if !c.owned => CacheVerdict::NotOwned,
        Some(c) => {
            match freshness(
                c.resource_version.as_deref(),
                remembered.secret_rv.as_deref(),
            ) {
                Freshness::Same if status_is_ours && status_has_user => {
                    CacheVerdict::Ours { lagging: false }
                }
                Freshness::Older if status_is_ours && status_has_user => {
                    CacheVerdict::Ours { lagging: true }
                }
                _ => CacheVerdict::Read,
            }
        }
        None => {
            let recent = remembered
                .secret_written_at
                .is_some_and(|t| now.duration_since(t).unsigned_abs() < CACHE_LAG);
            let read_absent = remembered
                .secret_absent_at
                .is_some_and(|t| now.duration_since(t).unsigned_abs() < CACHE_LAG);
            if creates && (first_token || read_absent) {
                CacheVerdict::Missing
            } else if status_is_ours
                && remembered.secret_rv.is_some()
                && !remembered.secret_seen
                && recent
            {
                CacheVerdict::NotSeenYet
            } else {
                CacheVerdict::Read
            }
        }
    }
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
        ctx.memory
            .secret_absent(&ObjectRef::from_obj(identity), &uid, ctx.clock.now());
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

/// The user the token Secret records, if it can be read.
pub(super) async fn recorded_user(
    ctx: &Context,
    obj: &CommunicationIdentity,
) -> Option<crate::controller::secret::RecordedUser> {
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let name = obj
        .effective_secret_name()
        .unwrap_or(&obj.name_any())
        .to_string();
    let secret = api.get_opt(&name).await.ok().flatten()?;
    if !crate::controller::secret::owned_by(&secret.metadata, &obj.uid().unwrap_or_default()) {
        return None;
    }
    crate::controller::secret::recorded_user(&secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn the_secret_cache_is_trusted_only_when_status_secret_and_memory_agree() {
        let wrote = |rv: &str, seen: bool| Remembered {
            secret_rv: Some(rv.into()),
            secret_written_at: Some(ts(0)),
            secret_seen: seen,
            ..Remembered::default()
        };
        let cached = |owned: bool, rv: &str| {
            Some(CachedSecret {
                owned,
                resource_version: Some(rv.into()),
            })
        };
        let nothing = Remembered::default();
        use CacheVerdict::*;
        // (cached, remembered, status ours, status has user, now) -> verdict
        for (row, c, r, ours, user, now, want) in [
            // a first token: absent means missing (the create refuses a foreign Secret)
            (0, None, nothing.clone(), true, false, ts(1), Missing),
            (
                1,
                cached(true, "10"),
                wrote("10", true),
                true,
                true,
                ts(1),
                Ours { lagging: false },
            ),
            (
                2,
                cached(true, "9"),
                wrote("10", false),
                true,
                true,
                ts(1),
                Ours { lagging: true },
            ),
            // someone wrote after us: read what they wrote
            (
                3,
                cached(true, "11"),
                wrote("10", true),
                true,
                true,
                ts(1),
                Read,
            ),
            // a status that is not ours (edited, older, another writer's)
            (
                4,
                cached(true, "10"),
                wrote("10", true),
                false,
                true,
                ts(1),
                Read,
            ),
            // no user in status: the read may find the user the Secret records
            (
                5,
                cached(true, "10"),
                wrote("10", true),
                true,
                false,
                ts(1),
                Read,
            ),
            // a fresh process remembers nothing (restarts confirm through warm's LIST)
            (
                6,
                cached(true, "10"),
                nothing.clone(),
                true,
                true,
                ts(1),
                Read,
            ),
            (
                7,
                cached(false, "10"),
                wrote("10", true),
                true,
                true,
                ts(1),
                NotOwned,
            ),
            // resourceVersions that are not numbers are never compared
            (
                8,
                cached(true, "a"),
                wrote("b", true),
                true,
                true,
                ts(1),
                Read,
            ),
            // absent: our write moments ago the cache has not shown yet
            (9, None, wrote("10", false), true, true, ts(1), NotSeenYet),
            // absent after the cache showed our write: deleted
            (10, None, wrote("10", true), true, true, ts(1), Read),
            // absent long after our write: deleted (or the cache is broken): read
            (11, None, wrote("10", false), true, true, ts(31), Read),
            (12, None, wrote("10", false), false, true, ts(1), Read),
            (13, None, nothing, true, true, ts(1), Read),
        ] {
            let first = first_token(&CommunicationIdentityStatus::default(), &r) && !user;
            assert_eq!(
                trust_cache(c.as_ref(), &r, ours, user, first, true, now),
                want,
                "row {row}"
            );
        }
        // A first token whose Secret would be applied (a template) is read: an apply
        // would take over someone else's Secret.
        assert_eq!(
            trust_cache(
                None,
                &Remembered::default(),
                true,
                false,
                true,
                false,
                ts(1)
            ),
            Read
        );
        // Read as absent moments ago: taken as missing again only when the write would be
        // a plain create (which refuses a taken name), and only for a while.
        let absent = Remembered {
            secret_absent_at: Some(ts(0)),
            ..Remembered::default()
        };
        for (creates, now, want) in [
            (true, ts(5), Missing),
            (false, ts(5), Read),
            (true, ts(31), Read),
        ] {
            assert_eq!(
                trust_cache(None, &absent, true, true, false, creates, now),
                want,
                "creates={creates} now={now}"
            );
        }
    }

    #[test]
    fn only_an_identity_at_its_very_first_token_skips_the_read() {
        let blank = CommunicationIdentityStatus::default();
        let with_user = CommunicationIdentityStatus {
            user_id: Some("8:acs:u".into()),
            ..Default::default()
        };
        let had_token = CommunicationIdentityStatus {
            last_token_issued_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(0))),
            ..Default::default()
        };
        let nothing = Remembered::default();
        let remembered = [
            Remembered {
                secret_rv: Some("5".into()),
                ..Default::default()
            },
            Remembered {
                secret_written_at: Some(ts(0)),
                ..Default::default()
            },
            Remembered {
                created_user: Some(Box::new(("8:acs:u".into(), "https://a".into()))),
                ..Default::default()
            },
            Remembered {
                unrecorded: Some(Box::new(with_user.clone())),
                ..Default::default()
            },
            Remembered {
                last_token_request: Some(ts(0)),
                ..Default::default()
            },
        ];
        assert!(first_token(&blank, &nothing));
        assert!(!first_token(&with_user, &nothing), "status names a user");
        assert!(
            !first_token(&had_token, &nothing),
            "a token was issued once"
        );
        for (i, r) in remembered.iter().enumerate() {
            assert!(!first_token(&blank, r), "memory row {i}");
        }
    }
}
