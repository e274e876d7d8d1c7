//! The request pipeline shared by every connection: admin or ACS, then for ACS requests
//! body limit, api-version, route, faults, signature, quota, operation, statistics.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
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
        let identity = identity_of(path);
        let started = Instant::now();
        let received_at = Timestamp::now();
        let client_request_id = request
            .headers()
            .get("x-ms-client-request-id")
            .filter(|v| v.len() <= 256)
            .cloned();
        let (operation, mut response) = self.handle_acs(request).await;
        answer_headers(response.headers_mut(), client_request_id);
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
        if let Err(e) = authenticate(&self.key, &signed, Timestamp::now(), self.max_skew) {
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
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let body = body.repeat(usize::try_from(repeat).unwrap_or(1));
            Some((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        FaultOutcome::Drop => {
            let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            response.extensions_mut().insert(DropConnection);
            Some(response)
        }
        FaultOutcome::Respond {
            status,
            retry_after_seconds,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut error = ServiceError::new(
                status,
                "InjectedFault",
                "Fault injected by the ACS emulator.",
            );
            if status == StatusCode::TOO_MANY_REQUESTS {
                error.code = "TooManyRequests";
            }
            error.retry_after_seconds = retry_after_seconds;
            Some(error.into_response())
        }
    }
}
