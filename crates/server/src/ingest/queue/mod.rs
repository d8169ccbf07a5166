//! Queue consumers: messages taken from Redis Streams, RabbitMQ and NATS JetStream and
//! published like the publish API's, then acknowledged to the broker.
//!
//! Every broker follows one rule, the HTTP publish's: a message is acknowledged only once
//! it and its deliveries are committed and synced. A message that can never be stored
//! (not JSON, the wrong shape, an unknown application, too large) goes to the broker's
//! dead letter with the reason, then is acknowledged: it never loops. A store that is down
//! or full leaves the message unacknowledged, and the broker redelivers it later.
//! Redeliveries are harmless: the message's `eventId`, or else the broker's message id, is
//! its dedupe key, so a merchant never gets one message twice.
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
use hookline_store::PublishOutcome;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Messages taken from queues, by consumer and outcome: `stored`, `duplicate`, `refused`
/// (dead-lettered), `retried` (the store was unavailable; left to the broker).
pub const INGESTED: &str = "hookline_ingest_messages_total";
/// Messages waiting in a consumer's queue or taken and not yet acknowledged.
pub const LAG: &str = "hookline_ingest_lag";

/// What became of one queue message; each broker acknowledges accordingly.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Committed with its deliveries, or it had been (`duplicate`): acknowledge.
    Stored { duplicate: bool },
    /// It can never be stored: to the dead letter with the code and reason, then acknowledge.
    Refused { code: &'static str, reason: String },
    /// The store is down or full: leave it to the broker to redeliver.
    Unavailable,
}

/// Turns queue messages into committed messages: the ingest pipeline for the consumers.
pub struct Ingestor {
    pub engine: Arc<Engine>,
    pub clock: Arc<dyn Clock>,
    pub addresses: AddressPolicy,
    pub body_bytes_max: usize,
    pub json_depth_max: usize,
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

    /// Stores one message received by consumer `scope`. `broker_id` (the broker's message
    /// id) is the dedupe key when the message has no `eventId`.
    pub async fn handle(&self, scope: &str, broker_id: Option<&str>, body: &[u8]) -> Handled {
        if body.len() > self.body_bytes_max {
            let reason = format!("the message is {} bytes; at most {} are accepted", body.len(), self.body_bytes_max);
            return Handled::Refused { code: "payload_too_large", reason };
        }
        match self.store(scope, broker_id, body).await {
            Ok(PublishOutcome::Created) => Handled::Stored { duplicate: false },
            Ok(PublishOutcome::Duplicate(_)) => Handled::Stored { duplicate: true },
            Err(ApiError::NotFound(_)) => {
                let reason = "no application has this id or uid".to_owned();
                Handled::Refused { code: "unknown_application", reason }
            }
            Err(e) => match e.code_and_status() {
                (code, status) if status.is_client_error() => Handled::Refused { code, reason: reason(&e) },
                _ => Handled::Unavailable,
            },
        }
    }

    async fn store(&self, scope: &str, broker_id: Option<&str>, body: &[u8]) -> Result<PublishOutcome, ApiError> {
        let input: MessageIn = crate::api::parse_json(body, self.json_depth_max)?;
        check(&input)?;
        if input.application.is_some() {
            let detail = "an inline application is for the publish API; create the application first";
            return Err(ApiError::field("application", detail));
        }
        let Some(app_key) = input.app.as_deref() else {
            return Err(ApiError::field("app", "app (the application's id or uid) is required"));
        };
        let app = self.engine.catalog.app(app_key).await.map_err(ApiError::from_store("application"))?;
        let message = message(input, app.id.clone(), &self.addresses, self.clock.now_ms())?;
        // With an eventId the store dedupes on it; without, on the broker's id.
        let dedupe = match (&message.event_id, broker_id) {
            (None, Some(id)) => Some((format!("queue:{scope}"), id.to_owned())),
            _ => None,
        };
        submit(&self.engine, Arc::new(message), None, dedupe).await
    }
}

/// An error's whole text, with each invalid field named.
fn reason(e: &ApiError) -> String {
    match e {
        ApiError::Validation(fields) => fields
            .iter()
            .map(|f| format!("{}: {}", f.loc.last().map_or("body", |s| s), f.msg))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// What one consumer is doing, for `GET /api/v1/ingest-queue` and the metrics.
#[derive(Debug)]
pub struct ConsumerStatus {
    /// `redis`, `amqp` or `nats`.
    pub kind: &'static str,
    /// Unique per consumer: the dedupe scope of its broker ids and its metrics label.
    pub name: String,
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

/// A URL with its password replaced by `***`.
pub fn masked(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
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

/// How long to wait before handing a message back while the store is unavailable.
pub const STORE_BACKOFF: Duration = Duration::from_millis(500);

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
        let node = crate::dispatch::claims::node_name(&config.cluster);
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

    /// Stops taking messages; what is being stored finishes and is acknowledged first.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(grace, task).await;
        }
    }
}
