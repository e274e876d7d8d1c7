//! The Helm chart, checked the way a platform team meets it: `helm lint`, the rendered
//! manifests against a real API server (`kubectl apply --dry-run=server`), an install,
//! upgrade and uninstall, least-privilege RBAC when namespaces are restricted, CRDs equal
//! to the generated ones, and a values schema that refuses bad input with a readable
//! message. Pods never run on the local control plane, so nothing waits for them.

mod support;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;
use support::{ControlPlane, TestNamespace, eventually, repo_root, run_with_stdin};

const CCS_API: &str = "acs-operator.dev/v1alpha1/ClusterCommunicationService";
const WRITE_VERBS: &[&str] = &[
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "*",
];

fn chart_dir() -> PathBuf {
    repo_root().join("charts/acs-identity-operator")
}

fn chart() -> String {
    chart_dir().display().to_string()
}

/// Runs helm; returns (success, stdout, stderr).
fn helm(cp: &ControlPlane, args: &[&str]) -> (bool, String, String) {
    run_with_stdin(cp.helm().args(args), None)
}

/// `helm template` rendered for the control plane's Kubernetes version (a helm built
/// from Go modules otherwise assumes v1.20 and fails the chart's kubeVersion).
fn template(cp: &ControlPlane, release: &str, namespace: &str, extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
        "--kube-version",
        &cp.k8s_version,
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = helm(cp, &args);
    assert!(ok, "helm template {extra:?} failed:\n{err}");
    out
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind_of(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind_of(d) == kind).collect()
}

fn str_list(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A values file in a temp dir that lives as long as the returned guard.
fn values_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("values.yaml");
    std::fs::write(&path, text).expect("write values");
    let p = path.display().to_string();
    (dir, p)
}

fn restricted_values(namespaces: &[&str], ccs_name: &str) -> String {
    format!(
        "watchNamespaces: [{}]\n\
         serviceMonitor: {{enabled: false}}\n\
         podDisruptionBudget: {{enabled: true}}\n\
         clusterCommunicationService:\n  create: true\n  name: {ccs_name}\n  apiVersion: \"2023-10-01\"\n\
         \x20 connectionStringSecretRef: {{name: acs-connection, key: connectionString}}\n\
         \x20 namespaceSelector:\n    matchLabels: {{acs-operator.dev/test: \"true\"}}\n",
        namespaces.join(", ")
    )
}

fn dry_run_server(cp: &ControlPlane, manifests: &str) {
    let (ok, out, err) = cp.kubectl_run(&["apply", "--dry-run=server", "-f", "-"], Some(manifests));
    assert!(
        ok,
        "server-side dry run refused the rendered chart:\n{err}\n{out}"
    );
}

fn kubectl_json(cp: &ControlPlane, args: &[&str]) -> Option<serde_json::Value> {
    let mut all = vec!["get", "-o", "json"];
    all.extend_from_slice(args);
    let (ok, out, _) = cp.kubectl_run(&all, None);
    ok.then(|| serde_json::from_str(&out).expect("kubectl JSON"))
}

fn can_i(cp: &ControlPlane, sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let mut args = vec!["auth", "can-i", verb, resource, "--as", sa];
    match ns {
        Some(n) => args.extend_from_slice(&["-n", n]),
        None => args.push("--all-namespaces"),
    }
    let (_, out, _) = cp.kubectl_run(&args, None);
    out.trim() == "yes"
}

#[test]
fn helm_lint_passes_for_default_and_restricted_values() {
    let cp = ControlPlane::get();
    let (ok, out, err) = helm(
        cp,
        &[
            "lint",
            "--strict",
            &chart(),
            "--kube-version",
            &cp.k8s_version,
        ],
    );
    assert!(ok, "helm lint (defaults):\n{out}\n{err}");
    let (_dir, values) = values_file(&restricted_values(&["team-a", "team-b"], "shared"));
    let (ok, out, err) = helm(
        cp,
        &[
            "lint",
            "--strict",
            &chart(),
            "--kube-version",
            &cp.k8s_version,
            "-f",
            &values,
            "--set",
            "serviceMonitor.enabled=true,prometheusRule.enabled=true",
        ],
    );
    assert!(ok, "helm lint (restricted namespaces):\n{out}\n{err}");
}

#[tokio::test]
async fn default_render_is_accepted_by_the_api_server() {
    let cp = ControlPlane::get();
    let admin = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &admin, "chart-default").await;
    let rendered = template(cp, "dry", &ns.name, &[]);
    let d = docs(&rendered);
    assert_eq!(of_kind(&d, "CustomResourceDefinition").len(), 3);
    assert_eq!(of_kind(&d, "Deployment").len(), 1);
    assert!(
        of_kind(&d, "ServiceMonitor").is_empty(),
        "ServiceMonitor is opt-in"
    );
    assert!(
        of_kind(&d, "PrometheusRule").is_empty(),
        "PrometheusRule is opt-in"
    );
    assert!(
        of_kind(&d, "PodDisruptionBudget").is_empty(),
        "PDB is opt-in"
    );
    dry_run_server(cp, &rendered);
}

#[tokio::test]
async fn restricted_render_with_pdb_and_cluster_service_is_accepted_by_the_api_server() {
    let cp = ControlPlane::get();
    support::install_crds(cp);
    let admin = cp.admin_client().await;
    let release_ns = TestNamespace::create(cp, &admin, "chart-rel").await;
    let team_a = TestNamespace::create(cp, &admin, "chart-ta").await;
    let team_b = TestNamespace::create(cp, &admin, "chart-tb").await;
    let (_dir, values) = values_file(&restricted_values(
        &[&team_a.name, &team_b.name],
        &format!("chart-dry-{}", std::process::id()),
    ));
    // --api-versions stands in for the registered CRD: the chart only renders the
    // ClusterCommunicationService when the API exists.
    let rendered = template(
        cp,
        "dry",
        &release_ns.name,
        &["-f", &values, "--api-versions", CCS_API],
    );
    let d = docs(&rendered);
    assert_eq!(of_kind(&d, "PodDisruptionBudget").len(), 1);
    assert_eq!(of_kind(&d, "ClusterCommunicationService").len(), 1);
    assert!(of_kind(&d, "ServiceMonitor").is_empty());
    let role_namespaces: Vec<&str> = of_kind(&d, "Role")
        .iter()
        .filter_map(|r| r["metadata"]["namespace"].as_str())
        .collect();
    for ns in [&team_a.name, &team_b.name] {
        assert!(
            role_namespaces.contains(&ns.as_str()),
            "no Role in {ns}: {role_namespaces:?}"
        );
    }
    dry_run_server(cp, &rendered);
}

/// With watchNamespaces set, no ClusterRole may let the operator write Secrets anywhere:
/// a compromised operator could otherwise overwrite any workload's Secret.
#[test]
fn restricted_namespaces_grant_no_cluster_wide_secret_writes() {
    let cp = ControlPlane::get();
    fn secret_writes(role: &Value) -> Vec<String> {
        let mut found = Vec::new();
        for rule in role["rules"].as_sequence().into_iter().flatten() {
            let groups = str_list(&rule["apiGroups"]);
            let resources = str_list(&rule["resources"]);
            let verbs = str_list(&rule["verbs"]);
            let core = groups.iter().any(|g| g.is_empty() || *g == "*");
            let secrets = resources.iter().any(|r| *r == "secrets" || *r == "*");
            let writes: Vec<&str> = verbs
                .iter()
                .copied()
                .filter(|v| WRITE_VERBS.contains(v))
                .collect();
            if core && secrets && !writes.is_empty() {
                found.push(format!("{resources:?} {writes:?}"));
            }
        }
        found
    }
    let (_dir, values) = values_file(&restricted_values(&["team-a", "team-b"], "shared"));
    let d = docs(&template(cp, "rbac", "acs-system", &["-f", &values]));
    let cluster_roles = of_kind(&d, "ClusterRole");
    assert!(!cluster_roles.is_empty());
    for cr in &cluster_roles {
        let w = secret_writes(cr);
        assert!(
            w.is_empty(),
            "ClusterRole {} grants Secret writes cluster-wide: {w:?}",
            cr["metadata"]["name"].as_str().unwrap_or("?")
        );
    }
    // The cluster-scoped reads stay in the operator's ClusterRole.
    let operator_cr = cluster_roles
        .iter()
        .find(|r| r["metadata"]["name"] == "rbac-acs-identity-operator")
        .expect("operator ClusterRole");
    let resources: Vec<&str> = operator_cr["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|r| str_list(&r["resources"]))
        .collect();
    for r in ["clustercommunicationservices", "namespaces"] {
        assert!(
            resources.contains(&r),
            "ClusterRole lacks {r}: {resources:?}"
        );
    }
    // The write access moved to Roles in exactly the watched namespaces.
    let mut writable: Vec<&str> = of_kind(&d, "Role")
        .into_iter()
        .filter(|r| !secret_writes(r).is_empty())
        .filter_map(|r| r["metadata"]["namespace"].as_str())
        .collect();
    writable.sort();
    assert_eq!(writable, ["team-a", "team-b"]);

    // The check itself must be able to fail: the all-namespaces default does grant it.
    let d = docs(&template(cp, "rbac", "acs-system", &[]));
    assert!(
        of_kind(&d, "ClusterRole")
            .iter()
            .any(|r| !secret_writes(r).is_empty()),
        "default mode should use a ClusterRole with Secret writes"
    );
}

/// The CRD files in the chart are byte-for-byte the generated crds/*.yaml.
fn assert_chart_crds_in_sync() {
    let generated = repo_root().join("crds");
    let in_chart = chart_dir().join("files/crds");
    let fix = "run hack/sync-chart-crds.sh and commit the chart";
    assert_eq!(
        crd_names(&generated),
        crd_names(&in_chart),
        "CRD file sets differ; {fix}"
    );
    for name in crd_names(&generated) {
        let want = std::fs::read_to_string(generated.join(&name)).unwrap();
        let have = std::fs::read_to_string(in_chart.join(&name)).unwrap();
        assert!(
            want == have,
            "charts/acs-identity-operator/files/crds/{name} differs from crds/{name}; {fix}"
        );
    }
    let (ok, _, err) = run_with_stdin(
        std::process::Command::new(repo_root().join("hack/sync-chart-crds.sh")).arg("--check"),
        None,
    );
    assert!(ok, "hack/sync-chart-crds.sh --check: {err}");
}

fn crd_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn chart_crds_equal_generated_crds() {
    let cp = ControlPlane::get();
    let generated = repo_root().join("crds");
    assert_chart_crds_in_sync();
    // What Helm renders is the same schema: only labels and the keep policy are added.
    let rendered = docs(&template(cp, "crds", "acs-system", &[]));
    let rendered = of_kind(&rendered, "CustomResourceDefinition");
    assert_eq!(rendered.len(), crd_names(&generated).len());
    for name in crd_names(&generated) {
        let want: Value =
            serde_yaml::from_str(&std::fs::read_to_string(generated.join(&name)).unwrap()).unwrap();
        let have = rendered
            .iter()
            .find(|c| c["metadata"]["name"] == want["metadata"]["name"])
            .unwrap_or_else(|| panic!("{name} not rendered"));
        assert_eq!(
            have["spec"], want["spec"],
            "rendered spec of {name} differs"
        );
        assert_eq!(
            have["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        assert_eq!(
            have["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm"
        );
    }
    let no_keep = docs(&template(
        cp,
        "crds",
        "acs-system",
        &["--set", "crds.keep=false"],
    ));
    for c in of_kind(&no_keep, "CustomResourceDefinition") {
        assert!(c["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
    }
    let none = docs(&template(
        cp,
        "crds",
        "acs-system",
        &["--set", "crds.install=false"],
    ));
    assert!(of_kind(&none, "CustomResourceDefinition").is_empty());
}

#[test]
fn values_schema_rejects_bad_values_readably() {
    let cp = ControlPlane::get();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--set-string", "replicaCount=two"],
            &["replicaCount", "want integer"],
        ),
        (
            &["--set", "replicasCount=2"],
            &["replicasCount", "not allowed"],
        ),
        (&["--set", "logging.format=xml"], &["/logging/format"]),
        (
            &["--set", "watchNamespaces[0]=Team_A"],
            &["/watchNamespaces/0"],
        ),
        (
            &["--set", "clusterCommunicationService.create=true"],
            &["connectionStringSecretRef/name"],
        ),
        (
            &["--set", "maxConcurrentReconciles=0"],
            &["/maxConcurrentReconciles"],
        ),
        (
            &["--set-string", "minTokenInterval=15"],
            &["/minTokenInterval"],
        ),
        (
            &["--set-string", "allowInsecureEndpoints=yes"],
            &["/allowInsecureEndpoints"],
        ),
        (
            &["--set", "clusterResourceNamespace=Acs_System"],
            &["/clusterResourceNamespace"],
        ),
        (
            &["--set", "networkPolicy.acsPorts[0]=70000"],
            &["/networkPolicy/acsPorts/0"],
        ),
        (
            &[
                "--set",
                "workloadIdentity.authorityHost=http://login.example.test",
            ],
            &["/workloadIdentity/authorityHost"],
        ),
        (
            &["--set", "workloadIdentity.tokenExpirationSeconds=600"],
            &["/workloadIdentity/tokenExpirationSeconds"],
        ),
        // Credential Secrets outside the cluster resource namespace are gone for good.
        (
            &["--set", "rbac.credentialNamespaces[0]=team-a"],
            &["credentialNamespaces", "not allowed"],
        ),
    ];
    for (set, expect) in cases {
        let chart = chart();
        let mut args = vec![
            "template",
            "bad",
            chart.as_str(),
            "--kube-version",
            &cp.k8s_version,
        ];
        args.extend_from_slice(set);
        let (ok, _, err) = helm(cp, &args);
        assert!(!ok, "helm template {set:?} should fail");
        for e in *expect {
            assert!(
                err.contains(e),
                "error for {set:?} should mention {e:?}:\n{err}"
            );
        }
    }
    // Several active replicas without a Lease would issue duplicate tokens.
    let (ok, _, err) = helm(
        cp,
        &[
            "template",
            "bad",
            &chart(),
            "--kube-version",
            &cp.k8s_version,
            "--set",
            "replicaCount=2,leaderElection.enabled=false",
        ],
    );
    assert!(!ok && err.contains("leaderElection.enabled"), "{err}");
}

fn deployment_args(docs: &[Value]) -> Vec<String> {
    let deploy = of_kind(docs, "Deployment")[0];
    str_list(&deploy["spec"]["template"]["spec"]["containers"][0]["args"])
        .into_iter()
        .map(String::from)
        .collect()
}

/// Roles and ClusterRoles that let the operator read Secrets, by namespace (`*` for a
/// ClusterRole).
fn secret_readers(docs: &[Value]) -> Vec<String> {
    let reads = |role: &Value| {
        role["rules"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|rule| {
                let core = str_list(&rule["apiGroups"])
                    .iter()
                    .any(|g| g.is_empty() || *g == "*");
                let secrets = str_list(&rule["resources"])
                    .iter()
                    .any(|r| *r == "secrets" || *r == "*");
                let read = str_list(&rule["verbs"])
                    .iter()
                    .any(|v| ["get", "list", "watch", "*"].contains(v));
                core && secrets && read
            })
    };
    let mut out: Vec<String> = of_kind(docs, "ClusterRole")
        .into_iter()
        .filter(|r| reads(r))
        .map(|_| "*".to_string())
        .chain(
            of_kind(docs, "Role")
                .into_iter()
                .filter(|r| reads(r))
                .filter_map(|r| r["metadata"]["namespace"].as_str().map(String::from)),
        )
        .collect();
    out.sort();
    out
}

/// The operator's new flags come from values: the cluster resource namespace (default the
/// release namespace), insecure endpoints (off), the reconcile bound and the token floor.
#[test]
fn deployment_passes_the_tenant_safety_flags() {
    let cp = ControlPlane::get();
    let d = docs(&template(cp, "flags", "acs-system", &[]));
    let args = deployment_args(&d);
    for want in [
        "--cluster-resource-namespace=acs-system",
        "--max-concurrent-reconciles=16",
        "--min-token-interval=15s",
        // 5 s before the kubelet's SIGKILL (terminationGracePeriodSeconds 30).
        "--shutdown-timeout=25s",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--allow-insecure-endpoints")),
        "https only by default: {args:?}"
    );
    let env = &of_kind(&d, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"];
    let pod_ns = env
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "POD_NAMESPACE")
        .expect("POD_NAMESPACE env");
    assert_eq!(
        pod_ns["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );

    let d = docs(&template(
        cp,
        "flags",
        "acs-system",
        &[
            "--set",
            "clusterResourceNamespace=acs-creds,allowInsecureEndpoints=true,maxConcurrentReconciles=4,minTokenInterval=1m,terminationGracePeriodSeconds=60",
        ],
    ));
    let args = deployment_args(&d);
    for want in [
        "--cluster-resource-namespace=acs-creds",
        "--allow-insecure-endpoints",
        "--max-concurrent-reconciles=4",
        "--min-token-interval=1m",
        "--shutdown-timeout=55s",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
}

/// In restricted mode the operator reads Secrets only in the watched namespaces and the
/// cluster resource namespace; the chart's ClusterCommunicationService must keep its
/// credentials there.
#[test]
fn cluster_credentials_are_readable_only_in_the_cluster_resource_namespace() {
    let cp = ControlPlane::get();
    let (_dir, values) = values_file(&restricted_values(&["team-a", "team-b"], "shared"));
    // (clusterResourceNamespace, Secret readers, the chart's service's Secret namespace);
    // a watched cluster resource namespace needs no extra Role.
    let cases: [(&str, [&str; 3], &str); 3] = [
        ("", ["acs-system", "team-a", "team-b"], "acs-system"),
        ("acs-creds", ["acs-creds", "team-a", "team-b"], "acs-creds"),
        ("team-a", ["team-a", "team-a", "team-b"], "team-a"),
    ];
    for (crn, readers, secret_ns) in cases {
        let set = format!("clusterResourceNamespace={crn}");
        let d = docs(&template(
            cp,
            "creds",
            "acs-system",
            &["-f", &values, "--api-versions", CCS_API, "--set", &set],
        ));
        let mut want: Vec<&str> = readers.to_vec();
        want.dedup();
        assert_eq!(secret_readers(&d), want, "{set}");
        let ccs = of_kind(&d, "ClusterCommunicationService")[0];
        assert_eq!(
            ccs["spec"]["connectionStringSecretRef"]["namespace"], secret_ns,
            "{set}"
        );
    }

    // A chart-made ClusterCommunicationService with its Secret elsewhere would never be
    // used: refused at render time, naming both namespaces.
    let chart = chart();
    let (ok, _, err) = helm(
        cp,
        &[
            "template",
            "creds",
            chart.as_str(),
            "--namespace",
            "acs-system",
            "--kube-version",
            &cp.k8s_version,
            "-f",
            &values,
            "--api-versions",
            CCS_API,
            "--set",
            "clusterCommunicationService.connectionStringSecretRef.namespace=team-b",
        ],
    );
    assert!(
        !ok,
        "a credential Secret outside the cluster resource namespace rendered"
    );
    assert!(
        err.contains("\"team-b\"")
            && err.contains("\"acs-system\"")
            && err.contains("cluster resource namespace"),
        "{err}"
    );
}

/// Off by default; when enabled the policy lets the operator reach DNS, the API server and
/// ACS over https, and lets scrapes reach the metrics port, and nothing else.
#[tokio::test]
async fn network_policy_is_opt_in_and_accepted_by_the_api_server() {
    let cp = ControlPlane::get();
    assert!(
        of_kind(
            &docs(&template(cp, "np", "acs-system", &[])),
            "NetworkPolicy"
        )
        .is_empty()
    );

    let admin = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &admin, "chart-np").await;
    let (_dir, values) = values_file(
        "networkPolicy:\n  enabled: true\n  apiServer: {cidrs: [10.0.0.1/32]}\n\
         \x20 metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]\n",
    );
    let rendered = template(cp, "np", &ns.name, &["-f", &values]);
    let d = docs(&rendered);
    let policies = of_kind(&d, "NetworkPolicy");
    assert_eq!(policies.len(), 1);
    let spec = &policies[0]["spec"];
    assert_eq!(str_list(&spec["policyTypes"]), ["Ingress", "Egress"]);
    let ports = |rule: &Value| -> Vec<(String, u64)> {
        rule["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["protocol"].as_str().unwrap_or_default().to_string(),
                    p["port"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    };
    let ingress = spec["ingress"].as_sequence().expect("ingress rules");
    assert_eq!(ingress.len(), 1);
    assert_eq!(ports(&ingress[0]), [("TCP".to_string(), 8080)]);
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let egress: Vec<Vec<(String, u64)>> = spec["egress"]
        .as_sequence()
        .expect("egress rules")
        .iter()
        .map(ports)
        .collect();
    let tcp = |p: u64| ("TCP".to_string(), p);
    assert_eq!(
        egress,
        [
            vec![("UDP".to_string(), 53), tcp(53)],
            vec![tcp(443), tcp(6443)],
            vec![tcp(443)],
        ]
    );
    assert_eq!(spec["egress"][1]["to"][0]["ipBlock"]["cidr"], "10.0.0.1/32");
    dry_run_server(cp, &rendered);
}

#[tokio::test]
async fn install_upgrade_uninstall() {
    let cp = ControlPlane::get();
    // The CRDs are cluster-wide and shared with the other test binaries on this control
    // plane, which apply crds/ directly; --take-ownership lets this release adopt them as
    // it would adopt CRDs installed by hand, and crds.keep (the default) leaves them for
    // the others on uninstall. A fresh cluster's first install creates them itself.
    // A stale chart would overwrite the shared CRDs with an old schema: refuse first.
    assert_chart_crds_in_sync();
    support::install_crds(cp);
    let admin = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &admin, "chart-install").await;
    let team = TestNamespace::create(cp, &admin, "chart-team").await;
    let other = TestNamespace::create(cp, &admin, "chart-other").await;
    let release = format!("acs-{}", std::process::id());
    let fullname = format!("{release}-acs-identity-operator");
    let sa = format!("system:serviceaccount:{}:{fullname}", ns.name);
    let ccs = format!("chart-install-{}", std::process::id());

    let (ok, out, err) = helm(
        cp,
        &[
            "install",
            &release,
            &chart(),
            "-n",
            &ns.name,
            "--no-hooks",
            "--take-ownership",
            "--set",
            "image.tag=test",
        ],
    );
    assert!(ok, "helm install:\n{out}\n{err}");

    let deploy = kubectl_json(cp, &["deployment", &fullname, "-n", &ns.name]).expect("Deployment");
    let spec = &deploy["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["image"].as_str().unwrap().ends_with(":test"));
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--leader-elect"), "{args:?}");
    assert!(
        !args.iter().any(|a| a.starts_with("--watch-namespaces")),
        "{args:?}"
    );
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"),
        "{env:?}"
    );
    assert!(
        kubectl_json(
            cp,
            &["service", &format!("{fullname}-metrics"), "-n", &ns.name]
        )
        .is_some()
    );
    assert!(kubectl_json(cp, &["clusterrole", &fullname]).is_some());
    assert!(
        kubectl_json(
            cp,
            &[
                "role",
                &format!("{fullname}-leader-election"),
                "-n",
                &ns.name
            ]
        )
        .is_some()
    );
    assert!(kubectl_json(cp, &["role", &fullname, "-n", &team.name]).is_none());
    // All-namespaces mode: the API server's own authorizer says the SA may write Secrets
    // everywhere, leases only in its own namespace.
    assert!(can_i(cp, &sa, "create", "secrets", Some(&other.name)));
    assert!(can_i(
        cp,
        &sa,
        "update",
        "leases.coordination.k8s.io",
        Some(&ns.name)
    ));
    assert!(!can_i(
        cp,
        &sa,
        "update",
        "leases.coordination.k8s.io",
        Some(&other.name)
    ));

    let set = format!(
        "watchNamespaces={{{}}},replicaCount=3,podDisruptionBudget.enabled=true,\
         clusterCommunicationService.create=true,clusterCommunicationService.name={ccs},\
         clusterCommunicationService.connectionStringSecretRef.name=acs-connection",
        team.name
    );
    let (ok, out, err) = helm(
        cp,
        &[
            "upgrade",
            &release,
            &chart(),
            "-n",
            &ns.name,
            "--no-hooks",
            "--reuse-values",
            "--set",
            &set,
        ],
    );
    assert!(ok, "helm upgrade:\n{out}\n{err}");

    let deploy = kubectl_json(cp, &["deployment", &fullname, "-n", &ns.name]).expect("Deployment");
    assert_eq!(deploy["spec"]["replicas"], 3);
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains(&format!("--watch-namespaces={}", team.name)),
        "{args}"
    );
    assert!(
        args.contains(&format!(
            "--default-service=ClusterCommunicationService/{ccs}"
        )),
        "{args}"
    );
    assert!(kubectl_json(cp, &["role", &fullname, "-n", &team.name]).is_some());
    assert!(kubectl_json(cp, &["poddisruptionbudget", &fullname, "-n", &ns.name]).is_some());
    let svc = kubectl_json(cp, &["clustercommunicationservices.acs-operator.dev", &ccs])
        .expect("ClusterCommunicationService");
    assert_eq!(
        svc["spec"]["connectionStringSecretRef"]["namespace"],
        ns.name.as_str()
    );
    assert_eq!(
        svc["spec"]["connectionStringSecretRef"]["name"],
        "acs-connection"
    );
    let cr = kubectl_json(cp, &["clusterrole", &fullname]).expect("ClusterRole");
    assert!(
        !cr["rules"].to_string().contains("\"secrets\""),
        "{}",
        cr["rules"]
    );
    // Restricted mode: Secret writes only in the watched namespace; credential reads in
    // the cluster resource namespace (default: the release namespace, where the
    // service's Secret lives), no writes there.
    assert!(can_i(cp, &sa, "create", "secrets", Some(&team.name)));
    assert!(!can_i(cp, &sa, "create", "secrets", Some(&other.name)));
    assert!(!can_i(cp, &sa, "get", "secrets", Some(&other.name)));
    assert!(!can_i(cp, &sa, "create", "secrets", None));
    assert!(can_i(cp, &sa, "get", "secrets", Some(&ns.name)));
    assert!(!can_i(cp, &sa, "create", "secrets", Some(&ns.name)));
    // Namespace labels are watched (metadata only) for cluster services' selectors.
    assert!(can_i(cp, &sa, "get", "namespaces", None));
    assert!(can_i(cp, &sa, "watch", "namespaces", None));
    assert!(!can_i(cp, &sa, "delete", "namespaces", None));

    let (ok, out, err) = helm(cp, &["uninstall", &release, "-n", &ns.name, "--no-hooks"]);
    assert!(ok, "helm uninstall:\n{out}\n{err}");
    eventually(30, "release objects to be deleted", || async {
        let gone = kubectl_json(cp, &["deployment", &fullname, "-n", &ns.name]).is_none()
            && kubectl_json(cp, &["clusterrole", &fullname]).is_none()
            && kubectl_json(cp, &["role", &fullname, "-n", &team.name]).is_none()
            && kubectl_json(cp, &["clustercommunicationservices.acs-operator.dev", &ccs]).is_none();
        gone.then_some(())
    })
    .await;
    // crds.keep: the CRDs (and every identity in the cluster) survive the uninstall.
    assert!(
        kubectl_json(cp, &["crd", "communicationidentities.acs-operator.dev"]).is_some(),
        "CRDs must be kept on uninstall"
    );
}

#[test]
fn entra_grants_stay_in_the_cluster_resource_namespace_and_workload_identity_labels_the_pod() {
    let cp = ControlPlane::get();
    let default = docs(&template(cp, "acs", "acs-system", &[]));
    for role in of_kind(&default, "ClusterRole")
        .into_iter()
        .chain(of_kind(&default, "Role"))
    {
        let text = serde_json::to_string(&role["rules"]).unwrap();
        assert!(
            !text.contains("serviceaccounts/token"),
            "no TokenRequest grant by default: {text}"
        );
    }
    let rendered = docs(&template(
        cp,
        "acs",
        "acs-system",
        &[
            "--set",
            "entraId.tokenRequestServiceAccounts[0]=acs-client",
            "--set",
            "workloadIdentity.enabled=true",
            "--set",
            "workloadIdentity.clientId=00000000-0000-0000-0000-000000000000",
            "--set",
            "entraId.namespacedServiceAmbientCredentials=true",
        ],
    ));
    for role in of_kind(&rendered, "ClusterRole") {
        let text = serde_json::to_string(&role["rules"]).unwrap();
        assert!(!text.contains("serviceaccounts/token"), "{text}");
    }
    let grant: Vec<&Value> = of_kind(&rendered, "Role")
        .into_iter()
        .filter(|r| {
            serde_json::to_string(&r["rules"])
                .unwrap()
                .contains("serviceaccounts/token")
        })
        .collect();
    assert_eq!(grant.len(), 1);
    assert_eq!(grant[0]["metadata"]["namespace"], "acs-system");
    assert_eq!(
        str_list(&grant[0]["rules"][0]["resourceNames"]),
        ["acs-client"]
    );
    let deploy = of_kind(&rendered, "Deployment")[0];
    assert_eq!(
        deploy["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    assert!(
        deployment_args(&rendered)
            .contains(&"--namespaced-service-ambient-credentials".to_string())
    );
    let sa = of_kind(&rendered, "ServiceAccount")[0];
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "00000000-0000-0000-0000-000000000000"
    );
    let (ok, _, err) = helm(
        cp,
        &[
            "template",
            "acs",
            &chart(),
            "--set",
            "workloadIdentity.enabled=true",
        ],
    );
    assert!(!ok && err.contains("workloadIdentity.clientId"), "{err}");
}

/// The operator container's env as (name, value) for plain values, and the pod's volumes.
fn operator_env_and_volumes(docs: &[Value]) -> (Vec<(String, String)>, Vec<Value>) {
    let pod = &of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    let volumes = pod["volumes"].as_sequence().cloned().unwrap_or_default();
    (env, volumes)
}

/// `workloadIdentity.projectToken`: where no Azure Workload Identity webhook runs, the
/// chart projects the operator's token and sets the `AZURE_*` environment itself, with
/// the webhook's names; without it (the default, and AKS with the webhook) it adds none.
#[tokio::test]
async fn workload_identity_project_token_adds_the_webhooks_volume_and_env_only_when_asked() {
    const TOKEN_FILE: &str = "/var/run/secrets/azure/tokens/azure-identity-token";
    let cp = ControlPlane::get();
    let admin = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &admin, "chart-wi").await;
    let wi = [
        "--set",
        "workloadIdentity.enabled=true",
        "--set",
        "workloadIdentity.clientId=00000000-0000-0000-0000-0000000000c1",
    ];
    /// A render: its name, its `--set`s, the `AZURE_*` env it must have (in order), and
    /// the projected token's `expirationSeconds` (`None`: no token volume).
    struct Case<'a> {
        name: &'a str,
        set: Vec<&'a str>,
        env: Vec<(&'a str, &'a str)>,
        token_seconds: Option<i64>,
    }
    let cases = vec![
        Case {
            name: "default",
            set: vec![],
            env: vec![],
            token_seconds: None,
        },
        Case {
            name: "webhook (enabled only)",
            set: wi.to_vec(),
            env: vec![],
            token_seconds: None,
        },
        Case {
            name: "projectToken",
            set: [&wi[..], &["--set", "workloadIdentity.projectToken=true"]].concat(),
            env: vec![
                ("AZURE_CLIENT_ID", "00000000-0000-0000-0000-0000000000c1"),
                ("AZURE_FEDERATED_TOKEN_FILE", TOKEN_FILE),
            ],
            token_seconds: Some(3600),
        },
        Case {
            name: "projectToken, tenant, authority, lifetime, extraCA",
            set: [
                &wi[..],
                &[
                    "--set",
                    "workloadIdentity.projectToken=true",
                    "--set",
                    "workloadIdentity.tenantId=t-1",
                    "--set",
                    "workloadIdentity.authorityHost=https://login.example.test/",
                    "--set",
                    "workloadIdentity.tokenExpirationSeconds=7200",
                    "--set",
                    "extraCA.configMapName=acs-ca",
                ],
            ]
            .concat(),
            env: vec![
                ("AZURE_CLIENT_ID", "00000000-0000-0000-0000-0000000000c1"),
                ("AZURE_TENANT_ID", "t-1"),
                ("AZURE_FEDERATED_TOKEN_FILE", TOKEN_FILE),
                ("AZURE_AUTHORITY_HOST", "https://login.example.test/"),
            ],
            token_seconds: Some(7200),
        },
    ];
    for Case {
        name,
        set,
        env: want_env,
        token_seconds: want_seconds,
    } in cases
    {
        let rendered = template(cp, "wi", &ns.name, &set);
        let d = docs(&rendered);
        let (env, volumes) = operator_env_and_volumes(&d);
        let azure: Vec<(&str, &str)> = env
            .iter()
            .filter(|(k, _)| k.starts_with("AZURE_"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(azure, want_env, "{name}: AZURE_* env");
        let token = volumes.iter().find(|v| v["name"] == "azure-identity-token");
        match want_seconds {
            None => assert!(token.is_none(), "{name}: no token volume: {volumes:?}"),
            Some(seconds) => {
                let sat =
                    &token.expect("token volume")["projected"]["sources"][0]["serviceAccountToken"];
                assert_eq!(sat["audience"], "api://AzureADTokenExchange", "{name}");
                assert_eq!(sat["expirationSeconds"].as_i64(), Some(seconds), "{name}");
                assert_eq!(sat["path"], "azure-identity-token", "{name}");
                let mounts = &of_kind(&d, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
                    [0]["volumeMounts"];
                let mount = mounts
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .find(|m| m["name"] == "azure-identity-token")
                    .expect("token mount");
                assert_eq!(
                    mount["mountPath"], "/var/run/secrets/azure/tokens",
                    "{name}"
                );
                assert_eq!(mount["readOnly"], true, "{name}");
                // The API server accepts the projection as rendered.
                dry_run_server(cp, &rendered);
            }
        }
        if set.contains(&"extraCA.configMapName=acs-ca") {
            assert!(
                volumes.iter().any(|v| v["name"] == "extra-ca"),
                "{name}: extraCA kept beside the token: {volumes:?}"
            );
        }
    }
    // Without enabled (and so without a client id) projecting a token would be useless.
    let (ok, _, err) = helm(
        cp,
        &[
            "template",
            "wi",
            &chart(),
            "--kube-version",
            &cp.k8s_version,
            "--set",
            "workloadIdentity.projectToken=true",
        ],
    );
    assert!(
        !ok && err.contains("workloadIdentity.projectToken needs workloadIdentity.enabled"),
        "{err}"
    );
}

/// Roles and ClusterRoles that let the operator patch apps workloads, by namespace (`*`
/// for a ClusterRole).
fn workload_patchers(docs: &[Value]) -> Vec<String> {
    let mut found = Vec::new();
    for kind in ["ClusterRole", "Role"] {
        for role in of_kind(docs, kind) {
            let patches = role["rules"].as_sequence().into_iter().flatten().any(|r| {
                str_list(&r["apiGroups"]).contains(&"apps")
                    && str_list(&r["verbs"]).contains(&"patch")
                    && ["deployments", "statefulsets", "daemonsets"]
                        .iter()
                        .all(|w| str_list(&r["resources"]).contains(w))
            });
            if patches {
                found.push(
                    role["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("*")
                        .to_string(),
                );
            }
        }
    }
    found.sort();
    found
}

/// Issue 18: restarting workloads needs `patch` on apps workloads, granted only when the
/// chart value asks for it, and in restricted mode only in the watched namespaces.
#[test]
fn rollout_restart_rbac_only_when_enabled() {
    let cp = ControlPlane::get();
    let d = docs(&template(cp, "roll", "acs-system", &[]));
    assert_eq!(workload_patchers(&d), Vec::<String>::new());
    assert!(deployment_args(&d).contains(&"--rollout-restarts-per-minute=30".to_string()));
    let d = docs(&template(
        cp,
        "roll",
        "acs-system",
        &[
            "--set",
            "rolloutRestart.enabled=true",
            "--set",
            "rolloutRestart.perMinute=5",
        ],
    ));
    assert_eq!(workload_patchers(&d), ["*"]);
    assert!(deployment_args(&d).contains(&"--rollout-restarts-per-minute=5".to_string()));
    let (_dir, values) = values_file(&format!(
        "{}\nrolloutRestart:\n  enabled: true\n",
        restricted_values(&["team-a", "team-b"], "shared")
    ));
    let d = docs(&template(cp, "roll", "acs-system", &["-f", &values]));
    assert_eq!(workload_patchers(&d), ["team-a", "team-b"]);
}

/// Issue 18: the chart installs the image `make release` builds: `appVersion` and the
/// chart version are the crate's version, and the default render runs
/// `<image.repository>:<crate version>`.
#[test]
fn chart_version_and_image_default_follow_the_crate_version() {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ChartYaml {
        version: String,
        app_version: String,
    }
    let crate_version = env!("CARGO_PKG_VERSION");
    let chart: ChartYaml = serde_yaml::from_str(
        &std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    assert_eq!(chart.app_version, crate_version, "Chart.yaml appVersion");
    assert_eq!(chart.version, crate_version, "Chart.yaml version");
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml parses");
    let repository = values["image"]["repository"].as_str().expect("repository");
    let cp = ControlPlane::get();
    let d = docs(&template(cp, "ver", "acs-system", &[]));
    let deploy = of_kind(&d, "Deployment")[0];
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["image"].as_str(),
        Some(format!("{repository}:{crate_version}").as_str()),
        "the chart's default image is the one make release builds"
    );
}

const MAP_API: &str = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy";

/// The finalizer policy (issue 19) renders only where the API server serves
/// MutatingAdmissionPolicy, can be turned off, is bound to watchNamespaces when set, and
/// is accepted by the API server (which serves admissionregistration.k8s.io/v1 from 1.36).
#[tokio::test]
async fn finalizer_policy_renders_where_the_api_exists_and_is_accepted() {
    let cp = ControlPlane::get();
    support::install_crds(cp);
    let admin = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &admin, "chart-map").await;
    let count = |extra: &[&str]| {
        let d = docs(&template(cp, "map", &ns.name, extra));
        (
            of_kind(&d, "MutatingAdmissionPolicy").len(),
            of_kind(&d, "MutatingAdmissionPolicyBinding").len(),
        )
    };
    assert_eq!(count(&[]), (0, 0), "not rendered where the API is absent");
    assert_eq!(count(&["--api-versions", MAP_API]), (1, 1));
    assert_eq!(
        count(&[
            "--api-versions",
            MAP_API,
            "--set",
            "admissionPolicies.finalizer.enabled=false"
        ]),
        (0, 0),
        "opt-out"
    );
    let set = format!("watchNamespaces={{{}}}", ns.name);
    let rendered = template(
        cp,
        "map",
        &ns.name,
        &["--api-versions", MAP_API, "--set", &set],
    );
    let d = docs(&rendered);
    let policy = of_kind(&d, "MutatingAdmissionPolicy")[0];
    assert_eq!(policy["spec"]["failurePolicy"], "Ignore");
    assert_eq!(
        str_list(&policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"]),
        ["CREATE"]
    );
    let binding = of_kind(&d, "MutatingAdmissionPolicyBinding")[0];
    assert_eq!(
        str_list(
            &binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"]
        ),
        [ns.name.as_str()]
    );
    dry_run_server(cp, &rendered);
}

/// Issue 19: `expectedIdentities` sizes the memory request and limit from the fleet
/// (32 MiB + 6 KiB per identity; limit 1.5 x request, at least 256 MiB), keeps the rest
/// of `resources`, and leaves them as given when unset.
#[test]
fn expected_identities_size_the_memory_request_and_limit() {
    let cp = ControlPlane::get();
    let cases: [(&str, &[&str], &str, &str); 5] = [
        ("unset", &[], "64Mi", "256Mi"),
        ("1k", &["--set", "expectedIdentities=1000"], "38Mi", "256Mi"),
        (
            "20k",
            &["--set", "expectedIdentities=20000"],
            "150Mi",
            "256Mi",
        ),
        (
            "100k",
            &["--set", "expectedIdentities=100000"],
            "618Mi",
            "927Mi",
        ),
        (
            "1k with a cpu limit of its own",
            &[
                "--set",
                "expectedIdentities=1000",
                "--set",
                "resources.limits.cpu=2",
            ],
            "38Mi",
            "256Mi",
        ),
    ];
    for (name, set, request, limit) in cases {
        let d = docs(&template(cp, "size", "acs-system", set));
        let r =
            &of_kind(&d, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["resources"];
        assert_eq!(r["requests"]["memory"], request, "{name}: request");
        assert_eq!(r["limits"]["memory"], limit, "{name}: limit");
        assert_eq!(r["requests"]["cpu"], "10m", "{name}: cpu request kept");
        if name.contains("cpu limit") {
            assert_eq!(r["limits"]["cpu"], 2, "{name}: cpu limit kept");
        }
    }
    let (ok, _, err) = helm(
        cp,
        &[
            "template",
            "size",
            &chart(),
            "--kube-version",
            &cp.k8s_version,
            "--set",
            "expectedIdentities=-5",
        ],
    );
    assert!(
        !ok && err.contains("expectedIdentities"),
        "refused readably: {err}"
    );
}
