//! `acs-emulator`: a local stand-in for Azure Communication Services' Identity API.
//! The first line on stdout is the connection string; logs go to stderr.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use acs_identity_operator::acs::connection_string::AccessKey;
use acs_identity_operator::emulator::{EmulatorConfig, FaultRule, QuotaSetting, spawn};
use clap::Parser;
use uuid::Uuid;

/// Serves the ACS Identity REST API (HMAC-signed, all SDK api-versions) on loopback.
///
/// Prints `ACS_CONNECTION_STRING=endpoint=http://ADDR/;accesskey=KEY` as its first line.
/// Admin API: GET /admin/identities, POST /admin/tokens:validate, GET|DELETE /admin/stats,
/// POST|GET|DELETE /admin/faults.
#[derive(Debug, Parser)]
#[command(name = "acs-emulator", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port. Avoid 80 and 443.
    #[arg(long, env = "ACS_EMULATOR_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// Base64 access key clients sign with; a random one is generated when absent.
    #[arg(long, env = "ACS_EMULATOR_ACCESS_KEY", hide_env_values = true)]
    access_key: Option<String>,

    /// Resource GUID that appears in identity ids (8:acs:<resource>_<user>).
    #[arg(long, env = "ACS_EMULATOR_RESOURCE_ID")]
    resource_id: Option<Uuid>,

    /// Per-operation quota OP=N/SECONDS (create, issue, revoke, delete, get); N=0 lifts it.
    /// Defaults: create=1000/30, issue=1000/30, delete=500/30, revoke=500/30.
    #[arg(long = "quota", env = "ACS_EMULATOR_QUOTA", value_delimiter = ';')]
    quotas: Vec<QuotaSetting>,

    /// Multiplies every token lifetime (0.01 makes a 24 h token last about 14 minutes).
    #[arg(long, env = "ACS_EMULATOR_TOKEN_LIFETIME_SCALE", default_value_t = 1.0)]
    token_lifetime_scale: f64,

    /// JSON file that keeps identities and token secret across restarts.
    #[arg(long, env = "ACS_EMULATOR_STATE_FILE")]
    state_file: Option<PathBuf>,

    /// Fault to inject, as operation=OP,status=N,probability=P,retryAfterSeconds=S,latencyMs=MS,count=N,drop=true,afterExecute=true
    /// (all parts optional but one of status, latencyMs, drop; status=0 drops the connection).
    #[arg(long = "fault", env = "ACS_EMULATOR_FAULTS", value_delimiter = ';')]
    faults: Vec<FaultRule>,

    /// Latency added to every ACS request, in milliseconds (shorthand for --fault latencyMs=MS).
    #[arg(long, env = "ACS_EMULATOR_LATENCY_MS")]
    latency_ms: Option<u64>,

    /// Key required in `x-admin-key` for /admin/; without it /admin/ answers loopback only.
    #[arg(long, env = "ACS_EMULATOR_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,

    /// Serve HTTPS with a certificate for 127.0.0.1 and localhost generated at start.
    #[arg(long, env = "ACS_EMULATOR_TLS")]
    tls: bool,

    /// With --tls, write the CA certificate that clients must trust to this PEM file.
    #[arg(long, env = "ACS_EMULATOR_TLS_CA_OUT", requires = "tls")]
    tls_ca_out: Option<PathBuf>,

    /// With --tls, also make the certificate valid for NAME (a DNS name or an IP address;
    /// repeatable), e.g. the node address that pods use to reach the emulator.
    #[arg(long = "tls-san", value_name = "NAME", requires = "tls", value_parser = parse_tls_san)]
    tls_sans: Vec<String>,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "ACS_EMULATOR_LOG_JSON")]
    log_json: bool,

    /// Status of a create whose customId finds an existing user: 201 as the live service
    /// answers, or 200 as the 2025-03-02-preview specification says.
    #[arg(long, env = "ACS_EMULATOR_FOUND_CUSTOM_ID_STATUS", default_value_t = 201,
          value_parser = parse_found_status)]
    found_custom_id_status: u16,

    /// The emulated Entra ID tenant (directory) id of the resource; random when absent.
    /// Its token endpoint is `/{tenant}/oauth2/v2.0/token` on this listener (use --tls:
    /// the SDKs send bearer tokens and talk to authorities over https only).
    #[arg(long, env = "ACS_EMULATOR_ENTRA_TENANT")]
    entra_tenant: Option<String>,
    /// JSON file of trusted issuers, applications (with federated credentials) and role
    /// assignments: {"issuers":[{"issuer","jwks":{"keys":[...]}}],"applications":[{"clientId",
    /// "objectId","federatedCredentials":[{"issuer","subject","audiences"}]}],
    /// "roleAssignments":[{"principalId","role"}]}. More through /admin/entra/.
    #[arg(long, env = "ACS_EMULATOR_ENTRA_CONFIG")]
    entra_config: Option<PathBuf>,
    /// Lifetime of emulated Entra access tokens in seconds (before --token-lifetime-scale).
    #[arg(
        long,
        env = "ACS_EMULATOR_ENTRA_TOKEN_LIFETIME",
        default_value_t = 3599
    )]
    entra_token_lifetime: u64,
    /// Refuse HMAC (access key) requests with 401, as ACS with disableLocalAuth: only
    /// Entra ID bearer tokens get in.
    #[arg(long, env = "ACS_EMULATOR_DISABLE_LOCAL_AUTH")]
    disable_local_auth: bool,
}

fn parse_found_status(s: &str) -> Result<u16, String> {
    match s {
        "200" => Ok(200),
        "201" => Ok(201),
        _ => Err("expected 200 or 201".into()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }

    let config = match config_from(args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("acs-emulator: {message}");
            return ExitCode::from(2);
        }
    };
    let emulator = match spawn(config).await {
        Ok(emulator) => emulator,
        Err(e) => {
            eprintln!("acs-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Scripts read this line to find the emulator, so it goes first and is flushed now.
    let mut stdout = std::io::stdout().lock();
    if writeln!(
        stdout,
        "ACS_CONNECTION_STRING={}",
        emulator.connection_string()
    )
    .and_then(|()| stdout.flush())
    .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);
    tracing::info!(endpoint = emulator.endpoint(), resource_id = %emulator.resource_id(), entra_tenant = emulator.entra_tenant(), "ACS emulator listening");

    wait_for_signal().await;
    tracing::info!("shutting down");
    emulator.shutdown().await;
    ExitCode::SUCCESS
}

fn config_from(args: Args) -> Result<EmulatorConfig, String> {
    let mut config = EmulatorConfig {
        listen: args.listen,
        access_key: args
            .access_key
            .map(|k| AccessKey::from_base64(&k).map_err(|e| format!("--access-key: {e}")))
            .transpose()?,
        resource_id: args.resource_id,
        token_lifetime_scale: args.token_lifetime_scale,
        state_file: args.state_file,
        faults: args.faults,
        admin_key: args.admin_key,
        tls: args.tls,
        tls_ca_out: args.tls_ca_out,
        tls_sans: args.tls_sans,
        found_custom_id_status: args.found_custom_id_status,
        entra_tenant: args.entra_tenant,
        entra: match &args.entra_config {
            Some(path) => {
                let text = std::fs::read(path)
                    .map_err(|e| format!("--entra-config {}: {e}", path.display()))?;
                serde_json::from_slice(&text)
                    .map_err(|e| format!("--entra-config {}: {e}", path.display()))?
            }
            None => Default::default(),
        },
        entra_token_lifetime: std::time::Duration::from_secs(
            args.entra_token_lifetime.clamp(1, 86_400),
        ),
        disable_local_auth: args.disable_local_auth,
        ..EmulatorConfig::default()
    };
    for quota in args.quotas {
        config.apply_quota(quota);
    }
    if let Some(ms) = args.latency_ms {
        config.faults.push(FaultRule {
            latency_ms: Some(ms),
            ..FaultRule::default()
        });
    }
    Ok(config)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A certificate name: an IP address, or a DNS name of letters, digits, '-' and '.'
/// (optionally one leading `*.` label).
fn parse_tls_san(value: &str) -> Result<String, String> {
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(value.to_string());
    }
    let host = value.strip_prefix("*.").unwrap_or(value);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if value.len() <= 253 && host.split('.').all(valid_label) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "'{value}' is neither an IP address nor a DNS name (letters, digits, '-', '.')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_tls_san;

    #[test]
    fn tls_san_accepts_ip_addresses_and_dns_names_only() {
        for ok in ["10.244.0.1", "::1", "acs.node.test", "*.svc.test", "node-1"] {
            assert_eq!(parse_tls_san(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "a..b", "-x.test", "bad name", "ünï.test", "a/b"] {
            let err = parse_tls_san(bad).unwrap_err();
            assert!(
                err.contains("neither an IP address nor a DNS name"),
                "{bad}: {err}"
            );
        }
    }
}
