//! `kubectl acs` on the real control plane, run as a person runs it: the built binary
//! with KUBECONFIG, against identities whose status is written through the status
//! subresource (no operator runs here, so the test plays its part where needed).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use acs_identity_operator::api::{
    CommunicationIdentity, RENEW_REQUESTED_AT_ANNOTATION, REVOKE_REQUESTED_AT_ANNOTATION,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use support::world::create_identity_with_spec;
use support::{ControlPlane, TestNamespace, eventually, run_with_stdin};

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-acs");

/// Runs `kubectl-acs args` with KUBECONFIG=`kubeconfig`; (success, stdout, stderr).
fn acs(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    run_with_stdin(
        Command::new(BIN).env("KUBECONFIG", kubeconfig).args(args),
        None,
    )
}

/// Expects failure with exactly one line `error: ...` on stderr; returns it.
fn acs_fails(kubeconfig: &Path, args: &[&str]) -> String {
    let (ok, out, err) = acs(kubeconfig, args);
    assert!(!ok, "{args:?} should fail; stdout: {out}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err.trim_end().to_string()
}

fn rfc3339_in(secs: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn patch_status(client: &Client, ns: &str, name: &str, status: Value) {
    Api::<CommunicationIdentity>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap_or_else(|e| panic!("patch status of {ns}/{name}: {e}"));
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": rfc3339_in(-3600),
    })
}

/// A ready identity `name` issued an hour ago, expiring in 23 hours.
async fn ready_identity(client: &Client, ns: &str, name: &str) {
    create_identity_with_spec(client, ns, name, json!({"scopes": ["chat", "voip"]})).await;
    patch_status(
        client,
        ns,
        name,
        json!({
            "userId": format!("8:acs:res_{name}"),
            "tokenExpiresOn": rfc3339_in(23 * 3600 + 30),
            "renewalTime": rfc3339_in(15 * 3600 + 30),
            "lastTokenIssuedAt": rfc3339_in(-3600),
            "secretName": name,
            "observedGeneration": 1,
            "conditions": [condition("Ready", "True", "TokenIssued", &format!("Secret {name} holds a token"))],
        }),
    )
    .await;
}

/// A copy of the admin kubeconfig whose context defaults to namespace `ns`.
fn kubeconfig_for(cp: &ControlPlane, ns: &str, dir: &Path) -> PathBuf {
    let path = dir.join("admin.kubeconfig");
    std::fs::copy(&cp.kubeconfig, &path).expect("copy kubeconfig");
    let (ok, _, err) = run_with_stdin(
        cp.kubectl().env("KUBECONFIG", &path).args([
            "config",
            "set-context",
            "--current",
            "--namespace",
            ns,
        ]),
        None,
    );
    assert!(ok, "kubectl config set-context: {err}");
    path
}

fn jwt(payload: &Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode("signature-bytes-that-must-never-be-printed"),
    )
}

#[tokio::test]
async fn list_and_status_show_what_the_status_says() {
    let cp = ControlPlane::get();
    support::install_crds(cp);
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "acs-cli-list").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig_for(cp, &ns.name, dir.path());

    ready_identity(&client, &ns.name, "app").await;
    create_identity_with_spec(
        &client,
        &ns.name,
        "broken",
        json!({"scopes": ["chat"], "serviceRef": {"name": "missing"}}),
    )
    .await;
    patch_status(
        &client,
        &ns.name,
        "broken",
        json!({
            "observedGeneration": 1,
            "conditions": [condition("Ready", "False", "ServiceNotFound", "CommunicationService \"missing\" not found in namespace")],
        }),
    )
    .await;
    create_identity_with_spec(
        &client,
        &ns.name,
        "fresh",
        json!({"scopes": ["voip"], "secretName": "fresh-token"}),
    )
    .await;

    // The namespace comes from the kubeconfig context.
    let (ok, out, err) = acs(&kubeconfig, &["list"]);
    assert!(ok, "list: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with("NAME     READY     REASON            USER"),
        "{out}"
    );
    for col in ["EXPIRES", "RENEWAL", "SECRET"] {
        assert!(lines[0].contains(col), "{out}");
    }
    assert!(lines[1].starts_with("app      True      -   "), "{out}");
    assert!(lines[1].contains("8:acs:res_app"), "{out}");
    assert!(lines[1].contains("Z (in 23h)"), "{out}");
    assert!(lines[1].contains("in 15h"), "{out}");
    assert!(
        lines[2].starts_with("broken   False     ServiceNotFound"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("fresh    Unknown   NotReconciled"),
        "{out}"
    );
    assert!(lines[3].ends_with("fresh-token"), "{out}");

    // The `get` alias, -o json, and -n over the context's namespace.
    let (ok, out, err) = acs(&cp.kubeconfig, &["get", "-n", &ns.name, "-o", "json"]);
    assert!(ok, "get -o json: {err}");
    let rows: Vec<Value> = serde_json::from_str(&out).expect("JSON array");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["name"], "app");
    assert_eq!(rows[0]["namespace"], ns.name.as_str());
    assert_eq!(rows[0]["ready"], "True");
    assert_eq!(rows[0]["reason"], Value::Null);
    assert_eq!(rows[0]["user"], "8:acs:res_app");
    assert_eq!(rows[0]["secret"], "app");
    let expires: jiff::Timestamp = rows[0]["expires"]
        .as_str()
        .expect("expires")
        .parse()
        .expect("RFC 3339");
    assert!(expires > jiff::Timestamp::now());
    assert_eq!(rows[1]["reason"], "ServiceNotFound");

    let (ok, out, err) = acs(&cp.kubeconfig, &["list", "-A"]);
    assert!(ok, "list -A: {err}");
    assert!(out.starts_with("NAMESPACE "), "{out}");
    assert!(
        out.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells[..3] == [ns.name.as_str(), "broken", "False"]
        }),
        "{out}"
    );

    let (ok, out, err) = acs(&kubeconfig, &["status", "broken"]);
    assert!(ok, "status: {err}");
    for want in [
        "Name:               broken\n",
        &format!("Namespace:          {}\n", ns.name),
        "Ready:              False (ServiceNotFound)\n",
        "Secret:             broken\n",
        "Last revoked:       never\n",
        "Generation:         1 (observed 1: up to date)\n",
        "Conditions:\n  TYPE    STATUS   REASON            SINCE                  MESSAGE\n",
        "CommunicationService \"missing\" not found in namespace",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let (ok, out, err) = acs(&kubeconfig, &["status", "app"]);
    assert!(ok, "status: {err}");
    assert!(out.contains("Token expires:      "), "{out}");
    assert!(out.contains("Z (in 23h)\n"), "{out}");
    assert!(out.contains("Last issued:        "), "{out}");
    assert!(out.contains("Z (1h ago)\n"), "{out}");
}

#[tokio::test]
async fn renew_and_revoke_set_the_annotations_and_wait_for_the_operator() {
    let cp = ControlPlane::get();
    support::install_crds(cp);
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "acs-cli-renew").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig_for(cp, &ns.name, dir.path());
    ready_identity(&client, &ns.name, "app").await;
    let api: Api<CommunicationIdentity> = Api::namespaced(client.clone(), &ns.name);

    let before = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    for (cmd, annotation) in [
        ("renew", RENEW_REQUESTED_AT_ANNOTATION),
        ("revoke", REVOKE_REQUESTED_AT_ANNOTATION),
    ] {
        let (ok, out, err) = acs(&kubeconfig, &[cmd, "app"]);
        assert!(ok, "{cmd}: {err}");
        let id = api.get("app").await.expect("get identity");
        let value = id
            .annotations()
            .get(annotation)
            .unwrap_or_else(|| panic!("{cmd} did not set {annotation}"))
            .clone();
        let at: jiff::Timestamp = value.parse().expect("an RFC 3339 timestamp");
        assert!(at >= before, "{value} is not the current time");
        assert!(
            out.starts_with(&format!(
                "{cmd} requested for communicationidentity \"app\" in namespace \"{}\" ({annotation}={value})\n",
                ns.name
            )),
            "{out}"
        );
    }

    // --wait: the CLI waits until status records the request; the test plays the operator.
    let old = api
        .get("app")
        .await
        .expect("get")
        .annotations()
        .get(RENEW_REQUESTED_AT_ANNOTATION)
        .cloned();
    let child = Command::new(BIN)
        .env("KUBECONFIG", &kubeconfig)
        .args(["renew", "app", "--wait", "--timeout", "60s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kubectl-acs renew --wait");
    let requested = eventually(30, "a new renew request", || {
        let api = api.clone();
        let old = old.clone();
        async move {
            let id = api.get("app").await.ok()?;
            let v = id.annotations().get(RENEW_REQUESTED_AT_ANNOTATION)?.clone();
            (Some(&v) != old.as_ref()).then_some(v)
        }
    })
    .await;
    let new_expiry = rfc3339_in(24 * 3600 - 5);
    patch_status(
        &client,
        &ns.name,
        "app",
        json!({
            "lastRenewRequestHandled": requested,
            "lastTokenIssuedAt": rfc3339_in(0),
            "tokenExpiresOn": new_expiry,
        }),
    )
    .await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait for kubectl-acs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "renew --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("renewed: new token issued "), "{stdout}");
    assert!(
        stdout.contains(&format!("expires {new_expiry} (in 23h")),
        "{stdout}"
    );

    // Nobody handles this one: --wait gives up with a clear message.
    let err = acs_fails(&kubeconfig, &["revoke", "app", "--wait", "--timeout", "2s"]);
    assert!(
        err.starts_with("error: timed out after 2s waiting for the operator to handle the revoke request (status.lastRevokeRequestHandled is unset)"),
        "{err}"
    );
    assert!(err.contains("check that the operator is running"), "{err}");
}

#[tokio::test]
async fn token_shows_claims_and_expiry_but_never_the_token() {
    let cp = ControlPlane::get();
    support::install_crds(cp);
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "acs-cli-token").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig_for(cp, &ns.name, dir.path());

    create_identity_with_spec(
        &client,
        &ns.name,
        "app",
        json!({"scopes": ["chat", "voip"], "secretName": "app-token"}),
    )
    .await;
    let now = jiff::Timestamp::now().as_second();
    let token = jwt(&json!({
        "skypeid": "acs:res_user-42",
        "acsScope": "chat,voip",
        "resourceId": "res",
        "iat": now - 3600,
        "exp": now + 23 * 3600 + 30,
        "rgn": "amer",
    }));
    let expires_on = rfc3339_in(23 * 3600 + 30);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "app-token"},
        "stringData": {
            "token": token,
            "expiresOn": expires_on,
            "userId": "8:acs:res_user-42",
            "endpoint": "https://acs.example.test/",
        },
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create Secret");

    let (ok, out, err) = acs(&kubeconfig, &["token", "app"]);
    assert!(ok, "token: {err}");
    for part in token.split('.').chain([token.as_str()]) {
        assert!(
            !out.contains(part),
            "the output shows token material:\n{out}"
        );
        assert!(!err.contains(part), "stderr shows token material:\n{err}");
    }
    for want in [
        "Secret:             app-token (key \"token\"; the token itself is not shown)\n",
        "User:               8:acs:res_user-42\n",
        "Scopes:             chat, voip\n",
        "Issued at (iat):    ",
        "Z (1h ago)\n",
        &format!("Secret expiresOn:   {expires_on} (in 23h)\n"),
        "Time left:          23h\n",
        "Endpoint:           https://acs.example.test/\n",
        "Other claims:       rgn\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

#[tokio::test]
async fn errors_are_one_clear_line_with_a_nonzero_exit() {
    let cp = ControlPlane::get();
    support::install_crds(cp);
    let admin = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &admin, "acs-cli-errors").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig_for(cp, &ns.name, dir.path());
    ready_identity(&admin, &ns.name, "app").await;

    for cmd in ["status", "renew", "revoke", "token"] {
        let err = acs_fails(&kubeconfig, &[cmd, "nope"]);
        assert_eq!(
            err,
            format!(
                "error: communicationidentity \"nope\" not found in namespace \"{}\"",
                ns.name
            ),
            "{cmd}"
        );
    }
    // The identity exists but its Secret does not (yet).
    let err = acs_fails(&kubeconfig, &["token", "app"]);
    assert!(
        err.starts_with(&format!(
            "error: secret \"app\" not found in namespace \"{}\"; it is the Secret of communicationidentity \"app\"",
            ns.name
        )),
        "{err}"
    );

    // A ServiceAccount without any RBAC.
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "nobody"}})).expect("sa");
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
    let nobody = cp
        .service_account_kubeconfig(&admin, &ns.name, "nobody", dir.path())
        .await;
    let who = format!("User \"system:serviceaccount:{}:nobody\"", ns.name);
    let err = acs_fails(&nobody, &["list"]);
    assert_eq!(
        err,
        format!(
            "error: forbidden: {who} cannot list communicationidentities.acs-operator.dev in namespace \"{ns}\"; \
             the user needs RBAC for it: a Role (or ClusterRole) granting verb \"list\" on resource \
             \"communicationidentities\" in API group \"acs-operator.dev\", bound to that user",
            ns = ns.name
        )
    );
    let err = acs_fails(&nobody, &["list", "-A"]);
    assert!(
        err.contains(&format!(
            "{who} cannot list communicationidentities.acs-operator.dev in any namespace"
        )),
        "{err}"
    );
    assert!(
        err.contains("a ClusterRole granting verb \"list\""),
        "{err}"
    );
    let err = acs_fails(&nobody, &["status", "app"]);
    assert!(
        err.contains(&format!(
            "{who} cannot get communicationidentities.acs-operator.dev in namespace"
        )),
        "{err}"
    );

    // Reading identities is not enough to see a token's claims.
    cp.service_account_with_role(
        &admin,
        &ns.name,
        "reader",
        json!([{"apiGroups": ["acs-operator.dev"], "resources": ["communicationidentities"], "verbs": ["get", "list"]}]),
    )
    .await;
    let reader = cp
        .service_account_kubeconfig(&admin, &ns.name, "reader", dir.path())
        .await;
    let (ok, out, err) = acs(&reader, &["list"]);
    assert!(ok && out.contains("app "), "the Role allows list: {err}");
    let err = acs_fails(&reader, &["token", "app"]);
    assert!(
        err.contains("cannot get secrets in namespace")
            && err.contains("verb \"get\" on resource \"secrets\" in API group \"\""),
        "{err}"
    );
    let err = acs_fails(&reader, &["renew", "app"]);
    assert!(
        err.contains("cannot patch communicationidentities.acs-operator.dev"),
        "{err}"
    );

    // No cluster at the address.
    let unreachable = dir.path().join("unreachable.kubeconfig");
    std::fs::write(
        &unreachable,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster: {server: 'https://127.0.0.1:1'}\n\
         users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: gone\n  context: {cluster: gone, user: u}\n\
         current-context: gone\n",
    )
    .expect("write kubeconfig");
    let err = acs_fails(&unreachable, &["list"]);
    assert!(
        err.starts_with("error: cannot reach the Kubernetes API server https://127.0.0.1:1"),
        "{err}"
    );
    assert!(
        err.ends_with("check KUBECONFIG, --kubeconfig and --context"),
        "{err}"
    );
    // --kubeconfig wins over KUBECONFIG.
    let (ok, _, err) = acs(
        &unreachable,
        &["list", "--kubeconfig", &kubeconfig.display().to_string()],
    );
    assert!(ok, "--kubeconfig: {err}");
}

/// kubectl runs `kubectl-acs` from PATH as `kubectl acs`.
#[tokio::test]
async fn kubectl_finds_the_plugin_on_path() {
    let cp = ControlPlane::get();
    support::install_crds(cp);
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "acs-cli-plugin").await;
    ready_identity(&client, &ns.name, "app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(BIN, dir.path().join("kubectl-acs")).expect("symlink");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (ok, out, err) = run_with_stdin(
        cp.kubectl()
            .env("PATH", path)
            .args(["acs", "list", "-n", &ns.name]),
        None,
    );
    assert!(ok, "kubectl acs list: {err}");
    assert!(out.starts_with("NAME   READY   REASON"), "{out}");
    assert!(out.contains("\napp    True "), "{out}");
}
