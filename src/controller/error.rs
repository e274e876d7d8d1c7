//! The controller's errors: each says what failed and on which object, and has a
//! metric label so failures are counted by kind.

use crate::api::SpecError;

use super::identity::steps::StepError;
use super::resolver::ResolveError;

/// How soon an identity whose status write found a newer object is looked at again.
pub const STATUS_CHANGED_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Step(#[from] StepError),
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error("the object has no {0}")]
    MissingField(&'static str),
    #[error("cleanup cannot proceed: {0}")]
    CleanupBlocked(String),
    /// Cleanup failed in a terminating namespace: looked at again no later than the
    /// moment the finalizer is released anyway (`--abandon-cleanup-after`).
    #[error("cleanup cannot proceed: {0}")]
    CleanupAbandonsIn(String, std::time::Duration),
    /// Leadership was lost (or the process is stopping): the work was abandoned.
    #[error("cancelled: leadership lost")]
    Cancelled,
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    /// Nothing failed: the object waits for its turn (client-side quota, a full share of
    /// ACS calls) and is requeued for exactly this long, without backoff.
    #[error("waiting {0:?} for a turn to call ACS")]
    Waiting(std::time::Duration),
    /// The reconcile panicked (a bug); caught so that no object can end the process.
    #[error("the reconcile panicked: {0}")]
    Panicked(String),
    /// The reconcile ran past its deadline and was abandoned.
    #[error("the reconcile took longer than {0:?} and was abandoned")]
    DeadlineExceeded(std::time::Duration),
}

impl Error {
    fn inner(&self) -> &Error {
        match self {
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            _ => self,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self.inner() {
            Error::Kube(_) => "kube",
            Error::Step(e) => e.metric_label(),
            Error::Resolve(_) => "service",
            Error::Spec(_) => "spec",
            Error::MissingField(_) => "missing_field",
            Error::CleanupBlocked(_) | Error::CleanupAbandonsIn(..) => "cleanup",
            Error::Cancelled => "cancelled",
            Error::Finalizer(_) => "finalizer",
            Error::Waiting(_) => "waiting",
            Error::Panicked(_) => "panic",
            Error::DeadlineExceeded(_) => "deadline",
        }
    }

    /// Errors that a retry soon may fix (network, 429, 5xx, API conflicts), as opposed
    /// to ones that need a person (bad credentials, bad spec): those are retried slowly.
    pub fn is_transient(&self) -> bool {
        match self.inner() {
            Error::Kube(_)
            | Error::Cancelled
            | Error::Finalizer(_)
            | Error::Waiting(_)
            | Error::DeadlineExceeded(_) => true,
            // Retried slowly: the same input will likely panic again.
            Error::Panicked(_) => false,
            Error::Step(e) => e.is_transient(),
            Error::Resolve(e) => e.is_transient(),
            Error::Spec(_)
            | Error::MissingField(_)
            | Error::CleanupBlocked(_)
            | Error::CleanupAbandonsIn(..) => false,
        }
    }

    /// Server-requested delay (ACS `Retry-After`), if any.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self.inner() {
            Error::Step(e) => e.retry_after(),
            Error::Waiting(d) => Some(*d),
            _ => None,
        }
    }

    /// How long to wait for a turn, when that is all this "error" is. A status write
    /// whose precondition failed (someone wrote the identity since it was read) is a
    /// turn too: the identity is looked at again, from the newer object.
    pub fn waiting(&self) -> Option<std::time::Duration> {
        match self.inner() {
            Error::Waiting(d) => Some(*d),
            Error::Step(StepError::WriteStatus(e) | StepError::RecordUser { source: e, .. })
                if super::status::precondition_failed(e) =>
            {
                Some(STATUS_CHANGED_RETRY)
            }
            Error::Step(e) => e.quota_wait(),
            _ => None,
        }
    }

    /// The latest time to look again (a cleanup the bound will release).
    pub fn look_again_within(&self) -> Option<std::time::Duration> {
        match self.inner() {
            Error::CleanupAbandonsIn(_, d) => Some(*d),
            _ => None,
        }
    }
}
