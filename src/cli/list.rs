//! `kubectl acs list`: one row per identity.

use jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::api::CommunicationIdentity;
use crate::api::conditions::types;

use super::cluster::Connection;
use super::error::{CliError, Op, Resource, classify};
use super::format::{NONE, relative, table, when_opt};
use super::{condition, secret_name};

/// Output format of `list`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// One identity as `list` shows it; `-o json` prints these (times in RFC 3339).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub name: String,
    /// Status of the `Ready` condition: `True`, `False` or `Unknown` (no condition yet).
    pub ready: String,
    /// Reason of `Ready` when it is not `True`.
    pub reason: Option<String>,
    pub user: Option<String>,
    #[serde(skip)]
    pub expires_at: Option<Timestamp>,
    /// Expiry of the token in the Secret.
    pub expires: Option<String>,
    #[serde(skip)]
    pub renewal_at: Option<Timestamp>,
    /// When the operator issues the next token.
    pub renewal: Option<String>,
    /// `RenewalFailing` is `True`: the last renewal failed, the old token still works.
    pub renewal_failing: bool,
    pub secret: String,
}

impl Row {
    pub fn of(id: &CommunicationIdentity) -> Row {
        let status = id.status.as_ref();
        let ready = condition(id, types::READY);
        let ready_status = ready.map_or("Unknown", |c| c.status.as_str());
        let reason = match ready {
            Some(c) if c.status == "True" => None,
            Some(c) => Some(c.reason.clone()),
            None => Some("NotReconciled".to_string()),
        };
        let expires_at = status
            .and_then(|s| s.token_expires_on.as_ref())
            .map(|t| t.0);
        let renewal_at = status.and_then(|s| s.renewal_time.as_ref()).map(|t| t.0);
        Row {
            namespace: id.namespace().unwrap_or_default(),
            name: id.name_any(),
            ready: ready_status.to_string(),
            reason,
            user: status.and_then(|s| s.user_id.clone()),
            expires_at,
            expires: expires_at.map(super::format::rfc3339),
            renewal_at,
            renewal: renewal_at.map(super::format::rfc3339),
            renewal_failing: condition(id, types::RENEWAL_FAILING)
                .is_some_and(|c| c.status == "True"),
            secret: secret_name(id),
        }
    }
}

/// The table, with a NAMESPACE column when listing every namespace.
pub fn render_table(rows: &[Row], all_namespaces: bool, now: Timestamp) -> String {
    let mut headers = vec![
        "NAME", "READY", "REASON", "USER", "EXPIRES", "RENEWAL", "SECRET",
    ];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let renewal = match (r.renewal_at, r.renewal_failing) {
                (Some(t), false) if t <= now => "due".to_string(),
                (Some(t), false) => relative(t, now),
                (Some(t), true) if t > now => format!("{} (failing)", relative(t, now)),
                (_, true) => "failing".to_string(),
                (None, false) => NONE.to_string(),
            };
            let mut row = vec![
                r.name.clone(),
                r.ready.clone(),
                r.reason.clone().unwrap_or_else(|| NONE.to_string()),
                r.user.clone().unwrap_or_else(|| NONE.to_string()),
                when_opt(r.expires_at, now),
                renewal,
                r.secret.clone(),
            ];
            if all_namespaces {
                row.insert(0, r.namespace.clone());
            }
            row
        })
        .collect();
    table(&headers, &cells)
}

pub async fn run(
    conn: &Connection,
    all_namespaces: bool,
    output: Output,
    out: &mut dyn std::io::Write,
) -> Result<(), CliError> {
    let (api, namespace): (Api<CommunicationIdentity>, _) = if all_namespaces {
        (Api::all(conn.client.clone()), None)
    } else {
        (
            Api::namespaced(conn.client.clone(), &conn.namespace),
            Some(conn.namespace.as_str()),
        )
    };
    let op = Op {
        verb: "list",
        resource: Resource::Identity,
        namespace,
        name: None,
    };
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| classify(e, op, &conn.server))?;
    let mut rows: Vec<Row> = list.items.iter().map(Row::of).collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    match output {
        Output::Json => {
            let json = serde_json::to_string_pretty(&rows)
                .map_err(|e| CliError::Other(format!("encoding JSON: {e}")))?;
            writeln!(out, "{json}")?;
        }
        Output::Table if rows.is_empty() => match namespace {
            Some(ns) => eprintln!("No CommunicationIdentities found in namespace {ns}."),
            None => eprintln!("No CommunicationIdentities found."),
        },
        Output::Table => {
            write!(
                out,
                "{}",
                render_table(&rows, all_namespaces, Timestamp::now())
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::identity;

    #[test]
    fn rows_show_readiness_expiry_and_renewal() {
        let now: Timestamp = "2026-11-25T11:00:00Z".parse().expect("ts");
        let ready = identity("app", Some(("True", "TokenIssued")), false);
        let broken = identity("broken", Some(("False", "ServiceNotFound")), false);
        let failing = identity("failing", Some(("True", "TokenIssued")), true);
        let mut fresh = identity("fresh", None, false);
        fresh.status = None;
        fresh.spec.secret_name = Some("fresh-token".into());
        let rows: Vec<Row> = [&ready, &broken, &failing, &fresh]
            .into_iter()
            .map(Row::of)
            .collect();
        let out = render_table(&rows, false, now);
        assert_eq!(
            out,
            "NAME      READY     REASON            USER          EXPIRES                         RENEWAL            SECRET\n\
             app       True      -                 8:acs:r_app   2026-11-26T10:00:00Z (in 23h)   in 15h             app\n\
             broken    False     ServiceNotFound   8:acs:r_app   2026-11-26T10:00:00Z (in 23h)   in 15h             broken\n\
             failing   True      -                 8:acs:r_app   2026-11-26T10:00:00Z (in 23h)   in 15h (failing)   failing\n\
             fresh     Unknown   NotReconciled     -             -                               -                  fresh-token\n"
        );
        let all = render_table(&rows[..1], true, now);
        assert!(all.starts_with("NAMESPACE   NAME   READY"), "{all}");
        assert!(all.contains("\nteam-a      app    True "), "{all}");
    }

    #[test]
    fn json_has_the_same_fields() {
        let rows = vec![Row::of(&identity(
            "broken",
            Some(("False", "ServiceNotFound")),
            false,
        ))];
        let json = serde_json::to_value(&rows).expect("json");
        assert_eq!(
            json,
            serde_json::json!([{
                "namespace": "team-a",
                "name": "broken",
                "ready": "False",
                "reason": "ServiceNotFound",
                "user": "8:acs:r_app",
                "expires": "2026-11-26T10:00:00Z",
                "renewal": "2026-11-26T02:00:00Z",
                "renewalFailing": false,
                "secret": "broken"
            }])
        );
    }
}
