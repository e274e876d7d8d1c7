//! Parsing of ACS connection strings (`endpoint=https://...;accesskey=BASE64`).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use url::Url;

/// A parsed connection string. The access key is kept decoded and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    endpoint: Url,
    key: AccessKey,
}

/// HMAC key bytes; `Debug` prints `<redacted>` so the key can't reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey(Vec<u8>);

impl AccessKey {
    pub fn from_base64(encoded: &str) -> Result<Self, ConnectionStringError> {
        let bytes = STANDARD
            .decode(encoded.trim())
            .map_err(|_| ConnectionStringError::KeyNotBase64)?;
        if bytes.is_empty() {
            return Err(ConnectionStringError::EmptyPart("accesskey"));
        }
        Ok(Self(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.0)
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("connection string is empty")]
    Empty,
    #[error(
        "connection string part `{0}` has no `=`; expected `endpoint=https://...;accesskey=...`"
    )]
    MalformedPart(String),
    #[error("connection string has no `endpoint=` part")]
    MissingEndpoint,
    #[error("connection string has no `accesskey=` part")]
    MissingAccessKey,
    #[error("connection string part `{0}` is empty")]
    EmptyPart(&'static str),
    #[error("connection string names `{0}` twice")]
    Duplicate(&'static str),
    #[error("connection string endpoint is not a valid http(s) URL: {0}")]
    BadEndpoint(String),
    #[error("connection string access key is not valid base64")]
    KeyNotBase64,
}

impl ConnectionString {
    pub fn new(endpoint: Url, key: AccessKey) -> Self {
        Self { endpoint, key }
    }

    /// Parses `endpoint=...;accesskey=...`: parts split on `;`, each on its first `=`,
    /// names matched case-insensitively, unknown parts ignored (as the SDKs do).
    pub fn parse(s: &str) -> Result<Self, ConnectionStringError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ConnectionStringError::Empty);
        }
        let mut endpoint = None;
        let mut key = None;
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                // The part may contain the key, so only its name-ish prefix is shown.
                let shown: String = part.chars().take(12).collect();
                return Err(ConnectionStringError::MalformedPart(shown));
            };
            let value = value.trim();
            let (slot, part_name) = match name.trim().to_ascii_lowercase().as_str() {
                "endpoint" => (&mut endpoint, "endpoint"),
                "accesskey" => (&mut key, "accesskey"),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(ConnectionStringError::Duplicate(part_name));
            }
        }
        let endpoint = endpoint.ok_or(ConnectionStringError::MissingEndpoint)?;
        let key = key.ok_or(ConnectionStringError::MissingAccessKey)?;
        if endpoint.is_empty() {
            return Err(ConnectionStringError::EmptyPart("endpoint"));
        }
        if key.is_empty() {
            return Err(ConnectionStringError::EmptyPart("accesskey"));
        }
        Ok(Self {
            endpoint: parse_endpoint(endpoint)?,
            key: AccessKey::from_base64(key)?,
        })
    }

    /// The endpoint without a trailing slash, e.g. `https://x.communication.azure.com`.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    pub fn endpoint_str(&self) -> String {
        self.endpoint.as_str().trim_end_matches('/').to_string()
    }

    pub fn key(&self) -> &AccessKey {
        &self.key
    }

    /// `host[:port]` as it goes into the string to sign.
    pub fn host(&self) -> String {
        host_with_port(&self.endpoint)
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("endpoint", &self.endpoint_str())
            .field("key", &self.key)
            .finish()
    }
}

/// The `host[:port]` of a URL, with the port only when the URL names a non-default one.
pub fn host_with_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

fn parse_endpoint(s: &str) -> Result<Url, ConnectionStringError> {
    let url =
        Url::parse(s).map_err(|e| ConnectionStringError::BadEndpoint(format!("`{s}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConnectionStringError::BadEndpoint(format!(
            "`{s}`: expected http:// or https:// with a host"
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1ieXRlcw=="; // "secret-key-bytes"

    #[test]
    fn parses_parts_case_insensitively_and_drops_trailing_slash() {
        let cs = ConnectionString::parse(&format!(
            "Endpoint=https://res.communication.azure.com/;AccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(cs.endpoint_str(), "https://res.communication.azure.com");
        assert_eq!(cs.key().bytes(), b"secret-key-bytes");
        assert_eq!(cs.host(), "res.communication.azure.com");
    }

    #[test]
    fn keeps_explicit_port_in_host() {
        let cs =
            ConnectionString::parse(&format!("endpoint=http://127.0.0.1:8443/;accesskey={KEY}"))
                .unwrap();
        assert_eq!(cs.host(), "127.0.0.1:8443");
    }

    #[test]
    fn base64_padding_with_equals_is_kept_in_key() {
        // The key ends with `==`: splitting on every `=` would lose it.
        let cs =
            ConnectionString::parse(&format!("accesskey={KEY};endpoint=https://a.b/")).unwrap();
        assert_eq!(cs.key().to_base64(), KEY);
    }

    #[test]
    fn each_malformed_case_has_its_own_error() {
        use ConnectionStringError::*;
        let cases = [
            ("", Empty),
            ("endpoint=https://a.b/", MissingAccessKey),
            (&format!("accesskey={KEY}") as &str, MissingEndpoint),
            ("endpoint=https://a.b/;accesskey=", EmptyPart("accesskey")),
            (&format!("endpoint=;accesskey={KEY}"), EmptyPart("endpoint")),
            ("endpoint=https://a.b/;accesskey=***", KeyNotBase64),
            (
                &format!("endpoint=https://a.b/;endpoint=https://c.d/;accesskey={KEY}"),
                Duplicate("endpoint"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                ConnectionString::parse(input).unwrap_err(),
                want,
                "input {input:?}"
            );
        }
        assert!(matches!(
            ConnectionString::parse(&format!("endpoint=ftp://a.b/;accesskey={KEY}")),
            Err(BadEndpoint(_))
        ));
        assert!(matches!(
            ConnectionString::parse("garbage"),
            Err(MalformedPart(_))
        ));
    }

    #[test]
    fn debug_never_prints_the_key() {
        let cs =
            ConnectionString::parse(&format!("endpoint=https://a.b/;accesskey={KEY}")).unwrap();
        let shown = format!("{cs:?}");
        assert!(
            !shown.contains(KEY) && !shown.contains("secret-key-bytes"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn malformed_part_error_does_not_echo_a_whole_key() {
        let err =
            ConnectionString::parse("endpoint=https://a.b/;c2VjcmV0LWtleS1ieXRlcw").unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0LWtleS1ieXRlcw"), "{err}");
    }
}
