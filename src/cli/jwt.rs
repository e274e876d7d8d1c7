//! Reading an ACS access token's claims without verifying it (the CLI has no key) and
//! without ever keeping or showing the token or its signature.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use jiff::Timestamp;
use serde_json::{Map, Value};

/// The claims a person wants to see, from the JWT payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `8:` + the `skypeid` claim (ACS's identity id), or `sub`.
    pub user_id: Option<String>,
    /// `acsScope` (comma-separated) or `scp` (space-separated or, in ACS, a bit mask).
    pub scopes: Vec<String>,
    /// `iat`.
    pub issued_at: Option<Timestamp>,
    /// `exp`.
    pub expires_at: Option<Timestamp>,
    /// `resourceId`: the ACS resource that issued the token.
    pub resource_id: Option<String>,
    /// Names (not values) of the other claims.
    pub other: Vec<String>,
}

/// Why a token could not be read. Never carries any part of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("it is not a JWT (expected header.payload.signature)")]
    NotAJwt,
    #[error("its payload is not base64")]
    PayloadNotBase64,
    #[error("its payload is not a JSON object")]
    PayloadNotJson,
}

/// Decodes the payload (base64url or standard base64, with or without padding) and picks
/// out the claims. The signature is never looked at.
pub fn decode_claims(token: &str) -> Result<Claims, JwtError> {
    let mut parts = token.trim().split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::NotAJwt);
    };
    let payload = payload.trim_end_matches('=');
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .or_else(|_| STANDARD_NO_PAD.decode(payload))
        .map_err(|_| JwtError::PayloadNotBase64)?;
    let map: Map<String, Value> =
        serde_json::from_slice(&json).map_err(|_| JwtError::PayloadNotJson)?;
    Ok(claims_from(&map))
}

const KNOWN: [&str; 7] = [
    "skypeid",
    "sub",
    "acsScope",
    "scp",
    "iat",
    "exp",
    "resourceId",
];

fn claims_from(map: &Map<String, Value>) -> Claims {
    let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
    let time = |k: &str| {
        map.get(k)
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
            .and_then(|s| Timestamp::from_second(s).ok())
    };
    let user_id = text("skypeid")
        .map(|s| {
            if s.starts_with("8:") {
                s
            } else {
                format!("8:{s}")
            }
        })
        .or_else(|| text("sub"));
    let scopes = match (map.get("acsScope"), map.get("scp")) {
        (Some(Value::String(s)), _) => split_scopes(s, ','),
        (_, Some(Value::String(s))) => split_scopes(s, ' '),
        (_, Some(Value::Number(n))) => vec![format!("scp={n}")],
        _ => Vec::new(),
    };
    Claims {
        user_id,
        scopes,
        issued_at: time("iat"),
        expires_at: time("exp"),
        resource_id: text("resourceId"),
        other: map
            .keys()
            .filter(|k| !KNOWN.contains(&k.as_str()))
            .cloned()
            .collect(),
    }
}

fn split_scopes(s: &str, sep: char) -> Vec<String> {
    s.split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    use super::*;

    /// A JWT-shaped token with `payload`, encoded with `engine`.
    pub(crate) fn token_with(payload: &str, engine: &impl base64::Engine) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJlLWJ5dGVzLXRoYXQtbXVzdC1uZXZlci1iZS1zaG93bg",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            engine.encode(payload)
        )
    }

    const PAYLOAD: &str = r#"{"skypeid":"acs:res_user-1","acsScope":"chat,voip","resourceId":"res","iat":1764068400,"exp":1764154800,"seq":7,"rgn":"amer"}"#;

    #[test]
    fn reads_claims_in_every_base64_flavour() {
        // A payload whose encodings differ between the alphabets and need padding.
        let payload = PAYLOAD.replace("res_user-1", "res_user-1??>>");
        for engine in [URL_SAFE_NO_PAD, URL_SAFE, STANDARD_NO_PAD, STANDARD] {
            let claims = decode_claims(&token_with(&payload, &engine)).expect("decodes");
            assert_eq!(claims.user_id.as_deref(), Some("8:acs:res_user-1??>>"));
            assert_eq!(claims.scopes, ["chat", "voip"]);
            assert_eq!(
                claims.issued_at,
                Some("2025-11-25T11:00:00Z".parse().expect("ts"))
            );
            assert_eq!(
                claims.expires_at,
                Some("2025-11-26T11:00:00Z".parse().expect("ts"))
            );
            assert_eq!(claims.resource_id.as_deref(), Some("res"));
            assert_eq!(claims.other, ["rgn", "seq"]);
        }
    }

    #[test]
    fn other_scope_shapes() {
        let t = token_with(r#"{"sub":"me","scp":"chat voip"}"#, &URL_SAFE_NO_PAD);
        let c = decode_claims(&t).expect("decodes");
        assert_eq!(c.user_id.as_deref(), Some("me"));
        assert_eq!(c.scopes, ["chat", "voip"]);
        let t = token_with(r#"{"skypeid":"8:acs:x","scp":1792}"#, &URL_SAFE_NO_PAD);
        let c = decode_claims(&t).expect("decodes");
        assert_eq!(c.user_id.as_deref(), Some("8:acs:x"));
        assert_eq!(c.scopes, ["scp=1792"]);
        assert_eq!(c.expires_at, None);
    }

    #[test]
    fn rejects_what_is_not_a_jwt() {
        assert_eq!(decode_claims("opaque"), Err(JwtError::NotAJwt));
        assert_eq!(decode_claims("a.b.c.d"), Err(JwtError::NotAJwt));
        assert_eq!(decode_claims("a.!!!.c"), Err(JwtError::PayloadNotBase64));
        let t = token_with("[1]", &URL_SAFE_NO_PAD);
        assert_eq!(decode_claims(&t), Err(JwtError::PayloadNotJson));
    }
}
