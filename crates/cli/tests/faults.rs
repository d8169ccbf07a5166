//! Faults against the real binary: the disk filling up under it. Nothing acknowledged may be
//! lost, a full disk must answer 503 with a JSON error (never another 5xx), and service
//! must resume by itself when space returns. Needs root to mount a small tmpfs (CI is root).

use serde_json::{json, Value};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "faults-test-token";
const PATIENCE: Duration = Duration::from_secs(60);

/// A tmpfs of a few MB, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "mounting a tmpfs needs root (CI runs as root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path().join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

struct Hookline(Child);

impl Drop for Hookline {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn sink(seen: Arc<Mutex<HashSet<String>>>) -> String {
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let seen = seen.clone();
        async move {
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

#[tokio::test]
async fn a_full_disk_refuses_with_503_loses_nothing_and_recovers() {
    let disk = SmallDisk::mount("4m");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let _hookline = Hookline(
        Command::new(env!("CARGO_BIN_EXE_hookline"))
            .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(disk.path().join("data"))
            .env("HOOKLINE_ADMIN_TOKEN", TOKEN)
            .env("HOOKLINE_LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while http.get(format!("{url}/api/v1/health")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(tokio::time::Instant::now() < deadline, "hookline did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let hook = sink(seen.clone()).await;
    let post = |path: String, body: Value| {
        let request = http.post(format!("{url}{path}")).bearer_auth(TOKEN).json(&body);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(post("/api/v1/app".into(), json!({"name": "m", "uid": "m"})).await.0, 201);
    assert_eq!(post("/api/v1/app/m/endpoint".into(), json!({"url": hook})).await.0, 201);
    let mut acknowledged = HashSet::new();
    let payload = json!({"eventType": "payment.succeeded", "payload": {"pad": "x".repeat(2000)}});
    for _ in 0..20 {
        let (status, out) = post("/api/v1/app/m/msg".into(), payload.clone()).await;
        assert_eq!(status, 202);
        acknowledged.insert(out["id"].as_str().unwrap().to_owned());
    }

    disk.fill();
    let mut refused = 0;
    for _ in 0..2_000 {
        let (status, out) = post("/api/v1/app/m/msg".into(), payload.clone()).await;
        match status {
            202 => {
                acknowledged.insert(out["id"].as_str().unwrap().to_owned());
            }
            503 => {
                assert_eq!(out["code"], "storage_unavailable", "{out}");
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            other => panic!("a full disk answered {other}: {out}"),
        }
    }
    assert!(refused >= 5, "the disk never filled up: no 503 after 2,000 publishes");
    eprintln!("full disk: {} acknowledged, {refused} refused with 503", acknowledged.len());
    let health = http.get(format!("{url}/api/v1/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the server survives a full disk");

    disk.free();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, out) = post("/api/v1/app/m/msg".into(), payload.clone()).await;
        if status == 202 {
            acknowledged.insert(out["id"].as_str().unwrap().to_owned());
            break;
        }
        assert_eq!(status, 503, "{out}");
        assert!(tokio::time::Instant::now() < deadline, "publishing did not resume after space returned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let missing = acknowledged.difference(&seen.lock().unwrap()).count();
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} acknowledged messages were never delivered",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
