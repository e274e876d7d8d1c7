//! Microsoft Entra ID client credentials with a federated JWT assertion (workload
//! identity): one cached access token per credential, refreshed before it expires by one
//! caller at a time (single flight), shared by every ACS request made with it. No
//! Kubernetes here: where the assertion comes from (a TokenRequest, the projected token
//! file) is an [`AssertionSource`] the caller provides.
//!
//! Wire: `POST {authority}/{tenant}/oauth2/v2.0/token`, form `client_id`, `grant_type=
//! client_credentials`, `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:
//! jwt-bearer`, `client_assertion`, `scope=https://communication.azure.com//.default`
//! (what azure-identity's `ClientAssertionCredential` sends). Everything the authority
//! answers is bounded: the body ([`super::client::MAX_RESPONSE_BYTES`]), `expires_in`
//! ([`MAX_TOKEN_LIFETIME`]), `Retry-After` ([`MAX_RETRY_AFTER`]), the token's size, and
//! the error text (only the AADSTS code and trace id are kept: descriptions echo claims).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use url::Url;

use super::client::MAX_RESPONSE_BYTES;
use super::retry::retry_after_from_headers;

/// The scope the ACS SDKs ask for (the double slash is Microsoft's).
pub const ACS_SCOPE: &str = "https://communication.azure.com//.default";
/// The public cloud's authority, when neither the spec nor `AZURE_AUTHORITY_HOST` says.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// `expires_in` is capped to this (Entra grants 60-90 min, 24 h at most).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(25 * 3600);
/// A `Retry-After` from the authority is honoured up to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// No access token is longer (Entra's are 1.5-3 KiB).
pub const MAX_ACCESS_TOKEN_BYTES: usize = 16 * 1024;
/// Failures are retried no sooner than this, and no later than [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(2);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The longest wait after a failure before Entra was asked (a forbidden TokenRequest, a
/// missing ServiceAccount or id): below the services' 30 s re-check.
pub const SOURCE_RETRY_MAX: Duration = Duration::from_secs(20);
/// AADSTS70021: no federated identity credential matches the assertion (often: a new
/// one has not propagated yet, which takes minutes).
pub const AADSTS_NO_MATCHING_FEDERATION: &str = "AADSTS70021";

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a source gives for one exchange: the Kubernetes token (assertion) and who to ask.
#[derive(Debug, Clone)]
pub struct Assertion {
    pub jwt: Secret,
    pub client_id: String,
    pub tenant_id: String,
    /// `https://login.microsoftonline.com` (a trailing slash is fine).
    pub authority_host: String,
}

/// Why a source gave no assertion. `reason` is the condition reason, `message` what a
/// person does next; neither holds a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub reason: &'static str,
    pub message: String,
    pub transient: bool,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where assertions come from: one fresh assertion per exchange, never stored.
pub trait AssertionSource: Send + Sync {
    fn assertion(&self) -> BoxFuture<'_, Result<Assertion, SourceError>>;
}

/// Counts Entra requests by result (`ok`, or [`EntraError::metric_label`]) and the cached
/// token's expiry.
pub trait EntraObserver: Send + Sync {
    fn on_token_request(&self, credential: &str, result: &'static str);
    fn on_token(&self, credential: &str, expires_on: Timestamp);
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntraError {
    /// The authority refused the exchange (4xx with an OAuth error).
    #[error(
        "Entra ID refused the token exchange for client `{client_id}` in tenant `{tenant_id}` (HTTP {status}{}{}){}",
        error.as_deref().map(|e| format!(", {e}")).unwrap_or_default(),
        aadsts.as_deref().map(|c| format!(", {c}")).unwrap_or_default(),
        explain(aadsts.as_deref(), trace_id.as_deref())
    )]
    Refused {
        status: u16,
        client_id: String,
        tenant_id: String,
        /// The OAuth `error` (`invalid_client`...), bounded.
        error: Option<String>,
        /// `AADSTSnnnnn`, from `error_codes` or the description's prefix.
        aadsts: Option<String>,
        trace_id: Option<String>,
    },
    /// Throttled (429), a server error, or no answer; retried after `retry_after`.
    #[error("Entra ID at {authority} is unavailable ({detail}); retrying")]
    Unavailable {
        authority: String,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// A success status with an unusable body (never quoted).
    #[error("Entra ID at {authority} sent an unusable token response: {reason}")]
    Malformed { authority: String, reason: String },
    /// The authority host, tenant or client id cannot form a request.
    #[error("Entra ID configuration: {0}")]
    Config(String),
    /// No assertion (TokenRequest forbidden, ServiceAccount missing, no token file...).
    #[error("{}", .0.message)]
    Source(SourceError),
}

fn explain(aadsts: Option<&str>, trace_id: Option<&str>) -> String {
    let hint = match aadsts {
        Some(AADSTS_NO_MATCHING_FEDERATION) => {
            ": no federated identity credential of this application matches the ServiceAccount token's issuer, subject \
             (system:serviceaccount:NAMESPACE:NAME) and audience api://AzureADTokenExchange; a new one can take minutes \
             to propagate (retrying)"
        }
        Some("AADSTS700016") => ": the application (client id) is not found in this tenant",
        Some("AADSTS90002") => ": the tenant is not found",
        Some("AADSTS700024") => {
            ": the ServiceAccount token is expired or not yet valid (clock skew?)"
        }
        Some("AADSTS70011") => ": the scope is not accepted",
        _ => "",
    };
    match trace_id {
        Some(t) => format!("{hint} [trace id {t}]"),
        None => hint.to_string(),
    }
}

impl EntraError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        use crate::api::conditions::reasons;
        match self {
            EntraError::Refused { .. } => reasons::FEDERATION_FAILED,
            EntraError::Unavailable { .. } | EntraError::Malformed { .. } => {
                reasons::ENTRA_UNAVAILABLE
            }
            EntraError::Config(_) => reasons::ENTRA_CONFIG_INCOMPLETE,
            EntraError::Source(s) => s.reason,
        }
    }

    /// A retry soon may fix it without a person (throttling, outage, federation
    /// propagation).
    pub fn is_transient(&self) -> bool {
        match self {
            EntraError::Unavailable { .. } => true,
            EntraError::Refused { aadsts, .. } => {
                aadsts.as_deref() == Some(AADSTS_NO_MATCHING_FEDERATION)
            }
            EntraError::Source(s) => s.transient,
            EntraError::Malformed { .. } | EntraError::Config(_) => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EntraError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            EntraError::Refused { .. } => "refused",
            EntraError::Unavailable { .. } => "unavailable",
            EntraError::Malformed { .. } => "malformed",
            EntraError::Config(_) => "config",
            EntraError::Source(_) => "assertion",
        }
    }
}

/// A token as the ACS client uses it.
#[derive(Debug, Clone)]
pub struct BearerToken {
    pub token: Secret,
    pub expires_on: Timestamp,
}

/// When to refresh a token issued at `issued` for `lifetime`: the earliest of the
/// authority's `refresh_in`, half the lifetime when it is 2 h or more (as the SDKs do),
/// and 5 min before expiry; a short token (under 10 min) at two thirds of its life.
pub fn refresh_at(
    issued: Timestamp,
    lifetime: Duration,
    refresh_in: Option<Duration>,
) -> Timestamp {
    let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
    let mut after = if lifetime >= Duration::from_secs(600) {
        lifetime - Duration::from_secs(300)
    } else {
        lifetime * 2 / 3
    };
    if lifetime >= Duration::from_secs(7200) {
        after = after.min(lifetime / 2);
    }
    if let Some(r) = refresh_in.filter(|r| !r.is_zero()) {
        after = after.min(r);
    }
    issued
        .saturating_add(SignedDuration::try_from(after).unwrap_or(SignedDuration::ZERO))
        .unwrap_or(issued)
}

/// How long to wait before the next attempt after `failures` consecutive failures:
/// the authority's `Retry-After` (bounded) or exponential from [`MIN_BACKOFF`].
pub fn backoff(failures: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(r) = retry_after {
        return r.clamp(Duration::from_secs(1), MAX_RETRY_AFTER);
    }
    let exp = MIN_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(10));
    exp.min(MAX_BACKOFF)
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    error_codes: Option<Vec<serde_json::Value>>,
    trace_id: Option<String>,
}

/// A positive number of seconds, as a JSON number or a numeric string (ADFS and some
/// proxies send strings); bounded to [`MAX_TOKEN_LIFETIME`].
fn seconds(v: &serde_json::Value) -> Option<Duration> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }?;
    (n > 0).then(|| Duration::from_secs(n).min(MAX_TOKEN_LIFETIME))
}

/// Bounded text of safe characters only (OAuth error names, AADSTS codes, trace ids).
fn safe_text(s: &str, max: usize) -> Option<String> {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(max)
        .collect();
    (!t.is_empty()).then_some(t)
}

fn aadsts_code(body: &ErrorBody) -> Option<String> {
    if let Some(n) = body
        .error_codes
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|v| v.as_u64())
    {
        return Some(format!("AADSTS{n}"));
    }
    let d = body.error_description.as_deref()?;
    let rest = d.strip_prefix("AADSTS")?;
    let digits: String = rest
        .chars()
        .take_while(char::is_ascii_digit)
        .take(9)
        .collect();
    (!digits.is_empty()).then(|| format!("AADSTS{digits}"))
}

/// Reads a token answer: `Ok((token, lifetime, refresh_in))` or the error it means.
pub fn parse_token_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    authority: &str,
    assertion: &Assertion,
) -> Result<(Secret, Duration, Option<Duration>), EntraError> {
    let unavailable = |detail: String| EntraError::Unavailable {
        authority: authority.to_string(),
        detail,
        retry_after: retry_after.map(|r| r.min(MAX_RETRY_AFTER)),
    };
    if status == 429 || status == 408 || (500..=599).contains(&status) {
        return Err(unavailable(format!("HTTP {status}")));
    }
    if !(200..300).contains(&status) {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let Some(e) = parsed else {
            return Err(EntraError::Refused {
                status,
                client_id: assertion.client_id.clone(),
                tenant_id: assertion.tenant_id.clone(),
                error: None,
                aadsts: None,
                trace_id: None,
            });
        };
        return Err(EntraError::Refused {
            status,
            client_id: assertion.client_id.clone(),
            tenant_id: assertion.tenant_id.clone(),
            error: e.error.as_deref().and_then(|s| safe_text(s, 64)),
            aadsts: aadsts_code(&e),
            trace_id: e.trace_id.as_deref().and_then(|s| safe_text(s, 64)),
        });
    }
    let malformed = |reason: &str| EntraError::Malformed {
        authority: authority.to_string(),
        reason: reason.to_string(),
    };
    let b: TokenBody =
        serde_json::from_slice(body).map_err(|_| malformed("the body is not token JSON"))?;
    if let Some(t) = &b.token_type
        && !t.eq_ignore_ascii_case("bearer")
    {
        return Err(malformed("token_type is not Bearer"));
    }
    let token = b
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("no access_token"))?;
    if token.len() > MAX_ACCESS_TOKEN_BYTES {
        return Err(malformed("access_token is longer than any Entra token"));
    }
    if !token.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(malformed("access_token has characters no header may carry"));
    }
    let lifetime = b
        .expires_in
        .as_ref()
        .and_then(seconds)
        .ok_or_else(|| malformed("expires_in is missing or not a positive number"))?;
    let refresh_in = b.refresh_in.as_ref().and_then(seconds);
    Ok((Secret(token), lifetime, refresh_in))
}

/// The token endpoint of an authority and tenant; https only.
pub fn token_url(authority_host: &str, tenant_id: &str) -> Result<Url, EntraError> {
    let tenant_ok = !tenant_id.is_empty()
        && tenant_id.len() <= 128
        && tenant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !tenant_ok {
        return Err(EntraError::Config(format!(
            "tenant id `{}` is not a GUID or domain name",
            tenant_id.chars().take(64).collect::<String>()
        )));
    }
    let base = Url::parse(authority_host).map_err(|_| {
        EntraError::Config(
            "the authority host is not a URL (spec.entraId.authorityHost or AZURE_AUTHORITY_HOST)"
                .into(),
        )
    })?;
    if base.scheme() != "https" || base.host_str().is_none() || !base.username().is_empty() {
        return Err(EntraError::Config(
            "the authority host must be an https:// URL without user info".into(),
        ));
    }
    let root = base.as_str().trim_end_matches('/');
    Url::parse(&format!("{root}/{tenant_id}/oauth2/v2.0/token"))
        .map_err(|_| EntraError::Config("cannot form the token URL".into()))
}

struct Cached {
    token: BearerToken,
    refresh_at: Timestamp,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// The last failure and when the next attempt may start: callers in between get it
    /// back without a request, so a failing authority sees one request per backoff.
    failure: Option<(EntraError, Timestamp)>,
    failures: u32,
}

/// One Entra credential (client, tenant, assertion source): one token at a time.
pub struct EntraCredential {
    /// For metrics and logs: the service this credential belongs to (not secret).
    label: String,
    http: reqwest::Client,
    source: Arc<dyn AssertionSource>,
    observer: Option<Arc<dyn EntraObserver>>,
    /// Held while refreshing: single flight.
    state: tokio::sync::Mutex<State>,
    /// Last known (client id, tenant id, expiry), readable without waiting.
    shown: Mutex<Option<(String, String, Timestamp)>>,
    /// A token ACS refused: never handed out again, even if the state was busy when it
    /// was reported.
    refused: Mutex<Option<Secret>>,
}

impl fmt::Debug for EntraCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraCredential")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl EntraCredential {
    pub fn new(
        label: String,
        http: reqwest::Client,
        source: Arc<dyn AssertionSource>,
        observer: Option<Arc<dyn EntraObserver>>,
    ) -> Self {
        EntraCredential {
            label,
            http,
            source,
            observer,
            state: tokio::sync::Mutex::new(State::default()),
            shown: Mutex::new(None),
            refused: Mutex::new(None),
        }
    }

    /// (client id, tenant id, token expiry) of the last token obtained.
    pub fn shown(&self) -> Option<(String, String, Timestamp)> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The cached token, or a new one when it is due for refresh (one caller asks; the
    /// others wait for its answer). After a failure, the same error until the backoff
    /// ends.
    pub async fn token(&self) -> Result<BearerToken, EntraError> {
        let mut st = self.state.lock().await;
        let now = Timestamp::now();
        if let Some(refused) = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            && st.cached.as_ref().is_some_and(|c| c.token.token == refused)
        {
            st.cached = None;
            st.failure = None;
        }
        if let Some(c) = &st.cached
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        if let Some((e, until)) = &st.failure
            && now < *until
        {
            // A token that is still valid beats an error.
            if let Some(c) = &st.cached
                && now < c.token.expires_on
            {
                return Ok(c.token.clone());
            }
            return Err(e.clone());
        }
        match self.exchange().await {
            Ok((token, lifetime, refresh_in)) => {
                let issued = Timestamp::now();
                let expires_on = issued
                    .saturating_add(SignedDuration::try_from(lifetime).unwrap_or_default())
                    .unwrap_or(issued);
                let bearer = BearerToken { token, expires_on };
                st.cached = Some(Cached {
                    token: bearer.clone(),
                    refresh_at: refresh_at(issued, lifetime, refresh_in),
                });
                st.failure = None;
                st.failures = 0;
                if let Some(o) = &self.observer {
                    o.on_token_request(&self.label, "ok");
                    o.on_token(&self.label, expires_on);
                }
                Ok(bearer)
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let wait = match &e {
                    // Nothing reached Entra (the ServiceAccount token, the ids): the fix
                    // is a person's Role or annotation, and shows at the services' next
                    // check instead of after a backoff grown for an authority.
                    EntraError::Source(_) => backoff(st.failures, None).min(SOURCE_RETRY_MAX),
                    _ => backoff(st.failures, e.retry_after()),
                };
                let until = Timestamp::now()
                    .saturating_add(SignedDuration::try_from(wait).unwrap_or_default())
                    .unwrap_or(now);
                st.failure = Some((e.clone(), until));
                if let Some(o) = &self.observer
                    && !matches!(e, EntraError::Source(_))
                {
                    o.on_token_request(&self.label, e.metric_label());
                }
                tracing::debug!(credential = %self.label, error = %e, retry_in_ms = wait.as_millis() as u64, "Entra token request failed");
                if let Some(c) = &st.cached
                    && Timestamp::now() < c.token.expires_on
                {
                    return Ok(c.token.clone());
                }
                Err(e)
            }
        }
    }

    /// Drops the cached token if it is still `token` (ACS answered 401 to it): the next
    /// [`Self::token`] asks Entra again.
    pub fn invalidate(&self, token: &Secret) {
        // Applied by the next `token()`, under the state lock: a refresh in flight keeps
        // its new token, and the refused one is never handed out again.
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
    }

    async fn exchange(&self) -> Result<(Secret, Duration, Option<Duration>), EntraError> {
        let assertion = self.source.assertion().await.map_err(EntraError::Source)?;
        let url = token_url(&assertion.authority_host, &assertion.tenant_id)?;
        let authority = format!(
            "{}://{}",
            url.scheme(),
            super::connection_string::host_with_port(&url)
        );
        let form = [
            ("client_id", assertion.client_id.as_str()),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion.jwt.expose()),
            ("scope", ACS_SCOPE),
        ];
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let unavailable = |detail: &str| EntraError::Unavailable {
            authority: authority.clone(),
            detail: detail.to_string(),
            retry_after: None,
        };
        let response = self
            .http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                unavailable(if e.is_timeout() {
                    "timed out"
                } else {
                    "no answer"
                })
            })?;
        let status = response.status().as_u16();
        let retry_after = retry_after_from_headers(response.headers(), SystemTime::now());
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(unavailable("the answer is too large"));
        }
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| unavailable("the answer was cut"))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(unavailable("the answer is too large"));
            }
            bytes.extend_from_slice(&chunk);
        }
        let parsed = parse_token_response(status, retry_after, &bytes, &authority, &assertion);
        if parsed.is_ok() {
            *self.shown.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                assertion.client_id.clone(),
                assertion.tenant_id.clone(),
                Timestamp::now(),
            ));
        }
        parsed.inspect(|(_, lifetime, _)| {
            let expires = Timestamp::now()
                .saturating_add(SignedDuration::try_from(*lifetime).unwrap_or_default())
                .unwrap_or_else(|_| Timestamp::now());
            if let Some(s) = self
                .shown
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                s.2 = expires;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assertion() -> Assertion {
        Assertion {
            jwt: Secret("eyJ.assertion.sig".into()),
            client_id: "client".into(),
            tenant_id: "tenant".into(),
            authority_host: "https://login.example".into(),
        }
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn refresh_time_table() {
        let h = 3600;
        let cases: &[(u64, Option<u64>, u64)] = &[
            // lifetime, refresh_in, refresh after (s)
            (75 * 60, None, 70 * 60), // Entra's usual: 5 min before expiry
            (24 * h, None, 12 * h),   // long: half-life, as the SDKs
            (2 * h, None, h),         // exactly 2 h: half
            (3599, Some(1800), 1800), // refresh_in wins when earlier
            (3599, Some(7200), 3599 - 300), // ... never later than expiry - 5 min
            (120, None, 80),          // short (scaled emulator): two thirds
            (1000 * h, None, 25 * h / 2), // hostile: capped to 25 h, then half
        ];
        for (lifetime, refresh_in, after) in cases {
            let got = refresh_at(
                ts(1_000_000),
                Duration::from_secs(*lifetime),
                refresh_in.map(Duration::from_secs),
            );
            assert_eq!(
                got,
                ts(1_000_000 + *after as i64),
                "lifetime {lifetime} refresh_in {refresh_in:?}"
            );
        }
    }

    #[test]
    fn backoff_table() {
        assert_eq!(backoff(1, None), Duration::from_secs(2));
        assert_eq!(backoff(3, None), Duration::from_secs(8));
        assert_eq!(backoff(40, None), MAX_BACKOFF);
        assert_eq!(
            backoff(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            backoff(1, Some(Duration::from_secs(u64::MAX / 4))),
            MAX_RETRY_AFTER
        );
        assert_eq!(backoff(1, Some(Duration::ZERO)), Duration::from_secs(1));
    }

    #[test]
    fn token_responses_parse_or_say_what_is_wrong() {
        let a = assertion();
        let ok = br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0.x.y"}"#;
        let (t, life, r) = parse_token_response(200, None, ok, "https://h", &a).unwrap();
        assert_eq!(
            (t.expose(), life, r),
            ("eyJ0.x.y", Duration::from_secs(3599), None)
        );
        let s = br#"{"token_type":"Bearer","expires_in":"3599","refresh_in":"1800","access_token":"t"}"#;
        let (_, life, r) = parse_token_response(200, None, s, "https://h", &a).unwrap();
        assert_eq!(
            (life, r),
            (Duration::from_secs(3599), Some(Duration::from_secs(1800)))
        );
        let huge = br#"{"expires_in":18446744073709551615,"access_token":"t"}"#;
        let (_, life, _) = parse_token_response(200, None, huge, "https://h", &a).unwrap();
        assert_eq!(life, MAX_TOKEN_LIFETIME);
        for bad in [
            &br#"{"expires_in":0,"access_token":"t"}"#[..],
            br#"{"expires_in":-5,"access_token":"t"}"#,
            br#"{"access_token":"t"}"#,
            br#"{"expires_in":3599}"#,
            br#"{"expires_in":3599,"access_token":"a\nb"}"#,
            br#"{"token_type":"pop","expires_in":3599,"access_token":"t"}"#,
            b"<html>",
        ] {
            let e = parse_token_response(200, None, bad, "https://h", &a).unwrap_err();
            assert!(matches!(e, EntraError::Malformed { .. }), "{e}");
            assert!(!e.to_string().contains("a\nb"));
        }
    }

    #[test]
    fn errors_keep_only_codes_and_classify() {
        let a = assertion();
        let body = br#"{"error":"invalid_client","error_description":"AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: 'https://kubernetes.default.svc'. Assertion Subject: 'system:serviceaccount:x:y'.","error_codes":[70021],"trace_id":"0a1b-2c","correlation_id":"z"}"#;
        let e = parse_token_response(400, None, body, "https://h", &a).unwrap_err();
        assert_eq!(
            e.reason(),
            crate::api::conditions::reasons::FEDERATION_FAILED
        );
        assert!(e.is_transient(), "70021 is retried (propagation)");
        let msg = e.to_string();
        assert!(
            msg.contains("AADSTS70021")
                && msg.contains("invalid_client")
                && msg.contains("0a1b-2c"),
            "{msg}"
        );
        assert!(
            !msg.contains("system:serviceaccount:x:y"),
            "the description is never passed on: {msg}"
        );
        let other = br#"{"error":"unauthorized_client","error_description":"AADSTS700016: Application not found"}"#;
        let e = parse_token_response(400, None, other, "https://h", &a).unwrap_err();
        assert!(!e.is_transient());
        assert!(e.to_string().contains("AADSTS700016"));
        let throttled =
            parse_token_response(429, Some(Duration::from_secs(99_999)), b"", "https://h", &a)
                .unwrap_err();
        assert!(throttled.is_transient());
        assert_eq!(throttled.retry_after(), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_token_response(503, None, b"x", "https://h", &a)
                .unwrap_err()
                .reason(),
            crate::api::conditions::reasons::ENTRA_UNAVAILABLE
        );
        let hostile = br#"{"error":"x\u001b[31m\nforged","trace_id":"\n\n"}"#;
        let e = parse_token_response(401, None, hostile, "https://h", &a).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\n') && !msg.contains('\u{1b}'), "{msg}");
    }

    #[test]
    fn token_urls_are_https_and_tenants_are_names() {
        assert_eq!(
            token_url(
                "https://login.microsoftonline.com/",
                "contoso.onmicrosoft.com"
            )
            .unwrap()
            .as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            token_url("https://127.0.0.1:8443", "t-1").unwrap().as_str(),
            "https://127.0.0.1:8443/t-1/oauth2/v2.0/token"
        );
        for (host, tenant) in [
            ("http://login.example", "t"),
            ("https://u:p@login.example", "t"),
            ("https://login.example", "../admin"),
            ("https://login.example", ""),
            ("not a url", "t"),
        ] {
            assert!(
                matches!(token_url(host, tenant), Err(EntraError::Config(_))),
                "{host} {tenant}"
            );
        }
    }

    #[test]
    fn secrets_never_print() {
        assert_eq!(format!("{:?}", assertion().jwt), "<redacted>");
        assert!(!format!("{:?}", assertion()).contains("assertion.sig"));
    }
}
