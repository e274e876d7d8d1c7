//! Scenario 4, a simulated day: identities created in one burst with lifetimes scaled
//! down (a 24 h token lives `token_secs`), every Secret's remaining lifetime sampled
//! throughout (the minimum must stay positive), and the spread of renewals over time
//! drawn as a PNG (no herd: renewals of identities created together spread out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::ListParams;
use serde_json::json;

use crate::tally::Tally;
use crate::world::{scaled_world, secs};

pub struct Params {
    pub identities: usize,
    /// How long a 24 h token lives at the emulator.
    pub token_secs: f64,
    /// How long the day is sampled after the burst.
    pub run_secs: f64,
    pub plot: Option<PathBuf>,
}

impl Params {
    pub fn from_env(identities: usize) -> Params {
        let num = |k: &str, d: f64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let token_secs = num("RELIABILITY_DAY_TOKEN_SECS", 120.0);
        Params {
            identities,
            token_secs,
            run_secs: num("RELIABILITY_DAY_SECS", token_secs * 3.5),
            plot: std::env::var("RELIABILITY_PLOT").ok().map(PathBuf::from),
        }
    }
}

pub async fn run(p: Params) -> Tally {
    let started = Instant::now();
    let mut t = Tally::default();
    let (mut w, scale) = scaled_world("day", p.token_secs).await;
    let names: Vec<String> = (0..p.identities).map(|i| format!("d-{i}")).collect();
    t.identities += names.len() as u64;
    let t0 = secs(Timestamp::now());
    let creator = {
        let names = names.clone();
        let client = w.client.clone();
        let ns = w.ns.clone();
        tokio::spawn(async move {
            let api: kube::Api<kube::core::DynamicObject> =
                kube::Api::namespaced_with(client, &ns, &crate::world::identities_resource());
            let futs = names.into_iter().map(|name| {
                let api = api.clone();
                async move {
                    let obj: kube::core::DynamicObject = serde_json::from_value(json!({
                        "apiVersion": crate::world::GROUP_VERSION,
                        "kind": "CommunicationIdentity",
                        "metadata": {"name": name},
                        "spec": {"serviceRef": {"kind": "CommunicationService", "name": "acs"}, "scopes": ["chat"]},
                    }))
                    .expect("identity");
                    api.create(&Default::default(), &obj).await.expect("create identity");
                }
            });
            futures::StreamExt::collect::<Vec<()>>(futures::StreamExt::buffer_unordered(
                futures::stream::iter(futs),
                16,
            ))
            .await;
        })
    };

    let mut min_series: Vec<(f64, f64)> = vec![];
    let mut expired_seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut all_ready_after: Option<f64> = None;
    let mut samples = 0u64;
    let mut secrets_sampled = 0u64;
    let mut min_overall = f64::INFINITY;
    while secs(Timestamp::now()) - t0 < p.run_secs {
        let tick = Instant::now();
        let now = secs(Timestamp::now());
        let list = match w.secrets().list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(_) => continue,
        };
        let mut min_left = f64::INFINITY;
        let mut with_token = 0usize;
        for s in &list {
            if !s
                .owner_references()
                .iter()
                .any(|o| o.kind == "CommunicationIdentity")
            {
                continue;
            }
            let data = s.data.clone().unwrap_or_default();
            let Some(exp) = data
                .get("expiresOn")
                .and_then(|v| std::str::from_utf8(&v.0).ok()?.parse::<Timestamp>().ok())
            else {
                continue;
            };
            with_token += 1;
            let left = secs(exp) - now;
            min_left = min_left.min(left);
            if left <= 0.0 {
                let token = data
                    .get("token")
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                    .unwrap_or_default();
                expired_seen.insert((s.name_any(), token));
            }
        }
        samples += 1;
        secrets_sampled += with_token as u64;
        if min_left.is_finite() {
            min_series.push((now - t0, min_left));
            min_overall = min_overall.min(min_left);
        }
        if all_ready_after.is_none() && with_token == names.len() {
            all_ready_after = Some(now - t0);
        }
        let spent = tick.elapsed();
        if spent < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_secs(1) - spent).await;
        }
    }
    let _ = creator.await;

    // Renewals over time, from the Secret watch.
    let bucket = (p.token_secs / 60.0).max(1.0);
    let renewals: Vec<f64> = w
        .ledger
        .lock()
        .unwrap()
        .renewals
        .iter()
        .map(|(at, _)| secs(*at) - t0)
        .collect();
    let n_buckets = (p.run_secs / bucket).ceil() as usize;
    let mut hist = vec![0u64; n_buckets.max(1)];
    for r in &renewals {
        let i = ((r / bucket) as usize).min(hist.len() - 1);
        hist[i] += 1;
    }
    let renewing: Vec<u64> = hist.iter().copied().filter(|&n| n > 0).collect();
    let peak = hist.iter().copied().max().unwrap_or(0);
    let mean = if renewing.is_empty() {
        0.0
    } else {
        renewing.iter().sum::<u64>() as f64 / renewing.len() as f64
    };
    let per_identity: BTreeMap<String, usize> =
        w.ledger
            .lock()
            .unwrap()
            .renewals
            .iter()
            .fold(BTreeMap::new(), |mut m, (_, n)| {
                *m.entry(n.clone()).or_default() += 1;
                m
            });
    let plot = p.plot.clone().unwrap_or_else(|| w.dir.join("renewals.png"));
    let plotted = crate::png::plot_renewals(&plot, &hist, bucket, &min_series);
    let stats = w.emu("acs").stats().await;
    t.expired_served += expired_seen.len() as u64;
    let pending = w.wait_converged(120.0).await;
    t.unconverged += pending.len() as u64;
    let audit = w.audit(&mut t).await;
    w.leak_scan(&mut t).await;
    w.teardown(&mut t).await;
    t.note(format!(
        "day: {} identities created in one burst, 24 h tokens living {:.0} s (scale {scale:.6}), sampled {samples} times over {:.0} s \
         ({secrets_sampled} Secret samples); all had a token after {}; minimum remaining lifetime {:.1} s ({:.1} h scaled back); \
         expired tokens seen in Secrets: {}; {} renewals ({} identities renewed, at most {} times each), per {bucket:.0} s bucket peak {peak} vs mean {mean:.1}; \
         ACS requests {}; plot {} ({}); not ready at the end {:?}; took {:?}",
        names.len(),
        p.token_secs,
        p.run_secs,
        all_ready_after.map_or("never".into(), |s| format!("{s:.1} s")),
        min_overall,
        min_overall / scale / 3600.0,
        expired_seen.len(),
        renewals.len(),
        per_identity.len(),
        per_identity.values().max().unwrap_or(&0),
        stats["requests"],
        plot.display(),
        plotted.map_or_else(|e| format!("not written: {e}"), |()| "written".into()),
        audit.not_ready,
        started.elapsed()
    ));
    if min_overall <= 0.0 {
        t.unconverged += 1;
    }
    t
}
