//! Typed values of the identity API, the JSON shapes on the wire, and the pure parsing of
//! responses into results or typed errors.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::error::{AcsError, Operation};

/// A token scope. `Other` carries a scope this client does not know yet, so that a scope
/// ACS adds later can be requested without a new release; the server validates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenScope {
    Chat,
    Voip,
    ChatJoin,
    ChatJoinLimited,
    VoipJoin,
    Other(String),
}

impl TokenScope {
    pub const KNOWN: [TokenScope; 5] = [
        TokenScope::Chat,
        TokenScope::Voip,
        TokenScope::ChatJoin,
        TokenScope::ChatJoinLimited,
        TokenScope::VoipJoin,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            TokenScope::Chat => "chat",
            TokenScope::Voip => "voip",
            TokenScope::ChatJoin => "chat.join",
            TokenScope::ChatJoinLimited => "chat.join.limited",
            TokenScope::VoipJoin => "voip.join",
            TokenScope::Other(s) => s,
        }
    }
}

impl fmt::Display for TokenScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown ACS token scope `{0}`; expected one of chat, voip, chat.join, chat.join.limited, voip.join"
)]
pub struct UnknownScope(pub String);

/// Parses only the scopes ACS documents; use `TokenScope::Other` deliberately for anything else.
impl FromStr for TokenScope {
    type Err = UnknownScope;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TokenScope::KNOWN
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_string()))
    }
}

impl Serialize for TokenScope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An access token string. Its `Debug` is redacted and it has no `Display`, so it cannot
/// reach a log line or an error by accident; `expose_secret` is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(s: String) -> Self {
        Self(s)
    }

    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An ACS access token and the expiry ACS granted (which may be shorter than asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: Token,
    pub expires_on: Timestamp,
}

/// An ACS communication user (`8:acs:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommunicationUser {
    pub id: String,
    /// Only with api-versions that know custom ids, and only when one was set.
    pub custom_id: Option<String>,
    /// Only with api-versions that report it.
    pub last_token_issued_at: Option<Timestamp>,
}

/// The result of `create_user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedUser {
    pub user: CommunicationUser,
    /// Present when scopes were given.
    pub token: Option<AccessToken>,
    /// Whether ACS answered 201. It does not tell a new user from one found by its custom
    /// id: the live service answers 201 with the same identity to a repeated custom id
    /// (only the 2025-03-02-preview specification says 200). Never decide from it.
    pub created: bool,
}

// ----- wire shapes -----

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateUserBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_token_with_scopes: Option<&'a [TokenScope]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_minutes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<&'a str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IssueTokenBody<'a> {
    pub scopes: &'a [TokenScope],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_minutes: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireIdentity {
    id: String,
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    last_token_issued_at: Option<String>,
}

// No Debug: it holds the token.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAccessToken {
    token: String,
    expires_on: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCreateResponse {
    identity: WireIdentity,
    #[serde(default)]
    access_token: Option<WireAccessToken>,
}

#[derive(Deserialize)]
struct WireErrorResponse {
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

// ----- parsing -----

/// A response as far as the parsers need it.
pub(crate) struct RawResponse<'a> {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: &'a [u8],
}

impl RawResponse<'_> {
    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A non-success response becomes `AcsError::Service`, with code and message when the body
/// has ACS's `{"error": {...}}` shape; any other body is ignored rather than echoed.
pub(crate) fn error_from_response(op: Operation, r: &RawResponse<'_>) -> AcsError {
    let (code, message) = match serde_json::from_slice::<WireErrorResponse>(r.body) {
        Ok(WireErrorResponse { error }) => (
            error.code.filter(|c| !c.is_empty()),
            error.message.filter(|m| !m.is_empty()),
        ),
        Err(_) => (None, None),
    };
    AcsError::service(op, r.status, code, message, r.retry_after)
}

fn malformed(op: Operation, status: u16, reason: impl Into<String>) -> AcsError {
    AcsError::MalformedResponse {
        operation: op,
        status,
        reason: reason.into(),
        client_request_id: None,
        ms_cv: None,
    }
}

/// serde_json's messages can quote the offending value, which may be a token; keep only
/// the kinds of message that name fields, and the position otherwise.
fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("missing field") || text.starts_with("unknown field") {
        return format!("body is not the expected JSON: {text}");
    }
    let kind = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

fn parse_json<'de, T: Deserialize<'de>>(
    op: Operation,
    r: &RawResponse<'de>,
) -> Result<T, AcsError> {
    serde_json::from_slice(r.body).map_err(|e| malformed(op, r.status, describe_json_error(&e)))
}

fn parse_timestamp(
    op: Operation,
    status: u16,
    field: &str,
    s: &str,
) -> Result<Timestamp, AcsError> {
    // Timestamps are not secret, but an unparsable one is still not echoed at length.
    Timestamp::from_str(s.trim()).map_err(|_| {
        let shown: String = s.chars().take(40).collect();
        malformed(
            op,
            status,
            format!("`{field}` is not an RFC 3339 time with offset: `{shown}`"),
        )
    })
}

/// The longest user id accepted (ACS's are about 80 characters: `8:acs:<guid>_<guid>`).
pub const MAX_USER_ID_CHARS: usize = 256;
/// The longest token accepted (ACS's are about 1.5 KiB).
pub const MAX_TOKEN_CHARS: usize = 16 * 1024;

/// Ids and tokens end up in Secrets, status, events and log lines: whatever an endpoint
/// sends must look like one before it is stored or printed. Visible ASCII only (no
/// spaces, no control characters, no terminal escapes), bounded.
fn check_shape(
    op: Operation,
    status: u16,
    what: &str,
    value: &str,
    max: usize,
) -> Result<(), AcsError> {
    if value.len() > max {
        return Err(malformed(
            op,
            status,
            format!("{what} is longer than {max} characters"),
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(
            op,
            status,
            format!("{what} holds characters outside visible ASCII"),
        ));
    }
    Ok(())
}

/// How far from now an `expiresOn` may lie: ACS grants at most 24 h, plus clock skew.
pub const MAX_EXPIRY_AHEAD: Duration = Duration::from_secs(25 * 3600);
/// How far in the past: an expired token is the caller's to judge (it never replaces a
/// valid one), but one from another day is an endpoint's nonsense.
pub const MAX_EXPIRY_BEHIND: Duration = Duration::from_secs(24 * 3600);

/// `expires_on` of a token received at `now`, refused when no ACS could have sent it.
pub fn check_expiry(op: Operation, now: Timestamp, expires_on: Timestamp) -> Result<(), AcsError> {
    let ahead =
        jiff::SignedDuration::try_from(MAX_EXPIRY_AHEAD).unwrap_or(jiff::SignedDuration::MAX);
    let behind =
        jiff::SignedDuration::try_from(MAX_EXPIRY_BEHIND).unwrap_or(jiff::SignedDuration::MAX);
    let lead = expires_on.duration_since(now);
    if lead > ahead || lead < -behind {
        return Err(malformed(
            op,
            200,
            format!(
                "`expiresOn` {expires_on} is more than {} h from now; ACS grants tokens for at most 24 h",
                if lead > ahead {
                    MAX_EXPIRY_AHEAD.as_secs() / 3600
                } else {
                    MAX_EXPIRY_BEHIND.as_secs() / 3600
                }
            ),
        ));
    }
    Ok(())
}

fn to_user(op: Operation, status: u16, w: WireIdentity) -> Result<CommunicationUser, AcsError> {
    if w.id.trim().is_empty() {
        return Err(malformed(op, status, "identity `id` is empty"));
    }
    check_shape(op, status, "identity `id`", &w.id, MAX_USER_ID_CHARS)?;
    let last_token_issued_at = match w.last_token_issued_at.as_deref() {
        Some(s) if !s.trim().is_empty() => {
            Some(parse_timestamp(op, status, "lastTokenIssuedAt", s)?)
        }
        _ => None,
    };
    Ok(CommunicationUser {
        id: w.id,
        custom_id: w.custom_id.filter(|c| !c.is_empty()),
        last_token_issued_at,
    })
}

fn to_token(op: Operation, status: u16, w: WireAccessToken) -> Result<AccessToken, AcsError> {
    if w.token.is_empty() {
        return Err(malformed(op, status, "access token is empty"));
    }
    check_shape(op, status, "access token", &w.token, MAX_TOKEN_CHARS)?;
    Ok(AccessToken {
        expires_on: parse_timestamp(op, status, "expiresOn", &w.expires_on)?,
        token: Token::new(w.token),
    })
}

/// `POST /identities`: 201 (a new user, or the existing one for the same custom id), or
/// 200 (an existing one, as the 2025-03-02-preview specification has it).
pub(crate) fn parse_create_user(
    r: &RawResponse<'_>,
    token_expected: bool,
) -> Result<CreatedUser, AcsError> {
    let op = Operation::CreateUser;
    if !r.is_success() {
        return Err(error_from_response(op, r));
    }
    let w: WireCreateResponse = parse_json(op, r)?;
    let token = match w.access_token {
        Some(t) => Some(to_token(op, r.status, t)?),
        None if token_expected => {
            return Err(malformed(
                op,
                r.status,
                "scopes were given but no `accessToken` came back",
            ));
        }
        None => None,
    };
    Ok(CreatedUser {
        user: to_user(op, r.status, w.identity)?,
        token,
        created: r.status == 201,
    })
}

/// `GET /identities/{id}`.
pub(crate) fn parse_get_user(r: &RawResponse<'_>) -> Result<CommunicationUser, AcsError> {
    let op = Operation::GetUser;
    if !r.is_success() {
        return Err(error_from_response(op, r));
    }
    let w: WireIdentity = parse_json(op, r)?;
    to_user(op, r.status, w)
}

/// `POST /identities/{id}/:issueAccessToken`.
pub(crate) fn parse_issue_token(r: &RawResponse<'_>) -> Result<AccessToken, AcsError> {
    let op = Operation::IssueToken;
    if !r.is_success() {
        return Err(error_from_response(op, r));
    }
    let w: WireAccessToken = parse_json(op, r)?;
    to_token(op, r.status, w)
}

/// Revoke and delete answer 204 with no body; any body on a success is ignored.
pub(crate) fn parse_no_content(op: Operation, r: &RawResponse<'_>) -> Result<(), AcsError> {
    if r.is_success() {
        Ok(())
    } else {
        Err(error_from_response(op, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3NjQwMDAwMDB9.c2lnbmF0dXJl";

    fn resp(status: u16, body: &str) -> RawResponse<'_> {
        RawResponse {
            status,
            retry_after: None,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn ids_and_tokens_must_look_like_ones() {
        let long_id = "8".repeat(MAX_USER_ID_CHARS + 1);
        for id in ["8:acs:a b", r"8:acs:\u001b[31mred", long_id.as_str()] {
            let body = format!(r#"{{"identity":{{"id":"{id}"}}}}"#);
            let e = parse_create_user(&resp(201, &body), false).unwrap_err();
            assert!(
                matches!(e, AcsError::MalformedResponse { .. }),
                "{id}: {e:?}"
            );
            assert!(!e.to_string().contains(id), "the id is not echoed: {e}");
        }
        let long_token = "a".repeat(MAX_TOKEN_CHARS + 1);
        for token in ["two words", long_token.as_str()] {
            let body = format!(r#"{{"token":"{token}","expiresOn":"2023-10-10T21:39:39Z"}}"#);
            let e = parse_issue_token(&resp(200, &body)).unwrap_err();
            assert!(
                !e.to_string().contains(token),
                "the token is not echoed: {e}"
            );
        }
    }

    #[test]
    fn an_expiry_no_acs_could_grant_is_refused() {
        let now: Timestamp = "2026-12-02T06:00:00Z".parse().unwrap();
        for ok in [
            "2026-12-03T06:00:00Z",
            "2026-12-02T06:00:00Z",
            "2026-12-01T07:00:00Z",
        ] {
            assert!(
                check_expiry(Operation::IssueToken, now, ok.parse().unwrap()).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "9999-12-30T00:00:00Z",
            "2026-12-03T08:00:00Z",
            "1970-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
        ] {
            let e = check_expiry(Operation::IssueToken, now, bad.parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains("expiresOn"), "{bad}: {e}");
        }
    }

    #[test]
    fn scopes_round_trip_and_serialize_as_strings() {
        for s in TokenScope::KNOWN {
            assert_eq!(s.as_str().parse::<TokenScope>().unwrap(), s);
        }
        assert!("chat.admin".parse::<TokenScope>().is_err());
        let body = IssueTokenBody {
            scopes: &[TokenScope::ChatJoin, TokenScope::Other("x.y".into())],
            expires_in_minutes: Some(60),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"scopes":["chat.join","x.y"],"expiresInMinutes":60}"#
        );
    }

    #[test]
    fn create_body_omits_absent_fields() {
        let b = CreateUserBody {
            create_token_with_scopes: None,
            expires_in_minutes: None,
            custom_id: Some("u1"),
        };
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"customId":"u1"}"#);
    }

    #[test]
    fn create_201_with_token_and_7_digit_fraction() {
        let body = format!(
            r#"{{"identity":{{"id":"8:acs:r_u"}},"accessToken":{{"token":"{TOKEN}","expiresOn":"2023-10-10T21:39:39.3244584+00:00"}}}}"#
        );
        let got = parse_create_user(&resp(201, &body), true).unwrap();
        assert!(got.created);
        assert_eq!(got.user.id, "8:acs:r_u");
        assert_eq!(got.user.custom_id, None);
        let t = got.token.unwrap();
        assert_eq!(t.token.expose_secret(), TOKEN);
        assert_eq!(t.expires_on.as_second(), 1_696_973_979);
    }

    #[test]
    fn create_200_returns_existing_user_with_custom_id() {
        let body = r#"{"identity":{"id":"8:acs:r_u","customId":"uid-1","lastTokenIssuedAt":"2025-01-01T00:00:00Z"}}"#;
        let got = parse_create_user(&resp(200, body), false).unwrap();
        assert!(!got.created);
        assert_eq!(got.user.custom_id.as_deref(), Some("uid-1"));
        assert!(got.user.last_token_issued_at.is_some());
        assert!(got.token.is_none());
    }

    #[test]
    fn get_user_parses_flat_identity() {
        let got = parse_get_user(&resp(200, r#"{"id":"8:acs:a","customId":"c"}"#)).unwrap();
        assert_eq!(got.id, "8:acs:a");
        assert_eq!(got.custom_id.as_deref(), Some("c"));
    }

    #[test]
    fn error_body_gives_code_and_message() {
        let e = parse_issue_token(&resp(
            404,
            r#"{"error":{"code":"IdentityNotFound","message":"Identity not found.","target":"id"}}"#,
        ))
        .unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(e.code(), Some("IdentityNotFound"));
        assert!(e.to_string().contains("Identity not found."));
    }

    #[test]
    fn error_without_json_keeps_status_only() {
        for body in ["", "<html>Bad gateway</html>", "{\"error\":42}", "null"] {
            let e = parse_no_content(Operation::DeleteUser, &resp(502, body)).unwrap_err();
            assert_eq!(e.status(), Some(502));
            assert_eq!(e.code(), None);
            assert!(!e.to_string().contains("html"), "{e}");
        }
    }

    #[test]
    fn malformed_success_bodies_are_typed_errors_without_the_token() {
        let cases = [
            "",
            "not json",
            "{",
            "[]",
            r#"{"token":"SECRETTOKEN"}"#,
            r#"{"token":"SECRETTOKEN","expiresOn":"tomorrow"}"#,
            r#"{"token":"SECRETTOKEN","expiresOn":12}"#,
            r#"{"token":"","expiresOn":"2025-01-01T00:00:00Z"}"#,
            r#"{"token":42,"expiresOn":"2025-01-01T00:00:00Z"}"#,
            r#"{"token":["SECRETTOKEN"],"expiresOn":"2025-01-01T00:00:00Z"}"#,
            r#"{"token":"SECRETTOKEN","expiresOn":"2025-01-01T00:00:00"}"#,
        ];
        for body in cases {
            let e = parse_issue_token(&resp(200, body)).unwrap_err();
            assert!(
                matches!(e, AcsError::MalformedResponse { .. }),
                "{body}: {e:?}"
            );
            assert!(!e.is_retryable());
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("SECRETTOKEN"), "{body}: {shown}");
        }
    }

    #[test]
    fn malformed_create_bodies() {
        let cases = [
            (r#"{"identity":{}}"#, false),
            (r#"{"identity":{"id":""}}"#, false),
            (
                r#"{"accessToken":{"token":"SECRETTOKEN","expiresOn":"2025-01-01T00:00:00Z"}}"#,
                true,
            ),
            (r#"{"identity":{"id":"8:acs:x"}}"#, true),
            (
                r#"{"identity":{"id":"8:acs:x","lastTokenIssuedAt":"yesterday"}}"#,
                false,
            ),
        ];
        for (body, want_token) in cases {
            let e = parse_create_user(&resp(201, body), want_token).unwrap_err();
            assert!(
                matches!(e, AcsError::MalformedResponse { .. }),
                "{body}: {e:?}"
            );
            assert!(!format!("{e} {e:?}").contains("SECRETTOKEN"));
        }
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = AccessToken {
            token: Token::new(TOKEN.into()),
            expires_on: Timestamp::UNIX_EPOCH,
        };
        let shown = format!("{t:?}");
        assert!(
            !shown.contains(TOKEN) && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
