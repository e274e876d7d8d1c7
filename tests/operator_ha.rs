//! High availability and the chart's restricted mode, with real operator processes on
//! the local control plane:
//! - two replicas with `--leader-elect`: exactly one holds the Lease and reconciles;
//! - SIGKILL of the leader: the standby takes over within the lease duration (15 s,
//!   the default the chart deploys) and reconciles new identities;
//! - SIGTERM of the leader: in-flight work finishes, the Lease is released, the process
//!   exits 0 and the standby takes over well before the lease duration; a standby
//!   receiving SIGTERM exits promptly too;
//! - `watchNamespaces` (restricted RBAC rendered by the chart, its own ServiceAccount):
//!   identities in the watched namespace get Ready, others are left alone, no 403s.
//!
//! Each test's operators watch only that test's namespaces, and the tests take turns
//! (the machine is small; takeover times are measured), so no process sees another
//! test's objects. Run: `cargo test --test operator_ha`.

mod support;

use std::time::{Duration, Instant};

use acs_identity_operator::api::CommunicationIdentity;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::api::DeleteParams;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use support::emulator::{Emulator, fault};
use support::operator::{self, OPERATOR_NAMESPACE, Operator};
use support::world::{
    SERVICE, acs_resource, condition, create_identity, delete_all_identities, install_service,
    secret_data, wait_for,
};
use support::{ControlPlane, TestNamespace, eventually};

/// The default lease duration (`LeaseConfig::new`), which the chart deploys.
const LEASE_DURATION: Duration = Duration::from_secs(15);

/// One test at a time: every test runs several operator processes on two shared cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- the test's world

/// A control plane client and an emulator; namespaces with credentials and a
/// `CommunicationService` named [`SERVICE`] pointing at the emulator.
struct World {
    cp: &'static ControlPlane,
    client: Client,
    emulator: Emulator,
}

impl World {
    async fn new() -> World {
        let cp = ControlPlane::get();
        // CRDs, the operator namespace (where the Leases live), the chart's
        // ServiceAccount and RBAC. No shared operator is started: it would reconcile
        // every namespace.
        operator::operator_kubeconfig();
        let client = cp.admin_client().await;
        World {
            cp,
            client,
            emulator: Emulator::start(1.0),
        }
    }

    /// A fresh namespace with the credential Secret and the `CommunicationService`.
    async fn namespace(&self, prefix: &str) -> TestNamespace {
        let ns = TestNamespace::create(self.cp, &self.client, prefix).await;
        install_service(
            &self.client,
            &ns.name,
            &self.emulator.connection_string,
            None,
        )
        .await;
        ns
    }

    fn identities(&self, ns: &str) -> Api<CommunicationIdentity> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn create_identity(&self, ns: &str, name: &str) {
        create_identity(&self.client, ns, name, json!({})).await;
    }

    /// Waits for Ready=True, then checks the Secret's token at the emulator; returns the
    /// ACS user id.
    async fn wait_ready_with_valid_token(&self, ns: &str, name: &str, secs: u64) -> String {
        let obj = wait_for(&self.identities(ns), name, secs, |obj| {
            condition(obj, "Ready").is_some_and(|c| c.status == "True")
        })
        .await
        .unwrap_or_else(|| panic!("timed out after {secs}s waiting for {ns}/{name} Ready=True"));
        let user = obj
            .status
            .as_ref()
            .and_then(|s| s.user_id.clone())
            .expect("status.userId");
        let token = secret_data(&self.client, ns, name)
            .await
            .expect("the identity's Secret")
            .remove("token")
            .expect("token in the Secret");
        assert_eq!(
            self.emulator.validate(&token).await,
            (true, "valid".into()),
            "the token of {ns}/{name} is valid at the emulator"
        );
        user
    }

    /// Deletes every identity of `ns` and waits until they are gone (an operator must
    /// still run to drop the finalizers), so the namespace can go too.
    async fn delete_identities(&self, ns: &str) {
        delete_all_identities(&self.identities(ns), ns).await;
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE)
    }

    async fn lease(&self, name: &str) -> Option<LeaseSpec> {
        self.leases()
            .get_opt(name)
            .await
            .expect("read the Lease")
            .and_then(|l| l.spec)
    }

    async fn holder(&self, name: &str) -> Option<String> {
        self.lease(name)
            .await
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty())
    }
}

// ---------------------------------------------------------------- replicas

/// An operator process and its leader-election identity (from its log).
struct Replica {
    op: Operator,
    identity: String,
}

impl Replica {
    fn log_has(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.op.log_text().lines().any(pred)
    }

    /// Whether its log says it issued a token for `ns/name`.
    fn issued_token_for(&self, ns: &str, name: &str) -> bool {
        self.log_has(|l| {
            l.contains("token issued")
                && l.contains(&format!("\"{ns}\""))
                && l.contains(&format!("\"{name}\""))
        })
    }

    /// Sum of `acs_operator_reconciles_total{kind="CommunicationIdentity",..}`; `None`
    /// when the family has no such series (nothing reconciled).
    async fn identity_reconciles(&self) -> Option<f64> {
        let text = self.op.metrics().await;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.starts_with("acs_operator_reconciles_total{")
                    && l.contains("kind=\"CommunicationIdentity\"")
            })
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("metric line {l:?}"))
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// The timestamp of its first log line that `pred` accepts.
    fn log_time(&self, pred: impl Fn(&str) -> bool) -> Option<jiff::Timestamp> {
        self.op
            .log_text()
            .lines()
            .filter(|l| pred(l))
            .find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                v["timestamp"].as_str()?.parse().ok()
            })
    }

    fn signal(&self, sig: &str) {
        self.op.process().signal(sig);
    }

    /// Waits up to `secs` for the process to exit; returns its status and how long it took.
    async fn wait_exit(&self, secs: u64) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.op.process().try_exit_status() {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "the operator did not exit within {secs}s; log: {}",
                self.op.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A top-level or `fields` string field of the first JSON log line whose message is
/// `message`.
fn log_field(op: &Operator, message: &str, field: &str) -> Option<String> {
    op.log_text().lines().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        let fields = if v["fields"].is_object() {
            &v["fields"]
        } else {
            &v
        };
        (fields["message"] == message)
            .then(|| fields[field].as_str().map(str::to_string))
            .flatten()
    })
}

async fn spawn_replica(args: &[&str], prefix: &str) -> Replica {
    let op = operator::spawn_operator(args, prefix).await;
    let identity = eventually(
        30,
        "the replica's leader-election identity in its log",
        || {
            let id = log_field(&op, "campaigning for the leader Lease", "identity");
            async move { id }
        },
    )
    .await;
    Replica { op, identity }
}

/// A Lease name of its own for each test (and each run of the binary).
fn lease_name(test: &str) -> String {
    format!("acs-ha-{test}-{}", std::process::id())
}

/// Two replicas electing over Lease `lease`, watching only `ns`; returns
/// (leader, standby) once the Lease names one of them.
async fn two_replicas(w: &World, lease: &str, ns: &str) -> (Replica, Replica) {
    let args = [
        "--leader-elect",
        "--leader-election-namespace",
        OPERATOR_NAMESPACE,
        "--leader-election-lease-name",
        lease,
        "--watch-namespaces",
        ns,
    ];
    let (a, b) = tokio::join!(
        spawn_replica(&args, "acs-ha-a-"),
        spawn_replica(&args, "acs-ha-b-")
    );
    assert_ne!(a.identity, b.identity, "replica identities are unique");
    let holder = eventually(30, "a holder of the new Lease", || async {
        w.holder(lease).await
    })
    .await;
    let (leader, standby) = if holder == a.identity {
        (a, b)
    } else if holder == b.identity {
        (b, a)
    } else {
        panic!(
            "Lease held by {holder:?}, neither replica ({} / {})",
            a.identity, b.identity
        )
    };
    let spec = w.lease(lease).await.expect("Lease");
    assert_eq!(
        spec.lease_duration_seconds,
        Some(LEASE_DURATION.as_secs() as i32)
    );
    // Both are ready: a standby reports ready so a rolling update can proceed.
    leader.op.wait_ready(60).await;
    standby.op.wait_ready(60).await;
    (leader, standby)
}

/// Polls the Lease (every 50 ms) until `pred` holds; returns the time it took.
async fn wait_lease(
    w: &World,
    lease: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&LeaseSpec) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if w.lease(lease).await.as_ref().is_some_and(&pred) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for Lease {lease}: {what}; it is {:?}",
            w.lease(lease).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- 1. one active

#[tokio::test]
async fn two_replicas_elect_one_leader_and_only_the_leader_reconciles() {
    let _turn = SERIAL.lock().await;
    let w = World::new().await;
    let ns = w.namespace("ha-one").await;
    let lease = lease_name("one");
    let (leader, standby) = two_replicas(&w, &lease, &ns.name).await;

    for name in ["app-1", "app-2"] {
        w.create_identity(&ns.name, name).await;
    }
    for name in ["app-1", "app-2"] {
        w.wait_ready_with_valid_token(&ns.name, name, 60).await;
    }
    // Let follow-up reconciles (status writes, owned Secret events) run out.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let on_leader = leader.identity_reconciles().await;
    let on_standby = standby.identity_reconciles().await;
    assert!(
        on_leader.is_some_and(|n| n >= 2.0),
        "the leader reconciled the identities: {on_leader:?}"
    );
    assert_eq!(
        on_standby,
        None,
        "the standby reconciled nothing; its log: {}",
        standby.op.log.display()
    );
    for name in ["app-1", "app-2"] {
        assert!(leader.issued_token_for(&ns.name, name));
        assert!(!standby.issued_token_for(&ns.name, name));
    }
    assert!(
        !standby.log_has(|l| l.contains("became the leader")),
        "the standby never led"
    );
    assert_eq!(w.emulator.identities().await.len(), 2, "one ACS user each");
    assert_eq!(w.holder(&lease).await.as_deref(), Some(&*leader.identity));

    // A standby receiving SIGTERM exits at once, and leaves the leader's Lease alone.
    let before = w.lease(&lease).await.expect("Lease");
    standby.signal("TERM");
    let (status, took) = standby.wait_exit(5).await;
    eprintln!("standby exit after SIGTERM: {took:?}");
    assert!(status.success(), "standby exit status: {status:?}");
    assert!(took < Duration::from_secs(3), "standby exit took {took:?}");
    let after = w.lease(&lease).await.expect("Lease");
    assert_eq!(after.holder_identity, before.holder_identity);
    assert_eq!(after.lease_transitions, before.lease_transitions);
    assert!(leader.op.is_healthy().await, "the leader carries on");

    w.delete_identities(&ns.name).await;
}

// ---------------------------------------------------------------- 2. SIGKILL

#[tokio::test]
async fn a_killed_leader_is_replaced_within_the_lease_duration() {
    let _turn = SERIAL.lock().await;
    let w = World::new().await;
    let ns = w.namespace("ha-kill").await;
    let lease = lease_name("kill");
    let (leader, standby) = two_replicas(&w, &lease, &ns.name).await;

    w.create_identity(&ns.name, "before").await;
    w.wait_ready_with_valid_token(&ns.name, "before", 60).await;
    let transitions = w.lease(&lease).await.and_then(|s| s.lease_transitions);

    leader.signal("KILL");
    let killed = Instant::now();
    let (status, _) = leader.wait_exit(5).await;
    assert_eq!(status.code(), Some(137), "killed by SIGKILL: {status:?}");

    let standby_id = standby.identity.clone();
    wait_lease(&w, &lease, 40, "held by the standby", |s| {
        s.holder_identity.as_deref() == Some(&*standby_id)
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("takeover after SIGKILL of the leader: {takeover:?}");
    // No sooner than the lease allows: the dead leader renewed at most a retry period
    // (2 s) before the kill, and the standby must see that record unchanged for 15 s.
    // No later than the lease plus two standby polls (2-2.4 s each: one to first see
    // the last record, one after it expired) and some slack for a loaded machine.
    assert!(
        takeover >= LEASE_DURATION - Duration::from_secs(3),
        "the standby took the Lease after {takeover:?}: before the killed leader's lease ran out"
    );
    assert!(
        takeover <= LEASE_DURATION + Duration::from_secs(8),
        "the standby took {takeover:?} to take over (lease {LEASE_DURATION:?})"
    );
    assert!(standby.log_has(|l| l.contains("became the leader")));
    let spec = w.lease(&lease).await.expect("Lease");
    assert_eq!(
        spec.lease_transitions,
        transitions.map(|t| t + 1),
        "one transition"
    );

    // The new leader reconciles a newly applied identity.
    w.create_identity(&ns.name, "after").await;
    w.wait_ready_with_valid_token(&ns.name, "after", 60).await;
    assert!(standby.issued_token_for(&ns.name, "after"));
    assert!(
        standby.identity_reconciles().await.is_some_and(|n| n > 0.0),
        "the new leader's metrics count its reconciles"
    );
    // The identity from before the kill is adopted as it is: no second user, no new token.
    w.wait_ready_with_valid_token(&ns.name, "before", 10).await;
    assert!(!standby.issued_token_for(&ns.name, "before"));
    assert_eq!(w.emulator.identities().await.len(), 2, "one ACS user each");
    assert!(standby.op.is_healthy().await);

    w.delete_identities(&ns.name).await;
}

// ---------------------------------------------------------------- 3. SIGTERM

#[tokio::test]
async fn a_terminated_leader_finishes_in_flight_work_releases_the_lease_and_exits_0() {
    let _turn = SERIAL.lock().await;
    let w = World::new().await;
    let ns = w.namespace("ha-term").await;
    let lease = lease_name("term");
    let (leader, standby) = two_replicas(&w, &lease, &ns.name).await;

    w.create_identity(&ns.name, "before").await;
    w.wait_ready_with_valid_token(&ns.name, "before", 60).await;
    let transitions = w.lease(&lease).await.and_then(|s| s.lease_transitions);

    // A slow ACS: the next user creation takes 5 s, so it is in flight at SIGTERM.
    w.emulator
        .add_fault(fault(json!({"operation": "create", "latencyMs": 5000})))
        .await;
    w.create_identity(&ns.name, "in-flight").await;
    let api = w.identities(&ns.name);
    eventually(30, "the finalizer on in-flight", || {
        let api = api.clone();
        async move {
            let obj = api.get_opt("in-flight").await.ok()??;
            (!obj.finalizers().is_empty()).then_some(())
        }
    })
    .await;
    // The reconcile after the finalizer write is now waiting on the slow create.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !leader.issued_token_for(&ns.name, "in-flight"),
        "the create was meant to be still in flight"
    );

    leader.signal("TERM");
    let termed = Instant::now();
    let standby_id = standby.identity.clone();
    let (exit, takeover) = tokio::join!(
        leader.wait_exit(10),
        wait_lease(&w, &lease, 30, "held by the standby", |s| {
            s.holder_identity.as_deref() == Some(&*standby_id)
        })
    );
    let (status, exit_took) = exit;
    eprintln!("leader exit after SIGTERM: {exit_took:?}; standby takeover: {takeover:?}");
    assert!(
        status.success(),
        "exit status after SIGTERM: {status:?}; log: {}",
        leader.op.log.display()
    );
    assert!(
        leader.log_has(|l| l.contains("released the leader Lease")),
        "the leader released its Lease"
    );
    assert!(leader.log_has(|l| l.contains("\"stopped\"")));
    // Without the release the standby would wait out the 15 s lease after the exit; it
    // polls every 2-2.4 s, and the leader first finished its 5 s create.
    assert!(
        takeover < Duration::from_secs(10),
        "standby took {takeover:?} to take over after SIGTERM"
    );
    assert!(
        takeover.saturating_sub(exit_took) < Duration::from_secs(5),
        "standby took {:?} after the leader's exit to take over",
        takeover.saturating_sub(exit_took)
    );
    assert!(termed.elapsed() < Duration::from_secs(30));
    let spec = w.lease(&lease).await.expect("Lease");
    assert_eq!(spec.lease_transitions, transitions.map(|t| t + 1));

    // The in-flight work was finished by the old leader, not redone by the new one.
    let user = w
        .wait_ready_with_valid_token(&ns.name, "in-flight", 60)
        .await;
    assert!(
        leader.issued_token_for(&ns.name, "in-flight"),
        "the terminated leader finished its in-flight reconcile; log: {}",
        leader.op.log.display()
    );
    assert!(!standby.issued_token_for(&ns.name, "in-flight"));
    // Never two active: the standby led only after the old leader's last write.
    let finished = leader
        .log_time(|l| l.contains("token issued") && l.contains("\"in-flight\""))
        .expect("timestamp of the in-flight token");
    let released = leader
        .log_time(|l| l.contains("released the leader Lease"))
        .expect("timestamp of the release");
    let led = standby
        .log_time(|l| l.contains("became the leader"))
        .expect("the standby became the leader");
    assert!(
        finished <= released && released <= led,
        "in-flight token {finished}, release {released}, standby leads {led}"
    );
    let at_acs = w.emulator.identity(&user).await.expect("user at ACS");
    assert_eq!(at_acs.tokens_issued, 1, "one token: {at_acs:?}");
    assert_eq!(w.emulator.identities().await.len(), 2, "one ACS user each");

    // The new leader works.
    w.emulator.clear_faults().await;
    w.create_identity(&ns.name, "after").await;
    w.wait_ready_with_valid_token(&ns.name, "after", 60).await;
    assert!(standby.issued_token_for(&ns.name, "after"));

    w.delete_identities(&ns.name).await;
}

// ---------------------------------------------------------------- 4. restricted

/// Release (and ServiceAccount) name of the restricted install: distinct from the
/// shared `acs-identity-operator` so their cluster-scoped RBAC objects don't clash.
const RESTRICTED_RELEASE: &str = "acs-identity-operator-restricted";

/// The chart's ServiceAccount and RBAC for release [`RESTRICTED_RELEASE`] in
/// [`OPERATOR_NAMESPACE`] with `watchNamespaces` set.
fn restricted_manifests(watch: &[&str]) -> String {
    operator::chart_template(
        RESTRICTED_RELEASE,
        &[
            "--set",
            &format!("watchNamespaces={{{}}}", watch.join(",")),
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
        ],
    )
}

fn can_i(cp: &ControlPlane, verb: &str, resource: &str, ns: &str) -> bool {
    let who = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{RESTRICTED_RELEASE}");
    let (_, out, _) = cp.kubectl_run(
        &["auth", "can-i", verb, resource, "-n", ns, "--as", &who],
        None,
    );
    out.trim() == "yes"
}

#[tokio::test]
async fn restricted_namespaces_reconcile_only_the_watched_namespace_without_403s() {
    let _turn = SERIAL.lock().await;
    let w = World::new().await;
    let team = w.namespace("ha-team").await;
    let other = w.namespace("ha-other").await;

    let manifests = restricted_manifests(&[&team.name]);
    assert!(
        manifests.contains(&format!("name: {RESTRICTED_RELEASE}\n")),
        "the release's own ServiceAccount: {manifests}"
    );
    let (ok, _, err) = w.cp.kubectl_run(&["apply", "-f", "-"], Some(&manifests));
    assert!(ok, "applying the restricted RBAC: {err}");
    // It really is restricted: Secrets writable in the watched namespace only.
    assert!(can_i(w.cp, "create", "secrets", &team.name));
    assert!(!can_i(w.cp, "create", "secrets", &other.name));
    assert!(!can_i(w.cp, "list", "communicationidentities", &other.name));

    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig =
        w.cp.service_account_kubeconfig(
            &w.client,
            OPERATOR_NAMESPACE,
            RESTRICTED_RELEASE,
            dir.path(),
        )
        .await;
    let lease = lease_name("restricted");
    let op = operator::spawn_operator_as(
        &kubeconfig,
        &[
            "--watch-namespaces",
            &team.name,
            "--leader-elect",
            "--leader-election-namespace",
            OPERATOR_NAMESPACE,
            "--leader-election-lease-name",
            &lease,
        ],
        "acs-ha-restricted-",
    )
    .await;
    op.wait_ready(60).await;

    w.create_identity(&other.name, "outside").await;
    w.create_identity(&team.name, "inside").await;
    w.wait_ready_with_valid_token(&team.name, "inside", 60)
        .await;
    // Give the operator every chance to (wrongly) touch the other namespace.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let outside = w
        .identities(&other.name)
        .get("outside")
        .await
        .expect("outside");
    assert!(
        outside.finalizers().is_empty(),
        "no finalizer outside the watched namespace: {:?}",
        outside.finalizers()
    );
    assert!(
        outside.status.is_none(),
        "no status outside: {:?}",
        outside.status
    );
    let secrets = Api::<Secret>::namespaced(w.client.clone(), &other.name);
    assert!(secrets.get_opt("outside").await.expect("get").is_none());
    let services = acs_resource("CommunicationService", "communicationservices");
    let service_status = |ns: String| {
        let api: Api<kube::core::DynamicObject> =
            Api::namespaced_with(w.client.clone(), &ns, &services);
        async move {
            let svc = api.get(SERVICE).await.expect("get the service");
            svc.data.get("status").cloned().filter(|s| !s.is_null())
        }
    };
    assert!(
        service_status(team.name.clone()).await.is_some(),
        "the watched namespace's service has a status"
    );
    let outside_status = service_status(other.name.clone()).await;
    assert!(
        outside_status.is_none(),
        "no status on the service outside: {outside_status:?}"
    );
    assert_eq!(w.emulator.identities().await.len(), 1, "one ACS user only");

    assert!(op.is_healthy().await);
    // kube's API errors read `... is forbidden: User ... cannot ...` with `reason:
    // "Forbidden", code: 403`; a bare "403" would also match timestamps and ids.
    let rbac_error = |l: &str| {
        let l = l.to_ascii_lowercase();
        [
            "forbidden",
            "code: 403",
            "\"code\":403",
            "403 forbidden",
            "status: 403",
        ]
        .iter()
        .any(|n| l.contains(n))
    };
    let hit = op
        .log_text()
        .lines()
        .find(|l| rbac_error(l))
        .map(str::to_string);
    assert!(hit.is_none(), "RBAC error in the operator's log: {hit:?}");

    w.delete_identities(&team.name).await;
    // The other identity has no finalizer: it goes at once, without an operator.
    w.identities(&other.name)
        .delete("outside", &DeleteParams::default())
        .await
        .expect("delete outside");
    drop(op);
    let _ = w.cp.kubectl_run(
        &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
        Some(&manifests),
    );
    let _ = w.leases().delete(&lease, &DeleteParams::default()).await;
}

// ---------------------------------------------------------------- 5. shutdown deadline

/// Issue 16 item 10: with its API server gone, SIGTERM still ends the process within
/// `--shutdown-timeout` (without the deadline it retried connections for as long as one
/// waited). The kubeconfig points at a port where nothing listens: the watchers retry,
/// nothing ever syncs, and only the deadline can end the process.
#[tokio::test]
async fn sigterm_without_an_api_server_exits_within_the_shutdown_timeout() {
    let _serial = SERIAL.lock().await;
    let dir = support::process::temp_dir("acs-operator-dead-apiserver-");
    // A port that was free a moment ago: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: gone\n  user:\n    token: not-a-token\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: gone\ncurrent-context: gone\n"
        ),
    )
    .expect("write kubeconfig");
    let log = dir.join("operator.log");
    let args: Vec<String> = [
        "run",
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--metrics-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--shutdown-timeout",
        "3s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut process = support::process::Watched::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_acs-identity-operator")),
        &args,
        &log,
        false,
    );
    // Signal handlers are installed before the admin server listens.
    eventually(30, "the operator's admin server listening", || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("admin server listening")
                .then_some(())
        }
    })
    .await;
    // Let the watchers fail against the dead address a few times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(process.is_running(), "log: {}", log.display());
    process.signal("TERM");
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = process.try_exit_status() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(8),
            "still running {:?} after SIGTERM with --shutdown-timeout 3s; log: {}",
            sent.elapsed(),
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = sent.elapsed();
    eprintln!("exit after SIGTERM without an API server: {took:?}, {status:?}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("shutdown did not finish within --shutdown-timeout") || status.success(),
        "neither a clean stop nor the deadline; log: {}",
        log.display()
    );
}
