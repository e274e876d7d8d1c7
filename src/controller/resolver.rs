//! Which service an identity uses, whether its namespace may use it, and the shared ACS
//! client for the resource it names. Reads only caches (service and Namespace stores,
//! credential watches); the one API read is a credential Secret at a version not parsed
//! yet, shared by every identity that uses it.

// Resolution errors carry the service and Secret they are about so that the condition
// message can name them; they are returned once per reconcile, so their size is moot.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use crate::acs::AcsClient;
use crate::api::conditions::reasons;
use crate::api::{ClusterEntraId, CommunicationIdentity, EntraId, Quota, ServiceKind};

use super::clients::{ClientCache, CredentialError, CredentialProblem};
use super::credentials::{CredentialRef, CredentialWatches, SecretVersion};
use super::stores::Stores;

/// Which service: kind, namespace (for namespaced services) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub kind: ServiceKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(
                f,
                "CommunicationService `{}` in namespace `{ns}`",
                self.name
            ),
            None => write!(f, "ClusterCommunicationService `{}`", self.name),
        }
    }
}

/// `KIND/NAME` as given to `--default-service`.
pub fn parse_default_service(s: &str) -> Result<(ServiceKind, String), String> {
    let (kind, name) = s.split_once('/').ok_or_else(|| {
        format!("`{s}`: expected KIND/NAME, e.g. ClusterCommunicationService/default")
    })?;
    let kind = match kind {
        "CommunicationService" => ServiceKind::CommunicationService,
        "ClusterCommunicationService" => ServiceKind::ClusterCommunicationService,
        other => {
            return Err(format!(
                "`{other}` is not a service kind; use CommunicationService or ClusterCommunicationService"
            ));
        }
    };
    if name.is_empty() {
        return Err(format!("`{s}`: the service name is empty"));
    }
    Ok((kind, name.to_string()))
}

/// The service an identity refers to (its `serviceRef`, or the operator's default).
pub fn service_key_for(
    identity: &CommunicationIdentity,
    default: Option<&(ServiceKind, String)>,
) -> Option<ServiceKey> {
    let (kind, name) = match &identity.spec.service_ref {
        Some(r) => (r.kind, r.name.clone()),
        None => default.cloned()?,
    };
    Some(ServiceKey {
        kind,
        namespace: match kind {
            ServiceKind::CommunicationService => identity.namespace(),
            ServiceKind::ClusterCommunicationService => None,
        },
        name,
    })
}

/// A usable service: the resource's endpoint, its shared client, and what the service
/// allows.
#[derive(Clone, Debug)]
pub struct ResolvedService {
    pub key: ServiceKey,
    pub endpoint: String,
    pub client: Arc<AcsClient>,
    pub allow_adoption: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no service: spec.serviceRef is not set and the operator has no --default-service")]
    NoService,
    #[error("{0} does not exist")]
    ServiceNotFound(ServiceKey),
    #[error(
        "{service} does not allow namespace `{namespace}` (its spec.namespaceSelector does not select it)"
    )]
    NotAllowed {
        service: ServiceKey,
        namespace: String,
    },
    #[error(
        "{service} names a credential Secret in namespace `{namespace}`; cluster services may only use Secrets in \
         the operator's cluster resource namespace `{allowed}` (--cluster-resource-namespace): move the Secret there"
    )]
    SecretNamespaceNotAllowed {
        service: ServiceKey,
        namespace: String,
        allowed: String,
    },
    #[error("{service}: Secret `{}` in namespace `{}` does not exist", .credential.name, .credential.namespace)]
    SecretNotFound {
        service: ServiceKey,
        credential: CredentialRef,
    },
    #[error("{service}: Secret `{}` in namespace `{}` has no key `{}`", .credential.name, .credential.namespace, .credential.key)]
    KeyMissing {
        service: ServiceKey,
        credential: CredentialRef,
    },
    #[error("{service}: key `{}` of Secret `{}` in namespace `{}` is not a valid connection string: {reason}", .credential.key, .credential.name, .credential.namespace)]
    Invalid {
        service: ServiceKey,
        credential: CredentialRef,
        reason: String,
    },
    #[error("{service}: {reason}")]
    InsecureEndpoint { service: ServiceKey, reason: String },
    #[error(
        "{service} names ServiceAccount `{name}` in namespace `{namespace}`; {}",
        if *.cluster {
            format!("cluster services may only use ServiceAccounts in the operator's cluster resource namespace `{allowed}` (--cluster-resource-namespace)")
        } else {
            format!("a CommunicationService may only use ServiceAccounts of its own namespace `{allowed}`")
        }
    )]
    ServiceAccountNamespaceNotAllowed {
        service: ServiceKey,
        namespace: String,
        name: String,
        allowed: String,
        cluster: bool,
    },
    #[error(
        "{service} has spec.entraId without serviceAccountRef, which would use the operator's own identity; \
         a CommunicationService must name a ServiceAccount of its namespace (spec.entraId.serviceAccountRef), \
         unless the operator runs with --namespaced-service-ambient-credentials"
    )]
    AmbientNotAllowed { service: ServiceKey },
    #[error(
        "{service} has spec.entraId.authorityHost without serviceAccountRef: in ambient mode the operator's own \
         token goes only to the operator's authority (its AZURE_AUTHORITY_HOST); remove authorityHost, or name a \
         ServiceAccount of the namespace in spec.entraId.serviceAccountRef"
    )]
    AmbientAuthorityNotAllowed { service: ServiceKey },
    /// Getting an Entra ID token failed; `reason` is the condition reason.
    #[error("{service}: {message}")]
    Entra {
        service: ServiceKey,
        reason: &'static str,
        message: String,
        transient: bool,
    },
    #[error("{service}: {reason}")]
    BadClient { service: ServiceKey, reason: String },
    #[error("{service}: reading its credential Secret: {source}")]
    Kube {
        service: ServiceKey,
        #[source]
        source: kube::Error,
    },
}

impl ResolveError {
    /// The `Ready` condition reason this error maps to.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::NoService | ResolveError::ServiceNotFound(_) => {
                reasons::SERVICE_NOT_FOUND
            }
            ResolveError::NotAllowed { .. } => reasons::SERVICE_NOT_ALLOWED,
            ResolveError::SecretNamespaceNotAllowed { .. } => reasons::SECRET_NAMESPACE_NOT_ALLOWED,
            ResolveError::SecretNotFound { .. } => reasons::SECRET_NOT_FOUND,
            ResolveError::KeyMissing { .. } => reasons::SECRET_KEY_MISSING,
            ResolveError::InsecureEndpoint { .. } => reasons::INSECURE_ENDPOINT,
            ResolveError::ServiceAccountNamespaceNotAllowed { .. } => {
                reasons::SERVICE_ACCOUNT_NAMESPACE_NOT_ALLOWED
            }
            ResolveError::AmbientNotAllowed { .. }
            | ResolveError::AmbientAuthorityNotAllowed { .. } => {
                reasons::AMBIENT_CREDENTIALS_NOT_ALLOWED
            }
            ResolveError::Entra { reason, .. } => reason,
            ResolveError::Invalid { .. } | ResolveError::BadClient { .. } => {
                reasons::CONNECTION_STRING_INVALID
            }
            ResolveError::Kube { .. } => reasons::SERVICE_NOT_READY,
        }
    }

    /// A retry soon may fix it (the API server), as opposed to a person.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ResolveError::Kube { .. }
                | ResolveError::Entra {
                    transient: true,
                    ..
                }
        )
    }

    /// The service may not be used for this identity at all: a token it minted earlier is
    /// no reason to stay Ready.
    pub fn forbids_use(&self) -> bool {
        matches!(
            self,
            ResolveError::NotAllowed { .. }
                | ResolveError::SecretNamespaceNotAllowed { .. }
                | ResolveError::InsecureEndpoint { .. }
                | ResolveError::ServiceAccountNamespaceNotAllowed { .. }
                | ResolveError::AmbientNotAllowed { .. }
                | ResolveError::AmbientAuthorityNotAllowed { .. }
        )
    }
}

/// How a service authenticates to ACS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceCredential {
    /// HMAC with the key of the connection string in this Secret.
    ConnectionString(CredentialRef),
    /// Entra ID workload identity.
    Entra(EntraRef),
}

/// An Entra ID credential as a service names it, after the namespace rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntraRef {
    /// `spec.endpoint`, as written.
    pub endpoint: String,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub authority_host: Option<String>,
    pub source: TokenSource,
}

/// Whose Kubernetes token is exchanged for the Entra token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenSource {
    /// A TokenRequest for this ServiceAccount.
    ServiceAccount { namespace: String, name: String },
    /// The operator's own projected token (`AZURE_FEDERATED_TOKEN_FILE`).
    Ambient,
}

/// The Entra credential of a namespaced service: its own namespace's ServiceAccount, or
/// ambient only when the operator allows it (`--namespaced-service-ambient-credentials`).
pub fn namespaced_entra(
    key: &ServiceKey,
    namespace: &str,
    endpoint: Option<&str>,
    entra: &EntraId,
    allow_ambient: bool,
) -> Result<EntraRef, ResolveError> {
    let source = match &entra.service_account_ref {
        Some(sa) => TokenSource::ServiceAccount {
            namespace: namespace.to_string(),
            name: sa.name.clone(),
        },
        // A tenant must never choose where the operator's own token is sent: it would
        // get a token that impersonates the operator at the real authority.
        None if allow_ambient && entra.authority_host.is_some() => {
            return Err(ResolveError::AmbientAuthorityNotAllowed {
                service: key.clone(),
            });
        }
        None if allow_ambient => TokenSource::Ambient,
        None => {
            return Err(ResolveError::AmbientNotAllowed {
                service: key.clone(),
            });
        }
    };
    Ok(EntraRef {
        endpoint: endpoint.unwrap_or_default().to_string(),
        client_id: entra.client_id.clone(),
        tenant_id: entra.tenant_id.clone(),
        authority_host: entra.authority_host.clone(),
        source,
    })
}

/// The Entra credential of a cluster service: a ServiceAccount of the cluster resource
/// namespace, or ambient.
pub fn cluster_entra(
    key: &ServiceKey,
    endpoint: Option<&str>,
    entra: &ClusterEntraId,
    cluster_resource_namespace: &str,
) -> Result<EntraRef, ResolveError> {
    let source = match &entra.service_account_ref {
        Some(sa) if sa.namespace == cluster_resource_namespace => TokenSource::ServiceAccount {
            namespace: sa.namespace.clone(),
            name: sa.name.clone(),
        },
        Some(sa) => {
            return Err(ResolveError::ServiceAccountNamespaceNotAllowed {
                service: key.clone(),
                namespace: sa.namespace.clone(),
                name: sa.name.clone(),
                allowed: cluster_resource_namespace.to_string(),
                cluster: true,
            });
        }
        None => TokenSource::Ambient,
    };
    Ok(EntraRef {
        endpoint: endpoint.unwrap_or_default().to_string(),
        client_id: entra.client_id.clone(),
        tenant_id: entra.tenant_id.clone(),
        authority_host: entra.authority_host.clone(),
        source,
    })
}

/// The parts of a service spec resolution needs, whichever kind it is.
pub struct ServiceParts {
    pub credential: ServiceCredential,
    pub api_version: String,
    pub quota: Quota,
    pub allow_adoption: bool,
}

pub struct Resolver {
    pub kube: Client,
    pub stores: Stores,
    /// Shared with the service controllers: one parse per credential version and one
    /// client per resource for the whole process.
    pub clients: Arc<ClientCache>,
    pub credentials: CredentialWatches<ObjectRef<CommunicationIdentity>>,
    pub default_service: Option<(ServiceKind, String)>,
    pub cluster_resource_namespace: String,
}

impl Resolver {
    pub fn key_for(&self, identity: &CommunicationIdentity) -> Option<ServiceKey> {
        service_key_for(identity, self.default_service.as_ref())
    }

    /// Finds the identity's service in the caches, checks that its namespace may use it,
    /// and returns the shared client for the resource its credentials name.
    pub async fn resolve(
        &self,
        identity: &CommunicationIdentity,
    ) -> Result<ResolvedService, ResolveError> {
        // Held for as long as the identity lives: without the resourceVersion and UID.
        let oref = crate::controller::memory::bare(&ObjectRef::from_obj(identity));
        let ns = identity.namespace().unwrap_or_default();
        let key = self.key_for(identity).ok_or(ResolveError::NoService)?;
        let parts = self.service_parts(&key, &ns)?;
        let Some(parts) = parts else {
            self.credentials.forget(&oref);
            return Err(ResolveError::ServiceNotFound(key));
        };
        let (endpoint, client) = match &parts.credential {
            ServiceCredential::ConnectionString(credential) => {
                let version = self.credentials.depend(oref, credential);
                client_for(
                    &self.clients,
                    &self.kube,
                    &key,
                    credential,
                    &version,
                    &parts.api_version,
                    &parts.quota,
                )
                .await?
            }
            ServiceCredential::Entra(entra) => {
                self.credentials.forget(&oref);
                entra_client_for(
                    &self.clients,
                    &self.kube,
                    &key,
                    entra,
                    &parts.api_version,
                    &parts.quota,
                )
                .await?
            }
        };
        Ok(ResolvedService {
            key,
            endpoint,
            client,
            allow_adoption: parts.allow_adoption,
        })
    }

    /// The service's spec parts from the caches (`None`: no such service), after the
    /// namespace and credential-location checks.
    pub fn service_parts(
        &self,
        key: &ServiceKey,
        identity_namespace: &str,
    ) -> Result<Option<ServiceParts>, ResolveError> {
        match key.kind {
            ServiceKind::CommunicationService => {
                // A namespaced service serves only its own namespace (the key's namespace
                // is always the identity's), and reads its Secret from there.
                let ns = key.namespace.as_deref().unwrap_or(identity_namespace);
                let Some(svc) = self.stores.service(ns, &key.name) else {
                    return Ok(None);
                };
                Ok(Some(ServiceParts {
                    credential: namespaced_service_credential(
                        key,
                        ns,
                        &svc.spec,
                        self.clients.settings().entra.namespaced_ambient,
                    )?,
                    api_version: svc.spec.api_version.clone(),
                    quota: svc.spec.quota.clone(),
                    allow_adoption: svc.spec.allows_adoption(),
                }))
            }
            ServiceKind::ClusterCommunicationService => {
                let Some(svc) = self.stores.cluster_service(&key.name) else {
                    return Ok(None);
                };
                let labels = self
                    .stores
                    .namespace(identity_namespace)
                    .map(|n| n.labels().clone())
                    .unwrap_or_default();
                if !svc.spec.selects_namespace(&labels) {
                    return Err(ResolveError::NotAllowed {
                        service: key.clone(),
                        namespace: identity_namespace.to_string(),
                    });
                }
                Ok(Some(ServiceParts {
                    credential: cluster_service_credential(
                        key,
                        &svc.spec,
                        &self.cluster_resource_namespace,
                    )?,
                    api_version: svc.spec.api_version.clone(),
                    quota: svc.spec.quota.clone(),
                    allow_adoption: svc.spec.allows_adoption(),
                }))
            }
        }
    }
}

/// The shared client for the resource a credential Secret names (read at `version`),
/// once its endpoint passed the endpoint rules; with the endpoint.
pub async fn client_for(
    clients: &ClientCache,
    kube: &Client,
    key: &ServiceKey,
    credential: &CredentialRef,
    version: &SecretVersion,
    api_version: &str,
    quota: &Quota,
) -> Result<(String, Arc<AcsClient>), ResolveError> {
    let connection = clients
        .connection(kube, credential, version)
        .await
        .map_err(|e| credential_error(key, credential, e))?;
    crate::acs::check_endpoint(
        connection.endpoint(),
        clients.settings().allow_insecure_endpoints,
    )
    .map_err(|e| ResolveError::InsecureEndpoint {
        service: key.clone(),
        reason: e.to_string(),
    })?;
    let client = clients
        .client(key, &connection, api_version, quota)
        .map_err(|reason| ResolveError::BadClient {
            service: key.clone(),
            reason,
        })?;
    Ok((connection.endpoint_str(), client))
}

/// A namespaced service's credential, after the namespace rules. The CRD admits exactly
/// one of the two kinds; an object stored otherwise is refused here too.
pub fn namespaced_service_credential(
    key: &ServiceKey,
    ns: &str,
    spec: &crate::api::CommunicationServiceSpec,
    allow_ambient: bool,
) -> Result<ServiceCredential, ResolveError> {
    match (&spec.connection_string_secret_ref, &spec.entra_id) {
        (Some(r), None) => Ok(ServiceCredential::ConnectionString(namespaced_credential(
            ns, r,
        ))),
        (None, Some(entra)) => Ok(ServiceCredential::Entra(namespaced_entra(
            key,
            ns,
            spec.endpoint.as_deref(),
            entra,
            allow_ambient,
        )?)),
        _ => Err(ResolveError::BadClient {
            service: key.clone(),
            reason: "set exactly one of spec.connectionStringSecretRef and spec.entraId".into(),
        }),
    }
}

/// A cluster service's credential, after the cluster-resource-namespace rules.
pub fn cluster_service_credential(
    key: &ServiceKey,
    spec: &crate::api::ClusterCommunicationServiceSpec,
    cluster_resource_namespace: &str,
) -> Result<ServiceCredential, ResolveError> {
    match (&spec.connection_string_secret_ref, &spec.entra_id) {
        (Some(r), None) => {
            check_cluster_secret_namespace(key, &r.namespace, cluster_resource_namespace)?;
            Ok(ServiceCredential::ConnectionString(CredentialRef {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                key: r.key.clone(),
            }))
        }
        (None, Some(entra)) => Ok(ServiceCredential::Entra(cluster_entra(
            key,
            spec.endpoint.as_deref(),
            entra,
            cluster_resource_namespace,
        )?)),
        _ => Err(ResolveError::BadClient {
            service: key.clone(),
            reason: "set exactly one of spec.connectionStringSecretRef and spec.entraId".into(),
        }),
    }
}

/// The shared client for the resource an Entra credential names, with its endpoint. The
/// Entra token is obtained (or taken from the cache) here, so that a federation problem
/// shows on the service and its identities before any ACS request.
pub async fn entra_client_for(
    clients: &ClientCache,
    kube: &Client,
    key: &ServiceKey,
    entra: &EntraRef,
    api_version: &str,
    quota: &Quota,
) -> Result<(String, Arc<AcsClient>), ResolveError> {
    let (endpoint, client, credential) = clients
        .entra_client(key, kube, entra, api_version, quota)
        .map_err(|e| match e {
            super::clients::EntraClientError::Endpoint(reason) => ResolveError::InsecureEndpoint {
                service: key.clone(),
                reason,
            },
            super::clients::EntraClientError::Client(reason) => ResolveError::BadClient {
                service: key.clone(),
                reason,
            },
        })?;
    credential.token().await.map_err(|e| ResolveError::Entra {
        service: key.clone(),
        reason: e.reason(),
        message: e.to_string(),
        transient: e.is_transient(),
    })?;
    Ok((endpoint, client))
}

pub fn namespaced_credential(ns: &str, r: &crate::api::SecretKeyRef) -> CredentialRef {
    CredentialRef {
        namespace: ns.to_string(),
        name: r.name.clone(),
        key: r.key.clone(),
    }
}

/// A cluster service's Secret must live in the cluster resource namespace: otherwise
/// anyone allowed to write such a service could make the operator read any Secret.
pub fn check_cluster_secret_namespace(
    key: &ServiceKey,
    namespace: &str,
    allowed: &str,
) -> Result<(), ResolveError> {
    if namespace == allowed {
        Ok(())
    } else {
        Err(ResolveError::SecretNamespaceNotAllowed {
            service: key.clone(),
            namespace: namespace.to_string(),
            allowed: allowed.to_string(),
        })
    }
}

pub fn credential_error(
    key: &ServiceKey,
    credential: &CredentialRef,
    e: CredentialError,
) -> ResolveError {
    let service = key.clone();
    let credential = credential.clone();
    match e {
        CredentialError::Problem(CredentialProblem::SecretNotFound) => {
            ResolveError::SecretNotFound {
                service,
                credential,
            }
        }
        CredentialError::Problem(CredentialProblem::KeyMissing) => ResolveError::KeyMissing {
            service,
            credential,
        },
        CredentialError::Problem(CredentialProblem::Invalid(reason)) => ResolveError::Invalid {
            service,
            credential,
            reason,
        },
        CredentialError::Kube { source, .. } => ResolveError::Kube { service, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_service_flag_parses_and_names_mistakes() {
        assert_eq!(
            parse_default_service("ClusterCommunicationService/default"),
            Ok((ServiceKind::ClusterCommunicationService, "default".into()))
        );
        assert_eq!(
            parse_default_service("CommunicationService/acs"),
            Ok((ServiceKind::CommunicationService, "acs".into()))
        );
        assert!(
            parse_default_service("default")
                .unwrap_err()
                .contains("KIND/NAME")
        );
        assert!(
            parse_default_service("Issuer/x")
                .unwrap_err()
                .contains("`Issuer` is not a service kind")
        );
        assert!(
            parse_default_service("CommunicationService/")
                .unwrap_err()
                .contains("empty")
        );
    }

    #[test]
    fn cluster_credentials_only_from_the_cluster_resource_namespace() {
        let key = ServiceKey {
            kind: ServiceKind::ClusterCommunicationService,
            namespace: None,
            name: "shared".into(),
        };
        assert!(check_cluster_secret_namespace(&key, "acs-system", "acs-system").is_ok());
        let err = check_cluster_secret_namespace(&key, "team-b", "acs-system").unwrap_err();
        assert_eq!(err.reason(), reasons::SECRET_NAMESPACE_NOT_ALLOWED);
        assert!(err.forbids_use());
        let msg = err.to_string();
        assert!(
            msg.contains("team-b") && msg.contains("acs-system"),
            "{msg}"
        );
    }

    #[test]
    fn entra_service_accounts_follow_the_namespace_rules() {
        use crate::api::{NamespacedServiceAccountRef, ServiceAccountRef};
        let ns_key = ServiceKey {
            kind: ServiceKind::CommunicationService,
            namespace: Some("team-a".into()),
            name: "acs".into(),
        };
        let cl_key = ServiceKey {
            kind: ServiceKind::ClusterCommunicationService,
            namespace: None,
            name: "shared".into(),
        };
        let sa = |name: &str| EntraId {
            service_account_ref: Some(ServiceAccountRef { name: name.into() }),
            ..EntraId::default()
        };
        let ep = Some("https://acs.example");
        // Namespaced: always its own namespace; ambient only with the flag.
        let r = namespaced_entra(&ns_key, "team-a", ep, &sa("acs-client"), false).unwrap();
        assert_eq!(
            r.source,
            TokenSource::ServiceAccount {
                namespace: "team-a".into(),
                name: "acs-client".into()
            }
        );
        let e = namespaced_entra(&ns_key, "team-a", ep, &EntraId::default(), false).unwrap_err();
        assert_eq!(e.reason(), reasons::AMBIENT_CREDENTIALS_NOT_ALLOWED);
        assert!(e.forbids_use() && !e.is_transient());
        assert!(
            e.to_string()
                .contains("--namespaced-service-ambient-credentials")
        );
        let r = namespaced_entra(&ns_key, "team-a", ep, &EntraId::default(), true).unwrap();
        assert_eq!(r.source, TokenSource::Ambient);
        // Even with the flag, a tenant never picks where the operator's token goes.
        let elsewhere = EntraId {
            authority_host: Some("https://attacker.example".into()),
            ..EntraId::default()
        };
        let e = namespaced_entra(&ns_key, "team-a", ep, &elsewhere, true).unwrap_err();
        assert_eq!(e.reason(), reasons::AMBIENT_CREDENTIALS_NOT_ALLOWED);
        assert!(e.forbids_use() && !e.is_transient());
        assert!(e.to_string().contains("authorityHost"), "{e}");
        let own = EntraId {
            authority_host: Some("https://login.example".into()),
            ..sa("acs-client")
        };
        let r = namespaced_entra(&ns_key, "team-a", ep, &own, true).unwrap();
        assert_eq!(r.authority_host.as_deref(), Some("https://login.example"));
        // Cluster: the cluster resource namespace only; ambient allowed.
        let cl = |ns: &str| ClusterEntraId {
            service_account_ref: Some(NamespacedServiceAccountRef {
                name: "acs-client".into(),
                namespace: ns.into(),
            }),
            ..ClusterEntraId::default()
        };
        assert!(cluster_entra(&cl_key, ep, &cl("acs-system"), "acs-system").is_ok());
        let e = cluster_entra(&cl_key, ep, &cl("team-b"), "acs-system").unwrap_err();
        assert_eq!(e.reason(), reasons::SERVICE_ACCOUNT_NAMESPACE_NOT_ALLOWED);
        assert!(e.forbids_use());
        let msg = e.to_string();
        assert!(
            msg.contains("team-b") && msg.contains("acs-system"),
            "{msg}"
        );
        let r = cluster_entra(&cl_key, ep, &ClusterEntraId::default(), "acs-system").unwrap();
        assert_eq!(r.source, TokenSource::Ambient);
    }
}
