//! Process-wide logging: tracing with an env-filter, as text for people or JSON for log
//! pipelines. Logs go to stderr so stdout stays free for command output.

use std::ffi::OsStr;
use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, with the current span's fields (namespace, name).
    Json,
    /// Human-readable lines.
    #[default]
    Text,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown log format {0:?}: expected json or text")]
pub struct UnknownLogFormat(String);

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "text" | "plain" => Ok(LogFormat::Text),
            _ => Err(UnknownLogFormat(s.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("logging was already initialised in this process")]
    AlreadyInitialized,
}

/// Parses an env-filter directive string such as `info,acs_identity_operator=debug`.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::try_new(filter).map_err(|source| LoggingError::Filter {
        filter: filter.to_string(),
        source,
    })
}

/// Whether text logs carry ANSI colour codes: only when stderr is a terminal, and never
/// when `NO_COLOR` is set to a non-empty value (<https://no-color.org>). A file, a pipe, a
/// process manager or `kubectl logs` gets plain text.
pub(crate) fn use_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Installs the global subscriber. Call once, first thing in `main`; the filter usually
/// comes from a flag with an environment fallback (`RUST_LOG`).
pub fn init(format: LogFormat, filter: &str) -> Result<(), LoggingError> {
    let filter = parse_filter(filter)?;
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|_| LoggingError::AlreadyInitialized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print() {
        assert_eq!("json".parse::<LogFormat>().ok(), Some(LogFormat::Json));
        assert_eq!("TEXT".parse::<LogFormat>().ok(), Some(LogFormat::Text));
        assert!("yaml".parse::<LogFormat>().is_err());
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = |v: &'static str| Some(OsStr::new(v));
        // (stderr is a terminal, NO_COLOR) -> colour
        let cases = [
            (true, None, true),
            (true, set(""), true),
            (true, set("1"), false),
            (true, set("0"), false),
            (false, None, false),
            (false, set(""), false),
            (false, set("1"), false),
        ];
        for (terminal, no_color, want) in cases {
            assert_eq!(
                use_colour(terminal, no_color),
                want,
                "terminal={terminal} NO_COLOR={no_color:?}"
            );
        }
    }

    #[test]
    fn bad_filters_are_refused_with_the_filter_in_the_message() {
        assert!(parse_filter("info,acs_identity_operator=debug").is_ok());
        let err = parse_filter("info,x=notalevel").expect_err("bad level");
        assert!(err.to_string().contains("x=notalevel"), "{err}");
    }
}
