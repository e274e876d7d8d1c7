//! `kubectl acs token --file PATH [--watch]`: the claims of a token file, as a workload
//! that mounts the identity's Secret sees it (`examples/pod.yaml` runs this in the
//! operator's image). One line per token: `user=... scopes=... issuedAt=... expiresOn=...`,
//! times in the RFC 3339 form of the Secret's `expiresOn` key. The token is never printed.
//!
//! `--watch` prints a new line each time the file's content changes (the kubelet swaps
//! the whole mounted directory on each renewal) and exits 0 on SIGTERM or SIGINT, which
//! matters as a container's PID 1 that otherwise ignores SIGTERM.

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;

use super::error::CliError;
use super::jwt::{Claims, decode_claims};

/// The report line for one token. Errors name the file, never its content.
pub fn line(path: &Path, content: &str) -> Result<String, CliError> {
    let claims = decode_claims(content).map_err(|e| {
        CliError::Other(format!(
            "{} cannot be read as a token: {e} (its content is not shown)",
            path.display()
        ))
    })?;
    Ok(render(&claims))
}

fn render(claims: &Claims) -> String {
    let time = |t: Option<Timestamp>| t.map_or_else(|| "-".to_string(), |t| t.to_string());
    let scopes = if claims.scopes.is_empty() {
        "-".to_string()
    } else {
        claims.scopes.join(",")
    };
    format!(
        "user={} scopes={scopes} issuedAt={} expiresOn={}",
        claims.user_id.as_deref().unwrap_or("-"),
        time(claims.issued_at),
        time(claims.expires_at),
    )
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Other(format!("cannot read {}: {e}", path.display())))
}

pub async fn run(
    path: &Path,
    watch: Option<Duration>,
    out: &mut dyn std::io::Write,
) -> Result<(), CliError> {
    let Some(interval) = watch else {
        writeln!(out, "{}", line(path, &read(path)?)?)?;
        return Ok(());
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::Other(format!("cannot handle SIGTERM: {e}")))?;
    let mut last: Option<String> = None;
    let mut last_error: Option<String> = None;
    loop {
        // A missing or unreadable file is reported once, then waited for: the kubelet
        // replaces the mounted files atomically, but the Secret may not exist yet.
        match read(path).and_then(|content| line(path, &content).map(|l| (content, l))) {
            Ok((content, report)) => {
                if last.as_deref() != Some(content.as_str()) {
                    // One write per line, so a log collector never sees half a line.
                    out.write_all(format!("{report}\n").as_bytes())?;
                    out.flush()?;
                    last = Some(content);
                }
                last_error = None;
            }
            Err(e) => {
                let message = e.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    eprintln!("error: {message} (still watching)");
                    last_error = Some(message);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;
    use crate::cli::jwt::tests::token_with;

    #[test]
    fn one_line_with_the_secret_s_expiry_form_and_never_the_token() {
        let token = token_with(
            r#"{"skypeid":"acs:r_app","acsScope":"chat,voip","iat":1795600800,"exp":1795687200}"#,
            &URL_SAFE_NO_PAD,
        );
        let out = line(Path::new("/var/run/acs/token"), &format!("{token}\n")).expect("line");
        assert_eq!(
            out,
            "user=8:acs:r_app scopes=chat,voip issuedAt=2026-11-25T10:00:00Z expiresOn=2026-11-26T10:00:00Z"
        );
        assert!(!out.contains(token.split('.').nth(1).expect("payload")));
    }

    #[test]
    fn unreadable_files_are_named_not_quoted() {
        let err = line(Path::new("/x/token"), "opaque-secret-value")
            .expect_err("not a JWT")
            .to_string();
        assert!(err.contains("/x/token cannot be read as a token"), "{err}");
        assert!(!err.contains("opaque-secret-value"), "{err}");
    }

    #[tokio::test]
    async fn watch_prints_a_line_per_change_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let first = token_with(r#"{"skypeid":"acs:a","exp":1795687200}"#, &URL_SAFE_NO_PAD);
        let second = token_with(r#"{"skypeid":"acs:a","exp":1795690800}"#, &URL_SAFE_NO_PAD);
        std::fs::write(&path, &first).expect("write");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        struct Lines(tokio::sync::mpsc::UnboundedSender<String>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.send(String::from_utf8_lossy(buf).into_owned());
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let five_s = Duration::from_secs(5);
        let checks = async {
            let got = tokio::time::timeout(five_s, rx.recv())
                .await
                .expect("first line")
                .expect("open");
            assert!(got.contains("expiresOn=2026-11-26T10:00:00Z"), "{got}");
            // Unchanged content prints nothing; a new token prints one line.
            std::fs::write(&path, &first).expect("rewrite");
            std::fs::write(&path, &second).expect("write second");
            let got = tokio::time::timeout(five_s, rx.recv())
                .await
                .expect("second line")
                .expect("open");
            assert!(got.contains("expiresOn=2026-11-26T11:00:00Z"), "{got}");
        };
        let mut out = Lines(tx);
        tokio::select! {
            ended = run(&path, Some(Duration::from_millis(20)), &mut out) => {
                panic!("the watch ended: {ended:?}")
            }
            () = checks => {}
        }
    }
}
