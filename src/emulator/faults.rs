//! Injected failures: latency, error statuses (5xx, 429, anything) and dropped
//! connections, per operation, with a probability and an optional count; and the answers
//! of a hostile endpoint: raw `Retry-After` / `retry-after-ms` / `x-ms-retry-after-ms`
//! values (`18446744073709551615`, an HTTP date in the year 9999), an error text that
//! changes with every request, and bodies of hundreds of MiB streamed in chunks.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::EmulatedOperation;

/// One fault, as `POST /admin/faults` takes it and `--fault` spells it
/// (`operation=issue,status=503,probability=0.5,retryAfterSeconds=2,latencyMs=100,count=3`).
/// In the flag form a value may spell a comma as `%2C` (an HTTP date in `retryAfter`).
///
/// By default a fault strikes before the operation runs: nothing changes in the store.
/// With `afterExecute` it strikes after the operation ran (a user was created, a token
/// issued): the latency delays the real answer and a status or drop replaces it, as when
/// a service commits a request whose answer is late or lost. Clients that must not leak
/// on a retry or a crash are tested against exactly that window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultRule {
    /// Absent: every operation.
    #[serde(default)]
    pub operation: Option<EmulatedOperation>,
    /// Absent: no error, only the latency. `0` drops the connection.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default = "always")]
    pub probability: f64,
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// How many requests the fault hits before it retires; absent: forever.
    #[serde(default)]
    pub count: Option<u64>,
    /// Closes the connection without an answer, as a crashed front end would.
    #[serde(default)]
    pub drop: bool,
    /// Strike after the operation ran (and changed state) instead of before.
    #[serde(default)]
    pub after_execute: bool,
    /// Answer with this raw body (`Content-Type: application/json`, whatever it holds)
    /// and `status` (default 200): non-JSON or wrongly shaped answers.
    #[serde(default)]
    pub body: Option<String>,
    /// Sends `body` this many times in a row: oversized answers.
    #[serde(default)]
    pub body_repeat: Option<u64>,
    /// With `afterExecute`: cut the real answer's body to this many bytes, as a proxy
    /// that loses the end of a response would.
    #[serde(default)]
    pub truncate_bytes: Option<u64>,
    /// The `Retry-After` header exactly as given (any text: `18446744073709551615`,
    /// `-1`, `Fri, 31 Dec 9999 23:59:59 GMT`), instead of `retryAfterSeconds`.
    #[serde(default)]
    pub retry_after: Option<String>,
    /// A raw `retry-after-ms` header.
    #[serde(default)]
    pub retry_after_ms: Option<String>,
    /// A raw `x-ms-retry-after-ms` header.
    #[serde(default)]
    pub x_ms_retry_after_ms: Option<String>,
    /// The error message ends with a number that grows with every request this fault
    /// answers, as an endpoint whose error text is never the same twice.
    #[serde(default)]
    pub vary_message: bool,
    /// Streams `body` x `bodyRepeat` without a `Content-Length` (chunked), so the client
    /// learns the size only by reading.
    #[serde(default)]
    pub body_chunked: bool,
}

/// Strikes every request, does nothing: set a status, latency, drop or body on it.
/// (Struct literals can end with `..FaultRule::default()`, so new kinds of fault do not
/// break them.)
impl Default for FaultRule {
    fn default() -> Self {
        Self {
            operation: None,
            status: None,
            probability: 1.0,
            retry_after_seconds: None,
            latency_ms: None,
            count: None,
            drop: false,
            after_execute: false,
            body: None,
            body_repeat: None,
            truncate_bytes: None,
            retry_after: None,
            retry_after_ms: None,
            x_ms_retry_after_ms: None,
            vary_message: false,
            body_chunked: false,
        }
    }
}

/// A raw header value a fault sends must stay one header line.
pub const MAX_FAULT_HEADER_BYTES: usize = 4096;

/// An oversized answer, not an out-of-memory emulator.
pub const MAX_FAULT_BODY_BYTES: usize = 256 * 1024 * 1024;

fn always() -> f64 {
    1.0
}

impl FaultRule {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(format!(
                "probability {} is not between 0 and 1",
                self.probability
            ));
        }
        if let Some(status) = self.status
            && status != 0
            && !(100..=599).contains(&status)
        {
            return Err(format!(
                "status {status} is not an HTTP status (or 0 to drop the connection)"
            ));
        }
        if self.status.is_none()
            && self.latency_ms.is_none()
            && !self.drop
            && self.body.is_none()
            && self.truncate_bytes.is_none()
        {
            return Err("a fault needs a status, latencyMs, drop, body or truncateBytes".into());
        }
        if self.truncate_bytes.is_some() && !self.after_execute {
            return Err("truncateBytes cuts the real answer, so it needs afterExecute".into());
        }
        for (name, value) in self.raw_headers() {
            if value.len() > MAX_FAULT_HEADER_BYTES
                || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
            {
                return Err(format!(
                    "{name} must be one header line of at most {MAX_FAULT_HEADER_BYTES} bytes"
                ));
            }
        }
        if self.body_chunked && self.body.is_none() {
            return Err("bodyChunked streams body, so it needs body".into());
        }
        if self.body_repeat.is_some() && self.body.is_none() {
            return Err("bodyRepeat repeats body, so it needs body".into());
        }
        if self.body.as_ref().map_or(0, String::len) as u128 * self.body_repeat.unwrap_or(1) as u128
            > MAX_FAULT_BODY_BYTES as u128
        {
            return Err(format!(
                "body times bodyRepeat must stay within {MAX_FAULT_BODY_BYTES} bytes"
            ));
        }
        Ok(())
    }

    fn drops(&self) -> bool {
        self.drop || self.status == Some(0)
    }

    /// The raw retry headers this fault sends, as (header name, value).
    fn raw_headers(&self) -> Vec<(&'static str, String)> {
        [
            ("retry-after", &self.retry_after),
            ("retry-after-ms", &self.retry_after_ms),
            ("x-ms-retry-after-ms", &self.x_ms_retry_after_ms),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.clone()?)))
        .collect()
    }
}

impl FromStr for FaultRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut rule = FaultRule::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("fault part `{part}` must be NAME=VALUE"))?;
            let decoded = percent_encoding::percent_decode_str(value.trim()).decode_utf8_lossy();
            let value = decoded.as_ref();
            let bad = || format!("fault part `{part}` has a bad value");
            match name.trim() {
                "operation" | "op" => {
                    if value != "*" {
                        rule.operation = Some(value.parse()?);
                    }
                }
                "status" => rule.status = Some(value.parse().map_err(|_| bad())?),
                "probability" => rule.probability = value.parse().map_err(|_| bad())?,
                "retryAfterSeconds" | "retry-after" => {
                    rule.retry_after_seconds = Some(value.parse().map_err(|_| bad())?)
                }
                "latencyMs" | "latency-ms" => {
                    rule.latency_ms = Some(value.parse().map_err(|_| bad())?)
                }
                "count" => rule.count = Some(value.parse().map_err(|_| bad())?),
                "drop" => rule.drop = value.parse().map_err(|_| bad())?,
                "afterExecute" | "after-execute" => {
                    rule.after_execute = value.parse().map_err(|_| bad())?
                }
                "body" => rule.body = Some(value.to_string()),
                "bodyRepeat" => rule.body_repeat = Some(value.parse().map_err(|_| bad())?),
                "truncateBytes" => rule.truncate_bytes = Some(value.parse().map_err(|_| bad())?),
                "retryAfter" => rule.retry_after = Some(value.to_string()),
                "retryAfterMs" => rule.retry_after_ms = Some(value.to_string()),
                "xMsRetryAfterMs" => rule.x_ms_retry_after_ms = Some(value.to_string()),
                "varyMessage" => rule.vary_message = value.parse().map_err(|_| bad())?,
                "bodyChunked" => rule.body_chunked = value.parse().map_err(|_| bad())?,
                other => return Err(format!("unknown fault part `{other}`")),
            }
        }
        rule.validate()?;
        Ok(rule)
    }
}

/// What a matching fault does to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultAction {
    pub latency: Option<Duration>,
    pub outcome: FaultOutcome,
    /// Applies after the operation ran rather than before.
    pub after_execute: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FaultOutcome {
    /// Delay only; the request then runs normally.
    Proceed,
    Respond {
        status: u16,
        retry_after_seconds: Option<u64>,
        /// Raw retry headers (name, value), sent as given.
        headers: Vec<(&'static str, String)>,
        /// With `varyMessage`: the number the error message ends with.
        message_serial: Option<u64>,
    },
    /// A raw body (repeated `repeat` times, streamed) with `status`.
    RawBody {
        status: u16,
        body: String,
        repeat: u64,
        headers: Vec<(&'static str, String)>,
        /// Without `Content-Length`.
        chunked: bool,
    },
    /// The real answer, its body cut to this many bytes.
    Truncate(u64),
    Drop,
}

/// The active faults. The first rule that matches and wins its dice roll applies.
#[derive(Debug, Default)]
pub struct FaultSet {
    rules: Vec<FaultRule>,
    /// Requests answered by a fault so far (the `varyMessage` number).
    strikes: u64,
}

impl FaultSet {
    pub fn new(rules: Vec<FaultRule>) -> Self {
        Self { rules, strikes: 0 }
    }

    pub fn add(&mut self, rule: FaultRule) {
        self.rules.push(rule);
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    /// `roll` yields uniform numbers in `[0, 1)`; injected so tests are deterministic.
    pub fn decide(
        &mut self,
        operation: EmulatedOperation,
        mut roll: impl FnMut() -> f64,
    ) -> Option<FaultAction> {
        let index = self.rules.iter().position(|rule| {
            rule.operation.is_none_or(|op| op == operation)
                && rule.count != Some(0)
                && (rule.probability >= 1.0 || roll() < rule.probability)
        })?;
        self.strikes += 1;
        let serial = self.strikes;
        let rule = &mut self.rules[index];
        let headers = rule.raw_headers();
        let action = FaultAction {
            latency: rule.latency_ms.map(Duration::from_millis),
            outcome: if rule.drops() {
                FaultOutcome::Drop
            } else if let Some(body) = &rule.body {
                FaultOutcome::RawBody {
                    status: rule.status.unwrap_or(200),
                    body: body.clone(),
                    repeat: rule.body_repeat.unwrap_or(1),
                    headers,
                    chunked: rule.body_chunked,
                }
            } else if let Some(n) = rule.truncate_bytes {
                FaultOutcome::Truncate(n)
            } else if let Some(status) = rule.status {
                FaultOutcome::Respond {
                    status,
                    retry_after_seconds: rule.retry_after_seconds,
                    headers,
                    message_serial: rule.vary_message.then_some(serial),
                }
            } else {
                FaultOutcome::Proceed
            },
            after_execute: rule.after_execute,
        };
        if let Some(count) = rule.count.as_mut() {
            *count -= 1;
            if *count == 0 {
                self.rules.remove(index);
            }
        }
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_form_parses_every_field() {
        let rule: FaultRule =
            "operation=issue,status=503,probability=0.5,retryAfterSeconds=2,latencyMs=100,count=3"
                .parse()
                .unwrap();
        assert_eq!(rule.operation, Some(EmulatedOperation::Issue));
        assert_eq!(rule.status, Some(503));
        assert_eq!(rule.probability, 0.5);
        assert_eq!(rule.retry_after_seconds, Some(2));
        assert_eq!(rule.latency_ms, Some(100));
        assert_eq!(rule.count, Some(3));
        assert!(
            "operation=issue".parse::<FaultRule>().is_err(),
            "a fault must do something"
        );
        assert!("status=503,probability=2".parse::<FaultRule>().is_err());
        assert!("status=503,colour=red".parse::<FaultRule>().is_err());
    }

    #[test]
    fn counted_fault_retires_after_its_count() {
        let mut set = FaultSet::new(vec!["operation=create,status=500,count=2".parse().unwrap()]);
        assert!(
            set.decide(EmulatedOperation::Issue, || 0.0).is_none(),
            "other operations are untouched"
        );
        for _ in 0..2 {
            let action = set.decide(EmulatedOperation::Create, || 0.0).unwrap();
            assert!(matches!(
                action.outcome,
                FaultOutcome::Respond { status: 500, .. }
            ));
        }
        assert!(set.decide(EmulatedOperation::Create, || 0.0).is_none());
        assert!(set.rules().is_empty());
    }

    #[test]
    fn probability_uses_the_roll_and_status_zero_drops() {
        let mut set = FaultSet::new(vec!["status=0,probability=0.5".parse().unwrap()]);
        assert!(set.decide(EmulatedOperation::Get, || 0.9).is_none());
        assert_eq!(
            set.decide(EmulatedOperation::Get, || 0.1).unwrap().outcome,
            FaultOutcome::Drop
        );
    }

    #[test]
    fn latency_only_fault_lets_the_request_proceed() {
        let mut set = FaultSet::new(vec!["latencyMs=5".parse().unwrap()]);
        let action = set.decide(EmulatedOperation::Delete, || 0.0).unwrap();
        assert_eq!(action.latency, Some(Duration::from_millis(5)));
        assert_eq!(action.outcome, FaultOutcome::Proceed);
        assert!(!action.after_execute, "before the operation by default");
    }

    #[test]
    fn after_execute_is_carried_to_the_action() {
        let mut set = FaultSet::new(vec![
            "operation=create,latencyMs=50,afterExecute=true,count=1"
                .parse()
                .unwrap(),
        ]);
        let action = set.decide(EmulatedOperation::Create, || 0.0).unwrap();
        assert!(action.after_execute);
        assert_eq!(action.latency, Some(Duration::from_millis(50)));
        assert!(
            "afterExecute=maybe,latencyMs=1"
                .parse::<FaultRule>()
                .is_err()
        );
    }

    #[test]
    fn body_and_truncate_faults_validate_and_become_outcomes() {
        let mut set = FaultSet::new(vec![
            "operation=issue,status=201,body=<html>,bodyRepeat=3"
                .parse()
                .unwrap(),
            "operation=create,truncateBytes=7,afterExecute=true"
                .parse()
                .unwrap(),
        ]);
        assert_eq!(
            set.decide(EmulatedOperation::Issue, || 0.0)
                .unwrap()
                .outcome,
            FaultOutcome::RawBody {
                status: 201,
                body: "<html>".into(),
                repeat: 3,
                headers: vec![],
                chunked: false,
            }
        );
        let cut = set.decide(EmulatedOperation::Create, || 0.0).unwrap();
        assert_eq!(cut.outcome, FaultOutcome::Truncate(7));
        assert!(cut.after_execute);
        assert!(
            "truncateBytes=7".parse::<FaultRule>().is_err(),
            "cutting needs the real answer"
        );
        assert!("bodyRepeat=2,status=500".parse::<FaultRule>().is_err());
        assert!(
            "body=xx,bodyRepeat=200000000".parse::<FaultRule>().is_err(),
            "bounded"
        );
    }

    #[test]
    fn raw_retry_headers_are_carried_as_given_and_must_be_one_line() {
        let mut set = FaultSet::new(vec![
            "status=429,retryAfter=18446744073709551615,retryAfterMs=99999999999999999999,xMsRetryAfterMs=-1"
                .parse()
                .unwrap(),
            "status=429,retryAfter=Fri%2C 31 Dec 9999 23:59:59 GMT".parse().unwrap(),
        ]);
        let FaultOutcome::Respond { headers, .. } = set
            .decide(EmulatedOperation::Issue, || 0.0)
            .unwrap()
            .outcome
        else {
            panic!("a status fault responds")
        };
        assert_eq!(
            headers,
            vec![
                ("retry-after", "18446744073709551615".to_string()),
                ("retry-after-ms", "99999999999999999999".to_string()),
                ("x-ms-retry-after-ms", "-1".to_string()),
            ]
        );
        let rule: FaultRule = serde_json::from_value(serde_json::json!({
            "status": 429, "retryAfter": "Fri, 31 Dec 9999 23:59:59 GMT"
        }))
        .unwrap();
        assert_eq!(set.rules()[1], rule, "%2C spells a comma in the flag form");
        assert!(
            "status=429,retryAfter=a%0D%0Ab: c"
                .parse::<FaultRule>()
                .is_err()
        );
        let long = format!(
            "status=429,retryAfter={}",
            "9".repeat(MAX_FAULT_HEADER_BYTES + 1)
        );
        assert!(long.parse::<FaultRule>().is_err(), "bounded");
    }

    #[test]
    fn vary_message_numbers_every_answer_differently() {
        let mut set = FaultSet::new(vec!["status=500,varyMessage=true".parse().unwrap()]);
        let serial = |set: &mut FaultSet| match set.decide(EmulatedOperation::Create, || 0.0) {
            Some(FaultAction {
                outcome: FaultOutcome::Respond { message_serial, .. },
                ..
            }) => message_serial,
            other => panic!("{other:?}"),
        };
        let (a, b) = (serial(&mut set), serial(&mut set));
        assert!(a.is_some() && b.is_some() && a != b, "{a:?} {b:?}");
        let mut plain = FaultSet::new(vec!["status=500".parse().unwrap()]);
        assert_eq!(serial(&mut plain), None, "stable text by default");
    }

    #[test]
    fn chunked_bodies_need_a_body_and_100_mib_is_allowed() {
        let rule: FaultRule =
            "status=200,body=xxxxxxxxxxxxxxxx,bodyRepeat=6553600,bodyChunked=true"
                .parse()
                .unwrap();
        assert!(rule.body_chunked);
        assert!("status=200,bodyChunked=true".parse::<FaultRule>().is_err());
    }
}
