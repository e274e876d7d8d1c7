//! The controller's errors: each says what failed and on which object, and has a
//! metric label so failures are counted by kind.

use crate::acs::AcsError;
use crate::api::SpecError;

use super::services::ResolveError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Acs(#[from] AcsError),
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error(
        "Secret `{0}` exists and is not owned by this CommunicationIdentity; it is never overwritten"
    )]
    SecretConflict(String),
    #[error("the object has no {0}")]
    MissingField(&'static str),
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Acs(e) => e.metric_label(),
            Error::Resolve(_) => "service",
            Error::Spec(_) => "spec",
            Error::SecretConflict(_) => "secret_conflict",
            Error::MissingField(_) => "missing_field",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
        }
    }

    /// Errors that a retry soon may fix (network, 429, 5xx, API conflicts), as opposed
    /// to ones that need a person (bad credentials, bad spec): those are retried slowly.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube(_) => true,
            Error::Acs(e) => e.is_retryable(),
            Error::Resolve(e) => e.is_transient(),
            Error::Spec(_) | Error::SecretConflict(_) | Error::MissingField(_) => false,
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_transient(),
                _ => true,
            },
        }
    }

    /// Server-requested delay (ACS `Retry-After`), if any.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Acs(e) => e.retry_after(),
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.retry_after(),
                _ => None,
            },
            _ => None,
        }
    }
}
