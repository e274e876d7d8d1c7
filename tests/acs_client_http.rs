//! The ACS client over real HTTP against a scripted stand-in server: what goes on the wire
//! (signature, percent-encoded ids, bodies), retries, Retry-After, timeouts, quota, TLS with
//! an extra CA. The full flow against the emulator lives in `acs_client_emulator.rs`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use acs_identity_operator::acs::signing::{
    content_hash, parse_authorization, string_to_sign, verify,
};
use acs_identity_operator::acs::{
    AccessKey, AcsClient, AcsClientOptions, AcsError, Attempt, ConnectionString, QuotaConfig, Rate,
    RequestObserver, RetryPolicy, TokenScope,
};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

const KEY: &str = "c2VjcmV0LWtleS1ieXRlcw==";
const USER: &str =
    "8:acs:00000000-0000-0000-0000-000000000001_00000000-0000-0000-0000-000000000002";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3NjQwMDAwMDB9.c2ln";

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![],
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    body: String,
    signature_ok: bool,
    client_request_id: String,
    repeatability_request_id: String,
    repeatability_first_sent: String,
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

impl Script {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    script: Arc<Script>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    // Verify as ACS does: over the raw target and the Host header as received.
    let sts = string_to_sign(
        method.as_str(),
        &target,
        &header("x-ms-date"),
        &header("host"),
        &content_hash(&body),
    );
    let key = AccessKey::from_base64(KEY).unwrap();
    let signature_ok = header("x-ms-content-sha256") == content_hash(&body)
        && parse_authorization(&header("authorization"))
            .is_some_and(|a| verify(&key, &sts, &a.signature));
    script.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        target,
        body: String::from_utf8_lossy(&body).into_owned(),
        signature_ok,
        client_request_id: header("x-ms-client-request-id"),
        repeatability_request_id: header("repeatability-request-id"),
        repeatability_first_sent: header("repeatability-first-sent"),
    });
    let next = script.replies.lock().unwrap().pop_front();
    let Some(r) = next else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "script exhausted").into_response();
    };
    tokio::time::sleep(r.delay).await;
    let mut resp = (StatusCode::from_u16(r.status).unwrap(), r.body).into_response();
    for (k, v) in r.headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}

fn router(script: Arc<Script>) -> Router {
    Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            handle(script.clone(), method, uri, headers, body)
        },
    )
}

async fn serve(replies: Vec<Reply>) -> (Arc<Script>, SocketAddr) {
    let script = Arc::new(Script {
        replies: Mutex::new(replies.into()),
        seen: Mutex::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(script.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (script, addr)
}

fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_retry_after: Duration::from_secs(5),
    }
}

fn client(scheme: &str, addr: SocketAddr, options: AcsClientOptions) -> AcsClient {
    let cs =
        ConnectionString::parse(&format!("endpoint={scheme}://{addr}/;accesskey={KEY}")).unwrap();
    AcsClient::new(&cs, options).unwrap()
}

fn options(api_version: &str) -> AcsClientOptions {
    AcsClientOptions {
        api_version: api_version.into(),
        retry: fast_retries(3),
        request_timeout: Duration::from_secs(5),
        allow_insecure_endpoints: true,
        ..Default::default()
    }
}

/// `now + 1h` at a whole second, plus `.1234567`, as ACS writes it.
fn expires_on() -> String {
    static AT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    AT.get_or_init(|| {
        let at = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 3600).unwrap();
        format!("{}.1234567+00:00", at.strftime("%Y-%m-%dT%H:%M:%S"))
    })
    .clone()
}

fn token_json() -> String {
    // An hour from now, with ACS's 7 fraction digits: an expiry no ACS could grant (days
    // away) is refused by the client.
    format!(r#"{{"token":"{TOKEN}","expiresOn":"{}"}}"#, expires_on())
}

#[tokio::test]
async fn operations_send_signed_sdk_shaped_requests() {
    let create = format!(
        r#"{{"identity":{{"id":"{USER}"}},"accessToken":{}}}"#,
        token_json()
    );
    let (script, addr) = serve(vec![
        reply(201, &format!(r#"{{"identity":{{"id":"{USER}"}}}}"#)),
        reply(201, &create),
        reply(200, &token_json()),
        reply(204, ""),
        reply(204, ""),
    ])
    .await;
    let c = client("http", addr, options("2023-10-01"));

    let plain = c
        .create_user(None, None, Some("ignored-on-this-version"))
        .await
        .unwrap();
    assert!(plain.created && plain.token.is_none());
    let with_token = c
        .create_user(Some(&[TokenScope::Chat, TokenScope::Voip]), Some(60), None)
        .await
        .unwrap();
    assert_eq!(with_token.token.unwrap().token.expose_secret(), TOKEN);
    let t = c
        .issue_token(USER, &[TokenScope::VoipJoin], Some(1440))
        .await
        .unwrap();
    assert_eq!(
        t.expires_on.to_string(),
        expires_on().replace("+00:00", "Z")
    );
    c.revoke_tokens(USER).await.unwrap();
    c.delete_user(USER).await.unwrap();

    let seen = script.seen();
    assert!(seen.iter().all(|s| s.signature_ok), "{seen:?}");
    let enc = "8%3Aacs%3A00000000-0000-0000-0000-000000000001_00000000-0000-0000-0000-000000000002";
    let want = [
        ("POST", "/identities?api-version=2023-10-01".to_string(), ""),
        (
            "POST",
            "/identities?api-version=2023-10-01".to_string(),
            r#"{"createTokenWithScopes":["chat","voip"],"expiresInMinutes":60}"#,
        ),
        (
            "POST",
            format!("/identities/{enc}/:issueAccessToken?api-version=2023-10-01"),
            r#"{"scopes":["voip.join"],"expiresInMinutes":1440}"#,
        ),
        (
            "POST",
            format!("/identities/{enc}/:revokeAccessTokens?api-version=2023-10-01"),
            "",
        ),
        (
            "DELETE",
            format!("/identities/{enc}?api-version=2023-10-01"),
            "",
        ),
    ];
    assert_eq!(seen.len(), want.len());
    for (s, (m, t, b)) in seen.iter().zip(want) {
        assert_eq!(
            (s.method.as_str(), s.target.as_str(), s.body.as_str()),
            (m, t.as_str(), b)
        );
    }
}

#[tokio::test]
async fn custom_id_and_get_user_on_newer_api_version() {
    let (script, addr) = serve(vec![
        reply(
            201,
            &format!(r#"{{"identity":{{"id":"{USER}","customId":"uid-1"}}}}"#),
        ),
        reply(
            200,
            &format!(r#"{{"identity":{{"id":"{USER}","customId":"uid-1"}}}}"#),
        ),
        reply(
            200,
            &format!(
                r#"{{"id":"{USER}","customId":"uid-1","lastTokenIssuedAt":"2026-01-01T00:00:00Z"}}"#
            ),
        ),
    ])
    .await;
    let c = client("http", addr, options("2025-03-02-preview"));
    assert!(c.supports_custom_id());
    let first = c.create_user(None, None, Some("uid-1")).await.unwrap();
    let again = c.create_user(None, None, Some("uid-1")).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(again.user.id, first.user.id);
    let got = c.get_user(USER).await.unwrap();
    assert_eq!(got.custom_id.as_deref(), Some("uid-1"));
    let seen = script.seen();
    assert_eq!(seen[0].body, r#"{"customId":"uid-1"}"#);
    assert_eq!(seen[2].method, "GET");
    assert!(seen.iter().all(|s| s.signature_ok));

    // The older default version refuses get_user before sending anything.
    let old = client("http", addr, options("2023-10-01"));
    assert!(matches!(
        old.get_user(USER).await,
        Err(AcsError::Unsupported { .. })
    ));
    assert_eq!(script.seen().len(), 3);
}

#[tokio::test]
async fn retries_5xx_and_429_then_succeeds() {
    let mut throttled = reply(
        429,
        r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#,
    );
    throttled.headers.push(("retry-after-ms", "20".into()));
    let (script, addr) = serve(vec![reply(503, ""), throttled, reply(200, &token_json())]).await;
    let c = client("http", addr, options("2023-10-01"));
    let t = c
        .issue_token(USER, &[TokenScope::Chat], None)
        .await
        .unwrap();
    assert_eq!(t.token.expose_secret(), TOKEN);
    assert_eq!(script.seen().len(), 3);
}

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let mut throttled = reply(429, "");
    throttled.headers.push(("retry-after", "1".into()));
    let (_script, addr) = serve(vec![throttled, reply(204, "")]).await;
    let c = client("http", addr, options("2023-10-01"));
    let started = Instant::now();
    c.revoke_tokens(USER).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retry_after_beyond_the_bound_is_returned_to_the_caller() {
    let mut throttled = reply(429, "");
    throttled.headers.push(("retry-after", "3600".into()));
    let (script, addr) = serve(vec![throttled]).await;
    let c = client("http", addr, options("2023-10-01"));
    let e = c.delete_user(USER).await.unwrap_err();
    assert_eq!(e.status(), Some(429));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let (script, addr) = serve(vec![
        reply(500, ""),
        reply(502, ""),
        reply(503, ""),
        reply(204, ""),
    ])
    .await;
    let c = client("http", addr, options("2023-10-01"));
    let e = c.delete_user(USER).await.unwrap_err();
    assert_eq!(e.status(), Some(503));
    assert_eq!(e.metric_label(), "server_error");
    assert_eq!(script.seen().len(), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    for (status, code) in [
        (400, "ValidationError"),
        (401, "Denied"),
        (403, "Forbidden"),
        (404, "IdentityNotFound"),
    ] {
        let body = format!(r#"{{"error":{{"code":"{code}","message":"nope"}}}}"#);
        let (script, addr) = serve(vec![reply(status, &body), reply(200, &token_json())]).await;
        let c = client("http", addr, options("2023-10-01"));
        let e = c
            .issue_token(USER, &[TokenScope::Chat], None)
            .await
            .unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(status), Some(code)));
        assert_eq!(e.is_not_found(), status == 404);
        assert!(!e.is_retryable());
        assert_eq!(script.seen().len(), 1, "{status}");
    }
}

#[tokio::test]
async fn malformed_success_is_a_typed_error_without_the_token() {
    let (_s, addr) = serve(vec![reply(
        200,
        r#"{"token":"SECRETTOKEN","expiresOn":"never"}"#,
    )])
    .await;
    let c = client("http", addr, options("2023-10-01"));
    let e = c
        .issue_token(USER, &[TokenScope::Chat], None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, AcsError::MalformedResponse { status: 200, .. }),
        "{e:?}"
    );
    assert!(!format!("{e} {e:?}").contains("SECRETTOKEN"));
}

#[tokio::test]
async fn timeouts_are_typed_and_retried() {
    let mut slow = reply(204, "");
    slow.delay = Duration::from_secs(2);
    let (script, addr) = serve(vec![slow, reply(204, "")]).await;
    let c = client(
        "http",
        addr,
        AcsClientOptions {
            request_timeout: Duration::from_millis(200),
            ..options("2023-10-01")
        },
    );
    c.revoke_tokens(USER).await.unwrap();
    assert_eq!(script.seen().len(), 2);

    let mut slow = reply(204, "");
    slow.delay = Duration::from_secs(2);
    let (_s, addr) = serve(vec![slow]).await;
    let c = client(
        "http",
        addr,
        AcsClientOptions {
            request_timeout: Duration::from_millis(200),
            retry: RetryPolicy::no_retries(),
            ..options("2023-10-01")
        },
    );
    let e = c.revoke_tokens(USER).await.unwrap_err();
    assert!(matches!(e, AcsError::Timeout { .. }), "{e:?}");
    assert_eq!(e.metric_label(), "timeout");
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Attempt>>);

impl RequestObserver for Recorder {
    fn on_attempt(&self, attempt: &Attempt) {
        self.0.lock().unwrap().push(attempt.clone());
    }
}

#[tokio::test]
async fn connection_refused_is_retried_transport_error() {
    // Bind and drop to get a port nobody listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let recorder = Arc::new(Recorder::default());
    let c = client(
        "http",
        addr,
        AcsClientOptions {
            observer: Some(recorder.clone()),
            ..options("2023-10-01")
        },
    );
    let e = c.create_user(None, None, None).await.unwrap_err();
    assert!(
        matches!(e, AcsError::Transport { connect: true, .. }),
        "{e:?}"
    );
    assert!(e.is_retryable());
    let attempts = recorder.0.lock().unwrap().clone();
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts
            .iter()
            .all(|a| a.result == "transport" && a.status.is_none())
    );
}

#[tokio::test]
async fn quota_makes_requests_wait_instead_of_failing() {
    let (_s, addr) = serve(vec![reply(204, ""), reply(204, ""), reply(204, "")]).await;
    let c = client(
        "http",
        addr,
        AcsClientOptions {
            quota: QuotaConfig {
                revoke_tokens: Some(Rate::new(1, Duration::from_millis(300))),
                ..QuotaConfig::unlimited()
            },
            ..options("2023-10-01")
        },
    );
    let started = Instant::now();
    for _ in 0..3 {
        c.revoke_tokens(USER).await.unwrap();
    }
    // The first is free; the next two wait 300 ms each.
    assert!(
        started.elapsed() >= Duration::from_millis(590),
        "{:?}",
        started.elapsed()
    );
}

/// An endpoint that redirects must not turn the client into a signed-request (and token)
/// courier for wherever it points.
#[tokio::test]
async fn redirects_are_not_followed() {
    let (elsewhere, other) = serve(vec![reply(200, &token_json())]).await;
    let mut moved = reply(302, "");
    moved.headers.push((
        "location",
        format!("http://{other}/identities/x/:issueAccessToken?api-version=2023-10-01"),
    ));
    let mut permanent = moved.clone();
    permanent.status = 308;
    let (script, addr) = serve(vec![moved, permanent]).await;
    let c = client("http", addr, options("2023-10-01"));
    for status in [302, 308] {
        let e = c
            .issue_token(USER, &[TokenScope::Chat], None)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(status), "{e:?}");
        assert!(!e.is_retryable(), "{e:?}");
    }
    assert_eq!(script.seen().len(), 2, "each answered once, not retried");
    assert!(
        elsewhere.seen().is_empty(),
        "the redirect target was never contacted"
    );
}

const CREATED: &str = r#"{"identity":{"id":"8:acs:r_u"}}"#;

/// Without custom ids a create that may have reached ACS is never sent again: a second
/// create would make a second, unrecorded user. A 429 (ACS did not act) is retried.
#[tokio::test]
async fn a_create_without_custom_ids_is_not_retried_once_acs_may_have_acted() {
    for version in ["2023-10-01", "2025-06-30", "2026-07-22"] {
        let mut late = reply(201, CREATED);
        late.delay = Duration::from_millis(500);
        for first in [reply(500, ""), reply(503, ""), reply(408, ""), late] {
            let (script, addr) = serve(vec![first.clone(), reply(201, CREATED)]).await;
            let c = client(
                "http",
                addr,
                AcsClientOptions {
                    request_timeout: Duration::from_millis(200),
                    ..options(version)
                },
            );
            let e = c.create_user(None, None, Some("uid-1")).await.unwrap_err();
            assert!(e.is_outcome_unknown(), "{version} {}: {e:?}", first.status);
            assert_eq!(
                script.seen().len(),
                1,
                "{version} {}: not retried",
                first.status
            );
            assert_eq!(script.seen()[0].body, "", "{version}: no customId sent");
        }
        let mut throttled = reply(429, "");
        throttled.headers.push(("retry-after-ms", "10".into()));
        let (script, addr) = serve(vec![throttled, reply(201, CREATED)]).await;
        let c = client("http", addr, options(version));
        c.create_user(None, None, None)
            .await
            .expect("a 429 is retried: ACS did not act");
        assert_eq!(script.seen().len(), 2);
    }

    // With custom ids the retry is safe and happens.
    let (script, addr) = serve(vec![reply(503, ""), reply(200, CREATED)]).await;
    let c = client("http", addr, options("2025-03-02-preview"));
    c.create_user(None, None, Some("uid-1")).await.unwrap();
    let seen = script.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body == r#"{"customId":"uid-1"}"#));
}

/// Error text from an endpoint reaches conditions and events: cut, and without control
/// characters (no forged log lines, no terminal escapes). Non-JSON bodies are not echoed.
#[tokio::test]
async fn endpoint_error_text_is_cut_and_stripped() {
    let long = format!(
        r#"{{"error":{{"code":"Bad\nCode","message":"first\r\nlevel=info msg=forged \u001b[2J{}"}}}}"#,
        "x".repeat(5000)
    );
    let (_script, addr) = serve(vec![
        reply(400, &long),
        reply(400, "<html>secret-looking page body</html>"),
    ])
    .await;
    let c = client("http", addr, options("2023-10-01"));
    let e = c.revoke_tokens(USER).await.unwrap_err();
    let shown = e.to_string();
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    assert!(
        shown.contains("Bad Code") && shown.contains("first level=info"),
        "{shown}"
    );
    assert!(shown.chars().count() < 500, "{}", shown.chars().count());
    let e = c.revoke_tokens(USER).await.unwrap_err();
    assert!(!format!("{e} {e:?}").contains("page body"), "{e:?}");
}

mod tls {
    use super::*;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    async fn serve_tls(replies: Vec<Reply>) -> (Arc<Script>, SocketAddr, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let cert_pem = ck.cert.pem();
        let cert = CertificateDer::from(ck.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let script = Arc::new(Script {
            replies: Mutex::new(replies.into()),
            seen: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(script.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                        .await;
                });
            }
        });
        (script, addr, cert_pem)
    }

    #[tokio::test]
    async fn https_with_extra_ca_works_and_without_it_fails() {
        let (script, addr, ca) = serve_tls(vec![reply(200, &token_json())]).await;
        let trusted = client(
            "https",
            addr,
            AcsClientOptions {
                extra_ca_pem: Some(ca.into_bytes()),
                ..options("2023-10-01")
            },
        );
        let t = trusted
            .issue_token(USER, &[TokenScope::Chat], Some(60))
            .await
            .unwrap();
        assert_eq!(t.token.expose_secret(), TOKEN);
        assert!(script.seen()[0].signature_ok);

        let untrusted = client(
            "https",
            addr,
            AcsClientOptions {
                retry: RetryPolicy::no_retries(),
                ..options("2023-10-01")
            },
        );
        let e = untrusted
            .issue_token(USER, &[TokenScope::Chat], Some(60))
            .await
            .unwrap_err();
        assert!(matches!(e, AcsError::Transport { .. }), "{e:?}");
        assert_eq!(script.seen().len(), 1);
    }
}

/// 2023-08-01 creates carry a fresh `Repeatability-Request-ID` and the HTTP date of their
/// first sending, the same on every retry, which makes them retry-safe: a 5xx or a late
/// answer is retried like a custom-id create. Other versions send neither header.
#[tokio::test]
async fn creates_on_2023_08_01_carry_repeatability_headers_and_are_retried() {
    let mut late = reply(201, CREATED);
    late.delay = Duration::from_millis(500);
    for first in [reply(500, ""), reply(503, ""), late] {
        let (script, addr) = serve(vec![first.clone(), reply(201, CREATED)]).await;
        let c = client(
            "http",
            addr,
            AcsClientOptions {
                request_timeout: Duration::from_millis(200),
                ..options("2023-08-01")
            },
        );
        let before = std::time::SystemTime::now() - Duration::from_secs(1);
        c.create_user(None, None, Some("uid-1"))
            .await
            .unwrap_or_else(|e| panic!("{}: retried: {e:?}", first.status));
        let seen = script.seen();
        assert_eq!(seen.len(), 2, "{}", first.status);
        let id = &seen[0].repeatability_request_id;
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id:?}");
        assert!(seen.iter().all(|s| &s.repeatability_request_id == id));
        let sent = httpdate::parse_http_date(&seen[0].repeatability_first_sent).unwrap();
        assert!(sent >= before && sent <= std::time::SystemTime::now());
        assert!(
            seen.iter()
                .all(|s| s.repeatability_first_sent == seen[0].repeatability_first_sent)
        );
        // Each attempt has its own client request id.
        assert_ne!(seen[0].client_request_id, seen[1].client_request_id);
        assert_eq!(seen[0].body, "", "no customId on 2023-08-01");
    }
    // A fresh request id per logical create.
    let (script, addr) = serve(vec![reply(201, CREATED), reply(201, CREATED)]).await;
    let c = client("http", addr, options("2023-08-01"));
    c.create_user(None, None, None).await.unwrap();
    c.create_user(None, None, None).await.unwrap();
    let seen = script.seen();
    assert_ne!(
        seen[0].repeatability_request_id,
        seen[1].repeatability_request_id
    );
    // Not on other versions, nor on other operations.
    let (script, addr) = serve(vec![reply(201, CREATED), reply(204, "")]).await;
    let c = client("http", addr, options("2023-10-01"));
    c.create_user(None, None, None).await.unwrap();
    let c = client("http", addr, options("2023-08-01"));
    c.revoke_tokens(USER).await.unwrap();
    assert!(script.seen().iter().all(|s| s.repeatability_request_id.is_empty()
        && s.repeatability_first_sent.is_empty()));
}

/// Every attempt sends its own `x-ms-client-request-id`; the error of an answered attempt
/// keeps it, so a failure can be traced with Azure support.
#[tokio::test]
async fn errors_keep_the_client_request_id_of_their_attempt() {
    let not_owned = reply(
        401,
        r#"{"error":{"code":"IdentityNotOwned","message":"Provided identity doesn't belong to the resource."}}"#,
    );
    let (script, addr) = serve(vec![not_owned]).await;
    let c = client("http", addr, options("2023-10-01"));
    let e = c.delete_user(USER).await.unwrap_err();
    assert!(e.is_identity_not_owned() && !e.is_not_found(), "{e:?}");
    let sent = &script.seen()[0].client_request_id;
    assert!(uuid::Uuid::parse_str(sent).is_ok(), "{sent:?}");
    assert_eq!(e.client_request_id(), Some(sent.as_str()));

    let (script, addr) = serve(vec![reply(503, ""), reply(503, "")]).await;
    let c = client(
        "http",
        addr,
        AcsClientOptions {
            retry: fast_retries(2),
            ..options("2023-10-01")
        },
    );
    let e = c.revoke_tokens(USER).await.unwrap_err();
    let seen = script.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        e.client_request_id(),
        Some(seen[1].client_request_id.as_str()),
        "the last attempt's"
    );
}

/// One exchange as a recording proxy in front of the emulator saw it.
#[derive(Debug, Clone, Default)]
struct Relayed {
    /// The `x-ms-client-request-id` the client sent (and the emulator received).
    sent: String,
    /// The `x-ms-client-request-id` the emulator echoed; empty when no answer came.
    echoed: String,
    /// The emulator's `MS-CV`; empty when no answer came.
    ms_cv: String,
}

/// A proxy that hands every request to the emulator unchanged (Host header included, so
/// the signature over the proxy's address still verifies) and records the ids it saw.
async fn relay_to(emulator: &str) -> (Arc<Mutex<Vec<Relayed>>>, SocketAddr) {
    const HOP: [&str; 3] = ["content-length", "transfer-encoding", "connection"];
    let log: Arc<Mutex<Vec<Relayed>>> = Arc::default();
    let (upstream, http) = (
        emulator.trim_end_matches('/').to_string(),
        reqwest::Client::new(),
    );
    let seen = log.clone();
    let app = Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (seen, upstream, http) = (seen.clone(), upstream.clone(), http.clone());
            async move {
                let header = |h: &HeaderMap, n: &str| {
                    h.get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let index = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(Relayed {
                        sent: header(&headers, "x-ms-client-request-id"),
                        ..Relayed::default()
                    });
                    seen.len() - 1
                };
                let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let mut forward = http.request(method, format!("{upstream}{target}"));
                for (name, value) in headers.iter().filter(|(n, _)| !HOP.contains(&n.as_str())) {
                    forward = forward.header(name, value);
                }
                let Ok(answer) = forward.body(body).send().await else {
                    return StatusCode::BAD_GATEWAY.into_response();
                };
                let (status, answer_headers) = (answer.status(), answer.headers().clone());
                let bytes = answer.bytes().await.unwrap_or_default();
                if let Some(r) = seen.lock().unwrap().get_mut(index) {
                    r.echoed = header(&answer_headers, "x-ms-client-request-id");
                    r.ms_cv = header(&answer_headers, "ms-cv");
                }
                let mut response = (status, bytes).into_response();
                for (name, value) in answer_headers.iter() {
                    if !HOP.contains(&name.as_str()) {
                        response.headers_mut().insert(name, value.clone());
                    }
                }
                response
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (log, addr)
}

/// A failed request's error carries the `x-ms-client-request-id` the emulator received
/// and echoed, and the `MS-CV` it answered with, whatever the failure (an ACS error, an
/// answer too large, no answer in time); neither reaches the message, which conditions
/// carry. The operator logs both on its `reconcile failed` warning.
#[tokio::test]
async fn failed_requests_carry_the_client_request_id_the_emulator_echoed() {
    use acs_identity_operator::emulator::{self, EmulatorConfig};
    let emu = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let (relayed, proxy) = relay_to(emu.endpoint()).await;
    let via_proxy = |request_timeout| {
        let cs = emu
            .connection_string()
            .split(';')
            .map(|part| match part.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("endpoint") => {
                    format!("endpoint=http://{proxy}/")
                }
                _ => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(";");
        AcsClient::new(
            &ConnectionString::parse(&cs).unwrap(),
            AcsClientOptions {
                request_timeout,
                retry: RetryPolicy::no_retries(),
                ..options("2023-10-01")
            },
        )
        .unwrap()
    };
    let fault = |rule: serde_json::Value| {
        let admin = format!("{}/admin/faults", emu.endpoint().trim_end_matches('/'));
        async move {
            let r = reqwest::Client::new()
                .post(admin)
                .json(&rule)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{rule}: {}", r.status());
        }
    };
    let c = via_proxy(Duration::from_secs(5));
    // A real user first: the requests signed over the proxy's address are accepted.
    let user = c.create_user(None, None, None).await.unwrap().user.id;

    // ACS answers with an error (a user this resource never had).
    let e = c
        .issue_token(USER, &[TokenScope::Chat], None)
        .await
        .unwrap_err();
    assert!(matches!(e, AcsError::Service { .. }), "{e:?}");
    // An answer too large to read.
    fault(
        serde_json::json!({"operation": "issue", "status": 200, "count": 1,
        "body": "0123456789abcdef", "bodyRepeat": 8192}),
    )
    .await;
    let too_large = c
        .issue_token(&user, &[TokenScope::Chat], None)
        .await
        .unwrap_err();
    assert!(
        matches!(too_large, AcsError::TooLarge { .. }),
        "{too_large:?}"
    );
    for (e, r) in [&e, &too_large]
        .into_iter()
        .zip(&relayed.lock().unwrap()[1..])
    {
        assert!(uuid::Uuid::parse_str(&r.sent).is_ok(), "{r:?}");
        assert_eq!(r.echoed, r.sent, "the emulator echoes the id");
        assert_eq!(e.client_request_id(), Some(r.echoed.as_str()), "{e:?}");
        assert!(!r.ms_cv.is_empty(), "{r:?}");
        assert_eq!(e.ms_cv(), Some(r.ms_cv.as_str()), "{e:?}");
        let shown = e.to_string();
        assert!(
            !shown.contains(&r.sent) && !shown.contains(&r.ms_cv),
            "{shown}"
        );
    }

    // No answer in time: the id the emulator received, no MS-CV.
    fault(serde_json::json!({"operation": "issue", "latencyMs": 3000, "count": 1})).await;
    let e = via_proxy(Duration::from_millis(300))
        .issue_token(&user, &[TokenScope::Chat], None)
        .await
        .unwrap_err();
    assert!(matches!(e, AcsError::Timeout { .. }), "{e:?}");
    let sent = relayed.lock().unwrap().last().unwrap().sent.clone();
    assert!(uuid::Uuid::parse_str(&sent).is_ok(), "{sent:?}");
    assert_eq!(e.client_request_id(), Some(sent.as_str()));
    assert_eq!(e.ms_cv(), None);
    assert!(!e.to_string().contains(&sent), "{e}");
    assert_eq!(relayed.lock().unwrap().len(), 4, "one request each");
    emu.shutdown().await;
}

/// A request that never got through still names the id it was sent with.
#[tokio::test]
async fn a_refused_connection_keeps_the_client_request_id_it_tried() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = client(
        "http",
        addr,
        AcsClientOptions {
            retry: RetryPolicy::no_retries(),
            ..options("2023-10-01")
        },
    );
    let e = c.revoke_tokens(USER).await.unwrap_err();
    assert!(
        matches!(e, AcsError::Transport { connect: true, .. }),
        "{e:?}"
    );
    let id = e.client_request_id().expect("the attempt's id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id:?}");
    assert!(!e.to_string().contains(id), "{e}");
}
