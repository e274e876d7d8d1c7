//! The ACS Identity routes: which operation a request is (for every supported
//! api-version, including the retired `2020-07-20-preview2` routes), and each operation's
//! request and response bodies.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::api_version::ApiVersion;
use super::config::EmulatedOperation;
use super::error::ServiceError;
use super::store::{Identity, IssuedToken, Store, check_create_request, check_issue_request};

/// One recognised request; ids are percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Create,
    Issue(String),
    Revoke(String),
    Delete(String),
    Get(String),
}

impl Route {
    pub fn operation(&self) -> EmulatedOperation {
        match self {
            Self::Create => EmulatedOperation::Create,
            Self::Issue(_) => EmulatedOperation::Issue,
            Self::Revoke(_) => EmulatedOperation::Revoke,
            Self::Delete(_) => EmulatedOperation::Delete,
            Self::Get(_) => EmulatedOperation::Get,
        }
    }
}

/// Maps method and raw path to a route for `version`. Segments are split before
/// decoding, so an id holding an encoded `/` stays one segment.
pub fn classify(
    method: &Method,
    raw_path: &str,
    version: &ApiVersion,
) -> Result<Route, ServiceError> {
    let trimmed = raw_path.trim_end_matches('/');
    let mut segments = trimmed.split('/').skip(1);
    if segments.next() != Some("identities") {
        return Err(ServiceError::unknown_route());
    }
    let rest: Vec<String> = segments
        .map(|s| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| {
                    ServiceError::bad_request(
                        "InvalidIdentifier",
                        "The identity id is not valid UTF-8.",
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let legacy = *version == ApiVersion::Legacy;
    let route = match (method.as_str(), rest.as_slice(), legacy) {
        ("POST", [], _) => Route::Create,
        ("POST", [id, action], false) if action == ":issueAccessToken" => Route::Issue(id.clone()),
        ("POST", [id, action], false) if action == ":revokeAccessTokens" => {
            Route::Revoke(id.clone())
        }
        ("POST", [id, action], true) if action == "token" => Route::Issue(id.clone()),
        ("PATCH", [id], true) => Route::Revoke(id.clone()),
        ("DELETE", [id], _) => Route::Delete(id.clone()),
        ("GET", [id], false) if version.supports_get_identity() => Route::Get(id.clone()),
        _ => return Err(ServiceError::unknown_route()),
    };
    if let Route::Issue(id) | Route::Revoke(id) | Route::Delete(id) | Route::Get(id) = &route
        && id.is_empty()
    {
        return Err(ServiceError::unknown_route());
    }
    Ok(route)
}

/// Runs an authenticated, admitted request against the store. `found_status` answers a
/// create whose custom id found an existing user (201 as the live service does).
pub fn execute(
    store: &mut Store,
    route: &Route,
    version: &ApiVersion,
    body: &[u8],
    headers: &HeaderMap,
    now: Timestamp,
    found_status: StatusCode,
) -> Result<Response, ServiceError> {
    match (route, version) {
        (Route::Create, ApiVersion::Legacy) => {
            let (identity, _) = store.create(None, now)?;
            Ok((StatusCode::OK, Json(json!({"id": identity.id}))).into_response())
        }
        (Route::Create, ApiVersion::Current(_)) if version.supports_repeatable_create() => {
            repeatable_create(store, version, body, headers, now, found_status)
        }
        (Route::Create, ApiVersion::Current(_)) => {
            let (status, body) = create(store, version, body, now, found_status)?;
            Ok((status, Json(body)).into_response())
        }
        (Route::Issue(id), ApiVersion::Legacy) => {
            let request: LegacyTokenRequest = parse_json(body)?.ok_or_else(missing_body)?;
            let token = store.issue(id, &request.scopes, None, now)?;
            Ok(Json(json!({
                "id": id,
                "token": token.token,
                "expiresOn": expires_on_text(token.expires_on),
            }))
            .into_response())
        }
        (Route::Issue(id), ApiVersion::Current(_)) => {
            let request: TokenRequest = parse_json(body)?.ok_or_else(missing_body)?;
            let expiry = check_issue_request(version, &request.scopes, request.expires_in_minutes)?;
            let token = store.issue(id, &request.scopes, expiry, now)?;
            Ok(Json(token_json(&token)).into_response())
        }
        (Route::Revoke(id), _) => {
            // The retired API's PATCH may carry `tokensValidFrom`; revoking everything
            // issued so far is what the quickstart relies on, so the value is only checked
            // for shape.
            if *version == ApiVersion::Legacy {
                let _: Option<Value> = parse_json(body)?;
            }
            store.revoke(id, now)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Route::Delete(id), _) => {
            store.delete(id, now)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Route::Get(id), _) => {
            let identity = store.get(id)?;
            Ok(Json(identity_json(identity, version)).into_response())
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRequest {
    #[serde(default)]
    create_token_with_scopes: Option<Vec<String>>,
    #[serde(default)]
    expires_in_minutes: Option<i64>,
    #[serde(default)]
    custom_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest {
    scopes: Vec<String>,
    #[serde(default)]
    expires_in_minutes: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct LegacyTokenRequest {
    scopes: Vec<String>,
}

/// How long a `Repeatability-First-Sent` stays in the tracked window (Azure's guidelines:
/// at least five minutes). Older (or further in the future) is rejected.
pub const REPEATABILITY_WINDOW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// A create on a version with the repeatability headers (2023-08-01): without them it is a
/// plain create; with them, a request id seen within the window gets the first answer
/// again (status and body) and makes nothing, and either way the answer says
/// `Repeatability-Result: accepted`. A request id without a valid first-sent date, or one
/// outside the window, is refused with `Repeatability-Result: rejected`.
fn repeatable_create(
    store: &mut Store,
    version: &ApiVersion,
    body: &[u8],
    headers: &HeaderMap,
    now: Timestamp,
    found_status: StatusCode,
) -> Result<Response, ServiceError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(request_id) = header("repeatability-request-id") else {
        let (status, body) = create(store, version, body, now, found_status)?;
        return Ok((status, Json(body)).into_response());
    };
    let rejected = |message: &str, target: &'static str| {
        let mut r = ServiceError::bad_request("ValidationError", message)
            .with_target(target)
            .into_response();
        r.headers_mut()
            .insert("repeatability-result", HeaderValue::from_static("rejected"));
        r
    };
    if uuid::Uuid::parse_str(request_id).is_err() {
        return Ok(rejected(
            "Repeatability-Request-ID must be a UUID.",
            "Repeatability-Request-ID",
        ));
    }
    let first_sent = header("repeatability-first-sent")
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| Timestamp::try_from(t).ok());
    let Some(first_sent) = first_sent else {
        return Ok(rejected(
            "Repeatability-First-Sent must accompany Repeatability-Request-ID, as an IMF-fixdate HTTP date.",
            "Repeatability-First-Sent",
        ));
    };
    let window = jiff::SignedDuration::try_from(REPEATABILITY_WINDOW).unwrap_or_default();
    let age = now.duration_since(first_sent);
    if age > window || age < -window {
        return Ok(rejected(
            "Repeatability-First-Sent is outside the window this service keeps repeatable requests for.",
            "Repeatability-First-Sent",
        ));
    }
    let (status, body) = match store.repeated(request_id, now, REPEATABILITY_WINDOW) {
        Some(first) => first,
        None => {
            let answer = match create(store, version, body, now, found_status) {
                Ok(answer) => answer,
                Err(e) => (e.status, e.body()),
            };
            store.remember_repeatable(request_id, first_sent, &answer, now, REPEATABILITY_WINDOW);
            answer
        }
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert("repeatability-result", HeaderValue::from_static("accepted"));
    Ok(response)
}

fn create(
    store: &mut Store,
    version: &ApiVersion,
    body: &[u8],
    now: Timestamp,
    found_status: StatusCode,
) -> Result<(StatusCode, Value), ServiceError> {
    // The SDKs send no body at all for a plain create.
    let request: CreateRequest = parse_json(body)?.unwrap_or(CreateRequest {
        create_token_with_scopes: None,
        expires_in_minutes: None,
        custom_id: None,
    });
    let scopes = request.create_token_with_scopes.filter(|s| !s.is_empty());
    // Validate before creating, so a bad request leaves no user behind: the scopes and
    // `expiresInMinutes` of this api-version, nothing else.
    let expiry = check_create_request(version, scopes.as_deref(), request.expires_in_minutes)?;
    // Versions whose published spec has no customId ignore it, as the service ignores
    // properties its version does not define (GA 2025-06-30 and 2026-07-22 included).
    let custom_id = request.custom_id.filter(|_| version.supports_custom_id());
    let (identity, created) = store.create(custom_id.as_deref(), now)?;
    let token = match &scopes {
        Some(scopes) => Some(store.issue(&identity.id, scopes, expiry, now)?),
        None => None,
    };
    let identity = store.get(&identity.id)?;
    let mut out = Map::new();
    out.insert("identity".into(), identity_json(identity, version));
    if let Some(token) = &token {
        out.insert("accessToken".into(), token_json(token));
    }
    // The live service answers a repeated customId with 201 and the same identity.
    let status = if created {
        StatusCode::CREATED
    } else {
        found_status
    };
    Ok((status, Value::Object(out)))
}

fn identity_json(identity: &Identity, version: &ApiVersion) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), identity.id.clone().into());
    if version.supports_custom_id() {
        if let Some(custom_id) = &identity.custom_id {
            out.insert("customId".into(), custom_id.clone().into());
        }
        if let Some(at) = identity.last_token_issued_at {
            out.insert("lastTokenIssuedAt".into(), expires_on_text(at).into());
        }
    }
    Value::Object(out)
}

fn token_json(token: &IssuedToken) -> Value {
    json!({"token": token.token, "expiresOn": expires_on_text(token.expires_on)})
}

/// A time as the live service writes it (.NET's round-trip form through System.Text.Json):
/// UTC with a `+00:00` offset and up to 7 fraction digits (100 ns ticks), trailing zeros
/// dropped, e.g. `2023-01-10T17:56:00.7844833+00:00` or `2022-09-30T15:07:50.440105+00:00`.
pub fn expires_on_text(t: Timestamp) -> String {
    let utc = t.to_zoned(jiff::tz::TimeZone::UTC);
    let ticks = utc.subsec_nanosecond() / 100;
    let mut out = utc.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    if ticks > 0 {
        let digits = format!("{ticks:07}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push_str("+00:00");
    out
}

fn missing_body() -> ServiceError {
    ServiceError::bad_request("InvalidRequestBody", "The request body is required.")
}

/// `None` for an empty body; malformed JSON or wrong field types are a 400.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<Option<T>, ServiceError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| {
        ServiceError::bad_request(
            "InvalidRequestBody",
            format!(
                "The request body is not valid: {}.",
                e.to_string().chars().take(200).collect::<String>()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str) -> ApiVersion {
        ApiVersion::from_query(Some(&format!("api-version={v}"))).expect(v)
    }

    fn current() -> ApiVersion {
        version("2023-10-01")
    }

    #[test]
    fn times_are_written_as_the_service_writes_them() {
        let t: Timestamp = "2023-01-10T17:56:00.78448339Z".parse().unwrap();
        assert_eq!(expires_on_text(t), "2023-01-10T17:56:00.7844833+00:00");
        let t: Timestamp = "2022-09-30T15:07:50.4401050Z".parse().unwrap();
        assert_eq!(expires_on_text(t), "2022-09-30T15:07:50.440105+00:00");
        let t: Timestamp = "2022-09-30T15:07:50Z".parse().unwrap();
        assert_eq!(expires_on_text(t), "2022-09-30T15:07:50+00:00");
        let back: Timestamp = "2023-01-10T17:56:00.7844833+00:00".parse().unwrap();
        assert_eq!(back.as_second(), 1_673_373_360);
    }

    #[test]
    fn routes_decode_ids_after_splitting() {
        let post = Method::POST;
        assert_eq!(
            classify(&post, "/identities", &current()).unwrap(),
            Route::Create
        );
        assert_eq!(
            classify(
                &post,
                "/identities/8%3Aacs%3Aa_b/:issueAccessToken",
                &current()
            )
            .unwrap(),
            Route::Issue("8:acs:a_b".into())
        );
        assert_eq!(
            classify(
                &post,
                "/identities/8%3Aacs%3Aa_b/%3ArevokeAccessTokens",
                &current()
            )
            .unwrap(),
            Route::Revoke("8:acs:a_b".into())
        );
        assert_eq!(
            classify(&Method::DELETE, "/identities/a%2Fb", &current()).unwrap(),
            Route::Delete("a/b".into())
        );
    }

    #[test]
    fn legacy_and_current_routes_do_not_mix() {
        let post = Method::POST;
        assert!(classify(&post, "/identities/x/token", &current()).is_err());
        assert!(
            classify(
                &post,
                "/identities/x/:issueAccessToken",
                &ApiVersion::Legacy
            )
            .is_err()
        );
        assert_eq!(
            classify(&Method::PATCH, "/identities/x", &ApiVersion::Legacy).unwrap(),
            Route::Revoke("x".into())
        );
        assert!(
            classify(&Method::GET, "/identities/x", &current()).is_err(),
            "GET arrived in 2025-03-02"
        );
        assert!(
            classify(
                &Method::GET,
                "/identities/x",
                &version("2025-03-02-preview")
            )
            .is_ok()
        );
        for ga in ["2025-06-30", "2026-07-22"] {
            assert!(
                classify(&Method::GET, "/identities/x", &version(ga)).is_err(),
                "{ga} has no GET /identities/{{id}}"
            );
        }
        assert!(classify(&Method::PUT, "/identities", &current()).is_err());
        assert!(classify(&post, "/other", &current()).is_err());
        assert!(classify(&Method::DELETE, "/identities//", &current()).is_err());
    }
}
