//! `kubectl acs renew|revoke NAME`: set the request annotation to the current time (any
//! new value is a new request to the operator) and optionally wait until the status
//! records it as handled.

use std::time::Duration;

use jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::api::conditions::types;
use crate::api::{
    CommunicationIdentity, RENEW_REQUESTED_AT_ANNOTATION, REVOKE_REQUESTED_AT_ANNOTATION,
};

use super::cluster::Connection;
use super::condition;
use super::error::{CliError, Op, Resource, classify};
use super::format::{NONE, rfc3339, when, when_opt};

/// Field manager of the annotation patch.
pub const FIELD_MANAGER: &str = "kubectl-acs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Renew,
    Revoke,
}

impl Request {
    pub fn annotation(self) -> &'static str {
        match self {
            Request::Renew => RENEW_REQUESTED_AT_ANNOTATION,
            Request::Revoke => REVOKE_REQUESTED_AT_ANNOTATION,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Request::Renew => "renew",
            Request::Revoke => "revoke",
        }
    }

    fn status_field(self) -> &'static str {
        match self {
            Request::Renew => "status.lastRenewRequestHandled",
            Request::Revoke => "status.lastRevokeRequestHandled",
        }
    }

    fn handled(self, id: &CommunicationIdentity) -> Option<&str> {
        let st = id.status.as_ref()?;
        match self {
            Request::Renew => st.last_renew_request_handled.as_deref(),
            Request::Revoke => st.last_revoke_request_handled.as_deref(),
        }
    }
}

/// The annotation value: now, to the second; with nanoseconds when that equals the value
/// already there (two requests within one second must still differ).
pub fn request_value(now: Timestamp, current: Option<&str>) -> String {
    let value = rfc3339(now);
    if current == Some(value.as_str()) {
        now.to_string()
    } else {
        value
    }
}

/// What the CLI prints once the operator handled the request.
pub fn render_handled(request: Request, id: &CommunicationIdentity, now: Timestamp) -> String {
    let st = id.status.clone().unwrap_or_default();
    let mut out = match request {
        Request::Renew => format!(
            "renewed: new token issued {}, expires {}\n",
            when_opt(st.last_token_issued_at.map(|t| t.0), now),
            when_opt(st.token_expires_on.map(|t| t.0), now),
        ),
        Request::Revoke => format!(
            "revoked: every token of user {} revoked {}; new token expires {}\n",
            st.user_id.as_deref().unwrap_or(NONE),
            st.last_revoked_at
                .map_or_else(|| NONE.to_string(), |t| when(t.0, now)),
            when_opt(st.token_expires_on.map(|t| t.0), now),
        ),
    };
    if let Some(c) = condition(id, types::READY).filter(|c| c.status != "True") {
        out.push_str(&format!(
            "warning: Ready is {} ({}): {}\n",
            c.status, c.reason, c.message
        ));
    }
    out
}

pub async fn run(
    conn: &Connection,
    name: &str,
    request: Request,
    wait: Option<Duration>,
    out: &mut dyn std::io::Write,
) -> Result<(), CliError> {
    let api: Api<CommunicationIdentity> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let op = |verb| Op {
        verb,
        resource: Resource::Identity,
        namespace: Some(&conn.namespace),
        name: Some(name),
    };
    let id = super::status::get(conn, name).await?;
    let annotation = request.annotation();
    let value = request_value(
        Timestamp::now(),
        id.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotation))
            .map(String::as_str),
    );
    let patch = serde_json::json!({"metadata": {"annotations": {annotation: value}}});
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| classify(e, op("patch"), &conn.server))?;
    writeln!(
        out,
        "{} requested for communicationidentity {name:?} in namespace {:?} ({annotation}={value})",
        request.word(),
        conn.namespace
    )?;
    let Some(timeout) = wait else {
        writeln!(
            out,
            "the operator acts on it shortly; follow with: kubectl acs status {name} -n {}",
            conn.namespace
        )?;
        return Ok(());
    };
    out.flush()?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let id = api
            .get(name)
            .await
            .map_err(|e| classify(e, op("get"), &conn.server))?;
        if request.handled(&id) == Some(value.as_str()) {
            write!(out, "{}", render_handled(request, &id, Timestamp::now()))?;
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let ready = condition(&id, types::READY)
                .filter(|c| c.status != "True")
                .map(|c| format!("; Ready is {} ({}): {}", c.status, c.reason, c.message))
                .unwrap_or_default();
            return Err(CliError::Other(format!(
                "timed out after {} waiting for the operator to handle the {} request \
                 ({} is {}){ready}; check that the operator is running, then: kubectl acs status {name} -n {}",
                super::format::human_duration(
                    jiff::SignedDuration::try_from(timeout).unwrap_or_default()
                ),
                request.word(),
                request.status_field(),
                request
                    .handled(&id)
                    .map_or_else(|| "unset".to_string(), |v| format!("{v:?}")),
                conn.namespace,
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::identity;

    #[test]
    fn request_values_are_rfc3339_and_always_new() {
        let now: Timestamp = "2026-11-25T11:00:00.25Z".parse().expect("ts");
        assert_eq!(request_value(now, None), "2026-11-25T11:00:00Z");
        assert_eq!(
            request_value(now, Some("2026-11-25T10:00:00Z")),
            "2026-11-25T11:00:00Z"
        );
        assert_eq!(
            request_value(now, Some("2026-11-25T11:00:00Z")),
            "2026-11-25T11:00:00.25Z"
        );
    }

    #[test]
    fn handled_output_shows_the_new_expiry() {
        let now: Timestamp = "2026-11-25T11:00:00Z".parse().expect("ts");
        let id = identity("app", Some(("True", "TokenIssued")), false);
        assert_eq!(
            render_handled(Request::Renew, &id, now),
            "renewed: new token issued 2026-11-25T10:00:00Z (1h ago), expires 2026-11-26T10:00:00Z (in 23h)\n"
        );
        let id = identity("app", Some(("False", "TokenIssueFailed")), false);
        let out = render_handled(Request::Revoke, &id, now);
        assert!(out.starts_with("revoked: every token of user 8:acs:r_app revoked -; new token expires 2026-11-26T10:00:00Z (in 23h)\n"), "{out}");
        assert!(
            out.contains("warning: Ready is False (TokenIssueFailed)"),
            "{out}"
        );
    }
}
