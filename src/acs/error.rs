//! Typed errors of the ACS client. No variant ever holds a token, a key, a connection
//! string or a raw response body: only status codes, ACS error codes and ACS messages.

use std::fmt;
use std::time::Duration;

use super::endpoint::EndpointError;

/// The identity operations, used in errors, metrics, quota and tracing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    CreateUser,
    GetUser,
    IssueToken,
    RevokeTokens,
    DeleteUser,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::CreateUser,
        Operation::GetUser,
        Operation::IssueToken,
        Operation::RevokeTokens,
        Operation::DeleteUser,
    ];

    /// A stable, low-cardinality name for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::CreateUser => "create_user",
            Operation::GetUser => "get_user",
            Operation::IssueToken => "issue_token",
            Operation::RevokeTokens => "revoke_tokens",
            Operation::DeleteUser => "delete_user",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text from an endpoint (ACS's `error.message` and `error.code`) ends up in conditions,
/// events and logs; the endpoint may be a tenant's own server, so it is cut to this many
/// characters and stripped of control characters (no forged log lines, no terminal escapes).
pub const MAX_ENDPOINT_TEXT_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcsError {
    /// ACS answered with a non-success status.
    #[error("ACS {operation} failed with HTTP {status}{}{}", describe_service_error(code.as_deref(), message.as_deref()), explain_code(code.as_deref()))]
    Service {
        operation: Operation,
        status: u16,
        /// `error.code` from the `{"error": {...}}` body, when the body had that shape.
        code: Option<String>,
        /// `error.message`, truncated.
        message: Option<String>,
        /// How long ACS asked us to wait (`Retry-After` and friends).
        retry_after: Option<Duration>,
        /// The `x-ms-client-request-id` of the request that got this answer, which Azure
        /// support can trace. Kept out of `Display` (conditions must not change with every
        /// attempt); read it with [`AcsError::client_request_id`]. Not a secret.
        client_request_id: Option<String>,
        /// The `MS-CV` correlation vector ACS answered with (see [`correlation_vector`]);
        /// kept out of `Display` like the request id. Read it with [`AcsError::ms_cv`].
        ms_cv: Option<String>,
    },
    /// No complete answer within the request timeout. Shown exactly like `Transport`: what
    /// a tenant's endpoint sees in `Ready` must not tell an open port from a closed one.
    #[error("{}", unreachable(operation, endpoint))]
    Timeout {
        operation: Operation,
        timeout: Duration,
        /// Where the request went (scheme, host, port), as the connection string named it.
        endpoint: String,
        /// The `x-ms-client-request-id` that was sent (ACS may have seen it); not in `Display`.
        client_request_id: Option<String>,
    },
    /// The request could not be sent or the answer not read (DNS, connect, TLS, reset).
    /// `detail` (what the network stack said) goes to debug logs only, never to status:
    /// it would turn `Ready` into a port scanner of the operator's network.
    #[error("{}", unreachable(operation, endpoint))]
    Transport {
        operation: Operation,
        /// Whether the failure happened while connecting, i.e. ACS never saw the request.
        connect: bool,
        detail: String,
        endpoint: String,
        /// The `x-ms-client-request-id` of the attempt; not in `Display`.
        client_request_id: Option<String>,
    },
    /// The answer was longer than any ACS answer can be; it was not read to the end.
    #[error(
        "ACS sent an unusable response to {operation} (HTTP {status}): the answer is larger than {limit} bytes"
    )]
    TooLarge {
        operation: Operation,
        status: u16,
        limit: usize,
        /// The `x-ms-client-request-id` and `MS-CV` of the attempt; not in `Display`.
        client_request_id: Option<String>,
        ms_cv: Option<String>,
    },
    /// The client-side quota has no turn for this request yet; its turn is reserved for
    /// the caller, who should come back after `retry_after`. Nothing was sent.
    #[error("waiting for the client-side ACS quota of {operation}")]
    QuotaWait {
        operation: Operation,
        retry_after: Duration,
    },
    /// A success status with a body we cannot use. `reason` never quotes the body.
    #[error("ACS sent an unusable response to {operation} (HTTP {status}): {reason}")]
    MalformedResponse {
        operation: Operation,
        status: u16,
        reason: String,
        /// The `x-ms-client-request-id` and `MS-CV` of the attempt; not in `Display`.
        client_request_id: Option<String>,
        ms_cv: Option<String>,
    },
    /// The configured api-version does not offer what was asked (e.g. `get_user`).
    #[error(
        "ACS api-version {api_version} does not support {what}; api-versions that do: {}",
        custom_id_version_list()
    )]
    Unsupported {
        api_version: String,
        what: &'static str,
    },
    /// The endpoint is refused (not https, plain http to a non-loopback host, user info).
    /// `reason()` of the inner error is the condition reason (`InsecureEndpoint`).
    #[error("{0}")]
    Endpoint(#[from] EndpointError),
    /// ACS answered 429 with a `Retry-After` longer than the retry policy waits; every
    /// request of this operation through this client waits until then. Nothing was sent.
    // The message stays the same for the whole pause (no remaining time in it), so that a
    // paused identity writes its status once, not on every pass (issue 15).
    #[error(
        "ACS asked to slow down (HTTP 429): {operation} is paused for every identity of this ACS resource"
    )]
    Paused {
        operation: Operation,
        retry_after: Duration,
    },
    /// The client could not be built from its options (bad CA bundle, bad endpoint).
    #[error("invalid ACS client configuration: {0}")]
    Config(String),
    /// The caller passed something no request can be made from (e.g. an empty user id).
    #[error("invalid ACS request: {0}")]
    InvalidArgument(String),
    /// No Entra ID token to authenticate with; nothing was sent. `reason` is the
    /// condition reason (`FederationFailed`, `ServiceAccountTokenForbidden`, ...).
    #[error("{message}")]
    Entra {
        reason: &'static str,
        message: String,
        transient: bool,
        retry_after: Option<Duration>,
    },
}

/// What a 401/403 to an Entra token means for the person who can fix it.
pub const ENTRA_ROLE_HINT: &str = "the Entra ID principal lacks a role on the ACS resource: grant it Contributor or \
     Communication and Email Service Owner on the resource (az role assignment create --assignee CLIENT_ID \
     --role Contributor --scope ACS_RESOURCE_ID); assignments take minutes to propagate";

fn unreachable(operation: &Operation, endpoint: &str) -> String {
    format!(
        "no answer from the ACS endpoint {endpoint} for {operation} (connection refused, reset or timed out)"
    )
}

fn custom_id_version_list() -> String {
    super::api_versions::custom_id_versions()
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error code `IdentityNotOwned` answers an id of another ACS resource.
pub const IDENTITY_NOT_OWNED: &str = "IdentityNotOwned";

/// What an ACS error code means for the person reading the message, where it needs saying.
fn explain_code(code: Option<&str>) -> &'static str {
    match code {
        Some(IDENTITY_NOT_OWNED) => {
            "; the user belongs to another ACS resource than this endpoint's (the service's endpoint or key is not the user's resource)"
        }
        _ => "",
    }
}

fn describe_service_error(code: Option<&str>, message: Option<&str>) -> String {
    match (code, message) {
        (Some(c), Some(m)) => format!(" ({c}): {m}"),
        (Some(c), None) => format!(" ({c})"),
        (None, Some(m)) => format!(": {m}"),
        (None, None) => String::new(),
    }
}

impl AcsError {
    pub fn service(
        operation: Operation,
        status: u16,
        code: Option<String>,
        message: Option<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        AcsError::Service {
            operation,
            status,
            code: code.map(|c| endpoint_text(&c)).filter(|c| !c.is_empty()),
            message: message.map(|m| endpoint_text(&m)).filter(|m| !m.is_empty()),
            retry_after,
            client_request_id: None,
            ms_cv: None,
        }
    }

    /// This error with the `x-ms-client-request-id` of the request that got it, for every
    /// variant of a request that was sent (or tried to be). No effect on errors of
    /// requests never sent (quota, pause, configuration, Entra).
    pub fn with_client_request_id(mut self, id: &str) -> Self {
        if let AcsError::Service {
            client_request_id, ..
        }
        | AcsError::Timeout {
            client_request_id, ..
        }
        | AcsError::Transport {
            client_request_id, ..
        }
        | AcsError::TooLarge {
            client_request_id, ..
        }
        | AcsError::MalformedResponse {
            client_request_id, ..
        } = &mut self
        {
            *client_request_id = Some(id.to_string());
        }
        self
    }

    /// This error with the `MS-CV` ACS answered with, where it has an answer to hold it.
    /// `cv` must already have passed [`correlation_vector`].
    pub fn with_ms_cv(mut self, cv: Option<&str>) -> Self {
        if let AcsError::Service { ms_cv, .. }
        | AcsError::TooLarge { ms_cv, .. }
        | AcsError::MalformedResponse { ms_cv, .. } = &mut self
        {
            *ms_cv = cv.map(str::to_string);
        }
        self
    }

    /// The `x-ms-client-request-id` of the request that failed with this error: what
    /// Azure support traces a request by. `None` when nothing was sent. Not a secret, and
    /// never part of `Display` (conditions and events must not change with every attempt);
    /// the operator logs it as the field `client_request_id` of `reconcile failed`.
    pub fn client_request_id(&self) -> Option<&str> {
        match self {
            AcsError::Service {
                client_request_id, ..
            }
            | AcsError::Timeout {
                client_request_id, ..
            }
            | AcsError::Transport {
                client_request_id, ..
            }
            | AcsError::TooLarge {
                client_request_id, ..
            }
            | AcsError::MalformedResponse {
                client_request_id, ..
            } => client_request_id.as_deref(),
            _ => None,
        }
    }

    /// The `MS-CV` correlation vector ACS answered with, when it answered and sent one.
    pub fn ms_cv(&self) -> Option<&str> {
        match self {
            AcsError::Service { ms_cv, .. }
            | AcsError::TooLarge { ms_cv, .. }
            | AcsError::MalformedResponse { ms_cv, .. } => ms_cv.as_deref(),
            _ => None,
        }
    }

    /// A well-formed id of another ACS resource: 401 `IdentityNotOwned`. Not "user gone"
    /// (the user may well exist, elsewhere) and not a bad key: the endpoint or key in use
    /// belongs to a different resource than the user.
    pub fn is_identity_not_owned(&self) -> bool {
        self.status() == Some(401) && self.code() == Some(IDENTITY_NOT_OWNED)
    }

    /// ACS refused the request's api-version (400 `UnsupportedApiVersion`, or
    /// `MissingApiVersionParameter`), which it checks before the credentials: every request
    /// of the client gets the same answer, whatever it asks.
    pub fn is_unsupported_api_version(&self) -> bool {
        self.status() == Some(400)
            && matches!(
                self.code(),
                Some("UnsupportedApiVersion" | "MissingApiVersionParameter")
            )
    }

    /// The operation that failed, when the error came from one.
    pub fn operation(&self) -> Option<Operation> {
        match self {
            AcsError::Service { operation, .. }
            | AcsError::Timeout { operation, .. }
            | AcsError::Transport { operation, .. }
            | AcsError::MalformedResponse { operation, .. }
            | AcsError::TooLarge { operation, .. }
            | AcsError::QuotaWait { operation, .. }
            | AcsError::Paused { operation, .. } => Some(*operation),
            AcsError::Unsupported { .. }
            | AcsError::Endpoint(_)
            | AcsError::Config(_)
            | AcsError::InvalidArgument(_)
            | AcsError::Entra { .. } => None,
        }
    }

    /// This answer again, for `op`, without a request: it names `op`, and no request id,
    /// correlation vector or wait (nothing was sent this time).
    pub fn replayed_for(&self, op: Operation) -> Self {
        let mut e = self.clone();
        if let AcsError::Service {
            operation,
            retry_after,
            client_request_id,
            ms_cv,
            ..
        } = &mut e
        {
            *operation = op;
            *retry_after = None;
            *client_request_id = None;
            *ms_cv = None;
        }
        e
    }

    /// The HTTP status ACS answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AcsError::Service { status, .. }
            | AcsError::MalformedResponse { status, .. }
            | AcsError::TooLarge { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The ACS error code (`error.code`), if ACS sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AcsError::Service { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The user or resource does not exist (deleted or unknown id). The operator treats a
    /// delete that fails this way as done.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Wrong key, bad signature or clock skew (not [`Self::is_identity_not_owned`], which
    /// is a 401 as well).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self.status(), Some(401 | 403)) && !self.is_identity_not_owned()
    }

    /// Worth trying again: throttling, server errors, timeouts and network failures.
    /// 400/401/403/404 and malformed answers will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            AcsError::Service { status, .. } => {
                *status == 408 || *status == 429 || (500..=599).contains(status)
            }
            AcsError::Timeout { .. }
            | AcsError::Transport { .. }
            | AcsError::Paused { .. }
            | AcsError::QuotaWait { .. } => true,
            // An endpoint that answers megabytes will do so again; a person must look.
            AcsError::TooLarge { .. }
            | AcsError::MalformedResponse { .. }
            | AcsError::Unsupported { .. }
            | AcsError::Endpoint(_)
            | AcsError::Config(_)
            | AcsError::InvalidArgument(_) => false,
            AcsError::Entra { transient, .. } => *transient,
        }
    }

    /// For a client authenticating with Entra ID: a 401 or 403 says which role to grant.
    pub fn with_entra_hint(self) -> Self {
        match self {
            AcsError::Service {
                operation,
                status: status @ (401 | 403),
                code,
                message,
                retry_after,
                client_request_id,
                ms_cv,
            } if code.as_deref() != Some(IDENTITY_NOT_OWNED) => AcsError::Service {
                operation,
                status,
                message: Some(match message {
                    Some(m) => format!("{m}; {ENTRA_ROLE_HINT}"),
                    None => ENTRA_ROLE_HINT.to_string(),
                }),
                code,
                retry_after,
                client_request_id,
                ms_cv,
            },
            other => other,
        }
    }

    /// ACS may have carried out the request although no success came back: a timeout, a
    /// connection lost after sending, a 5xx (or 408), or a success status with an unusable
    /// body. For a create on an api-version without custom ids this means a user may exist
    /// that nobody recorded; the client never retries such a create by itself.
    /// A 429, a refused connection or a 4xx mean ACS did not act.
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            AcsError::Timeout { .. } => true,
            AcsError::Transport { connect, .. } => !connect,
            AcsError::Service { status, .. } => *status == 408 || (500..=599).contains(status),
            AcsError::MalformedResponse { status, .. } | AcsError::TooLarge { status, .. } => {
                (200..300).contains(status)
            }
            AcsError::Unsupported { .. }
            | AcsError::Endpoint(_)
            | AcsError::Paused { .. }
            | AcsError::QuotaWait { .. }
            | AcsError::Config(_)
            | AcsError::InvalidArgument(_)
            | AcsError::Entra { .. } => false,
        }
    }

    /// The server's requested wait, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AcsError::Service { retry_after, .. } | AcsError::Entra { retry_after, .. } => {
                *retry_after
            }
            AcsError::Paused { retry_after, .. } | AcsError::QuotaWait { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// Nothing failed: the request waits for its turn (client-side quota). The caller
    /// requeues for `retry_after()` and records no problem.
    pub fn is_quota_wait(&self) -> bool {
        matches!(self, AcsError::QuotaWait { .. })
    }

    /// The condition reason this error should be reported with, where it has its own
    /// (`InsecureEndpoint`); `None` for errors the caller classifies itself.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            AcsError::Endpoint(e) => Some(e.reason()),
            AcsError::Entra { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// A low-cardinality label for metrics (`acs_requests_total{result=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            AcsError::Service { .. } if self.is_identity_not_owned() => "identity_not_owned",
            AcsError::Service { status, .. } => match status {
                400 => "bad_request",
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                429 => "throttled",
                500..=599 => "server_error",
                _ => "http_error",
            },
            AcsError::Timeout { .. } => "timeout",
            AcsError::Transport { .. } => "transport",
            AcsError::MalformedResponse { .. } => "malformed_response",
            AcsError::Unsupported { .. } => "unsupported",
            AcsError::Endpoint(_) => "insecure_endpoint",
            AcsError::Paused { .. } => "paused",
            AcsError::QuotaWait { .. } => "quota_wait",
            AcsError::TooLarge { .. } => "too_large",
            AcsError::Config(_) => "config",
            AcsError::InvalidArgument(_) => "invalid_argument",
            AcsError::Entra { .. } => "entra",
        }
    }
}

/// An `MS-CV` header worth keeping: a correlation vector is base64 with dot-separated
/// counters (`ZmM0ZjYyYjQ5N2E1.0.1`). Anything else (a hostile endpoint's long or
/// spaced text, which could forge fields in a plain-text log line) is dropped.
pub fn correlation_vector(raw: &str) -> Option<String> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'.'));
    ok.then(|| raw.to_string())
}

/// Endpoint text as it may be shown: control characters (newlines, escapes) become
/// spaces, runs of whitespace one space, and the result is cut to
/// [`MAX_ENDPOINT_TEXT_CHARS`] characters.
pub fn endpoint_text(raw: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut pending_space = false;
    for c in raw.chars() {
        if c.is_control() || c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if count + usize::from(pending_space) + 1 > MAX_ENDPOINT_TEXT_CHARS {
            out.push('…');
            return out;
        }
        if pending_space {
            out.push(' ');
            count += 1;
            pending_space = false;
        }
        out.push(c);
        count += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_correlation_vectors_are_kept_from_ms_cv() {
        for (raw, kept) in [
            ("ZmM0ZjYyYjQ5N2E1.0", true),
            ("Zm9v+/ba=.1.2", true),
            ("", false),
            ("a b", false),
            ("x\" client_request_id=forged", false),
            (&"A".repeat(65), false),
        ] {
            assert_eq!(correlation_vector(raw).is_some(), kept, "{raw:?}");
        }
    }

    fn svc(status: u16) -> AcsError {
        AcsError::service(
            Operation::IssueToken,
            status,
            Some("Code".into()),
            Some("msg".into()),
            None,
        )
    }

    #[test]
    fn retryable_classification() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(svc(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 409] {
            assert!(!svc(s).is_retryable(), "{s}");
        }
        let timeout = AcsError::Timeout {
            operation: Operation::CreateUser,
            timeout: Duration::from_secs(1),
            endpoint: "https://a.example".into(),
            client_request_id: None,
        };
        assert!(timeout.is_retryable());
        let malformed = AcsError::MalformedResponse {
            operation: Operation::CreateUser,
            status: 201,
            reason: "x".into(),
            client_request_id: None,
            ms_cv: None,
        };
        assert!(!malformed.is_retryable());
    }

    #[test]
    fn unreachable_endpoints_read_the_same_whatever_answered() {
        let endpoint = "https://10.0.0.7:15000";
        let shown: Vec<String> = [
            AcsError::Timeout {
                operation: Operation::IssueToken,
                timeout: Duration::from_secs(30),
                endpoint: endpoint.into(),
                client_request_id: None,
            },
            AcsError::Transport {
                operation: Operation::IssueToken,
                connect: true,
                detail: "tcp connect error: Connection refused (os error 111)".into(),
                endpoint: endpoint.into(),
                client_request_id: None,
            },
            AcsError::Transport {
                operation: Operation::IssueToken,
                connect: false,
                detail: "invalid peer certificate: NotValidForName envoy-admin".into(),
                endpoint: endpoint.into(),
                client_request_id: None,
            },
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert!(shown.iter().all(|s| s == &shown[0]), "{shown:?}");
        assert!(shown[0].contains(endpoint), "{}", shown[0]);
        for leak in ["refused (os", "envoy", "certificate", "30s"] {
            assert!(!shown[0].contains(leak), "{}", shown[0]);
        }
    }

    #[test]
    fn waits_are_stable_and_retry_after_them() {
        let paused = |secs| AcsError::Paused {
            operation: Operation::IssueToken,
            retry_after: Duration::from_nanos(secs),
        };
        assert_eq!(
            paused(3_599_999_999_123).to_string(),
            paused(12).to_string()
        );
        let wait = AcsError::QuotaWait {
            operation: Operation::CreateUser,
            retry_after: Duration::from_secs(7),
        };
        assert!(wait.is_quota_wait() && !paused(1).is_quota_wait());
        assert_eq!(wait.retry_after(), Some(Duration::from_secs(7)));
        assert!(!wait.is_outcome_unknown());
    }

    #[test]
    fn identity_not_owned_is_neither_gone_nor_a_bad_key() {
        let e = AcsError::service(
            Operation::DeleteUser,
            401,
            Some("IdentityNotOwned".into()),
            Some("Provided identity doesn't belong to the resource.".into()),
            None,
        )
        .with_client_request_id("0b3f3c1e-5a0e-4c55-9d55-1f5f5f5f5f5f");
        assert!(e.is_identity_not_owned());
        assert!(!e.is_not_found() && !e.is_unauthorized() && !e.is_retryable());
        assert_eq!(e.metric_label(), "identity_not_owned");
        assert!(e.to_string().contains("another ACS resource"), "{e}");
        assert_eq!(
            e.client_request_id(),
            Some("0b3f3c1e-5a0e-4c55-9d55-1f5f5f5f5f5f")
        );
        // The id is kept apart from the message, which conditions carry.
        assert!(!e.to_string().contains("0b3f3c1e"), "{e}");
        let denied = AcsError::service(
            Operation::DeleteUser,
            401,
            Some("Denied".into()),
            None,
            None,
        );
        assert!(denied.is_unauthorized() && !denied.is_identity_not_owned());
        assert_eq!(denied.metric_label(), "unauthorized");
    }

    /// Every error of a request that was sent keeps its ids, and none shows them in its
    /// message (conditions carry it and must not change with every attempt).
    #[test]
    fn request_ids_are_kept_apart_from_the_message() {
        let (id, cv) = ("0b3f3c1e-5a0e-4c55-9d55-1f5f5f5f5f5f", "Zm9vYmFy.0");
        let endpoint = "https://a.example".to_string();
        let sent = [
            svc(503),
            svc(403).with_entra_hint(),
            AcsError::Timeout {
                operation: Operation::IssueToken,
                timeout: Duration::from_secs(1),
                endpoint: endpoint.clone(),
                client_request_id: None,
            },
            AcsError::Transport {
                operation: Operation::IssueToken,
                connect: false,
                detail: "reset".into(),
                endpoint,
                client_request_id: None,
            },
            AcsError::TooLarge {
                operation: Operation::IssueToken,
                status: 200,
                limit: 1,
                client_request_id: None,
                ms_cv: None,
            },
            AcsError::MalformedResponse {
                operation: Operation::IssueToken,
                status: 200,
                reason: "missing field `token`".into(),
                client_request_id: None,
                ms_cv: None,
            },
        ];
        for e in sent {
            let before = e.to_string();
            let e = e.with_client_request_id(id).with_ms_cv(Some(cv));
            assert_eq!(e.client_request_id(), Some(id), "{e:?}");
            let answered = matches!(
                e,
                AcsError::Service { .. }
                    | AcsError::TooLarge { .. }
                    | AcsError::MalformedResponse { .. }
            );
            assert_eq!(e.ms_cv(), answered.then_some(cv), "{e:?}");
            assert_eq!(e.to_string(), before);
            // Hints added later keep them.
            assert_eq!(e.clone().with_entra_hint().client_request_id(), Some(id));
        }
        let never_sent = AcsError::QuotaWait {
            operation: Operation::IssueToken,
            retry_after: Duration::from_secs(1),
        }
        .with_client_request_id(id);
        assert_eq!(never_sent.client_request_id(), None);
    }

    #[test]
    fn not_found_is_distinguishable() {
        assert!(svc(404).is_not_found());
        assert!(!svc(400).is_not_found());
        assert_eq!(svc(404).metric_label(), "not_found");
        assert!(svc(401).is_unauthorized());
    }

    #[test]
    fn display_has_status_code_and_message() {
        assert_eq!(
            svc(404).to_string(),
            "ACS issue_token failed with HTTP 404 (Code): msg"
        );
        let bare = AcsError::service(Operation::DeleteUser, 503, None, None, None);
        assert_eq!(bare.to_string(), "ACS delete_user failed with HTTP 503");
    }

    #[test]
    fn endpoint_text_is_cut_and_stripped() {
        let e = AcsError::service(
            Operation::GetUser,
            500,
            Some(format!("Code\r\n{}", "c".repeat(1000))),
            Some(format!(
                "line one\nINFO forged log line\x1b[31m{}",
                "x".repeat(10_000)
            )),
            None,
        );
        let shown = e.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("line one INFO forged log line"), "{shown}");
        let AcsError::Service { code, message, .. } = &e else {
            panic!("{e:?}");
        };
        for text in [code, message] {
            let text = text.as_deref().unwrap_or_default();
            assert_eq!(text.chars().count(), MAX_ENDPOINT_TEXT_CHARS + 1, "{text}");
            assert!(text.ends_with('…'));
        }
        assert_eq!(endpoint_text("  short\tone  "), "short one");
        assert_eq!(endpoint_text("\u{7}\u{1b}"), "");
        let blank = AcsError::service(Operation::GetUser, 500, Some("\n".into()), None, None);
        assert_eq!(blank.code(), None);
    }

    #[test]
    fn outcome_unknown_when_acs_may_have_acted() {
        let timeout = AcsError::Timeout {
            operation: Operation::CreateUser,
            timeout: Duration::from_secs(1),
            endpoint: "https://a.example".into(),
            client_request_id: None,
        };
        let transport = |connect| AcsError::Transport {
            operation: Operation::CreateUser,
            connect,
            detail: "reset".into(),
            endpoint: "https://a.example".into(),
            client_request_id: None,
        };
        let malformed = |status| AcsError::MalformedResponse {
            operation: Operation::CreateUser,
            status,
            reason: "x".into(),
            client_request_id: None,
            ms_cv: None,
        };
        for unknown in [
            timeout,
            transport(false),
            svc(500),
            svc(503),
            svc(408),
            malformed(201),
        ] {
            assert!(unknown.is_outcome_unknown(), "{unknown:?}");
        }
        for known in [
            transport(true),
            svc(429),
            svc(400),
            svc(401),
            svc(404),
            svc(302),
            malformed(404),
        ] {
            assert!(!known.is_outcome_unknown(), "{known:?}");
        }
    }
}
