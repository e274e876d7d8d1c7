//! Proves the local control plane is real: CRD admission, garbage collection, RBAC,
//! version stamping, helm, and the start/stop scripts' promises.

mod support;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::{ControlPlane, TestNamespace, eventually};

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.harness.acs-operator.dev
spec:
  group: harness.acs-operator.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
"#;

#[tokio::test]
async fn crd_becomes_established_and_its_schema_rejects_bad_objects() {
    let cp = ControlPlane::get();
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "harness-crd").await;

    let (ok, _, err) = cp.kubectl_run(&["apply", "--server-side", "-f", "-"], Some(WIDGET_CRD));
    assert!(ok, "kubectl apply CRD: {err}");
    let (ok, _, err) = cp.kubectl_run(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/widgets.harness.acs-operator.dev",
        ],
        None,
    );
    assert!(ok, "CRD not Established: {err}");

    let bad = format!(
        "apiVersion: harness.acs-operator.dev/v1\nkind: Widget\nmetadata: {{name: bad, namespace: {}}}\nspec: {{size: 0}}\n",
        ns.name
    );
    let (ok, _, err) = cp.kubectl_run(&["create", "-f", "-"], Some(&bad));
    assert!(!ok, "a Widget with size 0 was accepted");
    assert!(
        err.contains("spec.size") && err.contains("should be greater than or equal to 1"),
        "unexpected rejection: {err}"
    );

    let good = bad
        .replace("name: bad", "name: good")
        .replace("size: 0", "size: 3");
    let (ok, _, err) = cp.kubectl_run(&["create", "-f", "-"], Some(&good));
    assert!(ok, "a valid Widget was refused: {err}");
}

#[tokio::test]
async fn owned_objects_are_garbage_collected_after_their_owner() {
    let cp = ControlPlane::get();
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "harness-gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);

    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap();
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let dependent: ConfigMap = serde_json::from_value(json!({"metadata": {
        "name": "dependent",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid.unwrap()}]
    }}))
    .unwrap();
    cms.create(&PostParams::default(), &dependent)
        .await
        .unwrap();

    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually(
        90,
        "the garbage collector to delete the dependent ConfigMap",
        || {
            let cms = cms.clone();
            async move {
                cms.get_opt("dependent")
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn service_account_client_gets_exactly_what_its_role_allows() {
    let cp = ControlPlane::get();
    let admin = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &admin, "harness-rbac").await;
    cp.service_account_with_role(
        &admin,
        &ns.name,
        "reader",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sa_client = cp
        .service_account_client(&admin, &ns.name, "reader", dir.path())
        .await;
    Api::<ConfigMap>::namespaced(sa_client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .expect("the Role allows listing ConfigMaps");
    let denied = Api::<Secret>::namespaced(sa_client.clone(), &ns.name)
        .list(&ListParams::default())
        .await;
    match denied {
        Err(kube::Error::Api(status)) if status.code == 403 => {
            assert!(
                status.message.contains("system:serviceaccount:"),
                "{}",
                status.message
            )
        }
        other => panic!("listing Secrets should be forbidden, got {other:?}"),
    }
    let other_ns = Api::<ConfigMap>::namespaced(sa_client, "default")
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(other_ns, Err(kube::Error::Api(s)) if s.code == 403),
        "a Role must not reach another namespace"
    );
}

#[tokio::test]
async fn apiserver_reports_the_pinned_version() {
    let cp = ControlPlane::get();
    let info = cp.admin_client().await.apiserver_version().await.unwrap();
    assert_eq!(info.git_version, cp.k8s_version);
    let minor = cp.k8s_version.split('.').nth(1).unwrap();
    assert_eq!(info.minor.trim_end_matches('+'), minor);
}

#[tokio::test]
async fn helm_runs_from_the_cache() {
    let cp = ControlPlane::get();
    let (ok, out, err) = support::run_with_stdin(cp.helm().args(["version", "--short"]), None);
    assert!(ok, "helm version failed: {err}");
    let pinned =
        std::fs::read_to_string(support::repo_root().join("hack/controlplane/versions.env"))
            .unwrap();
    let want = pinned
        .lines()
        .find_map(|l| l.strip_prefix("HELM_VERSION="))
        .unwrap();
    assert!(out.starts_with(want), "helm reports {out:?}, pinned {want}");
    assert!(cp.bin_dir.join("helm").starts_with(&cp.bin_dir));
}

/// A second control plane starts beside the shared one and `down.sh` leaves no process
/// and no directory behind.
#[tokio::test]
async fn a_second_control_plane_starts_beside_and_stops_without_leftovers() {
    let cp = ControlPlane::get();
    let scripts = support::repo_root().join("hack/controlplane");
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("cp");
    let out = std::process::Command::new(scripts.join("up.sh"))
        .args(["--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "second up.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let kubeconfig = last
        .strip_prefix("export KUBECONFIG=")
        .expect("last stdout line is export KUBECONFIG=...");
    assert_ne!(std::path::Path::new(kubeconfig), cp.kubeconfig.as_path());
    let second = support::client_from_kubeconfig(std::path::Path::new(kubeconfig)).await;
    assert_eq!(
        second.apiserver_version().await.unwrap().git_version,
        cp.k8s_version
    );

    let pids: Vec<i32> = std::fs::read_to_string(dir.join("pids"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(
        pids.len(),
        3,
        "etcd, apiserver and controller-manager recorded"
    );
    let down = std::process::Command::new(scripts.join("down.sh"))
        .args(["--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(down.status.success());
    assert!(!dir.exists(), "down.sh left {} behind", dir.display());
    for pid in pids {
        // A zombie has exited; only its parent (here the container's init) can reap it.
        let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let running = state
            .lines()
            .any(|l| l.starts_with("State:") && !l.contains("zombie"));
        assert!(!running, "process {pid} still running after down.sh");
    }
}

/// A port already in use fails start-up with one line naming it, leaving nothing running.
#[tokio::test]
async fn a_port_in_use_is_reported_and_nothing_is_left() {
    let _ = ControlPlane::get(); // binaries built
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("cp");
    let out = std::process::Command::new(support::repo_root().join("hack/controlplane/up.sh"))
        .args(["--dir", dir.to_str().unwrap()])
        .env("APISERVER_PORT", port.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("port 127.0.0.1:{port} is already in use")),
        "{stderr}"
    );
    assert!(
        !dir.exists(),
        "a failed start left {} behind",
        dir.display()
    );
}

/// A component that exits during start-up is named with its log in one line; nothing
/// keeps running and only the logs stay behind.
#[tokio::test]
async fn a_component_exiting_at_start_is_named_with_its_log_and_nothing_is_left() {
    let _ = ControlPlane::get(); // binaries built
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("cp");
    let out = std::process::Command::new(support::repo_root().join("hack/controlplane/up.sh"))
        .args(["--dir", dir.to_str().unwrap()])
        .env("KUBE_APISERVER_EXTRA_ARGS", "--no-such-flag")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = dir.join("kube-apiserver.log");
    let line = format!(
        "kube-apiserver exited during start-up; log: {}",
        log.display()
    );
    assert!(stderr.contains(&line), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "{stderr}"
    );
    let log_text = std::fs::read_to_string(&log).expect("the named log is kept");
    assert!(log_text.contains("no-such-flag"), "{log_text}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        left.iter().all(|f| f.ends_with(".log")),
        "left behind: {left:?}"
    );
    // etcd was started first and must be gone too: no process has this dir open.
    let (_, ps, _) =
        support::run_with_stdin(std::process::Command::new("ps").args(["-eo", "args"]), None);
    assert!(
        !ps.contains(dir.to_str().unwrap()),
        "a process still uses {}",
        dir.display()
    );
}
