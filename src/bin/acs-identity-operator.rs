//! `acs-identity-operator run`: the controller process. Flags have environment-variable
//! fallbacks so the Helm chart and a laptop use the same binary the same way.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use futures::FutureExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use acs_identity_operator::acs::RequestObserver;
use acs_identity_operator::api::ServiceKind;
use acs_identity_operator::api::duration::parse_duration;
use acs_identity_operator::controller::clients::ClientSettings;
use acs_identity_operator::controller::context::{Leadership, SystemClock};
use acs_identity_operator::controller::resolver::parse_default_service;
use acs_identity_operator::controller::{OperatorConfig, run};
use acs_identity_operator::runtime::signals::shutdown_channel;
use acs_identity_operator::runtime::{
    self, AdminState, LeaseConfig, LogFormat, Metrics, Readiness,
};

#[derive(Parser)]
#[command(
    name = "acs-identity-operator",
    version,
    about = "Azure Communication Services identities and always-valid access tokens for Kubernetes workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster in KUBECONFIG, or in-cluster.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kubeconfig file; without it the cluster is found as kubectl finds it (KUBECONFIG,
    /// ~/.kube/config, then the in-cluster service account).
    #[arg(long, env = "ACS_OPERATOR_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Service for identities without spec.serviceRef, as KIND/NAME, e.g.
    /// ClusterCommunicationService/default or CommunicationService/acs (same namespace).
    #[arg(long, env = "ACS_OPERATOR_DEFAULT_SERVICE", value_parser = parse_default_service)]
    default_service: Option<(ServiceKind, String)>,
    /// Comma-separated namespaces to watch; empty watches every namespace.
    #[arg(long, env = "ACS_OPERATOR_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Address of the admin server: /metrics, /healthz, /readyz.
    #[arg(
        long,
        env = "ACS_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "ACS_OPERATOR_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing env-filter syntax), e.g. info or acs_identity_operator=debug.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
    /// Take part in leader election over a coordination.k8s.io Lease, so that several
    /// replicas run with one active.
    #[arg(long, env = "ACS_OPERATOR_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "ACS_OPERATOR_LEADER_ELECTION_LEASE_NAME",
        default_value = "acs-identity-operator"
    )]
    leader_election_lease_name: String,
    /// PEM file of extra CA certificates to trust for ACS endpoints (private endpoints,
    /// the emulator's --tls).
    #[arg(long, env = "ACS_OPERATOR_EXTRA_CA_FILE")]
    extra_ca_file: Option<PathBuf>,
    /// Namespace where ClusterCommunicationService credential Secrets must live (as
    /// cert-manager's cluster resource namespace); default: the pod's namespace
    /// (POD_NAMESPACE), else acs-system. Secrets elsewhere are never read.
    #[arg(long, env = "ACS_OPERATOR_CLUSTER_RESOURCE_NAMESPACE")]
    cluster_resource_namespace: Option<String>,
    /// Allow plain-http ACS endpoints (by default only https, loopback included: a
    /// sidecar's admin port listens there). For test rigs and the demo only: tokens and
    /// signed requests travel unencrypted.
    #[arg(long, env = "ACS_OPERATOR_ALLOW_INSECURE_ENDPOINTS")]
    allow_insecure_endpoints: bool,
    /// Let a namespaced CommunicationService with spec.entraId but no serviceAccountRef
    /// use the operator's own workload identity (AZURE_* environment). Off by default, as
    /// cert-manager's --issuer-ambient-credentials: whoever may create a service in a
    /// namespace would otherwise borrow the operator's Entra identity. Cluster services
    /// may always use it.
    #[arg(long, env = "ACS_OPERATOR_NAMESPACED_SERVICE_AMBIENT_CREDENTIALS")]
    namespaced_service_ambient_credentials: bool,
    /// Reconciles that run at once, across every watched namespace.
    #[arg(
        long,
        env = "ACS_OPERATOR_MAX_CONCURRENT_RECONCILES",
        default_value_t = 16,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    max_concurrent_reconciles: u16,
    /// No identity gets more than one token per this interval, whatever ACS returns and
    /// whatever fails (a Go-style duration, e.g. 15s, 1m).
    #[arg(long, env = "ACS_OPERATOR_MIN_TOKEN_INTERVAL", default_value = "15s", value_parser = parse_interval)]
    min_token_interval: std::time::Duration,
    /// After SIGTERM or SIGINT, the process exits after at most this long, even if
    /// in-flight work, the Lease release or an unreachable API server would keep it
    /// (a Go-style duration). Keep it below the pod's terminationGracePeriodSeconds (the
    /// chart sets it 5s below).
    #[arg(long, env = "ACS_OPERATOR_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_interval)]
    shutdown_timeout: std::time::Duration,
    /// In a namespace being deleted, an identity whose cleanup keeps failing (wrong or
    /// rotated key, ACS resource or its DNS gone, a user of another resource) has its
    /// finalizer released this long after the namespace's deletion began, with a Warning
    /// event and a log line naming the ACS user left behind (a Go-style duration).
    #[arg(long, env = "ACS_OPERATOR_ABANDON_CLEANUP_AFTER", default_value = "5m", value_parser = parse_interval)]
    abandon_cleanup_after: std::time::Duration,
    /// Workloads (`spec.rolloutRestartTargets`) restarted per minute, across every identity:
    /// a renewal wave's restarts are spread over the following minutes instead of
    /// restarting everything at once. An identity waiting for its turn is requeued.
    #[arg(
        long,
        env = "ACS_OPERATOR_ROLLOUT_RESTARTS_PER_MINUTE",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..=10000)
    )]
    rollout_restarts_per_minute: u32,
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// jemalloc instead of glibc's malloc: see Cargo.toml and docs/scaling.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Run(args) = cli.command;
    if let Err(e) = runtime::logging::init(args.log_format, &args.log_level) {
        eprintln!("acs-identity-operator: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("acs-identity-operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_operator(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("acs-identity-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ends the process `deadline` after a shutdown request, whatever still runs: a thread of
/// its own, so that neither a busy runtime nor an API server that stopped answering (the
/// watchers and the Lease release retry connections to it) can hold the process.
fn exit_after(deadline: std::time::Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-deadline".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            tracing::error!(
                shutdown_timeout_secs = deadline.as_secs_f64(),
                "shutdown did not finish within --shutdown-timeout; exiting now (in-flight work is \
                 abandoned; the Lease, if held, expires on its own)"
            );
            eprintln!(
                "acs-identity-operator: shutdown did not finish within {}s (--shutdown-timeout); exiting",
                deadline.as_secs_f64()
            );
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the shutdown deadline thread");
    }
}

async fn kube_client(kubeconfig: Option<&PathBuf>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => Config::infer()
            .await
            .map_err(|e| format!("no cluster found (set KUBECONFIG or run in a pod): {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("building the Kubernetes client: {e}"))
}

async fn run_operator(args: RunArgs) -> Result<(), String> {
    // Install signal handlers first: a SIGTERM before them would skip the lease release.
    let signal = runtime::shutdown_signal();
    let (shutdown, listener) = shutdown_channel();
    let deadline = args.shutdown_timeout;
    let trigger = tokio::spawn(async move {
        let sig = signal.await;
        tracing::info!(
            signal = ?sig,
            shutdown_timeout_secs = deadline.as_secs_f64(),
            "shutting down: finishing in-flight work"
        );
        shutdown.trigger();
        exit_after(deadline);
        shutdown
    });

    let client = kube_client(args.kubeconfig.as_ref()).await?;
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::new();
    let admin = runtime::admin::bind(args.metrics_addr)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(runtime::admin::serve_on(
        admin,
        AdminState::new(metrics.clone(), readiness.clone()),
        listener.clone().wait(),
    ));

    let extra_ca_pem = match &args.extra_ca_file {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| format!("reading --extra-ca-file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let observer: Arc<dyn RequestObserver> = metrics.clone();
    let mut config = OperatorConfig {
        default_service: args.default_service.clone(),
        // Deduplicated: a namespace named twice would get two watches and two controllers.
        watch_namespaces: args
            .watch_namespaces
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        client_settings: ClientSettings {
            extra_ca_pem,
            observer: Some(observer),
            request_timeout: None,
            allow_insecure_endpoints: args.allow_insecure_endpoints,
            entra: {
                let mut entra = acs_identity_operator::controller::entra::EntraSettings::from_env(
                    args.namespaced_service_ambient_credentials,
                );
                entra.operator_service_account = std::env::var("POD_NAMESPACE")
                    .ok()
                    .zip(std::env::var("POD_SERVICE_ACCOUNT").ok())
                    .map(|(ns, sa)| format!("{ns}/{sa}"));
                entra
            },
            entra_observer: Some(metrics.clone()),
        },
        cluster_resource_namespace: args
            .cluster_resource_namespace
            .clone()
            .or_else(|| args.leader_election_namespace.clone())
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "acs-system".to_string()),
        max_concurrent_reconciles: usize::from(args.max_concurrent_reconciles),
        min_token_interval: args.min_token_interval,
        abandon_cleanup_after: args.abandon_cleanup_after,
        rollout_restarts_per_minute: args.rollout_restarts_per_minute,
        leadership: Leadership::default(),
        clock: Arc::new(SystemClock),
    };

    let leader = if args.leader_elect {
        let ns = args
            .leader_election_namespace
            .clone()
            .ok_or("--leader-elect needs --leader-election-namespace (or POD_NAMESPACE)")?;
        let lease = LeaseConfig::new(ns, args.leader_election_lease_name.clone());
        // A standby is ready to take over: were it unready, a rolling update of two
        // replicas would wait forever for the new pod, which waits for the old one's Lease.
        readiness.set_ready(true);
        match runtime::run_leader_election(client.clone(), lease, listener.clone().wait())
            .await
            .map_err(|e| e.to_string())?
        {
            Some(handle) => Some(handle),
            None => return Ok(()), // shut down before winning
        }
    } else {
        None
    };

    if let Some(h) = &leader {
        config.leadership = Leadership::elected(h.watch());
    }
    // Leader (or no election): this process runs the controllers until it exits, which it
    // does when leadership is lost, so the per-identity series end with it.
    metrics.set_leader(true);
    // Stop on a signal, or when leadership is lost (another replica now acts).
    let lost = match &leader {
        Some(h) => h.lost().boxed(),
        None => futures::future::pending().boxed(),
    };
    let stop = {
        let l = listener.clone();
        async move {
            tokio::select! {
                _ = l.wait() => {}
                _ = lost => tracing::error!("leadership lost; stopping so that a fresh process can campaign"),
            }
        }
    }
    .boxed()
    .shared();
    tracing::info!(
        namespaces = ?config.watch_namespaces,
        default_service = ?args.default_service.as_ref().map(|(k, n)| format!("{k:?}/{n}")),
        "acs-identity-operator starting"
    );
    run(client, config, metrics, readiness, stop).await;
    let lost_leadership = leader.as_ref().is_some_and(|h| !h.is_leader());
    if let Some(handle) = leader
        && let Err(e) = handle.release().await
    {
        tracing::warn!(error = %e, "releasing the leader Lease failed");
    }
    trigger.abort();
    if lost_leadership && !listener.is_triggered() {
        return Err("lost leadership".into());
    }
    tracing::info!("stopped");
    Ok(())
}
