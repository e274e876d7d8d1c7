//! Reconcile logic: one reconcile per kind, the caches they read, the Secret, status, and
//! the renewal math.

pub mod clients;
pub mod context;
pub mod credentials;
pub mod entra;
pub mod error;
pub mod events;
pub mod identity;
pub mod memory;
pub mod panics;
pub mod renewal;
pub mod resolver;
pub mod rollout;
pub mod run;
pub mod secret;
pub mod service;
pub mod shares;
pub mod status;
pub mod stores;

pub use error::Error;
pub use run::{OperatorConfig, run};
