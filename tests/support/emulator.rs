//! One ACS emulator handle for the tests, whether it runs in this process
//! ([`Emulator::in_process`], `acs_identity_operator::emulator::spawn`) or as its own
//! `acs-emulator` process ([`Emulator::start`], restartable on the same port and state
//! file), and a typed client of its admin API ([`Admin`]: request counts, users, token
//! validation, fault rules).

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use acs_identity_operator::emulator::{self, EmulatorConfig, FaultRule, RunningEmulator};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::process::{Watched, temp_dir};

// ---------------------------------------------------------------- the admin API

/// `GET /admin/stats`: request counts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Stats {
    pub total: u64,
    /// operation (`create`, `issue`, `revoke`, `delete`, `other`) → status → count.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Stats {
    /// Requests of one operation, any status.
    pub fn calls(&self, operation: &str) -> u64 {
        self.requests
            .get(operation)
            .map(|by_status| by_status.values().sum())
            .unwrap_or(0)
    }
}

/// One user of `GET /admin/identities`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcsUser {
    pub id: String,
    pub custom_id: Option<String>,
    pub deleted: bool,
    pub tokens_issued: u64,
    pub tokens_revoked_at: Option<String>,
    pub created_at: String,
    pub deleted_at: Option<String>,
    pub last_token_issued_at: Option<String>,
}

/// A fault rule from its JSON form (`{"operation": "create", "status": 503, ...}`),
/// checked against the emulator's own type so a typo fails here, not at the emulator.
pub fn fault(rule: Value) -> FaultRule {
    serde_json::from_value(rule.clone()).unwrap_or_else(|e| panic!("fault rule {rule}: {e}"))
}

/// A client of an emulator's admin API. Every call must succeed.
#[derive(Clone)]
pub struct Admin {
    endpoint: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(endpoint: &str) -> Admin {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Admin::with_http(endpoint, http)
    }

    /// With the caller's HTTP client (one that trusts a TLS emulator's CA).
    pub fn with_http(endpoint: &str, http: reqwest::Client) -> Admin {
        Admin {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// The admin API of an in-process emulator, trusting its CA in TLS mode.
    pub fn of(emulator: &RunningEmulator) -> Admin {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(pem) = emulator.ca_pem() {
            http = http.add_root_certificate(
                reqwest::Certificate::from_pem(pem.as_bytes()).expect("the emulator's CA"),
            );
        }
        Admin::with_http(emulator.endpoint(), http.build().expect("http client"))
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.endpoint));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    /// `GET /admin/stats`.
    pub async fn stats(&self) -> Stats {
        let v = self.call(reqwest::Method::GET, "/admin/stats", None).await;
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("stats {v}: {e}"))
    }

    /// Requests of one operation (`create`, `issue`, `revoke`, `delete`), any status.
    pub async fn calls(&self, operation: &str) -> u64 {
        self.stats().await.calls(operation)
    }

    /// `GET /admin/identities`: every user, deleted ones included.
    pub async fn identities(&self) -> Vec<AcsUser> {
        let v = self
            .call(reqwest::Method::GET, "/admin/identities", None)
            .await;
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("identities {v}: {e}"))
    }

    /// The admin view of one user.
    pub async fn identity(&self, id: &str) -> Option<AcsUser> {
        self.identities().await.into_iter().find(|i| i.id == id)
    }

    /// Users that are not deleted.
    pub async fn live_users(&self) -> Vec<AcsUser> {
        self.identities()
            .await
            .into_iter()
            .filter(|u| !u.deleted)
            .collect()
    }

    /// `POST /admin/tokens:validate`: `(valid, reason)`.
    pub async fn validate(&self, token: &str) -> (bool, String) {
        let v = self
            .call(
                reqwest::Method::POST,
                "/admin/tokens:validate",
                Some(json!({ "token": token })),
            )
            .await;
        (
            v["valid"].as_bool().expect("valid is a bool"),
            v["reason"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// `POST /admin/faults`.
    pub async fn add_fault(&self, rule: FaultRule) {
        let body = serde_json::to_value(&rule).expect("fault rule JSON");
        self.call(reqwest::Method::POST, "/admin/faults", Some(body))
            .await;
    }

    /// `DELETE /admin/faults`.
    pub async fn clear_faults(&self) {
        self.call(reqwest::Method::DELETE, "/admin/faults", None)
            .await;
    }
}

// ---------------------------------------------------------------- the emulator

enum Backend {
    InProcess(RunningEmulator),
    Process {
        state_file: PathBuf,
        log: PathBuf,
        process: Option<Watched>,
    },
}

/// One emulator for one test. Derefs to its [`Admin`] client.
pub struct Emulator {
    pub addr: SocketAddr,
    pub access_key: String,
    pub connection_string: String,
    pub token_lifetime_scale: f64,
    admin: Admin,
    backend: Backend,
}

impl std::ops::Deref for Emulator {
    type Target = Admin;
    fn deref(&self) -> &Admin {
        &self.admin
    }
}

impl Emulator {
    /// An emulator in this process (its server task lives on the caller's runtime).
    pub async fn in_process(config: EmulatorConfig) -> Emulator {
        let token_lifetime_scale = config.token_lifetime_scale;
        let running = emulator::spawn(config).await.expect("emulator starts");
        Emulator {
            addr: running.addr(),
            access_key: running.access_key().to_base64(),
            connection_string: running.connection_string(),
            token_lifetime_scale,
            admin: Admin::new(running.endpoint()),
            backend: Backend::InProcess(running),
        }
    }

    /// An `acs-emulator` process on a free loopback port; `token_lifetime_scale` 0.01
    /// makes a 1 h token live 36 s.
    pub fn start(token_lifetime_scale: f64) -> Emulator {
        let dir = temp_dir("acs-emulator-e2e-");
        let mut emulator = Emulator {
            addr: "127.0.0.1:0".parse().expect("addr"),
            access_key: base64::engine::general_purpose::STANDARD.encode(rand_bytes()),
            connection_string: String::new(),
            token_lifetime_scale,
            admin: Admin::new("http://127.0.0.1:0"),
            backend: Backend::Process {
                state_file: dir.join("state.json"),
                log: dir.join("emulator.log"),
                process: None,
            },
        };
        emulator.launch();
        emulator
    }

    fn launch(&mut self) {
        let Backend::Process {
            state_file,
            log,
            process,
        } = &mut self.backend
        else {
            panic!("an in-process emulator cannot be launched again");
        };
        let args: Vec<String> = vec![
            "--listen".into(),
            self.addr.to_string(),
            "--access-key".into(),
            self.access_key.clone(),
            "--token-lifetime-scale".into(),
            self.token_lifetime_scale.to_string(),
            "--state-file".into(),
            state_file.display().to_string(),
        ];
        let mut child = Watched::spawn(
            Path::new(env!("CARGO_BIN_EXE_acs-emulator")),
            &args,
            log,
            true,
        );
        let mut line = String::new();
        child
            .stdout
            .as_mut()
            .expect("piped stdout")
            .read_line(&mut line)
            .expect("read the emulator's first line");
        let conn = line
            .trim()
            .strip_prefix("ACS_CONNECTION_STRING=")
            .unwrap_or_else(|| {
                panic!(
                    "acs-emulator's first line is not the connection string: {line:?} (log: {})",
                    log.display()
                )
            })
            .to_string();
        let endpoint = conn
            .strip_prefix("endpoint=")
            .and_then(|s| s.split(';').next())
            .expect("endpoint in the connection string");
        let url = url::Url::parse(endpoint).expect("endpoint URL");
        self.addr = SocketAddr::new(
            url.host_str().expect("host").parse().expect("loopback IP"),
            url.port().expect("port"),
        );
        self.connection_string = conn;
        *process = Some(child);
        self.admin = Admin::new(&self.endpoint());
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same endpoint with a different (valid base64) access key.
    pub fn wrong_connection_string(&self) -> String {
        format!(
            "endpoint={}/;accesskey={}",
            self.endpoint(),
            base64::engine::general_purpose::STANDARD.encode(rand_bytes())
        )
    }

    /// Stops the process (SIGTERM: its state file is written).
    pub fn stop(&mut self) {
        match &mut self.backend {
            Backend::Process { process, .. } => {
                if let Some(mut p) = process.take() {
                    p.stop();
                }
            }
            Backend::InProcess(_) => panic!("an in-process emulator cannot be stopped"),
        }
    }

    /// Starts the process again on the same port, access key and state file.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.addr;
        self.launch();
        assert_eq!(self.addr, port, "the emulator came back on another address");
    }

    /// The process's log (empty in process: its logs go to the test's tracing).
    pub fn log_text(&self) -> String {
        match &self.backend {
            Backend::Process { log, .. } => std::fs::read_to_string(log).unwrap_or_default(),
            Backend::InProcess(_) => String::new(),
        }
    }
}

fn rand_bytes() -> [u8; 32] {
    rand::random()
}
