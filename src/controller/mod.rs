//! Reconcile logic: one reconcile per kind, the caches they read, the Secret, status, and
//! the renewal math.

pub mod clients;
pub mod context;
pub(crate) mod credentials;
pub mod entra;
pub(crate) mod error;
pub(crate) mod events;
pub mod identity;
pub(crate) mod memory;
pub(crate) mod panics;
pub(crate) mod renewal;
pub mod resolver;
pub(crate) mod rollout;
pub mod run;
pub(crate) mod secret;
pub(crate) mod service;
pub(crate) mod shares;
pub mod status;
pub(crate) mod stores;
pub(crate) mod wakeups;

pub use error::Error;
pub use run::{OperatorConfig, run};
