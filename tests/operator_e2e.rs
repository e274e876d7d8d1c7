//! End-to-end: the operator as its own process, under exactly the RBAC the Helm chart
//! renders, on the local control plane, against a real ACS emulator
//! process per test. Each test reads like a user's story and asserts through the API and
//! the emulator's admin view; every test ends by proving that no token reached the
//! operator's log, an identity's status or an event.
//!
//! Run: `cargo test --test operator_e2e` (starts its own control plane unless
//! `ACS_TEST_KUBECONFIG` is set).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use acs_identity_operator::acs::{AcsClient, AcsClientOptions, ConnectionString};
use acs_identity_operator::api::{
    CommunicationIdentity, RENEW_REQUESTED_AT_ANNOTATION, REVOKE_REQUESTED_AT_ANNOTATION,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use support::operator::OPERATOR_NAMESPACE;
use support::world::{SERVICE, World, condition, create_in, jwt_claims, put_secret};
use support::{ControlPlane, TestNamespace, eventually, install_crds};

fn status(obj: &CommunicationIdentity) -> &acs_identity_operator::api::CommunicationIdentityStatus {
    obj.status.as_ref().expect("status")
}

async fn merge_patch(env: &World, name: &str, patch: Value) {
    env.identities()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patch {name}: {e}"));
}

/// Waits until the Secret holds a token other than `old`; returns it.
async fn wait_new_token(env: &World, secret: &str, old: &str, secs: u64) -> String {
    eventually(secs, &format!("a new token in Secret {secret}"), || async {
        env.token(secret).await.filter(|t| t != old)
    })
    .await
}

/// How many tokens the emulator issued to `user` (a create with a token counts).
async fn tokens_issued(env: &World, user: &str) -> u64 {
    let at = env.emulator.identity(user).await.expect("user at ACS");
    at.tokens_issued
}

/// Lets any reconcile that the last change triggered run to its end.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

fn scopes_of(token: &str) -> BTreeSet<String> {
    jwt_claims(token)["acsScope"]
        .as_str()
        .expect("acsScope claim")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

// a.
#[tokio::test]
async fn an_applied_identity_gets_a_user_a_valid_token_in_its_secret_status_and_events() {
    let env = World::new("e2e-apply", 1.0).await;
    env.create_identity("app", json!({"scopes": ["chat", "voip"]}))
        .await;
    let obj = env.wait_ready("app").await;
    let st = status(&obj);

    let data = env.secret_data("app").await.expect("Secret app exists");
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["token", "expiresOn", "userId", "endpoint"])
    );
    let token = env.token("app").await.expect("token");
    assert_eq!(env.emulator.validate(&token).await, (true, "valid".into()));
    let user = st.user_id.clone().expect("status.userId");
    assert_eq!(data["userId"], user);
    assert_eq!(
        data["endpoint"].trim_end_matches('/'),
        env.emulator.endpoint()
    );
    let expires: Timestamp = data["expiresOn"].parse().expect("expiresOn is RFC 3339");
    assert_eq!(
        st.token_expires_on.as_ref().map(|t| t.0),
        Some(expires),
        "status.tokenExpiresOn is the Secret's expiresOn"
    );
    let renewal = st.renewal_time.as_ref().expect("status.renewalTime").0;
    assert!(renewal < expires && renewal > Timestamp::now());
    assert_eq!(
        jwt_claims(&token)["exp"].as_i64(),
        Some(expires.as_second())
    );
    assert_eq!(
        scopes_of(&token),
        BTreeSet::from(["chat".into(), "voip".into()])
    );

    let at_emulator = env.emulator.identity(&user).await.expect("user at ACS");
    assert!(!at_emulator.deleted);
    assert_eq!(
        env.emulator.identities().await.len(),
        1,
        "exactly one user created"
    );

    let secret = env.secrets().get("app").await.unwrap();
    let owner = &secret.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        (obj.meta().uid.as_deref().unwrap(), Some(true))
    );
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));

    // One event for a new identity (an API write each): the user and its first token.
    let created = env.wait_event("app", "UserCreated", Some("Normal")).await;
    let note = created.note.unwrap_or_default();
    assert!(
        note.contains("token") && note.contains("Secret app"),
        "{note}"
    );
    settle().await;
    assert_eq!(
        tokens_issued(&env, &user).await,
        1,
        "one ACS call per token: the first token came with the user"
    );
    assert_eq!(env.token("app").await.as_deref(), Some(token.as_str()));
    env.finish().await;
}

// b.
#[tokio::test]
async fn tokens_are_renewed_before_they_expire_and_old_ones_stay_valid() {
    // 1 h tokens live 36 s: renewal at about two thirds, every ~24 s.
    let env = World::new("e2e-renew", 0.01).await;
    env.create_identity("app", json!({"tokenLifetime": "1h"}))
        .await;
    let obj = env.wait_ready("app").await;
    let user = status(&obj).user_id.clone().unwrap();

    let mut current = env.secret_data("app").await.unwrap();
    env.remember(&current["token"]);
    let mut replacements = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while replacements < 2 {
        assert!(
            Instant::now() < deadline,
            "only {replacements} renewals within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(next) = env.secret_data("app").await else {
            continue;
        };
        if next.get("token") == current.get("token") {
            continue;
        }
        let now = Timestamp::now();
        let old_expiry: Timestamp = current["expiresOn"].parse().unwrap();
        env.remember(&next["token"]);
        assert!(
            now < old_expiry,
            "token replaced at {now}, after the old one expired at {old_expiry}"
        );
        assert_eq!(next["userId"], user, "renewal keeps the user");
        assert_eq!(
            env.emulator.validate(&current["token"]).await,
            (true, "valid".into()),
            "a routine renewal never revokes the previous token"
        );
        assert!(
            env.emulator.validate(&next["token"]).await.0,
            "the token is valid"
        );
        let new_expiry: Timestamp = next["expiresOn"].parse().unwrap();
        assert!(new_expiry > old_expiry);
        current = next;
        replacements += 1;
    }
    let obj = env.identities().get("app").await.unwrap();
    assert_eq!(
        condition(&obj, "Ready").map(|c| c.status.as_str()),
        Some("True")
    );
    let at_emulator = env.emulator.identity(&user).await.unwrap();
    assert!(at_emulator.tokens_revoked_at.is_none(), "{at_emulator:?}");
    assert_eq!(env.emulator.identities().await.len(), 1);
    env.finish().await;
}

// c.
#[tokio::test]
async fn changing_scopes_issues_a_token_with_the_new_scopes_for_the_same_user() {
    let env = World::new("e2e-scopes", 1.0).await;
    env.create_identity("app", json!({"scopes": ["chat"]}))
        .await;
    let obj = env.wait_ready("app").await;
    let user = status(&obj).user_id.clone().unwrap();
    let old = env.token("app").await.unwrap();
    assert_eq!(scopes_of(&old), BTreeSet::from(["chat".into()]));

    merge_patch(
        &env,
        "app",
        json!({"spec": {"scopes": ["voip", "chat.join"]}}),
    )
    .await;
    let new = wait_new_token(&env, "app", &old, 60).await;
    assert_eq!(
        scopes_of(&new),
        BTreeSet::from(["voip".into(), "chat.join".into()])
    );
    assert!(env.emulator.validate(&new).await.0, "the token is valid");
    let obj = eventually(60, "status.tokenScopes to follow spec.scopes", || async {
        let obj = env.identities().get("app").await.ok()?;
        let scopes: Vec<String> = status(&obj)
            .token_scopes
            .iter()
            .flatten()
            .map(|s| s.as_str().to_string())
            .collect();
        (scopes == ["voip", "chat.join"] || scopes == ["chat.join", "voip"]).then_some(obj)
    })
    .await;
    assert_eq!(status(&obj).user_id.as_deref(), Some(user.as_str()));
    assert_eq!(env.secret_data("app").await.unwrap()["userId"], user);
    assert_eq!(env.emulator.identities().await.len(), 1, "no second user");
    settle().await;
    assert_eq!(
        tokens_issued(&env, &user).await,
        2,
        "one new token per change"
    );
    assert_eq!(env.token("app").await.as_deref(), Some(new.as_str()));
    env.finish().await;
}

// d.
#[tokio::test]
async fn a_deleted_or_edited_secret_is_restored_for_the_same_user() {
    let env = World::new("e2e-restore", 1.0).await;
    env.create_identity("app", json!({})).await;
    let obj = env.wait_ready("app").await;
    let user = status(&obj).user_id.clone().unwrap();
    let first = env.token("app").await.unwrap();

    let started = Instant::now();
    env.secrets()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    let restored = eventually(30, "the deleted Secret to come back", || async {
        env.token("app").await
    })
    .await;
    eprintln!("deleted Secret restored in {:?}", started.elapsed());
    assert_eq!(env.secret_data("app").await.unwrap()["userId"], user);
    assert!(
        env.emulator.validate(&restored).await.0,
        "the token is valid"
    );

    let forged = json!({"data": {"token": base64_of("forged")}});
    env.secrets()
        .patch("app", &PatchParams::default(), &Patch::Merge(&forged))
        .await
        .unwrap();
    let fixed = eventually(30, "the edited token to be replaced", || async {
        env.token("app")
            .await
            .filter(|t| t != "forged" && *t != restored)
    })
    .await;
    assert_eq!(env.emulator.validate(&fixed).await, (true, "valid".into()));
    let data = env.secret_data("app").await.unwrap();
    assert_eq!(data["userId"], user);
    assert_eq!(env.emulator.identities().await.len(), 1, "no second user");
    let _ = first;
    env.finish().await;
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

// e.
#[tokio::test]
async fn renew_and_revoke_annotations() {
    let env = World::new("e2e-annotate", 1.0).await;
    env.create_identity("app", json!({})).await;
    let obj = env.wait_ready("app").await;
    let user = status(&obj).user_id.clone().unwrap();
    let first = env.token("app").await.unwrap();

    let at = Timestamp::now().to_string();
    merge_patch(
        &env,
        "app",
        json!({"metadata": {"annotations": {RENEW_REQUESTED_AT_ANNOTATION: at}}}),
    )
    .await;
    let renewed = wait_new_token(&env, "app", &first, 60).await;
    assert!(
        env.emulator.validate(&renewed).await.0,
        "the token is valid"
    );
    assert_eq!(
        env.emulator.validate(&first).await,
        (true, "valid".into()),
        "renewal keeps the old token valid"
    );
    // Handled once: no further tokens for the same request.
    settle().await;
    assert_eq!(env.token("app").await.as_deref(), Some(renewed.as_str()));
    assert_eq!(tokens_issued(&env, &user).await, 2, "one token per request");

    let before_revoke = Timestamp::now();
    let at = Timestamp::now().to_string();
    merge_patch(
        &env,
        "app",
        json!({"metadata": {"annotations": {REVOKE_REQUESTED_AT_ANNOTATION: at}}}),
    )
    .await;
    let fresh = wait_new_token(&env, "app", &renewed, 60).await;
    assert_eq!(
        env.emulator.validate(&renewed).await,
        (false, "revoked".into())
    );
    assert!(
        !env.emulator.validate(&first).await.0,
        "the token is invalid"
    );
    assert_eq!(env.emulator.validate(&fresh).await, (true, "valid".into()));
    let obj = eventually(30, "status.lastRevokedAt", || async {
        let obj = env.identities().get("app").await.ok()?;
        status(&obj).last_revoked_at.is_some().then_some(obj)
    })
    .await;
    let revoked_at = status(&obj).last_revoked_at.as_ref().unwrap().0;
    assert!(revoked_at.as_second() >= before_revoke.as_second() - 1);
    assert_eq!(status(&obj).user_id.as_deref(), Some(user.as_str()));
    env.wait_event("app", "TokensRevoked", Some("Normal")).await;
    // Revoked once: the token written after the revocation stays in force.
    settle().await;
    assert_eq!(env.token("app").await.as_deref(), Some(fresh.as_str()));
    assert_eq!(env.emulator.validate(&fresh).await, (true, "valid".into()));
    assert_eq!(tokens_issued(&env, &user).await, 3, "one token per request");
    env.finish().await;
}

// f.
#[tokio::test]
async fn an_adopted_user_gets_tokens_and_is_kept_with_its_tokens_revoked_on_delete() {
    let env = World::new("e2e-adopt", 1.0).await;
    let acs = AcsClient::new(
        &ConnectionString::parse(&env.emulator.connection_string).unwrap(),
        AcsClientOptions {
            allow_insecure_endpoints: true,
            ..AcsClientOptions::default()
        },
    )
    .unwrap();
    let user = acs.create_user(None, None, None).await.unwrap().user.id;

    env.create_identity("adopted", json!({"existingUserId": user}))
        .await;
    let obj = env.wait_ready("adopted").await;
    assert_eq!(status(&obj).user_id.as_deref(), Some(user.as_str()));
    let data = env.secret_data("adopted").await.unwrap();
    assert_eq!(data["userId"], user);
    let token = env.token("adopted").await.unwrap();
    assert_eq!(env.emulator.validate(&token).await, (true, "valid".into()));
    assert_eq!(
        jwt_claims(&token)["skypeid"]
            .as_str()
            .map(|s| format!("8:{s}")),
        Some(user.clone())
    );
    assert_eq!(env.emulator.identities().await.len(), 1, "nothing created");
    env.wait_event("adopted", "UserAdopted", None).await;

    env.identities()
        .delete("adopted", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("adopted", 60).await;
    let at = env.emulator.identity(&user).await.unwrap();
    assert!(!at.deleted, "Retain keeps the adopted user: {at:?}");
    assert!(at.tokens_revoked_at.is_some(), "tokens revoked: {at:?}");
    assert_eq!(
        env.emulator.validate(&token).await,
        (false, "revoked".into())
    );
    env.finish().await;
}

// g.
#[tokio::test]
async fn deleting_an_identity_deletes_its_user_and_its_secret() {
    let env = World::new("e2e-delete", 1.0).await;
    env.create_identity("app", json!({})).await;
    let obj = env.wait_ready("app").await;
    let user = status(&obj).user_id.clone().unwrap();
    let token = env.token("app").await.unwrap();
    assert!(
        obj.finalizers()
            .iter()
            .any(|f| f == "acs-operator.dev/cleanup")
    );

    env.identities()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("app", 60).await;
    let at = env.emulator.identity(&user).await.unwrap();
    assert!(at.deleted, "{at:?}");
    assert!(
        !env.emulator.validate(&token).await.0,
        "the token is invalid"
    );
    eventually(90, "the Secret to be garbage-collected", || async {
        env.secrets()
            .get_opt("app")
            .await
            .ok()
            .filter(Option::is_none)
            .map(|_| ())
    })
    .await;
    let left = env.emulator.live_users().await;
    assert!(left.is_empty(), "users left undeleted: {left:?}");
    env.finish().await;
}

// h.
#[tokio::test]
async fn a_foreign_secret_is_never_overwritten_and_the_conflict_is_reported() {
    let env = World::new("e2e-conflict", 1.0).await;
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": {"name": "precious"},
        "stringData": {"token": "hand-made", "note": "do not touch"},
    }))
    .unwrap();
    env.secrets()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let before = env.secrets().get("precious").await.unwrap();

    env.create_identity("app", json!({"secretName": "precious"}))
        .await;
    let obj = env
        .wait_ready_is("app", "False", Some("SecretConflict"), 60)
        .await;
    let conflict = condition(&obj, "SecretConflict").expect("SecretConflict condition");
    assert_eq!(conflict.status, "True");
    assert!(
        conflict.message.contains("precious"),
        "the message names the Secret: {}",
        conflict.message
    );
    // Several reconciles later the Secret is still exactly as it was.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = env.secrets().get("precious").await.unwrap();
    assert_eq!(after.data, before.data, "the foreign Secret was modified");
    assert_eq!(after.metadata.owner_references, None);
    assert_eq!(after.metadata.labels, before.metadata.labels);
    assert_eq!(after.metadata.annotations, before.metadata.annotations);
    // A new identity's Secret is written by a plain create, which the API server refuses
    // for a taken name (no read first: issue 19). The user made before the refusal is the
    // identity's own, recorded in status, and the only one.
    let users = env.emulator.identities().await;
    assert!(
        users.len() <= 1,
        "at most the identity's own user: {users:?}"
    );
    let recorded = obj.status.as_ref().and_then(|s| s.user_id.clone());
    if let Some(user) = users.first() {
        assert_eq!(
            recorded.as_deref(),
            Some(user.id.as_str()),
            "the user is recorded in status"
        );
    }
    env.wait_event("app", "SecretConflict", Some("Warning"))
        .await;

    env.secrets()
        .delete("precious", &DeleteParams::default())
        .await
        .unwrap();
    let obj = env.wait_ready("app").await;
    let secret = env.secrets().get("precious").await.unwrap();
    let owner = &secret.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(Some(owner.uid.as_str()), obj.meta().uid.as_deref());
    let token = env.token("precious").await.unwrap();
    assert!(env.emulator.validate(&token).await.0, "the token is valid");
    assert_eq!(
        env.emulator.identities().await.len(),
        1,
        "the user made during the conflict is the one used after it"
    );
    assert_eq!(
        condition(&obj, "SecretConflict").map(|c| c.status.as_str()),
        Some("False")
    );
    env.finish().await;
}

// i.
const WRONG_SECRET: &str = "wrong-connection";

#[tokio::test]
async fn a_wrong_access_key_is_reported_and_a_fixed_one_recovers() {
    let env = World::new("e2e-unauthorized", 1.0).await;
    // A service whose Secret never held a valid key: overwriting the Secret the operator
    // has already read would race its watch, and the old, still valid key could serve the
    // first token (as it may for a person rotating keys, which is correct).
    let wrong = env.emulator.wrong_connection_string();
    env.remember(wrong.split_once("accesskey=").unwrap().1);
    put_secret(&env.client, env.ns(), WRONG_SECRET, &wrong).await;
    env.create(
        "communicationservices",
        json!({
            "apiVersion": "acs-operator.dev/v1alpha1",
            "kind": "CommunicationService",
            "metadata": {"name": "wrong-key"},
            "spec": {"connectionStringSecretRef": {"name": WRONG_SECRET}},
        }),
    )
    .await;
    env.create_identity("app", json!({"serviceRef": {"name": "wrong-key"}}))
        .await;
    env.wait_ready_is("app", "False", Some("Unauthorized"), 60)
        .await;
    let event = env.wait_event("app", "Unauthorized", Some("Warning")).await;
    let note = event.note.unwrap_or_default();
    assert!(
        note.contains("401") || note.to_lowercase().contains("unauthor"),
        "the event explains the failure: {note}"
    );
    assert!(env.secrets().get_opt("app").await.unwrap().is_none());
    assert!(
        env.operator().is_healthy().await,
        "the operator survives bad credentials"
    );

    let started = Instant::now();
    put_secret(
        &env.client,
        env.ns(),
        WRONG_SECRET,
        &env.emulator.connection_string,
    )
    .await;
    let obj = env.wait_ready_is("app", "True", None, 20).await;
    eprintln!("Ready {:?} after fixing the credentials", started.elapsed());
    let token = env.token("app").await.unwrap();
    assert!(env.emulator.validate(&token).await.0, "the token is valid");
    assert_eq!(
        env.secret_data("app").await.unwrap()["userId"],
        status(&obj).user_id.clone().unwrap()
    );
    env.finish().await;
}

// j.
#[tokio::test]
async fn invalid_specs_are_refused_at_admission_with_a_readable_message() {
    let cp = ControlPlane::get();
    install_crds(cp);
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "e2e-invalid").await;
    let identity = |name: &str, spec: Value| {
        let mut full = json!({"serviceRef": {"name": "none"}, "scopes": ["chat"]});
        support::world::merge(&mut full, spec);
        json!({
            "apiVersion": "acs-operator.dev/v1alpha1",
            "kind": "CommunicationIdentity",
            "metadata": {"name": name},
            "spec": full,
        })
    };
    let api_message = |e: kube::Error| match e {
        kube::Error::Api(s) => s.message,
        other => panic!("expected an API error, got {other}"),
    };

    let refused_on_create: &[(&str, Value, &str)] = &[
        (
            "empty-scopes",
            json!({"scopes": []}),
            "should have at least 1 items",
        ),
        (
            "unknown-scope",
            json!({"scopes": ["video"]}),
            "Unsupported value: \"video\"",
        ),
        (
            "short-lifetime",
            json!({"tokenLifetime": "30m"}),
            "tokenLifetime must be between 60m and 24h",
        ),
        (
            "long-lifetime",
            json!({"tokenLifetime": "25h"}),
            "tokenLifetime must be between 60m and 24h",
        ),
        (
            "renew-equal",
            json!({"tokenLifetime": "2h", "renewBefore": "2h"}),
            "renewBefore must be shorter than tokenLifetime",
        ),
        (
            "renew-longer",
            json!({"tokenLifetime": "1h", "renewBefore": "90m"}),
            "renewBefore must be shorter than tokenLifetime",
        ),
    ];
    for (name, spec, expected) in refused_on_create {
        let err = create_in(
            &client,
            &ns.name,
            "communicationidentities",
            identity(name, spec.clone()),
        )
        .await
        .expect_err(&format!("{name} was admitted"));
        let msg = api_message(err);
        assert!(msg.contains(expected), "{name}: {msg:?} lacks {expected:?}");
    }

    let api: Api<CommunicationIdentity> = Api::namespaced(client.clone(), &ns.name);
    create_in(
        &client,
        &ns.name,
        "communicationidentities",
        identity("fixed", json!({})),
    )
    .await
    .unwrap();
    create_in(
        &client,
        &ns.name,
        "communicationidentities",
        identity("adopting", json!({"existingUserId": "8:acs:someone"})),
    )
    .await
    .unwrap();
    let refused_on_update: &[(&str, Value, &str)] = &[
        (
            "fixed",
            json!({"spec": {"secretName": "elsewhere"}}),
            "spec.secretName is immutable",
        ),
        (
            "adopting",
            json!({"spec": {"existingUserId": "8:acs:someone-else"}}),
            "existingUserId is immutable",
        ),
        (
            "adopting",
            json!({"spec": {"existingUserId": null}}),
            "existingUserId is immutable",
        ),
        (
            "fixed",
            json!({"spec": {"existingUserId": "8:acs:someone"}}),
            "existingUserId is immutable",
        ),
    ];
    for (name, patch, expected) in refused_on_update {
        let err = api
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect_err(&format!("{name}: {patch} was admitted"));
        let msg = api_message(err);
        assert!(msg.contains(expected), "{name}: {msg:?} lacks {expected:?}");
    }
    // Writing down the defaulted secretName is not a change.
    api.patch(
        "fixed",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"secretName": "fixed"}})),
    )
    .await
    .expect("spelling out the default secretName is allowed");
}

// k.
#[tokio::test]
async fn services_do_not_cross_namespaces_unless_a_cluster_service_selects_them() {
    let env = World::new("e2e-isolation", 1.0).await;
    let client = &env.client;
    let other = TestNamespace::create(env.cp, client, "e2e-isolation-other").await;
    let labelled = TestNamespace::create(env.cp, client, "e2e-isolation-allowed").await;
    let label = format!("e2e-isolation-{}", std::process::id());

    // A namespaced service serves only its namespace: `acs` in `other` does not exist.
    let other_ids: Api<CommunicationIdentity> = Api::namespaced(client.clone(), &other.name);
    let thief: CommunicationIdentity = serde_json::from_value(json!({
        "metadata": {"name": "thief"},
        "spec": {"serviceRef": {"name": SERVICE}, "scopes": ["chat"]},
    }))
    .unwrap();
    other_ids
        .create(&PostParams::default(), &thief)
        .await
        .unwrap();

    // A cluster service, its credentials in the cluster resource namespace (the
    // operator's), for namespaces labelled `label=allowed`.
    let cluster_name = format!("shared-{}", env.ns());
    let shared_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": cluster_name, "namespace": OPERATOR_NAMESPACE},
        "stringData": {"connectionString": env.emulator.connection_string},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .patch(
            &cluster_name,
            &kube::api::PatchParams::apply("acs-e2e").force(),
            &kube::api::Patch::Apply(&shared_secret),
        )
        .await
        .unwrap();
    create_in(
        client,
        "",
        "clustercommunicationservices",
        json!({
            "apiVersion": "acs-operator.dev/v1alpha1",
            "kind": "ClusterCommunicationService",
            "metadata": {"name": cluster_name},
            "spec": {
                "connectionStringSecretRef": {"name": cluster_name, "namespace": OPERATOR_NAMESPACE},
                "namespaceSelector": {"matchLabels": {label.clone(): "allowed"}},
            },
        }),
    )
    .await
    .unwrap();
    let _cleanup = ClusterServiceGuard(env.cp, cluster_name.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &labelled.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label.clone(): "allowed"}}})),
        )
        .await
        .unwrap();
    let cluster_identity = |name: &str| -> CommunicationIdentity {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "serviceRef": {"kind": "ClusterCommunicationService", "name": cluster_name},
                "scopes": ["chat"],
            },
        }))
        .unwrap()
    };
    let allowed_ids: Api<CommunicationIdentity> = Api::namespaced(client.clone(), &labelled.name);
    allowed_ids
        .create(&PostParams::default(), &cluster_identity("shared"))
        .await
        .unwrap();
    other_ids
        .create(&PostParams::default(), &cluster_identity("refused"))
        .await
        .unwrap();

    let wait = |api: Api<CommunicationIdentity>,
                name: &'static str,
                want: (&'static str, &'static str)| async move {
        eventually(
            60,
            &format!("{name} Ready={} reason {}", want.0, want.1),
            || {
                let api = api.clone();
                async move {
                    let obj = api.get(name).await.ok()?;
                    let c = condition(&obj, "Ready")?;
                    (c.status == want.0 && c.reason == want.1).then_some(obj)
                }
            },
        )
        .await
    };
    let thief = wait(other_ids.clone(), "thief", ("False", "ServiceNotFound")).await;
    let msg = &condition(&thief, "Ready").unwrap().message;
    assert!(msg.contains(SERVICE) && msg.contains(&other.name), "{msg}");
    let refused = wait(other_ids.clone(), "refused", ("False", "ServiceNotAllowed")).await;
    let msg = &condition(&refused, "Ready").unwrap().message;
    assert!(msg.contains(&other.name), "{msg}");
    let shared = wait(allowed_ids.clone(), "shared", ("True", "TokenIssued")).await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &labelled.name);
    let data = secrets.get("shared").await.unwrap().data.unwrap();
    let token = String::from_utf8(data["token"].0.clone()).unwrap();
    env.remember(&token);
    assert!(env.emulator.validate(&token).await.0, "the token is valid");
    let users = env.emulator.identities().await;
    assert_eq!(
        users.len(),
        1,
        "only the allowed identity got a user: {users:?}"
    );
    assert_eq!(Some(&users[0].id), status(&shared).user_id.as_ref());
    let other_secrets: Api<Secret> = Api::namespaced(client.clone(), &other.name);
    for name in ["thief", "refused"] {
        assert!(other_secrets.get_opt(name).await.unwrap().is_none());
    }

    // Clean up the identities that used the cluster service while it still exists.
    for (api, name) in [
        (&allowed_ids, "shared"),
        (&other_ids, "refused"),
        (&other_ids, "thief"),
    ] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually(60, "the cross-namespace identities to be gone", || async {
        let a = allowed_ids.get_opt("shared").await.ok()?;
        let b = other_ids.get_opt("refused").await.ok()?;
        let c = other_ids.get_opt("thief").await.ok()?;
        (a.is_none() && b.is_none() && c.is_none()).then_some(())
    })
    .await;
    assert!(env.emulator.identity(&users[0].id).await.unwrap().deleted);
    env.finish().await;
}

struct ClusterServiceGuard(&'static ControlPlane, String);

impl Drop for ClusterServiceGuard {
    fn drop(&mut self) {
        let _ = self.0.kubectl_run(
            &[
                "delete",
                "clustercommunicationservice",
                &self.1,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
}

// l.
#[tokio::test]
async fn an_acs_outage_keeps_the_valid_token_and_reports_renewal_failing_until_it_recovers() {
    // 1 h tokens live 36 s; renewal comes due ~24 s after issue, while ACS is down.
    let mut env = World::new("e2e-outage", 0.01).await;
    env.create_identity("app", json!({"tokenLifetime": "1h"}))
        .await;
    let obj = env.wait_ready("app").await;
    let user = status(&obj).user_id.clone().unwrap();
    let before = env.secret_data("app").await.unwrap();
    env.remember(&before["token"]);
    let expires: Timestamp = before["expiresOn"].parse().unwrap();
    let renewal = status(&obj).renewal_time.as_ref().unwrap().0;

    env.emulator.stop();
    let down_at = Timestamp::now();
    assert!(down_at < renewal, "the outage starts before renewal is due");

    // RenewalFailing=True while the token is still valid; the Secret is untouched and
    // the identity stays Ready.
    let failing = eventually(60, "RenewalFailing=True", || async {
        let obj = env.identities().get("app").await.ok()?;
        let c = condition(&obj, "RenewalFailing")?;
        (c.status == "True").then(|| (obj.clone(), Timestamp::now()))
    })
    .await;
    let (obj, seen_at) = failing;
    assert!(
        seen_at < expires,
        "RenewalFailing appeared at {seen_at}, after the token expired at {expires}"
    );
    assert_eq!(
        condition(&obj, "Ready").map(|c| c.status.as_str()),
        Some("True"),
        "Ready stays True while the old token is valid"
    );
    let msg = &condition(&obj, "RenewalFailing").unwrap().message;
    assert!(!msg.is_empty());
    assert_eq!(
        env.secret_data("app").await.unwrap(),
        before,
        "a failure never touches a valid token"
    );
    env.wait_event("app", "RenewalFailed", Some("Warning"))
        .await;

    env.emulator.restart();
    let recovered = eventually(60, "RenewalFailing=False and a new token", || async {
        let obj = env.identities().get("app").await.ok()?;
        let c = condition(&obj, "RenewalFailing")?;
        let ready = condition(&obj, "Ready")?;
        (c.status == "False" && ready.status == "True").then_some(obj)
    })
    .await;
    let data = env.secret_data("app").await.unwrap();
    assert_ne!(data["token"], before["token"]);
    env.remember(&data["token"]);
    assert_eq!(data["userId"], user, "the same user after the outage");
    assert_eq!(status(&recovered).user_id.as_deref(), Some(user.as_str()));
    assert!(
        env.emulator.validate(&data["token"]).await.0,
        "the token is valid"
    );
    assert_eq!(env.emulator.identities().await.len(), 1);
    env.finish().await;
}
