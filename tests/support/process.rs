//! Child processes of the tests (operator, emulator): each runs under a tiny `sh`
//! watchdog that stops it (SIGTERM, then SIGKILL) when its stdin closes: on drop, and
//! also when the test binary exits or dies, since a static is never dropped.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

// The guard stops the child when stdin closes; the watchdog itself exits with the
// child, and with its exit status (128+N for signal N), so `is_running` and
// `try_exit_status` see a process that exited on its own. (A background list's stdin
// is /dev/null, hence the pipe passed on fd 3.)
const WATCHDOG: &str = r#"
prog=$1; shift
"$prog" "$@" </dev/null &
child=$!
echo "$child" > "$WATCHED_PID_FILE"
exec 3<&0
( read -r _ <&3 || true
  kill -TERM "$child" 2>/dev/null
  sleep 10
  kill -KILL "$child" 2>/dev/null ) &
guard=$!
exec 3<&-
wait "$child"
rc=$?
kill "$guard" 2>/dev/null
exit "$rc"
"#;

/// A child process kept alive while this value (and the test binary) lives.
pub struct Watched {
    child: Child,
    pub stdout: Option<BufReader<ChildStdout>>,
    pid_file: PathBuf,
}

impl Watched {
    /// Starts `program args` with stderr (and stdout unless `pipe_stdout`) appended to `log`.
    pub fn spawn(program: &Path, args: &[String], log: &Path, pipe_stdout: bool) -> Watched {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone().expect("clone log file"))
        };
        let pid_file = log.with_extension("pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut child = Command::new("sh")
            .env("WATCHED_PID_FILE", &pid_file)
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let stdout = child.stdout.take().map(BufReader::new);
        Watched {
            child,
            stdout,
            pid_file,
        }
    }

    /// The watched program's own PID (not the watchdog's), once it has started.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to the watched program itself.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("watched process has a pid");
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid} failed");
    }

    /// Whether the watched process is still running (the watchdog exits with it).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status once the watched program has exited (its code, or 128+N after
    /// signal N); `None` while it runs.
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM (SIGKILL after 10 s) and wait for the process to exit.
    pub fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn temp_dir(prefix: &str) -> PathBuf {
    // Kept after the run: the logs are what one reads when a test failed.
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
        .keep()
}
