//! The test harness: a gateway on port 0 with a temp data dir and a manual clock, and a
//! `Receiver` endpoint whose answers a test scripts.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hookline_server::clock::{Clock, ManualClock};
use hookline_server::config::Config;
use hookline_store::postgres::{scratch, PgOptions, PgStore};
use hookline_store::sqlite::SqliteStore;
use hookline_store::Store;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

pub const TOKEN: &str = "test-admin-token";
/// Start of manual time: 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600_000;
/// How long a test waits for something that must happen (generous: slow machines pass).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Asks `probe` every 20 ms, for at most [`PATIENCE`], until it answers `Ok`; an `Err` says
/// what it saw instead. Panics with `what` (what never happened) and the last thing seen.
pub async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match probe().await {
            Ok(found) => return found,
            Err(seen) => assert!(tokio::time::Instant::now() < deadline, "{what}; last seen: {seen}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `Ok` when `done`, else what was seen: a probe's answer for [`eventually`].
pub fn done_or(done: bool, seen: impl std::fmt::Display) -> Result<(), String> {
    if done {
        Ok(())
    } else {
        Err(seen.to_string())
    }
}

pub struct Gateway {
    pub url: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Kept so the data dir lives as long as the gateway.
    dir: Arc<tempfile::TempDir>,
}

pub fn dev_config() -> Config {
    let mut config = Config::default();
    config.server.dev = true;
    config.api.admin_token = Some(TOKEN.into());
    config.delivery.request_timeout_ms = 5_000;
    config.delivery.shutdown_grace_ms = 2_000;
    // Released retries are claimed back within a poll; keep tests quick.
    config.cluster.poll_ms = 50;
    config
}

pub async fn start_gateway(config: Config) -> Gateway {
    start_gateway_in(config, Arc::new(tempfile::tempdir().unwrap()), Arc::new(ManualClock::new(T0))).await
}

/// Starts a gateway on an existing data dir and clock (for restarts).
/// The store the suite runs on: SQLite in `dir`, or with `HOOKLINE_TEST_BACKEND=postgres`
/// a fresh PostgreSQL database remembered in `dir` (so a restart finds the same data).
pub async fn open_store(dir: &std::path::Path) -> Arc<dyn Store> {
    const KEY: [u8; 32] = [9; 32];
    if std::env::var("HOOKLINE_TEST_BACKEND").as_deref() != Ok("postgres") {
        return Arc::new(SqliteStore::open(dir, &KEY).unwrap());
    }
    let remembered = dir.join("postgres-url");
    let url = match std::fs::read_to_string(&remembered) {
        Ok(url) => url,
        Err(_) => {
            let url = scratch::fresh_database().await.expect("a PostgreSQL server (see scripts/test.sh)");
            std::fs::write(&remembered, &url).unwrap();
            url
        }
    };
    Arc::new(PgStore::open(&url, &KEY, PgOptions { pool_max: 8, timeout_ms: 10_000 }).await.unwrap())
}

pub async fn start_gateway_in(config: Config, dir: Arc<tempfile::TempDir>, clock: Arc<ManualClock>) -> Gateway {
    let store = open_store(dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let clock_dyn: Arc<dyn Clock> = clock.clone();
    let options = hookline_server::RunOptions { jitter_seed: Some(7), ..Default::default() };
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        hookline_server::run(config, store, clock_dyn, listener, shutdown, options).await.unwrap();
    });
    let gateway = Gateway { url, http: reqwest::Client::new(), clock, stop: Some(stop), task: Some(task), dir };
    gateway.wait_healthy().await;
    gateway
}

impl Gateway {
    async fn wait_healthy(&self) {
        let health = format!("{}/api/v1/health", self.url);
        eventually("gateway never became healthy", async || {
            let answer = self.http.get(&health).send().await.map_err(|e| e.to_string())?;
            done_or(answer.status() == 200, answer.status())
        })
        .await;
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path} answered {status}: {value}");
        value
    }

    /// The Prometheus metrics, read with the admin token.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(format!("{}/metrics", self.url)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    pub async fn app(&self, uid: &str) -> String {
        self.ok("POST", "/api/v1/app", Some(json!({"name": uid, "uid": uid}))).await["id"].as_str().unwrap().to_owned()
    }

    pub async fn endpoint(&self, app: &str, body: Value) -> Value {
        self.ok("POST", &format!("/api/v1/app/{app}/endpoint"), Some(body)).await
    }

    /// Publishes a body given as text, so its exact bytes reach the gateway.
    pub async fn publish_raw(&self, app: &str, body: &str) -> String {
        let response = self
            .http
            .post(format!("{}/api/v1/app/{app}/msg", self.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    pub async fn publish(&self, app: &str, body: Value) -> String {
        self.ok("POST", &format!("/api/v1/app/{app}/msg"), Some(body)).await["id"].as_str().unwrap().to_owned()
    }

    pub async fn attempts_of(&self, app: &str, msg: &str) -> Vec<Value> {
        let listed =
            self.ok("GET", &format!("/api/v1/app/{app}/attempt/msg/{msg}?order=ascending&limit=250"), None).await;
        listed["data"].as_array().unwrap().clone()
    }

    /// Waits until the message has `count` attempts; returns them oldest first.
    pub async fn wait_attempts(&self, app: &str, msg: &str, count: usize) -> Vec<Value> {
        eventually(&format!("waited for {count} attempts"), async || {
            let attempts = self.attempts_of(app, msg).await;
            if attempts.len() >= count {
                Ok(attempts)
            } else {
                Err(format!("{} attempts", attempts.len()))
            }
        })
        .await
    }

    /// The delivery status of a message at its one endpoint: (status, nextAttempt).
    pub async fn destination(&self, app: &str, msg: &str) -> (i64, Option<String>) {
        let listed = self.ok("GET", &format!("/api/v1/app/{app}/msg/{msg}/endpoint"), None).await;
        let d = &listed["data"][0];
        (d["status"].as_i64().unwrap(), d["nextAttempt"].as_str().map(str::to_owned))
    }

    pub fn advance(&self, ms: i64) {
        self.clock.advance(ms);
    }

    /// The gateway's database as another node would open it.
    pub async fn another_node(&self) -> Arc<dyn Store> {
        open_store(self.dir.path()).await
    }

    /// Deletes the row `id` of `table` behind the gateway's back, as a write on another
    /// node that raced this one's can leave the database.
    pub async fn forget(&self, table: &str, id: &str) {
        self.behind_its_back(&format!("DELETE FROM {table} WHERE id = $1"), id).await;
    }

    /// The count `sql` (`SELECT count(*) …`, one text parameter, `$1`: `id`) finds in the
    /// gateway's database.
    pub async fn count(&self, sql: &str, id: &str) -> i64 {
        let dir = self.dir.path();
        match std::fs::read_to_string(dir.join("postgres-url")) {
            Ok(url) => {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                client.query_one(sql, &[&id]).await.unwrap().get(0)
            }
            Err(_) => {
                let connection = rusqlite::Connection::open(dir.join("hookline.db")).unwrap();
                connection.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                connection.query_row(&sql.replace("$1", "?1"), [id], |r| r.get(0)).unwrap()
            }
        }
    }

    /// Runs `sql` (one text parameter, `$1`: `id`) on the gateway's database behind its
    /// back; it must change one row.
    pub async fn behind_its_back(&self, sql: &str, id: &str) {
        let dir = self.dir.path();
        let changed = match std::fs::read_to_string(dir.join("postgres-url")) {
            Ok(url) => {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                client.execute(sql, &[&id]).await.unwrap()
            }
            Err(_) => {
                let connection = rusqlite::Connection::open(dir.join("hookline.db")).unwrap();
                connection.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                connection.execute(&sql.replace("$1", "?1"), [id]).unwrap() as u64
            }
        };
        assert_eq!(changed, 1, "{sql} {id}");
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }
}

/// A scripted answer: status, extra headers, and an optional gate the request waits on.
#[derive(Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub gate: Option<Arc<Semaphore>>,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer { status, headers: Vec::new(), gate: None }
    }
}

struct Script {
    queue: VecDeque<Answer>,
    fallback: Answer,
}

/// An HTTP endpoint on 127.0.0.1:0 that records each request and answers from a script
/// (then with a fallback answer).
pub struct Receiver {
    pub url: String,
    requests: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    script: Arc<Mutex<Script>>,
}

impl Receiver {
    pub async fn start(fallback: Answer) -> Receiver {
        Receiver::start_at(fallback, "127.0.0.1:0").await
    }

    /// A receiver on a given address (to bring an endpoint back where it was).
    pub async fn start_at(fallback: Answer, address: &str) -> Receiver {
        let (sender, requests) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(Script { queue: VecDeque::new(), fallback }));
        let handler_script = script.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let script = handler_script.clone();
            let sender = sender.clone();
            async move {
                let answer = {
                    let mut s = script.lock().unwrap();
                    s.queue.pop_front().unwrap_or_else(|| s.fallback.clone())
                };
                let _ = sender.send(Received { path: uri.path().to_owned(), headers, body });
                if let Some(gate) = answer.gate {
                    let _ = gate.acquire().await.map(|p| p.forget());
                }
                let mut response =
                    axum::response::Response::builder().status(StatusCode::from_u16(answer.status).unwrap());
                for (k, v) in answer.headers {
                    response = response.header(k, v);
                }
                response.body(axum::body::Body::from("receiver says hi")).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, requests: tokio::sync::Mutex::new(requests), script }
    }

    /// Changes the answer given once the script runs out.
    pub fn set_fallback(&self, answer: Answer) {
        self.script.lock().unwrap().fallback = answer;
    }

    pub fn then(&self, answer: Answer) {
        self.script.lock().unwrap().queue.push_back(answer);
    }

    /// The next request, waiting for it.
    pub async fn next(&self) -> Received {
        tokio::time::timeout(PATIENCE, self.requests.lock().await.recv())
            .await
            .expect("the receiver got no request in time")
            .expect("receiver channel open")
    }

    /// True if a request arrives within `ms` (used to show that one did not).
    pub async fn gets_within(&self, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), self.requests.lock().await.recv()).await.is_ok()
    }
}
