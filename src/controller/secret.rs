//! The token Secret: what it holds, how it is built, and whether the one in the cluster
//! is still what the operator wrote.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::{CommunicationIdentity, CommunicationIdentityStatus, secret_keys};

/// Label on every Secret the operator writes; its watch selects on it, so the operator
/// never caches unrelated Secrets.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "acs-identity-operator";
/// Name of the owning identity, for `kubectl get secret -l`.
pub const IDENTITY_LABEL: &str = "acs-operator.dev/identity";
/// SHA-256 of the token, so an edit of the `token` key is noticed without keeping the
/// token anywhere but the Secret.
pub const TOKEN_HASH_ANNOTATION: &str = "acs-operator.dev/token-sha256";
/// SHA-256 of the `secretTemplate` the Secret was written with: a template edit is seen
/// from the cached metadata and re-applied without waiting for the next token.
pub const TEMPLATE_HASH_ANNOTATION: &str = "acs-operator.dev/template-sha256";
/// When the token was requested: the token floor survives a restart even when status
/// was not written.
pub const ISSUED_AT_ANNOTATION: &str = "acs-operator.dev/issued-at";
/// HMAC (with the ACS resource's access key) binding `userId` to the identity's UID: with
/// it the Secret is the durable record of a user the operator created, so a status write
/// that failed after a create never leads to a second user (see
/// [`crate::acs::AcsClient::user_record`]).
pub const USER_RECORD_ANNOTATION: &str = "acs-operator.dev/user-record";

/// What goes into the Secret.
pub struct TokenSecret<'a> {
    pub name: &'a str,
    pub token: &'a str,
    pub expires_on: &'a str,
    pub user_id: &'a str,
    pub endpoint: &'a str,
    pub issued_at: &'a str,
    /// The user-record mark, when known.
    pub user_record: Option<&'a str>,
}

/// Hash of the identity's `secretTemplate` (empty template included).
pub fn template_hash(identity: &CommunicationIdentity) -> String {
    let template = identity.spec.secret_template.clone().unwrap_or_default();
    let json = serde_json::to_vec(&template).unwrap_or_default();
    format!("{:x}", Sha256::digest(json))
}

pub fn token_hash(token: &[u8]) -> String {
    format!("{:x}", Sha256::digest(token))
}

/// The Secret as the operator wants it, owned by `identity` through a controller
/// ownerReference so it is garbage-collected with it.
pub fn build(identity: &CommunicationIdentity, s: &TokenSecret<'_>) -> Secret {
    let template = identity.spec.secret_template.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = template.labels;
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels.insert(IDENTITY_LABEL.into(), identity.name_any());
    let mut annotations: BTreeMap<String, String> = template.annotations;
    annotations.insert(TOKEN_HASH_ANNOTATION.into(), token_hash(s.token.as_bytes()));
    annotations.insert(TEMPLATE_HASH_ANNOTATION.into(), template_hash(identity));
    annotations.insert(ISSUED_AT_ANNOTATION.into(), s.issued_at.to_string());
    if let Some(mark) = s.user_record {
        annotations.insert(USER_RECORD_ANNOTATION.into(), mark.to_string());
    }
    let data = [
        (secret_keys::TOKEN, s.token),
        (secret_keys::EXPIRES_ON, s.expires_on),
        (secret_keys::USER_ID, s.user_id),
        (secret_keys::ENDPOINT, s.endpoint),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(s.name.to_string()),
            namespace: identity.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: identity.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The user a Secret records (`userId`, `endpoint`, and the mark that vouches for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedUser {
    pub user: String,
    pub endpoint: String,
    pub mark: String,
}

pub fn recorded_user(secret: &Secret) -> Option<RecordedUser> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|v| !v.is_empty())
    };
    Some(RecordedUser {
        user: text(secret_keys::USER_ID)?,
        endpoint: text(secret_keys::ENDPOINT)?,
        mark: secret.annotations().get(USER_RECORD_ANNOTATION)?.clone(),
    })
}

/// The Secret's controller ownerReference (the first one marked as controller).
pub fn controller(
    meta: &ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Whether a Secret's controller ownerReference is this identity.
pub fn owned_by(meta: &ObjectMeta, identity_uid: &str) -> bool {
    controller(meta).is_some_and(|r| r.uid == identity_uid)
}

/// The issued-at annotation, if the Secret carries a readable one.
pub fn issued_at(meta: &ObjectMeta) -> Option<jiff::Timestamp> {
    meta.annotations
        .as_ref()?
        .get(ISSUED_AT_ANNOTATION)?
        .parse()
        .ok()
}

/// Whether the Secret's labels and annotations follow the identity's current template.
pub fn template_current(meta: &ObjectMeta, identity: &CommunicationIdentity) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(TEMPLATE_HASH_ANNOTATION))
        .is_some_and(|h| *h == template_hash(identity))
}

/// Whether an owned Secret holds exactly what status describes: an unedited token (its
/// hash), the user, the expiry and (when recorded) the endpoint.
pub fn intact(
    secret: &Secret,
    status: &CommunicationIdentityStatus,
    expires_on: Option<&str>,
) -> bool {
    let data = secret.data.clone().unwrap_or_default();
    let get = |k: &str| data.get(k).map(|b| b.0.as_slice());
    let hash_ok = match (
        get(secret_keys::TOKEN),
        secret.annotations().get(TOKEN_HASH_ANNOTATION),
    ) {
        (Some(t), Some(h)) => !t.is_empty() && token_hash(t) == *h,
        _ => false,
    };
    hash_ok
        && status
            .user_id
            .as_deref()
            .is_some_and(|u| get(secret_keys::USER_ID) == Some(u.as_bytes()))
        && expires_on.is_some_and(|e| get(secret_keys::EXPIRES_ON) == Some(e.as_bytes()))
        && status
            .user_endpoint
            .as_deref()
            .is_none_or(|e| get(secret_keys::ENDPOINT) == Some(e.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CommunicationIdentitySpec, Scope};

    fn identity() -> CommunicationIdentity {
        let mut id = CommunicationIdentity::new(
            "app",
            CommunicationIdentitySpec {
                service_ref: None,
                scopes: [Scope::Chat].into(),
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
        id.metadata.uid = Some("uid-1".into());
        id
    }

    fn ts() -> TokenSecret<'static> {
        TokenSecret {
            name: "app",
            token: "tok",
            expires_on: "2026-11-26T10:00:00Z",
            user_id: "8:acs:u",
            endpoint: "https://e",
            issued_at: "2026-11-25T10:00:00Z",
            user_record: None,
        }
    }

    #[test]
    fn built_secret_is_owned_labelled_and_has_the_documented_keys() {
        let s = build(&identity(), &ts());
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
        assert_eq!(
            s.labels().get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY_VALUE)
        );
        let keys: Vec<_> = s.data.as_ref().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["endpoint", "expiresOn", "token", "userId"]);
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
    }
}
