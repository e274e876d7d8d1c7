//! Access tokens: JWTs signed with HMAC-SHA256 under a secret only the emulator knows.
//!
//! The Python SDK reads `exp` by decoding the payload with *standard* base64, so the
//! payload's base64url form must hold no `-` or `_`: minting varies a nonce until it is
//! clean (with the ASCII claims used here the first try almost always is).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// `{"alg":"HS256","typ":"JWT"}`: fixed, so its encoding is computed once per token.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedClaims {
    /// `acs:<resource>_<user>` as in real ACS tokens; the identity id is `8:` + this.
    pub skypeid: String,
    /// Comma-separated scopes, as ACS's `acsScope` claim.
    #[serde(rename = "acsScope")]
    pub acs_scope: String,
    #[serde(rename = "resourceId")]
    pub resource_id: String,
    pub iat: i64,
    /// Seconds since the epoch, which every SDK reads.
    pub exp: i64,
    /// The token's place in the emulator-wide issue order. Revocation compares against
    /// it instead of `iat`, so a token issued right after a revoke in the same second is valid.
    pub seq: u64,
    /// Varied only to keep the payload's base64url free of `-` and `_`.
    pub nonce: u32,
}

impl MintedClaims {
    pub fn user_id(&self) -> String {
        format!("8:{}", self.skypeid)
    }

    #[cfg(test)]
    pub fn scopes(&self) -> Vec<String> {
        self.acs_scope
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT (header.payload.signature)")]
    Malformed,
    #[error("the token's signature is not the emulator's")]
    BadSignature,
    #[error("the token's claims are unreadable")]
    BadClaims,
    #[error("no nonce gave a payload free of '-' and '_'")]
    NoCleanEncoding,
}

/// Mints and checks tokens with one secret; `Debug` keeps the secret out of logs.
#[derive(Clone)]
pub struct TokenSigner {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<redacted>)")
    }
}

impl TokenSigner {
    pub fn new(secret: Vec<u8>) -> Self {
        Self { secret }
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of every length, so this only fails on a broken hmac crate.
        match HmacSha256::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        }
    }

    /// Mints a token for `claims`, trying nonces from `claims.nonce` upwards.
    pub fn mint(&self, mut claims: MintedClaims) -> Result<String, TokenError> {
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        for _ in 0..10_000 {
            let json = serde_json::to_vec(&claims).map_err(|_| TokenError::BadClaims)?;
            let payload = URL_SAFE_NO_PAD.encode(json);
            if !payload.contains(['-', '_']) {
                let signing_input = format!("{header}.{payload}");
                let mut mac = self.mac();
                mac.update(signing_input.as_bytes());
                let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
                return Ok(format!("{signing_input}.{signature}"));
            }
            claims.nonce = claims.nonce.wrapping_add(1);
        }
        Err(TokenError::NoCleanEncoding)
    }

    /// Checks the signature and returns the claims; expiry and revocation are the store's call.
    pub fn verify(&self, token: &str) -> Result<MintedClaims, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let json = decode_payload(payload).ok_or(TokenError::BadClaims)?;
        serde_json::from_slice(&json).map_err(|_| TokenError::BadClaims)
    }
}

/// Decodes a payload without checking anything, as the SDKs do to read `exp`.
pub fn decode_payload(payload: &str) -> Option<Vec<u8>> {
    let trimmed = payload.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| STANDARD_NO_PAD.decode(trimmed))
        .ok()
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    fn claims() -> MintedClaims {
        MintedClaims {
            skypeid:
                "acs:11111111-2222-3333-4444-555555555555_66666666-7777-8888-9999-000000000000"
                    .into(),
            acs_scope: "chat,voip".into(),
            resource_id: "11111111-2222-3333-4444-555555555555".into(),
            iat: 1_700_000_000,
            exp: 1_700_086_400,
            seq: 42,
            nonce: 0,
        }
    }

    #[test]
    fn minted_token_verifies_and_round_trips_claims() {
        let signer = TokenSigner::new(b"emulator-secret".to_vec());
        let token = signer.mint(claims()).unwrap();
        let back = signer.verify(&token).unwrap();
        assert_eq!(back.seq, 42);
        assert_eq!(back.exp, 1_700_086_400);
        assert_eq!(back.scopes(), ["chat", "voip"]);
        assert!(back.user_id().starts_with("8:acs:"));
    }

    #[test]
    fn payload_decodes_with_standard_base64_like_the_python_sdk() {
        let signer = TokenSigner::new(b"k".to_vec());
        // Many different claim sets, to exercise the nonce search.
        for seq in 0..300 {
            let mut c = claims();
            c.seq = seq;
            c.acs_scope = "chat.join.limited,voip.join".repeat((seq % 3) as usize + 1);
            let token = signer.mint(c).unwrap();
            let payload = token.split('.').nth(1).unwrap();
            assert!(!payload.contains(['-', '_']), "{payload}");
            // Python: base64.b64decode(parts[1] + "==") with the lenient decoder.
            let padded = format!("{payload}{}", "=".repeat((4 - payload.len() % 4) % 4));
            let json: serde_json::Value =
                serde_json::from_slice(&STANDARD.decode(padded).unwrap()).unwrap();
            assert_eq!(json["seq"], seq);
        }
    }

    #[test]
    fn tampering_and_other_secrets_are_rejected() {
        let signer = TokenSigner::new(b"one".to_vec());
        let token = signer.mint(claims()).unwrap();
        assert_eq!(
            TokenSigner::new(b"two".to_vec()).verify(&token),
            Err(TokenError::BadSignature)
        );
        let mut c = claims();
        c.exp += 1_000_000;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(signer.verify(&forged), Err(TokenError::BadSignature));
        for junk in ["", "a.b", "a.b.c.d", "a.b.!!!"] {
            assert!(signer.verify(junk).is_err(), "{junk}");
        }
    }
}
