//! Helpers shared by the real-binary test files: starting and stopping `hookline serve`, a
//! free port, waiting for health or for deliveries, and a sink that records each delivery's
//! `webhook-id`.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const PATIENCE: Duration = Duration::from_secs(60);

/// `hookline serve --dev` on 127.0.0.1:`port` with its data in `data_dir`, logging warnings
/// only; `env` is added last, so it can override that. Stdout is piped (the admin token is
/// printed there); stderr is dropped unless the caller sets it.
pub fn serve_command(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hookline"));
    command
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir)
        .env("HOOKLINE_LOG_LEVEL", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

/// A running `hookline serve`, killed when dropped.
pub struct Hookline {
    pub child: Child,
    pub url: String,
}

impl Hookline {
    /// Starts `command`, which serves on 127.0.0.1:`port`.
    pub fn spawn(mut command: Command, port: u16) -> Hookline {
        Hookline { child: command.spawn().unwrap(), url: format!("http://127.0.0.1:{port}") }
    }

    pub fn start(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Hookline {
        Hookline::spawn(serve_command(data_dir, port, env), port)
    }

    pub async fn wait_healthy(&self, http: &reqwest::Client) {
        wait_healthy(http, &self.url).await;
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits (at most `PATIENCE`) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Hookline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `missing()` is 0; fails after `patience` with the count and `what` it is.
pub async fn until_none_missing(patience: Duration, what: &str, mut missing: impl FnMut() -> usize) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let count = missing();
        if count == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{count} {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs `body` to `url` with `token`; the status and the JSON answer (`Null` if none).
pub async fn post(http: &reqwest::Client, url: String, token: &str, body: &Value) -> (u16, Value) {
    let r = http.post(url).bearer_auth(token).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Creates each `(path, body)` under `url` and expects 201 for every one.
pub async fn create_all(http: &reqwest::Client, url: &str, token: &str, resources: &[(&str, Value)]) {
    for (path, body) in resources {
        let (status, answer) = post(http, format!("{url}{path}"), token, body).await;
        assert_eq!(status, 201, "{path}: {answer}");
    }
}

/// The sum of the gateway at `url`'s metric samples whose line starts with `name`, read
/// with the admin token `token`.
pub async fn counter(http: &reqwest::Client, url: &str, token: &str, name: &str) -> f64 {
    let text = http.get(format!("{url}/metrics")).bearer_auth(token).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A port free now, for a gateway to listen on, below the kernel's ephemeral range (32768
/// up on Linux). A port the kernel gave out and took back could be given again at once to a
/// sink or a client another test binds to port 0 before the gateway binds it: the gateway
/// then failed to start, and the test talked to the sink (a 200 with no body for a POST).
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + seed.wrapping_add(n.wrapping_mul(7_919)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN)
}

pub async fn wait_healthy(http: &reqwest::Client, url: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = http.get(format!("{url}/api/v1/health")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "hookline never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An endpoint that records the `webhook-id` of every delivery it answers; while `hold`
/// is set it never answers (deliveries stay in flight).
pub async fn recording_sink(hold: Arc<AtomicBool>, seen: Arc<Mutex<HashSet<String>>>) -> String {
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let (hold, seen) = (hold.clone(), seen.clone());
        async move {
            if hold.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            seen.lock().unwrap().insert(id);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Every delivery's `webhook-id` with how often it arrived, and the raw requests.
pub type Arrivals = Arc<Mutex<std::collections::HashMap<String, u32>>>;

/// An endpoint that answers each delivery after `delay_ms` and counts arrivals by
/// `webhook-id`, so a test can tell lost from duplicated.
pub async fn counting_sink(delay_ms: u64) -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let counted = arrivals.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let counted = counted.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            *counted.lock().unwrap().entry(id).or_default() += 1;
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, arrivals)
}

/// Settings of a node on a shared PostgreSQL database, with a short lease so takeovers
/// happen within a test's patience.
pub fn cluster_env(database_url: &str, name: &str) -> Vec<(String, String)> {
    [
        ("HOOKLINE_DATABASE_URL", database_url),
        ("HOOKLINE_SECURITY_SECRET_KEY", "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="),
        ("HOOKLINE_CLUSTER_NODE_NAME", name),
        ("HOOKLINE_CLUSTER_LEASE_MS", "3000"),
        ("HOOKLINE_CLUSTER_POLL_MS", "100"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A tmpfs of a few MB, unmounted when dropped.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "mounting a tmpfs needs root (CI runs as root)");
        SmallDisk { dir }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk is full.
    pub fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path().join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }

    pub fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
