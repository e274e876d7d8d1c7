//! The caches every reconcile reads instead of the API server: services of both kinds,
//! Namespace labels, and the metadata of the Secrets the operator owns. Each is a
//! reflector fed by a watch; reconciles wait for [`Stores::synced`] so that an object
//! missing from a cache means missing from the cluster, not "not listed yet".
//!
//! Cached objects drop their `managedFields` (and identities their
//! `last-applied-configuration` copy of the spec): nothing reads them, and at thousands of
//! objects they were most of the operator's memory.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{mpsc, watch};

use crate::api::{ClusterCommunicationService, CommunicationIdentity, CommunicationService};
use crate::controller::secret::{ISSUED_AT_ANNOTATION, TEMPLATE_HASH_ANNOTATION};

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

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

#[cfg(test)]
mod slim_tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn labelled(owner: Option<OwnerReference>) -> PartialObjectMeta<Secret> {
        use kube::core::PartialObjectMetaExt;
        let mut s: PartialObjectMeta<Secret> = kube::core::ObjectMeta {
            name: Some("token".into()),
            namespace: Some("team-a".into()),
            labels: Some([("app.kubernetes.io/managed-by".to_string(), "x".to_string())].into()),
            annotations: Some(
                [
                    ("big".to_string(), "y".repeat(100_000)),
                    (TEMPLATE_HASH_ANNOTATION.to_string(), "h".to_string()),
                ]
                .into(),
            ),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        }
        .into_response_partial();
        slim_secret(&mut s);
        s
    }

    #[test]
    fn only_our_secrets_keep_their_metadata_in_the_cache() {
        let foreign = labelled(None);
        assert!(foreign.metadata.annotations.is_none() && foreign.metadata.labels.is_none());
        assert_eq!(foreign.metadata.name.as_deref(), Some("token"));
        let ours = labelled(Some(OwnerReference {
            api_version: "acs-operator.dev/v1alpha1".into(),
            kind: "CommunicationIdentity".into(),
            name: "chat-bot".into(),
            uid: "u".into(),
            controller: Some(true),
            ..Default::default()
        }));
        // Ours keeps its owner and only the annotations the reconcile reads from the cache.
        assert!(ours.metadata.labels.is_none());
        assert_eq!(
            ours.metadata.owner_references.as_ref().map(Vec::len),
            Some(1)
        );
        let kept: Vec<_> = ours
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(kept, [TEMPLATE_HASH_ANNOTATION]);
    }
}

/// [`slim`] for the owned-Secret cache: a Secret that carries our managed-by label (it is
/// public: anyone may set it) but no controller reference to a `CommunicationIdentity`
/// is kept only as a name, for the conflict check, so that a tenant's labelled Secrets
/// cannot fill the operator's memory with their annotations.
pub fn slim_secret(obj: &mut PartialObjectMeta<Secret>) {
    slim(obj);
    let ours = obj.metadata.owner_references.as_ref().is_some_and(|refs| {
        refs.iter().any(|r| {
            r.controller == Some(true)
                && r.kind == "CommunicationIdentity"
                && r.api_version.starts_with("acs-operator.dev/")
        })
    });
    // The reconcile reads a cached token Secret's owner, resourceVersion and two
    // annotations (template hash, issued-at); everything else is read with the Secret
    // itself when it is needed. Labels alone were a B-tree node per Secret (issue 19).
    obj.metadata.labels = None;
    obj.metadata.finalizers = None;
    obj.types = None;
    if ours {
        if let Some(annotations) = obj.metadata.annotations.as_mut() {
            annotations.retain(|k, _| CACHED_ANNOTATIONS.contains(&k.as_str()));
        }
        if obj
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.is_empty())
        {
            obj.metadata.annotations = None;
        }
    } else {
        obj.metadata.annotations = None;
    }
}

/// The token Secret annotations a reconcile reads from the cache.
const CACHED_ANNOTATIONS: [&str; 2] = [TEMPLATE_HASH_ANNOTATION, ISSUED_AT_ANNOTATION];

/// One watched scope: a namespace, or the whole cluster (`None`).
#[derive(Clone)]
pub struct WatchScope {
    pub namespace: Option<String>,
    pub identities: Store<CommunicationIdentity>,
    pub services: Store<CommunicationService>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
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

    pub fn secret(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<std::sync::Arc<PartialObjectMeta<Secret>>> {
        self.scope(ns)?
            .secrets
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
