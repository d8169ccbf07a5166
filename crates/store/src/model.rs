//! The records the store keeps. Plain data: the server maps them to wire types.

pub use bytes::Bytes;
use hookline_core::delivery::{DeliveryState, Trigger};
use hookline_core::retry::RetryPolicy;
use hookline_core::signature::SignatureScheme;
use hookline_core::UnixMs;
use std::collections::BTreeMap;

pub type Metadata = BTreeMap<String, String>;

#[derive(Clone, PartialEq)]
pub struct App {
    pub id: String,
    pub uid: Option<String>,
    pub name: String,
    pub throttle_rate: Option<u32>,
    pub metadata: Metadata,
    pub retry_policy: Option<RetryPolicy>,
    /// Signs deliveries to per-message callback URLs (`whsec_…`).
    pub secret: String,
    /// Secrets rotated out that still sign beside `secret` until their expiry.
    pub previous_secrets: Vec<StoredSecret>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    /// Where alert emails about its endpoints go (else its metadata's `svix.email`).
    pub alert_email: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EventType {
    pub name: String,
    pub description: String,
    pub archived: bool,
    pub deprecated: bool,
    pub schemas: Option<serde_json::Value>,
    pub group_name: Option<String>,
    pub feature_flags: Option<Vec<String>>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
}

/// A signing secret and, after a rotation, when it stops signing.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredSecret {
    pub text: String,
    pub expires_at: Option<UnixMs>,
}

#[derive(Clone, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub app_id: String,
    pub uid: Option<String>,
    pub url: String,
    pub description: String,
    pub disabled: bool,
    pub event_types: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    pub throttle_rate: Option<u32>,
    pub metadata: Metadata,
    pub headers: BTreeMap<String, String>,
    /// Newest first. The first one is the current secret.
    pub secrets: Vec<StoredSecret>,
    pub signature_scheme: SignatureScheme,
    pub retry_policy: Option<RetryPolicy>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    /// When the first of the failed attempts since the last success was made (`None`: the
    /// last attempt succeeded, or none failed). Kept by `record_attempt`; cleared when an
    /// operator enables the endpoint.
    pub fail_since: Option<UnixMs>,
    /// Every delivery to this endpoint waits for the one published before it.
    pub fifo: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub id: String,
    pub app_id: String,
    pub event_id: Option<String>,
    pub event_type: String,
    /// The payload exactly as received: signatures are computed over these bytes.
    pub payload: Bytes,
    pub channels: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub callback_url: Option<String>,
    pub deliver_at: Option<UnixMs>,
    /// The inbound source that received it, for messages from providers.
    pub source_id: Option<String>,
    /// Headers sent with every delivery of this message (for inbound messages: the
    /// provider's content type and its original request, see the README).
    pub headers: Option<BTreeMap<String, String>>,
    /// When the message may be deleted before the store-wide retention window ends
    /// (Svix's `payloadRetentionPeriod`); `None`: kept for the whole window.
    pub retain_until: Option<UnixMs>,
    /// Deliveries of messages with one key reach each endpoint in publish order.
    pub ordering_key: Option<String>,
    pub created_at: UnixMs,
}

impl Delivery {
    /// A new delivery of `message` to an endpoint (or, with `None`, to its callback URL),
    /// due at `due_at`.
    pub fn pending(
        id: String,
        message: &Message,
        endpoint_id: Option<String>,
        due_at: UnixMs,
        now: UnixMs,
    ) -> Delivery {
        Delivery {
            id,
            msg_id: message.id.clone(),
            app_id: message.app_id.clone(),
            endpoint_id,
            state: DeliveryState::Pending,
            attempts: 0,
            next_at: Some(due_at),
            first_attempt_at: None,
            trigger: Trigger::Scheduled,
            updated_at: now,
            order_key: None,
        }
    }
}

impl Delivery {
    /// A new delivery of `message` to an endpoint that never had one, due at `now` as a
    /// manual attempt (a resend); an ordered one waits in its lane.
    pub fn resent(id: String, message: &Message, endpoint: &Endpoint, now: UnixMs) -> Delivery {
        let delivery = Delivery::pending(id, message, Some(endpoint.id.clone()), now, now);
        match endpoint.lane_for(message) {
            None => Delivery { trigger: Trigger::Manual, ..delivery },
            lane => Delivery {
                trigger: Trigger::Manual,
                state: DeliveryState::Waiting,
                next_at: None,
                order_key: lane,
                ..delivery
            },
        }
    }
}

/// One message's journey to one destination: an endpoint, or the message's callback URL.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub msg_id: String,
    pub app_id: String,
    /// `None` for the per-message callback URL.
    pub endpoint_id: Option<String>,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_at: Option<UnixMs>,
    pub first_attempt_at: Option<UnixMs>,
    pub trigger: Trigger,
    pub updated_at: UnixMs,
    /// The ordering lane this delivery waits in at its endpoint: the message's ordering
    /// key, or `""` for every delivery to a FIFO endpoint. `None`: never waits.
    pub order_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub id: String,
    pub msg_id: String,
    pub app_id: String,
    pub delivery_id: String,
    pub endpoint_id: Option<String>,
    pub url: String,
    /// 0 when no response arrived (timeout, connection error).
    pub status_code: u16,
    /// A capped excerpt of the response body.
    pub response: String,
    pub duration_ms: u64,
    pub error_class: Option<String>,
    pub state: DeliveryState,
    pub trigger: Trigger,
    pub created_at: UnixMs,
}

/// The outcome of an attempt, written in one commit: the log row, the delivery's new
/// state, the endpoint's health (when it started failing), and whether the endpoint is
/// disabled now: it asked to be (410), or it has failed for `disable_after_ms`.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub attempt: Attempt,
    /// `Skipped` when no request was made (the endpoint was disabled): health is unchanged.
    pub state: DeliveryState,
    pub next_at: Option<UnixMs>,
    pub first_attempt_at: UnixMs,
    pub disable_endpoint: bool,
    /// Disable the endpoint when this attempt failed and every attempt has failed for this
    /// long (`hookline_core::delivery::failing_too_long`); 0 never does.
    pub disable_after_ms: u64,
    /// The node token the delivery was claimed under: the write applies only while the
    /// delivery is still claimed under it (a node that lost its lease changes nothing).
    pub claim: i64,
    /// Keep the claim (the node holds the retry in memory because it is due soon), or
    /// give the delivery back to the store for whichever node claims it when it is due.
    pub keep_claim: bool,
}

/// What writing an attempt's outcome did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The write applied: the delivery was still claimed under the record's token.
    pub applied: bool,
    /// This write disabled the endpoint (it was enabled before): when it started failing.
    pub disabled: Option<UnixMs>,
}

/// A stored API answer for an `Idempotency-Key`.
#[derive(Clone, Debug, PartialEq)]
pub struct IdempotentResponse {
    pub key: String,
    /// What the request was (method, route, body, hashed): the same key with another
    /// request is refused, not answered with this one's answer.
    pub fingerprint: [u8; 32],
    pub status: u16,
    pub body: Bytes,
    pub created_at: UnixMs,
}

/// What an `Idempotency-Key` held when a request came to take it
/// (`Store::reserve_idempotency_key`).
#[derive(Clone, Debug, PartialEq)]
pub enum Reservation {
    /// The request may run: the key is its own until it answers or gives it up.
    Taken,
    /// An earlier request's kept answer.
    Answered(IdempotentResponse),
    /// Another request holds the key and has not answered yet (on this node or another).
    Running { fingerprint: [u8; 32] },
}

impl Reservation {
    /// What the row a key holds says: a reservation (status 0) or a kept answer.
    pub fn of_held(held: IdempotentResponse) -> Reservation {
        match held.status {
            0 => Reservation::Running { fingerprint: held.fingerprint },
            _ => Reservation::Answered(held),
        }
    }
}

/// A message with the deliveries it fans out to, committed together.
#[derive(Clone, Debug)]
pub struct Publish {
    /// Shared with the deliveries handed to the engine after the commit.
    pub message: std::sync::Arc<Message>,
    pub deliveries: Vec<Delivery>,
    pub idempotency: Option<IdempotentResponse>,
    /// For inbound messages: `(source id, provider event id)`. A message already stored
    /// under the same pair makes this publish a duplicate, and nothing is written.
    pub dedupe: Option<(String, String)>,
    /// The token of the node that commits it: its deliveries are claimed by that node from
    /// the start (it delivers them from memory). `None` leaves them for any node to claim
    /// when due (messages scheduled for later).
    pub claim: Option<i64>,
    /// Endpoints (`None`: the message's callback URLs) whose deliveries are left unclaimed
    /// even so: the committing node holds all it will of theirs (a slow or throttled
    /// endpoint's backlog). Those due now are stored deferred ([`Publish::stored_state`]):
    /// they wait for their lane to have room ([`crate::Store::claim_deferred`]), not among the due
    /// work every claim looks at. Usually empty.
    pub unclaimed: Vec<Option<String>>,
}

impl Publish {
    /// The token `delivery` is claimed under at commit, if any.
    pub fn claim_of(&self, delivery: &Delivery) -> Option<i64> {
        self.claim.filter(|_| !self.unclaimed.contains(&delivery.endpoint_id))
    }

    /// The state code `delivery` is stored with: [`DEFERRED`] for a pending, unordered
    /// delivery left unclaimed although due now (its lane is behind), its own otherwise.
    pub fn stored_state(&self, delivery: &Delivery) -> i64 {
        let deferred = self.claim.is_some()
            && self.unclaimed.contains(&delivery.endpoint_id)
            && delivery.state == DeliveryState::Pending
            && delivery.order_key.is_none();
        if deferred {
            DEFERRED
        } else {
            delivery.state.code()
        }
    }
}

/// The stored state of a pending delivery that waits for its lane (endpoint, or an
/// application's callback URLs) to have room, outside the due work `claim_due` looks at.
/// It reads as `Pending` everywhere ([`state_of_code`]): deferring is how the store queues,
/// not a state of the delivery.
pub const DEFERRED: i64 = 7;
/// The state code of a canceled delivery (`DeliveryState::Canceled`).
pub const CANCELED: i64 = DeliveryState::Canceled as i64;

/// The delivery state a stored code stands for (a deferred delivery is pending).
pub fn state_of_code(code: i64) -> Option<DeliveryState> {
    match code {
        DEFERRED => Some(DeliveryState::Pending),
        code => DeliveryState::from_code(code),
    }
}

/// A claim of due work (`Store::claim_due`).
#[derive(Clone, Debug)]
pub struct ClaimDue {
    /// The claiming node's token.
    pub token: i64,
    /// Deliveries due at or before this are due work.
    pub horizon: UnixMs,
    pub now: UnixMs,
    /// How many of the earliest due deliveries are looked at.
    pub window: usize,
    /// How many of them are claimed at most (the node's room).
    pub limit: usize,
    /// Endpoints whose due deliveries are deferred instead.
    pub behind: Vec<String>,
}

/// What a claim took: the deliveries claimed, how many it deferred, and their lanes.
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    pub deliveries: Vec<Delivery>,
    pub deferred: usize,
    pub deferred_lanes: Vec<DeferredLane>,
    /// Rows of the window whose application is being deleted, closed (canceled) by the
    /// claim rather than claimed: they leave the due work at once, in bulk.
    pub closed: usize,
}

impl Claimed {
    /// Sorts rows a claim returned into claimed and deferred, by their stored state.
    pub fn sort(rows: impl IntoIterator<Item = (Delivery, i64)>) -> Claimed {
        let mut claimed = Claimed::default();
        for (delivery, state) in rows {
            if state == CANCELED {
                claimed.closed += 1;
                continue;
            }
            if state != DEFERRED {
                claimed.deliveries.push(delivery);
                continue;
            }
            claimed.deferred += 1;
            let lane = DeferredLane { app_id: delivery.app_id, endpoint_id: delivery.endpoint_id };
            if !claimed.deferred_lanes.contains(&lane) {
                claimed.deferred_lanes.push(lane);
            }
        }
        claimed
    }

    /// How many rows of the window the claim used (claimed, deferred or closed).
    pub fn taken(&self) -> usize {
        self.deliveries.len() + self.deferred + self.closed
    }
}

/// A lane with deferred deliveries: an endpoint, or (`endpoint_id` `None`) an application's
/// callback URLs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeferredLane {
    pub app_id: String,
    pub endpoint_id: Option<String>,
}

impl DeferredLane {
    /// The lane of `app_id` whose endpoint the stores index as `endpoint` ('' for the
    /// callback lane).
    pub fn from_key(app_id: &str, endpoint: &str) -> DeferredLane {
        let endpoint_id = Some(endpoint.to_owned()).filter(|e| !e.is_empty());
        DeferredLane { app_id: app_id.to_owned(), endpoint_id }
    }

    /// The lane's endpoint as the stores index it (`from_key`'s `endpoint`).
    pub fn endpoint_key(&self) -> &str {
        self.endpoint_id.as_deref().unwrap_or_default()
    }
}

/// A delivery by its key: its message's id and its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub msg_id: String,
    pub id: String,
}

/// A signing secret of an inbound source; several may be active during a rotation.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceSecret {
    pub value: String,
    pub expires_at: Option<UnixMs>,
}

/// An inbound source: where a provider sends its webhooks, and how they are verified.
#[derive(Clone, PartialEq)]
pub struct Source {
    pub id: String,
    pub uid: Option<String>,
    pub name: String,
    /// The application whose endpoints receive the events.
    pub app_id: String,
    pub preset: hookline_core::inbound::Preset,
    pub secrets: Vec<SourceSecret>,
    pub event_types: Option<Vec<String>>,
    pub config: hookline_core::inbound::SourceConfig,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    /// A key for the provider's events API (Stripe: a restricted key that reads events),
    /// for reconciliation; sealed at rest like the secrets.
    pub api_key: Option<String>,
}

#[derive(Clone, Debug)]
pub enum PublishOutcome {
    Created,
    /// A message with the same `eventId` exists in the application, or one with the same
    /// dedupe key (a provider's event, a broker's message id); nothing was written.
    Duplicate(Box<Message>),
    /// A repeat of an event (its dedupe key) whose message retention has deleted since: the
    /// id that message had. The event was taken then; nothing was written.
    DuplicateOfPurged(String),
}

/// An alert email waiting in the outbox (see `Store::queue_alert_email`).
#[derive(Clone, Debug, PartialEq)]
pub struct AlertEmail {
    /// Time-ordered, as every id.
    pub id: String,
    /// The application it is about.
    pub app_id: String,
    /// For an email about an endpoint's state (disabled, enabled): the endpoint. A newer
    /// one replaces it while it waits.
    pub about: Option<String>,
    pub to: String,
    pub subject: String,
    pub body: String,
    /// Sends tried and failed so far.
    pub tries: u32,
    /// When it may be tried (again).
    pub not_before: UnixMs,
}

/// An endpoint's failures not yet told in a summary email: one per endpoint, shared by
/// every node, so that each node's counts add up to one summary per window (see
/// `Store::count_alert_failures`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertDigest {
    pub endpoint_id: String,
    pub app_id: String,
    /// Where the summary goes, and the application, endpoint and URL as it shows them.
    pub to: String,
    pub app: String,
    pub endpoint: String,
    pub url: String,
    /// Messages that failed 4 attempts in a row, and messages out of retries, since `since`.
    pub failing: u64,
    pub exhausted: u64,
    /// When the first failure not yet told came; `None` when all are told.
    pub since: Option<UnixMs>,
    /// When the last summary was queued.
    pub sent_at: Option<UnixMs>,
}

/// How `Store::take_alert_digests` turns the digests due into emails.
#[derive(Clone)]
pub struct DigestRules {
    pub now: UnixMs,
    /// A digest is due `gather_ms` after its first failure not yet told (so that a flood
    /// makes one email), and no sooner than `digest_ms` after its last summary.
    pub gather_ms: u64,
    pub digest_ms: u64,
    /// The outbox's shares (see `Store::queue_alert_email`).
    pub app_max: usize,
    pub all_max: usize,
    /// The summary email of a digest due.
    pub render: std::sync::Arc<dyn Fn(&AlertDigest) -> AlertEmail + Send + Sync>,
}

/// What a `Store::take_alert_digests` did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DigestsTaken {
    /// Summary emails put in the outbox.
    pub queued: usize,
    /// Emails the outbox's shares pushed out to make room for them.
    pub pushed_out: u64,
    /// When the next digest is due, if one has failures not yet told.
    pub next_due: Option<UnixMs>,
}

/// What a recover restarts: the endpoint's exhausted or skipped deliveries of messages
/// created in `[since, until)`, made due at `now`.
#[derive(Clone, Debug)]
pub struct Recovery {
    pub app_id: String,
    pub endpoint_id: String,
    pub since: UnixMs,
    pub until: UnixMs,
    pub now: UnixMs,
}

/// Cursor pagination by id (ids sort by creation time).
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub limit: usize,
    pub iterator: Option<String>,
    pub descending: bool,
    /// The page before `iterator` (a `prevIterator` followed), in the same order.
    pub backwards: bool,
}

#[derive(Clone, Debug)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub done: bool,
}

/// Filters of the attempt and message listings.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub status: Option<DeliveryState>,
    pub event_types: Option<Vec<String>>,
    pub channel: Option<String>,
    pub tag: Option<String>,
    pub before: Option<UnixMs>,
    pub after: Option<UnixMs>,
    /// Attempts only: to this endpoint (its id).
    pub endpoint_id: Option<String>,
    /// Attempts only: answered with a status of this class (`200` for 200 to 299), or
    /// with none (`0`: no answer).
    pub status_code_class: Option<u16>,
}

/// A delivery joined with what the API shows beside it: its endpoint in a message's
/// listing, its message in an endpoint's. Either is `None` when it is gone (deleted since
/// the delivery was read): the delivery stays in its page, so the page's cursor still moves
/// past it (a page of such deliveries left out had no cursor, and said more followed).
#[derive(Clone, Debug)]
pub struct DeliveryView {
    pub delivery: Delivery,
    pub endpoint: Option<Endpoint>,
    pub message: Option<Message>,
}

/// An API token, stored as the SHA-256 of its value. Admin tokens have no application;
/// application tokens can reach only their application's resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub hash: [u8; 32],
    pub app_id: Option<String>,
    pub created_at: UnixMs,
}

/// A node's lease on the work it claims. The token is unique per registration and fences
/// every claim: claims under a token whose lease expired are void, and any node may take
/// the deliveries over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLease {
    pub token: i64,
    pub lease_until: UnixMs,
}

/// A change to configuration or due work, told to every node sharing the store so its
/// caches follow (PostgreSQL `LISTEN/NOTIFY`). A single-node store tells nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An application, its endpoints or its secrets changed (by application id).
    App(String),
    /// Some inbound source changed.
    Sources,
    /// An API token was added or revoked.
    Tokens,
    /// Due work was given back to the store or made due (recover, release): claim now.
    Due,
    /// Notifications may have been missed (a reconnect): forget every cached thing.
    Flush,
}

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
/// Upper bounds (ms) of the latency histogram's buckets; a last bucket holds the slower.
pub const LATENCY_BOUNDS_MS: [u64; 7] = [50, 100, 250, 500, 1_000, 2_500, 10_000];
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Counters of one scope (an endpoint, or an inbound source) over one bucket of time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatCounts {
    /// Attempts that delivered, and attempts that failed.
    pub succeeded: u64,
    pub failed: u64,
    /// Attempts by duration: bucket `i` holds those up to `LATENCY_BOUNDS_MS[i]`.
    pub latency: [u64; LATENCY_BUCKETS],
    /// Requests to an inbound source: stored, refused (signature, replay, limits), and
    /// answered as duplicates.
    pub accepted: u64,
    pub refused: u64,
    pub duplicate: u64,
}

impl StatCounts {
    pub fn record_attempt(&mut self, ok: bool, duration_ms: u64) {
        if ok {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        let bucket =
            LATENCY_BOUNDS_MS.iter().position(|bound| duration_ms <= *bound).unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[bucket] += 1;
    }

    pub fn add(&mut self, other: &StatCounts) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency) {
            *mine += theirs;
        }
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.duplicate += other.duplicate;
    }

    /// The latency under which a share `q` of the attempts finished, as the upper bound of
    /// its histogram bucket (`None` with no attempts; the last bound for the slowest bucket).
    pub fn latency_quantile_ms(&self, q: f64) -> Option<u64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS[i.min(LATENCY_BOUNDS_MS.len() - 1)]);
            }
        }
        LATENCY_BOUNDS_MS.last().copied()
    }

    /// The counters in the order of `columns::STAT_COLUMNS` after its key columns.
    pub fn in_column_order(&self) -> impl Iterator<Item = u64> + '_ {
        [self.succeeded, self.failed].into_iter().chain(self.latency).chain([
            self.accepted,
            self.refused,
            self.duplicate,
        ])
    }

    pub fn from_column_order(c: [u64; crate::columns::STAT_COUNTERS]) -> StatCounts {
        let mut latency = [0; LATENCY_BUCKETS];
        latency.copy_from_slice(&c[2..2 + LATENCY_BUCKETS]);
        StatCounts { succeeded: c[0], failed: c[1], latency, accepted: c[10], refused: c[11], duplicate: c[12] }
    }
}

/// One scope's counters over one bucket: a minute (`MINUTE_MS`) or, after roll-up, an hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatRow {
    /// An endpoint id or an inbound source id.
    pub scope: String,
    pub app_id: String,
    pub width_ms: i64,
    /// The bucket's start.
    pub bucket: UnixMs,
    pub counts: StatCounts,
}

/// Which statistics rows a read takes.
#[derive(Clone, Copy, Debug)]
pub enum StatScope<'a> {
    /// One endpoint's or one source's.
    One(&'a str),
    /// Those of every endpoint of an application.
    EndpointsOf(&'a str),
    /// Those of every endpoint of every application but the operational one.
    Endpoints,
}

/// A dashboard sign-in: a session, or a portal link not used yet. The browser holds a
/// random secret; the store keeps only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DashboardSession {
    pub id: [u8; 32],
    /// A single-use sign-in link rather than a session.
    pub link: bool,
    /// The API token signed in with (its id), or the link a session came from.
    pub token_id: String,
    /// The one application it may see; `None` for the operator.
    pub app_id: Option<String>,
    pub created_at: UnixMs,
    pub expires_at: UnixMs,
}

impl Endpoint {
    /// The ordering lane a message's delivery to this endpoint waits in: every delivery to
    /// a FIFO endpoint shares the lane `""`; otherwise the message's ordering key, if any.
    pub fn lane_for(&self, message: &Message) -> Option<String> {
        if self.fifo {
            Some(String::new())
        } else {
            message.ordering_key.clone()
        }
    }
}

/// An ordering lane of an endpoint: its open delivery (the one the others wait for, if
/// any) and how many wait behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderingLane {
    /// The ordering key (`""` for a FIFO endpoint's one lane).
    pub key: String,
    pub head: Option<Delivery>,
    pub waiting: u64,
}

/// What `Debug` shows in place of a secret: records are printed in test failures and may be
/// in a log line some day; their secrets (signing secrets, API keys, custom header values,
/// often credentials) never are.
struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("uid", &self.uid)
            .field("name", &self.name)
            .field("throttle_rate", &self.throttle_rate)
            .field("metadata", &self.metadata)
            .field("retry_policy", &self.retry_policy)
            .field("secret", &Redacted)
            .field("previous_secrets", &self.previous_secrets)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("alert_email", &self.alert_email)
            .finish()
    }
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecret").field("text", &Redacted).field("expires_at", &self.expires_at).finish()
    }
}

impl std::fmt::Debug for SourceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSecret").field("value", &Redacted).field("expires_at", &self.expires_at).finish()
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: BTreeMap<&String, Redacted> = self.headers.keys().map(|name| (name, Redacted)).collect();
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("app_id", &self.app_id)
            .field("uid", &self.uid)
            .field("url", &self.url)
            .field("description", &self.description)
            .field("disabled", &self.disabled)
            .field("event_types", &self.event_types)
            .field("channels", &self.channels)
            .field("throttle_rate", &self.throttle_rate)
            .field("metadata", &self.metadata)
            .field("headers", &headers)
            .field("secrets", &self.secrets)
            .field("signature_scheme", &self.signature_scheme)
            .field("retry_policy", &self.retry_policy)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("fail_since", &self.fail_since)
            .field("fifo", &self.fifo)
            .finish()
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("id", &self.id)
            .field("uid", &self.uid)
            .field("name", &self.name)
            .field("app_id", &self.app_id)
            .field("preset", &self.preset)
            .field("secrets", &self.secrets)
            .field("event_types", &self.event_types)
            .field("config", &self.config)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("api_key", &self.api_key.as_ref().map(|_| Redacted))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret() {
        let secret = |text: &str| StoredSecret { text: text.into(), expires_at: None };
        let endpoint = Endpoint {
            headers: BTreeMap::from([("Authorization".to_owned(), "Bearer endpoint-header-value".to_owned())]),
            secrets: vec![secret("whsec_endpoint-secret")],
            ..crate::conformance::endpoint("app_1", 1)
        };
        let app = App {
            secret: "whsec_app-secret".into(),
            previous_secrets: vec![secret("whsec_app-previous-secret")],
            ..crate::conformance::app(1, None)
        };
        let source = Source {
            id: "src_1".into(),
            uid: None,
            name: "Stripe".into(),
            app_id: app.id.clone(),
            preset: hookline_core::inbound::Preset::Stripe,
            secrets: vec![SourceSecret { value: "whsec_source-secret".into(), expires_at: Some(5) }],
            event_types: None,
            config: Default::default(),
            created_at: 1,
            updated_at: 1,
            api_key: Some("rk_live_api-key".into()),
        };
        let printed = format!("{app:?} {endpoint:?} {source:?}");
        let secrets =
            ["app-secret", "app-previous-secret", "endpoint-secret", "endpoint-header-value", "source-secret"];
        for secret in secrets.into_iter().chain(["api-key"]) {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        for shown in ["Authorization", "<redacted>", "expires_at: Some(5)", &app.id] {
            assert!(printed.contains(shown), "{shown} not in {printed}");
        }
    }
}
