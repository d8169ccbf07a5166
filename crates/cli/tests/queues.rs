//! Queues in and out, against real brokers: Redis Streams, RabbitMQ and NATS JetStream.
//!
//! Consumers: 1,000 messages in make 1,000 deliveries out; the broker delivering every
//! message again makes none; malformed messages land in the dead letter with their reason
//! and the rest flow on; `kill -9` of Hookline while it consumes loses nothing; a broker
//! restarted under it is consumed again. Destinations: deliveries arrive on the queue with
//! signatures that verify, and a stopped broker is retried until it is back.
//!
//! The consumer tests use the machine's brokers (`scripts/ensure-brokers.sh`), each run
//! with streams, queues and subjects of its own; the restart and destination tests start
//! private brokers they can stop.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;
use support::{cluster_env, create_all, free_port, serve_command, until_none_missing, Hookline, SmallDisk, PATIENCE};

const TOKEN: &str = "queues-test-token";
const APP: &str = "shop";

/// One test per broker for a scenario: `on_every_broker!(scenario => redis_test, amqp_test,
/// nats_test)`.
macro_rules! on_every_broker {
    ($scenario:ident => $redis:ident, $amqp:ident, $nats:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis() {
            $scenario(Kind::Redis).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $amqp() {
            $scenario(Kind::Amqp).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $nats() {
            $scenario(Kind::Nats).await;
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Redis,
    Amqp,
    Nats,
}

/// A name no other run or test uses.
fn unique(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!("hk-{what}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// One broker, and the stream or queue this test consumes from on it.
struct Broker {
    kind: Kind,
    url: String,
    /// The stream (Redis, NATS) or queue (RabbitMQ).
    name: String,
}

impl Broker {
    /// The machine's broker of `kind`.
    fn shared(kind: Kind) -> Broker {
        let url = match kind {
            Kind::Redis => env_or("HOOKLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            Kind::Amqp => env_or("HOOKLINE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            Kind::Nats => env_or("HOOKLINE_TEST_NATS_URL", "nats://127.0.0.1:4222"),
        };
        Broker::on(kind, url)
    }

    fn on(kind: Kind, url: String) -> Broker {
        // NATS stream names allow no dots; RabbitMQ and Redis take anything.
        let name = unique(&format!("{kind:?}").to_lowercase()).replace('.', "-");
        Broker { kind, url, name }
    }

    fn subject(&self) -> String {
        format!("{}.in", self.name)
    }

    fn dlq_stream(&self) -> String {
        format!("{}-dlq", self.name)
    }

    /// The `[[ingest.*]]` table that consumes from this broker.
    fn consumer_config(&self) -> String {
        let (url, name) = (&self.url, &self.name);
        match self.kind {
            Kind::Redis => format!(
                "[[ingest.redis]]\nurl = \"{url}\"\nstream = \"{name}\"\ngroup = \"hookline\"\nclaim_idle_ms = 2000\n"
            ),
            Kind::Amqp => {
                format!("[[ingest.amqp]]\nurl = \"{url}\"\nqueue = \"{name}\"\ndead_letter_exchange = \"{name}.dlx\"\n")
            }
            Kind::Nats => format!(
                "[[ingest.nats]]\nurl = \"{url}\"\nstream = \"{name}\"\ndurable = \"hookline\"\nack_wait_ms = 2000\n\
                 dlq_subject = \"{name}.dlq\"\n"
            ),
        }
    }

    /// What the broker needs before Hookline starts: NATS streams belong to their team, so
    /// the test creates the stream and one capturing the dead letters.
    async fn prepare(&self) {
        if self.kind == Kind::Nats {
            let js = async_nats::jetstream::new(async_nats::connect(&self.url).await.unwrap());
            for (name, subject) in
                [(self.name.clone(), self.subject()), (self.dlq_stream(), format!("{}.dlq", self.name))]
            {
                let config = async_nats::jetstream::stream::Config {
                    name,
                    subjects: vec![subject],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                };
                js.create_stream(config).await.unwrap();
            }
        }
    }

    /// Removes what the test made on a shared broker.
    async fn remove(&self) {
        match self.kind {
            Kind::Redis => {
                let mut conn = redis_connection(&self.url).await;
                let _: () = redis::cmd("DEL")
                    .arg(&self.name)
                    .arg(format!("{}:dlq", self.name))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            Kind::Amqp => {
                let (connection, channel) = amqp_channel(&self.url).await;
                for queue in [self.name.clone(), format!("{}.dlq", self.name)] {
                    channel.queue_delete(queue.as_str().into(), Default::default()).await.unwrap();
                }
                let exchange = format!("{}.dlx", self.name);
                channel.exchange_delete(exchange.as_str().into(), Default::default()).await.unwrap();
                connection.close(200, "".into()).await.unwrap();
            }
            Kind::Nats => {
                let js = async_nats::jetstream::new(async_nats::connect(&self.url).await.unwrap());
                js.delete_stream(&self.name).await.unwrap();
                js.delete_stream(self.dlq_stream()).await.unwrap();
            }
        }
    }

    /// Puts each `(body, broker message id)` on the queue, confirmed by the broker. Redis
    /// ids are the entries' own.
    async fn put_all(&self, items: &[(Vec<u8>, String)]) {
        match self.kind {
            Kind::Redis => {
                let mut conn = redis_connection(&self.url).await;
                for chunk in items.chunks(500) {
                    let mut pipe = redis::pipe();
                    for (body, _) in chunk {
                        pipe.cmd("XADD").arg(&self.name).arg("*").arg("message").arg(body).ignore();
                    }
                    let _: () = pipe.query_async(&mut conn).await.unwrap();
                }
            }
            Kind::Amqp => {
                let (connection, channel) = amqp_channel(&self.url).await;
                let mut confirms = Vec::new();
                for (body, id) in items {
                    let properties = lapin::BasicProperties::default().with_message_id(id.as_str().into());
                    // Mandatory: a message the queue cannot take yet would be dropped.
                    let options = lapin::options::BasicPublishOptions { mandatory: true, ..Default::default() };
                    let name = self.name.as_str().into();
                    confirms.push(channel.basic_publish("".into(), name, options, body, properties).await.unwrap());
                }
                for confirm in confirms {
                    assert!(matches!(confirm.await.unwrap(), lapin::Confirmation::Ack(None)));
                }
                connection.close(200, "".into()).await.unwrap();
            }
            Kind::Nats => {
                let js = async_nats::jetstream::new(async_nats::connect(&self.url).await.unwrap());
                let mut acks = Vec::new();
                for (body, id) in items {
                    let mut headers = async_nats::HeaderMap::new();
                    // No id: Hookline's dedupe key is the stream sequence; `-`: an empty id,
                    // which is none.
                    match id.as_str() {
                        "" => {}
                        "-" => headers.insert("Nats-Msg-Id", ""),
                        id => headers.insert("Nats-Msg-Id", id),
                    }
                    acks.push(js.publish_with_headers(self.subject(), headers, body.clone().into()).await.unwrap());
                }
                for ack in acks {
                    ack.await.unwrap();
                }
            }
        }
    }

    /// Makes the broker deliver the same messages again: the Redis group is rewound to
    /// the stream's start, the NATS durable consumer is deleted (Hookline creates it again,
    /// from the stream's start), and for RabbitMQ, which forgets acknowledged messages,
    /// the same messages with the same message ids are put again.
    async fn redeliver(&self, items: &[(Vec<u8>, String)]) {
        match self.kind {
            Kind::Redis => {
                let mut conn = redis_connection(&self.url).await;
                let _: () = redis::cmd("XGROUP")
                    .arg("SETID")
                    .arg(&self.name)
                    .arg("hookline")
                    .arg("0")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            Kind::Amqp => self.put_all(items).await,
            Kind::Nats => {
                let js = async_nats::jetstream::new(async_nats::connect(&self.url).await.unwrap());
                js.get_stream(&self.name).await.unwrap().delete_consumer("hookline").await.unwrap();
            }
        }
    }

    /// The dead letters: each one's code and body.
    async fn dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        match self.kind {
            Kind::Redis => {
                let mut conn = redis_connection(&self.url).await;
                let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(format!("{}:dlq", self.name))
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                entries
                    .ids
                    .iter()
                    .map(|e| {
                        let code: String = e.get("code").unwrap();
                        let reason: String = e.get("reason").unwrap();
                        assert!(!reason.is_empty());
                        (code, e.get("message").unwrap())
                    })
                    .collect()
            }
            Kind::Amqp => {
                let (connection, channel) = amqp_channel(&self.url).await;
                let mut out = Vec::new();
                let queue = format!("{}.dlq", self.name);
                let options = lapin::options::BasicGetOptions { no_ack: true };
                while let Some(got) = channel.basic_get(queue.as_str().into(), options).await.unwrap() {
                    let headers = got.delivery.properties.headers().clone().unwrap();
                    let header = |name: &str| match headers.inner().get(name) {
                        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
                        other => panic!("{name}: {other:?}"),
                    };
                    assert!(!header("x-hookline-reason").is_empty());
                    out.push((header("x-hookline-code"), got.delivery.data.clone()));
                }
                connection.close(200, "".into()).await.unwrap();
                out
            }
            Kind::Nats => {
                let js = async_nats::jetstream::new(async_nats::connect(&self.url).await.unwrap());
                nats_messages(&js, &self.dlq_stream())
                    .await
                    .into_iter()
                    .map(|m| {
                        assert!(!m.headers.get("Hookline-Reason").unwrap().as_str().is_empty());
                        (m.headers.get("Hookline-Code").unwrap().to_string(), m.payload.to_vec())
                    })
                    .collect()
            }
        }
    }
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn amqp_channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(lapin::options::ConfirmSelectOptions::default()).await.unwrap();
    (connection, channel)
}

/// Every message in a JetStream stream, in order.
async fn nats_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for sequence in 1..=last {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            out.push(message);
        }
    }
    out
}

/// A publish body for the queue: payment `n` of the test's application.
fn message(n: u64) -> Vec<u8> {
    json!({"app": APP, "eventType": "payment.succeeded", "payload": {"n": n}}).to_string().into_bytes()
}

/// `count` valid messages (payload `n` from `from`), each with a broker message id.
fn messages(from: u64, count: u64) -> Vec<(Vec<u8>, String)> {
    (from..from + count).map(|n| (message(n), format!("m-{n}"))).collect()
}

/// Like `messages`, each with 2 KB of padding in its payload.
fn padded_messages(from: u64, count: u64) -> Vec<(Vec<u8>, String)> {
    let pad = "x".repeat(2_000);
    (from..from + count)
        .map(|n| {
            let body = json!({"app": APP, "eventType": "payment.succeeded", "payload": {"n": n, "pad": pad}});
            (body.to_string().into_bytes(), format!("m-{n}"))
        })
        .collect()
}

/// Deliveries by the payload's `n`, so a test can tell lost from duplicated.
type Arrivals = Arc<Mutex<HashMap<u64, u32>>>;

async fn payload_sink() -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let counted = arrivals.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let counted = counted.clone();
        async move {
            let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if let Some(n) = payload["n"].as_u64() {
                *counted.lock().unwrap().entry(n).or_default() += 1;
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, arrivals)
}

/// Payloads `0..count` that never arrived, and extra copies of any that did.
fn lost_and_duplicated(arrivals: &Arrivals, count: u64) -> (usize, u32) {
    let seen = arrivals.lock().unwrap();
    let lost = (0..count).filter(|n| !seen.contains_key(n)).count();
    (lost, seen.values().map(|n| n - 1).sum())
}

/// `hookline serve` with `config` as its config file, in `dir`.
struct Gateway {
    process: Hookline,
    port: u16,
}

impl Gateway {
    fn start(dir: &Path, config: &str) -> Gateway {
        Gateway::start_with(dir, config, free_port(), &[])
    }

    /// Starts with `env` added (a node of a cluster, or limits).
    fn start_with(dir: &Path, config: &str, port: u16, env: &[(String, String)]) -> Gateway {
        let file = dir.join("hookline.toml");
        let retries = "[delivery]\nretry_policy = { firstDelayMs = 200, maxDelayMs = 1000, horizonMs = 600000 }\n";
        std::fs::write(&file, format!("{retries}{config}")).unwrap();
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("HOOKLINE_ADMIN_TOKEN", TOKEN));
        let mut command = serve_command(&dir.join("data"), port, &env);
        command.arg("--config").arg(&file);
        // The gateway's log, for a failing run: `HOOKLINE_TEST_LOG_DIR=/tmp/x cargo test ...`.
        if let Ok(logs) = std::env::var("HOOKLINE_TEST_LOG_DIR") {
            let log = std::fs::File::create(Path::new(&logs).join(format!("gateway-{port}.log"))).unwrap();
            command.stderr(log).env("HOOKLINE_LOG_LEVEL", "info,hookline_server=debug");
        }
        Gateway { process: Hookline::spawn(command, port), port }
    }

    fn url(&self) -> &str {
        &self.process.url
    }

    /// The test's application, with one endpoint at `endpoint_url`; the endpoint's id.
    async fn setup(&self, http: &reqwest::Client, endpoint_url: &str) -> String {
        self.process.wait_healthy(http).await;
        create_all(http, self.url(), TOKEN, &[("/api/v1/app", json!({"name": "Shop", "uid": APP}))]).await;
        let (status, endpoint) = support::post(
            http,
            format!("{}/api/v1/app/{APP}/endpoint", self.url()),
            TOKEN,
            &json!({"url": endpoint_url}),
        )
        .await;
        assert_eq!(status, 201, "{endpoint}");
        endpoint["id"].as_str().unwrap().to_owned()
    }

    /// Waits until the gateway's consumer is connected (it has declared what it reads:
    /// a RabbitMQ queue, say, which takes no message before it exists).
    async fn until_consuming(&self, http: &reqwest::Client) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let consumer = self.consumer(http).await;
            if consumer["connected"] == true {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the consumer never connected: {consumer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The one consumer's view at `GET /api/v1/ingest-queue`.
    async fn consumer(&self, http: &reqwest::Client) -> Value {
        let list: Value = http
            .get(format!("{}/api/v1/ingest-queue", self.url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["data"][0].clone()
    }

    /// The gateway's connection threads of lapin's (one per RabbitMQ connection).
    fn lapin_threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.process.child.id()))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
            .filter(|name| name.trim() == "lapin-io-loop")
            .count()
    }

    /// Waits until the consumer says it did not start, its `lastError` holding `why`.
    async fn until_refused_to_start(&self, http: &reqwest::Client, why: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let consumer = self.consumer(http).await;
            if consumer["lastError"].as_str().is_some_and(|e| e.contains(why)) {
                assert_eq!(consumer["connected"], false, "{consumer}");
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "no word of {why:?}: {consumer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the consumer's `field` count reaches `at_least`.
    async fn until_counted(&self, http: &reqwest::Client, field: &str, at_least: u64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let consumer = self.consumer(http).await;
            if consumer[field].as_u64().unwrap_or(0) >= at_least {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{field} never reached {at_least}: {consumer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn until_all_arrived(arrivals: &Arrivals, count: u64) {
    until_none_missing(PATIENCE, "messages not delivered", || {
        let seen = arrivals.lock().unwrap();
        (0..count).filter(|n| !seen.contains_key(n)).count()
    })
    .await;
}

/// A gateway in `dir` delivering to `sink`, consuming a fresh stream or queue of the
/// machine's broker of `kind`; returned once its consumer is connected.
async fn consuming(http: &reqwest::Client, kind: Kind, dir: &Path, sink: &str) -> (Broker, Gateway) {
    consuming_with(http, kind, dir, sink, &[]).await
}

/// [`consuming`], the gateway started with `env` added.
async fn consuming_with(
    http: &reqwest::Client,
    kind: Kind,
    dir: &Path,
    sink: &str,
    env: &[(String, String)],
) -> (Broker, Gateway) {
    let broker = Broker::shared(kind);
    broker.prepare().await;
    let gateway = Gateway::start_with(dir, &broker.consumer_config(), free_port(), env);
    gateway.setup(http, sink).await;
    gateway.until_consuming(http).await;
    (broker, gateway)
}

/// 1,000 messages in, 1,000 deliveries out; four refused ones dead-lettered with their
/// reasons; then the broker delivers everything again, and nothing new is delivered.
async fn consumes_each_message_once(kind: Kind) {
    let http = reqwest::Client::new();
    let (sink, arrivals) = payload_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let (broker, gateway) = consuming(&http, kind, dir.path(), &sink).await;

    let mut valid = messages(0, 1_000);
    if kind == Kind::Nats {
        // Half without `Nats-Msg-Id`: their dedupe key is the stream sequence. A quarter of
        // those with an empty one, which is no key either (not one key they all share).
        valid.iter_mut().skip(1).step_by(2).for_each(|(_, id)| id.clear());
        valid.iter_mut().skip(3).step_by(4).for_each(|(_, id)| *id = "-".into());
    }
    // One with an eventId: its key is that, not the broker's id.
    let keyed = json!({"app": APP, "eventType": "payment.succeeded", "eventId": "evt-10", "payload": {"n": 10}});
    valid[10].0 = keyed.to_string().into_bytes();
    let mut items = valid.clone();
    items.insert(500, (b"not json".to_vec(), "bad-1".into()));
    let stranger = json!({"app": "no-such-app", "eventType": "payment.succeeded", "payload": {"n": 5000}});
    items.insert(700, (stranger.to_string().into_bytes(), "bad-2".into()));
    // An unknown field whose name holds a line break: the reason quotes it, and no broker
    // header may carry one.
    let odd = br#"{"app": "shop", "eventType": "payment.succeeded", "payload": {}, "a\nb": 1}"#;
    items.insert(900, (odd.to_vec(), "bad-3".into()));
    // The internal application of the operational webhooks takes no message from a queue
    // (it would reach the operators' endpoints as a forged alert).
    let internal = json!({"app": "app_00000000000operational", "eventType": "endpoint.disabled", "payload": {}});
    items.insert(950, (internal.to_string().into_bytes(), "bad-4".into()));
    // A queue as callbackUrl takes the admin token (the operator's brokers and
    // credentials), which a producer on the stream does not have.
    let queued = json!({"app": APP, "eventType": "payment.succeeded", "payload": {}, "callbackUrl": "redis://127.0.0.1:6379/elsewhere"});
    items.insert(975, (queued.to_string().into_bytes(), "bad-6".into()));
    broker.put_all(&items).await;

    until_all_arrived(&arrivals, 1_000).await;
    let mut codes = dead_letter_codes(&broker, Vec::new(), 5).await;
    codes.sort();
    let expected = ["invalid_json", "invalid_message", "invalid_message", "unknown_application", "unknown_application"];
    assert_eq!(codes, expected);

    broker.redeliver(&valid).await;
    gateway.until_counted(&http, "duplicates", 1_000).await;
    // Another message under a key taken (the eventId of message 10): dead-lettered, not
    // dropped as a redelivery.
    let reused = json!({"app": APP, "eventType": "payment.refunded", "eventId": "evt-10", "payload": {"n": 10}});
    broker.put_all(&[(reused.to_string().into_bytes(), "bad-5".into())]).await;
    let codes = dead_letter_codes(&broker, codes, 6).await;
    assert!(codes.iter().any(|c| c == "conflicting_duplicate"), "{codes:?}");
    // A duplicate is counted once its commit found the earlier message: nothing more to send.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (lost, duplicated) = lost_and_duplicated(&arrivals, 1_000);
    let consumer = gateway.consumer(&http).await;
    println!("{kind:?}: 1000 in, lost {lost}, duplicated {duplicated}, consumer {consumer}");
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(arrivals.lock().unwrap().len(), 1_000, "only the test's payloads arrive");
    assert_eq!(consumer["stored"], 1_000, "{consumer}");
    assert_eq!(consumer["connected"], true, "{consumer}");
    drop(gateway);
    broker.remove().await;
}

/// The codes of the broker's dead letters once there are `count`, `seen` being those read
/// before (RabbitMQ's are taken off the queue as they are read).
async fn dead_letter_codes(broker: &Broker, seen: Vec<String>, count: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut codes = seen;
    while codes.len() < count {
        assert!(tokio::time::Instant::now() < deadline, "dead letters: {codes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let read = broker.dead_letters().await.into_iter().map(|(code, _)| code);
        codes = if broker.kind == Kind::Amqp { codes.into_iter().chain(read).collect() } else { read.collect() };
    }
    codes
}

on_every_broker!(
    consumes_each_message_once =>
    redis_consumer_stores_each_message_once,
    amqp_consumer_stores_each_message_once,
    nats_consumer_stores_each_message_once
);

/// A refused Redis entry whose dead letter cannot be written (the dead-letter key holds a
/// string here; an ACL or a full Redis do the same) stays pending, and the consumer goes
/// on with the entries after it: it ended its session, read that entry first on the next,
/// and never got past it. Once the dead-letter stream can be written, it is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_dead_letter_that_cannot_be_written_holds_nothing_up() {
    let http = reqwest::Client::new();
    let (sink, arrivals) = payload_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::shared(Kind::Redis);
    let dlq = format!("{}:dlq", broker.name);
    let mut conn = redis_connection(&broker.url).await;
    let _: () = redis::cmd("SET").arg(&dlq).arg("not a stream").query_async(&mut conn).await.unwrap();
    let gateway = Gateway::start_with(dir.path(), &broker.consumer_config(), free_port(), &[]);
    gateway.setup(&http, &sink).await;
    gateway.until_consuming(&http).await;
    let mut first = vec![(b"not json".to_vec(), String::new())];
    first.extend(messages(0, 10));
    broker.put_all(&first).await;
    until_all_arrived(&arrivals, 10).await;
    broker.put_all(&messages(10, 10)).await;
    until_all_arrived(&arrivals, 20).await;
    let pending: Vec<redis::Value> =
        redis::cmd("XPENDING").arg(&broker.name).arg("hookline").query_async(&mut conn).await.unwrap();
    assert_eq!(pending[0], redis::Value::Int(1), "the refused entry is left with the broker");
    let _: () = redis::cmd("DEL").arg(&dlq).query_async(&mut conn).await.unwrap();
    assert_eq!(dead_letter_codes(&broker, Vec::new(), 1).await, ["invalid_json"]);
    let (lost, duplicated) = lost_and_duplicated(&arrivals, 20);
    assert_eq!((lost, duplicated), (0, 0));
    drop(gateway);
    broker.remove().await;
}

/// Messages of one `orderingKey` reach the endpoint in the order they were put on the
/// queue, although the consumer stores a batch concurrently.
async fn keeps_the_order_of_each_key(kind: Kind) {
    let http = reqwest::Client::new();
    let arrived: Arc<Mutex<Vec<u64>>> = Arc::default();
    let recorded = arrived.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let recorded = recorded.clone();
        async move {
            let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            recorded.lock().unwrap().extend(payload["n"].as_u64());
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let (broker, gateway) = consuming(&http, kind, dir.path(), &sink).await;
    const KEYS: u64 = 10;
    let items: Vec<(Vec<u8>, String)> = (0..500)
        .map(|n| {
            let body = json!({"app": APP, "eventType": "payment.succeeded", "orderingKey": format!("pay_{}", n % KEYS), "payload": {"n": n}});
            (body.to_string().into_bytes(), format!("m-{n}"))
        })
        .collect();
    broker.put_all(&items).await;
    until_none_missing(PATIENCE, "ordered messages not delivered", || {
        500usize.saturating_sub(arrived.lock().unwrap().len())
    })
    .await;
    let arrived = arrived.lock().unwrap().clone();
    for key in 0..KEYS {
        let of_key: Vec<u64> = arrived.iter().copied().filter(|n| n % KEYS == key).collect();
        let mut sorted = of_key.clone();
        sorted.sort();
        assert_eq!(of_key, sorted, "{kind:?}: key pay_{key} arrived out of order");
    }
    drop(gateway);
    broker.remove().await;
}

on_every_broker!(
    keeps_the_order_of_each_key =>
    redis_consumer_keeps_the_order_of_each_key,
    amqp_consumer_keeps_the_order_of_each_key,
    nats_consumer_keeps_the_order_of_each_key
);

/// `kill -9` of Hookline while it consumes 2,000 messages: after a restart every message
/// arrives; copies are bounded by what was in flight to the endpoint at the kill.
async fn survives_kill_9(kind: Kind) {
    // A delivery holds its endpoint's slot until its attempt is recorded, so no more than
    // this many can have been sent and not recorded at the kill.
    const IN_FLIGHT: u32 = 64;
    let limits = [("HOOKLINE_DELIVERY_ENDPOINT_MAX_IN_FLIGHT".to_owned(), IN_FLIGHT.to_string())];
    let http = reqwest::Client::new();
    let (sink, arrivals) = payload_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut gateway) = consuming_with(&http, kind, dir.path(), &sink, &limits).await;
    broker.put_all(&messages(0, 2_000)).await;
    until_none_missing(PATIENCE, "deliveries before the kill", || {
        300usize.saturating_sub(arrivals.lock().unwrap().len())
    })
    .await;
    gateway.process.kill9();
    let before = arrivals.lock().unwrap().len();
    let gateway = Gateway::start_with(dir.path(), &broker.consumer_config(), gateway.port, &limits);
    gateway.process.wait_healthy(&http).await;
    until_all_arrived(&arrivals, 2_000).await;
    let (lost, duplicated) = lost_and_duplicated(&arrivals, 2_000);
    println!("{kind:?} kill -9: {before} delivered before the kill, lost {lost}, duplicated {duplicated}");
    assert_eq!(lost, 0);
    // Only deliveries sent and not yet recorded at the kill can arrive twice.
    assert!(duplicated <= IN_FLIGHT, "{duplicated} copies, more than could be in flight ({IN_FLIGHT})");
    if kind == Kind::Redis {
        // The process started again is the same consumer of the group (named after the
        // host, not the process), so it read its own pending entries first.
        let mut conn = redis_connection(&broker.url).await;
        let consumers: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&broker.name)
            .arg("hookline")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(consumers.len(), 1, "one consumer across the restart");
    }
    drop(gateway);
    broker.remove().await;
}

on_every_broker!(
    survives_kill_9 =>
    redis_consumer_survives_kill_9,
    amqp_consumer_survives_kill_9,
    nats_consumer_survives_kill_9
);

/// The store fails under a consumer (its disk is full): nothing is acknowledged, the
/// broker keeps the messages, and once there is room again every one is delivered.
async fn a_full_disk_leaves_messages_with_the_broker(kind: Kind) {
    let http = reqwest::Client::new();
    let disk = SmallDisk::mount("8m");
    let (sink, arrivals) = payload_sink().await;
    let (broker, gateway) = consuming(&http, kind, disk.path(), &sink).await;
    broker.put_all(&padded_messages(0, 20)).await;
    until_all_arrived(&arrivals, 20).await;
    // Their attempts recorded before the disk fills.
    tokio::time::sleep(Duration::from_millis(500)).await;
    disk.fill();
    broker.put_all(&padded_messages(20, 300)).await;
    gateway.until_counted(&http, "retried", 1).await;
    if kind == Kind::Redis {
        // Entries being stored never look idle to the group, however long the store is
        // down: another node's XAUTOCLAIM (at claim_idle_ms, 2 s here) would take them.
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        let mut conn = redis_connection(&broker.url).await;
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&broker.name)
            .arg("hookline")
            .arg("-")
            .arg("+")
            .arg(1_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!pending.is_empty(), "entries wait while the disk is full");
        let idlest = pending.iter().map(|(_, _, idle, _)| *idle).max().unwrap();
        assert!(idlest < 2_000, "an entry being stored was idle {idlest} ms of {} pending", pending.len());
    }
    if kind == Kind::Nats {
        // Messages being stored, or waiting behind an earlier one of their ordering key,
        // are reported in progress within `ack_wait` (2 s here), however long the store is
        // down: JetStream would hand them to another node. (Reported only at each retry of
        // the store, up to 5 s apart, they were handed out again.)
        tokio::time::sleep(Duration::from_millis(5_000)).await;
        let js = async_nats::jetstream::new(async_nats::connect(&broker.url).await.unwrap());
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            js.get_stream(&broker.name).await.unwrap().get_consumer("hookline").await.unwrap();
        let info = consumer.info().await.unwrap();
        assert!(info.num_ack_pending > 0, "messages wait while the disk is full: {info:?}");
        assert_eq!(info.num_redelivered, 0, "messages being stored were handed out again: {info:?}");
    }
    disk.free();
    until_all_arrived(&arrivals, 320).await;
    let (lost, duplicated) = lost_and_duplicated(&arrivals, 320);
    let consumer = gateway.consumer(&http).await;
    println!("{kind:?} full disk: lost {lost}, duplicated {duplicated}, consumer {consumer}");
    assert_eq!(lost, 0);
    assert!(duplicated <= 20, "{duplicated} copies");
    assert_eq!(consumer["deadLettered"], 0, "a full disk is not the message's fault: {consumer}");
    drop(gateway);
    broker.remove().await;
}

on_every_broker!(
    a_full_disk_leaves_messages_with_the_broker =>
    redis_consumer_waits_out_a_full_disk,
    amqp_consumer_waits_out_a_full_disk,
    nats_consumer_waits_out_a_full_disk
);

/// Two nodes on one PostgreSQL database consume one Redis group: each message is taken by
/// one node (each is a consumer of the group under its own name) and delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgresql_share_a_redis_group() {
    let http = reqwest::Client::new();
    let database = hookline_store::postgres::scratch::fresh_database().await.unwrap();
    let broker = Broker::shared(Kind::Redis);
    let (sink, arrivals) = payload_sink().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Gateway::start_with(dir_a.path(), &broker.consumer_config(), free_port(), &cluster_env(&database, "a"));
    let b = Gateway::start_with(dir_b.path(), &broker.consumer_config(), free_port(), &cluster_env(&database, "b"));
    a.setup(&http, &sink).await;
    b.process.wait_healthy(&http).await;
    a.until_consuming(&http).await;
    b.until_consuming(&http).await;
    broker.put_all(&messages(0, 1_000)).await;
    until_all_arrived(&arrivals, 1_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (by_a, by_b) = (a.consumer(&http).await, b.consumer(&http).await);
    println!("two nodes: a {by_a}, b {by_b}");
    assert_eq!(lost_and_duplicated(&arrivals, 1_000), (0, 0));
    let (stored_a, stored_b) = (by_a["stored"].as_u64().unwrap(), by_b["stored"].as_u64().unwrap());
    assert_eq!(stored_a + stored_b, 1_000, "each message stored by one node");
    assert!(stored_a > 0 && stored_b > 0, "both nodes consume: {stored_a} and {stored_b}");
    let mut conn = redis_connection(&broker.url).await;
    let consumers: Vec<Vec<redis::Value>> =
        redis::cmd("XINFO").arg("CONSUMERS").arg(&broker.name).arg("hookline").query_async(&mut conn).await.unwrap();
    assert_eq!(consumers.len(), 2, "one consumer of the group per node, named after it");
    drop((a, b));
    broker.remove().await;
}

/// A broker of the test's own, on a free port with its data in a temporary directory, so
/// it can be stopped and started again.
struct PrivateBroker {
    kind: Kind,
    port: u16,
    /// Redis only: its `requirepass`.
    password: Option<&'static str>,
    dir: tempfile::TempDir,
    node: String,
    child: Option<Child>,
}

impl PrivateBroker {
    async fn start(kind: Kind) -> PrivateBroker {
        PrivateBroker::start_with(kind, None).await
    }

    async fn start_with(kind: Kind, password: Option<&'static str>) -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        if kind == Kind::Amqp {
            // RabbitMQ's server script runs the node as the `rabbitmq` user.
            std::fs::write(dir.path().join("plugins"), "[].").unwrap();
            let chown = Command::new("chown").arg("-R").arg("rabbitmq").arg(dir.path()).status().unwrap();
            assert!(chown.success());
        }
        let node = format!("hookline-test-{}-{}@localhost", std::process::id(), free_port());
        let mut broker = PrivateBroker { kind, port: free_port(), password, dir, node, child: None };
        broker.run().await;
        broker
    }

    fn url(&self) -> String {
        match self.kind {
            Kind::Redis => match self.password {
                Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
                None => format!("redis://127.0.0.1:{}", self.port),
            },
            Kind::Amqp => format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// Starts the server and waits until it takes connections.
    async fn run(&mut self) {
        let (dir, port) = (self.dir.path(), self.port.to_string());
        let mut command = match self.kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--bind", "127.0.0.1", "--port", &port, "--save", "", "--appendonly", "yes"])
                    .args(["--appendfsync", "always", "--dir"])
                    .arg(dir);
                if let Some(password) = self.password {
                    c.args(["--requirepass", password]);
                }
                c
            }
            Kind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"]).arg(dir);
                c
            }
            Kind::Amqp => {
                let mut c = Command::new("rabbitmq-server");
                c.env("RABBITMQ_NODENAME", &self.node)
                    .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                    .env("RABBITMQ_NODE_PORT", &port)
                    .env("RABBITMQ_DIST_PORT", free_port().to_string())
                    .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
                    .env("RABBITMQ_LOG_BASE", dir.join("log"))
                    .env("RABBITMQ_FEATURE_FLAGS_FILE", dir.join("feature_flags"))
                    .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("plugins"))
                    .env("RABBITMQ_CONFIG_FILE", dir.join("none"));
                c
            }
        };
        self.child = Some(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !self.ready().await {
            assert!(tokio::time::Instant::now() < deadline, "{:?} never started", self.kind);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the server takes clients. RabbitMQ listens before it has booted: a client
    /// that only connects may be answered with bytes that are not AMQP, so it must open a
    /// whole connection.
    async fn ready(&self) -> bool {
        match self.kind {
            Kind::Amqp => {
                let url = self.url();
                let connect = lapin::Connection::connect(&url, Default::default());
                match tokio::time::timeout(Duration::from_secs(5), connect).await {
                    Ok(Ok(connection)) => connection.close(200, "".into()).await.is_ok(),
                    _ => false,
                }
            }
            Kind::Redis | Kind::Nats => tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok(),
        }
    }

    /// Stops the server cleanly (its data stays) and waits for it to exit.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if self.kind == Kind::Amqp {
            let _ = Command::new("rabbitmqctl").args(["-n", &self.node, "stop"]).stdout(Stdio::null()).status();
        } else {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        let _ = child.wait();
    }

    async fn restart(&mut self) {
        self.stop();
        self.run().await;
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A broker restarted under a consuming Hookline: what was put before and after arrives.
async fn resumes_after_broker_restart(kind: Kind) {
    let http = reqwest::Client::new();
    let mut private = PrivateBroker::start(kind).await;
    let broker = Broker::on(kind, private.url());
    broker.prepare().await;
    let (sink, arrivals) = payload_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(dir.path(), &broker.consumer_config());
    gateway.setup(&http, &sink).await;
    gateway.until_consuming(&http).await;
    broker.put_all(&messages(0, 100)).await;
    until_all_arrived(&arrivals, 100).await;
    private.restart().await;
    broker.put_all(&messages(100, 100)).await;
    until_all_arrived(&arrivals, 200).await;
    let consumer = gateway.consumer(&http).await;
    assert_eq!(consumer["connected"], true, "{consumer}");
    assert_eq!(lost_and_duplicated(&arrivals, 200), (0, 0));
}

on_every_broker!(
    resumes_after_broker_restart =>
    redis_consumer_resumes_after_a_broker_restart,
    amqp_consumer_resumes_after_a_broker_restart,
    nats_consumer_resumes_after_a_broker_restart
);

/// One message as it arrived on a destination queue.
struct Published {
    payload: Vec<u8>,
    headers: HashMap<String, String>,
}

/// Where a destination test's endpoint points, and what arrived there.
struct Destination {
    kind: Kind,
    broker_url: String,
    name: String,
}

impl Destination {
    async fn prepare(kind: Kind, broker_url: String) -> Destination {
        let name = unique("dest");
        match kind {
            Kind::Redis => {}
            Kind::Amqp => {
                let (connection, channel) = amqp_channel(&broker_url).await;
                let options = lapin::options::QueueDeclareOptions::durable();
                channel.queue_declare(name.as_str().into(), options, Default::default()).await.unwrap();
                connection.close(200, "".into()).await.unwrap();
            }
            Kind::Nats => {
                let js = async_nats::jetstream::new(async_nats::connect(&broker_url).await.unwrap());
                let config = async_nats::jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("{name}.out")],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                };
                js.create_stream(config).await.unwrap();
            }
        }
        Destination { kind, broker_url, name }
    }

    /// The endpoint URL: the broker's address with the stream, queue or subject.
    fn endpoint_url(&self) -> String {
        let address =
            self.broker_url.rsplit('@').next().unwrap().trim_start_matches("redis://").trim_start_matches("nats://");
        let address = address.split('/').next().unwrap();
        match self.kind {
            Kind::Redis => format!("redis://{address}/{}", self.name),
            Kind::Amqp => format!("amqp://{address}/?routingKey={}", self.name),
            Kind::Nats => format!("nats://{address}/{}.out", self.name),
        }
    }

    /// Everything published so far (RabbitMQ: taken off the queue).
    async fn received(&self) -> Vec<Published> {
        match self.kind {
            Kind::Redis => {
                let mut conn = redis_connection(&self.broker_url).await;
                let entries: redis::streams::StreamRangeReply =
                    redis::cmd("XRANGE").arg(&self.name).arg("-").arg("+").query_async(&mut conn).await.unwrap();
                entries
                    .ids
                    .iter()
                    .map(|e| {
                        let headers = ["webhook-id", "webhook-timestamp", "webhook-signature", "content-type"]
                            .iter()
                            .filter_map(|h| Some((h.to_string(), e.get::<String>(h)?)))
                            .collect();
                        Published { payload: e.get("payload").unwrap(), headers }
                    })
                    .collect()
            }
            Kind::Amqp => {
                let (connection, channel) = amqp_channel(&self.broker_url).await;
                let mut out = Vec::new();
                let options = lapin::options::BasicGetOptions { no_ack: true };
                while let Some(got) = channel.basic_get(self.name.as_str().into(), options).await.unwrap() {
                    let properties = &got.delivery.properties;
                    let mut headers: HashMap<String, String> = properties
                        .headers()
                        .clone()
                        .unwrap()
                        .inner()
                        .iter()
                        .filter_map(|(k, v)| match v {
                            lapin::types::AMQPValue::LongString(s) => Some((k.to_string(), s.to_string())),
                            _ => None,
                        })
                        .collect();
                    let message_id = properties.message_id().as_ref().unwrap().to_string();
                    assert_eq!(headers["webhook-id"], message_id, "message_id is the message's id");
                    headers.insert("content-type".into(), properties.content_type().as_ref().unwrap().to_string());
                    out.push(Published { payload: got.delivery.data.clone(), headers });
                }
                connection.close(200, "".into()).await.unwrap();
                out
            }
            Kind::Nats => {
                let js = async_nats::jetstream::new(async_nats::connect(&self.broker_url).await.unwrap());
                nats_messages(&js, &self.name)
                    .await
                    .into_iter()
                    .map(|m| {
                        let headers = m.headers.iter().map(|(k, v)| (k.to_string(), v[0].to_string())).collect();
                        Published { payload: m.payload.to_vec(), headers }
                    })
                    .collect()
            }
        }
    }
}

/// Verifies a Standard Webhooks signature: HMAC-SHA256 over `id.timestamp.payload`.
fn signature_valid(secret: &str, published: &Published) -> bool {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let (id, timestamp) = (&published.headers["webhook-id"], &published.headers["webhook-timestamp"]);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&published.payload);
    let expected = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    published.headers["webhook-signature"].split(' ').any(|s| s == expected)
}

async fn publish(http: &reqwest::Client, gateway: &Gateway, n: u64) -> String {
    let body = json!({"eventType": "payment.succeeded", "payload": {"n": n}});
    let (status, answer) = support::post(http, format!("{}/api/v1/app/{APP}/msg", gateway.url()), TOKEN, &body).await;
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

/// Deliveries to a queue endpoint arrive with the payload unchanged and a signature that
/// verifies; while the broker is down attempts fail, and once it is back they arrive.
async fn delivers_to_a_queue(kind: Kind) {
    let http = reqwest::Client::new();
    // The Redis one wants a password, which the endpoint URL cannot carry: the gateway has
    // it in `delivery.broker_credentials`.
    let password = (kind == Kind::Redis).then_some("s3cret-queue-password");
    let mut private = PrivateBroker::start_with(kind, password).await;
    let destination = Destination::prepare(kind, private.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = match password {
        Some(password) => format!("[delivery.broker_credentials]\n\"127.0.0.1:{}\" = \":{password}\"\n", private.port),
        None => String::new(),
    };
    let gateway = Gateway::start(dir.path(), &credentials);
    let endpoint = gateway.setup(&http, &destination.endpoint_url()).await;
    let secret: Value = http
        .get(format!("{}/api/v1/app/{APP}/endpoint/{endpoint}/secret", gateway.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = secret["key"].as_str().unwrap().to_owned();
    // Queue destinations use the operator's brokers and credentials: not for app tokens.
    let (status, token) =
        support::post(&http, format!("{}/api/v1/app/{APP}/token", gateway.url()), TOKEN, &json!({})).await;
    assert_eq!(status, 201, "{token}");
    let scoped = token["token"].as_str().unwrap();
    let body = json!({"url": destination.endpoint_url()});
    let (status, refused) =
        support::post(&http, format!("{}/api/v1/app/{APP}/endpoint", gateway.url()), scoped, &body).await;
    assert_eq!((status, refused["code"].as_str()), (403, Some("forbidden")), "{refused}");
    // Nor as a message's callback URL.
    let body = json!({"eventType": "payment.succeeded", "payload": {}, "callbackUrl": destination.endpoint_url()});
    let (status, refused) =
        support::post(&http, format!("{}/api/v1/app/{APP}/msg", gateway.url()), scoped, &body).await;
    assert_eq!((status, refused["code"].as_str()), (403, Some("forbidden")), "{refused}");

    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(publish(&http, &gateway, n).await);
    }
    let mut arrived: Vec<Published> = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while arrived.len() < 20 {
        assert!(tokio::time::Instant::now() < deadline, "{} of 20 published", arrived.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let received = destination.received().await;
        match kind {
            Kind::Amqp => arrived.extend(received),
            _ => arrived = received,
        }
    }
    for (n, published) in arrived.iter().enumerate() {
        assert!(signature_valid(&secret, published), "{kind:?}: the signature of message {n} does not verify");
        assert_eq!(published.headers["content-type"], "application/json");
        let payload: Value = serde_json::from_slice(&published.payload).unwrap();
        assert!(ids.contains(&published.headers["webhook-id"]));
        assert!(payload["n"].as_u64().unwrap() < 20);
    }

    // An operator's resend arrives again: on a JetStream stream too, within its duplicate
    // window (the stream dropped it as a repeat, and it was recorded as delivered).
    let resend = format!("{}/api/v1/app/{APP}/msg/{}/endpoint/{endpoint}/resend", gateway.url(), ids[0]);
    let (status, answer) = support::post(&http, resend, TOKEN, &json!({})).await;
    assert!((200..300).contains(&status), "{answer}");
    let copies_in = |received: &[Published]| received.iter().filter(|p| p.headers["webhook-id"] == ids[0]).count();
    let mut copies = copies_in(&arrived);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while copies < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{kind:?}: the resend never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let received = destination.received().await;
        copies = match kind {
            Kind::Amqp => copies + copies_in(&received),
            _ => copies_in(&received),
        };
    }

    // The broker goes away: attempts fail and are retried, then delivered once it is back.
    private.stop();
    let late = publish(&http, &gateway, 20).await;
    let attempts = format!("{}/api/v1/app/{APP}/attempt/msg/{late}", gateway.url());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let list: Value = http.get(&attempts).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
        if list["data"].as_array().is_some_and(|a| !a.is_empty()) {
            assert_ne!(list["data"][0]["status"], 0, "a stopped broker cannot take a message: {list}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no attempt while the broker was down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    private.run().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let received = destination.received().await;
        if let Some(published) = received.iter().find(|p| p.headers["webhook-id"] == late) {
            assert!(signature_valid(&secret, published));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never delivered after the broker came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

on_every_broker!(
    delivers_to_a_queue =>
    deliveries_reach_a_redis_stream,
    deliveries_reach_a_rabbitmq_queue,
    deliveries_reach_a_nats_stream
);

/// A NATS destination whose server went away: the attempt made meanwhile fails, and what
/// it gave the client is not sent later, when the server is back (async-nats keeps it and
/// sends it on reconnecting, after the attempt was recorded as failed: the stream stored
/// it then, and the retry, outside the stream's duplicate window, again). The next attempt
/// (a resend here) connects anew and is stored once.
#[tokio::test]
async fn a_failed_nats_attempt_is_not_sent_when_the_server_returns() {
    let http = reqwest::Client::new();
    let mut private = PrivateBroker::start(Kind::Nats).await;
    let destination = Destination::prepare(Kind::Nats, private.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(dir.path(), "");
    let endpoint = gateway.setup(&http, &destination.endpoint_url()).await;
    let patch = json!({"retryPolicy": {"delaysMs": [600_000]}});
    let patched = http
        .patch(format!("{}/api/v1/app/{APP}/endpoint/{endpoint}", gateway.url()))
        .bearer_auth(TOKEN)
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    // The link is up, then the server goes.
    let first = publish(&http, &gateway, 0).await;
    let stored = |id: String| {
        let destination = &destination;
        async move { destination.received().await.iter().filter(|p| p.headers["webhook-id"] == id).count() }
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while stored(first.clone()).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the first message never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    private.stop();
    let late = publish(&http, &gateway, 1).await;
    let attempts = format!("{}/api/v1/app/{APP}/attempt/msg/{late}", gateway.url());
    let attempted = || async {
        let list: Value = http.get(&attempts).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
        list["data"].as_array().map_or(0, Vec::len)
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while attempted().await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no attempt while the server was down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    private.run().await;
    // Longer than async-nats waits between reconnects (4 s at most).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(stored(late.clone()).await, 0, "the failed attempt's message was sent when the server returned");
    let resend = format!("{}/api/v1/app/{APP}/msg/{late}/endpoint/{endpoint}/resend", gateway.url());
    let (status, answer) = support::post(&http, resend, TOKEN, &json!({})).await;
    assert_eq!(status, 202, "{answer}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while stored(late.clone()).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the resend never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored(late).await, 1);
}

/// A refused message whose dead letter cannot be published (its exchange routes nowhere
/// yet) is held until it can be, not handed back to the queue: a quorum queue counts each
/// hand-back as a delivery and, past its `x-delivery-limit`, dropped the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_dead_letter_routed_nowhere_is_held_not_handed_back() {
    let http = reqwest::Client::new();
    let (sink, arrivals) = payload_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::shared(Kind::Amqp);
    let (connection, channel) = amqp_channel(&broker.url).await;
    let (dlx, dlq) = (format!("{}.dlx", broker.name), format!("{}.dlq", broker.name));
    let durable = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
    let fanout = lapin::ExchangeKind::Fanout;
    channel.exchange_declare(dlx.as_str().into(), fanout, durable, Default::default()).await.unwrap();
    let mut quorum = lapin::types::FieldTable::default();
    quorum.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
    quorum.insert("x-delivery-limit".into(), lapin::types::AMQPValue::LongInt(2));
    let options = lapin::options::QueueDeclareOptions::durable();
    channel.queue_declare(broker.name.as_str().into(), options, quorum).await.unwrap();
    let gateway = Gateway::start_with(dir.path(), &broker.consumer_config(), free_port(), &[]);
    gateway.setup(&http, &sink).await;
    gateway.until_consuming(&http).await;
    let mut items = vec![(b"not json".to_vec(), "bad-1".to_owned())];
    items.extend(messages(0, 5));
    broker.put_all(&items).await;
    until_all_arrived(&arrivals, 5).await;
    // Long enough for many hand-backs 200 ms apart, had it been handed back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    channel.queue_declare(dlq.as_str().into(), options, Default::default()).await.unwrap();
    let bind = lapin::options::QueueBindOptions::default();
    channel.queue_bind(dlq.as_str().into(), dlx.as_str().into(), "".into(), bind, Default::default()).await.unwrap();
    connection.close(200, "".into()).await.unwrap();
    assert_eq!(dead_letter_codes(&broker, Vec::new(), 1).await, ["invalid_json"]);
    drop(gateway);
    broker.remove().await;
}

/// RabbitMQ closes a channel whose publish names a missing exchange: a consumer whose
/// dead-letter exchange was deleted under it connects again (declaring the exchange anew)
/// and dead-letters what it refused. The first version kept the closed channel, and the
/// refused message went round the queue every 200 ms until a restart.
#[tokio::test]
async fn an_amqp_consumer_declares_its_dead_letter_exchange_again() {
    let http = reqwest::Client::new();
    let (sink, _arrivals) = payload_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let (broker, gateway) = consuming(&http, Kind::Amqp, dir.path(), &sink).await;
    let (connection, channel) = amqp_channel(&broker.url).await;
    let dlx = format!("{}.dlx", broker.name);
    channel.exchange_delete(dlx.as_str().into(), Default::default()).await.unwrap();
    connection.close(200, "".into()).await.unwrap();
    broker.put_all(&[(b"not json".to_vec(), "bad-1".into())]).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let codes: Vec<String> = broker.dead_letters().await.into_iter().map(|(code, _)| code).collect();
        if codes.iter().any(|code| code == "invalid_json") {
            break;
        }
        let consumer = gateway.consumer(&http).await;
        assert!(tokio::time::Instant::now() < deadline, "never dead-lettered: {codes:?}, {consumer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(gateway);
    broker.remove().await;
}

/// A NATS consumer does not start while no stream captures its dead-letter subject, and says
/// why: a refused message could be kept nowhere, and was offered again every 200 ms for
/// ever (or dropped by JetStream at `max_deliver`).
#[tokio::test]
async fn a_nats_consumer_without_a_dead_letter_stream_says_so() {
    let http = reqwest::Client::new();
    let broker = Broker::shared(Kind::Nats);
    broker.prepare().await;
    let js = async_nats::jetstream::new(async_nats::connect(&broker.url).await.unwrap());
    js.delete_stream(broker.dlq_stream()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(dir.path(), &broker.consumer_config(), free_port(), &[]);
    gateway.process.wait_healthy(&http).await;
    gateway.until_refused_to_start(&http, "no stream captures").await;
    drop(gateway);
    js.delete_stream(&broker.name).await.unwrap();
}

/// A NATS consumer does not start on a durable made before with a delivery limit, or with
/// acks other than explicit, and says why: JetStream would stop offering a message after
/// that many deliveries, stored or not (each stop or crash of a node during a store outage
/// is one), or count it acknowledged before it is stored (when handed out, with `none`; with
/// a later message's ack, with `all`).
#[tokio::test]
async fn a_nats_durable_with_a_delivery_limit_or_implicit_acks_is_refused() {
    use async_nats::jetstream::consumer::AckPolicy;
    let http = reqwest::Client::new();
    for (policy, max_deliver, said) in [
        (AckPolicy::Explicit, 3, "has max_deliver 3"),
        (AckPolicy::None, -1, "has ack_policy None"),
        (AckPolicy::All, -1, "has ack_policy All"),
    ] {
        let broker = Broker::shared(Kind::Nats);
        broker.prepare().await;
        let js = async_nats::jetstream::new(async_nats::connect(&broker.url).await.unwrap());
        let stream = js.get_stream(&broker.name).await.unwrap();
        let made_before = async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("hookline".into()),
            ack_policy: policy,
            max_deliver,
            ..Default::default()
        };
        stream.create_consumer(made_before).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let gateway = Gateway::start_with(dir.path(), &broker.consumer_config(), free_port(), &[]);
        gateway.process.wait_healthy(&http).await;
        gateway.until_refused_to_start(&http, said).await;
        drop(gateway);
        broker.remove().await;
    }
}

/// A RabbitMQ queue that exists with arguments of its own (a length limit here; a quorum
/// queue, or a dead-letter exchange set by a policy, alike) is consumed as it is: the
/// consumer declared it again with only `x-dead-letter-exchange`, RabbitMQ refused the
/// different arguments, and the consumer never started.
#[tokio::test]
async fn an_existing_amqp_queue_with_arguments_of_its_own_is_consumed() {
    let http = reqwest::Client::new();
    let (sink, arrivals) = payload_sink().await;
    let broker = Broker::shared(Kind::Amqp);
    broker.prepare().await;
    let (connection, channel) = amqp_channel(&broker.url).await;
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert("x-max-length".into(), lapin::types::AMQPValue::LongLongInt(100_000));
    let durable = lapin::options::QueueDeclareOptions::durable();
    channel.queue_declare(broker.name.as_str().into(), durable, arguments).await.unwrap();
    connection.close(200, "".into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(dir.path(), &broker.consumer_config(), free_port(), &[]);
    gateway.setup(&http, &sink).await;
    gateway.until_consuming(&http).await;
    broker.put_all(&messages(0, 20)).await;
    until_all_arrived(&arrivals, 20).await;
    assert_eq!(lost_and_duplicated(&arrivals, 20), (0, 0));
    drop(gateway);
    broker.remove().await;
}

/// A NATS durable made before with a cap on a pull (`max_batch`, which a server's
/// `max_request_batch` puts on every new durable) is pulled within it: a pull of the
/// configured batch (256) was refused every time, and nothing was consumed.
#[tokio::test]
async fn a_nats_durable_capping_its_pulls_is_consumed() {
    let http = reqwest::Client::new();
    let (sink, arrivals) = payload_sink().await;
    let broker = Broker::shared(Kind::Nats);
    broker.prepare().await;
    let js = async_nats::jetstream::new(async_nats::connect(&broker.url).await.unwrap());
    let made_before = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some("hookline".into()),
        ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
        max_deliver: -1,
        max_batch: 10,
        ack_wait: Duration::from_secs(2),
        ..Default::default()
    };
    js.get_stream(&broker.name).await.unwrap().create_consumer(made_before).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(dir.path(), &broker.consumer_config(), free_port(), &[]);
    gateway.setup(&http, &sink).await;
    gateway.until_consuming(&http).await;
    broker.put_all(&messages(0, 50)).await;
    until_all_arrived(&arrivals, 50).await;
    assert_eq!(lost_and_duplicated(&arrivals, 50), (0, 0));
    drop(gateway);
    broker.remove().await;
}

/// Redis entries whose field names are not UTF-8 stop nothing: one beside its message
/// field is stored, one without it is dead-lettered, and the entries after them are
/// consumed. (The typed reply failed whole on such a name, the entry stayed pending, and
/// the consumer read it again and failed, for good.)
#[tokio::test]
async fn a_redis_field_name_not_utf8_stops_nothing() {
    let http = reqwest::Client::new();
    let (sink, arrivals) = payload_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let (broker, gateway) = consuming(&http, Kind::Redis, dir.path(), &sink).await;
    let mut conn = redis_connection(&broker.url).await;
    let odd: &[u8] = b"\xff\xfe";
    let _: String = redis::cmd("XADD")
        .arg(&broker.name)
        .arg("*")
        .arg("message")
        .arg(message(0))
        .arg(odd)
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String =
        redis::cmd("XADD").arg(&broker.name).arg("*").arg(odd).arg(message(1)).query_async(&mut conn).await.unwrap();
    broker.put_all(&messages(2, 5)).await;
    until_none_missing(PATIENCE, "messages not delivered", || {
        let seen = arrivals.lock().unwrap();
        [0, 2, 3, 4, 5, 6].iter().filter(|n| !seen.contains_key(n)).count()
    })
    .await;
    let codes = dead_letter_codes(&broker, Vec::new(), 1).await;
    assert_eq!(codes, ["invalid_json"]);
    let (lost, duplicated) = lost_and_duplicated(&arrivals, 7);
    assert_eq!((lost, duplicated), (1, 0), "message 1 had no message field: dead-lettered, not delivered");
    drop(gateway);
    broker.remove().await;
}

/// A RabbitMQ endpoint pointed at an exchange that does not exist fails alone: beside it,
/// another endpoint on the same broker gets every delivery at its first attempt. (They
/// shared one channel, which RabbitMQ closes on such a publish: the other's publishes on
/// it failed, were retried, and some arrived twice.)
#[tokio::test]
async fn a_missing_exchange_fails_no_other_rabbitmq_destination() {
    let http = reqwest::Client::new();
    let broker = Broker::shared(Kind::Amqp);
    let destination = Destination::prepare(Kind::Amqp, broker.url.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(dir.path(), "");
    let good = gateway.setup(&http, &destination.endpoint_url()).await;
    let missing =
        destination.endpoint_url().replace("/?routingKey=", &format!("/{}-missing?routingKey=", destination.name));
    let (status, bad) =
        support::post(&http, format!("{}/api/v1/app/{APP}/endpoint", gateway.url()), TOKEN, &json!({"url": missing}))
            .await;
    assert_eq!(status, 201, "{bad}");
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(publish(&http, &gateway, n).await);
    }
    let mut arrived = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while arrived.len() < 100 {
        assert!(tokio::time::Instant::now() < deadline, "{} of 100 arrived", arrived.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
        arrived.extend(destination.received().await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    arrived.extend(destination.received().await);
    assert_eq!(arrived.len(), 100, "deliveries arrived twice");
    for id in &ids {
        let url = format!("{}/api/v1/app/{APP}/attempt/msg/{id}", gateway.url());
        let attempts: Value = http.get(&url).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
        let to_good: Vec<&Value> =
            attempts["data"].as_array().unwrap().iter().filter(|a| a["endpointId"] == good.as_str()).collect();
        assert_eq!(to_good.len(), 1, "message {id}: attempts {attempts}");
        assert_eq!(to_good[0]["status"], 0, "message {id}: attempts {attempts}");
    }
}

/// A refused RabbitMQ message with a time to live is dead-lettered without it: RabbitMQ
/// drops `expiration` when it dead-letters a message itself, and the copy kept it, so it
/// expired from the dead-letter queue (a refused message, acknowledged, then gone).
#[tokio::test]
async fn an_amqp_dead_letter_outlives_the_messages_time_to_live() {
    let http = reqwest::Client::new();
    let (sink, _arrivals) = payload_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let (broker, gateway) = consuming(&http, Kind::Amqp, dir.path(), &sink).await;
    let (connection, channel) = amqp_channel(&broker.url).await;
    let properties = lapin::BasicProperties::default().with_message_id("bad-ttl".into()).with_expiration("1500".into());
    let options = lapin::options::BasicPublishOptions { mandatory: true, ..Default::default() };
    let confirm =
        channel.basic_publish("".into(), broker.name.as_str().into(), options, b"not json", properties).await.unwrap();
    assert!(matches!(confirm.await.unwrap(), lapin::Confirmation::Ack(None)));
    connection.close(200, "".into()).await.unwrap();
    gateway.until_counted(&http, "deadLettered", 1).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let kept = broker.dead_letters().await;
    assert_eq!(kept.len(), 1, "the dead letter expired with the message's time to live");
    assert_eq!((kept[0].0.as_str(), &kept[0].1[..]), ("invalid_json", &b"not json"[..]));
    drop(gateway);
    broker.remove().await;
}

/// A port whose listener never accepts and whose accept queue is full: the kernel drops
/// every further SYN, as a host behind a firewall that drops packets does. The streams
/// returned fill the queue and must be kept.
fn black_hole() -> (std::net::SocketAddr, tokio::net::TcpListener, Vec<std::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let address = listener.local_addr().unwrap();
    let mut held = Vec::new();
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(300)) {
        held.push(stream);
        assert!(held.len() < 16, "the accept queue never filled");
    }
    (address, listener, held)
}

/// A RabbitMQ host that drops packets: the consumer's connect gives up within its 10 s
/// (the kernel's SYN retries alone took about two minutes), says so in `lastError`, and
/// no connection thread of lapin's outlives its try.
#[tokio::test]
async fn an_amqp_consumer_gives_up_on_a_host_that_drops_packets() {
    let http = reqwest::Client::new();
    let (address, _listener, _held) = black_hole();
    let config = format!(
        "[[ingest.amqp]]\nurl = \"amqp://guest:guest@{address}/%2f\"\nqueue = \"payments\"\n\
         dead_letter_exchange = \"payments.dlx\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(dir.path(), &config, free_port(), &[]);
    gateway.process.wait_healthy(&http).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let consumer = gateway.consumer(&http).await;
        let error = consumer["lastError"].as_str().unwrap_or_default();
        if error.contains("timed out") || error.contains("no connection within") {
            assert_eq!(consumer["connected"], false, "{consumer}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the connect never gave up: {consumer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The try that gave up took its thread with it; the next try (after a backoff) has one.
    let threads = gateway.lapin_threads();
    assert!(threads <= 1, "{threads} lapin connection threads");
}

/// Deliveries to a RabbitMQ host that drops packets fail at `delivery.connect_timeout_ms`,
/// and each try's connection thread ends with it (it stayed about two minutes, one more
/// with every retry).
#[tokio::test]
async fn deliveries_to_an_amqp_host_that_drops_packets_leave_no_threads() {
    let http = reqwest::Client::new();
    let (address, _listener, _held) = black_hole();
    let dir = tempfile::tempdir().unwrap();
    let env = [("HOOKLINE_DELIVERY_CONNECT_TIMEOUT_MS".to_owned(), "300".to_owned())];
    let gateway = Gateway::start_with(dir.path(), "", free_port(), &env);
    gateway.setup(&http, &format!("amqp://{address}/?routingKey=payments")).await;
    publish(&http, &gateway, 1).await;
    // Retries every 200 ms to 1 s (the test's policy): several tries meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let threads = gateway.lapin_threads();
    assert!(threads <= 1, "{threads} lapin connection threads");
}

/// A consumer for RabbitMQ refuses to start without a dead-letter exchange: `requeue=false`
/// would otherwise discard refused messages.
#[test]
fn an_amqp_consumer_without_a_dead_letter_exchange_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hookline.toml");
    std::fs::write(&file, "[[ingest.amqp]]\nurl = \"amqp://127.0.0.1:5672/%2f\"\nqueue = \"payments\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{}", free_port()), "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dead_letter_exchange is required"), "{stderr}");
}
