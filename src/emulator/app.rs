//! The request pipeline shared by every connection: admin or ACS, then for ACS requests
//! body limit, api-version, route, faults, signature, quota, operation, statistics.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use tokio::sync::Notify;

use crate::acs::connection_string::AccessKey;

use super::admin;
use super::api_version::ApiVersion;
use super::auth::{SignedRequest, authenticate};
use super::config::EmulatedOperation;
use super::error::ServiceError;
use super::faults::{FaultAction, FaultOutcome, FaultSet};
use super::quota::Quotas;
use super::request_log::{RequestLog, RequestRecord, identity_of};
use super::routes::{Route, classify, execute};
use super::stats::Stats;
use super::store::Store;

/// Put on a response to make the connection close without sending it.
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

pub struct App {
    pub key: AccessKey,
    /// The emulated Entra ID: directory, token endpoint, bearer checks.
    pub entra: Mutex<super::entra::Directory>,
    /// `--disable-local-auth`: HMAC requests get 401.
    pub disable_local_auth: bool,
    pub admin_key: Option<String>,
    pub max_skew: Duration,
    pub max_body_bytes: usize,
    pub store: Mutex<Store>,
    pub quotas: Mutex<Quotas>,
    pub faults: Mutex<FaultSet>,
    pub stats: Mutex<Stats>,
    pub requests: Mutex<RequestLog>,
    /// Wakes the state-file writer after a change; `None` without `--state-file`.
    pub persist: Option<Arc<Notify>>,
    /// 201 (the live service) or 200 for a create whose custom id found a user.
    pub found_custom_id_status: StatusCode,
}

/// Locks without panicking: a panic elsewhere must not take the emulator down with it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    pub async fn handle(self: Arc<Self>, request: Request<Body>, peer: SocketAddr) -> Response {
        let path = request.uri().path();
        if path == "/admin" || path.starts_with("/admin/") {
            return admin::handle(&self, request, peer).await;
        }
        let method = request.method().clone();
        let entra_route = super::entra::classify(path).is_some();
        let identity = if entra_route { None } else { identity_of(path) };
        let started = Instant::now();
        let received_at = Timestamp::now();
        let client_request_id = request
            .headers()
            .get("x-ms-client-request-id")
            .filter(|v| v.len() <= 256)
            .cloned();
        let (operation, mut response) = if entra_route {
            self.handle_entra(request).await
        } else {
            self.handle_acs(request).await
        };
        if !entra_route {
            answer_headers(response.headers_mut(), client_request_id);
        }
        let label = operation.map_or("other", EmulatedOperation::as_str);
        let status = if response.extensions().get::<DropConnection>().is_some() {
            "dropped".to_string()
        } else {
            response.status().as_u16().to_string()
        };
        lock(&self.stats).record(label, &status);
        lock(&self.requests).record(RequestRecord {
            seq: 0,
            received_at,
            responded_at: Timestamp::now(),
            operation: label.to_string(),
            status: status.clone(),
            identity,
            retry_after_seconds: response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        });
        // Neither headers nor bodies are logged: they carry the signature and tokens.
        tracing::info!(%method, operation = label, %status, elapsed_ms = started.elapsed().as_millis() as u64, "request");
        response
    }

    /// Entra routes: discovery and keys answer as they are; the token operation goes
    /// through faults and quota like an ACS operation (`entra-token`).
    async fn handle_entra(&self, request: Request<Body>) -> (Option<EmulatedOperation>, Response) {
        use super::entra::EntraRoute;
        let (parts, body) = request.into_parts();
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1")
            .to_string();
        let base = format!("https://{host}");
        let json = |status: StatusCode, v: serde_json::Value| {
            let mut r = (status, axum::Json(v)).into_response();
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store, no-cache"),
            );
            r
        };
        let Some(route) = super::entra::classify(parts.uri.path()) else {
            return (None, ServiceError::unknown_route().into_response());
        };
        match (route, &parts.method) {
            (EntraRoute::Instance, &axum::http::Method::GET) => (
                None,
                json(
                    StatusCode::OK,
                    serde_json::json!({
                        "tenant_discovery_endpoint": format!("{base}/common/v2.0/.well-known/openid-configuration"),
                        "api-version": "1.1",
                        "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
                    }),
                ),
            ),
            (EntraRoute::Discovery(tenant), &axum::http::Method::GET) => {
                let doc = lock(&self.entra).discovery(&base, tenant);
                (None, json(StatusCode::OK, doc))
            }
            (EntraRoute::Keys(_), &axum::http::Method::GET) => {
                // Access tokens are verified by this emulator only: no public key to publish.
                (None, json(StatusCode::OK, serde_json::json!({"keys": []})))
            }
            (EntraRoute::Token(tenant), &axum::http::Method::POST) => {
                let op = EmulatedOperation::EntraToken;
                let body = match axum::body::to_bytes(body, self.max_body_bytes).await {
                    Ok(b) => b,
                    Err(_) => {
                        return (
                            Some(op),
                            json(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                serde_json::json!({"error": "invalid_request"}),
                            ),
                        );
                    }
                };
                let fault = lock(&self.faults).decide(op, rand::random::<f64>);
                if let Some(fault) = fault {
                    if let Some(latency) = fault.latency {
                        tokio::time::sleep(latency).await;
                    }
                    if let Some(response) = fault_response(fault.outcome) {
                        return (Some(op), response);
                    }
                }
                if let Err(retry_after) = lock(&self.quotas).try_admit(op, Instant::now()) {
                    let mut r = json(
                        StatusCode::TOO_MANY_REQUESTS,
                        serde_json::json!({"error": "temporarily_unavailable", "error_description": "AADSTS50196: The server terminated an operation because it encountered a client request loop.", "error_codes": [50196]}),
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                    return (Some(op), r);
                }
                let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let now = Timestamp::now();
                let answer = lock(&self.entra).token(tenant, &form, now);
                match answer {
                    Ok(v) => (Some(op), json(StatusCode::OK, v)),
                    Err(refusal) => (
                        Some(op),
                        json(
                            StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST),
                            refusal.body(now),
                        ),
                    ),
                }
            }
            _ => (
                None,
                json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    serde_json::json!({"error": "invalid_request"}),
                ),
            ),
        }
    }

    async fn handle_acs(&self, request: Request<Body>) -> (Option<EmulatedOperation>, Response) {
        let (parts, body) = request.into_parts();
        let too_large = || {
            ServiceError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "The request body is too large.",
            )
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return (None, too_large().into_response());
        }
        let body = match axum::body::to_bytes(body, self.max_body_bytes).await {
            Ok(bytes) => bytes,
            Err(_) => return (None, too_large().into_response()),
        };
        let version = match ApiVersion::from_query(parts.uri.query()) {
            Ok(v) => v,
            Err(e) => return (None, e.into_response()),
        };
        let route = match classify(&parts.method, parts.uri.path(), &version) {
            Ok(r) => r,
            Err(e) => return (None, e.into_response()),
        };
        let operation = route.operation();

        let fault = lock(&self.faults).decide(operation, rand::random::<f64>);
        let (before, after) = match fault {
            Some(f) if f.after_execute => (None, Some(f)),
            f => (f, None),
        };
        if let Some(fault) = before {
            if let Some(latency) = fault.latency {
                tokio::time::sleep(latency).await;
            }
            if let Some(response) = fault_response(fault.outcome) {
                return (Some(operation), response);
            }
        }
        let response = self.run(&parts, &body, &route, &version, operation);
        if let Some(FaultAction {
            latency,
            outcome: FaultOutcome::Truncate(n),
            ..
        }) = &after
        {
            if let Some(latency) = latency {
                tokio::time::sleep(*latency).await;
            }
            return (Some(operation), truncate(response, *n).await);
        }
        if let Some(fault) = after {
            // The operation ran (the store changed); its answer is late, replaced or lost.
            if let Some(latency) = fault.latency {
                tokio::time::sleep(latency).await;
            }
            if let Some(replaced) = fault_response(fault.outcome) {
                return (Some(operation), replaced);
            }
        }
        (Some(operation), response)
    }

    /// Signature, quota and the operation itself.
    fn run(
        &self,
        parts: &axum::http::request::Parts,
        body: &[u8],
        route: &Route,
        version: &ApiVersion,
        operation: EmulatedOperation,
    ) -> Response {
        // The target as received: hyper keeps the percent-encoding the client sent.
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        let signed = SignedRequest {
            method: parts.method.as_str(),
            path_and_query,
            host,
            headers: &parts.headers,
            body,
        };
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(token) = bearer {
            use super::entra::BearerRefusal;
            match lock(&self.entra).check_bearer(token.trim(), Timestamp::now()) {
                Ok(()) => {}
                Err(BearerRefusal::Invalid(why)) => {
                    return ServiceError::new(
                        StatusCode::UNAUTHORIZED,
                        "InvalidAuthenticationToken",
                        why,
                    )
                    .into_response();
                }
                Err(BearerRefusal::NoRole(oid)) => {
                    return ServiceError::new(
                        StatusCode::FORBIDDEN,
                        "AuthorizationFailed",
                        format!(
                            "The principal '{oid}' does not have authorization to perform this action on the Communication Services resource."
                        ),
                    )
                    .into_response();
                }
            }
        } else if self.disable_local_auth {
            lock(&self.entra).counts.hmac_refused_local_auth_disabled += 1;
            return ServiceError::new(
                StatusCode::UNAUTHORIZED,
                "LocalAuthDisabled",
                "Local authentication (access keys) is disabled for this resource; use Microsoft Entra ID.",
            )
            .into_response();
        } else if let Err(e) = authenticate(&self.key, &signed, Timestamp::now(), self.max_skew) {
            return e.into_response();
        }
        if let Err(retry_after) = lock(&self.quotas).try_admit(operation, Instant::now()) {
            return ServiceError::too_many_requests(retry_after).into_response();
        }
        let result = {
            let mut store = lock(&self.store);
            execute(
                &mut store,
                route,
                version,
                body,
                &parts.headers,
                Timestamp::now(),
                self.found_custom_id_status,
            )
        };
        match result {
            Ok(response) => {
                if operation != EmulatedOperation::Get
                    && let Some(persist) = &self.persist
                {
                    persist.notify_one();
                }
                response
            }
            Err(e) => e.into_response(),
        }
    }
}

/// The headers every ACS answer carries (the recorded live sessions): an `MS-CV`
/// correlation vector, the caller's `x-ms-client-request-id` echoed, and the api-versions
/// the service speaks.
fn answer_headers(
    headers: &mut axum::http::HeaderMap,
    client_request_id: Option<axum::http::HeaderValue>,
) {
    use base64::Engine as _;
    let cv = base64::engine::general_purpose::STANDARD_NO_PAD.encode(rand::random::<[u8; 16]>());
    if let Ok(value) = axum::http::HeaderValue::from_str(&format!("{cv}.0")) {
        headers.insert("ms-cv", value);
    }
    if let Some(id) = client_request_id {
        headers.insert("x-ms-client-request-id", id);
    }
    headers.insert(
        "api-supported-versions",
        axum::http::HeaderValue::from_static(super::api_version::SUPPORTED_VERSIONS_HEADER),
    );
}

/// `response` with its body cut to `n` bytes (and a matching `Content-Length`).
async fn truncate(response: Response, n: u64) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let cut = bytes.slice(..bytes.len().min(usize::try_from(n).unwrap_or(usize::MAX)));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(cut))
}

/// The answer a fault gives instead of the operation's; `None`: let it through.
fn fault_response(outcome: FaultOutcome) -> Option<Response> {
    match outcome {
        FaultOutcome::Proceed | FaultOutcome::Truncate(_) => None,
        FaultOutcome::RawBody {
            status,
            body,
            repeat,
            headers,
            chunked,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let total = (body.len() as u64).saturating_mul(repeat);
            let mut response = Response::new(repeated_body(body.into_bytes(), repeat));
            *response.status_mut() = status;
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if !chunked {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
            }
            insert_raw(h, &headers);
            Some(response)
        }
        FaultOutcome::Drop => {
            let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            response.extensions_mut().insert(DropConnection);
            Some(response)
        }
        FaultOutcome::Respond {
            status,
            retry_after_seconds,
            headers,
            message_serial,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = match message_serial {
                Some(n) => format!("Fault injected by the ACS emulator (answer {n})."),
                None => "Fault injected by the ACS emulator.".to_string(),
            };
            let mut error = ServiceError::new(status, "InjectedFault", message);
            if status == StatusCode::TOO_MANY_REQUESTS {
                error.code = "TooManyRequests";
            }
            error.retry_after_seconds = retry_after_seconds;
            let mut response = error.into_response();
            insert_raw(response.headers_mut(), &headers);
            Some(response)
        }
    }
}

/// Raw header values as a hostile endpoint sends them (validated as one line each).
fn insert_raw(headers: &mut axum::http::HeaderMap, raw: &[(&'static str, String)]) {
    for (name, value) in raw {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(*name, v);
        }
    }
}

/// Chunks this large are built once and sent again and again (refcounted), so an answer of
/// hundreds of MiB costs the emulator one chunk, not the whole body.
const CHUNK_BYTES: usize = 64 * 1024;

/// `piece` repeated `repeat` times, as a stream of shared chunks.
fn repeated_body(piece: Vec<u8>, repeat: u64) -> Body {
    if piece.is_empty() || repeat == 0 {
        return Body::empty();
    }
    let per_chunk = (CHUNK_BYTES / piece.len()).max(1) as u64;
    let chunk = axum::body::Bytes::from(piece.repeat(per_chunk.min(repeat) as usize));
    let full = repeat / per_chunk;
    let rest = axum::body::Bytes::from(piece.repeat((repeat % per_chunk) as usize));
    let chunks = std::iter::repeat_n(chunk, full as usize)
        .chain((!rest.is_empty()).then_some(rest))
        .map(Ok::<_, std::convert::Infallible>);
    Body::from_stream(futures::stream::iter(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::faults::FaultOutcome;
    use futures::StreamExt as _;

    #[tokio::test]
    async fn a_huge_body_streams_in_shared_chunks_of_the_right_total_size() {
        // 100 MiB of "0123456789abcdef": counted chunk by chunk, never held whole.
        let response = fault_response(FaultOutcome::RawBody {
            status: 200,
            body: "0123456789abcdef".into(),
            repeat: 100 * 1024 * 1024 / 16 + 1,
            headers: vec![("retry-after", "18446744073709551615".into())],
            chunked: false,
        })
        .expect("a body fault answers");
        assert_eq!(
            response.headers()[header::CONTENT_LENGTH],
            (100 * 1024 * 1024 + 16).to_string()
        );
        assert_eq!(response.headers()["retry-after"], "18446744073709551615");
        let mut stream = response.into_body().into_data_stream();
        let (mut total, mut largest) = (0usize, 0usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("chunk");
            largest = largest.max(chunk.len());
            total += chunk.len();
        }
        assert_eq!(total, 100 * 1024 * 1024 + 16);
        assert!(largest <= CHUNK_BYTES, "chunks of {largest} bytes");
    }

    #[tokio::test]
    async fn chunked_bodies_carry_no_length_and_varied_messages_differ() {
        let response = fault_response(FaultOutcome::RawBody {
            status: 502,
            body: "x".into(),
            repeat: 3,
            headers: vec![],
            chunked: true,
        })
        .unwrap();
        assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
        let text = |serial| async move {
            let r = fault_response(FaultOutcome::Respond {
                status: 500,
                retry_after_seconds: None,
                headers: vec![],
                message_serial: serial,
            })
            .unwrap();
            let b = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
            String::from_utf8(b.to_vec()).unwrap()
        };
        assert_ne!(text(Some(1)).await, text(Some(2)).await);
        assert_eq!(text(None).await, text(None).await);
    }
}
