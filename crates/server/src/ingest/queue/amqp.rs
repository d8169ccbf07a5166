//! RabbitMQ (AMQP 0.9.1): a queue consumed with manual acknowledgements and a prefetch.
//! The queue is declared with its dead-letter exchange (a consumer without one refuses
//! to start: `requeue=false` would discard). A refused message is published to that
//! exchange with its reason in the headers (`x-hookline-code`, `x-hookline-reason`),
//! confirmed by the broker, then acknowledged; if that publish fails, it is rejected
//! with `requeue=false`, which dead-letters it without the reason. A message that could
//! not be stored (the store down) is handed back with `requeue=true` after a backoff.

use super::{Consumer, ConsumerStatus, Handled, Ingestor, STORE_BACKOFF};
use crate::config::AmqpIngest;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Confirmation;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const LAG_EVERY: Duration = Duration::from_secs(2);

pub struct Amqp {
    config: AmqpIngest,
    status: Arc<ConsumerStatus>,
}

impl Amqp {
    pub fn new(config: &AmqpIngest) -> Amqp {
        let name = format!("amqp:{}", config.queue);
        let source = format!("queue {}", config.queue);
        Amqp { status: ConsumerStatus::new("amqp", name, &config.url, source), config: config.clone() }
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
        let mut arguments = FieldTable::default();
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dlx.into()));
        channel
            .queue_declare(self.config.queue.as_str().into(), QueueDeclareOptions::durable(), arguments)
            .await
            .map_err(|e| {
                format!(
                    "declaring queue {} with x-dead-letter-exchange {dlx} (an existing queue must have been \
                     declared durable with the same dead-letter exchange): {e}",
                    self.config.queue
                )
            })?;
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

/// Stores one delivery and answers the broker.
async fn settle(ingestor: &Ingestor, status: &ConsumerStatus, dead_letters: &Channel, dlx: &str, delivery: Delivery) {
    let id = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned());
    let handled = ingestor.handle(&status.name, id.as_deref(), &delivery.data).await;
    status.count(&handled);
    // A failed ack or nack means the channel is gone: the broker redelivers the message,
    // and its dedupe key makes that harmless.
    match handled {
        Handled::Stored { .. } => {
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Handled::Refused { code, reason } => {
            tracing::warn!(consumer = %status.name, code, %reason, "queue message refused; dead-lettered");
            if dead_letter(dead_letters, dlx, &delivery, code, &reason).await {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            } else {
                let _ = delivery.nack(BasicNackOptions { requeue: false, multiple: false }).await;
            }
        }
        Handled::Unavailable => {
            tokio::time::sleep(STORE_BACKOFF).await;
            let _ = delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await;
        }
    }
}

/// Publishes a refused message to the dead-letter exchange with its reason; true once the
/// broker confirmed it.
async fn dead_letter(channel: &Channel, dlx: &str, delivery: &Delivery, code: &str, reason: &str) -> bool {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert("x-hookline-code".into(), AMQPValue::LongString(code.into()));
    headers.insert("x-hookline-reason".into(), AMQPValue::LongString(reason.into()));
    let properties = delivery.properties.clone().with_headers(headers).with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            dlx.into(),
            delivery.routing_key.clone(),
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        )
        .await;
    match confirm {
        Ok(confirm) => matches!(confirm.await, Ok(Confirmation::Ack(_))),
        Err(_) => false,
    }
}

fn text(e: lapin::Error) -> String {
    e.to_string()
}

#[async_trait::async_trait]
impl Consumer for Amqp {
    fn status(&self) -> &Arc<ConsumerStatus> {
        &self.status
    }

    async fn run(&self, ingestor: &Arc<Ingestor>, mut stopping: watch::Receiver<bool>) -> Result<(), String> {
        let connection = Connection::connect(&self.config.url, ConnectionProperties::default()).await.map_err(text)?;
        let channel = connection.create_channel().await.map_err(text)?;
        self.declare(&connection, &channel).await?;
        let prefetch = u16::try_from(self.config.prefetch).unwrap_or(u16::MAX);
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(text)?;
        let dead_letters = connection.create_channel().await.map_err(text)?;
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
        let unacked = Arc::new(AtomicU64::new(0));
        let mut settling = tokio::task::JoinSet::new();
        let mut lag = tokio::time::interval(LAG_EVERY);
        let outcome = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        // Deliveries are stored concurrently (the prefetch bounds how many), so
                        // the store commits them together.
                        let (ingestor, status, dead_letters) = (ingestor.clone(), self.status.clone(), dead_letters.clone());
                        let (dlx, unacked) = (self.dead_letter_exchange().to_owned(), unacked.clone());
                        unacked.fetch_add(1, Ordering::Relaxed);
                        settling.spawn(async move {
                            settle(&ingestor, &status, &dead_letters, &dlx, delivery).await;
                            unacked.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Some(Err(e)) => break Err(text(e)),
                    None => break Err("the broker cancelled the consumer".to_owned()),
                },
                Some(_) = settling.join_next() => {}
                _ = lag.tick() => {
                    let waiting = self.waiting(&channel).await?;
                    self.status.set_lag(waiting + unacked.load(Ordering::Relaxed));
                }
                _ = stopping.changed() => break Ok(()),
            }
        };
        while settling.join_next().await.is_some() {}
        let _ = connection.close(200, "".into()).await;
        outcome
    }
}
