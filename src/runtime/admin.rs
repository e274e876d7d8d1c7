//! The admin HTTP server: `/healthz` (the process is alive), `/readyz` (the controller's
//! caches are synced) and `/metrics` (Prometheus scrape). It serves plain HTTP on its own
//! port, apart from anything user-facing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::metrics::{self, Metrics};

const NOT_SYNCED: &str = "controller caches not synced yet";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} for the admin server: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Whether the operator is ready for traffic, as `/readyz` reports it. Clones share the
/// same flag. Starts not ready.
///
/// A replica that waits for the leader Lease should still be marked ready once its
/// process is up: a standby that never turns ready blocks a Deployment's rolling update
/// (the new pod waits for the lease the old pod holds, and the old pod is only stopped
/// once the new one is ready).
#[derive(Clone, Debug)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Debug)]
struct ReadinessInner {
    ready: AtomicBool,
    reason: RwLock<String>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(ReadinessInner {
                ready: AtomicBool::new(false),
                reason: RwLock::new(NOT_SYNCED.to_string()),
            }),
        }
    }

    /// `true` once the controller's caches are synced; `false` goes back to the default
    /// reason.
    pub fn set_ready(&self, ready: bool) {
        if !ready {
            self.set_reason(NOT_SYNCED);
        }
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Not ready, with a short reason shown by `/readyz` (e.g. "shutting down").
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set_reason(reason.into());
        self.inner.ready.store(false, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Why the operator is not ready; meaningless while it is.
    pub fn reason(&self) -> String {
        match self.inner.reason.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_reason(&self, reason: impl Into<String>) {
        let reason = reason.into();
        match self.inner.reason.write() {
            Ok(mut r) => *r = reason,
            Err(poisoned) => *poisoned.into_inner() = reason,
        }
    }
}

/// What the admin handlers read. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
}

impl AdminState {
    pub fn new(metrics: Arc<Metrics>, readiness: Readiness) -> Self {
        Self { metrics, readiness }
    }
}

/// The admin routes, for embedding or testing without a socket.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(state)
}

/// Binds the admin address; with port 0, `local_addr()` on the result tells the port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// Serves the admin routes on `listener` until `shutdown` resolves, then finishes the
/// requests in flight.
pub async fn serve_on(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin server listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(AdminError::Serve)
}

/// [`bind`] then [`serve_on`].
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    let listener = bind(addr).await?;
    serve_on(listener, state, shutdown).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let reason = format!("not ready: {}\n", state.readiness.reason());
        (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
    }
}

async fn metrics_handler(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_starts_not_ready_and_is_shared_by_clones() {
        let r = Readiness::new();
        assert!(!r.is_ready());
        assert_eq!(r.reason(), NOT_SYNCED);
        let clone = r.clone();
        clone.set_ready(true);
        assert!(r.is_ready());
        r.set_not_ready("shutting down");
        assert!(!clone.is_ready());
        assert_eq!(clone.reason(), "shutting down");
        r.set_ready(true);
        r.set_ready(false);
        assert_eq!(clone.reason(), NOT_SYNCED);
    }
}
