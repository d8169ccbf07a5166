//! Faults against the real binary: the disk filling up under it, kill -9 and SIGTERM under
//! load (on SQLite and on PostgreSQL). Nothing acknowledged may be lost, a full disk must
//! answer 503 with a JSON error (never another 5xx), and service must resume by itself when
//! space returns. Needs root to mount a small tmpfs (CI is root).

use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;
use support::{
    cluster_env, create_all, free_port, recording_sink, until_none_missing, wait_healthy, Hookline, SmallDisk, PATIENCE,
};

const TOKEN: &str = "faults-test-token";

#[tokio::test]
async fn a_full_disk_refuses_with_503_loses_nothing_and_recovers() {
    let disk = SmallDisk::mount("4m");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _hookline = Hookline::start(&disk.path().join("data"), port, &[("HOOKLINE_ADMIN_TOKEN", TOKEN)]);
    let http = reqwest::Client::new();
    wait_healthy(&http, &url).await;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let hook = recording_sink(Arc::new(std::sync::atomic::AtomicBool::new(false)), seen.clone()).await;
    let post = |path: String, body: Value| {
        let request = http.post(format!("{url}{path}")).bearer_auth(TOKEN).json(&body);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(post("/api/v1/app".into(), json!({"name": "m", "uid": "m"})).await.0, 201);
    assert_eq!(post("/api/v1/app/m/endpoint".into(), json!({"url": hook})).await.0, 201);
    let source =
        json!({"name": "stripe", "uid": "stripe", "preset": "stripe", "secrets": ["whsec_disk"], "appId": "m"});
    assert_eq!(post("/api/v1/source".into(), source).await.0, 201);
    let inbound = |n: usize| {
        let body = format!(r#"{{"id":"evt_disk_{n}","type":"charge.succeeded","pad":"{}"}}"#, "y".repeat(2000));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let signature = hookline_core::signature::stripe_header(&["whsec_disk"], now, body.as_bytes());
        let request = http.post(format!("{url}/in/stripe")).header("stripe-signature", signature).body(body);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let mut acknowledged = HashSet::new();
    let (status, accepted) = inbound(0).await;
    assert_eq!(status, 200, "{accepted}");
    acknowledged.insert(accepted["messageId"].as_str().unwrap().to_owned());
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
    let (status, out) = inbound(1).await;
    assert_eq!(
        (status, out["code"].as_str()),
        (503, Some("storage_unavailable")),
        "a provider is told to retry: {out}"
    );
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
    let what = format!("of {} acknowledged messages were never delivered", acknowledged.len());
    until_none_missing(PATIENCE, &what, || acknowledged.difference(&seen.lock().unwrap()).count()).await;
}

/// Deliveries the sink answered 2xx, per `(path, webhook-id)`: more than one is a duplicate.
type Delivered = Arc<Mutex<std::collections::HashMap<(String, String), usize>>>;

/// `/fast` answers at once, `/slow` after 150 ms, `/flaky` fails every other request.
async fn mixed_sink(delivered: Delivered) -> String {
    let flips = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
        let (delivered, flips) = (delivered.clone(), flips.clone());
        async move {
            let path = uri.path().to_owned();
            if path == "/slow" {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            if path == "/flaky" && flips.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 == 0 {
                return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            }
            let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            *delivered.lock().unwrap().entry((path, id)).or_default() += 1;
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A gateway for the load tests with the mixed sink, restartable on the same data and port.
/// At most 32 deliveries per endpoint run at once, which bounds what a kill can duplicate.
struct LoadRig {
    dir: tempfile::TempDir,
    port: u16,
    http: reqwest::Client,
    delivered: Delivered,
    sink: String,
    hookline: Hookline,
    /// Settings of the backend: none for SQLite in `dir`, a database URL for PostgreSQL.
    backend: Vec<(String, String)>,
}

/// Which store a rig's gateway runs on.
enum Backend {
    Sqlite,
    Postgres,
}

impl LoadRig {
    async fn start(backend: Backend) -> LoadRig {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let delivered: Delivered = Arc::default();
        let sink = mixed_sink(delivered.clone()).await;
        let backend = match backend {
            Backend::Sqlite => Vec::new(),
            // A short lease: after a kill -9 the restarted node takes the dead one's claims over.
            Backend::Postgres => {
                cluster_env(&hookline_store::postgres::scratch::fresh_database().await.unwrap(), "rig")
            }
        };
        let hookline = LoadRig::gateway(dir.path(), port, &backend);
        let http = reqwest::Client::new();
        hookline.wait_healthy(&http).await;
        LoadRig { dir, port, http, delivered, sink, hookline, backend }
    }

    fn gateway(data_dir: &std::path::Path, port: u16, backend: &[(String, String)]) -> Hookline {
        let mut env = vec![("HOOKLINE_ADMIN_TOKEN", TOKEN), ("HOOKLINE_DELIVERY_ENDPOINT_MAX_IN_FLIGHT", "32")];
        env.extend(backend.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Hookline::start(data_dir, port, &env)
    }

    /// Starts the gateway again on the same data, after a kill or SIGTERM.
    async fn restart(&mut self) {
        self.hookline = LoadRig::gateway(self.dir.path(), self.port, &self.backend);
        self.hookline.wait_healthy(&self.http).await;
    }
}

/// Publishes (and sends signed inbound requests) until the server stops answering;
/// returns the ids of the messages that were acknowledged.
async fn load_until_killed(http: reqwest::Client, url: String, worker: usize) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for n in 0.. {
        let inbound = n % 3 == 2;
        let request = if inbound {
            let body = format!(r#"{{"id":"evt_{worker}_{n}_{}","type":"charge.succeeded"}}"#, std::process::id());
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
            let signature = hookline_core::signature::stripe_header(&["whsec_faults"], now, body.as_bytes());
            http.post(format!("{url}/in/stripe")).header("stripe-signature", signature).body(body)
        } else {
            let body = json!({"eventType": "payment.succeeded", "payload": {"worker": worker, "n": n}});
            http.post(format!("{url}/api/v1/app/m/msg")).bearer_auth(TOKEN).json(&body)
        };
        let Ok(response) = request.send().await else { return acknowledged };
        let status = response.status().as_u16();
        let Ok(out) = response.json::<Value>().await else { return acknowledged };
        if (inbound && status == 200) || (!inbound && status == 202) {
            let key = if inbound { "messageId" } else { "id" };
            acknowledged.push(out[key].as_str().unwrap().to_owned());
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_under_load_loses_nothing_acknowledged() {
    kill_9_under_load(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_under_load_loses_nothing_acknowledged_on_postgres() {
    kill_9_under_load(Backend::Postgres).await;
}

async fn kill_9_under_load(backend: Backend) {
    let mut rig = LoadRig::start(backend).await;
    let (url, http, delivered, sink) =
        (rig.hookline.url.clone(), rig.http.clone(), rig.delivered.clone(), rig.sink.clone());
    let setup = [
        ("/api/v1/app", json!({"name": "m", "uid": "m"})),
        ("/api/v1/app/m/endpoint", json!({"url": format!("{sink}/fast")})),
        ("/api/v1/app/m/endpoint", json!({"url": format!("{sink}/slow")})),
        ("/api/v1/app/m/endpoint", json!({"url": format!("{sink}/flaky"), "retryPolicy": {"delaysMs": vec![100; 40]}})),
        (
            "/api/v1/source",
            json!({"name": "stripe", "uid": "stripe", "preset": "stripe", "secrets": ["whsec_faults"], "appId": "m"}),
        ),
    ];
    create_all(&http, &url, TOKEN, &setup).await;
    let mut acknowledged: HashSet<String> = HashSet::new();
    // Kill moments vary with the clock's nanoseconds: each run kills at different points.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    let kills = 4;
    for round in 0..kills {
        let workers: Vec<_> =
            (0..8).map(|w| tokio::spawn(load_until_killed(http.clone(), url.clone(), round * 100 + w))).collect();
        let wait_ms =
            300 + (seed.wrapping_mul(6364136223846793005).wrapping_add(round as u64 * 1442695040888963407) >> 33) % 900;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        rig.hookline.kill9();
        for w in workers {
            acknowledged.extend(w.await.unwrap());
        }
        rig.restart().await;
    }
    assert!(acknowledged.len() > 100, "the load was too light to mean anything: {}", acknowledged.len());
    until_none_missing(Duration::from_secs(120), "acknowledged deliveries never arrived", || {
        let delivered = delivered.lock().unwrap();
        ["/fast", "/slow", "/flaky"]
            .iter()
            .map(|path| {
                acknowledged.iter().filter(|id| !delivered.contains_key(&(path.to_string(), (*id).clone()))).count()
            })
            .sum()
    })
    .await;
    let duplicates: usize = delivered.lock().unwrap().values().map(|n| n - 1).sum();
    // A duplicate needs an attempt in flight at a kill: at most 3 endpoints x 32 slots each time.
    let bound = kills * 3 * 32;
    eprintln!(
        "kill -9 x{kills} ({}): {} messages acknowledged, 0 lost, {duplicates} duplicate deliveries (bound {bound})",
        if rig.backend.is_empty() { "SQLite" } else { "PostgreSQL" },
        acknowledged.len()
    );
    assert!(duplicates <= bound, "{duplicates} duplicates exceed what could have been in flight ({bound})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_work_and_the_rest_follows_after_restart() {
    sigterm_under_load(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_work_and_the_rest_follows_after_restart_on_postgres() {
    sigterm_under_load(Backend::Postgres).await;
}

async fn sigterm_under_load(backend: Backend) {
    let mut rig = LoadRig::start(backend).await;
    let (url, http, delivered, sink) =
        (rig.hookline.url.clone(), rig.http.clone(), rig.delivered.clone(), rig.sink.clone());
    let setup = [
        ("/api/v1/app", json!({"name": "m", "uid": "m"})),
        ("/api/v1/app/m/endpoint", json!({"url": format!("{sink}/slow")})),
    ];
    create_all(&http, &url, TOKEN, &setup).await;
    let mut acknowledged = HashSet::new();
    for n in 0..200 {
        let body = json!({"eventType": "payment.succeeded", "payload": {"n": n}});
        let r = http.post(format!("{url}/api/v1/app/m/msg")).bearer_auth(TOKEN).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 202);
        acknowledged.insert(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    // 200 deliveries at 150 ms each through 32 slots: about a second of work is in flight.
    let status = rig.hookline.terminate();
    assert!(status.success(), "{status:?}");
    let before_restart = delivered.lock().unwrap().len();
    assert!(before_restart > 0, "in-flight deliveries finished during shutdown");
    rig.restart().await;
    until_none_missing(PATIENCE, "messages never arrived after the restart", || {
        let delivered = delivered.lock().unwrap();
        acknowledged.iter().filter(|id| !delivered.contains_key(&("/slow".to_owned(), (*id).clone()))).count()
    })
    .await;
    eprintln!("SIGTERM: {before_restart} of 200 delivered before exit, the rest after restart");
}
