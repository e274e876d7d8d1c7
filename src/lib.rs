//! acs-identity-operator: Azure Communication Services identities and access tokens
//! for Kubernetes workloads, declaratively.
//!
//! The library holds the parts of the design as modules, each with one job; the binaries
//! in `src/bin/` are thin wrappers.

// Nothing here needs unsafe; forbidding it keeps it that way (issue 9's review).
#![forbid(unsafe_code)]

pub mod acs;
pub mod api;
pub mod cli;
pub mod controller;
pub mod emulator;
pub mod runtime;
