//! Entra ID end to end without Kubernetes: the emulator's token endpoint, discovery and
//! bearer checks over TLS, and the operator's `EntraCredential` + bearer `AcsClient`
//! against it: the whole identity flow with local auth disabled, one token for many
//! requests (single flight), 401 drop-and-retry-once, 403 naming the role, AADSTS70021
//! as FederationFailed, Entra 429 with Retry-After.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use acs_identity_operator::acs::entra::{
    Assertion, AssertionSource, BoxFuture, EntraCredential, Secret, SourceError,
};
use acs_identity_operator::acs::{AcsClient, AcsClientOptions, ConnectionString, TokenScope};
use acs_identity_operator::api::conditions::reasons;
use acs_identity_operator::emulator::{EmulatorConfig, RunningEmulator, spawn};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

const KEY_DER: &[u8] = include_bytes!("../src/emulator/testdata/entra-test-rsa.der");
const ISSUER: &str = "https://kubernetes.default.svc";
const SUBJECT: &str = "system:serviceaccount:team-a:acs-client";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn key() -> ring::signature::RsaKeyPair {
    ring::signature::RsaKeyPair::from_der(KEY_DER).expect("test key")
}

fn jwks() -> Value {
    let public = ring::signature::RsaPublicKeyComponents::<Vec<u8>>::from(key().public());
    json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": b64(&public.n), "e": b64(&public.e)}]})
}

/// A ServiceAccount-token-like RS256 JWT, as the API server would mint it.
fn sa_token(subject: &str) -> String {
    let now = jiff::Timestamp::now().as_second();
    let header = json!({"alg": "RS256", "kid": "k1"});
    let claims = json!({"iss": ISSUER, "sub": subject, "aud": ["api://AzureADTokenExchange"], "iat": now, "nbf": now, "exp": now + 600});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let k = key();
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

struct TestSource {
    authority: String,
    tenant: String,
    subject: String,
    calls: AtomicUsize,
}

impl AssertionSource for TestSource {
    fn assertion(&self) -> BoxFuture<'_, Result<Assertion, SourceError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            // A slow TokenRequest: concurrent callers must still make one exchange.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Assertion {
                jwt: Secret::new(sa_token(&self.subject)),
                client_id: "client-1".into(),
                tenant_id: self.tenant.clone(),
                authority_host: self.authority.clone(),
            })
        })
    }
}

struct World {
    emulator: RunningEmulator,
    admin: reqwest::Client,
}

impl World {
    async fn start() -> World {
        World::with_lifetime(Duration::from_secs(3599)).await
    }

    async fn with_lifetime(lifetime: Duration) -> World {
        let emulator = spawn(EmulatorConfig {
            tls: true,
            disable_local_auth: true,
            entra_tenant: Some("tenant-1".into()),
            entra_token_lifetime: lifetime,
            ..EmulatorConfig::default()
        })
        .await
        .expect("emulator starts");
        let admin = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(emulator.ca_pem().unwrap().as_bytes()).unwrap(),
            )
            .build()
            .unwrap();
        let w = World { emulator, admin };
        w.post(
            "/admin/entra/issuers",
            json!({"issuer": ISSUER, "jwks": jwks()}),
        )
        .await;
        w.post(
            "/admin/entra/applications",
            json!({"clientId": "client-1", "objectId": "oid-1", "federatedCredentials": [
                {"name": "team-a", "issuer": ISSUER, "subject": SUBJECT, "audiences": ["api://AzureADTokenExchange"]}
            ]}),
        )
        .await;
        w
    }

    async fn post(&self, path: &str, body: Value) {
        let r = self
            .admin
            .post(format!("{}{path}", self.emulator.endpoint()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    async fn grant(&self) {
        self.post(
            "/admin/entra/roleAssignments",
            json!({"principalId": "oid-1", "role": "Contributor"}),
        )
        .await;
    }

    async fn entra(&self) -> Value {
        self.admin
            .get(format!("{}/admin/entra", self.emulator.endpoint()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn options(&self) -> AcsClientOptions {
        AcsClientOptions {
            extra_ca_pem: Some(self.emulator.ca_pem().unwrap().as_bytes().to_vec()),
            ..AcsClientOptions::default()
        }
    }

    fn client(&self, subject: &str) -> (AcsClient, Arc<EntraCredential>, Arc<TestSource>) {
        let source = Arc::new(TestSource {
            authority: self.emulator.endpoint().to_string(),
            tenant: "tenant-1".into(),
            subject: subject.into(),
            calls: AtomicUsize::new(0),
        });
        let credential = Arc::new(EntraCredential::new(
            "test".into(),
            AcsClient::http_client(&self.options()).unwrap(),
            source.clone(),
            None,
        ));
        let endpoint = url::Url::parse(self.emulator.endpoint()).unwrap();
        let client = AcsClient::with_entra(&endpoint, credential.clone(), self.options()).unwrap();
        (client, credential, source)
    }
}

#[tokio::test]
async fn the_identity_flow_runs_on_one_entra_token_with_local_auth_disabled() {
    let w = World::start().await;
    w.grant().await;
    let (client, credential, source) = w.client(SUBJECT);
    let created = client
        .create_user(Some(&[TokenScope::Voip]), Some(60), None)
        .await
        .expect("create with a bearer token");
    let id = created.user.id.clone();
    client
        .issue_token(&id, &[TokenScope::Chat], None)
        .await
        .unwrap();
    // Twenty concurrent issues: one Entra exchange between them all.
    let issues = (0..20).map(|_| client.issue_token(&id, &[TokenScope::Voip], None));
    for r in futures::future::join_all(issues).await {
        r.expect("issue");
    }
    client.revoke_tokens(&id).await.unwrap();
    client.delete_user(&id).await.unwrap();
    let counts = &w.entra().await["counts"];
    assert_eq!(counts["tokensIssued"], 1, "{counts}");
    assert_eq!(source.calls.load(Ordering::SeqCst), 1, "one assertion");
    let (client_id, tenant, expires) = credential.shown().expect("a token was obtained");
    assert_eq!(
        (client_id.as_str(), tenant.as_str()),
        ("client-1", "tenant-1")
    );
    assert!(expires > jiff::Timestamp::now());

    // The access key no longer opens the door.
    let hmac = AcsClient::new(
        &ConnectionString::parse(&w.emulator.connection_string()).unwrap(),
        w.options(),
    )
    .unwrap();
    let e = hmac.create_user(None, None, None).await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    assert_eq!(e.code(), Some("LocalAuthDisabled"));
}

#[tokio::test]
async fn a_401_drops_the_token_and_retries_once_and_403_names_the_role() {
    let w = World::start().await;
    let (client, _credential, _source) = w.client(SUBJECT);
    // No role assignment yet: 403, with what to grant.
    let e = client.create_user(None, None, None).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("Contributor") && msg.contains("Communication and Email Service Owner"),
        "{msg}"
    );
    w.grant().await;
    // One 401 on the next create: the client gets a new token and succeeds.
    w.post(
        "/admin/faults",
        json!({"operation": "create", "status": 401, "count": 1}),
    )
    .await;
    client
        .create_user(None, None, None)
        .await
        .expect("retried with a fresh token");
    assert_eq!(w.entra().await["counts"]["tokensIssued"], 2);
    // Two 401s: retried once only, then the error with the role hint.
    w.post(
        "/admin/faults",
        json!({"operation": "create", "status": 401, "count": 2}),
    )
    .await;
    let e = client.create_user(None, None, None).await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("Contributor"));
    assert_eq!(w.entra().await["counts"]["tokensIssued"], 3);
}

#[tokio::test]
async fn federation_and_availability_failures_are_classified_and_bounded() {
    let w = World::start().await;
    w.grant().await;
    // A ServiceAccount no federated credential names.
    let (client, credential, _) = w.client("system:serviceaccount:team-b:acs-client");
    let e = credential.token().await.unwrap_err();
    assert_eq!(e.reason(), reasons::FEDERATION_FAILED);
    assert!(e.is_transient(), "70021 is retried: propagation");
    assert!(e.to_string().contains("AADSTS70021"), "{e}");
    assert!(!e.to_string().contains("team-b"), "no claim echoed: {e}");
    // Within the backoff, the same answer without a new request.
    let e2 = client.create_user(None, None, None).await.unwrap_err();
    assert_eq!(e2.reason(), Some(reasons::FEDERATION_FAILED));
    assert_eq!(w.entra().await["counts"]["tokensRefused"], 1);

    // Entra throttles: EntraUnavailable with its Retry-After.
    let (_, credential, _) = w.client(SUBJECT);
    w.post(
        "/admin/faults",
        json!({"operation": "entra-token", "status": 429, "retryAfterSeconds": 7, "count": 1}),
    )
    .await;
    let e = credential.token().await.unwrap_err();
    assert_eq!(e.reason(), reasons::ENTRA_UNAVAILABLE);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn discovery_documents_are_what_msal_requires() {
    let w = World::start().await;
    let base = w.emulator.endpoint();
    let doc: Value = w
        .admin
        .get(format!(
            "{base}/tenant-1/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for field in [
        "issuer",
        "token_endpoint",
        "authorization_endpoint",
        "jwks_uri",
    ] {
        assert!(doc[field].is_string(), "{field}: {doc}");
    }
    assert!(
        doc["token_endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/tenant-1/oauth2/v2.0/token")
    );
    let keys: Value = w
        .admin
        .get(doc["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(keys["keys"].is_array());
}

#[tokio::test]
async fn a_short_lived_token_is_refreshed_before_it_expires_and_not_before() {
    // 3 s tokens: refreshed at two thirds of their life (2 s), never used expired.
    let w = World::with_lifetime(Duration::from_secs(3)).await;
    w.grant().await;
    let (client, credential, source) = w.client(SUBJECT);
    let first = credential.token().await.unwrap();
    for _ in 0..5 {
        client.create_user(None, None, None).await.unwrap();
    }
    assert_eq!(w.entra().await["counts"]["tokensIssued"], 1, "cached");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let second = credential.token().await.unwrap();
    assert!(second.expires_on > first.expires_on, "a new token");
    assert!(
        jiff::Timestamp::now() < first.expires_on,
        "refreshed while the old one was still valid"
    );
    client.create_user(None, None, None).await.unwrap();
    assert_eq!(w.entra().await["counts"]["tokensIssued"], 2);
    assert_eq!(
        source.calls.load(Ordering::SeqCst),
        2,
        "one ServiceAccount token per exchange"
    );
    assert_eq!(w.entra().await["counts"]["bearerRefused"], 0);
}

#[tokio::test]
async fn a_hostile_authority_is_bounded() {
    let w = World::start().await;
    let cases = [
        // 12 MiB of body: not read past the cap.
        (
            json!({"operation": "entra-token", "status": 200, "body": "0123456789abcdef", "bodyRepeat": 800_000, "count": 1}),
            reasons::ENTRA_UNAVAILABLE,
            None,
        ),
        // A Retry-After of 584 billion years: honoured up to 5 minutes.
        (
            json!({"operation": "entra-token", "status": 503, "retryAfter": "18446744073709551615", "count": 1}),
            reasons::ENTRA_UNAVAILABLE,
            Some(acs_identity_operator::acs::entra::MAX_RETRY_AFTER),
        ),
        // expires_in beyond any lifetime: capped, not overflowed.
        (
            json!({"operation": "entra-token", "status": 200, "body": "{\"token_type\":\"Bearer\",\"expires_in\":18446744073709551615,\"access_token\":\"x.y.z\"}", "count": 1}),
            "",
            None,
        ),
    ];
    for (rule, reason, retry_after) in cases {
        w.post("/admin/faults", rule.clone()).await;
        let (_, credential, _) = w.client(SUBJECT);
        match credential.token().await {
            Err(e) => {
                assert_eq!(e.reason(), reason, "{rule}: {e}");
                if retry_after.is_some() {
                    assert!(
                        e.retry_after() <= retry_after,
                        "{rule}: {:?}",
                        e.retry_after()
                    );
                }
            }
            Ok(t) => {
                assert_eq!(reason, "", "{rule}: accepted");
                let max = jiff::Timestamp::now()
                    + jiff::SignedDuration::try_from(
                        acs_identity_operator::acs::entra::MAX_TOKEN_LIFETIME,
                    )
                    .unwrap();
                assert!(t.expires_on <= max, "{rule}: expiry capped");
            }
        }
    }
}
