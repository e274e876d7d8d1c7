//! The custom resource types (group `acs-operator.dev`; `v1alpha1`, the storage version,
//! and `v1beta1`, served with the same schema) and their CRDs.
//!
//! No I/O here: the types, defaults, admission rules and small pure helpers that resolve
//! defaults the schema cannot express (renewBefore = lifetime / 3, deletionPolicy by
//! adoption, secretName = metadata.name).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub mod conditions;
pub mod duration;
pub mod identity;
pub mod service;

pub use identity::{
    CommunicationIdentity, CommunicationIdentitySpec, CommunicationIdentityStatus, DeletionPolicy,
    MAX_ROLLOUT_RESTART_TARGETS, RESTARTED_AT_ANNOTATION, RolloutRestartTarget, RolloutTargetKind,
    Scope, SecretTemplate, ServiceKind, ServiceRef, SpecError,
};
pub use service::{
    AuthenticationMethod, AuthenticationStatus, ClusterCommunicationService,
    ClusterCommunicationServiceSpec, ClusterEntraId, CommunicationService,
    CommunicationServiceSpec, CommunicationServiceStatus, ENTRA_TOKEN_EXCHANGE_AUDIENCE, EntraId,
    NamespacedSecretKeyRef, NamespacedServiceAccountRef, Quota, SecretKeyRef, ServiceAccountRef,
    WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION, WORKLOAD_IDENTITY_TENANT_ID_ANNOTATION,
};

/// API group of every kind here.
pub const GROUP: &str = "acs-operator.dev";
/// The storage version: the one the Rust types are and the operator watches and writes.
/// Objects created as [`BETA_VERSION`] are stored (and seen by the operator) as this.
pub const VERSION: &str = "v1alpha1";
/// Served beside [`VERSION`] with the identical schema, so the API server converts
/// between them by rewriting `apiVersion` (no conversion webhook while they are equal).
pub const BETA_VERSION: &str = "v1beta1";
/// Every served version, storage version first.
pub const SERVED_VERSIONS: [&str; 2] = [VERSION, BETA_VERSION];

/// Set (to any new value, typically an RFC 3339 timestamp) to have a fresh token issued now.
pub const RENEW_REQUESTED_AT_ANNOTATION: &str = "acs-operator.dev/renew-requested-at";
/// Set (to any new value) to revoke every token of the user, then issue a fresh one.
pub const REVOKE_REQUESTED_AT_ANNOTATION: &str = "acs-operator.dev/revoke-requested-at";

/// Keys of the token Secret a `CommunicationIdentity` writes (documented interface:
/// workloads and the CLI read them).
pub mod secret_keys {
    /// The access token.
    pub const TOKEN: &str = "token";
    /// The token's expiry, RFC 3339.
    pub const EXPIRES_ON: &str = "expiresOn";
    /// The ACS user id (`8:acs:...`).
    pub const USER_ID: &str = "userId";
    /// The ACS endpoint the token is valid for.
    pub const ENDPOINT: &str = "endpoint";
    /// Every key, in the order above.
    pub const ALL: [&str; 4] = [TOKEN, EXPIRES_ON, USER_ID, ENDPOINT];
}

/// The CRDs to install, as `crdgen` writes them. Use this rather than `T::crd()`: it also
/// removes `nullable: true` that schemars adds to every `Option` field (see
/// [`strip_nullable`]).
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        CommunicationIdentity::crd(),
        CommunicationService::crd(),
        ClusterCommunicationService::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                strip_nullable(schema);
            }
        }
        serve_beta(crd);
    }
    crds
}

/// Adds [`BETA_VERSION`] as a copy of the storage version's entry (schema, printer
/// columns, subresources, CEL rules), served and not stored. kube's derive makes one
/// version per type; copying the generated entry keeps the two schemas equal by
/// construction, which is what lets the API server convert without a webhook.
fn serve_beta(crd: &mut CustomResourceDefinition) {
    let Some(storage) = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == VERSION)
        .cloned()
    else {
        return;
    };
    crd.spec.versions.retain(|v| v.name != BETA_VERSION);
    let mut beta = storage;
    beta.name = BETA_VERSION.to_string();
    beta.served = true;
    beta.storage = false;
    crd.spec.versions.push(beta);
}

/// Removes `nullable` from a schema tree.
///
/// `Option` fields are skipped when `None`, so `null` never needs to be stored. With
/// `nullable: true` the apiserver would keep an explicit `null` from a user's manifest,
/// skip the field's `default`, and hand `null` to the enum check and CEL rules (where
/// `duration(null)` fails with an unhelpful error). Without it, `null` is pruned and
/// the field behaves as absent, which is what a person writing `field: null` means.
pub fn strip_nullable(
    schema: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    schema.nullable = None;
    if let Some(props) = schema.properties.as_mut() {
        props.values_mut().for_each(strip_nullable);
    }
    if let Some(items) = schema.items.as_mut() {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray;
        match items {
            JSONSchemaPropsOrArray::Schema(s) => strip_nullable(s),
            JSONSchemaPropsOrArray::Schemas(v) => v.iter_mut().for_each(strip_nullable),
        }
    }
    if let Some(
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(s),
    ) = schema.additional_properties.as_mut()
    {
        strip_nullable(s);
    }
    for list in [
        schema.all_of.as_mut(),
        schema.any_of.as_mut(),
        schema.one_of.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        list.iter_mut().for_each(strip_nullable);
    }
}

/// File name `crdgen` uses for a CRD: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// The YAML written for a CRD. Deterministic, so committed files can be compared byte
/// for byte.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(crd)?;
    let mut out =
        String::from("# Generated by `cargo run --bin crdgen` from src/api/. Do not edit.\n");
    for line in body.lines() {
        out.push_str(&quote_date_default(line));
        out.push('\n');
    }
    Ok(out)
}

/// serde_yaml writes the string `2023-10-01` unquoted, which is a timestamp to YAML 1.1
/// readers (PyYAML, some Helm tooling) and would turn the `apiVersion` default into a date.
/// Only `default:` lines are touched, so text inside descriptions is never altered.
fn quote_date_default(line: &str) -> std::borrow::Cow<'_, str> {
    let trimmed = line.trim_start();
    if let Some(value) = trimmed.strip_prefix("default: ") {
        let b = value.as_bytes();
        let is_date = b.len() >= 10
            && b[..10].iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                _ => c.is_ascii_digit(),
            });
        if is_date && !value.contains(['\'', '"', '#', ':']) {
            let indent = &line[..line.len() - trimmed.len()];
            return format!("{indent}default: '{value}'").into();
        }
    }
    line.into()
}

#[cfg(test)]
mod schema_tests;
