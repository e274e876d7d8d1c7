//! The process's ACS clients and parsed credentials.
//!
//! - One client per ACS endpoint, key, api-version and quota, whatever the number of
//!   services, namespaces or identities that point at it.
//! - One budget (quota buckets, paused for everyone by a 429) per ACS resource, i.e. per
//!   endpoint host and port, whatever key, api-version or service reaches it: a primary and
//!   a secondary key, or two api-versions, must not get twice ACS's limit. The budget is
//!   the most generous quota among the services that use the resource now, so a service
//!   that lowers its quota lowers the budget at once. A service counts above ACS's
//!   published limits only once its credentials have worked there (ACS answered one of
//!   its requests with success): a tenant's service with a made-up key and a huge quota
//!   cannot push another team's resource into ACS's 429s, which pause everyone, and a
//!   new team on a resource whose first service chose a strict quota is not held to it
//!   until its own first request. A service whose credentials ACS refuses counts for
//!   nothing: its requests take no turn of the budget (the client asks again once per
//!   [`crate::acs::client::REFUSED_PROBE_EVERY`] and answers the rest with the refusal),
//!   so a made-up key neither spends another team's budget nor lifts its strict quota.
//! - A credential Secret is read and parsed once per resourceVersion, however many
//!   identities use it; concurrent first readers wait for one GET.
//! - Bounded whatever tenants create: clients and parsed credentials nobody used for
//!   [`IDLE_TTL`] are dropped, and at most [`MAX_CLIENTS`] are kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};

use crate::acs::connection_string::host_with_port;
use crate::acs::quota::ClientQuota;
use crate::acs::{
    AcsClient, AcsClientOptions, ConnectionString, QuotaConfig, Rate, RequestObserver, RetryPolicy,
    Standing,
};
use crate::api::Quota;

use super::credentials::{CredentialRef, SecretVersion};
use super::entra::KubeAssertionSource;
use super::resolver::{EntraRef, ServiceKey, TokenSource};
use crate::acs::entra::EntraCredential;

/// How long a credential read serves callers that know no version of the Secret yet
/// (its watch has not reported): see [`ClientCache::connection`].
const UNKNOWN_VERSION_REUSE: Duration = Duration::from_secs(5);

/// What every ACS client of this operator shares.
#[derive(Clone, Default)]
pub struct ClientSettings {
    pub extra_ca_pem: Option<Vec<u8>>,
    pub observer: Option<Arc<dyn RequestObserver>>,
    pub request_timeout: Option<Duration>,
    /// `--allow-insecure-endpoints`: plain http (without it, https only).
    pub allow_insecure_endpoints: bool,
    /// Entra ID: the ambient flag and the operator's `AZURE_*` environment.
    pub entra: super::entra::EntraSettings,
    pub entra_observer: Option<Arc<dyn crate::acs::entra::EntraObserver>>,
}

/// Why no client could be built for an Entra credential.
#[derive(Debug)]
pub enum EntraClientError {
    Endpoint(String),
    Client(String),
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

/// A client or parsed credential unused this long is dropped (an identity that still
/// needs it gets a new one; memory keeps the client of every identity it knows).
pub const IDLE_TTL: Duration = Duration::from_secs(15 * 60);
/// The most clients kept at once; past it the least recently used goes.
pub const MAX_CLIENTS: usize = 2048;

/// How the operator's clients retry: briefly, inside one reconcile. Anything longer
/// (a 429's pause, a stalling endpoint's next attempt) goes back to the controller, which
/// requeues the identity without holding a permit.
pub fn operator_retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(1),
        max_retry_after: Duration::from_secs(1),
    }
}

/// One call (its attempts and their short waits) never takes longer than this.
pub const CALL_DEADLINE: Duration = Duration::from_secs(45);

/// A service's use of a resource: what its quota asks for, and through which client, whose
/// first success makes the claim count (see the module's doc).
struct Claim {
    host: String,
    config: QuotaConfig,
    client: Weak<AcsClient>,
    /// The client's standing when the budget was last computed with this claim.
    counted: Standing,
}

impl Claim {
    fn standing(&self) -> Standing {
        self.client
            .upgrade()
            .map_or(Standing::Unproven, |c| c.standing())
    }

    /// What this claim adds to its resource's budget.
    fn counts_for(&self) -> Option<QuotaConfig> {
        match self.standing() {
            Standing::Worked => Some(self.config.clone()),
            Standing::Unproven => Some(unproven_share(&self.config)),
            // Its requests take no turn of the budget (one probe per interval), so its
            // quota has no say in it: a made-up key cannot lift another team's stricter
            // budget even up to ACS's limits.
            Standing::Refused => None,
        }
    }
}

/// What a service whose credentials have not worked yet may add to its resource's
/// budget: its quota within ACS's published limits.
fn unproven_share(config: &QuotaConfig) -> QuotaConfig {
    config.within(&QuotaConfig::default())
}

struct Cached<T> {
    value: T,
    used: Instant,
    /// When the value was read (or built).
    read: Instant,
}

pub struct ClientCache {
    settings: ClientSettings,
    parsed: Mutex<HashMap<CredentialRef, Cached<(String, Parsed)>>>,
    reading: Mutex<HashMap<CredentialRef, Arc<tokio::sync::Mutex<()>>>>,
    clients: Mutex<HashMap<ClientKey, Cached<Arc<AcsClient>>>>,
    /// One Entra credential (and so one cached token) per client id, tenant, authority
    /// and token source, whatever the number of services and identities using it.
    entra: Mutex<HashMap<EntraRef, Cached<Arc<EntraCredential>>>>,
    /// One budget per ACS resource (host and port), alive while a client uses it.
    budgets: Mutex<HashMap<String, Weak<ClientQuota>>>,
    /// The quota each service last asked of its resource (the budget's inputs).
    claims: Mutex<HashMap<ServiceKey, Cached<Claim>>>,
    swept: Mutex<Instant>,
}

impl ClientCache {
    pub fn new(settings: ClientSettings) -> Self {
        ClientCache {
            settings,
            parsed: Mutex::default(),
            reading: Mutex::default(),
            clients: Mutex::default(),
            entra: Mutex::default(),
            budgets: Mutex::default(),
            claims: Mutex::default(),
            swept: Mutex::new(Instant::now()),
        }
    }

    /// Drops what nobody used for [`IDLE_TTL`], at most once a minute.
    fn sweep(&self, now: Instant) {
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if now.saturating_duration_since(*swept) < Duration::from_secs(60) {
                return;
            }
            *swept = now;
        }
        let fresh = |used: Instant| now.saturating_duration_since(used) < IDLE_TTL;
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, c| fresh(c.used));
        self.parsed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, c| fresh(c.used));
        self.entra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, c| fresh(c.used));
        {
            let parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
            self.reading
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|k, gate| parsed.contains_key(k) || Arc::strong_count(gate) > 1);
        }
        self.budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, b| b.strong_count() > 0);
        // A service gone (or idle) no longer sets its resource's budget: the rest of its
        // services' quotas do.
        let mut dropped = std::collections::HashSet::new();
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, c| {
                let keep = fresh(c.used);
                if !keep {
                    dropped.insert(c.value.host.clone());
                }
                keep
            });
        for host in dropped {
            self.refresh_budget(&host);
        }
    }

    /// Notes that `service` uses the resource at `host` with `config` through `client`.
    /// `None` when nothing changed for the budget; else `Some` with the resource it used
    /// before, if it moved (a claim whose client has just worked for the first time is a
    /// change: it counts from now on).
    fn claim(
        &self,
        service: &ServiceKey,
        host: &str,
        config: &QuotaConfig,
        client: &Arc<AcsClient>,
        now: Instant,
    ) -> Option<Option<String>> {
        let standing = client.standing();
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = claims.get_mut(service)
            && c.value.host == host
            && c.value.config == *config
            && std::ptr::eq(c.value.client.as_ptr(), Arc::as_ptr(client))
        {
            c.used = now;
            if c.value.counted == standing {
                return None;
            }
            c.value.counted = standing;
            return Some(None);
        }
        let before = claims.insert(
            service.clone(),
            Cached {
                value: Claim {
                    host: host.to_string(),
                    config: config.clone(),
                    client: Arc::downgrade(client),
                    counted: standing,
                },
                used: now,
                read: now,
            },
        );
        Some(before.map(|c| c.value.host).filter(|h| h != host))
    }

    /// The budget `host` gets: the most generous quota of its services, each capped at
    /// ACS's published limits until its credentials have worked there, and none of a
    /// service whose credentials ACS refuses.
    fn claimed(&self, host: &str) -> Option<QuotaConfig> {
        let claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        claims
            .values()
            .filter(|c| c.value.host == host)
            .filter_map(|c| c.value.counts_for())
            .reduce(|a, b| a.most_generous(&b))
    }

    /// The budget of the resource at `host` (host and port), shared by every client of it,
    /// set from its services' claims (or, when it has none yet, from `unclaimed`, the
    /// quota of the new client's service, which has not worked yet). Lock order: clients,
    /// then budgets, then claims.
    fn budget(&self, host: &str, unclaimed: &QuotaConfig) -> Arc<ClientQuota> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let config = &self
            .claimed(host)
            .unwrap_or_else(|| unproven_share(unclaimed));
        if let Some(b) = budgets.get(host).and_then(Weak::upgrade) {
            b.set(config);
            return b;
        }
        let b = Arc::new(ClientQuota::new(config));
        budgets.insert(host.to_string(), Arc::downgrade(&b));
        b
    }

    /// Sets the budget of `host`, if a client holds it, from its services' claims now.
    /// The claims are read under the budgets' lock, so two refreshes cannot cross and
    /// leave the older claims' budget in place.
    fn refresh_budget(&self, host: &str) {
        let budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(config) = self.claimed(host) else {
            return;
        };
        if let Some(b) = budgets.get(host).and_then(Weak::upgrade) {
            b.set(&config);
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
        self.sweep(Instant::now());
        if let Some(hit) = self.cached(credential, version) {
            return hit.map_err(CredentialError::Problem);
        }
        // Before the watch reports a version (the first moments after a start or a first
        // use), a read made moments ago is as good as a new one: the watch's first report
        // notifies every dependent, and a version other than the one read is read again.
        // Bounded in age, so that a watch that never starts cannot pin an old value.
        let recent = Instant::now()
            .checked_sub(UNKNOWN_VERSION_REUSE)
            .unwrap_or_else(Instant::now);
        if *version == SecretVersion::Unknown
            && let Some(hit) = self.read_since(credential, recent)
        {
            return hit.map_err(CredentialError::Problem);
        }
        let gate = {
            let mut reading = self.reading.lock().unwrap_or_else(|p| p.into_inner());
            reading.entry(credential.clone()).or_default().clone()
        };
        let _one_reader = gate.lock().await;
        // Another reader may have fetched this version while we waited (or, before the
        // watch reports one, any version moments ago): one GET, not one per waiting caller.
        if let Some(hit) = self.cached(credential, version) {
            return hit.map_err(CredentialError::Problem);
        }
        if *version == SecretVersion::Unknown
            && let Some(hit) = self.read_since(credential, recent)
        {
            return hit.map_err(CredentialError::Problem);
        }
        tracing::debug!(namespace = %credential.namespace, secret = %credential.name, version = ?version, "reading a credential Secret");
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
                Cached {
                    value: (
                        secret.resource_version().unwrap_or_default(),
                        parsed.clone(),
                    ),
                    used: Instant::now(),
                    read: Instant::now(),
                },
            );
        parsed.map_err(CredentialError::Problem)
    }

    /// The value read from the API server at or after `since`, if any.
    fn read_since(&self, credential: &CredentialRef, since: Instant) -> Option<Parsed> {
        let parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        parsed
            .get(credential)
            .filter(|c| c.read >= since)
            .map(|c| c.value.1.clone())
    }

    fn cached(&self, credential: &CredentialRef, version: &SecretVersion) -> Option<Parsed> {
        let SecretVersion::Present(rv) = version else {
            return None;
        };
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        match parsed.get_mut(credential) {
            Some(c) if c.value.0 == *rv => {
                c.used = Instant::now();
                Some(c.value.1.clone())
            }
            _ => None,
        }
    }

    /// The shared client for this resource, key, api-version and quota, as `service`
    /// asks for it.
    pub fn client(
        &self,
        service: &ServiceKey,
        connection: &ConnectionString,
        api_version: &str,
        quota: &Quota,
    ) -> Result<Arc<AcsClient>, String> {
        let key_sha256 = format!("{:x}", Sha256::digest(connection.key().bytes()));
        self.shared_client(
            service,
            connection.endpoint(),
            key_sha256,
            api_version,
            quota,
            |options| AcsClient::new(connection, options),
        )
    }

    /// The shared client for an Entra credential's resource, its endpoint, and the
    /// credential (one token for every client and identity that uses it).
    pub fn entra_client(
        &self,
        service: &ServiceKey,
        kube: &Client,
        entra: &EntraRef,
        api_version: &str,
        quota: &Quota,
    ) -> Result<(String, Arc<AcsClient>, Arc<EntraCredential>), EntraClientError> {
        let endpoint = url::Url::parse(entra.endpoint.trim()).map_err(|_| {
            EntraClientError::Endpoint(format!(
                "spec.endpoint `{}` is not a URL",
                crate::acs::error::endpoint_text(&entra.endpoint)
            ))
        })?;
        // Bearer tokens go over https only, whatever --allow-insecure-endpoints says.
        crate::acs::check_endpoint(&endpoint, false)
            .map_err(|e| EntraClientError::Endpoint(format!("spec.endpoint: {e}")))?;
        let credential = self.entra_credential(kube, entra)?;
        let id = format!("entra:{:?}", credential_key(entra));
        let key_sha256 = format!("{:x}", Sha256::digest(id.as_bytes()));
        let client = self
            .shared_client(
                service,
                &endpoint,
                key_sha256,
                api_version,
                quota,
                |options| AcsClient::with_entra(&endpoint, credential.clone(), options),
            )
            .map_err(EntraClientError::Client)?;
        Ok((client.endpoint().to_string(), client, credential))
    }

    fn entra_credential(
        &self,
        kube: &Client,
        entra: &EntraRef,
    ) -> Result<Arc<EntraCredential>, EntraClientError> {
        let key = credential_key(entra);
        let now = Instant::now();
        let mut map = self.entra.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get_mut(&key) {
            c.used = now;
            return Ok(c.value.clone());
        }
        let http = AcsClient::http_client(
            &self
                .options(&Quota::default(), "", None)
                .map_err(EntraClientError::Client)?,
        )
        .map_err(|e| EntraClientError::Client(e.to_string()))?;
        let label = match &key.source {
            TokenSource::ServiceAccount { namespace, name } => format!("{namespace}/{name}"),
            TokenSource::Ambient => "ambient".to_string(),
        };
        let source = KubeAssertionSource {
            kube: kube.clone(),
            entra: key.clone(),
            settings: self.settings.entra.clone(),
        };
        let credential = Arc::new(EntraCredential::new(
            label,
            http,
            Arc::new(source),
            self.settings.entra_observer.clone(),
        ));
        if map.len() >= MAX_CLIENTS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            key,
            Cached {
                value: credential.clone(),
                used: now,
                read: now,
            },
        );
        Ok(credential)
    }

    fn options(
        &self,
        quota: &Quota,
        api_version: &str,
        shared: Option<Arc<ClientQuota>>,
    ) -> Result<AcsClientOptions, String> {
        let quota_config = quota_config(quota)?;
        let mut options = AcsClientOptions {
            api_version: api_version.to_string(),
            shared_quota: shared,
            quota: quota_config,
            extra_ca_pem: self.settings.extra_ca_pem.clone(),
            observer: self.settings.observer.clone(),
            allow_insecure_endpoints: self.settings.allow_insecure_endpoints,
            retry: operator_retry_policy(),
            call_deadline: CALL_DEADLINE,
            ..AcsClientOptions::default()
        };
        if let Some(t) = self.settings.request_timeout {
            options.request_timeout = t;
        }
        Ok(options)
    }

    /// One client per (endpoint, credential digest, api-version, quota); one budget per
    /// resource host whatever the credential kind, set from every service's quota.
    fn shared_client(
        &self,
        service: &ServiceKey,
        endpoint: &url::Url,
        key_sha256: String,
        api_version: &str,
        quota: &Quota,
        build: impl FnOnce(AcsClientOptions) -> Result<AcsClient, crate::acs::AcsError>,
    ) -> Result<Arc<AcsClient>, String> {
        let quota_config = quota_config(quota)?;
        let host = format!(
            "{}://{}",
            endpoint.scheme(),
            host_with_port(endpoint).to_ascii_lowercase()
        );
        let key = ClientKey {
            endpoint: endpoint.as_str().trim_end_matches('/').to_string(),
            key_sha256,
            api_version: api_version.to_string(),
            quota: format!("{quota_config:?}"),
        };
        let now = Instant::now();
        self.sweep(now);
        let client = self.cached_client(key, now, || {
            let budget = self.budget(&host, &quota_config);
            let options = self.options(quota, api_version, Some(budget))?;
            Ok(Arc::new(build(options).map_err(|e| e.to_string())?))
        })?;
        if let Some(before) = self.claim(service, &host, &quota_config, &client, now) {
            if let Some(before) = before {
                self.refresh_budget(&before);
            }
            self.refresh_budget(&host);
        }
        Ok(client)
    }

    /// The client cached under `key`, or a new one from `build` (the least recently used
    /// one makes room past [`MAX_CLIENTS`]).
    fn cached_client(
        &self,
        key: ClientKey,
        now: Instant,
        build: impl FnOnce() -> Result<Arc<AcsClient>, String>,
    ) -> Result<Arc<AcsClient>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get_mut(&key) {
            c.used = now;
            return Ok(c.value.clone());
        }
        let client = build()?;
        if clients.len() >= MAX_CLIENTS
            && let Some(oldest) = clients
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone())
        {
            clients.remove(&oldest);
        }
        clients.insert(
            key,
            Cached {
                value: client.clone(),
                used: now,
                read: now,
            },
        );
        Ok(client)
    }

    /// (client id, tenant id, token expiry) of an Entra credential's last token.
    pub fn entra_shown(&self, entra: &EntraRef) -> Option<(String, String, jiff::Timestamp)> {
        self.entra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&credential_key(entra))
            .and_then(|c| c.value.shown())
    }

    /// Number of distinct Entra credentials (for tests: one token per credential).
    pub fn entra_count(&self) -> usize {
        self.entra.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Number of distinct ACS clients (for tests: sharing is a promise).
    pub fn client_count(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Number of distinct ACS resources with a live budget.
    pub fn budget_count(&self) -> usize {
        self.budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|b| b.strong_count() > 0)
            .count()
    }
}

/// The credential part of an Entra reference (the endpoint is the client's business).
fn credential_key(entra: &EntraRef) -> EntraRef {
    EntraRef {
        endpoint: String::new(),
        ..entra.clone()
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
    // The CRD refuses these; objects stored before that rule must not reach the client.
    if per.is_zero() || per > crate::acs::quota::MAX_WINDOW {
        return Err(format!(
            "spec.quota.window `{}` must be between 1s and 1h",
            q.window
        ));
    }
    if let Some((field, n)) = [
        ("creates", q.creates),
        ("issues", q.issues),
        ("revokes", q.revokes),
        ("deletes", q.deletes),
    ]
    .into_iter()
    .find(|(_, n)| *n > crate::acs::quota::MAX_REQUESTS)
    {
        return Err(format!(
            "spec.quota.{field} is {n}; at most {} requests per window",
            crate::acs::quota::MAX_REQUESTS
        ));
    }
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
    use crate::api::ServiceKind;
    use k8s_openapi::ByteString;

    fn svc(name: &str) -> ServiceKey {
        ServiceKey {
            kind: ServiceKind::CommunicationService,
            namespace: Some("team".into()),
            name: name.into(),
        }
    }

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
        let first = cache.client(&svc("s"), &a, "2023-10-01", &q).unwrap();
        let again = cache.client(&svc("s"), &a, "2023-10-01", &q).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        cache.client(&svc("s"), &b, "2023-10-01", &q).unwrap();
        cache.client(&svc("s"), &a, "2025-06-30", &q).unwrap();
        assert_eq!(cache.client_count(), 3);
        assert_eq!(cache.budget_count(), 2, "a and b");
    }

    #[tokio::test]
    async fn one_budget_per_resource_whatever_key_or_api_version() {
        let cache = ClientCache::new(ClientSettings::default());
        let primary =
            ConnectionString::parse("endpoint=https://a.example/;accesskey=c2VjcmV0").unwrap();
        let secondary =
            ConnectionString::parse("endpoint=https://A.example:443/;accesskey=b3RoZXI=").unwrap();
        let q = Quota {
            creates: 2,
            window: "1h".into(),
            ..Quota::default()
        };
        let clients = [
            cache.client(&svc("s"), &primary, "2023-10-01", &q).unwrap(),
            cache
                .client(&svc("s"), &secondary, "2023-10-01", &q)
                .unwrap(),
            cache.client(&svc("s"), &primary, "2025-06-30", &q).unwrap(),
        ];
        assert_eq!(cache.client_count(), 3);
        assert_eq!(cache.budget_count(), 1);
        let now = std::time::Instant::now();
        let op = crate::acs::Operation::CreateUser;
        let granted = (0..6)
            .filter(|i| {
                clients[i % 3]
                    .quota()
                    .try_acquire(op, &format!("id-{i}"), now)
                    .is_ok()
            })
            .count();
        assert_eq!(
            granted, 2,
            "two creates per hour on the resource, not per client"
        );
    }

    #[tokio::test]
    async fn a_service_lowering_its_quota_lowers_the_resource_budget_at_once() {
        let cache = ClientCache::new(ClientSettings::default());
        let cs = ConnectionString::parse("endpoint=https://a.example/;accesskey=c2VjcmV0").unwrap();
        let per_hour = |issues: u32| Quota {
            issues,
            window: "1h".into(),
            ..Quota::default()
        };
        let op = crate::acs::Operation::IssueToken;
        let limit = |c: &AcsClient| c.quota().limit_per_second(op).unwrap() * 3600.0;
        let old = cache
            .client(&svc("a"), &cs, "2023-10-01", &per_hour(1000))
            .unwrap();
        let new = cache
            .client(&svc("a"), &cs, "2023-10-01", &per_hour(10))
            .unwrap();
        assert!(
            (limit(&old) - 10.0).abs() < 1e-6 && (limit(&new) - 10.0).abs() < 1e-6,
            "the older client still cached shares the lowered budget: {} {}",
            limit(&old),
            limit(&new)
        );
        // A second service on the same resource keeps its more generous quota for both.
        cache
            .client(&svc("b"), &cs, "2023-10-01", &per_hour(100))
            .unwrap();
        assert!((limit(&new) - 100.0).abs() < 1e-6, "{}", limit(&new));
        // b moves to another resource: a's own quota applies again here.
        let other =
            ConnectionString::parse("endpoint=https://b.example/;accesskey=c2VjcmV0").unwrap();
        cache
            .client(&svc("b"), &other, "2023-10-01", &per_hour(100))
            .unwrap();
        assert!((limit(&new) - 10.0).abs() < 1e-6, "{}", limit(&new));
        assert_eq!(cache.budget_count(), 2);
    }

    /// A tenant's service naming another team's resource with a key of its own choosing
    /// and a huge quota: it cannot raise the resource's budget past ACS's published limits
    /// until ACS has accepted its credentials, which a made-up key never gets.
    #[tokio::test]
    async fn a_service_whose_key_never_worked_cannot_raise_the_budget_past_acs_limits() {
        let cache = ClientCache::new(ClientSettings::default());
        let team =
            ConnectionString::parse("endpoint=https://a.example/;accesskey=c2VjcmV0").unwrap();
        let bogus =
            ConnectionString::parse("endpoint=https://a.example/;accesskey=Ym9ndXM=").unwrap();
        let quota = |issues: u32, window: &str| Quota {
            issues,
            window: window.into(),
            ..Quota::default()
        };
        let op = crate::acs::Operation::IssueToken;
        let per_s = |c: &AcsClient| c.quota().limit_per_second(op).unwrap();
        let acs_limit = ClientQuota::new(&QuotaConfig::default())
            .limit_per_second(op)
            .unwrap();
        let strict = cache
            .client(&svc("team"), &team, "2023-10-01", &quota(10, "1h"))
            .unwrap();
        strict.mark_worked();
        cache
            .client(&svc("team"), &team, "2023-10-01", &quota(10, "1h"))
            .unwrap();
        let theirs = cache
            .client(&svc("tenant"), &bogus, "2023-10-01", &quota(100_000, "1s"))
            .unwrap();
        assert!(
            Arc::ptr_eq(strict.quota(), theirs.quota()),
            "one resource, one budget"
        );
        assert!(
            (per_s(&strict) - acs_limit).abs() < 1e-9,
            "an unproven service counts up to ACS's limit, never past it: {}/s",
            per_s(&strict)
        );
        // ACS refuses its key: it has no say in the budget (its requests take no turn).
        theirs.mark_refused(crate::acs::AcsError::service(
            op,
            401,
            Some("Denied".into()),
            None,
            None,
        ));
        cache
            .client(&svc("tenant"), &bogus, "2023-10-01", &quota(100_000, "1s"))
            .unwrap();
        assert!(
            (per_s(&strict) - 10.0 / 3600.0).abs() < 1e-9,
            "the team's own quota again: {}/s",
            per_s(&strict)
        );
        // Its credentials work after all (a second key of the resource): it counts in full
        // from its next use on.
        theirs.mark_worked();
        cache
            .client(&svc("tenant"), &bogus, "2023-10-01", &quota(100_000, "1s"))
            .unwrap();
        assert!(
            (per_s(&strict) - 100_000.0).abs() < 1e-6,
            "{}",
            per_s(&strict)
        );
        // A service that goes away leaves the budget to the rest.
        let fresh =
            ConnectionString::parse("endpoint=https://b.example/;accesskey=c2VjcmV0").unwrap();
        cache
            .client(&svc("tenant"), &fresh, "2023-10-01", &quota(100_000, "1s"))
            .unwrap();
        assert!(
            (per_s(&strict) * 3600.0 - 10.0).abs() < 1e-6,
            "{}",
            per_s(&strict)
        );
        // A new team on a resource whose first service chose a strict quota is not held to
        // it before its own first request (which that quota would put off for an hour).
        let other =
            ConnectionString::parse("endpoint=https://a.example/;accesskey=b3RoZXI=").unwrap();
        cache
            .client(&svc("new-team"), &other, "2023-10-01", &Quota::default())
            .unwrap();
        assert!(
            (per_s(&strict) - acs_limit).abs() < 1e-9,
            "{}",
            per_s(&strict)
        );
    }

    #[tokio::test]
    async fn an_entra_and_a_key_client_of_one_resource_share_its_budget() {
        let cache = ClientCache::new(ClientSettings::default());
        // Never contacted: building a client sends nothing.
        let kube =
            Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let cs = ConnectionString::parse("endpoint=https://a.example/;accesskey=c2VjcmV0").unwrap();
        let entra = EntraRef {
            endpoint: "https://A.example:443/".into(),
            client_id: Some("c".into()),
            tenant_id: Some("t".into()),
            authority_host: None,
            source: TokenSource::Ambient,
        };
        let q = Quota {
            creates: 2,
            window: "1h".into(),
            ..Quota::default()
        };
        let by_key = cache.client(&svc("key"), &cs, "2023-10-01", &q).unwrap();
        let (_, by_entra, _) = cache
            .entra_client(&svc("entra"), &kube, &entra, "2023-10-01", &q)
            .unwrap();
        assert_eq!(cache.client_count(), 2);
        assert_eq!(cache.budget_count(), 1, "one resource, one budget");
        let now = std::time::Instant::now();
        let op = crate::acs::Operation::CreateUser;
        let granted = (0..4)
            .filter(|i| {
                let c = if i % 2 == 0 { &by_key } else { &by_entra };
                c.quota().try_acquire(op, &format!("id-{i}"), now).is_ok()
            })
            .count();
        assert_eq!(
            granted, 2,
            "two creates per hour on the resource, not per credential kind"
        );
    }

    #[test]
    fn quota_out_of_bounds_is_an_error_not_a_panic() {
        for window in ["5124095576030431h", "8760h", "3601s", "0s"] {
            let q = Quota {
                window: window.into(),
                ..Quota::default()
            };
            let e = quota_config(&q).unwrap_err();
            assert!(e.contains("spec.quota.window"), "{window}: {e}");
        }
        let q = Quota {
            issues: u32::MAX,
            ..Quota::default()
        };
        assert!(quota_config(&q).unwrap_err().contains("spec.quota.issues"));
        let cache = ClientCache::new(ClientSettings::default());
        let cs = ConnectionString::parse("endpoint=https://a.example/;accesskey=c2VjcmV0").unwrap();
        let q = Quota {
            window: "5124095576030431h".into(),
            ..Quota::default()
        };
        assert!(cache.client(&svc("s"), &cs, "2023-10-01", &q).is_err());
    }
}
