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

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reconcile reads from a cached object.
pub fn slim<K: ResourceExt>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut().remove(LAST_APPLIED);
}

/// One watched scope: a namespace, or the whole cluster (`None`).
#[derive(Clone)]
pub struct Scope {
    pub namespace: Option<String>,
    pub identities: Store<CommunicationIdentity>,
    pub services: Store<CommunicationService>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
    /// Reconcile requests for identities of this scope (credential, namespace and cluster
    /// service changes).
    pub trigger: mpsc::UnboundedSender<ObjectRef<CommunicationIdentity>>,
}

impl Scope {
    fn covers(&self, ns: &str) -> bool {
        self.namespace.as_deref().is_none_or(|s| s == ns)
    }
}

#[derive(Clone)]
pub struct Stores {
    pub scopes: Vec<Scope>,
    pub cluster_services: Store<ClusterCommunicationService>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    synced: watch::Receiver<bool>,
}

impl Stores {
    pub fn new(
        scopes: Vec<Scope>,
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

    fn scope(&self, ns: &str) -> Option<&Scope> {
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
