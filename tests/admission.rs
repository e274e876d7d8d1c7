//! Admission on a real API server (no operator): the CRDs' schema and CEL rules refuse
//! what the operator could never serve or must not do (names too long for the Secret's
//! label, renewals closer than the token interval floor, a user moved to another ACS
//! resource by a `serviceRef` change), with a message a person understands.
//!
//! Run: `cargo test --test admission` (starts its own control plane unless
//! `ACS_TEST_KUBECONFIG` is set).

mod support;

use acs_identity_operator::api::{
    ClusterCommunicationService, CommunicationIdentity, CommunicationService,
};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::{ControlPlane, TestNamespace, install_crds};

fn object<T: DeserializeOwned>(kind: &str, name: &str, spec: Value) -> T {
    serde_json::from_value(json!({
        "apiVersion": "acs-operator.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
}

fn identity(name: &str, spec: Value) -> CommunicationIdentity {
    let mut full = json!({"scopes": ["chat"]});
    full.as_object_mut()
        .expect("object")
        .extend(spec.as_object().cloned().unwrap_or_default());
    object("CommunicationIdentity", name, full)
}

fn api_message(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn identity_names_are_limited_to_what_a_label_value_holds() {
    let cp = ControlPlane::get();
    install_crds(cp);
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "admission-name").await;
    let api: Api<CommunicationIdentity> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();

    let too_long = "a".repeat(64);
    let msg = api_message(
        api.create(&pp, &identity(&too_long, json!({})))
            .await
            .expect_err("a 64-character name was admitted"),
    );
    assert!(
        msg.contains("metadata.name must be at most 63 characters"),
        "{msg}"
    );
    let longest = "a".repeat(63);
    api.create(&pp, &identity(&longest, json!({})))
        .await
        .expect("a 63-character name is admitted");
    ns.delete(&client).await;
}

#[tokio::test]
async fn renew_before_must_leave_the_token_interval_floor() {
    let cp = ControlPlane::get();
    install_crds(cp);
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "admission-floor").await;
    let api: Api<CommunicationIdentity> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();

    for (name, renew_before) in [("floor-14s", "59m46s"), ("floor-1s", "59m59s")] {
        let msg = api_message(
            api.create(
                &pp,
                &identity(
                    name,
                    json!({"tokenLifetime": "1h", "renewBefore": renew_before}),
                ),
            )
            .await
            .expect_err(&format!("{name} was admitted")),
        );
        assert!(
            msg.contains("renewBefore must leave at least 15s between renewals"),
            "{name}: {msg}"
        );
        assert!(
            !msg.contains("must be shorter than tokenLifetime"),
            "one mistake, one message: {msg}"
        );
    }
    // renewBefore >= lifetime keeps its own message (and only that one).
    let msg = api_message(
        api.create(
            &pp,
            &identity("equal", json!({"tokenLifetime": "1h", "renewBefore": "1h"})),
        )
        .await
        .expect_err("renewBefore == tokenLifetime was admitted"),
    );
    assert!(
        msg.contains("renewBefore must be shorter than tokenLifetime")
            && !msg.contains("at least 15s"),
        "{msg}"
    );
    api.create(
        &pp,
        &identity(
            "floor-15s",
            json!({"tokenLifetime": "1h", "renewBefore": "59m45s"}),
        ),
    )
    .await
    .expect("exactly 15s between renewals is admitted");
    ns.delete(&client).await;
}

#[tokio::test]
async fn service_ref_is_immutable_including_adding_and_removing_it() {
    let cp = ControlPlane::get();
    install_crds(cp);
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "admission-serviceref").await;
    let api: Api<CommunicationIdentity> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();
    api.create(
        &pp,
        &identity("pinned", json!({"serviceRef": {"name": "team-acs"}})),
    )
    .await
    .unwrap();
    api.create(&pp, &identity("defaulted", json!({})))
        .await
        .unwrap();

    let refused: &[(&str, Value)] = &[
        (
            "pinned",
            json!({"spec": {"serviceRef": {"name": "shared"}}}),
        ),
        (
            "pinned",
            json!({"spec": {"serviceRef": {"kind": "ClusterCommunicationService", "name": "team-acs"}}}),
        ),
        ("pinned", json!({"spec": {"serviceRef": null}})),
        (
            "defaulted",
            json!({"spec": {"serviceRef": {"kind": "ClusterCommunicationService", "name": "shared"}}}),
        ),
    ];
    for (name, patch) in refused {
        let msg = api_message(
            api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect_err(&format!("{name}: {patch} was admitted")),
        );
        assert!(
            msg.contains("serviceRef is immutable")
                && msg.contains("create a new CommunicationIdentity"),
            "{name}: {msg}"
        );
    }

    // Other edits still go through, and spelling out the defaulted kind is no change.
    for (name, patch) in [
        ("pinned", json!({"spec": {"scopes": ["chat", "voip"]}})),
        (
            "pinned",
            json!({"spec": {"serviceRef": {"kind": "CommunicationService", "name": "team-acs"}}}),
        ),
        ("defaulted", json!({"spec": {"tokenLifetime": "2h"}})),
    ] {
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("{name}: {patch} was refused: {e}"));
    }
    ns.delete(&client).await;
}

#[tokio::test]
async fn services_store_allow_adoption_and_resolve_its_default_by_kind() {
    let cp = ControlPlane::get();
    install_crds(cp);
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "admission-adoption").await;
    let pp = PostParams::default();
    let services: Api<CommunicationService> = Api::namespaced(client.clone(), &ns.name);
    let clusters: Api<ClusterCommunicationService> = Api::all(client.clone());
    let secret_ref = json!({"name": "acs"});

    let plain: CommunicationService = services
        .create(
            &pp,
            &object(
                "CommunicationService",
                "plain",
                json!({"connectionStringSecretRef": secret_ref}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(plain.spec.allow_adoption, None);
    assert!(plain.spec.allows_adoption(), "a namespace's own key");
    let closed: CommunicationService = services
        .create(
            &pp,
            &object(
                "CommunicationService",
                "closed",
                json!({"connectionStringSecretRef": secret_ref, "allowAdoption": false}),
            ),
        )
        .await
        .unwrap();
    assert!(!closed.spec.allows_adoption());

    let cluster_ref = json!({"name": "acs", "namespace": "acs-system"});
    let shared_name = format!("{}-shared", ns.name);
    let shared: ClusterCommunicationService = clusters
        .create(
            &pp,
            &object(
                "ClusterCommunicationService",
                &shared_name,
                json!({"connectionStringSecretRef": cluster_ref}),
            ),
        )
        .await
        .unwrap();
    assert!(!shared.spec.allows_adoption(), "a shared key");
    let open_name = format!("{}-open", ns.name);
    let open: ClusterCommunicationService = clusters
        .create(
            &pp,
            &object(
                "ClusterCommunicationService",
                &open_name,
                json!({"connectionStringSecretRef": cluster_ref, "allowAdoption": true}),
            ),
        )
        .await
        .unwrap();
    assert!(open.spec.allows_adoption());

    // Not a boolean: refused by the schema, not silently read as false.
    let mut bad: Value = json!({
        "apiVersion": "acs-operator.dev/v1alpha1",
        "kind": "CommunicationService",
        "metadata": {"name": "bad", "namespace": ns.name},
        "spec": {"connectionStringSecretRef": secret_ref, "allowAdoption": "yes"},
    });
    let (ok, _, err) = cp.kubectl_run(
        &["create", "-f", "-"],
        Some(&serde_json::to_string(&bad.take()).unwrap()),
    );
    assert!(!ok, "allowAdoption: \"yes\" was admitted");
    assert!(err.contains("allowAdoption"), "{err}");

    for name in [&shared_name, &open_name] {
        clusters
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    ns.delete(&client).await;
}

#[tokio::test]
async fn services_take_exactly_one_credential_and_entra_only_over_https() {
    let cp = ControlPlane::get();
    install_crds(cp);
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "admission-entra").await;
    let api: Api<CommunicationService> = Api::namespaced(client.clone(), &ns.name);
    let cluster: Api<ClusterCommunicationService> = Api::all(client.clone());
    let pp = PostParams::default();
    let ep = "https://acs.example.communication.azure.com";
    let refused = [
        (
            "both",
            json!({"connectionStringSecretRef": {"name": "acs"}, "endpoint": ep, "entraId": {}}),
            "exactly one of",
        ),
        ("neither", json!({}), "exactly one of"),
        (
            "no-endpoint",
            json!({"entraId": {"serviceAccountRef": {"name": "sa"}}}),
            "spec.endpoint is required",
        ),
        (
            "endpoint-with-key",
            json!({"connectionStringSecretRef": {"name": "acs"}, "endpoint": ep}),
            "spec.endpoint is required",
        ),
        (
            "http",
            json!({"endpoint": "http://acs.example", "entraId": {}}),
            "https://",
        ),
        (
            "http-authority",
            json!({"endpoint": ep, "entraId": {"authorityHost": "http://login.example"}}),
            "authorityHost must be an https",
        ),
    ];
    for (name, spec, needle) in &refused {
        let msg = api_message(
            api.create(&pp, &object("CommunicationService", name, spec.clone()))
                .await
                .expect_err(name),
        );
        assert!(msg.contains(needle), "{name}: {msg}");
        let mut cspec = spec.clone();
        if let Some(r) = cspec.get_mut("connectionStringSecretRef") {
            r["namespace"] = json!("acs-system");
        }
        if let Some(r) = cspec.pointer_mut("/entraId/serviceAccountRef") {
            r["namespace"] = json!("acs-system");
        }
        let cname = format!("{}-{name}", ns.name);
        let msg = api_message(
            cluster
                .create(&pp, &object("ClusterCommunicationService", &cname, cspec))
                .await
                .expect_err(name),
        );
        assert!(msg.contains(needle), "cluster {name}: {msg}");
    }
    api.create(
        &pp,
        &object(
            "CommunicationService",
            "entra",
            json!({"endpoint": ep, "entraId": {"serviceAccountRef": {"name": "acs-client"}}}),
        ),
    )
    .await
    .expect("an Entra service is admitted");
    api.create(
        &pp,
        &object(
            "CommunicationService",
            "key",
            json!({"connectionStringSecretRef": {"name": "acs"}}),
        ),
    )
    .await
    .expect("a connection-string service is admitted as before");
}

/// Issue 18: rollout restart targets are what a tenant may restart and no more: the
/// three apps kinds, DNS names, no namespace field, at most 16, no duplicates.
#[tokio::test]
async fn rollout_restart_targets_are_bounded() {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let cp = ControlPlane::get();
    install_crds(cp);
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "admission-rollout").await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("acs-operator.dev", "v1beta1", "CommunicationIdentity"),
        "communicationidentities",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    let create = |name: &str, targets: Value| {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "acs-operator.dev/v1beta1", "kind": "CommunicationIdentity",
            "metadata": {"name": name},
            "spec": {"scopes": ["chat"], "rolloutRestartTargets": targets},
        }))
        .expect("object");
        let api = api.clone();
        async move { api.create(&PostParams::default(), &obj).await }
    };
    let sixteen: Vec<Value> = (0..16)
        .map(|i| json!({"kind": "Deployment", "name": format!("web-{i}")}))
        .collect();
    create("ok", json!(sixteen))
        .await
        .expect("16 targets are admitted");
    let mut seventeen = sixteen.clone();
    seventeen.push(json!({"kind": "Deployment", "name": "one-more"}));
    for (what, targets, needle) in [
        ("17 targets", json!(seventeen), "16"),
        (
            "a Pod",
            json!([{"kind": "Pod", "name": "p"}]),
            "Unsupported value",
        ),
        (
            "a CronJob",
            json!([{"kind": "CronJob", "name": "c"}]),
            "Unsupported value",
        ),
        (
            "a bad name",
            json!([{"kind": "Deployment", "name": "Web/../x"}]),
            "name",
        ),
        (
            "a duplicate",
            json!([{"kind": "Deployment", "name": "a"}, {"kind": "Deployment", "name": "a"}]),
            "Duplicate value",
        ),
    ] {
        let msg = api_message(
            create("bad", targets)
                .await
                .expect_err(&format!("{what} was admitted")),
        );
        assert!(msg.contains(needle), "{what}: {msg}");
    }
    // A namespace field is not part of the schema: pruned, so it cannot point elsewhere.
    let created = create(
        "pruned",
        json!([{"kind": "Deployment", "name": "web", "namespace": "kube-system"}]),
    )
    .await
    .expect("unknown fields are pruned");
    assert_eq!(
        created.data["spec"]["rolloutRestartTargets"],
        json!([{"kind": "Deployment", "name": "web"}])
    );
    ns.delete(&client).await;
}
