//! `operator-bench`: our operator and external-secrets side by side on one control plane
//! with the ACS emulator. `make bench` (hack/bench/run.sh) starts the control plane, builds
//! the peer and calls this with the binaries to measure; the operator binary is an input,
//! so the same harness measures any commit.
//!
//! Phases, one operator at a time so they never share the two cores:
//! 1. raw: N Secrets created directly with `--raw-connections` requests in flight;
//! 2. peer: N ExternalSecrets from one Password generator: create → all Ready, the
//!    refresh wave, delete-all;
//! 3. ours: N CommunicationIdentities (emulator quota off): the same three phases;
//! 4. quota: N more identities against an emulator enforcing ACS's published limits.
//!
//! Writes one JSON document (`--out`, its path printed on stdout) that
//! `hack/bench/report.py` turns into bench/results.md, the PNG and the `bench:` line.

mod audit;
mod procs;
mod scale;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

use procs::{Emulator, Proc, Usage, stats_totals};
use workload::{Kind, Tracker};

#[derive(Debug, Parser)]
#[command(name = "operator-bench", version)]
struct Args {
    /// Objects per workload.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Admin kubeconfig the harness itself uses.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Our operator's binary (any commit's `acs-identity-operator`).
    #[arg(long)]
    operator_bin: PathBuf,
    /// Kubeconfig our operator runs with (its own client identity).
    #[arg(long)]
    operator_kubeconfig: PathBuf,
    /// The user name of that identity in the audit log.
    #[arg(long, default_value = "bench-acs-identity-operator")]
    operator_user: String,
    /// The peer's binary (external-secrets); without it the peer phase is skipped.
    #[arg(long)]
    eso_bin: Option<PathBuf>,
    #[arg(long)]
    eso_kubeconfig: Option<PathBuf>,
    #[arg(long, default_value = "bench-external-secrets")]
    eso_user: String,
    /// external-secrets `--concurrent`.
    #[arg(long, default_value_t = 16)]
    eso_concurrent: u32,
    /// external-secrets `--client-qps`.
    #[arg(long, default_value_t = 1000)]
    eso_client_qps: u32,
    /// external-secrets `--client-burst`.
    #[arg(long, default_value_t = 2000)]
    eso_client_burst: u32,
    /// The `acs-emulator` binary.
    #[arg(long)]
    emulator_bin: PathBuf,
    /// kube-apiserver's audit log; without it, API requests are not counted.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Renewal / refresh period in seconds (default: max(60, N/20), so that the wave
    /// starts after the creation burst).
    #[arg(long)]
    period: Option<u64>,
    /// Phases to skip: raw, peer, ours, quota, wave, delete.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Create requests in flight while the harness creates the workload.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// Requests in flight in the raw Secret-create loop.
    #[arg(long, default_value_t = 64)]
    raw_connections: usize,
    /// `spec.apiVersion` of our CommunicationService (default: the operator's default).
    #[arg(long)]
    acs_api_version: Option<String>,
    /// Length of the peer's generated password (about an ACS token's size).
    #[arg(long, default_value_t = 800)]
    password_length: u32,
    /// Logs and state of the processes the harness starts.
    #[arg(long)]
    work_dir: PathBuf,
    /// Where to write the JSON results.
    #[arg(long)]
    out: PathBuf,
    /// PIDs of kube-apiserver and etcd, so each phase also reports what serving the
    /// operator cost the control plane (both share the cores with the operator).
    #[arg(long)]
    apiserver_pid: Option<u32>,
    #[arg(long)]
    etcd_pid: Option<u32>,
    /// Ours alone with a large fleet instead of the side-by-side phases: memory per
    /// identity, restart, failover and the renewal wave (`make bench-scale`).
    #[arg(long)]
    scale: bool,
    /// Write a CPU profile of kube-apiserver (its `/debug/pprof/profile`) taken during
    /// each operator's creation phase to this directory, as `<ours|eso>-create.pprof`:
    /// what the API server spends its time on while serving each operator.
    #[arg(long)]
    apiserver_profile: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("operator-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(out) => {
            println!("{}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("operator-bench: ERROR: {e}");
            ExitCode::FAILURE
        }
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("operator-bench: {}", msg.as_ref());
}

async fn client_for(path: &PathBuf) -> Result<Client, String> {
    let kc =
        Kubeconfig::read_from(path).map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
    Client::try_from(config).map_err(|e| format!("kube client: {e}"))
}

async fn run(args: Args) -> Result<PathBuf, String> {
    std::fs::create_dir_all(&args.work_dir)
        .map_err(|e| format!("creating {}: {e}", args.work_dir.display()))?;
    let client = client_for(&args.kubeconfig).await?;
    let n = args.n;
    let period = Duration::from_secs(args.period.unwrap_or((n as u64 / 20).max(60)));
    let skip = |p: &str| args.skip.iter().any(|s| s == p);
    // A 1h token lives 3600*scale s and renews at two thirds of that: the period.
    let lifetime_scale = period.as_secs_f64() / 2400.0;
    let mut results = json!({
        "n": n,
        "period_s": period.as_secs(),
        "emulator_lifetime_scale": lifetime_scale,
        "create_concurrency": args.create_concurrency,
        "eso_flags": {
            "concurrent": args.eso_concurrent,
            "client_qps": args.eso_client_qps,
            "client_burst": args.eso_client_burst,
        },
        "acs_api_version": args.acs_api_version,
        "api_counts_from": if args.audit_log.is_some() { "audit log" } else { "none" },
    });
    let mut windows = Vec::new();

    if args.scale {
        results["scale"] = scale::run(&client, &args, &mut windows).await?;
    }

    if !skip("raw") && !args.scale {
        results["raw"] = raw_secret_loop(&client, n, args.raw_connections).await?;
    }

    let emulator = Emulator::start(
        &args.emulator_bin,
        lifetime_scale,
        true,
        &args.work_dir.join("emulator.log"),
    )
    .await?;

    if let (Some(bin), false) = (&args.eso_bin, skip("peer") || args.scale) {
        let kc = args
            .eso_kubeconfig
            .as_ref()
            .ok_or("--eso-bin needs --eso-kubeconfig")?;
        let ns = "bench-eso";
        ensure_namespace(&client, ns).await?;
        create_dynamic(
            &client,
            ns,
            json!({
                "apiVersion": "generators.external-secrets.io/v1alpha1",
                "kind": "Password",
                "metadata": {"name": workload::GENERATOR},
                "spec": {"length": args.password_length, "allowRepeat": true, "noUpper": false},
            }),
            "passwords",
        )
        .await?;
        let eso_args: Vec<String> = [
            "--metrics-addr=127.0.0.1:0".to_string(),
            "--enable-leader-election=false".into(),
            format!("--concurrent={}", args.eso_concurrent),
            format!("--client-qps={}", args.eso_client_qps),
            format!("--client-burst={}", args.eso_client_burst),
        ]
        .into();
        let proc = Proc::spawn(
            "external-secrets",
            bin,
            &eso_args,
            &[("KUBECONFIG", kc.display().to_string())],
            &args.work_dir.join("external-secrets.log"),
        )?;
        let run = Run {
            kind: Kind::ExternalSecret,
            ns,
            n,
            period,
            user: &args.eso_user,
            label: "eso",
        };
        let (r, proc) = operator_phases(&client, proc, None, &run, &args, &mut windows).await?;
        proc.stop(Duration::from_secs(30)).await;
        results["eso"] = r;
        results["eso"]["args"] = json!(eso_args);
    }

    if !skip("ours") && !args.scale {
        let ns = "bench-ours";
        ensure_namespace(&client, ns).await?;
        acs_service(&client, ns, &emulator.connection_string, &args, false).await?;
        let op_args: Vec<String> = vec![
            "run".into(),
            "--kubeconfig".into(),
            args.operator_kubeconfig.display().to_string(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            // The emulator speaks plain http on loopback.
            "--allow-insecure-endpoints".into(),
        ];
        let proc = Proc::spawn(
            "acs-identity-operator",
            &args.operator_bin,
            &op_args,
            &[],
            &args.work_dir.join("operator.log"),
        )?;
        let run = Run {
            kind: Kind::Identity,
            ns,
            n,
            period,
            user: &args.operator_user,
            label: "ours",
        };
        let (r, proc) =
            operator_phases(&client, proc, Some(&emulator), &run, &args, &mut windows).await?;
        results["ours"] = r;
        results["ours"]["args"] = json!(op_args);
        if !skip("quota") {
            results["quota"] = quota_bound(&client, &proc, &args, n, lifetime_scale).await?;
        }
        proc.stop(Duration::from_secs(30)).await;
    }
    emulator.proc.stop(Duration::from_secs(5)).await;

    if let Some(log) = &args.audit_log {
        // The audit backend batches for up to a second (hack/bench/run.sh's flags).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let counts = audit::count(log, &windows)?;
        for w in &windows {
            let c = counts.get(&w.label).cloned().unwrap_or_default();
            let (writes, gets, lists) = audit::totals(&c);
            let (op, phase) = w.label.split_once('.').expect("labels are op.phase");
            let slot = &mut results[op][phase];
            slot["api_requests"] = json!(c);
            slot["api_writes"] = json!(writes);
            slot["api_gets"] = json!(gets);
            slot["api_writes_per_object"] = json!(writes as f64 / n as f64);
            // Leader election renews its Lease every few seconds whatever the fleet does.
            let lease_writes: u64 = c
                .iter()
                .filter(|(k, _)| {
                    k.ends_with(" leases") && audit::is_write(k.split(' ').next().unwrap_or(""))
                })
                .map(|(_, v)| v)
                .sum();
            slot["api_writes_excluding_leases"] = json!(writes - lease_writes);
            slot["api_gets_per_object"] = json!(gets as f64 / n as f64);
            slot["api_lists_per_object"] = json!(lists as f64 / n as f64);
        }
    }

    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&results).expect("results serialize"),
    )
    .map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    Ok(args.out.clone())
}

async fn ensure_namespace(client: &Client, ns: &str) -> Result<(), String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let obj: Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace object");
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(format!("creating namespace {ns}: {e}")),
    }
}

async fn create_dynamic(client: &Client, ns: &str, obj: Value, plural: &str) -> Result<(), String> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk(group, version, &kind),
        plural,
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj: DynamicObject =
        serde_json::from_value(obj).map_err(|e| format!("{kind} object: {e}"))?;
    api.create(&PostParams::default(), &obj)
        .await
        .map(|_| ())
        .map_err(|e| format!("creating {kind} in {ns}: {e}"))
}

/// The credential Secret and the CommunicationService `acs` in `ns`. Quota off lifts the
/// operator's client-side limits too, so that only the operator's own speed counts.
async fn acs_service(
    client: &Client,
    ns: &str,
    connection_string: &str,
    args: &Args,
    quota_on: bool,
) -> Result<(), String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "acs-connection"},
        "stringData": {"connectionString": connection_string},
    }))
    .expect("secret object");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .map_err(|e| format!("creating the credential Secret in {ns}: {e}"))?;
    let mut spec = json!({
        "connectionStringSecretRef": {"name": "acs-connection", "key": "connectionString"},
    });
    if let Some(v) = &args.acs_api_version {
        spec["apiVersion"] = json!(v);
    }
    if !quota_on {
        let max = 1_000_000;
        spec["quota"] =
            json!({"window": "1s", "creates": max, "issues": max, "deletes": max, "revokes": max});
    }
    create_dynamic(
        client,
        ns,
        json!({
            "apiVersion": "acs-operator.dev/v1alpha1",
            "kind": "CommunicationService",
            "metadata": {"name": workload::SERVICE},
            "spec": spec,
        }),
        "communicationservices",
    )
    .await
}

/// Tight loop of Secret creates straight to the API server: the ceiling any operator's
/// writes live under on this machine.
async fn raw_secret_loop(client: &Client, n: usize, connections: usize) -> Result<Value, String> {
    let ns = "bench-raw";
    ensure_namespace(client, ns).await?;
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let payload = "x".repeat(800);
    say(format!(
        "raw: creating {n} Secrets with {connections} in flight"
    ));
    let t0 = Instant::now();
    let failed = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let payload = payload.clone();
            async move {
                let s: Secret = serde_json::from_value(json!({
                    "metadata": {"name": format!("raw-{i:05}")},
                    "stringData": {"token": payload},
                }))
                .expect("secret object");
                api.create(&PostParams::default(), &s).await.is_err()
            }
        })
        .buffer_unordered(connections)
        .filter(|failed| futures::future::ready(*failed))
        .count()
        .await;
    let secs = t0.elapsed().as_secs_f64();
    say(format!(
        "raw: {n} Secrets in {secs:.1} s ({:.0}/s)",
        n as f64 / secs
    ));
    let _ = api
        .delete_collection(&DeleteParams::background(), &ListParams::default())
        .await;
    Ok(json!({
        "n": n, "connections": connections, "seconds": secs,
        "per_s": n as f64 / secs, "failed": failed,
    }))
}

/// One operator's workload: which objects, where, how many, and who it is in the audit log.
struct Run<'a> {
    kind: Kind,
    ns: &'a str,
    n: usize,
    /// Renewal / refresh period.
    period: Duration,
    user: &'a str,
    /// `ours` or `eso`: the key in the results.
    label: &'a str,
}

/// Phase boundaries: wall clock for the audit log, the process's usage, emulator stats.
struct Mark {
    wall: Timestamp,
    usage: Usage,
    /// CPU seconds of kube-apiserver and etcd so far.
    apiserver_cpu_s: f64,
    etcd_cpu_s: f64,
    /// The machine's 1-minute load average: the cores are shared, so say how busy they were.
    load: f64,
}

impl Mark {
    fn now(proc: &Proc, args: &Args) -> Mark {
        let cpu = |pid: Option<u32>| pid.map_or(0.0, |p| Usage::of(p).cpu_s);
        Mark {
            wall: Timestamp::now(),
            usage: proc.usage(),
            apiserver_cpu_s: cpu(args.apiserver_pid),
            etcd_cpu_s: cpu(args.etcd_pid),
            load: procs::load_average(),
        }
    }

    /// The audit-log window from `before` to this mark.
    fn window_since(&self, before: &Mark, label: &str, user: &str) -> audit::Window {
        audit::Window {
            label: label.to_string(),
            user: user.to_string(),
            start: before.wall,
            end: self.wall,
        }
    }

    /// CPU seconds since `before`: the operator, kube-apiserver and etcd.
    fn cpu_since(&self, before: &Mark) -> Value {
        json!({
            "cpu_s": self.usage.cpu_s - before.usage.cpu_s,
            "apiserver_cpu_s": self.apiserver_cpu_s - before.apiserver_cpu_s,
            "etcd_cpu_s": self.etcd_cpu_s - before.etcd_cpu_s,
        })
    }
}

/// Create → all Ready, the renewal/refresh wave, delete-all; returns the figures and the
/// still-running operator.
async fn operator_phases(
    client: &Client,
    mut proc: Proc,
    emulator: Option<&Emulator>,
    run: &Run<'_>,
    args: &Args,
    windows: &mut Vec<audit::Window>,
) -> Result<(Value, Proc), String> {
    let &Run {
        kind,
        ns,
        n,
        period,
        user,
        label,
    } = run;
    let skip = |p: &str| args.skip.iter().any(|s| s == p);
    let tracker = Tracker::start(client.clone(), ns, kind).await;

    // Warm-up: one object made Ready proves the operator runs and its caches are synced.
    let warm = vec!["warmup".to_string()];
    workload::create_all(client.clone(), ns, kind, &warm, period, 1, &tracker).await;
    let up = tracker
        .wait_until(Duration::from_secs(180), |m| {
            m.get("warmup").is_some_and(|s| s.ready.is_some())
        })
        .await;
    if !up || !proc.alive() {
        return Err(format!(
            "{}: the warm-up object was not Ready within 180 s; see its log in {}",
            proc.name,
            args.work_dir.display()
        ));
    }
    // Gone again before the measured phases, so that every figure is for the N objects.
    workload::delete_all(client.clone(), ns, kind).await?;
    let gone = tracker
        .wait_until(Duration::from_secs(180), |m| {
            m.get("warmup").is_some_and(|s| !s.present)
        })
        .await;
    if !gone {
        return Err(format!(
            "{}: the warm-up object was not deleted within 180 s",
            proc.name
        ));
    }
    say(format!(
        "{label}: warm-up object Ready and deleted; creating {n} objects"
    ));

    let names: Vec<String> = (0..n).map(|i| format!("o-{i:05}")).collect();
    let mut out = json!({"binary": proc.name});

    // --- create → all Ready
    if let Some(e) = emulator {
        e.reset_stats().await?;
    }
    let m0 = Mark::now(&proc, args);
    let t0 = tracker.start.elapsed();
    let sampler = sample(&tracker, &proc, t0);
    let profile = args
        .apiserver_profile
        .as_ref()
        .map(|dir| profile_apiserver(client, dir.join(format!("{label}-create.pprof")), n));
    let failed = workload::create_all(
        client.clone(),
        ns,
        kind,
        &names,
        period,
        args.create_concurrency,
        &tracker,
    )
    .await;
    let created_s = tracker.start.elapsed().saturating_sub(t0).as_secs_f64();
    say(format!(
        "{label}: created {n} objects in {created_s:.1} s ({failed} failed)"
    ));
    let all_ready = |m: &std::collections::HashMap<String, workload::Seen>| {
        names
            .iter()
            .all(|k| m.get(k).is_some_and(|s| s.ready.is_some()))
    };
    let timeout = Duration::from_secs(180 + n as u64 / 5);
    let ok = tracker.wait_until(timeout, all_ready).await;
    let m1 = Mark::now(&proc, args);
    let snap = tracker.snapshot();
    let mut ready: Vec<f64> = names
        .iter()
        .filter_map(|k| snap.get(k)?.ready)
        .map(|r| r.saturating_sub(t0).as_secs_f64())
        .collect();
    ready.sort_by(f64::total_cmp);
    let mut latency: Vec<f64> = names
        .iter()
        .filter_map(|k| {
            let s = snap.get(k)?;
            Some(s.ready?.saturating_sub(s.created?).as_secs_f64())
        })
        .collect();
    latency.sort_by(f64::total_cmp);
    let ready_s = ready.last().copied().unwrap_or(f64::NAN);
    say(format!(
        "{label}: {}/{n} Ready after {ready_s:.1} s ({:.0}/s){}",
        ready.len(),
        ready.len() as f64 / ready_s,
        if ok { "" } else { " (TIMED OUT)" }
    ));
    let mut create = json!({
        "ready_count": ready.len(),
        "timed_out": !ok,
        "create_failed": failed,
        "created_s": created_s,
        "ready_s": ready_s,
        "per_s": ready.len() as f64 / ready_s,
        "latency_p50_s": percentile(&latency, 0.50),
        "latency_p99_s": percentile(&latency, 0.99),
        "latency_max_s": latency.last(),
        "load_1m": [m0.load, m1.load],
        "rss_at_ready_mib": m1.usage.rss_kib as f64 / 1024.0,
        "peak_rss_mib": m1.usage.peak_rss_kib as f64 / 1024.0,
        "ready_times_s": ready,
    });
    close_phase(&mut create, &m0, &m1, emulator, n).await?;
    if let Some(profile) = profile {
        create["apiserver_profile"] = profile
            .await
            .unwrap_or_else(|e| json!({"error": e.to_string()}));
    }
    windows.push(m1.window_since(&m0, &format!("{label}.create"), user));
    out["create"] = create;

    // --- the renewal / refresh wave
    if !skip("wave") && ok {
        if let Some(e) = emulator {
            e.reset_stats().await?;
        }
        let w0 = Mark::now(&proc, args);
        say(format!(
            "{label}: waiting for the renewal wave (period {} s)",
            period.as_secs()
        ));
        let all_renewed = |m: &std::collections::HashMap<String, workload::Seen>| {
            names
                .iter()
                .all(|k| m.get(k).is_some_and(|s| s.renewed.is_some()))
        };
        let timeout = period + Duration::from_secs_f64(ready_s * 3.0) + Duration::from_secs(180);
        let ok = tracker.wait_until(timeout, all_renewed).await;
        let w1 = Mark::now(&proc, args);
        let snap = tracker.snapshot();
        let mut renewed: Vec<f64> = names
            .iter()
            .filter_map(|k| snap.get(k)?.renewed)
            .map(|r| r.saturating_sub(t0).as_secs_f64())
            .collect();
        renewed.sort_by(f64::total_cmp);
        let first = renewed.first().copied().unwrap_or(f64::NAN);
        let last = renewed.last().copied().unwrap_or(f64::NAN);
        say(format!(
            "{label}: {}/{n} renewed, wave from {first:.1} s to {last:.1} s{}",
            renewed.len(),
            if ok { "" } else { " (TIMED OUT)" }
        ));
        let mut wave = json!({
            "renewed_count": renewed.len(),
            "timed_out": !ok,
            "first_s": first,
            "last_s": last,
            "wave_s": last - first,
            "load_1m": [w0.load, w1.load],
            "renewed_times_s": renewed,
        });
        close_phase(&mut wave, &w0, &w1, emulator, n).await?;
        windows.push(w1.window_since(&w0, &format!("{label}.wave"), user));
        out["wave"] = wave;
    }

    // --- delete them all
    if !skip("delete") {
        if let Some(e) = emulator {
            e.reset_stats().await?;
        }
        let d0 = Mark::now(&proc, args);
        let td = tracker.start.elapsed();
        // A failed delete leaves the figures so far intact; the timeout below reports it.
        if let Err(e) = workload::delete_all(client.clone(), ns, kind).await {
            say(format!("{label}: {e}"));
        }
        let all_gone = |m: &std::collections::HashMap<String, workload::Seen>| {
            names.iter().all(|k| m.get(k).is_none_or(|s| !s.present))
        };
        let ok = tracker
            .wait_until(Duration::from_secs(180 + n as u64 / 5), all_gone)
            .await;
        let d1 = Mark::now(&proc, args);
        let secs = tracker.start.elapsed().saturating_sub(td).as_secs_f64();
        say(format!(
            "{label}: deleted {n} objects in {secs:.1} s{}",
            if ok { "" } else { " (TIMED OUT)" }
        ));
        let mut del = json!({
            "seconds": secs,
            "timed_out": !ok,
            "load_1m": [d0.load, d1.load],
        });
        close_phase(&mut del, &d0, &d1, emulator, n).await?;
        windows.push(d1.window_since(&d0, &format!("{label}.delete"), user));
        out["delete"] = del;
    }

    let samples = sampler.stop().await;
    let end = proc.usage();
    out["peak_rss_mib"] = json!(end.peak_rss_kib as f64 / 1024.0);
    out["cpu_s_total"] = json!(end.cpu_s);
    out["samples"] = samples;
    Ok((out, proc))
}

/// Starts a CPU profile of kube-apiserver covering the first seconds of a creation phase
/// (about one second per 100 objects, 5 to 60 s: both operators' profiles cover the same
/// length, from the same start), written to `path`. The task answers with where it went
/// or why it failed; a failed profile never fails the benchmark.
fn profile_apiserver(client: &Client, path: PathBuf, n: usize) -> tokio::task::JoinHandle<Value> {
    let client = client.clone();
    let seconds = (n / 100).clamp(5, 60);
    tokio::spawn(async move {
        let fetched = async {
            use futures::AsyncReadExt;
            let req = http::Request::get(format!("/debug/pprof/profile?seconds={seconds}"))
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            let mut body = Vec::new();
            client
                .request_stream(req)
                .await
                .map_err(|e| e.to_string())?
                .read_to_end(&mut body)
                .await
                .map_err(|e| e.to_string())?;
            std::fs::write(&path, &body).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok::<_, String>(body.len())
        };
        match fetched.await {
            Ok(bytes) => json!({"path": path, "seconds": seconds, "bytes": bytes}),
            Err(e) => {
                say(format!("kube-apiserver profile failed: {e}"));
                json!({"error": e, "seconds": seconds})
            }
        }
    })
}

/// Ready, renewed and existing counts, RSS and open file descriptors (mostly sockets)
/// of the operator twice a second, for the plot and the memory analysis.
struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Value>,
}

fn sample(tracker: &Tracker, proc: &Proc, t0: Duration) -> Sampler {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let pid = proc.pid;
    // The tracker outlives the sampler (both end in operator_phases); share its state
    // through a cheap handle.
    let counts = tracker_counts(tracker);
    let start = tracker.start;
    let task = tokio::spawn(async move {
        let mut rows = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tick.tick() => {
                    let (ready, renewed, present) = counts();
                    let u = Usage::of(pid);
                    let t = start.elapsed().saturating_sub(t0).as_secs_f64();
                    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
                    rows.push(json!([(t * 10.0).round() / 10.0, ready, renewed, present, u.rss_kib / 1024, fds]));
                }
            }
        }
        json!({"columns": ["t_s", "ready", "renewed", "present", "rss_mib", "open_fds"], "rows": rows})
    });
    Sampler { stop, task }
}

impl Sampler {
    async fn stop(self) -> Value {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(Value::Null)
    }
}

fn tracker_counts(tracker: &Tracker) -> impl Fn() -> (usize, usize, usize) + Send + 'static {
    let handle = tracker.handle();
    move || handle.counts()
}

/// Adds a phase's CPU seconds (operator, kube-apiserver, etcd) and, for ours, the ACS
/// requests the emulator counted since its last reset.
async fn close_phase(
    phase: &mut Value,
    start: &Mark,
    end: &Mark,
    emulator: Option<&Emulator>,
    n: usize,
) -> Result<(), String> {
    merge(phase, end.cpu_since(start));
    if let Some(e) = emulator {
        let stats = e.stats().await?;
        let (total, throttled) = stats_totals(&stats);
        phase["acs_requests"] = stats;
        phase["acs_per_identity"] = json!(total as f64 / n as f64);
        phase["acs_429"] = json!(throttled);
    }
    Ok(())
}

/// Adds `extra`'s fields to the object `into`.
fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied()
}

/// N identities against an emulator that enforces ACS's published limits, with the
/// service's client-side quota at its defaults (those same limits).
async fn quota_bound(
    client: &Client,
    proc: &Proc,
    args: &Args,
    n: usize,
    lifetime_scale: f64,
) -> Result<Value, String> {
    let emulator = Emulator::start(
        &args.emulator_bin,
        lifetime_scale,
        false,
        &args.work_dir.join("emulator-quota.log"),
    )
    .await?;
    let ns = "bench-quota";
    ensure_namespace(client, ns).await?;
    acs_service(client, ns, &emulator.connection_string, args, true).await?;
    let tracker = Tracker::start(client.clone(), ns, Kind::Identity).await;
    let names: Vec<String> = (0..n).map(|i| format!("q-{i:05}")).collect();
    let period = Duration::from_secs(3600);
    let t0 = tracker.start.elapsed();
    let u0 = proc.usage();
    say(format!(
        "quota: creating {n} identities against ACS's published limits"
    ));
    workload::create_all(
        client.clone(),
        ns,
        Kind::Identity,
        &names,
        period,
        args.create_concurrency,
        &tracker,
    )
    .await;
    // The bound: 1000 creates per sliding 30 s, so N needs (ceil(N/1000) - 1) * 30 s.
    let bound_s = ((n as f64 / 1000.0).ceil() - 1.0).max(0.0) * 30.0;
    let ok = tracker
        .wait_until(Duration::from_secs(240 + bound_s as u64 * 3), |m| {
            names
                .iter()
                .all(|k| m.get(k).is_some_and(|s| s.ready.is_some()))
        })
        .await;
    let snap = tracker.snapshot();
    let ready: Vec<f64> = names
        .iter()
        .filter_map(|k| snap.get(k)?.ready)
        .map(|r| r.saturating_sub(t0).as_secs_f64())
        .collect();
    let ready_s = ready.iter().copied().fold(f64::NAN, f64::max);
    let stats = emulator.stats().await?;
    let (total, throttled) = stats_totals(&stats);
    say(format!(
        "quota: {}/{n} Ready after {ready_s:.1} s (bound {bound_s:.0} s), {throttled} answered 429{}",
        ready.len(),
        if ok { "" } else { " (TIMED OUT)" }
    ));
    emulator.proc.stop(Duration::from_secs(5)).await;
    let mut by_op = BTreeMap::new();
    if let Some(ops) = stats["requests"].as_object() {
        for (op, statuses) in ops {
            by_op.insert(op.clone(), statuses.clone());
        }
    }
    Ok(json!({
        "ready_count": ready.len(),
        "timed_out": !ok,
        "ready_s": ready_s,
        "bound_s": bound_s,
        "acs_total": total,
        "acs_429": throttled,
        "acs_requests": by_op,
        "cpu_s": proc.usage().cpu_s - u0.cpu_s,
    }))
}
