//! Events on our objects, written straight to `events.k8s.io/v1`.
//!
//! kube's `Recorder` keeps every event it published for six minutes (to count repeats as
//! a series) and scans that cache on each publish: at thousands of new identities it was
//! the largest part of the operator's memory (about 4 KiB per identity) and serialised
//! every publish behind one lock. The reconcile already publishes a warning only when a
//! problem is new, so there is nothing to aggregate: each publish is one create.

use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};

/// `Normal` or `Warning`, as Kubernetes spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What an event says; the note is cut to the 1 KiB the API server accepts.
pub struct EventNote<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

/// The longest note the API server accepts (`events.k8s.io/v1` validation).
const MAX_NOTE_BYTES: usize = 1024;

pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    /// Makes names unique when two events for one object share a nanosecond.
    sequence: AtomicU64,
}

impl EventPublisher {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        EventPublisher {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            sequence: AtomicU64::new(0),
        }
    }

    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        what: &EventNote<'_>,
    ) -> Result<(), kube::Error> {
        let event = self.build(regarding, what, jiff::Timestamp::now());
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        Api::<Event>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
    }

    fn build(
        &self,
        regarding: &ObjectReference,
        what: &EventNote<'_>,
        now: jiff::Timestamp,
    ) -> Event {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let object = regarding.name.as_deref().unwrap_or(&self.controller);
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{object}.{:x}{seq:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(what.type_.as_str().to_string()),
            reason: Some(what.reason.to_string()),
            action: Some(what.action.to_string()),
            note: Some(truncate(what.note, MAX_NOTE_BYTES).to_string()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_on_a_character_boundary_within_the_limit() {
        let long = "é".repeat(600); // 1,200 bytes
        let cut = truncate(&long, MAX_NOTE_BYTES);
        assert!(cut.len() <= MAX_NOTE_BYTES && cut.len() >= MAX_NOTE_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short", MAX_NOTE_BYTES), "short");
    }
}
