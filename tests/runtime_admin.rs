//! The admin server over real HTTP: liveness, readiness before and after the caches
//! sync, and a Prometheus scrape with the documented families.

use std::sync::Arc;
use std::time::Duration;

use acs_identity_operator::runtime::admin::{self, AdminState, Readiness};
use acs_identity_operator::runtime::metrics::{self, Metrics};
use acs_identity_operator::runtime::signals::shutdown_channel;

#[tokio::test]
async fn admin_server_reports_health_readiness_and_metrics() {
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::new();
    let state = AdminState::new(metrics.clone(), readiness.clone());
    let listener = admin::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind admin server");
    let addr = listener.local_addr().expect("bound address");
    let (shutdown, listener_shutdown) = shutdown_channel();
    let server = tokio::spawn(admin::serve_on(listener, state, listener_shutdown.wait()));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let get = |path: &str| {
        let http = http.clone();
        let url = format!("http://{addr}{path}");
        async move {
            http.get(&url)
                .send()
                .await
                .expect("request to admin server")
        }
    };

    let health = get("/healthz").await;
    assert_eq!(health.status(), 200);

    let not_ready = get("/readyz").await;
    assert_eq!(not_ready.status(), 503);
    let reason = not_ready.text().await.expect("readyz body");
    assert!(reason.contains("caches not synced"), "{reason}");

    readiness.set_ready(true);
    let ready = get("/readyz").await;
    assert_eq!(ready.status(), 200);

    metrics.observe_reconcile("CommunicationIdentity", "ok", Duration::from_millis(40));
    metrics.observe_acs_request(
        "acs.example.com",
        "issue_token",
        "200",
        Duration::from_millis(15),
    );
    metrics.set_identity_ready("team-a", "bot", Some(true));
    metrics.set_token_expiry("team-a", "bot", 1_900_000_000);
    metrics.renewal_failed("team-a", "bot", "throttled");
    let scrape = get("/metrics").await;
    assert_eq!(scrape.status(), 200);
    let content_type = scrape
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(content_type, metrics::CONTENT_TYPE);
    let body = scrape.text().await.expect("metrics body");
    for line in [
        "acs_operator_reconciles_total{kind=\"CommunicationIdentity\",result=\"ok\"} 1",
        "acs_operator_reconcile_duration_seconds_count{kind=\"CommunicationIdentity\"} 1",
        "acs_operator_acs_requests_total{operation=\"issue_token\",status=\"200\",resource=\"acs.example.com\"} 1",
        "acs_operator_acs_request_duration_seconds_count{operation=\"issue_token\",resource=\"acs.example.com\"} 1",
        "acs_operator_identity_ready_status{namespace=\"team-a\",name=\"bot\",condition=\"True\"} 1",
        "acs_operator_identities{ready=\"true\"} 1",
        "acs_operator_identities{ready=\"false\"} 0",
        "acs_operator_token_expiry_timestamp_seconds{namespace=\"team-a\",name=\"bot\"} 1900000000",
        "acs_operator_renewal_failures_total{namespace=\"team-a\",name=\"bot\",reason=\"throttled\"} 1",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }

    let unknown = get("/nope").await;
    assert_eq!(unknown.status(), 404);

    readiness.set_not_ready("shutting down");
    let draining = get("/readyz").await;
    assert_eq!(draining.status(), 503);
    assert!(
        draining
            .text()
            .await
            .expect("body")
            .contains("shutting down")
    );

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("admin server stops after shutdown")
        .expect("admin server task")
        .expect("admin server result");
}

#[tokio::test]
async fn binding_a_busy_port_names_the_address() {
    let first = admin::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    let addr = first.local_addr().expect("bound address");
    let err = admin::bind(addr).await.expect_err("port is taken");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
