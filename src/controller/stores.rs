//! The caches every reconcile reads instead of the API server: services of both kinds,
//! Namespace labels, and the metadata of the Secrets the operator owns. Each is a
//! reflector fed by a watch; reconciles wait for [`Stores::synced`] so that an object
//! missing from a cache means missing from the cluster, not "not listed yet".
//!
//! Cached objects drop their `managedFields` (and identities their
//! `last-applied-configuration` copy of the spec): nothing reads them, and at thousands of
//! objects they were most of the operator's memory.

use std::borrow::Cow;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{Lookup, ObjectRef, Store};
use tokio::sync::{mpsc, watch};

use crate::api::{ClusterCommunicationService, CommunicationIdentity, CommunicationService};
use crate::controller::secret::{self, TEMPLATE_HASH_ANNOTATION};

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A kind the operator watches and caches: what a watcher, a reflector and a controller
/// need of its type.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Drops what no reconcile reads from a cached object.
pub fn slim<K: ResourceExt>(obj: &mut K) {
    let meta = obj.meta_mut();
    // `None`, not an emptied Vec: a cleared Vec keeps its buffer for every cached object.
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// What a reconcile reads of a token Secret from the cache, and nothing else: its
/// resourceVersion, the UID of its controller, and two annotations (template hash,
/// issued-at). The typed metadata it replaces kept an `ObjectMeta`, an owner reference of
/// four strings and a B-tree node for two annotations: about 1.4 KiB a Secret, a fifth of
/// the operator's memory per identity in a heap profile at 4,000 identities (issue 19).
///
/// A Secret that carries our managed-by label (it is public: anyone may set it) but no
/// controller reference to a `CommunicationIdentity` keeps no annotations, so that a
/// tenant's labelled Secrets cannot fill the operator's memory with theirs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretMeta {
    name: Box<str>,
    namespace: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    /// UID of the first controller reference, of any kind: what [`secret::owned_by`]
    /// compares, so the cache and a read of the Secret agree.
    controller_uid: Option<Box<str>>,
    template_hash: Option<Box<str>>,
    issued_at: Option<Timestamp>,
}

/// Length of the template hash annotation's value (SHA-256 in hex).
const TEMPLATE_HASH_LEN: usize = 64;
/// Longer than any UID the API server assigns (36 characters). Anyone may write an owner
/// reference's UID on a labelled Secret, and the API server does not bound it.
const MAX_UID_LEN: usize = 128;
/// Kept in place of an oversized UID: owned by nobody, as the read of the Secret decides
/// (no identity has that UID).
const OVERSIZED_UID: &str = "\u{0}oversized";

fn bounded_uid(uid: &str) -> Box<str> {
    if uid.len() > MAX_UID_LEN {
        OVERSIZED_UID
    } else {
        uid
    }
    .into()
}

impl SecretMeta {
    pub fn of(obj: &PartialObjectMeta<Secret>) -> Self {
        let meta = &obj.metadata;
        let refs = meta.owner_references.as_deref().unwrap_or_default();
        let ours = refs.iter().any(|r| {
            r.controller == Some(true)
                && r.kind == "CommunicationIdentity"
                && r.api_version.starts_with("acs-operator.dev/")
        });
        SecretMeta {
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: meta.namespace.as_deref().map(Into::into),
            resource_version: meta.resource_version.as_deref().map(Into::into),
            controller_uid: secret::controller(meta).map(|r| bounded_uid(&r.uid)),
            // Only a SHA-256 digest can ever match: anything else is kept as "no match".
            template_hash: ours
                .then(|| meta.annotations.as_ref()?.get(TEMPLATE_HASH_ANNOTATION))
                .flatten()
                .filter(|h| h.len() == TEMPLATE_HASH_LEN)
                .map(|h| h.as_str().into()),
            issued_at: ours.then(|| secret::issued_at(meta)).flatten(),
        }
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// [`secret::owned_by`] of the cached Secret.
    pub fn owned_by(&self, identity_uid: &str) -> bool {
        self.controller_uid.as_deref() == Some(identity_uid)
    }

    /// [`secret::template_current`] of the cached Secret.
    pub fn template_current(&self, identity: &CommunicationIdentity) -> bool {
        self.template_hash
            .as_deref()
            .is_some_and(|h| *h == secret::template_hash(identity))
    }

    /// [`secret::issued_at`] of the cached Secret.
    pub fn issued_at(&self) -> Option<Timestamp> {
        self.issued_at
    }
}

/// The store is keyed by namespace and name alone: the resourceVersion and UID that
/// `ObjectRef` can carry would be two more strings per Secret that no lookup compares.
impl Lookup for SecretMeta {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        Secret::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        Secret::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        Secret::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Secret::plural(&())
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

#[cfg(test)]
mod secret_meta_tests {
    use super::*;
    use crate::controller::secret::ISSUED_AT_ANNOTATION;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn labelled(owner: Option<OwnerReference>) -> SecretMeta {
        use kube::core::PartialObjectMetaExt;
        let s: PartialObjectMeta<Secret> = kube::core::ObjectMeta {
            name: Some("token".into()),
            namespace: Some("team-a".into()),
            resource_version: Some("42".into()),
            labels: Some([("app.kubernetes.io/managed-by".to_string(), "x".to_string())].into()),
            annotations: Some(
                [
                    ("big".to_string(), "y".repeat(100_000)),
                    (TEMPLATE_HASH_ANNOTATION.to_string(), "h".repeat(64)),
                    (
                        ISSUED_AT_ANNOTATION.to_string(),
                        "2026-12-07T10:00:00Z".to_string(),
                    ),
                ]
                .into(),
            ),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        }
        .into_response_partial();
        SecretMeta::of(&s)
    }

    fn owner(kind: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "acs-operator.dev/v1alpha1".into(),
            kind: kind.into(),
            name: "chat-bot".into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn only_our_secrets_keep_the_two_annotations_the_reconcile_reads() {
        let foreign = labelled(None);
        assert_eq!(foreign.template_hash, None);
        assert_eq!(foreign.issued_at, None);
        assert!(!foreign.owned_by("u"));
        assert_eq!(foreign.resource_version(), Some("42"));

        let ours = labelled(Some(owner("CommunicationIdentity", "u")));
        assert_eq!(ours.template_hash.as_deref(), Some("h".repeat(64).as_str()));
        assert_eq!(
            ours.issued_at(),
            Some("2026-12-07T10:00:00Z".parse().unwrap())
        );
        assert!(ours.owned_by("u") && !ours.owned_by("v"));
        let key = ours.to_object_ref(());
        assert_eq!(
            (key.name.as_str(), key.namespace.as_deref()),
            ("token", Some("team-a"))
        );
        // Keyed without the resourceVersion and UID: no strings no lookup compares.
        assert_eq!(key.extra.resource_version, None);
    }

    #[test]
    fn a_tenant_cannot_make_the_cache_keep_large_values() {
        use kube::core::PartialObjectMetaExt;
        let mut forged = owner("CommunicationIdentity", &"u".repeat(1 << 20));
        forged.name = "x".into();
        let s: PartialObjectMeta<Secret> = kube::core::ObjectMeta {
            name: Some("token".into()),
            namespace: Some("team-a".into()),
            annotations: Some(
                [(TEMPLATE_HASH_ANNOTATION.to_string(), "h".repeat(256 << 10))].into(),
            ),
            owner_references: Some(vec![forged]),
            ..Default::default()
        }
        .into_response_partial();
        let cached = SecretMeta::of(&s);
        assert!(
            cached
                .controller_uid
                .as_ref()
                .is_some_and(|u| u.len() <= MAX_UID_LEN)
        );
        assert!(!cached.owned_by(&"u".repeat(1 << 20)) && !cached.owned_by(""));
        assert_eq!(cached.template_hash, None);
    }

    #[test]
    fn ownership_is_the_first_controller_reference_as_a_read_decides_it() {
        // The same answer as `secret::owned_by` on the Secret read whole: a controller of
        // another kind with the identity's UID owns it; its annotations are not kept.
        let other = labelled(Some(owner("Deployment", "u")));
        assert!(other.owned_by("u"));
        assert_eq!(other.template_hash, None);
    }
}

/// One watched scope: a namespace, or the whole cluster (`None`).
#[derive(Clone)]
pub struct WatchScope {
    pub namespace: Option<String>,
    pub identities: Store<CommunicationIdentity>,
    pub services: Store<CommunicationService>,
    pub secrets: Store<SecretMeta>,
    /// Reconcile requests for identities of this scope (credential, namespace and cluster
    /// service changes).
    pub trigger: mpsc::UnboundedSender<ObjectRef<CommunicationIdentity>>,
}

impl WatchScope {
    fn covers(&self, ns: &str) -> bool {
        self.namespace.as_deref().is_none_or(|s| s == ns)
    }
}

#[derive(Clone)]
pub struct Stores {
    pub scopes: Vec<WatchScope>,
    pub cluster_services: Store<ClusterCommunicationService>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    synced: watch::Receiver<bool>,
}

impl Stores {
    pub fn new(
        scopes: Vec<WatchScope>,
        cluster_services: Store<ClusterCommunicationService>,
        namespaces: Store<PartialObjectMeta<Namespace>>,
        synced: watch::Receiver<bool>,
    ) -> Self {
        Stores {
            scopes,
            cluster_services,
            namespaces,
            synced,
        }
    }

    fn scope(&self, ns: &str) -> Option<&WatchScope> {
        self.scopes.iter().find(|s| s.covers(ns))
    }

    /// Waits until every cache has listed once. Many reconciles wait at once, so this is a
    /// watch channel, not `Store::wait_until_ready` (which keeps a single waker).
    pub async fn synced(&self) {
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    pub fn service(&self, ns: &str, name: &str) -> Option<std::sync::Arc<CommunicationService>> {
        self.scope(ns)?
            .services
            .get(&ObjectRef::new(name).within(ns))
    }

    pub fn cluster_service(
        &self,
        name: &str,
    ) -> Option<std::sync::Arc<ClusterCommunicationService>> {
        self.cluster_services.get(&ObjectRef::new(name))
    }

    pub fn namespace(&self, name: &str) -> Option<std::sync::Arc<PartialObjectMeta<Namespace>>> {
        self.namespaces.get(&ObjectRef::new(name))
    }

    pub fn secret(&self, ns: &str, name: &str) -> Option<std::sync::Arc<SecretMeta>> {
        self.scope(ns)?
            .secrets
            .get(&ObjectRef::new(name).within(ns))
    }

    /// The cached identity `name` in `ns`, if a scope watches its namespace.
    pub fn identity(&self, ns: &str, name: &str) -> Option<std::sync::Arc<CommunicationIdentity>> {
        self.scope(ns)?
            .identities
            .get(&ObjectRef::new(name).within(ns))
    }

    /// Every cached identity, across scopes.
    pub fn identities(&self) -> impl Iterator<Item = std::sync::Arc<CommunicationIdentity>> + '_ {
        self.scopes.iter().flat_map(|s| s.identities.state())
    }

    /// Asks for a reconcile of `identity` in the scope that watches its namespace.
    pub fn trigger(&self, identity: ObjectRef<CommunicationIdentity>) {
        let Some(ns) = identity.namespace.as_deref() else {
            return;
        };
        if let Some(scope) = self.scope(ns) {
            let _ = scope.trigger.send(identity);
        }
    }
}
