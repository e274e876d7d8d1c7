//! End-to-end support: the operator as its own process under a least-privilege
//! ServiceAccount, one ACS emulator process per test, and a namespace with a
//! `CommunicationService` pointing at that emulator.
//!
//! - CRDs from `crds/` are applied once per test binary ([`install_crds`]).
//! - One operator process per test binary ([`operator`]), started lazily; it watches every
//!   namespace. Its RBAC comes from one place ([`operator_rbac_manifest`]).
//! - Child processes run under a tiny `sh` watchdog that stops them (SIGTERM, then
//!   SIGKILL) when its stdin closes: on drop, and also when the test binary exits or
//!   dies, since a static is never dropped.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use acs_identity_operator::api::CommunicationIdentity;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::{ControlPlane, TestNamespace, eventually};

/// Namespace and ServiceAccount the operator runs as: the Helm chart's, installed as release
/// `acs-identity-operator` in namespace `acs-identity-operator`.
pub const OPERATOR_NAMESPACE: &str = "acs-identity-operator";
pub const OPERATOR_SERVICE_ACCOUNT: &str = "acs-identity-operator";
/// The CommunicationService (and its credential Secret) every [`OperatorEnv`] creates.
pub const SERVICE: &str = "acs";
pub const CREDENTIAL_SECRET: &str = "acs-connection";

// The guard stops the child when stdin closes; the watchdog itself exits with the
// child, and with its exit status (128+N for signal N), so `is_running` and
// `try_exit_status` see a process that exited on its own. (A background list's stdin
// is /dev/null, hence the pipe passed on fd 3.)
const WATCHDOG: &str = r#"
prog=$1; shift
"$prog" "$@" </dev/null &
child=$!
echo "$child" > "$WATCHED_PID_FILE"
exec 3<&0
( read -r _ <&3 || true
  kill -TERM "$child" 2>/dev/null
  sleep 10
  kill -KILL "$child" 2>/dev/null ) &
guard=$!
exec 3<&-
wait "$child"
rc=$?
kill "$guard" 2>/dev/null
exit "$rc"
"#;

/// Deletes every identity `api` lists and waits (60 s at most) until they are gone; an
/// operator must run to drop the finalizers. `what` names the scope in a timeout.
pub async fn delete_all_identities(api: &Api<CommunicationIdentity>, what: &str) {
    let _ = api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    eventually(60, &format!("every identity of {what} to be gone"), || {
        let api = api.clone();
        async move {
            api.list(&ListParams::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        }
    })
    .await;
}

/// A child process kept alive while this value (and the test binary) lives.
pub struct Watched {
    child: Child,
    pub stdout: Option<BufReader<ChildStdout>>,
    pid_file: PathBuf,
}

impl Watched {
    /// Starts `program args` with stderr (and stdout unless `pipe_stdout`) appended to `log`.
    pub fn spawn(program: &Path, args: &[String], log: &Path, pipe_stdout: bool) -> Watched {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone().expect("clone log file"))
        };
        let pid_file = log.with_extension("pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut child = Command::new("sh")
            .env("WATCHED_PID_FILE", &pid_file)
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let stdout = child.stdout.take().map(BufReader::new);
        Watched {
            child,
            stdout,
            pid_file,
        }
    }

    /// The watched program's own PID (not the watchdog's), once it has started.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to the watched program itself.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("watched process has a pid");
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid} failed");
    }

    /// Whether the watched process is still running (the watchdog exits with it).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status once the watched program has exited (its code, or 128+N after
    /// signal N); `None` while it runs.
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM (SIGKILL after 10 s) and wait for the process to exit.
    pub fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.stop();
    }
}

fn temp_dir(prefix: &str) -> PathBuf {
    // Kept after the run: the logs are what one reads when a test failed.
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
        .keep()
}

// ---------------------------------------------------------------- CRDs and RBAC

pub use super::install_crds;

/// The operator's RBAC (ClusterRole + ClusterRoleBinding for
/// `OPERATOR_NAMESPACE/OPERATOR_SERVICE_ACCOUNT`). The one place to switch to the Helm
/// chart's rendered RBAC.
pub fn operator_rbac_manifest() -> String {
    // Exactly the RBAC the Helm chart renders for its ServiceAccount (namespace and
    // names match OPERATOR_NAMESPACE / OPERATOR_SERVICE_ACCOUNT), so the end-to-end
    // suite proves the chart's RBAC sufficient.
    let cp = ControlPlane::get();
    let chart = super::repo_root().join("charts/acs-identity-operator");
    let (ok, out, err) = super::run_with_stdin(
        cp.helm().args([
            "template",
            OPERATOR_SERVICE_ACCOUNT,
            chart.to_str().expect("chart path"),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--show-only",
            "templates/rbac.yaml",
        ]),
        None,
    );
    assert!(ok, "helm template of the chart's RBAC failed: {err}");
    out
}

// ---------------------------------------------------------------- the operator

/// The operator process shared by every test of the binary.
pub struct Operator {
    /// Its log (JSON lines, stdout and stderr).
    pub log: PathBuf,
    /// The admin server (`/healthz`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    process: Mutex<Watched>,
}

static OPERATOR: OnceLock<Operator> = OnceLock::new();

/// The binary's operator, started on first use (CRDs, namespace, ServiceAccount, RBAC,
/// a TokenRequest kubeconfig; then `acs-identity-operator run`, ready when `/readyz` is).
pub fn operator() -> &'static Operator {
    OPERATOR.get_or_init(|| {
        // Its own thread and runtime: a kube client is bound to the runtime that made
        // it, and the first caller's runtime is the caller's test only.
        std::thread::spawn(|| {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(start_operator())
        })
        .join()
        .unwrap_or_else(|_| panic!("starting the operator failed (see above)"))
    })
}

static OPERATOR_KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();

/// A kubeconfig for the chart's ServiceAccount, with the chart's RBAC applied (once per
/// test binary): what every operator process of the tests runs as.
pub fn operator_kubeconfig() -> PathBuf {
    OPERATOR_KUBECONFIG
        .get_or_init(|| {
            std::thread::spawn(|| {
                tokio::runtime::Runtime::new()
                    .expect("runtime")
                    .block_on(prepare_operator_identity())
            })
            .join()
            .unwrap_or_else(|_| {
                panic!("preparing the operator's ServiceAccount failed (see above)")
            })
        })
        .clone()
}

async fn prepare_operator_identity() -> PathBuf {
    let cp = ControlPlane::get();
    install_crds(cp);
    let ns_and_sa = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {OPERATOR_NAMESPACE}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {OPERATOR_SERVICE_ACCOUNT}, namespace: {OPERATOR_NAMESPACE}}}\n"
    );
    let (ok, _, err) = cp.kubectl_run(&["apply", "-f", "-"], Some(&ns_and_sa));
    assert!(ok, "operator namespace and ServiceAccount: {err}");
    let (ok, _, err) = cp.kubectl_run(&["apply", "-f", "-"], Some(&operator_rbac_manifest()));
    assert!(ok, "operator RBAC: {err}");
    let dir = temp_dir("acs-operator-sa-");
    let admin = cp.admin_client().await;
    cp.service_account_kubeconfig(&admin, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, &dir)
        .await
}

async fn start_operator() -> Operator {
    // Cluster services' credentials live in the operator's own namespace, as the chart
    // sets it up.
    spawn_operator(
        &["--cluster-resource-namespace", OPERATOR_NAMESPACE],
        "acs-operator-e2e-",
    )
    .await
}

/// Starts another operator process as the chart's ServiceAccount with `extra_args`
/// after `run --kubeconfig K --metrics-addr 127.0.0.1:0 --log-format json`; returns once
/// its admin server is listening (not necessarily ready: a standby waits for its Lease).
pub async fn spawn_operator(extra_args: &[&str], log_prefix: &str) -> Operator {
    spawn_operator_as(&operator_kubeconfig(), extra_args, log_prefix).await
}

/// [`spawn_operator`] with another identity's kubeconfig (e.g. a ServiceAccount under
/// differently rendered RBAC).
pub async fn spawn_operator_as(
    kubeconfig: &Path,
    extra_args: &[&str],
    log_prefix: &str,
) -> Operator {
    let dir = temp_dir(log_prefix);
    let log = dir.join("operator.log");
    let mut args: Vec<String> = vec![
        "run".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
        "--log-format".into(),
        "json".into(),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let process = Watched::spawn(
        Path::new(env!("CARGO_BIN_EXE_acs-identity-operator")),
        &args,
        &log,
        false,
    );
    eprintln!("acs-identity-operator running; log: {}", log.display());
    let admin_addr = eventually(30, "the operator's admin server address in its log", || {
        let log = log.clone();
        async move { admin_addr_from_log(&log) }
    })
    .await;
    let operator = Operator {
        log,
        admin_addr,
        process: Mutex::new(process),
    };
    if !extra_args.contains(&"--leader-elect") {
        operator.wait_ready(60).await;
    }
    operator
}

fn admin_addr_from_log(log: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        // Flattened JSON (`message`, `addr` at the top) or tracing's default (`fields`).
        let fields = if v["fields"].is_object() {
            &v["fields"]
        } else {
            &v
        };
        (fields["message"] == "admin server listening")
            .then(|| fields["addr"].as_str()?.parse().ok())
            .flatten()
    })
}

impl Operator {
    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&self, secs: u64) {
        let http = reqwest::Client::new();
        let addr = self.admin_addr;
        eventually(secs, "the operator's /readyz to answer 200", || {
            let http = http.clone();
            async move {
                let r = http
                    .get(format!("http://{addr}/readyz"))
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }

    /// The process, to signal or stop it.
    pub fn process(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.process.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(format!("http://{}/metrics", self.admin_addr))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process still running and `/healthz` answering 200.
    pub async fn is_healthy(&self) -> bool {
        let running = self
            .process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_running();
        let healthz = reqwest::Client::new()
            .get(format!("http://{}/healthz", self.admin_addr))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        running && healthz
    }
}

// ---------------------------------------------------------------- the emulator

/// One `acs-emulator` process (for one test), restartable on the same port, access key
/// and state file so its users survive an outage.
pub struct Emulator {
    pub addr: SocketAddr,
    pub access_key: String,
    pub connection_string: String,
    pub token_lifetime_scale: f64,
    pub dir: PathBuf,
    state_file: PathBuf,
    log: PathBuf,
    process: Option<Watched>,
    http: reqwest::Client,
}

impl Emulator {
    /// Starts an emulator on a free loopback port; `token_lifetime_scale` 0.01 makes a
    /// 1 h token live 36 s.
    pub fn start(token_lifetime_scale: f64) -> Emulator {
        let dir = temp_dir("acs-emulator-e2e-");
        let key = rand_bytes();
        let mut emulator = Emulator {
            addr: "127.0.0.1:0".parse().expect("addr"),
            access_key: base64::engine::general_purpose::STANDARD.encode(key),
            connection_string: String::new(),
            token_lifetime_scale,
            state_file: dir.join("state.json"),
            log: dir.join("emulator.log"),
            dir,
            process: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        };
        emulator.launch();
        emulator
    }

    fn launch(&mut self) {
        let args: Vec<String> = vec![
            "--listen".into(),
            self.addr.to_string(),
            "--access-key".into(),
            self.access_key.clone(),
            "--token-lifetime-scale".into(),
            self.token_lifetime_scale.to_string(),
            "--state-file".into(),
            self.state_file.display().to_string(),
        ];
        let mut process = Watched::spawn(
            Path::new(env!("CARGO_BIN_EXE_acs-emulator")),
            &args,
            &self.log,
            true,
        );
        let mut line = String::new();
        process
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
                    self.log.display()
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
        self.process = Some(process);
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same endpoint with a different (valid base64) access key.
    pub fn wrong_connection_string(&self) -> String {
        let key = rand_bytes();
        format!(
            "endpoint={}/;accesskey={}",
            self.endpoint(),
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

    /// Stops the process (SIGTERM: its state file is written).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// Starts again on the same port, access key and state file.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.addr;
        self.launch();
        assert_eq!(self.addr, port, "the emulator came back on another address");
    }

    /// `GET /admin/identities`.
    pub async fn identities(&self) -> Vec<Value> {
        let r = self
            .http
            .get(format!("{}/admin/identities", self.endpoint()))
            .send()
            .await
            .expect("GET /admin/identities");
        assert!(r.status().is_success(), "GET /admin/identities: {r:?}");
        r.json().await.expect("identities JSON")
    }

    /// The admin view of one identity.
    pub async fn identity(&self, id: &str) -> Option<Value> {
        self.identities().await.into_iter().find(|i| i["id"] == id)
    }

    /// `POST /admin/tokens:validate`: `(valid, reason)`.
    pub async fn validate(&self, token: &str) -> (bool, String) {
        let r = self
            .http
            .post(format!("{}/admin/tokens:validate", self.endpoint()))
            .json(&json!({ "token": token }))
            .send()
            .await
            .expect("POST /admin/tokens:validate");
        assert!(r.status().is_success(), "tokens:validate: {r:?}");
        let v: Value = r.json().await.expect("validate JSON");
        (
            v["valid"].as_bool().expect("valid is a bool"),
            v["reason"].as_str().unwrap_or_default().to_string(),
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn rand_bytes() -> [u8; 32] {
    rand::random()
}

// ---------------------------------------------------------------- one test's world

/// A test's namespace, emulator and `CommunicationService` ([`SERVICE`]), with the shared
/// operator running. Tokens the test saw are remembered, so [`OperatorEnv::finish`] can
/// prove none of them leaked into logs, status or events.
pub struct OperatorEnv {
    pub cp: &'static ControlPlane,
    pub client: Client,
    pub operator: &'static Operator,
    pub emulator: Emulator,
    pub ns: TestNamespace,
    tokens: Mutex<BTreeSet<String>>,
}

impl OperatorEnv {
    /// Operator running, a fresh namespace, an emulator with `token_lifetime_scale`, a
    /// credential Secret and a `CommunicationService` named [`SERVICE`] that is Ready.
    pub async fn new(prefix: &str, token_lifetime_scale: f64) -> OperatorEnv {
        let cp = ControlPlane::get();
        let operator = operator();
        let client = cp.admin_client().await;
        let ns = TestNamespace::create(cp, &client, prefix).await;
        let emulator = Emulator::start(token_lifetime_scale);
        let env = OperatorEnv {
            cp,
            client,
            operator,
            emulator,
            ns,
            tokens: Mutex::new(BTreeSet::new()),
        };
        env.put_credentials(&env.emulator.connection_string.clone())
            .await;
        env.create(
            "communicationservices",
            json!({
                "apiVersion": "acs-operator.dev/v1alpha1",
                "kind": "CommunicationService",
                "metadata": {"name": SERVICE},
                "spec": {"connectionStringSecretRef": {"name": CREDENTIAL_SECRET}},
            }),
        )
        .await;
        env
    }

    pub fn ns(&self) -> &str {
        &self.ns.name
    }

    pub fn identities(&self) -> Api<CommunicationIdentity> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    /// Creates or replaces the credential Secret [`CREDENTIAL_SECRET`].
    pub async fn put_credentials(&self, connection_string: &str) {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": CREDENTIAL_SECRET},
            "stringData": {"connectionString": connection_string},
        }))
        .expect("secret");
        let api = self.secrets();
        let params = kube::api::PatchParams::apply("acs-e2e").force();
        api.patch(
            CREDENTIAL_SECRET,
            &params,
            &kube::api::Patch::Apply(&secret),
        )
        .await
        .expect("apply the credential Secret");
    }

    /// Creates any namespaced object of group acs-operator.dev in the test namespace.
    pub async fn create(&self, plural: &str, obj: Value) -> Value {
        create_in(&self.client, self.ns(), plural, obj)
            .await
            .unwrap_or_else(|e| panic!("create {plural}: {e}"))
    }

    /// A `CommunicationIdentity` using [`SERVICE`] with `spec` merged over
    /// `{serviceRef, scopes: [chat]}`.
    pub async fn create_identity(&self, name: &str, spec: Value) -> CommunicationIdentity {
        let mut full = json!({"serviceRef": {"name": SERVICE}, "scopes": ["chat"]});
        merge(&mut full, spec);
        let obj: CommunicationIdentity = serde_json::from_value(json!({
            "apiVersion": "acs-operator.dev/v1alpha1",
            "kind": "CommunicationIdentity",
            "metadata": {"name": name},
            "spec": full,
        }))
        .expect("identity object");
        self.identities()
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create identity {name}: {e}"))
    }

    /// Waits until `Ready` has `status` (and `reason`, when given); returns the identity.
    pub async fn wait_ready_is(
        &self,
        name: &str,
        status: &str,
        reason: Option<&str>,
        secs: u64,
    ) -> CommunicationIdentity {
        let api = self.identities();
        let what = format!("{}/{name} Ready={status} {reason:?}", self.ns());
        let last = Mutex::new(None::<Value>);
        let found = tokio::time::timeout(
            Duration::from_secs(secs),
            eventually(secs + 5, &what, || {
                let api = api.clone();
                let last = &last;
                async move {
                    let obj = api.get_opt(name).await.ok()??;
                    *last.lock().unwrap() = serde_json::to_value(&obj.status).ok();
                    let c = condition(&obj, "Ready")?;
                    (c.status == status && reason.is_none_or(|r| c.reason == r)).then_some(obj)
                }
            }),
        )
        .await;
        match found {
            Ok(obj) => obj,
            Err(_) => panic!(
                "timed out after {secs}s waiting for {what}; last status: {}",
                last.lock().unwrap().clone().unwrap_or(Value::Null)
            ),
        }
    }

    pub async fn wait_ready(&self, name: &str) -> CommunicationIdentity {
        self.wait_ready_is(name, "True", None, 60).await
    }

    /// The Secret's string data.
    pub async fn secret_data(
        &self,
        name: &str,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let s = self.secrets().get_opt(name).await.expect("get Secret")?;
        Some(
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect(),
        )
    }

    /// The token in Secret `name` (remembered for the leak check).
    pub async fn token(&self, name: &str) -> Option<String> {
        let t = self.secret_data(name).await?.get("token")?.clone();
        self.remember(&t);
        Some(t)
    }

    /// Remembers a secret string that must never appear in logs, status or events.
    pub fn remember(&self, secret: &str) {
        if !secret.is_empty() {
            self.tokens.lock().unwrap().insert(secret.to_string());
        }
    }

    /// events.k8s.io/v1 Events whose `regarding` is the identity `name`.
    pub async fn events_for(&self, name: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), self.ns());
        api.list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("CommunicationIdentity")
                        && r.name.as_deref() == Some(name)
                })
            })
            .collect()
    }

    /// Waits for an event with `reason` (and type, when given) on identity `name`.
    pub async fn wait_event(&self, name: &str, reason: &str, type_: Option<&str>) -> Event {
        eventually(60, &format!("event {reason} on {name}"), || async {
            self.events_for(name).await.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && type_.is_none_or(|t| e.type_.as_deref() == Some(t))
            })
        })
        .await
    }

    /// Asserts that no remembered token (nor the access key) appears in the operator's
    /// log, or in the status or events of any identity of the namespace.
    pub async fn assert_no_secret_material(&self) {
        let mut secrets = self.tokens.lock().unwrap().clone();
        secrets.insert(self.emulator.access_key.clone());
        let log = self.operator.log_text();
        let mut places = vec![("the operator's log".to_string(), log)];
        for id in self
            .identities()
            .list(&ListParams::default())
            .await
            .expect("list identities")
        {
            places.push((
                format!("status of {}", id.name_any()),
                serde_json::to_string(&id.status).unwrap_or_default(),
            ));
        }
        let events: Api<Event> = Api::namespaced(self.client.clone(), self.ns());
        for e in events.list(&ListParams::default()).await.expect("events") {
            places.push((
                format!("event {}", e.name_any()),
                serde_json::to_string(&e).unwrap_or_default(),
            ));
        }
        for secret in &secrets {
            for (place, text) in &places {
                assert!(
                    !text.contains(secret.as_str()),
                    "secret material ({}...) found in {place}",
                    &secret[..secret.len().min(12)]
                );
            }
        }
    }

    /// End of a test: the leak check, then every identity is deleted while the emulator
    /// still runs (so finalizers can finish and the namespace does not hang).
    pub async fn finish(self) {
        self.assert_no_secret_material().await;
        delete_all_identities(&self.identities(), "the test namespace").await;
        assert!(
            self.operator.is_healthy().await,
            "the operator is not healthy; log: {}",
            self.operator.log.display()
        );
    }
}

/// Creates an acs-operator.dev object (namespaced, or cluster-scoped with `ns` empty).
pub async fn create_in(
    client: &Client,
    ns: &str,
    plural: &str,
    obj: Value,
) -> Result<Value, kube::Error> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let ar = kube::core::ApiResource {
        group: "acs-operator.dev".into(),
        version: "v1alpha1".into(),
        api_version: "acs-operator.dev/v1alpha1".into(),
        kind,
        plural: plural.into(),
    };
    let api: Api<kube::core::DynamicObject> = if ns.is_empty() {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), ns, &ar)
    };
    let dynamic: kube::core::DynamicObject =
        serde_json::from_value(obj).expect("a Kubernetes object");
    let created = api.create(&PostParams::default(), &dynamic).await?;
    Ok(serde_json::to_value(created).expect("JSON"))
}

/// JSON merge (objects merged recursively, everything else replaced).
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

pub fn condition<'a>(obj: &'a CommunicationIdentity, type_: &str) -> Option<&'a Condition> {
    obj.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// The JSON claims of a JWT-shaped token.
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}
