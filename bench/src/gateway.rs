//! Runs `hookline serve` from a given binary on 127.0.0.1 with a fresh data dir (and, with
//! `--database-url`, a fresh PostgreSQL database), and reads its peak memory and CPU time
//! from /proc.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "bench-admin-token";

pub struct Gateway {
    child: Child,
    pub url: String,
    pub ready_after: Duration,
    port: u16,
    env: Vec<(String, String)>,
    binary: std::path::PathBuf,
    dir: tempfile::TempDir,
}

/// The key every benchmark node seals secrets with (nodes of one database must share it).
const SECRET_KEY: &str = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";

impl Gateway {
    /// Starts a gateway; on PostgreSQL when `database` is the URL of a fresh database.
    pub async fn start(
        binary: &std::path::Path,
        database: Option<&str>,
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<Gateway> {
        let mut env: Vec<(String, String)> = extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        if let Some(url) = database {
            env.push(("HOOKLINE_DATABASE_URL".into(), url.to_owned()));
            env.push(("HOOKLINE_SECURITY_SECRET_KEY".into(), SECRET_KEY.into()));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let (child, ready_after) = spawn(binary, dir.path(), port, &env).await?;
        let url = format!("http://127.0.0.1:{port}");
        Ok(Gateway { child, url, ready_after, port, env, binary: binary.to_owned(), dir })
    }

    /// Kills the process (`kill -9`).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the process (`kill -9`) and starts it again on the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, ready_after) = spawn(&self.binary, self.dir.path(), self.port, &self.env).await?;
        (self.child, self.ready_after) = (child, ready_after);
        Ok(())
    }

    /// Stops the process (`kill -9`) and starts it again on the same data with `env` added.
    pub async fn restart_with(&mut self, env: &[(&str, String)]) -> anyhow::Result<()> {
        self.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        self.restart().await
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

/// Starts `hookline serve` and waits until it answers its health check.
async fn spawn(
    binary: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    env: &[(String, String)],
) -> anyhow::Result<(Child, Duration)> {
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut command = Command::new(binary);
    command
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .env("HOOKLINE_ADMIN_TOKEN", TOKEN)
        .env("HOOKLINE_LOG_LEVEL", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = command.spawn()?;
    let http = reqwest::Client::new();
    loop {
        if let Ok(r) = http.get(format!("{url}/api/v1/health")).send().await {
            if r.status().is_success() {
                return Ok((child, started.elapsed()));
            }
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "hookline did not become healthy");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
