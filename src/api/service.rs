//! `CommunicationService` (namespaced) and `ClusterCommunicationService` (cluster-scoped):
//! where the ACS credentials live, in the Issuer/ClusterIssuer pattern.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::duration::{DURATION_MAX_LENGTH, DURATION_PATTERN, DurationError, parse_duration};

/// Default `spec.apiVersion`: the ACS Identity REST version the operator is tested with.
pub const DEFAULT_API_VERSION: &str = "2023-10-01";
/// Default Secret key holding the connection string.
pub const DEFAULT_CONNECTION_STRING_KEY: &str = "connectionString";

/// A namespace's own ACS resource. Only identities in the same namespace can use it, and
/// the credentials Secret is read from that namespace too.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, schemars::JsonSchema)]
#[kube(
    group = "acs-operator.dev",
    version = "v1alpha1",
    kind = "CommunicationService",
    namespaced,
    category = "acs",
    status = "CommunicationServiceStatus",
    derive = "PartialEq",
    doc = "An Azure Communication Services resource (endpoint and credentials) that \
           CommunicationIdentities of the same namespace use.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.connectionStringSecretRef) != has(self.entraId)",
        "message": "set exactly one of spec.connectionStringSecretRef and spec.entraId"
    },
    {
        "rule": "has(self.entraId) == has(self.endpoint)",
        "message": "spec.endpoint is required with spec.entraId, and only with it (a connection string carries its own endpoint)"
    }
]))]
pub struct CommunicationServiceSpec {
    /// The Secret key (in this namespace) holding the connection string
    /// (`endpoint=https://...;accesskey=...`). Exactly one of this and `entraId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_string_secret_ref: Option<SecretKeyRef>,
    /// The ACS resource endpoint (`https://<name>.communication.azure.com`), with
    /// `entraId` only: what a connection string would carry. https only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.startsWith('https://')",
        "message": "spec.endpoint must be an https:// URL (Entra ID bearer tokens are never sent over plain http)"
    }]))]
    pub endpoint: Option<String>,
    /// Authenticate with Microsoft Entra ID workload identity instead of an access key.
    /// Exactly one of this and `connectionStringSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra_id: Option<EntraId>,
    /// ACS Identity REST `api-version` to speak.
    #[serde(default = "default_api_version")]
    #[schemars(pattern(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$"))]
    pub api_version: String,
    /// Client-side rate limits, so that the operator backs off before ACS answers 429.
    #[serde(default)]
    pub quota: Quota,
    /// Whether identities may adopt an existing ACS user (`spec.existingUserId`) through
    /// this service. Default `true`: the namespace that owns the key can reach every user
    /// of the resource anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_adoption: Option<bool>,
}

/// An ACS resource shared by several namespaces, chosen by `namespaceSelector`.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, schemars::JsonSchema)]
#[kube(
    group = "acs-operator.dev",
    version = "v1alpha1",
    kind = "ClusterCommunicationService",
    category = "acs",
    status = "CommunicationServiceStatus",
    derive = "PartialEq",
    doc = "A cluster-wide Azure Communication Services resource that CommunicationIdentities \
           of the namespaces selected by spec.namespaceSelector may use.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.connectionStringSecretRef) != has(self.entraId)",
        "message": "set exactly one of spec.connectionStringSecretRef and spec.entraId"
    },
    {
        "rule": "has(self.entraId) == has(self.endpoint)",
        "message": "spec.endpoint is required with spec.entraId, and only with it (a connection string carries its own endpoint)"
    }
]))]
pub struct ClusterCommunicationServiceSpec {
    /// The Secret key holding the connection string; the namespace is where the operator
    /// reads it (typically the operator's own namespace), never the identity's.
    /// Exactly one of this and `entraId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_string_secret_ref: Option<NamespacedSecretKeyRef>,
    /// The ACS resource endpoint (`https://<name>.communication.azure.com`), with
    /// `entraId` only: what a connection string would carry. https only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.startsWith('https://')",
        "message": "spec.endpoint must be an https:// URL (Entra ID bearer tokens are never sent over plain http)"
    }]))]
    pub endpoint: Option<String>,
    /// Authenticate with Microsoft Entra ID workload identity instead of an access key.
    /// Without `serviceAccountRef`, the operator's own projected token ("ambient").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra_id: Option<ClusterEntraId>,
    /// ACS Identity REST `api-version` to speak.
    #[serde(default = "default_api_version")]
    #[schemars(pattern(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$"))]
    pub api_version: String,
    /// Client-side rate limits, shared by every identity using this service.
    #[serde(default)]
    pub quota: Quota,
    /// Whether identities may adopt an existing ACS user (`spec.existingUserId`) through
    /// this service. Default `false`: ACS user ids are not secret, so on a shared resource
    /// adoption would let one namespace take over another namespace's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_adoption: Option<bool>,
    /// Namespaces whose identities may use this service. Absent selects no namespace
    /// (a shared credential is never exposed by omission); `{}` selects every namespace;
    /// otherwise the usual label-selector semantics on the Namespace's labels
    /// (`kubernetes.io/metadata.name` selects by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// The audience of every ServiceAccount token exchanged with Entra ID: the only value a
/// federated identity credential accepts.
pub const ENTRA_TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// ServiceAccount annotations the Azure Workload Identity webhook reads.
pub const WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
pub const WORKLOAD_IDENTITY_TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";

/// Microsoft Entra ID workload identity for a namespaced service.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntraId {
    /// Application (client) id of the app registration or user-assigned managed identity.
    /// Default: the ServiceAccount's `azure.workload.identity/client-id` annotation, else
    /// the operator's `AZURE_CLIENT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub client_id: Option<String>,
    /// Directory (tenant) id. Default: the ServiceAccount's
    /// `azure.workload.identity/tenant-id` annotation, else the operator's `AZURE_TENANT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub tenant_id: Option<String>,
    /// Entra authority, e.g. `https://login.microsoftonline.com`. Default: the operator's
    /// `AZURE_AUTHORITY_HOST`, else the public cloud's. https only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.startsWith('https://')",
        "message": "spec.entraId.authorityHost must be an https:// URL"
    }]))]
    pub authority_host: Option<String>,
    /// A ServiceAccount of this namespace whose token the operator exchanges (TokenRequest,
    /// audience `api://AzureADTokenExchange`). The namespace must grant the operator
    /// `create` on `serviceaccounts/token` for it (see docs/entra-id.md). Absent: the
    /// operator's own token, refused unless the operator runs with
    /// `--namespaced-service-ambient-credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_ref: Option<ServiceAccountRef>,
}

/// Microsoft Entra ID workload identity for a cluster service.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEntraId {
    /// As on `CommunicationService`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub client_id: Option<String>,
    /// As on `CommunicationService`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub tenant_id: Option<String>,
    /// As on `CommunicationService`. https only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.startsWith('https://')",
        "message": "spec.entraId.authorityHost must be an https:// URL"
    }]))]
    pub authority_host: Option<String>,
    /// A ServiceAccount in the operator's cluster resource namespace whose token the
    /// operator exchanges; elsewhere: `ServiceAccountNamespaceNotAllowed`. Absent: the
    /// operator's own projected token (ambient credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_ref: Option<NamespacedServiceAccountRef>,
}

/// A ServiceAccount in the service's own namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A ServiceAccount in a named namespace (cluster services only).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedServiceAccountRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
}

/// How a service authenticates to ACS, as shown in its status.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
pub enum AuthenticationMethod {
    /// HMAC with the access key of a connection string.
    ConnectionString,
    /// Entra ID with a ServiceAccount's token (TokenRequest).
    WorkloadIdentity,
    /// Entra ID with the operator's own projected token.
    Ambient,
}

/// What a service authenticates with; never the token.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationStatus {
    pub method: AuthenticationMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Until when the cached Entra access token is valid (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_on: Option<String>,
}

fn default_api_version() -> String {
    DEFAULT_API_VERSION.to_owned()
}

/// A key of a Secret in the service's own namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_connection_string_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A key of a Secret in a named namespace (cluster-scoped services only).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedSecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Key within the Secret.
    #[serde(default = "default_connection_string_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_connection_string_key() -> String {
    DEFAULT_CONNECTION_STRING_KEY.to_owned()
}

/// Client-side request budget per `window`, defaulting to ACS's published Identity limits.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// Window the counts apply to (Go-style duration), between `1s` and `1h`.
    #[serde(default = "default_window")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    // A window of 5124095576030431h passed the pattern and overflowed time arithmetic in
    // the client (issue 15); the code bounds it again for objects stored before this rule.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('1s') && duration(self) <= duration('1h')",
        "message": "spec.quota.window must be between 1s and 1h (ACS counts its limits in 30s windows)"
    }]))]
    pub window: String,
    /// User creations per window.
    #[serde(default = "default_creates")]
    #[schemars(range(min = 1, max = 1_000_000), extend("format" = "int32"))]
    pub creates: u32,
    /// Token issues per window.
    #[serde(default = "default_issues")]
    #[schemars(range(min = 1, max = 1_000_000), extend("format" = "int32"))]
    pub issues: u32,
    /// User deletions per window.
    #[serde(default = "default_deletes")]
    #[schemars(range(min = 1, max = 1_000_000), extend("format" = "int32"))]
    pub deletes: u32,
    /// Token revocations per window.
    #[serde(default = "default_revokes")]
    #[schemars(range(min = 1, max = 1_000_000), extend("format" = "int32"))]
    pub revokes: u32,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            window: default_window(),
            creates: default_creates(),
            issues: default_issues(),
            deletes: default_deletes(),
            revokes: default_revokes(),
        }
    }
}

impl Quota {
    /// The window, parsed.
    pub fn window(&self) -> Result<Duration, DurationError> {
        parse_duration(&self.window)
    }
}

fn default_window() -> String {
    "30s".to_owned()
}
fn default_creates() -> u32 {
    1000
}
fn default_issues() -> u32 {
    1000
}
fn default_deletes() -> u32 {
    500
}
fn default_revokes() -> u32 {
    500
}

/// Observed state of a service: whether its credentials resolve. Never holds them.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommunicationServiceStatus {
    /// The ACS endpoint parsed from the connection string (not secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Which credential kind is in use and, for Entra ID, until when its token is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationStatus>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: whether the credentials Secret resolves and the connection string parses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

impl CommunicationServiceSpec {
    /// `allowAdoption`, resolved: `true` unless set to `false`.
    pub fn allows_adoption(&self) -> bool {
        self.allow_adoption.unwrap_or(true)
    }
}

impl ClusterCommunicationServiceSpec {
    /// `allowAdoption`, resolved: `false` unless set to `true`.
    pub fn allows_adoption(&self) -> bool {
        self.allow_adoption.unwrap_or(false)
    }

    /// Whether identities in a namespace with these labels may use this service.
    /// Absent selector: none. Invalid selector (unknown operator): none, so a typo never
    /// widens access.
    pub fn selects_namespace(
        &self,
        namespace_labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        let Some(selector) = &self.namespace_selector else {
            return false;
        };
        if let Some(labels) = &selector.match_labels {
            for (k, v) in labels {
                if namespace_labels.get(k) != Some(v) {
                    return false;
                }
            }
        }
        for expr in selector.match_expressions.iter().flatten() {
            let value = namespace_labels.get(&expr.key);
            let values = expr.values.as_deref().unwrap_or_default();
            let ok = match expr.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    fn spec(selector: Option<LabelSelector>) -> ClusterCommunicationServiceSpec {
        ClusterCommunicationServiceSpec {
            connection_string_secret_ref: Some(NamespacedSecretKeyRef {
                name: "acs".into(),
                namespace: "acs-system".into(),
                key: DEFAULT_CONNECTION_STRING_KEY.into(),
            }),
            endpoint: None,
            entra_id: None,
            api_version: DEFAULT_API_VERSION.into(),
            quota: Quota::default(),
            namespace_selector: selector,
            allow_adoption: None,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn absent_selector_selects_nothing_and_empty_selects_all() {
        assert!(!spec(None).selects_namespace(&labels(&[])));
        assert!(spec(Some(LabelSelector::default())).selects_namespace(&labels(&[])));
    }

    #[test]
    fn selector_semantics() {
        let s = spec(Some(LabelSelector {
            match_labels: Some(labels(&[("team", "a")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "NotIn".into(),
                values: Some(vec!["prod".into()]),
            }]),
        }));
        assert!(s.selects_namespace(&labels(&[("team", "a")])));
        assert!(s.selects_namespace(&labels(&[("team", "a"), ("env", "dev")])));
        assert!(!s.selects_namespace(&labels(&[("team", "a"), ("env", "prod")])));
        assert!(!s.selects_namespace(&labels(&[("team", "b")])));
        let bad = spec(Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "Typo".into(),
                values: None,
            }]),
        }));
        assert!(!bad.selects_namespace(&labels(&[("env", "x")])));
    }

    #[test]
    fn adoption_is_allowed_by_default_only_on_namespaced_services() {
        let mut cluster = spec(None);
        assert!(!cluster.allows_adoption());
        cluster.allow_adoption = Some(true);
        assert!(cluster.allows_adoption());
        let mut ns: CommunicationServiceSpec = serde_json::from_value(serde_json::json!({
            "connectionStringSecretRef": {"name": "acs"}
        }))
        .expect("minimal spec deserializes");
        assert!(ns.allows_adoption());
        ns.allow_adoption = Some(false);
        assert!(!ns.allows_adoption());
    }

    #[test]
    fn quota_defaults_are_acs_limits() {
        let q: Quota = serde_json::from_str("{}").expect("empty quota deserializes");
        assert_eq!(
            (q.creates, q.issues, q.deletes, q.revokes),
            (1000, 1000, 500, 500)
        );
        assert_eq!(q.window(), Ok(Duration::from_secs(30)));
    }
}
