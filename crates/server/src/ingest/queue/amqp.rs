//! RabbitMQ (AMQP 0.9.1): a queue consumed with manual acknowledgements and a prefetch.
//! The queue is declared with its dead-letter exchange (a consumer without one refuses
//! to start: `requeue=false` would discard). A refused message is published to that
//! exchange with its reason in the headers (`x-hookline-code`, `x-hookline-reason`),
//! confirmed by the broker, then acknowledged; if that publish fails, it is held and
//! published again with backoff until it goes through, never acknowledged without its dead
//! letter (nor handed back: a quorum queue counts that as a delivery); a dead-letter channel
//! the broker closed (the exchange deleted, say) ends the session, and the next one
//! declares the exchange again. While the store is
//! down a message is kept and stored again with backoff (a requeue would count towards a
//! quorum queue's delivery limit); at shutdown it is handed back with `requeue=true`.

use super::{patiently, Consumer, ConsumerStatus, Handled, Ingestor, Lanes, Prepared, Turn};
use crate::config::AmqpIngest;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const LAG_EVERY: Duration = Duration::from_secs(2);
/// The heartbeat asked for when the URL sets none.
const HEARTBEAT_S: u16 = 10;

pub struct Amqp {
    config: AmqpIngest,
    status: Arc<ConsumerStatus>,
    lanes: Arc<Lanes>,
}

impl Amqp {
    pub fn new(config: &AmqpIngest) -> Amqp {
        let name = format!("amqp:{}", config.queue);
        let source = format!("queue {}", config.queue);
        Amqp {
            status: ConsumerStatus::new("amqp", name, &config.url, source),
            config: config.clone(),
            lanes: Arc::default(),
        }
    }

    fn dead_letter_exchange(&self) -> &str {
        self.config.dead_letter_exchange.as_deref().unwrap_or_default()
    }

    /// Declares the dead-letter exchange (when missing, with `<queue>.dlq` bound to it) and
    /// the queue with it as its `x-dead-letter-exchange`.
    async fn declare(&self, connection: &Connection, channel: &Channel) -> Result<(), String> {
        let dlx = self.dead_letter_exchange();
        // A failed passive declare closes its channel: probe on one of its own.
        let probe = connection.create_channel().await.map_err(text)?;
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        let exists = probe.exchange_declare(dlx.into(), ExchangeKind::Fanout, passive, FieldTable::default()).await;
        if exists.is_err() {
            let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
            channel
                .exchange_declare(dlx.into(), ExchangeKind::Fanout, durable, FieldTable::default())
                .await
                .map_err(|e| format!("declaring the dead-letter exchange {dlx}: {e}"))?;
            let dlq = format!("{}.dlq", self.config.queue);
            channel
                .queue_declare(dlq.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default())
                .await
                .map_err(|e| format!("declaring {dlq}: {e}"))?;
            channel
                .queue_bind(
                    dlq.as_str().into(),
                    dlx.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("binding {dlq}: {e}"))?;
        } else {
            let _ = probe.close(200, "".into()).await;
        }
        // A queue that exists is taken as it is: a declare whose arguments differ from its
        // own (a quorum queue, a length limit, a dead-letter exchange set by a policy) is
        // refused, and the consumer never started. Hookline dead-letters refused messages
        // itself, so it needs nothing of the queue's own.
        let probe = connection.create_channel().await.map_err(text)?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        if probe.queue_declare(self.config.queue.as_str().into(), passive, FieldTable::default()).await.is_ok() {
            let _ = probe.close(200, "".into()).await;
            return Ok(());
        }
        let mut arguments = FieldTable::default();
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dlx.into()));
        channel
            .queue_declare(self.config.queue.as_str().into(), QueueDeclareOptions::durable(), arguments)
            .await
            .map_err(|e| format!("declaring queue {} with x-dead-letter-exchange {dlx}: {e}", self.config.queue))?;
        Ok(())
    }

    /// Messages waiting in the queue, read with a passive declare.
    async fn waiting(&self, channel: &Channel) -> Result<u64, String> {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = channel
            .queue_declare(self.config.queue.as_str().into(), passive, FieldTable::default())
            .await
            .map_err(text)?;
        Ok(u64::from(queue.message_count()))
    }
}

/// What a settling delivery needs besides itself.
struct Settle {
    ingestor: Arc<Ingestor>,
    status: Arc<ConsumerStatus>,
    dead_letters: Channel,
    dlx: String,
    stopping: watch::Receiver<bool>,
}

/// Stores one delivery, in its lane's turn, and answers the broker.
async fn settle(settle: Arc<Settle>, prepared: Prepared, turn: Turn, delivery: Delivery) {
    let handled = settle.ingestor.store_in_turn(&settle.status, &prepared, turn, &settle.stopping).await;
    // A failed ack or nack means the channel is gone: the broker redelivers the message,
    // and its dedupe key makes that harmless.
    match handled {
        Some(Handled::Stored { .. }) => {
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Some(Handled::Refused { code, reason }) => {
            // Never acknowledged without its dead letter, and held meanwhile, not handed
            // back: a quorum queue counts each hand-back as a delivery, and past its limit
            // (20 by default) dropped the message, or dead-lettered it without the reason.
            // Handing it back after a while would not free its prefetch slot either: a
            // requeued message goes back to its place, and comes straight back. So refused
            // messages whose dead letters cannot be published take prefetch slots until
            // they can (the consumer's `lastError` says why; past the whole prefetch, the
            // messages behind them wait: nothing is lost). The session ends when the
            // dead-letter channel is gone, and the broker offers the message again then.
            let dead_lettered = patiently(&settle.stopping, || async {
                match dead_letter(&settle.dead_letters, &settle.dlx, &delivery, code, &reason).await {
                    Ok(()) => Some(()),
                    Err(why) => {
                        settle.status.note(format!("dead-lettering a refused message: {why}"));
                        None
                    }
                }
            });
            match dead_lettered.await {
                Some(()) => {
                    tracing::warn!(consumer = %settle.status.name, code, %reason, "queue message refused; dead-lettered");
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                None => {
                    let _ = delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await;
                }
            }
        }
        Some(Handled::Unavailable) | None => {
            let _ = delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await;
        }
    }
}

/// Publishes a refused message to the dead-letter exchange with its reason, `mandatory`:
/// done once the broker confirmed it and routed it to a queue.
async fn dead_letter(
    channel: &Channel,
    dlx: &str,
    delivery: &Delivery,
    code: &str,
    reason: &str,
) -> Result<(), String> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert("x-hookline-code".into(), AMQPValue::LongString(code.into()));
    headers.insert("x-hookline-reason".into(), AMQPValue::LongString(reason.into()));
    let properties = dead_letter_properties(&delivery.properties, headers);
    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
    let confirm = channel
        .basic_publish(dlx.into(), delivery.routing_key.clone(), options, &delivery.data, properties)
        .await
        .map_err(text)?;
    match confirm.await.map_err(text)? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(format!("the dead-letter exchange {dlx} routes it to no queue")),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err("the broker did not confirm it".to_owned()),
    }
}

/// The refused message's properties on its dead-letter copy, persistent, with `headers`,
/// and without two: `expiration` (RabbitMQ drops it when it dead-letters a message itself;
/// kept, the copy expired from the dead-letter queue) and `user_id` (the broker refuses a
/// publish whose user id is not its connection's user, so a producer's other user id made
/// every try to dead-letter fail).
fn dead_letter_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut kept = BasicProperties::default().with_headers(headers).with_delivery_mode(2);
    if let Some(v) = original.content_type() {
        kept = kept.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        kept = kept.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        kept = kept.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        kept = kept.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        kept = kept.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        kept = kept.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        kept = kept.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        kept = kept.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        kept = kept.with_app_id(v.clone());
    }
    if let Some(v) = original.cluster_id() {
        kept = kept.with_cluster_id(v.clone());
    }
    kept
}

fn text(e: lapin::Error) -> String {
    e.to_string()
}

/// How long the consumer's connect and handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the broker at `uri`, handshake included, within `limit`. lapin's own TCP
/// connect has no timeout and runs on the connection's thread: against a host that drops
/// packets, that thread stayed about two minutes (the kernel's SYN retries) after the
/// caller gave up, and the consumer's connect waited as long. Here the TCP connect ends at
/// `limit` too, so the thread ends with it.
pub async fn connect_within(uri: lapin::uri::AMQPUri, limit: Duration) -> Result<Connection, String> {
    use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
    let runtime = lapin::runtime::default_runtime().map_err(text)?;
    let tcp = async move |uri: lapin::uri::AMQPUri, runtime| {
        let config = OwnedTLSConfig::default();
        let stream = uri.connect_with_config_async(config.as_ref(), &runtime);
        match tokio::time::timeout(limit, stream).await {
            Ok(stream) => stream.map_err(lapin::Error::from),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out").into()),
        }
    };
    let connecting = Connection::connector(uri, runtime, tcp, ConnectionProperties::default());
    match tokio::time::timeout(limit, connecting).await {
        Ok(connected) => connected.map_err(text),
        Err(_) => Err(format!("no connection within {} ms", limit.as_millis())),
    }
}

#[async_trait::async_trait]
impl Consumer for Amqp {
    fn status(&self) -> &Arc<ConsumerStatus> {
        &self.status
    }

    async fn run(&self, ingestor: &Arc<Ingestor>, stopping: watch::Receiver<bool>) -> Result<(), String> {
        let mut uri: lapin::uri::AMQPUri = self.config.url.parse().map_err(|e| format!("the URL: {e}"))?;
        // Heartbeats find a broker gone without a word (a machine lost) in seconds, not minutes.
        uri.query.heartbeat = uri.query.heartbeat.or(Some(HEARTBEAT_S));
        let connection = connect_within(uri.clone(), CONNECT_TIMEOUT).await?;
        // Dead letters are published on a connection of their own: during a memory or disk
        // alarm RabbitMQ stops reading from a connection that publishes, and the consumer's
        // acknowledgements on it went unread until the session timed out and every message
        // it held was handed out again.
        let publishing = connect_within(uri, CONNECT_TIMEOUT).await;
        let outcome = match &publishing {
            Ok(publishing) => self.consume(&connection, publishing, ingestor, stopping).await,
            Err(e) => Err(e.clone()),
        };
        // Closed whatever happened, the consumer's first: a connection left open would hold
        // its unacknowledged messages from every other consumer. Bounded: a broker that
        // stopped answering (or, in an alarm, reading from the publishing one).
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, connection.close(200, "".into())).await;
        if let Ok(publishing) = publishing {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, publishing.close(200, "".into())).await;
        }
        outcome
    }
}

impl Amqp {
    async fn consume(
        &self,
        connection: &Connection,
        publishing: &Connection,
        ingestor: &Arc<Ingestor>,
        mut stopping: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let channel = connection.create_channel().await.map_err(text)?;
        self.declare(connection, &channel).await?;
        let prefetch = u16::try_from(self.config.prefetch).unwrap_or(u16::MAX);
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(text)?;
        let dead_letters = publishing.create_channel().await.map_err(text)?;
        dead_letters.confirm_select(ConfirmSelectOptions::default()).await.map_err(text)?;
        let mut consumer = channel
            .basic_consume(
                self.config.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(text)?;
        self.status.connected();
        let settle_with = Arc::new(Settle {
            ingestor: ingestor.clone(),
            status: self.status.clone(),
            dead_letters,
            dlx: self.dead_letter_exchange().to_owned(),
            stopping: stopping.clone(),
        });
        let mut settling = tokio::task::JoinSet::new();
        let mut lag = tokio::time::interval(LAG_EVERY);
        let outcome = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        // Prepared and given its lane's turn here, in the queue's order; stored
                        // concurrently (the prefetch bounds how many), so the store commits
                        // them together.
                        // An empty (or blank) id is no id (all such messages would share one key).
                        let id = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned());
                        let id = id.filter(|id| !id.trim().is_empty());
                        let prepared = ingestor.prepare(id.as_deref(), &delivery.data);
                        let turn = self.lanes.turn(prepared.lane());
                        settling.spawn(settle(settle_with.clone(), prepared, turn, delivery));
                    }
                    Some(Err(e)) => break Err(text(e)),
                    None => break Err("the broker cancelled the consumer".to_owned()),
                },
                Some(_) = settling.join_next() => {}
                _ = lag.tick() => {
                    // The broker closes a channel on a failed publish (an exchange deleted
                    // meanwhile): refused messages could never be dead-lettered on it again.
                    if !settle_with.dead_letters.status().connected() {
                        break Err("the broker closed the dead-letter channel".to_owned());
                    }
                    // Bounded: an answer lost with its connection must not stall the loop.
                    match tokio::time::timeout(LAG_EVERY * 2, self.waiting(&channel)).await {
                        Ok(Ok(waiting)) => self.status.set_lag(waiting + settling.len() as u64),
                        Ok(Err(e)) => self.status.note(format!("reading the lag: {e}")),
                        Err(_) => break Err("the broker did not answer in time".to_owned()),
                    }
                }
                _ = stopping.changed() => break Ok(()),
            }
        };
        if outcome.is_ok() {
            // Stopping: what is being stored finishes and is answered.
            while settling.join_next().await.is_some() {}
        }
        // Otherwise the channel is gone: the broker hands the unanswered messages out again.
        outcome
    }
}
