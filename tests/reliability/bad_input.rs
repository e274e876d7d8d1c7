//! Scenario 6a, bad input: invalid specs refused at admission (each message checked),
//! malformed connection strings, a credential Secret without its key, and non-JSON,
//! truncated, oversized and slow ACS responses. Each must end in a clear message (the
//! admission error, or a condition) that names what is wrong, holds no piece of the key,
//! and never a panic.

use std::time::Instant;

use base64::Engine as _;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::leak::{self, leaks, redact};
use crate::tally::Tally;
use crate::world::{CUSTOM_ID_VERSION, Cluster, World, condition, wait_for};

/// One bad input and what its message must mention (any of, case-insensitive).
struct Case {
    what: String,
    mentions: &'static [&'static str],
}

fn mentions_any(msg: &str, words: &[&str]) -> bool {
    let m = msg.to_lowercase();
    words.iter().any(|w| m.contains(&w.to_lowercase()))
}

/// Polls `current` (the object's `Ready=False` text, if any) until it mentions what the
/// case names, or `secs` pass: an operator may first report a transient reason (pending,
/// retrying) before the one that names the problem. Returns (mentioned, last text seen).
async fn settled<F, Fut>(secs: f64, c: &Case, mut current: F) -> (bool, Option<String>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let last = std::sync::Mutex::new(None::<String>);
    let found = wait_for(secs, || {
        let next = current();
        let last = &last;
        async move {
            let msg = next.await?;
            *last.lock().unwrap() = Some(msg.clone());
            mentions_any(&msg, c.mentions).then_some(msg)
        }
    })
    .await;
    match found {
        Some(msg) => (true, Some(msg)),
        None => (false, last.into_inner().unwrap()),
    }
}

/// The `Ready=False` reason and message of an identity.
async fn identity_not_ready(w: &World, name: &str) -> Option<String> {
    let o = w.identities().get_opt(name).await.ok()??;
    let o = serde_json::to_value(o).ok()?;
    let ready = condition(&o, "Ready")?;
    (ready["status"] == "False").then(|| format!("{}: {}", ready["reason"], ready["message"]))
}

/// Refused at admission with a message that mentions what the case names?
fn refused<T>(r: Result<T, kube::Error>, c: &Case) -> (bool, String) {
    match r {
        Err(e) => {
            let msg = api_message(e);
            (mentions_any(&msg, c.mentions), msg)
        }
        Ok(_) => (false, "admitted".into()),
    }
}

fn api_message(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message,
        other => other.to_string(),
    }
}

pub struct Params {
    /// Include responses slower than the client's timeout (minutes with retries).
    pub slow: bool,
}

pub async fn run(p: Params) -> Tally {
    let started = Instant::now();
    let mut t = Tally::default();
    let mut w = World::new(Cluster::shared(), "badinput").await;
    let mut results: Vec<(String, bool, String)> = vec![];
    let mut record = |t: &mut Tally, case: &Case, ok: bool, msg: String| {
        t.bad_total += 1;
        if ok {
            t.bad_refused += 1;
        }
        results.push((case.what.clone(), ok, msg));
    };

    // ---- admission: identities
    let long = |n: usize| "a".repeat(n);
    let create_cases: Vec<(Case, Value, String)> = vec![
        (
            case("scopes empty", &["scopes"]),
            json!({"scopes": []}),
            "b-empty".into(),
        ),
        (
            case("unknown scope", &["video", "scopes"]),
            json!({"scopes": ["video"]}),
            "b-scope".into(),
        ),
        (
            case("tokenLifetime 30m", &["tokenLifetime"]),
            json!({"tokenLifetime": "30m"}),
            "b-short".into(),
        ),
        (
            case("tokenLifetime 25h", &["tokenLifetime"]),
            json!({"tokenLifetime": "25h"}),
            "b-long".into(),
        ),
        (
            case("tokenLifetime not a duration", &["tokenLifetime"]),
            json!({"tokenLifetime": "one hour"}),
            "b-word".into(),
        ),
        (
            case("renewBefore >= tokenLifetime", &["renewBefore"]),
            json!({"tokenLifetime": "1h", "renewBefore": "2h"}),
            "b-renew".into(),
        ),
        (
            case("renewBefore 1m", &["renewBefore"]),
            json!({"renewBefore": "1m"}),
            "b-renew-short".into(),
        ),
        (
            case("serviceRef kind Issuer", &["kind"]),
            json!({"serviceRef": {"kind": "Issuer", "name": "x"}}),
            "b-kind".into(),
        ),
        (
            case("deletionPolicy Sometimes", &["deletionPolicy"]),
            json!({"deletionPolicy": "Sometimes"}),
            "b-policy".into(),
        ),
        (
            case(
                "identity name of 80 characters",
                &["name", "63", "characters"],
            ),
            json!({}),
            long(80),
        ),
        (
            case("identity name of 254 characters", &["name", "253"]),
            json!({}),
            long(254),
        ),
        (
            case(
                "secretTemplate label value of 100 characters",
                &["label", "63"],
            ),
            json!({"secretTemplate": {"labels": {"team": long(100)}}}),
            "b-label".into(),
        ),
        (
            case(
                "secretTemplate label key `bad key!`",
                &["label", "key", "name part"],
            ),
            json!({"secretTemplate": {"labels": {"bad key!": "x"}}}),
            "b-labelkey".into(),
        ),
    ];
    w.add_service("acs", CUSTOM_ID_VERSION, &[], json!({}))
        .await;
    w.start_operator().await;
    let mut admitted_for_runtime: Vec<(Case, String)> = vec![];
    for (c, spec, name) in create_cases {
        match w.create_identity(&name, "acs", spec).await {
            Err(e) => {
                let msg = api_message(e);
                let ok = mentions_any(&msg, c.mentions);
                record(&mut t, &c, ok, msg);
            }
            // Admitted: the identity itself must then say what is wrong (label cases).
            Ok(_) => admitted_for_runtime.push((c, name)),
        }
    }
    for (c, name) in admitted_for_runtime {
        let (ok, msg) = settled(30.0, &c, || identity_not_ready(&w, &name)).await;
        record(
            &mut t,
            &c,
            ok,
            msg.map(|m| format!("(admitted) Ready=False {m}"))
                .unwrap_or_else(|| "admitted, and no Ready=False within 30 s".into()),
        );
    }

    // ---- admission: immutable fields
    w.create_identity("b-fixed", "acs", json!({}))
        .await
        .expect("valid identity");
    w.add_service("acs2", CUSTOM_ID_VERSION, &[], json!({}))
        .await;
    let update_cases: Vec<(Case, Value)> = vec![
        (
            case("secretName changed", &["secretName"]),
            json!({"spec": {"secretName": "elsewhere"}}),
        ),
        (
            case("serviceRef changed", &["serviceRef"]),
            json!({"spec": {"serviceRef": {"kind": "CommunicationService", "name": "acs2"}}}),
        ),
        (
            case("existingUserId set after creation", &["existingUserId"]),
            json!({"spec": {"existingUserId": "8:acs:someone"}}),
        ),
    ];
    for (c, patch) in update_cases {
        let r = w
            .identities()
            .patch("b-fixed", &PatchParams::default(), &Patch::Merge(patch))
            .await;
        let (ok, msg) = refused(r, &c);
        record(&mut t, &c, ok, msg);
    }

    // ---- admission: services
    let service_cases: Vec<(Case, Value)> = vec![
        (
            case(
                "service without connectionStringSecretRef",
                &["connectionStringSecretRef"],
            ),
            json!({}),
        ),
        (
            case("service quota window `soon`", &["window"]),
            json!({"connectionStringSecretRef": {"name": "x"}, "quota": {"window": "soon"}}),
        ),
        (
            case("service quota creates -1", &["creates"]),
            json!({"connectionStringSecretRef": {"name": "x"}, "quota": {"creates": -1}}),
        ),
    ];
    for (i, (c, spec)) in service_cases.into_iter().enumerate() {
        let r = w
            .create(
                "CommunicationService",
                "communicationservices",
                json!({"metadata": {"name": format!("bad-svc-{i}")}, "spec": spec}),
            )
            .await;
        let (ok, msg) = refused(r, &c);
        record(&mut t, &c, ok, msg);
    }

    // ---- connection strings and credential Secrets: the service's Ready condition
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 64]>());
    leak::remember(&key);
    let conn_cases: Vec<(Case, Option<String>)> = vec![
        (
            case("connection string without accesskey", &["accesskey"]),
            Some("endpoint=http://127.0.0.1:9/".into()),
        ),
        (
            case("connection string without endpoint", &["endpoint"]),
            Some(format!("accesskey={key}")),
        ),
        (
            case("access key not base64", &["base64", "accesskey"]),
            Some("endpoint=http://127.0.0.1:9/;accesskey=not*base64!".into()),
        ),
        (
            case("endpoint and key swapped", &["endpoint"]),
            Some(format!("endpoint={key};accesskey=http://127.0.0.1:9/")),
        ),
        (
            case("the key pasted alone", &["connection string", "endpoint"]),
            Some(key.clone()),
        ),
        (
            case(
                "a part without `=` holding the key",
                &["connection string", "part"],
            ),
            Some(format!(
                "endpoint=http://127.0.0.1:9/;accesskey={key};{}",
                key.trim_end_matches('=')
            )),
        ),
        (
            case("endpoint named twice", &["twice", "endpoint"]),
            Some(format!(
                "endpoint=http://127.0.0.1:9/;endpoint=http://127.0.0.1:8/;accesskey={key}"
            )),
        ),
        (
            case("empty connection string", &["empty", "connection string"]),
            Some(String::new()),
        ),
        (
            case("endpoint ftp://", &["endpoint", "http"]),
            Some(format!("endpoint=ftp://127.0.0.1/;accesskey={key}")),
        ),
        (
            case(
                "credential Secret without the key",
                &["connectionString", "key"],
            ),
            None,
        ),
    ];
    for (i, (c, value)) in conn_cases.into_iter().enumerate() {
        let svc = format!("conn-{i}");
        let secret = format!("{svc}-secret");
        let data = match &value {
            Some(v) => json!({"connectionString": v}),
            None => json!({"other": "x"}),
        };
        let obj: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(json!({"metadata": {"name": secret}, "stringData": data}))
                .expect("secret");
        w.secrets()
            .patch(
                &secret,
                &PatchParams::apply("acs-reliability").force(),
                &Patch::Apply(&obj),
            )
            .await
            .expect("secret");
        w.create(
            "CommunicationService",
            "communicationservices",
            json!({"metadata": {"name": svc}, "spec": {"connectionStringSecretRef": {"name": secret}}}),
        )
        .await
        .expect("service");
        let (mentioned, msg) = settled(30.0, &c, || async {
            let o = w.service_json(&svc).await?;
            let ready = condition(&o, "Ready")?;
            (ready["status"] == "False")
                .then(|| format!("{}: {}", ready["reason"], ready["message"]))
        })
        .await;
        let ok = mentioned && msg.as_deref().is_some_and(|m| !leaks(&key, m));
        record(
            &mut t,
            &c,
            ok,
            msg.map(|m| redact(&m, &key))
                .unwrap_or_else(|| "no Ready=False within 30 s".into()),
        );
    }

    // ---- ACS answers that are not what the API promises
    let mut response_cases: Vec<(Case, Value)> = vec![
        (
            case(
                "non-JSON answer to create",
                &["json", "decod", "pars", "invalid", "unexpected", "response"],
            ),
            json!({"operation": "create", "status": 201, "body": "<html><body>upstream error</body></html>"}),
        ),
        (
            case(
                "truncated answer to create",
                &[
                    "json", "decod", "pars", "eof", "invalid", "response", "truncat",
                ],
            ),
            json!({"operation": "create", "afterExecute": true, "truncateBytes": 20}),
        ),
        (
            case(
                "oversized (32 MiB) answer to create",
                &[
                    "json", "decod", "pars", "large", "size", "response", "invalid",
                ],
            ),
            json!({"operation": "create", "status": 201, "body": "[", "bodyRepeat": 32 * 1024 * 1024}),
        ),
        (
            case(
                "JSON of the wrong shape",
                &[
                    "json", "decod", "pars", "missing", "field", "response", "invalid",
                ],
            ),
            json!({"operation": "create", "status": 201, "body": "{\"identity\": 42}"}),
        ),
    ];
    if p.slow {
        response_cases.push((
            case(
                "answer slower than the client's timeout",
                &["timed out", "timeout"],
            ),
            json!({"operation": "create", "latencyMs": 40_000}),
        ));
    }
    for (i, (c, fault)) in response_cases.into_iter().enumerate() {
        let name = format!("resp-{i}");
        w.emu("acs").clear_faults().await;
        w.emu("acs").add_faults(fault).await;
        w.create_identity(&name, "acs", json!({}))
            .await
            .expect("identity");
        let secs = if p.slow { 200.0 } else { 60.0 };
        let (mentioned, msg) = settled(secs, &c, || identity_not_ready(&w, &name)).await;
        let alive = w.operator().is_healthy().await;
        let ok = alive && mentioned;
        record(
            &mut t,
            &c,
            ok,
            format!(
                "{} (operator healthy: {alive})",
                msg.unwrap_or_else(|| format!("no Ready=False within {secs} s")),
            ),
        );
        w.emu("acs").clear_faults().await;
    }
    // Once ACS answers properly again, every identity recovers.
    let pending: Vec<String> = wait_for(120.0, || async {
        let mut not_ready = vec![];
        for i in 0..5 {
            let name = format!("resp-{i}");
            if let Ok(Some(o)) = w.identities().get_opt(&name).await {
                let o = serde_json::to_value(o).expect("JSON");
                if condition(&o, "Ready").is_none_or(|c| c["status"] != "True") {
                    not_ready.push(name);
                }
            }
        }
        not_ready.is_empty().then_some(vec![])
    })
    .await
    .unwrap_or_else(|| vec!["some resp-N identities".into()]);
    t.unconverged += pending.len() as u64;

    let log = std::fs::read_to_string(&w.operator_logs[0]).unwrap_or_default();
    let panics = log.lines().filter(|l| l.contains("panicked")).count();
    t.unconverged += panics as u64;
    t.identities += w.list_identities().await.len() as u64;
    w.leak_scan(&mut t).await;
    w.teardown(&mut t).await;
    for (what, ok, msg) in &results {
        t.note(format!(
            "bad input: {} {what}: {msg}",
            if *ok {
                "REFUSED"
            } else {
                "NOT REFUSED CLEARLY"
            }
        ));
    }
    t.note(format!(
        "bad input: {}/{} refused with a clear message; panics in the operator log: {panics}; not recovered after ACS answered properly again: {pending:?}; took {:?}",
        t.bad_refused,
        t.bad_total,
        started.elapsed()
    ));
    t
}

fn case(what: &str, mentions: &'static [&'static str]) -> Case {
    Case {
        what: what.to_string(),
        mentions,
    }
}
