//! What this process last wrote for each identity: its status and the resourceVersions of
//! the identity and token Secret after our writes. A watch event of our own Secret write
//! often triggers the next reconcile before the identity cache holds our status patch; a
//! stale status makes a fresh Secret look edited and a handled request look pending.
//! Instead of a GET per reconcile, the reconcile overlays what it remembers whenever the
//! cache is older than our last write.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::api::{CommunicationIdentity, CommunicationIdentityStatus};

use super::resolver::ResolvedService;

#[derive(Debug, Clone, Default)]
pub struct Remembered {
    /// The identity's UID: a new object with the same name starts from nothing.
    pub uid: String,
    /// resourceVersion of the identity after our last status write, and that status
    /// while the cache has not caught up with it (dropped once it has: at thousands of
    /// identities a second copy of every status was a tenth of the operator's memory).
    pub identity_rv: Option<String>,
    pub status: Option<CommunicationIdentityStatus>,
    /// Digest of the status we last wrote (or read and found to match the Secret): tells
    /// whether the status at hand is ours after the copy is dropped.
    pub status_digest: Option<u64>,
    /// resourceVersion of the token Secret after our last write of it, or as last read
    /// and found intact.
    pub secret_rv: Option<String>,
    /// When we wrote it (to tell a cache that has not seen the write yet from a deletion).
    pub secret_written_at: Option<Timestamp>,
    /// The owned-Secret cache has shown our last write: from then on, absent from the
    /// cache means deleted.
    pub secret_seen: bool,
    /// We added the finalizer (the cache may not show it yet).
    pub finalizer_added: bool,
    /// Set while a step fails and the Secret still holds a valid token: its expiry, when
    /// the next look must come at the latest.
    pub valid_until: Option<Timestamp>,
    /// The last time a token was requested from ACS, answered or not: the token floor
    /// holds even when recording the token failed.
    pub last_token_request: Option<Timestamp>,
    /// The service last resolved for it: cleanup can still reach the user's resource when
    /// the service went first (a namespace being deleted takes both).
    pub service: Option<ResolvedService>,
}

#[derive(Default)]
pub struct Memory {
    entries: Mutex<HashMap<ObjectRef<CommunicationIdentity>, Remembered>>,
}

impl Memory {
    /// What we remember of the object with this UID (nothing for another UID).
    pub fn get(&self, oref: &ObjectRef<CommunicationIdentity>, uid: &str) -> Remembered {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(oref) {
            Some(r) if r.uid == uid => r.clone(),
            _ => Remembered {
                uid: uid.to_string(),
                ..Remembered::default()
            },
        }
    }

    pub fn update(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        f: impl FnOnce(&mut Remembered),
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry(oref.clone()).or_default();
        if entry.uid != uid {
            *entry = Remembered {
                uid: uid.to_string(),
                ..Remembered::default()
            };
        }
        f(entry);
    }

    pub fn forget(&self, oref: &ObjectRef<CommunicationIdentity>) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(oref);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a cached resourceVersion relates to the one our last write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The cache holds exactly our write.
    Same,
    /// The cache has not seen our write yet.
    Older,
    /// Someone wrote after us.
    Newer,
    /// Nothing to compare (no write remembered, or versions that are not numbers).
    Unknown,
}

/// Compares resourceVersions. The API server's are etcd revisions, comparable as integers
/// (Kubernetes guarantees it from 1.35 on for built-in storage); anything else is
/// `Unknown` and the caller reads the object instead of guessing.
pub fn freshness(cached: Option<&str>, ours: Option<&str>) -> Freshness {
    let (Some(cached), Some(ours)) = (cached, ours) else {
        return Freshness::Unknown;
    };
    if cached == ours {
        return Freshness::Same;
    }
    match (cached.parse::<u64>(), ours.parse::<u64>()) {
        (Ok(c), Ok(o)) if c < o => Freshness::Older,
        (Ok(_), Ok(_)) => Freshness::Newer,
        _ => Freshness::Unknown,
    }
}

/// A digest of a status, to recognise our own without keeping a copy.
pub fn status_digest(status: &CommunicationIdentityStatus) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same status gives the same digest for the life of the process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(status).unwrap_or_default().hash(&mut h);
    h.finish()
}

impl Remembered {
    /// Whether `status` is the one we last wrote or confirmed.
    pub fn status_is_ours(&self, status: &CommunicationIdentityStatus) -> bool {
        self.status_digest == Some(status_digest(status))
    }

    /// The copy of our status is needed only while the cache is older than our write.
    pub fn status_copy_needed(&self, cached_rv: Option<&str>) -> bool {
        self.status.is_some()
            && freshness(cached_rv, self.identity_rv.as_deref()) == Freshness::Older
    }
}

/// The status to decide from: the cached one, unless the cache is older than our last
/// write, in which case what we wrote.
pub fn effective_status(
    cached_rv: Option<&str>,
    cached: Option<&CommunicationIdentityStatus>,
    remembered: &Remembered,
) -> CommunicationIdentityStatus {
    match (
        freshness(cached_rv, remembered.identity_rv.as_deref()),
        &remembered.status,
    ) {
        (Freshness::Older, Some(ours)) => ours.clone(),
        _ => cached.cloned().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(user: &str) -> CommunicationIdentityStatus {
        CommunicationIdentityStatus {
            user_id: Some(user.into()),
            ..Default::default()
        }
    }

    #[test]
    fn resource_versions_compare_as_numbers_or_not_at_all() {
        assert_eq!(freshness(Some("10"), Some("10")), Freshness::Same);
        assert_eq!(freshness(Some("9"), Some("10")), Freshness::Older);
        assert_eq!(freshness(Some("100"), Some("99")), Freshness::Newer);
        assert_eq!(freshness(Some("abc"), Some("10")), Freshness::Unknown);
        assert_eq!(freshness(None, Some("10")), Freshness::Unknown);
        assert_eq!(freshness(Some("10"), None), Freshness::Unknown);
    }

    #[test]
    fn a_stale_cache_is_overlaid_with_our_last_write_and_a_newer_one_wins() {
        let ours = Remembered {
            uid: "u".into(),
            identity_rv: Some("20".into()),
            status: Some(status("ours")),
            ..Default::default()
        };
        let cached = status("cached");
        assert_eq!(
            effective_status(Some("19"), Some(&cached), &ours),
            status("ours")
        );
        assert_eq!(
            effective_status(Some("21"), Some(&cached), &ours),
            status("cached")
        );
        assert_eq!(
            effective_status(Some("20"), Some(&cached), &ours),
            status("cached")
        );
        let nothing = Remembered::default();
        assert_eq!(
            effective_status(Some("1"), Some(&cached), &nothing),
            status("cached")
        );
    }

    #[test]
    fn our_status_is_recognised_by_digest_and_its_copy_kept_only_while_the_cache_lags() {
        let mine = status("ours");
        let r = Remembered {
            uid: "u".into(),
            identity_rv: Some("20".into()),
            status: Some(mine.clone()),
            status_digest: Some(status_digest(&mine)),
            ..Default::default()
        };
        assert!(r.status_is_ours(&mine));
        assert!(!r.status_is_ours(&status("someone else's")));
        assert!(r.status_copy_needed(Some("19")));
        assert!(!r.status_copy_needed(Some("20")));
        assert!(!r.status_copy_needed(Some("21")));
        let dropped = Remembered { status: None, ..r };
        assert!(
            dropped.status_is_ours(&mine),
            "the digest outlives the copy"
        );
    }

    #[test]
    fn memory_is_per_uid() {
        let m = Memory::default();
        let o = ObjectRef::new("a").within("ns");
        m.update(&o, "uid-1", |r| r.secret_rv = Some("5".into()));
        assert_eq!(m.get(&o, "uid-1").secret_rv.as_deref(), Some("5"));
        assert_eq!(m.get(&o, "uid-2").secret_rv, None);
        m.update(&o, "uid-2", |r| r.identity_rv = Some("7".into()));
        assert_eq!(m.get(&o, "uid-1").secret_rv, None);
        m.forget(&o);
        assert!(m.is_empty());
    }
}
