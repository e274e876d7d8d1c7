//! Typed errors of the ACS client. No variant ever holds a token, a key, a connection
//! string or a raw response body: only status codes, ACS error codes and ACS messages.

use std::fmt;
use std::time::Duration;

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

/// ACS messages end up in conditions and events; a bound keeps a misbehaving server from
/// stuffing kilobytes into an object's status.
const MAX_MESSAGE_CHARS: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcsError {
    /// ACS answered with a non-success status.
    #[error("ACS {operation} failed with HTTP {status}{}", describe_service_error(code.as_deref(), message.as_deref()))]
    Service {
        operation: Operation,
        status: u16,
        /// `error.code` from the `{"error": {...}}` body, when the body had that shape.
        code: Option<String>,
        /// `error.message`, truncated.
        message: Option<String>,
        /// How long ACS asked us to wait (`Retry-After` and friends).
        retry_after: Option<Duration>,
    },
    /// No complete answer within the request timeout.
    #[error("ACS {operation} timed out after {timeout:?}")]
    Timeout {
        operation: Operation,
        timeout: Duration,
    },
    /// The request could not be sent or the answer not read (DNS, connect, TLS, reset).
    #[error("cannot reach ACS for {operation}: {detail}")]
    Transport {
        operation: Operation,
        /// Whether the failure happened while connecting, i.e. ACS never saw the request.
        connect: bool,
        detail: String,
    },
    /// A success status with a body we cannot use. `reason` never quotes the body.
    #[error("ACS sent an unusable response to {operation} (HTTP {status}): {reason}")]
    MalformedResponse {
        operation: Operation,
        status: u16,
        reason: String,
    },
    /// The configured api-version does not offer what was asked (e.g. `get_user`).
    #[error("ACS api-version {api_version} does not support {what}; use {needed} or newer")]
    Unsupported {
        api_version: String,
        what: &'static str,
        needed: &'static str,
    },
    /// The client could not be built from its options (bad CA bundle, bad endpoint).
    #[error("invalid ACS client configuration: {0}")]
    Config(String),
    /// The caller passed something no request can be made from (e.g. an empty user id).
    #[error("invalid ACS request: {0}")]
    InvalidArgument(String),
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
            code,
            message: message.map(truncate_message),
            retry_after,
        }
    }

    /// The operation that failed, when the error came from one.
    pub fn operation(&self) -> Option<Operation> {
        match self {
            AcsError::Service { operation, .. }
            | AcsError::Timeout { operation, .. }
            | AcsError::Transport { operation, .. }
            | AcsError::MalformedResponse { operation, .. } => Some(*operation),
            AcsError::Unsupported { .. } | AcsError::Config(_) | AcsError::InvalidArgument(_) => {
                None
            }
        }
    }

    /// The HTTP status ACS answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AcsError::Service { status, .. } | AcsError::MalformedResponse { status, .. } => {
                Some(*status)
            }
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

    /// Wrong key, bad signature or clock skew.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// Worth trying again: throttling, server errors, timeouts and network failures.
    /// 400/401/403/404 and malformed answers will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            AcsError::Service { status, .. } => {
                *status == 408 || *status == 429 || (500..=599).contains(status)
            }
            AcsError::Timeout { .. } | AcsError::Transport { .. } => true,
            AcsError::MalformedResponse { .. }
            | AcsError::Unsupported { .. }
            | AcsError::Config(_)
            | AcsError::InvalidArgument(_) => false,
        }
    }

    /// The server's requested wait, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AcsError::Service { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A low-cardinality label for metrics (`acs_requests_total{result=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
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
            AcsError::Config(_) => "config",
            AcsError::InvalidArgument(_) => "invalid_argument",
        }
    }
}

fn truncate_message(m: String) -> String {
    if m.chars().count() <= MAX_MESSAGE_CHARS {
        return m;
    }
    let mut t: String = m.chars().take(MAX_MESSAGE_CHARS).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        assert!(timeout.is_retryable());
        let malformed = AcsError::MalformedResponse {
            operation: Operation::CreateUser,
            status: 201,
            reason: "x".into(),
        };
        assert!(!malformed.is_retryable());
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
    fn long_messages_are_truncated() {
        let e = AcsError::service(
            Operation::GetUser,
            500,
            None,
            Some("x".repeat(10_000)),
            None,
        );
        assert!(e.to_string().len() < 700);
    }
}
