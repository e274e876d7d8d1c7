//! The processes a benchmark runs (an operator, the ACS emulator) and what `/proc` says
//! about them: CPU seconds and resident memory, read rather than estimated.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A child process that is killed if the harness drops it (a failed run leaves nothing).
pub struct Proc {
    pub name: String,
    child: Child,
    pub pid: u32,
}

impl Proc {
    /// Starts `program args` with `env`, stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Proc, String> {
        let file = std::fs::File::create(log)
            .map_err(|e| format!("creating log {}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("log {}: {e}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start(name, program, cmd)
    }

    fn start(name: &str, program: &Path, mut cmd: Command) -> Result<Proc, String> {
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {name} ({}): {e}", program.display()))?;
        let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            pid,
        })
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit.
    pub async fn stop(mut self, grace: Duration) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// SIGKILL, as a crash or an evicted node would end it; waits for the exit.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub fn usage(&self) -> Usage {
        Usage::of(self.pid)
    }
}

/// CPU time and memory of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Resident set now, and its peak since the process started (VmHWM), in KiB.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

impl Usage {
    pub fn of(pid: u32) -> Usage {
        let mut u = Usage::default();
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                u.cpu_s = (ticks(11) + ticks(12)) / clock_ticks();
            }
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in status.lines() {
                let kib = || {
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                if line.starts_with("VmRSS:") {
                    u.rss_kib = kib();
                } else if line.starts_with("VmHWM:") {
                    u.peak_rss_kib = kib();
                }
            }
        }
        u
    }
}

/// The machine's 1-minute load average (0 when unreadable).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A running `acs-emulator` process and its admin API.
pub struct Emulator {
    pub proc: Proc,
    pub connection_string: String,
    endpoint: String,
    http: reqwest::Client,
}

impl Emulator {
    /// Starts the emulator binary; `quota_off` lifts every per-operation quota, otherwise
    /// the emulator enforces ACS's published limits (its defaults).
    pub async fn start(
        bin: &Path,
        lifetime_scale: f64,
        quota_off: bool,
        log: &Path,
    ) -> Result<Emulator, String> {
        let mut args = vec![
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--token-lifetime-scale".to_string(),
            lifetime_scale.to_string(),
        ];
        if quota_off {
            for op in ["create", "issue", "revoke", "delete", "get"] {
                args.push("--quota".into());
                args.push(format!("{op}=0/1"));
            }
        }
        let err = std::fs::File::create(log)
            .map_err(|e| format!("creating log {}: {e}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let mut proc = Proc::start("acs-emulator", bin, cmd)?;
        let stdout = proc.child.stdout.take().ok_or("emulator stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| {
                format!(
                    "acs-emulator printed nothing in 30 s; log: {}",
                    log.display()
                )
            })?
            .map_err(|e| format!("reading acs-emulator stdout: {e}"))?
            .ok_or_else(|| format!("acs-emulator exited; log: {}", log.display()))?;
        let connection_string = first
            .strip_prefix("ACS_CONNECTION_STRING=")
            .ok_or_else(|| format!("unexpected first line from acs-emulator: {first}"))?
            .to_string();
        let endpoint = connection_string
            .split(';')
            .find_map(|p| p.strip_prefix("endpoint="))
            .ok_or("no endpoint in the emulator's connection string")?
            .trim_end_matches('/')
            .to_string();
        // Keep draining stdout so the emulator never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Emulator {
            proc,
            connection_string,
            endpoint,
            http: reqwest::Client::new(),
        })
    }

    /// Request counts by operation and status since the last reset.
    pub async fn stats(&self) -> Result<serde_json::Value, String> {
        self.http
            .get(format!("{}/admin/stats", self.endpoint))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("GET /admin/stats: {e}"))?
            .json()
            .await
            .map_err(|e| format!("GET /admin/stats: {e}"))
    }

    /// `POST` a JSON body to an admin route (faults, quotas).
    pub async fn admin_post(&self, path: &str, body: &serde_json::Value) -> Result<(), String> {
        self.http
            .post(format!("{}{path}", self.endpoint))
            .json(body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map(|_| ())
            .map_err(|e| format!("POST {path}: {e}"))
    }

    pub async fn admin_delete(&self, path: &str) -> Result<(), String> {
        self.http
            .delete(format!("{}{path}", self.endpoint))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map(|_| ())
            .map_err(|e| format!("DELETE {path}: {e}"))
    }

    pub async fn reset_stats(&self) -> Result<(), String> {
        self.http
            .delete(format!("{}/admin/stats", self.endpoint))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map(|_| ())
            .map_err(|e| format!("DELETE /admin/stats: {e}"))
    }
}

/// Requests in an emulator stats document: all of them, and those answered 429.
pub fn stats_totals(stats: &serde_json::Value) -> (u64, u64) {
    let total = stats["total"].as_u64().unwrap_or(0);
    let throttled = stats["requests"]
        .as_object()
        .map(|ops| {
            ops.values()
                .filter_map(|by_status| by_status["429"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    (total, throttled)
}
