//! Runtime wiring of the operator process, kept out of the binary so it can be tested:
//! Prometheus metrics, the admin HTTP server (health, readiness, metrics), leader
//! election over a `coordination.k8s.io/v1` Lease, shutdown signals and logging.
//!
//! Nothing here knows about identities' reconcile logic; the controller reports into
//! [`metrics::Metrics`] and [`admin::Readiness`], and the binary decides what to run.

pub mod admin;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod signals;

pub use admin::{AdminError, AdminState, Readiness};
pub use leader::{LeaderError, LeaderHandle, LeaseConfig, run_leader_election};
pub use logging::LogFormat;
pub use metrics::Metrics;
pub use signals::shutdown_signal;
