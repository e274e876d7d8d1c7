//! Resolving the service an identity uses: which `CommunicationService` or
//! `ClusterCommunicationService`, whether this namespace may use it, its credentials, and
//! one cached ACS client per service and credential version.

// Resolution errors carry the service and Secret they are about so that the condition
// message can name them; they are returned once per reconcile, so their size is moot.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};

use crate::acs::{
    AcsClient, AcsClientOptions, AcsError, ConnectionString, QuotaConfig, Rate, RequestObserver,
};
use crate::api::conditions::reasons;
use crate::api::{
    ClusterCommunicationService, CommunicationIdentity, CommunicationService,
    NamespacedSecretKeyRef, Quota, SecretKeyRef, ServiceKind,
};

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

/// Where a service's connection string lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl CredentialRef {
    /// A namespaced service's Secret, always in the service's own namespace.
    pub fn namespaced(namespace: &str, r: &SecretKeyRef) -> Self {
        CredentialRef {
            namespace: namespace.to_string(),
            name: r.name.clone(),
            key: r.key.clone(),
        }
    }
}

impl From<&NamespacedSecretKeyRef> for CredentialRef {
    fn from(r: &NamespacedSecretKeyRef) -> Self {
        CredentialRef {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            key: r.key.clone(),
        }
    }
}

/// Reads a service object; absent is `ServiceNotFound`.
async fn fetch<K>(api: Api<K>, key: &ServiceKey) -> Result<K, ResolveError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(&key.name)
        .await
        .map_err(|source| ResolveError::Kube {
            what: key.to_string(),
            source,
        })?
        .ok_or_else(|| ResolveError::ServiceNotFound(key.clone()))
}

/// A usable service: endpoint and client.
#[derive(Clone)]
pub struct ResolvedService {
    pub key: ServiceKey,
    pub endpoint: String,
    pub client: Arc<AcsClient>,
    pub credential: CredentialRef,
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
    BadQuota { service: ServiceKey, reason: String },
    #[error("reading {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("building the ACS client for {service}: {source}")]
    Client {
        service: ServiceKey,
        #[source]
        source: AcsError,
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
            ResolveError::SecretNotFound { .. } => reasons::SECRET_NOT_FOUND,
            ResolveError::KeyMissing { .. } => reasons::SECRET_KEY_MISSING,
            ResolveError::Invalid { .. }
            | ResolveError::BadQuota { .. }
            | ResolveError::Client { .. } => reasons::CONNECTION_STRING_INVALID,
            ResolveError::Kube { .. } => reasons::SERVICE_NOT_READY,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, ResolveError::Kube { .. })
    }

    /// The credential Secret involved, so the caller can watch it for a fix.
    pub fn credential(&self) -> Option<&CredentialRef> {
        match self {
            ResolveError::SecretNotFound { credential, .. }
            | ResolveError::KeyMissing { credential, .. }
            | ResolveError::Invalid { credential, .. } => Some(credential),
            _ => None,
        }
    }
}

/// ACS clients by service; rebuilt when the credential or settings change.
#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<ServiceKey, (String, ResolvedService)>>,
}

/// What every ACS client of this operator shares.
#[derive(Clone, Default)]
pub struct ClientSettings {
    pub extra_ca_pem: Option<Vec<u8>>,
    pub observer: Option<Arc<dyn RequestObserver>>,
    pub request_timeout: Option<Duration>,
}

impl ClientCache {
    /// The last service resolved under `key`, whatever happened to it since.
    pub fn cached(&self, key: &ServiceKey) -> Option<ResolvedService> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.get(key).map(|(_, svc)| svc.clone())
    }

    fn get_or_build(
        &self,
        key: &ServiceKey,
        connection: &str,
        api_version: &str,
        quota: &Quota,
        settings: &ClientSettings,
        credential: &CredentialRef,
    ) -> Result<ResolvedService, ResolveError> {
        let fingerprint = {
            let mut h = Sha256::new();
            h.update(connection.as_bytes());
            h.update([0]);
            h.update(api_version.as_bytes());
            h.update(format!("{quota:?}").as_bytes());
            format!("{:x}", h.finalize())
        };
        let parsed = ConnectionString::parse(connection).map_err(|e| ResolveError::Invalid {
            service: key.clone(),
            credential: credential.clone(),
            reason: e.to_string(),
        })?;
        let endpoint = parsed.endpoint_str();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((fp, svc)) = clients.get(key)
            && *fp == fingerprint
            && svc.credential == *credential
        {
            return Ok(svc.clone());
        }
        let quota_config = quota_config(quota).map_err(|reason| ResolveError::BadQuota {
            service: key.clone(),
            reason,
        })?;
        let mut options = AcsClientOptions {
            api_version: api_version.to_string(),
            quota: quota_config,
            extra_ca_pem: settings.extra_ca_pem.clone(),
            observer: settings.observer.clone(),
            ..AcsClientOptions::default()
        };
        if let Some(t) = settings.request_timeout {
            options.request_timeout = t;
        }
        let client =
            Arc::new(
                AcsClient::new(&parsed, options).map_err(|source| ResolveError::Client {
                    service: key.clone(),
                    source,
                })?,
            );
        let svc = ResolvedService {
            key: key.clone(),
            endpoint,
            client,
            credential: credential.clone(),
        };
        clients.insert(key.clone(), (fingerprint, svc.clone()));
        Ok(svc)
    }
}

fn quota_config(q: &Quota) -> Result<QuotaConfig, String> {
    let per = q.window().map_err(|e| format!("spec.quota.window: {e}"))?;
    let rate = |requests: u32| (requests > 0).then_some(Rate { requests, per });
    Ok(QuotaConfig {
        create_user: rate(q.creates),
        issue_token: rate(q.issues),
        revoke_tokens: rate(q.revokes),
        delete_user: rate(q.deletes),
        ..QuotaConfig::default()
    })
}

/// The parts of a service spec resolution needs, whichever kind it is.
struct ServiceParts {
    credential: CredentialRef,
    api_version: String,
    quota: Quota,
}

/// Finds the service, checks the identity's namespace may use it, reads and parses its
/// credentials, and returns a (cached) client.
pub async fn resolve(
    client: &Client,
    cache: &ClientCache,
    settings: &ClientSettings,
    key: &ServiceKey,
    identity_namespace: &str,
) -> Result<ResolvedService, ResolveError> {
    let parts = match key.kind {
        ServiceKind::CommunicationService => {
            // A namespaced service serves only its own namespace: the key's namespace is
            // always the identity's (see `service_key_for`), so no cross-namespace read.
            let ns = key.namespace.as_deref().unwrap_or(identity_namespace);
            let svc: CommunicationService = fetch(Api::namespaced(client.clone(), ns), key).await?;
            ServiceParts {
                credential: CredentialRef::namespaced(ns, &svc.spec.connection_string_secret_ref),
                api_version: svc.spec.api_version.clone(),
                quota: svc.spec.quota.clone(),
            }
        }
        ServiceKind::ClusterCommunicationService => {
            let svc: ClusterCommunicationService = fetch(Api::all(client.clone()), key).await?;
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let ns = namespaces
                .get_opt(identity_namespace)
                .await
                .map_err(|source| ResolveError::Kube {
                    what: format!("namespace `{identity_namespace}`"),
                    source,
                })?;
            let labels = ns.map(|n| n.labels().clone()).unwrap_or_default();
            if !svc.spec.selects_namespace(&labels) {
                return Err(ResolveError::NotAllowed {
                    service: key.clone(),
                    namespace: identity_namespace.to_string(),
                });
            }
            ServiceParts {
                credential: CredentialRef::from(&svc.spec.connection_string_secret_ref),
                api_version: svc.spec.api_version.clone(),
                quota: svc.spec.quota.clone(),
            }
        }
    };
    check_credentials(
        client,
        cache,
        settings,
        key,
        &parts.credential,
        &parts.api_version,
        &parts.quota,
    )
    .await
}

/// Reads and parses a service's connection string and returns its (cached) client.
pub async fn check_credentials(
    client: &Client,
    cache: &ClientCache,
    settings: &ClientSettings,
    key: &ServiceKey,
    credential: &CredentialRef,
    api_version: &str,
    quota: &Quota,
) -> Result<ResolvedService, ResolveError> {
    let connection = read_connection_string(client, key, credential).await?;
    cache.get_or_build(key, &connection, api_version, quota, settings, credential)
}

async fn read_connection_string(
    client: &Client,
    service: &ServiceKey,
    r: &CredentialRef,
) -> Result<String, ResolveError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &r.namespace);
    let secret = secrets
        .get_opt(&r.name)
        .await
        .map_err(|source| ResolveError::Kube {
            what: format!("Secret `{}` in namespace `{}`", r.name, r.namespace),
            source,
        })?;
    let secret = secret.ok_or_else(|| ResolveError::SecretNotFound {
        service: service.clone(),
        credential: r.clone(),
    })?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| ResolveError::KeyMissing {
            service: service.clone(),
            credential: r.clone(),
        })?;
    String::from_utf8(value).map_err(|_| ResolveError::Invalid {
        service: service.clone(),
        credential: r.clone(),
        reason: "the value is not UTF-8 text".into(),
    })
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
    fn quota_maps_to_client_rates() {
        let q = Quota::default();
        let c = quota_config(&q).unwrap();
        assert_eq!(c.create_user.unwrap().requests, q.creates);
        assert_eq!(c.delete_user.unwrap().per, Duration::from_secs(30));
    }
}
