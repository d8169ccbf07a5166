//! Queue destinations: an endpoint URL that names a broker and where on it a delivery is
//! published instead of POSTed. `redis://host[:port]/<stream>` (XADD),
//! `amqp://host[:port]/<exchange>?routingKey=<key>[&vhost=<vhost>]` (an empty exchange is
//! the default one, which routes by queue name), `nats://host[:port]/<subject>` (a
//! JetStream publish). The host is subject to the same address rules as an HTTP URL.

/// Whether `text` names a queue destination (by its scheme, spelled lowercase).
pub fn is_queue_url(text: &str) -> bool {
    ["redis://", "amqp://", "nats://"].iter().any(|scheme| text.starts_with(scheme))
}

/// The brokers a delivery can be published to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Broker {
    Redis,
    Amqp,
    Nats,
}

impl Broker {
    pub fn from_scheme(scheme: &str) -> Option<Broker> {
        match scheme {
            "redis" => Some(Broker::Redis),
            "amqp" => Some(Broker::Amqp),
            "nats" => Some(Broker::Nats),
            _ => None,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Broker::Redis => 6379,
            Broker::Amqp => 5672,
            Broker::Nats => 4222,
        }
    }
}

/// A parsed queue destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueUrl {
    pub broker: Broker,
    pub host: url::Host<String>,
    pub port: u16,
    /// The stream, exchange or subject.
    pub target: String,
    /// AMQP only: the routing key and the virtual host.
    pub routing_key: String,
    pub vhost: String,
}

impl QueueUrl {
    /// `None` when `url` is not a queue URL; otherwise the destination or why it is invalid.
    pub fn parse(url: &url::Url) -> Option<Result<QueueUrl, String>> {
        let broker = Broker::from_scheme(url.scheme())?;
        Some(QueueUrl::parse_broker(broker, url))
    }

    fn parse_broker(broker: Broker, url: &url::Url) -> Result<QueueUrl, String> {
        let host = web_host(url).ok_or("a queue URL needs a host")?;
        let target = percent_decoded(url.path().trim_start_matches('/'))?;
        let (mut routing_key, mut vhost) = (String::new(), "/".to_owned());
        for (key, value) in url.query_pairs() {
            match (broker, key.as_ref()) {
                (Broker::Amqp, "routingKey") => routing_key = value.into_owned(),
                (Broker::Amqp, "vhost") => vhost = value.into_owned(),
                (_, other) => return Err(format!("unknown query parameter {other:?} in a queue URL")),
            }
        }
        let valid_name = |s: &str| s.len() <= 255 && s.chars().all(|c| c.is_ascii_graphic());
        match broker {
            Broker::Redis if target.is_empty() || !valid_name(&target) => {
                return Err("redis:// URLs name a stream: redis://host[:port]/<stream>".into());
            }
            Broker::Nats if !valid_subject(&target) => {
                return Err("nats:// URLs name a subject without wildcards, not one of the server's own ($..., \
                            _INBOX...): nats://host[:port]/<subject>"
                    .into());
            }
            Broker::Amqp if target.is_empty() && routing_key.is_empty() => {
                return Err("amqp:// URLs name an exchange, or the queue as routingKey: \
                            amqp://host[:port]/<exchange>?routingKey=<key>"
                    .into());
            }
            Broker::Amqp if !valid_name(&target) => return Err("the exchange name is not valid".into()),
            // AMQP carries both as short strings, at most 255 bytes.
            Broker::Amqp if routing_key.len() > 255 => return Err("the routing key is longer than 255 bytes".into()),
            Broker::Amqp if vhost.len() > 255 => return Err("the vhost is longer than 255 bytes".into()),
            _ => {}
        }
        let port = url.port().unwrap_or(broker.default_port());
        Ok(QueueUrl { broker, host, port, target, routing_key, vhost })
    }
}

/// The host as a web URL would read it: `url` leaves the hosts of other schemes opaque,
/// so `127.1` or `2130706433` would not be seen as the loopback address they are.
pub fn web_host(url: &url::Url) -> Option<url::Host<String>> {
    let rest = &url.as_str()[url.scheme().len()..];
    let web = url::Url::parse(&format!("http{rest}")).ok()?;
    web.host().map(|h| h.to_owned())
}

/// A plain subject: dot-separated non-empty tokens of visible characters, no wildcards, and
/// none of the server's own (`$JS.API...`, `$SYS...`, `_INBOX...`), which would make a
/// delivery a request to the broker itself.
fn valid_subject(subject: &str) -> bool {
    subject.len() <= 255
        && !subject.starts_with('$')
        && !subject.starts_with("_INBOX")
        && subject.split('.').all(|token| {
            !token.is_empty() && token != "*" && token != ">" && token.chars().all(|c| c.is_ascii_graphic())
        })
}

fn percent_decoded(text: &str) -> Result<String, String> {
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8();
    decoded.map(|d| d.into_owned()).map_err(|_| "the queue URL's path is not valid UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Option<Result<QueueUrl, String>> {
        QueueUrl::parse(&url::Url::parse(text).unwrap())
    }

    #[test]
    fn queue_urls() {
        assert!(parse("https://merchant.example/hooks").is_none());
        let redis = parse("redis://10.0.0.5/payments").unwrap().unwrap();
        assert_eq!((redis.broker, redis.port, redis.target.as_str()), (Broker::Redis, 6379, "payments"));
        let amqp = parse("amqp://mq.internal:5673/events?routingKey=payment.succeeded").unwrap().unwrap();
        assert_eq!((amqp.port, amqp.target.as_str(), amqp.routing_key.as_str()), (5673, "events", "payment.succeeded"));
        assert_eq!(amqp.vhost, "/");
        let default_exchange = parse("amqp://mq.internal/?routingKey=work&vhost=prod").unwrap().unwrap();
        assert_eq!((default_exchange.target.as_str(), default_exchange.vhost.as_str()), ("", "prod"));
        let nats = parse("nats://nats.internal/payments.in").unwrap().unwrap();
        assert_eq!((nats.port, nats.target.as_str()), (4222, "payments.in"));
        assert_eq!(parse("nats://n/a%2Eb").unwrap().unwrap().target, "a.b");
        let invalid: [&str; 11] = [
            "redis://r/",
            "nats://n/",
            "nats://n/a.*",
            "nats://n/a.>",
            "nats://n/$JS.API.STREAM.DELETE.ORDERS",
            "nats://n/_INBOX.x",
            "nats://n/a..b",
            "amqp://m/",
            "redis://r/s?x=1",
            &format!("amqp://m/x?routingKey={}", "k".repeat(256)),
            &format!("amqp://m/x?routingKey=k&vhost={}", "v".repeat(256)),
        ];
        for invalid in invalid {
            assert!(parse(invalid).unwrap().is_err(), "{invalid}");
        }
    }
}
