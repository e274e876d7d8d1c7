//! `kubectl acs status NAME`: everything the status says about one identity, conditions
//! with their messages.

use jiff::Timestamp;
use kube::{Api, ResourceExt};

use crate::api::conditions::types;
use crate::api::{
    CommunicationIdentity, RENEW_REQUESTED_AT_ANNOTATION, REVOKE_REQUESTED_AT_ANNOTATION,
};

use super::cluster::Connection;
use super::error::{CliError, Op, Resource, classify};
use super::format::{NONE, field, rfc3339, table, when, when_opt};
use super::{condition, secret_name};

pub fn render(id: &CommunicationIdentity, now: Timestamp) -> String {
    let st = id.status.clone().unwrap_or_default();
    let time = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        when_opt(t.as_ref().map(|t| t.0), now)
    };
    let mut out = String::new();
    field(&mut out, "Name", id.name_any());
    field(&mut out, "Namespace", id.namespace().unwrap_or_default());
    let ready = match condition(id, types::READY) {
        Some(c) if c.reason.is_empty() => c.status.clone(),
        Some(c) => format!("{} ({})", c.status, c.reason),
        None => "Unknown (the operator has not reconciled it yet)".to_string(),
    };
    field(&mut out, "Ready", ready);
    field(&mut out, "User", st.user_id.as_deref().unwrap_or(NONE));
    field(&mut out, "Secret", secret_name(id));
    let scopes = |s: &mut dyn Iterator<Item = String>| s.collect::<Vec<_>>().join(", ");
    field(
        &mut out,
        "Scopes",
        scopes(&mut id.spec.scopes.iter().map(|s| s.to_string())),
    );
    if let Some(token_scopes) = &st.token_scopes
        && token_scopes != &id.spec.scopes
    {
        field(
            &mut out,
            "Token scopes",
            format!(
                "{} (the current token predates the spec's scopes)",
                scopes(&mut token_scopes.iter().map(|s| s.to_string()))
            ),
        );
    }
    let renew_before = id
        .spec
        .renew_before
        .clone()
        .unwrap_or_else(|| "a third of it".to_string());
    field(
        &mut out,
        "Token lifetime",
        format!(
            "{} (renewed {renew_before} before expiry)",
            id.spec.token_lifetime
        ),
    );
    field(&mut out, "Token expires", time(&st.token_expires_on));
    field(&mut out, "Renewal", time(&st.renewal_time));
    field(&mut out, "Last issued", time(&st.last_token_issued_at));
    field(
        &mut out,
        "Last revoked",
        st.last_revoked_at
            .as_ref()
            .map_or_else(|| "never".to_string(), |t| when(t.0, now)),
    );
    let generation = id.metadata.generation.unwrap_or_default();
    let observed = match st.observed_generation {
        None => format!("{generation} (not observed yet)"),
        Some(o) if o == generation => format!("{generation} (observed {o}: up to date)"),
        Some(o) => format!(
            "{generation} (observed {o}: the operator has not acted on the latest spec yet)"
        ),
    };
    field(&mut out, "Generation", observed);
    for (label, annotation, handled) in [
        (
            "Renew requested",
            RENEW_REQUESTED_AT_ANNOTATION,
            &st.last_renew_request_handled,
        ),
        (
            "Revoke requested",
            REVOKE_REQUESTED_AT_ANNOTATION,
            &st.last_revoke_request_handled,
        ),
    ] {
        if let Some(value) = id.annotations().get(annotation) {
            let state = if handled.as_deref() == Some(value.as_str()) {
                "handled"
            } else {
                "pending"
            };
            field(&mut out, label, format!("{value} ({state})"));
        }
    }
    if id.metadata.deletion_timestamp.is_some() {
        field(
            &mut out,
            "Deleting",
            "yes (finalizer cleaning up the ACS user)",
        );
    }
    out.push_str("Conditions:\n");
    if st.conditions.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let rows: Vec<Vec<String>> = st
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    if c.reason.is_empty() {
                        NONE.to_string()
                    } else {
                        c.reason.clone()
                    },
                    rfc3339(c.last_transition_time.0),
                    if c.message.is_empty() {
                        NONE.to_string()
                    } else {
                        c.message.clone()
                    },
                ]
            })
            .collect();
        let t = table(&["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], &rows);
        for line in t.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Reads one identity, with the CLI's error messages.
pub async fn get(conn: &Connection, name: &str) -> Result<CommunicationIdentity, CliError> {
    let api: Api<CommunicationIdentity> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let op = Op {
        verb: "get",
        resource: Resource::Identity,
        namespace: Some(&conn.namespace),
        name: Some(name),
    };
    api.get(name)
        .await
        .map_err(|e| classify(e, op, &conn.server))
}

pub async fn run(
    conn: &Connection,
    name: &str,
    out: &mut dyn std::io::Write,
) -> Result<(), CliError> {
    let id = get(conn, name).await?;
    write!(out, "{}", render(&id, Timestamp::now()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::identity;

    #[test]
    fn shows_conditions_requests_and_generations() {
        let now: Timestamp = "2026-11-25T11:00:00Z".parse().expect("ts");
        let mut id = identity("app", Some(("False", "ServiceNotFound")), true);
        id.metadata.generation = Some(3);
        id.annotations_mut().insert(
            RENEW_REQUESTED_AT_ANNOTATION.into(),
            "2026-11-25T10:59:00Z".into(),
        );
        let out = render(&id, now);
        for want in [
            "Name:               app\n",
            "Namespace:          team-a\n",
            "Ready:              False (ServiceNotFound)\n",
            "User:               8:acs:r_app\n",
            "Scopes:             chat, voip\n",
            "Token lifetime:     24h (renewed a third of it before expiry)\n",
            "Token expires:      2026-11-26T10:00:00Z (in 23h)\n",
            "Renewal:            2026-11-26T02:00:00Z (in 15h)\n",
            "Last issued:        2026-11-25T10:00:00Z (1h ago)\n",
            "Last revoked:       never\n",
            "Generation:         3 (observed 2: the operator has not acted on the latest spec yet)\n",
            "Renew requested:    2026-11-25T10:59:00Z (pending)\n",
            "  TYPE             STATUS   REASON            SINCE",
            "  Ready            False    ServiceNotFound   2026-11-25T10:00:00Z   CommunicationService \"acs\" not found",
            "  RenewalFailing   True     RenewalFailed",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }
}
