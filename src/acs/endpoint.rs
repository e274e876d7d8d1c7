//! Which endpoints the client may talk to. The operator signs requests with a shared key
//! from its own network position and sends tokens back to whoever answers, so an endpoint
//! a tenant wrote must not turn it into a client of arbitrary URLs:
//! https only; plain http (loopback included: a sidecar's admin port listens there) only
//! when the platform team allows it (`--allow-insecure-endpoints`); never credentials in
//! the URL; and nothing but a scheme, a host and a port: a path, query or fragment would
//! aim the signed requests somewhere else on that host (`/quitquitquit#`).

use url::{Host, Url};

/// The condition reason an [`EndpointError`] is reported with.
pub const INSECURE_ENDPOINT_REASON: &str = "InsecureEndpoint";

/// Why an endpoint is refused. Messages name the rule and the host, never the rest of the
/// URL (it came from a connection string).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("the ACS endpoint must use https")]
    Scheme,
    #[error(
        "plain http to `{host}` is refused: use https (plain http is allowed only when the operator runs with --allow-insecure-endpoints)"
    )]
    PlainHttp { host: String },
    #[error(
        "the ACS endpoint must be only a scheme, a host and an optional port (`https://<resource>.communication.azure.com/`); it has a {part}"
    )]
    NotJustAHost { part: &'static str },
    #[error("the ACS endpoint host is longer than {MAX_HOST_CHARS} characters")]
    HostTooLong,
    #[error(
        "the ACS endpoint must not carry a user name or password (`user:password@`); the access key belongs in `accesskey=`"
    )]
    UserInfo,
    #[error("the ACS endpoint has no host")]
    NoHost,
}

impl EndpointError {
    /// The condition reason for this error: always `InsecureEndpoint`.
    pub fn reason(&self) -> &'static str {
        INSECURE_ENDPOINT_REASON
    }
}

/// The longest host name DNS allows.
pub const MAX_HOST_CHARS: usize = 253;

/// Checks an endpoint against the rules above. `allow_insecure` admits plain http to any
/// host (never user info, a path, a query or a fragment).
pub fn check_endpoint(url: &Url, allow_insecure: bool) -> Result<(), EndpointError> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointError::UserInfo);
    }
    let host = url.host().ok_or(EndpointError::NoHost)?;
    if url.host_str().is_some_and(|h| h.len() > MAX_HOST_CHARS) {
        return Err(EndpointError::HostTooLong);
    }
    // The trailing `/` that connection strings carry is the only path allowed.
    let part = if !matches!(url.path(), "" | "/") {
        Some("path")
    } else if url.query().is_some() {
        Some("query")
    } else if url.fragment().is_some() {
        Some("fragment")
    } else {
        None
    };
    if let Some(part) = part {
        return Err(EndpointError::NotJustAHost { part });
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure => Ok(()),
        "http" => Err(EndpointError::PlainHttp {
            host: shown_host(&host),
        }),
        _ => Err(EndpointError::Scheme),
    }
}

/// The host for a message, bounded: it came from outside.
fn shown_host(host: &Host<&str>) -> String {
    let text = host.to_string();
    if text.chars().count() <= 100 {
        return text;
    }
    let mut cut: String = text.chars().take(100).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, allow_insecure: bool) -> Result<(), EndpointError> {
        check_endpoint(&Url::parse(url).expect("test URL"), allow_insecure)
    }

    #[test]
    fn https_is_always_allowed() {
        assert_eq!(check("https://res.communication.azure.com/", false), Ok(()));
        assert_eq!(check("https://10.0.0.5:8443", false), Ok(()));
    }

    #[test]
    fn plain_http_only_when_allowed_loopback_included() {
        for refused in [
            "http://127.0.0.1:8080",
            "http://127.8.9.10/",
            "http://localhost:1234",
            "http://LOCALHOST.:1234",
            "http://[::1]:8080",
            "http://[::ffff:127.0.0.1]:8080",
            "http://127.0.0.1:15000/",
            "http://10.0.0.5",
            "http://res.communication.azure.com",
            "http://localhost.evil.example",
            "http://[::2]",
            "http://0.0.0.0:80",
            "http://169.254.169.254/",
        ] {
            let err = check(refused, false).expect_err(refused);
            assert!(matches!(err, EndpointError::PlainHttp { .. }), "{refused}");
            assert_eq!(err.reason(), "InsecureEndpoint");
            assert!(err.to_string().contains("--allow-insecure-endpoints"));
            assert_eq!(check(refused, true), Ok(()), "{refused} with allow");
        }
    }

    #[test]
    fn an_endpoint_is_a_scheme_a_host_and_a_port_nothing_else() {
        for allow in [false, true] {
            for (url, part) in [
                ("https://127.0.0.1:15000/quitquitquit#", "path"),
                ("https://res.communication.azure.com/identities", "path"),
                ("https://res.communication.azure.com//", "path"),
                ("https://res.communication.azure.com/?x=1", "query"),
                ("https://res.communication.azure.com/#frag", "fragment"),
                ("https://res.communication.azure.com#", "fragment"),
            ] {
                assert_eq!(
                    check(url, allow),
                    Err(EndpointError::NotJustAHost { part }),
                    "{url}"
                );
            }
            let long = format!("https://{}.example/", "a".repeat(300));
            assert_eq!(check(&long, allow), Err(EndpointError::HostTooLong));
        }
        assert_eq!(
            check("https://res.communication.azure.com:443/", false),
            Ok(())
        );
        assert_eq!(check("http://127.0.0.1:15000/", true), Ok(()));
        let e = check("http://127.0.0.1:15000/quitquitquit#", true).unwrap_err();
        assert_eq!(e.reason(), "InsecureEndpoint");
        assert!(!e.to_string().contains("quitquitquit"), "{e}");
    }

    #[test]
    fn other_schemes_and_user_info_are_refused_even_when_insecure_is_allowed() {
        for allow in [false, true] {
            assert_eq!(check("ftp://a.b/", allow), Err(EndpointError::Scheme));
            assert_eq!(
                check("file:///etc/passwd", allow),
                Err(EndpointError::NoHost)
            );
            assert_eq!(
                check("https://user:pa55word@a.b/", allow),
                Err(EndpointError::UserInfo)
            );
            assert_eq!(
                check("http://user@127.0.0.1/", allow),
                Err(EndpointError::UserInfo)
            );
        }
        let shown = check("https://user:pa55word@a.b/", false)
            .unwrap_err()
            .to_string();
        assert!(
            !shown.contains("pa55word") && !shown.contains("user@"),
            "{shown}"
        );
    }

    #[test]
    fn the_reason_is_the_documented_condition_reason() {
        assert_eq!(
            EndpointError::Scheme.reason(),
            crate::api::conditions::reasons::INSECURE_ENDPOINT
        );
    }
}
