//! `CommunicationIdentity`: one ACS user and an always-valid access token in a Secret.

use std::{collections::BTreeMap, collections::BTreeSet, fmt, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::duration::{DURATION_MAX_LENGTH, DURATION_PATTERN, DurationError, parse_duration};

/// Default `spec.tokenLifetime`: the longest ACS grants, so renewals are rare.
pub const DEFAULT_TOKEN_LIFETIME: &str = "24h";
/// Shortest token lifetime ACS accepts.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Longest token lifetime ACS accepts.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// The token interval floor: no identity gets more than one token per this interval (the
/// default of the operator's `--min-token-interval`). Admission requires
/// `tokenLifetime - renewBefore` to leave at least this much between renewals.
pub const DEFAULT_MIN_TOKEN_INTERVAL: Duration = Duration::from_secs(15);
/// Longest `metadata.name` of a `CommunicationIdentity`: the name is a label value on the
/// token Secret (`acs-operator.dev/identity`), and label values hold at most 63 characters.
pub const MAX_IDENTITY_NAME_LENGTH: usize = 63;

/// Desired state of a `CommunicationIdentity`: which ACS resource, which scopes, how long
/// tokens live and which Secret receives them.
//
// What OpenAPI cannot express is checked by CEL rules here, so `kubectl apply` refuses bad
// input with a readable message instead of the controller failing later.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "acs-operator.dev",
    version = "v1alpha1",
    kind = "CommunicationIdentity",
    namespaced,
    shortname = "acsid",
    category = "acs",
    status = "CommunicationIdentityStatus",
    derive = "PartialEq",
    doc = "An Azure Communication Services user and an always-valid access token for it, \
           kept in a Secret of the same namespace.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "User", type_ = "string", json_path = ".status.userId"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.tokenExpiresOn"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // secretName defaults to metadata.name, so immutability must compare the effective
    // names; only a root-level rule can see metadata.name. This still lets a user write
    // down the defaulted name explicitly (or drop it again) without a change of Secret.
    validation = Rule::new(
        "(has(self.spec.secretName) ? self.spec.secretName : self.metadata.name) == \
         (has(oldSelf.spec.secretName) ? oldSelf.spec.secretName : oldSelf.metadata.name)"
    )
    .message("spec.secretName is immutable (it defaults to metadata.name); create a new CommunicationIdentity to use another Secret")
    .field_path(".spec.secretName")
    .reason(Reason::FieldValueForbidden),
    // Everything derived from the name must stay valid: the Secret's
    // `acs-operator.dev/identity` label value (63 at most), the default secretName and
    // the event names (`<name>.<suffix>`, far below 253 with this bound).
    validation = Rule::new("size(self.metadata.name) <= 63")
    .message("metadata.name must be at most 63 characters: it becomes the value of the token Secret's acs-operator.dev/identity label, which Kubernetes limits to 63")
    .reason(Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new(
        "!has(self.renewBefore) || duration(self.renewBefore) < duration(self.tokenLifetime)"
    )
    .message("renewBefore must be shorter than tokenLifetime (leave it unset to renew after two thirds of the lifetime)")
    .field_path(".renewBefore"),
    // Only where the rule above holds, so one mistake gets one message. 15s is the
    // default --min-token-interval: a renewal sooner than that would be held back anyway.
    validation = Rule::new(
        "!has(self.renewBefore) || duration(self.renewBefore) >= duration(self.tokenLifetime) || duration(self.tokenLifetime) - duration(self.renewBefore) >= duration('15s')"
    )
    .message("renewBefore must leave at least 15s between renewals (tokenLifetime - renewBefore >= 15s, the operator's minimum token interval); choose a shorter renewBefore")
    .field_path(".renewBefore"),
    // A user lives on one ACS resource: switching services would ask another resource
    // (or another key) for this user's tokens. Absent -> set and set -> absent are
    // changes too, since absent means the operator's default service.
    validation = Rule::new(
        "has(self.serviceRef) == has(oldSelf.serviceRef) && (!has(self.serviceRef) || self.serviceRef == oldSelf.serviceRef)"
    )
    .message("serviceRef is immutable: the ACS user of this identity lives on the service's ACS resource; create a new CommunicationIdentity to use another service")
    .field_path(".serviceRef")
    .reason(Reason::FieldValueForbidden),
    validation = Rule::new(
        "has(self.existingUserId) == has(oldSelf.existingUserId) && (!has(self.existingUserId) || self.existingUserId == oldSelf.existingUserId)"
    )
    // Set at creation only: adding it later would leave the user the operator created
    // behind (and switch the deletion default to Retain).
    .message("existingUserId is immutable: it can only be set when the CommunicationIdentity is created; create a new one to adopt another ACS user")
    .field_path(".existingUserId")
    .reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct CommunicationIdentitySpec {
    /// The `CommunicationService` (same namespace) or `ClusterCommunicationService` whose
    /// ACS resource holds this user. When absent the operator's default service is used.
    /// Immutable: a user lives on one ACS resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ref: Option<ServiceRef>,

    /// Scopes granted to the token: a non-empty set of `chat`, `voip`, `chat.join`,
    /// `chat.join.limited`, `voip.join`.
    #[schemars(length(min = 1, max = 5))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub scopes: BTreeSet<Scope>,

    /// Lifetime requested for each token, a Go-style duration between `60m` and `24h`
    /// (ACS's range). ACS may grant less; renewal follows the real expiry.
    #[serde(default = "default_token_lifetime")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h') && duration(self) <= duration('24h')")
        .message("tokenLifetime must be between 60m and 24h, the range Azure Communication Services accepts"))]
    pub token_lifetime: String,

    /// How long before expiry a new token is issued (default: one third of
    /// `tokenLifetime`). Must be at least `5m` and leave at least `15s` of the
    /// `tokenLifetime` between renewals. When ACS grants
    /// a shorter token than requested, renewal happens at two thirds of its real lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('5m')")
        // cert-manager's minimum too: below it a renewal that fails once leaves no time
        // to retry before the token expires.
        .message("renewBefore must be at least 5m"))]
    pub renew_before: Option<String>,

    /// Name of the Secret that receives the token (keys `token`, `expiresOn`, `userId`,
    /// `endpoint`). Defaults to `metadata.name`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: Option<String>,

    /// Extra labels and annotations for the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,

    /// Adopt an ACS user that already exists instead of creating one. Can only be set at creation, never added, changed or removed later.
    /// Adopted users default to `deletionPolicy: Retain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub existing_user_id: Option<String>,

    /// What happens to the ACS user when this object is deleted: `Delete` removes the user
    /// (and with it every token); `Retain` revokes its tokens and keeps the user. Default:
    /// `Delete` for users the operator created, `Retain` for adopted ones
    /// (`existingUserId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// Workloads of this namespace restarted (as `kubectl rollout restart` does) each time
    /// the token in the Secret changes, for applications that read the token once (an
    /// environment variable, a cached file). At most 16; same namespace only. The operator
    /// patches `spec.template.metadata.annotations["acs-operator.dev/restarted-at"]` with
    /// the new token's issue time; it needs the chart's `rolloutRestart.enabled=true`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ROLLOUT_RESTART_TARGETS))]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["kind", "name"]
    ))]
    pub rollout_restart_targets: Vec<RolloutRestartTarget>,
}

/// Most `spec.rolloutRestartTargets` per identity: one token change restarts at most this
/// many workloads.
pub const MAX_ROLLOUT_RESTART_TARGETS: usize = 16;

/// Annotation on a target's pod template whose change restarts it: its value is the
/// issue time (RFC 3339) of the token rolled out, so patching twice for one token changes
/// nothing.
pub const RESTARTED_AT_ANNOTATION: &str = "acs-operator.dev/restarted-at";

/// A workload in the identity's namespace to restart when the token changes.
#[derive(
    Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartTarget {
    /// `Deployment`, `StatefulSet` or `DaemonSet` (group `apps`).
    pub kind: RolloutTargetKind,
    /// Name of the workload in the identity's namespace.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// Kind of a rollout restart target: the `apps/v1` workloads with a pod template that
/// `kubectl rollout restart` supports.
#[derive(
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
pub enum RolloutTargetKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl RolloutTargetKind {
    /// The resource's plural in `apps/v1`.
    pub fn plural(self) -> &'static str {
        match self {
            RolloutTargetKind::Deployment => "deployments",
            RolloutTargetKind::StatefulSet => "statefulsets",
            RolloutTargetKind::DaemonSet => "daemonsets",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutTargetKind::Deployment => "Deployment",
            RolloutTargetKind::StatefulSet => "StatefulSet",
            RolloutTargetKind::DaemonSet => "DaemonSet",
        }
    }
}

impl fmt::Display for RolloutRestartTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

fn default_token_lifetime() -> String {
    DEFAULT_TOKEN_LIFETIME.to_owned()
}

/// Which service holds the ACS resource.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// `CommunicationService` (same namespace, the default) or `ClusterCommunicationService`.
    #[serde(default)]
    pub kind: ServiceKind,
    /// Name of the service object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kind of a service reference.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum ServiceKind {
    #[default]
    CommunicationService,
    ClusterCommunicationService,
}

/// An ACS token scope.
#[derive(
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
pub enum Scope {
    #[serde(rename = "chat")]
    Chat,
    #[serde(rename = "voip")]
    Voip,
    #[serde(rename = "chat.join")]
    ChatJoin,
    #[serde(rename = "chat.join.limited")]
    ChatJoinLimited,
    #[serde(rename = "voip.join")]
    VoipJoin,
}

impl Scope {
    /// Every scope, in schema order.
    pub const ALL: [Scope; 5] = [
        Scope::Chat,
        Scope::Voip,
        Scope::ChatJoin,
        Scope::ChatJoinLimited,
        Scope::VoipJoin,
    ];

    /// The wire name ACS uses (same as in the CRD).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Chat => "chat",
            Scope::Voip => "voip",
            Scope::ChatJoin => "chat.join",
            Scope::ChatJoinLimited => "chat.join.limited",
            Scope::VoipJoin => "voip.join",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to the ACS user when the identity is deleted.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the ACS user (revokes all its tokens).
    Delete,
    /// Keep the ACS user; revoke its tokens.
    Retain,
}

/// Metadata copied onto the token Secret.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Labels added to the Secret (the operator's own labels win on conflict); at most 32,
    /// values at most 63 characters as Kubernetes allows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    // Bounded so the operator's Secret cache cannot be grown without limit by one tenant.
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret; at most 32, values at most 4096 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 4096}))]
    pub annotations: BTreeMap<String, String>,
}

/// Observed state of a `CommunicationIdentity`. Never holds the token itself.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommunicationIdentityStatus {
    /// The ACS user id (`8:acs:...`), recorded as soon as the user exists so a crash
    /// cannot leak it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The ACS endpoint the user lives on; tokens for this user are only requested from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_endpoint: Option<String>,
    /// Expiry of the token currently in the Secret, as ACS returned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_on: Option<Time>,
    /// When the operator will issue the next token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// When the current token was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_token_issued_at: Option<Time>,
    /// When the user's tokens were last revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_revoked_at: Option<Time>,
    /// Scopes of the token currently in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub token_scopes: Option<BTreeSet<Scope>>,
    /// `spec.tokenLifetime` as it was when the current token was requested; a change of
    /// the spec value triggers a new token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_lifetime: Option<String>,
    /// Name of the Secret written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Value of the `acs-operator.dev/renew-requested-at` annotation last acted on; a
    /// different annotation value is a new request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renew_request_handled: Option<String>,
    /// Value of the `acs-operator.dev/revoke-requested-at` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_revoke_request_handled: Option<String>,
    /// `lastTokenIssuedAt` (RFC 3339) of the token last rolled out to
    /// `spec.rolloutRestartTargets`: a different `lastTokenIssuedAt` restarts them once.
    /// Recorded without a restart for an identity's first token and when targets are
    /// first set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_out_token_issued_at: Option<String>,
    /// When the targets were last restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout_restart_at: Option<Time>,
    /// `Ready`; `RenewalFailing` (True while renewal fails but the previous token is still
    /// valid); `SecretConflict` (True when a Secret of that name exists that this identity
    /// does not own; it is never overwritten).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

/// A spec value the controller cannot use (only possible when admission was bypassed,
/// e.g. objects stored before the CRD gained a rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.tokenLifetime: {0}")]
    TokenLifetime(DurationError),
    #[error("spec.tokenLifetime `{0}` is outside the 60m..24h range ACS accepts")]
    TokenLifetimeOutOfRange(String),
    #[error("spec.renewBefore: {0}")]
    RenewBefore(DurationError),
    #[error(
        "spec.renewBefore `{renew_before}` must be shorter than spec.tokenLifetime `{lifetime}`"
    )]
    RenewBeforeNotShorter {
        renew_before: String,
        lifetime: String,
    },
    #[error(
        "spec.renewBefore `{renew_before}` leaves less than 15s of spec.tokenLifetime `{lifetime}` between renewals"
    )]
    RenewBeforeLeavesNoInterval {
        renew_before: String,
        lifetime: String,
    },
}

impl CommunicationIdentitySpec {
    /// The requested token lifetime, checked against ACS's range.
    pub fn token_lifetime(&self) -> Result<Duration, SpecError> {
        let d = parse_duration(&self.token_lifetime).map_err(SpecError::TokenLifetime)?;
        if !(MIN_TOKEN_LIFETIME..=MAX_TOKEN_LIFETIME).contains(&d) {
            return Err(SpecError::TokenLifetimeOutOfRange(
                self.token_lifetime.clone(),
            ));
        }
        Ok(d)
    }

    /// `renewBefore`, resolved: the spec value, or one third of the lifetime.
    pub fn renew_before(&self) -> Result<Duration, SpecError> {
        let lifetime = self.token_lifetime()?;
        let Some(raw) = &self.renew_before else {
            return Ok(lifetime / 3);
        };
        let d = parse_duration(raw).map_err(SpecError::RenewBefore)?;
        if d >= lifetime {
            return Err(SpecError::RenewBeforeNotShorter {
                renew_before: raw.clone(),
                lifetime: self.token_lifetime.clone(),
            });
        }
        if lifetime - d < DEFAULT_MIN_TOKEN_INTERVAL {
            return Err(SpecError::RenewBeforeLeavesNoInterval {
                renew_before: raw.clone(),
                lifetime: self.token_lifetime.clone(),
            });
        }
        Ok(d)
    }

    /// `deletionPolicy`, resolved: adopted users are retained unless told otherwise,
    /// because the operator did not create them and others may still use them.
    pub fn effective_deletion_policy(&self) -> DeletionPolicy {
        match (self.deletion_policy, &self.existing_user_id) {
            (Some(p), _) => p,
            (None, Some(_)) => DeletionPolicy::Retain,
            (None, None) => DeletionPolicy::Delete,
        }
    }
}

impl CommunicationIdentity {
    /// The Secret name in effect: `spec.secretName` or `metadata.name`.
    pub fn effective_secret_name(&self) -> Option<&str> {
        self.spec
            .secret_name
            .as_deref()
            .or(self.metadata.name.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(lifetime: &str, renew_before: Option<&str>) -> CommunicationIdentitySpec {
        CommunicationIdentitySpec {
            service_ref: None,
            scopes: [Scope::Chat].into(),
            token_lifetime: lifetime.into(),
            renew_before: renew_before.map(Into::into),
            secret_name: None,
            secret_template: None,
            existing_user_id: None,
            deletion_policy: None,
            rollout_restart_targets: vec![],
        }
    }

    #[test]
    fn renew_before_defaults_to_a_third() {
        assert_eq!(
            spec("24h", None).renew_before(),
            Ok(Duration::from_secs(8 * 3600))
        );
        assert_eq!(
            spec("90m", None).renew_before(),
            Ok(Duration::from_secs(30 * 60))
        );
    }

    #[test]
    fn lifetime_and_renew_before_are_checked() {
        assert!(matches!(
            spec("30m", None).token_lifetime(),
            Err(SpecError::TokenLifetimeOutOfRange(_))
        ));
        assert!(matches!(
            spec("25h", None).token_lifetime(),
            Err(SpecError::TokenLifetimeOutOfRange(_))
        ));
        assert!(matches!(
            spec("1d", None).token_lifetime(),
            Err(SpecError::TokenLifetime(_))
        ));
        assert!(matches!(
            spec("1h", Some("1h")).renew_before(),
            Err(SpecError::RenewBeforeNotShorter { .. })
        ));
        assert_eq!(
            spec("1h", Some("59m")).renew_before(),
            Ok(Duration::from_secs(59 * 60))
        );
        assert_eq!(
            spec("1h", Some("59m45s")).renew_before(),
            Ok(Duration::from_secs(59 * 60 + 45))
        );
        assert!(matches!(
            spec("1h", Some("59m46s")).renew_before(),
            Err(SpecError::RenewBeforeLeavesNoInterval { .. })
        ));
    }

    #[test]
    fn deletion_policy_depends_on_adoption() {
        let mut s = spec("24h", None);
        assert_eq!(s.effective_deletion_policy(), DeletionPolicy::Delete);
        s.existing_user_id = Some("8:acs:x".into());
        assert_eq!(s.effective_deletion_policy(), DeletionPolicy::Retain);
        s.deletion_policy = Some(DeletionPolicy::Delete);
        assert_eq!(s.effective_deletion_policy(), DeletionPolicy::Delete);
    }

    #[test]
    fn scopes_round_trip_with_wire_names() {
        for scope in Scope::ALL {
            let json = serde_json::to_value(scope).expect("serializes");
            assert_eq!(json, serde_json::Value::String(scope.as_str().into()));
        }
    }
}
