//! The operator as its own process under the Helm chart's ServiceAccount and RBAC: one
//! shared by every test of a binary ([`operator`]), or more of them ([`spawn_operator`]);
//! its `/metrics`, readiness and log.
//!
//! - CRDs from `crds/` are applied once per test binary ([`install_crds`]).
//! - Its RBAC comes from one place ([`operator_rbac_manifest`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

use super::process::{Watched, temp_dir};
use super::{ControlPlane, eventually};

/// Namespace and ServiceAccount the operator runs as: the Helm chart's, installed as release
/// `acs-identity-operator` in namespace `acs-identity-operator`.
pub const OPERATOR_NAMESPACE: &str = "acs-identity-operator";
pub const OPERATOR_SERVICE_ACCOUNT: &str = "acs-identity-operator";

// ---------------------------------------------------------------- CRDs and RBAC

pub use super::install_crds;

/// The operator's RBAC (ClusterRole + ClusterRoleBinding for
/// `OPERATOR_NAMESPACE/OPERATOR_SERVICE_ACCOUNT`). The one place to switch to the Helm
/// chart's rendered RBAC.
pub fn operator_rbac_manifest() -> String {
    // Exactly the RBAC the Helm chart renders for its ServiceAccount (namespace and
    // names match OPERATOR_NAMESPACE / OPERATOR_SERVICE_ACCOUNT), so the end-to-end
    // suite proves the chart's RBAC sufficient.
    chart_template(
        OPERATOR_SERVICE_ACCOUNT,
        &["--show-only", "templates/rbac.yaml"],
    )
}

/// `helm template RELEASE <chart> --namespace OPERATOR_NAMESPACE ARGS...`: the chart's
/// manifests as the tests install them.
pub fn chart_template(release: &str, args: &[&str]) -> String {
    let cp = ControlPlane::get();
    let chart = super::repo_root().join("charts/acs-identity-operator");
    let (ok, out, err) = super::run_with_stdin(
        cp.helm()
            .args([
                "template",
                release,
                chart.to_str().expect("chart path"),
                "--namespace",
                OPERATOR_NAMESPACE,
            ])
            .args(args),
        None,
    );
    assert!(ok, "helm template {release} {args:?} failed: {err}");
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
/// after `run --kubeconfig K --metrics-addr 127.0.0.1:0 --log-format json
/// --allow-insecure-endpoints` (the emulators speak plain http); returns once
/// its admin server is listening (not necessarily ready: a standby waits for its Lease).
pub async fn spawn_operator(extra_args: &[&str], log_prefix: &str) -> Operator {
    spawn_operator_as(&operator_kubeconfig(), extra_args, log_prefix).await
}

/// Whether an operator process may speak plain http to ACS endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `--allow-insecure-endpoints`, set explicitly: the emulators of the tests speak plain
    /// http on loopback, which the operator refuses by default.
    PlainHttpAllowed,
    /// The production default: https only.
    HttpsOnly,
}

/// [`spawn_operator`] with another identity's kubeconfig (e.g. a ServiceAccount under
/// differently rendered RBAC).
pub async fn spawn_operator_as(
    kubeconfig: &Path,
    extra_args: &[&str],
    log_prefix: &str,
) -> Operator {
    spawn_operator_with(
        kubeconfig,
        Endpoints::PlainHttpAllowed,
        extra_args,
        log_prefix,
    )
    .await
}

/// The one place operator processes of the tests start: `run --kubeconfig K
/// --metrics-addr 127.0.0.1:0 --log-format json`, `--allow-insecure-endpoints` unless
/// `endpoints` is [`Endpoints::HttpsOnly`], then `extra_args`.
pub async fn spawn_operator_with(
    kubeconfig: &Path,
    endpoints: Endpoints,
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
    if endpoints == Endpoints::PlainHttpAllowed
        && !extra_args.contains(&"--allow-insecure-endpoints")
    {
        args.push("--allow-insecure-endpoints".into());
    }
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
