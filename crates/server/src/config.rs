//! Hookline's configuration: every section and key of the config file, with defaults.
//! The binary layers a file and `HOOKLINE_<SECTION>_<KEY>` variables over these.

use hookline_core::retry::RetryPolicy;
use hookline_core::ssrf::AddressPolicy;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub api: ApiConfig,
    pub delivery: DeliveryConfig,
    pub database: DatabaseConfig,
    pub cluster: ClusterConfig,
    pub retention: RetentionConfig,
    pub inbound: InboundConfig,
    pub network: NetworkConfig,
    pub security: SecurityConfig,
    pub metrics: MetricsConfig,
    pub dashboard: DashboardConfig,
    pub alerts: AlertsConfig,
    pub ingest: IngestConfig,
    pub log: LogConfig,
}

/// Queues Hookline consumes messages from (`[[ingest.redis]]`, `[[ingest.amqp]]`,
/// `[[ingest.nats]]`): each message is a publish body plus its `app`, acknowledged to the
/// broker only once it and its deliveries are committed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub redis: Vec<RedisIngest>,
    pub amqp: Vec<AmqpIngest>,
    pub nats: Vec<NatsIngest>,
}

/// A Redis stream read through a consumer group.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisIngest {
    /// `redis://[user:pass@]host:port[/db]`.
    pub url: String,
    pub stream: String,
    /// Created (from the stream's start, `MKSTREAM`) if missing.
    pub group: String,
    /// Default: the node's name (`cluster.node_name`, else the host name).
    pub consumer: Option<String>,
    /// The entry field holding the message's JSON.
    #[serde(default = "default_redis_field")]
    pub field: String,
    /// Entries read at once, and committed concurrently.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Entries another consumer has held this long unacknowledged (it died, or the store
    /// was down) are taken over with `XAUTOCLAIM`.
    #[serde(default = "default_claim_idle_ms")]
    pub claim_idle_ms: u64,
}

/// A RabbitMQ (AMQP 0.9.1) queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpIngest {
    /// `amqp://[user:pass@]host:port/[vhost]` (or `amqps://`).
    pub url: String,
    pub queue: String,
    /// Unacknowledged messages the broker sends at once.
    #[serde(default = "default_batch")]
    pub prefetch: usize,
    /// Required: where refused messages go (`requeue=false` without one discards them).
    /// Hookline declares the queue with it; if the exchange is missing, it creates it
    /// (fanout) with a queue `<queue>.dlq` bound to it.
    pub dead_letter_exchange: Option<String>,
}

/// A NATS JetStream stream read through a durable pull consumer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsIngest {
    /// `nats://host:port`.
    pub url: String,
    pub stream: String,
    /// The durable consumer's name (created if missing).
    pub durable: String,
    /// Only these subjects of the stream (default: all).
    pub filter_subject: Option<String>,
    /// How long a message may go unacknowledged before JetStream redelivers it.
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Deliveries of one message at most: -1 (unlimited), the default and the only value
    /// taken, so JetStream never gives up on a message Hookline has not stored (refused
    /// ones go to the dead letter instead).
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    /// Where refused messages are published (it must be captured by a stream); default
    /// `hookline.dlq.<stream>`.
    pub dlq_subject: Option<String>,
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_redis_field() -> String {
    "message".into()
}
fn default_batch() -> usize {
    256
}
fn default_claim_idle_ms() -> u64 {
    30_000
}
fn default_ack_wait_ms() -> u64 {
    30_000
}
fn default_max_deliver() -> i64 {
    -1
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// The SMTP server alert emails go through: `smtp://host:25` (plain, or STARTTLS with
    /// `?tls=required`), `smtps://user:pass@host:465` (TLS). Absent: no emails.
    pub smtp_url: Option<String>,
    /// The sender of alert emails.
    pub from: String,
    /// At most one summary of failing and exhausted messages per endpoint per this window.
    pub digest_ms: u64,
    /// How long the first failure of a window waits for others, so one email counts a flood.
    pub gather_ms: u64,
    /// How long one SMTP exchange may take.
    pub timeout_ms: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            smtp_url: None,
            from: "Hookline <hookline@localhost>".into(),
            digest_ms: 3_600_000,
            gather_ms: 60_000,
            timeout_ms: 10_000,
        }
    }
}

/// The dashboard at `/dashboard`: the operator console and the merchant portal.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Serve it (off: `/dashboard` answers 404 and portal links cannot be made).
    pub enabled: bool,
    /// How long a dashboard session lasts after signing in.
    pub session_ttl_ms: u64,
    /// How long a portal link may wait before it is opened (it signs in once).
    pub link_ttl_ms: u64,
    /// How often open pages refresh their figures.
    pub refresh_ms: u64,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig { enabled: true, session_ttl_ms: 12 * 3_600_000, link_ttl_ms: 600_000, refresh_ms: 5_000 }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A token for scrapers (their `bearer_token`): `GET /metrics` answers it, or an admin
    /// token, and nothing else (the metrics name every application's endpoints). Trimmed as
    /// `api.admin_token` is.
    #[serde(deserialize_with = "trimmed")]
    pub token: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Base64 of 32 bytes: the key that seals secrets at rest. When absent, Hookline keeps
    /// one in `secret.key` in the data dir (created on first start, mode 0600).
    pub secret_key: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    /// Local development: plain-http endpoints and loopback/private targets allowed.
    pub dev: bool,
    /// Client connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Request headers accepted per request (more: 431).
    pub headers_max: usize,
    /// Bytes of request head accepted (at least 8192; more: 431).
    pub header_bytes_max: usize,
    /// How long a client may take to send its request head (slowloris defence).
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send its request body, from when the server first
    /// waits for it (the same defence for bodies; over it: 408).
    pub body_read_timeout_ms: u64,
    /// How long an answer's bytes may wait for the client to take them (a client that
    /// stops reading, its pipelined requests' answers piling up, held its connection and
    /// slot for good); over it the connection is closed.
    pub write_timeout_ms: u64,
    /// Threads that serve the API, inbound sources and queue consumers. Unset: half the
    /// cores, at least one (every core when deliveries share them: `delivery.threads = 0`).
    pub threads: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8071".into(),
            data_dir: PathBuf::from("./hookline-data"),
            dev: false,
            max_connections: 10_000,
            headers_max: 64,
            header_bytes_max: 16_384,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            threads: None,
        }
    }
}

/// A token as given, without white space around it.
fn trimmed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(|token| token.trim().to_owned()))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Use this admin token instead of generating one (never logged). Read without the
    /// white space around it, which no `Authorization` header carries (a secret file's
    /// newline made a token no request could give).
    #[serde(deserialize_with = "trimmed")]
    pub admin_token: Option<String>,
    pub body_bytes_max: usize,
    pub idempotency_ttl_ms: u64,
    /// The URL providers and clients reach Hookline at (shown as sources' `ingestUrl`);
    /// default `http://{server.listen}`.
    pub public_url: Option<String>,
    /// Requests per second one application-scoped token may make (bursts up to twice that);
    /// over it: 429 with Retry-After. The admin token is not limited. 0 turns it off.
    pub token_rate_limit_per_s: u32,
    /// Endpoints one application may have.
    pub endpoints_per_app_max: usize,
    /// Deepest JSON nesting accepted in any request body, payloads included.
    pub json_depth_max: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            admin_token: None,
            body_bytes_max: 1024 * 1024,
            idempotency_ttl_ms: 24 * 3600 * 1000,
            public_url: None,
            token_rate_limit_per_s: 100,
            endpoints_per_app_max: 256,
            json_depth_max: 64,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Deliveries in flight at once, over all endpoints.
    pub max_in_flight: usize,
    /// Deliveries in flight at once to one endpoint, so a slow one cannot take every slot.
    pub endpoint_max_in_flight: usize,
    /// Bytes of each response body kept in the attempt log.
    pub response_bytes_max: usize,
    /// The retry policy of applications and endpoints that set none.
    pub retry_policy: RetryPolicy,
    /// How long a rotated-out secret keeps signing beside the new one.
    pub rotation_grace_ms: u64,
    /// How long shutdown waits for in-flight deliveries.
    pub shutdown_grace_ms: u64,
    /// After five attempts in a row that cannot reach an endpoint (nothing accepts the
    /// connection), its deliveries run one at a time, at most one per this many ms, until
    /// one reaches it: a merchant down with a million deliveries due costs one connection
    /// attempt a second, not the machine. 0 turns pacing off.
    pub unreachable_pause_ms: u64,
    /// An endpoint whose attempts have all failed for this long, on at least two separate
    /// days, with no success between, is disabled (`endpoint.disabled`, trigger
    /// `automatic`). 0 never disables.
    pub disable_after_ms: u64,
    /// Credentials for queue destinations, by the `host:port` their endpoint URLs name
    /// (URLs never carry credentials: tenants see their endpoints' URLs). The value is
    /// `user:password` (RabbitMQ, NATS, Redis ACL users) or `:password` (Redis `requirepass`).
    pub broker_credentials: std::collections::BTreeMap<String, String>,
    /// Threads that send deliveries, apart from the API's, so the API answers at once
    /// however much is being delivered. Unset: one per core. 0: deliveries share the API's
    /// threads.
    pub threads: Option<usize>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            request_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            max_in_flight: 20_000,
            endpoint_max_in_flight: 2_048,
            response_bytes_max: 4_096,
            retry_policy: RetryPolicy::default(),
            rotation_grace_ms: 24 * 3600 * 1000,
            shutdown_grace_ms: 10_000,
            unreachable_pause_ms: 1_000,
            disable_after_ms: 5 * 24 * 3600 * 1000,
            broker_credentials: Default::default(),
            threads: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user@host:5432/db` to keep everything in PostgreSQL, shared by several
    /// nodes; empty: embedded SQLite in `server.data_dir`.
    pub url: String,
    /// Connections each node keeps to PostgreSQL.
    pub pool_max: usize,
    /// Longest wait for one database call (a connection, a statement) before the request
    /// is answered 503.
    pub timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: String::new(), pool_max: 16, timeout_ms: 5_000 }
    }
}

/// How nodes share due work: each claims batches of due deliveries under a lease it
/// renews; a node that stops renewing loses its claims to the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name in logs and the nodes table; default: host name and process id.
    pub node_name: Option<String>,
    /// How long a node's claims last without renewal: after a crash, the others take its
    /// deliveries over within this time. Renewed every third of it.
    pub lease_ms: u64,
    /// How often a node looks for due work in the store (and is woken sooner by a
    /// notification when another node frees some).
    pub poll_ms: u64,
    /// Deliveries claimed in one batch.
    pub claim_batch_max: usize,
    /// Deliveries one node holds in memory (queued, waiting for their endpoint, in
    /// flight) before it stops claiming: memory follows this, not the backlog.
    pub held_max: usize,
    /// Cached configuration is reloaded at least this often, even if a change
    /// notification was missed.
    pub cache_ttl_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_name: None,
            lease_ms: 30_000,
            poll_ms: 500,
            claim_batch_max: 500,
            held_max: 20_000,
            cache_ttl_ms: 30_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Messages, their deliveries and attempts are deleted this many days after they were
    /// created (unless the message set its own `payloadRetentionPeriod`). 0 keeps them.
    pub days: u32,
    /// Messages deleted per batch; batches are small so deletes never stall publishing.
    pub batch_max: usize,
    /// How often the leader node looks for expired data.
    pub interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { days: 30, batch_max: 500, interval_ms: 60_000 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundConfig {
    /// How long a provider's event id is remembered to drop its retries (7 days: longer
    /// than Stripe's and Shopify's retry horizons).
    pub dedupe_window_ms: u64,
    /// Refused requests kept per source for `GET /api/v1/source/{id}/rejection`.
    pub rejections_kept: usize,
    /// How often the leader reconciles each source that has an API key (15 min; 0: only
    /// on demand).
    pub reconcile_interval_ms: u64,
    /// How far back a reconciliation lists the provider's events (3 days).
    pub reconcile_window_ms: u64,
    /// Pages of 100 events a reconciliation reads at most (100: 10,000 events); one that
    /// stops there leaves where it stopped, and the next run goes on from there.
    pub reconcile_pages_max: usize,
    /// Stripe's API (set by the operator, never by a tenant; tests point it elsewhere).
    pub stripe_api_base: String,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            dedupe_window_ms: 7 * 24 * 3600 * 1000,
            rejections_kept: 50,
            reconcile_interval_ms: 15 * 60 * 1000,
            reconcile_window_ms: 3 * 24 * 3600 * 1000,
            reconcile_pages_max: 100,
            stripe_api_base: "https://api.stripe.com".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Address ranges deliveries may reach although they are private or special
    /// (e.g. `["10.20.0.0/16"]`).
    pub allow: Vec<IpNet>,
    /// Allow `http://` endpoint URLs (always allowed in dev mode).
    pub allow_http: bool,
    /// Longest endpoint or callback URL accepted.
    pub url_bytes_max: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig { allow: Vec::new(), allow_http: false, url_bytes_max: hookline_core::ssrf::URL_BYTES_MAX }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `hookline=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), level: "info".into() }
    }
}

impl Config {
    /// Worker threads for the API and for deliveries (0: deliveries run on the API's), on a
    /// machine with `cores` cores.
    pub fn threads(&self, cores: usize) -> (usize, usize) {
        let delivery = self.delivery.threads.unwrap_or(cores.max(1));
        let api = self.server.threads.unwrap_or(if delivery == 0 { cores } else { cores / 2 });
        (api.max(1), delivery)
    }

    /// Checks what types cannot; the binary exits non-zero with this message.
    pub fn validate(&self) -> Result<(), String> {
        bounded("", &serde_json::to_value(self).map_err(|e| e.to_string())?)?;
        let d = &self.delivery;
        let checks = [
            (self.api.body_bytes_max >= 1024, "api.body_bytes_max must be at least 1024"),
            // Reservations expire with the answers: a shorter time to live freed a key under
            // a request still running.
            (self.api.idempotency_ttl_ms >= IDEMPOTENCY_ABANDONED_MS, "api.idempotency_ttl_ms must be at least 120000"),
            (d.request_timeout_ms >= 100, "delivery.request_timeout_ms must be at least 100"),
            (d.connect_timeout_ms >= 100, "delivery.connect_timeout_ms must be at least 100"),
            (d.max_in_flight >= 1, "delivery.max_in_flight must be at least 1"),
            (d.endpoint_max_in_flight >= 1, "delivery.endpoint_max_in_flight must be at least 1"),
            (self.server.max_connections >= 1, "server.max_connections must be at least 1"),
            (self.server.threads != Some(0), "server.threads must be at least 1"),
            (self.api.json_depth_max >= 2, "api.json_depth_max must be at least 2"),
            (self.network.url_bytes_max >= 64, "network.url_bytes_max must be at least 64"),
            (self.server.headers_max >= 8, "server.headers_max must be at least 8"),
            (self.server.headers_max <= 1_024, "server.headers_max must be at most 1024"),
            (self.server.threads.is_none_or(|n| n <= THREADS_MAX), "server.threads must be at most 1024"),
            (d.threads.is_none_or(|n| n <= THREADS_MAX), "delivery.threads must be at most 1024"),
            (self.server.header_bytes_max >= 8_192, "server.header_bytes_max must be at least 8192"),
            (self.server.header_read_timeout_ms >= 100, "server.header_read_timeout_ms must be at least 100"),
            (self.server.body_read_timeout_ms >= 100, "server.body_read_timeout_ms must be at least 100"),
            (self.server.write_timeout_ms >= 100, "server.write_timeout_ms must be at least 100"),
            (matches!(self.log.format.as_str(), "text" | "json"), "log.format must be `text` or `json`"),
            (self.cluster.lease_ms >= 1_000, "cluster.lease_ms must be at least 1000"),
            (self.dashboard.session_ttl_ms >= 60_000, "dashboard.session_ttl_ms must be at least 60000"),
            (self.dashboard.link_ttl_ms >= 10_000, "dashboard.link_ttl_ms must be at least 10000"),
            (self.dashboard.refresh_ms >= 1_000, "dashboard.refresh_ms must be at least 1000"),
            (self.cluster.poll_ms >= 10, "cluster.poll_ms must be at least 10"),
            (
                self.cluster.poll_ms * 3 <= self.cluster.lease_ms,
                "cluster.poll_ms must be at most a third of cluster.lease_ms",
            ),
            (self.cluster.claim_batch_max >= 1, "cluster.claim_batch_max must be at least 1"),
            (
                self.cluster.held_max >= self.cluster.claim_batch_max,
                "cluster.held_max must be at least cluster.claim_batch_max",
            ),
            (self.cluster.cache_ttl_ms >= 100, "cluster.cache_ttl_ms must be at least 100"),
            (self.database.pool_max >= 2, "database.pool_max must be at least 2"),
            (self.database.pool_max <= 10_000, "database.pool_max must be at most 10000"),
            (self.database.timeout_ms >= 100, "database.timeout_ms must be at least 100"),
            (self.retention.batch_max >= 1, "retention.batch_max must be at least 1"),
            // A reconciliation matches the events it lists with the dedupe keys kept: an
            // event older than them would be taken again. A run lists newest first and may
            // take hours (pages rate limited), while retention goes on deleting keys: the
            // oldest of its window must still have theirs when it gets there.
            (
                self.inbound.reconcile_window_ms.saturating_add(reconcile_margin_ms(self.inbound.dedupe_window_ms))
                    <= self.inbound.dedupe_window_ms,
                "inbound.reconcile_window_ms must be shorter than inbound.dedupe_window_ms by a day (by half of it, \
                 if it is under two days)",
            ),
            (self.inbound.reconcile_pages_max >= 1, "inbound.reconcile_pages_max must be at least 1"),
            (self.retention.interval_ms >= 1_000, "retention.interval_ms must be at least 1000"),
            (self.alerts.timeout_ms >= 100, "alerts.timeout_ms must be at least 100"),
        ];
        if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
            return Err((*message).to_owned());
        }
        if self.api.admin_token.as_deref().is_some_and(|token| token.trim().is_empty()) {
            // Its hash would match a request with no token at all (`/metrics`, the sign-in
            // form): everyone would be the operator.
            return Err("api.admin_token must not be empty (unset it to have a token made at the first start)".into());
        }
        self.server.listen.parse::<std::net::SocketAddr>().map_err(|e| format!("server.listen: {e}"))?;
        let url = &self.database.url;
        if !url.is_empty() && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err("database.url must start with postgres:// (or be empty for SQLite)".into());
        }
        d.retry_policy.validate().map_err(|e| format!("delivery.retry_policy: {e}"))?;
        self.ingest.validate()?;
        if let Some(url) = &self.alerts.smtp_url {
            // The error never repeats the URL, which may hold a password.
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url).map_err(|_| {
                "alerts.smtp_url must be smtp://host[:port] or smtps://[user:pass@]host[:port]".to_owned()
            })?;
            // A password over `smtp://` without `tls=required` goes in the clear, or can be
            // made to by anyone between who strips STARTTLS (lettre sends it whenever one is
            // given, and reads the first `tls`), unless the relay is on this machine. (`smtp`
            // is no special scheme to the URL parser: an address comes as a name.)
            let parsed = url::Url::parse(url).map_err(|_| "alerts.smtp_url is not a URL".to_owned())?;
            let required = parsed.query_pairs().find(|(k, _)| k == "tls").is_some_and(|(_, v)| v == "required");
            let local = parsed.host_str().is_some_and(|host| {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            });
            if parsed.scheme() == "smtp" && parsed.password().is_some() && !required && !local {
                return Err("alerts.smtp_url: a password needs smtps:// or smtp://…?tls=required \
                            (it would go in the clear)"
                    .into());
            }
            self.alerts.from.parse::<lettre::message::Mailbox>().map_err(|e| format!("alerts.from: {e}"))?;
        }
        Ok(())
    }

    pub fn address_policy(&self) -> AddressPolicy {
        AddressPolicy {
            allow: self.network.allow.clone(),
            allow_all_private: self.server.dev,
            allow_plain_http: self.server.dev || self.network.allow_http,
            url_bytes_max: self.network.url_bytes_max,
        }
    }
}

/// The most a duration (a `…_ms` or `…Ms` setting) may be: a hundred years, far from where adding
/// it to a clock reading or multiplying it overflows.
const DURATION_MS_MAX: u64 = 100 * 365 * 24 * 3_600_000;

/// The most any other number may be (a count, a size): more than any machine holds, and
/// far from where a semaphore or a pool refuses its size at start.
const NUMBER_MAX: u64 = u32::MAX as u64;

/// How much longer the inbound dedupe keys are kept than a reconciliation's window: a run
/// may take hours, and must find the keys of the oldest events it lists.
pub const RECONCILE_MARGIN_MS: u64 = 24 * 3600 * 1000;

/// The margin kept with dedupe keys of `dedupe_window_ms`: a day, or half of a shorter time
/// (a fixed day refused every reconciliation window beside keys kept under a day).
pub fn reconcile_margin_ms(dedupe_window_ms: u64) -> u64 {
    RECONCILE_MARGIN_MS.min(dedupe_window_ms / 2)
}

/// How long a reservation of an `Idempotency-Key` without an answer holds the key: longer
/// than any request runs (their reads and store calls have timeouts of seconds), so only a
/// node that stopped mid-request leaves one this old.
pub const IDEMPOTENCY_ABANDONED_MS: u64 = 120_000;

/// The most threads either runtime may be given (each is started at once).
const THREADS_MAX: usize = 1_024;

/// Checks every number of the settings (`path` names where `value` sits) against its ceiling.
fn bounded(path: &str, value: &serde_json::Value) -> Result<(), String> {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, field) in fields {
                let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                bounded(&path, field)?;
            }
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(|item| bounded(path, item))?,
        serde_json::Value::Number(number) => {
            let max = if path.ends_with("_ms") || path.ends_with("Ms") { DURATION_MS_MAX } else { NUMBER_MAX };
            if number.as_u64().is_some_and(|n| n > max) {
                return Err(format!("{path} must be at most {max}"));
            }
        }
        _ => {}
    }
    Ok(())
}

impl IngestConfig {
    fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for r in &self.redis {
            prefixed("ingest.redis.url", &r.url, &["redis://"])?;
            required("ingest.redis.stream", &r.stream)?;
            required("ingest.redis.group", &r.group)?;
            batch("ingest.redis.batch", r.batch)?;
            if r.claim_idle_ms < 1_000 {
                // Less, and other nodes' `XAUTOCLAIM` took over entries still being stored
                // (each stored twice, out of its ordering lane's order).
                return Err("ingest.redis.claim_idle_ms must be at least 1000".into());
            }
            if !names.insert(format!("redis:{}:{}", r.stream, r.group)) {
                return Err(format!("ingest.redis: stream {} and group {} are listed twice", r.stream, r.group));
            }
        }
        for a in &self.amqp {
            prefixed("ingest.amqp.url", &a.url, &["amqp://", "amqps://"])?;
            required("ingest.amqp.queue", &a.queue)?;
            batch("ingest.amqp.prefetch", a.prefetch)?;
            if a.dead_letter_exchange.as_deref().is_none_or(str::is_empty) {
                return Err(format!(
                    "ingest.amqp queue {}: dead_letter_exchange is required (refused messages would be discarded)",
                    a.queue
                ));
            }
        }
        for n in &self.nats {
            prefixed("ingest.nats.url", &n.url, &["nats://"])?;
            required("ingest.nats.stream", &n.stream)?;
            required("ingest.nats.durable", &n.durable)?;
            batch("ingest.nats.batch", n.batch)?;
            if n.ack_wait_ms < 1_000 {
                return Err("ingest.nats.ack_wait_ms must be at least 1000".into());
            }
            if n.max_deliver != -1 {
                // JetStream stops offering a message after that many deliveries, stored or
                // not (a node stopped or killed mid-outage each time): a silent loss.
                // Refused messages go to `dlq_subject`, so no limit is needed against loops.
                return Err("ingest.nats.max_deliver must be -1 (unlimited): JetStream would stop offering a \
                            message after that many deliveries, stored or not"
                    .into());
            }
        }
        Ok(())
    }
}

fn prefixed(key: &str, url: &str, schemes: &[&str]) -> Result<(), String> {
    // The error never repeats the URL, which may hold a password.
    match schemes.iter().any(|s| url.starts_with(s)) {
        true => Ok(()),
        false => Err(format!("{key} must start with {}", schemes.join(" or "))),
    }
}

fn required(key: &str, value: &str) -> Result<(), String> {
    match value.is_empty() {
        true => Err(format!("{key} must not be empty")),
        false => Ok(()),
    }
}

fn batch(key: &str, value: usize) -> Result<(), String> {
    match (1..=10_000).contains(&value) {
        true => Ok(()),
        false => Err(format!("{key} must be 1 to 10000")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_sized_from_the_cores_unless_set() {
        let mut config = Config::default();
        assert_eq!(config.threads(1), (1, 1));
        assert_eq!(config.threads(2), (1, 2));
        assert_eq!(config.threads(8), (4, 8));
        config.delivery.threads = Some(0);
        assert_eq!(config.threads(8), (8, 0), "0: deliveries share the API's threads, every core");
        config.server.threads = Some(3);
        assert_eq!(config.threads(8), (3, 0));
        config.server.threads = Some(0);
        assert!(config.validate().unwrap_err().contains("server.threads"));
    }

    /// An empty admin token (`HOOKLINE_ADMIN_TOKEN=` from an unset variable, say) is refused:
    /// its hash is the hash of no token, so every caller without one would be the operator.
    #[test]
    fn an_empty_admin_token_is_refused() {
        let mut config = Config::default();
        for empty in ["", "  "] {
            config.api.admin_token = Some(empty.into());
            assert!(config.validate().unwrap_err().contains("api.admin_token"), "{empty:?}");
        }
        config.api.admin_token = Some("s3cret".into());
        assert_eq!(config.validate(), Ok(()));
    }

    /// Reconciliation lists no further back than a day short of where the dedupe keys reach
    /// (an older event would be taken again, and so would the oldest of an equal window,
    /// whose keys retention deleted while a run made its way to them), and reads at least a
    /// page.
    #[test]
    fn reconciliation_stays_within_the_dedupe_window() {
        let mut config = Config::default();
        assert_eq!(config.validate(), Ok(()));
        config.inbound.reconcile_window_ms = config.inbound.dedupe_window_ms;
        assert!(config.validate().unwrap_err().contains("inbound.reconcile_window_ms"));
        config.inbound.reconcile_window_ms = config.inbound.dedupe_window_ms - RECONCILE_MARGIN_MS;
        assert_eq!(config.validate(), Ok(()));
        // Keys kept twelve hours: a window of six.
        config.inbound.dedupe_window_ms = 12 * 3600 * 1000;
        config.inbound.reconcile_window_ms = 6 * 3600 * 1000 + 1;
        assert!(config.validate().unwrap_err().contains("inbound.reconcile_window_ms"));
        config.inbound.reconcile_window_ms = 6 * 3600 * 1000;
        config.inbound.reconcile_pages_max = 0;
        assert!(config.validate().unwrap_err().contains("inbound.reconcile_pages_max"));
    }

    /// A JetStream consumer never gives up on a message: a limit would drop one unstored.
    #[test]
    fn a_nats_consumer_has_no_delivery_limit() {
        let nats = r#"{"url": "nats://127.0.0.1:4222", "stream": "PAYMENTS", "durable": "hookline"}"#;
        let mut config: Config = serde_json::from_str(&format!(r#"{{"ingest": {{"nats": [{nats}]}}}}"#)).unwrap();
        assert_eq!(config.ingest.nats[0].max_deliver, -1);
        assert_eq!(config.validate(), Ok(()));
        for limit in [5, 1, 0, -2] {
            config.ingest.nats[0].max_deliver = limit;
            assert!(config.validate().unwrap_err().contains("ingest.nats.max_deliver must be -1"), "{limit}");
        }
    }

    /// SMTP credentials never go in the clear: with a user and password, `smtps://` or
    /// STARTTLS required.
    #[test]
    fn smtp_credentials_need_tls() {
        let mut config = Config::default();
        for (url, ok) in [
            ("smtp://127.0.0.1:25", true),
            ("smtps://alerts:secret@mail.example:465", true),
            ("smtp://alerts:secret@mail.example:587?tls=required", true),
            ("smtp://alerts:secret@mail.example:587", false),
            ("smtp://alerts:secret@mail.example:587?tls=opportunistic", false),
            ("smtp://alerts:secret@mail.example:587?tls=opportunistic&tls=required", false),
            ("smtp://:secret@mail.example:587", false),
            ("smtp://alerts@mail.example:587", true),
            ("smtp://alerts:secret@127.0.0.1:1025", true),
            ("smtp://alerts:secret@[::1]:1025", true),
            ("smtp://alerts:secret@localhost:1025", true),
            ("smtp://alerts:secret@127.example:1025", false),
        ] {
            config.alerts.smtp_url = Some(url.into());
            let checked = config.validate();
            assert_eq!(checked.is_ok(), ok, "{url}: {checked:?}");
            if let Err(e) = checked {
                assert!(!e.contains("secret"), "the password is never repeated: {e}");
            }
        }
    }

    /// A Redis entry idle for less than a second may be one another node is storing: taken
    /// over that early, it was stored twice, out of its ordering lane's order.
    #[test]
    fn a_redis_consumer_takes_over_entries_idle_a_second_at_least() {
        let redis = r#"{"url": "redis://127.0.0.1:6379", "stream": "payments", "group": "hookline"}"#;
        let mut config: Config = serde_json::from_str(&format!(r#"{{"ingest": {{"redis": [{redis}]}}}}"#)).unwrap();
        assert_eq!(config.validate(), Ok(()));
        for idle in [0, 10, 999] {
            config.ingest.redis[0].claim_idle_ms = idle;
            assert!(config.validate().unwrap_err().contains("claim_idle_ms must be at least 1000"), "{idle}");
        }
        config.ingest.redis[0].claim_idle_ms = 1_000;
        assert_eq!(config.validate(), Ok(()));
    }
}
