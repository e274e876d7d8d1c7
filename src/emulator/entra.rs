//! Emulated Microsoft Entra ID, enough for the official libraries (azure-identity's
//! `ClientAssertionCredential`/`WorkloadIdentityCredential`, MSAL) and the operator:
//!
//! - `POST /{tenant}/oauth2/v2.0/token`: client credentials with a JWT client assertion.
//!   The assertion must be RS256, signed by a key of a trusted issuer's JWKS, and its
//!   `iss`/`sub` must exactly match a federated identity credential of the application
//!   whose `aud` it carries; `exp`/`nbf` hold within a skew. Errors are Entra's
//!   `{"error","error_description":"AADSTSnnnnn: ...","error_codes",...}`.
//! - `GET /{tenant}/v2.0/.well-known/openid-configuration`, `GET /{tenant}/discovery/v2.0/keys`,
//!   `GET /common/discovery/instance` (MSAL's discovery).
//! - Access tokens are HS256 JWTs (`aud=https://communication.azure.com/`, `tid`, `oid`,
//!   `appid`, `exp`) that only this emulator verifies, on the ACS routes: a bearer token
//!   is checked (signature, expiry, audience, tenant: else 401) and its principal must hold
//!   a role assignment on the resource (else 403).
//! - Admin: `POST /admin/entra/issuers {"issuer","jwks":{"keys":[...]}}`,
//!   `POST /admin/entra/applications {"clientId","objectId"?,"federatedCredentials":[{"name",
//!   "issuer","subject","audiences"}],"propagationFailures"?}` (at most 20 credentials),
//!   `POST /admin/entra/roleAssignments {"principalId","role"}`,
//!   `DELETE /admin/entra/roleAssignments`, `GET /admin/entra` (counts: tokens issued,
//!   refused, by client).

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

/// Roles that let a principal use the ACS data plane (what the quickstarts and third
/// parties grant; custom roles are reported not to work, so none else is honoured).
pub const ACS_ROLES: [&str; 3] = [
    "Contributor",
    "Owner",
    "Communication and Email Service Owner",
];
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Entra stores at most 20 federated credentials per application.
pub const MAX_FEDERATED_CREDENTIALS: usize = 20;
/// Entra keeps the first 100 keys of an issuer.
pub const MAX_ISSUER_KEYS: usize = 100;
const ASSERTION_SKEW_SECONDS: i64 = 300;
const MAX_ASSERTION_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FederatedCredential {
    #[serde(default)]
    pub name: String,
    pub issuer: String,
    pub subject: String,
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
}

fn default_audiences() -> Vec<String> {
    vec![TOKEN_EXCHANGE_AUDIENCE.to_string()]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    pub client_id: String,
    /// The principal's object id (what role assignments name); default: the client id.
    #[serde(default)]
    pub object_id: Option<String>,
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredential>,
    /// The next N token requests fail with AADSTS70021, as a new credential does until
    /// it has propagated.
    #[serde(default)]
    pub propagation_failures: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignment {
    pub principal_id: String,
    pub role: String,
}

/// One RSA public key of an issuer's JWKS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jwk {
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub kty: String,
    #[serde(default)]
    pub n: String,
    #[serde(default)]
    pub e: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustedIssuer {
    pub issuer: String,
    pub jwks: Jwks,
}

/// What `--entra-config FILE` holds (and the admin endpoints add to).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntraConfig {
    #[serde(default)]
    pub issuers: Vec<TrustedIssuer>,
    #[serde(default)]
    pub applications: Vec<Application>,
    #[serde(default)]
    pub role_assignments: Vec<RoleAssignment>,
}

/// An Entra error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraRefusal {
    pub status: u16,
    pub error: &'static str,
    pub code: u32,
    pub description: String,
}

impl EntraRefusal {
    fn new(status: u16, error: &'static str, code: u32, description: impl Into<String>) -> Self {
        EntraRefusal {
            status,
            error,
            code,
            description: description.into(),
        }
    }

    pub fn body(&self, now: Timestamp) -> Value {
        let trace = uuid::Uuid::new_v4().to_string();
        json!({
            "error": self.error,
            "error_description": format!("AADSTS{}: {} Trace ID: {trace} Timestamp: {now}", self.code, self.description),
            "error_codes": [self.code],
            "timestamp": now.to_string(),
            "trace_id": trace,
            "correlation_id": uuid::Uuid::new_v4().to_string(),
        })
    }
}

/// Why the ACS side refuses a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerRefusal {
    /// 401
    Invalid(&'static str),
    /// 403: valid token, no role on the resource.
    NoRole(String),
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntraCounts {
    pub tokens_issued: u64,
    pub tokens_refused: u64,
    pub by_client: BTreeMap<String, u64>,
    pub bearer_requests: u64,
    pub bearer_refused: u64,
    pub hmac_refused_local_auth_disabled: u64,
}

pub struct Directory {
    pub tenant: String,
    secret: Vec<u8>,
    issuers: HashMap<String, Vec<Jwk>>,
    apps: HashMap<String, Application>,
    roles: Vec<RoleAssignment>,
    pub lifetime_seconds: u64,
    pub counts: EntraCounts,
}

type HmacSha256 = Hmac<Sha256>;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// The claims of a compact JWT (header, payload) without checking anything.
pub fn jwt_parts(token: &str) -> Option<(Value, Value, String, Vec<u8>)> {
    let mut it = token.split('.');
    let (h, p, s) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let header: Value = serde_json::from_slice(&unb64(h)?).ok()?;
    let payload: Value = serde_json::from_slice(&unb64(p)?).ok()?;
    Some((header, payload, format!("{h}.{p}"), unb64(s)?))
}

impl Directory {
    pub fn new(tenant: String, lifetime_seconds: u64, config: EntraConfig) -> Result<Self, String> {
        let mut d = Directory {
            tenant,
            secret: (0..32).map(|_| rand::random::<u8>()).collect(),
            issuers: HashMap::new(),
            apps: HashMap::new(),
            roles: Vec::new(),
            lifetime_seconds: lifetime_seconds.max(1),
            counts: EntraCounts::default(),
        };
        for i in config.issuers {
            d.trust_issuer(i)?;
        }
        for a in config.applications {
            d.register(a)?;
        }
        for r in config.role_assignments {
            d.assign(r);
        }
        Ok(d)
    }

    pub fn trust_issuer(&mut self, issuer: TrustedIssuer) -> Result<(), String> {
        if issuer.issuer.is_empty() {
            return Err("issuer is empty".into());
        }
        let keys: Vec<Jwk> = issuer
            .jwks
            .keys
            .into_iter()
            .filter(|k| k.kty == "RSA")
            .take(MAX_ISSUER_KEYS)
            .collect();
        self.issuers.insert(issuer.issuer, keys);
        Ok(())
    }

    pub fn register(&mut self, app: Application) -> Result<(), String> {
        if app.client_id.is_empty() {
            return Err("clientId is empty".into());
        }
        if app.federated_credentials.len() > MAX_FEDERATED_CREDENTIALS {
            return Err(format!(
                "at most {MAX_FEDERATED_CREDENTIALS} federated identity credentials per application"
            ));
        }
        for f in &app.federated_credentials {
            if f.audiences.len() != 1 {
                return Err("a federated identity credential has exactly one audience".into());
            }
        }
        self.apps.insert(app.client_id.clone(), app);
        Ok(())
    }

    pub fn assign(&mut self, r: RoleAssignment) {
        self.roles.push(r);
    }

    pub fn clear_roles(&mut self) {
        self.roles.clear();
    }

    pub fn discovery(&self, base: &str, tenant: &str) -> Value {
        json!({
            "issuer": format!("{base}/{tenant}/v2.0"),
            "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
            "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
            "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
            "response_types_supported": ["code", "id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "tenant_region_scope": "EU",
        })
    }

    /// The token operation: the form as received, checked in Entra's order.
    pub fn token(
        &mut self,
        tenant: &str,
        form: &[(String, String)],
        now: Timestamp,
    ) -> Result<Value, EntraRefusal> {
        let result = self.token_inner(tenant, form, now);
        match &result {
            Ok(_) => self.counts.tokens_issued += 1,
            Err(_) => self.counts.tokens_refused += 1,
        }
        result
    }

    fn token_inner(
        &mut self,
        tenant: &str,
        form: &[(String, String)],
        now: Timestamp,
    ) -> Result<Value, EntraRefusal> {
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if tenant != self.tenant && tenant != "organizations" {
            return Err(EntraRefusal::new(
                400,
                "invalid_request",
                90002,
                format!(
                    "Tenant '{}' not found.",
                    tenant.chars().take(64).collect::<String>()
                ),
            ));
        }
        if field("grant_type") != Some("client_credentials") {
            return Err(EntraRefusal::new(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            ));
        }
        if field("client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(EntraRefusal::new(
                400,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
        let client_id = field("client_id").unwrap_or_default().to_string();
        let Some(app) = self.apps.get_mut(&client_id) else {
            return Err(EntraRefusal::new(
                400,
                "unauthorized_client",
                700016,
                "Application was not found in the directory.",
            ));
        };
        let assertion = field("client_assertion").unwrap_or_default();
        let claims = verify_assertion(&self.issuers, assertion)?;
        let (iss, sub) = (
            claims["iss"].as_str().unwrap_or_default(),
            claims["sub"].as_str().unwrap_or_default(),
        );
        let audiences: Vec<&str> = match &claims["aud"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let matched = app.federated_credentials.iter().any(|f| {
            f.issuer == iss
                && f.subject == sub
                && f.audiences.iter().all(|a| audiences.contains(&a.as_str()))
        });
        if !matched || app.propagation_failures > 0 {
            app.propagation_failures = app.propagation_failures.saturating_sub(1);
            return Err(EntraRefusal::new(
                400,
                "invalid_client",
                70021,
                format!(
                    "No matching federated identity record found for presented assertion. Assertion Issuer: '{}'. Assertion Subject: '{}'. Assertion Audience: '{}'.",
                    iss.chars().take(200).collect::<String>(),
                    sub.chars().take(200).collect::<String>(),
                    audiences.join(",").chars().take(200).collect::<String>()
                ),
            ));
        }
        let t = now.as_second();
        let exp = claims["exp"].as_i64().unwrap_or(0);
        let nbf = claims["nbf"]
            .as_i64()
            .or(claims["iat"].as_i64())
            .unwrap_or(t);
        if exp + ASSERTION_SKEW_SECONDS < t || nbf - ASSERTION_SKEW_SECONDS > t {
            return Err(EntraRefusal::new(
                400,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range.",
            ));
        }
        let scope = field("scope").unwrap_or_default();
        if !matches!(
            scope,
            "https://communication.azure.com//.default"
                | "https://communication.azure.com/.default"
        ) {
            return Err(EntraRefusal::new(
                400,
                "invalid_scope",
                70011,
                format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope {} is not valid.",
                    scope.chars().take(200).collect::<String>()
                ),
            ));
        }
        let object_id = app.object_id.clone().unwrap_or_else(|| client_id.clone());
        let lifetime = self.lifetime_seconds;
        let claims = json!({
            "aud": "https://communication.azure.com/",
            "iss": format!("https://sts.windows.net/{}/", self.tenant),
            "iat": t, "nbf": t, "exp": t + lifetime as i64,
            "tid": self.tenant, "appid": client_id, "azp": client_id,
            "oid": object_id, "sub": object_id, "idtyp": "app", "ver": "1.0",
            "uti": uuid::Uuid::new_v4().to_string(),
        });
        *self.counts.by_client.entry(client_id).or_default() += 1;
        Ok(json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self.mint(&claims),
        }))
    }

    fn mint(&self, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        );
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key");
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
    }

    /// The ACS side of a bearer request.
    pub fn check_bearer(&mut self, token: &str, now: Timestamp) -> Result<(), BearerRefusal> {
        self.counts.bearer_requests += 1;
        let r = self.check_bearer_inner(token, now);
        if r.is_err() {
            self.counts.bearer_refused += 1;
        }
        r
    }

    fn check_bearer_inner(&self, token: &str, now: Timestamp) -> Result<(), BearerRefusal> {
        let (header, claims, signing_input, signature) =
            jwt_parts(token).ok_or(BearerRefusal::Invalid("The access token is not a JWT."))?;
        if header["alg"] != "HS256" {
            return Err(BearerRefusal::Invalid(
                "The access token signature is invalid.",
            ));
        }
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key");
        mac.update(signing_input.as_bytes());
        if mac.verify_slice(&signature).is_err() {
            return Err(BearerRefusal::Invalid(
                "The access token signature is invalid.",
            ));
        }
        if claims["exp"].as_i64().unwrap_or(0) <= now.as_second() {
            return Err(BearerRefusal::Invalid("The access token is expired."));
        }
        if !matches!(
            claims["aud"].as_str(),
            Some("https://communication.azure.com/" | "https://communication.azure.com")
        ) {
            return Err(BearerRefusal::Invalid(
                "The access token audience is invalid.",
            ));
        }
        if claims["tid"].as_str() != Some(self.tenant.as_str()) {
            return Err(BearerRefusal::Invalid(
                "The access token is from a tenant other than the resource's.",
            ));
        }
        let oid = claims["oid"].as_str().unwrap_or_default();
        if self
            .roles
            .iter()
            .any(|r| r.principal_id == oid && ACS_ROLES.contains(&r.role.as_str()))
        {
            Ok(())
        } else {
            Err(BearerRefusal::NoRole(oid.chars().take(64).collect()))
        }
    }
}

/// Checks a client assertion's form and signature against the trusted issuers' keys;
/// returns its claims.
pub fn verify_assertion(
    issuers: &HashMap<String, Vec<Jwk>>,
    assertion: &str,
) -> Result<Value, EntraRefusal> {
    let bad = |code: u32, msg: &str| EntraRefusal::new(400, "invalid_client", code, msg);
    if assertion.is_empty() || assertion.len() > MAX_ASSERTION_BYTES {
        return Err(bad(50027, "Invalid JWT token. The token is malformed."));
    }
    let (header, claims, signing_input, signature) = jwt_parts(assertion)
        .ok_or_else(|| bad(50027, "Invalid JWT token. The token is malformed."))?;
    if header["alg"] != "RS256" {
        return Err(bad(
            5002738,
            "Invalid JWT token. Only the RS256 signing algorithm is supported.",
        ));
    }
    let iss = claims["iss"].as_str().unwrap_or_default();
    let Some(keys) = issuers.get(iss) else {
        return Err(bad(
            70021,
            "No matching federated identity record found for presented assertion issuer.",
        ));
    };
    let kid = header["kid"].as_str();
    let verified = keys
        .iter()
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .any(|k| {
            let (Some(n), Some(e)) = (unb64(&k.n), unb64(&k.e)) else {
                return false;
            };
            ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                    signing_input.as_bytes(),
                    &signature,
                )
                .is_ok()
        });
    if !verified {
        return Err(bad(700027, "Client assertion failed signature validation."));
    }
    Ok(claims)
}

/// `/{tenant}/oauth2/v2.0/token` and friends: which Entra route a path is.
#[derive(Debug, PartialEq, Eq)]
pub enum EntraRoute<'a> {
    Token(&'a str),
    Discovery(&'a str),
    Keys(&'a str),
    Instance,
}

pub fn classify(path: &str) -> Option<EntraRoute<'_>> {
    if path == "/common/discovery/instance" {
        return Some(EntraRoute::Instance);
    }
    let rest = path.strip_prefix('/')?;
    let (tenant, tail) = rest.split_once('/')?;
    if tenant.is_empty() || tenant == "identities" || tenant == "admin" || tenant == "teamsUser" {
        return None;
    }
    match tail {
        "oauth2/v2.0/token" => Some(EntraRoute::Token(tenant)),
        "v2.0/.well-known/openid-configuration" => Some(EntraRoute::Discovery(tenant)),
        "discovery/v2.0/keys" => Some(EntraRoute::Keys(tenant)),
        _ => None,
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A 2048-bit RSA test key (PKCS#1 DER), so tests can sign RS256 assertions.
    pub const TEST_RSA_DER: &[u8] = include_bytes!("testdata/entra-test-rsa.der");

    pub fn signer() -> ring::signature::RsaKeyPair {
        ring::signature::RsaKeyPair::from_der(TEST_RSA_DER).unwrap()
    }

    pub fn jwk(kid: &str) -> Jwk {
        let k = signer();
        let public = ring::signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
        Jwk {
            kid: Some(kid.into()),
            kty: "RSA".into(),
            n: b64(&public.n),
            e: b64(&public.e),
        }
    }

    pub fn sign(header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let k = signer();
        let mut sig = vec![0; k.public().modulus_len()];
        k.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("{input}.{}", b64(&sig))
    }

    const ISS: &str = "https://kubernetes.default.svc";
    const SUB: &str = "system:serviceaccount:team-a:acs-client";

    fn directory() -> Directory {
        Directory::new(
            "tenant-1".into(),
            3599,
            EntraConfig {
                issuers: vec![TrustedIssuer {
                    issuer: ISS.into(),
                    jwks: Jwks {
                        keys: vec![jwk("k1")],
                    },
                }],
                applications: vec![Application {
                    client_id: "client-1".into(),
                    object_id: Some("oid-1".into()),
                    federated_credentials: vec![FederatedCredential {
                        name: "team-a".into(),
                        issuer: ISS.into(),
                        subject: SUB.into(),
                        audiences: default_audiences(),
                    }],
                    propagation_failures: 0,
                }],
                role_assignments: vec![],
            },
        )
        .unwrap()
    }

    fn claims(now: i64) -> Value {
        json!({"iss": ISS, "sub": SUB, "aud": [TOKEN_EXCHANGE_AUDIENCE], "exp": now + 600, "iat": now, "nbf": now})
    }

    fn form(assertion: &str) -> Vec<(String, String)> {
        [
            ("client_id", "client-1"),
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", "https://communication.azure.com//.default"),
            ("client_info", "1"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn assertion_matrix() {
        let now = Timestamp::now();
        let t = now.as_second();
        let rs = json!({"alg": "RS256", "kid": "k1"});
        let good = sign(&rs, &claims(t));
        let mut d = directory();
        let ok = d.token("tenant-1", &form(&good), now).unwrap();
        assert_eq!(ok["token_type"], "Bearer");
        assert_eq!(ok["expires_in"], 3599);
        let access = ok["access_token"].as_str().unwrap().to_string();

        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims(t);
            f(&mut c);
            sign(&rs, &c)
        };
        let tampered = {
            let mut parts: Vec<String> = good.split('.').map(String::from).collect();
            parts[1] = b64(json!({"iss": ISS, "sub": "system:serviceaccount:team-b:x", "aud": TOKEN_EXCHANGE_AUDIENCE, "exp": t + 600}).to_string().as_bytes());
            parts.join(".")
        };
        let hs256 = {
            let input = format!(
                "{}.{}",
                b64(br#"{"alg":"HS256"}"#),
                b64(claims(t).to_string().as_bytes())
            );
            format!("{input}.{}", b64(b"sig"))
        };
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(claims(t).to_string().as_bytes())
        );
        let cases: Vec<(&str, String, u32)> = vec![
            ("bad signature", tampered, 700027),
            ("alg HS256", hs256, 5002738),
            ("alg none", none, 5002738),
            (
                "unknown kid",
                sign(&json!({"alg": "RS256", "kid": "k2"}), &claims(t)),
                700027,
            ),
            (
                "wrong issuer",
                with(&|c| c["iss"] = json!("https://evil.example")),
                70021,
            ),
            (
                "wrong subject",
                with(&|c| c["sub"] = json!("system:serviceaccount:team-b:acs-client")),
                70021,
            ),
            ("no audience", with(&|c| c["aud"] = json!([])), 70021),
            (
                "other audience",
                with(&|c| c["aud"] = json!("api://other")),
                70021,
            ),
            ("expired", with(&|c| c["exp"] = json!(t - 3600)), 700024),
            (
                "not yet valid",
                with(&|c| {
                    c["nbf"] = json!(t + 3600);
                }),
                700024,
            ),
            ("garbage", "not.a.jwt".into(), 50027),
        ];
        for (name, assertion, code) in cases {
            let e = d.token("tenant-1", &form(&assertion), now).unwrap_err();
            assert_eq!(e.code, code, "{name}: {e:?}");
            assert_eq!(e.status, 400, "{name}");
        }
        // The form's other checks.
        let mut f = form(&good);
        f[0].1 = "nobody".into();
        assert_eq!(d.token("tenant-1", &f, now).unwrap_err().code, 700016);
        assert_eq!(d.token("other", &form(&good), now).unwrap_err().code, 90002);
        let mut f = form(&good);
        f[4].1 = "https://graph.microsoft.com/.default".into();
        assert_eq!(d.token("tenant-1", &f, now).unwrap_err().code, 70011);
        assert_eq!(d.counts.tokens_issued, 1);

        // The ACS side: 403 without a role, then accepted.
        assert_eq!(
            d.check_bearer(&access, now),
            Err(BearerRefusal::NoRole("oid-1".into()))
        );
        d.assign(RoleAssignment {
            principal_id: "oid-1".into(),
            role: "Contributor".into(),
        });
        assert_eq!(d.check_bearer(&access, now), Ok(()));
        let later = Timestamp::from_second(t + 3600).unwrap();
        assert!(matches!(
            d.check_bearer(&access, later),
            Err(BearerRefusal::Invalid(_))
        ));
        let forged = format!("{}x", &access[..access.len() - 1]);
        assert!(matches!(
            d.check_bearer(&forged, now),
            Err(BearerRefusal::Invalid(_))
        ));
        d.clear_roles();
        d.assign(RoleAssignment {
            principal_id: "oid-1".into(),
            role: "My Custom Role".into(),
        });
        assert!(matches!(
            d.check_bearer(&access, now),
            Err(BearerRefusal::NoRole(_))
        ));
    }

    #[test]
    fn propagation_and_limits() {
        let now = Timestamp::now();
        let good = sign(
            &json!({"alg": "RS256", "kid": "k1"}),
            &claims(now.as_second()),
        );
        let mut d = directory();
        let mut app = d.apps["client-1"].clone();
        app.propagation_failures = 2;
        d.register(app.clone()).unwrap();
        assert_eq!(
            d.token("tenant-1", &form(&good), now).unwrap_err().code,
            70021
        );
        assert_eq!(
            d.token("tenant-1", &form(&good), now).unwrap_err().code,
            70021
        );
        assert!(d.token("tenant-1", &form(&good), now).is_ok());
        app.federated_credentials = vec![app.federated_credentials[0].clone(); 21];
        assert!(d.register(app).unwrap_err().contains("20"));
        let body = EntraRefusal::new(400, "invalid_client", 70021, "x").body(now);
        assert_eq!(body["error_codes"], json!([70021]));
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with("AADSTS70021: ")
        );
    }

    #[test]
    fn routes() {
        assert_eq!(
            classify("/t/oauth2/v2.0/token"),
            Some(EntraRoute::Token("t"))
        );
        assert_eq!(
            classify("/t/v2.0/.well-known/openid-configuration"),
            Some(EntraRoute::Discovery("t"))
        );
        assert_eq!(
            classify("/t/discovery/v2.0/keys"),
            Some(EntraRoute::Keys("t"))
        );
        assert_eq!(
            classify("/common/discovery/instance"),
            Some(EntraRoute::Instance)
        );
        for acs in [
            "/identities",
            "/identities/x/:issueAccessToken",
            "/admin/stats",
            "/t/other",
        ] {
            assert_eq!(classify(acs), None, "{acs}");
        }
    }
}
