//! The process's ACS clients and parsed credentials.
//!
//! - One client (and so one quota bucket, paused for everyone by a 429) per ACS endpoint,
//!   key, api-version and quota, whatever the number of services, namespaces or identities
//!   that point at it: k services on one resource must not get k times ACS's limit.
//! - A credential Secret is read and parsed once per resourceVersion, however many
//!   identities use it; concurrent first readers wait for one GET.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};

use crate::acs::{
    AcsClient, AcsClientOptions, ConnectionString, QuotaConfig, Rate, RequestObserver,
};
use crate::api::Quota;

use super::credentials::{CredentialRef, SecretVersion};

/// What every ACS client of this operator shares.
#[derive(Clone, Default)]
pub struct ClientSettings {
    pub extra_ca_pem: Option<Vec<u8>>,
    pub observer: Option<Arc<dyn RequestObserver>>,
    pub request_timeout: Option<Duration>,
    /// `--allow-insecure-endpoints`: plain http to any host, not only loopback.
    pub allow_insecure_endpoints: bool,
}

/// Why a credential Secret gave no connection string. Never carries any part of the
/// Secret's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialProblem {
    SecretNotFound,
    KeyMissing,
    /// Not a connection string; the text says which part is wrong, never its value.
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{0:?}")]
    Problem(CredentialProblem),
    #[error("reading Secret `{name}` in namespace `{namespace}`: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

type Parsed = Result<Arc<ConnectionString>, CredentialProblem>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    endpoint: String,
    key_sha256: String,
    api_version: String,
    quota: String,
}

pub struct ClientCache {
    settings: ClientSettings,
    parsed: Mutex<HashMap<CredentialRef, (String, Parsed)>>,
    reading: Mutex<HashMap<CredentialRef, Arc<tokio::sync::Mutex<()>>>>,
    clients: Mutex<HashMap<ClientKey, Arc<AcsClient>>>,
}

impl ClientCache {
    pub fn new(settings: ClientSettings) -> Self {
        ClientCache {
            settings,
            parsed: Mutex::default(),
            reading: Mutex::default(),
            clients: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The connection string in `credential`, read from the API server only when the
    /// watch reports a version we have not parsed (or does not know one yet).
    pub async fn connection(
        &self,
        kube: &Client,
        credential: &CredentialRef,
        version: &SecretVersion,
    ) -> Result<Arc<ConnectionString>, CredentialError> {
        if *version == SecretVersion::Absent {
            return Err(CredentialError::Problem(CredentialProblem::SecretNotFound));
        }
        if let Some(hit) = self.cached(credential, version) {
            return hit.map_err(CredentialError::Problem);
        }
        let gate = {
            let mut reading = self.reading.lock().unwrap_or_else(|p| p.into_inner());
            reading.entry(credential.clone()).or_default().clone()
        };
        let _one_reader = gate.lock().await;
        // Another reader may have fetched this version while we waited.
        if let Some(hit) = self.cached(credential, version) {
            return hit.map_err(CredentialError::Problem);
        }
        let secrets: Api<Secret> = Api::namespaced(kube.clone(), &credential.namespace);
        let secret =
            secrets
                .get_opt(&credential.name)
                .await
                .map_err(|source| CredentialError::Kube {
                    namespace: credential.namespace.clone(),
                    name: credential.name.clone(),
                    source,
                })?;
        let Some(secret) = secret else {
            return Err(CredentialError::Problem(CredentialProblem::SecretNotFound));
        };
        let parsed = parse_secret(&secret, &credential.key);
        self.parsed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                credential.clone(),
                (
                    secret.resource_version().unwrap_or_default(),
                    parsed.clone(),
                ),
            );
        parsed.map_err(CredentialError::Problem)
    }

    fn cached(&self, credential: &CredentialRef, version: &SecretVersion) -> Option<Parsed> {
        let SecretVersion::Present(rv) = version else {
            return None;
        };
        let parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        match parsed.get(credential) {
            Some((seen, result)) if seen == rv => Some(result.clone()),
            _ => None,
        }
    }

    /// The shared client for this resource, key, api-version and quota.
    pub fn client(
        &self,
        connection: &ConnectionString,
        api_version: &str,
        quota: &Quota,
    ) -> Result<Arc<AcsClient>, String> {
        let quota_config = quota_config(quota)?;
        let key = ClientKey {
            endpoint: connection.endpoint_str(),
            key_sha256: format!("{:x}", Sha256::digest(connection.key().bytes())),
            api_version: api_version.to_string(),
            quota: format!("{quota_config:?}"),
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut options = AcsClientOptions {
            api_version: api_version.to_string(),
            quota: quota_config,
            extra_ca_pem: self.settings.extra_ca_pem.clone(),
            observer: self.settings.observer.clone(),
            allow_insecure_endpoints: self.settings.allow_insecure_endpoints,
            ..AcsClientOptions::default()
        };
        if let Some(t) = self.settings.request_timeout {
            options.request_timeout = t;
        }
        let client = Arc::new(AcsClient::new(connection, options).map_err(|e| e.to_string())?);
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Number of distinct ACS clients (for tests: sharing is a promise).
    pub fn client_count(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn parse_secret(secret: &Secret, key: &str) -> Parsed {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or(CredentialProblem::KeyMissing)?;
    let text = String::from_utf8(value)
        .map_err(|_| CredentialProblem::Invalid("the value is not UTF-8 text".into()))?;
    ConnectionString::parse(&text)
        .map(Arc::new)
        .map_err(|e| CredentialProblem::Invalid(e.to_string()))
}

pub fn quota_config(q: &Quota) -> Result<QuotaConfig, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(key: &str, value: &str) -> Secret {
        Secret {
            data: Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Secret::default()
        }
    }

    #[test]
    fn quota_maps_to_client_rates() {
        let q = Quota::default();
        let c = quota_config(&q).unwrap();
        assert_eq!(c.create_user.unwrap().requests, q.creates);
        assert_eq!(c.delete_user.unwrap().per, Duration::from_secs(30));
    }

    #[test]
    fn secret_values_parse_or_say_what_is_wrong() {
        let good = "endpoint=https://x.communication.azure.com/;accesskey=c2VjcmV0";
        assert!(parse_secret(&secret("cs", good), "cs").is_ok());
        assert_eq!(
            parse_secret(&secret("cs", good), "other").unwrap_err(),
            CredentialProblem::KeyMissing
        );
        assert!(matches!(
            parse_secret(&secret("cs", "nonsense"), "cs"),
            Err(CredentialProblem::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn one_client_per_resource_key_version_and_quota() {
        let cache = ClientCache::new(ClientSettings::default());
        let a = ConnectionString::parse("endpoint=https://a.example/;accesskey=c2VjcmV0").unwrap();
        let b = ConnectionString::parse("endpoint=https://b.example/;accesskey=c2VjcmV0").unwrap();
        let q = Quota::default();
        let first = cache.client(&a, "2023-10-01", &q).unwrap();
        let again = cache.client(&a, "2023-10-01", &q).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        cache.client(&b, "2023-10-01", &q).unwrap();
        cache.client(&a, "2025-06-30", &q).unwrap();
        assert_eq!(cache.client_count(), 3);
    }
}
