//! The error shape ACS answers with: a status code plus `{"error": {"code", "message"}}`,
//! with `target` naming the field a validation error is about (as the recorded live
//! sessions show: `{"code": "ValidationError", ..., "target": "ExpiresInMinutes"}`).
//! The SDKs map 401/404 to their typed exceptions only when the body has this shape.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `error.target`: the request field a validation error is about.
    pub target: Option<&'static str>,
    pub retry_after_seconds: Option<u64>,
}

impl ServiceError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            target: None,
            retry_after_seconds: None,
        }
    }

    pub fn with_target(mut self, target: &'static str) -> Self {
        self.target = Some(target);
        self
    }

    /// A well-formed id of another ACS resource: 401 `IdentityNotOwned`, as the live
    /// service answers issue, revoke and delete (the SDKs' recorded sessions).
    pub fn not_owned() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "IdentityNotOwned",
            "Provided identity doesn't belong to the resource.",
        )
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    /// ACS answers every authentication failure with this code; the message says which check failed.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Denied", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "IdentityNotFound", message)
    }

    pub fn unknown_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "The requested resource or operation does not exist.",
        )
    }

    pub fn too_many_requests(retry_after_seconds: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "The request rate exceeds the limit for this operation; retry after the time in Retry-After.",
        )
        .with_retry_after(retry_after_seconds)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }
}

impl ServiceError {
    /// The `{"error": {...}}` body.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(target) = self.target {
            error["target"] = target.into();
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
