//! Leader election over a `coordination.k8s.io/v1` Lease, so that several replicas can
//! run with one active.
//!
//! The protocol is client-go's `leaderelection`, so the Lease reads the same to people
//! and tools:
//! - a candidate takes the Lease when it has no holder, or when its record has not
//!   changed for the holder's `leaseDurationSeconds` *as measured by the candidate's own
//!   monotonic clock* since it first saw that record. Wall clocks of different nodes
//!   never get compared, so clock skew cannot make two replicas lead at once (it only
//!   means a fresh candidate waits one lease duration before taking an abandoned Lease);
//! - every write is a create (fails if the Lease exists) or a replace carrying the
//!   `resourceVersion` that was read (fails if anyone wrote in between), so of two
//!   candidates racing for the same Lease exactly one wins;
//! - the leader renews every `retry_period` and steps down when it could not renew for
//!   `renew_deadline`, which is shorter than the lease duration: it stops acting before
//!   anyone else may start;
//! - on a clean shutdown the leader releases the Lease (no holder), so a standby takes
//!   over at its next poll instead of after a lease duration.
//!
//! The process exits when it loses the Lease (see [`LeaderHandle::lost`]); a restarted
//! process campaigns afresh with clean caches, which is simpler and safer than stopping
//! and restarting controllers in place.

mod config;
mod decide;
mod elector;

pub use config::{
    DEFAULT_LEASE_DURATION, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD, LeaseConfig,
    default_identity,
};
pub use decide::{Observation, Verdict, claimed_spec, is_expired, released_spec, verdict};
pub use elector::{LeaderHandle, run_leader_election};

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election settings: {0}")]
    Config(String),
    #[error("Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Lease {namespace}/{name}: no answer from the API server within {timeout:?}")]
    Timeout {
        namespace: String,
        name: String,
        timeout: Duration,
    },
}
