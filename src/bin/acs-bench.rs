//! `acs-bench`: issue-token throughput of the ACS emulator through the real `AcsClient`
//! (HMAC signing, JSON, HTTP/1.1 keep-alive, retries on, client-side quota off), and the
//! client's own cost per request.
//!
//! ```text
//! cargo build --release --bin acs-emulator --bin acs-bench
//! cargo run --release --bin acs-bench -- --emulator process
//! ```
//!
//! Exits non-zero when any request failed (after retries) or the throughput is under
//! `--min-rps`.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use acs_identity_operator::acs::signing::sign_request;
use acs_identity_operator::acs::{
    AccessKey, AcsClient, AcsClientOptions, Attempt, ConnectionString, DEFAULT_API_VERSION,
    QuotaConfig, RequestObserver, RetryPolicy, TokenScope,
};
use acs_identity_operator::emulator::{self, EmulatedOperation, EmulatorConfig, RunningEmulator};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Measures issue-token requests/s through the real ACS client against the ACS emulator.
#[derive(Debug, Parser)]
#[command(name = "acs-bench", version)]
struct Args {
    /// Issue-token requests to send (after the warm-up); ignored with --duration.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,

    /// Requests in flight at once (one task, and so one keep-alive connection, each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// Send for this long instead of a fixed count: `10s`, `500ms`, `1m` or seconds.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Where the emulator runs: `in-process` (its own tokio runtime and threads, real
    /// loopback HTTP) or `process` (the `acs-emulator` binary next to this one, quotas
    /// off). Ignored with --connection-string or --endpoint.
    #[arg(long, value_enum, default_value_t = Mode::InProcess)]
    emulator: Mode,

    /// Target an already running emulator (start it with `--quota issue=0/1 --quota
    /// create=0/1`, or its quota answers 429s).
    #[arg(long, env = "ACS_CONNECTION_STRING", hide_env_values = true)]
    connection_string: Option<String>,

    /// Target an already running emulator by endpoint; needs --access-key.
    #[arg(long, conflicts_with = "connection_string", requires = "access_key")]
    endpoint: Option<String>,

    /// The base64 access key for --endpoint.
    #[arg(long, env = "ACS_EMULATOR_ACCESS_KEY", hide_env_values = true)]
    access_key: Option<String>,

    /// The `acs-emulator` binary for `--emulator process`; default: next to this binary.
    #[arg(long)]
    emulator_bin: Option<PathBuf>,

    /// Users created up front; requests go round-robin over them.
    #[arg(long, default_value_t = 16)]
    users: usize,

    /// Client tokio worker threads; default: the number of CPUs.
    #[arg(long)]
    client_threads: Option<usize>,

    /// In-process emulator tokio worker threads; default: the number of CPUs.
    #[arg(long)]
    server_threads: Option<usize>,

    /// Iterations of the no-I/O client-overhead measurement.
    #[arg(long, default_value_t = 20_000)]
    overhead_iterations: u32,

    #[arg(long, default_value = DEFAULT_API_VERSION)]
    api_version: String,

    /// Fail (exit 1) when the throughput is below this many requests/s.
    #[arg(long)]
    min_rps: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    InProcess,
    Process,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 10s, 500ms or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("`{s}` must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.concurrency == 0 || args.users == 0 {
        eprintln!("acs-bench: --concurrency and --users must be at least 1");
        return ExitCode::from(2);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let client_rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.unwrap_or(cpus).max(1))
        .thread_name("bench-client")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("acs-bench: cannot start the client runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client_rt.block_on(run(args, cpus)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("acs-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Where the requests go, and what keeps that emulator alive until the end.
enum Target {
    InProcess {
        emulator: RunningEmulator,
        /// The emulator's own runtime: its accept loop and connections run on these threads.
        runtime: tokio::runtime::Runtime,
    },
    Process {
        child: tokio::process::Child,
    },
    External,
}

impl Target {
    fn pid(&self) -> Option<u32> {
        match self {
            Target::Process { child } => child.id(),
            _ => None,
        }
    }

    async fn stop(self) {
        match self {
            Target::InProcess { emulator, runtime } => {
                let _ = runtime.spawn(emulator.shutdown()).await;
                runtime.shutdown_background();
            }
            Target::Process { mut child } => {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            Target::External => {}
        }
    }
}

async fn start_target(args: &Args, cpus: usize) -> Result<(String, Target, String), String> {
    if let Some(cs) = &args.connection_string {
        return Ok((cs.clone(), Target::External, "external".into()));
    }
    if let (Some(endpoint), Some(key)) = (&args.endpoint, &args.access_key) {
        let cs = format!(
            "endpoint={};accesskey={key}",
            endpoint.trim_end_matches('/')
        );
        return Ok((cs, Target::External, "external".into()));
    }
    match args.emulator {
        Mode::InProcess => {
            let threads = args.server_threads.unwrap_or(cpus).max(1);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("bench-emulator")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the emulator runtime: {e}"))?;
            let config = EmulatorConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                quotas: Default::default(),
                ..EmulatorConfig::default()
            };
            let emulator = runtime
                .spawn(emulator::spawn(config))
                .await
                .map_err(|e| format!("emulator task: {e}"))?
                .map_err(|e| format!("cannot start the emulator: {e}"))?;
            let cs = emulator.connection_string();
            let label = format!("in-process ({threads} emulator threads)");
            Ok((cs, Target::InProcess { emulator, runtime }, label))
        }
        Mode::Process => {
            let bin = match &args.emulator_bin {
                Some(bin) => bin.clone(),
                None => std::env::current_exe()
                    .map_err(|e| format!("cannot locate this binary: {e}"))?
                    .with_file_name(format!("acs-emulator{}", std::env::consts::EXE_SUFFIX)),
            };
            if !bin.is_file() {
                return Err(format!(
                    "no emulator binary at {}; build it first: cargo build --release --bin acs-emulator (or pass --emulator-bin)",
                    bin.display()
                ));
            }
            let mut command = tokio::process::Command::new(&bin);
            command.args(["--listen", "127.0.0.1:0"]);
            for op in EmulatedOperation::ALL {
                command.arg("--quota").arg(format!("{op}=0/1"));
            }
            // The emulator logs every request at info: that is stderr I/O per request, not
            // what an ACS client waits for.
            command
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut child = command
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            let stdout = child.stdout.take().ok_or("no stdout from the emulator")?;
            let mut line = String::new();
            let mut reader = BufReader::new(stdout);
            match tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) => return Err("the emulator exited before printing its address".into()),
                Ok(Err(e)) => return Err(format!("reading the emulator's first line: {e}")),
                Err(_) => return Err("the emulator printed nothing for 30 s".into()),
            }
            let cs = line
                .trim()
                .strip_prefix("ACS_CONNECTION_STRING=")
                .ok_or_else(|| format!("unexpected first line from the emulator: {line:?}"))?
                .to_string();
            // Keep the pipe drained so a later write can never block the emulator.
            tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut reader, &mut sink).await;
            });
            let label = format!("process ({})", bin.display());
            Ok((cs, Target::Process { child }, label))
        }
    }
}

/// Counts attempts and retries as the operator's metrics would see them.
#[derive(Default)]
struct Counter {
    attempts: AtomicU64,
    failed_attempts: AtomicU64,
}

impl RequestObserver for Counter {
    fn on_attempt(&self, attempt: &Attempt) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if attempt.result != "ok" {
            self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Outcome {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

/// Issues tokens with `concurrency` tasks until `budget` requests are taken or `until`.
async fn load(
    client: &AcsClient,
    users: &Arc<Vec<String>>,
    concurrency: usize,
    budget: u64,
    until: Option<Instant>,
) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let users = users.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let scopes = [TokenScope::Chat, TokenScope::Voip];
            let mut out = Outcome {
                ok: 0,
                errors: 0,
                first_error: None,
                latencies_us: Vec::new(),
            };
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                match until {
                    Some(t) if Instant::now() >= t => break,
                    None if n >= budget => break,
                    _ => {}
                }
                let user = &users[n as usize % users.len()];
                let started = Instant::now();
                let result = client.issue_token(user, &scopes, Some(60)).await;
                let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                match result {
                    Ok(_) => {
                        out.ok += 1;
                        out.latencies_us.push(us);
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            out
        });
    }
    let mut total = Outcome {
        ok: 0,
        errors: 0,
        first_error: None,
        latencies_us: Vec::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(out) => {
                total.ok += out.ok;
                total.errors += out.errors;
                if total.first_error.is_none() {
                    total.first_error = out.first_error;
                }
                total.latencies_us.extend(out.latencies_us);
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("worker panicked: {e}"));
            }
        }
    }
    total
}

/// User plus system CPU time of a process, all threads (Linux `/proc`; `None` elsewhere).
fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the `(comm)`, which may itself hold spaces: utime and stime are the
    // 14th and 15th fields, in clock ticks (USER_HZ, 100 on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "n/a".into())
}

/// `12345.6` as `12,346`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

/// Average cost of `f` over `iterations`, after a short warm-up.
fn per_iteration(iterations: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iterations.min(1000) {
        f();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        f();
    }
    started.elapsed() / iterations.max(1)
}

async fn run(args: Args, cpus: usize) -> Result<ExitCode, String> {
    let profile = if cfg!(debug_assertions) {
        "debug (numbers are not representative; use --release)"
    } else {
        "release"
    };
    println!(
        "machine: {cpus} CPUs, load average {} at start; build profile: {profile}",
        load_average()
    );
    let (connection_string, target, label) = start_target(&args, cpus).await?;
    let result = bench(&args, &connection_string, &target, &label).await;
    target.stop().await;
    result
}

async fn bench(
    args: &Args,
    connection_string: &str,
    target: &Target,
    label: &str,
) -> Result<ExitCode, String> {
    let cs = ConnectionString::parse(connection_string)
        .map_err(|e| format!("bad connection string: {e}"))?;
    let counter = Arc::new(Counter::default());
    let options = AcsClientOptions {
        api_version: args.api_version.clone(),
        request_timeout: Duration::from_secs(30),
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(5),
        },
        quota: QuotaConfig::unlimited(),
        observer: Some(counter.clone()),
        allow_insecure_endpoints: true,
        ..AcsClientOptions::default()
    };
    let client = AcsClient::new(&cs, options).map_err(|e| format!("client: {e}"))?;

    let mut users = Vec::with_capacity(args.users);
    for _ in 0..args.users {
        let created = client
            .create_user(None, None, None)
            .await
            .map_err(|e| format!("creating a user: {e}"))?;
        users.push(created.user.id);
    }
    let users = Arc::new(users);

    // Warm-up: opens the keep-alive connections and settles the allocators.
    let warmup = (args.concurrency as u64 * 20).clamp(500, 5_000);
    let warm = load(&client, &users, args.concurrency, warmup, None).await;
    if warm.errors > 0 {
        return Err(format!(
            "{} of {warmup} warm-up requests failed; first: {}",
            warm.errors,
            warm.first_error.unwrap_or_default()
        ));
    }

    let attempts_before = counter.attempts.load(Ordering::Relaxed);
    let failed_before = counter.failed_attempts.load(Ordering::Relaxed);
    let emulator_pid = target.pid();
    let cpu_before = (cpu_time(None), cpu_time(emulator_pid));
    let started = Instant::now();
    let until = args.duration.map(|d| started + d);
    let mut outcome = load(&client, &users, args.concurrency, args.requests, until).await;
    let elapsed = started.elapsed();
    let cpu_after = (cpu_time(None), cpu_time(emulator_pid));
    let attempts = counter.attempts.load(Ordering::Relaxed) - attempts_before;
    let failed_attempts = counter.failed_attempts.load(Ordering::Relaxed) - failed_before;

    let total = outcome.ok + outcome.errors;
    let rps = outcome.ok as f64 / elapsed.as_secs_f64();
    println!("emulator: {label}; api-version {}", args.api_version);
    println!(
        "issue-token throughput: {} req/s ({total} requests, concurrency {}, {:.2} s, {} errors)",
        thousands(rps),
        args.concurrency,
        elapsed.as_secs_f64(),
        outcome.errors
    );
    outcome.latencies_us.sort_unstable();
    let l = &outcome.latencies_us;
    println!(
        "latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile_ms(l, 50.0),
        percentile_ms(l, 90.0),
        percentile_ms(l, 99.0),
        percentile_ms(l, 100.0)
    );
    println!(
        "attempts: {attempts} ({failed_attempts} failed and retried or given up; client quota off, retries on)"
    );
    let per_request = |before: Option<Duration>, after: Option<Duration>| {
        let spent = after?.checked_sub(before?)?;
        Some(spent.as_secs_f64() * 1e6 / total.max(1) as f64)
    };
    let own = per_request(cpu_before.0, cpu_after.0);
    let (own_label, emulator_cpu) = match target {
        Target::InProcess { .. } => ("client + in-process emulator", None),
        Target::Process { .. } => ("client", per_request(cpu_before.1, cpu_after.1)),
        Target::External => ("client", None),
    };
    if let Some(us) = own {
        println!(
            "CPU per request, {own_label}: {us:.1} µs (user + system, incl. HTTP and syscalls)"
        );
    }
    if let Some(us) = emulator_cpu {
        println!("CPU per request, emulator process: {us:.1} µs");
    }

    overhead(
        &client,
        &users[0],
        connection_string,
        args.overhead_iterations,
    )?;

    if outcome.errors > 0 {
        eprintln!(
            "acs-bench: {} of {total} requests failed; first: {}",
            outcome.errors,
            outcome.first_error.unwrap_or_default()
        );
        return Ok(ExitCode::FAILURE);
    }
    if let Some(min) = args.min_rps
        && rps < min
    {
        eprintln!(
            "acs-bench: {} req/s is below --min-rps {}",
            thousands(rps),
            thousands(min)
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The client's CPU cost of one issue-token request without any I/O: what
/// `AcsClient::prepare_issue_token` does (URL, JSON body, date, HMAC signature, headers,
/// the reqwest request), and of that the signing alone.
fn overhead(
    client: &AcsClient,
    user: &str,
    connection_string: &str,
    iterations: u32,
) -> Result<(), String> {
    let scopes = [TokenScope::Chat, TokenScope::Voip];
    if let Err(e) = client.prepare_issue_token(user, &scopes, Some(60)) {
        return Err(format!("preparing a request: {e}"));
    }
    let prepare = per_iteration(iterations, || {
        let request = client.prepare_issue_token(user, &scopes, Some(60));
        std::hint::black_box(request.ok());
    });
    let key: AccessKey = ConnectionString::parse(connection_string)
        .map_err(|e| e.to_string())?
        .key()
        .clone();
    let body = br#"{"scopes":["chat","voip"],"expiresInMinutes":60}"#;
    let target = "/identities/8%3Aacs%3Ax_y/:issueAccessToken?api-version=2023-10-01";
    let sign = per_iteration(iterations, || {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let signed = sign_request(&key, "POST", target, "127.0.0.1:7000", &date, body);
        std::hint::black_box(signed);
    });
    println!(
        "client overhead per request: {:.1} µs (signing + JSON + request build, measured without I/O over {iterations} iterations; of that signing {:.1} µs)",
        prepare.as_secs_f64() * 1e6,
        sign.as_secs_f64() * 1e6
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        for bad in ["", "0", "-1s", "5h", "x"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_and_percentiles_print_as_documented() {
        assert_eq!(thousands(7812.4), "7,812");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        let us: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 50.0), 50.0);
        assert_eq!(percentile_ms(&us, 99.0), 99.0);
        assert_eq!(percentile_ms(&us, 100.0), 100.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }
}
