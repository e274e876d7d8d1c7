//! Scenario 8, a hostile tenant (issue 15): in one namespace a tenant runs every attack of
//! issue 15 at once (a quota-starved service, an endpoint that stalls for 120 s, one that
//! throttles for an hour, one answering 100 MiB, one whose `Retry-After` is `u64::MAX`,
//! one whose error text changes on every answer, and a year-long quota window at
//! admission); in another namespace a good tenant creates identities and has its tokens
//! renewed. Figures: the good tenant's time to Ready (idle, then under attack) and renewal
//! delay, operator restarts, peak RSS, the bad identities' status writes per minute.
//! Findings: the good tenant late by more than 5 s, or a restart of the operator.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt as _;
use kube::Api;
use kube::core::DynamicObject;
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::tally::Tally;
use crate::world::{CUSTOM_ID_VERSION, Cluster, GA_VERSION, World, ready_status, ts, wait_for};

/// How late the good tenant may be, against its own idle baseline.
pub const LATE_LIMIT_SECS: f64 = 5.0;

pub struct Params {
    /// Bad identities per attack (the 100 MiB one gets at most 3).
    pub bad_per_attack: usize,
    /// Good identities created one after the other under attack.
    pub good_identities: usize,
    /// How long a 24 h token of the good tenant lives (its renewal is measured).
    pub good_token_secs: f64,
}

/// One attack: a service name, its client quota (if any) and its emulator's fault rules.
struct Attack {
    name: &'static str,
    quota: Value,
    faults: Value,
    identities: usize,
}

fn attacks(n: usize) -> Vec<Attack> {
    let piece = "0123456789abcdef";
    vec![
        Attack {
            name: "starved",
            quota: json!({"quota": {"creates": 1, "window": "1h"}}),
            faults: json!([]),
            identities: n,
        },
        Attack {
            name: "stalling",
            quota: json!({}),
            faults: json!([{"latencyMs": 120_000}]),
            identities: n,
        },
        Attack {
            name: "throttling",
            quota: json!({}),
            faults: json!([{"status": 429, "retryAfterSeconds": 3600}]),
            identities: n,
        },
        Attack {
            name: "huge",
            quota: json!({}),
            faults: json!([{"status": 201, "body": piece, "bodyRepeat": 100 * 1024 * 1024 / piece.len()}]),
            identities: n.min(3),
        },
        Attack {
            name: "forever",
            quota: json!({}),
            faults: json!([{"status": 429, "retryAfter": u64::MAX.to_string()}]),
            identities: n,
        },
        Attack {
            name: "varying",
            quota: json!({}),
            faults: json!([{"status": 500, "varyMessage": true}]),
            identities: n,
        },
    ]
}

/// Distinct resourceVersions of every identity of a namespace, with when they were seen.
type Writes = Arc<Mutex<BTreeMap<String, Vec<(Instant, String)>>>>;

fn watch_writes(api: Api<DynamicObject>) -> (Writes, tokio::task::JoinHandle<()>) {
    let writes: Writes = Arc::default();
    let out = writes.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(event) = stream.next().await {
            let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event else {
                continue;
            };
            let (Some(name), Some(rv)) = (o.metadata.name.clone(), o.metadata.resource_version)
            else {
                continue;
            };
            let mut w = out.lock().unwrap();
            let versions = w.entry(name).or_default();
            if versions.last().is_none_or(|(_, last)| *last != rv) {
                versions.push((Instant::now(), rv));
            }
        }
    });
    (writes, task)
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

async fn identity_json(w: &World, name: &str) -> Option<Value> {
    serde_json::to_value(w.identities().get_opt(name).await.ok()??).ok()
}

/// Whether the operator process of `w` (started at `pid`) still runs.
fn operator_alive(w: &World, pid: i32) -> bool {
    let mut p = w.operator().process();
    p.try_exit_status().is_none() && p.pid() == Some(pid)
}

/// Creates a good identity and returns how long it took to be Ready (`None`: not in
/// `secs`, or the operator `op` (pid) is gone), polling every 100 ms.
async fn time_to_ready(w: &World, op: (&World, i32), name: &str, secs: f64) -> Option<f64> {
    let started = Instant::now();
    w.create_identity(name, "good", json!({}))
        .await
        .unwrap_or_else(|e| panic!("create identity {name}: {e}"));
    let ready = wait_for(secs, || async {
        if !operator_alive(op.0, op.1) {
            return Some(false);
        }
        let o = identity_json(w, name).await?;
        (ready_status(&o).as_deref() == Some("True")).then_some(true)
    })
    .await;
    (ready == Some(true)).then(|| started.elapsed().as_secs_f64())
}

pub async fn run(p: Params) -> Tally {
    let started = Instant::now();
    let mut t = Tally::default();
    let cluster = Cluster::shared();
    let mut good = World::new(cluster.clone(), "hostile-good").await;
    let mut bad = World::new(cluster, "hostile-bad").await;
    // One operator for both tenants, started by the bad tenant's world.
    bad.operator_args = vec!["--watch-namespaces".into(), good.ns.clone()];
    let scale = p.good_token_secs / 86_400.0;
    good.add_service(
        "good",
        CUSTOM_ID_VERSION,
        &["--token-lifetime-scale".into(), scale.to_string()],
        json!({}),
    )
    .await;
    let attacks = attacks(p.bad_per_attack);
    for a in &attacks {
        // GA: a create the stalling endpoint runs after the client gave up leaves a user,
        // reported as a GA leak, not counted as a broken promise.
        bad.add_service(a.name, GA_VERSION, &[], a.quota.clone())
            .await;
        if a.faults.as_array().is_some_and(|f| !f.is_empty()) {
            bad.emu(a.name).add_faults(a.faults.clone()).await;
        }
    }
    // A year-long window must be refused at admission.
    t.bad_total += 1;
    let year = bad
        .create(
            "CommunicationService",
            "communicationservices",
            json!({"metadata": {"name": "year"}, "spec": {
                "connectionStringSecretRef": {"name": "starved-conn"},
                "quota": {"creates": 1, "window": "8760h"},
            }}),
        )
        .await;
    let year_refused = match &year {
        Err(e) => e.to_string().contains("quota.window"),
        Ok(_) => false,
    };
    if year_refused {
        t.bad_refused += 1;
    }
    bad.start_operator().await;
    let pid = bad.operator().process().pid().expect("operator pid");

    // Idle baseline: the second good identity on an operator with nothing else to do.
    let _ = time_to_ready(&good, (&bad, pid), "g-warm", 60.0).await;
    let baseline = time_to_ready(&good, (&bad, pid), "g-base", 60.0)
        .await
        .expect("a good identity on an idle operator is Ready within 60 s");

    // The attack.
    let (writes, watch) = watch_writes(bad.identities());
    for a in &attacks {
        let names: Vec<String> = (0..a.identities)
            .map(|i| format!("{}-{i}", a.name))
            .collect();
        bad.create_identities(&names, a.name, json!({})).await;
    }
    let bad_total: usize = attacks.iter().map(|a| a.identities).sum();
    let engaged = wait_for(30.0, || async {
        let starved = bad.emu("starved").stats().await["requests"]["create"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>());
        (starved >= 1).then_some(())
    })
    .await
    .is_some();
    let attack_started = Instant::now();

    // The good tenant under attack: a renewal watched, and new identities one by one.
    let limit = baseline + LATE_LIMIT_SECS;
    let wait = (limit + 40.0).max(60.0);
    let mut times = vec![];
    let renew_first = time_to_ready(&good, (&bad, pid), "g-renew", wait).await;
    times.push(renew_first);
    for i in 0..p.good_identities {
        times.push(time_to_ready(&good, (&bad, pid), &format!("g-{i}"), wait).await);
    }
    let late: Vec<String> = times
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match t {
            Some(s) if *s <= limit => None,
            Some(s) => Some(format!("#{i} {s:.1} s")),
            None => Some(format!(
                "#{i} not Ready (waited up to {wait:.0} s, while the operator ran)"
            )),
        })
        .collect();
    let worst = times
        .iter()
        .map(|t| t.unwrap_or(wait))
        .fold(0.0_f64, f64::max);
    // Renewal delay: from the renewalTime of g-renew's first token to the new token.
    let renewal_at = identity_json(&good, "g-renew")
        .await
        .and_then(|o| ts(&o["status"]["renewalTime"]));
    let renewed = wait_for(p.good_token_secs * 2.0 + 30.0, || async {
        if !operator_alive(&bad, pid) {
            return Some(None);
        }
        good.ledger
            .lock()
            .unwrap()
            .renewals
            .iter()
            .find(|(_, n)| n == "g-renew")
            .map(|(at, _)| Some(*at))
    })
    .await
    .flatten();
    let renewal_delay = match (renewal_at, renewed) {
        (Some(r), Some(at)) => Some((at.as_millisecond() - r.as_millisecond()) as f64 / 1000.0),
        _ => None,
    };
    let attack_secs = attack_started.elapsed().as_secs_f64();

    // The operator's own figures.
    let alive = operator_alive(&bad, pid);
    let restarts = u64::from(!alive);
    let peak_mib = peak_rss_kib(pid).map(|k| k as f64 / 1024.0);
    let panics = std::fs::read_to_string(&bad.operator().log)
        .unwrap_or_default()
        .matches("panicked at")
        .count();
    let (bad_writes, per_identity_max) = {
        let w = writes.lock().unwrap();
        let in_window =
            |v: &Vec<(Instant, String)>| v.iter().filter(|(at, _)| *at >= attack_started).count();
        let total: usize = w.values().map(in_window).sum();
        let max = w.values().map(in_window).max().unwrap_or(0);
        (total, max)
    };
    watch.abort();
    let minutes = (attack_secs / 60.0).max(1.0 / 60.0);
    let writes_per_minute = bad_writes as f64 / minutes;
    let per_identity_per_minute = writes_per_minute / bad_total.max(1) as f64;

    t.identities += (times.len() + 2 + bad_total) as u64;
    t.restarts += restarts;
    t.hostile_late += late.len() as u64;
    if !engaged {
        t.unconverged += 1;
        t.note("hostile: the quota-starved service was never asked: the attack did not start");
    }
    if renewal_delay.is_none_or(|d| d > LATE_LIMIT_SECS) {
        t.hostile_late += 1;
    }
    t.note(format!(
        "hostile: good tenant Ready idle {baseline:.2} s, under attack worst {worst:.2} s ({} of {} late by more than {LATE_LIMIT_SECS} s{}); \
         renewal delay {}; operator restarts {restarts}, panics logged {panics}; peak RSS {}; \
         bad identities {bad_total}: {bad_writes} object writes in {attack_secs:.0} s = {writes_per_minute:.1}/min \
         ({per_identity_per_minute:.2}/min per identity, busiest {per_identity_max}); 8760h window refused at admission: {year_refused}",
        late.len(),
        times.len(),
        if late.is_empty() {
            String::new()
        } else {
            format!(": {}", late.join(", "))
        },
        renewal_delay.map_or("not renewed".to_string(), |d| format!("{d:.2} s")),
        peak_mib.map_or("gone".to_string(), |m| format!("{m:.0} MiB")),
    ));

    // Teardown: faults cleared so deletions reach ACS; an operator that ended is started
    // again (for the leak scan's scrape and the deletions); the good tenant's identities go
    // while the shared operator still runs.
    for a in &attacks {
        bad.emu(a.name).clear_faults().await;
    }
    if !alive {
        bad.stop_operator();
        bad.start_operator().await;
    }
    good.leak_scan(&mut t).await;
    bad.leak_scan(&mut t).await;
    for o in good.list_identities().await {
        if let Some(n) = o["metadata"]["name"].as_str() {
            good.delete_identity(n).await;
        }
    }
    let _ = wait_for(60.0, || async {
        good.list_identities().await.is_empty().then_some(())
    })
    .await;
    good.stop_operator();
    good.teardown(&mut t).await;
    bad.teardown(&mut t).await;
    t.note(format!(
        "hostile: done in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    t
}
