//! The emulator's request log (`/admin/requests`), its body faults (`body`,
//! `bodyRepeat`, `bodyChunked`, `truncateBytes`) and the answers of a hostile endpoint (raw
//! `retryAfter` / `retryAfterMs` / `xMsRetryAfterMs` headers, `varyMessage`) over real HTTP: what the reliability suite relies on to
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

#[tokio::test]
async fn hostile_faults_send_raw_retry_headers_varying_texts_and_streamed_100_mib() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let r = c
        .admin(
            Method::POST,
            "/admin/faults",
            Some(json!([
                {"operation": "create", "status": 429, "count": 1,
                 "retryAfter": "18446744073709551615", "retryAfterMs": "-1",
                 "xMsRetryAfterMs": "Fri, 31 Dec 9999 23:59:59 GMT"},
                {"operation": "create", "status": 500, "varyMessage": true, "count": 2},
            ])),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let target = format!("/identities?api-version={V}");
    let create = || c.call(Method::POST, &target, None);
    let throttled = create().await;
    assert_eq!(throttled.status, 429);
    let h = &throttled.headers;
    assert_eq!(h["retry-after"], "18446744073709551615");
    assert_eq!(h["retry-after-ms"], "-1");
    assert_eq!(h["x-ms-retry-after-ms"], "Fri, 31 Dec 9999 23:59:59 GMT");
    let (a, b) = (create().await, create().await);
    assert_eq!((a.status, b.status), (500, 500));
    assert_ne!(
        a.json["error"]["message"], b.json["error"]["message"],
        "the text changes with every answer"
    );
    // The request log keeps the raw Retry-After as a number when it is one.
    let log = c.admin(Method::GET, "/admin/requests", None).await.json;
    assert_eq!(log[0]["retryAfterSeconds"], json!(u64::MAX));

    // 100 MiB, with a length and chunked: the client reads all of it.
    let piece = "0123456789abcdef";
    let repeat = 100 * 1024 * 1024 / piece.len() as u64;
    for chunked in [false, true] {
        c.admin(
            Method::POST,
            "/admin/faults",
            Some(json!({"operation": "create", "status": 201, "body": piece, "bodyRepeat": repeat, "bodyChunked": chunked, "count": 1})),
        )
        .await;
        let mut response = c
            .http
            .post(format!("{}/identities?api-version={V}", c.endpoint))
            .timeout(std::time::Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.content_length(),
            (!chunked).then_some(100 * 1024 * 1024)
        );
        let mut total = 0u64;
        while let Some(chunk) = response.chunk().await.unwrap() {
            total += chunk.len() as u64;
        }
        assert_eq!(total, 100 * 1024 * 1024, "chunked: {chunked}");
    }
    for bad in [
        json!({"status": 429, "retryAfter": "1\r\nx-injected: yes"}),
        json!({"status": 200, "bodyChunked": true}),
    ] {
        let r = c
            .admin(Method::POST, "/admin/faults", Some(bad.clone()))
            .await;
        assert_eq!(r.status, 400, "{bad} was accepted");
    }
}
