//! Several real `hookline serve` nodes on one PostgreSQL database: publishing through all
//! of them while one is killed with `kill -9`, changes made on one node obeyed by the
//! others, and PostgreSQL itself restarted under load. Each test counts what was
//! acknowledged, delivered, lost (must be 0) and duplicated (bounded), and prints it.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::{cluster_env, counter, counting_sink, create_all, free_port, until_none_missing, Arrivals, Hookline};

const TOKEN: &str = "cluster-test-token";

/// A node of the cluster, with its own (unused) data dir.
struct Node {
    process: Hookline,
    _dir: tempfile::TempDir,
}

fn start_node(database_url: &str, name: &str, extra: &[(&str, &str)]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut env: Vec<(String, String)> = cluster_env(database_url, name);
    env.push(("HOOKLINE_ADMIN_TOKEN".into(), TOKEN.into()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Node { process: Hookline::start(dir.path(), port, &env), _dir: dir }
}

/// Publishes one message through `url`; its id when acknowledged (202).
async fn publish(http: &reqwest::Client, url: &str, n: usize) -> Result<String, String> {
    let body = json!({"eventType": "payment.succeeded", "payload": {"n": n}});
    let sent = http.post(format!("{url}/api/v1/app/m/msg")).bearer_auth(TOKEN).json(&body).send().await;
    let response = sent.map_err(|e| format!("transport: {e}"))?;
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    match status {
        202 => Ok(answer["id"].as_str().unwrap().to_owned()),
        _ => Err(format!("{status}: {answer}")),
    }
}

/// Sends one Stripe-signed event to the `stripe` source through `url`; the id of the message
/// it became when acknowledged (200).
async fn inbound(http: &reqwest::Client, url: &str, n: usize) -> Result<String, String> {
    let body = format!(r#"{{"id":"evt_{n}_{}","type":"charge.succeeded"}}"#, std::process::id());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let signature = hookline_core::signature::stripe_header(&["whsec_cluster"], now, body.as_bytes());
    let sent = http.post(format!("{url}/in/stripe")).header("stripe-signature", signature).body(body).send().await;
    let response = sent.map_err(|e| format!("transport: {e}"))?;
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    match (status, answer["messageId"].as_str()) {
        (200, Some(id)) => Ok(id.to_owned()),
        _ => Err(format!("{status}: {answer}")),
    }
}

/// Acknowledged ids that never arrived, and how many extra copies arrived.
fn lost_and_duplicated(acknowledged: &[String], arrivals: &Arrivals) -> (usize, u32) {
    let seen = arrivals.lock().unwrap();
    let lost = acknowledged.iter().filter(|id| !seen.contains_key(*id)).count();
    let duplicates = seen.values().map(|n| n - 1).sum();
    (lost, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_work_and_a_killed_node_loses_nothing() {
    let database = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    // All three start at once: their migrations must not race.
    let limits = [("HOOKLINE_DELIVERY_ENDPOINT_MAX_IN_FLIGHT", "32")];
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().map(|name| start_node(&database, name, &limits)).collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    for node in &nodes {
        node.process.wait_healthy(&http).await;
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.process.url.clone()).collect();
    let (hook, arrivals) = counting_sink(20).await;
    create_all(
        &http,
        &urls[0],
        TOKEN,
        &[("/api/v1/app", json!({"name": "m", "uid": "m"})), ("/api/v1/app/m/endpoint", json!({"url": hook}))],
    )
    .await;

    // Four publishers spread over the three nodes; node b dies halfway.
    const MESSAGES: usize = 1_200;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (http, urls) = (http.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut refused = 0;
            for n in (worker..MESSAGES).step_by(4) {
                match publish(&http, &urls[n % 3], n).await {
                    Ok(id) => acknowledged.push(id),
                    Err(_) => refused += 1,
                }
            }
            (acknowledged, refused)
        }));
    }
    until_none_missing(support::PATIENCE, "deliveries before the kill", || {
        usize::from(arrivals.lock().unwrap().len() < MESSAGES / 3)
    })
    .await;
    nodes[1].process.kill9();
    let killed_at = Instant::now();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (ids, not_taken) = task.await.unwrap();
        acknowledged.extend(ids);
        refused += not_taken;
    }
    until_none_missing(support::PATIENCE, "acknowledged messages not delivered", || {
        lost_and_duplicated(&acknowledged, &arrivals).0
    })
    .await;
    let (lost, duplicates) = lost_and_duplicated(&acknowledged, &arrivals);
    eprintln!(
        "cluster kill -9: acknowledged {}, refused (sent to the dead node) {refused}, delivered {}, lost {lost}, \
         duplicates {duplicates}, all delivered {:.1} s after the kill ({:.1} s in all)",
        acknowledged.len(),
        arrivals.lock().unwrap().len(),
        killed_at.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0);
    assert!(acknowledged.len() >= MESSAGES * 2 / 3, "the live nodes kept acknowledging");
    // Only what the dead node had in flight (at most its endpoint cap) may arrive twice.
    assert!(duplicates <= 32, "{duplicates} duplicates");
    for url in [&urls[0], &urls[2]] {
        assert!(
            counter(&http, url, TOKEN, "hookline_deliveries_succeeded_total").await > 0.0,
            "{url} delivered nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_is_obeyed_by_the_others_within_a_second() {
    let database = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    // The cache TTL is far longer than the test: only notifications can explain a prompt change.
    let ttl = [("HOOKLINE_CLUSTER_CACHE_TTL_MS", "600000")];
    let (a, b) = (start_node(&database, "a", &ttl), start_node(&database, "b", &ttl));
    let http = reqwest::Client::new();
    a.process.wait_healthy(&http).await;
    b.process.wait_healthy(&http).await;
    let (a_url, b_url) = (a.process.url.clone(), b.process.url.clone());
    let (first, first_arrivals) = counting_sink(0).await;
    let (second, second_arrivals) = counting_sink(0).await;
    create_all(
        &http,
        &a_url,
        TOKEN,
        &[
            ("/api/v1/app", json!({"name": "m", "uid": "m"})),
            ("/api/v1/app/m/endpoint", json!({"url": first, "uid": "ep"})),
        ],
    )
    .await;
    let delivered = |arrivals: &Arrivals, id: &str| arrivals.lock().unwrap().contains_key(id);
    let id = publish(&http, &b_url, 0).await.unwrap();
    until_none_missing(support::PATIENCE, "first delivery", || usize::from(!delivered(&first_arrivals, &id))).await;

    // URL changed on a: b sends to the new one.
    let patch =
        |body: Value| http.patch(format!("{a_url}/api/v1/app/m/endpoint/ep")).bearer_auth(TOKEN).json(&body).send();
    assert_eq!(patch(json!({"url": second})).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let id = publish(&http, &b_url, 1).await.unwrap();
    until_none_missing(support::PATIENCE, "delivery to the new URL", || usize::from(!delivered(&second_arrivals, &id)))
        .await;
    assert!(!delivered(&first_arrivals, &id), "b used the old URL");

    // Disabled on a: nothing published on b reaches the endpoint.
    assert_eq!(patch(json!({"disabled": true})).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = second_arrivals.lock().unwrap().len();
    let quiet: Vec<String> = futures_util::future::join_all((2..12).map(|n| publish(&http, &b_url, n)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(second_arrivals.lock().unwrap().len(), before, "a disabled endpoint got deliveries from b");
    assert!(quiet.iter().all(|id| !delivered(&second_arrivals, id)));

    // Enabled and its secret rotated on a: b signs with the new secret.
    assert_eq!(patch(json!({"disabled": false})).await.unwrap().status(), 200);
    let rotate = http
        .post(format!("{a_url}/api/v1/app/m/endpoint/ep/secret/rotate"))
        .bearer_auth(TOKEN)
        .json(&json!({"key": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}))
        .send()
        .await
        .unwrap();
    assert!(rotate.status().is_success(), "{}", rotate.status());
    let secret: Value = http
        .get(format!("{b_url}/api/v1/app/m/endpoint/ep/secret"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(secret["key"], "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "b reads the rotated secret");

    // Deleted on a: b delivers nothing more.
    let deleted = http.delete(format!("{a_url}/api/v1/app/m/endpoint/ep")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = second_arrivals.lock().unwrap().len();
    let (status, _) = support::post(
        &http,
        format!("{b_url}/api/v1/app/m/msg"),
        TOKEN,
        &json!({"eventType": "payment.succeeded", "payload": {}}),
    )
    .await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(second_arrivals.lock().unwrap().len(), before, "a deleted endpoint got a delivery from b");
}

/// A PostgreSQL server of the test's own (so restarting it disturbs no other test), in a
/// temporary directory owned by the `postgres` user.
struct PrivatePostgres {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let versions =
            std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL is installed (scripts/ensure-postgres.sh)");
        let mut versions: Vec<_> = versions.filter_map(|v| v.ok()).map(|v| v.path()).collect();
        versions.sort();
        let bin = versions.pop().unwrap().join("bin");
        let dir = tempfile::tempdir().unwrap();
        assert!(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap().success());
        let data = dir.path().join("data");
        let initdb = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["--auth=trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(initdb.status.success(), "initdb: {}", String::from_utf8_lossy(&initdb.stderr));
        let server = PrivatePostgres { bin, dir, port: free_port() };
        server.pg_ctl("start");
        server
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-w", "-m", "fast"]);
        if action == "start" {
            command.args(["-o", &options, "-l"]).arg(self.dir.path().join("log"));
        }
        let out = command.arg(action).output().unwrap();
        assert!(out.status.success(), "pg_ctl {action}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_answers_503_and_loses_nothing() {
    let postgres = PrivatePostgres::start();
    let timeout = [("HOOKLINE_DATABASE_TIMEOUT_MS", "2000")];
    let (a, b) = (start_node(&postgres.url(), "a", &timeout), start_node(&postgres.url(), "b", &timeout));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    a.process.wait_healthy(&http).await;
    b.process.wait_healthy(&http).await;
    let urls = [a.process.url.clone(), b.process.url.clone()];
    let (hook, arrivals) = counting_sink(5).await;
    let source =
        json!({"name": "stripe", "uid": "stripe", "preset": "stripe", "secrets": ["whsec_cluster"], "appId": "m"});
    let setup = [
        ("/api/v1/app", json!({"name": "m", "uid": "m"})),
        ("/api/v1/app/m/endpoint", json!({"url": hook})),
        ("/api/v1/source", source),
    ];
    create_all(&http, &urls[0], TOKEN, &setup).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (http, urls, stop) = (http.clone(), urls.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut statuses: HashMap<String, usize> = HashMap::new();
            let mut slowest = Duration::ZERO;
            let mut n = worker;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = Instant::now();
                // Every third request is a provider's webhook to the inbound source.
                let answer = match n % 3 {
                    2 => inbound(&http, &urls[n % 2], n).await,
                    _ => publish(&http, &urls[n % 2], n).await,
                };
                match answer {
                    Ok(id) => acknowledged.push(id),
                    Err(e) => *statuses.entry(e.chars().take(3).collect()).or_default() += 1,
                }
                slowest = slowest.max(sent.elapsed());
                n += 4;
            }
            (acknowledged, statuses, slowest)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.pg_ctl("stop");
    // A node cut off from its database says so to a load balancer's health check.
    let health = |url: String| {
        let http = http.clone();
        async move { http.get(format!("{url}/api/v1/health")).send().await.map(|r| r.status().as_u16()).ok() }
    };
    let down_at = Instant::now();
    while health(urls[0].clone()).await != Some(503) {
        assert!(down_at.elapsed() < support::PATIENCE, "health stayed 200 with the database down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down_at.elapsed())).await;
    postgres.pg_ctl("start");
    let up_at = Instant::now();
    while health(urls[0].clone()).await != Some(200) {
        assert!(up_at.elapsed() < support::PATIENCE, "health stayed 503 with the database back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(up_at.elapsed())).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    let mut refused: HashMap<String, usize> = HashMap::new();
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let (ids, statuses, slow) = task.await.unwrap();
        acknowledged.extend(ids);
        for (status, count) in statuses {
            *refused.entry(status).or_default() += count;
        }
        slowest = slowest.max(slow);
    }
    until_none_missing(support::PATIENCE, "acknowledged messages not delivered", || {
        lost_and_duplicated(&acknowledged, &arrivals).0
    })
    .await;
    let (lost, duplicates) = lost_and_duplicated(&acknowledged, &arrivals);
    eprintln!(
        "PostgreSQL restart: acknowledged {}, refused {refused:?}, lost {lost}, duplicates {duplicates}, \
         slowest answer {:.2} s",
        acknowledged.len(),
        slowest.as_secs_f64()
    );
    assert_eq!(lost, 0);
    assert!(
        refused.keys().all(|status| status == "503"),
        "while PostgreSQL was down only 503s (publish and inbound): {refused:?}"
    );
    assert!(refused.get("503").is_some_and(|n| *n > 0), "the outage was seen");
    assert!(slowest < Duration::from_secs(10), "an answer took {slowest:?}");
    // Both nodes came back by themselves: each acknowledges again.
    for url in &urls {
        publish(&http, url, 1_000_000).await.unwrap();
    }
}

/// An endpoint that records when each delivery arrives.
async fn timing_sink() -> (String, Arc<std::sync::Mutex<Vec<Instant>>>) {
    let arrivals: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let recorded = arrivals.clone();
    let app = axum::Router::new().fallback(move || {
        let recorded = recorded.clone();
        async move {
            recorded.lock().unwrap().push(Instant::now());
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, arrivals)
}

/// An endpoint's `throttleRate` holds for the cluster, not per node: two nodes publishing to
/// an endpoint limited to 50/s deliver at most 55 in any second between them (the issue's
/// margin), and deliver everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_nodes() {
    let database = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    let nodes: Vec<Node> = ["a", "b"].iter().map(|name| start_node(&database, name, &[])).collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    for node in &nodes {
        node.process.wait_healthy(&http).await;
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.process.url.clone()).collect();
    let (hook, arrivals) = timing_sink().await;
    let app = json!({"name": "m", "uid": "m"});
    let endpoint = json!({"url": hook, "throttleRate": 50});
    create_all(&http, &urls[0], TOKEN, &[("/api/v1/app", app), ("/api/v1/app/m/endpoint", endpoint)]).await;
    // Each node counts the live nodes as it renews its lease (every second with this lease).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    const MESSAGES: usize = 250;
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (http, urls) = (http.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            for n in (worker..MESSAGES).step_by(4) {
                publish(&http, &urls[n % 2], n).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    until_none_missing(support::PATIENCE, "deliveries to the throttled endpoint", || {
        MESSAGES.saturating_sub(arrivals.lock().unwrap().len())
    })
    .await;
    let times = arrivals.lock().unwrap().clone();
    let busiest = times
        .iter()
        .map(|start| {
            times.iter().filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(1)).count()
        })
        .max()
        .unwrap();
    let span = times.iter().max().unwrap().duration_since(*times.iter().min().unwrap());
    eprintln!(
        "rate limit across 2 nodes: {MESSAGES} delivered in {:.1} s, at most {busiest} in any second",
        span.as_secs_f64()
    );
    assert!(busiest <= 55, "{busiest} deliveries in one second to an endpoint limited to 50/s");
    assert_eq!(times.len(), MESSAGES, "nothing dropped, nothing twice");
}

/// What an ordering receiver saw: per key the events it accepted in order, requests that
/// came out of order, and the most requests of one key it had in flight at once.
#[derive(Default)]
struct Lanes {
    accepted: HashMap<String, Vec<u64>>,
    out_of_order: Vec<String>,
    attempts: HashMap<(String, u64), u32>,
    in_flight: HashMap<String, Vec<u64>>,
    /// Requests that came while another of their key was in flight: `key: n beside [m]`.
    overlaps: Vec<String>,
}

struct InFlight {
    lanes: Arc<std::sync::Mutex<Lanes>>,
    key: String,
    n: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.lanes.lock().unwrap();
        let in_flight = s.in_flight.get_mut(&self.key).unwrap();
        let at = in_flight.iter().position(|m| *m == self.n).unwrap();
        in_flight.remove(at);
    }
}

/// An endpoint that fails about 30% of requests (a hash of key, event and attempt) and
/// checks that each key's requests come one at a time and in order. A repeat of the event
/// it accepted last is a redelivery (at least once), not a breach.
async fn ordering_sink() -> (String, Arc<std::sync::Mutex<Lanes>>) {
    use std::hash::{Hash, Hasher};
    let lanes: Arc<std::sync::Mutex<Lanes>> = Arc::default();
    let state = lanes.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let state = state.clone();
        async move {
            let event: Value = serde_json::from_slice(&body).unwrap();
            let (key, n) = (event["key"].as_str().unwrap().to_owned(), event["n"].as_u64().unwrap());
            let fail = {
                let mut s = state.lock().unwrap();
                let in_flight = s.in_flight.entry(key.clone()).or_default();
                let overlap = (!in_flight.is_empty()).then(|| format!("{key}: {n} beside {in_flight:?}"));
                in_flight.push(n);
                s.overlaps.extend(overlap);
                let attempt = s.attempts.entry((key.clone(), n)).or_default();
                *attempt += 1;
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                (&key, n, *attempt).hash(&mut hasher);
                hasher.finish() % 10 < 3
            };
            // Leaves the in-flight list however the request ends: answered, or dropped
            // when the node sending it is killed.
            let done = InFlight { lanes: state.clone(), key: key.clone(), n };
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(done);
            let mut s = state.lock().unwrap();
            let accepted = s.accepted.get(&key).map_or(0, |a| a.len() as u64);
            if n + 1 == accepted {
                return axum::http::StatusCode::NO_CONTENT; // a redelivery of the last one
            }
            if n != accepted {
                s.out_of_order.push(format!("{key}: got {n}, expected {accepted}"));
            }
            if fail {
                return axum::http::StatusCode::SERVICE_UNAVAILABLE;
            }
            s.accepted.entry(key).or_default().push(n);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, lanes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_holds_across_nodes_and_a_killed_node() {
    const KEYS: usize = 1_000;
    const EVENTS: u64 = 10;
    let database = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().map(|name| start_node(&database, name, &[])).collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    for node in &nodes {
        node.process.wait_healthy(&http).await;
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.process.url.clone()).collect();
    let (hook, lanes) = ordering_sink().await;
    let policy = json!({"delaysMs": vec![100; 40]});
    create_all(
        &http,
        &urls[0],
        TOKEN,
        &[
            ("/api/v1/app", json!({"name": "m", "uid": "m"})),
            ("/api/v1/app/m/endpoint", json!({"url": hook, "retryPolicy": policy})),
        ],
    )
    .await;
    let delivered = || lanes.lock().unwrap().accepted.values().map(Vec::len).sum::<usize>();

    // Round n publishes event n of every key, spread over the nodes, and is acknowledged
    // whole before round n + 1: each key's events are published in order. Node b dies
    // after the third round; its share of later rounds goes to the others.
    for n in 0..EVENTS {
        if n == 3 {
            until_none_missing(support::PATIENCE, "deliveries before the kill", || usize::from(delivered() < KEYS))
                .await;
            nodes[1].process.kill9();
        }
        // 64 publishers at a time, as a platform's workers would be.
        let publishers = Arc::new(tokio::sync::Semaphore::new(64));
        let mut round = tokio::task::JoinSet::new();
        for k in 0..KEYS {
            let live: Vec<&String> =
                urls.iter().enumerate().filter(|(i, _)| n < 3 || *i != 1).map(|(_, u)| u).collect();
            let url = live[k % live.len()].clone();
            let (http, publishers) = (http.clone(), publishers.clone());
            round.spawn(async move {
                let _turn = publishers.acquire_owned().await.unwrap();
                let key = format!("pay_{k}");
                let body = json!({"eventType": "payment.updated", "orderingKey": key, "payload": {"key": key, "n": n}});
                // As a platform publishes: with an idempotency key, sent again when the
                // connection failed (a pooled keep-alive connection can be closed by the
                // server just as a request goes out), so an event is never published twice.
                let mut tries = 0;
                loop {
                    let sent = http
                        .post(format!("{url}/api/v1/app/m/msg"))
                        .bearer_auth(TOKEN)
                        .header("idempotency-key", format!("{key}-{n}"))
                        .json(&body)
                        .send()
                        .await;
                    tries += 1;
                    match sent {
                        Err(e) if tries < 3 => eprintln!("{url}: {e}; sending again"),
                        sent => break sent.map(|r| r.status().as_u16()).map_err(|e| format!("{url}: {e}")),
                    }
                }
            });
        }
        while let Some(status) = round.join_next().await {
            assert_eq!(status.unwrap(), Ok(202), "every publish to a live node is acknowledged");
        }
    }
    let total = KEYS * EVENTS as usize;
    until_none_missing(support::PATIENCE * 3, "events not delivered", || total - delivered()).await;
    let lanes = lanes.lock().unwrap();
    let shown = &lanes.out_of_order[..lanes.out_of_order.len().min(10)];
    assert!(lanes.out_of_order.is_empty(), "out of order: {shown:?}");
    for (key, accepted) in &lanes.accepted {
        assert_eq!(accepted, &(0..EVENTS).collect::<Vec<_>>(), "{key}");
    }
    assert!(lanes.overlaps.is_empty(), "never two requests of one key at once: {:?}", lanes.overlaps);
}

/// A node paused past its lease (`SIGSTOP`) holds an endpoint's deliveries, one in flight
/// and the rest parked behind it. The other node takes them all over and sends them. When
/// the paused node resumes, its delivery in flight ends, and the parked ones behind it are
/// dropped, not sent: the node no longer holds them. (They used to go out again, one after
/// another, on the ended delivery's turn.) Every message arrives; at most the one in
/// flight at the pause arrives twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_lease_does_not_send_what_it_had_parked() {
    let database = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    let one_at_a_time = [("HOOKLINE_DELIVERY_ENDPOINT_MAX_IN_FLIGHT", "1")];
    let mut nodes: Vec<Node> = ["a", "b"].iter().map(|name| start_node(&database, name, &one_at_a_time)).collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    for node in &nodes {
        node.process.wait_healthy(&http).await;
    }
    let (hook, arrivals) = counting_sink(300).await;
    let resources =
        [("/api/v1/app", json!({"name": "m", "uid": "m"})), ("/api/v1/app/m/endpoint", json!({"url": hook}))];
    create_all(&http, &nodes[0].process.url, TOKEN, &resources).await;
    const MESSAGES: usize = 12;
    for n in 0..MESSAGES {
        let id = publish(&http, &nodes[0].process.url, n).await.unwrap();
        assert!(!id.is_empty());
    }
    let pid = nodes[0].process.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // The lease is 3 s: node b takes the work over and sends it, 300 ms a delivery.
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    until_none_missing(support::PATIENCE, "messages never arrived", || MESSAGES - arrivals.lock().unwrap().len()).await;
    // Long enough for node a to have sent its parked deliveries, one after another.
    tokio::time::sleep(Duration::from_millis(300 * MESSAGES as u64)).await;
    let twice = arrivals.lock().unwrap().values().filter(|n| **n > 1).count();
    println!("paused node: {MESSAGES} messages, {twice} arrived twice");
    assert!(twice <= 1, "{twice} of {MESSAGES} messages arrived twice");
    nodes[0].process.kill9();
}

/// A lease renewal that comes back only after the lease has ended here (its `UPDATE` waited
/// on a lock in PostgreSQL): meanwhile the node dropped the deliveries it had parked, as it
/// no longer held them, while its token, renewed after all, kept them claimed in the
/// store. The node registers anew and retires the old token, so they are claimed again and
/// delivered. (Kept under a live token, they were never sent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_comes_back_after_the_lease_ended_strands_nothing() {
    let database = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    let one_at_a_time = [("HOOKLINE_DELIVERY_ENDPOINT_MAX_IN_FLIGHT", "1")];
    let node = start_node(&database, "a", &one_at_a_time);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    node.process.wait_healthy(&http).await;
    let (hook, arrivals) = counting_sink(200).await;
    let resources =
        [("/api/v1/app", json!({"name": "m", "uid": "m"})), ("/api/v1/app/m/endpoint", json!({"url": hook}))];
    create_all(&http, &node.process.url, TOKEN, &resources).await;
    const MESSAGES: usize = 40;
    for n in 0..MESSAGES {
        publish(&http, &node.process.url, n).await.unwrap();
    }
    // Right after a renewal (at p; the lease then ends at p + 3 s), the node's row is
    // locked for 3.5 s: the next renewal (p + 1 s) waits and comes back at about p + 3.5 s,
    // after the lease ended here but before the end it sets in the store (p + 4 s).
    let lock = "DO $$ DECLARE seen bigint; BEGIN \
        SELECT lease_until INTO seen FROM nodes WHERE name = 'a'; \
        LOOP PERFORM pg_sleep(0.005); EXIT WHEN (SELECT lease_until FROM nodes WHERE name = 'a') <> seen; END LOOP; \
        PERFORM token FROM nodes WHERE name = 'a' FOR UPDATE; PERFORM pg_sleep(3.5); END $$;";
    let url = database.clone();
    let locked = tokio::task::spawn_blocking(move || Command::new("psql").args([&url, "-qc", lock]).output().unwrap());
    let out = locked.await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until_none_missing(Duration::from_secs(30), "messages never arrived", || MESSAGES - arrivals.lock().unwrap().len())
        .await;
    let count = "SELECT count(*) FROM nodes WHERE name = 'a'";
    let out = Command::new("psql").args([&database, "-tAc", count]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "the node registered anew");
}

/// A database server that restarted (a crash, a replica taking over) may have lost what was
/// committed with `synchronous_commit = off`, claims a node gave back among it; the node's
/// live token would hold those for ever. So a node whose renewal finds the server started
/// anew registers anew (its old token retired, its claims free), well within its lease,
/// and goes on delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registers_anew_when_the_database_server_restarted() {
    let postgres = PrivatePostgres::start();
    // A lease far longer than the outage: the restart alone must make the node register.
    let node = start_node(&postgres.url(), "a", &[("HOOKLINE_CLUSTER_LEASE_MS", "30000")]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    node.process.wait_healthy(&http).await;
    let (hook, arrivals) = counting_sink(0).await;
    let setup = [("/api/v1/app", json!({"name": "m", "uid": "m"})), ("/api/v1/app/m/endpoint", json!({"url": hook}))];
    create_all(&http, &node.process.url, TOKEN, &setup).await;
    let url = postgres.url();
    let registrations = || {
        let out = Command::new("psql").args([&url, "-tAc", "SELECT count(*) FROM nodes WHERE name = 'a'"]).output();
        String::from_utf8_lossy(&out.unwrap().stdout).trim().parse::<u32>().unwrap_or(0)
    };
    assert_eq!(registrations(), 1);
    let started = Instant::now();
    postgres.pg_ctl("stop");
    postgres.pg_ctl("start");
    // Renewals come every third of the lease (10 s); the outage is far shorter than the lease.
    while registrations() < 2 {
        assert!(started.elapsed() < Duration::from_secs(28), "the node never registered anew within its lease");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("registered anew {:.1} s after the restart began", started.elapsed().as_secs_f64());
    let id = publish(&http, &node.process.url, 1).await.unwrap();
    until_none_missing(support::PATIENCE, "the message after the restart never arrived", || {
        usize::from(!arrivals.lock().unwrap().contains_key(&id))
    })
    .await;
}
