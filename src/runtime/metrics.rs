//! The operator's Prometheus metrics. The family names below are a documented interface
//! (dashboards and alerts depend on them); change them only with a release note.
//!
//! | family | type | labels |
//! | --- | --- | --- |
//! | `acs_operator_reconciles_total` | counter | `kind`, `result` |
//! | `acs_operator_reconcile_duration_seconds` | histogram | `kind` |
//! | `acs_operator_acs_requests_total` | counter | `operation`, `status` |
//! | `acs_operator_acs_request_duration_seconds` | histogram | `operation` |
//! | `acs_operator_identities` | gauge | `ready` (`true`, `false`, `unknown`) |
//! | `acs_operator_token_expiry_timestamp_seconds` | gauge | `namespace`, `name` |
//! | `acs_operator_renewal_failures_total` | counter | `namespace`, `name`, `reason` |
//! | `acs_operator_reconcile_panics_total` | counter | `kind` |
//! | `acs_operator_reconcile_errors_total` | counter | `kind`, `error` |
//! | `acs_operator_reconciles_in_flight` | gauge | `kind` |
//! | `acs_operator_identity_ready_status` | gauge | `namespace`, `name`, `condition` |
//! | `acs_operator_identity_renewal_timestamp_seconds` | gauge | `namespace`, `name` |
//! | `acs_operator_identity_deletion_timestamp_seconds` | gauge | `namespace`, `name` |
//! | `acs_operator_service_ready_status` | gauge | `kind`, `namespace`, `name`, `condition` |
//! | `acs_operator_acs_quota_waits_total` | counter | `resource`, `operation`, `reason` |
//! | `acs_operator_acs_quota_wait_seconds_total` | counter | `resource`, `operation`, `reason` |
//! | `acs_operator_acs_throttle_pauses_total` | counter | `resource`, `operation` |
//! | `acs_operator_acs_throttle_pause_seconds_total` | counter | `resource`, `operation` |
//! | `acs_operator_acs_quota_limit_requests_per_second` | gauge | `resource`, `operation` |
//! | `acs_operator_leader` | gauge | |
//! | `acs_operator_build_info` | gauge | `version` |
//!
//! `acs_operator_acs_requests_total` and `acs_operator_acs_request_duration_seconds` also
//! carry `resource` (the ACS endpoint's host name). docs/operations.md has the table a
//! person reads.
//!
//! Label values come only from Kubernetes object names and from short, fixed words the
//! code chooses (kinds, operations, status codes, error labels). Anything else passed
//! as such a word is recorded as `other`, so an error message (which could quote a
//! token or a connection string) can never become a label value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::acs::Operation;
use crate::acs::client::{Attempt, RequestObserver, WaitReason};

/// The content type of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus
/// scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Longest fixed-word label value kept; longer ones are not the short words we expect.
const MAX_WORD_LEN: usize = 64;
/// Longest Kubernetes object name (DNS subdomain).
const MAX_OBJECT_NAME_LEN: usize = 253;

/// `ready` label values of `acs_operator_identities`.
const READY_STATES: [&str; 3] = ["true", "false", "unknown"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindResult {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationStatus {
    operation: String,
    status: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceOperation {
    resource: String,
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    resource: String,
    operation: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindError {
    kind: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceConditionLabels {
    kind: String,
    namespace: String,
    name: String,
    condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// `condition` label values of the `*_ready_status` gauges (as cert-manager's).
const CONDITIONS: [&str; 3] = ["True", "False", "Unknown"];

fn condition_label(ready: Option<bool>) -> &'static str {
    match ready {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialResult {
    credential: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabel {
    credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabel {
    ready: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    namespace: String,
    name: String,
    reason: String,
}

type DurationHistogram<L> = Family<L, Histogram, fn() -> Histogram>;

/// What the metrics remember about one identity: the by-state gauge is an exact count of
/// these, and [`IdentitySeries`] renders the identity's series from them on each scrape.
/// Plain fields rather than a `Family` series each: at 4,000 identities the heap profile
/// showed about 1 KiB per identity in those series (an owned label set, an `Arc`ed atomic
/// and hash-table slots for each of up to six of them).
#[derive(Debug, Default)]
struct IdentityEntry {
    series: Series,
    /// Kept so that `forget_identity` can remove the identity's `renewal_failures` series,
    /// which stay a `Family`: only identities whose renewal failed have any.
    failure_reasons: BTreeSet<String>,
}

/// The values of an identity's series: what a scrape copies out.
#[derive(Debug, Default, Clone, Copy)]
struct Series {
    /// `None` until the controller reported a state.
    ready: Option<Option<bool>>,
    token_expiry: Option<i64>,
    renewal_time: Option<i64>,
    deletion_time: Option<i64>,
}

/// Identity key -> entry; see [`identity_key`].
type IdentityMap = BTreeMap<Box<str>, IdentityEntry>;

/// Between namespace and name in an identity's key. It sorts below every character a
/// label value may hold, so the map iterates in (namespace, name) order, and no label
/// value contains it, so the key splits back unambiguously.
const KEY_SEPARATOR: char = ' ';

/// One string per identity, so the namespace needs no map (and no allocation) of its
/// own. Built from the label values rather than the raw names: the entry stands for the
/// series, and two names the guard turns into `other` shared their series before too.
fn identity_key(namespace: &str, name: &str) -> Box<str> {
    let (namespace, name) = (object_label(namespace), object_label(name));
    let mut key = String::with_capacity(namespace.len() + KEY_SEPARATOR.len_utf8() + name.len());
    key.push_str(namespace);
    key.push(KEY_SEPARATOR);
    key.push_str(name);
    key.into_boxed_str()
}

/// The `namespace` and `name` label values of an [`identity_key`].
fn key_labels(key: &str) -> (&str, &str) {
    key.split_once(KEY_SEPARATOR).unwrap_or((key, ""))
}

/// The per-identity gauge families, rendered from one [`IdentityEntry`] per identity.
#[derive(Debug, Default)]
struct IdentitySeries {
    /// The lock also serialises updates of the by-state gauge, so its counts never drift
    /// from the map.
    identities: Mutex<IdentityMap>,
}

// `Registry::register` appends the final full stop to a help text; a collector's
// descriptor goes out as written, so these carry it to keep the exposition unchanged.
const TOKEN_EXPIRY_HELP: &str =
    "Expiry of the identity's current access token, as a Unix timestamp.";
const READY_STATUS_HELP: &str = "1 for the identity's current Ready condition status (True, False or Unknown), 0 for the others.";
const RENEWAL_TIME_HELP: &str =
    "When the operator renews the identity's token (status.renewalTime), as a Unix timestamp.";
const DELETION_TIME_HELP: &str =
    "When the identity was deleted, while its cleanup (the ACS user's deletion) has not finished.";

impl IdentitySeries {
    fn lock(&self) -> MutexGuard<'_, IdentityMap> {
        // A panic while holding the lock leaves the map consistent enough for metrics
        // (each update is a handful of assignments); keep serving rather than poison.
        self.identities
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Collector for IdentitySeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // Copied out, then encoded without the lock: every reconcile's metric update takes
        // it, and formatting a large fleet's series must not hold them all up.
        let identities: Vec<Row> = self
            .lock()
            .iter()
            .map(|(key, e)| (key.clone(), e.series))
            .collect();
        encode_timestamps(
            &mut encoder,
            &identities,
            "token_expiry_timestamp",
            TOKEN_EXPIRY_HELP,
            |s| s.token_expiry,
        )?;
        encode_ready_status(&mut encoder, &identities)?;
        encode_timestamps(
            &mut encoder,
            &identities,
            "identity_renewal_timestamp",
            RENEWAL_TIME_HELP,
            |s| s.renewal_time,
        )?;
        encode_timestamps(
            &mut encoder,
            &identities,
            "identity_deletion_timestamp",
            DELETION_TIME_HELP,
            |s| s.deletion_time,
        )
    }
}

/// What a scrape reads of one identity: its key and its series' values.
type Row = (Box<str>, Series);

/// A `_seconds` gauge family with one series per identity that has a value. Like the
/// registry does for an empty `Family`, a family without series is left out entirely.
fn encode_timestamps(
    encoder: &mut DescriptorEncoder,
    identities: &[Row],
    name: &str,
    help: &str,
    value: fn(&Series) -> Option<i64>,
) -> Result<(), fmt::Error> {
    if !identities.iter().any(|(_, s)| value(s).is_some()) {
        return Ok(());
    }
    let unit = Unit::Seconds;
    let mut family = encoder.encode_descriptor(name, help, Some(&unit), MetricType::Gauge)?;
    for (key, series) in identities {
        if let Some(v) = value(series) {
            let (namespace, name) = key_labels(key);
            family
                .encode_family(&[("namespace", namespace), ("name", name)])?
                .encode_gauge(&v)?;
        }
    }
    Ok(())
}

fn encode_ready_status(
    encoder: &mut DescriptorEncoder,
    identities: &[Row],
) -> Result<(), fmt::Error> {
    if !identities.iter().any(|(_, s)| s.ready.is_some()) {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(
        "identity_ready_status",
        READY_STATUS_HELP,
        None,
        MetricType::Gauge,
    )?;
    for (key, series) in identities {
        let Some(ready) = series.ready else {
            continue;
        };
        let (namespace, name) = key_labels(key);
        let current = condition_label(ready);
        for condition in CONDITIONS {
            family
                .encode_family(&[
                    ("namespace", namespace),
                    ("name", name),
                    ("condition", condition),
                ])?
                .encode_gauge(&i64::from(condition == current))?;
        }
    }
    Ok(())
}

type FloatCounter = Counter<f64, AtomicU64>;

/// All metrics of one operator process. Share it as `Arc<Metrics>`; every method takes
/// `&self` and only touches atomics and short-lived locks, so calling it from reconcile
/// and from the ACS client's request path is cheap.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindResult, Counter>,
    reconcile_duration: DurationHistogram<Kind>,
    acs_requests: Family<OperationStatus, Counter>,
    acs_request_duration: DurationHistogram<OperationLabel>,
    identities: Family<ReadyLabel, Gauge>,
    renewal_failures: Family<FailureLabels, Counter>,
    reconcile_panics: Family<Kind, Counter>,
    entra_token_requests: Family<CredentialResult, Counter>,
    entra_token_expiry: Family<CredentialLabel, Gauge<i64, AtomicI64>>,
    reconcile_errors: Family<KindError, Counter>,
    in_flight: Family<Kind, Gauge>,
    service_ready_status: Family<ServiceConditionLabels, Gauge>,
    quota_waits: Family<WaitLabels, Counter>,
    quota_wait_seconds: Family<WaitLabels, FloatCounter>,
    throttle_pauses: Family<ResourceOperation, Counter>,
    throttle_pause_seconds: Family<ResourceOperation, FloatCounter>,
    quota_limit: Family<ResourceOperation, Gauge<f64, AtomicU64>>,
    leader: Gauge,
    /// Also encoded by the registry, as the collector of the per-identity families.
    identity_series: Arc<IdentitySeries>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn reconcile_histogram() -> Histogram {
    // 5 ms .. ~41 s: a reconcile may wait on ACS retries with backoff.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn acs_request_histogram() -> Histogram {
    // 5 ms .. ~41 s: one attempt is bounded by the client's 30 s request timeout.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("acs_operator");

        let reconciles = Family::<KindResult, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles finished, by resource kind and result (ok or error)",
            reconciles.clone(),
        );
        let reconcile_duration: DurationHistogram<Kind> =
            Family::new_with_constructor(reconcile_histogram);
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconcile took, by resource kind",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let acs_requests = Family::<OperationStatus, Counter>::default();
        registry.register(
            "acs_requests",
            "HTTP attempts to ACS, by operation and HTTP status (or error, timeout)",
            acs_requests.clone(),
        );
        let acs_request_duration: DurationHistogram<OperationLabel> =
            Family::new_with_constructor(acs_request_histogram);
        registry.register_with_unit(
            "acs_request_duration",
            "Latency of one HTTP attempt to ACS, excluding client-side quota waits",
            Unit::Seconds,
            acs_request_duration.clone(),
        );
        let identities = Family::<ReadyLabel, Gauge>::default();
        registry.register(
            "identities",
            "CommunicationIdentities known to the operator, by Ready condition",
            identities.clone(),
        );
        // Present from the start, so `sum(acs_operator_identities)` and alerts on the
        // false state work before the first identity appears.
        for ready in READY_STATES {
            identities.get_or_create(&ReadyLabel { ready }).set(0);
        }
        // token_expiry_timestamp, identity_ready_status, identity_renewal_timestamp and
        // identity_deletion_timestamp: rendered from one entry per identity rather than
        // registered as `Family`s, see `IdentityEntry`. The registry encodes collectors
        // after its metrics, so these four families come last in the exposition.
        let identity_series = Arc::new(IdentitySeries::default());
        registry.register_collector(Box::new(Arc::clone(&identity_series)));
        let renewal_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "renewal_failures",
            "Failed attempts to issue a new token for an identity, by reason",
            renewal_failures.clone(),
        );

        let reconcile_panics = Family::<Kind, Counter>::default();
        registry.register(
            "reconcile_panics",
            "Reconciles that panicked (a bug): caught, reported on the object, retried with backoff",
            reconcile_panics.clone(),
        );
        let entra_token_requests = Family::<CredentialResult, Counter>::default();
        registry.register(
            "entra_token_requests",
            "Token requests to Entra ID, by credential (ServiceAccount namespace/name, or ambient) and result",
            entra_token_requests.clone(),
        );
        let entra_token_expiry = Family::<CredentialLabel, Gauge<i64, AtomicI64>>::default();
        registry.register_with_unit(
            "entra_token_expiry_timestamp",
            "Expiry of the cached Entra ID token of a credential, as a Unix timestamp",
            Unit::Seconds,
            entra_token_expiry.clone(),
        );

        let reconcile_errors = Family::<KindError, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by resource kind and error kind",
            reconcile_errors.clone(),
        );
        let in_flight = Family::<Kind, Gauge>::default();
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now, by resource kind (bounded by --max-concurrent-reconciles for identities)",
            in_flight.clone(),
        );
        for kind in [
            "CommunicationIdentity",
            "CommunicationService",
            "ClusterCommunicationService",
        ] {
            in_flight.get_or_create(&Kind { kind: kind.into() }).set(0);
        }
        let service_ready_status = Family::<ServiceConditionLabels, Gauge>::default();
        registry.register(
            "service_ready_status",
            "1 for the service's current Ready condition status (True, False or Unknown), 0 for the others",
            service_ready_status.clone(),
        );
        let quota_waits = Family::<WaitLabels, Counter>::default();
        registry.register(
            "acs_quota_waits",
            "Requests held back before sending: reason quota (the client-side budget) or pause (after a 429)",
            quota_waits.clone(),
        );
        let quota_wait_seconds = Family::<WaitLabels, FloatCounter>::default();
        registry.register_with_unit(
            "acs_quota_wait",
            "Time requests were held back before sending, by reason",
            Unit::Seconds,
            quota_wait_seconds.clone(),
        );
        let throttle_pauses = Family::<ResourceOperation, Counter>::default();
        registry.register(
            "acs_throttle_pauses",
            "429 answers with Retry-After from ACS, each pausing the operation for every caller of the resource",
            throttle_pauses.clone(),
        );
        let throttle_pause_seconds = Family::<ResourceOperation, FloatCounter>::default();
        registry.register_with_unit(
            "acs_throttle_pause",
            "Pause time ACS asked for with 429 Retry-After",
            Unit::Seconds,
            throttle_pause_seconds.clone(),
        );
        let quota_limit = Family::<ResourceOperation, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "acs_quota_limit_requests_per_second",
            "The client-side budget of the operation on the ACS resource, in requests per second",
            quota_limit.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process runs the controllers (it holds the Lease, or leader election is off)",
            leader.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; the operator's version as a label",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        Self {
            registry,
            reconcile_errors,
            in_flight,
            service_ready_status,
            quota_waits,
            quota_wait_seconds,
            throttle_pauses,
            throttle_pause_seconds,
            quota_limit,
            leader,
            reconcile_panics,
            entra_token_requests,
            entra_token_expiry,
            reconciles,
            reconcile_duration,
            acs_requests,
            acs_request_duration,
            identities,
            renewal_failures,
            identity_series,
        }
    }

    /// A reconcile of a resource of `kind` panicked and was caught.
    pub fn reconcile_panicked(&self, kind: &str) {
        self.reconcile_panics
            .get_or_create(&Kind { kind: word(kind) })
            .inc();
    }

    /// One finished reconcile of a resource of `kind` (e.g. `CommunicationIdentity`);
    /// `result` is `ok` or `error`.
    pub fn observe_reconcile(&self, kind: &str, result: &str, elapsed: Duration) {
        let kind = word(kind);
        self.reconciles
            .get_or_create(&KindResult {
                kind: kind.clone(),
                result: word(result),
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&Kind { kind })
            .observe(elapsed.as_secs_f64());
    }

    /// A failed reconcile of `kind`; `error` is the error's `metric_label()`.
    pub fn reconcile_failed(&self, kind: &str, error: &str) {
        self.reconcile_errors
            .get_or_create(&KindError {
                kind: word(kind),
                error: word(error),
            })
            .inc();
    }

    /// Counts a reconcile of `kind` as running until the guard drops.
    pub fn reconcile_started(&self, kind: &str) -> InFlight {
        let gauge = self
            .in_flight
            .get_or_create(&Kind { kind: word(kind) })
            .clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// Whether this process runs the controllers now.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// One HTTP attempt to ACS. `status` is the HTTP status code (`"201"`), or `error` /
    /// `timeout` when no response came back.
    pub fn observe_acs_request(
        &self,
        resource: &str,
        operation: &str,
        status: &str,
        elapsed: Duration,
    ) {
        let operation = word(operation);
        let resource = object_name(resource);
        self.acs_requests
            .get_or_create(&OperationStatus {
                operation: operation.clone(),
                status: word(status),
                resource: resource.clone(),
            })
            .inc();
        self.acs_request_duration
            .get_or_create(&OperationLabel {
                operation,
                resource,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The service's Ready condition: `Some(true)`, `Some(false)`, or `None` (unknown).
    pub fn set_service_ready(&self, kind: &str, namespace: &str, name: &str, ready: Option<bool>) {
        let current = condition_label(ready);
        for condition in CONDITIONS {
            self.service_ready_status
                .get_or_create(&ServiceConditionLabels {
                    kind: word(kind),
                    namespace: object_name(namespace),
                    name: object_name(name),
                    condition,
                })
                .set(i64::from(condition == current));
        }
    }

    /// The service is gone: its series are removed.
    pub fn forget_service(&self, kind: &str, namespace: &str, name: &str) {
        for condition in CONDITIONS {
            self.service_ready_status.remove(&ServiceConditionLabels {
                kind: word(kind),
                namespace: object_name(namespace),
                name: object_name(name),
                condition,
            });
        }
    }

    /// The identity's Ready condition: `Some(true)`, `Some(false)`, or `None` (unknown).
    pub fn set_identity_ready(&self, namespace: &str, name: &str, ready: Option<bool>) {
        let mut identities = self.identity_series.lock();
        let entry = entry_mut(&mut identities, namespace, name);
        let previous = entry.series.ready.replace(ready);
        if previous == Some(ready) {
            return;
        }
        if let Some(previous) = previous {
            self.identities
                .get_or_create(&ReadyLabel {
                    ready: ready_label(previous),
                })
                .dec();
        }
        self.identities
            .get_or_create(&ReadyLabel {
                ready: ready_label(ready),
            })
            .inc();
    }

    /// When the identity's current token expires.
    pub fn set_token_expiry(&self, namespace: &str, name: &str, unix_seconds: i64) {
        let mut identities = self.identity_series.lock();
        entry_mut(&mut identities, namespace, name)
            .series
            .token_expiry = Some(unix_seconds);
    }

    /// When the identity's token is renewed (its `status.renewalTime`); `None` removes
    /// the series (no renewal scheduled, e.g. no token yet).
    pub fn set_renewal_time(&self, namespace: &str, name: &str, unix_seconds: Option<i64>) {
        let mut identities = self.identity_series.lock();
        entry_mut(&mut identities, namespace, name)
            .series
            .renewal_time = unix_seconds;
    }

    /// The identity is being deleted (since `unix_seconds`) and its cleanup runs.
    pub fn set_deletion_time(&self, namespace: &str, name: &str, unix_seconds: i64) {
        let mut identities = self.identity_series.lock();
        entry_mut(&mut identities, namespace, name)
            .series
            .deletion_time = Some(unix_seconds);
    }

    /// A failed attempt to renew the identity's token. `reason` is a short fixed word,
    /// such as an `AcsError::metric_label()`, never an error message.
    pub fn renewal_failed(&self, namespace: &str, name: &str, reason: &str) {
        let reason = word(reason);
        let mut identities = self.identity_series.lock();
        entry_mut(&mut identities, namespace, name)
            .failure_reasons
            .insert(reason.clone());
        self.renewal_failures
            .get_or_create(&FailureLabels {
                namespace: object_name(namespace),
                name: object_name(name),
                reason,
            })
            .inc();
    }

    /// The identity is gone: it no longer counts in `acs_operator_identities`, and its
    /// series are removed so that cardinality follows the cluster, not the operator's
    /// uptime.
    pub fn forget_identity(&self, namespace: &str, name: &str) {
        let key = identity_key(namespace, name);
        let mut identities = self.identity_series.lock();
        if let Some(entry) = identities.remove(&key) {
            self.drop_identity(&key, entry);
        }
    }

    /// [`Metrics::forget_identity`] for every identity not in `alive` (namespace, name).
    pub fn retain_identities<'a>(&self, alive: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let alive: std::collections::HashSet<Box<str>> = alive
            .into_iter()
            .map(|(namespace, name)| identity_key(namespace, name))
            .collect();
        let mut identities = self.identity_series.lock();
        let gone: Vec<Box<str>> = identities
            .keys()
            .filter(|k| !alive.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(entry) = identities.remove(&key) {
                self.drop_identity(&key, entry);
            }
        }
    }

    /// What an identity's entry counted elsewhere: its state in the by-state gauge and
    /// its failure series. Called with the identities' lock held, so the gauge's counts
    /// never drift from the map.
    fn drop_identity(&self, key: &str, entry: IdentityEntry) {
        if let Some(ready) = entry.series.ready {
            self.identities
                .get_or_create(&ReadyLabel {
                    ready: ready_label(ready),
                })
                .dec();
        }
        let (namespace, name) = key_labels(key);
        for reason in entry.failure_reasons {
            self.renewal_failures.remove(&FailureLabels {
                namespace: namespace.to_string(),
                name: name.to_string(),
                reason,
            });
        }
    }

    /// Every family in OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a
        // label encoder, and an empty scrape is better than a crash of the operator.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl crate::acs::entra::EntraObserver for Metrics {
    fn on_token_request(&self, credential: &str, result: &'static str) {
        self.entra_token_requests
            .get_or_create(&CredentialResult {
                credential: credential.chars().take(MAX_OBJECT_NAME_LEN + 64).collect(),
                result: result.to_string(),
            })
            .inc();
    }

    fn on_token(&self, credential: &str, expires_on: jiff::Timestamp) {
        self.entra_token_expiry
            .get_or_create(&CredentialLabel {
                credential: credential.chars().take(MAX_OBJECT_NAME_LEN + 64).collect(),
            })
            .set(expires_on.as_second());
    }
}

impl RequestObserver for Metrics {
    fn on_attempt(&self, attempt: &Attempt) {
        let status = match attempt.status {
            Some(code) => code.to_string(),
            None if attempt.result == "timeout" => "timeout".to_string(),
            None => "error".to_string(),
        };
        self.observe_acs_request(
            &attempt.resource,
            attempt.operation.as_str(),
            &status,
            attempt.elapsed,
        );
        let labels = resource_operation(&attempt.resource, attempt.operation);
        match attempt.quota_limit_per_second {
            Some(limit) => {
                self.quota_limit.get_or_create(&labels).set(limit);
            }
            None => {
                self.quota_limit.remove(&labels);
            }
        }
    }

    fn on_wait(&self, resource: &str, operation: Operation, reason: WaitReason, wait: Duration) {
        let labels = WaitLabels {
            resource: object_name(resource),
            operation: word(operation.as_str()),
            reason: reason.as_str(),
        };
        self.quota_waits.get_or_create(&labels).inc();
        self.quota_wait_seconds
            .get_or_create(&labels)
            .inc_by(wait.as_secs_f64());
    }

    fn on_throttle(&self, resource: &str, operation: Operation, pause: Duration) {
        let labels = resource_operation(resource, operation);
        self.throttle_pauses.get_or_create(&labels).inc();
        self.throttle_pause_seconds
            .get_or_create(&labels)
            .inc_by(pause.as_secs_f64());
    }
}

/// Holds a reconcile in `acs_operator_reconciles_in_flight` until dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn resource_operation(resource: &str, operation: Operation) -> ResourceOperation {
    ResourceOperation {
        resource: object_name(resource),
        operation: word(operation.as_str()),
    }
}

fn entry_mut<'a>(
    identities: &'a mut IdentityMap,
    namespace: &str,
    name: &str,
) -> &'a mut IdentityEntry {
    identities.entry(identity_key(namespace, name)).or_default()
}

fn ready_label(ready: Option<bool>) -> &'static str {
    match ready {
        Some(true) => "true",
        Some(false) => "false",
        None => "unknown",
    }
}

/// A Kubernetes object name as a label value. Names are validated by the API server;
/// the bound only guards against a caller passing something that isn't one.
fn object_name(s: &str) -> String {
    object_label(s).to_string()
}

fn object_label(s: &str) -> &str {
    if s.len() <= MAX_OBJECT_NAME_LEN && s.chars().all(is_name_char) {
        s
    } else {
        "other"
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')
}

/// A fixed word (kind, result, operation, status, reason) as a label value.
fn word(s: &str) -> String {
    if !s.is_empty()
        && s.len() <= MAX_WORD_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        s.to_string()
    } else {
        "other".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acs::Operation;

    fn lines_with<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    fn identities_line(text: &str, ready: &str) -> String {
        let prefix = format!("acs_operator_identities{{ready=\"{ready}\"}} ");
        lines_with(text, &prefix)
            .first()
            .map(|l| l.to_string())
            .unwrap_or_else(|| panic!("no identities series for ready={ready} in\n{text}"))
    }

    #[test]
    fn every_family_is_described_with_its_documented_name() {
        // prometheus-client leaves out families without series, so give each one.
        let m = Metrics::new();
        m.observe_reconcile("CommunicationIdentity", "ok", Duration::from_millis(1));
        m.observe_acs_request(
            "acs.example.com",
            "create_user",
            "201",
            Duration::from_millis(1),
        );
        m.set_identity_ready("ns", "id", Some(true));
        m.set_token_expiry("ns", "id", 1);
        m.renewal_failed("ns", "id", "throttled");
        {
            use crate::acs::entra::EntraObserver;
            m.on_token_request("team-a/acs-client", "ok");
            m.on_token_request("team-a/acs-client", "refused");
            m.on_token(
                "team-a/acs-client",
                jiff::Timestamp::from_second(1_900_000_000).unwrap(),
            );
        }
        let text = m.encode();
        assert!(
            text.contains(r#"acs_operator_entra_token_requests_total{credential="team-a/acs-client",result="refused"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"acs_operator_entra_token_expiry_timestamp_seconds{credential="team-a/acs-client"} 1900000000"#),
            "{text}"
        );
        for (name, kind) in [
            ("acs_operator_entra_token_requests", "counter"),
            ("acs_operator_entra_token_expiry_timestamp_seconds", "gauge"),
            ("acs_operator_reconciles", "counter"),
            ("acs_operator_reconcile_duration_seconds", "histogram"),
            ("acs_operator_acs_requests", "counter"),
            ("acs_operator_acs_request_duration_seconds", "histogram"),
            ("acs_operator_identities", "gauge"),
            ("acs_operator_token_expiry_timestamp_seconds", "gauge"),
            ("acs_operator_renewal_failures", "counter"),
        ] {
            let want = format!("# TYPE {name} {kind}");
            assert!(text.contains(&want), "missing {want:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "not OpenMetrics text:\n{text}");
    }

    #[test]
    fn reconciles_are_counted_by_kind_and_result_with_durations() {
        let m = Metrics::new();
        m.observe_reconcile("CommunicationIdentity", "ok", Duration::from_millis(20));
        m.observe_reconcile("CommunicationIdentity", "ok", Duration::from_millis(30));
        m.observe_reconcile("CommunicationIdentity", "error", Duration::from_secs(2));
        let text = m.encode();
        assert!(text.contains(
            "acs_operator_reconciles_total{kind=\"CommunicationIdentity\",result=\"ok\"} 2\n"
        ));
        assert!(text.contains(
            "acs_operator_reconciles_total{kind=\"CommunicationIdentity\",result=\"error\"} 1\n"
        ));
        assert!(
            text.contains(
                "acs_operator_reconcile_duration_seconds_count{kind=\"CommunicationIdentity\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "acs_operator_reconcile_duration_seconds_bucket{le=\"0.04\",kind=\"CommunicationIdentity\"} 2\n"
        ), "{text}");
    }

    #[test]
    fn acs_attempts_are_counted_by_operation_and_status() {
        let m = Metrics::new();
        let attempt = |status: Option<u16>, result: &'static str| Attempt {
            operation: Operation::IssueToken,
            attempt: 1,
            status,
            result,
            elapsed: Duration::from_millis(12),
            quota_wait: Duration::from_secs(5),
            resource: std::sync::Arc::from("acs.example.com"),
            quota_limit_per_second: Some(1000.0 / 30.0),
        };
        let observer: &dyn RequestObserver = &m;
        observer.on_attempt(&attempt(Some(200), "ok"));
        observer.on_attempt(&attempt(Some(429), "throttled"));
        observer.on_attempt(&attempt(None, "timeout"));
        observer.on_attempt(&attempt(None, "transport"));
        let text = m.encode();
        for status in ["200", "429", "timeout", "error"] {
            let want = format!(
                "acs_operator_acs_requests_total{{operation=\"issue_token\",status=\"{status}\",resource=\"acs.example.com\"}} 1\n"
            );
            assert!(text.contains(&want), "missing {want:?} in\n{text}");
        }
        assert!(text.contains(
            "acs_operator_acs_request_duration_seconds_count{operation=\"issue_token\",resource=\"acs.example.com\"} 4\n"
        ));
        // The quota wait (5 s) is not request latency.
        assert!(text.contains(
            "acs_operator_acs_request_duration_seconds_bucket{le=\"0.02\",operation=\"issue_token\",resource=\"acs.example.com\"} 4\n"
        ), "{text}");
    }

    #[test]
    fn identities_are_counted_by_ready_state_and_forgotten() {
        let m = Metrics::new();
        let text = m.encode();
        for ready in ["true", "false", "unknown"] {
            assert!(identities_line(&text, ready).ends_with(" 0"), "{text}");
        }

        m.set_identity_ready("a", "one", None);
        m.set_identity_ready("a", "two", Some(true));
        m.set_identity_ready("b", "one", Some(false));
        // Repeating a state changes nothing; moving between states moves the count.
        m.set_identity_ready("a", "two", Some(true));
        m.set_identity_ready("a", "one", Some(true));
        let text = m.encode();
        assert!(identities_line(&text, "true").ends_with(" 2"), "{text}");
        assert!(identities_line(&text, "false").ends_with(" 1"), "{text}");
        assert!(identities_line(&text, "unknown").ends_with(" 0"), "{text}");

        m.forget_identity("a", "two");
        m.forget_identity("a", "two");
        m.forget_identity("nowhere", "nothing");
        let text = m.encode();
        assert!(identities_line(&text, "true").ends_with(" 1"), "{text}");
        assert!(identities_line(&text, "false").ends_with(" 1"), "{text}");
    }

    #[test]
    fn identities_not_alive_lose_their_series_and_their_count() {
        let m = Metrics::new();
        m.set_identity_ready("team-a", "kept", Some(true));
        m.set_identity_ready("team-a", "gone", Some(true));
        m.set_token_expiry("team-a", "gone", 1_900_000_000);
        m.renewal_failed("team-a", "gone", "throttled");
        // A name the label guard turns into `other` is matched by its label value.
        let long = "x".repeat(MAX_OBJECT_NAME_LEN + 1);
        m.set_identity_ready("team-b", &long, Some(false));
        m.retain_identities([("team-a", "kept"), ("team-b", long.as_str())]);
        let text = m.encode();
        assert!(!text.contains("name=\"gone\""), "{text}");
        assert!(text.contains("name=\"kept\""), "{text}");
        assert!(identities_line(&text, "true").ends_with(" 1"), "{text}");
        assert!(identities_line(&text, "false").ends_with(" 1"), "{text}");
        m.retain_identities([]);
        let text = m.encode();
        assert!(identities_line(&text, "true").ends_with(" 0"), "{text}");
        assert!(identities_line(&text, "false").ends_with(" 0"), "{text}");
    }

    #[test]
    fn forgetting_an_identity_removes_its_expiry_and_failure_series() {
        let m = Metrics::new();
        m.set_identity_ready("team-a", "chat-bot", Some(true));
        m.set_token_expiry("team-a", "chat-bot", 1_900_000_000);
        m.set_token_expiry("team-a", "other", 1_800_000_000);
        m.renewal_failed("team-a", "chat-bot", "throttled");
        m.renewal_failed("team-a", "chat-bot", "throttled");
        m.renewal_failed("team-a", "chat-bot", "unauthorized");
        let text = m.encode();
        assert!(text.contains(
            "acs_operator_token_expiry_timestamp_seconds{namespace=\"team-a\",name=\"chat-bot\"} 1900000000\n"
        ), "{text}");
        assert!(text.contains(
            "acs_operator_renewal_failures_total{namespace=\"team-a\",name=\"chat-bot\",reason=\"throttled\"} 2\n"
        ), "{text}");

        m.forget_identity("team-a", "chat-bot");
        let text = m.encode();
        assert!(!text.contains("name=\"chat-bot\""), "{text}");
        assert!(
            text.contains(
                "acs_operator_token_expiry_timestamp_seconds{namespace=\"team-a\",name=\"other\"} 1800000000\n"
            ),
            "{text}"
        );
        assert!(identities_line(&text, "true").ends_with(" 0"), "{text}");
    }

    #[test]
    fn free_text_never_becomes_a_label_value() {
        let m = Metrics::new();
        let secret = "endpoint=https://x.communication.azure.com/;accesskey=c2VjcmV0";
        m.renewal_failed("ns", "id", secret);
        m.observe_reconcile(
            "CommunicationIdentity",
            "failed: token eyJhbGciOi is bad",
            Duration::ZERO,
        );
        m.observe_acs_request(secret, secret, "200", Duration::ZERO);
        m.set_token_expiry("ns", "bad name with spaces", 1);
        let text = m.encode();
        assert!(!text.contains("accesskey"), "{text}");
        assert!(!text.contains("eyJ"), "{text}");
        assert!(!text.contains("spaces"), "{text}");
        assert!(text.contains("reason=\"other\""), "{text}");
        assert!(text.contains("result=\"other\""), "{text}");
    }

    #[test]
    fn identities_have_ready_status_and_renewal_series_until_forgotten() {
        let m = Metrics::new();
        m.set_identity_ready("team-a", "bot", Some(false));
        m.set_identity_ready("team-a", "bot", Some(true));
        m.set_renewal_time("team-a", "bot", Some(1_900_000_000));
        m.set_deletion_time("team-a", "bot", 1_800_000_000);
        let text = m.encode();
        assert!(text.contains(
            "acs_operator_identity_deletion_timestamp_seconds{namespace=\"team-a\",name=\"bot\"} 1800000000\n"
        ), "{text}");
        for (condition, v) in [("True", 1), ("False", 0), ("Unknown", 0)] {
            let want = format!(
                "acs_operator_identity_ready_status{{namespace=\"team-a\",name=\"bot\",condition=\"{condition}\"}} {v}\n"
            );
            assert!(text.contains(&want), "missing {want:?} in\n{text}");
        }
        assert!(text.contains(
            "acs_operator_identity_renewal_timestamp_seconds{namespace=\"team-a\",name=\"bot\"} 1900000000\n"
        ), "{text}");
        m.forget_identity("team-a", "bot");
        let text = m.encode();
        assert!(!text.contains("name=\"bot\""), "{text}");
    }

    /// The lines of `family` (its HELP, TYPE, UNIT and samples) in exposition order.
    fn family_lines<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
        let described = [
            format!("# HELP {family} "),
            format!("# TYPE {family} "),
            format!("# UNIT {family} "),
        ];
        let sample = format!("{family}{{");
        text.lines()
            .filter(|l| l.starts_with(&sample) || described.iter().any(|d| l.starts_with(d)))
            .collect()
    }

    #[test]
    fn identity_families_render_every_series_and_drop_a_forgotten_identity() {
        let m = Metrics::new();
        // (namespace, name, ready, expiry, renewal, deletion); set in reverse order of
        // the exposition, which sorts by namespace and name.
        let identities = [
            (
                "team-b",
                "relay",
                None,
                1_900_000_200,
                1_899_000_200,
                Some(1_800_000_200),
            ),
            (
                "team-a",
                "bot",
                Some(true),
                1_900_000_100,
                1_899_000_100,
                None,
            ),
        ];
        for (namespace, name, ready, expiry, renewal, deletion) in identities {
            m.set_identity_ready(namespace, name, ready);
            m.set_token_expiry(namespace, name, expiry);
            m.set_renewal_time(namespace, name, Some(renewal));
            if let Some(deletion) = deletion {
                m.set_deletion_time(namespace, name, deletion);
            }
        }

        const EXPIRY: &str = "acs_operator_token_expiry_timestamp_seconds";
        const READY: &str = "acs_operator_identity_ready_status";
        const RENEWAL: &str = "acs_operator_identity_renewal_timestamp_seconds";
        const DELETION: &str = "acs_operator_identity_deletion_timestamp_seconds";
        let expiry_head = [
            "# HELP acs_operator_token_expiry_timestamp_seconds Expiry of the identity's current access token, as a Unix timestamp.",
            "# TYPE acs_operator_token_expiry_timestamp_seconds gauge",
            "# UNIT acs_operator_token_expiry_timestamp_seconds seconds",
        ];
        let ready_head = [
            "# HELP acs_operator_identity_ready_status 1 for the identity's current Ready condition status (True, False or Unknown), 0 for the others.",
            "# TYPE acs_operator_identity_ready_status gauge",
        ];
        let renewal_head = [
            "# HELP acs_operator_identity_renewal_timestamp_seconds When the operator renews the identity's token (status.renewalTime), as a Unix timestamp.",
            "# TYPE acs_operator_identity_renewal_timestamp_seconds gauge",
            "# UNIT acs_operator_identity_renewal_timestamp_seconds seconds",
        ];
        let deletion_head = [
            "# HELP acs_operator_identity_deletion_timestamp_seconds When the identity was deleted, while its cleanup (the ACS user's deletion) has not finished.",
            "# TYPE acs_operator_identity_deletion_timestamp_seconds gauge",
            "# UNIT acs_operator_identity_deletion_timestamp_seconds seconds",
        ];
        let bot_expiry = r#"acs_operator_token_expiry_timestamp_seconds{namespace="team-a",name="bot"} 1900000100"#;
        let bot_ready = [
            r#"acs_operator_identity_ready_status{namespace="team-a",name="bot",condition="True"} 1"#,
            r#"acs_operator_identity_ready_status{namespace="team-a",name="bot",condition="False"} 0"#,
            r#"acs_operator_identity_ready_status{namespace="team-a",name="bot",condition="Unknown"} 0"#,
        ];
        let bot_renewal = r#"acs_operator_identity_renewal_timestamp_seconds{namespace="team-a",name="bot"} 1899000100"#;

        // (family, lines with both identities, lines once team-b/relay is forgotten)
        let table: [(&str, Vec<&str>, Vec<&str>); 4] = [
            (
                EXPIRY,
                [&expiry_head[..], &[
                    bot_expiry,
                    r#"acs_operator_token_expiry_timestamp_seconds{namespace="team-b",name="relay"} 1900000200"#,
                ]].concat(),
                [&expiry_head[..], &[bot_expiry]].concat(),
            ),
            (
                READY,
                [&ready_head[..], &bot_ready, &[
                    r#"acs_operator_identity_ready_status{namespace="team-b",name="relay",condition="True"} 0"#,
                    r#"acs_operator_identity_ready_status{namespace="team-b",name="relay",condition="False"} 0"#,
                    r#"acs_operator_identity_ready_status{namespace="team-b",name="relay",condition="Unknown"} 1"#,
                ]].concat(),
                [&ready_head[..], &bot_ready].concat(),
            ),
            (
                RENEWAL,
                [&renewal_head[..], &[
                    bot_renewal,
                    r#"acs_operator_identity_renewal_timestamp_seconds{namespace="team-b",name="relay"} 1899000200"#,
                ]].concat(),
                [&renewal_head[..], &[bot_renewal]].concat(),
            ),
            (
                // No identity left with a deletion time: the family goes away entirely,
                // as an empty `Family` does.
                DELETION,
                [&deletion_head[..], &[
                    r#"acs_operator_identity_deletion_timestamp_seconds{namespace="team-b",name="relay"} 1800000200"#,
                ]].concat(),
                vec![],
            ),
        ];

        let before = m.encode();
        m.forget_identity("team-b", "relay");
        let after = m.encode();
        for (family, want_before, want_after) in &table {
            assert_eq!(
                &family_lines(&before, family),
                want_before,
                "{family} in\n{before}"
            );
            assert_eq!(
                &family_lines(&after, family),
                want_after,
                "{family} in\n{after}"
            );
        }
        assert!(!after.contains("relay"), "{after}");
        assert!(identities_line(&after, "true").ends_with(" 1"), "{after}");
        assert!(
            identities_line(&after, "unknown").ends_with(" 0"),
            "{after}"
        );
        assert!(after.ends_with("# EOF\n"), "{after}");
    }

    #[test]
    fn services_waits_pauses_and_build_info() {
        let m = Metrics::new();
        m.set_service_ready("CommunicationService", "team-a", "acs", Some(true));
        let observer: &dyn RequestObserver = &m;
        observer.on_wait(
            "acs.example.com",
            Operation::IssueToken,
            WaitReason::Quota,
            Duration::from_millis(500),
        );
        observer.on_wait(
            "acs.example.com",
            Operation::IssueToken,
            WaitReason::Pause,
            Duration::from_secs(2),
        );
        observer.on_throttle(
            "acs.example.com",
            Operation::IssueToken,
            Duration::from_secs(2),
        );
        m.set_leader(true);
        let _running = m.reconcile_started("CommunicationIdentity");
        m.reconcile_failed("CommunicationIdentity", "service");
        let text = m.encode();
        for want in [
            "acs_operator_service_ready_status{kind=\"CommunicationService\",namespace=\"team-a\",name=\"acs\",condition=\"True\"} 1\n",
            "acs_operator_acs_quota_waits_total{resource=\"acs.example.com\",operation=\"issue_token\",reason=\"quota\"} 1\n",
            "acs_operator_acs_quota_wait_seconds_total{resource=\"acs.example.com\",operation=\"issue_token\",reason=\"quota\"} 0.5\n",
            "acs_operator_acs_throttle_pauses_total{resource=\"acs.example.com\",operation=\"issue_token\"} 1\n",
            "acs_operator_acs_throttle_pause_seconds_total{resource=\"acs.example.com\",operation=\"issue_token\"} 2.0\n",
            "acs_operator_leader 1\n",
            "acs_operator_reconciles_in_flight{kind=\"CommunicationIdentity\"} 1\n",
            "acs_operator_reconcile_errors_total{kind=\"CommunicationIdentity\",error=\"service\"} 1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let build = format!(
            "acs_operator_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        drop(_running);
        assert!(
            m.encode()
                .contains("acs_operator_reconciles_in_flight{kind=\"CommunicationIdentity\"} 0\n")
        );
        m.forget_service("CommunicationService", "team-a", "acs");
        assert!(!m.encode().contains("name=\"acs\""));
    }

    #[test]
    fn word_keeps_short_identifiers() {
        assert_eq!(word("create_user"), "create_user");
        assert_eq!(word("429"), "429");
        assert_eq!(word("CommunicationIdentity"), "CommunicationIdentity");
        assert_eq!(word(""), "other");
        assert_eq!(word(&"x".repeat(65)), "other");
        assert_eq!(word("a\"b"), "other");
    }
}
