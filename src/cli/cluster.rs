//! Finding the cluster as kubectl does: `--kubeconfig`, else `KUBECONFIG` (a list of
//! files is merged), else `~/.kube/config`, else the in-cluster service account;
//! `--context` picks a context; the namespace is `-n` or the context's.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::error::{CliError, chain};

/// Flags every command takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// A client, the namespace commands act in, and the server URL for error messages.
pub struct Connection {
    pub client: Client,
    pub namespace: String,
    pub server: String,
}

pub async fn connect(args: &ClusterArgs) -> Result<Connection, CliError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| {
                CliError::Config(format!("cannot read {}: {}", path.display(), chain(&e)))
            })?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| CliError::Config(format!("{}: {}", path.display(), chain(&e))))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| CliError::Config(chain(&e)))?,
        (None, None) => Config::infer().await.map_err(|e| {
            CliError::Config(format!(
                "no cluster configured ({}); set KUBECONFIG or pass --kubeconfig",
                chain(&e)
            ))
        })?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    let server = server.trim_end_matches('/').to_string();
    let client = Client::try_from(config).map_err(|e| {
        CliError::Config(format!("cannot build a client for {server}: {}", chain(&e)))
    })?;
    Ok(Connection {
        client,
        namespace,
        server,
    })
}
