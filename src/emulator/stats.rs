//! Request counts by operation and status, for `/admin/stats`: tests read them to prove
//! how many calls a client made and how many were throttled or failed.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub total: u64,
    /// operation (`create`, ..., or `other` for unrecognised requests) → status → count;
    /// a dropped connection counts under status `dropped`.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Stats {
    pub fn record(&mut self, operation: &str, status: &str) {
        self.total += 1;
        *self
            .requests
            .entry(operation.to_string())
            .or_default()
            .entry(status.to_string())
            .or_default() += 1;
    }
}
