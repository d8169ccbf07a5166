//! Hookline's durable store: the `Store` trait every backend implements, the records it
//! keeps, the embedded SQLite backend and the PostgreSQL backend for several nodes. Only
//! this crate knows SQL.
//!
//! Every write is committed when its future resolves, and every write a client's answer
//! waits for (a publish, an inbound event, an API change) is also synced; writes are
//! batched into group commits by each backend. On SQLite, the bookkeeping of deliveries
//! (attempt records, claims, leases, statistics, retention, alert state) commits without
//! waiting for the disk: a power loss in between can lose it, and a delivery is sent again;
//! no caller may answer a client on it.

mod columns;
mod model;
pub mod postgres;
mod query;
pub mod sealed;
pub mod sqlite;

pub use model::*;

use async_trait::async_trait;
use hookline_core::UnixMs;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// The value cannot be stored by this backend (PostgreSQL text cannot hold NUL).
    #[error("invalid value: {0}")]
    Invalid(String),
    /// The storage cannot take writes right now (disk full, IO error, shutting down).
    /// Callers answer 503: nothing was acknowledged.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Looks a resource up by its id or by its user-given `uid`.
pub type Key<'a> = &'a str;

/// Reconciliation runs kept per source; older ones are deleted as new ones are saved.
pub const RECONCILE_RUNS_KEPT: usize = 100;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Applications.
    async fn create_app(&self, app: App) -> StoreResult<App>;
    async fn get_app(&self, key: Key<'_>) -> StoreResult<App>;
    async fn list_apps(&self, page: Page) -> StoreResult<Listed<App>>;
    async fn update_app(&self, app: App) -> StoreResult<App>;
    /// Writes `app`'s secret, previous secrets and `updated_at` if the stored secrets are
    /// still `read`'s: false when another rotation came between, and nothing is written.
    async fn set_app_secrets(&self, app: App, read: &App) -> StoreResult<bool>;
    /// Deletes the application with its configuration (endpoints, sources, tokens, alerts)
    /// in one commit, marking it for the walk that deletes its messages, deliveries,
    /// attempts and statistics a step at a time (`crate::purge_deleted_app`, run next by
    /// the caller; the retention pass takes up a walk cut short): an application of any
    /// size goes without one long statement.
    async fn delete_app(&self, id: &str) -> StoreResult<()>;
    /// One step of deleting what is left of the deleted application `app_id`: its next
    /// `chunk` messages with their deliveries and attempts, else its next `chunk`
    /// statistics rows, else its mark in the deletions still under way (each step counts
    /// itself on the mark). Answers whether there is more.
    async fn purge_deleted_app(&self, app_id: &str, chunk: usize) -> StoreResult<bool>;
    /// The applications deleted whose walk has not ended, each with the steps walked so far.
    async fn deleted_apps(&self) -> StoreResult<Vec<(String, i64)>>;

    // Event types.
    async fn create_event_type(&self, event_type: EventType) -> StoreResult<EventType>;
    async fn get_event_type(&self, name: &str) -> StoreResult<EventType>;
    async fn list_event_types(&self, page: Page, include_archived: bool) -> StoreResult<Listed<EventType>>;
    async fn update_event_type(&self, event_type: EventType) -> StoreResult<EventType>;
    async fn delete_event_type(&self, name: &str) -> StoreResult<()>;

    // Endpoints.
    async fn create_endpoint(&self, endpoint: Endpoint) -> StoreResult<Endpoint>;
    async fn get_endpoint(&self, app_id: &str, key: Key<'_>) -> StoreResult<Endpoint>;
    async fn list_endpoints(&self, app_id: &str, page: Page) -> StoreResult<Listed<Endpoint>>;
    /// Every endpoint of an application, for routing.
    async fn app_endpoints(&self, app_id: &str) -> StoreResult<Vec<Endpoint>>;
    /// Writes `endpoint`'s configuration over the stored one if that is still as `read` (its
    /// `updated_at` and `disabled`): `None` when it changed since (an automatic disable,
    /// another request), and nothing is written. Its health (`fail_since`) is the store's
    /// own: kept, or cleared when this write enables it; the endpoint returned holds it.
    async fn update_endpoint(&self, endpoint: Endpoint, read: &Endpoint) -> StoreResult<Option<Endpoint>>;
    /// Deletes the endpoint in one commit; its open deliveries are closed after it a step at
    /// a time (`crate::delete_endpoint` does both).
    async fn delete_endpoint(&self, app_id: &str, id: &str) -> StoreResult<()>;
    /// One step of closing (canceling) a deleted endpoint's open deliveries, which can never
    /// be made: those among its next `chunk` deliveries in message-id order after `after`
    /// (`""` for the first). Answers where the next step starts, none after the last.
    async fn close_deleted_endpoint_step(
        &self,
        endpoint_id: &str,
        after: &str,
        chunk: usize,
    ) -> StoreResult<Option<String>>;

    // Messages.
    /// Commits the message and all its deliveries (and the idempotent answer) together.
    async fn publish(&self, publish: Publish) -> StoreResult<PublishOutcome>;
    async fn get_message(&self, app_id: &str, key: Key<'_>) -> StoreResult<Message>;
    async fn message_by_id(&self, id: &str) -> StoreResult<Message>;
    async fn list_messages(&self, app_id: &str, filter: ListFilter, page: Page) -> StoreResult<Listed<Message>>;

    // Nodes, leases and due work. A node registers, renews its lease while it lives, and
    // claims due deliveries in batches under its token; claims under a token whose lease
    // has expired are void, so another node takes the work over.
    /// Registers a node process (a fresh token). A single-node store voids every earlier
    /// token at once: the process before this one is gone.
    async fn register_node(&self, name: &str, now: UnixMs, lease_ms: u64) -> StoreResult<NodeLease>;
    /// Extends a live lease to `now + lease_ms`; false if it had expired (the node must
    /// drop what it holds and register again).
    async fn renew_node(&self, token: i64, now: UnixMs, lease_ms: u64) -> StoreResult<bool>;
    /// Ends a lease at once (clean shutdown): its claims are free for other nodes now.
    async fn retire_node(&self, token: i64) -> StoreResult<()>;
    /// How many nodes hold a live lease at `now` (each shares per-endpoint rate limits).
    async fn live_nodes(&self, now: UnixMs) -> StoreResult<usize>;
    /// Looks at the `window` earliest open deliveries due at or before `horizon` that no live
    /// node holds. Those to an endpoint in `behind` (its lane at the node has all it may
    /// take) are deferred unless ordered: they wait for [`Store::claim_deferred`], so that
    /// one endpoint's backlog does not stand before every other endpoint's due work. Of the
    /// rest, the `limit` earliest are claimed under the token. Nothing is taken if the
    /// token's lease has expired.
    async fn claim_due(&self, claim: ClaimDue) -> StoreResult<Claimed>;
    /// Claims up to `limit` of the lane's deferred deliveries under `token`, earliest due
    /// first; they become pending. Nothing is claimed if the token's lease has expired.
    async fn claim_deferred(
        &self,
        token: i64,
        lane: DeferredLane,
        now: UnixMs,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>>;
    /// Lanes with deferred deliveries after `after` (in `(app_id, endpoint_id)` order, a
    /// callback lane first in its application), at most `limit`: each node looks now and
    /// then, so that a lane another node deferred, or a node before a restart, is taken up.
    /// Each lane found costs an index seek or two, however many deliveries it defers.
    async fn deferred_lanes(&self, after: Option<DeferredLane>, limit: usize) -> StoreResult<Vec<DeferredLane>>;
    /// The open deliveries claimed under `token` that were due before `due_before`, earliest
    /// first, among the `window` earliest due open deliveries (whoever holds them): a node
    /// compares them with what it holds in memory, to free claims it lost track of
    /// ([`Store::free_claims`]). Stray claims are old, so they stand early in that order.
    async fn overdue_claims(&self, token: i64, due_before: UnixMs, window: usize) -> StoreResult<Vec<DeliveryKey>>;
    /// Frees `token`'s claims on these deliveries where they are still open and claimed under
    /// it, so that any node claims them as due work; how many it freed.
    async fn free_claims(&self, token: i64, deliveries: Vec<DeliveryKey>) -> StoreResult<usize>;
    /// Takes or keeps the leader lease (one node runs retention); true while this node leads.
    async fn lead(&self, token: i64, now: UnixMs, lease_ms: u64) -> StoreResult<bool>;
    /// Open deliveries (pending, deferred or sending), claimed or not.
    async fn count_open_deliveries(&self) -> StoreResult<u64>;
    /// Changes made by other nodes (and this one) to follow in caches; `None` for a store
    /// only one node uses.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>>;

    // Deliveries and attempts.
    async fn get_delivery(&self, msg_id: &str, id: &str) -> StoreResult<Delivery>;
    /// Whether the delivery is open (due or being sent) and claimed under `claim`: what a
    /// node checks before sending an ordered delivery it holds, which an operator may have
    /// skipped meanwhile, or skipped, sent again and left to another node's claim.
    async fn still_claimed(&self, msg_id: &str, id: &str, claim: i64) -> StoreResult<bool>;
    /// Writes the attempt, the delivery's next state and its endpoint's health (disabling
    /// it when the record says so). Not applied when the delivery was no longer claimed
    /// under `record.claim` (another node took it over): the attempt is logged, the
    /// delivery and endpoint are left as they are.
    async fn record_attempt(&self, record: AttemptRecord) -> StoreResult<Recorded>;
    /// Makes the delivery of `msg_id` to `endpoint_id` due at `now` (creating it if the
    /// endpoint never had one), as a manual attempt, claimed by the node holding `claim`.
    async fn resend(
        &self,
        app_id: &str,
        msg_id: &str,
        endpoint_id: &str,
        new_id: String,
        now: UnixMs,
        claim: i64,
    ) -> StoreResult<Delivery>;
    /// One step of a recover (`recover_endpoint` walks them all): among the endpoint's next
    /// `chunk` deliveries in message-id order, after the message `after` (from the first
    /// without), makes each exhausted or skipped one the recovery covers due at its `now`,
    /// unclaimed, so whichever node claims next sends it; an ordered one waits in its lane
    /// (its place kept) for `promote_lanes`. Answers those deliveries and the cursor of the
    /// next step, none after the last. Each step is a transaction of its own, bounded by
    /// `chunk` whatever the endpoint's size.
    async fn recover(
        &self,
        recovery: &Recovery,
        after: Option<String>,
        chunk: usize,
    ) -> StoreResult<(Vec<Delivery>, Option<String>)>;
    /// Makes the first waiting delivery of each lane `(endpoint_id, key)` due at `now` when
    /// the lane has no open delivery. Returns how many it made due.
    async fn promote_lanes(&self, lanes: Vec<(String, String)>, now: UnixMs) -> StoreResult<usize>;
    /// The next `limit` lanes with waiting deliveries after the lane `after` (`("", "")` for
    /// the first), in order, each with whether it is stalled (none open, its application
    /// not being deleted); `sweep_stalled_lanes` walks them all.
    async fn waiting_lanes(&self, after: (String, String), limit: usize) -> StoreResult<Vec<(String, String, bool)>>;
    /// Skips the delivery of a message to an endpoint: an open or waiting one becomes
    /// `Skipped` (never attempted again unless recovered) and the next in its lane is made
    /// due. One already done is returned unchanged. Takes ids (the caller resolved uids);
    /// another application's delivery is `NotFound`.
    async fn skip_delivery(&self, app_id: &str, msg_id: &str, endpoint_id: &str, now: UnixMs) -> StoreResult<Delivery>;
    /// Closes a delivery that has nowhere to go, as the engine finds it: one whose message
    /// or application is gone is deleted (with its attempts), one whose endpoint is gone is
    /// canceled (as the endpoint's deletion cancels its open ones); either way the next in its
    /// ordering lane is made due. False when the delivery is not stranded (or not stored).
    async fn close_stranded(&self, msg_id: &str, id: &str, now: UnixMs) -> StoreResult<bool>;
    /// An endpoint's ordering lanes with waiting deliveries, most first (at most `limit`),
    /// or the one lane `key`; each with its open head.
    async fn ordering_lanes(
        &self,
        endpoint_id: &str,
        key: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<OrderingLane>>;
    async fn deliveries_of_message(&self, app_id: &str, msg_id: &str, page: Page) -> StoreResult<Listed<DeliveryView>>;
    async fn deliveries_of_endpoint(
        &self,
        app_id: &str,
        endpoint_id: &str,
        filter: ListFilter,
        page: Page,
    ) -> StoreResult<Listed<DeliveryView>>;
    async fn list_attempts(
        &self,
        app_id: &str,
        scope: AttemptScope<'_>,
        filter: ListFilter,
        page: Page,
    ) -> StoreResult<Listed<Attempt>>;
    async fn get_attempt(&self, app_id: &str, msg_id: &str, attempt_id: &str) -> StoreResult<Attempt>;

    // Inbound sources.
    async fn create_source(&self, source: Source) -> StoreResult<Source>;
    async fn get_source(&self, key: Key<'_>) -> StoreResult<Source>;
    async fn list_sources(&self, page: Page) -> StoreResult<Listed<Source>>;
    async fn update_source(&self, source: Source) -> StoreResult<Source>;
    async fn delete_source(&self, id: &str) -> StoreResult<()>;
    /// Messages a source received, newest first by default.
    async fn list_source_messages(&self, source_id: &str, page: Page) -> StoreResult<Listed<Message>>;
    /// Deletes up to `limit` messages, with their deliveries and attempts, created before
    /// `created_before` or kept past their own retention (`retain_until < now`). Small
    /// batches: the caller loops while it returns `limit`.
    async fn purge_messages(&self, created_before: UnixMs, now: UnixMs, limit: usize) -> StoreResult<usize>;
    /// Keeps the result of a reconciliation run (JSON the caller wrote), the
    /// [`RECONCILE_RUNS_KEPT`] newest per source.
    async fn save_reconcile_run(&self, source_id: &str, started_at: UnixMs, run: String) -> StoreResult<()>;
    /// A source's reconciliation runs, newest first.
    async fn reconcile_runs(&self, source_id: &str, limit: usize) -> StoreResult<Vec<String>>;
    /// Forgets provider event ids first seen before `before` (the dedupe window), looking
    /// at `chunk` of them a statement; how many.
    async fn purge_inbound_keys(&self, before: UnixMs, chunk: usize) -> StoreResult<usize>;

    // Statistics.
    /// Adds each row's counters to its bucket (creating it). At most one row per
    /// (scope, width, bucket) in one call.
    async fn add_stats(&self, rows: Vec<StatRow>) -> StoreResult<()>;
    /// The rows of `scope` whose buckets start in `[since, until)`, oldest first.
    async fn stats_of(&self, scope: StatScope<'_>, since: UnixMs, until: UnixMs) -> StoreResult<Vec<StatRow>>;
    /// Rolls up to `limit` minute rows older than `minutes_before` into hour rows, and
    /// deletes up to `limit` rows older than `drop_before`. Returns how many rows it
    /// rolled up or deleted: the caller repeats until that is 0.
    async fn roll_up_stats(&self, minutes_before: UnixMs, drop_before: UnixMs, limit: usize) -> StoreResult<usize>;
    /// The deliveries to an endpoint of messages created in `[since, until)`, by state.
    async fn delivery_counts(
        &self,
        endpoint_id: &str,
        since: UnixMs,
        until: UnixMs,
    ) -> StoreResult<Vec<(hookline_core::delivery::DeliveryState, u64)>>;

    // Idempotency and tokens.
    /// The answer kept for `key` since `since` (a reservation is none).
    async fn idempotent_response(&self, key: &str, since: UnixMs) -> StoreResult<Option<IdempotentResponse>>;
    /// Takes `key` for a request with `fingerprint` before it runs, so that of requests with
    /// one key on several nodes at once one runs and the others hear so. Taken unless the key
    /// holds an answer kept since `since`, or a reservation made since `stale_before` (older
    /// ones were abandoned: their node stopped mid-request). The answer, saved by
    /// `save_idempotent_response` or a publish, replaces the reservation.
    /// `token` names this reservation (random): only it releases it.
    async fn reserve_idempotency_key(
        &self,
        key: &str,
        fingerprint: [u8; 32],
        token: [u8; 16],
        now: UnixMs,
        since: UnixMs,
        stale_before: UnixMs,
    ) -> StoreResult<Reservation>;
    /// Gives up the reservation `token` of `key` (its request failed, or its answer is not
    /// kept); another request's reservation, or an answer saved meanwhile, stays.
    async fn release_idempotency_key(&self, key: &str, token: [u8; 16]) -> StoreResult<()>;
    async fn save_idempotent_response(&self, response: IdempotentResponse) -> StoreResult<()>;
    /// Forgets idempotent answers older than `before`, looking at `chunk` of them a
    /// statement; how many.
    async fn purge_idempotent_responses(&self, before: UnixMs, chunk: usize) -> StoreResult<usize>;
    /// Every API token (hashes only).
    async fn tokens(&self) -> StoreResult<Vec<Token>>;
    /// A round trip to where writes go (SQLite's writer thread, a PostgreSQL connection of
    /// the publishes' pool): `Unavailable` when it cannot be made within the timeout.
    async fn ping(&self) -> StoreResult<()>;
    async fn add_token(&self, token: Token) -> StoreResult<()>;
    async fn delete_token(&self, id: &str) -> StoreResult<()>;

    // The dashboard.
    /// Endpoints failing now (every attempt since `fail_since` failed), of every application
    /// but the operational one, longest failing first.
    async fn failing_endpoints(&self, limit: usize) -> StoreResult<Vec<Endpoint>>;
    async fn add_session(&self, session: DashboardSession) -> StoreResult<()>;
    /// The session (not a link) with this id, unless it expired by `now`.
    async fn session(&self, id: [u8; 32], now: UnixMs) -> StoreResult<Option<DashboardSession>>;
    /// Signs in with a link: turns the link `link_id`, unless expired at `session.created_at`,
    /// into `session` (its id, token and times; the link's application), in one statement
    /// on the one row, so a link signs in once whichever node is asked, and an
    /// [`Store::expire_sessions`] at the same moment either ends the link first or ends the
    /// session it became. The session as stored; `None` when the link is unknown, used or
    /// expired.
    async fn use_link(&self, link_id: [u8; 32], session: DashboardSession) -> StoreResult<Option<DashboardSession>>;
    /// Puts an alert email in the outbox, durable: one about an endpoint's state replaces
    /// any still waiting about that endpoint (its owner needs the latest state; an endpoint
    /// toggled a hundred times makes one email). Past `app_max` waiting, the application's
    /// oldest go; past `all_max`, the oldest of all. Returns how many were pushed out. Put
    /// again (its first commit's answer lost), an email is stored once.
    async fn queue_alert_email(&self, email: AlertEmail, app_max: usize, all_max: usize) -> StoreResult<u64>;
    /// Takes up to `limit` alert emails due at `now` to send, oldest first, each held (not
    /// due) for `hold_ms`: another node, or this one after a restart, tries it again only
    /// after that. Two nodes never take the same email at once.
    async fn take_alert_emails(&self, now: UnixMs, hold_ms: u64, limit: usize) -> StoreResult<Vec<AlertEmail>>;
    /// Ends a try of an alert email: `None` (sent, or dropped for good) removes it,
    /// `Some((tries, at))` puts it back for `at`. One replaced meanwhile is gone already.
    async fn alert_email_tried(&self, id: &str, retry: Option<(u32, UnixMs)>) -> StoreResult<()>;
    /// Adds a node's failure counts to their endpoints' digests: the counts add up, the
    /// earliest `since` stays, the addresses and names are the newest; `sent_at` is not
    /// read.
    async fn count_alert_failures(&self, counts: Vec<AlertDigest>) -> StoreResult<()>;
    /// In one transaction: each digest due at `rules.now` becomes `rules.render`'s email in
    /// the outbox and starts over (no failures, sent now), and digests quiet for a whole
    /// `digest_ms` are forgotten, as are those of deleted applications (never told). Two
    /// nodes never take the same digest.
    async fn take_alert_digests(&self, rules: DigestRules) -> StoreResult<DigestsTaken>;
    /// Ends a session (sign-out); unknown ids are not an error.
    async fn delete_session(&self, id: [u8; 32]) -> StoreResult<()>;
    /// Forgets sessions and links that expired before `now`; returns how many.
    async fn purge_sessions(&self, now: UnixMs) -> StoreResult<usize>;
    /// Ends application `app_id`'s sessions at `at` and its links unexpired at `now` at once
    /// (a link used later would open a session that outlives `at`; ended at 0, not at `now`,
    /// so that a sign-in that read an earlier clock does not find it still valid); those
    /// ending sooner keep their time. Returns how many were shortened.
    async fn expire_sessions(&self, app_id: &str, now: UnixMs, at: UnixMs) -> StoreResult<usize>;
}

/// The internal application whose endpoints are the operational webhook endpoints and
/// whose messages are the operational events. The API never shows it as an application.
pub const OPERATIONAL_APP_ID: &str = "app_00000000000operational";

/// The smallest message id made at `created_before`: ids sort by creation time, so every
/// message created earlier has a smaller id and retention walks the primary key.
pub fn retention_cutoff_id(created_before: UnixMs) -> String {
    hookline_core::id::new_id(hookline_core::id::prefix::MESSAGE, created_before, [0; 10])
}

/// Rows a step of a long walk (a recover, an application's deletion) touches: each step is
/// a commit of its own, short beside a publish on SQLite's writer and well within
/// PostgreSQL's statement timeout.
pub const WALK_CHUNK: usize = 2_000;

/// Deletes the endpoint (`Store::delete_endpoint`), then closes its open deliveries a step at
/// a time. A step that fails ends the walk with the endpoint deleted: the deliveries left
/// open are closed as strays when a node claims them.
pub async fn delete_endpoint(store: &dyn Store, app_id: &str, endpoint_id: &str, chunk: usize) -> StoreResult<()> {
    store.delete_endpoint(app_id, endpoint_id).await?;
    let mut after = String::new();
    loop {
        match store.close_deleted_endpoint_step(endpoint_id, &after, chunk).await {
            Ok(Some(next)) => after = next,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, endpoint_id, "could not close all of a deleted endpoint's deliveries; claims will");
                return Ok(());
            }
        }
    }
}

/// Deletes what is left of the deleted application `app_id`, a step at a time.
pub async fn purge_deleted_app(store: &dyn Store, app_id: &str) -> StoreResult<()> {
    while store.purge_deleted_app(app_id, WALK_CHUNK).await? {}
    Ok(())
}

/// Recovers what `recovery` covers, a step of `chunk` deliveries at a time
/// (`Store::recover`), then makes the head of each ordering lane it reopened due. Answers
/// how many deliveries it restarted. A failure ends the walk with what was done kept: a
/// recover again restarts the rest (those restarted are no longer exhausted or skipped).
/// A lane left unpromoted is moved on by the housekeeping sweep.
pub async fn recover_endpoint(store: &dyn Store, recovery: &Recovery, chunk: usize) -> StoreResult<usize> {
    let (mut restarted, mut lanes, mut after) = (0, std::collections::BTreeSet::new(), None);
    loop {
        let (recovered, next) = store.recover(recovery, after.take(), chunk).await?;
        restarted += recovered.len();
        lanes.extend(recovered.into_iter().filter_map(|d| Some((d.endpoint_id?, d.order_key?))));
        match next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    // After the walk, not after each step: a lane's earlier delivery may be in a later step
    // (ids within a millisecond are random, lanes go by publish order).
    let lanes: Vec<(String, String)> = lanes.into_iter().collect();
    for batch in lanes.chunks(chunk.max(1)) {
        if let Err(e) = store.promote_lanes(batch.to_vec(), recovery.now).await {
            tracing::warn!(error = %e, "could not make an ordering lane's head due; the sweep will");
            break;
        }
    }
    Ok(restarted)
}

/// Makes the head of every stalled lane due (one with waiting deliveries and none open: a
/// node died between a commit and the promotion after it), walking the lanes `chunk` a
/// statement, so that no statement reads more than `chunk` lanes however many deliveries
/// wait. Returns how many it made due.
pub async fn sweep_stalled_lanes(store: &dyn Store, now: UnixMs, chunk: usize) -> StoreResult<usize> {
    let (mut promoted, mut after) = (0, (String::new(), String::new()));
    loop {
        let lanes = store.waiting_lanes(after.clone(), chunk.max(1)).await?;
        let Some((endpoint_id, key, _)) = lanes.last() else { break };
        after = (endpoint_id.clone(), key.clone());
        let stalled: Vec<(String, String)> =
            lanes.iter().filter(|l| l.2).map(|(e, k, _)| (e.clone(), k.clone())).collect();
        if !stalled.is_empty() {
            promoted += store.promote_lanes(stalled, now).await?;
        }
        if lanes.len() < chunk.max(1) {
            break;
        }
    }
    Ok(promoted)
}

/// Which attempts a listing covers.
#[derive(Clone, Copy, Debug)]
pub enum AttemptScope<'a> {
    Endpoint(&'a str),
    Message(&'a str),
}

pub mod conformance;
