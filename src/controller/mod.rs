//! Reconcile logic: one reconcile per kind, the Secret, status, and the renewal math.

pub mod context;
pub mod credentials;
pub mod error;
pub mod identity;
pub mod renewal;
pub mod run;
pub mod secret;
pub mod service;
pub mod services;
pub mod status;

pub use error::Error;
pub use run::{OperatorConfig, run};
