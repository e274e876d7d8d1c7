//! Scenario 6b, fuzzing with proptest: the connection-string parser, the ACS response
//! decoding (through the public client against a raw HTTP server that answers with
//! generated statuses and bodies) and the duration parser. Properties: no panic; errors
//! carry no piece of the access key or of a token; durations round-trip. Every execution
//! is counted and reported.
//!
//! Every number an answer can carry is drawn at full width (issue 15): statuses 100..999
//! (an informational one is followed by a final answer), `Retry-After`, `retry-after-ms`
//! and `x-ms-retry-after-ms` up to `u64::MAX` and beyond, negative, fractional, and as HTTP
//! dates from 1970 to 9999; `expiresOn` from year 0 to 9999 and beyond, with up to 30
//! fraction digits and any offset; bodies from 0 bytes to 4 MiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use acs_identity_operator::acs::{AcsClient, AcsClientOptions, ConnectionString, RetryPolicy};
use acs_identity_operator::api::duration::{format_duration, parse_duration};
use base64::Engine as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Mutex;

use crate::leak::{leaks, redact};
use crate::tally::Tally;

/// The results of one fuzz target.
pub struct Outcome {
    pub target: &'static str,
    pub executions: u64,
    /// A failing (shrunk) case, described without secret material.
    pub failure: Option<String>,
    pub took: Duration,
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    })
}

// ---------------------------------------------------------------- connection strings

/// One part of a generated connection string: a known name or garbage, with a value that
/// is the key, an endpoint, or anything.
fn part(key: String) -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("endpoint".to_string()),
        Just("accesskey".to_string()),
        Just("AccessKey".to_string()),
        Just(" ENDPOINT ".to_string()),
        "[a-z]{0,8}",
        ".{0,6}",
    ];
    let value = prop_oneof![
        Just(key.clone()),
        Just(format!("{key}==")),
        Just(key[..key.len() / 2].to_string()),
        Just("https://acs.example.communication.azure.com/".to_string()),
        Just("http://127.0.0.1:8080".to_string()),
        "[a-zA-Z0-9+/=:;.]{0,40}",
        ".{0,20}",
    ];
    let sep = prop_oneof![Just("="), Just("=="), Just(""), Just(" = ")];
    (name, sep, value).prop_map(|(n, s, v)| format!("{n}{s}{v}"))
}

pub fn connection_strings(cases: u32) -> Outcome {
    let started = Instant::now();
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 64]>());
    let runs = AtomicU64::new(0);
    let strategy = prop::collection::vec(part(key.clone()), 0..5)
        .prop_flat_map(|parts| {
            (
                Just(parts),
                prop::sample::select(vec![";", "; ", ";;", ",", "\n"]),
            )
        })
        .prop_map(|(parts, sep)| parts.join(sep));
    let result = runner(cases).run(&strategy, |s| {
        runs.fetch_add(1, Ordering::Relaxed);
        let parsed = std::panic::catch_unwind(|| ConnectionString::parse(&s))
            .map_err(|_| TestCaseError::fail("ConnectionString::parse panicked"))?;
        match parsed {
            Ok(c) => {
                let shown = format!("{c:?}");
                prop_assert!(
                    !leaks(&key, &shown),
                    "Debug of a parsed connection string shows the key"
                );
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.is_empty());
                prop_assert!(
                    !leaks(&key, &msg),
                    "error `{}` carries a piece of the access key",
                    redact(&msg, &key)
                );
            }
        }
        Ok(())
    });
    Outcome {
        target: "connection-string parser",
        executions: runs.into_inner(),
        failure: result.err().map(|e| redact(&e.to_string(), &key)),
        took: started.elapsed(),
    }
}

// ---------------------------------------------------------------- durations

pub fn durations(cases: u32) -> Outcome {
    let started = Instant::now();
    let runs = AtomicU64::new(0);
    let structured = prop::collection::vec(
        (
            prop_oneof![0u64..100_000, any::<u64>()],
            prop::sample::select(vec!["h", "m", "s", "ms", "us", "ns", "", "d", "."]),
        ),
        0..5,
    )
    .prop_map(|parts| {
        parts
            .iter()
            .map(|(n, u)| format!("{n}{u}"))
            .collect::<String>()
    });
    let strategy = prop_oneof![structured, ".{0,16}", "[0-9hms.+-]{0,12}"];
    let result = runner(cases).run(&strategy, |s| {
        runs.fetch_add(1, Ordering::Relaxed);
        let parsed = std::panic::catch_unwind(|| parse_duration(&s))
            .map_err(|_| TestCaseError::fail("parse_duration panicked"))?;
        match parsed {
            Ok(d) => {
                let shown = format_duration(d);
                let back = parse_duration(&shown);
                prop_assert_eq!(
                    back.as_ref().ok(),
                    Some(&d),
                    "`{}` formats as `{}`",
                    s,
                    shown
                );
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        Ok(())
    });
    Outcome {
        target: "duration parser",
        executions: runs.into_inner(),
        failure: result.err().map(|e| e.to_string()),
        took: started.elapsed(),
    }
}

// ---------------------------------------------------------------- ACS responses

/// What the raw server answers next.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<String>,
    retry_after_ms: Option<String>,
    x_ms_retry_after_ms: Option<String>,
}

/// A raw HTTP/1.1 server on loopback that answers every request with the current
/// [`Answer`] (keep-alive), so the real client's decoding sees whatever a fuzzer makes.
async fn raw_server(answer: Arc<Mutex<Answer>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // Read one request: headers, then Content-Length bytes.
                    let (head_end, len) = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, len);
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < head_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    let a = answer.lock().await.clone();
                    // An informational status (not 101) comes first, then a final 200.
                    let (interim, status) = match a.status {
                        100..=199 if a.status != 101 => {
                            (format!("HTTP/1.1 {} X\r\n\r\n", a.status), 200)
                        }
                        s => (String::new(), s),
                    };
                    let mut out = format!(
                        "{interim}HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                        a.body.len()
                    );
                    for (name, value) in [
                        ("retry-after", &a.retry_after),
                        ("retry-after-ms", &a.retry_after_ms),
                        ("x-ms-retry-after-ms", &a.x_ms_retry_after_ms),
                    ] {
                        if let Some(v) = value {
                            out.push_str(&format!("{name}: {v}\r\n"));
                        }
                    }
                    out.push_str("\r\n");
                    let mut bytes = out.into_bytes();
                    bytes.extend_from_slice(&a.body);
                    if sock.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A wait as a header value, at full width: any u64, past u64, negative, fractional,
/// garbage.
fn wait_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2".to_string()),
        Just(u64::MAX.to_string()),
        Just(i64::MAX.to_string()),
        (1u32..=63).prop_map(|bits| (1u64 << bits).to_string()),
        Just("18446744073709551616".to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[0-9]{20,40}",
        (any::<u32>(), "[0-9]{1,12}").prop_map(|(a, b)| format!("{a}.{b}")),
        ".{0,12}",
    ]
}

/// `Retry-After`: a wait or an HTTP date from 1970 to 9999 (and a few that cannot be).
fn retry_after_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => wait_value(),
        1 => (0u64..=253_402_300_799).prop_map(|secs| {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        }),
        1 => prop::sample::select(vec![
            "Fri, 31 Dec 9999 23:59:59 GMT".to_string(),
            "Thu, 01 Jan 1970 00:00:00 GMT".to_string(),
            "Mon, 01 Jan 0001 00:00:00 GMT".to_string(),
            "Sat, 01 Jan 10000 00:00:00 GMT".to_string(),
            "Sun, 06 Nov 1994 08:49:37 GMT".to_string(),
        ]),
    ]
}

/// `expiresOn` from year 0 to 9999 and beyond, with up to 30 fraction digits, any offset.
fn expires_on() -> SBoxedStrategy<String> {
    let stamp = (
        0u32..=9999,
        1u32..=12,
        1u32..=31,
        0u32..=23,
        0u32..=59,
        0u32..=60,
        prop::option::of("[0-9]{1,30}"),
        prop::sample::select(vec!["Z", "+00:00", "-23:59", "+14:00", "+25:00", ""]),
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, tz)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{tz}")
        });
    prop_oneof![
        Just("2030-01-01T00:00:00Z".to_string()),
        Just("2030-01-01T00:00:00.1234567+00:00".to_string()),
        Just("9999-12-31T23:59:59.999999999999999999Z".to_string()),
        Just("0000-01-01T00:00:00Z".to_string()),
        Just("1970-01-01T00:00:00Z".to_string()),
        Just("+275760-09-13T00:00:00Z".to_string()),
        Just("-000001-01-01T00:00:00Z".to_string()),
        stamp,
        ".{0,30}",
    ]
    .sboxed()
}

fn response_body(token: String) -> impl Strategy<Value = Vec<u8>> {
    let json_like = (
        prop::option::of("[a-zA-Z0-9:_-]{0,30}"),
        prop::option::of(expires_on()),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(".{0,40}"),
    )
        .prop_map(move |(id, expires, with_token, nested, message)| {
            let mut v = serde_json::json!({});
            if let Some(id) = id {
                v["identity"] = serde_json::json!({"id": id});
                v["id"] = serde_json::json!(id);
            }
            if with_token {
                let mut t = serde_json::json!({"token": token.clone()});
                if let Some(e) = &expires {
                    t["expiresOn"] = serde_json::json!(e);
                }
                if nested {
                    v["accessToken"] = t;
                } else {
                    v["token"] = t["token"].clone();
                    v["expiresOn"] = t["expiresOn"].clone();
                }
            }
            if let Some(m) = message {
                v["error"] = serde_json::json!({"code": "X", "message": m});
            }
            serde_json::to_vec(&v).unwrap()
        });
    prop_oneof![
        json_like.clone(),
        json_like.prop_flat_map(|b| {
            let n = b.len();
            (Just(b), 0..=n).prop_map(|(b, cut)| b[..cut].to_vec())
        }),
        prop::collection::vec(any::<u8>(), 0..200),
        Just(b"<html><body>502 Bad Gateway</body></html>".to_vec()),
        // 1 B to 4 MiB, log-uniform: an id, a token or garbage that is far too long.
        (0u32..=22, any::<bool>()).prop_map(|(bits, json)| {
            let n = 1usize << bits;
            if json {
                let mut b = br#"{"identity":{"id":""#.to_vec();
                b.resize(b.len() + n, b'7');
                b.extend_from_slice(br#""}}"#);
                b
            } else {
                vec![b' '; n]
            }
        }),
    ]
}

pub async fn acs_responses(cases: u32) -> Outcome {
    let started = Instant::now();
    let token = format!(
        "eyJhbGciOiJIUzI1NiJ9.{}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 48]>()),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let answer = Arc::new(Mutex::new(Answer {
        status: 200,
        body: vec![],
        retry_after: None,
        retry_after_ms: None,
        x_ms_retry_after_ms: None,
    }));
    let addr = raw_server(answer.clone()).await;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let conn = ConnectionString::parse(&format!("endpoint=http://{addr}/;accesskey={key}"))
        .expect("connection string");
    let options = AcsClientOptions {
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        request_timeout: Duration::from_secs(5),
        allow_insecure_endpoints: true,
        ..AcsClientOptions::default()
    };
    // A client per case: a 429 pauses a client's bucket (up to the year 9999), which
    // would hide every later case's answer from the decoder.
    let new_client = move || AcsClient::new(&conn, options.clone()).expect("client");
    // The scope type is named by inference only: the suite leans on the client's
    // methods, not on type names that may change.
    let scopes = vec!["chat".parse().expect("scope")];
    let strategy = (
        // 429 often: its waits are what the client does arithmetic with.
        prop_oneof![
            2 => prop::sample::select(vec![
                200u16, 201, 204, 400, 401, 404, 409, 429, 500, 503, 302, 100, 299,
            ]),
            1 => Just(429u16),
            1 => 100u16..=999,
        ],
        response_body(token.clone()),
        (
            prop::option::weighted(0.75, retry_after_value()),
            prop::option::of(wait_value()),
            prop::option::of(wait_value()),
        ),
        0..3u8,
    );
    // The runner is synchronous; each case drives the async client on this runtime.
    let handle = tokio::runtime::Handle::current();
    let runs = Arc::new(AtomicU64::new(0));
    let result = {
        let runs = runs.clone();
        let token = token.clone();
        tokio::task::spawn_blocking(move || {
            runner(cases)
                .run(&strategy, |(status, body, waits, op)| {
                    runs.fetch_add(1, Ordering::Relaxed);
                    let (retry_after, retry_after_ms, x_ms_retry_after_ms) = waits;
                    let one_line = |v: Option<String>| v.filter(|r| !r.contains(['\r', '\n']));
                    let answer = answer.clone();
                    let client = new_client();
                    let scopes = scopes.clone();
                    let text = handle.block_on(async move {
                        *answer.lock().await = Answer {
                            status,
                            body,
                            retry_after: one_line(retry_after),
                            retry_after_ms: one_line(retry_after_ms),
                            x_ms_retry_after_ms: one_line(x_ms_retry_after_ms),
                        };
                        let call = async move {
                            match op {
                                0 => client
                                    .create_user(Some(scopes.as_slice()), None, Some("k8s-fuzz"))
                                    .await
                                    .map(|u| format!("{:?}", u.user)),
                                1 => client
                                    .issue_token("8:acs:fuzz", &scopes, None)
                                    .await
                                    .map(|t| t.expires_on.to_string()),
                                _ => client
                                    .revoke_tokens("8:acs:fuzz")
                                    .await
                                    .map(|()| String::new()),
                            }
                        };
                        // A panic inside the client surfaces as a failed task.
                        tokio::spawn(async move {
                            match call.await {
                                Ok(s) => s,
                                Err(e) => format!("{e} / {e:?}"),
                            }
                        })
                        .await
                    });
                    let text = text.map_err(|_| TestCaseError::fail("the ACS client panicked"))?;
                    prop_assert!(
                        !leaks(&token, &text),
                        "the decoded result or error shows a piece of the token: {}",
                        redact(&text, &token)
                    );
                    Ok(())
                })
                // The failing case as text: the case itself is large (bodies up to 4 MiB).
                .map_err(|e| e.to_string())
        })
        .await
        .expect("fuzz task")
    };
    Outcome {
        target: "ACS response decoding",
        executions: runs.load(Ordering::Relaxed),
        failure: result.err().map(|e| redact(&e.to_string(), &token)),
        took: started.elapsed(),
    }
}

pub async fn run(cases: u32) -> Tally {
    let mut t = Tally::default();
    let outcomes = vec![
        connection_strings(cases),
        durations(cases),
        // An HTTP round trip each: a quarter as many cases (at least 300).
        acs_responses((cases / 4).max(300)).await,
    ];
    for o in &outcomes {
        t.note(format!(
            "fuzz: {}: {} executions in {:.1?}; {}",
            o.target,
            o.executions,
            o.took,
            o.failure
                .as_deref()
                .map_or("no failure".to_string(), |f| format!("FAILED: {f}"))
        ));
        if o.failure.is_some() {
            t.fuzz_failures += 1;
        }
        t.fuzz_executions += o.executions;
    }
    t
}
