//! The ACS emulator: a real HTTP(S) server speaking the ACS Identity REST API,
//! wire-compatible with the official SDKs, for tests, demos and benchmarks.
//!
//! ACS side: `POST /identities`, `POST /identities/{id}/:issueAccessToken`,
//! `POST /identities/{id}/:revokeAccessTokens`, `DELETE /identities/{id}` on every
//! published api-version and, only where the published spec has them (the table in
//! `acs::api_versions`: 2025-03-02-preview), `customId` on create and
//! `GET /identities/{id}`, and (2023-08-01) the repeatability headers on create; the retired
//! `2020-07-20-preview2` routes (`/identities/{id}/token`, `PATCH /identities/{id}`).
//! Every request is HMAC-checked as ACS does (see the `auth` module), then faults, then
//! quota. Errors are ACS's `{"error": {"code", "message"}}`.
//!
//! Admin side (`/admin/`, loopback only unless an admin key is set):
//! - `GET /admin/identities`: `[{id, customId, deleted, tokensIssued, tokensRevokedAt, ...}]`
//! - `POST /admin/tokens:validate` `{"token"}`: `{"valid", "reason"}`, reason one of
//!   `valid`, `bad signature`, `expired`, `revoked`, `user deleted`, `unknown user`, ...
//! - `GET /admin/stats`: `{"total", "requests": {operation: {status: count}}}`;
//!   `DELETE /admin/stats` resets the counts
//! - `GET /admin/requests`: every ACS request, oldest first (the newest 200,000):
//!   `[{seq, receivedAt, respondedAt, operation, status, identity?, retryAfterSeconds?}]`,
//!   times RFC 3339 with nanoseconds; `DELETE /admin/requests` clears it
//! - `POST /admin/faults` one [`FaultRule`] or a list; `GET` lists, `DELETE` clears.
//!   Besides statuses, latency and drops, a fault can answer with a raw `body` (repeated
//!   `bodyRepeat` times: non-JSON, oversized, streamed in shared chunks, `bodyChunked`
//!   without a length) or cut the real answer to `truncateBytes`; send raw `retryAfter`,
//!   `retryAfterMs`, `xMsRetryAfterMs` header values; and with `varyMessage` end its
//!   error text with a number that changes on every answer.
//!
//! ```no_run
//! # async fn demo() -> Result<(), acs_identity_operator::emulator::EmulatorError> {
//! use acs_identity_operator::emulator::{EmulatorConfig, spawn};
//! let emulator = spawn(EmulatorConfig::default()).await?;
//! println!("{}", emulator.endpoint()); // http://127.0.0.1:PORT
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
pub(crate) mod api_version;
mod app;
mod auth;
pub(crate) mod config;
pub(crate) mod entra;
pub(crate) mod error;
pub(crate) mod faults;
pub(crate) mod quota;
pub(crate) mod request_log;
pub(crate) mod routes;
mod server;
pub(crate) mod stats;
pub(crate) mod store;
mod tls;
pub(crate) mod tokens;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::acs::connection_string::AccessKey;

use app::{App, lock};
pub use config::{EmulatedOperation, EmulatorConfig, QuotaLimit, QuotaSetting, default_quotas};
pub use faults::FaultRule;
use faults::FaultSet;
use quota::Quotas;
use stats::Stats;
use store::{Snapshot, Store};

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("state file {path}: {message}")]
    StateFile { path: PathBuf, message: String },
    #[error("{0}")]
    Tls(String),
    #[error("cannot write the TLS CA certificate to {path}: {source}")]
    CaOut {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token lifetime scale must be a positive number, got {0}")]
    BadScale(f64),
    #[error("Entra configuration: {0}")]
    Entra(String),
}

/// A started emulator. Dropping it stops the server too; [`RunningEmulator::shutdown`]
/// also waits for the last state-file write.
pub struct RunningEmulator {
    addr: SocketAddr,
    endpoint: String,
    key: AccessKey,
    resource_id: Uuid,
    entra_tenant: String,
    ca_pem: Option<String>,
    shutdown: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    persister: Option<JoinHandle<()>>,
}

impl RunningEmulator {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (or `https://` with TLS), without a trailing slash.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `endpoint=http://ADDR/;accesskey=KEY`, as ACS's portal shows it.
    pub fn connection_string(&self) -> String {
        format!(
            "endpoint={}/;accesskey={}",
            self.endpoint,
            self.key.to_base64()
        )
    }

    pub fn access_key(&self) -> &AccessKey {
        &self.key
    }

    pub fn resource_id(&self) -> Uuid {
        self.resource_id
    }

    /// The emulated Entra ID tenant of the resource.
    pub fn entra_tenant(&self) -> &str {
        &self.entra_tenant
    }

    /// PEM of the CA to trust in TLS mode.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(persister) = self.persister.take() {
            let _ = persister.await;
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Starts an emulator on `config.listen` and returns once it accepts connections.
pub async fn spawn(config: EmulatorConfig) -> Result<RunningEmulator, EmulatorError> {
    if !(config.token_lifetime_scale.is_finite() && config.token_lifetime_scale > 0.0) {
        return Err(EmulatorError::BadScale(config.token_lifetime_scale));
    }
    let key = match config.access_key.clone() {
        Some(key) => key,
        None => {
            // 64 bytes, like the keys the Azure portal hands out.
            let bytes: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
            AccessKey::from_base64(&STANDARD.encode(bytes))
                .map_err(|e| EmulatorError::Tls(e.to_string()))?
        }
    };
    let store = load_store(&config)?;
    let resource_id = store.resource_id();

    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: config.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EmulatorError::Bind {
            addr: config.listen,
            source,
        })?;

    let (tls, ca_pem) = if config.tls {
        let material = tls::generate(&config.tls_sans).map_err(EmulatorError::Tls)?;
        if let Some(path) = &config.tls_ca_out {
            std::fs::write(path, &material.ca_pem).map_err(|source| EmulatorError::CaOut {
                path: path.clone(),
                source,
            })?;
        }
        (
            Some(tokio_rustls::TlsAcceptor::from(material.server_config)),
            Some(material.ca_pem),
        )
    } else {
        (None, None)
    };

    // A wildcard listen address is reached over loopback.
    let shown_ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if config.tls { "https" } else { "http" };
    let endpoint = format!("{scheme}://{}", SocketAddr::new(shown_ip, addr.port()));

    let persist = config.state_file.as_ref().map(|_| Arc::new(Notify::new()));
    let entra_tenant = config
        .entra_tenant
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let lifetime = (config.entra_token_lifetime.as_secs_f64() * config.token_lifetime_scale)
        .clamp(1.0, 86_400.0) as u64;
    let directory = entra::Directory::new(entra_tenant.clone(), lifetime, config.entra.clone())
        .map_err(EmulatorError::Entra)?;
    let app = Arc::new(App {
        entra: Mutex::new(directory),
        disable_local_auth: config.disable_local_auth,
        key: key.clone(),
        admin_key: config.admin_key.clone(),
        max_skew: config.max_clock_skew,
        max_body_bytes: config.max_body_bytes,
        store: Mutex::new(store),
        quotas: Mutex::new(Quotas::new(&config.quotas)),
        faults: Mutex::new(FaultSet::new(config.faults.clone())),
        stats: Mutex::new(Stats::default()),
        requests: Mutex::new(Default::default()),
        persist: persist.clone(),
        found_custom_id_status: axum::http::StatusCode::from_u16(config.found_custom_id_status)
            .ok()
            .filter(|s| matches!(s.as_u16(), 200 | 201))
            .unwrap_or(axum::http::StatusCode::CREATED),
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let persister = match (&config.state_file, persist) {
        (Some(path), Some(notify)) => {
            // Written once at start so the resource id and token secret survive even an idle run.
            write_state(&app, path).await?;
            Some(tokio::spawn(persist_loop(
                app.clone(),
                path.clone(),
                notify,
                shutdown_rx.clone(),
            )))
        }
        _ => None,
    };
    let server = tokio::spawn(server::serve(listener, tls, app, shutdown_rx));
    Ok(RunningEmulator {
        addr,
        endpoint,
        key,
        resource_id,
        entra_tenant,
        ca_pem,
        shutdown,
        server: Some(server),
        persister,
    })
}

fn load_store(config: &EmulatorConfig) -> Result<Store, EmulatorError> {
    let Some(path) = config.state_file.as_ref().filter(|p| p.exists()) else {
        return Ok(Store::new(
            config.resource_id.unwrap_or_else(Uuid::new_v4),
            config.token_lifetime_scale,
        ));
    };
    let state_err = |message: String| EmulatorError::StateFile {
        path: path.clone(),
        message,
    };
    let text = std::fs::read(path).map_err(|e| state_err(e.to_string()))?;
    let snapshot: Snapshot = serde_json::from_slice(&text)
        .map_err(|e| state_err(format!("not valid state JSON: {e}")))?;
    if let Some(wanted) = config.resource_id
        && wanted != snapshot.resource_id
    {
        return Err(state_err(format!(
            "it belongs to resource {}, not the --resource-id {wanted}; its identity ids would not resolve",
            snapshot.resource_id
        )));
    }
    Store::from_snapshot(snapshot, config.token_lifetime_scale).map_err(state_err)
}

async fn persist_loop(
    app: Arc<App>,
    path: PathBuf,
    notify: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = notify.notified() => false,
            _ = shutdown.changed() => true,
        };
        if let Err(e) = write_state(&app, &path).await {
            tracing::warn!(error = %e, "could not write the state file");
        }
        if stopping {
            break;
        }
    }
}

/// Writes to a temporary file and renames it, so a crash never leaves half a state file.
async fn write_state(app: &App, path: &Path) -> Result<(), EmulatorError> {
    let snapshot = lock(&app.store).snapshot();
    let err = |message: String| EmulatorError::StateFile {
        path: path.to_path_buf(),
        message,
    };
    let json = serde_json::to_vec_pretty(&snapshot).map_err(|e| err(e.to_string()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, json)
        .await
        .map_err(|e| err(e.to_string()))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}
