//! One test's world: a namespace of its own, an emulator, the credential Secret and a
//! `CommunicationService` ([`SERVICE`]) pointing at it, and the operator (the binary's
//! shared one, or private ones the test starts and stops). Helpers create identities,
//! wait for conditions, read Secrets and events, and prove at the end that no token or
//! key leaked into logs, status or events.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use acs_identity_operator::api::CommunicationIdentity;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::emulator::Emulator;
use super::operator::{Operator, operator, spawn_operator};
use super::{ControlPlane, TestNamespace, eventually};

/// The CommunicationService (and its credential Secret) every [`World`] creates.
pub const SERVICE: &str = "acs";
pub const CREDENTIAL_SECRET: &str = "acs-connection";

/// Which operator reconciles the world's namespace.
enum Operators {
    /// The binary's shared operator ([`operator`]), watching every namespace.
    Shared(&'static Operator),
    /// Private processes watching only this namespace, started and stopped by the test;
    /// `tag` names their log directories.
    Private {
        tag: String,
        running: Option<Operator>,
    },
}

/// A test's namespace, emulator and `CommunicationService` ([`SERVICE`]), and an operator.
/// Tokens and keys the test saw are remembered, so [`World::finish`] can prove none of
/// them leaked into logs, status or events.
pub struct World {
    pub cp: &'static ControlPlane,
    pub client: Client,
    pub emulator: Emulator,
    operators: Operators,
    /// Logs of every operator process this test ran, for the leak check.
    operator_logs: Vec<PathBuf>,
    /// Strings that must never appear in logs, status or events.
    secrets: Mutex<BTreeSet<String>>,
    // Last: dropped after the operator and the emulator stopped.
    pub ns: TestNamespace,
}

impl World {
    /// The shared operator running, a fresh namespace, an emulator process with
    /// `token_lifetime_scale`, a credential Secret and a `CommunicationService` named
    /// [`SERVICE`].
    pub async fn new(prefix: &str, token_lifetime_scale: f64) -> World {
        let op = operator();
        let mut world = World::without_operator(prefix, token_lifetime_scale, None).await;
        world.operator_logs.push(op.log.clone());
        world.operators = Operators::Shared(op);
        world
    }

    /// A world whose operator is a private process watching only its namespace (started
    /// here; [`World::stop_operator`] and [`World::start_operator`] for outages), with
    /// the service's `apiVersion` set when given.
    pub async fn with_private_operator(
        tag: &str,
        token_lifetime_scale: f64,
        api_version: Option<&str>,
    ) -> World {
        // The chart's ServiceAccount and RBAC, which every operator process runs under.
        let _ = super::operator::operator_kubeconfig();
        let mut world =
            World::without_operator(&format!("res-{tag}"), token_lifetime_scale, api_version).await;
        world.operators = Operators::Private {
            tag: tag.to_string(),
            running: None,
        };
        world.start_operator().await;
        world
    }

    async fn without_operator(
        prefix: &str,
        token_lifetime_scale: f64,
        api_version: Option<&str>,
    ) -> World {
        let cp = ControlPlane::get();
        super::install_crds(cp);
        let client = cp.admin_client().await;
        let ns = TestNamespace::create(cp, &client, prefix).await;
        let emulator = Emulator::start(token_lifetime_scale);
        let world = World {
            cp,
            client,
            secrets: Mutex::new(BTreeSet::from([emulator.access_key.clone()])),
            emulator,
            operators: Operators::Private {
                tag: String::new(),
                running: None,
            },
            operator_logs: vec![],
            ns,
        };
        install_service(
            &world.client,
            world.ns(),
            &world.emulator.connection_string,
            api_version,
        )
        .await;
        world
    }

    pub fn ns(&self) -> &str {
        &self.ns.name
    }

    /// Starts a private operator process for this namespace; returns once `/readyz` is 200.
    pub async fn start_operator(&mut self) {
        let ns = self.ns.name.clone();
        let Operators::Private { tag, running } = &mut self.operators else {
            panic!("the shared operator cannot be started by a test");
        };
        assert!(running.is_none(), "an operator is already running");
        let op = spawn_operator(
            &["--watch-namespaces", &ns],
            &format!("acs-resilience-{tag}-"),
        )
        .await;
        self.operator_logs.push(op.log.clone());
        *running = Some(op);
    }

    /// Stops the private operator as an uninstall would (SIGTERM, SIGKILL after 10 s).
    pub fn stop_operator(&mut self) {
        let Operators::Private { running, .. } = &mut self.operators else {
            panic!("the shared operator cannot be stopped by a test");
        };
        let op = running.take().expect("the operator is running");
        op.process().stop();
    }

    /// The operator reconciling this namespace.
    pub fn operator(&self) -> &Operator {
        match &self.operators {
            Operators::Shared(op) => op,
            Operators::Private { running, .. } => {
                running.as_ref().expect("the operator is running")
            }
        }
    }

    pub fn identities(&self) -> Api<CommunicationIdentity> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    /// Creates or replaces the credential Secret [`CREDENTIAL_SECRET`]; its key is
    /// remembered for the leak check.
    pub async fn put_credentials(&self, connection_string: &str) {
        if let Some((_, key)) = connection_string.split_once("accesskey=") {
            self.remember(key);
        }
        put_credentials(&self.client, self.ns(), connection_string).await;
    }

    /// Creates any namespaced object of group acs-operator.dev in the test namespace.
    pub async fn create(&self, plural: &str, obj: Value) -> Value {
        create_in(&self.client, self.ns(), plural, obj)
            .await
            .unwrap_or_else(|e| panic!("create {plural}: {e}"))
    }

    /// A `CommunicationIdentity` using [`SERVICE`] with `spec` merged over
    /// `{serviceRef, scopes: [chat]}`.
    pub async fn create_identity(&self, name: &str, spec: Value) -> CommunicationIdentity {
        create_identity(&self.client, self.ns(), name, spec).await
    }

    pub async fn get(&self, name: &str) -> Option<CommunicationIdentity> {
        self.identities().get_opt(name).await.expect("get identity")
    }

    /// Waits (on watch events) until `Ready` has `status` (and `reason`, when given);
    /// returns the identity, or panics with the last status seen.
    pub async fn wait_ready_is(
        &self,
        name: &str,
        status: &str,
        reason: Option<&str>,
        secs: u64,
    ) -> CommunicationIdentity {
        let found = wait_for(&self.identities(), name, secs, |obj| {
            condition(obj, "Ready")
                .is_some_and(|c| c.status == status && reason.is_none_or(|r| c.reason == r))
        })
        .await;
        match found {
            Some(obj) => obj,
            None => panic!(
                "timed out after {secs}s waiting for {}/{name} Ready={status} {reason:?}; last status: {}",
                self.ns(),
                self.get(name)
                    .await
                    .map(|o| serde_json::to_string(&o.status).unwrap_or_default())
                    .unwrap_or_else(|| "(gone)".into())
            ),
        }
    }

    pub async fn wait_ready(&self, name: &str) -> CommunicationIdentity {
        self.wait_ready_is(name, "True", None, 60).await
    }

    /// Waits (on watch events) until the identity is gone.
    pub async fn wait_gone(&self, name: &str, secs: u64) {
        wait_gone(&self.identities(), name, secs).await;
    }

    /// Waits (on watch events, `secs` at most) until the world's namespace is gone.
    pub async fn wait_namespace_gone(&self, secs: u64) {
        let gone = tokio::time::timeout(
            Duration::from_secs(secs),
            kube::runtime::wait::await_condition(
                Api::<Namespace>::all(self.client.clone()),
                self.ns(),
                |o: Option<&Namespace>| o.is_none(),
            ),
        )
        .await;
        match gone {
            Ok(watch) => {
                watch.expect("watch");
            }
            Err(_) => panic!(
                "timed out after {secs}s waiting for the namespace {} to be gone",
                self.ns()
            ),
        }
    }

    /// The Secret's data as strings.
    pub async fn secret_data(&self, name: &str) -> Option<BTreeMap<String, String>> {
        secret_data(&self.client, self.ns(), name).await
    }

    /// The token in Secret `name` (remembered for the leak check).
    pub async fn token(&self, name: &str) -> Option<String> {
        let t = self.secret_data(name).await?.get("token")?.clone();
        self.remember(&t);
        Some(t)
    }

    /// Remembers a secret string that must never appear in logs, status or events.
    pub fn remember(&self, secret: &str) {
        if !secret.is_empty() {
            self.secrets.lock().unwrap().insert(secret.to_string());
        }
    }

    /// Every string remembered so far (tokens, access keys).
    pub fn remembered(&self) -> Vec<String> {
        self.secrets.lock().unwrap().iter().cloned().collect()
    }

    /// events.k8s.io/v1 Events whose `regarding` is the identity `name`.
    pub async fn events_for(&self, name: &str) -> Vec<Event> {
        events_for(&self.client, self.ns(), name).await
    }

    /// Waits for an event with `reason` (and type, when given) on identity `name`.
    pub async fn wait_event(&self, name: &str, reason: &str, type_: Option<&str>) -> Event {
        eventually(60, &format!("event {reason} on {name}"), || async {
            self.events_for(name).await.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && type_.is_none_or(|t| e.type_.as_deref() == Some(t))
            })
        })
        .await
    }

    /// Asserts that no remembered token or key appears in the log of any operator
    /// process of this test, or in the status or events of any identity of the namespace.
    pub async fn assert_no_secret_material(&self) {
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
        for id in self
            .identities()
            .list(&ListParams::default())
            .await
            .expect("list identities")
        {
            places.push((
                format!("status of {}", id.name_any()),
                serde_json::to_string(&id.status).unwrap_or_default(),
            ));
        }
        let events: Api<Event> = Api::namespaced(self.client.clone(), self.ns());
        for e in events.list(&ListParams::default()).await.expect("events") {
            places.push((
                format!("event {}", e.name_any()),
                serde_json::to_string(&e).unwrap_or_default(),
            ));
        }
        // Services carry status.authentication (Entra ID): never a token.
        let services: Api<acs_identity_operator::api::CommunicationService> =
            Api::namespaced(self.client.clone(), self.ns());
        for svc in services
            .list(&ListParams::default())
            .await
            .expect("services")
        {
            places.push((
                format!("status of service {}", svc.name_any()),
                serde_json::to_string(&svc.status).unwrap_or_default(),
            ));
        }
        // Whatever was not remembered: no bearer header, client assertion or Entra
        // token form anywhere.
        for (place, text) in &places {
            for pattern in ["Bearer eyJ", "client_assertion=", "\"access_token\""] {
                assert!(!text.contains(pattern), "`{pattern}` found in {place}");
            }
        }
        for secret in self.remembered() {
            for (place, text) in &places {
                assert!(
                    !text.contains(secret.as_str()),
                    "secret material ({}...) found in {place}",
                    &secret[..secret.len().min(12)]
                );
            }
        }
    }

    /// End of a test: the leak check, then every identity deleted while an operator and
    /// the emulator run (so finalizers finish and the namespace does not hang), then the
    /// operator checked healthy. A private operator is started for that if it is down,
    /// nothing may be left at ACS, and it is stopped at the end.
    pub async fn finish(mut self) {
        self.assert_no_secret_material().await;
        if matches!(&self.operators, Operators::Private { running: None, .. }) {
            self.start_operator().await;
        }
        delete_all_identities(&self.identities(), "the test namespace").await;
        if let Operators::Private { .. } = &self.operators {
            let left = self.emulator.live_users().await;
            assert!(left.is_empty(), "ACS users left behind: {left:?}");
        }
        let op = self.operator();
        assert!(
            op.is_healthy().await,
            "the operator is not healthy; log: {}",
            op.log.display()
        );
        if let Operators::Private { running, .. } = &mut self.operators
            && let Some(op) = running.take()
        {
            op.process().stop();
        }
    }
}

/// Waits (on watch events, `secs` at most) until identity `name` satisfies `check`;
/// `None` on timeout.
pub async fn wait_for(
    api: &Api<CommunicationIdentity>,
    name: &str,
    secs: u64,
    check: impl Fn(&CommunicationIdentity) -> bool,
) -> Option<CommunicationIdentity> {
    let cond = move |o: Option<&CommunicationIdentity>| o.is_some_and(&check);
    tokio::time::timeout(
        Duration::from_secs(secs),
        kube::runtime::wait::await_condition(api.clone(), name, cond),
    )
    .await
    .ok()?
    .expect("watch")
}

/// A `CommunicationIdentity` `ns/name` using [`SERVICE`] with `spec` merged over
/// `{serviceRef, scopes: [chat]}`.
pub async fn create_identity(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> CommunicationIdentity {
    let mut full = json!({"serviceRef": {"name": SERVICE}, "scopes": ["chat"]});
    merge(&mut full, spec);
    create_identity_with_spec(client, ns, name, full).await
}

/// A `CommunicationIdentity` `ns/name` with exactly `spec`.
pub async fn create_identity_with_spec(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> CommunicationIdentity {
    let obj: CommunicationIdentity = serde_json::from_value(json!({
        "apiVersion": "acs-operator.dev/v1alpha1",
        "kind": "CommunicationIdentity",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("identity object");
    Api::<CommunicationIdentity>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create identity {ns}/{name}: {e}"))
}

/// The data of Secret `ns/name` as strings.
pub async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Option<BTreeMap<String, String>> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get Secret")?;
    Some(
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect(),
    )
}

/// Waits (on watch events, `secs` at most) until identity `name` is gone.
pub async fn wait_gone(api: &Api<CommunicationIdentity>, name: &str, secs: u64) {
    let gone = tokio::time::timeout(
        Duration::from_secs(secs),
        kube::runtime::wait::await_condition(
            api.clone(),
            name,
            |o: Option<&CommunicationIdentity>| o.is_none(),
        ),
    )
    .await;
    match gone {
        Ok(watch) => {
            watch.expect("watch");
        }
        Err(_) => panic!("timed out after {secs}s waiting for identity {name} to be gone"),
    }
}

/// Applies the credential Secret [`CREDENTIAL_SECRET`] in `ns`.
pub async fn put_credentials(client: &Client, ns: &str, connection_string: &str) {
    put_secret(client, ns, CREDENTIAL_SECRET, connection_string).await;
}

/// Applies a credential Secret `ns/name` holding `connection_string`.
pub async fn put_secret(client: &Client, ns: &str, name: &str, connection_string: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"connectionString": connection_string},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("acs-tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap_or_else(|e| panic!("apply the credential Secret {ns}/{name}: {e}"));
}

/// The credential Secret and the `CommunicationService` [`SERVICE`] in `ns` (with the
/// service's `apiVersion` when given).
pub async fn install_service(
    client: &Client,
    ns: &str,
    connection_string: &str,
    api_version: Option<&str>,
) {
    put_credentials(client, ns, connection_string).await;
    let mut spec = json!({"connectionStringSecretRef": {"name": CREDENTIAL_SECRET}});
    if let Some(v) = api_version {
        merge(&mut spec, json!({"apiVersion": v}));
    }
    create_in(
        client,
        ns,
        "communicationservices",
        json!({
            "apiVersion": "acs-operator.dev/v1alpha1",
            "kind": "CommunicationService",
            "metadata": {"name": SERVICE},
            "spec": spec,
        }),
    )
    .await
    .expect("create the CommunicationService");
}

/// events.k8s.io/v1 Events of `ns` whose `regarding` is the identity `name`.
pub async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("CommunicationIdentity")
                    && r.name.as_deref() == Some(name)
            })
        })
        .collect()
}

/// Deletes every identity `api` lists and waits (60 s at most) until they are gone; an
/// operator must run to drop the finalizers. `what` names the scope in a timeout.
pub async fn delete_all_identities(api: &Api<CommunicationIdentity>, what: &str) {
    let _ = api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    eventually(60, &format!("every identity of {what} to be gone"), || {
        let api = api.clone();
        async move {
            api.list(&ListParams::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        }
    })
    .await;
}

/// The API resource of an acs-operator.dev/v1alpha1 kind, for dynamic clients.
pub fn acs_resource(kind: &str, plural: &str) -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: "acs-operator.dev".into(),
        version: "v1alpha1".into(),
        api_version: "acs-operator.dev/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Creates an acs-operator.dev object (namespaced, or cluster-scoped with `ns` empty).
pub async fn create_in(
    client: &Client,
    ns: &str,
    plural: &str,
    obj: Value,
) -> Result<Value, kube::Error> {
    let ar = acs_resource(obj["kind"].as_str().unwrap_or_default(), plural);
    let api: Api<kube::core::DynamicObject> = if ns.is_empty() {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), ns, &ar)
    };
    let dynamic: kube::core::DynamicObject =
        serde_json::from_value(obj).expect("a Kubernetes object");
    let created = api.create(&PostParams::default(), &dynamic).await?;
    Ok(serde_json::to_value(created).expect("JSON"))
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

pub fn condition<'a>(obj: &'a CommunicationIdentity, type_: &str) -> Option<&'a Condition> {
    obj.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// The JSON claims of a JWT-shaped token.
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}
