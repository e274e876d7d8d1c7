//! Where the operator's Entra ID assertions come from: a TokenRequest for a tenant's
//! ServiceAccount (audience `api://AzureADTokenExchange`, 10 minutes, one per exchange,
//! never stored or logged), or the operator's own projected token file ("ambient").
//! The client and tenant ids come from the spec, else the ServiceAccount's workload
//! identity annotations, else the operator's `AZURE_*` environment.

use std::path::PathBuf;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::acs::entra::{
    Assertion, AssertionSource, BoxFuture, DEFAULT_AUTHORITY_HOST, Secret, SourceError,
};
use crate::api::conditions::reasons;
use crate::api::{
    ENTRA_TOKEN_EXCHANGE_AUDIENCE, WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION,
    WORKLOAD_IDENTITY_TENANT_ID_ANNOTATION,
};

use super::resolver::{EntraRef, TokenSource};

/// The TokenRequest lifetime: the API server's minimum, as cert-manager asks.
pub const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 600;
/// No projected token file is larger.
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;
/// The Role a namespace creates so that the operator may exchange its ServiceAccount's
/// tokens (docs/entra-id.md shows it).
pub const TOKEN_REQUEST_ROLE: &str = "acs-identity-operator-token-request";

/// The operator's Entra settings: its flag and its environment.
#[derive(Debug, Clone, Default)]
pub struct EntraSettings {
    /// `--namespaced-service-ambient-credentials`.
    pub namespaced_ambient: bool,
    /// `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`.
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub authority_host: Option<String>,
    /// `AZURE_FEDERATED_TOKEN_FILE`: the ambient token.
    pub federated_token_file: Option<PathBuf>,
    /// The operator's own ServiceAccount (`namespace/name`), named in the Role advice.
    pub operator_service_account: Option<String>,
}

impl EntraSettings {
    /// From the operator's environment, as the Azure Workload Identity webhook sets it.
    pub fn from_env(namespaced_ambient: bool) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        EntraSettings {
            namespaced_ambient,
            client_id: var("AZURE_CLIENT_ID"),
            tenant_id: var("AZURE_TENANT_ID"),
            authority_host: var("AZURE_AUTHORITY_HOST"),
            federated_token_file: var("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
            operator_service_account: None,
        }
    }
}

/// Who to ask: client id, tenant id and authority host, from the spec, else the
/// ServiceAccount's annotations (`None` for ambient), else the environment.
pub fn resolve_ids(
    entra: &EntraRef,
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    env: &EntraSettings,
) -> Result<(String, String, String), String> {
    let annotation = |k: &str| {
        annotations
            .and_then(|a| a.get(k))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let from = match &entra.source {
        TokenSource::ServiceAccount { namespace, name } => {
            format!("the ServiceAccount `{name}` in namespace `{namespace}` (annotation")
        }
        TokenSource::Ambient => "the operator's environment (".to_string(),
    };
    let client_id = entra
        .client_id
        .clone()
        .or_else(|| annotation(WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION))
        .or_else(|| env.client_id.clone())
        .ok_or_else(|| {
            format!(
                "no client id: set spec.entraId.clientId, or {from} {WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION}) or the operator's AZURE_CLIENT_ID"
            )
        })?;
    let tenant_id = entra
        .tenant_id
        .clone()
        .or_else(|| annotation(WORKLOAD_IDENTITY_TENANT_ID_ANNOTATION))
        .or_else(|| env.tenant_id.clone())
        .ok_or_else(|| {
            format!(
                "no tenant id: set spec.entraId.tenantId, or {from} {WORKLOAD_IDENTITY_TENANT_ID_ANNOTATION}) or the operator's AZURE_TENANT_ID"
            )
        })?;
    let authority_host = entra
        .authority_host
        .clone()
        .or_else(|| env.authority_host.clone())
        .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_string());
    Ok((client_id, tenant_id, authority_host))
}

/// What to do when the operator may not create the ServiceAccount's token.
pub fn forbidden_message(namespace: &str, name: &str, operator: Option<&str>) -> String {
    let (op_ns, op_name) = operator
        .and_then(|o| o.split_once('/'))
        .unwrap_or(("OPERATOR_NAMESPACE", "acs-identity-operator"));
    format!(
        "the operator may not create tokens for ServiceAccount `{name}` in namespace `{namespace}`: create Role \
         `{TOKEN_REQUEST_ROLE}` in `{namespace}` granting `create` on `serviceaccounts/token` and `get` on \
         `serviceaccounts` with resourceNames [{name}], and a RoleBinding of it to ServiceAccount `{op_name}` in \
         namespace `{op_ns}` (docs/entra-id.md has the manifest)"
    )
}

/// One credential's assertions.
pub struct KubeAssertionSource {
    pub kube: Client,
    pub entra: EntraRef,
    pub settings: EntraSettings,
}

impl AssertionSource for KubeAssertionSource {
    fn assertion(&self) -> BoxFuture<'_, Result<Assertion, SourceError>> {
        Box::pin(self.fetch())
    }
}

fn kube_status(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

impl KubeAssertionSource {
    async fn fetch(&self) -> Result<Assertion, SourceError> {
        let incomplete = |message: String| SourceError {
            reason: reasons::ENTRA_CONFIG_INCOMPLETE,
            message,
            transient: false,
        };
        match &self.entra.source {
            TokenSource::Ambient => {
                let (client_id, tenant_id, authority_host) =
                    resolve_ids(&self.entra, None, &self.settings).map_err(incomplete)?;
                let path = self.settings.federated_token_file.clone().ok_or_else(|| {
                    incomplete(
                        "ambient credentials: the operator has no AZURE_FEDERATED_TOKEN_FILE (install the chart with \
                         workloadIdentity.enabled=true, or name a ServiceAccount in spec.entraId.serviceAccountRef)"
                            .into(),
                    )
                })?;
                let jwt = read_token_file(&path).await.map_err(incomplete)?;
                Ok(Assertion {
                    jwt,
                    client_id,
                    tenant_id,
                    authority_host,
                })
            }
            TokenSource::ServiceAccount { namespace, name } => {
                let api: Api<ServiceAccount> = Api::namespaced(self.kube.clone(), namespace);
                let forbidden = || SourceError {
                    reason: reasons::SERVICE_ACCOUNT_TOKEN_FORBIDDEN,
                    message: forbidden_message(
                        namespace,
                        name,
                        self.settings.operator_service_account.as_deref(),
                    ),
                    transient: false,
                };
                let kube_error = |e: kube::Error| match kube_status(&e) {
                    Some(403) => forbidden(),
                    Some(404) => SourceError {
                        reason: reasons::SERVICE_ACCOUNT_NOT_FOUND,
                        message: format!(
                            "ServiceAccount `{name}` in namespace `{namespace}` does not exist"
                        ),
                        transient: false,
                    },
                    _ => SourceError {
                        reason: reasons::SERVICE_NOT_READY,
                        message: format!(
                            "requesting a token for ServiceAccount `{name}` in namespace `{namespace}`: {e}"
                        ),
                        transient: true,
                    },
                };
                // The annotations matter only where the spec leaves an id open.
                let annotations =
                    if self.entra.client_id.is_none() || self.entra.tenant_id.is_none() {
                        let sa = api.get(name).await.map_err(kube_error)?;
                        sa.metadata.annotations
                    } else {
                        None
                    };
                let (client_id, tenant_id, authority_host) =
                    resolve_ids(&self.entra, annotations.as_ref(), &self.settings)
                        .map_err(incomplete)?;
                let request = TokenRequest {
                    spec: Some(TokenRequestSpec {
                        audiences: Some(vec![ENTRA_TOKEN_EXCHANGE_AUDIENCE.to_string()]),
                        expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
                        bound_object_ref: None,
                    }),
                    ..TokenRequest::default()
                };
                let answer = api
                    .create_token_request(name, &PostParams::default(), &request)
                    .await
                    .map_err(kube_error)?;
                let jwt = answer
                    .status
                    .and_then(|s| s.token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| SourceError {
                        reason: reasons::SERVICE_NOT_READY,
                        message: format!(
                            "the API server answered the TokenRequest for `{namespace}/{name}` without a token"
                        ),
                        transient: true,
                    })?;
                Ok(Assertion {
                    jwt: Secret::new(jwt),
                    client_id,
                    tenant_id,
                    authority_host,
                })
            }
        }
    }
}

async fn read_token_file(path: &std::path::Path) -> Result<Secret, String> {
    let shown = path.display();
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("ambient credentials: cannot read {shown}: {}", e.kind()))?;
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "ambient credentials: {shown} is larger than any ServiceAccount token"
        ));
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("ambient credentials: cannot read {shown}: {}", e.kind()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("ambient credentials: {shown} is empty"));
    }
    Ok(Secret::new(t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entra(source: TokenSource, client: Option<&str>, tenant: Option<&str>) -> EntraRef {
        EntraRef {
            endpoint: "https://acs.example".into(),
            client_id: client.map(Into::into),
            tenant_id: tenant.map(Into::into),
            authority_host: None,
            source,
        }
    }

    fn sa() -> TokenSource {
        TokenSource::ServiceAccount {
            namespace: "team-a".into(),
            name: "acs-client".into(),
        }
    }

    #[test]
    fn ids_come_from_spec_then_annotations_then_environment() {
        let ann: BTreeMap<String, String> = [
            (
                WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION.to_string(),
                "ann-client".to_string(),
            ),
            (
                WORKLOAD_IDENTITY_TENANT_ID_ANNOTATION.to_string(),
                "ann-tenant".to_string(),
            ),
        ]
        .into();
        let env = EntraSettings {
            client_id: Some("env-client".into()),
            tenant_id: Some("env-tenant".into()),
            authority_host: Some("https://login.env".into()),
            ..EntraSettings::default()
        };
        let none = EntraSettings::default();
        type Row<'a> = (
            EntraRef,
            Option<&'a BTreeMap<String, String>>,
            &'a EntraSettings,
            Result<(&'a str, &'a str, &'a str), &'a str>,
        );
        let rows: Vec<Row<'_>> = vec![
            (
                entra(sa(), Some("c"), Some("t")),
                Some(&ann),
                &env,
                Ok(("c", "t", "https://login.env")),
            ),
            (
                entra(sa(), None, None),
                Some(&ann),
                &env,
                Ok(("ann-client", "ann-tenant", "https://login.env")),
            ),
            (
                entra(sa(), None, None),
                None,
                &env,
                Ok(("env-client", "env-tenant", "https://login.env")),
            ),
            (
                entra(sa(), None, Some("t")),
                Some(&ann),
                &none,
                Ok(("ann-client", "t", DEFAULT_AUTHORITY_HOST)),
            ),
            (
                entra(TokenSource::Ambient, None, None),
                None,
                &env,
                Ok(("env-client", "env-tenant", "https://login.env")),
            ),
            (entra(sa(), None, None), None, &none, Err("no client id")),
            (
                entra(TokenSource::Ambient, Some("c"), None),
                None,
                &none,
                Err("AZURE_TENANT_ID"),
            ),
        ];
        for (i, (e, a, env, want)) in rows.into_iter().enumerate() {
            let got = resolve_ids(&e, a, env);
            match want {
                Ok((c, t, h)) => assert_eq!(got, Ok((c.into(), t.into(), h.into())), "row {i}"),
                Err(needle) => assert!(got.unwrap_err().contains(needle), "row {i}"),
            }
        }
    }

    #[test]
    fn the_forbidden_message_names_the_role_and_the_binding() {
        let m = forbidden_message(
            "team-a",
            "acs-client",
            Some("acs-system/acs-identity-operator"),
        );
        for needle in [
            TOKEN_REQUEST_ROLE,
            "serviceaccounts/token",
            "acs-client",
            "team-a",
            "acs-system",
            "RoleBinding",
        ] {
            assert!(m.contains(needle), "{needle}: {m}");
        }
    }
}
