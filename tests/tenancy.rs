//! Tenant isolation, end to end: the operator as its own process under the chart's RBAC,
//! with a cluster resource namespace, and two tenant namespaces sharing one
//! ClusterCommunicationService on one ACS emulator. Tenant B tries every route of
//! issue 9 to use, revoke or delete tenant A's ACS user, and to read credentials:
//! `existingUserId`, a `serviceRef` switch, an endpoint answering with A's id, a cluster
//! service naming a Secret outside the cluster resource namespace, plain http, and
//! malformed connection strings that would echo the key.
//!
//! Run: `cargo test --test tenancy` (starts its own control plane unless
//! `ACS_TEST_KUBECONFIG` is set).

mod support;

use std::sync::OnceLock;

use acs_identity_operator::acs::ConnectionString;
use acs_identity_operator::api::{CommunicationIdentity, REVOKE_REQUESTED_AT_ANNOTATION};
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::post;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::emulator::Emulator;
use support::operator::{Operator, spawn_operator};
use support::world::{
    acs_resource, condition, create_identity, create_in, delete_all_identities, merge, put_secret,
    secret_data, wait_for, wait_gone,
};
use support::{ControlPlane, TestNamespace, eventually};

/// The operator's cluster resource namespace in this test binary.
const CLUSTER_RESOURCE_NAMESPACE: &str = "acs-tenancy-resources";

static OPERATOR: OnceLock<Operator> = OnceLock::new();

/// One operator for the binary, started with `--cluster-resource-namespace`.
fn operator() -> &'static Operator {
    OPERATOR.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Runtime::new().expect("runtime").block_on(async {
                let cp = ControlPlane::get();
                let ns = format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {CLUSTER_RESOURCE_NAMESPACE}}}\n"
                );
                let (ok, _, err) = cp.kubectl_run(&["apply", "-f", "-"], Some(&ns));
                assert!(ok, "cluster resource namespace: {err}");
                // Namespaced ambient allowed, as a platform team may: a tenant still never
                // chooses where the operator's token goes (keyless route below).
                spawn_operator(
                    &[
                        "--cluster-resource-namespace",
                        CLUSTER_RESOURCE_NAMESPACE,
                        "--namespaced-service-ambient-credentials",
                    ],
                    "acs-tenancy-",
                )
                .await
            })
        })
        .join()
        .unwrap_or_else(|_| panic!("starting the operator failed (see above)"))
    })
}

/// Two tenant namespaces selected by one ClusterCommunicationService whose credentials
/// live in the cluster resource namespace, on one emulator.
struct World {
    cp: &'static ControlPlane,
    client: Client,
    operator: &'static Operator,
    shared: Emulator,
    a: TestNamespace,
    b: TestNamespace,
    cluster_service: String,
}

impl World {
    async fn new(prefix: &str) -> World {
        let cp = ControlPlane::get();
        let operator = operator();
        let client = cp.admin_client().await;
        let a = TestNamespace::create(cp, &client, &format!("{prefix}-a")).await;
        let b = TestNamespace::create(cp, &client, &format!("{prefix}-b")).await;
        let tenant_label = format!("tenancy-{prefix}");
        for ns in [&a, &b] {
            Api::<Namespace>::all(client.clone())
                .patch(
                    &ns.name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"labels": {"acs-operator.dev/tenant": tenant_label}}}),
                    ),
                )
                .await
                .unwrap();
        }
        let shared = Emulator::start(1.0);
        let cluster_service = format!("shared-{}", a.name);
        let world = World {
            cp,
            client,
            operator,
            shared,
            a,
            b,
            cluster_service,
        };
        world
            .put_secret(
                CLUSTER_RESOURCE_NAMESPACE,
                &world.cluster_service,
                &world.shared.connection_string.clone(),
            )
            .await;
        world
            .cluster_service_named(
                &world.cluster_service,
                json!({"name": world.cluster_service, "namespace": CLUSTER_RESOURCE_NAMESPACE}),
                json!({"matchLabels": {"acs-operator.dev/tenant": tenant_label}}),
            )
            .await;
        world
    }

    async fn cluster_service_named(&self, name: &str, secret_ref: Value, selector: Value) {
        create_in(
            &self.client,
            "",
            "clustercommunicationservices",
            json!({
                "apiVersion": "acs-operator.dev/v1alpha1",
                "kind": "ClusterCommunicationService",
                "metadata": {"name": name},
                "spec": {"connectionStringSecretRef": secret_ref, "namespaceSelector": selector},
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("ClusterCommunicationService {name}: {e}"));
    }

    /// A namespaced CommunicationService `name` with its own credential Secret `name`.
    async fn own_service(&self, ns: &str, name: &str, connection_string: &str) {
        self.put_secret(ns, name, connection_string).await;
        create_in(
            &self.client,
            ns,
            "communicationservices",
            json!({
                "apiVersion": "acs-operator.dev/v1alpha1",
                "kind": "CommunicationService",
                "metadata": {"name": name},
                "spec": {"connectionStringSecretRef": {"name": name}},
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("CommunicationService {ns}/{name}: {e}"));
    }

    async fn put_secret(&self, ns: &str, name: &str, connection_string: &str) {
        put_secret(&self.client, ns, name, connection_string).await;
    }

    fn identities(&self, ns: &str) -> Api<CommunicationIdentity> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// An identity through the shared ClusterCommunicationService, `spec` merged over it.
    async fn shared_identity(&self, ns: &str, name: &str, spec: Value) {
        let service = json!({"kind": "ClusterCommunicationService", "name": self.cluster_service});
        self.identity(ns, name, service, spec).await;
    }

    async fn identity(&self, ns: &str, name: &str, service_ref: Value, spec: Value) {
        let mut full = json!({"serviceRef": service_ref});
        merge(&mut full, spec);
        create_identity(&self.client, ns, name, full).await;
    }

    /// Waits until the identity's Ready condition has `status` and `reason`.
    async fn wait_ready(
        &self,
        ns: &str,
        name: &str,
        status: &str,
        reason: &str,
    ) -> CommunicationIdentity {
        wait_for(&self.identities(ns), name, 60, |obj| {
            condition(obj, "Ready").is_some_and(|c| c.status == status && c.reason == reason)
        })
        .await
        .unwrap_or_else(|| {
            panic!("timed out after 60s waiting for {ns}/{name} Ready={status} {reason}")
        })
    }

    /// A service's Ready condition as `(reason, message)`, read once.
    async fn service_ready(&self, ns: &str, plural: &str, name: &str) -> Option<(String, String)> {
        let ar = acs_resource("", plural);
        let api: Api<kube::core::DynamicObject> = if ns.is_empty() {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), ns, &ar)
        };
        let obj = api.get_opt(name).await.ok()??;
        let ready = obj.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        Some((
            ready["reason"].as_str().unwrap_or_default().to_string(),
            ready["message"].as_str().unwrap_or_default().to_string(),
        ))
    }

    /// Waits until a service's Ready reason is `reason` and its message contains
    /// `message`; returns the message.
    async fn wait_service(
        &self,
        ns: &str,
        plural: &str,
        name: &str,
        reason: &str,
        message: &str,
    ) -> String {
        eventually(
            60,
            &format!("{plural} {name} Ready reason {reason}: {message}"),
            || async {
                let (r, m) = self.service_ready(ns, plural, name).await?;
                (r == reason && m.contains(message)).then_some(m)
            },
        )
        .await
    }

    async fn token(&self, ns: &str, name: &str) -> String {
        secret_data(&self.client, ns, name)
            .await
            .unwrap_or_else(|| panic!("Secret {ns}/{name}"))["token"]
            .clone()
    }

    async fn secret_exists(&self, ns: &str, name: &str) -> bool {
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .unwrap()
            .is_some()
    }

    async fn delete_identity(&self, ns: &str, name: &str) {
        let api = self.identities(ns);
        api.delete(name, &DeleteParams::default()).await.unwrap();
        wait_gone(&api, name, 60).await;
    }

    /// A's identity `alice` through the shared service, Ready: (user id, token).
    async fn victim(&self) -> (String, String) {
        let a = self.a.name.clone();
        self.shared_identity(&a, "alice", json!({})).await;
        let alice = self.wait_ready(&a, "alice", "True", "TokenIssued").await;
        let user = alice.status.unwrap().user_id.expect("alice's user id");
        (user, self.token(&a, "alice").await)
    }

    /// A's user is untouched: its token valid, the user not deleted, tokens never revoked.
    async fn assert_victim_untouched(&self, user: &str, token: &str) {
        let (valid, why) = self.shared.validate(token).await;
        assert!(valid, "A's token is no longer valid: {why}");
        let admin = self.shared.identity(user).await.expect("A's user exists");
        assert!(!admin.deleted, "{admin:?}");
        assert!(admin.tokens_revoked_at.is_none(), "{admin:?}");
    }

    async fn finish(self) {
        for ns in [&self.a, &self.b] {
            let api = self.identities(&ns.name);
            delete_all_identities(&api, &ns.name).await;
        }
        let _ = self.cp.kubectl_run(
            &[
                "delete",
                "clustercommunicationservice",
                &self.cluster_service,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
        assert!(self.operator.is_healthy().await, "operator unhealthy");
    }
}

/// Route 1: `existingUserId` with A's (not secret) user id through the shared service.
/// B gets no Secret, and neither a revoke request nor deleting B's identity (with
/// `deletionPolicy: Delete`) touches A's user.
#[tokio::test]
async fn tenant_b_cannot_adopt_revoke_or_delete_a_user_through_the_shared_service() {
    let w = World::new("ten-adopt").await;
    let (user, token) = w.victim().await;
    let b = w.b.name.clone();
    let issued_before = w.shared.identity(&user).await.unwrap().tokens_issued;

    w.shared_identity(
        &b,
        "mallory",
        json!({"existingUserId": user, "deletionPolicy": "Delete"}),
    )
    .await;
    let m = w
        .wait_ready(&b, "mallory", "False", "AdoptionNotAllowed")
        .await;
    let msg = &condition(&m, "Ready").unwrap().message;
    assert!(
        msg.contains("allowAdoption"),
        "the message names the field: {msg}"
    );
    assert!(!w.secret_exists(&b, "mallory").await, "no Secret for B");

    w.identities(&b)
        .patch(
            "mallory",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {REVOKE_REQUESTED_AT_ANNOTATION: "now"}}}),
            ),
        )
        .await
        .unwrap();
    w.delete_identity(&b, "mallory").await;
    w.assert_victim_untouched(&user, &token).await;
    assert_eq!(
        w.shared.identity(&user).await.unwrap().tokens_issued,
        issued_before,
        "no token was issued for A's user on B's behalf"
    );
    w.finish().await;
}

/// Route 2: point the identity at your own service first, then switch `serviceRef` to
/// the shared one. Refused at admission.
#[tokio::test]
async fn switching_service_ref_is_refused_at_admission() {
    let w = World::new("ten-switch").await;
    let b = w.b.name.clone();
    w.identity(&b, "switch", json!({"name": "own"}), json!({}))
        .await;
    let err = w
        .identities(&b)
        .patch(
            "switch",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"serviceRef": {"kind": "ClusterCommunicationService", "name": w.cluster_service}}})),
        )
        .await
        .expect_err("a serviceRef switch was admitted");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}");
    };
    assert!(
        status.message.contains("serviceRef is immutable"),
        "{}",
        status.message
    );
    w.finish().await;
}

/// A fake ACS that answers every create with `user`'s id and a made-up token, as a
/// tenant's own endpoint may.
async fn fake_acs_answering_with(user: String) -> String {
    // A plausible answer (an operator refuses an expiry no ACS could grant): a JWT-shaped
    // token and an expiry 23 h from now.
    use base64::Engine as _;
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(23);
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"exp": expires.as_second()}).to_string());
    let body = json!({
        "identity": {"id": user},
        "accessToken": {
            "token": format!("eyJhbGciOiJub25lIn0.{payload}.ZmFrZQ"),
            "expiresOn": expires.to_string(),
        },
    });
    let token = body["accessToken"].clone();
    let app = Router::new()
        .route(
            "/identities",
            post(move || {
                let body = body.clone();
                async move { (axum::http::StatusCode::CREATED, axum::Json(body)) }
            }),
        )
        .fallback(move |method: axum::http::Method| {
            let token = token.clone();
            async move {
                if method == axum::http::Method::DELETE {
                    axum::http::StatusCode::NO_CONTENT.into_response()
                } else {
                    axum::Json(token).into_response()
                }
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    format!("http://{addr}")
}

/// Route 3: B's own endpoint answers with A's user id; B then edits its service to the
/// shared endpoint. The identity keeps the endpoint its user lives on and never asks the
/// shared resource for that user's tokens.
#[tokio::test]
async fn an_endpoint_answering_another_tenants_id_never_gets_a_real_token_for_it() {
    let w = World::new("ten-fake").await;
    let (user, token) = w.victim().await;
    let b = w.b.name.clone();
    let fake = fake_acs_answering_with(user.clone()).await;
    let fake_key = "ZmFrZS1rZXktb2YtdGVuYW50LWI=";
    w.own_service(&b, "own", &format!("endpoint={fake}/;accesskey={fake_key}"))
        .await;
    w.identity(&b, "copycat", json!({"name": "own"}), json!({}))
        .await;
    let copy = w.wait_ready(&b, "copycat", "True", "TokenIssued").await;
    let status = copy.status.unwrap();
    assert_eq!(status.user_endpoint.as_deref(), Some(fake.as_str()));
    let before = w.shared.stats().await.requests;

    // B points its own service at the shared endpoint (with any key it can get).
    w.put_secret(
        &b,
        "own",
        &format!("endpoint={}/;accesskey={fake_key}", w.shared.endpoint()),
    )
    .await;
    w.wait_ready(&b, "copycat", "False", "ServiceChanged").await;
    // The user's home is the fake endpoint: put it back so cleanup can reach it there.
    w.put_secret(&b, "own", &format!("endpoint={fake}/;accesskey={fake_key}"))
        .await;
    w.wait_ready(&b, "copycat", "True", "TokenIssued").await;
    assert_eq!(
        w.shared.stats().await.requests,
        before,
        "the shared resource received nothing for B's identity"
    );
    w.assert_victim_untouched(&user, &token).await;
    w.finish().await;
}

/// Route 4: a ClusterCommunicationService naming A's own credential Secret. It is not
/// read and not used: the service and every identity using it say why.
#[tokio::test]
async fn a_cluster_service_naming_a_secret_outside_the_cluster_resource_namespace_is_not_used() {
    let w = World::new("ten-steal").await;
    let (a, b) = (w.a.name.clone(), w.b.name.clone());
    w.put_secret(&a, "team-a-acs", &w.shared.connection_string.clone())
        .await;
    let stolen = format!("stolen-{a}");
    w.cluster_service_named(
        &stolen,
        json!({"name": "team-a-acs", "namespace": a}),
        json!({"matchLabels": {"kubernetes.io/metadata.name": b}}),
    )
    .await;
    let before = w.shared.stats().await.total;
    w.identity(
        &b,
        "thief",
        json!({"kind": "ClusterCommunicationService", "name": stolen}),
        json!({}),
    )
    .await;
    w.wait_ready(&b, "thief", "False", "SecretNamespaceNotAllowed")
        .await;
    let msg = w
        .wait_service(
            "",
            "clustercommunicationservices",
            &stolen,
            "SecretNamespaceNotAllowed",
            "",
        )
        .await;
    assert!(
        msg.contains(CLUSTER_RESOURCE_NAMESPACE),
        "names where it must be: {msg}"
    );
    assert!(!w.secret_exists(&b, "thief").await);
    assert_eq!(w.shared.stats().await.total, before, "no ACS request");
    w.delete_identity(&b, "thief").await;
    let _ = w.cp.kubectl_run(
        &[
            "delete",
            "clustercommunicationservice",
            &stolen,
            "--wait=false",
        ],
        None,
    );
    w.finish().await;
}

/// Route 4b, keyless: a ClusterCommunicationService naming A's ServiceAccount, and B's own
/// CommunicationService borrowing the operator's identity (ambient, which this operator
/// allows for namespaced services) and choosing where its token would go
/// (`authorityHost`). Neither is used: no TokenRequest, no ACS request, and the services
/// and identities say why.
#[tokio::test]
async fn keyless_services_never_borrow_another_namespaces_or_the_operators_identity() {
    let w = World::new("ten-entra").await;
    let (a, b) = (w.a.name.clone(), w.b.name.clone());
    let endpoint = w.shared.endpoint().replace("http://", "https://");
    let borrowed = format!("borrowed-{a}");
    create_in(
        &w.client,
        "",
        "clustercommunicationservices",
        json!({
            "apiVersion": "acs-operator.dev/v1alpha1",
            "kind": "ClusterCommunicationService",
            "metadata": {"name": borrowed},
            "spec": {
                "endpoint": endpoint,
                "entraId": {"serviceAccountRef": {"name": "default", "namespace": a}},
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": b}},
            },
        }),
    )
    .await
    .unwrap();
    create_in(
        &w.client,
        &b,
        "communicationservices",
        json!({
            "apiVersion": "acs-operator.dev/v1alpha1",
            "kind": "CommunicationService",
            "metadata": {"name": "ambient"},
            "spec": {
                "endpoint": endpoint,
                "entraId": {"clientId": "someone-elses", "authorityHost": "https://attacker.example"},
            },
        }),
    )
    .await
    .unwrap();
    let before = w.shared.stats().await.total;
    w.identity(
        &b,
        "via-a",
        json!({"kind": "ClusterCommunicationService", "name": borrowed}),
        json!({}),
    )
    .await;
    w.identity(
        &b,
        "via-operator",
        json!({"kind": "CommunicationService", "name": "ambient"}),
        json!({}),
    )
    .await;
    w.wait_ready(&b, "via-a", "False", "ServiceAccountNamespaceNotAllowed")
        .await;
    w.wait_ready(&b, "via-operator", "False", "AmbientCredentialsNotAllowed")
        .await;
    let msg = w
        .wait_service(
            "",
            "clustercommunicationservices",
            &borrowed,
            "ServiceAccountNamespaceNotAllowed",
            CLUSTER_RESOURCE_NAMESPACE,
        )
        .await;
    assert!(msg.contains(&a), "names the namespace it refused: {msg}");
    w.wait_service(
        &b,
        "communicationservices",
        "ambient",
        "AmbientCredentialsNotAllowed",
        "authorityHost",
    )
    .await;
    assert!(!w.secret_exists(&b, "via-a").await);
    assert!(!w.secret_exists(&b, "via-operator").await);
    assert_eq!(w.shared.stats().await.total, before, "no ACS request");
    let _ = w.cp.kubectl_run(
        &[
            "delete",
            "clustercommunicationservice",
            &borrowed,
            "--wait=false",
        ],
        None,
    );
    w.finish().await;
}

/// Route 5: plain http to a non-loopback host, and credentials in the endpoint URL.
#[tokio::test]
async fn user_info_endpoints_are_refused_even_with_plain_http_allowed() {
    let w = World::new("ten-http").await;
    let b = w.b.name.clone();
    let key = "c2VjcmV0LWtleS1ieXRlcy1mb3ItaHR0cA==";
    // Plain http is refused without `--allow-insecure-endpoints`, which this binary's
    // operator runs with (its emulators speak plain http): tests/hostile.rs proves that
    // refusal on an operator run without the flag. User info is refused whatever the flag.
    for (service, endpoint) in [("userinfo", "https://tenant:pa55word@192.0.2.10/")] {
        w.own_service(&b, service, &format!("endpoint={endpoint};accesskey={key}"))
            .await;
        w.identity(&b, service, json!({"name": service}), json!({}))
            .await;
        let obj = w.wait_ready(&b, service, "False", "InsecureEndpoint").await;
        let msg = &condition(&obj, "Ready").unwrap().message;
        assert!(!msg.contains("pa55word"), "{msg}");
        let svc_msg = w
            .wait_service(&b, "communicationservices", service, "InsecureEndpoint", "")
            .await;
        assert!(!svc_msg.contains("pa55word"), "{svc_msg}");
    }
    w.finish().await;
}

/// Whatever the malformation, no 6-character piece of the access key reaches status,
/// events or the operator's log.
#[tokio::test]
async fn malformed_connection_strings_leak_no_piece_of_the_key() {
    let w = World::new("ten-leak").await;
    let b = w.b.name.clone();
    // A known, random key: any 6 characters of it in a log are no coincidence.
    let key = base64_key();
    let ep = "https://tenant-b.communication.azure.com/";
    let unpadded = key.trim_end_matches('=');
    // No two neighbours give the same error, so each one is seen before the next.
    let malformed = [
        format!("endpoint={key};accesskey={ep}"),
        key.clone(),
        format!("endpoint={ep};{key}"),
        format!("endpoint={ep};accesskey={key}!!"),
        format!("endpoint={ep};accesskey={key};accesskey={key}"),
        format!("endpoint=ftp://{unpadded}/;accesskey={key}"),
        format!("endpoint={ep};accesskey={}", &key[..key.len() - 3]),
        format!("endpoint={ep}accesskey={key}"),
        format!("{key}={key}"),
        format!("endpoint={unpadded}://x/;accesskey={key}"),
    ];
    w.own_service(&b, "leaky", &malformed[0]).await;
    w.identity(&b, "leak", json!({"name": "leaky"}), json!({}))
        .await;
    for cs in &malformed {
        let expected = ConnectionString::parse(cs)
            .expect_err("malformed")
            .to_string();
        w.put_secret(&b, "leaky", cs).await;
        let api = w.identities(&b);
        w.wait_service(
            &b,
            "communicationservices",
            "leaky",
            "ConnectionStringInvalid",
            &expected,
        )
        .await;
        // The identity has seen it too (Ready=False) before the next malformation.
        eventually(60, "the identity to be not Ready", || {
            let api = api.clone();
            async move {
                let obj = api.get("leak").await.ok()?;
                (condition(&obj, "Ready")?.status == "False").then_some(())
            }
        })
        .await;
    }

    let mut places = vec![("the operator's log".to_string(), w.operator.log_text())];
    for id in w.identities(&b).list(&ListParams::default()).await.unwrap() {
        places.push((
            "identity status".into(),
            serde_json::to_string(&id.status).unwrap(),
        ));
    }
    let services = Api::<kube::core::DynamicObject>::namespaced_with(
        w.client.clone(),
        &b,
        &acs_resource("CommunicationService", "communicationservices"),
    );
    for s in services.list(&ListParams::default()).await.unwrap() {
        places.push(("service status".into(), s.data["status"].to_string()));
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(w.client.clone(), &b);
    for e in events.list(&ListParams::default()).await.unwrap() {
        places.push(("an event".into(), serde_json::to_string(&e).unwrap()));
    }
    let core_events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(w.client.clone(), &b);
    for e in core_events.list(&ListParams::default()).await.unwrap() {
        places.push(("a core event".into(), serde_json::to_string(&e).unwrap()));
    }
    let chars: Vec<char> = key.chars().collect();
    for window in chars.windows(6) {
        let piece: String = window.iter().collect();
        for (place, text) in &places {
            assert!(!text.contains(&piece), "{piece:?} of the key is in {place}");
        }
    }
    w.finish().await;
}

fn base64_key() -> String {
    use base64::Engine as _;
    let bytes: [u8; 48] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
