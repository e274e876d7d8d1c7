//! Entra ID workload identity through the real API server: the operator (in process, as
//! the chart's ServiceAccount with the chart's RBAC) exchanges a tenant ServiceAccount's
//! TokenRequest token at the emulated Entra ID (which trusts the control plane's issuer
//! from its `/openid/v1/jwks`), and the emulator has local auth disabled. Every refusal
//! reason of issue 17 has a case here.

mod support;

use std::sync::Arc;
use std::time::Duration;

use acs_identity_operator::api::conditions::{reasons, types};
use acs_identity_operator::api::{CommunicationIdentity, CommunicationService};
use acs_identity_operator::controller::clients::ClientSettings;
use acs_identity_operator::controller::entra::EntraSettings;
use acs_identity_operator::controller::{OperatorConfig, run};
use acs_identity_operator::emulator::{EmulatorConfig, RunningEmulator, spawn};
use acs_identity_operator::runtime::{Metrics, Readiness};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::operator::{OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, operator_kubeconfig};
use support::world::{create_identity, create_in, wait_for};
use support::{ControlPlane, TestNamespace, client_from_kubeconfig, eventually, install_crds};

const ISSUER: &str = "https://kubernetes.default.svc";

struct World {
    admin: Client,
    ns: TestNamespace,
    emulator: RunningEmulator,
    http: reqwest::Client,
    operator: Option<tokio::task::JoinHandle<()>>,
}

impl World {
    async fn new(prefix: &str) -> World {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let cp = ControlPlane::get();
        install_crds(cp);
        let admin = cp.admin_client().await;
        let ns = TestNamespace::create(cp, &admin, prefix).await;
        let emulator = spawn(EmulatorConfig {
            tls: true,
            disable_local_auth: true,
            entra_tenant: Some("tenant-1".into()),
            ..EmulatorConfig::default()
        })
        .await
        .expect("emulator starts");
        let http = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(emulator.ca_pem().unwrap().as_bytes()).unwrap(),
            )
            .build()
            .unwrap();
        // The emulated Entra trusts the control plane's ServiceAccount issuer, with the
        // keys the API server publishes.
        let jwks: Value = serde_json::from_slice(
            &admin
                .request_text(
                    http::Request::get("/openid/v1/jwks")
                        .body(Vec::new())
                        .unwrap(),
                )
                .await
                .expect("GET /openid/v1/jwks")
                .into_bytes(),
        )
        .unwrap();
        let w = World {
            admin,
            ns,
            emulator,
            http,
            operator: None,
        };
        w.post(
            "/admin/entra/issuers",
            json!({"issuer": ISSUER, "jwks": jwks}),
        )
        .await;
        w
    }

    fn ns(&self) -> &str {
        &self.ns.name
    }

    async fn post(&self, path: &str, body: Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.emulator.endpoint()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    async fn entra_counts(&self) -> Value {
        let v: Value = self
            .http
            .get(format!("{}/admin/entra", self.emulator.endpoint()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["counts"].clone()
    }

    /// An application whose one federated credential names `ns/sa`, with a role.
    async fn register(&self, client_id: &str, ns: &str, sa: &str) {
        self.post(
            "/admin/entra/applications",
            json!({"clientId": client_id, "objectId": format!("oid-{client_id}"), "federatedCredentials": [
                {"name": "fic", "issuer": ISSUER, "subject": format!("system:serviceaccount:{ns}:{sa}"), "audiences": ["api://AzureADTokenExchange"]}
            ]}),
        )
        .await;
        self.post(
            "/admin/entra/roleAssignments",
            json!({"principalId": format!("oid-{client_id}"), "role": "Contributor"}),
        )
        .await;
    }

    /// What the tenant applies: the ServiceAccount, annotated as the Azure Workload
    /// Identity webhook expects, and (with `grant`) the Role and RoleBinding that let the
    /// operator request its tokens (the README's manifest).
    fn tenant_manifest(ns: &str, sa: &str, client_id: &str, grant: bool) -> String {
        let mut m = format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: {ns}\n  annotations:\n    \
             azure.workload.identity/client-id: {client_id}\n    azure.workload.identity/tenant-id: tenant-1\n"
        );
        if grant {
            m.push_str(&token_request_grant(ns, &[sa]));
        }
        m
    }

    fn apply(&self, manifest: &str) {
        let (ok, _, err) = ControlPlane::get().kubectl_run(&["apply", "-f", "-"], Some(manifest));
        assert!(ok, "kubectl apply: {err}");
    }

    async fn service(&self, name: &str, entra: Value) {
        create_in(
            &self.admin,
            self.ns(),
            "communicationservices",
            json!({
                "apiVersion": "acs-operator.dev/v1alpha1", "kind": "CommunicationService",
                "metadata": {"name": name},
                "spec": {"endpoint": self.emulator.endpoint(), "entraId": entra},
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("create service {name}: {e}"));
    }

    fn start(&mut self, client: Client) {
        self.start_with(client, EntraSettings::default());
    }

    fn start_with(&mut self, client: Client, entra: EntraSettings) {
        let config = OperatorConfig {
            watch_namespaces: vec![self.ns().to_string()],
            cluster_resource_namespace: self.ns().to_string(),
            client_settings: ClientSettings {
                request_timeout: Some(Duration::from_secs(5)),
                extra_ca_pem: Some(self.emulator.ca_pem().unwrap().as_bytes().to_vec()),
                entra: EntraSettings {
                    authority_host: Some(self.emulator.endpoint().to_string()),
                    operator_service_account: Some(format!(
                        "{OPERATOR_NAMESPACE}/{OPERATOR_SERVICE_ACCOUNT}"
                    )),
                    ..entra
                },
                ..ClientSettings::default()
            },
            ..OperatorConfig::default()
        };
        self.operator = Some(tokio::spawn(run(
            client,
            config,
            Arc::new(Metrics::new()),
            Readiness::new(),
            std::future::pending::<()>(),
        )));
    }

    async fn service_ready(&self, name: &str) -> (String, String, String, Value) {
        let api: Api<CommunicationService> = Api::namespaced(self.admin.clone(), self.ns());
        let api2 = api.clone();
        let name2 = name.to_string();
        eventually(
            60,
            &format!("service {name} has a Ready condition"),
            move || {
                let api = api2.clone();
                let name = name2.clone();
                async move {
                    let s = api.get_opt(&name).await.ok().flatten()?;
                    let st = s.status?;
                    let c = st.conditions.iter().find(|c| c.type_ == types::READY)?;
                    Some((
                        c.status.clone(),
                        c.reason.clone(),
                        c.message.clone(),
                        serde_json::to_value(&st.authentication).unwrap(),
                    ))
                }
            },
        )
        .await
    }

    async fn service_reason_is(&self, name: &str, reason: &str) -> String {
        let api: Api<CommunicationService> = Api::namespaced(self.admin.clone(), self.ns());
        let name = name.to_string();
        let reason = reason.to_string();
        eventually(
            90,
            &format!("service {name} Ready reason {reason}"),
            move || {
                let api = api.clone();
                let name = name.clone();
                let reason = reason.clone();
                async move {
                    let s = api.get_opt(&name).await.ok().flatten()?;
                    let c = s
                        .status?
                        .conditions
                        .into_iter()
                        .find(|c| c.type_ == types::READY)?;
                    (c.reason == reason).then_some(c.message)
                }
            },
        )
        .await
    }

    /// Re-runs the service's reconcile now (an annotation change is a watch event).
    async fn touch(&self, name: &str) {
        let api: Api<CommunicationService> = Api::namespaced(self.admin.clone(), self.ns());
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/touched": jiff::Timestamp::now().to_string()}}})),
        )
        .await
        .unwrap();
    }
}

/// The tenant's opt-in: a Role that lets the operator create tokens for one
/// ServiceAccount (and read it), bound to the operator's ServiceAccount.
fn token_request_grant(ns: &str, sas: &[&str]) -> String {
    let sa = sas.join(", ");
    format!(
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: acs-identity-operator-token-request\n  namespace: {ns}\n\
         rules:\n- apiGroups: [\"\"]\n  resources: [serviceaccounts/token]\n  resourceNames: [{sa}]\n  verbs: [create]\n\
         - apiGroups: [\"\"]\n  resources: [serviceaccounts]\n  resourceNames: [{sa}]\n  verbs: [get]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: acs-identity-operator-token-request\n  namespace: {ns}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: acs-identity-operator-token-request}}\n\
         subjects:\n- {{kind: ServiceAccount, name: {OPERATOR_SERVICE_ACCOUNT}, namespace: {OPERATOR_NAMESPACE}}}\n"
    )
}

async fn operator_client() -> Client {
    let path = tokio::task::spawn_blocking(operator_kubeconfig)
        .await
        .unwrap();
    client_from_kubeconfig(&path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_service_account_gets_identities_ready_with_one_entra_token() {
    let mut w = World::new("entra-ok").await;
    let ns = w.ns().to_string();
    w.register("client-a", &ns, "acs-client").await;
    w.apply(&World::tenant_manifest(&ns, "acs-client", "client-a", true));
    // The ids come from the ServiceAccount's annotations.
    w.service("acs", json!({"serviceAccountRef": {"name": "acs-client"}}))
        .await;
    w.start(operator_client().await);
    let (status, reason, message, auth) = w.service_ready("acs").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", reasons::ENTRA_TOKEN_ACQUIRED),
        "{message}"
    );
    assert_eq!(auth["method"], "WorkloadIdentity");
    assert_eq!(auth["clientId"], "client-a");
    assert_eq!(auth["tenantId"], "tenant-1");
    assert!(auth["tokenExpiresOn"].is_string(), "{auth}");
    for i in 0..3 {
        create_identity(
            &w.admin,
            &ns,
            &format!("id-{i}"),
            json!({"serviceRef": {"kind": "CommunicationService", "name": "acs"}, "scopes": ["chat"]}),
        )
        .await;
    }
    let ids: Api<CommunicationIdentity> = Api::namespaced(w.admin.clone(), &ns);
    for i in 0..3 {
        wait_for(&ids, &format!("id-{i}"), 90, |o: &CommunicationIdentity| {
            o.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == types::READY && c.status == "True")
            })
        })
        .await
        .unwrap_or_else(|| panic!("id-{i} Ready"));
    }
    let counts = w.entra_counts().await;
    assert_eq!(
        counts["tokensIssued"], 1,
        "one Entra token for the service and its three identities: {counts}"
    );
    assert_eq!(counts["bearerRefused"], 0, "{counts}");
    // Never the token in status.
    let svc = serde_json::to_string(
        &Api::<CommunicationService>::namespaced(w.admin.clone(), &ns)
            .get("acs")
            .await
            .unwrap()
            .status,
    )
    .unwrap();
    assert!(!svc.contains("eyJ"), "{svc}");
    if let Some(op) = w.operator.take() {
        op.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_reason() {
    let mut w = World::new("entra-refusals").await;
    let ns = w.ns().to_string();
    // No Role and RoleBinding yet: the TokenRequest is forbidden.
    w.register("client-b", &ns, "acs-client").await;
    w.apply(&World::tenant_manifest(
        &ns,
        "acs-client",
        "client-b",
        false,
    ));
    w.service(
        "no-grant",
        json!({"clientId": "client-b", "tenantId": "tenant-1", "serviceAccountRef": {"name": "acs-client"}}),
    )
    .await;
    // A federated credential for another ServiceAccount than the one named.
    w.apply(&World::tenant_manifest(&ns, "other", "client-b", true));
    w.service(
        "wrong-subject",
        json!({"clientId": "client-b", "tenantId": "tenant-1", "serviceAccountRef": {"name": "other"}}),
    )
    .await;
    // No serviceAccountRef on a namespaced service: the operator's own identity, refused.
    w.service("ambient", json!({"clientId": "client-b"})).await;
    w.start(operator_client().await);

    let msg = w
        .service_reason_is("no-grant", reasons::SERVICE_ACCOUNT_TOKEN_FORBIDDEN)
        .await;
    assert!(
        msg.contains("acs-identity-operator-token-request")
            && msg.contains("serviceaccounts/token")
            && msg.contains(OPERATOR_NAMESPACE),
        "{msg}"
    );
    let msg = w
        .service_reason_is("wrong-subject", reasons::FEDERATION_FAILED)
        .await;
    assert!(msg.contains("AADSTS70021"), "{msg}");
    let msg = w
        .service_reason_is("ambient", reasons::AMBIENT_CREDENTIALS_NOT_ALLOWED)
        .await;
    assert!(
        msg.contains("--namespaced-service-ambient-credentials"),
        "{msg}"
    );
    // kstatus on services too: a person must act (Stalled, with the Ready reason), and
    // nothing is in progress.
    let svc = Api::<CommunicationService>::namespaced(w.admin.clone(), &ns)
        .get("ambient")
        .await
        .unwrap();
    let conditions = svc.status.map(|s| s.conditions).unwrap_or_default();
    let of = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.as_str(), c.reason.as_str()))
    };
    assert_eq!(
        of(types::STALLED),
        Some(("True", reasons::AMBIENT_CREDENTIALS_NOT_ALLOWED)),
        "{conditions:?}"
    );
    assert_ne!(
        of(types::RECONCILING).map(|c| c.0),
        Some("True"),
        "{conditions:?}"
    );

    // The tenant opts in (one Role for the namespace's ServiceAccounts): the service heals.
    w.apply(&token_request_grant(
        &ns,
        &["acs-client", "other", "missing", "bare", "late"],
    ));
    w.touch("no-grant").await;
    w.service_reason_is("no-grant", reasons::ENTRA_TOKEN_ACQUIRED)
        .await;

    // A ServiceAccount that does not exist; one without the Workload Identity annotations
    // while neither the spec nor the operator's environment has the ids.
    w.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: bare, namespace: {ns}}}\n"
    ));
    w.service(
        "missing-sa",
        json!({"serviceAccountRef": {"name": "missing"}}),
    )
    .await;
    w.service("no-ids", json!({"serviceAccountRef": {"name": "bare"}}))
        .await;
    let msg = w
        .service_reason_is("missing-sa", reasons::SERVICE_ACCOUNT_NOT_FOUND)
        .await;
    assert!(msg.contains("`missing`"), "{msg}");
    let msg = w
        .service_reason_is("no-ids", reasons::ENTRA_CONFIG_INCOMPLETE)
        .await;
    assert!(
        msg.contains("no client id") && msg.contains("azure.workload.identity/client-id"),
        "{msg}"
    );

    // A federated credential still propagating: AADSTS70021 is reported, then the service
    // heals by itself (retried with backoff; nobody touches it).
    w.post(
        "/admin/entra/applications",
        json!({"clientId": "client-p", "objectId": "oid-client-p", "propagationFailures": 1,
               "federatedCredentials": [{"name": "fic", "issuer": ISSUER,
                 "subject": format!("system:serviceaccount:{ns}:late"),
                 "audiences": ["api://AzureADTokenExchange"]}]}),
    )
    .await;
    w.post(
        "/admin/entra/roleAssignments",
        json!({"principalId": "oid-client-p", "role": "Contributor"}),
    )
    .await;
    w.apply(&World::tenant_manifest(&ns, "late", "client-p", false));
    w.service(
        "propagating",
        json!({"serviceAccountRef": {"name": "late"}}),
    )
    .await;
    let msg = w
        .service_reason_is("propagating", reasons::FEDERATION_FAILED)
        .await;
    assert!(msg.contains("AADSTS70021"), "{msg}");
    w.service_reason_is("propagating", reasons::ENTRA_TOKEN_ACQUIRED)
        .await;

    // An identity of a service whose federation fails is not Ready, with the reason.
    create_identity(
        &w.admin,
        &ns,
        "id-wrong",
        json!({"serviceRef": {"kind": "CommunicationService", "name": "wrong-subject"}, "scopes": ["chat"]}),
    )
    .await;
    let ids: Api<CommunicationIdentity> = Api::namespaced(w.admin.clone(), &ns);
    wait_for(&ids, "id-wrong", 60, |o: &CommunicationIdentity| {
        o.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == types::READY
                    && c.status == "False"
                    && c.reason == reasons::FEDERATION_FAILED
            })
        })
    })
    .await
    .unwrap_or_else(|| panic!("id-wrong is FederationFailed"));
    if let Some(op) = w.operator.take() {
        op.abort();
    }
}

/// The remaining reasons through the real API server: Entra failing (503 on the token
/// operation) is `EntraUnavailable` and heals by itself; an application without a role on
/// the resource gets its Entra token, ACS refuses it, and the identity is `Unauthorized`
/// with the role to grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_outage_and_a_missing_role_have_their_reasons() {
    let mut w = World::new("entra-outage").await;
    let ns = w.ns().to_string();
    w.register("client-u", &ns, "flaky").await;
    // No role assignment for client-r.
    w.post(
        "/admin/entra/applications",
        json!({"clientId": "client-r", "objectId": "oid-client-r",
               "federatedCredentials": [{"name": "fic", "issuer": ISSUER,
                 "subject": format!("system:serviceaccount:{ns}:norole"),
                 "audiences": ["api://AzureADTokenExchange"]}]}),
    )
    .await;
    w.apply(&World::tenant_manifest(&ns, "flaky", "client-u", false));
    w.apply(&World::tenant_manifest(&ns, "norole", "client-r", false));
    w.apply(&token_request_grant(&ns, &["flaky", "norole"]));
    // Entra answers the next token request with 503.
    w.post(
        "/admin/faults",
        json!({"operation": "entra-token", "status": 503, "count": 1}),
    )
    .await;
    w.service("flaky", json!({"serviceAccountRef": {"name": "flaky"}}))
        .await;
    w.start(operator_client().await);
    let msg = w
        .service_reason_is("flaky", reasons::ENTRA_UNAVAILABLE)
        .await;
    assert!(msg.contains("503"), "{msg}");
    w.service_reason_is("flaky", reasons::ENTRA_TOKEN_ACQUIRED)
        .await;

    w.service("norole", json!({"serviceAccountRef": {"name": "norole"}}))
        .await;
    w.service_reason_is("norole", reasons::ENTRA_TOKEN_ACQUIRED)
        .await;
    create_identity(
        &w.admin,
        &ns,
        "id-norole",
        json!({"serviceRef": {"kind": "CommunicationService", "name": "norole"}, "scopes": ["chat"]}),
    )
    .await;
    let ids: Api<CommunicationIdentity> = Api::namespaced(w.admin.clone(), &ns);
    let o = wait_for(&ids, "id-norole", 60, |o: &CommunicationIdentity| {
        o.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == types::READY && c.status == "False" && c.reason == reasons::UNAUTHORIZED
            })
        })
    })
    .await
    .unwrap_or_else(|| panic!("id-norole is Unauthorized"));
    let msg = o
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == types::READY)
        .unwrap()
        .message;
    assert!(
        msg.contains("Contributor"),
        "names the role to grant: {msg}"
    );
    assert!(!msg.contains("eyJ"), "{msg}");
    let counts = w.entra_counts().await;
    assert!(
        counts["bearerRefused"].as_u64().unwrap_or(0) >= 1,
        "ACS refused the role-less token: {counts}"
    );
    if let Some(op) = w.operator.take() {
        op.abort();
    }
}

/// Reads a cluster service's Ready condition (reason, message) and authentication.
async fn cluster_service_reason_is(admin: &Client, name: &str, reason: &str) -> (String, Value) {
    let api: Api<acs_identity_operator::api::ClusterCommunicationService> = Api::all(admin.clone());
    let name = name.to_string();
    let reason = reason.to_string();
    eventually(
        90,
        &format!("cluster service {name} Ready reason {reason}"),
        move || {
            let api = api.clone();
            let name = name.clone();
            let reason = reason.clone();
            async move {
                let st = api.get_opt(&name).await.ok().flatten()?.status?;
                let c = st.conditions.iter().find(|c| c.type_ == types::READY)?;
                (c.reason == reason).then(|| {
                    (
                        c.message.clone(),
                        serde_json::to_value(&st.authentication).unwrap(),
                    )
                })
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_service_in_ambient_mode_uses_the_operators_projected_token() {
    let mut w = World::new("entra-ambient").await;
    let ns = w.ns().to_string();
    // The harness plays the Azure Workload Identity webhook: a projected token of the
    // operator's ServiceAccount (here `operator-ambient` of the cluster resource
    // namespace) in a file, and the AZURE_* environment.
    w.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: operator-ambient, namespace: {ns}}}\n"
    ));
    w.register("client-amb", &ns, "operator-ambient").await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(w.admin.clone(), &ns);
    let token = sas
        .create_token_request(
            "operator-ambient",
            &Default::default(),
            &k8s_openapi::api::authentication::v1::TokenRequest {
                spec: Some(k8s_openapi::api::authentication::v1::TokenRequestSpec {
                    audiences: Some(vec!["api://AzureADTokenExchange".into()]),
                    expiration_seconds: Some(3600),
                    bound_object_ref: None,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, &token).unwrap();

    let ambient = format!("{ns}-ambient");
    let elsewhere = format!("{ns}-elsewhere");
    for (name, entra) in [
        (&ambient, json!({})),
        (
            &elsewhere,
            json!({"clientId": "client-amb", "tenantId": "tenant-1", "serviceAccountRef": {"name": "acs-client", "namespace": "default"}}),
        ),
    ] {
        create_in(
            &w.admin,
            "",
            "clustercommunicationservices",
            json!({
                "apiVersion": "acs-operator.dev/v1alpha1", "kind": "ClusterCommunicationService",
                "metadata": {"name": name},
                // Only this test's namespace: under `make test` every test shares one API server.
                "spec": {"endpoint": w.emulator.endpoint(), "entraId": entra, "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    w.start_with(
        operator_client().await,
        EntraSettings {
            client_id: Some("client-amb".into()),
            tenant_id: Some("tenant-1".into()),
            federated_token_file: Some(token_file.clone()),
            ..EntraSettings::default()
        },
    );
    let (_, auth) =
        cluster_service_reason_is(&w.admin, &ambient, reasons::ENTRA_TOKEN_ACQUIRED).await;
    assert_eq!(auth["method"], "Ambient");
    assert_eq!(auth["clientId"], "client-amb");
    let (msg, _) = cluster_service_reason_is(
        &w.admin,
        &elsewhere,
        reasons::SERVICE_ACCOUNT_NAMESPACE_NOT_ALLOWED,
    )
    .await;
    assert!(msg.contains("default") && msg.contains(&ns), "{msg}");

    create_identity(
        &w.admin,
        &ns,
        "amb",
        json!({"serviceRef": {"kind": "ClusterCommunicationService", "name": ambient}, "scopes": ["voip"]}),
    )
    .await;
    create_identity(
        &w.admin,
        &ns,
        "elsewhere",
        json!({"serviceRef": {"kind": "ClusterCommunicationService", "name": elsewhere}, "scopes": ["voip"]}),
    )
    .await;
    let ids: Api<CommunicationIdentity> = Api::namespaced(w.admin.clone(), &ns);
    let ready_with = |reason: &'static str, status: &'static str| {
        move |o: &CommunicationIdentity| {
            o.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == types::READY && c.status == status && c.reason == reason)
            })
        }
    };
    wait_for(&ids, "amb", 90, ready_with(reasons::TOKEN_ISSUED, "True"))
        .await
        .expect("the ambient identity is Ready");
    wait_for(
        &ids,
        "elsewhere",
        60,
        ready_with(reasons::SERVICE_ACCOUNT_NAMESPACE_NOT_ALLOWED, "False"),
    )
    .await
    .expect("ServiceAccountNamespaceNotAllowed on the identity");

    // Leak scan: neither the ServiceAccount token nor any Entra token (all JWTs) appears
    // in a status or an event.
    let mut texts = vec![
        serde_json::to_string(
            &ids.list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(|i| &i.status)
                .collect::<Vec<_>>(),
        )
        .unwrap(),
    ];
    let ccs: Api<acs_identity_operator::api::ClusterCommunicationService> =
        Api::all(w.admin.clone());
    for name in [&ambient, &elsewhere] {
        texts.push(serde_json::to_string(&ccs.get(name).await.unwrap().status).unwrap());
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(w.admin.clone(), &ns);
    texts.push(
        serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap(),
    );
    for t in &texts {
        assert!(!t.contains(&token), "the ServiceAccount token leaked");
        assert!(!t.contains("eyJ"), "a JWT in status or events: {t}");
    }
    assert_eq!(w.entra_counts().await["tokensIssued"], 1);
    if let Some(op) = w.operator.take() {
        op.abort();
    }
    for name in [&ambient, &elsewhere] {
        let _ = ccs.delete(name, &Default::default()).await;
    }
}
