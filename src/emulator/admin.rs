//! `/admin/`: the emulator's own API for tests and demos (state, token validity,
//! statistics, faults, quotas). Loopback only, unless `--admin-key` is set, then the key is
//! required from everyone in `x-admin-key`.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use super::app::{App, lock};
use super::config::QuotaSetting;
use super::error::ServiceError;
use super::faults::FaultRule;

pub async fn handle(app: &App, request: Request<Body>, peer: SocketAddr) -> Response {
    match handle_inner(app, request, peer).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn handle_inner(
    app: &App,
    request: Request<Body>,
    peer: SocketAddr,
) -> Result<Response, ServiceError> {
    authorize(app, &request, peer)?;
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, app.max_body_bytes)
        .await
        .map_err(|_| {
            ServiceError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "The request body is too large.",
            )
        })?;
    // `tokens:validate` may arrive with its colon encoded.
    let path = parts.uri.path().replace("%3A", ":").replace("%3a", ":");
    match (&parts.method, path.trim_end_matches('/')) {
        (&Method::GET, "/admin/identities") => {
            let store = lock(&app.store);
            let list: Vec<Value> = store
                .identities()
                .iter()
                .map(|i| {
                    json!({
                        "id": i.id,
                        "customId": i.custom_id,
                        "deleted": i.deleted,
                        "tokensIssued": i.tokens_issued,
                        "tokensRevokedAt": i.tokens_revoked_at.map(|t| t.to_string()),
                        "createdAt": i.created_at.to_string(),
                        "deletedAt": i.deleted_at.map(|t| t.to_string()),
                        "lastTokenIssuedAt": i.last_token_issued_at.map(|t| t.to_string()),
                    })
                })
                .collect();
            Ok(Json(list).into_response())
        }
        (&Method::POST, "/admin/tokens:validate") => {
            #[derive(Deserialize)]
            struct ValidateRequest {
                token: String,
            }
            let request: ValidateRequest = serde_json::from_slice(&body).map_err(|_| {
                ServiceError::bad_request("InvalidRequestBody", "Expected {\"token\": \"...\"}.")
            })?;
            let validation = lock(&app.store).validate_token(&request.token, Timestamp::now());
            Ok(
                Json(json!({"valid": validation.valid, "reason": validation.reason}))
                    .into_response(),
            )
        }
        (&Method::GET, "/admin/entra") => {
            let d = lock(&app.entra);
            Ok(Json(json!({"tenant": d.tenant, "lifetimeSeconds": d.lifetime_seconds, "counts": d.counts})).into_response())
        }
        (&Method::POST, "/admin/entra/issuers") => {
            let issuer: super::entra::TrustedIssuer =
                serde_json::from_slice(&body).map_err(|_| {
                    ServiceError::bad_request(
                        "InvalidRequestBody",
                        "Expected {\"issuer\": \"...\", \"jwks\": {\"keys\": [...]}}.",
                    )
                })?;
            lock(&app.entra)
                .trust_issuer(issuer)
                .map_err(|e| ServiceError::bad_request("InvalidRequestBody", e))?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::POST, "/admin/entra/applications") => {
            let application: super::entra::Application = serde_json::from_slice(&body).map_err(|_| {
                ServiceError::bad_request("InvalidRequestBody", "Expected {\"clientId\", \"objectId\"?, \"federatedCredentials\": [{\"issuer\", \"subject\", \"audiences\"}]}.")
            })?;
            lock(&app.entra)
                .register(application)
                .map_err(|e| ServiceError::bad_request("InvalidRequestBody", e))?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::POST, "/admin/entra/roleAssignments") => {
            let assignment: super::entra::RoleAssignment =
                serde_json::from_slice(&body).map_err(|_| {
                    ServiceError::bad_request(
                        "InvalidRequestBody",
                        "Expected {\"principalId\", \"role\"}.",
                    )
                })?;
            lock(&app.entra).assign(assignment);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::DELETE, "/admin/entra/roleAssignments") => {
            lock(&app.entra).clear_roles();
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::GET, "/admin/stats") => Ok(Json(lock(&app.stats).clone()).into_response()),
        // Lets a benchmark or test count only its own requests.
        (&Method::DELETE, "/admin/stats") => {
            *lock(&app.stats) = Default::default();
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::GET, "/admin/requests") => {
            let log = lock(&app.requests);
            Ok(Json(log.entries().collect::<Vec<_>>()).into_response())
        }
        (&Method::DELETE, "/admin/requests") => {
            lock(&app.requests).clear();
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::GET, "/admin/faults") => {
            Ok(Json(lock(&app.faults).rules().to_vec()).into_response())
        }
        (&Method::POST, "/admin/faults") => {
            // One rule or a list of rules.
            let rules: Vec<FaultRule> = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Array(_)) => serde_json::from_slice(&body),
                _ => serde_json::from_slice(&body).map(|rule| vec![rule]),
            }
            .map_err(|e| {
                ServiceError::bad_request("InvalidRequestBody", format!("Not a fault rule: {e}."))
            })?;
            for rule in &rules {
                rule.validate()
                    .map_err(|e| ServiceError::bad_request("InvalidRequestBody", e))?;
            }
            let mut faults = lock(&app.faults);
            for rule in rules {
                faults.add(rule);
            }
            Ok((StatusCode::CREATED, Json(faults.rules().to_vec())).into_response())
        }
        (&Method::POST, "/admin/quotas") => {
            // `["issue=1000/30", "create=0/1"]`: the `--quota` flag's syntax, applied now.
            let settings: Vec<String> = serde_json::from_slice(&body).map_err(|e| {
                ServiceError::bad_request(
                    "InvalidRequestBody",
                    format!("Not a list of OP=N/SECONDS strings: {e}."),
                )
            })?;
            let settings = settings
                .iter()
                .map(|s| s.parse::<QuotaSetting>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ServiceError::bad_request("InvalidRequestBody", e))?;
            let mut quotas = lock(&app.quotas);
            for s in settings {
                quotas.set(s.operation, s.limit);
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::DELETE, "/admin/faults") => {
            lock(&app.faults).clear();
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(ServiceError::unknown_route()),
    }
}

fn authorize(app: &App, request: &Request<Body>, peer: SocketAddr) -> Result<(), ServiceError> {
    match &app.admin_key {
        Some(key) => {
            let given = request.headers().get("x-admin-key").map(|v| v.as_bytes());
            if given.is_some_and(|g| constant_time_eq(g, key.as_bytes())) {
                Ok(())
            } else {
                Err(ServiceError::new(
                    StatusCode::UNAUTHORIZED,
                    "Denied",
                    "The admin API needs the x-admin-key header.",
                ))
            }
        }
        None if peer.ip().is_loopback() => Ok(()),
        None => Err(ServiceError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The admin API answers loopback clients only; start the emulator with --admin-key to open it.",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
