//! Leader election on a real API server: one leader among candidates, prompt handover
//! on release, and takeover within the lease duration when a leader goes silent.

mod support;

use std::time::{Duration, Instant};

use acs_identity_operator::runtime::leader::{LeaderHandle, LeaseConfig, run_leader_election};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use support::{ControlPlane, TestNamespace};
use tokio::task::JoinHandle;

const LEASE: &str = "acs-identity-operator";

fn config(namespace: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        identity: identity.to_string(),
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
        ..LeaseConfig::new(namespace, LEASE)
    }
}

fn campaign(client: &Client, namespace: &str, identity: &str) -> JoinHandle<LeaderHandle> {
    let client = client.clone();
    let config = config(namespace, identity);
    tokio::spawn(async move {
        run_leader_election(client, config, std::future::pending())
            .await
            .expect("valid settings")
            .expect("no shutdown requested")
    })
}

async fn holder(client: &Client, namespace: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(LEASE)
        .await
        .expect("read Lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Starts candidates `a` and `b`; returns (leader, standby task, standby identity).
async fn elect(
    client: &Client,
    namespace: &str,
) -> (LeaderHandle, JoinHandle<LeaderHandle>, &'static str) {
    let mut a = campaign(client, namespace, "a");
    let mut b = campaign(client, namespace, "b");
    let (leader, standby, standby_id) = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::select! {
            r = &mut a => (r.expect("candidate a"), b, "b"),
            r = &mut b => (r.expect("candidate b"), a, "a"),
        }
    })
    .await
    .expect("one candidate wins within 15s");
    assert!(leader.is_leader());
    assert_eq!(
        holder(client, namespace).await.as_deref(),
        Some(leader.identity())
    );
    // The other keeps waiting while the leader renews, well past a lease duration.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!standby.is_finished(), "both candidates became leader");
    assert!(
        leader.is_leader(),
        "the leader lost the Lease while renewing"
    );
    assert_eq!(
        holder(client, namespace).await.as_deref(),
        Some(leader.identity())
    );
    (leader, standby, standby_id)
}

#[tokio::test]
async fn one_leader_and_prompt_handover_on_release() {
    let cp = ControlPlane::get();
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "lease").await;

    let (leader, standby, standby_id) = elect(&client, &ns.name).await;
    let lost = leader.lost();
    let released_at = Instant::now();
    leader.release().await.expect("release the Lease");
    tokio::time::timeout(Duration::from_secs(1), lost)
        .await
        .expect("lost() resolves once released");

    let next = tokio::time::timeout(Duration::from_secs(3), standby)
        .await
        .expect("the standby takes over promptly after a release")
        .expect("standby task");
    let took = released_at.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "handover took {took:?}, expected about one retry period"
    );
    assert_eq!(next.identity(), standby_id);
    assert_eq!(holder(&client, &ns.name).await.as_deref(), Some(standby_id));
    let lease = Api::<Lease>::namespaced(client.clone(), &ns.name)
        .get(LEASE)
        .await
        .expect("read Lease");
    let transitions = lease.spec.and_then(|s| s.lease_transitions);
    assert_eq!(
        transitions,
        Some(1),
        "created by one, taken over by the other"
    );
    next.release().await.expect("release");
    assert_eq!(holder(&client, &ns.name).await, None);
}

#[tokio::test]
async fn a_silent_leader_is_replaced_within_the_lease_duration() {
    let cp = ControlPlane::get();
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "lease").await;

    let (leader, standby, standby_id) = elect(&client, &ns.name).await;
    // Dropping the handle stops renewals without a release, like a crashed process.
    let silent_since = Instant::now();
    drop(leader);

    let next = tokio::time::timeout(Duration::from_secs(8), standby)
        .await
        .expect("the standby takes over after the lease duration")
        .expect("standby task");
    let took = silent_since.elapsed();
    // The standby must wait for the 3s lease to lapse, but not much longer: one retry
    // period to notice the last renewal, one to poll after expiry, plus API latency.
    assert!(
        took >= Duration::from_millis(2_500),
        "took over after only {took:?}: the lease was stolen"
    );
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    assert_eq!(holder(&client, &ns.name).await.as_deref(), Some(standby_id));
    next.release().await.expect("release");
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_is_told() {
    let cp = ControlPlane::get();
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "lease").await;

    let leader = campaign(&client, &ns.name, "a").await.expect("candidate a");
    // Someone else (an operator by hand, a partitioned node's successor) takes the Lease.
    let api = Api::<Lease>::namespaced(client.clone(), &ns.name);
    let mut lease = api.get(LEASE).await.expect("read Lease");
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("intruder".into());
    }
    api.replace(LEASE, &Default::default(), &lease)
        .await
        .expect("take the Lease");

    tokio::time::timeout(Duration::from_secs(3), leader.lost())
        .await
        .expect("the leader notices within a renewal or two");
    assert!(!leader.is_leader());
    // Releasing after the loss must not clear someone else's hold.
    leader.release().await.expect("release after loss");
    assert_eq!(holder(&client, &ns.name).await.as_deref(), Some("intruder"));
}

#[tokio::test]
async fn shutdown_while_campaigning_returns_none() {
    let cp = ControlPlane::get();
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "lease").await;

    let leader = campaign(&client, &ns.name, "a").await.expect("candidate a");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let waiting = tokio::spawn({
        let client = client.clone();
        let config = config(&ns.name, "b");
        async move {
            run_leader_election(client, config, async {
                let _ = rx.await;
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = tx.send(());
    let result = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("campaign stops on shutdown")
        .expect("campaign task")
        .expect("valid settings");
    assert!(result.is_none());
    assert!(leader.is_leader());
    leader.release().await.expect("release");
}

#[tokio::test]
async fn a_deleted_lease_is_recreated_by_its_leader() {
    let cp = ControlPlane::get();
    let client = cp.admin_client().await;
    let ns = TestNamespace::create(cp, &client, "lease").await;

    let leader = campaign(&client, &ns.name, "a").await.expect("candidate a");
    Api::<Lease>::namespaced(client.clone(), &ns.name)
        .delete(LEASE, &Default::default())
        .await
        .expect("delete Lease");
    support::eventually(5, "the leader to recreate its Lease", || async {
        (holder(&client, &ns.name).await.as_deref() == Some("a")).then_some(())
    })
    .await;
    assert!(leader.is_leader());
    leader.release().await.expect("release");
}
