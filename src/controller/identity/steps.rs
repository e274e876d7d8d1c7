//! The identity reconcile's steps: each does one thing against ACS or the API server and
//! fails with its own error variant, so the condition reason comes from the error itself.

use std::collections::BTreeSet;

use crate::controller::events::{EventNote, EventType};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use crate::acs::{self, AcsError};
use crate::api::conditions::reasons;
use crate::api::{CommunicationIdentity, CommunicationIdentityStatus, Scope, secret_keys};
use crate::controller::context::Context;
use crate::controller::secret::{self, TokenSecret};
use crate::controller::status::{FIELD_MANAGER, replace_status};

use super::decide::rfc3339;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("creating an ACS user at {endpoint}: {source}")]
    CreateUser {
        endpoint: String,
        #[source]
        source: AcsError,
    },
    #[error("ACS created user {user} at {endpoint} but returned no token")]
    NoTokenInCreate { user: String, endpoint: String },
    #[error("revoking the tokens of ACS user {user}: {source}")]
    RevokeTokens {
        user: String,
        #[source]
        source: AcsError,
    },
    #[error("issuing a token for ACS user {user}: {source}")]
    IssueToken {
        user: String,
        #[source]
        source: AcsError,
    },
    #[error("recording ACS user {user} in status: {source}")]
    RecordUser {
        user: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading Secret `{name}`: {source}")]
    ReadSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing Secret `{name}`: {source}")]
    WriteSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "Secret `{name}` was created meanwhile by another attempt of this operator for this identity; it is read again"
    )]
    SecretWrittenMeanwhile { name: String },
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    /// ACS returned a token that must not replace the one in the Secret (expired on
    /// receipt, or shorter than the token floor while the Secret's token is valid).
    #[error("{message} (ACS user {user})")]
    TokenRefused { user: String, message: String },
    #[error("deleting ACS user {user}: {source}")]
    DeleteUser {
        user: String,
        #[source]
        source: AcsError,
    },
}

impl StepError {
    fn acs(&self) -> Option<&AcsError> {
        match self {
            StepError::CreateUser { source, .. }
            | StepError::RevokeTokens { source, .. }
            | StepError::IssueToken { source, .. }
            | StepError::DeleteUser { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The condition reason a person acts on.
    pub fn reason(&self) -> &'static str {
        // No Entra token for the call: the credential's own reason (FederationFailed...).
        // Deletion keeps CleanupFailed (the message carries the Entra problem).
        if let Some(AcsError::Entra { reason, .. }) = self.acs()
            && !matches!(self, StepError::DeleteUser { .. })
        {
            return reason;
        }
        if self.acs().is_some_and(AcsError::is_unauthorized) {
            return reasons::UNAUTHORIZED;
        }
        // Deletion keeps its own reason (the message says whose resource the user is on).
        if self.acs().is_some_and(AcsError::is_identity_not_owned)
            && !matches!(self, StepError::DeleteUser { .. })
        {
            return reasons::IDENTITY_NOT_OWNED;
        }
        match self {
            StepError::CreateUser { .. } | StepError::NoTokenInCreate { .. } => {
                reasons::USER_CREATE_FAILED
            }
            StepError::RevokeTokens { .. } => reasons::REVOKE_FAILED,
            StepError::IssueToken { source, .. } if source.is_not_found() => {
                reasons::USER_NOT_FOUND
            }
            StepError::IssueToken { .. } => reasons::TOKEN_ISSUE_FAILED,
            StepError::DeleteUser { .. } => reasons::CLEANUP_FAILED,
            StepError::TokenRefused { .. } => reasons::TOKEN_TOO_SHORT_LIVED,
            // A create refused because the name is taken: someone else's Secret.
            e if e.is_secret_taken() => reasons::SECRET_CONFLICT,
            // Each names the step that failed: a denied status write is no Secret problem.
            StepError::WriteSecret { .. } | StepError::SecretWrittenMeanwhile { .. } => {
                reasons::SECRET_WRITE_FAILED
            }
            StepError::ReadSecret { .. } => reasons::SECRET_READ_FAILED,
            // Recording a user is a status write.
            StepError::WriteStatus(_) | StepError::RecordUser { .. } => {
                reasons::STATUS_WRITE_FAILED
            }
        }
    }

    /// The token Secret's create was refused: a Secret of that name exists (someone
    /// else's: ours would have been in the cache or read).
    pub fn is_secret_taken(&self) -> bool {
        matches!(self, StepError::WriteSecret { source: kube::Error::Api(r), .. }
            if r.code == 409 && r.reason == "AlreadyExists")
    }

    pub fn is_transient(&self) -> bool {
        match self.acs() {
            Some(e) => e.is_retryable() || e.is_outcome_unknown(),
            None => !matches!(
                self,
                StepError::NoTokenInCreate { .. } | StepError::TokenRefused { .. }
            ),
        }
    }

    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.acs().and_then(AcsError::retry_after)
    }

    /// The step only waits for its client-side quota turn (nothing was sent): requeue for
    /// this long and record no problem.
    pub fn quota_wait(&self) -> Option<std::time::Duration> {
        self.acs()
            .filter(|e| e.is_quota_wait())
            .and_then(AcsError::retry_after)
    }

    pub fn metric_label(&self) -> &'static str {
        match self.acs() {
            Some(e) => e.metric_label(),
            None => "kube",
        }
    }
}

pub fn acs_scopes(scopes: &BTreeSet<Scope>) -> Vec<acs::TokenScope> {
    scopes
        .iter()
        .map(|s| {
            s.as_str()
                .parse::<acs::TokenScope>()
                .unwrap_or_else(|_| acs::TokenScope::Other(s.as_str().to_string()))
        })
        .collect()
}

/// Writes status when it changed, and remembers the write (the cache lags behind it).
/// The write carries a precondition: the identity must still be at the version the
/// status at hand came from (our last write, or the object read). When someone wrote
/// after it, the write fails ([`crate::controller::status::precondition_failed`]) and the
/// identity is looked at again instead of overwriting the newer status.
pub async fn write_status(
    ctx: &Context,
    obj: &CommunicationIdentity,
    current: &CommunicationIdentityStatus,
    status: &CommunicationIdentityStatus,
) -> Result<(), kube::Error> {
    let api: Api<CommunicationIdentity> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let oref = ObjectRef::from_obj(obj);
    let uid = obj.uid().unwrap_or_default();
    let remembered = ctx.memory.get(&oref, &uid);
    let expected =
        crate::controller::memory::expected_rv(obj.resource_version().as_deref(), &remembered);
    // After a failed write, `current` may be that unwritten status (see
    // `gather::read_secret`): the API server does not hold it, so write even when equal.
    let current = remembered.unrecorded.is_none().then_some(current);
    if let Some(written) =
        replace_status(&api, &obj.name_any(), current, status, expected.as_deref()).await?
    {
        ctx.memory
            .status_written(&oref, &uid, written.resource_version(), status);
    }
    Ok(())
}

/// How the token Secret is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretWrite {
    /// Server-side apply with our field manager: fields we stop setting (a label dropped
    /// from `secretTemplate`) are removed, others' fields are kept.
    Apply,
    /// A plain create, for a Secret just read as absent and a template with no labels or
    /// annotations. About a third cheaper for the API server than an apply, and a Secret
    /// someone creates meanwhile is refused (409), never taken over. The create owns only
    /// the fields every later apply sets again, so removal by apply keeps working.
    Create,
}

impl SecretWrite {
    pub fn for_facts(secret: &super::decide::SecretFacts, obj: &CommunicationIdentity) -> Self {
        let template_empty = obj
            .spec
            .secret_template
            .as_ref()
            .is_none_or(|t| t.labels.is_empty() && t.annotations.is_empty());
        if *secret == super::decide::SecretFacts::Missing && template_empty {
            SecretWrite::Create
        } else {
            SecretWrite::Apply
        }
    }
}

/// Writes the token Secret with our field manager and remembers the version written.
pub async fn write_secret(
    ctx: &Context,
    obj: &CommunicationIdentity,
    s: &TokenSecret<'_>,
    now: Timestamp,
    how: SecretWrite,
) -> Result<(), StepError> {
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let desired = secret::build(obj, s);
    let written = if how == SecretWrite::Create {
        api.create(
            &kube::api::PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &desired,
        )
        .await
    } else {
        api.patch(
            s.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
    }
    .map_err(|source| StepError::WriteSecret {
        name: s.name.to_string(),
        source,
    })?;
    let uid = obj.uid().unwrap_or_default();
    ctx.memory.secret_written(
        &ObjectRef::from_obj(obj),
        &uid,
        written.resource_version(),
        now,
    );
    Ok(())
}

/// Re-applies the Secret with the token it holds, for a `secretTemplate` edit.
pub async fn refresh_secret_metadata(
    ctx: &Context,
    obj: &CommunicationIdentity,
    status: &CommunicationIdentityStatus,
    name: &str,
    now: Timestamp,
) -> Result<(), StepError> {
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let current = api
        .get(name)
        .await
        .map_err(|source| StepError::ReadSecret {
            name: name.to_string(),
            source,
        })?;
    let data = current.data.unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let issued = current
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(secret::ISSUED_AT_ANNOTATION).cloned())
        .or_else(|| status.last_token_issued_at.as_ref().map(|t| rfc3339(t.0)))
        .unwrap_or_default();
    let token = text(secret_keys::TOKEN);
    let mark = current
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(secret::USER_RECORD_ANNOTATION).cloned());
    write_secret(
        ctx,
        obj,
        &TokenSecret {
            name,
            token: &token,
            expires_on: &text(secret_keys::EXPIRES_ON),
            user_id: &text(secret_keys::USER_ID),
            endpoint: &text(secret_keys::ENDPOINT),
            issued_at: &issued,
            user_record: mark.as_deref(),
        },
        now,
        SecretWrite::Apply,
    )
    .await
}

/// Publishes an event on the identity; a failure to publish is logged, never fatal.
pub async fn publish(
    ctx: &Context,
    obj: &CommunicationIdentity,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let what = EventNote {
        type_,
        reason,
        action,
        note,
    };
    if let Err(e) = ctx.events.publish(&obj.object_ref(&()), &what).await {
        tracing::debug!(error = %e, "publishing an event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acs::Operation;

    fn not_owned(op: Operation) -> AcsError {
        AcsError::service(
            op,
            401,
            Some("IdentityNotOwned".into()),
            Some("Provided identity doesn't belong to the resource.".into()),
            None,
        )
    }

    #[test]
    fn reasons_name_the_step_that_failed() {
        let kube = || kube::Error::Service("no answer".into());
        let cases = [
            (StepError::WriteStatus(kube()), reasons::STATUS_WRITE_FAILED),
            (
                StepError::ReadSecret {
                    name: "app".into(),
                    source: kube(),
                },
                reasons::SECRET_READ_FAILED,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.reason(), want, "{e}");
        }
    }

    #[test]
    fn a_call_without_an_entra_token_reports_the_credentials_reason() {
        let entra = || AcsError::Entra {
            reason: reasons::FEDERATION_FAILED,
            message: "Entra ID refused the token exchange (AADSTS70021)".into(),
            transient: true,
            retry_after: None,
        };
        let issue = StepError::IssueToken {
            user: "8:acs:a_b".into(),
            source: entra(),
        };
        assert_eq!(issue.reason(), reasons::FEDERATION_FAILED);
        assert!(issue.is_transient());
        let delete = StepError::DeleteUser {
            user: "8:acs:a_b".into(),
            source: entra(),
        };
        assert_eq!(delete.reason(), reasons::CLEANUP_FAILED);
    }

    /// 401 `IdentityNotOwned` is reported as what it is: its own reason on issue and
    /// revoke, and on deletion `CleanupFailed` saying whose resource the user is on (never
    /// "user gone", never a bad key).
    #[test]
    fn identity_not_owned_has_its_own_reason_and_says_why() {
        let user = "8:acs:a_b".to_string();
        let issue = StepError::IssueToken {
            user: user.clone(),
            source: not_owned(Operation::IssueToken),
        };
        let revoke = StepError::RevokeTokens {
            user: user.clone(),
            source: not_owned(Operation::RevokeTokens),
        };
        assert_eq!(issue.reason(), reasons::IDENTITY_NOT_OWNED);
        assert_eq!(revoke.reason(), reasons::IDENTITY_NOT_OWNED);
        let delete = StepError::DeleteUser {
            user,
            source: not_owned(Operation::DeleteUser),
        };
        assert_eq!(delete.reason(), reasons::CLEANUP_FAILED);
        assert!(
            delete
                .to_string()
                .contains("belongs to another ACS resource"),
            "{delete}"
        );
        assert!(!delete.is_transient());
        assert_eq!(delete.metric_label(), "identity_not_owned");
    }
}
