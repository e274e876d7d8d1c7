//! The identity reconcile's decisions, as pure functions of plain inputs (cert-manager's
//! shape): [`decide`] maps what was gathered (spec, status, service, Secret, clock) to a
//! [`Plan`] — the step to take, the status to record, when to look again — through an
//! ordered chain of checks where the first that applies wins. The `record_*` functions say
//! what status becomes after each step, or after a failure. Every rule is a table test.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::conditions::{reasons, types};
use crate::api::{CommunicationIdentitySpec, CommunicationIdentityStatus, Scope};
use crate::controller::renewal::{
    Jitter, add, renewal_time, request_pending, requeue_after, to_std,
};
use crate::controller::status::{Progress, condition, is_true, set_condition, set_progress};

/// Even a fresh token is looked at again this often, to heal anything a missed event hid.
pub const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// While a foreign Secret holds our name, look again this often (its deletion is not
/// visible to the label-filtered Secret watch).
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(10);
/// Retry interval for problems a person must fix; a fix of the service, its credentials or
/// the identity triggers a reconcile at once anyway.
pub const SLOW_RETRY: Duration = Duration::from_secs(60);

/// The service as far as decisions go.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceFacts {
    /// `CommunicationService `x` in namespace `y``, for messages.
    pub name: String,
    pub endpoint: String,
    pub allow_adoption: bool,
    /// The api-version has idempotent creates (a custom id derived from the UID).
    pub custom_ids: bool,
    /// The token scopes the api-version publishes (`None`: a version the table lacks).
    pub token_scopes: Option<&'static [&'static str]>,
}

/// Why the service cannot be used now.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceProblem {
    pub reason: &'static str,
    pub message: String,
    /// The API server may answer next time.
    pub transient: bool,
    /// This identity may not use the service at all (namespace not selected, Secret outside
    /// the cluster resource namespace, insecure endpoint): not Ready, whatever the Secret holds.
    pub forbids_use: bool,
}

/// The token Secret as gathered (its content was verified against status when in doubt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFacts {
    Missing,
    /// A Secret of that name this identity does not own: never touched.
    NotOwned,
    Ours {
        /// Holds exactly the token, user, expiry and endpoint status describes.
        intact: bool,
        /// Labels and annotations follow the current `secretTemplate`.
        template_current: bool,
    },
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub now: Timestamp,
    pub uid: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a CommunicationIdentitySpec,
    pub secret_name: &'a str,
    pub renew_requested: Option<&'a str>,
    pub revoke_requested: Option<&'a str>,
    /// Authoritative status: the cached one, or our last write when the cache lags.
    pub status: &'a CommunicationIdentityStatus,
    pub service: Result<ServiceFacts, ServiceProblem>,
    pub secret: SecretFacts,
    /// The last time a token was requested (remembered, or the Secret's issued-at
    /// annotation), beside `status.lastTokenIssuedAt`.
    pub last_token_request: Option<Timestamp>,
    pub min_token_interval: Duration,
}

/// Why a new token is issued; the first that applies wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenReason {
    /// A revoke request is pending: revoke every token, then issue.
    RevokeRequested,
    /// No token yet (new user, or the last one was revoked).
    NoToken,
    SecretMissing,
    /// The Secret no longer holds what status says was written.
    SecretMismatch,
    Expired,
    ScopesChanged,
    LifetimeChanged,
    RenewRequested,
    RenewalDue,
}

impl TokenReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenReason::RevokeRequested => "RevokeRequested",
            TokenReason::NoToken => "NoToken",
            TokenReason::SecretMissing => "SecretMissing",
            TokenReason::SecretMismatch => "SecretMismatch",
            TokenReason::Expired => "Expired",
            TokenReason::ScopesChanged => "ScopesChanged",
            TokenReason::LifetimeChanged => "LifetimeChanged",
            TokenReason::RenewRequested => "RenewRequested",
            TokenReason::RenewalDue => "RenewalDue",
        }
    }
}

/// Where the token's user comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserPlan {
    /// Recorded in status.
    Existing(String),
    /// `spec.existingUserId`, through a service that allows adoption.
    Adopt(String),
    /// Create one with the token in the same call; `custom_id` makes it idempotent.
    Create { custom_id: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPlan {
    pub user: UserPlan,
    /// Revoke every token of the user first, handling this request value.
    pub revoke: Option<String>,
    pub reason: TokenReason,
    pub scopes: BTreeSet<Scope>,
    pub lifetime_minutes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Record `status` (if it changed) and wait.
    Wait,
    Token(TokenPlan),
    /// Revoke now; the token after it waits for the floor.
    RevokeOnly {
        user: String,
        request: String,
    },
    /// Re-write the Secret's labels and annotations with the token it holds.
    RefreshSecretMetadata,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub step: Step,
    /// The status to record when the step is `Wait`; otherwise the base the step's
    /// `record_*` function builds on.
    pub status: CommunicationIdentityStatus,
    pub requeue: Duration,
    /// A Warning event worth publishing (only when the condition it describes is new).
    pub warning: Option<(&'static str, String)>,
    /// The problem this pass found without acting (the service, its credentials, the
    /// spec, a foreign Secret), by reason: counted as a renewal failure when the identity
    /// had a token to renew ([`had_token`]), as a failed step is.
    pub failure: Option<&'static str>,
}

/// A custom id derived from the object's UID: a create retried after a crash returns the
/// same user instead of a new one (api-versions that support custom ids).
pub fn custom_id_for(uid: &str) -> String {
    format!("k8s-{uid}")
}

/// Whole seconds: what status shows and what workloads parse most easily; status and the
/// Secret must agree to the second. Truncated, never rounded up: ACS sends 100 ns ticks and
/// the token's JWT `exp` is the whole second, so a rounded `expiresOn` would claim the
/// token valid up to half a second after it expired.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

pub fn rfc3339(t: Timestamp) -> String {
    whole_seconds(t).to_string()
}

/// The Secret holds a token that status describes, not revoked and not expired.
pub fn token_valid(
    status: &CommunicationIdentityStatus,
    secret: SecretFacts,
    now: Timestamp,
) -> bool {
    matches!(secret, SecretFacts::Ours { intact: true, .. })
        && status.token_expires_on.as_ref().is_some_and(|t| t.0 > now)
}

/// The first reason a new token is needed, if any.
pub fn token_reason(
    f: &Facts<'_>,
    lifetime: Duration,
    renewal_at: Option<Timestamp>,
) -> Option<TokenReason> {
    let st = f.status;
    if request_pending(
        f.revoke_requested,
        st.last_revoke_request_handled.as_deref(),
    ) {
        return Some(TokenReason::RevokeRequested);
    }
    let Some(expires) = st.token_expires_on.as_ref().map(|t| t.0) else {
        return Some(TokenReason::NoToken);
    };
    if st.user_id.is_none() {
        return Some(TokenReason::NoToken);
    }
    match f.secret {
        SecretFacts::Missing => return Some(TokenReason::SecretMissing),
        SecretFacts::Ours { intact: false, .. } => return Some(TokenReason::SecretMismatch),
        _ => {}
    }
    if expires <= f.now {
        return Some(TokenReason::Expired);
    }
    if st.token_scopes.as_ref() != Some(&f.spec.scopes) {
        return Some(TokenReason::ScopesChanged);
    }
    let recorded = st
        .token_lifetime
        .as_deref()
        .and_then(|l| crate::api::duration::parse_duration(l).ok());
    if recorded.is_some_and(|l| l != lifetime) {
        return Some(TokenReason::LifetimeChanged);
    }
    if request_pending(f.renew_requested, st.last_renew_request_handled.as_deref()) {
        return Some(TokenReason::RenewRequested);
    }
    if renewal_at.is_some_and(|r| r <= f.now) {
        return Some(TokenReason::RenewalDue);
    }
    None
}

/// The earliest time the next token may be requested.
pub fn token_floor(f: &Facts<'_>) -> Option<Timestamp> {
    let issued = f.status.last_token_issued_at.as_ref().map(|t| t.0);
    let last = match (issued, f.last_token_request) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    last.map(|t| add(t, f.min_token_interval))
}

/// The renewal time of the token in force (from its real expiry, with jitter).
pub fn due_at(f: &Facts<'_>, lifetime: Duration, renew_before: Duration) -> Option<Timestamp> {
    let st = f.status;
    let (issued, expires) = (
        st.last_token_issued_at.as_ref()?.0,
        st.token_expires_on.as_ref()?.0,
    );
    Some(
        renewal_time(
            issued,
            expires,
            lifetime,
            renew_before,
            Jitter::from_uid(f.uid),
        )
        .at,
    )
}

/// The renewal time of the token in force, never before the token floor.
pub fn renewal_at(f: &Facts<'_>, lifetime: Duration, renew_before: Duration) -> Option<Timestamp> {
    let at = due_at(f, lifetime, renew_before)?;
    Some(match token_floor(f) {
        Some(floor) if floor > at => floor,
        _ => at,
    })
}

/// Decides the next step.
pub fn decide(f: &Facts<'_>) -> Plan {
    let mut plan = plan(f);
    settle(&mut plan.status, f);
    plan
}

/// The spec's scopes the service's api-version does not offer, as a message.
pub fn scopes_not_offered(
    spec: &crate::api::CommunicationIdentitySpec,
    svc: &ServiceFacts,
) -> Option<String> {
    let offered = svc.token_scopes?;
    let missing: Vec<&str> = spec
        .scopes
        .iter()
        .map(|s| s.as_str())
        .filter(|s| !offered.contains(s))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "spec.scopes has {}, which the api-version of {} does not offer (it offers {}): \
             remove the scope, or use a service whose spec.apiVersion is 2023-10-01 or later",
            missing.join(", "),
            svc.name,
            offered.join(", ")
        )
    })
}

fn plan(f: &Facts<'_>) -> Plan {
    // status.observedGeneration is not set here: [`settle`] advances it only once the
    // Secret holds a token for this generation's spec.
    let mut st = f.status.clone();
    let valid = token_valid(f.status, f.secret, f.now);

    // 1. A spec admission would refuse (stored before a rule existed).
    let (lifetime, renew_before) = match (f.spec.token_lifetime(), f.spec.renew_before()) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(e), _) | (_, Err(e)) => {
            return blocked(
                f,
                st,
                reasons::INVALID_SPEC,
                e.to_string(),
                false,
                SLOW_RETRY,
            );
        }
    };

    // 2. The service: found, allowed, credentials usable.
    let svc = match &f.service {
        Ok(s) => s,
        Err(p) => {
            let retry = if p.transient {
                Duration::from_secs(5)
            } else {
                SLOW_RETRY
            };
            return blocked(f, st, p.reason, p.message.clone(), p.forbids_use, retry);
        }
    };
    // 2b. Scopes the service's api-version does not have: ACS would refuse every token
    // (400), so a person must change the spec or the service.
    if let Some(msg) = scopes_not_offered(f.spec, svc) {
        return blocked(f, st, reasons::INVALID_SPEC, msg, false, SLOW_RETRY);
    }

    // 3. Adoption is the service's decision.
    if f.spec.existing_user_id.is_some() && !svc.allow_adoption {
        let msg = format!(
            "spec.existingUserId adopts an existing ACS user, which {} does not allow (spec.allowAdoption is false). \
             Ask the platform team to set spec.allowAdoption: true on the service, or create the identity without \
             existingUserId",
            svc.name
        );
        return blocked(f, st, reasons::ADOPTION_NOT_ALLOWED, msg, true, SLOW_RETRY);
    }

    // 4. A user belongs to one ACS resource: never ask another for its tokens.
    if let (Some(user), Some(home)) = (&st.user_id, &st.user_endpoint)
        && *home != svc.endpoint
    {
        let msg = format!(
            "ACS user {user} lives on {home}, but {} now points at {}; tokens for this user are only requested \
             from {home}. Point the service back at {home}, or create a new CommunicationIdentity for the new resource",
            svc.name, svc.endpoint
        );
        return blocked(f, st, reasons::SERVICE_CHANGED, msg, true, SLOW_RETRY);
    }

    // 5. A Secret of our name that is not ours is never overwritten.
    if f.secret == SecretFacts::NotOwned {
        let warning = record_conflict(&mut st, f, f.now);
        return Plan {
            step: Step::Wait,
            status: st,
            requeue: CONFLICT_RECHECK,
            warning,
            failure: Some(reasons::SECRET_CONFLICT),
        };
    }
    if st
        .conditions
        .iter()
        .any(|c| c.type_ == types::SECRET_CONFLICT)
    {
        let msg = format!("Secret `{}` is owned by this identity", f.secret_name);
        set_condition(
            &mut st.conditions,
            types::SECRET_CONFLICT,
            false,
            reasons::SECRET_OWNED,
            msg,
            f.generation,
            f.now,
        );
    }

    // 6. Is a token needed, and may one be requested now?
    // Due is judged without the floor (a renewal that failed is still due); the floor
    // only says when the next attempt may go.
    let renewal = renewal_at(f, lifetime, renew_before);
    let reason = token_reason(f, lifetime, due_at(f, lifetime, renew_before));
    let floor = token_floor(f).filter(|t| *t > f.now);
    if let Some(reason) = reason {
        let user = match (&st.user_id, &f.spec.existing_user_id) {
            (Some(u), _) => UserPlan::Existing(u.clone()),
            (None, Some(adopt)) => UserPlan::Adopt(adopt.clone()),
            (None, None) => UserPlan::Create {
                custom_id: svc.custom_ids.then(|| custom_id_for(f.uid)),
            },
        };
        let revoke = (reason == TokenReason::RevokeRequested)
            .then(|| f.revoke_requested.unwrap_or_default().trim().to_string());
        if let Some(next) = floor {
            // At most one token per interval, whatever ACS returned or what failed; a
            // revoke itself is never delayed.
            if let (Some(request), UserPlan::Existing(user)) = (&revoke, &user) {
                return Plan {
                    step: Step::RevokeOnly {
                        user: user.clone(),
                        request: request.clone(),
                    },
                    status: st,
                    requeue: requeue_after(f.now, next),
                    warning: None,
                    failure: None,
                };
            }
            return wait_for_floor(f, st, reason, next, valid, lifetime);
        }
        return Plan {
            step: Step::Token(TokenPlan {
                user,
                // Kept for a new user too: a create that finds the user an interrupted
                // attempt made (custom id) must still revoke the tokens it has.
                revoke,
                reason,
                scopes: f.spec.scopes.clone(),
                lifetime_minutes: u32::try_from(lifetime.as_secs() / 60).unwrap_or(1440),
            }),
            status: st,
            requeue: Duration::ZERO,
            warning: None,
            failure: None,
        };
    }

    // 7. The token is good: keep the Secret's metadata in step with the template.
    let Some(renewal) = renewal else {
        // Unreachable: a token in force has issue and expiry times (token_reason).
        return blocked(
            f,
            st,
            reasons::PENDING,
            "waiting for a token".into(),
            false,
            SLOW_RETRY,
        );
    };
    st.renewal_time = Some(Time(whole_seconds(renewal)));
    if st.secret_name.is_none() {
        st.secret_name = Some(f.secret_name.to_string());
    }
    set_ready(&mut st, f, renewal);
    settle_renewal_failing(&mut st, f);
    let step = match f.secret {
        SecretFacts::Ours {
            template_current: false,
            ..
        } => Step::RefreshSecretMetadata,
        _ => Step::Wait,
    };
    Plan {
        step,
        status: st,
        requeue: requeue_after(f.now, renewal).min(MAX_REQUEUE),
        warning: None,
        failure: None,
    }
}

/// Reasons that need a person to act (kstatus `Stalled=True`): the credentials, the spec,
/// the service's policy or the cluster must change; retrying alone never helps. Problems
/// that heal on their own (ACS or the API server unavailable, throttling, a service not
/// created or not Ready yet, which its own `Stalled` explains) keep `Reconciling=True`.
pub const NEEDS_A_PERSON: &[&str] = &[
    reasons::UNAUTHORIZED,
    reasons::IDENTITY_NOT_OWNED,
    reasons::ADOPTION_NOT_ALLOWED,
    reasons::SECRET_CONFLICT,
    reasons::TOKEN_TOO_SHORT_LIVED,
    reasons::INVALID_SPEC,
    reasons::INSECURE_ENDPOINT,
    reasons::SECRET_NAMESPACE_NOT_ALLOWED,
    reasons::SERVICE_NOT_ALLOWED,
    reasons::SERVICE_CHANGED,
    reasons::USER_NOT_FOUND,
];

pub fn needs_a_person(reason: &str) -> bool {
    NEEDS_A_PERSON.contains(&reason)
}

/// The token status describes, measured against the current spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// No token (never issued, or revoked).
    None,
    Expired,
    /// Lives shorter than the token floor (`--min-token-interval`): it expires before the
    /// next token may be requested, so it is never reported Ready.
    TooShort(Duration),
    /// Valid, but issued for other scopes or another lifetime than the spec asks now.
    OtherSpec,
    /// Valid, long enough and for the current spec.
    Current,
}

pub fn token_state(
    st: &CommunicationIdentityStatus,
    spec: &CommunicationIdentitySpec,
    min_token_interval: Duration,
    now: Timestamp,
) -> TokenState {
    let Some(expires) = st.token_expires_on.as_ref().map(|t| t.0) else {
        return TokenState::None;
    };
    if expires <= now {
        return TokenState::Expired;
    }
    if let Some(granted) = granted_lifetime(st).filter(|g| *g < min_token_interval) {
        return TokenState::TooShort(granted);
    }
    let recorded = st
        .token_lifetime
        .as_deref()
        .and_then(|l| crate::api::duration::parse_duration(l).ok());
    let lifetime_matches = match (recorded, spec.token_lifetime()) {
        (Some(r), Ok(l)) => r == l,
        _ => true,
    };
    if st.token_scopes.as_ref() != Some(&spec.scopes) || !lifetime_matches {
        return TokenState::OtherSpec;
    }
    TokenState::Current
}

/// A token ACS just returned that must not go into the Secret: one already expired on
/// receipt (clock skew, a proxy), or one shorter than the token floor while the Secret
/// holds a valid token (the valid one is worth more). `None`: write it. Returns the
/// message of the refusal.
pub fn refuse_token(f: &Facts<'_>, issued_at: Timestamp, expires_on: Timestamp) -> Option<String> {
    let interval = crate::api::duration::format_duration(f.min_token_interval);
    if expires_on <= f.now {
        return Some(format!(
            "ACS returned a token that had already expired on receipt (expiresOn {}, received at {}): check the clocks \
             of this cluster and of any proxy in front of ACS; the token was not written to Secret {}",
            rfc3339(expires_on),
            rfc3339(f.now),
            f.secret_name
        ));
    }
    let granted = to_std(expires_on.duration_since(issued_at));
    if granted < f.min_token_interval && token_valid(f.status, f.secret, f.now) {
        return Some(format!(
            "ACS granted a token of {}, shorter than the minimum interval between tokens ({interval}, \
             --min-token-interval): it was not written to Secret {}, which keeps its valid token",
            crate::api::duration::format_duration(granted),
            f.secret_name
        ));
    }
    None
}

/// The last word on every status the identity reconcile writes (the kstatus contract):
/// - `Ready=True` only while the Secret holds a valid token for the current spec that lives
///   at least the token floor; otherwise `Ready=False` with the reason;
/// - `status.observedGeneration` advances to the object's generation only then: a spec
///   change that is not in the Secret yet is not reported as applied;
/// - `Stalled=True` (with the problem's reason and message) when a person must act,
///   `Reconciling=True` while a first token, a spec change or another needed token is in
///   progress, and both False (once present) when the identity is Ready and nothing needs
///   a person.
pub fn settle(st: &mut CommunicationIdentityStatus, f: &Facts<'_>) {
    let state = token_state(st, f.spec, f.min_token_interval, f.now);
    let generation = f.generation.unwrap_or_default();
    let ready_c = condition(&st.conditions, types::READY);
    let ready_false = ready_c.is_some_and(|c| c.status == "False");
    let failing = condition(&st.conditions, types::RENEWAL_FAILING)
        .filter(|c| c.status == "True")
        .map(|c| (c.reason.clone(), c.message.clone()));
    // A spec change that now fails says why on Ready, not only that it is waiting.
    let spec_change_failing = state == TokenState::OtherSpec
        && failing.is_some()
        && ready_c.is_some_and(|c| c.reason == reasons::SPEC_CHANGED);
    if (!ready_false || spec_change_failing)
        && state != TokenState::Current
        && state != TokenState::None
    {
        let (reason, message) = match state {
            TokenState::TooShort(granted) => (
                reasons::TOKEN_TOO_SHORT_LIVED.to_string(),
                format!(
                    "ACS granted a token of {}, shorter than the minimum interval between tokens ({}, \
                     --min-token-interval): it expires before the next token may be requested",
                    crate::api::duration::format_duration(granted),
                    crate::api::duration::format_duration(f.min_token_interval)
                ),
            ),
            TokenState::OtherSpec => match failing {
                Some((reason, message)) => (
                    reason,
                    format!(
                        "the Secret holds a token for an earlier spec, not for generation {generation}: {message}"
                    ),
                ),
                None => (
                    reasons::SPEC_CHANGED.to_string(),
                    format!(
                        "the Secret holds a token for an earlier spec; a token for generation {generation} is being issued"
                    ),
                ),
            },
            TokenState::Expired | TokenState::None | TokenState::Current => (
                reasons::TOKEN_EXPIRED.to_string(),
                format!(
                    "the token in Secret {} expired at {}; a new one is being requested",
                    f.secret_name,
                    st.token_expires_on
                        .as_ref()
                        .map(|t| rfc3339(t.0))
                        .unwrap_or_default()
                ),
            ),
        };
        set_condition(
            &mut st.conditions,
            types::READY,
            false,
            &reason,
            message,
            f.generation,
            f.now,
        );
    }
    // Ready as it stands (absent only in tests' hand-made status): not False on a current token.
    let ready = state == TokenState::Current
        && condition(&st.conditions, types::READY).is_none_or(|c| c.status != "False");
    if ready {
        st.observed_generation = f.generation;
    }
    let ready_c = condition(&st.conditions, types::READY).cloned();
    let failing_c = condition(&st.conditions, types::RENEWAL_FAILING)
        .filter(|c| c.status == "True")
        .cloned();
    let person = [
        ready_c.as_ref().filter(|c| c.status == "False"),
        failing_c.as_ref(),
    ]
    .into_iter()
    .flatten()
    .find(|c| needs_a_person(&c.reason));
    let done = format!("the Secret holds a token for generation {generation}");
    let progress = if let Some(c) = person {
        Progress::Stalled {
            reason: &c.reason,
            message: &c.message,
        }
    } else if ready {
        Progress::Done {
            reason: reasons::TOKEN_ISSUED,
            message: &done,
        }
    } else {
        let reason = if state == TokenState::OtherSpec {
            reasons::SPEC_CHANGED
        } else if st.last_token_issued_at.is_none() {
            reasons::PENDING
        } else {
            reasons::TOKEN_NEEDED
        };
        Progress::Reconciling {
            reason,
            message: ready_c
                .as_ref()
                .map_or("waiting for the first token", |c| c.message.as_str()),
        }
    };
    set_progress(&mut st.conditions, progress, f.generation, f.now);
}

/// With a good token and nothing failing, `RenewalFailing` says so — unless ACS grants
/// tokens shorter than the floor, which stays true until a longer one comes.
fn settle_renewal_failing(st: &mut CommunicationIdentityStatus, f: &Facts<'_>) {
    let failing = st
        .conditions
        .iter()
        .find(|c| c.type_ == types::RENEWAL_FAILING && c.status == "True")
        .map(|c| c.reason.clone());
    let Some(reason) = failing else {
        return;
    };
    let too_short = granted_lifetime(st).is_some_and(|g| g < f.min_token_interval);
    if reason == reasons::TOKEN_TOO_SHORT_LIVED && too_short {
        return;
    }
    set_condition(
        &mut st.conditions,
        types::RENEWAL_FAILING,
        false,
        reasons::RENEWAL_SUCCEEDED,
        "The token is valid and nothing is failing",
        f.generation,
        f.now,
    );
}

fn set_ready(st: &mut CommunicationIdentityStatus, f: &Facts<'_>, renewal: Timestamp) {
    let (Some(user), Some(expires)) = (st.user_id.clone(), st.token_expires_on.clone()) else {
        return;
    };
    set_condition(
        &mut st.conditions,
        types::READY,
        true,
        reasons::TOKEN_ISSUED,
        format!(
            "Secret {} holds a token for user {user} valid until {}; renewal at {}",
            f.secret_name,
            rfc3339(expires.0),
            rfc3339(renewal)
        ),
        f.generation,
        f.now,
    );
}

/// A problem that stops progress. With a valid token in the Secret (and a service the
/// identity may still use) `Ready` stays True and `RenewalFailing` says why.
fn blocked(
    f: &Facts<'_>,
    mut st: CommunicationIdentityStatus,
    reason: &'static str,
    message: String,
    forbids_use: bool,
    retry: Duration,
) -> Plan {
    let valid = token_valid(f.status, f.secret, f.now) && !forbids_use;
    let fresh = record_problem(&mut st, f.generation, f.now, reason, &message, valid);
    // Look again when the token expires at the latest, so Ready turns False on time.
    let retry = match (valid, &f.status.token_expires_on) {
        (true, Some(t)) => {
            retry.min(to_std(t.0.duration_since(f.now)) + Duration::from_millis(500))
        }
        _ => retry,
    };
    Plan {
        step: Step::Wait,
        status: st,
        requeue: retry,
        warning: fresh.then_some((event_reason(reason, valid), message)),
        failure: Some(reason),
    }
}

fn wait_for_floor(
    f: &Facts<'_>,
    mut st: CommunicationIdentityStatus,
    reason: TokenReason,
    next: Timestamp,
    valid: bool,
    lifetime: Duration,
) -> Plan {
    let interval = crate::api::duration::format_duration(f.min_token_interval);
    // A failure already shown on Ready stays there: it says more than "waiting".
    let waiting_reasons = [
        reasons::PENDING,
        reasons::TOKEN_EXPIRED,
        reasons::TOKEN_TOO_SHORT_LIVED,
        reasons::TOKEN_ISSUED,
    ];
    let failure_shown = st.conditions.iter().any(|c| {
        c.type_ == types::READY
            && c.status == "False"
            && !waiting_reasons.contains(&c.reason.as_str())
    });
    if !valid && !failure_shown {
        let granted = granted_lifetime(&st);
        let (why, msg) = match granted {
            Some(g) if reason == TokenReason::Expired && g < f.min_token_interval => (
                reasons::TOKEN_TOO_SHORT_LIVED,
                format!(
                    "ACS granted a token of {} (asked {}), shorter than the minimum interval between tokens ({interval}, \
                     --min-token-interval); the next token is issued at {}",
                    crate::api::duration::format_duration(g),
                    crate::api::duration::format_duration(lifetime),
                    rfc3339(next)
                ),
            ),
            _ => (
                if reason == TokenReason::Expired {
                    reasons::TOKEN_EXPIRED
                } else {
                    reasons::PENDING
                },
                format!(
                    "a new token is needed ({}); it is issued at {} (at most one token per {interval})",
                    reason.as_str(),
                    rfc3339(next)
                ),
            ),
        };
        set_condition(
            &mut st.conditions,
            types::READY,
            false,
            why,
            msg,
            f.generation,
            f.now,
        );
    }
    Plan {
        step: Step::Wait,
        status: st,
        requeue: requeue_after(f.now, next),
        warning: None,
        failure: None,
    }
}

fn granted_lifetime(st: &CommunicationIdentityStatus) -> Option<Duration> {
    let issued = st.last_token_issued_at.as_ref()?.0;
    let expires = st.token_expires_on.as_ref()?.0;
    Some(to_std(expires.duration_since(issued)))
}

/// The identity had a token to renew (in force, expired or revoked): a failure now is a
/// renewal failure (`acs_operator_renewal_failures_total`, alert `AcsTokenRenewalFailing`).
pub fn had_token(st: &CommunicationIdentityStatus) -> bool {
    st.token_expires_on.is_some() || st.last_token_issued_at.is_some()
}

/// The reason of a failure's Warning event: `RenewalFailed` while the Secret still holds
/// a valid token (the condition says what failed), else the failure's own reason.
pub fn event_reason(reason: &'static str, token_still_valid: bool) -> &'static str {
    if token_still_valid {
        reasons::RENEWAL_FAILED
    } else {
        reason
    }
}

/// The status to record before asking ACS for a new token when the token in the Secret
/// has already expired but `Ready` still says True: ACS may take seconds to answer (or
/// to fail) during an outage, and `Ready` must turn False when the token expires, not when
/// that answer comes. `None` when status already tells the truth.
pub fn expired_before_acting(
    f: &Facts<'_>,
    planned: &CommunicationIdentityStatus,
) -> Option<CommunicationIdentityStatus> {
    let expired_on = planned.token_expires_on.as_ref()?.0;
    if expired_on > f.now || !is_true(&planned.conditions, types::READY) {
        return None;
    }
    let mut st = planned.clone();
    set_condition(
        &mut st.conditions,
        types::READY,
        false,
        reasons::TOKEN_EXPIRED,
        format!(
            "the token in Secret {} expired at {}; a new one is being requested",
            f.secret_name,
            rfc3339(expired_on)
        ),
        f.generation,
        f.now,
    );
    settle(&mut st, f);
    Some(st)
}

/// Records a problem in conditions; returns whether it is news (worth an event).
pub fn record_problem(
    st: &mut CommunicationIdentityStatus,
    generation: Option<i64>,
    now: Timestamp,
    reason: &str,
    message: &str,
    token_still_valid: bool,
) -> bool {
    let (type_, status, message) = if token_still_valid {
        let until = st
            .token_expires_on
            .as_ref()
            .map(|t| rfc3339(t.0))
            .unwrap_or_default();
        (
            types::RENEWAL_FAILING,
            "True",
            format!("{message}; the current token stays in the Secret and is valid until {until}"),
        )
    } else {
        (types::READY, "False", message.to_string())
    };
    // One status write per change of state: the same problem again (same condition and
    // reason) keeps the message it was first reported with, whatever text the endpoint
    // varies or however the remaining wait shrinks (issue 15: a write and an event per
    // pass for the whole of a 429 pause). The log has every attempt.
    //
    // With a valid token only RenewalFailing says it; without one Ready does, and
    // RenewalFailing too once there was a token to renew.
    let renewal =
        token_still_valid || st.token_expires_on.is_some() || st.last_token_issued_at.is_some();
    let already = |t: &str, value: &str| {
        st.conditions.iter().any(|c| {
            c.type_ == t
                && c.status == value
                && c.reason == reason
                && c.observed_generation == generation
        })
    };
    let unchanged = already(type_, status)
        && (token_still_valid || already(types::READY, "False"))
        && (!renewal || already(types::RENEWAL_FAILING, "True"));
    if unchanged {
        return false;
    }
    let mut set = |type_: &str, value: bool| {
        set_condition(
            &mut st.conditions,
            type_,
            value,
            reason,
            &message,
            generation,
            now,
        )
    };
    if !token_still_valid {
        set(types::READY, false);
    }
    if renewal {
        set(types::RENEWAL_FAILING, true);
    }
    true
}

/// After a create whose answer said who the user is: record it at once (api-versions
/// without custom ids), and on which resource it lives.
pub fn record_user(st: &mut CommunicationIdentityStatus, user: &str, endpoint: &str) {
    st.user_id = Some(user.to_string());
    st.user_endpoint = Some(endpoint.to_string());
}

/// After a revoke: the token in the Secret is worthless, so status no longer describes it
/// as valid (no expiry), and the request is handled.
pub fn record_revoked(
    st: &mut CommunicationIdentityStatus,
    request: &str,
    now: Timestamp,
    generation: Option<i64>,
    next_token: Option<Timestamp>,
) {
    st.last_revoked_at = Some(Time(whole_seconds(now)));
    st.last_revoke_request_handled = Some(request.to_string());
    st.token_expires_on = None;
    st.renewal_time = None;
    let msg = match next_token {
        Some(t) => format!(
            "every token of the user was revoked as requested; a new token is issued at {}",
            rfc3339(t)
        ),
        None => "every token of the user was revoked as requested; a new token is being issued"
            .to_string(),
    };
    set_condition(
        &mut st.conditions,
        types::READY,
        false,
        reasons::TOKENS_REVOKED,
        msg,
        generation,
        now,
    );
}

/// What a successful issue (and Secret write) means for status.
pub struct Issued<'a> {
    pub user: &'a str,
    pub endpoint: &'a str,
    pub issued_at: Timestamp,
    pub expires_on: Timestamp,
    pub secret_name: &'a str,
}

pub fn record_issued(
    f: &Facts<'_>,
    st: &mut CommunicationIdentityStatus,
    i: &Issued<'_>,
) -> Timestamp {
    record_user(st, i.user, i.endpoint);
    st.token_expires_on = Some(Time(whole_seconds(i.expires_on)));
    st.last_token_issued_at = Some(Time(whole_seconds(i.issued_at)));
    st.token_scopes = Some(f.spec.scopes.clone());
    st.token_lifetime = Some(f.spec.token_lifetime.clone());
    st.secret_name = Some(i.secret_name.to_string());
    if let Some(r) = f.renew_requested.map(str::trim).filter(|r| !r.is_empty()) {
        st.last_renew_request_handled = Some(r.to_string());
    }
    if let Some(r) = f.revoke_requested.map(str::trim).filter(|r| !r.is_empty()) {
        // A new user's only token is the one just issued: the request is satisfied.
        st.last_revoke_request_handled = Some(r.to_string());
    }
    let after = Facts {
        status: st,
        last_token_request: Some(i.issued_at),
        secret: SecretFacts::Ours {
            intact: true,
            template_current: true,
        },
        ..f.clone()
    };
    let (lifetime, renew_before) = match (f.spec.token_lifetime(), f.spec.renew_before()) {
        (Ok(l), Ok(r)) => (l, r),
        _ => (Duration::from_secs(86400), Duration::from_secs(28800)),
    };
    let renewal = renewal_at(&after, lifetime, renew_before).unwrap_or(i.expires_on);
    let granted = to_std(i.expires_on.duration_since(i.issued_at));
    let mut st2 = st.clone();
    st2.renewal_time = Some(Time(whole_seconds(renewal)));
    set_ready(&mut st2, &after, renewal);
    if granted < f.min_token_interval {
        let msg = format!(
            "ACS granted a token of {}, shorter than the minimum interval between tokens ({}, --min-token-interval): \
             the Secret holds an expired token until the next one is allowed at {}",
            crate::api::duration::format_duration(granted),
            crate::api::duration::format_duration(f.min_token_interval),
            rfc3339(renewal)
        );
        set_condition(
            &mut st2.conditions,
            types::RENEWAL_FAILING,
            true,
            reasons::TOKEN_TOO_SHORT_LIVED,
            msg,
            f.generation,
            f.now,
        );
    } else if st2
        .conditions
        .iter()
        .any(|c| c.type_ == types::RENEWAL_FAILING)
    {
        set_condition(
            &mut st2.conditions,
            types::RENEWAL_FAILING,
            false,
            reasons::RENEWAL_SUCCEEDED,
            "The last renewal succeeded",
            f.generation,
            f.now,
        );
    }
    settle(&mut st2, &after);
    *st = st2;
    renewal
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

/// The ACS user a token Secret records (a create whose status write failed, or a crash
/// before it) is taken only when status names none, the spec names none, it lives on the
/// resource the service reaches now, and its mark proves this operator wrote it for this
/// object (`mark_verified`, asked last: it computes an HMAC).
pub fn use_recorded_user(
    status: &CommunicationIdentityStatus,
    spec: &crate::api::CommunicationIdentitySpec,
    recorded_endpoint: &str,
    service_endpoint: &str,
    mark_verified: impl FnOnce() -> bool,
) -> bool {
    status.user_id.is_none()
        && spec.existing_user_id.is_none()
        && recorded_endpoint == service_endpoint
        && mark_verified()
}

/// The later of the token requests memory and the Secret's annotation know of: the floor
/// counts from the last one, whichever source survived (a restart empties memory).
pub fn last_token_request(
    remembered: Option<Timestamp>,
    annotated: Option<Timestamp>,
) -> Option<Timestamp> {
    match (remembered, annotated) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The user whose tokens are revoked before the token is requested: a revoke pending for
/// a user that status or the spec names.
pub fn revoke_before_issue(tp: &TokenPlan) -> Option<(&str, &str)> {
    match (&tp.revoke, &tp.user) {
        (Some(request), UserPlan::Existing(user) | UserPlan::Adopt(user)) => {
            Some((user.as_str(), request.as_str()))
        }
        _ => None,
    }
}

/// A revoke pending when the user is created by custom id: the create may have found the
/// user an interrupted attempt made, whose token may be the one the request is about, and
/// ACS answers 201 either way, so the user's tokens are revoked after the create (the one
/// it carried too) and the token to keep is issued after that.
pub fn revoke_after_create(tp: &TokenPlan) -> Option<&str> {
    match (&tp.revoke, &tp.user) {
        (Some(request), UserPlan::Create { custom_id: Some(_) }) => Some(request.as_str()),
        _ => None,
    }
}

/// The Normal event of a token written: (reason, action, what was done to the user).
pub fn issued_event(user: &UserPlan) -> (&'static str, &'static str, &'static str) {
    match user {
        UserPlan::Existing(_) => ("TokenIssued", "IssueToken", "Issued a token for ACS user"),
        UserPlan::Adopt(_) => ("UserAdopted", "AdoptUser", "Adopted existing ACS user"),
        // ACS answers 201 to a new user and to the one an earlier, interrupted attempt made
        // for the same custom id alike.
        UserPlan::Create { custom_id: Some(_) } => (
            "UserCreated",
            "CreateUser",
            "Created (or found by its custom id) ACS user",
        ),
        UserPlan::Create { custom_id: None } => ("UserCreated", "CreateUser", "Created ACS user"),
    }
}

/// What a failed step leaves to do besides the status written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRecord {
    /// The Warning event (reason, message), when the failure is news.
    pub event: Option<(&'static str, String)>,
    /// Until when the token in the Secret still stands (the next look is due then).
    pub valid_until: Option<Timestamp>,
    /// A renewal failed (the identity had a token): counted for `AcsTokenRenewalFailing`.
    pub renewal_failed: bool,
}

/// Records a failed step in `st` and says what else the failure means. `now` is the time
/// the step ended, not `f.now`: a token that expired while ACS took its time is not valid.
pub fn record_failure(
    st: &mut CommunicationIdentityStatus,
    f: &Facts<'_>,
    now: Timestamp,
    reason: &'static str,
    message: &str,
) -> FailureRecord {
    if reason == reasons::SECRET_CONFLICT {
        // A create refused because someone else's Secret has the name: recorded as a
        // Secret found not ours. Our token is not in it, so none stands.
        return FailureRecord {
            event: record_conflict(st, f, now),
            valid_until: None,
            renewal_failed: had_token(f.status),
        };
    }
    let valid = token_valid(st, f.secret, now);
    let fresh = record_problem(st, f.generation, now, reason, message, valid);
    FailureRecord {
        event: fresh.then(|| (event_reason(reason, valid), message.to_string())),
        valid_until: valid
            .then(|| st.token_expires_on.as_ref().map(|t| t.0))
            .flatten(),
        renewal_failed: had_token(f.status),
    }
}

/// A Secret of our name that is not ours (found so, or a create refused because the name
/// is taken): `SecretConflict=True` and `Ready=False`; the Warning to publish when it is news.
pub fn record_conflict(
    st: &mut CommunicationIdentityStatus,
    f: &Facts<'_>,
    now: Timestamp,
) -> Option<(&'static str, String)> {
    let msg = format!(
        "Secret `{}` exists and is not owned by this CommunicationIdentity; it is never overwritten. \
         Delete or rename that Secret, or create an identity with another spec.secretName",
        f.secret_name
    );
    let fresh = !is_true(&st.conditions, types::SECRET_CONFLICT);
    set_condition(
        &mut st.conditions,
        types::SECRET_CONFLICT,
        true,
        reasons::SECRET_NOT_OWNED,
        &msg,
        f.generation,
        now,
    );
    set_condition(
        &mut st.conditions,
        types::READY,
        false,
        reasons::SECRET_CONFLICT,
        &msg,
        f.generation,
        now,
    );
    fresh.then_some((reasons::SECRET_CONFLICT, msg))
}
