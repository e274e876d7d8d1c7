//! The emulator's request log (`/admin/requests`) and its body faults (`body`,
//! `bodyRepeat`, `truncateBytes`) over real HTTP: what the reliability suite relies on to
//! check `Retry-After` timing and to feed the client malformed answers.

mod support;

use acs_identity_operator::emulator::EmulatorConfig;
use jiff::Timestamp;
use reqwest::Method;
use serde_json::{Value, json};
use support::signing::{V, start};

#[tokio::test]
async fn the_request_log_records_times_operations_users_and_retry_after() {
    let mut config = EmulatorConfig::default();
    config.apply_quota("issue=1/30".parse().unwrap());
    let (_emu, c) = start(config).await;
    let id = c.create_user().await;
    assert_eq!(c.issue(&id, r#"{"scopes":["chat"]}"#).await.status, 200);
    let throttled = c.issue(&id, r#"{"scopes":["chat"]}"#).await;
    assert_eq!(throttled.status, 429);

    let log = c.admin(Method::GET, "/admin/requests", None).await.json;
    let log = log.as_array().expect("a list");
    assert_eq!(log.len(), 3, "{log:?}");
    let seqs: Vec<u64> = log.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0, 1, 2]);
    let ops: Vec<&str> = log
        .iter()
        .map(|r| r["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["create", "issue", "issue"]);
    let statuses: Vec<&str> = log.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201", "200", "429"]);
    assert!(log[0].get("identity").is_none(), "a create names no user");
    assert_eq!(log[1]["identity"], id.as_str());
    assert!(log[1].get("retryAfterSeconds").is_none());
    let retry_after = log[2]["retryAfterSeconds"]
        .as_u64()
        .expect("Retry-After recorded");
    assert_eq!(
        throttled.headers["retry-after"].to_str().unwrap(),
        retry_after.to_string()
    );
    for r in log {
        let received: Timestamp = r["receivedAt"].as_str().unwrap().parse().unwrap();
        let responded: Timestamp = r["respondedAt"].as_str().unwrap().parse().unwrap();
        assert!(received <= responded, "{r}");
    }

    assert_eq!(
        c.admin(Method::DELETE, "/admin/requests", None)
            .await
            .status,
        204
    );
    let empty = c.admin(Method::GET, "/admin/requests", None).await.json;
    assert_eq!(empty, json!([]));
    // Admin calls are not ACS requests and are not logged.
    c.admin(Method::GET, "/admin/stats", None).await;
    assert_eq!(
        c.admin(Method::GET, "/admin/requests", None).await.json,
        json!([])
    );
}

#[tokio::test]
async fn body_faults_send_raw_repeated_or_truncated_answers() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let id = c.create_user().await;
    let r = c
        .admin(
            Method::POST,
            "/admin/faults",
            Some(json!({"operation": "issue", "status": 201, "body": "<html>", "bodyRepeat": 2, "count": 1})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let raw = c.issue(&id, r#"{"scopes":["chat"]}"#).await;
    assert_eq!(raw.status, 201);
    assert_eq!(raw.json, Value::String("<html><html>".into()));

    c.admin(
        Method::POST,
        "/admin/faults",
        Some(json!({"operation": "create", "afterExecute": true, "truncateBytes": 5, "count": 1})),
    )
    .await;
    let cut = c
        .call(Method::POST, &format!("/identities?api-version={V}"), None)
        .await;
    assert_eq!(cut.status, 201, "the real status stays");
    assert_eq!(cut.json, Value::String("{\"ide".into()));
    let users = c.admin(Method::GET, "/admin/identities", None).await.json;
    assert_eq!(
        users.as_array().unwrap().len(),
        2,
        "the truncated create ran"
    );

    for bad in [
        json!({"truncateBytes": 5}),
        json!({"status": 500, "bodyRepeat": 2}),
        json!({"body": "x", "bodyRepeat": 1u64 << 40}),
    ] {
        let r = c
            .admin(Method::POST, "/admin/faults", Some(bad.clone()))
            .await;
        assert_eq!(r.status, 400, "{bad} was accepted");
    }
    // The faults were used up: the next answers are normal again.
    let ok = c.issue(&id, r#"{"scopes":["chat"]}"#).await;
    assert_eq!(ok.status, 200);
}
