//! Resilience end-to-end: the operator as its own process (one private process per test,
//! confined to the test's namespace with `--watch-namespaces`, so a test may kill,
//! stop and restart it), against one ACS emulator process per test.
//!
//! - a crash between "ACS created the user" and "status.userId written" leaks nothing;
//! - the operator removed while identities exist: deletion waits, resumes on restart, and
//!   the documented `finalizers:null` patch is the way out;
//! - deleting a namespace never stays stuck while the operator runs;
//! - the real process's metrics;
//! - steady state: one ACS call per token, no periodic re-issue, requeues not polling.
//!
//! Run: `cargo test --test operator_resilience` (starts its own control plane unless
//! `ACS_TEST_KUBECONFIG` is set).

mod support;

use std::time::{Duration, Instant};

use acs_identity_operator::api::{
    CommunicationIdentity, CommunicationService, RENEW_REQUESTED_AT_ANNOTATION,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::emulator::fault;
use support::eventually;
use support::metrics::{parse, samples, sum};
use support::operator::Operator;
use support::world::{CREDENTIAL_SECRET, SERVICE, World, acs_resource, condition, put_secret};

/// The api-version whose create takes a custom id (`k8s-<uid>`): a retried create finds
/// the user instead of making another.
const CUSTOM_ID_API_VERSION: &str = "2025-03-02-preview";

async fn reconciles(op: &Operator) -> f64 {
    let m = parse(&op.metrics().await);
    sum(
        &m,
        "acs_operator_reconciles_total",
        &[("kind", "CommunicationIdentity")],
    )
}

fn status(obj: &CommunicationIdentity) -> &acs_identity_operator::api::CommunicationIdentityStatus {
    obj.status.as_ref().expect("status")
}

// ---------------------------------------------------------------- 1. crash mid-way

#[tokio::test]
async fn operator_killed_after_acs_created_the_user_but_before_status_recorded_it_leaks_nothing() {
    let mut w = World::with_private_operator("crash", 1.0, Some(CUSTOM_ID_API_VERSION)).await;
    // The next create runs at once (the user exists at ACS) but its answer is held back
    // for 20 s: the window between "created" and "status.userId written".
    w.emulator
        .add_fault(fault(json!({
            "operation": "create", "latencyMs": 20_000, "afterExecute": true, "count": 1,
        })))
        .await;
    let obj = w.create_identity("app", json!({})).await;
    let uid = obj.uid().expect("uid");
    let custom_id = format!("k8s-{uid}");

    let user = eventually(30, "the user to appear at ACS", || async {
        w.emulator
            .identities()
            .await
            .into_iter()
            .find(|u| u.custom_id.as_deref() == Some(custom_id.as_str()))
    })
    .await;
    w.operator().process().signal("KILL");
    let user_id = user.id.clone();
    eventually(10, "the killed operator to exit", || async {
        w.operator().process().try_exit_status()
    })
    .await;
    // The window is real: ACS holds the user, the object does not know it.
    let seen = w.get("app").await.expect("identity exists");
    assert_eq!(
        seen.status.as_ref().and_then(|s| s.user_id.clone()),
        None,
        "status.userId was written before the kill: the crash window was missed"
    );
    assert!(w.secret_data("app").await.is_none(), "no Secret yet");
    w.stop_operator();

    w.start_operator().await;
    let obj = w.wait_ready("app").await;
    assert_eq!(
        status(&obj).user_id.as_deref(),
        Some(user_id.as_str()),
        "the restarted operator found the user created before the crash"
    );
    let all = w.emulator.identities().await;
    assert_eq!(all.len(), 1, "exactly one user ever created: {all:?}");
    assert_eq!(all[0].custom_id.as_deref(), Some(custom_id.as_str()));
    assert!(!all[0].deleted);
    // The restarted operator's create found the user, answered 201 as the live service
    // does (exactly one user above). (The first create's own answer, held back, is counted
    // only when its handler ends, if ever: its client is gone.)
    let stats = w.emulator.stats().await;
    let created = stats.requests["create"].get("201").copied().unwrap_or(0);
    assert!(
        (1..=2).contains(&created) && !stats.requests["create"].contains_key("200"),
        "one idempotent create that found the user: {stats:?}"
    );
    let found = eventually(
        30,
        "the UserCreated event of the restarted operator",
        || async {
            w.events_for("app").await.into_iter().find_map(|e| {
                (e.reason.as_deref() == Some("UserCreated")).then(|| e.note.unwrap_or_default())
            })
        },
    )
    .await;
    assert!(
        found.contains("found by its custom id") && found.contains(&user_id),
        "the event says the user may have been found: {found}"
    );
    let data = w.secret_data("app").await.expect("Secret");
    assert_eq!(data["userId"], user_id);
    let token = w.token("app").await.expect("token in the Secret");
    assert_eq!(
        w.emulator.validate(&token).await,
        (true, "valid".to_string())
    );

    w.identities()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    w.wait_gone("app", 60).await;
    let at = w.emulator.identity(&user_id).await.expect("user record");
    assert!(at.deleted, "the user is deleted with the identity: {at:?}");
    assert!(
        w.emulator.live_users().await.is_empty(),
        "nothing left at ACS"
    );
    assert!(
        !w.emulator.validate(&token).await.0,
        "the deleted user's token is invalid"
    );
    w.finish().await;
}

// ---------------------------------------------------------------- 2. operator removed

#[tokio::test]
async fn with_the_operator_removed_deletion_waits_and_resumes_or_the_finalizer_patch_releases_it() {
    let mut w = World::with_private_operator("removed", 1.0, None).await;
    w.create_identity("app", json!({})).await;
    w.create_identity("abandoned", json!({})).await;
    let app_user = status(&w.wait_ready("app").await).user_id.clone().unwrap();
    let abandoned_user = status(&w.wait_ready("abandoned").await)
        .user_id
        .clone()
        .unwrap();
    w.token("app").await.expect("token in the Secret");
    w.token("abandoned").await.expect("token in the Secret");

    // Uninstall: the operator is gone, the identities stay.
    w.stop_operator();
    w.identities()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stuck = w
        .get("app")
        .await
        .expect("the identity waits for its finalizer");
    assert!(stuck.metadata.deletion_timestamp.is_some());
    assert_eq!(
        stuck.finalizers(),
        ["acs-operator.dev/cleanup".to_string()],
        "the cleanup finalizer holds it"
    );
    let at = w.emulator.identity(&app_user).await.unwrap();
    assert!(!at.deleted, "nobody deleted the user yet: {at:?}");

    // Reinstall: the pending deletion completes and the user goes.
    let started = Instant::now();
    w.start_operator().await;
    w.wait_gone("app", 60).await;
    eprintln!(
        "pending deletion completed {:?} after the operator started",
        started.elapsed()
    );
    let at = w.emulator.identity(&app_user).await.unwrap();
    assert!(at.deleted, "the user is deleted: {at:?}");
    assert!(
        w.events_for("app")
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("UserDeleted")),
        "a UserDeleted event"
    );

    // The escape hatch, with the operator gone again: the README's command.
    w.stop_operator();
    w.identities()
        .delete("abandoned", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        w.get("abandoned")
            .await
            .is_some_and(|o| o.metadata.deletion_timestamp.is_some()),
        "held by its finalizer"
    );
    let (ok, out, err) = w.cp.kubectl_run(
        &[
            "patch",
            "acsid",
            "abandoned",
            "-n",
            w.ns(),
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
        None,
    );
    assert!(ok, "kubectl patch: {out} {err}");
    w.wait_gone("abandoned", 20).await;
    // Its Secret follows its owner (garbage collector); the ACS user is abandoned, as
    // the README says.
    eventually(
        60,
        "the abandoned identity's Secret to be collected",
        || async { w.secret_data("abandoned").await.is_none().then_some(()) },
    )
    .await;
    let at = w.emulator.identity(&abandoned_user).await.unwrap();
    assert!(!at.deleted, "the patch abandons the user: {at:?}");
    // Abandoned on purpose: delete it directly so finish() proves nothing else is left.
    delete_user_directly(&w, &abandoned_user).await;
    w.finish().await;
}

async fn delete_user_directly(w: &World, user: &str) {
    use acs_identity_operator::acs::{AcsClient, AcsClientOptions, ConnectionString};
    let acs = AcsClient::new(
        &ConnectionString::parse(&w.emulator.connection_string).unwrap(),
        AcsClientOptions {
            allow_insecure_endpoints: true,
            ..AcsClientOptions::default()
        },
    )
    .unwrap();
    acs.delete_user(user).await.expect("delete the user");
}

// ---------------------------------------------------------------- 3. namespace deletion

#[tokio::test]
async fn deleting_a_namespace_with_an_identity_its_secret_and_its_service_finishes_and_deletes_the_user()
 {
    let mut w = World::with_private_operator("nsdel", 1.0, None).await;
    w.create_identity("app", json!({})).await;
    let user = status(&w.wait_ready("app").await).user_id.clone().unwrap();
    w.token("app").await.expect("token in the Secret");
    w.assert_no_secret_material().await;

    // Identity, its token Secret, the credential Secret and the service all go at once.
    let started = Instant::now();
    let namespaces: Api<Namespace> = Api::all(w.client.clone());
    namespaces
        .delete(w.ns(), &DeleteParams::default())
        .await
        .unwrap();
    w.wait_namespace_gone(120).await;
    let took = started.elapsed();
    let at = w.emulator.identity(&user).await.unwrap();
    let log = w.operator().log_text();
    let cleaned = log
        .lines()
        .any(|l| l.contains("identity cleaned up") && l.contains(&user));
    let released = log.lines().any(|l| l.contains("finalizer is released"));
    eprintln!(
        "namespace gone after {took:?}; ACS user deleted: {}; operator logged cleanup: {cleaned}; \
         released without cleanup: {released}",
        at.deleted
    );
    assert!(
        at.deleted,
        "the operator had a cached client for the service, so the user is deleted: {at:?}"
    );
    assert!(
        w.emulator.live_users().await.is_empty(),
        "nothing left at ACS"
    );
    assert!(
        w.operator().is_healthy().await,
        "the operator is healthy after its namespace went"
    );
    // Leak check on the operator's log (the namespace and its events are gone).
    let log = w.operator().log_text();
    for s in &w.remembered() {
        assert!(!log.contains(s.as_str()), "secret material in the log");
    }
    w.stop_operator();
}

// ---------------------------------------------------------------- 4. metrics

#[tokio::test]
async fn the_operator_process_exports_expiry_readiness_requests_reconciles_and_renewal_failures() {
    let w = World::with_private_operator("metrics", 1.0, None).await;
    let ns = w.ns().to_string();
    w.create_identity("app", json!({})).await;
    let obj = w.wait_ready("app").await;
    let token = w.token("app").await.expect("token in the Secret");
    let expires = status(&obj).token_expires_on.as_ref().unwrap().0;
    let labels: [(&str, &str); 2] = [("namespace", &ns), ("name", "app")];

    let text = w.operator().metrics().await;
    let m = parse(&text);
    let expiry = samples(&m, "acs_operator_token_expiry_timestamp_seconds", &labels);
    assert_eq!(
        expiry.len(),
        1,
        "one expiry series for the identity:\n{text}"
    );
    assert_eq!(
        expiry[0].value,
        expires.as_second() as f64,
        "expiry gauge is status.tokenExpiresOn"
    );
    assert!(
        sum(&m, "acs_operator_identities", &[("ready", "true")]) >= 1.0,
        "{text}"
    );
    assert!(
        sum(
            &m,
            "acs_operator_acs_requests_total",
            &[("operation", "create_user"), ("status", "201")]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        sum(
            &m,
            "acs_operator_reconciles_total",
            &[("kind", "CommunicationIdentity"), ("result", "ok")]
        ) > 0.0,
        "{text}"
    );
    let failures_before = sum(&m, "acs_operator_renewal_failures_total", &labels);

    // A wrong key while the token is still valid: a renewal failure, not an outage. The
    // service moves to a Secret holding it, and the renewal is asked for once the service
    // reconcile has seen the move: overwriting the Secret the operator already read would
    // race its watch (the old, still valid key could serve the renewal).
    let wrong = w.emulator.wrong_connection_string();
    w.remember(wrong.split_once("accesskey=").unwrap().1);
    put_secret(&w.client, w.ns(), "wrong-connection", &wrong).await;
    let services: Api<CommunicationService> = Api::namespaced(w.client.clone(), w.ns());
    let moved = services
        .patch(
            SERVICE,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"connectionStringSecretRef": {"name": "wrong-connection"}}}),
            ),
        )
        .await
        .unwrap();
    let generation = moved.metadata.generation;
    eventually(
        60,
        "the service reconciled onto the wrong key's Secret",
        || async {
            let svc = services.get(SERVICE).await.ok()?;
            (svc.status?.observed_generation >= generation).then_some(())
        },
    )
    .await;
    w.identities()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                RENEW_REQUESTED_AT_ANNOTATION: Timestamp::now().to_string()
            }}})),
        )
        .await
        .unwrap();
    let op = w.operator();
    let failing_text = eventually(
        60,
        "acs_operator_renewal_failures_total to grow",
        || async {
            let text = op.metrics().await;
            (sum(
                &parse(&text),
                "acs_operator_renewal_failures_total",
                &labels,
            ) > failures_before)
                .then_some(text)
        },
    )
    .await;
    let m = parse(&failing_text);
    assert!(
        !samples(
            &m,
            "acs_operator_acs_requests_total",
            &[("operation", "issue_token"), ("status", "401")]
        )
        .is_empty(),
        "the 401 is counted:\n{failing_text}"
    );
    let obj = w.get("app").await.unwrap();
    assert_eq!(
        condition(&obj, "Ready").map(|c| c.status.as_str()),
        Some("True"),
        "still Ready: the token is valid"
    );
    assert_eq!(
        condition(&obj, "RenewalFailing").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(w.secret_data("app").await.unwrap()["token"], token);
    for s in w
        .remembered()
        .iter()
        .chain([&w.emulator.connection_string, &wrong])
    {
        assert!(
            !failing_text.contains(s.as_str()),
            "secret material ({}...) in /metrics",
            &s[..s.len().min(12)]
        );
    }

    // Fixed key: the pending renewal goes through.
    put_secret(
        &w.client,
        w.ns(),
        "wrong-connection",
        &w.emulator.connection_string,
    )
    .await;
    eventually(
        60,
        "RenewalFailing=False after the key is fixed",
        || async {
            let obj = w.get("app").await?;
            (condition(&obj, "RenewalFailing")?.status == "False").then_some(())
        },
    )
    .await;
    w.token("app").await.expect("token in the Secret");

    // Deleted: its series go.
    w.identities()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    w.wait_gone("app", 60).await;
    let text = w.operator().metrics().await;
    let m = parse(&text);
    assert!(
        samples(&m, "acs_operator_token_expiry_timestamp_seconds", &labels).is_empty(),
        "the expiry series of a deleted identity is removed:\n{text}"
    );
    assert_eq!(
        sum(&m, "acs_operator_identities", &[]),
        0.0,
        "no identity counted any more:\n{text}"
    );
    for s in &w.remembered() {
        assert!(!text.contains(s.as_str()), "secret material in /metrics");
    }
    w.finish().await;
}

// ---------------------------------------------------------------- 5. steady state

#[tokio::test]
async fn a_fresh_token_costs_no_acs_calls_and_almost_no_reconciles_in_steady_state() {
    let w = World::with_private_operator("steady", 1.0, None).await;
    w.create_identity("app", json!({"tokenLifetime": "24h"}))
        .await;
    let obj = w.wait_ready("app").await;
    let user = status(&obj).user_id.clone().unwrap();
    w.token("app").await.expect("token in the Secret");
    let renewal = status(&obj).renewal_time.as_ref().unwrap().0;
    assert!(
        renewal.duration_since(Timestamp::now()).as_secs() > 12 * 3600,
        "renewal is hours away: {renewal}"
    );
    // Let the reconcile that our own Secret write triggers run to its end.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats_before = w.emulator.stats().await;
    let reconciles_before = reconciles(w.operator()).await;

    tokio::time::sleep(Duration::from_secs(20)).await;

    let stats_after = w.emulator.stats().await;
    let reconciles_after = reconciles(w.operator()).await;
    let at = w.emulator.identity(&user).await.unwrap();
    assert_eq!(at.tokens_issued, 1, "one token, from the create: {at:?}");
    assert_eq!(
        stats_after, stats_before,
        "no ACS call at all in 20 s of steady state"
    );
    assert_eq!(
        serde_json::to_value(&stats_after.requests).expect("JSON"),
        json!({"create": {"201": 1}}),
        "one ACS call per token: the create that also issued it"
    );
    let grew = reconciles_after - reconciles_before;
    eprintln!("reconciles in 20 s of steady state: {grew}");
    assert!(
        grew <= 2.0,
        "the identity was reconciled {grew} times in 20 s with a fresh token (polling?)"
    );
    w.finish().await;
}

#[tokio::test]
async fn a_namespace_deleted_while_the_operator_is_down_finishes_when_it_returns_and_names_the_user_left()
 {
    let mut w = World::with_private_operator("nsdown", 1.0, None).await;
    w.create_identity("app", json!({})).await;
    let user = status(&w.wait_ready("app").await).user_id.clone().unwrap();
    w.token("app").await.expect("token in the Secret");

    // The operator is down while the namespace controller removes the service and the
    // credentials; the identity waits for its finalizer.
    w.stop_operator();
    let namespaces: Api<Namespace> = Api::all(w.client.clone());
    namespaces
        .delete(w.ns(), &DeleteParams::default())
        .await
        .unwrap();
    let services = acs_resource("CommunicationService", "communicationservices");
    let svc_api: Api<kube::core::DynamicObject> =
        Api::namespaced_with(w.client.clone(), w.ns(), &services);
    // The namespace controller deletes one resource type after another, so the service
    // and the credentials can be gone before the identity is marked: wait for all three.
    eventually(
        120,
        "the service and its credentials deleted, the identity marked for deletion",
        || async {
            let svc = svc_api.get_opt(SERVICE).await.ok()?;
            let cred = w.secrets().get_opt(CREDENTIAL_SECRET).await.ok()?;
            let marked = w
                .get("app")
                .await
                .is_some_and(|i| i.metadata.deletion_timestamp.is_some());
            (svc.is_none() && cred.is_none() && marked).then_some(())
        },
    )
    .await;
    let held = w
        .get("app")
        .await
        .expect("the identity is held by its finalizer");
    assert!(held.metadata.deletion_timestamp.is_some());

    // Back with no cached client and no credentials: the namespace must still go.
    let started = Instant::now();
    w.start_operator().await;
    w.wait_namespace_gone(120).await;
    let at = w.emulator.identity(&user).await.unwrap();
    let log = w.operator().log_text();
    let named = log
        .lines()
        .filter(|l| l.contains(&user))
        .map(str::to_string)
        .collect::<Vec<_>>();
    eprintln!(
        "namespace gone {:?} after the operator returned; ACS user deleted: {}; operator log lines naming the user: {named:#?}",
        started.elapsed(),
        at.deleted
    );
    assert!(
        !at.deleted,
        "without credentials the user cannot be deleted: {at:?}"
    );
    assert!(
        named
            .iter()
            .any(|l| l.contains(r#""level":"WARN""#) && l.contains("left behind")),
        "the ACS user left behind is named in a warning the operator logs (the Warning \
         event cannot be written into a terminating namespace)"
    );
    for s in &w.remembered() {
        assert!(!log.contains(s.as_str()), "secret material in the log");
    }
    w.stop_operator();
}
