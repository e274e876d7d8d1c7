//! HMAC request authentication exactly as ACS checks it: the string to sign is built from
//! the raw request target and the `Host` header as received, and the date comes from
//! whichever header `SignedHeaders` names (`x-ms-date`, or `Date` for the retired API).

use std::time::Duration;

use axum::http::HeaderMap;
use jiff::Timestamp;

use crate::acs::connection_string::AccessKey;
use crate::acs::signing::{content_hash, parse_authorization, string_to_sign, verify};

use super::error::ServiceError;

/// What one request brings to authentication; borrowed straight from the wire.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The request target as received (`/identities/8%3Aacs...?api-version=...`), never re-encoded.
    pub path_and_query: &'a str,
    /// The `Host` header, or the URI authority when the client sent none (HTTP/2).
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

pub fn authenticate(
    key: &AccessKey,
    request: &SignedRequest<'_>,
    now: Timestamp,
    max_skew: Duration,
) -> Result<(), ServiceError> {
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let authorization = header("authorization")
        .ok_or_else(|| ServiceError::denied("Authorization header is missing."))?;
    let parsed = parse_authorization(authorization).ok_or_else(|| {
        ServiceError::denied(
            "Authorization header is not 'HMAC-SHA256 SignedHeaders=...&Signature=...'.",
        )
    })?;
    let names: Vec<&str> = parsed.signed_headers.iter().map(String::as_str).collect();
    let date_header = match names.as_slice() {
        [date @ ("x-ms-date" | "date"), "host", "x-ms-content-sha256"] => *date,
        _ => {
            return Err(ServiceError::denied(
                "SignedHeaders must be 'x-ms-date;host;x-ms-content-sha256' (or 'date;host;x-ms-content-sha256').",
            ));
        }
    };
    let date = header(date_header)
        .ok_or_else(|| ServiceError::denied(format!("Header '{date_header}' is missing.")))?;
    let host = request
        .host
        .ok_or_else(|| ServiceError::denied("Header 'host' is missing."))?;
    let claimed_hash = header("x-ms-content-sha256")
        .ok_or_else(|| ServiceError::denied("Header 'x-ms-content-sha256' is missing."))?;
    if claimed_hash != content_hash(request.body) {
        return Err(ServiceError::denied(
            "Request 'x-ms-content-sha256' differs from generated content hash.",
        ));
    }
    check_date(date, now, max_skew)?;
    let sts = string_to_sign(
        request.method,
        request.path_and_query,
        date,
        host,
        claimed_hash,
    );
    if !verify(key, &sts, &parsed.signature) {
        return Err(ServiceError::denied("Denied by the resource provider."));
    }
    Ok(())
}

fn check_date(date: &str, now: Timestamp, max_skew: Duration) -> Result<(), ServiceError> {
    let when = httpdate::parse_http_date(date)
        .map_err(|_| ServiceError::denied("The request date is not an RFC 1123 date."))?;
    let when = Timestamp::try_from(when)
        .map_err(|_| ServiceError::denied("The request date is out of range."))?;
    let skew = now.duration_since(when).unsigned_abs();
    if skew > max_skew {
        return Err(ServiceError::denied(format!(
            "The request date differs from the server time by more than {} seconds.",
            max_skew.as_secs()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::acs::signing::sign_request;

    const TARGET: &str = "/identities/8%3Aacs%3Ax_y/:issueAccessToken?api-version=2023-10-01";

    fn key() -> AccessKey {
        AccessKey::from_base64("c2VjcmV0LWtleS1ieXRlcw==").unwrap()
    }

    fn headers_for(date: &str, body: &[u8], date_header: &'static str) -> HeaderMap {
        let signed = sign_request(&key(), "POST", TARGET, "127.0.0.1:7000", date, body);
        let mut h = HeaderMap::new();
        h.insert(date_header, HeaderValue::from_str(date).unwrap());
        h.insert(
            "x-ms-content-sha256",
            HeaderValue::from_str(&signed.content_sha256).unwrap(),
        );
        let auth = signed.authorization.replace("x-ms-date", date_header);
        h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        h
    }

    fn check(
        headers: &HeaderMap,
        host: &str,
        body: &[u8],
        target: &str,
    ) -> Result<(), ServiceError> {
        let now = Timestamp::now();
        authenticate(
            &key(),
            &SignedRequest {
                method: "POST",
                path_and_query: target,
                host: Some(host),
                headers,
                body,
            },
            now,
            Duration::from_secs(900),
        )
    }

    fn now_http() -> String {
        httpdate::fmt_http_date(std::time::SystemTime::now())
    }

    #[test]
    fn accepts_sdk_signatures_with_either_date_header() {
        for date_header in ["x-ms-date", "date"] {
            let h = headers_for(&now_http(), b"{}", date_header);
            assert_eq!(
                check(&h, "127.0.0.1:7000", b"{}", TARGET),
                Ok(()),
                "{date_header}"
            );
        }
    }

    #[test]
    fn rejects_each_kind_of_mismatch_with_401() {
        let h = headers_for(&now_http(), b"{}", "x-ms-date");
        let decoded_target = "/identities/8:acs:x_y/:issueAccessToken?api-version=2023-10-01";
        let cases = [
            check(&h, "127.0.0.1", b"{}", TARGET),
            check(&h, "127.0.0.1:7000", b"{ }", TARGET),
            check(&h, "127.0.0.1:7000", b"{}", decoded_target),
            check(&HeaderMap::new(), "127.0.0.1:7000", b"{}", TARGET),
        ];
        for result in cases {
            let err = result.unwrap_err();
            assert_eq!(err.status, 401);
            assert_eq!(err.code, "Denied");
        }
    }

    #[test]
    fn rejects_stale_and_future_dates() {
        for offset in [-3600i64, 3600] {
            let when = std::time::SystemTime::now()
                .checked_add(Duration::from_secs(3600))
                .unwrap()
                .checked_sub(Duration::from_secs((3600 - offset) as u64))
                .unwrap();
            let date = httpdate::fmt_http_date(when);
            let h = headers_for(&date, b"", "x-ms-date");
            assert_eq!(
                check(&h, "127.0.0.1:7000", b"", TARGET).unwrap_err().status,
                401
            );
        }
    }
}
