//! The emulated resource's state: identities, their tokens' revocation marks, and the
//! token signer; plus the JSON snapshot that `--state-file` persists across restarts.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::api_version::ApiVersion;
use super::error::ServiceError;
use super::tokens::{MintedClaims, TokenError, TokenSigner};

/// Every scope any served api-version knows; each version's own list is
/// [`ApiVersion::token_scopes`] (`chat` and `voip` only before `2023-10-01`).
pub const SCOPES: &[&str] = crate::acs::api_versions::SCOPES_WITH_JOIN;
pub const MIN_EXPIRES_IN_MINUTES: i64 = 60;
pub const MAX_EXPIRES_IN_MINUTES: i64 = 1440;
const MAX_CUSTOM_ID_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub id: String,
    #[serde(default)]
    pub custom_id: Option<String>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub deleted_at: Option<Timestamp>,
    #[serde(default)]
    pub tokens_issued: u64,
    #[serde(default)]
    pub last_token_issued_at: Option<Timestamp>,
    #[serde(default)]
    pub tokens_revoked_at: Option<Timestamp>,
    /// Tokens whose `seq` is at or below this are revoked.
    #[serde(default)]
    pub revoked_through_seq: u64,
}

/// A freshly minted token and the expiry ACS reports for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub expires_on: Timestamp,
}

/// What `--state-file` holds. The access key is not in it: it comes from the flag.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub resource_id: Uuid,
    /// base64 of the token-signing secret, so tokens survive a restart.
    pub token_secret: String,
    pub last_seq: u64,
    pub identities: Vec<Identity>,
}

/// Why `/admin/tokens:validate` says a token is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    pub valid: bool,
    pub reason: String,
}

#[derive(Debug)]
pub struct Store {
    resource_id: Uuid,
    signer: TokenSigner,
    /// The `seq` of the last token minted, emulator-wide.
    last_seq: u64,
    identities: Vec<Identity>,
    by_id: HashMap<String, usize>,
    lifetime_scale: f64,
    /// First answers of repeatable creates by `Repeatability-Request-ID` (kept for the
    /// tracked window, at most [`MAX_REPEATABLE`]; not persisted), and their order.
    repeats: HashMap<String, (axum::http::StatusCode, serde_json::Value)>,
    repeat_order: VecDeque<(Timestamp, String)>,
}

/// Bound on remembered repeatable answers, whatever clients send.
const MAX_REPEATABLE: usize = 100_000;

impl Store {
    pub fn new(resource_id: Uuid, lifetime_scale: f64) -> Self {
        let secret: [u8; 32] = rand::random();
        Self {
            resource_id,
            signer: TokenSigner::new(secret.to_vec()),
            last_seq: 0,
            identities: Vec::new(),
            by_id: HashMap::new(),
            lifetime_scale,
            repeats: HashMap::new(),
            repeat_order: VecDeque::new(),
        }
    }

    pub fn from_snapshot(snapshot: Snapshot, lifetime_scale: f64) -> Result<Self, String> {
        let secret = STANDARD
            .decode(&snapshot.token_secret)
            .map_err(|_| "tokenSecret is not base64".to_string())?;
        if secret.is_empty() {
            return Err("tokenSecret is empty".into());
        }
        let by_id = snapshot
            .identities
            .iter()
            .enumerate()
            .map(|(i, identity)| (identity.id.clone(), i))
            .collect();
        Ok(Self {
            resource_id: snapshot.resource_id,
            signer: TokenSigner::new(secret),
            last_seq: snapshot.last_seq,
            identities: snapshot.identities,
            by_id,
            lifetime_scale,
            repeats: HashMap::new(),
            repeat_order: VecDeque::new(),
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            resource_id: self.resource_id,
            token_secret: STANDARD.encode(self.signer.secret()),
            last_seq: self.last_seq,
            identities: self.identities.clone(),
        }
    }

    pub fn resource_id(&self) -> Uuid {
        self.resource_id
    }

    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }

    /// Creates a user, or with a `custom_id` already in use returns that user
    /// (`created == false`; the API answers 201 all the same, as the live service does,
    /// unless the emulator is told to answer the specification's 200).
    pub fn create(
        &mut self,
        custom_id: Option<&str>,
        now: Timestamp,
    ) -> Result<(Identity, bool), ServiceError> {
        if let Some(custom_id) = custom_id {
            if custom_id.is_empty() || custom_id.len() > MAX_CUSTOM_ID_LEN {
                return Err(ServiceError::bad_request(
                    "ValidationError",
                    format!("customId must be 1 to {MAX_CUSTOM_ID_LEN} characters long."),
                )
                .with_target("CustomId"));
            }
            if let Some(existing) = self
                .identities
                .iter()
                .find(|i| !i.deleted && i.custom_id.as_deref() == Some(custom_id))
            {
                return Ok((existing.clone(), false));
            }
        }
        let id = format!("8:acs:{}_{}", self.resource_id, Uuid::new_v4());
        let identity = Identity {
            id: id.clone(),
            custom_id: custom_id.map(str::to_string),
            created_at: now,
            deleted: false,
            deleted_at: None,
            tokens_issued: 0,
            last_token_issued_at: None,
            tokens_revoked_at: None,
            revoked_through_seq: 0,
        };
        self.by_id.insert(id, self.identities.len());
        self.identities.push(identity.clone());
        Ok((identity, true))
    }

    /// The first answer to a repeatable request id still in the tracked window.
    pub fn repeated(
        &mut self,
        request_id: &str,
        now: Timestamp,
        window: Duration,
    ) -> Option<(axum::http::StatusCode, serde_json::Value)> {
        self.prune_repeats(now, window);
        self.repeats.get(request_id).cloned()
    }

    /// Keeps the first answer to a repeatable request id.
    pub fn remember_repeatable(
        &mut self,
        request_id: &str,
        first_sent: Timestamp,
        answer: &(axum::http::StatusCode, serde_json::Value),
        now: Timestamp,
        window: Duration,
    ) {
        self.prune_repeats(now, window);
        while self.repeat_order.len() >= MAX_REPEATABLE {
            if let Some((_, old)) = self.repeat_order.pop_front() {
                self.repeats.remove(&old);
            }
        }
        if self
            .repeats
            .insert(request_id.to_string(), answer.clone())
            .is_none()
        {
            self.repeat_order
                .push_back((first_sent.max(now), request_id.to_string()));
        }
    }

    fn prune_repeats(&mut self, now: Timestamp, window: Duration) {
        let window = jiff::SignedDuration::try_from(window).unwrap_or_default();
        while let Some((at, id)) = self.repeat_order.front() {
            if now.duration_since(*at) <= window {
                break;
            }
            self.repeats.remove(id);
            self.repeat_order.pop_front();
        }
    }

    /// The live identity behind an id from a request path (already percent-decoded).
    pub fn get(&self, id: &str) -> Result<&Identity, ServiceError> {
        self.check_id_shape(id)?;
        match self.by_id.get(id).map(|&i| &self.identities[i]) {
            Some(identity) if !identity.deleted => Ok(identity),
            _ => Err(ServiceError::not_found(format!(
                "Identity '{id}' was not found."
            ))),
        }
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut Identity, ServiceError> {
        self.get(id)?;
        let index = self.by_id[id];
        Ok(&mut self.identities[index])
    }

    /// Ids that cannot be ACS user ids are a 400; a well-formed id of another resource (ids
    /// embed their resource's id: `8:acs:<resource>_<user>`) is a 401 `IdentityNotOwned`, as
    /// the live service answers; one of this resource never created is a 404.
    fn check_id_shape(&self, id: &str) -> Result<(), ServiceError> {
        let bad = || {
            ServiceError::bad_request(
                "InvalidIdentifier",
                format!("'{id}' is not a valid identity id."),
            )
        };
        let rest = id.strip_prefix("8:acs:").ok_or_else(bad)?;
        let (resource, user) = rest.split_once('_').ok_or_else(bad)?;
        let Ok(resource) = Uuid::parse_str(resource) else {
            return Err(bad());
        };
        if user.is_empty() || user.len() > 128 {
            return Err(bad());
        }
        if resource != self.resource_id {
            return Err(ServiceError::not_owned());
        }
        Ok(())
    }

    pub fn issue(
        &mut self,
        id: &str,
        scopes: &[String],
        expires_in_minutes: Option<i64>,
        now: Timestamp,
    ) -> Result<IssuedToken, ServiceError> {
        let scopes = validate_scopes(scopes)?;
        let minutes = validate_expiry(expires_in_minutes)?;
        self.get(id)?;
        let lifetime = Duration::from_secs_f64((minutes * 60) as f64 * self.lifetime_scale)
            .max(Duration::from_secs(1));
        // With the service's precision (100 ns ticks, as `expiresOn` shows them); the JWT's
        // `exp` is its whole second.
        let ticks = |t: Timestamp| t.as_nanosecond().div_euclid(100) * 100;
        let expires_on = Timestamp::from_nanosecond(
            ticks(now).saturating_add(lifetime.as_nanos().min(i128::MAX as u128) as i128),
        )
        .map_err(|_| ServiceError::internal("token expiry is out of range"))?;
        let seq = self.last_seq + 1;
        let token = self
            .signer
            .mint(MintedClaims {
                skypeid: id.trim_start_matches("8:").to_string(),
                acs_scope: scopes.join(","),
                resource_id: self.resource_id.to_string(),
                iat: now.as_second(),
                exp: expires_on.as_second(),
                seq,
                nonce: rand::random::<u16>().into(),
            })
            .map_err(|e| ServiceError::internal(e.to_string()))?;
        self.last_seq = seq;
        let identity = self.get_mut(id)?;
        identity.tokens_issued += 1;
        identity.last_token_issued_at = Some(now);
        Ok(IssuedToken { token, expires_on })
    }

    /// Revokes every token issued so far to the user; later ones stay valid.
    pub fn revoke(&mut self, id: &str, now: Timestamp) -> Result<(), ServiceError> {
        let last_seq = self.last_seq;
        let identity = self.get_mut(id)?;
        identity.revoked_through_seq = last_seq;
        identity.tokens_revoked_at = Some(now);
        Ok(())
    }

    /// Deleting an already deleted user succeeds again (ACS deletes idempotently);
    /// an id this resource never issued is a 404.
    pub fn delete(&mut self, id: &str, now: Timestamp) -> Result<(), ServiceError> {
        self.check_id_shape(id)?;
        let Some(&index) = self.by_id.get(id) else {
            return Err(ServiceError::not_found(format!(
                "Identity '{id}' was not found."
            )));
        };
        let identity = &mut self.identities[index];
        if !identity.deleted {
            identity.deleted = true;
            identity.deleted_at = Some(now);
        }
        Ok(())
    }

    pub fn validate_token(&self, token: &str, now: Timestamp) -> Validation {
        let claims = match self.signer.verify(token) {
            Ok(claims) => claims,
            Err(TokenError::BadSignature) => return invalid("bad signature"),
            Err(e) => return invalid(&e.to_string()),
        };
        if claims.exp <= now.as_second() {
            return invalid("expired");
        }
        let Some(identity) = self
            .by_id
            .get(&claims.user_id())
            .map(|&i| &self.identities[i])
        else {
            return invalid("unknown user");
        };
        if identity.deleted {
            return invalid("user deleted");
        }
        if claims.seq <= identity.revoked_through_seq {
            return invalid("revoked");
        }
        Validation {
            valid: true,
            reason: "valid".into(),
        }
    }
}

fn invalid(reason: &str) -> Validation {
    Validation {
        valid: false,
        reason: reason.into(),
    }
}

/// Known scopes, deduplicated in request order; none or an unknown one is a 400.
pub fn validate_scopes(scopes: &[String]) -> Result<Vec<&str>, ServiceError> {
    validate_scopes_in(scopes, SCOPES)
}

/// [`validate_scopes`] against the scopes one api-version has (`allowed`): a scope of a
/// later version is as unknown to it as a made-up one.
pub fn validate_scopes_in<'a>(
    scopes: &'a [String],
    allowed: &'static [&'static str],
) -> Result<Vec<&'a str>, ServiceError> {
    if scopes.is_empty() {
        return Err(ServiceError::bad_request(
            "ValidationError",
            "At least one scope is required.",
        )
        .with_target("Scopes"));
    }
    let mut out: Vec<&str> = Vec::new();
    for scope in scopes {
        if !allowed.contains(&scope.as_str()) {
            let shown: String = scope.chars().take(64).collect();
            return Err(ServiceError::bad_request(
                "ValidationError",
                format!(
                    "Scope '{shown}' is invalid. Valid scopes: {}.",
                    allowed.join(", ")
                ),
            )
            .with_target("Scopes"));
        }
        if !out.contains(&scope.as_str()) {
            out.push(scope.as_str());
        }
    }
    Ok(out)
}

/// Checks `:issueAccessToken`'s body against what `version` publishes, before anything is
/// done, and returns the `expiresInMinutes` the version reads: see `check_token_fields`.
pub fn check_issue_request(
    version: &ApiVersion,
    scopes: &[String],
    expires_in_minutes: Option<i64>,
) -> Result<Option<i64>, ServiceError> {
    check_token_fields(
        version,
        Some(scopes),
        expires_in_minutes,
        version.issue_takes_expiry(),
    )
}

/// Checks a create's body against what `version` publishes, before the user is made (a
/// refused create makes no user), and returns the `expiresInMinutes` the version reads;
/// `scopes` is `None` for a create without a token. See `check_token_fields`.
pub fn check_create_request(
    version: &ApiVersion,
    scopes: Option<&[String]>,
    expires_in_minutes: Option<i64>,
) -> Result<Option<i64>, ServiceError> {
    check_token_fields(
        version,
        scopes,
        expires_in_minutes,
        version.create_takes_expiry(),
    )
}

/// The scopes of the version's `CommunicationIdentityTokenScope` (any other is a 400
/// `ValidationError` naming `Scopes` in `error.target`, the shape the service gives every
/// invalid field of a body), and `expiresInMinutes` between 60 and 1440 where its body has
/// that field (`takes_expiry`). Where it has not, the field is ignored, as the service
/// ignores every property its version does not define (`customId` too): the value returned
/// is what the store is given.
fn check_token_fields(
    version: &ApiVersion,
    scopes: Option<&[String]>,
    expires_in_minutes: Option<i64>,
    takes_expiry: bool,
) -> Result<Option<i64>, ServiceError> {
    if let Some(scopes) = scopes {
        validate_scopes_in(scopes, version.token_scopes())?;
    }
    let read = expires_in_minutes.filter(|_| takes_expiry);
    if read.is_some() && scopes.is_some() {
        validate_expiry(read)?;
    }
    Ok(read)
}

pub fn validate_expiry(expires_in_minutes: Option<i64>) -> Result<i64, ServiceError> {
    let minutes = expires_in_minutes.unwrap_or(MAX_EXPIRES_IN_MINUTES);
    if !(MIN_EXPIRES_IN_MINUTES..=MAX_EXPIRES_IN_MINUTES).contains(&minutes) {
        // Code, message and target as the live service answers (recorded sessions).
        return Err(ServiceError::bad_request(
            "ValidationError",
            format!(
                "ExpiresInMinutes value {minutes} is invalid. Value must be within the [{MIN_EXPIRES_IN_MINUTES}, {MAX_EXPIRES_IN_MINUTES}] interval."
            ),
        )
        .with_target("ExpiresInMinutes"));
    }
    Ok(minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new(Uuid::new_v4(), 1.0)
    }

    #[test]
    fn token_issued_right_after_revoke_in_the_same_second_is_valid() {
        let mut s = store();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let (user, _) = s.create(None, now).unwrap();
        let old = s.issue(&user.id, &["voip".into()], None, now).unwrap();
        s.revoke(&user.id, now).unwrap();
        let new = s.issue(&user.id, &["voip".into()], None, now).unwrap();
        assert_eq!(s.validate_token(&old.token, now).reason, "revoked");
        assert!(s.validate_token(&new.token, now).valid);
    }

    #[test]
    fn expiry_is_scaled_and_matches_the_claim() {
        let mut s = Store::new(Uuid::new_v4(), 0.01);
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let (user, _) = s.create(None, now).unwrap();
        let t = s.issue(&user.id, &["chat".into()], Some(60), now).unwrap();
        assert_eq!(t.expires_on.as_second() - now.as_second(), 36);
        let later = Timestamp::from_second(now.as_second() + 36).unwrap();
        assert_eq!(s.validate_token(&t.token, later).reason, "expired");
    }

    #[test]
    fn custom_id_returns_the_same_live_user() {
        let mut s = store();
        let now = Timestamp::now();
        let (a, created) = s.create(Some("uid-1"), now).unwrap();
        assert!(created);
        let (b, created) = s.create(Some("uid-1"), now).unwrap();
        assert!(!created);
        assert_eq!(a.id, b.id);
        s.delete(&a.id, now).unwrap();
        let (c, created) = s.create(Some("uid-1"), now).unwrap();
        assert!(created && c.id != a.id, "a deleted user frees its customId");
    }

    #[test]
    fn deleted_users_404_and_their_tokens_die() {
        let mut s = store();
        let now = Timestamp::now();
        let (user, _) = s.create(None, now).unwrap();
        let t = s.issue(&user.id, &["chat".into()], None, now).unwrap();
        s.delete(&user.id, now).unwrap();
        s.delete(&user.id, now).unwrap();
        assert_eq!(
            s.issue(&user.id, &["chat".into()], None, now)
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(s.revoke(&user.id, now).unwrap_err().status, 404);
        assert_eq!(s.validate_token(&t.token, now).reason, "user deleted");
    }

    #[test]
    fn validation_of_ids_scopes_and_expiry() {
        let mut s = store();
        let now = Timestamp::now();
        assert_eq!(s.get("garbage").unwrap_err().status, 400);
        assert_eq!(s.get("8:acs:not-a-guid_x").unwrap_err().status, 400);
        // An id of another resource is not this resource's to act on; one of this
        // resource that was never created is not found.
        let other = s.get(&format!("8:acs:{}_x", Uuid::new_v4())).unwrap_err();
        assert_eq!(
            (other.status.as_u16(), other.code),
            (401, "IdentityNotOwned")
        );
        assert_eq!(
            s.get(&format!("8:acs:{}_x", s.resource_id()))
                .unwrap_err()
                .status,
            404
        );
        let (user, _) = s.create(None, now).unwrap();
        for (scopes, minutes) in [
            (vec![], None),
            (vec!["admin".to_string()], None),
            (vec!["chat".into()], Some(59)),
            (vec!["chat".into()], Some(1441)),
        ] {
            assert_eq!(
                s.issue(&user.id, &scopes, minutes, now).unwrap_err().status,
                400
            );
        }
        assert_eq!(
            validate_scopes(&["chat".into(), "chat".into(), "voip".into()]).unwrap(),
            ["chat", "voip"]
        );
    }

    fn version(v: &str) -> ApiVersion {
        ApiVersion::from_query(Some(&format!("api-version={v}"))).expect(v)
    }

    #[test]
    fn each_version_takes_only_its_own_scopes_and_reads_its_own_expiry() {
        #[derive(Clone, Copy)]
        enum Body {
            Issue,
            Create,
        }
        use Body::{Create, Issue};
        let check = |v: &str, body, scopes: &[&str], minutes| {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            match body {
                Issue => check_issue_request(&version(v), &scopes, minutes),
                Create => check_create_request(&version(v), Some(&scopes), minutes),
            }
            .map(|_| ())
            .map_err(|e| (e.status.as_u16(), e.code, e.target))
        };
        let scope = Err((400, "ValidationError", Some("Scopes")));
        let expiry = Err((400, "ValidationError", Some("ExpiresInMinutes")));
        for v in ["2021-03-07", "2022-06-01", "2022-10-01", "2023-08-01"] {
            assert_eq!(check(v, Issue, &["chat", "voip"], None), Ok(()), "{v}");
            for join in ["chat.join", "chat.join.limited", "voip.join"] {
                assert_eq!(check(v, Issue, &[join], None), scope, "{v} {join}");
                assert_eq!(check(v, Create, &["chat", join], None), scope);
            }
        }
        for v in ["2023-10-01", "2025-06-30", "2026-09-23"] {
            let all = [
                "chat",
                "voip",
                "chat.join",
                "chat.join.limited",
                "voip.join",
            ];
            assert_eq!(check(v, Issue, &all, Some(60)), Ok(()), "{v}");
            assert_eq!(check(v, Create, &all, Some(1440)), Ok(()), "{v}");
            assert_eq!(check(v, Issue, &["pstn"], None), scope);
            assert_eq!(check(v, Issue, &[], None), scope, "none is a 400");
        }
        // Where the body has no `expiresInMinutes`, the field is ignored (any value): the
        // store is given none.
        for v in [
            "2021-02-22-preview1",
            "2021-03-07",
            "2021-10-31-preview",
            "2022-06-01",
        ] {
            assert_eq!(check(v, Issue, &["chat"], Some(5)), Ok(()), "{v}");
            assert_eq!(check(v, Create, &["chat"], Some(5)), Ok(()), "{v}");
            let read = check_issue_request(&version(v), &["chat".into()], Some(60));
            assert_eq!(read.ok(), Some(None), "{v}: not read, so not passed on");
        }
        // 2022-09-01: on issue only.
        assert_eq!(check("2022-09-01", Issue, &["chat"], Some(60)), Ok(()));
        assert_eq!(check("2022-09-01", Create, &["chat"], Some(5)), Ok(()));
        assert_eq!(check("2022-09-01", Issue, &["chat"], Some(59)), expiry);
        assert_eq!(check("2022-10-01", Create, &["chat"], Some(1441)), expiry);
        let v = version("2022-09-01");
        let chat = ["chat".to_string()];
        assert_eq!(
            check_issue_request(&v, &chat, Some(60)).ok(),
            Some(Some(60))
        );
        assert_eq!(
            check_create_request(&v, Some(&chat), Some(60)).ok(),
            Some(None)
        );
        // A create without a token: nothing to check.
        let bare = |v: &str, m| check_create_request(&version(v), None, m).is_ok();
        assert!(bare("2021-03-07", None));
        assert!(bare("2021-03-07", Some(60)));
        assert!(bare("2022-10-01", Some(5)));
        // The message names the scopes the version has.
        let e =
            check_issue_request(&version("2023-08-01"), &["voip.join".into()], None).unwrap_err();
        assert_eq!(
            e.message,
            "Scope 'voip.join' is invalid. Valid scopes: chat, voip."
        );
    }

    #[test]
    fn snapshot_round_trip_keeps_tokens_valid() {
        let mut s = store();
        let now = Timestamp::now();
        let (user, _) = s.create(Some("c"), now).unwrap();
        let t = s.issue(&user.id, &["voip".into()], None, now).unwrap();
        let json = serde_json::to_string(&s.snapshot()).unwrap();
        let back = Store::from_snapshot(serde_json::from_str(&json).unwrap(), 1.0).unwrap();
        assert!(back.validate_token(&t.token, now).valid);
        assert_eq!(back.identities(), s.identities());
    }
}
