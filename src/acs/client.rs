//! `AcsClient`: the identity REST operations over HMAC-signed HTTP, with client-side
//! quota and retries.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::api_versions::{
    DEFAULT_API_VERSION, supports_custom_id, supports_get_identity, supports_repeatable_create,
};
use super::connection_string::{AccessKey, ConnectionString, host_with_port};
use super::endpoint::check_endpoint;
use super::error::{AcsError, Operation};
use super::model::{
    AccessToken, CommunicationUser, CreateUserBody, CreatedUser, IssueTokenBody, RawResponse,
    TokenScope, check_expiry, parse_create_user, parse_get_user, parse_issue_token,
    parse_no_content,
};
use super::quota::{ClientQuota, QuotaConfig};
use super::retry::{RetryPolicy, retry_after_from_headers};
use super::signing::sign_request;
use super::standing::{CredentialStanding, Gate, Standing};

/// What the SDKs' serializer escapes in a path parameter: everything but RFC 3986's
/// unreserved characters (Python's `quote(value, safe="")`), so `8:acs:x` becomes
/// `8%3Aacs%3Ax` and the signature matches what ACS receives.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The request target (`path?query`) of an operation, percent-encoded as sent and signed.
/// `id` is ignored for `CreateUser`.
fn request_target(op: Operation, id: &str, api_version: &str) -> String {
    let id = utf8_percent_encode(id, PATH_SEGMENT);
    let path = match op {
        Operation::CreateUser => "/identities".to_string(),
        Operation::GetUser | Operation::DeleteUser => format!("/identities/{id}"),
        Operation::IssueToken => format!("/identities/{id}/:issueAccessToken"),
        Operation::RevokeTokens => format!("/identities/{id}/:revokeAccessTokens"),
    };
    format!(
        "{path}?api-version={}",
        utf8_percent_encode(api_version, PATH_SEGMENT)
    )
}

fn method_of(op: Operation) -> Method {
    match op {
        Operation::GetUser => Method::GET,
        Operation::DeleteUser => Method::DELETE,
        Operation::CreateUser | Operation::IssueToken | Operation::RevokeTokens => Method::POST,
    }
}

/// One HTTP attempt, as reported to a `RequestObserver` (for metrics).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub operation: Operation,
    /// 1 for the first try.
    pub attempt: u32,
    /// The HTTP status, when ACS answered.
    pub status: Option<u16>,
    /// `"ok"`, or the error's `metric_label()`.
    pub result: &'static str,
    pub elapsed: Duration,
    /// Time spent waiting for client-side quota before sending.
    pub quota_wait: Duration,
    /// The ACS resource: the endpoint's host name (never a key or a path).
    pub resource: Arc<str>,
    /// The client-side budget of `operation` on this resource; `None`: unlimited.
    pub quota_limit_per_second: Option<f64>,
}

/// Why a request was held back before it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// The client-side budget (ACS's published limits, or the service's `quota`).
    Quota,
    /// ACS answered 429 with `Retry-After` earlier; every caller of the resource waits.
    Pause,
}

impl WaitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Quota => "quota",
            WaitReason::Pause => "pause",
        }
    }
}

/// Receives every attempt; the operator counts them into Prometheus metrics.
pub trait RequestObserver: Send + Sync {
    fn on_attempt(&self, attempt: &Attempt);
    /// A request for `operation` on `resource` waited (or, for a caller that comes back
    /// later, was told to wait) `wait` before it could be sent.
    fn on_wait(
        &self,
        _resource: &str,
        _operation: Operation,
        _reason: WaitReason,
        _wait: Duration,
    ) {
    }
    /// ACS answered 429 with `Retry-After`: `operation` on `resource` is paused for `pause`.
    fn on_throttle(&self, _resource: &str, _operation: Operation, _pause: Duration) {}
}

#[derive(Clone)]
pub struct AcsClientOptions {
    pub api_version: String,
    /// Bound on one attempt, from connecting to reading the whole body.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    pub quota: QuotaConfig,
    /// PEM certificates trusted in addition to the public roots (private endpoints, the
    /// emulator's `--tls`).
    pub extra_ca_pem: Option<Vec<u8>>,
    pub observer: Option<Arc<dyn RequestObserver>>,
    /// Allow plain http (`--allow-insecure-endpoints`); without it only https. User info,
    /// paths, queries and fragments in the endpoint are refused regardless.
    pub allow_insecure_endpoints: bool,
    /// The budget of the ACS resource this client talks to, when several clients (keys,
    /// api-versions, services) share one; `None`: a budget of its own from `quota`.
    pub shared_quota: Option<Arc<ClientQuota>>,
    /// No retry starts after this much time spent on one call; the last error is returned.
    pub call_deadline: Duration,
    /// While ACS refuses this client's credentials, how often a caller's request is sent
    /// to ask again (see [`REFUSED_PROBE_EVERY`]).
    pub refused_probe_every: Duration,
}

/// While ACS refuses a client's credentials (401 or 403), requests made for a caller
/// ([`AcsClient::for_caller`], the operator's reconciles) are sent once per this interval
/// to ask again; the others get the last refusal back at once, without a request and
/// without a turn of the resource's quota. A tenant's service with a wrong key for
/// another team's ACS resource otherwise spent that resource's shared quota on requests
/// ACS refuses, one per identity per retry, and slowed the team's renewals.
pub const REFUSED_PROBE_EVERY: Duration = Duration::from_secs(10);

/// The largest answer read. ACS's answers are a few KiB (a token is about 1.5 KiB); an
/// endpoint that streams more is not read to the end and cannot grow our memory.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

impl Default for AcsClientOptions {
    fn default() -> Self {
        Self {
            api_version: DEFAULT_API_VERSION.to_string(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            quota: QuotaConfig::default(),
            extra_ca_pem: None,
            observer: None,
            allow_insecure_endpoints: false,
            shared_quota: None,
            call_deadline: Duration::from_secs(120),
            refused_probe_every: REFUSED_PROBE_EVERY,
        }
    }
}

impl fmt::Debug for AcsClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcsClientOptions")
            .field("api_version", &self.api_version)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("quota", &self.quota)
            .field("extra_ca_pem", &self.extra_ca_pem.as_ref().map(|p| p.len()))
            .field("observer", &self.observer.is_some())
            .field("allow_insecure_endpoints", &self.allow_insecure_endpoints)
            .field("shared_quota", &self.shared_quota.is_some())
            .field("call_deadline", &self.call_deadline)
            .finish()
    }
}

/// An ACS error answer (with ACS's `error.code`) that ACS gives only after it has checked
/// the credentials: a 401 `IdentityNotOwned` (about another resource's user), or a 4xx
/// other than a refusal (401, 403), a timeout (408) or throttling (429). A proxy's bare
/// 4xx, a malformed or oversized answer say nothing of the key.
fn took_the_key(err: &AcsError) -> bool {
    err.is_identity_not_owned()
        || matches!(err, AcsError::Service { status, code: Some(_), .. }
            if (400..500).contains(status) && !matches!(status, 401 | 403 | 408 | 429))
}

/// A client for one ACS resource. Cheap to clone; clones share connections and quota.
#[derive(Clone)]
pub struct AcsClient {
    inner: Arc<Inner>,
    /// Set by [`AcsClient::for_caller`]: never sleep for quota or a long pause, return
    /// `QuotaWait` / `Paused` with the caller's turn reserved instead.
    caller: Option<Arc<str>>,
}

/// How requests are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// HMAC-SHA256 with the connection string's access key.
    Hmac(AccessKey),
    /// `Authorization: Bearer` with an Entra ID token for ACS's scope.
    Bearer(Arc<super::entra::EntraCredential>),
}

struct Inner {
    http: reqwest::Client,
    /// Without a trailing slash, so request targets append to it.
    base: String,
    auth: Auth,
    api_version: String,
    request_timeout: Duration,
    call_deadline: Duration,
    retry: RetryPolicy,
    quota: Arc<ClientQuota>,
    observer: Option<Arc<dyn RequestObserver>>,
    /// The endpoint's host, the `resource` of metrics.
    resource: Arc<str>,
    /// What ACS has said of the credentials (whether they work, whether callers are
    /// gated while they are refused).
    standing: CredentialStanding,
}

impl fmt::Debug for AcsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcsClient")
            .field("endpoint", &self.inner.base)
            .field("api_version", &self.inner.api_version)
            .finish_non_exhaustive()
    }
}

impl AcsClient {
    /// A client for the connection's endpoint. Refuses an endpoint that [`check_endpoint`]
    /// refuses (`AcsError::Endpoint`), before any request.
    pub fn new(connection: &ConnectionString, options: AcsClientOptions) -> Result<Self, AcsError> {
        Self::with_auth(
            connection.endpoint(),
            Auth::Hmac(connection.key().clone()),
            options,
        )
    }

    /// A client for `endpoint` authenticating with Entra ID tokens from `credential`.
    /// https only, whatever `allow_insecure_endpoints` says: a bearer token is never sent
    /// in clear (the SDKs refuse too).
    pub fn with_entra(
        endpoint: &Url,
        credential: Arc<super::entra::EntraCredential>,
        options: AcsClientOptions,
    ) -> Result<Self, AcsError> {
        check_endpoint(endpoint, false)?;
        Self::with_auth(endpoint, Auth::Bearer(credential), options)
    }

    /// The HTTP client settings (CA bundle, timeouts, no redirects) an Entra credential of
    /// this operator uses too.
    pub fn http_client(options: &AcsClientOptions) -> Result<reqwest::Client, AcsError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(options.request_timeout)
            .connect_timeout(options.connect_timeout.min(options.request_timeout))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("acs-identity-operator/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &options.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|_| AcsError::Config("extra CA bundle is not valid PEM".into()))?;
            if certs.is_empty() {
                return Err(AcsError::Config(
                    "extra CA bundle holds no certificate".into(),
                ));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder
            .build()
            .map_err(|e| AcsError::Config(format!("cannot build the HTTP client: {e}")))
    }

    fn with_auth(endpoint: &Url, auth: Auth, options: AcsClientOptions) -> Result<Self, AcsError> {
        check_endpoint(endpoint, options.allow_insecure_endpoints)?;
        if options.api_version.trim().is_empty() {
            return Err(AcsError::Config("api-version is empty".into()));
        }
        if options.request_timeout.is_zero() {
            return Err(AcsError::Config("request timeout must be positive".into()));
        }
        if options.retry.max_attempts == 0 {
            return Err(AcsError::Config(
                "retry max_attempts must be at least 1".into(),
            ));
        }
        if let Some(op) = options.quota.invalid_operation() {
            return Err(AcsError::Config(format!(
                "quota for {op} must allow at least one request in a positive period"
            )));
        }
        // A redirect would send a signed request (and get tokens back) from wherever the
        // endpoint points; an ACS endpoint never redirects (set in `http_client`).
        let http = Self::http_client(&options)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base: endpoint.as_str().trim_end_matches('/').to_string(),
                auth,
                request_timeout: options.request_timeout,
                call_deadline: options.call_deadline,
                retry: options.retry,
                quota: options
                    .shared_quota
                    .unwrap_or_else(|| Arc::new(ClientQuota::new(&options.quota))),
                api_version: options.api_version,
                observer: options.observer,
                resource: Arc::from(endpoint.host_str().unwrap_or("unknown")),
                standing: CredentialStanding::new(options.refused_probe_every),
            }),
            caller: None,
        })
    }

    /// This client, for requests made on behalf of `caller` (an identity's uid): a
    /// request that would wait for quota or a pause returns at once with `QuotaWait` or
    /// `Paused` and its `retry_after`, and the caller's turn stays reserved until it comes
    /// back. A reconcile holds no permit while it waits.
    pub fn for_caller(&self, caller: &str) -> AcsClient {
        AcsClient {
            inner: self.inner.clone(),
            caller: Some(Arc::from(caller)),
        }
    }

    /// Whether ACS has answered a request of this client (or of a copy made by
    /// [`AcsClient::for_caller`]) with success since it last refused the credentials
    /// ([`AcsError::is_unauthorized`]), i.e. whether its credentials work for the endpoint.
    pub fn has_worked(&self) -> bool {
        self.inner.standing.has_worked()
    }

    /// What ACS's answers say of this client's credentials; while they are refused,
    /// callers' requests are gated (see [`REFUSED_PROBE_EVERY`]).
    pub fn standing(&self) -> Standing {
        self.inner.standing.standing()
    }

    /// Marks the client as answered with success (tests of what depends on it).
    #[cfg(test)]
    pub fn mark_worked(&self) {
        self.inner.standing.succeeded();
    }

    /// Marks the client's credentials as refused, as twice in a row (tests of what
    /// depends on it).
    #[cfg(test)]
    pub fn mark_refused(&self, error: AcsError) {
        self.inner.standing.refused(&error, Instant::now());
        self.inner.standing.refused(&error, Instant::now());
    }

    /// The budget this client draws from (shared with every client of its resource).
    pub fn quota(&self) -> &Arc<ClientQuota> {
        &self.inner.quota
    }

    pub fn api_version(&self) -> &str {
        &self.inner.api_version
    }

    /// Whether `create_user` sends a custom id (and `get_user` is available), from the
    /// table of published api-versions ([`super::api_versions`]).
    pub fn supports_custom_id(&self) -> bool {
        supports_custom_id(&self.inner.api_version)
    }

    /// A mark that only a holder of this resource's access key can make, binding ACS user
    /// `user` of this endpoint to the object `owner_uid`. The operator writes it into the
    /// token Secret next to `userId` and trusts a Secret's `userId` as the record of a
    /// user it created only when the mark matches: a tenant who can write the Secret
    /// cannot make the operator take someone else's user for its own. With Entra ID
    /// there is no shared key to make one: `None`, and no Secret is taken as a record
    /// (the process's memory still is, until a status write holds the user).
    pub fn user_record(&self, owner_uid: &str, user: &str) -> Option<String> {
        match &self.inner.auth {
            Auth::Hmac(key) => Some(super::signing::signature(
                key,
                &self.user_record_text(owner_uid, user),
            )),
            Auth::Bearer(_) => None,
        }
    }

    /// Whether `mark` is [`AcsClient::user_record`] of this owner and user (constant time).
    pub fn verify_user_record(&self, owner_uid: &str, user: &str, mark: &str) -> bool {
        match &self.inner.auth {
            Auth::Hmac(key) => {
                super::signing::verify(key, &self.user_record_text(owner_uid, user), mark)
            }
            Auth::Bearer(_) => false,
        }
    }

    fn user_record_text(&self, owner_uid: &str, user: &str) -> String {
        format!(
            "acs-identity-operator user record v1\n{owner_uid}\n{user}\n{}",
            self.inner.base
        )
    }

    /// The endpoint requests go to, without a trailing slash.
    pub fn endpoint(&self) -> &str {
        &self.inner.base
    }

    /// Creates a user, with a token when `scopes` is given. With an api-version that knows
    /// custom ids, `custom_id` makes the create idempotent: the same id returns the
    /// existing user (`created == false`); with older versions it is not sent.
    /// `expires_in_minutes` only matters with scopes and is then sent as given (ACS
    /// accepts 60..=1440 and answers 400 otherwise).
    ///
    /// On an api-version with repeatability headers (`2023-08-01`) every create carries a
    /// fresh `Repeatability-Request-ID` and the `Repeatability-First-Sent` date of its first
    /// sending, the same on each retry, so ACS answers a retry with the first answer and
    /// the create may be retried like one with a custom id. That covers the retries of one
    /// call, not a later call (after a restart) for the same object.
    ///
    /// Otherwise, without a custom id a create is not idempotent: a retry after a timeout
    /// whose request did reach ACS would make a second, unrecorded user. So the client then
    /// retries a create only when ACS certainly did not act (429, connection refused);
    /// otherwise the error says so (`is_outcome_unknown()`) and the caller decides.
    ///
    /// `created` cannot tell a found user from a new one: ACS answers 201 to both.
    pub async fn create_user(
        &self,
        scopes: Option<&[TokenScope]>,
        expires_in_minutes: Option<u32>,
        custom_id: Option<&str>,
    ) -> Result<CreatedUser, AcsError> {
        let custom_id = match custom_id {
            Some(c) if self.supports_custom_id() => Some(c),
            Some(_) => {
                tracing::debug!(
                    api_version = %self.inner.api_version,
                    "api-version has no custom ids; creating without one"
                );
                None
            }
            None => None,
        };
        let token_expected = scopes.is_some_and(|s| !s.is_empty());
        let body = CreateUserBody {
            create_token_with_scopes: scopes,
            expires_in_minutes: scopes.and(expires_in_minutes),
            custom_id,
        };
        // Like the SDKs, a plain create has no body at all.
        let body = if scopes.is_none() && custom_id.is_none() {
            None
        } else {
            Some(to_json(&body)?)
        };
        let repeatable = supports_repeatable_create(&self.inner.api_version);
        let headers: Vec<(&'static str, String)> = if repeatable {
            vec![
                ("repeatability-request-id", uuid::Uuid::new_v4().to_string()),
                (
                    "repeatability-first-sent",
                    httpdate::fmt_http_date(SystemTime::now()),
                ),
            ]
        } else {
            Vec::new()
        };
        let retry = if custom_id.is_some() || repeatable {
            Retry::Retryable
        } else {
            Retry::OnlyIfNotExecuted
        };
        self.call_with(Operation::CreateUser, "", body, &headers, retry, |r| {
            let created = parse_create_user(r, token_expected)?;
            if let Some(t) = &created.token {
                check_expiry(Operation::CreateUser, jiff::Timestamp::now(), t.expires_on)?;
            }
            Ok(created)
        })
        .await
    }

    /// Reads a user (`GET /identities/{id}`), on api-versions that publish it.
    pub async fn get_user(&self, id: &str) -> Result<CommunicationUser, AcsError> {
        if !supports_get_identity(&self.inner.api_version) {
            return Err(AcsError::Unsupported {
                api_version: self.inner.api_version.clone(),
                what: "get_user",
            });
        }
        check_id(id)?;
        self.call(
            Operation::GetUser,
            id,
            None,
            Retry::Retryable,
            parse_get_user,
        )
        .await
    }

    /// Issues a new token for an existing user. A deleted or unknown id is a 404.
    pub async fn issue_token(
        &self,
        id: &str,
        scopes: &[TokenScope],
        expires_in_minutes: Option<u32>,
    ) -> Result<AccessToken, AcsError> {
        check_id(id)?;
        let body = to_json(&IssueTokenBody {
            scopes,
            expires_in_minutes,
        })?;
        self.call(
            Operation::IssueToken,
            id,
            Some(body),
            Retry::Retryable,
            |r| {
                let token = parse_issue_token(r)?;
                check_expiry(
                    Operation::IssueToken,
                    jiff::Timestamp::now(),
                    token.expires_on,
                )?;
                Ok(token)
            },
        )
        .await
    }

    /// Revokes every token issued to the user so far.
    pub async fn revoke_tokens(&self, id: &str) -> Result<(), AcsError> {
        check_id(id)?;
        self.call(Operation::RevokeTokens, id, None, Retry::Retryable, |r| {
            parse_no_content(Operation::RevokeTokens, r)
        })
        .await
    }

    /// Deletes the user and with it all its tokens. A 404 (`is_not_found()`) means it is
    /// already gone.
    pub async fn delete_user(&self, id: &str) -> Result<(), AcsError> {
        check_id(id)?;
        self.call(Operation::DeleteUser, id, None, Retry::Retryable, |r| {
            parse_no_content(Operation::DeleteUser, r)
        })
        .await
    }

    /// Quota, send, parse; retried while the error is retryable, `retry` allows it and the
    /// policy allows. A 429 with `Retry-After` pauses the operation for every caller of
    /// this client (they share one ACS resource's limit).
    async fn call<T>(
        &self,
        op: Operation,
        id: &str,
        body: Option<Vec<u8>>,
        retry: Retry,
        parse: impl Fn(&RawResponse<'_>) -> Result<T, AcsError>,
    ) -> Result<T, AcsError> {
        self.call_with(op, id, body, &[], retry, parse).await
    }

    /// `call` with `headers` on every attempt (the same values each time).
    async fn call_with<T>(
        &self,
        op: Operation,
        id: &str,
        body: Option<Vec<u8>>,
        headers: &[(&'static str, String)],
        retry: Retry,
        parse: impl Fn(&RawResponse<'_>) -> Result<T, AcsError>,
    ) -> Result<T, AcsError> {
        let url = self.request_url(op, id)?;
        let probe = self.caller.is_some()
            && self.inner.standing.gate(op, Instant::now(), |now| {
                !self.inner.quota.paused_for(op, now).is_zero()
            })? == Gate::Probe;
        let call_started = Instant::now();
        let mut attempt = 0u32;
        let mut retried_unauthorized = false;
        loop {
            attempt += 1;
            let bearer = self.bearer().await?;
            let quota_wait = if probe {
                Duration::ZERO
            } else {
                self.wait_for_turn(op).await?
            };
            let started = Instant::now();
            // Fresh for every attempt, logged with it and kept in the error (with the
            // answer's MS-CV): what Azure support traces a request by.
            let client_request_id = uuid::Uuid::new_v4().to_string();
            let mut ms_cv = None;
            let result = match self
                .send_once(
                    op,
                    &url,
                    body.as_deref(),
                    headers,
                    &client_request_id,
                    bearer.as_ref(),
                )
                .await
            {
                Ok((status, retry_after, bytes, cv)) => {
                    ms_cv = cv;
                    tracing::debug!(
                        operation = %op,
                        attempt,
                        client_request_id = %client_request_id,
                        ms_cv = ms_cv.as_deref().unwrap_or(""),
                        status,
                        "ACS answered"
                    );
                    parse(&RawResponse {
                        status,
                        retry_after,
                        body: &bytes,
                    })
                    .map_err(|e| {
                        let e = e
                            .with_client_request_id(&client_request_id)
                            .with_ms_cv(ms_cv.as_deref());
                        (Some(status), e)
                    })
                }
                Err(e) => {
                    let e = e.with_client_request_id(&client_request_id);
                    tracing::debug!(
                        operation = %op,
                        attempt,
                        client_request_id = %client_request_id,
                        ms_cv = e.ms_cv().unwrap_or(""),
                        error = %e,
                        "ACS request got no answer"
                    );
                    Err((None, e))
                }
            };
            let elapsed = started.elapsed();
            let (status, outcome) = match &result {
                Ok(_) => (Some(success_status(op)), "ok"),
                Err((status, e)) => (e.status().or(*status), e.metric_label()),
            };
            if let Some(observer) = &self.inner.observer {
                observer.on_attempt(&Attempt {
                    operation: op,
                    attempt,
                    status,
                    result: outcome,
                    elapsed,
                    quota_wait,
                    resource: self.inner.resource.clone(),
                    quota_limit_per_second: self.inner.quota.limit_per_second(op),
                });
            }
            let err = match result {
                Ok(v) => {
                    self.inner.standing.succeeded();
                    return Ok(v);
                }
                Err((_, e)) => e,
            };
            // A bearer token ACS refuses may have been revoked or may predate a role
            // assignment: drop it and try once more with a fresh one.
            if let (Auth::Bearer(credential), Some(token)) = (&self.inner.auth, &bearer)
                && err.status() == Some(401)
                && !retried_unauthorized
            {
                retried_unauthorized = true;
                credential.invalidate(token);
                tracing::debug!(operation = %op, attempt, "ACS refused the Entra token; retrying once with a new one");
                continue;
            }
            let err = match &self.inner.auth {
                Auth::Bearer(_) => err.with_entra_hint(),
                Auth::Hmac(_) => err,
            };
            // A key regenerated or a role removed: the credentials no longer count as
            // working (they lift their service's quota past ACS's limits only while they
            // do), and callers are gated. Recorded as callers will see it (with the Entra
            // hint), after the retry with a fresh Entra token. An api-version ACS does not
            // serve is answered before the key is checked, to every request alike: gated
            // the same way, or a made-up key would pass the gate by naming one.
            if err.is_unauthorized() || err.is_unsupported_api_version() {
                self.inner.standing.refused(&err, Instant::now());
            } else if took_the_key(&err) {
                self.inner.standing.accepted();
            }
            if err.status() == Some(429)
                && let Some(wait) = err.retry_after()
            {
                self.inner.quota.pause(op, wait);
                if let Some(observer) = &self.inner.observer {
                    observer.on_throttle(&self.inner.resource, op, wait);
                }
            }
            // A probe is one attempt (two with a fresh Entra token): it asks whether the
            // credentials work, nothing more.
            let may_retry = !probe
                && err.is_retryable()
                && (retry == Retry::Retryable || !err.is_outcome_unknown());
            let delay = if may_retry {
                self.inner
                    .retry
                    .next_delay(attempt, err.retry_after(), rand::random::<f64>())
                    // A stalling endpoint must not hold the caller past the deadline.
                    .filter(|d| {
                        call_started.elapsed().saturating_add(*d) < self.inner.call_deadline
                    })
            } else {
                None
            };
            let Some(delay) = delay else {
                if err.is_outcome_unknown() && retry == Retry::OnlyIfNotExecuted {
                    tracing::warn!(
                        operation = %op,
                        attempt,
                        client_request_id = %client_request_id,
                        ms_cv = ms_cv.as_deref().or(err.ms_cv()).unwrap_or(""),
                        error = %err,
                        "ACS may have carried out this request although no answer came back; not retrying it (the api-version has no custom ids, a second create would make a second user)"
                    );
                } else {
                    tracing::debug!(operation = %op, attempt, client_request_id = %client_request_id, error = %err, "ACS request failed");
                }
                return Err(err);
            };
            tracing::debug!(
                operation = %op,
                attempt,
                client_request_id = %client_request_id,
                delay_ms = delay.as_millis() as u64,
                error = %err,
                "ACS request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// The Entra token for the next attempt (`None` with HMAC).
    async fn bearer(&self) -> Result<Option<super::entra::Secret>, AcsError> {
        match &self.inner.auth {
            Auth::Hmac(_) => Ok(None),
            Auth::Bearer(credential) => {
                credential
                    .token()
                    .await
                    .map(|t| Some(t.token))
                    .map_err(|e| AcsError::Entra {
                        reason: e.reason(),
                        message: e.to_string(),
                        transient: e.is_transient(),
                        retry_after: e.retry_after(),
                    })
            }
        }
    }

    /// Waits (or, for a caller, refuses to wait) for `op`'s turn; returns the time waited.
    async fn wait_for_turn(&self, op: Operation) -> Result<Duration, AcsError> {
        let waited = self.turn(op).await;
        if let Some(observer) = &self.inner.observer {
            let seen = match &waited {
                Ok(d) if !d.is_zero() => Some((WaitReason::Quota, *d)),
                Err(AcsError::QuotaWait { retry_after, .. }) => {
                    Some((WaitReason::Quota, *retry_after))
                }
                Err(AcsError::Paused { retry_after, .. }) => {
                    Some((WaitReason::Pause, *retry_after))
                }
                _ => None,
            };
            if let Some((reason, wait)) = seen {
                observer.on_wait(&self.inner.resource, op, reason, wait);
            }
        }
        waited
    }

    async fn turn(&self, op: Operation) -> Result<Duration, AcsError> {
        let now = Instant::now();
        let quota = &self.inner.quota;
        if let Some(caller) = &self.caller {
            return match quota.try_acquire(op, caller, now) {
                Ok(()) => Ok(Duration::ZERO),
                Err(at) => {
                    let retry_after = at.saturating_duration_since(now);
                    Err(if quota.paused_for(op, now).is_zero() {
                        AcsError::QuotaWait {
                            operation: op,
                            retry_after,
                        }
                    } else {
                        AcsError::Paused {
                            operation: op,
                            retry_after,
                        }
                    })
                }
            };
        }
        let paused = quota.paused_for(op, now);
        if paused > self.inner.retry.max_retry_after {
            // Waiting here would hold the caller for that long; it can come back instead.
            return Err(AcsError::Paused {
                operation: op,
                retry_after: paused,
            });
        }
        Ok(quota.acquire(op).await)
    }

    /// The `issue_token` request exactly as it would go on the wire (target, JSON body,
    /// date, HMAC signature, headers), built but not sent: what the client spends on a
    /// request before any I/O. For benchmarks (`acs-bench`) and debugging.
    pub fn prepare_issue_token(
        &self,
        id: &str,
        scopes: &[TokenScope],
        expires_in_minutes: Option<u32>,
    ) -> Result<reqwest::Request, AcsError> {
        check_id(id)?;
        let body = to_json(&IssueTokenBody {
            scopes,
            expires_in_minutes,
        })?;
        let url = self.request_url(Operation::IssueToken, id)?;
        self.signed_request(
            Operation::IssueToken,
            &url,
            Some(&body),
            &[],
            &uuid::Uuid::new_v4().to_string(),
            None,
        )?
        .build()
        .map_err(|e| AcsError::Config(format!("cannot build the request: {e}")))
    }

    fn request_url(&self, op: Operation, id: &str) -> Result<Url, AcsError> {
        let target = request_target(op, id, &self.inner.api_version);
        Url::parse(&format!("{}{target}", self.inner.base))
            .map_err(|e| AcsError::Config(format!("cannot form a request URL: {e}")))
    }

    /// A request for one attempt, dated and signed now, with `headers` (unsigned, as the
    /// SDKs send them) and the attempt's `x-ms-client-request-id`.
    fn signed_request(
        &self,
        op: Operation,
        url: &Url,
        body: Option<&[u8]>,
        headers: &[(&'static str, String)],
        client_request_id: &str,
        bearer: Option<&super::entra::Secret>,
    ) -> Result<reqwest::RequestBuilder, AcsError> {
        let method = method_of(op);
        let key = match (&self.inner.auth, bearer) {
            (Auth::Hmac(key), _) => key,
            (Auth::Bearer(_), Some(token)) => {
                // What azure-core's bearer policy sends: no date, no content hash.
                let mut authorization =
                    HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                        AcsError::Config("the Entra token is not a valid header value".into())
                    })?;
                authorization.set_sensitive(true);
                let mut request = self
                    .inner
                    .http
                    .request(method, url.clone())
                    .header(AUTHORIZATION, authorization)
                    .header(ACCEPT, "application/json")
                    .header("x-ms-client-request-id", client_request_id);
                for (name, value) in headers {
                    request = request.header(*name, value);
                }
                if let Some(b) = body {
                    request = request
                        .header(CONTENT_TYPE, "application/json")
                        .body(b.to_vec());
                }
                return Ok(request);
            }
            (Auth::Bearer(_), None) => {
                return Err(AcsError::Config("no Entra token to send".into()));
            }
        };
        // Sign exactly what goes on the wire: the URL's own serialisation of path and
        // query, and the host with the port the connection uses.
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let date = httpdate::fmt_http_date(SystemTime::now());
        let signed = sign_request(
            key,
            method.as_str(),
            &target,
            &host_with_port(url),
            &date,
            body.unwrap_or_default(),
        );
        let mut authorization = HeaderValue::from_str(&signed.authorization)
            .map_err(|_| AcsError::Config("signature is not a valid header value".into()))?;
        // Keeps the header out of reqwest's and hyper's Debug output.
        authorization.set_sensitive(true);
        let mut request = self
            .inner
            .http
            .request(method, url.clone())
            .header("x-ms-date", &signed.date)
            .header("x-ms-content-sha256", &signed.content_sha256)
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, "application/json")
            .header("x-ms-client-request-id", client_request_id);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(b) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(b.to_vec());
        }
        Ok(request)
    }

    /// One signed request; any answer (even an error status) is `Ok` with its parts and
    /// its `MS-CV` header.
    async fn send_once(
        &self,
        op: Operation,
        url: &Url,
        body: Option<&[u8]>,
        headers: &[(&'static str, String)],
        client_request_id: &str,
        bearer: Option<&super::entra::Secret>,
    ) -> Result<(u16, Option<Duration>, Vec<u8>, Option<String>), AcsError> {
        let request = self.signed_request(op, url, body, headers, client_request_id, bearer)?;
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(op, e))?;
        let status = response.status().as_u16();
        let retry_after = retry_after_from_headers(response.headers(), SystemTime::now());
        let ms_cv = response
            .headers()
            .get("ms-cv")
            .and_then(|v| v.to_str().ok())
            .and_then(super::error::correlation_vector);
        let bytes = self
            .read_capped(op, status, response)
            .await
            .map_err(|e| e.with_ms_cv(ms_cv.as_deref()))?;
        Ok((status, retry_after, bytes, ms_cv))
    }

    /// The body, refused once it grows past [`MAX_RESPONSE_BYTES`] (whatever
    /// `Content-Length` claims): a hostile endpoint cannot make us buffer 100 MiB.
    async fn read_capped(
        &self,
        op: Operation,
        status: u16,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, AcsError> {
        let too_large = AcsError::TooLarge {
            operation: op,
            status,
            limit: MAX_RESPONSE_BYTES,
            client_request_id: None,
            ms_cv: None,
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(op, e))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport_error(&self, op: Operation, e: reqwest::Error) -> AcsError {
        // Bounded like any text that may come from the other end (TLS names, proxies);
        // for debugging only, never shown in status.
        let (timeout, connect) = (e.is_timeout(), e.is_connect());
        let detail = super::error::endpoint_text(&error_chain(&e.without_url()));
        tracing::debug!(operation = %op, endpoint = %self.inner.base, detail = %detail, "no answer from ACS");
        if timeout {
            return AcsError::Timeout {
                operation: op,
                timeout: self.inner.request_timeout,
                endpoint: self.inner.base.clone(),
                client_request_id: None,
            };
        }
        AcsError::Transport {
            operation: op,
            connect,
            detail,
            endpoint: self.inner.base.clone(),
            client_request_id: None,
        }
    }
}

/// Whether a failed request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Idempotent (or made so by a custom id or the repeatability headers): retry any
    /// retryable error.
    Retryable,
    /// Not idempotent: retry only when ACS certainly did not act (429, connect failure).
    OnlyIfNotExecuted,
}

fn success_status(op: Operation) -> u16 {
    match op {
        Operation::CreateUser => StatusCode::CREATED.as_u16(),
        Operation::GetUser | Operation::IssueToken => StatusCode::OK.as_u16(),
        Operation::RevokeTokens | Operation::DeleteUser => StatusCode::NO_CONTENT.as_u16(),
    }
}

fn check_id(id: &str) -> Result<(), AcsError> {
    if id.trim().is_empty() {
        return Err(AcsError::InvalidArgument("user id is empty".into()));
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, AcsError> {
    serde_json::to_vec(v)
        .map_err(|e| AcsError::InvalidArgument(format!("cannot encode request: {e}")))
}

/// The error and its causes, without the URL (short, and the same for every request).
fn error_chain(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_id_support_comes_from_the_published_table() {
        let cs =
            ConnectionString::parse("endpoint=https://a.b/;accesskey=c2VjcmV0LWtleS1ieXRlcw==")
                .unwrap();
        for (version, custom) in [
            ("2023-10-01", false),
            ("2025-03-02-preview", true),
            ("2025-04-01-preview", false),
            ("2025-06-30", false),
            ("2026-07-22", false),
        ] {
            let client = AcsClient::new(
                &cs,
                AcsClientOptions {
                    api_version: version.into(),
                    ..AcsClientOptions::default()
                },
            )
            .unwrap();
            assert_eq!(client.supports_custom_id(), custom, "{version}");
        }
    }

    #[test]
    fn endpoints_are_checked_when_the_client_is_built() {
        let key = "accesskey=c2VjcmV0LWtleS1ieXRlcw==";
        let build = |endpoint: &str, allow_insecure_endpoints| {
            let cs = ConnectionString::parse(&format!("endpoint={endpoint};{key}")).unwrap();
            AcsClient::new(
                &cs,
                AcsClientOptions {
                    allow_insecure_endpoints,
                    ..AcsClientOptions::default()
                },
            )
        };
        assert!(build("https://res.communication.azure.com/", false).is_ok());
        // Loopback too: a sidecar's admin port listens there.
        let e = build("http://127.0.0.1:7000/", false).unwrap_err();
        assert_eq!(e.reason(), Some("InsecureEndpoint"), "{e:?}");
        assert!(build("http://127.0.0.1:7000/", true).is_ok());
        let e = build("http://127.0.0.1:15000/quitquitquit#", true).unwrap_err();
        assert_eq!(e.reason(), Some("InsecureEndpoint"), "{e:?}");
        let e = build("http://10.1.2.3:7000/", false).unwrap_err();
        assert_eq!(e.reason(), Some("InsecureEndpoint"), "{e:?}");
        assert_eq!(e.metric_label(), "insecure_endpoint");
        assert!(build("http://10.1.2.3:7000/", true).is_ok());
        let e = build("https://me:pw@res.example/", true).unwrap_err();
        assert!(matches!(e, AcsError::Endpoint(_)), "{e:?}");
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn ids_are_percent_encoded_like_the_sdks() {
        assert_eq!(
            request_target(Operation::IssueToken, "8:acs:a-b_c.d~e", "2023-10-01"),
            "/identities/8%3Aacs%3Aa-b_c.d~e/:issueAccessToken?api-version=2023-10-01"
        );
        assert_eq!(
            request_target(Operation::DeleteUser, "a/b?c d", "2023-10-01"),
            "/identities/a%2Fb%3Fc%20d?api-version=2023-10-01"
        );
    }

    /// Our request targets and bodies for the SDK-client vectors match what the SDK sent.
    #[test]
    fn requests_match_the_sdk_vectors() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/vectors/hmac_sha256.json")).unwrap();
        let mut checked = 0;
        for v in doc["vectors"].as_array().unwrap() {
            let Some(op) = v.get("operation") else {
                continue;
            };
            let name = v["name"].as_str().unwrap();
            let api = op["api_version"].as_str().unwrap();
            let id = op["id"].as_str().unwrap_or("");
            let scopes: Option<Vec<TokenScope>> = op["scopes"].as_array().map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap().parse().unwrap())
                    .collect()
            });
            let minutes = op["expires_in_minutes"].as_u64().map(|m| m as u32);
            let (operation, body) = match op["op"].as_str().unwrap() {
                "create_user" => (
                    Operation::CreateUser,
                    scopes.as_deref().map(|s| {
                        to_json(&CreateUserBody {
                            create_token_with_scopes: Some(s),
                            expires_in_minutes: minutes,
                            custom_id: None,
                        })
                        .unwrap()
                    }),
                ),
                "issue_token" => (
                    Operation::IssueToken,
                    Some(
                        to_json(&IssueTokenBody {
                            scopes: scopes.as_deref().unwrap(),
                            expires_in_minutes: minutes,
                        })
                        .unwrap(),
                    ),
                ),
                "revoke_tokens" => (Operation::RevokeTokens, None),
                "delete_user" => (Operation::DeleteUser, None),
                other => panic!("unknown op {other}"),
            };
            assert_eq!(
                method_of(operation).as_str(),
                v["method"].as_str().unwrap(),
                "{name}"
            );
            // Through `Url` as `call` does, so re-serialisation can't change the target.
            let url = Url::parse(&format!(
                "https://{}{}",
                v["host"].as_str().unwrap(),
                request_target(operation, id, api)
            ))
            .unwrap();
            let target = format!("{}?{}", url.path(), url.query().unwrap());
            assert_eq!(target, v["path_and_query"].as_str().unwrap(), "{name}");
            assert_eq!(host_with_port(&url), v["host"].as_str().unwrap(), "{name}");
            // Python puts spaces after separators, we don't: compare the JSON values.
            let sdk_body = v["body"].as_str().unwrap();
            match body {
                None => assert_eq!(sdk_body, "", "{name}"),
                Some(b) => assert_eq!(
                    serde_json::from_slice::<serde_json::Value>(&b).unwrap(),
                    serde_json::from_str::<serde_json::Value>(sdk_body).unwrap(),
                    "{name}"
                ),
            }
            checked += 1;
        }
        assert!(checked >= 5, "only {checked} SDK-client vectors");
    }

    /// The prepared request is what `issue_token` sends: signed over its own target,
    /// host and body, so the emulator's check accepts it.
    #[test]
    fn prepared_issue_token_request_is_signed_over_what_it_sends() {
        use super::super::signing::{content_hash, parse_authorization, string_to_sign, verify};
        let cs = ConnectionString::parse(
            "endpoint=http://127.0.0.1:7000/;accesskey=c2VjcmV0LWtleS1ieXRlcw==",
        )
        .unwrap();
        let client = AcsClient::new(
            &cs,
            AcsClientOptions {
                allow_insecure_endpoints: true,
                ..AcsClientOptions::default()
            },
        )
        .unwrap();
        let request = client
            .prepare_issue_token("8:acs:x_y", &[TokenScope::Chat], Some(60))
            .unwrap();
        assert_eq!(request.method(), Method::POST);
        let target = format!(
            "{}?{}",
            request.url().path(),
            request.url().query().unwrap()
        );
        assert_eq!(
            target,
            "/identities/8%3Aacs%3Ax_y/:issueAccessToken?api-version=2023-10-01"
        );
        let body = request.body().and_then(|b| b.as_bytes()).unwrap();
        assert_eq!(body, br#"{"scopes":["chat"],"expiresInMinutes":60}"#);
        let header = |name: &str| request.headers()[name].to_str().unwrap().to_string();
        assert_eq!(header("x-ms-content-sha256"), content_hash(body));
        let auth = parse_authorization(&header("authorization")).unwrap();
        let sts = string_to_sign(
            "POST",
            &target,
            &header("x-ms-date"),
            "127.0.0.1:7000",
            &content_hash(body),
        );
        assert!(verify(cs.key(), &sts, &auth.signature));
        assert!(
            client
                .prepare_issue_token(" ", &[TokenScope::Chat], None)
                .is_err()
        );
    }

    #[test]
    fn options_debug_and_client_debug_hide_the_key() {
        let cs =
            ConnectionString::parse("endpoint=https://a.b/;accesskey=c2VjcmV0LWtleS1ieXRlcw==")
                .unwrap();
        let client = AcsClient::new(&cs, AcsClientOptions::default()).unwrap();
        let shown = format!("{client:?} {:?}", AcsClientOptions::default());
        assert!(
            !shown.contains("c2VjcmV0") && !shown.contains("secret-key"),
            "{shown}"
        );
    }

    #[test]
    fn bad_options_are_config_errors() {
        let cs =
            ConnectionString::parse("endpoint=https://a.b/;accesskey=c2VjcmV0LWtleS1ieXRlcw==")
                .unwrap();
        let bad = [
            AcsClientOptions {
                api_version: " ".into(),
                ..Default::default()
            },
            AcsClientOptions {
                request_timeout: Duration::ZERO,
                ..Default::default()
            },
            AcsClientOptions {
                extra_ca_pem: Some(b"not pem".to_vec()),
                ..Default::default()
            },
            AcsClientOptions {
                quota: QuotaConfig {
                    issue_token: Some(super::super::quota::Rate::new(0, Duration::from_secs(1))),
                    ..QuotaConfig::default()
                },
                ..Default::default()
            },
        ];
        for o in bad {
            assert!(matches!(AcsClient::new(&cs, o), Err(AcsError::Config(_))));
        }
    }
}
