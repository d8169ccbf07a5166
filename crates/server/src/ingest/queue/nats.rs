//! NATS JetStream: a durable pull consumer (explicit acks). A stored message is
//! acknowledged with a double ack (the server confirms it). A refused one is published to
//! the dead-letter subject with its reason in headers (`Hookline-Code`,
//! `Hookline-Reason`), the publish acknowledged by JetStream, then terminated (`Term`):
//! never redelivered. While the store is down a message is kept and stored again with
//! backoff; until it is settled (stored, or waiting behind an earlier message of its
//! ordering key) its ack deadline is extended (`Progress`) every third of `ack_wait`, and
//! messages are pulled only as there is room to settle them, so none waits unreported in
//! a buffer; at shutdown it is `Nak`ed.

use super::{Consumer, ConsumerStatus, Handled, Ingestor, Lanes, Prepared, Turn, STORE_BACKOFF};
use crate::config::NatsIngest;
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const LAG_EVERY: Duration = Duration::from_secs(2);
/// How long one pull waits for messages.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// How long a session's end waits for the client to send what it holds (the last answers).
const FLUSH_WAIT: Duration = Duration::from_secs(2);

pub struct Nats {
    config: NatsIngest,
    status: Arc<ConsumerStatus>,
    lanes: Arc<Lanes>,
}

/// Connection options for `url` with its credentials (`user:password@`, or a token as
/// `token@`) taken out of it, as async-nats reads none from the URL; and the URL without.
pub fn connect_options(url: &str) -> Result<(async_nats::ConnectOptions, String), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("the URL: {e}"))?;
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let (user, password) = (decode(parsed.username()), parsed.password().map(decode));
    let options = match (user.is_empty(), password) {
        (true, None) => async_nats::ConnectOptions::new(),
        (false, None) => async_nats::ConnectOptions::with_token(user),
        (_, Some(password)) => async_nats::ConnectOptions::with_user_and_password(user, password),
    };
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Ok((options.connection_timeout(Duration::from_secs(5)), parsed.to_string()))
}

/// Whether NATS subject `pattern` (with `*` and `>` wildcards) takes `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut subject = subject.split('.');
    loop {
        match (pattern.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Nats {
    pub fn new(config: &NatsIngest) -> Nats {
        let name = format!("nats:{}:{}", config.stream, config.durable);
        let source = format!("stream {} consumer {}", config.stream, config.durable);
        Nats {
            status: ConsumerStatus::new("nats", name, &config.url, source),
            config: config.clone(),
            lanes: Arc::default(),
        }
    }

    fn dlq_subject(&self) -> String {
        self.config.dlq_subject.clone().unwrap_or_else(|| format!("hookline.dlq.{}", self.config.stream))
    }

    /// The durable consumer, and the stream's creation time (part of the dedupe key of
    /// messages without `Nats-Msg-Id`: a stream made again starts its sequence over).
    async fn consumer(&self, context: &jetstream::Context) -> Result<(PullConsumer, i128), String> {
        let mut stream = context.get_stream(&self.config.stream).await.map_err(|e| format!("the stream: {e}"))?;
        let info = stream.info().await.map_err(|e| format!("the stream: {e}"))?;
        let dlq = self.dlq_subject();
        if info.config.subjects.iter().any(|pattern| subject_matches(pattern, &dlq)) {
            return Err(format!(
                "the dead-letter subject {dlq} is one of the stream's own: refused messages would loop"
            ));
        }
        // Without one, a refused message could be kept nowhere: it would be offered again
        // for ever, or dropped by JetStream at `max_deliver`.
        if context.stream_by_subject(dlq.clone()).await.is_err() {
            return Err(format!(
                "no stream captures the dead-letter subject {dlq}: add one (refused messages go there)"
            ));
        }
        let created = info.created.unix_timestamp_nanos();
        let config = pull::Config {
            durable_name: Some(self.config.durable.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_millis(self.config.ack_wait_ms),
            max_deliver: self.config.max_deliver,
            filter_subject: self.config.filter_subject.clone().unwrap_or_default(),
            ..Default::default()
        };
        let consumer: PullConsumer = stream
            .get_or_create_consumer(&self.config.durable, config)
            .await
            .map_err(|e| format!("the durable consumer: {e}"))?;
        // A durable made before (by hand, say) keeps its own settings: with a delivery
        // limit, JetStream would stop offering a message Hookline has not stored; with an
        // ack policy other than explicit, a message would count as acknowledged when handed
        // out (`none`), or with any later one's ack (`all`), before it is stored.
        let policy = consumer.cached_info().config.ack_policy;
        if policy != AckPolicy::Explicit {
            return Err(format!(
                "the durable consumer {} has ack_policy {policy:?}: JetStream would count a message as acknowledged \
                 before Hookline stored it; delete it (Hookline makes it again with explicit acks)",
                self.config.durable
            ));
        }
        let limit = consumer.cached_info().config.max_deliver;
        if limit > 0 {
            return Err(format!(
                "the durable consumer {} has max_deliver {limit}: JetStream would stop offering a message after \
                 {limit} deliveries, stored or not; delete it (Hookline makes it again without a limit)",
                self.config.durable
            ));
        }
        Ok((consumer, created))
    }
}

/// What a settling message needs besides itself.
struct Settle {
    ingestor: Arc<Ingestor>,
    status: Arc<ConsumerStatus>,
    context: jetstream::Context,
    dlq: String,
    stopping: watch::Receiver<bool>,
    /// How often a message being settled is reported in progress: a third of `ack_wait`.
    keep_every: Duration,
}

/// Stores one message, in its lane's turn, and answers JetStream.
async fn settle(settle: Arc<Settle>, prepared: Prepared, turn: Turn, message: jetstream::Message) {
    // The turn ends with the store, before the answer: the lane's next may be stored.
    let work = settle.ingestor.store_in_turn(&settle.status, &prepared, turn, &settle.stopping);
    // Until it is stored, JetStream is told every third of `ack_wait` that the message is
    // being worked on, whether it retries while the store is down or waits behind an
    // earlier message of its lane: past `ack_wait` JetStream would hand it to another node,
    // which could store it meanwhile, ahead of that earlier one. (Told only at each retry
    // of the store, one waiting its turn went unheard, and a retry 5 s apart outlasted an
    // `ack_wait` of 1 s.)
    let keep = async {
        loop {
            tokio::time::sleep(settle.keep_every).await;
            let _ = message.ack_with(AckKind::Progress).await;
        }
    };
    let handled = tokio::select! {
        handled = work => handled,
        never = keep => never,
    };
    // A failed ack means the connection is gone: JetStream redelivers after ack_wait, and
    // the dedupe key makes that harmless.
    match handled {
        Some(Handled::Stored { .. }) => {
            let _ = message.double_ack().await;
        }
        Some(Handled::Refused { code, reason }) => {
            tracing::warn!(consumer = %settle.status.name, code, %reason, "queue message refused; dead-lettered");
            match dead_letter(&settle.context, &settle.dlq, &message, code, &reason).await {
                Ok(()) => {
                    // Confirmed by the server: a `Term` lost on the way had the message
                    // offered again, and dead-lettered twice.
                    let _ = message.double_ack_with(AckKind::Term).await;
                }
                Err(why) => {
                    // Not in the dead letter: offered again later rather than lost.
                    settle.status.note(format!("dead-lettering a refused message: {why}"));
                    let _ = message.ack_with(AckKind::Nak(Some(STORE_BACKOFF))).await;
                }
            }
        }
        Some(Handled::Unavailable) | None => {
            // Confirmed, so that it is out before the client closes at shutdown (a `Nak`
            // left in its buffer was never sent, and the message waited out `ack_wait`).
            let _ = message.double_ack_with(AckKind::Nak(None)).await;
        }
    }
}

/// Publishes a refused message to the dead-letter subject with its reason; done once
/// JetStream acknowledged it. The original headers go along, but for JetStream's own
/// (`Nats-*`), which would act on the dead-letter stream.
async fn dead_letter(
    context: &jetstream::Context,
    dlq: &str,
    message: &jetstream::Message,
    code: &str,
    reason: &str,
) -> Result<(), String> {
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in message.headers.iter().flat_map(|h| h.iter()) {
        if !name.to_string().to_ascii_lowercase().starts_with("nats-") {
            for value in values {
                headers.append(name.to_string().as_str(), value.as_str());
            }
        }
    }
    headers.insert("Hookline-Code", code);
    headers.insert("Hookline-Reason", reason);
    headers.insert("Hookline-Subject", message.subject.as_str());
    let ack = context
        .publish_with_headers(dlq.to_owned(), headers, message.payload.clone())
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map(|_| ()).map_err(|e| e.to_string())
}

#[async_trait::async_trait]
impl Consumer for Nats {
    fn status(&self) -> &Arc<ConsumerStatus> {
        &self.status
    }

    async fn run(&self, ingestor: &Arc<Ingestor>, mut stopping: watch::Receiver<bool>) -> Result<(), String> {
        let (options, url) = connect_options(&self.config.url)?;
        let client = options.connect(url.as_str()).await.map_err(|e| e.to_string())?;
        let context = jetstream::new(client.clone());
        let (consumer, created) = self.consumer(&context).await?;
        self.status.connected();
        let settle_with = Arc::new(Settle {
            ingestor: ingestor.clone(),
            status: self.status.clone(),
            context,
            dlq: self.dlq_subject(),
            stopping: stopping.clone(),
            // The durable's own `ack_wait`, not the setting's: a durable made before keeps
            // its own, and reports timed from a longer one came after JetStream had handed
            // the message out again.
            keep_every: match consumer.cached_info().config.ack_wait {
                Duration::ZERO => Duration::from_millis(self.config.ack_wait_ms),
                ack_wait => ack_wait,
            } / 3,
        });
        // A durable may cap a pull (`max_batch`, which a server's `max_request_batch` sets
        // on every new one): a pull over it was refused every time, and nothing consumed.
        let pull_max = match consumer.cached_info().config.max_batch {
            cap if cap > 0 => cap as usize,
            _ => usize::MAX,
        };
        let mut settling = tokio::task::JoinSet::new();
        let mut lag = tokio::time::interval(LAG_EVERY);
        let outcome = loop {
            // Pulled only as many as there is room to settle at once: a message JetStream
            // handed out and this node left in a buffer (as the prefetching pull stream
            // did while the store was down) was reported in progress by no one, and handed
            // out again past `ack_wait`.
            let room = self.config.batch.saturating_sub(settling.len()).min(pull_max);
            let pull = async {
                match room {
                    0 => std::future::pending().await,
                    room => consumer.batch().max_messages(room).expires(PULL_WAIT).messages().await,
                }
            };
            tokio::select! {
                pulled = pull => {
                    let mut batch = match pulled {
                        Ok(batch) => batch,
                        Err(e) => break Err(e.to_string()),
                    };
                    let mut failed = None;
                    while let Some(next) = batch.next().await {
                        let message = match next {
                            Ok(message) => message,
                            Err(e) => {
                                failed = Some(e.to_string());
                                break;
                            }
                        };
                        // The publisher's `Nats-Msg-Id`, else the stream sequence (with the
                        // stream's creation time): the same on every redelivery. An empty one
                        // is none (as AMQP's): shared by every such message, it made each after
                        // the first a duplicate.
                        let given = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
                        let id = match given.filter(|id| !id.as_str().trim().is_empty()) {
                            Some(id) => Some(id.to_string()),
                            None => message.info().ok().map(|info| format!("seq:{created}:{}", info.stream_sequence)),
                        };
                        // Prepared and given its lane's turn here, in the stream's order; stored
                        // concurrently (the batch bounds how many): committed together.
                        let prepared = ingestor.prepare(id.as_deref(), &message.payload);
                        let turn = self.lanes.turn(prepared.lane());
                        settling.spawn(settle(settle_with.clone(), prepared, turn, message));
                    }
                    if let Some(e) = failed {
                        break Err(e);
                    }
                }
                Some(_) = settling.join_next() => {}
                _ = lag.tick() => match tokio::time::timeout(LAG_EVERY * 2, consumer.get_info()).await {
                    Ok(Ok(info)) => self.status.set_lag(info.num_pending + info.num_ack_pending as u64),
                    Ok(Err(e)) => self.status.note(format!("reading the lag: {e}")),
                    Err(_) => self.status.note("reading the lag: no answer in time".to_owned()),
                },
                _ = stopping.changed() => break Ok(()),
            }
        };
        // What is being stored finishes and is answered, at a stop and after an error
        // alike: dropped, a message being stored was neither acknowledged nor handed back,
        // and JetStream offered it again only past `ack_wait`, after the next session had
        // stored newer messages of its ordering lane.
        if let Err(e) = &outcome {
            // Said now: the drain lasts as long as the store needs (it may be down).
            self.status.note(format!("the session ended ({e}); finishing the messages being stored"));
        }
        while settling.join_next().await.is_some() {}
        let _ = tokio::time::timeout(FLUSH_WAIT, client.flush()).await;
        outcome
    }
}
