//! Queue consumers: messages taken from Redis Streams, RabbitMQ and NATS JetStream and
//! published like the publish API's, then acknowledged to the broker.
//!
//! Every broker follows one rule, the HTTP publish's: a message is acknowledged only once
//! it and its deliveries are committed and synced. A message that can never be stored
//! (not JSON, the wrong shape, an unknown application, too large) goes to the broker's
//! dead letter with the reason, then is acknowledged: it never loops. While the store is
//! down or full, the consumer keeps the message and tries again (with backoff, telling
//! the broker it is still working where the broker would otherwise hand it out again); at
//! shutdown what is unstored is left unacknowledged, and the broker redelivers it later.
//! Redeliveries are harmless: the message's `eventId`, or else the broker's message id, is
//! its dedupe key (a broker's id scoped to the broker, the stream or queue and the
//! application), so a merchant never gets one message twice (an AMQP message with neither
//! has no key: one redelivered after a crash is stored again; an `eventId` is looked for
//! among the messages, so one redelivered after retention deleted its message is stored
//! again). A different message under a key already
//! taken is dead-lettered (`conflicting_duplicate`), not taken for a redelivery and dropped.
//! Messages with one `orderingKey` are stored in the broker's order: each waits for the
//! one before it ([`Lanes`]).
//!
//! A broker module implements [`Consumer`]; [`supervise`] reconnects it with backoff. A
//! Kafka consumer would be one more implementation.

pub mod amqp;
pub mod nats;
pub mod redis;

use super::{check, message, submit};
use crate::clock::Clock;
use crate::config::Config;
use crate::dispatch::Engine;
use crate::error::ApiError;
use crate::wire::MessageIn;
use hookline_core::ssrf::AddressPolicy;
use hookline_store::{Message, PublishOutcome};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Messages taken from queues, by consumer and outcome: `stored`, `duplicate`, `refused`
/// (dead-lettered), `retried` (a try while the store was unavailable).
pub const INGESTED: &str = "hookline_ingest_messages_total";
/// Messages waiting in a consumer's queue or taken and not yet acknowledged.
pub const LAG: &str = "hookline_ingest_lag";

/// The longest broker message id used as a dedupe key; a longer one is refused.
const BROKER_ID_BYTES_MAX: usize = 256;

/// What became of one queue message; each broker acknowledges accordingly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Committed with its deliveries, or it had been (`duplicate`): acknowledge.
    Stored { duplicate: bool },
    /// It can never be stored: to the dead letter with the code and reason, then acknowledge.
    Refused { code: &'static str, reason: String },
    /// The store is down or full: leave it to the broker to redeliver.
    Unavailable,
}

impl Handled {
    fn refused(code: &'static str, reason: impl Into<String>) -> Handled {
        // Into broker headers and logs: no control characters (NATS headers refuse CR/LF).
        let reason = reason.into().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        Handled::Refused { code, reason }
    }
}

/// A queue message parsed and checked, before any IO: what to store (parsed once, however
/// often the store must be tried), or why it never can be; and its ordering lane.
pub struct Prepared {
    input: Result<MessageIn, Handled>,
    broker_id: Option<String>,
    /// `(application, orderingKey)` when it has a key: stored after the lane's earlier ones.
    lane: Option<String>,
}

impl Prepared {
    pub fn lane(&self) -> Option<&str> {
        self.lane.as_deref()
    }
}

/// Turns queue messages into committed messages: the ingest pipeline for the consumers.
pub struct Ingestor {
    pub engine: Arc<Engine>,
    pub clock: Arc<dyn Clock>,
    pub addresses: AddressPolicy,
    pub body_bytes_max: usize,
    pub json_depth_max: usize,
}

/// The first wait before storing a message again while the store is unavailable; it
/// doubles up to [`STORE_BACKOFF_MAX`].
pub const STORE_BACKOFF: Duration = Duration::from_millis(200);
const STORE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs `attempt` until it gives an answer, [`STORE_BACKOFF`] apart at first, doubling up to
/// [`STORE_BACKOFF_MAX`]; `None` if the node is stopping first.
pub async fn patiently<T, F, Fut>(stopping: &watch::Receiver<bool>, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut backoff = STORE_BACKOFF;
    let mut stop = stopping.clone();
    loop {
        if let Some(answer) = attempt().await {
            return Some(answer);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
        backoff = (backoff * 2).min(STORE_BACKOFF_MAX);
    }
}

impl Ingestor {
    pub fn new(config: &Config, engine: Arc<Engine>, clock: Arc<dyn Clock>) -> Ingestor {
        Ingestor {
            engine,
            clock,
            addresses: config.address_policy(),
            body_bytes_max: config.api.body_bytes_max,
            json_depth_max: config.api.json_depth_max,
        }
    }

    /// Parses and checks a message without IO (so the receive loop can call it in the
    /// broker's order): the refusal, if it can never be stored, and its ordering lane.
    pub fn prepare(&self, broker_id: Option<&str>, body: &[u8]) -> Prepared {
        let input = if body.len() > self.body_bytes_max {
            let reason = format!("the message is {} bytes; at most {} are accepted", body.len(), self.body_bytes_max);
            Err(Handled::refused("payload_too_large", reason))
        } else if broker_id.is_some_and(|id| id.len() > BROKER_ID_BYTES_MAX) {
            let reason = format!("the broker's message id is over {BROKER_ID_BYTES_MAX} bytes");
            Err(Handled::refused("invalid_message", reason))
        } else {
            self.parse(body).map_err(|e| refusal(&e))
        };
        let lane = input.as_ref().ok().and_then(|i| {
            let key = i.ordering_key.as_ref()?;
            Some(format!("{}\n{key}", i.app.as_deref().unwrap_or_default()))
        });
        Prepared { input, broker_id: broker_id.map(str::to_owned), lane }
    }

    fn parse(&self, body: &[u8]) -> Result<MessageIn, ApiError> {
        let input: MessageIn = crate::api::parse_json(body, self.json_depth_max)?;
        check(&input)?;
        if input.application.is_some() {
            let detail = "an inline application is for the publish API; create the application first";
            return Err(ApiError::field("application", detail));
        }
        if input.app.is_none() {
            return Err(ApiError::field("app", "app (the application's id or uid) is required"));
        }
        // As for the publish API's application tokens: a queue destination publishes with
        // the operator's brokers and credentials, which a producer on a stream is not given.
        if input.callback_url.as_deref().is_some_and(hookline_core::queue_url::is_queue_url) {
            let detail = "a queue URL as callbackUrl needs the admin token: publish it through the API";
            return Err(ApiError::field("callbackUrl", detail));
        }
        Ok(input)
    }

    /// Stores a prepared message of consumer `scope` once: stored, refused, or unavailable.
    pub async fn store(&self, scope: &str, prepared: &Prepared) -> Handled {
        let input = match &prepared.input {
            Ok(input) => input.clone(),
            Err(refused) => return refused.clone(),
        };
        match self.commit(scope, input, prepared.broker_id.as_deref()).await {
            Ok((message, outcome)) => handled(&message, outcome),
            Err(e) => refusal(&e),
        }
    }

    /// Stores a prepared message, trying again while the store is unavailable, until it
    /// is stored or refused; `None` if the node is stopping first (the message is left to
    /// the broker). A consumer keeps the message its own meanwhile (Redis `XCLAIM`,
    /// JetStream progress; RabbitMQ never redelivers a message a live consumer holds).
    pub async fn store_patiently(
        &self,
        status: &ConsumerStatus,
        prepared: &Prepared,
        stopping: &watch::Receiver<bool>,
    ) -> Option<Handled> {
        patiently(stopping, || async {
            let handled = self.store(&status.scope, prepared).await;
            status.count(&handled);
            (handled != Handled::Unavailable).then_some(handled)
        })
        .await
    }

    /// [`Ingestor::store_patiently`] in the message's lane's turn: once every earlier
    /// message of its lane is settled; `None` (left to the broker) if one of them was left
    /// to the broker, or the node is stopping first.
    pub async fn store_in_turn(
        &self,
        status: &ConsumerStatus,
        prepared: &Prepared,
        mut turn: Turn,
        stopping: &watch::Receiver<bool>,
    ) -> Option<Handled> {
        if !turn.wait().await {
            return None;
        }
        let handled = self.store_patiently(status, prepared, stopping).await;
        if handled.is_some() {
            turn.settled();
        }
        handled
    }

    /// Commits `input`; the message made of it, and what became of it.
    async fn commit(
        &self,
        scope: &str,
        input: MessageIn,
        broker_id: Option<&str>,
    ) -> Result<(Arc<Message>, PublishOutcome), ApiError> {
        let app_key = input.app.clone().unwrap_or_default();
        let app = self.engine.catalog.app(&app_key).await.map_err(ApiError::from_store("application"))?;
        // The internal application of the operational webhooks is not one (as in the API).
        if app.id == hookline_store::OPERATIONAL_APP_ID {
            return Err(ApiError::NotFound("application"));
        }
        let message = message(input, app.id.clone(), &self.addresses, self.clock.now_ms())?;
        // With an eventId the store dedupes on it; without, on the broker's id, which the
        // publisher may choose: scoped to the application, so apps never collide.
        let dedupe = match (&message.event_id, broker_id) {
            (None, Some(id)) => Some((format!("queue:{scope}:{}", app.id), id.to_owned())),
            _ => None,
        };
        let message = Arc::new(message);
        let outcome = submit(&self.engine, message.clone(), None, dedupe).await?;
        Ok((message, outcome))
    }
}

/// What a committed (or found) message means to the broker.
fn handled(offered: &Message, outcome: PublishOutcome) -> Handled {
    let key = if offered.event_id.is_some() { "eventId" } else { "broker message id" };
    match outcome {
        PublishOutcome::Created => Handled::Stored { duplicate: false },
        PublishOutcome::Duplicate(earlier) if same_message(offered, &earlier) => Handled::Stored { duplicate: true },
        // The key reused for another message (a publisher's bug, or one id per payment for
        // several events): taking it as a redelivery would drop it unseen.
        PublishOutcome::Duplicate(earlier) => Handled::refused(
            "conflicting_duplicate",
            format!("{} stored a different message under this {key}; not stored again", earlier.id),
        ),
        // Retention deleted the message stored under this key (its key lives the dedupe
        // window), so whether this is a redelivery of it or another message cannot be
        // told: dead-lettered, where a redelivery costs a look, rather than acknowledged,
        // which dropped another message unseen.
        PublishOutcome::DuplicateOfPurged(earlier) => Handled::refused(
            "duplicate_of_purged",
            format!(
                "{earlier} was stored under this {key} and retention has deleted it since: whether this is \
                 the same message cannot be told; not stored again"
            ),
        ),
    }
}

/// Whether a message found under a dedupe key is the one offered again: what its
/// endpoints receive and how it is routed, byte for byte (a redelivery is the same bytes;
/// the id, creation and retention times are the node's own).
fn same_message(offered: &Message, stored: &Message) -> bool {
    offered.event_type == stored.event_type
        && offered.payload == stored.payload
        && offered.channels == stored.channels
        && offered.tags == stored.tags
        && offered.callback_url == stored.callback_url
        && offered.deliver_at == stored.deliver_at
        && offered.ordering_key == stored.ordering_key
}

/// What an error storing a message means: a refusal (the message's fault: it would fail
/// again) or unavailable (the store's: try again).
fn refusal(e: &ApiError) -> Handled {
    match e {
        ApiError::NotFound(_) => Handled::refused("unknown_application", "no application has this id or uid"),
        ApiError::InvalidJson(detail) => Handled::refused("invalid_json", format!("not valid JSON: {detail}")),
        ApiError::Validation(fields) => {
            let reason = fields.iter().map(|f| format!("{}: {}", f.loc.last().map_or("body", |s| s), f.msg));
            Handled::refused("invalid_message", reason.collect::<Vec<_>>().join("; "))
        }
        other => match other.code_and_status() {
            (code, status) if status.is_client_error() => Handled::refused(code, other.to_string()),
            _ => Handled::Unavailable,
        },
    }
}

/// Keeps messages of one ordering lane in the broker's order: a turn is taken in the
/// receive loop, in the order messages arrive, and waits until every earlier turn of its
/// lane has ended (been stored, refused, or given up at shutdown).
#[derive(Default)]
pub struct Lanes {
    tails: Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    taken: AtomicU64,
}

/// One message's place in its lane. Settled (stored or refused), it lets the next one be
/// stored; dropped unsettled (the message left to the broker: a shutdown, a lost session),
/// it makes the next one wait for the broker too, or that one would be stored (and
/// acknowledged) ahead of it.
pub struct Turn {
    after: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
    release: Option<(Arc<Lanes>, String, u64)>,
}

impl Lanes {
    pub fn turn(self: &Arc<Self>, lane: Option<&str>) -> Turn {
        let Some(lane) = lane else { return Turn { after: None, done: None, release: None } };
        let (done, next) = oneshot::channel();
        let number = self.taken.fetch_add(1, Ordering::Relaxed);
        let before = self.tails.lock().expect("lanes lock").insert(lane.to_owned(), (number, next));
        Turn { after: before.map(|(_, r)| r), done: Some(done), release: Some((self.clone(), lane.to_owned(), number)) }
    }
}

impl Turn {
    /// Waits until the earlier messages of the lane are done; false if one of them was
    /// left to the broker unsettled.
    async fn wait(&mut self) -> bool {
        match self.after.take() {
            Some(after) => after.await.is_ok(),
            None => true,
        }
    }

    /// The message is stored or refused: the lane's next may go.
    fn settled(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some((lanes, lane, number)) = self.release.take() {
            let mut tails = lanes.tails.lock().expect("lanes lock");
            if tails.get(&lane).is_some_and(|(last, _)| *last == number) {
                tails.remove(&lane);
            }
        }
    }
}

/// What one consumer is doing, for `GET /api/v1/ingest-queue` and the metrics.
#[derive(Debug)]
pub struct ConsumerStatus {
    /// `redis`, `amqp` or `nats`.
    pub kind: &'static str,
    /// Its metrics label.
    pub name: String,
    /// The dedupe scope of its broker ids: the broker's address and what it reads, so two
    /// brokers with a queue of one name never share ids.
    pub scope: String,
    /// The broker's URL, password masked.
    pub url: String,
    /// What it reads: the stream and group, the queue, the stream and durable consumer.
    pub source: String,
    connected: AtomicBool,
    stored: AtomicU64,
    duplicates: AtomicU64,
    refused: AtomicU64,
    retried: AtomicU64,
    lag: AtomicI64,
    last_error: Mutex<Option<String>>,
}

/// The JSON view of a [`ConsumerStatus`].
#[derive(Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerOut {
    pub kind: &'static str,
    pub name: String,
    pub url: String,
    pub source: String,
    pub connected: bool,
    pub stored: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub retried: u64,
    /// Waiting plus taken-and-unacknowledged, as last read from the broker (-1: not yet read).
    pub lag: i64,
    pub last_error: Option<String>,
}

impl ConsumerStatus {
    pub fn new(kind: &'static str, name: String, url: &str, source: String) -> Arc<ConsumerStatus> {
        Arc::new(ConsumerStatus {
            kind,
            scope: scope(&name, url),
            name,
            url: masked(url),
            source,
            connected: AtomicBool::new(false),
            stored: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            lag: AtomicI64::new(-1),
            last_error: Mutex::new(None),
        })
    }

    /// Counts one handled message.
    pub fn count(&self, handled: &Handled) {
        let (counter, outcome) = match handled {
            Handled::Stored { duplicate: false } => (&self.stored, "stored"),
            Handled::Stored { duplicate: true } => (&self.duplicates, "duplicate"),
            Handled::Refused { .. } => (&self.refused, "refused"),
            Handled::Unavailable => (&self.retried, "retried"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(INGESTED, "consumer" => self.name.clone(), "outcome" => outcome).increment(1);
    }

    pub fn set_lag(&self, lag: u64) {
        let lag = i64::try_from(lag).unwrap_or(i64::MAX);
        self.lag.store(lag, Ordering::Relaxed);
        metrics::gauge!(LAG, "consumer" => self.name.clone()).set(lag as f64);
    }

    pub fn connected(&self) {
        self.connected.store(true, Ordering::Relaxed);
    }

    /// Notes a problem that did not end the connection (a lag read that failed, say).
    pub fn note(&self, error: String) {
        *self.last_error.lock().expect("status lock") = Some(error);
    }

    fn failed(&self, error: String) {
        self.connected.store(false, Ordering::Relaxed);
        *self.last_error.lock().expect("status lock") = Some(error);
    }

    pub fn view(&self) -> ConsumerOut {
        ConsumerOut {
            kind: self.kind,
            name: self.name.clone(),
            url: self.url.clone(),
            source: self.source.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            dead_lettered: self.refused.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            lag: self.lag.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("status lock").clone(),
        }
    }
}

/// What a consumer's dedupe keys are scoped by: what it reads, and the broker's host and
/// port, the scheme's default port when the URL names none (so that nodes which write the
/// URL with and without it key a redelivered message alike; the port read as 0 before),
/// and a RabbitMQ virtual host or Redis database other than the default (queues of one
/// name in two of them shared their keys; the default's keys are as they were).
fn scope(name: &str, url: &str) -> String {
    let address = url::Url::parse(url).ok().map(|u| {
        let default = match u.scheme() {
            "redis" | "rediss" => 6379,
            "amqp" => 5672,
            "amqps" => 5671,
            _ => 4222,
        };
        let within = match (u.scheme(), u.path().trim_start_matches('/')) {
            (_, "") | ("amqp" | "amqps", "%2f" | "%2F") | ("redis" | "rediss", "0") => String::new(),
            ("amqp" | "amqps" | "redis" | "rediss", path) => format!("/{path}"),
            _ => String::new(),
        };
        format!("{}:{}{within}", u.host_str().unwrap_or(""), u.port().unwrap_or(default))
    });
    format!("{name}@{}", address.unwrap_or_default())
}

/// A URL with its user and password (or token) replaced by `***`.
pub fn masked(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("***");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// One broker's consumer. `run` connects, consumes until `stopping` turns true (then
/// returns `Ok`) or the connection fails (then `Err` with why); [`supervise`] calls it
/// again with backoff.
#[async_trait::async_trait]
pub trait Consumer: Send + Sync + 'static {
    fn status(&self) -> &Arc<ConsumerStatus>;
    async fn run(&self, ingestor: &Arc<Ingestor>, stopping: watch::Receiver<bool>) -> Result<(), String>;
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Runs `consumer` until shutdown, reconnecting after each failure with a backoff that
/// doubles up to 10 s and starts over after a connection that lasted a minute.
pub async fn supervise(consumer: Arc<dyn Consumer>, ingestor: Arc<Ingestor>, stopping: watch::Receiver<bool>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = tokio::time::Instant::now();
        let result = consumer.run(&ingestor, stopping.clone()).await;
        if *stopping.borrow() {
            return;
        }
        let status = consumer.status();
        if let Err(error) = result {
            tracing::warn!(consumer = %status.name, %error, "queue consumer disconnected; reconnecting");
            status.failed(error);
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = BACKOFF_MIN;
        }
        let mut stop = stopping.clone();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The configured consumers, running.
pub struct Consumers {
    pub statuses: Vec<Arc<ConsumerStatus>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Consumers {
    /// Starts one task per configured consumer.
    pub fn start(config: &Config, ingestor: Ingestor) -> Consumers {
        // A Redis consumer's default name outlives the process (the node's name, else the
        // host's): a restart reads its own pending entries first. With the process id in
        // it, a restarted node was a new consumer, its pending entries waited to be claimed
        // as another's (a key's later message went first), and each restart left one more.
        let node = config.cluster.node_name.clone().unwrap_or_else(crate::dispatch::claims::host_name);
        let mut consumers: Vec<Arc<dyn Consumer>> = Vec::new();
        consumers
            .extend(config.ingest.redis.iter().map(|c| Arc::new(redis::Redis::new(c, &node)) as Arc<dyn Consumer>));
        consumers.extend(config.ingest.amqp.iter().map(|c| Arc::new(amqp::Amqp::new(c)) as Arc<dyn Consumer>));
        consumers.extend(config.ingest.nats.iter().map(|c| Arc::new(nats::Nats::new(c)) as Arc<dyn Consumer>));
        let (stop, stopping) = watch::channel(false);
        let ingestor = Arc::new(ingestor);
        let statuses = consumers.iter().map(|c| c.status().clone()).collect();
        let tasks = consumers
            .into_iter()
            .map(|consumer| tokio::spawn(supervise(consumer, ingestor.clone(), stopping.clone())))
            .collect();
        Consumers { statuses, tasks, stop }
    }

    /// Stops taking messages; what is being stored finishes and is acknowledged first,
    /// within one `grace` for all; what is left is aborted (and left to the brokers).
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        for task in &mut self.tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
    }
}

impl Drop for Consumers {
    /// Whatever way `run` ends, no consumer outlives it.
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Arc, Lanes};
    use hookline_store::{Bytes, Message, PublishOutcome};

    fn message(payload: &str) -> Message {
        let publish = hookline_store::conformance::publish("app_1", &[], Some("evt_1"), 0);
        Message { payload: Bytes::from(payload.to_owned()), ..(*publish.message).clone() }
    }

    /// A redelivery is a duplicate, another message under its key a conflict, and one whose
    /// earlier message retention deleted is dead-lettered: it was acknowledged as a
    /// redelivery, and another message under a reused key was dropped unseen.
    #[test]
    fn a_message_meeting_a_taken_key_is_a_duplicate_or_dead_lettered() {
        use super::{handled, Handled};
        let offered = message(r#"{"n":1}"#);
        let code = |h: Handled| match h {
            Handled::Stored { duplicate } => format!("stored, duplicate {duplicate}"),
            Handled::Refused { code, .. } => code.to_owned(),
            Handled::Unavailable => "unavailable".to_owned(),
        };
        assert_eq!(code(handled(&offered, PublishOutcome::Created)), "stored, duplicate false");
        let same = PublishOutcome::Duplicate(Box::new(message(r#"{"n":1}"#)));
        assert_eq!(code(handled(&offered, same)), "stored, duplicate true");
        let other = PublishOutcome::Duplicate(Box::new(message(r#"{"n":2}"#)));
        assert_eq!(code(handled(&offered, other)), "conflicting_duplicate");
        let purged = PublishOutcome::DuplicateOfPurged("msg_0".into());
        assert_eq!(code(handled(&offered, purged)), "duplicate_of_purged");
    }

    /// Nodes that write a broker's URL with and without its default port key a message
    /// alike, whatever the credentials; another port or host is another broker.
    #[test]
    fn a_consumers_scope_names_the_default_port() {
        for (with, without) in [
            ("redis://10.0.0.5:6379", "redis://user:pw@10.0.0.5"),
            ("amqp://guest:guest@mq:5672/%2f", "amqp://mq/%2f"),
            ("amqps://mq:5671/%2f", "amqps://mq"),
            ("nats://js:4222", "nats://js"),
        ] {
            assert_eq!(super::scope("q", with), super::scope("q", without), "{with} / {without}");
        }
        assert_eq!(super::scope("q", "redis://10.0.0.5:6379"), "q@10.0.0.5:6379");
        assert_ne!(super::scope("q", "redis://10.0.0.5:6380"), super::scope("q", "redis://10.0.0.5"));
    }

    /// A lane's message goes once every earlier one is settled; one left to the broker
    /// unsettled (a shutdown while the store was down) holds back every later one of its
    /// lane, which would otherwise be stored and acknowledged ahead of it.
    #[tokio::test]
    async fn a_message_left_to_the_broker_holds_back_the_rest_of_its_lane() {
        let lanes = Arc::new(Lanes::default());
        let [mut first, mut second, mut third] = [(); 3].map(|_| lanes.turn(Some("pay_1")));
        let mut other = lanes.turn(Some("pay_2"));
        assert!(first.wait().await, "the head of its lane");
        assert!(other.wait().await, "another lane");
        first.settled();
        assert!(second.wait().await, "its predecessor was stored");
        drop(second);
        assert!(!third.wait().await, "its predecessor was left to the broker");
        drop(third);
        let mut later = lanes.turn(Some("pay_1"));
        assert!(later.wait().await, "a lane whose last turn ended starts afresh");
        assert!(lanes.turn(None).wait().await, "no lane, no wait");
    }

    /// A RabbitMQ virtual host or a Redis database is part of the scope, but for the
    /// default one, whose keys stay as they were.
    #[test]
    fn a_consumers_scope_names_a_virtual_host_or_database_other_than_the_default() {
        let scope = |url| super::scope("q", url);
        for default in ["amqp://mq", "amqp://mq/", "amqp://mq/%2f", "amqp://mq/%2F"] {
            assert_eq!(scope(default), "q@mq:5672", "{default}");
        }
        assert_eq!(scope("amqp://mq/shop-a"), "q@mq:5672/shop-a");
        assert_ne!(scope("amqp://mq/shop-a"), scope("amqp://mq/shop-b"));
        assert_eq!(scope("redis://cache/0"), scope("redis://cache"));
        assert_eq!(scope("redis://cache/2"), "q@cache:6379/2");
        assert_eq!(scope("nats://js/whatever"), "q@js:4222");
    }
}
