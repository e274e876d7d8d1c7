//! API-server requests per client identity, read from kube-apiserver's audit log
//! (`hack/bench/audit-policy.yaml`: level Metadata for the two operators' users only).
//!
//! Each request is counted once: at `ResponseComplete`, or at `ResponseStarted` for a
//! watch (a watch completes only when it ends, possibly after the window). A request
//! belongs to the window its `requestReceivedTimestamp` falls in.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;

use jiff::Timestamp;
use serde::Deserialize;

/// One measured interval of one operator's activity.
#[derive(Debug, Clone)]
pub struct Window {
    pub label: String,
    pub user: String,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// `"verb resource[/subresource]"` → count, per window label.
pub type Counts = BTreeMap<String, BTreeMap<String, u64>>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    stage: String,
    verb: String,
    user: User,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    request_received_timestamp: Timestamp,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    username: String,
}

#[derive(Deserialize)]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
}

pub fn count(path: &Path, windows: &[Window]) -> Result<Counts, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("audit log {}: {e}", path.display()))?;
    let mut counts: Counts = windows
        .iter()
        .map(|w| (w.label.clone(), BTreeMap::new()))
        .collect();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("reading {}: {e}", path.display()))?;
        let Ok(ev) = serde_json::from_str::<Event>(&line) else {
            continue;
        };
        let counted_stage = if ev.verb == "watch" {
            "ResponseStarted"
        } else {
            "ResponseComplete"
        };
        if ev.stage != counted_stage {
            continue;
        }
        let Some(w) = windows.iter().find(|w| {
            w.user == ev.user.username
                && w.start <= ev.request_received_timestamp
                && ev.request_received_timestamp <= w.end
        }) else {
            continue;
        };
        let resource = match &ev.object_ref {
            Some(r) if !r.subresource.is_empty() => format!("{}/{}", r.resource, r.subresource),
            Some(r) => r.resource.clone(),
            None => "(non-resource)".into(),
        };
        *counts
            .entry(w.label.clone())
            .or_default()
            .entry(format!("{} {resource}", ev.verb))
            .or_default() += 1;
    }
    Ok(counts)
}

/// Whether an audit verb changes state.
pub fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// Totals of writes, GETs and LISTs in one window's counts.
pub fn totals(counts: &BTreeMap<String, u64>) -> (u64, u64, u64) {
    let (mut writes, mut gets, mut lists) = (0, 0, 0);
    for (key, n) in counts {
        match key.split(' ').next().unwrap_or("") {
            verb if is_write(verb) => writes += n,
            "get" => gets += n,
            "list" => lists += n,
            _ => {}
        }
    }
    (writes, gets, lists)
}
