//! NATS JetStream: a durable pull consumer (explicit acks). A stored message is
//! acknowledged with a double ack (the server confirms it). A refused one is published to
//! the dead-letter subject with its reason in headers (`Hookline-Code`,
//! `Hookline-Reason`), the publish acknowledged by JetStream, then terminated (`Term`):
//! never redelivered. A message that could not be stored (the store down) is `Nak`ed with
//! a delay and redelivered.

use super::{Consumer, ConsumerStatus, Handled, Ingestor, STORE_BACKOFF};
use crate::config::NatsIngest;
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const LAG_EVERY: Duration = Duration::from_secs(2);

pub struct Nats {
    config: NatsIngest,
    status: Arc<ConsumerStatus>,
}

impl Nats {
    pub fn new(config: &NatsIngest) -> Nats {
        let name = format!("nats:{}:{}", config.stream, config.durable);
        let source = format!("stream {} consumer {}", config.stream, config.durable);
        Nats { status: ConsumerStatus::new("nats", name, &config.url, source), config: config.clone() }
    }

    fn dlq_subject(&self) -> String {
        self.config.dlq_subject.clone().unwrap_or_else(|| format!("hookline.dlq.{}", self.config.stream))
    }

    async fn consumer(&self, context: &jetstream::Context) -> Result<PullConsumer, String> {
        let stream = context.get_stream(&self.config.stream).await.map_err(|e| format!("the stream: {e}"))?;
        let config = pull::Config {
            durable_name: Some(self.config.durable.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_millis(self.config.ack_wait_ms),
            max_deliver: self.config.max_deliver,
            filter_subject: self.config.filter_subject.clone().unwrap_or_default(),
            ..Default::default()
        };
        stream
            .get_or_create_consumer(&self.config.durable, config)
            .await
            .map_err(|e| format!("the durable consumer: {e}"))
    }
}

/// Stores one message and answers JetStream.
async fn settle(
    ingestor: &Ingestor,
    status: &ConsumerStatus,
    context: &jetstream::Context,
    dlq: &str,
    message: jetstream::Message,
) {
    // The publisher's `Nats-Msg-Id`, else the stream sequence: the same on every redelivery.
    let id = match message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
        Some(id) => Some(id.to_string()),
        None => message.info().ok().map(|info| format!("seq:{}", info.stream_sequence)),
    };
    let handled = ingestor.handle(&status.name, id.as_deref(), &message.payload).await;
    status.count(&handled);
    // A failed ack means the connection is gone: JetStream redelivers after ack_wait, and
    // the dedupe key makes that harmless.
    match handled {
        Handled::Stored { .. } => {
            let _ = message.double_ack().await;
        }
        Handled::Refused { code, reason } => {
            tracing::warn!(consumer = %status.name, code, %reason, "queue message refused; dead-lettered");
            let mut headers = message.headers.clone().unwrap_or_default();
            headers.insert("Hookline-Code", code);
            headers.insert("Hookline-Reason", reason.as_str());
            headers.insert("Hookline-Subject", message.subject.as_str());
            let published = match context.publish_with_headers(dlq.to_owned(), headers, message.payload.clone()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            let answer = match published {
                true => AckKind::Term,
                // Not in the dead letter: offered again later rather than lost.
                false => AckKind::Nak(Some(STORE_BACKOFF)),
            };
            let _ = message.ack_with(answer).await;
        }
        Handled::Unavailable => {
            let _ = message.ack_with(AckKind::Nak(Some(STORE_BACKOFF))).await;
        }
    }
}

#[async_trait::async_trait]
impl Consumer for Nats {
    fn status(&self) -> &Arc<ConsumerStatus> {
        &self.status
    }

    async fn run(&self, ingestor: &Arc<Ingestor>, mut stopping: watch::Receiver<bool>) -> Result<(), String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(self.config.url.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let context = jetstream::new(client);
        let consumer = self.consumer(&context).await?;
        let mut messages =
            consumer.stream().max_messages_per_batch(self.config.batch).messages().await.map_err(|e| e.to_string())?;
        self.status.connected();
        let dlq = self.dlq_subject();
        let mut settling = tokio::task::JoinSet::new();
        let mut lag = tokio::time::interval(LAG_EVERY);
        let outcome = loop {
            tokio::select! {
                next = messages.next(), if settling.len() < self.config.batch => match next {
                    Some(Ok(message)) => {
                        // Stored concurrently (the batch bounds how many): committed together.
                        let (ingestor, status, context, dlq) = (ingestor.clone(), self.status.clone(), context.clone(), dlq.clone());
                        settling.spawn(async move { settle(&ingestor, &status, &context, &dlq, message).await });
                    }
                    Some(Err(e)) => break Err(e.to_string()),
                    None => break Err("the consumer's message stream ended".to_owned()),
                },
                Some(_) = settling.join_next() => {}
                _ = lag.tick() => {
                    let info = consumer.get_info().await.map_err(|e| e.to_string())?;
                    self.status.set_lag(info.num_pending + info.num_ack_pending as u64);
                }
                _ = stopping.changed() => break Ok(()),
            }
        };
        while settling.join_next().await.is_some() {}
        outcome
    }
}
