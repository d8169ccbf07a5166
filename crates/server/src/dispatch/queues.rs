//! Queue destinations: a delivery to a `redis://`, `amqp://` or `nats://` endpoint is
//! published to that broker instead of POSTed. The payload bytes go unchanged, with the
//! same signature headers an HTTP delivery carries: as stream fields (the payload under
//! `payload`), as AMQP headers (persistent, `message_id` = the message id, published
//! `mandatory` with publisher confirms), or as NATS headers on a JetStream publish
//! (`Nats-Msg-Id` = the message and endpoint ids, so the broker drops a repeat within its
//! duplicate window). It counts as delivered once the broker acknowledged it: the XADD answered,
//! the publish confirmed (and routed to a queue), or JetStream's ack. A refused or
//! unreachable broker fails the attempt, which is retried on the endpoint's policy.
//!
//! The broker's host meets the same address rules as an HTTP endpoint's, on every
//! resolved address at connect time; the connection is made to the checked address.
//! Connections are kept per broker, dropped after a failure, and closed once unused for
//! [`LINK_IDLE`] (a broker no endpoint names any more would keep one for ever).

use super::client::{connect_allowed, Sent, Unreached};
use hookline_core::classify::Outcome;
use hookline_core::queue_url::{Broker, QueueUrl};
use hookline_core::ssrf::AddressPolicy;
use hookline_store::Bytes;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a broker connection is kept without a delivery on it.
pub const LINK_IDLE: Duration = Duration::from_secs(300);

/// One open connection to a broker.
enum Link {
    Redis(redis::aio::MultiplexedConnection),
    Amqp { _connection: lapin::Connection, channel: lapin::Channel },
    Nats(async_nats::jetstream::Context),
}

/// Why an attempt failed, before it becomes an [`Outcome`].
enum Problem {
    Blocked(String),
    Connect(String),
    Refused(String),
    Timeout,
}

pub struct QueuePublisher {
    policy: AddressPolicy,
    /// `delivery.broker_credentials`: `user:password` by the URL's `host:port`.
    credentials: std::collections::BTreeMap<String, String>,
    timeout: Duration,
    connect_timeout: Duration,
    /// Open links by broker, each with when it was last taken for a delivery.
    links: Mutex<HashMap<String, (Arc<Link>, Instant)>>,
    /// One connect at a time per broker: the deliveries that find no link wait for the
    /// one connecting, rather than each opening its own (a lapin connection is a thread).
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl QueuePublisher {
    pub fn new(policy: AddressPolicy, config: &crate::config::DeliveryConfig) -> QueuePublisher {
        QueuePublisher {
            policy,
            credentials: config.broker_credentials.clone(),
            timeout: Duration::from_millis(config.request_timeout_ms),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            links: Mutex::default(),
            connecting: Mutex::default(),
        }
    }

    /// The configured `(user, password)` of the broker at `host:port` as its URL names it.
    fn credentials(&self, queue: &QueueUrl) -> Option<(String, String)> {
        let credentials = self.credentials.get(&format!("{}:{}", queue.host, queue.port))?;
        let (user, password) = credentials.split_once(':').unwrap_or((credentials.as_str(), ""));
        Some((user.to_owned(), password.to_owned()))
    }

    /// `msg_id` is the message's id (AMQP `message_id`); JetStream's `Nats-Msg-Id` is it with
    /// `endpoint_id`, so two endpoints of one message on one stream are not taken as repeats
    /// (the engine adds the time to an operator's resend, which is not one either).
    pub async fn publish(
        &self,
        url: &str,
        msg_id: &str,
        endpoint_id: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Sent {
        let started = tokio::time::Instant::now();
        let ids = (msg_id, endpoint_id);
        let result = self.try_publish(url, ids, headers, body, started + self.timeout).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let (outcome, response_excerpt) = match result {
            Ok(receipt) => (Outcome::Published, receipt),
            Err(Problem::Blocked(why)) => (Outcome::BlockedAddress, format!("address refused: {why}")),
            Err(Problem::Connect(why)) => (Outcome::Connect, why),
            Err(Problem::Refused(why)) => (Outcome::Other, why),
            Err(Problem::Timeout) => (Outcome::Timeout, "the broker did not answer in time".to_owned()),
        };
        Sent { outcome, status_code: 0, response_excerpt, duration_ms }
    }

    async fn try_publish(
        &self,
        url: &str,
        ids: (&str, &str),
        headers: &[(String, String)],
        body: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<String, Problem> {
        let parsed = url::Url::parse(url).map_err(|_| Problem::Refused("invalid URL".into()))?;
        let queue = match QueueUrl::parse(&parsed) {
            Some(Ok(queue)) => queue,
            Some(Err(why)) => return Err(Problem::Refused(why)),
            None => return Err(Problem::Refused("not a queue URL".into())),
        };
        let mut key = format!("{:?}://{}:{}/{}", queue.broker, queue.host, queue.port, queue.vhost);
        if queue.broker == Broker::Amqp {
            // A link (a connection and its one confirm channel) per destination: RabbitMQ
            // closes a channel on a publish to an exchange that does not exist, which
            // failed every other destination's publishes on it; and lapin pairs a channel's
            // returned (unroutable) messages with its confirms in arrival order, so one
            // destination's return could mark another's publish unroutable and its own
            // delivered. (Channels of their own on one shared connection were tried: a
            // destination beside a missing exchange then got a delivery twice, now and then.)
            key = format!("{key}#{}#{}", queue.target, queue.routing_key);
        }
        let cached = || {
            let mut links = self.links.lock().expect("links lock");
            let (link, used) = links.get_mut(&key)?;
            *used = Instant::now();
            Some(link.clone())
        };
        let link = match cached() {
            Some(link) => link,
            None => {
                let gate = self.connecting.lock().expect("connecting lock").entry(key.clone()).or_default().clone();
                let _turn = tokio::time::timeout_at(deadline, gate.lock()).await.map_err(|_| Problem::Timeout)?;
                match cached() {
                    // Made by the delivery that connected while this one waited.
                    Some(link) => link,
                    None => {
                        let connected = tokio::time::timeout_at(deadline, self.connect(&queue)).await;
                        let link = Arc::new(connected.unwrap_or(Err(Problem::Timeout))?);
                        self.links.lock().expect("links lock").insert(key.clone(), (link.clone(), Instant::now()));
                        link
                    }
                }
            }
        };
        // One deadline for the connect and the send, so that a send that hangs always
        // reaches the check below (a timeout around both dropped it first).
        let sent = tokio::time::timeout_at(deadline, send(&link, &queue, ids, headers, body)).await;
        let result = sent.unwrap_or(Err(Problem::Timeout));
        // A link that failed or hung is not used again (Redis has no heartbeat: a
        // half-open connection would time out every publish). A refusal of one message
        // keeps it: the link serves every destination on that broker.
        if matches!(result, Err(Problem::Connect(_) | Problem::Timeout)) {
            let mut links = self.links.lock().expect("links lock");
            if links.get(&key).is_some_and(|(l, _)| Arc::ptr_eq(l, &link)) {
                links.remove(&key);
            }
        }
        result
    }

    /// Closes the links no delivery took for [`LINK_IDLE`] (one in use by a delivery now
    /// closes when it is done); how many.
    pub fn close_idle(&self, now: Instant) -> usize {
        let mut links = self.links.lock().expect("links lock");
        let before = links.len();
        links.retain(|_, (_, used)| now.saturating_duration_since(*used) < LINK_IDLE);
        before - links.len()
    }

    /// A link to `queue`: a connection to the first resolved address the rules allow (on
    /// AMQP with its one confirm channel).
    async fn connect(&self, queue: &QueueUrl) -> Result<Link, Problem> {
        match queue.broker {
            Broker::Redis => self.connect_allowed(queue, |address| self.open_redis(queue, address)).await,
            Broker::Nats => self.connect_allowed(queue, |address| self.open_nats(queue, address)).await,
            Broker::Amqp => {
                let connection = self.connect_allowed(queue, |address| self.open_amqp(queue, address)).await?;
                let channel = connection.create_channel().await.map_err(|e| Problem::Connect(e.to_string()))?;
                let confirms = ConfirmSelectOptions::default();
                channel.confirm_select(confirms).await.map_err(|e| Problem::Connect(e.to_string()))?;
                Ok(Link::Amqp { _connection: connection, channel })
            }
        }
    }

    /// Connects with `open` to the first resolved address the rules allow.
    async fn connect_allowed<T, F, Fut>(&self, queue: &QueueUrl, open: F) -> Result<T, Problem>
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        connect_allowed(&self.policy, &queue.host, queue.port, self.connect_timeout, open).await.map_err(|unreached| {
            match unreached {
                Unreached::Blocked(reason) => Problem::Blocked(reason),
                Unreached::Connect(why) => Problem::Connect(why),
                Unreached::Timeout => Problem::Connect("connect timed out".to_owned()),
            }
        })
    }

    /// An AMQP connection to `address`, the checked one.
    async fn open_amqp(&self, queue: &QueueUrl, address: SocketAddr) -> Result<lapin::Connection, String> {
        use lapin::uri::{AMQPAuthority, AMQPScheme, AMQPUri, AMQPUserInfo};
        let mut userinfo = AMQPUserInfo::default();
        if let Some((user, password)) = self.credentials(queue) {
            userinfo = AMQPUserInfo { username: user, password };
        }
        let uri = AMQPUri {
            scheme: AMQPScheme::AMQP,
            authority: AMQPAuthority { userinfo, host: address.ip().to_string(), port: address.port() },
            vhost: queue.vhost.clone(),
            query: Default::default(),
        };
        crate::ingest::queue::amqp::connect_within(uri, self.connect_timeout).await
    }

    /// A Redis connection to `address`, the checked one, never to a name redis-rs would
    /// resolve on its own.
    async fn open_redis(&self, queue: &QueueUrl, address: SocketAddr) -> Result<Link, String> {
        let mut info: redis::ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(
            redis::ConnectionAddr::Tcp(address.ip().to_string(), address.port()),
        )
        .map_err(|e| e.to_string())?;
        if let Some((user, password)) = self.credentials(queue) {
            let settings = info.redis_settings().clone();
            let settings = if user.is_empty() { settings } else { settings.set_username(user) };
            info = info.set_redis_settings(settings.set_password(password));
        }
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        let options = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout));
        let connection =
            client.get_multiplexed_async_connection_with_config(&options).await.map_err(|e| e.to_string())?;
        Ok(Link::Redis(connection))
    }

    /// A NATS connection to `address`, the checked one, never to servers the broker
    /// advertises.
    async fn open_nats(&self, queue: &QueueUrl, address: SocketAddr) -> Result<Link, String> {
        let options = match self.credentials(queue) {
            Some((user, password)) => async_nats::ConnectOptions::with_user_and_password(user, password),
            None => async_nats::ConnectOptions::new(),
        };
        // One attempt to reconnect, at once; then the client ends, and the publishes it kept
        // meanwhile with it (the link is dropped and made anew).
        let client = options
            .connection_timeout(self.connect_timeout)
            .max_reconnects(1)
            .ignore_discovered_servers()
            .connect(format!("nats://{address}"))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Link::Nats(async_nats::jetstream::new(client)))
    }
}

/// Publishes on an open link; the receipt is what the broker answered.
async fn send(
    link: &Link,
    queue: &QueueUrl,
    (msg_id, endpoint_id): (&str, &str),
    headers: &[(String, String)],
    body: Bytes,
) -> Result<String, Problem> {
    match link {
        Link::Redis(connection) => {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&queue.target).arg("*").arg("payload").arg(body.as_ref());
            for (name, value) in headers {
                cmd.arg(name).arg(value);
            }
            // A replica after a failover answers `READONLY` on this connection for ever: a
            // connection problem (the link is dropped, a new one finds the new primary).
            // Other refusals (`WRONGTYPE`, `OOM`, `NOPERM`) are the destination's.
            let read_only =
                |e: &redis::RedisError| matches!(e.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly));
            let id: String =
                cmd.query_async(&mut connection.clone()).await.map_err(|e| match e.is_io_error() || read_only(&e) {
                    true => Problem::Connect(e.to_string()),
                    false => Problem::Refused(e.to_string()),
                })?;
            Ok(format!("XADD {}: {id}", queue.target))
        }
        Link::Amqp { channel, .. } => {
            let mut table = FieldTable::default();
            let mut content_type = "application/json";
            for (name, value) in headers {
                match name.as_str() {
                    "content-type" => content_type = value,
                    _ => {
                        table.insert(short(name, "a header name")?, AMQPValue::LongString(value.as_str().into()));
                    }
                }
            }
            let properties = BasicProperties::default()
                .with_message_id(short(msg_id, "the message id")?)
                .with_content_type(short(content_type, "the content type")?)
                .with_delivery_mode(2)
                .with_headers(table);
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let exchange = short(&queue.target, "the exchange")?;
            let routing_key = short(&queue.routing_key, "the routing key")?;
            let confirm = channel
                .basic_publish(exchange, routing_key, options, &body, properties)
                .await
                .map_err(|e| Problem::Connect(e.to_string()))?;
            match confirm.await.map_err(|e| Problem::Connect(e.to_string()))? {
                Confirmation::Ack(None) => Ok(format!("confirmed by the broker (exchange {:?})", queue.target)),
                Confirmation::Ack(Some(_)) => Err(Problem::Refused(format!(
                    "unroutable: no queue is bound to exchange {:?} for routing key {:?}",
                    queue.target, queue.routing_key
                ))),
                Confirmation::Nack(_) => Err(Problem::Refused("the broker refused the message (nack)".into())),
                Confirmation::NotRequested => Err(Problem::Refused("publisher confirms are off".into())),
            }
        }
        Link::Nats(context) => {
            // A client whose connection dropped keeps what it is given and sends it when it
            // is back, after this attempt was recorded as failed: the stream would store it
            // then, and the retry (outside the stream's duplicate window) again.
            if context.client().connection_state() != async_nats::connection::State::Connected {
                return Err(Problem::Connect("not connected to the NATS server".into()));
            }
            let mut map = async_nats::HeaderMap::new();
            for (name, value) in headers {
                map.insert(name.as_str(), value.as_str());
            }
            map.insert("Nats-Msg-Id", format!("{msg_id}.{endpoint_id}").as_str());
            let ack = context
                .publish_with_headers(queue.target.clone(), map, body)
                .await
                .map_err(|e| Problem::Connect(e.to_string()))?;
            let ack = ack.await.map_err(|e| {
                use async_nats::jetstream::context::PublishErrorKind;
                let why = format!("JetStream did not store it: {e}");
                match e.kind() {
                    // The link's fault, not the destination's: dropped, and made anew.
                    PublishErrorKind::TimedOut => Problem::Timeout,
                    PublishErrorKind::BrokenPipe => Problem::Connect(why),
                    _ => Problem::Refused(why),
                }
            })?;
            let repeat = if ack.duplicate { " (a repeat the stream already had)" } else { "" };
            Ok(format!("stored in stream {} at {}{repeat}", ack.stream, ack.sequence))
        }
    }
}

impl super::Engine {
    /// Closes idle broker links every half [`LINK_IDLE`] until the node stops.
    pub(super) async fn close_idle_links(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        loop {
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(LINK_IDLE / 2) => {}
            }
            let closed = self.queues.close_idle(Instant::now());
            if closed > 0 {
                tracing::debug!(closed, "closed broker connections no delivery used");
            }
        }
    }
}

/// `value` as an AMQP short string, or the attempt's failure: lapin panics on one over 255
/// bytes, and a delivery whose task panics records no attempt and is claimed again, for ever.
fn short(value: &str, what: &str) -> Result<ShortString, Problem> {
    match value.len() <= 255 {
        true => Ok(value.into()),
        false => Err(Problem::Refused(format!("{what} is longer than AMQP's 255 bytes"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link no delivery took for [`LINK_IDLE`] is closed, and the broker sees its
    /// connection go (the machine's Redis, or `HOOKLINE_TEST_REDIS_URL`).
    #[tokio::test]
    async fn a_link_no_delivery_uses_is_closed() {
        let url = std::env::var("HOOKLINE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let address = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
        let policy = AddressPolicy { allow_all_private: true, allow_plain_http: true, ..Default::default() };
        let publisher = QueuePublisher::new(policy, &crate::config::DeliveryConfig::default());
        let stream = format!("hookline-test-links-{}", std::process::id());
        let body = Bytes::from_static(b"{}");
        let sent = publisher.publish(&format!("redis://{address}/{stream}"), "msg_1", "ep_1", &[], body).await;
        assert_eq!(sent.outcome, Outcome::Published, "{}", sent.response_excerpt);
        let link = publisher.links.lock().unwrap().values().next().map(|(link, _)| link.clone()).unwrap();
        let Link::Redis(connection) = &*link else { panic!("a Redis link") };
        let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut connection.clone()).await.unwrap();
        drop(link);

        assert_eq!(publisher.close_idle(Instant::now()), 0, "a link just used is kept");
        assert_eq!(publisher.close_idle(Instant::now() + LINK_IDLE), 1);
        assert!(publisher.links.lock().unwrap().is_empty());
        let mut other = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let listed: String =
                redis::cmd("CLIENT").arg("LIST").arg("ID").arg(id).query_async(&mut other).await.unwrap();
            if listed.trim().is_empty() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the connection stayed open: {listed}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _: i64 = redis::cmd("DEL").arg(&stream).query_async(&mut other).await.unwrap();
    }

    /// A write the server refuses for its destination (`WRONGTYPE`: a key of another type
    /// under the stream's name) fails that attempt and keeps the link the broker's other
    /// destinations share; it was dropped, a new connection for every such attempt.
    #[tokio::test]
    async fn a_destination_the_server_refuses_keeps_the_shared_link() {
        let url = std::env::var("HOOKLINE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let address = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
        let policy = AddressPolicy { allow_all_private: true, allow_plain_http: true, ..Default::default() };
        let publisher = QueuePublisher::new(policy, &crate::config::DeliveryConfig::default());
        let stream = format!("hookline-test-wrongtype-{}", std::process::id());
        let mut other = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SET").arg(&stream).arg("a string").query_async(&mut other).await.unwrap();
        let destination = format!("redis://{address}/{stream}");
        let mut links = Vec::new();
        for _ in 0..3 {
            let sent = publisher.publish(&destination, "msg_1", "ep_1", &[], Bytes::from_static(b"{}")).await;
            assert_eq!(sent.outcome, Outcome::Other, "{}", sent.response_excerpt);
            assert!(sent.response_excerpt.contains("WRONGTYPE"), "{}", sent.response_excerpt);
            links.push(publisher.links.lock().unwrap().values().next().map(|(link, _)| link.clone()).expect("kept"));
        }
        assert!(links.windows(2).all(|pair| Arc::ptr_eq(&pair[0], &pair[1])), "one link throughout");
        let _: i64 = redis::cmd("DEL").arg(&stream).query_async(&mut other).await.unwrap();
    }

    /// A replica (as a primary becomes after a failover) answers `READONLY` on that
    /// connection for ever: the attempt is a connection failure and the link is dropped,
    /// so the next one connects anew (a server of the test's own, `redis-server`).
    #[tokio::test]
    async fn a_read_only_replica_drops_the_link() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut replica = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", "1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        let policy = AddressPolicy { allow_all_private: true, allow_plain_http: true, ..Default::default() };
        let publisher = QueuePublisher::new(policy, &crate::config::DeliveryConfig::default());
        let destination = format!("redis://127.0.0.1:{port}/payments");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let sent = loop {
            let sent = publisher.publish(&destination, "msg_1", "ep_1", &[], Bytes::from_static(b"{}")).await;
            // Refused connections until the server listens.
            if sent.response_excerpt.contains("read only replica") || tokio::time::Instant::now() > deadline {
                break sent;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = replica.kill();
        let _ = replica.wait();
        assert!(sent.response_excerpt.contains("read only replica"), "{}", sent.response_excerpt);
        assert_eq!(sent.outcome, Outcome::Connect);
        assert!(publisher.links.lock().unwrap().is_empty(), "the link is dropped");
    }

    /// A name AMQP cannot carry (over 255 bytes: a header's, as a provider's forwarded
    /// header may be) fails the attempt with the reason; lapin panicked on it, in the
    /// delivery's task (the machine's RabbitMQ, or `HOOKLINE_TEST_AMQP_URL`).
    #[tokio::test]
    async fn a_name_too_long_for_amqp_fails_the_attempt() {
        let url = std::env::var("HOOKLINE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672".into());
        let authority = url.trim_start_matches("amqp://").split('/').next().unwrap().rsplit('@').next().unwrap();
        let policy = AddressPolicy { allow_all_private: true, allow_plain_http: true, ..Default::default() };
        let publisher = QueuePublisher::new(policy, &crate::config::DeliveryConfig::default());
        let destination = format!("amqp://{authority}/amq.direct?routingKey=hookline-test-{}", std::process::id());
        let headers = [("x-hookline-forwarded-".to_owned() + &"h".repeat(240), "v".to_owned())];
        let sent = publisher.publish(&destination, "msg_1", "ep_1", &headers, Bytes::from_static(b"{}")).await;
        assert_eq!(sent.outcome, Outcome::Other, "{}", sent.response_excerpt);
        assert_eq!(sent.response_excerpt, "a header name is longer than AMQP's 255 bytes");
    }
}
