//! `kubectl acs token NAME`: the claims and expiry of the token in the identity's Secret.
//! The token itself, and its signature, are never printed: only decoded claims.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::api::CommunicationIdentity;
use crate::api::secret_keys::{
    ENDPOINT as KEY_ENDPOINT, EXPIRES_ON as KEY_EXPIRES_ON, TOKEN as KEY_TOKEN,
    USER_ID as KEY_USER_ID,
};

use super::cluster::Connection;
use super::error::{CliError, Op, Resource, classify};
use super::format::{NONE, field, human_duration, when, when_opt};
use super::jwt::decode_claims;
use super::secret_name;

/// The Secret's keys as text (values that are not UTF-8 count as absent).
fn text<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|b| std::str::from_utf8(&b.0).ok())
}

/// The report. Errors say what is wrong with the token without quoting it.
pub fn render(
    id: &CommunicationIdentity,
    secret: &Secret,
    now: Timestamp,
) -> Result<String, CliError> {
    let secret_name = secret.name_any();
    let token = text(secret, KEY_TOKEN).ok_or_else(|| {
        CliError::Other(format!(
            "Secret {secret_name:?} in namespace {:?} has no key {KEY_TOKEN:?} (or it is not text)",
            secret.namespace().unwrap_or_default()
        ))
    })?;
    let claims = decode_claims(token).map_err(|e| {
        CliError::Other(format!(
            "the {KEY_TOKEN:?} key of Secret {secret_name:?} cannot be read: {e} (its value is not shown)"
        ))
    })?;
    let expires_on = text(secret, KEY_EXPIRES_ON);
    let expires_on_ts = expires_on.and_then(|e| e.trim().parse::<Timestamp>().ok());
    let mut out = String::new();
    field(
        &mut out,
        "Identity",
        format!("{}/{}", id.namespace().unwrap_or_default(), id.name_any()),
    );
    field(
        &mut out,
        "Secret",
        format!("{secret_name} (key {KEY_TOKEN:?}; the token itself is not shown)"),
    );
    field(&mut out, "User", claims.user_id.as_deref().unwrap_or(NONE));
    if let Some(secret_user) = text(secret, KEY_USER_ID)
        && claims.user_id.as_deref() != Some(secret_user)
    {
        field(
            &mut out,
            "Secret userId",
            format!("{secret_user} (differs from the token's user)"),
        );
    }
    field(
        &mut out,
        "Scopes",
        if claims.scopes.is_empty() {
            NONE.to_string()
        } else {
            claims.scopes.join(", ")
        },
    );
    field(&mut out, "Issued at (iat)", when_opt(claims.issued_at, now));
    field(
        &mut out,
        "Expires at (exp)",
        when_opt(claims.expires_at, now),
    );
    field(
        &mut out,
        "Secret expiresOn",
        match (expires_on_ts, expires_on) {
            (Some(t), _) => when(t, now),
            (None, Some(raw)) => format!("{raw} (not an RFC 3339 time)"),
            (None, None) => NONE.to_string(),
        },
    );
    let time_left = match expires_on_ts.or(claims.expires_at) {
        Some(t) if t > now => human_duration(t.duration_since(now)),
        Some(t) => format!("expired {} ago", human_duration(t.duration_since(now))),
        None => "unknown (no expiry in the token or the Secret)".to_string(),
    };
    field(&mut out, "Time left", time_left);
    if let (Some(lifetime), Some(left)) = (
        claims
            .expires_at
            .zip(claims.issued_at)
            .map(|(e, i)| e.duration_since(i)),
        expires_on_ts
            .or(claims.expires_at)
            .map(|t| t.duration_since(now)),
    ) && lifetime.as_secs() > 0
        && left.as_secs() > 0
    {
        field(
            &mut out,
            "Lifetime",
            format!(
                "{} ({}% left)",
                human_duration(lifetime),
                left.as_secs() * 100 / lifetime.as_secs()
            ),
        );
    }
    if let Some(resource) = &claims.resource_id {
        field(&mut out, "Resource", resource);
    }
    if let Some(endpoint) = text(secret, KEY_ENDPOINT) {
        field(&mut out, "Endpoint", endpoint);
    }
    if !claims.other.is_empty() {
        field(&mut out, "Other claims", claims.other.join(", "));
    }
    Ok(out)
}

pub async fn run(
    conn: &Connection,
    name: &str,
    out: &mut dyn std::io::Write,
) -> Result<(), CliError> {
    let id = super::status::get(conn, name).await?;
    let secret_name = secret_name(&id);
    let secrets: Api<Secret> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let op = Op {
        verb: "get",
        resource: Resource::Secret,
        namespace: Some(&conn.namespace),
        name: Some(&secret_name),
    };
    let secret =
        secrets
            .get(&secret_name)
            .await
            .map_err(|e| match classify(e, op, &conn.server) {
                CliError::NotFound {
                    kind,
                    name: secret,
                    namespace,
                    ..
                } => CliError::NotFound {
                    kind,
                    name: secret,
                    namespace,
                    hint: format!(
                        "; it is the Secret of communicationidentity {name:?} and appears once the \
                     operator has issued a token (see: kubectl acs status {name})"
                    ),
                },
                other => other,
            })?;
    write!(out, "{}", render(&id, &secret, Timestamp::now())?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use k8s_openapi::ByteString;

    use super::*;
    use crate::cli::jwt::tests::token_with;
    use crate::cli::tests::identity;

    fn secret(data: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("app".into());
        s.metadata.namespace = Some("team-a".into());
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        s
    }

    #[test]
    fn shows_claims_and_expiry_but_never_the_token() {
        let now: Timestamp = "2026-11-25T11:00:00Z".parse().expect("ts");
        let token = token_with(
            r#"{"skypeid":"acs:r_app","acsScope":"chat,voip","resourceId":"r","iat":1795600800,"exp":1795687200,"seq":3}"#,
            &URL_SAFE_NO_PAD,
        );
        let s = secret(&[
            (KEY_TOKEN, &token),
            (KEY_EXPIRES_ON, "2026-11-26T10:00:00Z"),
            (KEY_USER_ID, "8:acs:r_app"),
            (KEY_ENDPOINT, "https://acs.example/"),
        ]);
        let id = identity("app", Some(("True", "TokenIssued")), false);
        let out = render(&id, &s, now).expect("renders");
        let signature = token.rsplit('.').next().expect("signature");
        let payload = token.split('.').nth(1).expect("payload");
        assert!(!out.contains(&token), "{out}");
        assert!(!out.contains(signature), "{out}");
        assert!(!out.contains(payload), "{out}");
        for want in [
            "Identity:           team-a/app\n",
            "Secret:             app (key \"token\"; the token itself is not shown)\n",
            "User:               8:acs:r_app\n",
            "Scopes:             chat, voip\n",
            "Issued at (iat):    2026-11-25T10:00:00Z (1h ago)\n",
            "Secret expiresOn:   2026-11-26T10:00:00Z (in 23h)\n",
            "Time left:          23h\n",
            "Endpoint:           https://acs.example/\n",
            "Other claims:       seq\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }

    #[test]
    fn unreadable_tokens_are_not_quoted() {
        let now: Timestamp = "2026-11-25T11:00:00Z".parse().expect("ts");
        let id = identity("app", None, false);
        let raw = "super-secret-opaque-value";
        let err = render(&id, &secret(&[(KEY_TOKEN, raw)]), now)
            .expect_err("not a JWT")
            .to_string();
        assert!(err.contains("not a JWT"), "{err}");
        assert!(!err.contains(raw), "{err}");
        let err = render(&id, &secret(&[]), now)
            .expect_err("no key")
            .to_string();
        assert!(err.contains("has no key \"token\""), "{err}");
    }

    #[test]
    fn expired_tokens_say_so() {
        let now: Timestamp = "2026-11-27T11:00:00Z".parse().expect("ts");
        let token = token_with(r#"{"skypeid":"acs:x","exp":1795687200}"#, &URL_SAFE_NO_PAD);
        let id = identity("app", None, false);
        let out = render(&id, &secret(&[(KEY_TOKEN, &token)]), now).expect("renders");
        assert!(
            out.contains("Time left:          expired 1d1h ago\n"),
            "{out}"
        );
        assert!(out.contains("Secret expiresOn:   -\n"), "{out}");
    }
}
