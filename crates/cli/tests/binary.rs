//! The real `hookline` binary: start-up, configuration errors, SIGTERM, and kill -9 in the
//! middle of deliveries followed by a restart on the same data directory.

use serde_json::json;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;
use support::{
    cluster_env, counter, counting_sink, create_all, free_port, post, recording_sink, serve_command,
    until_none_missing, Hookline, PATIENCE,
};

const TOKEN: &str = "binary-test-token";

#[tokio::test]
async fn kill_9_mid_delivery_then_restart_delivers_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let hold = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let sink = recording_sink(hold.clone(), seen.clone()).await;
    let port = free_port();
    let mut first = Hookline::start(dir.path(), port, &[("HOOKLINE_ADMIN_TOKEN", TOKEN)]);
    first.wait_healthy(&http).await;
    let resources =
        [("/api/v1/app", json!({"name": "m", "uid": "m"})), ("/api/v1/app/m/endpoint", json!({"url": sink}))];
    create_all(&http, &first.url, TOKEN, &resources).await;
    let mut acknowledged = HashSet::new();
    for n in 0..200 {
        let body = json!({"eventType": "payment.succeeded", "payload": {"n": n}});
        let (status, out) = post(&http, format!("{}/api/v1/app/m/msg", first.url), TOKEN, &body).await;
        assert_eq!(status, 202);
        acknowledged.insert(out["id"].as_str().unwrap().to_owned());
    }
    first.kill9();
    assert!(seen.lock().unwrap().is_empty(), "nothing was answered before the kill");
    hold.store(false, Ordering::SeqCst);
    let second = Hookline::start(dir.path(), port, &[("HOOKLINE_ADMIN_TOKEN", TOKEN)]);
    second.wait_healthy(&http).await;
    until_none_missing(PATIENCE, "acknowledged messages never arrived", || {
        acknowledged.difference(&seen.lock().unwrap()).count()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoints_backlog_waits_in_the_store_not_in_memory() {
    backlog_waits_in_the_store(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoints_backlog_waits_in_the_store_not_in_memory_on_postgres() {
    let database = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    backlog_waits_in_the_store(cluster_env(&database, "backlog")).await;
}

/// A gateway whose lanes are small and whose claims are quick: 4 deliveries at a time per
/// endpoint, windows of 8, `held_max` as given, polls of 10 ms (after the backend's
/// settings, so that these win).
fn small_lanes(dir: &std::path::Path, backend: &[(String, String)], held_max: &str) -> Hookline {
    let mut env: Vec<(&str, &str)> = backend.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([
        ("HOOKLINE_ADMIN_TOKEN", TOKEN),
        ("HOOKLINE_DELIVERY_ENDPOINT_MAX_IN_FLIGHT", "4"),
        ("HOOKLINE_CLUSTER_CLAIM_BATCH_MAX", "8"),
        ("HOOKLINE_CLUSTER_HELD_MAX", held_max),
        ("HOOKLINE_CLUSTER_POLL_MS", "10"),
    ]);
    Hookline::start(dir, free_port(), &env)
}

/// Waits until `messages` messages reached the endpoint counting `arrivals`, and checks
/// that none arrived twice.
async fn all_arrive_once(arrivals: &support::Arrivals, messages: usize, which: &str) {
    until_none_missing(PATIENCE, &format!("messages never reached the {which} endpoint"), || {
        messages - arrivals.lock().unwrap().len()
    })
    .await;
    let twice: Vec<_> = arrivals.lock().unwrap().iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.clone()).collect();
    assert!(twice.is_empty(), "delivered more than once to the {which} endpoint: {twice:?}");
}

/// Publishes outrun a slow endpoint (4 at a time, 50 ms each: 80 a second) beside a fast
/// one. Once the slow endpoint's lane parks 4 deliveries and the oldest has waited two
/// polls (20 ms), its new deliveries wait in the store, and the node holds at most
/// `cluster.held_max` deliveries it claimed besides those it published; the fast
/// endpoint's deliveries of the same messages go on from memory. Every message reaches
/// both endpoints exactly once.
async fn backlog_waits_in_the_store(backend: Vec<(String, String)>) {
    const MESSAGES: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let ((slow, slow_arrivals), (fast, fast_arrivals)) = (counting_sink(50).await, counting_sink(0).await);
    let gateway = small_lanes(dir.path(), &backend, "16");
    gateway.wait_healthy(&http).await;
    let resources = [
        ("/api/v1/app", json!({"name": "m", "uid": "m"})),
        ("/api/v1/app/m/endpoint", json!({"url": slow})),
        ("/api/v1/app/m/endpoint", json!({"url": fast})),
    ];
    create_all(&http, &gateway.url, TOKEN, &resources).await;
    let mut most_held = 0.0f64;
    for n in 0..MESSAGES {
        let body = json!({"eventType": "payment.succeeded", "payload": {"n": n}});
        let (status, _) = post(&http, format!("{}/api/v1/app/m/msg", gateway.url), TOKEN, &body).await;
        assert_eq!(status, 202);
        if n % 10 == 0 {
            most_held = most_held.max(counter(&http, &gateway.url, TOKEN, "hookline_deliveries_held").await);
        }
    }
    // At most 16 claimed, and what the publishes parked in the 20 ms before the lane
    // counted as behind (one publish at a time here, a few dozen); a node that keeps the
    // whole backlog in memory holds hundreds.
    assert!(most_held <= 150.0, "held {most_held} deliveries while the slow endpoint fell behind");
    all_arrive_once(&fast_arrivals, MESSAGES, "fast").await;
    all_arrive_once(&slow_arrivals, MESSAGES, "slow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoints_backlog_does_not_hold_back_another_endpoints_retry() {
    retry_beside_a_backlog(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoints_backlog_does_not_hold_back_another_endpoints_retry_on_postgres() {
    let database = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    retry_beside_a_backlog(cluster_env(&database, "beside")).await;
}

/// A slow endpoint (4 at a time, 50 ms each: 80 a second) has hundreds of deliveries
/// waiting in the store when another application's endpoint fails a first attempt. Its
/// retry, due 100 ms later, goes out while most of that backlog still waits: the backlog is
/// deferred, so it does not stand before other due work. (Claimed oldest first with the
/// rest, the retry waited until nearly all of the backlog had been claimed.) The backlog
/// still arrives, every message exactly once.
async fn retry_beside_a_backlog(backend: Vec<(String, String)>) {
    const MESSAGES: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (slow, slow_arrivals) = counting_sink(50).await;
    // Answers 500 first, then 200, noting how many deliveries the slow endpoint had then.
    let slow_seen_at_retry: Arc<Mutex<Option<usize>>> = Arc::default();
    let flaky = {
        let (answered, seen, slow_arrivals) =
            (Arc::new(AtomicBool::new(false)), slow_seen_at_retry.clone(), slow_arrivals.clone());
        let app = axum::Router::new().fallback(move || {
            let (answered, seen, slow_arrivals) = (answered.clone(), seen.clone(), slow_arrivals.clone());
            async move {
                if !answered.swap(true, Ordering::SeqCst) {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                seen.lock().unwrap().get_or_insert(slow_arrivals.lock().unwrap().len());
                axum::http::StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    };
    let gateway = small_lanes(dir.path(), &backend, "16");
    gateway.wait_healthy(&http).await;
    let resources = [
        ("/api/v1/app", json!({"name": "m", "uid": "m"})),
        ("/api/v1/app/m/endpoint", json!({"url": slow})),
        ("/api/v1/app", json!({"name": "n", "uid": "n"})),
        ("/api/v1/app/n/endpoint", json!({"url": flaky, "retryPolicy": {"delaysMs": [100]}})),
    ];
    create_all(&http, &gateway.url, TOKEN, &resources).await;
    for n in 0..MESSAGES {
        let body = json!({"eventType": "payment.succeeded", "payload": {"n": n}});
        let (status, _) = post(&http, format!("{}/api/v1/app/m/msg", gateway.url), TOKEN, &body).await;
        assert_eq!(status, 202);
    }
    let before = slow_arrivals.lock().unwrap().len();
    let body = json!({"eventType": "payment.failed", "payload": {}});
    let (status, _) = post(&http, format!("{}/api/v1/app/n/msg", gateway.url), TOKEN, &body).await;
    assert_eq!(status, 202);
    until_none_missing(PATIENCE, "the retry never arrived", || {
        usize::from(slow_seen_at_retry.lock().unwrap().is_none())
    })
    .await;
    let at_retry = slow_seen_at_retry.lock().unwrap().expect("seen");
    let waiting = MESSAGES - before;
    assert!(
        at_retry - before < waiting / 2,
        "the retry went out only after {} of the {waiting} deliveries waiting before it had arrived",
        at_retry - before
    );
    all_arrive_once(&slow_arrivals, MESSAGES, "slow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_work_of_one_endpoint_is_claimed_no_faster_than_its_lane_takes_it() {
    due_backlog_is_claimed_as_its_lane_takes_it(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_work_of_one_endpoint_is_claimed_no_faster_than_its_lane_takes_it_on_postgres() {
    let database = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    due_backlog_is_claimed_as_its_lane_takes_it(cluster_env(&database, "due")).await;
}

/// 400 messages scheduled for one moment to a slow endpoint (4 at a time, 50 ms each) come
/// due together, in the store. The node may hold 1,000, but it claims for that endpoint
/// only what its lane takes (twice its cap, and what a window of 8 adds) and defers the
/// rest: it holds a few dozen, not the 400 a claim of everything due would take.
async fn due_backlog_is_claimed_as_its_lane_takes_it(backend: Vec<(String, String)>) {
    const MESSAGES: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (slow, slow_arrivals) = counting_sink(50).await;
    let gateway = small_lanes(dir.path(), &backend, "1000");
    gateway.wait_healthy(&http).await;
    let resources =
        [("/api/v1/app", json!({"name": "m", "uid": "m"})), ("/api/v1/app/m/endpoint", json!({"url": slow}))];
    create_all(&http, &gateway.url, TOKEN, &resources).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let due_at = hookline_server::wire::timestamp(now + 3_000);
    for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(16) {
        let bodies: Vec<_> = chunk
            .iter()
            .map(|n| json!({"eventType": "payment.succeeded", "payload": {"n": n}, "deliverAt": due_at}))
            .collect();
        let publishes = bodies.iter().map(|body| post(&http, format!("{}/api/v1/app/m/msg", gateway.url), TOKEN, body));
        for (status, out) in futures_util::future::join_all(publishes).await {
            assert_eq!(status, 202, "{out}");
        }
    }
    assert!(slow_arrivals.lock().unwrap().is_empty(), "published before their time came");
    let (mut most_held, deadline) = (0.0f64, tokio::time::Instant::now() + PATIENCE);
    while slow_arrivals.lock().unwrap().len() < MESSAGES / 2 {
        assert!(tokio::time::Instant::now() < deadline, "the scheduled messages never went out");
        most_held = most_held.max(counter(&http, &gateway.url, TOKEN, "hookline_deliveries_held").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most_held <= 40.0, "held {most_held} deliveries of one slow endpoint");
    all_arrive_once(&slow_arrivals, MESSAGES, "slow").await;
}

/// What a process killed after its start printed on stdout, and the admin token in it.
fn printed(process: &mut Hookline) -> (String, Option<String>) {
    let mut stdout = String::new();
    std::io::Read::read_to_string(process.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let token = stdout.lines().map(str::trim).find(|l| l.starts_with("hk_admin_")).map(str::to_owned);
    (stdout, token)
}

#[tokio::test]
async fn first_start_prints_an_admin_token_that_works_and_is_not_reissued() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = free_port();
    let mut first = Hookline::start(dir.path(), port, &[]);
    first.wait_healthy(&http).await;
    first.kill9();
    let token = printed(&mut first).1.expect("token printed");
    let mut second = Hookline::start(dir.path(), port, &[]);
    second.wait_healthy(&http).await;
    let ok = http.get(format!("{}/api/v1/app", second.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let bad = http.get(format!("{}/api/v1/app", second.url)).bearer_auth("hk_admin_guess").send().await.unwrap();
    assert_eq!(bad.status(), 401);
    second.kill9();
    let (stdout, again) = printed(&mut second);
    assert_eq!(again, None, "a token is shown only once: {stdout}");
}

/// A data directory whose `secret.key` went missing, or was replaced, is refused before the
/// node listens (exit 78, the file named), and no new key is written over the loss.
#[tokio::test]
async fn a_lost_or_wrong_secret_key_is_refused_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = free_port();
    let mut first = Hookline::start(dir.path(), port, &[]);
    first.wait_healthy(&http).await;
    first.kill9();
    let key_file = dir.path().join("secret.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let serve = || {
        Command::new(env!("CARGO_BIN_EXE_hookline"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    std::fs::remove_file(&key_file).unwrap();
    let out = serve();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("secret.key is missing") && !stdout.contains("listening"), "{stdout} {stderr}");
    assert!(!key_file.exists(), "no new key replaces the lost one");
    std::fs::write(&key_file, "BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ=").unwrap();
    let out = serve();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("does not open this database") && !stdout.contains("listening"), "{stdout} {stderr}");
    std::fs::write(&key_file, key).unwrap();
    let mut again = Hookline::start(dir.path(), port, &[]);
    again.wait_healthy(&http).await;
    again.kill9();
}

/// A second process on a data directory in use is refused before it listens (exit 69, said
/// why), and the first goes on; once the first is gone, the directory is free again.
#[tokio::test]
async fn a_second_process_on_one_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut first = Hookline::start(dir.path(), free_port(), &[]);
    first.wait_healthy(&http).await;
    let out = Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(69), "{stdout} {stderr}");
    assert!(stderr.contains("another Hookline process") && !stdout.contains("listening"), "{stdout} {stderr}");
    let health = http.get(format!("{}/api/v1/health", first.url)).send().await.unwrap();
    assert_eq!(health.status(), 200, "the first goes on");
    first.kill9();
    let mut again = Hookline::start(dir.path(), free_port(), &[]);
    again.wait_healthy(&http).await;
    again.kill9();
}

/// Setting `HOOKLINE_ADMIN_TOKEN` replaces a generated token that leaked: the generated one
/// stops working (the API cannot delete an admin token), also once the setting is gone.
#[tokio::test]
async fn a_configured_admin_token_revokes_the_generated_one() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = free_port();
    let mut first = Hookline::start(dir.path(), port, &[]);
    first.wait_healthy(&http).await;
    first.kill9();
    let generated = printed(&mut first).1.expect("token printed");
    let status = |url: String, token: String| {
        let http = http.clone();
        async move { http.get(format!("{url}/api/v1/app")).bearer_auth(token).send().await.unwrap().status() }
    };
    let mut second = Hookline::start(dir.path(), port, &[("HOOKLINE_ADMIN_TOKEN", "chosen-admin-token")]);
    second.wait_healthy(&http).await;
    assert_eq!(status(second.url.clone(), "chosen-admin-token".into()).await, 200);
    assert_eq!(status(second.url.clone(), generated.clone()).await, 401, "the generated token is revoked");
    second.kill9();
    let (stdout, _) = printed(&mut second);
    assert!(stdout.contains("the one generated at first start is revoked"), "{stdout}");
    // Without the setting again, a new token is generated; the old one stays revoked.
    let mut third = Hookline::start(dir.path(), port, &[]);
    third.wait_healthy(&http).await;
    assert_eq!(status(third.url.clone(), generated.clone()).await, 401);
    third.kill9();
    let fresh = printed(&mut third).1.expect("a new token printed");
    assert_ne!(fresh, generated);
}

#[test]
fn invalid_configuration_exits_78_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (vec![("HOOKLINE_DELIVERY_REQUEST_TIMEOUT_MS", "soon")], "request_timeout_ms"),
        (vec![("HOOKLINE_LISTEN", "not-an-address")], "server.listen"),
        (vec![("HOOKLINE_DATABASE_URL", "mysql://db/hookline")], "database.url"),
        // A shared database needs the one key every node seals with.
        (vec![("HOOKLINE_DATABASE_URL", "postgres://127.0.0.1:1/hookline")], "security.secret_key"),
        // A URL of the right scheme that is no PostgreSQL URL is the configuration's fault.
        (
            vec![
                ("HOOKLINE_DATABASE_URL", "postgres://127.0.0.1:99999/hookline"),
                ("HOOKLINE_SECURITY_SECRET_KEY", "BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ="),
            ],
            "database.url",
        ),
    ];
    for (env, expected) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hookline"));
        command.args(["serve", "--data-dir"]).arg(dir.path());
        for (k, v) in &env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(stderr.contains(expected), "{stderr:?} should name {expected}");
    }
}

#[tokio::test]
async fn migrate_creates_the_postgres_schema_and_exits() {
    let url = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    let migrate = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_hookline")).args(["migrate", "--database-url", url]).output().unwrap()
    };
    for _ in 0..2 {
        let out = migrate(&url);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("schema is at version 15"), "{stdout}");
    }
    let out = migrate("postgres://postgres@127.0.0.1:1/nowhere");
    assert_eq!(out.status.code(), Some(69), "an unreachable database is EX_UNAVAILABLE");
    let out = Command::new(env!("CARGO_BIN_EXE_hookline"))
        .arg("migrate")
        .env_remove("HOOKLINE_DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "migrate needs a database URL");
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut hookline = Hookline::start(dir.path(), free_port(), &[("HOOKLINE_ADMIN_TOKEN", TOKEN)]);
    hookline.wait_healthy(&http).await;
    let status = hookline.terminate();
    assert!(status.success(), "{status:?}");
}

/// A second SIGTERM during a shutdown that waits for an attempt in flight ends the process
/// at once (143), where it was ignored for the whole grace; the attempt stays open.
#[tokio::test]
async fn a_second_sigterm_ends_the_shutdown_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // An endpoint that takes the request and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint_url = format!("http://{}/hook", silent.local_addr().unwrap());
    let env = [("HOOKLINE_ADMIN_TOKEN", TOKEN), ("HOOKLINE_DELIVERY_SHUTDOWN_GRACE_MS", "600000")];
    let mut hookline = Hookline::start(dir.path(), free_port(), &env);
    hookline.wait_healthy(&http).await;
    let api = |path: &str| format!("{}/api/v1/{path}", hookline.url);
    let (status, app) = support::post(&http, api("app"), TOKEN, &json!({"name": "shop"})).await;
    assert_eq!(status, 201, "{app}");
    let app = app["id"].as_str().unwrap().to_owned();
    let (status, answer) =
        support::post(&http, api(&format!("app/{app}/endpoint")), TOKEN, &json!({"url": endpoint_url})).await;
    assert_eq!(status, 201, "{answer}");
    let body = json!({"eventType": "payment.succeeded", "payload": {}});
    let (status, answer) = support::post(&http, api(&format!("app/{app}/msg")), TOKEN, &body).await;
    assert_eq!(status, 202, "{answer}");
    let (_held, _) = tokio::time::timeout(support::PATIENCE, silent.accept()).await.unwrap().unwrap();
    let pid = hookline.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(hookline.child.try_wait().unwrap().is_none(), "the first waits for the attempt in flight");
    let status = hookline.terminate();
    assert_eq!(status.code(), Some(143), "{status:?}");
}

/// Started with a soft open-file limit of 256 under a hard limit of 4,096, the server raises
/// the soft limit to the hard one, sizes the connection and delivery caps nobody set to fit
/// it, and starts without a warning; caps someone set beyond the limit are warned about.
#[tokio::test]
async fn the_open_file_limit_is_raised_and_unset_caps_fit_it() {
    let http = reqwest::Client::new();
    let start = |extra: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("stderr.log");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -Sn 256 && ulimit -Hn 4096 && exec \"$0\" serve --dev --listen 127.0.0.1:{port} --data-dir \"$1\""
            ))
            .arg(env!("CARGO_BIN_EXE_hookline"))
            .arg(dir.path().join("data"))
            .env("HOOKLINE_ADMIN_TOKEN", TOKEN)
            .env("HOOKLINE_LOG_LEVEL", "info")
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        (Hookline::spawn(command, port), log, dir)
    };
    let (mut quiet, log, _dir) = start(&[]);
    quiet.wait_healthy(&http).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", quiet.child.id())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((fields[3], fields[4]), ("4096", "4096"), "soft limit raised to the hard limit: {line}");
    quiet.terminate();
    let stderr = std::fs::read_to_string(&log).unwrap();
    let warnings: Vec<&str> =
        stderr.lines().filter(|l| l.contains("WARN") && !l.contains("WARNING: dev mode")).collect();
    assert!(warnings.is_empty(), "a start on defaults is quiet: {warnings:?}");

    let (mut loud, log, _dir) = start(&[("HOOKLINE_DELIVERY_MAX_IN_FLIGHT", "20000")]);
    loud.wait_healthy(&http).await;
    loud.terminate();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("open-file limit is below"), "a configured cap beyond the limit is named: {stderr}");
}

#[test]
fn verify_explains_why_a_signature_fails() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.txt");
    std::fs::write(&body, "Hello, World!").unwrap();
    let run = |secret: &str| {
        Command::new(env!("CARGO_BIN_EXE_hookline"))
            .args(["verify", "--preset", "github", "--secret", secret, "--body"])
            .arg(&body)
            .args([
                "-H",
                "X-Hub-Signature-256: sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            ])
            .args(["-H", "X-GitHub-Delivery: d-1", "-H", "X-GitHub-Event: push"])
            .output()
            .unwrap()
    };
    let valid = run("It's a Secret to Everybody");
    assert_eq!(valid.status.code(), Some(0));
    // GitHub's delivery id is not signed: the key duplicates are found by is the body's hash.
    assert_eq!(
        String::from_utf8_lossy(&valid.stdout).trim(),
        "valid: event id sha256:dffd6021bb2bd5b0af676290809ec3a53191dd81c7f70a4b28688a362182986f, event type push"
    );
    let invalid = run("wrong");
    assert_eq!(invalid.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&invalid.stdout).starts_with("invalid: bad_signature"));
    let usage = Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args(["verify", "--preset", "paypal", "--secret", "x", "--body"])
        .arg(&body)
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&usage.stderr);
    assert!(stderr.contains("unknown preset `paypal`"), "{stderr}");
    assert!(stderr.contains("coinbase-commerce") && stderr.contains("gocardless"), "every preset is named: {stderr}");
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    logs_hold_no_secret(Vec::new()).await;
}

/// On PostgreSQL too, where tokio-postgres logs each statement's parameters at `debug`:
/// payloads, URLs and addresses would reach the log with every write.
#[tokio::test]
async fn secrets_never_reach_the_logs_on_postgres() {
    let database = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    logs_hold_no_secret(cluster_env(&database, "logs")).await;
}

async fn logs_hold_no_secret(backend: Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hookline.log");
    let port = free_port();
    let mut env = vec![("HOOKLINE_ADMIN_TOKEN", TOKEN), ("HOOKLINE_LOG_LEVEL", "debug")];
    env.extend(backend.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut command = serve_command(&dir.path().join("data"), port, &env);
    command.stderr(std::fs::File::create(&log).unwrap());
    let mut hookline = Hookline::spawn(command, port);
    let http = reqwest::Client::new();
    hookline.wait_healthy(&http).await;
    let url = hookline.url.clone();
    let endpoint_secret = "whsec_c2VjcmV0LW5ldmVyLWxvZ2dlZC1lbmRwb2ludA==";
    let source_secret = "source-secret-never-logged";
    let sink = recording_sink(Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(HashSet::new()))).await;
    let source = json!({"name": "s", "uid": "s", "preset": "github", "secrets": [source_secret], "appId": "m"});
    let resources = [
        ("/api/v1/app", json!({"name": "m", "uid": "m"})),
        ("/api/v1/app/m/endpoint", json!({"url": sink, "secret": endpoint_secret})),
        ("/api/v1/source", source),
    ];
    create_all(&http, &url, TOKEN, &resources).await;
    let message = json!({"eventType": "x", "payload": {"card": "payload-never-logged"}});
    assert_eq!(post(&http, format!("{url}/api/v1/app/m/msg"), TOKEN, &message).await.0, 202);
    let refused =
        http.post(format!("{url}/in/s")).header("x-hub-signature-256", "sha256=00").body("{}").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let wrong_token = http.get(format!("{url}/api/v1/app")).bearer_auth("not-the-token").send().await.unwrap();
    assert_eq!(wrong_token.status(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    hookline.kill9();
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains("DEBUG") || written.contains("INFO"), "the log was written at debug level");
    for secret in [endpoint_secret, source_secret, TOKEN, "not-the-token", "payload-never-logged"] {
        assert!(!written.contains(secret), "a secret reached the log: {secret}");
    }
    // A statement's parameters hold payloads (as bytes), URLs and email addresses.
    assert!(!written.contains("with parameters"), "a statement's parameters reached the log");
}

/// The allocator's arenas are committed on demand (`.cargo/config.toml`): mimalloc's own
/// default on Linux commits them up front, which measured tens of MB more peak memory. The
/// binary's allocator reports its options when asked to be verbose.
#[test]
fn the_allocator_commits_memory_on_demand() {
    let report = |env: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hookline"));
        command
            .arg("config-template")
            .env("MIMALLOC_VERBOSE", "1")
            .env_remove("MIMALLOC_ARENA_EAGER_COMMIT")
            .env_remove("MIMALLOC_EAGER_REGION_COMMIT");
        if let Some(value) = env {
            command.env("MIMALLOC_ARENA_EAGER_COMMIT", value);
        }
        let out = command.output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let built = report(None);
    assert!(built.contains("option 'arena_eager_commit': 0"), "the built-in default: {built}");
    // An operator's setting still wins over the built-in default.
    let overridden = report(Some("2"));
    assert!(overridden.contains("option 'arena_eager_commit': 2"), "the operator's setting: {overridden}");
}
