//! What this process last wrote for each identity: its status and the resourceVersions of
//! the identity and token Secret after our writes. A watch event of our own Secret write
//! often triggers the next reconcile before the identity cache holds our status patch; a
//! stale status makes a fresh Secret look edited and a handled request look pending.
//! Instead of a GET per reconcile, the reconcile overlays what it remembers whenever the
//! cache is older than our last write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::api::{CommunicationIdentity, CommunicationIdentityStatus};

use super::resolver::{ResolvedService, ServiceKey};

#[derive(Debug, Clone, Default)]
pub struct Remembered {
    /// The identity's UID: a new object with the same name starts from nothing.
    pub uid: String,
    /// resourceVersion of the identity after our last status write, and that status
    /// while the cache has not caught up with it (dropped once it has: at thousands of
    /// identities a second copy of every status was a tenth of the operator's memory).
    pub identity_rv: Option<String>,
    pub status: Option<Box<CommunicationIdentityStatus>>,
    /// Digest of the status we last wrote (or read and found to match the Secret): tells
    /// whether the status at hand is ours after the copy is dropped.
    pub status_digest: Option<u64>,
    /// resourceVersion of the token Secret after our last write of it, or as last read
    /// and found intact.
    pub secret_rv: Option<String>,
    /// When we wrote it (to tell a cache that has not seen the write yet from a deletion).
    pub secret_written_at: Option<Timestamp>,
    /// When a read last found no Secret (until we write one): a pass repeated soon after
    /// (a quota turn, a full share) need not read again when its write is a plain create,
    /// which the API server refuses for a taken name.
    pub secret_absent_at: Option<Timestamp>,
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
    pub service: Option<Arc<ResolvedService>>,
    /// A user this process created (id, endpoint) that no status write has recorded yet:
    /// later attempts issue for it instead of creating another (issue 16, items 1 and 5).
    pub created_user: Option<Box<(String, String)>>,
    /// The status that describes what this process last wrote to the token Secret, when
    /// writing that status failed (API server restarting, throttled, denied): trusted again
    /// only while the Secret holds exactly that token, so a lost status write costs no
    /// second token.
    pub unrecorded: Option<Box<CommunicationIdentityStatus>>,
}

/// `oref` without the resourceVersion and UID that `ObjectRef::from_obj` carries:
/// equality and hashing ignore them, and in a map holding every identity they were two
/// more strings each (issue 19).
pub fn bare<K: kube::Resource<DynamicType = ()>>(oref: &ObjectRef<K>) -> ObjectRef<K> {
    let mut key = ObjectRef::new(&oref.name);
    key.namespace = oref.namespace.clone();
    key
}

/// Entries are boxed: the hash table keeps spare slots (up to half of them right after it
/// grows), and a spare slot of a boxed entry is a pointer, not a whole `Remembered`.
#[derive(Default)]
pub struct Memory {
    entries: Mutex<HashMap<ObjectRef<CommunicationIdentity>, Box<Remembered>>>,
    services: Mutex<SharedServices>,
}

/// One copy of each resolved service, shared by the identities that use it: a copy per
/// identity was its key's strings and its endpoint again for each of thousands.
#[derive(Default)]
struct SharedServices {
    by_key: HashMap<ServiceKey, Weak<ResolvedService>>,
    /// Dropped entries are swept when the map reaches this size (then twice what is left),
    /// so services deleted long ago do not stay and sweeping is rare.
    sweep_at: usize,
}

impl SharedServices {
    fn share(&mut self, service: &ResolvedService) -> Arc<ResolvedService> {
        // Destructured, so that a field added to ResolvedService must be compared here.
        let ResolvedService {
            key,
            endpoint,
            client,
            allow_adoption,
        } = service;
        if let Some(shared) = self.by_key.get(key).and_then(Weak::upgrade)
            && shared.endpoint == *endpoint
            && shared.allow_adoption == *allow_adoption
            && Arc::ptr_eq(&shared.client, client)
        {
            return shared;
        }
        if self.by_key.len() >= self.sweep_at {
            self.by_key.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (2 * self.by_key.len()).max(64);
        }
        let shared = Arc::new(service.clone());
        self.by_key
            .insert(service.key.clone(), Arc::downgrade(&shared));
        shared
    }
}

impl Memory {
    /// What we remember of the object with this UID (nothing for another UID).
    pub fn get(&self, oref: &ObjectRef<CommunicationIdentity>, uid: &str) -> Remembered {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(oref) {
            Some(r) if r.uid == uid => Remembered::clone(r),
            _ => Remembered {
                uid: uid.to_string(),
                ..Remembered::default()
            },
        }
    }

    fn update(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        f: impl FnOnce(&mut Remembered),
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry(bare(oref)).or_default();
        if entry.uid != uid {
            **entry = Remembered {
                uid: uid.to_string(),
                ..Remembered::default()
            };
        }
        f(entry);
    }

    /// We added the finalizer.
    pub fn finalizer_added(&self, oref: &ObjectRef<CommunicationIdentity>, uid: &str) {
        self.update(oref, uid, |r| r.finalizer_added = true);
    }

    /// We wrote `status`; the identity's resourceVersion is now `rv`. A status holding the
    /// user created earlier records it: memory lets it go.
    pub fn status_written(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        rv: Option<String>,
        status: &CommunicationIdentityStatus,
    ) {
        self.update(oref, uid, |r| {
            r.identity_rv = rv;
            r.status = Some(Box::new(status.clone()));
            r.status_digest = Some(status_digest(status));
            if r.created_user
                .as_ref()
                .is_some_and(|c| status.user_id.as_deref() == Some(c.0.as_str()))
            {
                r.created_user = None;
            }
            r.unrecorded = None;
        });
    }

    /// Writing `status` failed; it describes the Secret we wrote (or kept).
    pub fn status_unrecorded(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        status: &CommunicationIdentityStatus,
    ) {
        self.update(oref, uid, |r| r.unrecorded = Some(Box::new(status.clone())));
    }

    /// The cache has caught up with our status write: the copy is no longer needed.
    pub fn cache_caught_up(&self, oref: &ObjectRef<CommunicationIdentity>, uid: &str) {
        self.update(oref, uid, |r| r.status = None);
    }

    /// A status read from the API server (never older than our last write) replaces
    /// what we remembered of it.
    pub fn status_read(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        rv: Option<String>,
        status: &CommunicationIdentityStatus,
    ) {
        self.update(oref, uid, |r| {
            r.identity_rv = rv;
            r.status = None;
            r.status_digest = Some(status_digest(status));
        });
    }

    /// We wrote the token Secret at `now`; its resourceVersion is `rv`.
    pub fn secret_written(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        rv: Option<String>,
        now: Timestamp,
    ) {
        self.update(oref, uid, |r| {
            r.secret_rv = rv;
            r.secret_written_at = Some(now);
            r.secret_seen = false;
            r.secret_absent_at = None;
        });
    }

    /// A read found no Secret.
    pub fn secret_absent(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        now: Timestamp,
    ) {
        self.update(oref, uid, |r| r.secret_absent_at = Some(now));
    }

    /// The owned-Secret cache shows our last write.
    pub fn secret_seen(&self, oref: &ObjectRef<CommunicationIdentity>, uid: &str) {
        self.update(oref, uid, |r| r.secret_seen = true);
    }

    /// The Secret, read with `rv`, matches `status` (read from the cache at
    /// `identity_rv`): the next reconciles trust the cache again.
    pub fn secret_confirmed(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        rv: Option<String>,
        status: &CommunicationIdentityStatus,
        identity_rv: Option<String>,
    ) {
        self.update(oref, uid, |r| {
            r.secret_rv = rv;
            r.secret_seen = true;
            // A status that came from memory keeps the version of our write; one from the
            // cache needs no copy.
            if !r.status_is_ours(status) {
                r.status = None;
                r.status_digest = Some(status_digest(status));
                r.identity_rv = identity_rv;
            }
        });
    }

    /// A step failed while the Secret holds a token valid until `until` (or none).
    pub fn valid_until(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        until: Option<Timestamp>,
    ) {
        self.update(oref, uid, |r| r.valid_until = until);
    }

    /// A token was requested from ACS at `at` (the floor counts from here).
    pub fn token_requested(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        at: Timestamp,
    ) {
        self.update(oref, uid, |r| r.last_token_request = Some(at));
    }

    /// The service that reaches the user's resource, for cleanup.
    pub fn service_resolved(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        service: &ResolvedService,
    ) {
        let shared = self
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .share(service);
        self.update(oref, uid, |r| r.service = Some(shared));
    }

    /// ACS created `user` at `endpoint` for this identity: remembered until a status
    /// write holds it.
    pub fn user_created(
        &self,
        oref: &ObjectRef<CommunicationIdentity>,
        uid: &str,
        user: &str,
        endpoint: &str,
    ) {
        self.update(oref, uid, |r| {
            r.created_user = Some(Box::new((user.to_string(), endpoint.to_string())))
        });
    }

    pub fn forget(&self, oref: &ObjectRef<CommunicationIdentity>) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(oref);
    }

    /// Drops the entry of `oref` only if it is of the object with `uid`: an object created
    /// since under the same name keeps what is remembered of it.
    pub fn forget_uid(&self, oref: &ObjectRef<CommunicationIdentity>, uid: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(oref).is_some_and(|r| r.uid == uid) {
            entries.remove(oref);
        }
    }

    /// Keeps the entries for which `keep(key, uid)` holds.
    pub fn retain(&self, mut keep: impl FnMut(&ObjectRef<CommunicationIdentity>, &str) -> bool) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|oref, r| keep(oref, &r.uid));
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

/// Where the status to decide from comes from: the one rule that says whether the cached
/// identity can be trusted.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusSource {
    /// The cache holds our last write, something newer, or there is nothing to compare.
    Cached,
    /// The cache is older than our last write and we still hold a copy of it.
    Ours(Box<CommunicationIdentityStatus>),
    /// The cache is older than our last write and the copy is gone (dropped after the
    /// cache caught up, then a relist from a lagging watch cache put an older object
    /// back): read the identity from the API server, never decide from the older status.
    Reread,
}

pub fn status_source(cached_rv: Option<&str>, remembered: &Remembered) -> StatusSource {
    match (
        freshness(cached_rv, remembered.identity_rv.as_deref()),
        &remembered.status,
    ) {
        (Freshness::Older, Some(ours)) => StatusSource::Ours(ours.clone()),
        (Freshness::Older, None) => StatusSource::Reread,
        _ => StatusSource::Cached,
    }
}

/// The resourceVersion a status write must find (its precondition): our last write when
/// the object at hand is older than it, else the object's own.
pub fn expected_rv(cached_rv: Option<&str>, remembered: &Remembered) -> Option<String> {
    match freshness(cached_rv, remembered.identity_rv.as_deref()) {
        Freshness::Older => remembered.identity_rv.clone(),
        _ => cached_rv.map(str::to_string),
    }
}

/// `status` with the user this process created and no status has recorded yet filled in.
pub fn with_created_user(
    mut status: CommunicationIdentityStatus,
    remembered: &Remembered,
) -> CommunicationIdentityStatus {
    if status.user_id.is_none()
        && let Some((user, endpoint)) = remembered.created_user.as_deref()
    {
        status.user_id = Some(user.clone());
        status.user_endpoint = Some(endpoint.clone());
    }
    status
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

    fn resolved(
        name: &str,
        endpoint: &str,
        client: &Arc<crate::acs::AcsClient>,
    ) -> ResolvedService {
        ResolvedService {
            key: ServiceKey {
                kind: crate::api::ServiceKind::CommunicationService,
                namespace: Some("team-a".into()),
                name: name.into(),
            },
            endpoint: endpoint.into(),
            client: client.clone(),
            allow_adoption: false,
        }
    }

    #[test]
    fn identities_of_one_service_share_one_copy_until_the_service_changes() {
        let cs = crate::acs::ConnectionString::parse(
            "endpoint=https://a.b/;accesskey=c2VjcmV0LWtleS1ieXRlcw==",
        )
        .unwrap();
        let new_client = || Arc::new(crate::acs::AcsClient::new(&cs, Default::default()).unwrap());
        let (client, rotated) = (new_client(), new_client());
        let memory = Memory::default();
        let id = |n: &str| ObjectRef::<CommunicationIdentity>::new(n).within("team-a");
        let service_of = |n: &str| memory.get(&id(n), n).service.unwrap();

        memory.service_resolved(&id("a"), "a", &resolved("acs", "https://a.b/", &client));
        memory.service_resolved(&id("b"), "b", &resolved("acs", "https://a.b/", &client));
        assert!(Arc::ptr_eq(&service_of("a"), &service_of("b")));

        // A new client (rotated key) or another endpoint is a new copy, never the old one.
        memory.service_resolved(&id("c"), "c", &resolved("acs", "https://a.b/", &rotated));
        assert!(Arc::ptr_eq(&service_of("c").client, &rotated));
        memory.service_resolved(&id("d"), "d", &resolved("acs", "https://x.y/", &rotated));
        assert_eq!(service_of("d").endpoint, "https://x.y/");
        assert_eq!(service_of("a").endpoint, "https://a.b/");

        // Copies nobody holds are swept as the map grows.
        for i in 0..200 {
            let n = format!("gone-{i}");
            memory.service_resolved(&id(&n), &n, &resolved(&n, "https://a.b/", &client));
            memory.forget(&id(&n));
        }
        let kept = memory.services.lock().unwrap().by_key.len();
        assert!(kept < 140, "{kept} shared services kept for 2 in use");
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

    /// The rule that decides whether the cached status can be trusted, row by row.
    #[test]
    fn status_source_table() {
        let copy = Remembered {
            uid: "u".into(),
            identity_rv: Some("20".into()),
            status: Some(Box::new(status("ours"))),
            ..Default::default()
        };
        let no_copy = Remembered {
            status: None,
            ..copy.clone()
        };
        let nothing = Remembered::default();
        // (case, cached resourceVersion, memory, source to decide from, precondition)
        type Row<'a> = (
            &'a str,
            Option<&'a str>,
            &'a Remembered,
            StatusSource,
            Option<&'a str>,
        );
        let rows: Vec<Row> = vec![
            (
                "cache lags, copy held",
                Some("19"),
                &copy,
                StatusSource::Ours(Box::new(status("ours"))),
                Some("20"),
            ),
            (
                "cache lags after the copy was dropped (stale relist)",
                Some("19"),
                &no_copy,
                StatusSource::Reread,
                Some("20"),
            ),
            (
                "cache holds our write",
                Some("20"),
                &copy,
                StatusSource::Cached,
                Some("20"),
            ),
            (
                "someone wrote after us",
                Some("21"),
                &copy,
                StatusSource::Cached,
                Some("21"),
            ),
            (
                "someone wrote after us, no copy",
                Some("21"),
                &no_copy,
                StatusSource::Cached,
                Some("21"),
            ),
            (
                "nothing remembered",
                Some("1"),
                &nothing,
                StatusSource::Cached,
                Some("1"),
            ),
            (
                "versions that are not numbers",
                Some("abc"),
                &copy,
                StatusSource::Cached,
                Some("abc"),
            ),
        ];
        for (name, cached, r, source, rv) in rows {
            assert_eq!(status_source(cached, r), source, "{name}");
            assert_eq!(
                expected_rv(cached, r).as_deref(),
                rv,
                "{name}: precondition"
            );
        }
    }

    #[test]
    fn a_created_user_is_remembered_until_a_status_holding_it_is_written() {
        let m = Memory::default();
        let o = ObjectRef::new("a").within("ns");
        m.user_created(&o, "uid", "8:acs:x", "https://a");
        let filled = with_created_user(CommunicationIdentityStatus::default(), &m.get(&o, "uid"));
        assert_eq!(filled.user_id.as_deref(), Some("8:acs:x"));
        assert_eq!(filled.user_endpoint.as_deref(), Some("https://a"));
        // A status of someone else's user is never overwritten by the memory.
        assert_eq!(
            with_created_user(status("other"), &m.get(&o, "uid"))
                .user_id
                .as_deref(),
            Some("other")
        );
        m.status_written(
            &o,
            "uid",
            Some("5".into()),
            &CommunicationIdentityStatus::default(),
        );
        assert!(
            m.get(&o, "uid").created_user.is_some(),
            "a status without it records nothing"
        );
        m.status_written(&o, "uid", Some("6".into()), &filled);
        assert!(m.get(&o, "uid").created_user.is_none());
    }

    #[test]
    fn our_status_is_recognised_by_digest_and_its_copy_kept_only_while_the_cache_lags() {
        let mine = status("ours");
        let r = Remembered {
            uid: "u".into(),
            identity_rv: Some("20".into()),
            status: Some(Box::new(mine.clone())),
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
        m.secret_written(&o, "uid-1", Some("5".into()), Timestamp::UNIX_EPOCH);
        assert_eq!(m.get(&o, "uid-1").secret_rv.as_deref(), Some("5"));
        assert_eq!(m.get(&o, "uid-2").secret_rv, None);
        m.finalizer_added(&o, "uid-2");
        assert_eq!(m.get(&o, "uid-1").secret_rv, None);
        m.forget(&o);
        assert!(m.is_empty());
    }

    #[test]
    fn a_deleted_uid_is_forgotten_and_a_new_object_of_the_name_kept() {
        let m = Memory::default();
        let (a, b) = (
            ObjectRef::new("a").within("ns"),
            ObjectRef::new("b").within("ns"),
        );
        m.finalizer_added(&a, "new");
        m.finalizer_added(&b, "old");
        m.forget_uid(&a, "old");
        assert!(
            m.get(&a, "new").finalizer_added,
            "another UID's delete keeps it"
        );
        m.forget_uid(&b, "old");
        assert!(!m.get(&b, "old").finalizer_added);
        m.finalizer_added(&b, "b-uid");
        m.retain(|oref, uid| oref.name == "a" && uid == "new");
        assert_eq!(m.len(), 1);
        assert!(m.get(&a, "new").finalizer_added);
    }
}
