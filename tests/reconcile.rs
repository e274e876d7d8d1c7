//! The identity reconcile, in-process, against the real control plane and an in-process
//! ACS emulator over HTTP: each finding of the reconcile review has a test here, and the
//! API and ACS cost of a new identity and of a renewal are measured (and printed) from
//! the operator's own client (every request it sends, by verb and resource) and the
//! emulator's `/admin/stats`.
//!
//! Waits are on watch events and call counts, never on sleeps.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use acs_identity_operator::api::conditions::{reasons, types};
use acs_identity_operator::api::{CommunicationIdentity, REVOKE_REQUESTED_AT_ANNOTATION};
use acs_identity_operator::controller::clients::ClientSettings;
use acs_identity_operator::controller::context::Leadership;
use acs_identity_operator::controller::identity::FINALIZER;
use acs_identity_operator::controller::{OperatorConfig, run};
use acs_identity_operator::emulator::EmulatorConfig;
use acs_identity_operator::runtime::{Metrics, Readiness};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::wait::await_condition;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use support::counted::{RequestCounter, classify};
use support::emulator::{AcsUser, Emulator, fault};
use support::world::{create_identity, create_in, put_secret, wait_for};
use support::{ControlPlane, TestNamespace, eventually, install_crds};
use tokio::sync::{RwLock, watch};

/// Tests share the control plane; the cost test needs it to itself.
static EXCLUSIVE: RwLock<()> = RwLock::const_new(());

const PREVIEW: &str = "2025-03-02-preview";
const GA: &str = "2025-06-30";

/// A namespace with the credential Secret `acs`, an in-process emulator and (once
/// started) the operator's controllers running in this process.
struct World {
    client: Client,
    /// The operator's own client, whose requests `requests` counts.
    operator_client: Client,
    requests: RequestCounter,
    ns: TestNamespace,
    emulator: Emulator,
    operator: Option<tokio::task::JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl World {
    async fn new(prefix: &str, scale: f64) -> World {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let cp = ControlPlane::get();
        install_crds(cp);
        let client = cp.admin_client().await;
        let (operator_client, requests) = cp.counted_admin_client().await;
        let ns = TestNamespace::create(cp, &client, prefix).await;
        let emulator = Emulator::in_process(EmulatorConfig {
            token_lifetime_scale: scale,
            quotas: Default::default(),
            ..EmulatorConfig::default()
        })
        .await;
        let world = World {
            client,
            operator_client,
            requests,
            ns,
            emulator,
            operator: None,
            metrics: Arc::new(Metrics::new()),
        };
        world
            .put_credentials("acs", &world.emulator.connection_string)
            .await;
        world
    }

    fn ns(&self) -> &str {
        &self.ns.name
    }

    fn identities(&self) -> Api<CommunicationIdentity> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    fn config(&self) -> OperatorConfig {
        OperatorConfig {
            watch_namespaces: vec![self.ns().to_string()],
            cluster_resource_namespace: self.ns().to_string(),
            client_settings: ClientSettings {
                request_timeout: Some(Duration::from_secs(5)),
                allow_insecure_endpoints: true,
                ..ClientSettings::default()
            },
            ..OperatorConfig::default()
        }
    }

    fn start(&mut self, config: OperatorConfig) {
        let client = self.operator_client.clone();
        self.operator = Some(tokio::spawn(run(
            client,
            config,
            self.metrics.clone(),
            Readiness::new(),
            std::future::pending::<()>(),
        )));
    }

    async fn put_credentials(&self, name: &str, connection_string: &str) {
        put_secret(&self.client, self.ns(), name, connection_string).await;
    }

    async fn create(&self, plural: &str, obj: Value) {
        create_in(&self.client, self.ns(), plural, obj)
            .await
            .unwrap_or_else(|e| panic!("create {plural}: {e}"));
    }

    async fn service(&self, api_version: &str) {
        self.service_named("acs", "acs", api_version).await;
    }

    /// Service `name`, whose connection string is in Secret `secret`.
    async fn service_named(&self, name: &str, secret: &str, api_version: &str) {
        self.create(
            "communicationservices",
            json!({
                "apiVersion": "acs-operator.dev/v1alpha1", "kind": "CommunicationService",
                "metadata": {"name": name},
                "spec": {"connectionStringSecretRef": {"name": secret}, "apiVersion": api_version},
            }),
        )
        .await;
    }

    async fn identity(&self, name: &str, extra: Value) {
        create_identity(&self.client, self.ns(), name, extra).await;
    }

    /// Waits (on watch events) until the identity satisfies `check`.
    async fn until(
        &self,
        name: &str,
        secs: u64,
        what: &str,
        check: impl Fn(&CommunicationIdentity) -> bool,
    ) -> CommunicationIdentity {
        wait_for(&self.identities(), name, secs, check)
            .await
            .unwrap_or_else(|| panic!("timed out after {secs}s waiting for {name}: {what}"))
    }

    async fn ready(&self, name: &str) -> CommunicationIdentity {
        self.until(name, 60, "Ready=True", |o| {
            cond(o, types::READY).is_some_and(|c| c.0 == "True")
        })
        .await
    }

    /// Waits until `n` identities are Ready and satisfy `check` (polling LISTs).
    async fn all_ready(&self, n: usize, check: impl Fn(&CommunicationIdentity) -> bool) {
        eventually(120, "all identities Ready", || async {
            let list = self.identities().list(&Default::default()).await.ok()?;
            let ok = list
                .items
                .iter()
                .filter(|o| cond(o, types::READY).is_some_and(|c| c.0 == "True") && check(o))
                .count();
            (ok >= n).then_some(())
        })
        .await;
    }

    async fn annotate(&self, name: &str, key: &str, value: &str) {
        self.identities()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
            )
            .await
            .expect("annotate");
    }

    async fn token(&self, secret: &str) -> Option<String> {
        let s = self.secrets().get_opt(secret).await.ok()??;
        let b = s.data?.get("token")?.0.clone();
        String::from_utf8(b).ok()
    }

    async fn valid(&self, token: &str) -> bool {
        self.emulator.validate(token).await.0
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(op) = self.operator.take() {
            op.abort();
        }
    }
}

/// (status, reason) of a condition.
fn cond(o: &CommunicationIdentity, type_: &str) -> Option<(String, String)> {
    o.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The operator's requests between two snapshots of its counter.
fn delta(
    before: &BTreeMap<(String, String), f64>,
    after: &BTreeMap<(String, String), f64>,
) -> BTreeMap<(String, String), f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn writes(d: &BTreeMap<(String, String), f64>) -> f64 {
    d.iter()
        .filter(|((verb, _), _)| {
            [
                "POST",
                "PUT",
                "PATCH",
                "APPLY",
                "DELETE",
                "DELETECOLLECTION",
            ]
            .contains(&verb.as_str())
        })
        .map(|(_, v)| v)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// Writes for identities (their Secrets, events, the identities): a service's own status
/// write is once per service, not per identity.
fn identity_writes(d: &BTreeMap<(String, String), f64>) -> f64 {
    writes(
        &d.iter()
            .filter(|((_, res), _)| !res.contains("communicationservices"))
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    )
}

/// GETs of the credential Secret `acs` and of every other object, between two snapshots
/// of [`RequestCounter::gets_by_name`].
fn credential_and_other_gets(
    before: &BTreeMap<(String, String), f64>,
    after: &BTreeMap<(String, String), f64>,
) -> (f64, f64) {
    let d = delta(before, after);
    let repeated: Vec<_> = d.iter().filter(|(_, n)| **n > 1.0).collect();
    if !repeated.is_empty() {
        println!("objects read more than once: {repeated:?}");
    }
    let credential = d
        .get(&("secrets".to_string(), "acs".to_string()))
        .copied()
        .unwrap_or(0.0);
    (credential, d.values().sum::<f64>() - credential)
}

fn gets(d: &BTreeMap<(String, String), f64>) -> f64 {
    d.iter()
        .filter(|((verb, _), _)| verb == "GET")
        .map(|(_, v)| v)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_of_a_new_identity_and_of_a_renewal() {
    let _only_us = EXCLUSIVE.write().await;
    // With the chart's MutatingAdmissionPolicy the finalizer comes with the create, and
    // the operator's patch that adds it is one write less (issue 19).
    for (api_version, policy, max_writes) in [
        (PREVIEW, false, 4.0),
        (GA, false, 4.0),
        (PREVIEW, true, 3.0),
        (GA, true, 3.0),
    ] {
        // Tokens of 24h * 0.0004 = 34.6 s: renewal at two thirds, about 23 s after issue.
        let mut w = World::new("cost", 0.0004).await;
        w.service(api_version).await;
        let policy = policy.then(|| FinalizerPolicy::install(w.ns()));
        let api_version = if policy.is_some() {
            format!("{api_version} + MutatingAdmissionPolicy")
        } else {
            api_version.to_string()
        };
        w.start(w.config());
        const N: usize = 30;
        let before = w.requests.snapshot();
        let gets_before = w.requests.gets_by_name();
        for i in 0..N {
            w.identity(&format!("id-{i}"), json!({})).await;
        }
        w.all_ready(N, |_| true).await;
        // Our own last write is a status patch: let the reconcile it triggers settle.
        let settled = w.emulator.calls("create").await;
        let after = w.requests.snapshot();
        let d = delta(&before, &after);
        let (credential_gets, other_gets) =
            credential_and_other_gets(&gets_before, &w.requests.gets_by_name());
        let n = N as f64;
        // Tokens here live 35 s: on a loaded machine the first identities may renew before
        // the last is Ready. A renewal is measured below (1 ACS request, 3 writes); here it
        // is taken out, so that the figures are those of a new identity.
        // Both counts from one moment: read again if a request came in between.
        let (calls, renewed) = loop {
            let calls = w.emulator.calls("create").await + w.emulator.calls("issue").await;
            let renewed = w
                .emulator
                .identities()
                .await
                .iter()
                .filter(|u| u.tokens_issued > 1)
                .count() as f64;
            if w.emulator.calls("create").await + w.emulator.calls("issue").await == calls {
                break (calls as f64, renewed);
            }
        };
        let per_writes = (identity_writes(&d) - 3.0 * renewed) / n;
        let per_gets = gets(&d) / n;
        let acs = (calls - renewed) / n;
        println!(
            "cost per new identity ({api_version}): {acs:.1} ACS requests, {per_writes:.1} API writes, {per_gets:.1} GETs \
             ({credential_gets} of the credential Secret for {N} identities, {other_gets} of others; {renewed} renewed \
             meanwhile, taken out); by verb/resource: {d:?}"
        );
        assert_eq!(settled as usize, N, "exactly one ACS create per identity");
        assert_eq!(acs, 1.0, "exactly one ACS request per new identity");
        // Now and then one or two of the 30 identities write status twice (seen in about
        // one run in three since the first token needs no GET, never with debug logging;
        // the cause is not found yet): a tenth of a write above the goal is tolerated and
        // the figure is printed. Anything per identity fails.
        assert!(
            per_writes <= max_writes + 0.1,
            "{per_writes} API writes per identity on {api_version}"
        );
        // One read of a Secret the operator has not written yet (the foreign-Secret check)
        // per identity; the credential Secret is read for the service, not per identity.
        assert!(
            other_gets <= n,
            "{other_gets} GETs for {N} identities: at most the foreign-Secret check each"
        );
        assert!(
            credential_gets <= 2.0,
            "the credential Secret read {credential_gets} times for {N} identities"
        );
        if policy.is_some() {
            let patched = d
                .get(&("PATCH".to_string(), "communicationidentities".to_string()))
                .copied()
                .unwrap_or(0.0);
            assert_eq!(
                patched, 0.0,
                "the finalizer came with the create: the operator patched no identity"
            );
        }

        // A renewal wave: every identity gets one new token from its real expiry.
        let mut first = vec![None; N];
        for o in w.identities().list(&Default::default()).await.unwrap() {
            let i: usize = o.name_any().trim_start_matches("id-").parse().unwrap();
            first[i] = o.status.unwrap().last_token_issued_at;
        }
        let issued = |users: Vec<AcsUser>| -> BTreeMap<String, u64> {
            users.into_iter().map(|u| (u.id, u.tokens_issued)).collect()
        };
        let before = w.requests.snapshot();
        let issued_before = w.emulator.calls("issue").await;
        let users_before = issued(w.emulator.identities().await);
        w.all_ready(N, |o| {
            let i: usize = o.name_any().trim_start_matches("id-").parse().unwrap_or(0);
            o.status
                .as_ref()
                .is_some_and(|s| s.last_token_issued_at != first[i])
        })
        .await;
        let d = delta(&before, &w.requests.snapshot());
        let users_after = issued(w.emulator.identities().await);
        // On a loaded machine the last identity may renew more than a renewal period
        // (about 23 s) after the first, which has then renewed a second time on schedule:
        // those second renewals are taken out. A second token within one renewal (its
        // last issue less than 1.5 periods after the one before the wave) is not.
        let mut second_renewals = 0u64;
        for o in w.identities().list(&Default::default()).await.unwrap() {
            let i: usize = o.name_any().trim_start_matches("id-").parse().unwrap();
            let st = o.status.unwrap();
            let user = st.user_id.unwrap();
            let tokens =
                users_after[&user].saturating_sub(users_before.get(&user).copied().unwrap_or(0));
            let since = match (&st.last_token_issued_at, &first[i]) {
                (Some(last), Some(first)) => last.0.duration_since(first.0).as_secs_f64(),
                _ => 0.0,
            };
            if tokens >= 2 && since >= 34.0 {
                second_renewals += tokens - 1;
            }
        }
        let taken_out = second_renewals as f64;
        let renew_acs = ((w.emulator.calls("issue").await - issued_before) as f64 - taken_out) / n;
        let renew_writes = (writes(&d) - 3.0 * taken_out) / n;
        println!(
            "cost per renewal ({api_version}): {renew_acs:.1} ACS requests, {renew_writes:.1} API writes, {:.1} GETs ({second_renewals} second renewals on schedule, taken out); by verb/resource: {d:?}",
            gets(&d) / n
        );
        assert_eq!(renew_acs, 1.0, "one ACS request per renewal");
        assert!(renew_writes <= 3.0, "{renew_writes} writes per renewal");
        assert_eq!(gets(&d), 0.0, "no GET per renewal");
        if let Some(policy) = policy {
            let o = w.identities().get("id-0").await.unwrap();
            assert!(
                o.finalizers().iter().any(|f| f == FINALIZER),
                "the policy's finalizer is kept"
            );
            policy.uninstall();
        }
    }
}

/// Issue 19: a restart with healthy identities trusts its caches. The new operator (a
/// fresh process state: empty memory, new watches) lists identities and Secrets and
/// reconciles every identity once, and an identity whose status and Secret agree needs no
/// ACS request, no API write and no GET. Prints the time to "every identity reconciled"
/// and the API requests by verb. N is small here; `hack/bench/run.sh` measures large N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_healthy_identities_costs_nothing() {
    let _only_us = EXCLUSIVE.write().await;
    const N: usize = 200;
    for api_version in [PREVIEW, GA] {
        let mut w = World::new("restart", 1.0).await;
        w.service(api_version).await;
        w.start(w.config());
        for i in 0..N {
            w.identity(&format!("id-{i}"), json!({})).await;
        }
        w.all_ready(N, |_| true).await;
        // The last status writes trigger one more reconcile each: let them pass before the
        // "crash" so that the figures below are the restart's alone.
        tokio::time::sleep(Duration::from_secs(3)).await;
        w.operator.take().expect("running").abort();
        tokio::time::sleep(Duration::from_secs(1)).await;

        let acs =
            async |w: &World| w.emulator.calls("create").await + w.emulator.calls("issue").await;
        let acs_before = acs(&w).await;
        let before = w.requests.snapshot();
        let gets_before = w.requests.gets_by_name();
        w.metrics = Arc::new(Metrics::new());
        let metrics = w.metrics.clone();
        let started = std::time::Instant::now();
        w.start(w.config());
        eventually(60, "every identity reconciled after the restart", || {
            let text = metrics.encode();
            async move {
                let ok: f64 = text
                    .lines()
                    .filter(|l| {
                        l.starts_with("acs_operator_reconciles_total{")
                            && l.contains("kind=\"CommunicationIdentity\"")
                            && l.contains("result=\"ok\"")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                (ok >= N as f64).then_some(())
            }
        })
        .await;
        let known = started.elapsed();
        // Anything the reconciles set off (a write, its watch event, the next reconcile).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let d = delta(&before, &w.requests.snapshot());
        let (credential_gets, other_gets) =
            credential_and_other_gets(&gets_before, &w.requests.gets_by_name());
        let acs_calls = acs(&w).await - acs_before;
        println!(
            "restart with {N} healthy identities ({api_version}): every identity reconciled in {:.1} s (load: {}), \
             {acs_calls} ACS requests, {} API writes, {} GETs ({credential_gets} of the credential Secret); by verb/resource: {d:?}",
            known.as_secs_f64(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim(),
            writes(&d),
            gets(&d),
        );
        assert_eq!(acs_calls, 0, "no ACS request after a restart");
        assert_eq!(writes(&d), 0.0, "no API write after a restart");
        // The token Secrets are confirmed from one paged LIST (identity::warm), not a GET
        // each; the credential Secret `acs` is read for its service (by the service
        // controller and once for the identities that wait on it), not per identity.
        assert_eq!(
            other_gets, 0.0,
            "no GET per identity after a restart: {other_gets} for {N} identities"
        );
        assert!(
            credential_gets <= 2.0,
            "the credential Secret read {credential_gets} times for {N} identities"
        );
    }
}

/// The chart's MutatingAdmissionPolicy and binding (`helm template`, bound to one
/// namespace through `watchNamespaces`), installed on the shared control plane and
/// removed again; `install` returns once the API server applies it.
struct FinalizerPolicy {
    manifest: String,
}

impl FinalizerPolicy {
    fn install(ns: &str) -> FinalizerPolicy {
        let cp = ControlPlane::get();
        let manifest = support::operator::chart_template(
            ns,
            &[
                "--api-versions",
                "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy",
                "--set",
                &format!("watchNamespaces={{{ns}}}"),
                "--show-only",
                "templates/mutatingadmissionpolicy.yaml",
            ],
        );
        let (ok, _, err) = cp.kubectl_run(&["apply", "-f", "-"], Some(&manifest));
        assert!(ok, "installing the finalizer policy: {err}");
        // The API server picks policies up from its informer: probe with a dry-run create
        // (admission runs, nothing is stored) until the finalizer comes back.
        let probe = format!(
            "apiVersion: acs-operator.dev/v1alpha1\nkind: CommunicationIdentity\nmetadata:\n  name: probe\n  namespace: {ns}\nspec: {{scopes: [chat]}}\n"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, out, err) = cp.kubectl_run(
                &[
                    "create",
                    "--dry-run=server",
                    "-f",
                    "-",
                    "-o",
                    "jsonpath={.metadata.finalizers}",
                ],
                Some(&probe),
            );
            assert!(ok, "dry-run create: {err}");
            if out.contains(FINALIZER) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the finalizer policy was not in effect within 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        FinalizerPolicy { manifest }
    }

    fn uninstall(self) {
        let (ok, _, err) = ControlPlane::get().kubectl_run(
            &["delete", "--ignore-not-found", "-f", "-"],
            Some(&self.manifest),
        );
        assert!(ok, "removing the finalizer policy: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_never_reported_ready() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("revoke", 1.0).await;
    w.service(PREVIEW).await;
    let mut config = w.config();
    config.min_token_interval = Duration::from_secs(1);
    w.start(config);
    w.identity("app", json!({})).await;
    w.ready("app").await;
    let old = w.token("app").await.expect("token");
    // Every issue fails after the revoke went through.
    w.emulator
        .add_fault(fault(json!({"operation": "issue", "status": 503})))
        .await;
    w.annotate("app", REVOKE_REQUESTED_AT_ANNOTATION, "r1")
        .await;
    let o = w
        .until("app", 60, "Ready=False after the revoke", |o| {
            o.status
                .as_ref()
                .is_some_and(|s| s.last_revoke_request_handled.as_deref() == Some("r1"))
                && cond(o, types::READY).is_some_and(|c| c.0 == "False")
        })
        .await;
    assert!(!w.valid(&old).await, "the old token was revoked");
    assert_eq!(
        w.token("app").await.as_deref(),
        Some(old.as_str()),
        "the Secret still holds it"
    );
    assert!(
        o.status.unwrap().token_expires_on.is_none(),
        "status does not describe it as valid"
    );
    // It stays not Ready while issues keep failing (retried with backoff).
    let before = w.emulator.calls("issue").await;
    eventually(30, "a retried issue", || async {
        (w.emulator.calls("issue").await > before).then_some(())
    })
    .await;
    let o = w.identities().get("app").await.unwrap();
    assert_eq!(
        cond(&o, types::READY).map(|c| c.0).as_deref(),
        Some("False")
    );
    w.emulator.clear_faults().await;
    let o = w.ready("app").await;
    let new = w.token("app").await.unwrap();
    assert_ne!(new, old);
    assert!(w.valid(&new).await);
    assert_eq!(
        w.emulator.calls("revoke").await,
        1,
        "the handled request is not revoked again"
    );
    assert!(o.status.unwrap().last_revoked_at.is_some());
}

/// Issue 16 item 4: a revoke pending across a crash. An interrupted attempt made the user
/// (custom id) and a token that may be in use; the restarted operator's create finds that
/// user, and ACS answers 201 (not 200) with the same identity, as the live service does.
/// The revoke must happen whatever the status code: the old token is invalid afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_pending_across_a_crash_is_done_although_acs_answers_201() {
    use acs_identity_operator::acs::{AcsClient, AcsClientOptions, ConnectionString};
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("found201", 1.0).await;
    w.service(PREVIEW).await;
    w.identity("app", json!({})).await;
    let uid = w.identities().get("app").await.unwrap().uid().unwrap();
    w.annotate("app", REVOKE_REQUESTED_AT_ANNOTATION, "r1")
        .await;
    // What the interrupted attempt left at ACS: the user of this identity's custom id and
    // a token for it; nothing in status.
    let acs = AcsClient::new(
        &ConnectionString::parse(&w.emulator.connection_string).unwrap(),
        AcsClientOptions {
            api_version: PREVIEW.into(),
            allow_insecure_endpoints: true,
            ..AcsClientOptions::default()
        },
    )
    .unwrap();
    let earlier = acs
        .create_user(
            Some(&[acs_identity_operator::acs::TokenScope::Chat]),
            Some(60),
            Some(&format!("k8s-{uid}")),
        )
        .await
        .unwrap();
    let old = earlier.token.unwrap().token.expose_secret().to_string();
    assert!(w.valid(&old).await);

    w.start(w.config());
    let o = w
        .until("app", 60, "Ready with the revoke handled", |o| {
            o.status
                .as_ref()
                .is_some_and(|s| s.last_revoke_request_handled.as_deref() == Some("r1"))
                && cond(o, types::READY).is_some_and(|c| c.0 == "True")
        })
        .await;
    assert_eq!(
        o.status.as_ref().and_then(|s| s.user_id.as_deref()),
        Some(earlier.user.id.as_str()),
        "the create found the earlier user"
    );
    let stats = w.emulator.stats().await;
    assert!(
        !stats.requests["create"].contains_key("200"),
        "ACS answered 201: {stats:?}"
    );
    assert!(
        !w.valid(&old).await,
        "the earlier attempt's token was revoked"
    );
    let new = w.token("app").await.expect("token");
    assert!(
        w.valid(&new).await,
        "the token kept was issued after the revoke"
    );
    assert_eq!(w.emulator.calls("revoke").await, 1);
    assert_eq!(w.emulator.identities().await.len(), 1, "no second user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_expire_at_once_are_issued_at_most_once_per_interval() {
    let _shared = EXCLUSIVE.read().await;
    // 24h * 0.00001 = 0.86 s: expired before the next reconcile looks.
    let mut w = World::new("hotloop", 0.00001).await;
    w.service(PREVIEW).await;
    let mut config = w.config();
    config.min_token_interval = Duration::from_secs(3);
    w.start(config);
    let started = tokio::time::Instant::now();
    w.identity("app", json!({})).await;
    eventually(60, "three tokens", || async {
        (w.emulator.calls("create").await + w.emulator.calls("issue").await >= 3).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(6),
        "3 tokens in {elapsed:?}: the floor is 3 s"
    );
    let o = w
        .until("app", 30, "TokenTooShortLived", |o| {
            o.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.reason == reasons::TOKEN_TOO_SHORT_LIVED)
            })
        })
        .await;
    assert!(o.status.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_failure_keeps_a_valid_token_ready_and_says_why() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("lookup", 1.0).await;
    w.service(PREVIEW).await;
    w.start(w.config());
    w.identity("app", json!({})).await;
    w.ready("app").await;
    w.secrets()
        .delete("acs", &DeleteParams::default())
        .await
        .unwrap();
    let o = w
        .until("app", 30, "RenewalFailing=True", |o| {
            cond(o, types::RENEWAL_FAILING).is_some_and(|c| c.0 == "True")
        })
        .await;
    assert_eq!(
        cond(&o, types::READY),
        Some(("True".into(), reasons::TOKEN_ISSUED.into()))
    );
    assert_eq!(
        cond(&o, types::RENEWAL_FAILING).map(|c| c.1).as_deref(),
        Some(reasons::SECRET_NOT_FOUND)
    );
    // The fix is noticed through the credential watch.
    w.put_credentials("acs", &w.emulator.connection_string)
        .await;
    w.until("app", 30, "RenewalFailing cleared", |o| {
        cond(o, types::RENEWAL_FAILING).is_none_or(|c| c.0 == "False")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ga_versions_never_send_a_custom_id_nor_retry_a_lost_create() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("ga", 1.0).await;
    w.service(GA).await;
    w.start(w.config());
    // The first create runs, and its answer is lost.
    w.emulator
        .add_fault(fault(
            json!({"operation": "create", "drop": true, "afterExecute": true, "count": 1}),
        ))
        .await;
    w.identity("app", json!({})).await;
    let o = w
        .until("app", 60, "the lost create reported", |o| {
            cond(o, types::READY).is_some_and(|c| c.1 == reasons::USER_CREATE_FAILED)
        })
        .await;
    assert!(o.status.unwrap().user_id.is_none());
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(w.client.clone(), w.ns());
    let warned = eventually(30, "a Warning event", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some(reasons::USER_CREATE_FAILED)
        })
    })
    .await;
    assert!(
        warned
            .note
            .unwrap_or_default()
            .contains("creating an ACS user")
    );
    // The next reconcile decides (a second create, recorded); no automatic retry inside.
    let o = w.ready("app").await;
    let users = w.emulator.live_users().await;
    assert_eq!(
        w.emulator.calls("create").await,
        2,
        "one lost create, one recorded; never a retry loop"
    );
    assert_eq!(
        users.len(),
        2,
        "the lost create left one user behind (the GA window)"
    );
    let recorded = o.status.unwrap().user_id.unwrap();
    for u in &users {
        assert!(u.custom_id.is_none(), "no custom id on {GA}: {u:?}");
    }
    assert!(users.iter().any(|u| u.id == recorded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_right_after_creation_leaks_no_user() {
    let _shared = EXCLUSIVE.read().await;
    for api_version in [PREVIEW, GA] {
        let mut w = World::new("cleanup", 1.0).await;
        w.service(api_version).await;
        w.start(w.config());
        for i in 0..5 {
            let name = format!("app-{i}");
            w.identity(&name, json!({})).await;
            // Delete as soon as ACS has the user: the cache may not have our status yet.
            eventually(30, "the user created", || async {
                (w.emulator.calls("create").await > i).then_some(())
            })
            .await;
            w.identities()
                .delete(&name, &DeleteParams::default())
                .await
                .unwrap();
        }
        eventually(60, "every identity gone", || async {
            w.identities()
                .list(&Default::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        })
        .await;
        assert_eq!(
            w.emulator.live_users().await,
            Vec::<AcsUser>::new(),
            "no user left on {api_version}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_edit_reaches_the_secret_without_a_new_token() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("template", 1.0).await;
    w.service(PREVIEW).await;
    w.start(w.config());
    w.identity("app", json!({"secretTemplate": {"labels": {"team": "a"}}}))
        .await;
    w.ready("app").await;
    let token = w.token("app").await;
    w.identities()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"secretTemplate": {"labels": {"team": "b"}, "annotations": {"x": "1"}}}})),
        )
        .await
        .unwrap();
    eventually(30, "the new label on the Secret", || async {
        let s = w.secrets().get("app").await.ok()?;
        (s.labels().get("team").map(String::as_str) == Some("b")
            && s.annotations().get("x").map(String::as_str) == Some("1"))
        .then_some(())
    })
    .await;
    assert_eq!(w.token("app").await, token, "the same token");
    assert_eq!(w.emulator.calls("issue").await, 0);
    assert_eq!(w.emulator.calls("create").await, 1);
}

/// Managers of the Secret's fields, as `manager/operation`.
fn secret_managers(s: &Secret) -> Vec<String> {
    s.managed_fields()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m.manager.as_deref().unwrap_or_default(),
                m.operation.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_first_created_still_loses_labels_dropped_from_the_template() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("tmpl-drop", 1.0).await;
    w.service(PREVIEW).await;
    w.start(w.config());
    // No template: the first write is a plain create (cheaper than an apply).
    w.identity("app", json!({})).await;
    w.ready("app").await;
    let created = w.secrets().get("app").await.unwrap();
    assert_eq!(
        secret_managers(&created),
        vec!["acs-identity-operator/Update".to_string()],
        "the new Secret was created, not applied"
    );
    let token = w.token("app").await;
    let ids = w.identities();
    let set_template = |template: Value| {
        let ids = ids.clone();
        async move {
            ids.patch(
                "app",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"secretTemplate": template}})),
            )
            .await
            .unwrap();
        }
    };
    set_template(json!({"labels": {"team": "a"}, "annotations": {"x": "1"}})).await;
    eventually(30, "the template on the Secret", || async {
        let s = w.secrets().get("app").await.ok()?;
        (s.labels().get("team").map(String::as_str) == Some("a")
            && s.annotations().get("x").map(String::as_str) == Some("1"))
        .then_some(())
    })
    .await;
    set_template(json!(null)).await;
    let s = eventually(30, "the dropped label and annotation gone", || async {
        let s = w.secrets().get("app").await.ok()?;
        (!s.labels().contains_key("team") && !s.annotations().contains_key("x")).then_some(s)
    })
    .await;
    assert_eq!(
        s.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("acs-identity-operator"),
        "our own label stays"
    );
    assert_eq!(w.token("app").await, token, "the same token throughout");
    assert_eq!(w.emulator.calls("issue").await, 0);
    assert_eq!(w.emulator.calls("create").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_edited_secret_is_restored_once() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("restore", 1.0).await;
    w.service(PREVIEW).await;
    let mut config = w.config();
    config.min_token_interval = Duration::from_secs(1);
    w.start(config);
    w.identity("app", json!({})).await;
    w.ready("app").await;
    w.secrets()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "a new Secret", || async { w.token("app").await }).await;
    w.secrets()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": "forged"}})),
        )
        .await
        .unwrap();
    let t = eventually(30, "the forged token replaced", || async {
        w.token("app").await.filter(|t| t != "forged")
    })
    .await;
    assert!(w.valid(&t).await);
    assert_eq!(w.emulator.calls("issue").await, 2, "one token per repair");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_losing_the_lease_nothing_is_written() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("lease", 1.0).await;
    w.service(PREVIEW).await;
    let (leading_tx, leading_rx) = watch::channel(true);
    let mut config = w.config();
    config.leadership = Leadership::elected(leading_rx);
    w.start(config);
    // The create is slow; leadership goes while it is in flight.
    w.emulator
        .add_fault(fault(
            json!({"operation": "create", "latencyMs": 3000, "afterExecute": true}),
        ))
        .await;
    w.identity("app", json!({})).await;
    eventually(30, "the create in flight", || async {
        let users = w.emulator.live_users().await;
        (!users.is_empty()).then_some(())
    })
    .await;
    leading_tx.send(false).unwrap();
    w.identity("probe", json!({})).await;
    // Past the slow create's answer: no Secret may appear (watched, not polled).
    let secret_written = tokio::time::timeout(
        Duration::from_secs(6),
        await_condition(w.secrets(), "app", |s: Option<&Secret>| s.is_some()),
    )
    .await;
    assert!(
        secret_written.is_err(),
        "a Secret was written after leadership was lost"
    );
    let o = w.identities().get("app").await.unwrap();
    assert!(
        o.status.as_ref().is_none_or(|s| s.user_id.is_none()),
        "no status written"
    );
    let probe = w.identities().get("probe").await.unwrap();
    assert!(probe.finalizers().is_empty(), "no new work after the loss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_on_one_resource_share_one_client_and_credential_watches_go_away() {
    let _shared = EXCLUSIVE.read().await;
    let w = World::new("share", 1.0).await;
    w.service(PREVIEW).await;
    w.service_named("acs2", "acs", PREVIEW).await;
    let (ctx, caches) = acs_identity_operator::controller::run::caches_only(
        w.client.clone(),
        w.config(),
        Arc::new(Metrics::new()),
    )
    .await;
    w.identity("a", json!({})).await;
    w.identity("b", json!({"serviceRef": {"name": "acs2"}}))
        .await;
    for name in ["a", "b"] {
        reconcile_until_ready(&w, &ctx, name).await;
    }
    assert_eq!(
        ctx.resolver.clients.client_count(),
        1,
        "one client for one resource and key"
    );
    assert_eq!(ctx.resolver.credentials.watched(), 1);
    for name in ["a", "b"] {
        w.identities()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        let o = Arc::new(w.identities().get(name).await.unwrap());
        acs_identity_operator::controller::identity::reconcile(o, ctx.clone())
            .await
            .expect("cleanup");
    }
    assert_eq!(
        ctx.resolver.credentials.watched(),
        0,
        "nothing references the Secret any more"
    );
    caches.abort();
}

/// Reconciles `name` by hand until it is Ready (the first pass may add the finalizer).
async fn reconcile_until_ready(
    w: &World,
    ctx: &Arc<acs_identity_operator::controller::context::Context>,
    name: &str,
) -> CommunicationIdentity {
    for _ in 0..3 {
        let o = Arc::new(w.identities().get(name).await.unwrap());
        let _ = acs_identity_operator::controller::identity::reconcile(o, ctx.clone()).await;
    }
    let o = w.identities().get(name).await.unwrap();
    assert_eq!(
        cond(&o, types::READY).map(|c| c.0).as_deref(),
        Some("True"),
        "{name}"
    );
    o
}

/// Deletes `name` the way a person who removed our finalizer by hand does: no cleanup.
async fn delete_without_cleanup(w: &World, name: &str) {
    w.identities()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    w.identities()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

/// An identity that leaves without our cleanup (its finalizer removed by hand) leaves
/// nothing in the operator: memory of its writes, its next look, its credential watch,
/// its metric series. A tenant repeating it cannot grow the operator's memory. A new
/// identity that takes a deleted one's name keeps its own, and the periodic sweep drops
/// what no delete event named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_deleted_without_cleanup_leaves_nothing_behind() {
    use acs_identity_operator::controller::identity::gone;
    let _shared = EXCLUSIVE.read().await;
    let w = World::new("gone", 1.0).await;
    w.service(PREVIEW).await;
    // `a` has a credential Secret of its own, so its watch is seen to go.
    w.put_credentials("acs-a", &w.emulator.connection_string)
        .await;
    w.service_named("acs-a", "acs-a", PREVIEW).await;
    let metrics = Arc::new(Metrics::new());
    let (ctx, caches) = run::caches_only(w.client.clone(), w.config(), metrics.clone()).await;
    w.identity("a", json!({"serviceRef": {"name": "acs-a"}}))
        .await;
    w.identity("b", json!({})).await;
    let a_uid = reconcile_until_ready(&w, &ctx, "a").await.uid().unwrap();
    let old_b = reconcile_until_ready(&w, &ctx, "b").await;
    assert_eq!(ctx.memory.len(), 2);
    assert_eq!(
        ctx.wakeups.len(),
        2,
        "each Ready identity has its next look"
    );
    assert_eq!(ctx.resolver.credentials.watched(), 2);

    // The old `b` goes and a new `b` takes its name and is Ready.
    delete_without_cleanup(&w, "b").await;
    eventually(30, "the old b gone", || async {
        w.identities()
            .get_opt("b")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // Another Secret: the old b's is the garbage collector's to delete, in its own time.
    w.identity("b", json!({"secretName": "b-new"})).await;
    let new_b = w.identities().get("b").await.unwrap().uid().unwrap();
    assert_ne!(old_b.uid(), Some(new_b.clone()));
    // As a controller would: it reconciles what its cache holds.
    eventually(30, "the new b cached", || async {
        let cached = ctx.stores.identity(&w.ns.name, "b")?;
        (cached.uid().as_deref() == Some(new_b.as_str())).then_some(())
    })
    .await;
    reconcile_until_ready(&w, &ctx, "b").await;
    // The old b's cleanup had failed (its deletion time is a series, which the deletion
    // alert reads) before a person removed its finalizer.
    metrics.set_deletion_time(&w.ns.name, "b", 1);
    // The old b's delete, handled (again) now that the new b is Ready: the new b keeps
    // its look and its memory, not the old b's series.
    gone::deleted(&ctx, &ObjectRef::from_obj(&old_b));
    let b = ObjectRef::<CommunicationIdentity>::new("b").within(&w.ns.name);
    assert_eq!(ctx.wakeups.len(), 2, "a's look and the new b's");
    assert!(
        ctx.memory.get(&b, &new_b).secret_rv.is_some(),
        "the new b keeps its memory"
    );
    let text = metrics.encode();
    assert!(
        !text.contains(&format!(
            "acs_operator_identity_deletion_timestamp_seconds{{namespace=\"{}\",name=\"b\"}}",
            w.ns.name
        )),
        "the old b's deletion time is gone: {text}"
    );
    // Its own series come back with its next pass (the controller's, as triggered).
    reconcile_until_ready(&w, &ctx, "b").await;

    // `a` goes the same way.
    delete_without_cleanup(&w, "a").await;
    let a = ObjectRef::<CommunicationIdentity>::new("a").within(&w.ns.name);
    eventually(30, "what was held for `a` dropped", || async {
        (ctx.memory.len() == 1 && ctx.wakeups.len() == 1).then_some(())
    })
    .await;
    assert!(ctx.memory.get(&a, &a_uid).secret_rv.is_none());
    assert!(ctx.memory.get(&b, &new_b).secret_rv.is_some());
    assert_eq!(
        ctx.resolver.credentials.watched(),
        1,
        "a's credential Secret is no longer watched; b's is"
    );
    let text = metrics.encode();
    let series = |name: &str| {
        format!(
            "acs_operator_identity_ready_status{{namespace=\"{}\",name=\"{name}\",condition=\"True\"}} 1",
            w.ns.name
        )
    };
    assert!(!text.contains(&series("a")), "{text}");
    assert!(text.contains(&series("b")), "{text}");

    // What no delete event named (a relist after a disconnection sees none) goes at the
    // sweep; the live identity keeps everything.
    let ghost = ObjectRef::<CommunicationIdentity>::new("ghost").within(&w.ns.name);
    ctx.memory.finalizer_added(&ghost, "ghost-uid");
    ctx.wakeups.look_after(&ghost, Duration::from_secs(3600));
    metrics.set_identity_ready(&w.ns.name, "ghost", Some(true));
    assert_eq!(gone::sweep(&ctx), 1, "one memory entry dropped");
    assert_eq!((ctx.memory.len(), ctx.wakeups.len()), (1, 1));
    assert!(ctx.memory.get(&b, &new_b).secret_rv.is_some());
    assert!(!metrics.encode().contains("name=\"ghost\""));
    assert_eq!(gone::sweep(&ctx), 0);
    caches.abort();
}

/// Issue 16 item 6: tokens dead on arrival (the emulator's lifetime scale makes a 24 h token
/// live 0.86 s) are never reported Ready, and the identity says a person must act.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_shorter_than_the_floor_are_never_ready_and_stall() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("deadtokens", 0.00001).await;
    w.service(PREVIEW).await;
    let mut config = w.config();
    config.min_token_interval = Duration::from_secs(3);
    w.start(config);
    w.identity("app", json!({})).await;
    let saw_ready = std::sync::atomic::AtomicBool::new(false);
    let saw_stalled = std::sync::atomic::AtomicBool::new(false);
    // Every state the watch shows for 10 s.
    let _ = wait_for(&w.identities(), "app", 10, |o| {
        if cond(o, types::READY).is_some_and(|c| c.0 == "True") {
            saw_ready.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if cond(o, types::STALLED) == Some(("True".into(), reasons::TOKEN_TOO_SHORT_LIVED.into())) {
            saw_stalled.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        false
    })
    .await;
    assert!(w.emulator.calls("create").await + w.emulator.calls("issue").await >= 1);
    assert!(
        !saw_ready.into_inner(),
        "Ready=True on a token that lives 0.86 s"
    );
    assert!(saw_stalled.into_inner(), "Stalled=True TokenTooShortLived");
    // Issue 16 item 8: the failed passes set the ready gauge too (the alert reads it).
    let ns = w.ns().to_string();
    let text = w.metrics.encode();
    let series = |condition: &str| {
        text.lines().find(|l| {
            l.starts_with("acs_operator_identity_ready_status{")
                && l.contains(&format!("namespace=\"{ns}\""))
                && l.contains("name=\"app\"")
                && l.contains(&format!("condition=\"{condition}\""))
        })
    };
    assert!(
        series("False").is_some_and(|l| l.ends_with(" 1"))
            && series("True").is_some_and(|l| l.ends_with(" 0")),
        "ready gauge of a never-Ready identity: {:?} {:?} in\n{}",
        series("False"),
        series("True"),
        text
    );
}

/// Issue 16 item 7: a scope change that waits for the token floor is not reported as
/// applied: observedGeneration stays, Ready=False SpecChanged, Reconciling=True.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_not_in_the_secret_yet_keeps_the_old_generation() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("specchange", 1.0).await;
    w.service(PREVIEW).await;
    let mut config = w.config();
    config.min_token_interval = Duration::from_secs(60);
    w.start(config);
    w.identity("app", json!({})).await;
    let o = w.ready("app").await;
    assert_eq!(o.status.as_ref().unwrap().observed_generation, Some(1));
    w.identities()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scopes": ["chat", "voip"]}})),
        )
        .await
        .expect("change scopes");
    let o = w
        .until("app", 30, "Reconciling=True", |o| {
            cond(o, types::RECONCILING).is_some_and(|c| c.0 == "True")
        })
        .await;
    let st = o.status.clone().unwrap();
    assert_eq!(o.metadata.generation, Some(2));
    assert_eq!(st.observed_generation, Some(1), "{st:?}");
    assert_eq!(
        cond(&o, types::READY),
        Some(("False".into(), reasons::SPEC_CHANGED.into()))
    );
    assert_eq!(
        cond(&o, types::RECONCILING).map(|c| c.1).as_deref(),
        Some(reasons::SPEC_CHANGED)
    );
}

/// Issue 16 item 8: a credential problem while a token exists is a renewal failure
/// (`AcsTokenRenewalFailing` fires on it), and the ready gauge follows failed passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_problems_count_as_renewal_failures() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("failcount", 1.0).await;
    w.service(PREVIEW).await;
    w.start(w.config());
    w.identity("app", json!({})).await;
    w.ready("app").await;
    w.secrets()
        .delete("acs", &DeleteParams::default())
        .await
        .unwrap();
    w.until("app", 30, "RenewalFailing=True", |o| {
        cond(o, types::RENEWAL_FAILING).is_some_and(|c| c.0 == "True")
    })
    .await;
    let ns = w.ns().to_string();
    let metrics = w.metrics.clone();
    eventually(
        30,
        "a renewal failure counted for the missing credentials",
        || {
            let text = metrics.encode();
            let ns = ns.clone();
            async move {
                text.lines()
                    .any(|l| {
                        l.starts_with("acs_operator_renewal_failures_total{")
                            && l.contains(&format!("namespace=\"{ns}\""))
                            && l.contains("reason=\"SecretNotFound\"")
                    })
                    .then_some(())
            }
        },
    )
    .await;
}

/// Issue 16 item 1: on a version without custom ids, status writes that fail after the
/// create (an admission policy denying `communicationidentities/status`) never lead to a
/// second user: the token Secret records it, and later attempts issue for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ga_user_survives_denied_status_writes_without_a_second_create() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("deny-status", 1.0).await;
    w.service(GA).await;
    let policy = format!("deny-status-{}", w.ns());
    let vap: Value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": w.ns()}},
                "resourceRules": [{
                    "apiGroups": ["acs-operator.dev"], "apiVersions": ["*"],
                    "operations": ["UPDATE"], "resources": ["communicationidentities/status"],
                }],
            },
            "validations": [{"expression": "false", "message": "status writes denied by test"}],
        },
    });
    let binding: Value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"]},
    });
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let ar = |kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind),
            plural,
        )
    };
    let vaps: Api<DynamicObject> = Api::all_with(
        w.client.clone(),
        &ar("ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
    );
    let bindings: Api<DynamicObject> = Api::all_with(
        w.client.clone(),
        &ar(
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
        ),
    );
    vaps.create(&Default::default(), &serde_json::from_value(vap).unwrap())
        .await
        .expect("policy");
    bindings
        .create(
            &Default::default(),
            &serde_json::from_value(binding).unwrap(),
        )
        .await
        .expect("binding");
    // The policy takes a moment to reach the API server's admission chain: wait until
    // a status write of a probe object is denied.
    w.identity("probe", json!({})).await;
    eventually(30, "the policy in force", || async {
        let r = w
            .identities()
            .patch_status(
                "probe",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"secretName": "x"}})),
            )
            .await;
        r.is_err().then_some(())
    })
    .await;
    // A short token floor, so that later passes could issue again if they decided from
    // the status without a token.
    let mut config = w.config();
    config.min_token_interval = Duration::from_secs(1);
    w.start(config);
    w.identity("app", json!({})).await;
    let secret = eventually(30, "the Secret recording the user", || async {
        let s = w.secrets().get_opt("app").await.ok()??;
        let user = String::from_utf8(s.data?.get("userId")?.0.clone()).ok()?;
        Some(user)
    })
    .await;
    // Several attempts with every status write denied, past the floor: ten failed passes.
    let failed_passes = |text: String| -> f64 {
        text.lines()
            .find(|l| {
                l.starts_with("acs_operator_reconciles_total{")
                    && l.contains("CommunicationIdentity")
                    && l.contains("result=\"error\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let since_secret = std::time::Instant::now();
    eventually(90, "ten failed passes over three token floors", || async {
        (failed_passes(w.metrics.encode()) >= 10.0
            && since_secret.elapsed() >= Duration::from_secs(3))
        .then_some(())
    })
    .await;
    let passes = failed_passes(w.metrics.encode());
    let users = w.emulator.live_users().await;
    println!(
        "denied status writes on {GA}: {} ACS users, {} creates, {} issues, {passes} failed passes",
        users.len(),
        w.emulator.calls("create").await,
        w.emulator.calls("issue").await
    );
    // The probe was created before the operator started and its status is denied too:
    // two identities, one user each, never more.
    assert_eq!(users.len(), 2, "one user per identity: {users:?}");
    assert!(users.iter().any(|u| u.id == secret));
    // And one token each: the Secret holds what the denied status write described, so
    // later passes decide from that, not from the older status without a token.
    let app = users.iter().find(|u| u.id == secret).unwrap();
    assert_eq!(
        app.tokens_issued, 1,
        "one token for app while status is denied: {app:?}"
    );
    // Allowed again: status catches up with the same user.
    bindings
        .delete(&policy, &DeleteParams::default())
        .await
        .ok();
    vaps.delete(&policy, &DeleteParams::default()).await.ok();
    let o = w
        .until("app", 60, "status records the user", |o| {
            o.status
                .as_ref()
                .is_some_and(|s| s.user_id.as_deref() == Some(secret.as_str()))
        })
        .await;
    assert!(o.status.unwrap().user_id.is_some());
    assert_eq!(
        w.emulator.live_users().await.len(),
        2,
        "still one user each"
    );
}

/// Issue 16 item 5: losing the Lease while a GA create is in flight does not leak the
/// user: the create finishes and its Secret (the record) is written; the next leader
/// issues for that user instead of creating another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_lease_during_a_ga_create_records_the_user() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("lease-ga", 1.0).await;
    w.service(GA).await;
    let (leading_tx, leading_rx) = watch::channel(true);
    let mut config = w.config();
    config.leadership = Leadership::elected(leading_rx);
    w.start(config);
    w.emulator
        .add_fault(fault(
            json!({"operation": "create", "latencyMs": 3000, "afterExecute": true, "count": 1}),
        ))
        .await;
    w.identity("app", json!({})).await;
    eventually(30, "the create in flight", || async {
        (!w.emulator.live_users().await.is_empty()).then_some(())
    })
    .await;
    leading_tx.send(false).unwrap();
    let user = eventually(15, "the Secret recording the user", || async {
        let s = w.secrets().get_opt("app").await.ok()??;
        String::from_utf8(s.data?.get("userId")?.0.clone()).ok()
    })
    .await;
    // A new leader (a fresh process: no memory) takes over.
    if let Some(old) = w.operator.take() {
        old.abort();
    }
    w.start(w.config());
    let o = w.ready("app").await;
    assert_eq!(o.status.unwrap().user_id.as_deref(), Some(user.as_str()));
    let users = w.emulator.live_users().await;
    assert_eq!(users.len(), 1, "no second user: {users:?}");
    assert_eq!(w.emulator.calls("create").await, 1);
}

/// Issue 16 item 2: with the key rotated (every ACS call answers 401), deleting the
/// namespace still ends within `--abandon-cleanup-after`, with `CleanupFailed` written
/// while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_namespace_goes_within_the_bound_when_cleanup_fails() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("abandon", 1.0).await;
    w.service(PREVIEW).await;
    let mut config = w.config();
    config.abandon_cleanup_after = Duration::from_secs(10);
    w.start(config);
    w.identity("app", json!({})).await;
    w.ready("app").await;
    // The key is rotated in ACS: ours no longer signs valid requests.
    let wrong = w
        .emulator
        .connection_string
        .split(';')
        .map(|p| {
            if p.to_ascii_lowercase().starts_with("accesskey=") {
                "accesskey=d3Jvbmcta2V5LXdyb25nLWtleQ==".to_string()
            } else {
                p.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(";");
    w.put_credentials("acs", &wrong).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    w.ns.delete(&w.client).await;
    let o = w
        .until("app", 30, "CleanupFailed while the bound runs", |o| {
            cond(o, types::READY).is_some_and(|c| c.1 == reasons::CLEANUP_FAILED)
        })
        .await;
    let msg = o
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == types::READY)
        .unwrap()
        .message;
    assert!(msg.contains("finalizers\":null"), "{msg}");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(w.client.clone());
    eventually(60, "the namespace gone", || async {
        namespaces
            .get_opt(w.ns())
            .await
            .ok()
            .and_then(|n| n.is_none().then_some(()))
    })
    .await;
    println!(
        "terminating namespace with failing cleanup gone after {:.1}s (bound 10 s)",
        started.elapsed().as_secs_f64()
    );
    assert!(started.elapsed() < Duration::from_secs(45));
    assert_eq!(
        w.emulator.live_users().await.len(),
        1,
        "the user is left behind, as logged"
    );
}

/// Issue 16 item 3: after the cache caught up (memory dropped its copy of our status), a
/// relist from a lagging watch cache or a new leader's first list hands the reconcile an
/// older object. It must not decide from it: on GA a status from before `userId` would
/// make a second user, and a handled revoke would look pending and revoke the fresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_relist_after_catch_up_is_reread_not_decided_from() {
    let _shared = EXCLUSIVE.read().await;
    let w = World::new("stale", 1.0).await;
    w.service(GA).await;
    let (ctx, caches) = acs_identity_operator::controller::run::caches_only(
        w.client.clone(),
        w.config(),
        Arc::new(Metrics::new()),
    )
    .await;
    let pass = |o: CommunicationIdentity| {
        let ctx = ctx.clone();
        async move {
            let _ = acs_identity_operator::controller::identity::reconcile(Arc::new(o), ctx).await;
        }
    };
    w.identity("app", json!({})).await;
    // The object as created, with no status: what a lagging cache could hand back later.
    let before_user = w.identities().get("app").await.unwrap();
    for _ in 0..3 {
        pass(w.identities().get("app").await.unwrap()).await;
    }
    let ready = w.ready("app").await;
    let user = ready.status.as_ref().and_then(|s| s.user_id.clone());
    assert!(user.is_some(), "a user recorded");
    // A pass with the fresh object: the cache has caught up and memory drops its copy.
    eventually(30, "the cache holds our last write", || async {
        let o = w.identities().get("app").await.ok()?;
        let cached = ctx
            .stores
            .identities()
            .find(|c| c.name_any() == "app" && c.namespace() == o.namespace())?;
        (cached.resource_version() == o.resource_version()).then_some(())
    })
    .await;
    pass(w.identities().get("app").await.unwrap()).await;
    let creates = w.emulator.stats().await.calls("create");
    let issues = w.emulator.stats().await.calls("issue");

    // The stale object: no userId, an older resourceVersion.
    assert!(
        before_user
            .status
            .as_ref()
            .is_none_or(|s| s.user_id.is_none())
    );
    pass(before_user).await;
    let after = w.identities().get("app").await.unwrap();
    assert_eq!(
        w.emulator.stats().await.calls("create"),
        creates,
        "no second create"
    );
    assert_eq!(w.emulator.live_users().await.len(), 1, "one ACS user");
    assert_eq!(
        after.status.as_ref().and_then(|s| s.user_id.clone()),
        user,
        "the newer status is not overwritten"
    );
    assert_eq!(
        w.emulator.stats().await.calls("issue"),
        issues,
        "no token issued for it"
    );

    // A handled revoke, then the object from before it was handled.
    w.annotate(
        "app",
        REVOKE_REQUESTED_AT_ANNOTATION,
        &jiff::Timestamp::now().to_string(),
    )
    .await;
    let pending = w.identities().get("app").await.unwrap();
    // No controller runs here: reconcile by hand until the revoke is handled and a fresh
    // token issued (it may wait for the token-interval floor).
    let handled = eventually(60, "revoke handled and a fresh token", || async {
        pass(w.identities().get("app").await.ok()?).await;
        let o = w.identities().get("app").await.ok()?;
        (o.status
            .as_ref()
            .is_some_and(|s| s.last_revoked_at.is_some())
            && cond(&o, types::READY).is_some_and(|c| c.0 == "True"))
        .then_some(o)
    })
    .await;
    let secret = handled
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .unwrap_or_else(|| "app".into());
    let fresh_token = w.token(&secret).await.expect("a token after the revoke");
    eventually(30, "the cache holds the revoke's status", || async {
        let o = w.identities().get("app").await.ok()?;
        let cached = ctx
            .stores
            .identities()
            .find(|c| c.name_any() == "app" && c.namespace() == o.namespace())?;
        (cached.resource_version() == o.resource_version()).then_some(())
    })
    .await;
    pass(w.identities().get("app").await.unwrap()).await;
    let revokes = w.emulator.stats().await.calls("revoke");
    pass(pending).await;
    assert_eq!(
        w.emulator.stats().await.calls("revoke"),
        revokes,
        "a handled revoke is not repeated from a stale object"
    );
    assert!(w.valid(&fresh_token).await, "the fresh token still works");
    assert_eq!(
        w.token(&secret).await.as_deref(),
        Some(fresh_token.as_str())
    );
    caches.abort();
}

/// The status write's precondition, against the real API server: a stale resourceVersion
/// is recognised as "someone else wrote" (a turn), an admission denial is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_status_precondition_is_told_from_other_refusals() {
    use acs_identity_operator::api::CommunicationIdentityStatus;
    use acs_identity_operator::controller::status::{precondition_failed, replace_status};
    let _shared = EXCLUSIVE.read().await;
    let w = World::new("precondition", 1.0).await;
    w.identity("app", json!({})).await;
    let status = CommunicationIdentityStatus {
        secret_name: Some("app".into()),
        ..Default::default()
    };
    let stale = replace_status(&w.identities(), "app", None, &status, Some("1"))
        .await
        .expect_err("a stale resourceVersion is refused");
    assert!(precondition_failed(&stale), "{stale}");
    let current = w.identities().get("app").await.unwrap().resource_version();
    replace_status(&w.identities(), "app", None, &status, current.as_deref())
        .await
        .expect("the current resourceVersion is accepted");
}

/// The status PUT carries no labels or annotations, and must not take them from the
/// manager that applied them: a GitOps tool that later drops a label from its manifest
/// must still own it, or it is never pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_keeps_other_managers_ownership_of_metadata() {
    use acs_identity_operator::api::CommunicationIdentityStatus;
    use acs_identity_operator::controller::status::replace_status;
    let _shared = EXCLUSIVE.read().await;
    let w = World::new("owners", 1.0).await;
    let applied = w
        .identities()
        .patch(
            "app",
            &PatchParams::apply("gitops"),
            &Patch::Apply(json!({
                "apiVersion": "acs-operator.dev/v1alpha1", "kind": "CommunicationIdentity",
                "metadata": {"name": "app", "labels": {"team": "a"}, "annotations": {"note": "x"}},
                "spec": {"scopes": ["chat"]},
            })),
        )
        .await
        .unwrap();
    let status = CommunicationIdentityStatus {
        secret_name: Some("app".into()),
        ..Default::default()
    };
    replace_status(
        &w.identities(),
        "app",
        None,
        &status,
        applied.resource_version().as_deref(),
    )
    .await
    .expect("status written");
    let o = w.identities().get("app").await.unwrap();
    assert_eq!(o.labels().get("team").map(String::as_str), Some("a"));
    let gitops = o
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some("gitops"))
        .and_then(|m| m.fields_v1.as_ref())
        .map(|f| f.0.clone())
        .expect("gitops's entry");
    assert!(
        gitops["f:metadata"]["f:labels"]["f:team"].is_object()
            && gitops["f:metadata"]["f:annotations"]["f:note"].is_object(),
        "{gitops}"
    );
}

/// Where RBAC grants `patch` on the status subresource but not `update` (the chart's rules
/// before the status PUT, kept by a cluster that manages RBAC itself), status is still
/// written, and a stale resourceVersion is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_where_rbac_allows_patch_but_not_update() {
    use acs_identity_operator::api::CommunicationIdentityStatus;
    use acs_identity_operator::controller::status::{precondition_failed, replace_status};
    use kube::api::PostParams;
    let _shared = EXCLUSIVE.read().await;
    let w = World::new("patchonly", 1.0).await;
    w.identity("app", json!({})).await;
    let pp = PostParams::default();
    let cp = ControlPlane::get();
    cp.service_account_with_role(
        &w.client,
        w.ns(),
        "patcher",
        json!([{"apiGroups": ["acs-operator.dev"],
                "resources": ["communicationidentities/status"], "verbs": ["get", "patch"]}]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let patcher = cp
        .service_account_client(&w.client, w.ns(), "patcher", dir.path())
        .await;
    let api: Api<CommunicationIdentity> = Api::namespaced(patcher, w.ns());
    let obj = w.identities().get("app").await.unwrap();
    match api.replace_status("app", &pp, &obj).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("a PUT must be forbidden to this ServiceAccount: {other:?}"),
    }
    let status = CommunicationIdentityStatus {
        secret_name: Some("app".into()),
        ..Default::default()
    };
    // Once the RoleBinding is in effect (the authorizer's cache follows it), a stale
    // resourceVersion is refused as a precondition, not by RBAC.
    eventually(
        30,
        "a stale resourceVersion refused as a precondition",
        || async {
            let stale = replace_status(&api, "app", None, &status, Some("1"))
                .await
                .expect_err("a stale resourceVersion is refused");
            precondition_failed(&stale).then_some(())
        },
    )
    .await;
    replace_status(
        &api,
        "app",
        None,
        &status,
        obj.resource_version().as_deref(),
    )
    .await
    .expect("written with a JSON patch");
    let written = w.identities().get("app").await.unwrap();
    assert_eq!(
        written.status.and_then(|s| s.secret_name).as_deref(),
        Some("app")
    );
}

/// A Deployment with no pods needed: its template's annotations are what a restart changes.
fn deployment(name: &str) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
            },
        },
    }))
    .expect("deployment")
}

fn restarted_at(d: &k8s_openapi::api::apps::v1::Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(acs_identity_operator::api::RESTARTED_AT_ANNOTATION)
        .cloned()
}

/// Issue 18: a token change restarts each target exactly once (one template change, so one
/// new `metadata.generation`); the first token, re-reconciles and an operator restart
/// restart nothing; a missing target is a condition and never costs the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_change_restarts_each_target_exactly_once() {
    use acs_identity_operator::api::RENEW_REQUESTED_AT_ANNOTATION;
    use k8s_openapi::api::apps::v1::Deployment;
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("rollout", 1.0).await;
    w.service(PREVIEW).await;
    let deployments: Api<Deployment> = Api::namespaced(w.client.clone(), w.ns());
    deployments
        .create(&Default::default(), &deployment("web"))
        .await
        .expect("create deployment");
    let generation = |d: &Deployment| d.metadata.generation.unwrap_or_default();
    let g0 = generation(&deployments.get("web").await.unwrap());
    w.start(w.config());
    w.identity(
        "app",
        json!({"rolloutRestartTargets": [
            {"kind": "Deployment", "name": "web"},
            {"kind": "StatefulSet", "name": "absent"},
        ]}),
    )
    .await;
    let first = w
        .until("app", 60, "the first token recorded as rolled out", |o| {
            o.status
                .as_ref()
                .is_some_and(|s| s.rolled_out_token_issued_at.is_some())
        })
        .await;
    let d = deployments.get("web").await.unwrap();
    assert_eq!(restarted_at(&d), None, "the first token restarts nothing");
    assert_eq!(generation(&d), g0);
    let issued = |o: &CommunicationIdentity| {
        o.status
            .as_ref()
            .and_then(|s| s.last_token_issued_at.clone())
    };

    // Renewal: restarted once, for that token.
    w.annotate("app", RENEW_REQUESTED_AT_ANNOTATION, "now-1")
        .await;
    let before = issued(&first);
    let renewed = w
        .until("app", 60, "the new token rolled out", |o| {
            let s = o.status.clone().unwrap_or_default();
            issued(o) != before
                && s.rolled_out_token_issued_at.is_some()
                && s.rolled_out_token_issued_at
                    == s.last_token_issued_at
                        .as_ref()
                        .map(|t| acs_identity_operator::controller::identity::decide::rfc3339(t.0))
        })
        .await;
    let st = renewed.status.clone().unwrap();
    let d = deployments.get("web").await.unwrap();
    assert_eq!(restarted_at(&d), st.rolled_out_token_issued_at);
    assert_eq!(generation(&d), g0 + 1, "exactly one restart");
    // The missing StatefulSet: a condition and a warning, Ready untouched.
    assert_eq!(
        cond(&renewed, types::ROLLOUT_RESTARTED),
        Some(("False".into(), reasons::ROLLOUT_TARGET_NOT_FOUND.into()))
    );
    assert_eq!(
        cond(&renewed, types::READY).map(|c| c.0),
        Some("True".into())
    );

    // A re-reconcile (a label edit) and an operator restart restart nothing.
    w.identities()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "1"}}})),
        )
        .await
        .unwrap();
    if let Some(op) = w.operator.take() {
        op.abort();
    }
    w.start(w.config());
    w.until("app", 30, "the label seen", |o| {
        o.labels().contains_key("touched")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = deployments.get("web").await.unwrap();
    assert_eq!(
        generation(&d),
        g0 + 1,
        "no second restart for the same token"
    );

    // The next token restarts once more.
    w.annotate("app", RENEW_REQUESTED_AT_ANNOTATION, "now-2")
        .await;
    let before = issued(&renewed);
    w.until("app", 60, "the third token rolled out", |o| {
        let s = o.status.clone().unwrap_or_default();
        issued(o) != before
            && s.rolled_out_token_issued_at
                == s.last_token_issued_at
                    .as_ref()
                    .map(|t| acs_identity_operator::controller::identity::decide::rfc3339(t.0))
    })
    .await;
    let d = deployments.get("web").await.unwrap();
    assert_eq!(generation(&d), g0 + 2);
}

/// Issue 18: an identity created as `v1beta1` is stored as `v1alpha1` (the storage
/// version the operator watches), reconciled to Ready, and reads back as `v1beta1` with
/// the same status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_created_as_v1beta1_is_reconciled() {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("beta", 1.0).await;
    w.service(PREVIEW).await;
    w.start(w.config());
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            acs_identity_operator::api::GROUP,
            acs_identity_operator::api::BETA_VERSION,
            "CommunicationIdentity",
        ),
        "communicationidentities",
    );
    let beta: Api<DynamicObject> = Api::namespaced_with(w.client.clone(), w.ns(), &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "acs-operator.dev/v1beta1", "kind": "CommunicationIdentity",
        "metadata": {"name": "beta"},
        "spec": {"serviceRef": {"name": "acs"}, "scopes": ["chat"]},
    }))
    .unwrap();
    beta.create(&Default::default(), &obj)
        .await
        .expect("create as v1beta1");
    let ready = w.ready("beta").await;
    assert!(w.token("beta").await.is_some(), "the Secret holds a token");
    let read = beta.get("beta").await.expect("get as v1beta1");
    assert_eq!(
        read.types.as_ref().map(|t| t.api_version.as_str()),
        Some("acs-operator.dev/v1beta1")
    );
    assert_eq!(
        read.data["status"]["userId"].as_str(),
        ready.status.as_ref().and_then(|s| s.user_id.as_deref())
    );
    // CEL rules hold in v1beta1 too (same schema): secretName stays immutable.
    let refused = beta
        .patch(
            "beta",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"secretName": "other"}})),
        )
        .await;
    assert!(
        refused.is_err(),
        "secretName change accepted through v1beta1"
    );
}

/// The cost figures above come from this labelling of the operator's requests; it must
/// match kube-apiserver's (a LIST is not a GET, a watch is neither, apply is not patch).
#[test]
fn requests_are_labelled_as_the_api_server_labels_them() {
    let ids = "/apis/acs-operator.dev/v1alpha1/namespaces/t/communicationidentities";
    let one = format!("{ids}/a");
    let status = format!("{ids}/a/status");
    for (method, path, query, content_type, want) in [
        ("GET", ids, "", "", ("LIST", "communicationidentities")),
        (
            "GET",
            ids,
            "watch=true&resourceVersion=5",
            "",
            ("WATCH", "communicationidentities"),
        ),
        ("GET", &one, "", "", ("GET", "communicationidentities")),
        (
            "PATCH",
            &status,
            "",
            "application/merge-patch+json",
            ("PATCH", "communicationidentities/status"),
        ),
        (
            "PATCH",
            "/api/v1/namespaces/t/secrets/s",
            "fieldManager=x",
            "application/apply-patch+yaml",
            ("APPLY", "secrets"),
        ),
        (
            "POST",
            "/api/v1/namespaces/t/events",
            "",
            "",
            ("POST", "events"),
        ),
        ("GET", "/api/v1/namespaces/t", "", "", ("GET", "namespaces")),
        (
            "GET",
            "/api/v1/secrets",
            "labelSelector=a",
            "",
            ("LIST", "secrets"),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/t/secrets",
            "",
            "",
            ("DELETECOLLECTION", "secrets"),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/t/secrets/s",
            "",
            "",
            ("DELETE", "secrets"),
        ),
    ] {
        let (verb, resource, _) = classify(method, path, query, content_type);
        assert_eq!(
            (verb.as_str(), resource.as_str()),
            want,
            "{method} {path}?{query}"
        );
    }
}

/// Issue 19 with the review's failover case: a new identity on a custom-id version writes
/// its Secret by a plain create without reading it first. When the name is taken by a
/// Secret of its own that the (label-filtered) cache does not show, as after a failover
/// mid-write, the refused create is told from someone else's Secret by one read: no
/// SecretConflict, no second user, and the Secret is taken over with a valid token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_refused_by_our_own_unseen_secret_is_no_conflict() {
    let _shared = EXCLUSIVE.read().await;
    let mut w = World::new("own-409", 1.0).await;
    w.service(PREVIEW).await;
    w.identity("app", json!({})).await;
    let uid = w.identities().get("app").await.unwrap().uid().unwrap();
    // Ours (its controller reference) but without our label: the cache cannot see it.
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "app", "ownerReferences": [{
            "apiVersion": "acs-operator.dev/v1alpha1", "kind": "CommunicationIdentity",
            "name": "app", "uid": uid, "controller": true}]},
        "stringData": {"token": "from-an-earlier-attempt"},
    }))
    .unwrap();
    w.secrets()
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    w.start(w.config());
    let o = w.ready("app").await;
    let conditions = o.status.clone().unwrap_or_default().conditions;
    assert!(
        conditions.iter().all(|c| c.type_ != types::SECRET_CONFLICT),
        "no SecretConflict for our own Secret: {conditions:?}"
    );
    let events = support::world::events_for(&w.client, w.ns(), "app").await;
    assert!(
        events
            .iter()
            .all(|e| e.reason.as_deref() != Some(reasons::SECRET_CONFLICT)),
        "no SecretConflict event"
    );
    assert_eq!(w.emulator.live_users().await.len(), 1, "one ACS user");
    let token = w.token("app").await.expect("a token in the Secret");
    assert_ne!(token, "from-an-earlier-attempt");
    assert!(
        w.emulator.validate(&token).await.0,
        "the Secret holds a valid token"
    );
}
