//! A kube client that counts its own requests by verb and resource, as kube-apiserver's
//! `apiserver_request_total` would label them, but for this client alone: the server's
//! counter also holds the garbage collector's owner lookups, the namespace controller
//! emptying earlier tests' namespaces and single-object watches, which made cost bounds
//! either loose or flaky. Counted when the request is sent (a watch counts once).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};

/// (verb, resource or resource/subresource) -> requests sent.
pub type Counts = BTreeMap<(String, String), f64>;

#[derive(Clone, Default)]
pub struct RequestCounter {
    counts: Arc<Mutex<Counts>>,
    /// GETs by (resource, object name): which object a read was for.
    gets: Arc<Mutex<BTreeMap<(String, String), f64>>>,
}

impl RequestCounter {
    pub fn snapshot(&self) -> Counts {
        self.counts.lock().expect("counter lock").clone()
    }

    /// GETs so far by (resource, object name).
    pub fn gets_by_name(&self) -> BTreeMap<(String, String), f64> {
        self.gets.lock().expect("counter lock").clone()
    }

    fn record(&self, req: &http::Request<Body>) {
        let (verb, resource, name) = classify(
            req.method().as_str(),
            req.uri().path(),
            req.uri().query().unwrap_or(""),
            req.headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        );
        if verb == "GET" {
            *self
                .gets
                .lock()
                .expect("counter lock")
                .entry((resource.clone(), name.unwrap_or_default()))
                .or_insert(0.0) += 1.0;
        }
        *self
            .counts
            .lock()
            .expect("counter lock")
            .entry((verb, resource))
            .or_insert(0.0) += 1.0;
    }
}

/// A client for `config` whose every request is counted in the returned counter.
pub fn counted_client(config: Config) -> (Client, RequestCounter) {
    let counter = RequestCounter::default();
    let recorder = counter.clone();
    let client = ClientBuilder::try_from(config)
        .expect("kube client stack")
        .with_layer(&tower::util::MapRequestLayer::new(
            move |req: http::Request<Body>| {
                recorder.record(&req);
                req
            },
        ))
        .build();
    (client, counter)
}

/// The verb and resource kube-apiserver would label a request with, and the object's name.
pub fn classify(
    method: &str,
    path: &str,
    query: &str,
    content_type: &str,
) -> (String, String, Option<String>) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/{group}/{version}/...
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..).unwrap_or(&[]),
        Some(&"apis") => segments.get(3..).unwrap_or(&[]),
        _ => &[][..],
    };
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let (resource, name, sub) = (
        rest.first().copied().unwrap_or("?"),
        rest.get(1).copied(),
        rest.get(2).copied(),
    );
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name) {
        ("GET", _) if watch => "WATCH",
        ("GET", None) => "LIST",
        ("GET", Some(_)) => "GET",
        ("PATCH", _) if content_type.starts_with("application/apply-patch") => "APPLY",
        ("DELETE", None) => "DELETECOLLECTION",
        (m, _) => m,
    };
    let resource = match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    (verb.to_string(), resource, name.map(str::to_string))
}
