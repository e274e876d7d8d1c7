//! `make bench-scale`: our operator alone with a large fleet (issue 19). Phases:
//! 1. create N/2, then N/2 more identities (quota off): RSS after each half gives the
//!    memory per identity at the margin;
//! 2. restart: SIGTERM, a fresh process: time until every identity is known (its Ready
//!    gauge counts N), API requests by verb, ACS requests, peak RSS;
//! 3. failover: a standby campaigns, the leader is SIGKILLed: the same figures for the
//!    standby, plus the time to take the Lease;
//! 4. wave: ACS's issue limit switched on (emulator and the service's client-side quota),
//!    an issue outage longer than `renewBefore` so that every identity is due at once,
//!    then the outage ends: time to renew all against N / quota, and the 429s;
//! 5. delete all.
//!
//! The operator runs with leader election throughout, so that the restart and the
//! failover are the same process start a Deployment's pod makes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::procs::{Emulator, Proc, Usage, stats_totals};
use crate::workload::{self, Kind, Seen, Tracker};
use crate::{Args, Mark, acs_service, close_phase, ensure_namespace, say};

const NS: &str = "bench-scale";
/// ACS's published issue limit: 1000 per 30 s.
const ISSUE_LIMIT: u32 = 1000;
const ISSUE_WINDOW_S: u64 = 30;

/// Runs every phase; returns the figures and the audit windows to count.
pub async fn run(
    client: &Client,
    args: &Args,
    windows: &mut Vec<crate::audit::Window>,
) -> Result<Value, String> {
    let n = args.n;
    // Long enough that no token renews before the wave phase forces it, and that the wave
    // (N / quota) ends before its first renewals come due again.
    let wave_s = n as u64 * ISSUE_WINDOW_S / u64::from(ISSUE_LIMIT);
    let period = Duration::from_secs(args.period.unwrap_or((wave_s * 3 / 2).max(600)));
    if period.as_secs() <= wave_s {
        say(format!(
            "scale: WARNING: a period of {} s is shorter than the wave ({wave_s} s): tokens renewed early in it come due again",
            period.as_secs()
        ));
    }
    let scale = period.as_secs_f64() / 2400.0;
    let emulator = Emulator::start(
        &args.emulator_bin,
        scale,
        true,
        &args.work_dir.join("emulator-scale.log"),
    )
    .await?;
    ensure_namespace(client, NS).await?;
    acs_service(client, NS, &emulator.connection_string, args, false).await?;
    let user = args.operator_user.as_str();
    let mut leader = spawn_operator(args, "a")?;
    let tracker = Tracker::start(client.clone(), NS, Kind::Identity).await;
    let names: Vec<String> = (0..n).map(|i| format!("s-{i:06}")).collect();
    let mut out = json!({"n": n, "period_s": period.as_secs(), "emulator_lifetime_scale": scale});

    // --- 1. create in two halves; RSS after each
    let m0 = Mark::now(&leader.proc, args);
    let t0 = tracker.start.elapsed();
    let half = n / 2;
    let mut rss_kib = Vec::new();
    // Time to Ready counts the two halves' own durations, not the settling between them.
    let mut busy_s = 0.0;
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let part_start = tracker.start.elapsed();
        let failed = workload::create_all(
            client.clone(),
            NS,
            Kind::Identity,
            part,
            period,
            args.create_concurrency,
            &tracker,
        )
        .await;
        let done = |m: &HashMap<String, Seen>| part.iter().all(|k| ready(m, k));
        let ok = tracker
            .wait_until(Duration::from_secs(300 + part.len() as u64 / 5), done)
            .await;
        if !ok || failed > 0 {
            return Err(format!(
                "scale: part {} of the creates: {failed} failed, all Ready: {ok}; logs in {}",
                i + 1,
                args.work_dir.display()
            ));
        }
        let snap = tracker.snapshot();
        let part_end = part
            .iter()
            .filter_map(|k| snap.get(k)?.ready)
            .max()
            .unwrap_or(part_start);
        busy_s += part_end.saturating_sub(part_start).as_secs_f64();
        // Let the reconciles' transient buffers go before reading the resident set.
        tokio::time::sleep(Duration::from_secs(10)).await;
        rss_kib.push(leader.proc.usage().rss_kib);
        say(format!(
            "scale: {} Ready; RSS {} MiB",
            if i == 0 { half } else { n },
            rss_kib[i] / 1024
        ));
    }
    let m1 = Mark::now(&leader.proc, args);
    let margin_kib = (rss_kib[1] as f64 - rss_kib[0] as f64) / (n - half) as f64;
    say(format!(
        "scale: memory at the margin {margin_kib:.2} KiB per identity ({} → {} MiB)",
        rss_kib[0] / 1024,
        rss_kib[1] / 1024
    ));
    let mut create = json!({
        "ready_s": busy_s,
        "per_s": n as f64 / busy_s,
        "rss_half_mib": rss_kib[0] as f64 / 1024.0,
        "rss_full_mib": rss_kib[1] as f64 / 1024.0,
        "rss_margin_kib_per_identity": margin_kib,
        "rss_kib_per_identity": rss_kib[1] as f64 / n as f64,
        "peak_rss_mib": leader.proc.usage().peak_rss_kib as f64 / 1024.0,
        "load_1m": [m0.load, m1.load],
    });
    close_phase(&mut create, &m0, &m1, Some(&emulator), n).await?;
    windows.push(m1.window_since(&m0, "scale.create", user));
    out["create"] = create;

    // --- 2. restart
    emulator.reset_stats().await?;
    let r0 = Mark::now(&leader.proc, args);
    let stopped = Instant::now();
    leader.proc.stop(Duration::from_secs(30)).await;
    let stop_s = stopped.elapsed().as_secs_f64();
    leader = spawn_operator(args, "b")?;
    let started = Instant::now();
    let known = leader.wait_known(n, Duration::from_secs(600)).await;
    let known_s = started.elapsed().as_secs_f64();
    // Whatever follows the last identity's first reconcile belongs to the restart too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r1 = Mark::now(&leader.proc, args);
    let usage = leader.proc.usage();
    say(format!(
        "scale: restart: every identity known {known_s:.1} s after the start{}; peak RSS {} MiB",
        if known { "" } else { " (TIMED OUT)" },
        usage.peak_rss_kib / 1024
    ));
    let mut restart = json!({"stop_s": stop_s});
    close_start(&mut restart, known_s, known, &usage, &r0, &r1);
    close_phase(&mut restart, &r0, &r1, Some(&emulator), n).await?;
    windows.push(r1.window_since(&r0, "scale.restart", user));
    out["restart"] = restart;

    // --- 3. failover: a standby takes over from a leader that crashed. The service gets
    // ACS's issue limit as its client-side quota first, so that the process that meets the
    // wave builds its client with it: a running process keeps a resource's budget at the
    // most generous rate any of its clients was built with (ClientCache::budget).
    if !args.skip.iter().any(|s| s == "wave") {
        set_issue_quota(client).await?;
    }
    let standby = spawn_operator(args, "c")?;
    standby
        .wait_metrics(Duration::from_secs(60))
        .await
        .map_err(|e| format!("scale: the standby: {e}"))?;
    emulator.reset_stats().await?;
    let f0 = Mark::now(&standby.proc, args);
    let killed = Instant::now();
    leader.proc.kill().await;
    let took = standby.wait_leader(Duration::from_secs(120)).await;
    let lease_s = killed.elapsed().as_secs_f64();
    let known = took && standby.wait_known(n, Duration::from_secs(600)).await;
    let known_s = killed.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let f1 = Mark::now(&standby.proc, args);
    let usage = standby.proc.usage();
    say(format!(
        "scale: failover: Lease taken {lease_s:.1} s after the crash, every identity known at {known_s:.1} s{}",
        if known { "" } else { " (TIMED OUT)" }
    ));
    let mut failover = json!({
        "lease_taken_s": lease_s,
        "known_after_lease_s": known_s - lease_s,
    });
    close_start(&mut failover, known_s, known, &usage, &f0, &f1);
    close_phase(&mut failover, &f0, &f1, Some(&emulator), n).await?;
    windows.push(f1.window_since(&f0, "scale.failover", user));
    out["failover"] = failover;
    let leader = standby;

    // --- 4. the renewal wave after an outage longer than renewBefore
    if !args.skip.iter().any(|s| s == "wave") {
        out["wave"] = wave(
            args, &emulator, &tracker, &names, &leader, period, t0, windows,
        )
        .await?;
    }

    // --- 5. delete all
    emulator.reset_stats().await?;
    let d0 = Mark::now(&leader.proc, args);
    let td = Instant::now();
    let failed = workload::delete_each(
        client.clone(),
        NS,
        Kind::Identity,
        &names,
        args.create_concurrency,
    )
    .await;
    if failed > 0 {
        say(format!("scale: {failed} deletes failed"));
    }
    let gone =
        |m: &HashMap<String, Seen>| names.iter().all(|k| m.get(k).is_none_or(|s| !s.present));
    let ok = tracker
        .wait_until(Duration::from_secs(300 + n as u64 / 5), gone)
        .await;
    let d1 = Mark::now(&leader.proc, args);
    let secs = td.elapsed().as_secs_f64();
    say(format!(
        "scale: deleted {n} identities in {secs:.1} s{}",
        if ok { "" } else { " (TIMED OUT)" }
    ));
    let mut del = json!({"seconds": secs, "timed_out": !ok, "load_1m": [d0.load, d1.load]});
    close_phase(&mut del, &d0, &d1, Some(&emulator), n).await?;
    windows.push(d1.window_since(&d0, "scale.delete", user));
    out["delete"] = del;
    out["peak_rss_mib"] = json!(leader.proc.usage().peak_rss_kib as f64 / 1024.0);
    leader.proc.stop(Duration::from_secs(30)).await;
    emulator.proc.stop(Duration::from_secs(5)).await;
    Ok(out)
}

/// The figures of a process start (restart or takeover): when every identity was known,
/// and the memory of a fresh process, which holds the fleet without the creation burst's
/// freed memory.
fn close_start(phase: &mut Value, known_s: f64, known: bool, usage: &Usage, m0: &Mark, m1: &Mark) {
    crate::merge(
        phase,
        json!({
            "all_known_s": known_s,
            "timed_out": !known,
            "peak_rss_mib": usage.peak_rss_kib as f64 / 1024.0,
            "rss_mib": usage.rss_kib as f64 / 1024.0,
            "load_1m": [m0.load, m1.load],
        }),
    );
}

fn ready(m: &HashMap<String, Seen>, k: &str) -> bool {
    m.get(k).is_some_and(|s| s.ready.is_some())
}

#[allow(clippy::too_many_arguments)]
async fn wave(
    args: &Args,
    emulator: &Emulator,
    tracker: &Tracker,
    names: &[String],
    leader: &Operator,
    period: Duration,
    t0: Duration,
    windows: &mut Vec<crate::audit::Window>,
) -> Result<Value, String> {
    let n = names.len();
    // ACS's issue limit at the emulator too: it answers 429 beyond it (the service's
    // client-side budget was set before the standby started).
    emulator
        .admin_post(
            "/admin/quotas",
            &json!([format!("issue={ISSUE_LIMIT}/{ISSUE_WINDOW_S}")]),
        )
        .await?;
    emulator
        .admin_post(
            "/admin/faults",
            &json!({"operation": "issue", "status": 503}),
        )
        .await?;
    // Every token is due (renewal at two thirds of its life) once `period` has passed
    // since it was issued; the outage lasts until the last one is due and at least
    // renewBefore (a third of the life: period / 2) past the first.
    let snap = tracker.snapshot();
    let readies: Vec<Duration> = names.iter().filter_map(|k| snap.get(k)?.ready).collect();
    let first = readies.iter().min().copied().unwrap_or(t0);
    let last = readies.iter().max().copied().unwrap_or(t0);
    let end = (last + period).max(first + period + period / 2) + Duration::from_secs(15);
    let outage_from = tracker.start.elapsed();
    let wait = end.saturating_sub(outage_from);
    say(format!(
        "scale: ACS issue outage for {:.0} s (every token due, the first {:.0} s past renewBefore)",
        wait.as_secs_f64(),
        (end.saturating_sub(first + period + period / 2)).as_secs_f64()
    ));
    tokio::time::sleep(wait).await;
    let during = emulator.stats().await?;
    emulator.reset_stats().await?;
    let w0 = Mark::now(&leader.proc, args);
    emulator.admin_delete("/admin/faults").await?;
    let back = tracker.start.elapsed();
    let bound_s = n as f64 * ISSUE_WINDOW_S as f64 / ISSUE_LIMIT as f64;
    let all_renewed = |m: &HashMap<String, Seen>| {
        names
            .iter()
            .all(|k| m.get(k).is_some_and(|s| s.renewed.is_some()))
    };
    let ok = tracker
        .wait_until(Duration::from_secs_f64(bound_s * 2.0 + 300.0), all_renewed)
        .await;
    let w1 = Mark::now(&leader.proc, args);
    let snap = tracker.snapshot();
    let mut renewed: Vec<f64> = names
        .iter()
        .filter_map(|k| snap.get(k)?.renewed)
        .map(|r| r.saturating_sub(back).as_secs_f64())
        .collect();
    renewed.sort_by(f64::total_cmp);
    let last_s = renewed.last().copied().unwrap_or(f64::NAN);
    let stats = emulator.stats().await?;
    let (_, throttled) = stats_totals(&stats);
    say(format!(
        "scale: wave: {}/{n} renewed, the last {last_s:.1} s after the outage (N / quota = {bound_s:.0} s, {:.2}x), {throttled} answered 429{}",
        renewed.len(),
        last_s / bound_s,
        if ok { "" } else { " (TIMED OUT)" }
    ));
    let (outage_total, _) = stats_totals(&during);
    let mut out = json!({
        "outage_s": wait.as_secs_f64(),
        "acs_requests_during_outage": outage_total,
        "renewed_count": renewed.len(),
        "timed_out": !ok,
        "last_s": last_s,
        "bound_s": bound_s,
        "last_over_bound": last_s / bound_s,
        "p50_s": crate::percentile(&renewed, 0.5),
        "load_1m": [w0.load, w1.load],
        "renewed_times_s": renewed,
    });
    close_phase(&mut out, &w0, &w1, Some(emulator), n).await?;
    windows.push(w1.window_since(&w0, "scale.wave", args.operator_user.as_str()));
    // Deletes after the wave are not what is measured: lift the issue limit again.
    emulator
        .admin_post("/admin/quotas", &json!(["issue=0/1"]))
        .await?;
    Ok(out)
}

/// The service's client-side quota: ACS's issue limit, every other operation lifted.
async fn set_issue_quota(client: &Client) -> Result<(), String> {
    let max = 1_000_000;
    let services: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("acs-operator.dev", "v1alpha1", "CommunicationService"),
            "communicationservices",
        ),
    );
    services
        .patch(
            workload::SERVICE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"quota": {
                "window": format!("{ISSUE_WINDOW_S}s"), "issues": ISSUE_LIMIT,
                "creates": max, "deletes": max, "revokes": max,
            }}})),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("scale: setting the service's quota: {e}"))
}

/// One operator process and its metrics endpoint.
struct Operator {
    proc: Proc,
    metrics: String,
    http: reqwest::Client,
}

fn spawn_operator(args: &Args, tag: &str) -> Result<Operator, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port for the operator's metrics: {e}"))?
        .port();
    let op_args: Vec<String> = vec![
        "run".into(),
        "--kubeconfig".into(),
        args.operator_kubeconfig.display().to_string(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{port}"),
        "--allow-insecure-endpoints".into(),
        "--leader-elect".into(),
        "--leader-election-namespace".into(),
        NS.into(),
    ];
    let proc = Proc::spawn(
        "acs-identity-operator",
        &args.operator_bin,
        &op_args,
        &[],
        &args.work_dir.join(format!("operator-scale-{tag}.log")),
    )?;
    Ok(Operator {
        proc,
        metrics: format!("http://127.0.0.1:{port}/metrics"),
        http: reqwest::Client::new(),
    })
}

impl Operator {
    /// One sample's value from /metrics (`series` is the name with its labels).
    async fn sample(&self, series: &str) -> Option<f64> {
        let text = self
            .http
            .get(&self.metrics)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        // `series` names the labels, or has none and matches any labelled sample.
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(series)?;
            let labelled = !series.contains('{') && rest.starts_with('{');
            if !(rest.starts_with(' ') || labelled) {
                return None;
            }
            rest.split_whitespace().last()?.parse().ok()
        })
    }

    async fn poll(&self, series: &str, at_least: f64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.sample(series).await.is_some_and(|v| v >= at_least) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Until the Ready gauge counts `n` identities.
    async fn wait_known(&self, n: usize, timeout: Duration) -> bool {
        self.poll("acs_operator_identities{ready=\"true\"}", n as f64, timeout)
            .await
    }

    async fn wait_leader(&self, timeout: Duration) -> bool {
        self.poll("acs_operator_leader", 1.0, timeout).await
    }

    async fn wait_metrics(&self, timeout: Duration) -> Result<(), String> {
        if self.poll("acs_operator_build_info", 1.0, timeout).await {
            Ok(())
        } else {
            Err(format!(
                "no /metrics at {} within {timeout:?}",
                self.metrics
            ))
        }
    }
}
