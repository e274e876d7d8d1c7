//! The emulator's unkind side over real HTTP: quotas with 429 and Retry-After, injected
//! faults (flag and admin API, including dropped connections), TLS, and the state file.

mod support;

use std::time::{Duration, Instant};

use acs_identity_operator::emulator::{EmulatorConfig, QuotaSetting};
use reqwest::Method;
use serde_json::json;
use support::signing::{Tweak, V, enc, start};

#[tokio::test]
async fn quota_answers_429_with_retry_after_per_operation() {
    let mut config = EmulatorConfig::default();
    config.apply_quota("issue=3/30".parse::<QuotaSetting>().unwrap());
    let (_emu, c) = start(config).await;
    let id = c.create_user().await;
    for _ in 0..3 {
        assert_eq!(c.issue(&id, r#"{"scopes":["chat"]}"#).await.status, 200);
    }
    let r = c.issue(&id, r#"{"scopes":["chat"]}"#).await;
    assert_eq!((r.status, r.code()), (429, "TooManyRequests"));
    let retry_after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    // Other operations have their own budget.
    c.create_user().await;
    // Unsigned requests are refused before they count against the quota.
    let r = c
        .call_tweaked(
            Method::POST,
            &format!("/identities/{}/:issueAccessToken?api-version={V}", enc(&id)),
            Some("{}"),
            Tweak {
                no_auth: true,
                ..Tweak::default()
            },
        )
        .await;
    assert_eq!(r.status, 401);
    let stats = c.admin(Method::GET, "/admin/stats", None).await.json;
    assert_eq!(stats["requests"]["issue"]["429"], 1);
}

#[tokio::test]
async fn short_window_quota_recovers() {
    let mut config = EmulatorConfig::default();
    config.apply_quota("create=2/1".parse().unwrap());
    let (_emu, c) = start(config).await;
    c.create_user().await;
    c.create_user().await;
    let r = c
        .call(Method::POST, &format!("/identities?api-version={V}"), None)
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.create_user().await;
}

#[tokio::test]
async fn faults_from_config_and_admin_api() {
    let config = EmulatorConfig {
        faults: vec![
            "operation=create,status=503,count=1,retryAfterSeconds=2"
                .parse()
                .unwrap(),
        ],
        ..EmulatorConfig::default()
    };
    let (_emu, c) = start(config).await;
    let create = format!("/identities?api-version={V}");
    let r = c.call(Method::POST, &create, None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "2");
    assert!(r.json["error"]["code"].is_string());
    let id = c.create_user().await;

    let r = c
        .admin(
            Method::POST,
            "/admin/faults",
            Some(json!({"operation": "issue", "status": 429, "retryAfterSeconds": 1, "count": 2})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    for _ in 0..2 {
        let r = c.issue(&id, r#"{"scopes":["chat"]}"#).await;
        assert_eq!((r.status, r.code()), (429, "TooManyRequests"));
        assert_eq!(r.headers["retry-after"], "1");
    }
    assert_eq!(c.issue(&id, r#"{"scopes":["chat"]}"#).await.status, 200);

    // Dropped connections: the client sees a transport error, not a status.
    let r = c
        .admin(
            Method::POST,
            "/admin/faults",
            Some(json!({"operation": "issue", "drop": true})),
        )
        .await;
    assert_eq!(r.status, 201);
    let err = c
        .try_call(
            Method::POST,
            &format!("/identities/{}/:issueAccessToken?api-version={V}", enc(&id)),
            Some(r#"{"scopes":["chat"]}"#),
            Tweak::default(),
        )
        .await;
    assert!(err.is_err(), "expected a dropped connection");
    assert_eq!(
        c.admin(Method::DELETE, "/admin/faults", None).await.status,
        204
    );
    assert_eq!(c.issue(&id, r#"{"scopes":["chat"]}"#).await.status, 200);

    // Latency only: slow but successful.
    c.admin(
        Method::POST,
        "/admin/faults",
        Some(json!({"latencyMs": 300, "count": 1})),
    )
    .await;
    let started = Instant::now();
    assert_eq!(c.issue(&id, r#"{"scopes":["chat"]}"#).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let stats = c.admin(Method::GET, "/admin/stats", None).await.json;
    assert_eq!(stats["requests"]["issue"]["dropped"], 1);
    assert_eq!(stats["requests"]["create"]["503"], 1);
}

#[tokio::test]
async fn tls_mode_serves_https_with_a_ca_the_client_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let ca_out = dir.path().join("ca.pem");
    let config = EmulatorConfig {
        tls: true,
        tls_ca_out: Some(ca_out.clone()),
        ..EmulatorConfig::default()
    };
    let (emu, c) = start(config).await;
    assert!(emu.endpoint().starts_with("https://127.0.0.1:"));
    assert!(emu.connection_string().starts_with("endpoint=https://"));
    let written = std::fs::read_to_string(&ca_out).unwrap();
    assert_eq!(Some(written.as_str()), emu.ca_pem());
    let id = c.create_user().await;
    assert_eq!(c.issue(&id, r#"{"scopes":["voip"]}"#).await.status, 200);
    // A client that doesn't trust the CA can't talk to it.
    let untrusting = reqwest::Client::new();
    assert!(
        untrusting
            .get(format!("{}/admin/stats", emu.endpoint()))
            .send()
            .await
            .is_err()
    );
    // "localhost" is in the certificate too.
    let local = emu.endpoint().replace("127.0.0.1", "localhost");
    let r = c
        .http
        .get(format!("{local}/admin/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn tls_sans_make_the_certificate_valid_for_other_names() {
    // 127.0.0.2 is a local address that the default certificate does not name.
    let config = EmulatorConfig {
        listen: "127.0.0.2:0".parse().unwrap(),
        tls: true,
        tls_sans: vec![
            "127.0.0.2".to_string(),
            "acs-emulator.node.test".to_string(),
        ],
        ..EmulatorConfig::default()
    };
    let (emu, c) = start(config).await;
    assert!(emu.endpoint().starts_with("https://127.0.0.2:"));
    // The IP address SAN: the emulator's own client connects by IP.
    let id = c.create_user().await;
    assert_eq!(c.issue(&id, r#"{"scopes":["chat"]}"#).await.status, 200);
    // A DNS name SAN; a name that is not in the certificate fails verification.
    let addr: std::net::SocketAddr = emu.endpoint()["https://".len()..].parse().unwrap();
    let ca = reqwest::Certificate::from_pem(emu.ca_pem().unwrap().as_bytes()).unwrap();
    let get = |name: &'static str| {
        let client = reqwest::Client::builder()
            .add_root_certificate(ca.clone())
            .resolve(name, addr)
            .build()
            .unwrap();
        async move {
            client
                .get(format!("https://{name}:{}/admin/stats", addr.port()))
                .send()
                .await
        }
    };
    assert_eq!(get("acs-emulator.node.test").await.unwrap().status(), 200);
    let err = get("other.node.test").await.unwrap_err();
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
}

#[tokio::test]
async fn state_file_keeps_users_and_tokens_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let config = EmulatorConfig {
        state_file: Some(state.clone()),
        ..EmulatorConfig::default()
    };
    let (emu, c) = start(config.clone()).await;
    let id = c.create_user().await;
    let token = c.issue(&id, r#"{"scopes":["chat"]}"#).await.json["token"]
        .as_str()
        .unwrap()
        .to_string();
    let key = emu.access_key().clone();
    let resource = emu.resource_id();
    emu.shutdown().await;

    let config = EmulatorConfig {
        access_key: Some(key),
        ..config
    };
    let (emu, c) = start(config).await;
    assert_eq!(emu.resource_id(), resource);
    assert_eq!(c.validate(&token).await, (true, "valid".to_string()));
    let list = c.admin(Method::GET, "/admin/identities", None).await.json;
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(c.issue(&id, r#"{"scopes":["chat"]}"#).await.status, 200);

    // A state file of another resource is refused instead of silently orphaning its users.
    let other = EmulatorConfig {
        state_file: Some(state),
        resource_id: Some(uuid::Uuid::new_v4()),
        ..EmulatorConfig::default()
    };
    assert!(acs_identity_operator::emulator::spawn(other).await.is_err());
}

#[tokio::test]
async fn binary_prints_the_connection_string_first_and_saves_state_on_sigterm() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_acs-emulator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--quota",
            "create=1/30",
            "--state-file",
        ])
        .arg(&state)
        .env("ACS_EMULATOR_TOKEN_LIFETIME_SCALE", "0.5")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let conn = line
        .trim()
        .strip_prefix("ACS_CONNECTION_STRING=")
        .expect("first line names the connection string");
    let parsed =
        acs_identity_operator::acs::connection_string::ConnectionString::parse(conn).unwrap();
    assert!(conn.starts_with("endpoint=http://127.0.0.1:") && conn.contains("/;accesskey="));

    let c = support::signing::Client {
        http: reqwest::Client::new(),
        endpoint: parsed.endpoint_str(),
        key: parsed.key().clone(),
    };
    let id = c.create_user().await;
    let r = c
        .issue(&id, r#"{"scopes":["chat"],"expiresInMinutes":60}"#)
        .await;
    let expires_on: jiff::Timestamp = r.json["expiresOn"].as_str().unwrap().parse().unwrap();
    let lifetime = expires_on.as_second() - jiff::Timestamp::now().as_second();
    assert!(
        (1795..=1800).contains(&lifetime),
        "env scale 0.5 applies: {lifetime}"
    );
    let r = c
        .call(Method::POST, &format!("/identities?api-version={V}"), None)
        .await;
    assert_eq!(r.status, 429, "--quota applies");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["identities"][0]["id"], id.as_str());
    assert_eq!(saved["identities"][0]["tokensIssued"], 1);
}
