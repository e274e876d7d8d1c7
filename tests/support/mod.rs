//! Test support: a real local control plane (etcd + kube-apiserver +
//! kube-controller-manager) per test binary, a fresh namespace per test, an admin
//! client, and clients that act as a ServiceAccount (TokenRequest API) so that code can
//! run under exactly the RBAC a Role grants.
//!
//! Set `ACS_TEST_KUBECONFIG` to run against an already running control plane (for
//! example one from `make cluster-up`); otherwise the first test of a binary starts one
//! with `hack/controlplane/up.sh`, whose watchdog stops it when the binary exits, even by
//! panic or signal.
//!
//! The one test world, in small modules:
//! - [`process`]: child processes under a watchdog, kept log directories;
//! - [`emulator`]: an ACS emulator in process or as a process, with a typed admin client;
//! - [`signing`]: a raw ACS client that signs as the SDKs do (for the emulator's own tests);
//! - [`operator`]: operator processes as the Helm chart's ServiceAccount, metrics, logs;
//! - [`world`]: a namespace + emulator + credentials + service + operator, and helpers
//!   (create an identity, wait for a condition by watch, tokens, Secret data, events, the
//!   leak check).
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod counted;
pub mod emulator;
pub mod metrics;
pub mod operator;
pub mod process;
pub mod signing;
pub mod world;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// A running control plane, shared by all tests of one binary.
pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    /// Directory holding etcd, kube-apiserver, kube-controller-manager, kubectl, helm.
    pub bin_dir: PathBuf,
    pub k8s_version: String,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scripts_dir() -> PathBuf {
    repo_root().join("hack/controlplane")
}

fn pinned_version(key: &str) -> String {
    let versions = std::fs::read_to_string(scripts_dir().join("versions.env"))
        .expect("read hack/controlplane/versions.env");
    versions
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing from versions.env"))
        .trim()
        .to_string()
}

/// The directory with `promtool` and `prometheus`, built (once, cached) by
/// `hack/prometheus/build.sh` from the version pinned in `hack/prometheus/versions.env`.
pub fn prometheus_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let build = Command::new(repo_root().join("hack/prometheus/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run hack/prometheus/build.sh");
        assert!(build.status.success(), "building Prometheus failed");
        let stdout = String::from_utf8_lossy(&build.stdout);
        PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
    })
    .clone()
}

impl ControlPlane {
    /// The binary's control plane, started on first use.
    pub fn get() -> &'static ControlPlane {
        CONTROL_PLANE.get_or_init(|| {
            let k8s_version = pinned_version("K8S_VERSION");
            let build = Command::new(scripts_dir().join("build.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run hack/controlplane/build.sh");
            assert!(build.status.success(), "building the control plane failed");
            let bin_dir = PathBuf::from(String::from_utf8_lossy(&build.stdout).trim());
            if let Ok(path) = std::env::var("ACS_TEST_KUBECONFIG") {
                return ControlPlane {
                    kubeconfig: PathBuf::from(path),
                    bin_dir,
                    k8s_version,
                };
            }
            let out = Command::new(scripts_dir().join("up.sh"))
                .args(["--owner-pid", &std::process::id().to_string()])
                .stderr(Stdio::inherit())
                .output()
                .expect("run hack/controlplane/up.sh");
            assert!(
                out.status.success(),
                "starting the control plane failed (see the line above)"
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let last = stdout.lines().last().unwrap_or_default();
            let kubeconfig = last.strip_prefix("export KUBECONFIG=").unwrap_or_else(|| {
                panic!("up.sh's last line is not `export KUBECONFIG=...`: {last:?}")
            });
            ControlPlane {
                kubeconfig: PathBuf::from(kubeconfig),
                bin_dir,
                k8s_version,
            }
        })
    }

    /// An admin client (client certificate in `system:masters`). Build one per test:
    /// a client is bound to the tokio runtime that created it.
    pub async fn admin_client(&self) -> Client {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// An admin client that counts its own requests (for an operator whose API cost a
    /// test measures).
    pub async fn counted_admin_client(&self) -> (Client, counted::RequestCounter) {
        counted::counted_client(config_from_kubeconfig(&self.kubeconfig).await)
    }

    /// `kubectl` from the pinned build, pointed at this control plane.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("helm"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Runs kubectl with `args` and stdin; returns (success, stdout, stderr).
    pub fn kubectl_run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        run_with_stdin(self.kubectl().args(args), stdin)
    }

    /// A kubeconfig file that authenticates as ServiceAccount `namespace/name` with a
    /// token from the TokenRequest API, for a process (the operator) run under that RBAC.
    pub async fn service_account_kubeconfig(
        &self,
        admin: &Client,
        namespace: &str,
        name: &str,
        dir: &Path,
    ) -> PathBuf {
        let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
        let tr = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &tr)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
            .status
            .and_then(|s| s.token)
            .expect("TokenRequest status has a token");
        let admin_cfg = Kubeconfig::read_from(&self.kubeconfig).expect("read admin kubeconfig");
        let cluster = &admin_cfg.clusters[0]
            .cluster
            .as_ref()
            .expect("cluster entry");
        let server = cluster.server.clone().expect("server");
        let ca = cluster
            .certificate_authority
            .clone()
            .expect("certificate-authority");
        let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context: {{cluster: local, user: sa, namespace: {namespace}}}\n\
             current-context: sa\n"
        );
        std::fs::write(&path, text).expect("write service-account kubeconfig");
        path
    }

    /// A new ServiceAccount `namespace/name`, bound to a Role of the same name granting
    /// `rules` (JSON, as in a Role); act as it with [`ControlPlane::service_account_client`]
    /// or [`ControlPlane::service_account_kubeconfig`].
    pub async fn service_account_with_role(
        &self,
        admin: &Client,
        namespace: &str,
        name: &str,
        rules: serde_json::Value,
    ) {
        let pp = PostParams::default();
        let sa: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
            .create(&pp, &sa)
            .await
            .unwrap_or_else(|e| panic!("create ServiceAccount {namespace}/{name}: {e}"));
        let role: Role =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "rules": rules}))
                .unwrap_or_else(|e| panic!("Role rules {rules}: {e}"));
        Api::<Role>::namespaced(admin.clone(), namespace)
            .create(&pp, &role)
            .await
            .unwrap_or_else(|e| panic!("create Role {namespace}/{name}: {e}"));
        let binding: RoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(admin.clone(), namespace)
            .create(&pp, &binding)
            .await
            .unwrap_or_else(|e| panic!("create RoleBinding {namespace}/{name}: {e}"));
    }

    /// A client that authenticates as ServiceAccount `namespace/name`.
    pub async fn service_account_client(
        &self,
        admin: &Client,
        namespace: &str,
        name: &str,
        dir: &Path,
    ) -> Client {
        let path = self
            .service_account_kubeconfig(admin, namespace, name, dir)
            .await;
        client_from_kubeconfig(&path).await
    }
}

pub async fn client_from_kubeconfig(path: &Path) -> Client {
    Client::try_from(config_from_kubeconfig(path).await).expect("build kube client")
}

pub async fn config_from_kubeconfig(path: &Path) -> Config {
    let kc = Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()))
}

pub fn run_with_stdin(cmd: &mut Command, stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait for command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Applies the CRDs from `crds/` once per test binary and waits until they are
/// Established. Server-side apply with forced conflicts, so test binaries sharing one
/// control plane (and the chart test's helm release that adopts the CRDs) never trip
/// over each other's field managers.
pub fn install_crds(cp: &ControlPlane) {
    static CRDS: OnceLock<()> = OnceLock::new();
    CRDS.get_or_init(|| {
        let dir = repo_root().join("crds");
        let dir = dir.to_str().expect("utf-8 path");
        let (ok, _, err) = cp.kubectl_run(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=acs-tests",
                "-f",
                dir,
            ],
            None,
        );
        assert!(ok, "kubectl apply -f crds/: {err}");
        let (ok, _, err) = cp.kubectl_run(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                dir,
            ],
            None,
        );
        assert!(ok, "CRDs not Established: {err}");
    });
}

/// A namespace of its own for one test; deleted (without waiting) when dropped.
pub struct TestNamespace {
    pub name: String,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestNamespace {
    pub async fn create(cp: &ControlPlane, client: &Client, prefix: &str) -> TestNamespace {
        let n = NS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"acs-operator.dev/test": "true"}}
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace {
            name,
            kubectl: cp.bin_dir.join("kubectl"),
            kubeconfig: cp.kubeconfig.clone(),
        }
    }

    pub async fn delete(&self, client: &Client) {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Best effort, synchronous (Drop can't await); the control plane is temporary anyway.
        let _ = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `secs` seconds
/// with `what` in the message.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
