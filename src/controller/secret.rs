//! The token Secret: what it holds, how it is built, and whether the one in the cluster
//! is still what the operator wrote.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::{CommunicationIdentity, secret_keys};

use super::renewal::SecretState;

/// Label on every Secret the operator writes; its watch selects on it, so the operator
/// never caches unrelated Secrets.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "acs-identity-operator";
/// Name of the owning identity, for `kubectl get secret -l`.
pub const IDENTITY_LABEL: &str = "acs-operator.dev/identity";
/// SHA-256 of the token, so an edit of the `token` key is noticed without keeping the
/// token anywhere but the Secret.
pub const TOKEN_HASH_ANNOTATION: &str = "acs-operator.dev/token-sha256";

/// What goes into the Secret.
pub struct TokenSecret<'a> {
    pub name: &'a str,
    pub token: &'a str,
    pub expires_on: &'a str,
    pub user_id: &'a str,
    pub endpoint: &'a str,
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

/// How the Secret in the cluster relates to this identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Exists without a controller ownerReference to this identity: never touched.
    NotOwned,
    Ours(SecretState),
}

fn controller_ref(secret: &Secret) -> Option<&OwnerReference> {
    secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Classifies the Secret: missing, not ours, ours and intact, or ours but edited
/// (token changed, keys removed, another user or expiry than status records, another
/// endpoint).
pub fn observe(
    secret: Option<&Secret>,
    identity_uid: &str,
    user_id: Option<&str>,
    expires_on: Option<&str>,
    endpoint: &str,
) -> Observed {
    let Some(secret) = secret else {
        return Observed::Ours(SecretState::Missing);
    };
    if controller_ref(secret).is_none_or(|r| r.uid != identity_uid) {
        return Observed::NotOwned;
    }
    let data = secret.data.clone().unwrap_or_default();
    let get = |k: &str| data.get(k).map(|b| b.0.as_slice());
    let hash_ok = match (
        get(secret_keys::TOKEN),
        secret.annotations().get(TOKEN_HASH_ANNOTATION),
    ) {
        (Some(t), Some(h)) => !t.is_empty() && token_hash(t) == *h,
        _ => false,
    };
    let intact = hash_ok
        && user_id.is_some_and(|u| get(secret_keys::USER_ID) == Some(u.as_bytes()))
        && expires_on.is_some_and(|e| get(secret_keys::EXPIRES_ON) == Some(e.as_bytes()))
        && get(secret_keys::ENDPOINT) == Some(endpoint.as_bytes());
    Observed::Ours(if intact {
        SecretState::Matches
    } else {
        SecretState::Mismatch
    })
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

    #[test]
    fn observe_tells_missing_foreign_intact_and_edited_apart() {
        let id = identity();
        let s = build(&id, &ts());
        let obs = |sec: Option<&Secret>| {
            observe(
                sec,
                "uid-1",
                Some("8:acs:u"),
                Some("2026-11-26T10:00:00Z"),
                "https://e",
            )
        };
        assert_eq!(obs(None), Observed::Ours(SecretState::Missing));
        assert_eq!(obs(Some(&s)), Observed::Ours(SecretState::Matches));

        let mut edited = s.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert(secret_keys::TOKEN.into(), ByteString(b"forged".to_vec()));
        assert_eq!(obs(Some(&edited)), Observed::Ours(SecretState::Mismatch));

        let mut emptied = s.clone();
        emptied.data = None;
        assert_eq!(obs(Some(&emptied)), Observed::Ours(SecretState::Mismatch));

        assert_eq!(
            observe(
                Some(&s),
                "uid-1",
                Some("8:acs:other"),
                Some("2026-11-26T10:00:00Z"),
                "https://e"
            ),
            Observed::Ours(SecretState::Mismatch)
        );

        let mut foreign = s.clone();
        foreign.metadata.owner_references = None;
        assert_eq!(obs(Some(&foreign)), Observed::NotOwned);
        let mut other_owner = s;
        other_owner.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-2".into();
        assert_eq!(obs(Some(&other_owner)), Observed::NotOwned);
    }
}
