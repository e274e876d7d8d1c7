//! What the operator tells its operators, checked with Prometheus itself: the chart's
//! alerts (rendered by `helm template`, so what ships) through `promtool test rules` —
//! quiet in steady state for 1 h and 24 h tokens, firing in an outage — and every query of
//! the chart's Grafana dashboard run by a real Prometheus scraping a real operator (with
//! the emulator and a few identities), each returning data.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use acs_identity_operator::api::RENEW_REQUESTED_AT_ANNOTATION;
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use support::emulator::fault;
use support::operator::chart_template;
use support::process::{Watched, temp_dir};
use support::world::World;
use support::{prometheus_bin_dir, repo_root, run_with_stdin};

/// The `spec` of the chart's PrometheusRule, as a Prometheus rule file.
fn rendered_rules() -> String {
    let out = chart_template(
        "acs-identity-operator",
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--show-only",
            "templates/prometheusrule.yaml",
        ],
    );
    let doc: serde_yaml::Value = serde_yaml::from_str(&out).expect("rendered PrometheusRule");
    assert_eq!(doc["kind"].as_str(), Some("PrometheusRule"), "{out}");
    serde_yaml::to_string(&doc["spec"]).expect("rule file")
}

#[test]
fn chart_alerts_pass_promtool_rule_tests() {
    let dir = temp_dir("acs-alert-rules-");
    std::fs::write(dir.join("rules.yaml"), rendered_rules()).expect("write rules");
    std::fs::copy(
        repo_root().join("tests/alerts/rules_test.yaml"),
        dir.join("rules_test.yaml"),
    )
    .expect("copy the rule tests");
    let promtool = prometheus_bin_dir().join("promtool");
    let (ok, out, err) = run_with_stdin(
        std::process::Command::new(&promtool)
            .args(["check", "rules", "rules.yaml"])
            .current_dir(&dir),
        None,
    );
    assert!(ok, "promtool check rules:\n{out}\n{err}");
    let (ok, out, err) = run_with_stdin(
        std::process::Command::new(&promtool)
            .args(["test", "rules", "rules_test.yaml"])
            .current_dir(&dir),
        None,
    );
    assert!(
        ok,
        "promtool test rules (files in {}):\n{out}\n{err}",
        dir.display()
    );
    // Every alert of the chart is exercised by the tests, firing at least once.
    let rules = std::fs::read_to_string(dir.join("rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("rules_test.yaml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fired = tests.split("- eval_time:").any(|case| {
            case.contains(&format!("alertname: {line}")) && case.contains("exp_labels")
        });
        assert!(fired, "no rule test fires alert {line}");
        assert!(
            rules.contains(&format!("runbooks.md#{}", line.to_lowercase())),
            "alert {line} has no runbook_url"
        );
        let runbooks = std::fs::read_to_string(repo_root().join("docs/runbooks.md")).unwrap();
        assert!(
            runbooks.contains(&format!("## {line}")),
            "docs/runbooks.md has no section for {line}"
        );
    }
}

/// The dashboard the chart ships (its ConfigMap, rendered).
fn rendered_dashboard() -> Value {
    let out = chart_template(
        "acs-identity-operator",
        &[
            "--set",
            "grafanaDashboard.enabled=true",
            "--show-only",
            "templates/grafana-dashboard.yaml",
        ],
    );
    let doc: serde_yaml::Value = serde_yaml::from_str(&out).expect("rendered ConfigMap");
    assert_eq!(
        doc["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1"),
        "the sidecar's label:\n{out}"
    );
    let text = doc["data"]["acs-identity-operator.json"]
        .as_str()
        .expect("dashboard JSON in the ConfigMap");
    serde_json::from_str(text).expect("dashboard JSON parses")
}

/// Every (panel title, query) of the dashboard with Grafana's variables substituted:
/// `$namespace` (All) and `$__rate_interval`.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    for v in vars {
        let name = v["name"].as_str().unwrap_or_default();
        assert!(
            ["datasource", "namespace"].contains(&name),
            "a dashboard variable the test does not substitute: {name}"
        );
    }
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    let expr = t["expr"]
                        .as_str()
                        .expect("every target has an expr")
                        .replace("$namespace", ".*")
                        .replace("$__rate_interval", "1m");
                    (title.clone(), expr)
                })
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Prometheus scraping `target` every second, with its data in a temp dir.
fn start_prometheus(target: &str) -> (Watched, String) {
    let dir = temp_dir("acs-prometheus-");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: acs-identity-operator\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let addr = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={addr}"),
        "--log.level=warn".into(),
    ];
    let process = Watched::spawn(
        &prometheus_bin_dir().join("prometheus"),
        &args,
        &dir.join("prometheus.log"),
        false,
    );
    eprintln!(
        "prometheus on {addr}; log: {}",
        dir.join("prometheus.log").display()
    );
    (process, format!("http://{addr}"))
}

/// The result of an instant query, when Prometheus answered one.
async fn query(http: &reqwest::Client, base: &str, expr: &str) -> Option<Vec<Value>> {
    let r: Value = http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)])
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    assert_ne!(
        r["status"], "error",
        "query {expr:?} is not valid PromQL: {r}"
    );
    r["data"]["result"].as_array().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dashboard = rendered_dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "{queries:?}");

    let w = World::with_private_operator("obs", 1.0, None).await;
    // A tight budget (quota waits) and a few 429s with Retry-After (pauses, errors,
    // renewal failures), so the panels about trouble have data too.
    w.create(
        "communicationservices",
        json!({
            "apiVersion": "acs-operator.dev/v1alpha1",
            "kind": "CommunicationService",
            "metadata": {"name": "tight"},
            "spec": {
                "connectionStringSecretRef": {"name": support::world::CREDENTIAL_SECRET},
                "quota": {"creates": 1, "issues": 1, "window": "3s"},
            },
        }),
    )
    .await;
    w.emulator
        .add_fault(fault(
            json!({"status": 429, "retryAfterSeconds": 1, "count": 3}),
        ))
        .await;
    let names = ["obs-a", "obs-b", "obs-c", "obs-d"];
    for (i, name) in names.iter().enumerate() {
        let spec = if i % 2 == 0 {
            json!({})
        } else {
            json!({"serviceRef": {"name": "tight"}})
        };
        w.create_identity(name, spec).await;
    }
    for name in names {
        w.wait_ready_is(name, "True", None, 120).await;
    }
    // A renewal that fails (500s beyond the retries of one call): the renewal-failure
    // panel. The next reconcile, after backoff, gets its token.
    w.emulator
        .add_fault(fault(
            json!({"operation": "issue", "status": 500, "count": 12}),
        ))
        .await;
    w.identities()
        .patch(
            "obs-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                RENEW_REQUESTED_AT_ANNOTATION: Timestamp::now().to_string()
            }}})),
        )
        .await
        .expect("request a renewal");

    let (mut prometheus, base) = start_prometheus(&w.operator().admin_addr.to_string());
    let http = reqwest::Client::new();
    let mut empty: Vec<(String, String)> = queries.clone();
    // Poll until every query has data or the deadline passes (rates need two scrapes).
    let _ = run_until_data(&http, &base, &mut empty, Duration::from_secs(90)).await;
    prometheus.stop();
    let scraped = w.operator().metrics().await;
    assert!(
        empty.is_empty(),
        "dashboard queries without data after 90 s (prometheus at {base}):\n{}\noperator's metrics:\n{scraped}",
        empty
            .iter()
            .map(|(t, e)| format!("  {t}: {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // A deleted identity's series go away.
    w.identities()
        .delete("obs-d", &Default::default())
        .await
        .expect("delete obs-d");
    w.wait_gone("obs-d", 60).await;
    let op = w.operator();
    support::eventually(30, "the deleted identity's series to go", || async {
        let text = op.metrics().await;
        (!text.contains("name=\"obs-d\"")).then_some(())
    })
    .await;
    w.finish().await;
}

/// Runs the queries in `pending` until each returned data once, removing those that did.
async fn run_until_data(
    http: &reqwest::Client,
    base: &str,
    pending: &mut Vec<(String, String)>,
    deadline: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    while !pending.is_empty() && tokio::time::Instant::now() < until {
        let mut still = vec![];
        for (title, expr) in pending.drain(..) {
            match query(http, base, &expr).await {
                Some(result) if !result.is_empty() => {}
                _ => still.push((title, expr)),
            }
        }
        *pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    pending.is_empty()
}
