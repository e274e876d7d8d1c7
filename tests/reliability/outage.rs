//! Scenario 5, an ACS outage longer than `renewBefore`: while the old token is still
//! valid, `RenewalFailing`, a Warning event and the renewal-failure metric say so; the
//! renewal happens within seconds of ACS's return; and the chart's PrometheusRule alerts,
//! evaluated over the scraped metrics with the chart's thresholds scaled like the token
//! lifetime, would have fired before the token expired.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

use crate::metrics;
use crate::tally::Tally;
use crate::world::{condition, scaled_world, secs, ts, wait_for};

const FAILURES: &str = "acs_operator_renewal_failures_total";
/// How long after a token's expiry `Ready` may still say True (one reconcile's lag).
const EXPIRY_GRACE_SECS: f64 = 3.0;

pub struct Params {
    /// Seconds a 24 h token lives at the emulator (its lifetime scale follows).
    pub token_secs: f64,
    pub identities: usize,
}

pub async fn run(p: Params) -> Tally {
    let started = Instant::now();
    let mut t = Tally::default();
    let (mut w, scale) = scaled_world("outage", p.token_secs).await;
    let names: Vec<String> = (0..p.identities).map(|i| format!("o-{i}")).collect();
    t.identities += names.len() as u64;
    w.create_identities(&names, "acs", json!({})).await;
    let pending = w.wait_converged(60.0).await;
    t.unconverged += pending.len() as u64;
    let first = &names[0];
    let obj = w.identities().get(first).await.expect("identity");
    let obj = serde_json::to_value(obj).expect("JSON");
    let expires = ts(&obj["status"]["tokenExpiresOn"]).expect("tokenExpiresOn");
    let renewal = ts(&obj["status"]["renewalTime"]);
    let token_before = w.ledger.lock().unwrap().tokens.get(first).cloned();
    // Every identity's token and expiry before the outage, to see each one renewed.
    let before_all = w.ledger.lock().unwrap().tokens.clone();
    let expiry_all = w.ledger.lock().unwrap().expires.clone();
    let mut renewed_all: std::collections::BTreeMap<String, f64> = Default::default();
    let mut ready_with_expired: std::collections::BTreeSet<String> = Default::default();

    // The outage starts a little before the renewal is due and ends after the expiry:
    // longer than the time between renewal and expiry.
    let lead = p.token_secs * 0.45;
    let outage_from = secs(expires) - lead;
    let outage_to = secs(expires) + p.token_secs * 0.1;
    let now = || secs(Timestamp::now());
    wait_for(p.token_secs, || async {
        (now() >= outage_from).then_some(())
    })
    .await;
    w.emu("acs").add_faults(json!({"drop": true})).await;
    let outage_started = now();

    let mut failures: Vec<(f64, f64)> = vec![];
    let mut renewal_failing_at: Option<f64> = None;
    let mut ready_false_while_valid: Option<f64> = None;
    let mut warning_at: Option<f64> = None;
    let mut metric_at: Option<f64> = None;
    let ns = w.ns.clone();
    let labels = [("namespace", ns.as_str()), ("name", first.as_str())];
    let events: Api<Event> = Api::namespaced(w.client.clone(), &ns);
    let mut returned_at: Option<f64> = None;
    let mut renewed_at: Option<f64> = None;
    while now() < outage_to + 60.0 {
        let tick = now();
        let text = w.scrape().await;
        let m = metrics::parse(&text);
        let f = metrics::sum(&m, FAILURES, &labels);
        failures.push((tick, f));
        if f > 0.0 && metric_at.is_none() {
            metric_at = Some(tick);
        }
        if let Ok(Some(o)) = w.identities().get_opt(first).await {
            let o = serde_json::to_value(o).expect("JSON");
            if renewal_failing_at.is_none()
                && condition(&o, "RenewalFailing").is_some_and(|c| c["status"] == "True")
            {
                renewal_failing_at = Some(tick);
            }
            if tick < secs(expires)
                && ready_false_while_valid.is_none()
                && condition(&o, "Ready").is_some_and(|c| c["status"] == "False")
            {
                ready_false_while_valid = Some(tick);
            }
        }
        if warning_at.is_none()
            && let Ok(list) = events.list(&ListParams::default()).await
            && list.items.iter().any(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(first)
                    && e.event_time
                        .as_ref()
                        .is_some_and(|et| secs(et.0) >= outage_started - 1.0)
            })
        {
            warning_at = Some(tick);
        }
        if returned_at.is_none() && tick >= outage_to {
            w.emu("acs").clear_faults().await;
            returned_at = Some(now());
        }
        // Ready=True over a Secret whose token expired (3 s ago or more: a reconcile
        // must have run) is a status that lies.
        for o in w.list_identities().await {
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let held = w.ledger.lock().unwrap().expires.get(&name).copied();
            if condition(&o, "Ready").is_some_and(|c| c["status"] == "True")
                && held.is_some_and(|x| secs(x) + EXPIRY_GRACE_SECS < tick)
            {
                ready_with_expired.insert(name);
            }
        }
        if returned_at.is_some() {
            let ledger = w.ledger.lock().unwrap().tokens.clone();
            for (name, token) in &before_all {
                if ledger.get(name).is_some_and(|t| t != token) {
                    renewed_all.entry(name.clone()).or_insert_with(now);
                }
            }
            let current = ledger.get(first).cloned();
            if renewed_at.is_none() && current.is_some() && current != token_before {
                renewed_at = Some(now());
            }
            if renewed_all.len() == before_all.len() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The chart's rules, with its thresholds scaled like the lifetime.
    let template = std::fs::read_to_string(
        crate::support::repo_root()
            .join("charts/acs-identity-operator/templates/prometheusrule.yaml"),
    )
    .expect("the chart's PrometheusRule template");
    let values = std::fs::read_to_string(
        crate::support::repo_root().join("charts/acs-identity-operator/values.yaml"),
    )
    .expect("values.yaml");
    let value_of = |key: &str| -> Option<String> {
        values.lines().find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
    };
    let for_secs = value_of("for").map_or(600.0, |v| {
        acs_identity_operator::api::duration::parse_duration(&v)
            .map(|d| d.as_secs_f64())
            .unwrap_or(600.0)
    });
    // The expiry alerts (relative to each identity's renewal time) are checked by Prometheus'
    // own rule tests over the rendered chart (tests/observability.rs, `promtool test rules`).
    let failing_expr =
        metrics::chart_alert_expr(&template, "AcsTokenRenewalFailing").unwrap_or_default();
    // The operator's retry backoff runs in real time, not scaled: the rule's 15 m window
    // is kept as written; only `for` is scaled.
    let failing_fires = metrics::increase_fires_at(&failures, 900.0, for_secs * scale);

    let e = secs(expires);
    let rel = |x: Option<f64>| x.map_or("never".to_string(), |v| format!("{:+.1} s", v - e));
    let valid_while_failing = renewal_failing_at.is_some_and(|x| x < e);
    let renewed_after_return = match (returned_at, renewed_at) {
        (Some(r), Some(n)) => Some(n - r),
        _ => None,
    };
    if !valid_while_failing || warning_at.is_none_or(|x| x >= e) || metric_at.is_none_or(|x| x >= e)
    {
        t.unconverged += 1;
    }
    if renewed_after_return.is_none_or(|d| d > 10.0) {
        t.unconverged += 1;
    }
    // With ACS back, a Secret still holding an expired token 10 s later is served expired.
    let served_expired: Vec<String> = before_all
        .keys()
        .filter(|name| {
            let expired_at_return = expiry_all
                .get(*name)
                .zip(returned_at)
                .is_some_and(|(x, r)| secs(*x) <= r);
            let renewed = returned_at.zip(renewed_all.get(*name)).map(|(r, n)| n - r);
            expired_at_return && renewed.is_none_or(|d| d > 10.0)
        })
        .cloned()
        .collect();
    t.expired_served += served_expired.len() as u64;
    t.unconverged += ready_with_expired.len() as u64;
    t.note(format!(
        "outage: identities renewed after ACS returned, seconds: {:?}; still serving an expired token 10 s after ACS returned: {served_expired:?}; \
         Ready=True while the Secret's token had expired: {ready_with_expired:?}",
        renewed_all
            .values()
            .map(|n| returned_at.map_or(0.0, |r| ((n - r) * 10.0).round() / 10.0))
            .collect::<Vec<_>>()
    ));
    // Every identity, not only the one watched closely, gets its new token.
    let pending = w.wait_converged(120.0).await;
    let all_back = returned_at.map(|r| now() - r);
    t.unconverged += pending.len() as u64;
    let audit = w.audit(&mut t).await;
    w.leak_scan(&mut t).await;
    w.teardown(&mut t).await;
    t.note(format!(
        "outage: all {} identities Ready with a valid token {} after ACS returned; not converged {pending:?}",
        names.len(),
        all_back.map_or("?".into(), |d| format!("{d:.1} s"))
    ));
    t.note(format!(
        "outage: {} identities, 24 h tokens living {:.0} s (scale {scale:.6}), renewalTime {} s before expiry; ACS dropped every \
         connection from {} to {} (expiry = 0 s); RenewalFailing=True at {}, Warning event at {}, {FAILURES} > 0 at {}, \
         Ready=False while the token was valid at {}; ACS back at {}, new token {} after its return; \
         alert AcsTokenRenewalFailing (`{failing_expr}`, for {:.2} s) fires at {}; \
         not ready at the end {:?}; took {:?}",
        names.len(),
        p.token_secs,
        renewal.map_or("?".into(), |r| format!("{:.1}", e - secs(r))),
        rel(Some(outage_started)),
        rel(returned_at),
        rel(renewal_failing_at),
        rel(warning_at),
        rel(metric_at),
        rel(ready_false_while_valid),
        rel(returned_at),
        renewed_after_return.map_or("never".into(), |d| format!("{d:.1} s")),
        for_secs * scale,
        rel(failing_fires),
        audit.not_ready,
        started.elapsed()
    ));
    t
}
