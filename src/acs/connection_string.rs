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

/// Why a connection string was refused. No variant holds any part of the input: a
/// malformed string may have its values swapped or shifted, so any value (even a short
/// prefix) can be the access key. Only part numbers and fixed part names are shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("connection string is empty")]
    Empty,
    #[error(
        "connection string part {index} has no `=`; expected `endpoint=<url>;accesskey=<key>` (values are not shown)"
    )]
    MalformedPart {
        /// 1-based position among the `;`-separated parts.
        index: usize,
    },
    #[error("connection string has no `endpoint=` part")]
    MissingEndpoint,
    #[error("connection string has no `accesskey=` part")]
    MissingAccessKey,
    #[error("connection string part `{0}` is empty")]
    EmptyPart(&'static str),
    #[error("connection string names `{0}` twice")]
    Duplicate(&'static str),
    #[error(
        "connection string endpoint is not an http(s) URL with a host ({0}); its value is not shown"
    )]
    BadEndpoint(EndpointProblem),
    #[error("connection string access key is not valid base64 (its value is not shown)")]
    KeyNotBase64,
}

/// What is wrong with an endpoint value, in fixed words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EndpointProblem {
    #[error("not a URL")]
    NotAUrl,
    #[error("the scheme is neither http nor https")]
    Scheme,
    #[error("no host")]
    NoHost,
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
        for (index, part) in s
            .split(';')
            .map(str::trim)
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
        {
            let Some((name, value)) = part.split_once('=') else {
                return Err(ConnectionStringError::MalformedPart { index: index + 1 });
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
    let bad = ConnectionStringError::BadEndpoint;
    // url's own errors are fixed texts, but they are not needed: the problem kinds say enough.
    let url = Url::parse(s).map_err(|_| bad(EndpointProblem::NotAUrl))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(EndpointProblem::Scheme));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad(EndpointProblem::NoHost));
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
            Err(MalformedPart { index: 1 })
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

    /// A 6-character window of `source` found in `shown`, skipping windows that touch or
    /// are part of a fixed part name (`endpoint`, `accesskey`: the format, not a value).
    fn leaked_fragment(shown: &str, source: &str) -> Option<String> {
        const FIXED: [&str; 2] = ["endpoint", "accesskey"];
        let mut blanked = source.to_string();
        for word in FIXED {
            while let Some(at) = blanked.to_ascii_lowercase().find(word) {
                blanked.replace_range(at..at + word.len(), &"\0".repeat(word.len()));
            }
        }
        let chars: Vec<char> = blanked.chars().collect();
        chars
            .windows(6)
            .map(|w| w.iter().collect::<String>())
            .filter(|w| !w.contains('\0'))
            .filter(|w| !FIXED.iter().any(|f| f.contains(&w.to_ascii_lowercase())))
            .find(|w| shown.contains(w.as_str()))
    }

    /// Every malformation we can think of, built around a known key: no error's Display or
    /// Debug holds 6 consecutive characters of the key or of the connection string.
    #[test]
    fn no_error_carries_any_piece_of_the_input() {
        const SECRET: &str = "QzNwdjRkR0hxWlRtWnJ5bE5vZ0xKc3U5cmF0V0tRZ1BzYmVkTjhOa0JmMD0=";
        let ep = "https://tenant-a.communication.azure.com/";
        let unpadded = SECRET.trim_end_matches('=');
        let head = &SECRET[..12];
        let cases: Vec<String> = vec![
            format!("endpoint={SECRET};accesskey={ep}"),
            format!("accesskey={ep};endpoint={SECRET}"),
            SECRET.to_string(),
            format!("{SECRET};{ep}"),
            format!("endpoint={ep};{SECRET}"),
            format!("endpoint={ep};{unpadded}"),
            format!("{unpadded};endpoint={ep};accesskey={SECRET}"),
            format!("endpoint={ep};accesskey={SECRET}!!"),
            format!("endpoint={ep};accesskey={}", &SECRET[..SECRET.len() - 3]),
            format!("endpoint={ep};accesskey={unpadded}"),
            format!("endpoint={ep};accesskey={SECRET} {SECRET}"),
            format!("endpoint={ep};accesskey={SECRET};accesskey={SECRET}"),
            format!("endpoint={ep};endpoint={SECRET};accesskey={SECRET}"),
            format!("endpoint=ftp://{unpadded}/;accesskey={SECRET}"),
            format!("endpoint={unpadded}://x/;accesskey={SECRET}"),
            format!("endpoint=https://;accesskey={SECRET}"),
            format!("endpoint=https://{unpadded}:{unpadded}@;accesskey={SECRET}"),
            format!("endpoint=https://[{unpadded}]/;accesskey={SECRET}"),
            format!("endpoint={ep}accesskey={SECRET}"),
            format!("endpoint {ep};accesskey {SECRET}"),
            format!("accesskey={SECRET}"),
            format!("endpoint={SECRET}"),
            format!("eNdPoInT={SECRET}"),
            format!("endpoint={ep}"),
            format!(";;;accesskey=;endpoint={SECRET}"),
            format!("endpoint=;accesskey={SECRET}"),
            format!("endpoint=\"{ep}\";accesskey=\"{SECRET}\""),
            format!("endpoint='{ep}';accesskey='{SECRET}'"),
            format!("\n endpoint = {ep} ;\t accesskey = {head}\u{0}{SECRET}"),
            format!("endpoint={ep};accesskey={SECRET}\u{7}"),
            format!("endpoint={ep};accesskey={head}é{SECRET}"),
            format!("{SECRET}={SECRET}"),
            format!("={SECRET}"),
            format!("endpoint={ep};accesskey={SECRET};{head}"),
            format!("endpoint={ep},accesskey={SECRET}"),
            format!("endpoint:{ep};accesskey:{SECRET}"),
            format!("Endpoint={ep}&AccessKey={SECRET}"),
            format!("endpoint={ep};access_key={SECRET}"),
            format!("endpoint={ep};accesskey==="),
            format!("endpoint={ep};accesskey=key:{SECRET}"),
            String::new(),
            "   ".into(),
            ";".into(),
            "=".into(),
            ";=;".into(),
        ];
        let mut refused = 0;
        for cs in &cases {
            let Err(err) = ConnectionString::parse(cs) else {
                continue;
            };
            refused += 1;
            for shown in [err.to_string(), format!("{err:?}")] {
                for source in [SECRET, cs.as_str()] {
                    if let Some(piece) = leaked_fragment(&shown, source) {
                        panic!("{shown:?} holds {piece:?} of the input {cs:?}");
                    }
                }
            }
        }
        assert_eq!(refused, cases.len(), "every case above is malformed");
    }

    #[test]
    fn malformed_part_error_does_not_echo_a_whole_key() {
        let err =
            ConnectionString::parse("endpoint=https://a.b/;c2VjcmV0LWtleS1ieXRlcw").unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0LWtleS1ieXRlcw"), "{err}");
    }
}
