//! Reconcile logic: one reconcile per kind, the Secret, status, and the renewal math.

pub mod renewal;
