//! Runs `hookline serve` from a given binary on 127.0.0.1 with a fresh data dir, and reads
//! its peak memory and CPU time from /proc.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "bench-admin-token";

pub struct Gateway {
    child: Child,
    pub url: String,
    pub ready_after: Duration,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(binary: &std::path::Path, extra_env: &[(&str, String)]) -> anyhow::Result<Gateway> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let mut command = Command::new(binary);
        command
            .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path())
            .env("HOOKLINE_ADMIN_TOKEN", TOKEN)
            .env("HOOKLINE_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let child = command.spawn()?;
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{url}/api/v1/health")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "hookline did not become healthy");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(Gateway { child, url, ready_after: started.elapsed(), _dir: dir })
    }

    fn proc_status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Peak resident memory so far, in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        self.proc_status_kb("VmHWM:") as f64 / 1024.0
    }

    /// Resident memory now, in MB.
    pub fn rss_mb(&self) -> f64 {
        self.proc_status_kb("VmRSS:") as f64 / 1024.0
    }

    /// User plus system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<f64>().ok()).sum();
        ticks / 100.0
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
