//! `kubectl acs`: the CLI for people (DESIGN.md, "Observability and operations"). Lists
//! identities, shows one in detail, requests a renewal or revocation through the
//! annotations the operator watches, and shows a token's claims and expiry without ever
//! printing the token.
//!
//! Installed as `kubectl-acs` on `PATH`, kubectl runs it for `kubectl acs ...`. The
//! binary (`src/bin/kubectl-acs.rs`) only calls [`main`].

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::CommunicationIdentity;
use crate::api::duration::parse_duration;

pub(crate) mod cluster;
pub(crate) mod error;
pub(crate) mod format;
pub(crate) mod jwt;
pub(crate) mod list;
pub(crate) mod request;
pub(crate) mod status;
pub(crate) mod token;
pub(crate) mod token_file;

use cluster::ClusterArgs;
use error::CliError;
use list::Output;
use request::Request;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-acs",
    bin_name = "kubectl acs",
    version,
    about = "Azure Communication Services identities managed by acs-identity-operator",
    long_about = "Azure Communication Services identities managed by acs-identity-operator.\n\n\
                  Finds the cluster as kubectl does (KUBECONFIG, --kubeconfig, --context) and \
                  acts in the context's namespace unless -n is given. Installed on PATH as \
                  `kubectl-acs`, it runs as `kubectl acs`."
)]
pub struct Cli {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List identities: readiness, user, token expiry, next renewal, Secret.
    #[command(visible_alias = "get")]
    List {
        /// List identities in every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show one identity in detail: conditions with messages, last issue and revocation,
    /// observed generation, pending requests.
    Status {
        /// Name of the CommunicationIdentity.
        name: String,
    },
    /// Ask the operator to issue a fresh token now (the old one stays valid until it
    /// expires).
    Renew(RequestArgs),
    /// Ask the operator to revoke every token of the identity's ACS user, then issue a
    /// fresh one. Workloads holding an old token lose access.
    Revoke(RequestArgs),
    /// Show the claims and expiry of the token in the identity's Secret (never the token),
    /// or, with --file, of a mounted token file (no cluster access needed).
    Token {
        /// Name of the CommunicationIdentity.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        name: Option<String>,
        /// A token file, e.g. the `token` key of the Secret mounted in a pod; prints one
        /// line: user, scopes, issuedAt, expiresOn.
        #[arg(long, value_name = "PATH")]
        file: Option<std::path::PathBuf>,
        /// With --file: keep watching and print a line each time the file changes.
        #[arg(long)]
        watch: bool,
        /// With --watch: how often to look at the file, e.g. 1s.
        #[arg(long, default_value = "1s", value_parser = parse_timeout)]
        interval: Duration,
    },
}

#[derive(clap::Args, Debug)]
pub struct RequestArgs {
    /// Name of the CommunicationIdentity.
    pub name: String,
    /// Wait until the operator has handled the request, then print the new expiry.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 30s, 2m.
    #[arg(long, default_value = "2m", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// The condition of `type_`, if the status has it.
pub fn condition<'a>(id: &'a CommunicationIdentity, type_: &str) -> Option<&'a Condition> {
    id.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// The Secret holding the identity's token: the one status records, else the spec's
/// (`spec.secretName`, defaulting to the identity's name).
pub fn secret_name(id: &CommunicationIdentity) -> String {
    id.status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .or_else(|| id.effective_secret_name().map(str::to_string))
        .unwrap_or_default()
}

/// Runs one command, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut dyn std::io::Write) -> Result<(), CliError> {
    // A token file needs no cluster (a workload's ServiceAccount may have no rights).
    if let Command::Token {
        file: Some(path),
        watch,
        interval,
        ..
    } = &cli.command
    {
        return token_file::run(path, watch.then_some(*interval), out).await;
    }
    if let Command::Token { watch: true, .. } = &cli.command {
        return Err(CliError::Other(
            "--watch needs --file PATH (a Secret in the cluster is not watched)".into(),
        ));
    }
    let conn = cluster::connect(&cli.cluster).await?;
    match cli.command {
        Command::List {
            all_namespaces,
            output,
        } => list::run(&conn, all_namespaces, output, out).await,
        Command::Status { name } => status::run(&conn, &name, out).await,
        Command::Renew(args) => request(&conn, args, Request::Renew, out).await,
        Command::Revoke(args) => request(&conn, args, Request::Revoke, out).await,
        Command::Token { name, .. } => {
            token::run(&conn, name.as_deref().unwrap_or_default(), out).await
        }
    }
}

async fn request(
    conn: &cluster::Connection,
    args: RequestArgs,
    request: Request,
    out: &mut dyn std::io::Write,
) -> Result<(), CliError> {
    let wait = args.wait.then_some(args.timeout);
    request::run(conn, &args.name, request, wait, out).await
}

/// The binary's `main`: parses flags, runs, prints `error: ...` on stderr and exits 1 on
/// failure (2 on bad usage, from clap).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match runtime.block_on(run(cli, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::{CommunicationIdentitySpec, CommunicationIdentityStatus, Scope};

    fn t(s: &str) -> Time {
        Time(s.parse().expect("test timestamp"))
    }

    /// An identity in `team-a` issued at 10:00 on 2026-11-25, expiring a day later,
    /// renewing at 02:00; `ready` is (status, reason) of Ready; `renewal_failing` adds
    /// RenewalFailing=True.
    pub(crate) fn identity(
        name: &str,
        ready: Option<(&str, &str)>,
        renewal_failing: bool,
    ) -> CommunicationIdentity {
        let mut id = CommunicationIdentity::new(
            name,
            CommunicationIdentitySpec {
                service_ref: None,
                scopes: [Scope::Chat, Scope::Voip].into(),
                token_lifetime: "24h".into(),
                renew_before: None,
                secret_name: None,
                secret_template: None,
                existing_user_id: None,
                deletion_policy: None,
                rollout_restart_targets: vec![],
            },
        );
        id.metadata.namespace = Some("team-a".into());
        id.metadata.generation = Some(2);
        let mut conditions = Vec::new();
        if let Some((status, reason)) = ready {
            conditions.push(Condition {
                type_: "Ready".into(),
                status: status.into(),
                reason: reason.into(),
                message: if status == "True" {
                    "Secret app holds a token".into()
                } else {
                    "CommunicationService \"acs\" not found".into()
                },
                last_transition_time: t("2026-11-25T10:00:00Z"),
                observed_generation: Some(2),
            });
        }
        if renewal_failing {
            conditions.push(Condition {
                type_: "RenewalFailing".into(),
                status: "True".into(),
                reason: "RenewalFailed".into(),
                message: "ACS answered 503".into(),
                last_transition_time: t("2026-11-25T10:30:00Z"),
                observed_generation: Some(2),
            });
        }
        id.status = Some(CommunicationIdentityStatus {
            user_id: Some("8:acs:r_app".into()),
            token_expires_on: Some(t("2026-11-26T10:00:00Z")),
            renewal_time: Some(t("2026-11-26T02:00:00Z")),
            last_token_issued_at: Some(t("2026-11-25T10:00:00Z")),
            observed_generation: Some(2),
            conditions,
            ..CommunicationIdentityStatus::default()
        });
        id
    }

    #[test]
    fn secret_name_prefers_status_then_spec_then_name() {
        let mut id = identity("app", None, false);
        assert_eq!(secret_name(&id), "app");
        id.spec.secret_name = Some("from-spec".into());
        assert_eq!(secret_name(&id), "from-spec");
        if let Some(st) = id.status.as_mut() {
            st.secret_name = Some("from-status".into());
        }
        assert_eq!(secret_name(&id), "from-status");
    }

    #[test]
    fn flags_parse_like_kubectl() {
        let cli = Cli::try_parse_from(["kubectl-acs", "get", "-A", "-o", "json"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::List {
                all_namespaces: true,
                output: Output::Json
            }
        ));
        let cli = Cli::try_parse_from([
            "kubectl-acs",
            "renew",
            "app",
            "-n",
            "team-a",
            "--context",
            "dev",
            "--wait",
            "--timeout",
            "30s",
        ])
        .expect("parses");
        assert_eq!(cli.cluster.namespace.as_deref(), Some("team-a"));
        assert_eq!(cli.cluster.context.as_deref(), Some("dev"));
        let Command::Renew(args) = cli.command else {
            panic!("not renew");
        };
        assert!(args.wait);
        assert_eq!(args.timeout, Duration::from_secs(30));
        assert!(Cli::try_parse_from(["kubectl-acs", "renew", "app", "--timeout", "soon"]).is_err());
        let cli = Cli::try_parse_from(["kubectl-acs", "token", "--file", "/t", "--watch"])
            .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Token {
                name: None,
                watch: true,
                ..
            }
        ));
        for bad in [
            &["kubectl-acs", "token"][..],
            &["kubectl-acs", "token", "app", "--file", "/t"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        Cli::command_for_tests().debug_assert();
    }

    #[tokio::test]
    async fn watch_without_a_file_is_refused_before_any_cluster_access() {
        let cli = Cli::try_parse_from([
            "kubectl-acs",
            "--kubeconfig",
            "/nonexistent",
            "token",
            "app",
            "--watch",
        ])
        .expect("parses");
        let err = run(cli, &mut Vec::new())
            .await
            .expect_err("refused")
            .to_string();
        assert!(err.contains("--watch needs --file PATH"), "{err}");
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
