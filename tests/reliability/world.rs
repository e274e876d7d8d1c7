//! The suite's own harness, written against documented interfaces only: the binaries and
//! their flags, the emulator's admin and fault API, the CRDs (as JSON), the token
//! Secret's keys, conditions and events. From `tests/support` it takes only the control
//! plane, the chart-RBAC kubeconfig and process spawning.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::leak;
use crate::support::operator::{Operator, operator_kubeconfig, spawn_operator_as};
use crate::support::process::Watched;
use crate::support::{ControlPlane, client_from_kubeconfig, install_crds};

pub const GROUP_VERSION: &str = "acs-operator.dev/v1alpha1";
/// An api-version with custom ids: a retried create finds its user.
pub const CUSTOM_ID_VERSION: &str = "2025-03-02-preview";
/// A GA api-version without custom ids (under every reading of the version table).
pub const GA_VERSION: &str = "2023-10-01";

pub fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "acs-operator.dev".into(),
        version: "v1alpha1".into(),
        api_version: GROUP_VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub fn identities_resource() -> ApiResource {
    resource("CommunicationIdentity", "communicationidentities")
}

/// `RELIABILITY_N`, or `default` (the small pass inside `make test`).
pub fn env_n(default: usize) -> usize {
    std::env::var("RELIABILITY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn temp_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
        .keep()
}

/// Waits (polling every 100 ms) until `check` is `Some`, or `None` after `secs`.
pub async fn wait_for<T, F, Fut>(secs: f64, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- cluster

/// A control plane to run on: the test binary's shared one, or one of the suite's own
/// (which the Kubernetes-fault scenario restarts piece by piece).
#[derive(Clone)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    /// What operator processes run as.
    pub operator_kubeconfig: PathBuf,
}

impl Cluster {
    pub fn shared() -> Cluster {
        let cp = ControlPlane::get();
        install_crds(cp);
        Cluster {
            kubeconfig: cp.kubeconfig.clone(),
            operator_kubeconfig: operator_kubeconfig(),
        }
    }

    pub async fn client(&self) -> Client {
        client_from_kubeconfig(&self.kubeconfig).await
    }
}

// ---------------------------------------------------------------- emulator

/// One `acs-emulator` process and its admin API.
pub struct Emu {
    pub endpoint: String,
    pub connection_string: String,
    process: Watched,
    http: reqwest::Client,
}

impl Emu {
    pub fn start(dir: &Path, name: &str, extra_args: &[String]) -> Emu {
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let log = dir.join(format!("emulator-{name}.log"));
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--access-key".into(),
            key.clone(),
        ];
        args.extend(extra_args.iter().cloned());
        let mut process = Watched::spawn(
            Path::new(env!("CARGO_BIN_EXE_acs-emulator")),
            &args,
            &log,
            true,
        );
        let mut line = String::new();
        process
            .stdout
            .as_mut()
            .expect("piped stdout")
            .read_line(&mut line)
            .expect("the emulator's first line");
        let conn = line
            .trim()
            .strip_prefix("ACS_CONNECTION_STRING=")
            .unwrap_or_else(|| panic!("emulator's first line: {line:?} (log {})", log.display()))
            .to_string();
        let endpoint = conn
            .strip_prefix("endpoint=")
            .and_then(|s| s.split(';').next())
            .expect("endpoint")
            .trim_end_matches('/')
            .to_string();
        leak::remember(&key);
        Emu {
            endpoint,
            connection_string: conn,
            process,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.endpoint));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub async fn add_faults(&self, rules: Value) {
        self.admin(reqwest::Method::POST, "/admin/faults", Some(rules))
            .await;
    }

    pub async fn clear_faults(&self) {
        self.admin(reqwest::Method::DELETE, "/admin/faults", None)
            .await;
    }

    pub async fn stats(&self) -> Value {
        self.admin(reqwest::Method::GET, "/admin/stats", None).await
    }

    pub async fn total_requests(&self) -> u64 {
        self.stats().await["total"].as_u64().unwrap_or(0)
    }

    /// `/admin/requests`: every ACS request with its times.
    pub async fn requests(&self) -> Vec<Value> {
        match self
            .admin(reqwest::Method::GET, "/admin/requests", None)
            .await
        {
            Value::Array(v) => v,
            other => panic!("/admin/requests is not a list: {other}"),
        }
    }

    pub async fn users(&self) -> Vec<Value> {
        match self
            .admin(reqwest::Method::GET, "/admin/identities", None)
            .await
        {
            Value::Array(v) => v,
            other => panic!("/admin/identities is not a list: {other}"),
        }
    }

    pub async fn validate(&self, token: &str) -> (bool, String) {
        let v = self
            .admin(
                reqwest::Method::POST,
                "/admin/tokens:validate",
                Some(json!({"token": token})),
            )
            .await;
        (
            v["valid"].as_bool().unwrap_or(false),
            v["reason"].as_str().unwrap_or_default().to_string(),
        )
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }
}

// ---------------------------------------------------------------- token Secrets

/// Everything a watch on the namespace's token Secrets saw: every token (remembered for
/// the leak scan), every renewal time, and every token lost by a live identity.
#[derive(Default)]
pub struct SecretLedger {
    /// Secret name → current token.
    pub tokens: BTreeMap<String, String>,
    /// Secret name → expiresOn of the current token.
    pub expires: BTreeMap<String, Timestamp>,
    /// (when seen, Secret name) of every token change after the first token.
    pub renewals: Vec<(Timestamp, String)>,
    /// Secret names whose token disappeared while their identity was not being deleted.
    pub lost: Vec<String>,
}

pub type Ledger = Arc<Mutex<SecretLedger>>;

fn secret_string(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

fn owner_identity(s: &Secret) -> Option<String> {
    s.owner_references()
        .iter()
        .find(|o| o.kind == "CommunicationIdentity")
        .map(|o| o.name.clone())
}

// ---------------------------------------------------------------- world

/// One scenario's namespace, emulators (one per service), operator process, Secret
/// ledger, and everything collected for the leak scan.
pub struct World {
    pub cluster: Cluster,
    pub client: Client,
    pub ns: String,
    pub dir: PathBuf,
    pub tag: String,
    pub emulators: BTreeMap<String, Emu>,
    pub operator: Option<Operator>,
    pub operator_args: Vec<String>,
    pub operator_logs: Vec<PathBuf>,
    /// Metrics texts scraped during the scenario (scanned for secrets).
    pub metrics_texts: Vec<String>,
    /// Identities this scenario deleted on purpose.
    pub deleted: Arc<Mutex<BTreeSet<String>>>,
    /// uid → name of every identity this scenario created (deleted ones included).
    pub names_by_uid: Arc<Mutex<BTreeMap<String, String>>>,
    pub ledger: Ledger,
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl World {
    pub async fn new(cluster: Cluster, tag: &str) -> World {
        let client = cluster.client().await;
        let ns = format!("rel-{tag}-{}-{}", std::process::id(), rand::random::<u16>());
        let obj: Namespace = serde_json::from_value(json!({
            "metadata": {"name": ns, "labels": {"acs-operator.dev/test": "reliability"}}
        }))
        .expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create namespace {ns}: {e}"));
        let mut world = World {
            cluster,
            client,
            ns,
            dir: temp_dir(&format!("acs-reliability-{tag}-")),
            tag: tag.to_string(),
            emulators: BTreeMap::new(),
            operator: None,
            operator_args: vec![],
            operator_logs: vec![],
            metrics_texts: vec![],
            deleted: Arc::default(),
            names_by_uid: Arc::default(),
            ledger: Arc::default(),
            watch: None,
        };
        world.start_secret_watch();
        eprintln!(
            "reliability {tag}: namespace {}, logs in {}",
            world.ns,
            world.dir.display()
        );
        world
    }

    pub fn identities(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, &identities_resource())
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// An emulator (with `emulator_args`), its credential Secret and a
    /// CommunicationService `name` speaking `api_version`, with `extra_spec` merged in.
    pub async fn add_service(
        &mut self,
        name: &str,
        api_version: &str,
        emulator_args: &[String],
        extra_spec: Value,
    ) {
        let emu = Emu::start(&self.dir, name, emulator_args);
        self.put_credentials(&format!("{name}-conn"), &emu.connection_string)
            .await;
        let mut spec = json!({
            "connectionStringSecretRef": {"name": format!("{name}-conn")},
            "apiVersion": api_version,
        });
        merge(&mut spec, extra_spec);
        self.create(
            "CommunicationService",
            "communicationservices",
            json!({"metadata": {"name": name}, "spec": spec}),
        )
        .await
        .unwrap_or_else(|e| panic!("create CommunicationService {name}: {e}"));
        self.emulators.insert(name.to_string(), emu);
    }

    pub fn emu(&self, service: &str) -> &Emu {
        &self.emulators[service]
    }

    pub async fn put_credentials(&self, secret: &str, connection_string: &str) {
        crate::support::world::put_secret(&self.client, &self.ns, secret, connection_string).await;
    }

    /// Creates an acs-operator.dev object in the namespace.
    pub async fn create(
        &self,
        kind: &str,
        plural: &str,
        mut obj: Value,
    ) -> Result<Value, kube::Error> {
        obj["apiVersion"] = json!(GROUP_VERSION);
        obj["kind"] = json!(kind);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &resource(kind, plural));
        let dynamic: DynamicObject = serde_json::from_value(obj).expect("object");
        let created = api.create(&PostParams::default(), &dynamic).await?;
        Ok(serde_json::to_value(created).expect("JSON"))
    }

    /// A CommunicationIdentity through `service` with scopes `[chat]` and `spec` merged in.
    pub async fn create_identity(
        &self,
        name: &str,
        service: &str,
        spec: Value,
    ) -> Result<Value, kube::Error> {
        let mut full = json!({
            "serviceRef": {"kind": "CommunicationService", "name": service},
            "scopes": ["chat"],
        });
        merge(&mut full, spec);
        let created = self
            .create(
                "CommunicationIdentity",
                "communicationidentities",
                json!({"metadata": {"name": name}, "spec": full}),
            )
            .await?;
        if let Some(uid) = created["metadata"]["uid"].as_str() {
            self.names_by_uid
                .lock()
                .unwrap()
                .insert(uid.to_string(), name.to_string());
        }
        Ok(created)
    }

    /// Creates many identities, 16 requests at a time.
    pub async fn create_identities(&self, names: &[String], service: &str, spec: Value) {
        futures::stream::iter(names.iter().cloned())
            .map(|name| {
                let spec = spec.clone();
                async move {
                    self.create_identity(&name, service, spec)
                        .await
                        .unwrap_or_else(|e| panic!("create identity {name}: {e}"));
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
    }

    pub async fn annotate(&self, name: &str, key: &str, value: &str) {
        let _ = self
            .identities()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
            )
            .await;
    }

    pub async fn delete_identity(&self, name: &str) {
        self.deleted.lock().unwrap().insert(name.to_string());
        let _ = self
            .identities()
            .delete(name, &DeleteParams::default())
            .await;
    }

    pub async fn list_identities(&self) -> Vec<Value> {
        self.identities()
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .map(|o| serde_json::to_value(o).expect("JSON"))
                    .collect()
            })
            .unwrap_or_default()
    }

    // ------------------------------------------------------------ operator

    /// Starts an operator process confined to the namespace (plus `operator_args`).
    pub async fn start_operator(&mut self) {
        assert!(self.operator.is_none(), "an operator already runs");
        let mut args: Vec<String> = vec!["--watch-namespaces".into(), self.ns.clone()];
        args.extend(self.operator_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let op = spawn_operator_as(
            &self.cluster.operator_kubeconfig,
            &args,
            &format!("acs-reliability-{}-op-", self.tag),
        )
        .await;
        self.operator_logs.push(op.log.clone());
        self.operator = Some(op);
    }

    pub fn operator(&self) -> &Operator {
        self.operator.as_ref().expect("operator running")
    }

    /// `kill -9`, wait for the exit, reap.
    pub async fn kill_operator(&mut self) {
        let op = self.operator.take().expect("operator running");
        op.process().signal("KILL");
        wait_for(10.0, || async { op.process().try_exit_status() })
            .await
            .expect("the killed operator exits");
        op.process().stop();
    }

    pub fn stop_operator(&mut self) {
        if let Some(op) = self.operator.take() {
            op.process().stop();
        }
    }

    /// Scrapes `/metrics` and keeps the text for the leak scan.
    pub async fn scrape(&mut self) -> String {
        let text = self.operator().metrics().await;
        self.metrics_texts.push(text.clone());
        text
    }

    // ------------------------------------------------------------ Secret watch

    fn start_secret_watch(&mut self) {
        let api = self.secrets();
        let ledger = self.ledger.clone();
        let deleted = self.deleted.clone();
        let stream = watcher(api, watcher::Config::default());
        self.watch = Some(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { continue };
                match event {
                    watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                        let Some(owner) = owner_identity(&s) else {
                            continue;
                        };
                        let name = s.name_any();
                        let token = secret_string(&s, "token").filter(|t| !t.is_empty());
                        let mut l = ledger.lock().unwrap();
                        match token {
                            Some(t) => {
                                leak::remember(&t);
                                if let Some(exp) = secret_string(&s, "expiresOn")
                                    .and_then(|e| e.parse::<Timestamp>().ok())
                                {
                                    l.expires.insert(name.clone(), exp);
                                }
                                let before = l.tokens.insert(name.clone(), t.clone());
                                if before.is_some_and(|b| b != t) {
                                    l.renewals.push((Timestamp::now(), name));
                                }
                            }
                            None => {
                                if l.tokens.contains_key(&name)
                                    && !deleted.lock().unwrap().contains(&owner)
                                {
                                    l.lost.push(name);
                                }
                            }
                        }
                    }
                    watcher::Event::Delete(s) => {
                        let Some(owner) = owner_identity(&s) else {
                            continue;
                        };
                        let name = s.name_any();
                        let mut l = ledger.lock().unwrap();
                        l.expires.remove(&name);
                        if l.tokens.remove(&name).is_some()
                            && !deleted.lock().unwrap().contains(&owner)
                        {
                            l.lost.push(name);
                        }
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
            }
        }));
    }

    // ------------------------------------------------------------ verdicts

    /// Waits until every identity not deleted on purpose is Ready with a token in its
    /// Secret, and every deleted one is gone; returns the names still not there.
    pub async fn wait_converged(&self, secs: f64) -> Vec<String> {
        let done = wait_for(secs, || async {
            self.not_converged().await.is_empty().then_some(())
        })
        .await;
        if done.is_some() {
            vec![]
        } else {
            self.not_converged().await
        }
    }

    async fn not_converged(&self) -> Vec<String> {
        let deleted = self.deleted.lock().unwrap().clone();
        let secrets: BTreeMap<String, Secret> = self
            .secrets()
            .list(&ListParams::default())
            .await
            .map(|l| l.items.into_iter().map(|s| (s.name_any(), s)).collect())
            .unwrap_or_default();
        let mut out = vec![];
        for obj in self.list_identities().await {
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if deleted.contains(&name) {
                out.push(format!("{name} (deleted, still present)"));
                continue;
            }
            let ready = ready_status(&obj).as_deref() == Some("True");
            let secret_name = obj["status"]["secretName"]
                .as_str()
                .unwrap_or(&name)
                .to_string();
            let has_token = secrets
                .get(&secret_name)
                .and_then(|s| secret_string(s, "token"))
                .is_some_and(|t| !t.is_empty());
            if !(ready && has_token) {
                out.push(name);
            }
        }
        out
    }

    /// The final audit of a scenario, after [`World::wait_converged`]: every Ready
    /// identity's token validated by its emulator; the emulators' users compared with
    /// the identities. Adds to `tally`.
    pub async fn audit(&self, tally: &mut crate::tally::Tally) -> Audit {
        let identities = self.list_identities().await;
        let mut audit = Audit::default();
        let mut owned: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut uids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for obj in &identities {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            let service = obj["spec"]["serviceRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(user) = obj["status"]["userId"].as_str() {
                owned
                    .entry(service.clone())
                    .or_default()
                    .insert(user.to_string());
            }
            if let Some(uid) = obj["metadata"]["uid"].as_str() {
                uids.entry(service.clone())
                    .or_default()
                    .insert(uid.to_string());
            }
            let secret_name = obj["status"]["secretName"].as_str().unwrap_or(name);
            let Some(emu) = self.emulators.get(&service) else {
                continue;
            };
            if ready_status(obj).as_deref() != Some("True") {
                audit.not_ready.push(name.to_string());
                continue;
            }
            let token = self
                .secrets()
                .get_opt(secret_name)
                .await
                .ok()
                .flatten()
                .and_then(|s| secret_string(&s, "token"));
            match token {
                Some(t) => {
                    leak::remember(&t);
                    let (valid, reason) = emu.validate(&t).await;
                    if !valid {
                        audit.invalid_tokens.push(format!("{name}: {reason}"));
                    }
                }
                None => audit.missing_tokens.push(name.to_string()),
            }
        }
        for (service, emu) in &self.emulators {
            let users = emu.users().await;
            let custom = users.iter().any(|u| u["customId"].is_string())
                || self.service_version(service).await.as_deref() == Some(CUSTOM_ID_VERSION);
            let owned = owned.get(service).cloned().unwrap_or_default();
            let live_uids = uids.get(service).cloned().unwrap_or_default();
            let mut leaked = 0;
            let mut by_custom: BTreeMap<String, u64> = BTreeMap::new();
            for u in &users {
                if let Some(c) = u["customId"].as_str() {
                    *by_custom.entry(c.to_string()).or_default() += 1;
                }
                if u["deleted"] == false && !owned.contains(u["id"].as_str().unwrap_or_default()) {
                    // A user whose identity still exists but has not recorded it yet is
                    // not leaked (cannot happen after convergence, counted anyway).
                    leaked += 1;
                    let cid = u["customId"].as_str().unwrap_or("-");
                    let known = cid
                        .strip_prefix("k8s-")
                        .is_some_and(|uid| live_uids.contains(uid));
                    audit.leaked_users.push(format!(
                        "{service}: {} customId={cid} identity-alive={known}",
                        u["id"].as_str().unwrap_or_default()
                    ));
                }
            }
            let duplicated: u64 = by_custom.values().map(|n| n - 1).sum();
            let names = self.names_by_uid.lock().unwrap().clone();
            for (cid, _) in by_custom.iter().filter(|(_, n)| **n > 1) {
                let name = cid
                    .strip_prefix("k8s-")
                    .and_then(|uid| names.get(uid))
                    .cloned()
                    .unwrap_or_default();
                let deleted_on_purpose = self.deleted.lock().unwrap().contains(&name);
                let users: Vec<String> = users
                    .iter()
                    .filter(|u| u["customId"] == cid.as_str())
                    .map(|u| {
                        format!(
                            "{} created {} deleted {}",
                            u["id"].as_str().unwrap_or_default(),
                            u["createdAt"].as_str().unwrap_or("-"),
                            u["deletedAt"].as_str().unwrap_or("-")
                        )
                    })
                    .collect();
                audit.duplicate_users.push(format!(
                    "identity {name} (deleted by the scenario: {deleted_on_purpose}): {users:?}"
                ));
            }
            // Leaks are counted by `teardown`, after every identity was deleted: then any
            // user still alive at ACS is one.
            let _ = leaked;
            if custom {
                tally.duplicated += duplicated;
            } else {
                tally.ga_duplicated += duplicated;
            }
            audit.users_total += users.len() as u64;
        }
        let lost = self.ledger.lock().unwrap().lost.clone();
        tally.lost_tokens += lost.len() as u64 + audit.missing_tokens.len() as u64;
        tally.expired_served += audit.invalid_tokens.len() as u64;
        audit.lost = lost;
        audit
    }

    /// A CommunicationService of the namespace as JSON.
    pub async fn service_json(&self, name: &str) -> Option<Value> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &resource("CommunicationService", "communicationservices"),
        );
        serde_json::to_value(api.get_opt(name).await.ok()??).ok()
    }

    async fn service_version(&self, service: &str) -> Option<String> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &resource("CommunicationService", "communicationservices"),
        );
        let obj = api.get_opt(service).await.ok()??;
        obj.data["spec"]["apiVersion"].as_str().map(str::to_string)
    }

    /// Every text the scenario produced (operator logs, events, identity and service
    /// status, scraped metrics), scanned for pieces of every secret seen so far.
    pub async fn leak_scan(&mut self, tally: &mut crate::tally::Tally) {
        if self.operator.is_some() {
            self.scrape().await;
        }
        let mut places: Vec<(String, String)> = self
            .operator_logs
            .iter()
            .map(|p| {
                (
                    format!("operator log {}", p.display()),
                    std::fs::read_to_string(p).unwrap_or_default(),
                )
            })
            .collect();
        for obj in self.list_identities().await {
            places.push((
                format!("status of identity {}", obj["metadata"]["name"]),
                obj["status"].to_string(),
            ));
        }
        let services: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &resource("CommunicationService", "communicationservices"),
        );
        if let Ok(list) = services.list(&ListParams::default()).await {
            for s in list {
                places.push((
                    format!("status of service {}", s.name_any()),
                    s.data["status"].to_string(),
                ));
            }
        }
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        if let Ok(list) = events.list(&ListParams::default()).await {
            for e in list {
                places.push((
                    format!("event {}", e.name_any()),
                    serde_json::to_string(&e).unwrap_or_default(),
                ));
            }
        }
        for (i, m) in self.metrics_texts.iter().enumerate() {
            places.push((format!("metrics scrape {i}"), m.clone()));
        }
        let secrets = leak::SECRETS.lock().unwrap().clone();
        let hits = leak::scan(&secrets, &places);
        for h in hits.iter().take(10) {
            eprintln!(
                "reliability {}: a 6-character piece of secret #{} ({} chars) in {} at byte {}",
                self.tag, h.secret, h.secret_len, h.place, h.offset
            );
        }
        let n = leak::distinct_secrets(&hits);
        tally.secrets_in_logs += n;
        tally.note(format!(
            "{}: leak scan of {} texts ({} bytes) for {} secrets: {} secrets found",
            self.tag,
            places.len(),
            places.iter().map(|p| p.1.len()).sum::<usize>(),
            secrets.len(),
            n
        ));
    }

    /// Deletes every identity (operator and ACS up), waits, counts the users still alive
    /// at each emulator as leaked (GA api-versions separately), stops the processes and
    /// deletes the namespace.
    pub async fn teardown(mut self, tally: &mut crate::tally::Tally) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
        let names_by_uid: BTreeMap<String, String> = self
            .list_identities()
            .await
            .iter()
            .filter_map(|o| {
                Some((
                    o["metadata"]["uid"].as_str()?.to_string(),
                    o["metadata"]["name"].as_str()?.to_string(),
                ))
            })
            .collect();
        let names: Vec<String> = self
            .list_identities()
            .await
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        for n in &names {
            self.delete_identity(n).await;
        }
        if self.operator.is_some() {
            let _ = wait_for(120.0, || async {
                self.list_identities().await.is_empty().then_some(())
            })
            .await;
        }
        let left = self.list_identities().await.len();
        if left > 0 {
            tally.note(format!(
                "{}: {left} identities not gone 120 s after deletion",
                self.tag
            ));
        }
        let services: Vec<String> = self.emulators.keys().cloned().collect();
        for service in services {
            let custom = self.service_version(&service).await.as_deref() == Some(CUSTOM_ID_VERSION);
            let live_users: Vec<String> = self
                .emu(&service)
                .users()
                .await
                .into_iter()
                .filter(|u| u["deleted"] == false)
                .map(|u| {
                    let owner = u["customId"]
                        .as_str()
                        .and_then(|c| c.strip_prefix("k8s-"))
                        .and_then(|uid| names_by_uid.get(uid).cloned())
                        .unwrap_or_else(|| "-".into());
                    format!("{} (customId {}, identity {owner})", u["id"], u["customId"])
                })
                .collect();
            let live = live_users.len() as u64;
            if custom {
                tally.leaked += live;
            } else {
                tally.ga_leaked += live;
            }
            if live > 0 {
                tally.note(format!(
                    "{}: {live} ACS users still alive at service {service} ({}) after every identity was deleted: {live_users:?}",
                    self.tag,
                    if custom { "custom ids" } else { "GA, no custom ids" }
                ));
            }
        }
        self.stop_operator();
        for emu in self.emulators.values_mut() {
            emu.stop();
        }
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.ns, &DeleteParams::default())
            .await;
    }
}

#[derive(Debug, Default)]
pub struct Audit {
    pub not_ready: Vec<String>,
    pub invalid_tokens: Vec<String>,
    pub missing_tokens: Vec<String>,
    pub leaked_users: Vec<String>,
    /// Users made more than once for one identity (custom id), with their times.
    pub duplicate_users: Vec<String>,
    pub lost: Vec<String>,
    pub users_total: u64,
}

pub fn ready_status(obj: &Value) -> Option<String> {
    condition(obj, "Ready").and_then(|c| c["status"].as_str().map(str::to_string))
}

pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// JSON merge (objects merged recursively, everything else replaced).
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// Unix seconds with milliseconds.
pub fn secs(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// A world with one custom-id service `acs` whose emulator makes a 24 h token live
/// `token_secs`, and its operator running; returns it with the lifetime scale.
pub async fn scaled_world(tag: &str, token_secs: f64) -> (World, f64) {
    let scale = token_secs / 86_400.0;
    let mut w = World::new(Cluster::shared(), tag).await;
    w.add_service(
        "acs",
        CUSTOM_ID_VERSION,
        &["--token-lifetime-scale".into(), scale.to_string()],
        json!({}),
    )
    .await;
    w.start_operator().await;
    (w, scale)
}

pub fn ts(v: &Value) -> Option<Timestamp> {
    v.as_str()?.parse().ok()
}
