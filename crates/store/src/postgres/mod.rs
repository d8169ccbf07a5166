//! The PostgreSQL backend, for several nodes on one database: a pool of connections
//! (`deadpool-postgres`; `tokio-postgres` pipelines the statements of one connection),
//! every write a transaction with `synchronous_commit` on, versioned migrations under an
//! advisory lock, and a dedicated `LISTEN` connection that turns other nodes'
//! notifications into [`Change`]s.

mod alerts;
mod attempts;
mod listen;
mod publishes;
mod queue;
mod resources;
mod rows;
mod schema;
pub mod scratch;
mod stats;
mod tls;

use crate::sealed::{Sealer, KEY_BYTES};
use crate::*;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::future::Future;
use std::time::Duration;
use tls::Server;
use tokio::sync::broadcast;

/// The channel every node listens on; payloads are `app:<id>`, `sources`, `tokens`, `due`.
pub(crate) const CHANNEL: &str = "hookline_changes";

pub struct PgStore {
    sealer: Sealer,
    pool: Pool,
    /// Connections with `synchronous_commit = off`, for writes that may be lost in a
    /// database crash at the cost of a repeated delivery.
    relaxed: Pool,
    timeout: Duration,
    changes: broadcast::Sender<Change>,
    /// Attempt records wait here for the batch writer (`attempts.rs`).
    attempts: tokio::sync::mpsc::Sender<(AttemptRecord, attempts::Reply)>,
    /// Publishes wait here for the group-commit writers (`publishes.rs`).
    publishes: tokio::sync::mpsc::Sender<(Publish, publishes::Reply)>,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// The database server's start time when each node token was registered here. A
    /// renewal that finds another lost the lease: the server restarted (or a replica took
    /// over), and writes made with `synchronous_commit = off` may be gone, among them claims
    /// this node gave back, which its live token would otherwise hold for ever.
    server_started: std::sync::Mutex<std::collections::HashMap<i64, String>>,
}

/// Attempt records waiting for the batch writer before recorders wait for room.
const ATTEMPTS_QUEUED_MAX: usize = 16_384;
/// Connections of the relaxed pool (the attempt writer, claims, lease renewals).
const RELAXED_POOL_MAX: usize = 4;
/// Publishes waiting for a writer before publishers wait for room.
const PUBLISHES_QUEUED_MAX: usize = 16_384;

impl Drop for PgStore {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

/// How many timeouts [`PgStore::on_until_answered`] waits for an answer once it has a
/// connection: past what the server lets a statement run, so only a dead connection ends
/// the wait first.
const ANSWER_WAIT_TIMEOUTS: u32 = 3;

/// A connection of `pool`, within the pool's own timeouts.
async fn pooled(pool: &Pool) -> StoreResult<deadpool_postgres::Object> {
    pool.get().await.map_err(|e| StoreError::Unavailable(format!("database: {e}")))
}

/// Options beyond the URL.
#[derive(Clone, Debug)]
pub struct PgOptions {
    pub pool_max: usize,
    /// Longest wait for a connection or a statement; past it the call is `Unavailable`.
    pub timeout_ms: u64,
}

impl PgStore {
    /// Connects, migrates (one node at a time, under an advisory lock) and starts
    /// listening for changes.
    pub async fn open(url: &str, secret_key: &[u8; KEY_BYTES], options: PgOptions) -> StoreResult<PgStore> {
        let server = parse_url(url, options.timeout_ms)?;
        schema::migrate(&server).await?;
        let timeout = Duration::from_millis(options.timeout_ms);
        // A call given up on at the timeout has its statement ended by the server as well:
        // dropping the future only queues a ROLLBACK, the connection went back to the pool
        // still running the statement (holding its locks), and the next caller's statements
        // waited behind it and timed out in turn.
        let bounded = with_setting(&server, &format!("statement_timeout={}", options.timeout_ms));
        // Acknowledged writes wait for the WAL flush whatever the server's or role's default.
        let pool = make_pool(with_setting(&bounded, "synchronous_commit=on"), options.pool_max, timeout)?;
        // Writes whose loss in a database crash costs at most a repeated delivery (attempt
        // records, claims, lease renewals) do not.
        let relaxed = make_pool(with_setting(&bounded, "synchronous_commit=off"), RELAXED_POOL_MAX, timeout)?;
        let (changes, _) = broadcast::channel(1_024);
        let (attempts, inbox) = tokio::sync::mpsc::channel(ATTEMPTS_QUEUED_MAX);
        let (publishes, waiting) = tokio::sync::mpsc::channel(PUBLISHES_QUEUED_MAX);
        let waiting: publishes::Inbox = std::sync::Arc::new(tokio::sync::Mutex::new(waiting));
        let mut background = vec![
            tokio::spawn(listen::run(server, changes.clone())),
            tokio::spawn(attempts::run(relaxed.clone(), inbox, timeout)),
        ];
        for _ in 0..publishes::WRITERS {
            background.push(tokio::spawn(publishes::run(pool.clone(), waiting.clone(), timeout)));
        }
        warn_of_clock_skew(&pool).await;
        Ok(PgStore {
            sealer: Sealer::new(secret_key),
            pool,
            relaxed,
            timeout,
            changes,
            attempts,
            publishes,
            background,
            server_started: Default::default(),
        })
    }

    /// Migrates the schema and returns its version, without opening a store
    /// (`hookline migrate`).
    pub async fn migrate(url: &str, timeout_ms: u64) -> StoreResult<i64> {
        schema::migrate(&parse_url(url, timeout_ms)?).await
    }

    /// Deletes `table`'s rows created before `before`, a statement of `chunk` keys at a time
    /// (each within the statement timeout, whatever the table's size).
    async fn purge_expired(
        &self,
        table: &'static crate::columns::Expiring,
        before: UnixMs,
        chunk: usize,
    ) -> StoreResult<usize> {
        crate::columns::walk_chunks(|after| {
            self.with(|c| async move { queue::purge_expired(&c, table, after.as_deref(), before, chunk.max(1)).await })
        })
        .await
    }

    /// Runs `f` with a pooled connection, bounded by the timeout.
    async fn with<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        self.on(&self.pool, f).await
    }

    /// Runs `f` with a connection of `pool`, bounded by the timeout.
    async fn on<T, F, Fut>(&self, pool: &Pool, f: F) -> StoreResult<T>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let work = async { f(pooled(pool).await?).await };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| StoreError::Unavailable("the database did not answer in time".into()))?
    }

    /// Runs `f`, one statement, with a connection of `pool` and waits for the server's
    /// answer, not only for the timeout: the server ends the statement at
    /// `statement_timeout`, so the caller learns whether it committed. For the claims:
    /// given up on by the caller at the timeout (which also counted the wait for the
    /// connection), a claim could still commit, and its deliveries stayed claimed by a node
    /// that never held them until the stray-claim sweep freed them, two to three leases
    /// late. The wait for a connection is bounded by the pool's own timeout.
    async fn on_until_answered<T, F, Fut>(&self, pool: &Pool, f: F) -> StoreResult<T>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        until_answered(pool, self.timeout, f).await
    }
}

/// [`PgStore::on_until_answered`], for the background writers, which hold no store.
pub(crate) async fn until_answered<T, F, Fut>(pool: &Pool, timeout: Duration, f: F) -> StoreResult<T>
where
    F: FnOnce(deadpool_postgres::Object) -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    tokio::time::timeout(timeout * ANSWER_WAIT_TIMEOUTS, f(pooled(pool).await?))
        .await
        .map_err(|_| StoreError::Unavailable("the database did not answer".into()))?
}

/// Runs `$body` (an async block using `$tx`) in one transaction on a pooled connection,
/// committing when it succeeds.
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        $store
            .with(|mut client| async move {
                let $tx = client.transaction().await.map_err($crate::postgres::pg_error)?;
                let value = { $body }.await?;
                $tx.commit().await.map_err($crate::postgres::pg_error)?;
                Ok(value)
            })
            .await
    };
}

/// Runs `$body` (an async block using `$c`) on a pooled connection, outside a transaction.
macro_rules! on_conn {
    ($store:expr, |$c:ident| $body:expr) => {
        $store.with(|$c| async move { { $body }.await }).await
    };
}

/// `server` with `-c <setting>` after the options it has (a URL's `options` are kept).
fn with_setting(server: &Server, setting: &str) -> Server {
    let mut with = server.clone();
    match server.config.get_options().filter(|o| !o.trim().is_empty()) {
        Some(options) => with.config.options(format!("{options} -c {setting}")),
        None => with.config.options(format!("-c {setting}")),
    };
    with
}

fn make_pool(server: Server, max_size: usize, timeout: Duration) -> StoreResult<Pool> {
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = Manager::from_config(server.config, server.tls, manager_config);
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| StoreError::Unavailable(format!("database pool: {e}")))
}

fn parse_url(url: &str, timeout_ms: u64) -> StoreResult<Server> {
    let mut server = Server::parse(url)?;
    server.config.application_name("hookline");
    server.config.connect_timeout(Duration::from_millis(timeout_ms));
    server.config.keepalives_idle(Duration::from_secs(30));
    Ok(server)
}

/// Maps PostgreSQL errors to what callers act on.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(e.to_string()),
        Some(code) if *code == SqlState::DATA_CORRUPTED => StoreError::Corrupt(e.to_string()),
        Some(code) if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE || *code == SqlState::UNTRANSLATABLE_CHARACTER => {
            StoreError::Invalid("text values may not contain NUL characters".into())
        }
        _ if e.as_db_error().is_none() && e.to_string().contains("error deserializing") => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Unavailable(with_causes(&e)),
    }
}

/// An error with its causes (`error connecting to server: Connection refused (os error
/// 111)`): tokio-postgres names only the step that failed, and an operator needs the why.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

/// Tells every node (this one included) about a change, inside the writing transaction:
/// PostgreSQL delivers it only if the transaction commits, and once per distinct payload.
pub(crate) async fn notify(tx: &impl deadpool_postgres::GenericClient, change: &Change) -> StoreResult<()> {
    let payload = match change {
        Change::App(id) => format!("app:{id}"),
        Change::Sources => "sources".into(),
        Change::Tokens => "tokens".into(),
        Change::Due => "due".into(),
        Change::Flush => "flush".into(),
    };
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]).await.map_err(pg_error)?;
    Ok(())
}

impl PgStore {
    /// Promotes the head of each lane given, each in a transaction of its own (see
    /// `queue::promote_lane`). Returns how many it made due.
    async fn promote_each(&self, lanes: Vec<(String, String)>, now: UnixMs) -> StoreResult<usize> {
        let mut promoted = 0;
        for (endpoint_id, key) in &lanes {
            promoted += usize::from(in_tx!(self, |tx| queue::promote_lane(&tx, endpoint_id, key, now))?);
        }
        Ok(promoted)
    }
}

/// How far this machine's clock may be from the database server's before a start warns.
const CLOCK_SKEW_WARN_MS: i64 = 2_000;

/// Warns at start when this machine's clock is off the database server's: the nodes write
/// their leases in their own clocks and read the others' against theirs, so a node whose
/// clock is a third of a lease (10 s by default) behind the others' has its live lease
/// taken for expired, and its deliveries sent twice.
async fn warn_of_clock_skew(pool: &Pool) {
    let Ok(client) = pool.get().await else { return };
    let sql = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8";
    let Ok(row) = client.query_one(sql, &[]).await else { return };
    let Ok(server_ms) = row.try_get::<_, i64>(0) else { return };
    let local_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as i64);
    if let Some(warning) = clock_skew(local_ms, server_ms) {
        tracing::warn!("{warning}");
    }
}

fn clock_skew(local_ms: i64, server_ms: i64) -> Option<String> {
    let skew = local_ms - server_ms;
    (skew.abs() > CLOCK_SKEW_WARN_MS).then(|| {
        format!(
            "this machine's clock is {} ms {} the database server's: nodes compare leases in their own \
             clocks, so keep every node's clock synced (NTP)",
            skew.abs(),
            if skew > 0 { "ahead of" } else { "behind" }
        )
    })
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn create_app(&self, app: App) -> StoreResult<App> {
        let sealed = self.sealer.seal_app(app.clone());
        on_conn!(self, |c| resources::insert_app(&c, &sealed)).map(|_| app)
    }
    async fn get_app(&self, key: Key<'_>) -> StoreResult<App> {
        let found = on_conn!(self, |c| resources::get_app(&c, key))?;
        self.sealer.open_app(found)
    }
    async fn list_apps(&self, page: Page) -> StoreResult<Listed<App>> {
        let listed = on_conn!(self, |c| resources::list_apps(&c, &page))?;
        self.sealer.open_all(listed, Sealer::open_app)
    }
    async fn update_app(&self, app: App) -> StoreResult<App> {
        let sealed = self.sealer.seal_app(app.clone());
        in_tx!(self, |tx| async {
            resources::update_app(&tx, &sealed).await?;
            notify(&tx, &Change::App(sealed.id.clone())).await
        })
        .map(|_| app)
    }
    async fn set_app_secrets(&self, app: App, read: &App) -> StoreResult<bool> {
        let sealed = self.sealer.seal_app(app);
        in_tx!(self, |tx| async {
            let written = resources::set_app_secrets(&tx, &self.sealer, &sealed, read).await?;
            if written {
                notify(&tx, &Change::App(sealed.id.clone())).await?;
            }
            Ok(written)
        })
    }
    async fn delete_app(&self, id: &str) -> StoreResult<()> {
        in_tx!(self, |tx| async {
            resources::delete_app(&tx, id).await?;
            notify(&tx, &Change::App(id.to_owned())).await?;
            notify(&tx, &Change::Sources).await?;
            notify(&tx, &Change::Tokens).await
        })
    }
    async fn purge_deleted_app(&self, app_id: &str, chunk: usize) -> StoreResult<bool> {
        in_tx!(self, |tx| resources::purge_deleted_app(&tx, app_id, chunk.max(1)))
    }
    async fn deleted_apps(&self) -> StoreResult<Vec<(String, i64)>> {
        let found =
            on_conn!(self, |c| async move { c.query(crate::columns::DELETED_APPS, &[]).await.map_err(pg_error) })?;
        found.iter().map(|r| Ok((r.try_get(0).map_err(pg_error)?, r.try_get(1).map_err(pg_error)?))).collect()
    }

    async fn create_event_type(&self, event_type: EventType) -> StoreResult<EventType> {
        let kept = &event_type;
        on_conn!(self, |c| resources::insert_event_type(&c, kept))?;
        Ok(event_type)
    }
    async fn get_event_type(&self, name: &str) -> StoreResult<EventType> {
        on_conn!(self, |c| resources::get_event_type(&c, name))
    }
    async fn list_event_types(&self, page: Page, include_archived: bool) -> StoreResult<Listed<EventType>> {
        on_conn!(self, |c| resources::list_event_types(&c, &page, include_archived))
    }
    async fn update_event_type(&self, event_type: EventType) -> StoreResult<EventType> {
        let kept = &event_type;
        on_conn!(self, |c| resources::update_event_type(&c, kept))?;
        Ok(event_type)
    }
    async fn delete_event_type(&self, name: &str) -> StoreResult<()> {
        on_conn!(self, |c| resources::delete_event_type(&c, name))
    }

    async fn create_endpoint(&self, endpoint: Endpoint) -> StoreResult<Endpoint> {
        let sealed = self.sealer.seal_endpoint(endpoint.clone());
        in_tx!(self, |tx| async {
            resources::insert_endpoint(&tx, &sealed).await?;
            notify(&tx, &Change::App(sealed.app_id.clone())).await
        })
        .map(|_| endpoint)
    }
    async fn get_endpoint(&self, app_id: &str, key: Key<'_>) -> StoreResult<Endpoint> {
        let found = on_conn!(self, |c| resources::get_endpoint(&c, app_id, key))?;
        self.sealer.open_endpoint(found)
    }
    async fn list_endpoints(&self, app_id: &str, page: Page) -> StoreResult<Listed<Endpoint>> {
        let listed = on_conn!(self, |c| resources::list_endpoints(&c, app_id, &page))?;
        self.sealer.open_all(listed, Sealer::open_endpoint)
    }
    async fn app_endpoints(&self, app_id: &str) -> StoreResult<Vec<Endpoint>> {
        let found = on_conn!(self, |c| resources::app_endpoints(&c, app_id))?;
        found.into_iter().map(|e| self.sealer.open_endpoint(e)).collect()
    }
    async fn update_endpoint(&self, endpoint: Endpoint, read: &Endpoint) -> StoreResult<Option<Endpoint>> {
        let sealed = self.sealer.seal_endpoint(endpoint.clone());
        let written = in_tx!(self, |tx| async {
            let written = resources::update_endpoint(&tx, &sealed, read).await?;
            if written.is_some() {
                notify(&tx, &Change::App(sealed.app_id.clone())).await?;
            }
            Ok(written)
        })?;
        Ok(written.map(|fail_since| Endpoint { fail_since, ..endpoint }))
    }
    async fn delete_endpoint(&self, app_id: &str, id: &str) -> StoreResult<()> {
        in_tx!(self, |tx| async {
            resources::delete_endpoint(&tx, app_id, id).await?;
            notify(&tx, &Change::App(app_id.to_owned())).await
        })
    }
    async fn close_deleted_endpoint_step(
        &self,
        endpoint_id: &str,
        after: &str,
        chunk: usize,
    ) -> StoreResult<Option<String>> {
        on_conn!(self, |c| resources::close_deliveries_step(&c, endpoint_id, after, chunk.max(1)))
    }

    async fn publish(&self, publish: Publish) -> StoreResult<PublishOutcome> {
        let lanes: Vec<(String, String)> =
            publish.deliveries.iter().filter_map(|d| Some((d.endpoint_id.clone()?, d.order_key.clone()?))).collect();
        let now = publish.message.created_at;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let lost = || StoreError::Unavailable("the publish writers stopped".into());
        self.publishes.send((publish, reply)).await.map_err(|_| lost())?;
        let outcome = answer.await.map_err(|_| lost())??;
        // Each lane this publish added to gets a due head, if it had no open delivery. The
        // message is committed already: if this fails, the leader's sweep does it later.
        if matches!(outcome, PublishOutcome::Created) && !lanes.is_empty() {
            if let Err(e) = self.promote_each(lanes, now).await {
                tracing::warn!(error = %e, "could not make an ordering lane's head due; the sweep will");
            }
        }
        Ok(outcome)
    }
    async fn get_message(&self, app_id: &str, key: Key<'_>) -> StoreResult<Message> {
        on_conn!(self, |c| queue::get_message(&c, app_id, key))
    }
    async fn message_by_id(&self, id: &str) -> StoreResult<Message> {
        on_conn!(self, |c| queue::message_by_id(&c, id))
    }
    async fn list_messages(&self, app_id: &str, filter: ListFilter, page: Page) -> StoreResult<Listed<Message>> {
        on_conn!(self, |c| queue::list_messages(&c, app_id, &filter, &page))
    }

    async fn register_node(&self, name: &str, now: UnixMs, lease_ms: u64) -> StoreResult<NodeLease> {
        let (lease, started) = in_tx!(self, |tx| queue::register_node(&tx, name, now, lease_ms))?;
        self.server_started.lock().expect("server start lock").insert(lease.token, started);
        Ok(lease)
    }
    async fn renew_node(&self, token: i64, now: UnixMs, lease_ms: u64) -> StoreResult<bool> {
        let renewed =
            self.on(&self.relaxed, |c| async move { queue::renew_node(&c, token, now, lease_ms).await }).await?;
        let Some(started) = renewed else { return Ok(false) };
        let mut known = self.server_started.lock().expect("server start lock");
        match known.get(&token) {
            // Kept until the token is retired: every renewal of it fails from now on, even
            // if registering anew fails once and the old token is renewed again.
            Some(at_registration) if *at_registration != started => {
                tracing::warn!(token, "the database server restarted since this node registered; registering anew");
                Ok(false)
            }
            Some(_) => Ok(true),
            None => {
                known.insert(token, started);
                Ok(true)
            }
        }
    }
    async fn retire_node(&self, token: i64) -> StoreResult<()> {
        self.server_started.lock().expect("server start lock").remove(&token);
        in_tx!(self, |tx| async {
            queue::retire_node(&tx, token).await?;
            notify(&tx, &Change::Due).await
        })
    }
    async fn live_nodes(&self, now: UnixMs) -> StoreResult<usize> {
        self.on(&self.relaxed, |c| async move { queue::live_nodes(&c, now).await }).await
    }
    async fn claim_due(&self, claim: ClaimDue) -> StoreResult<Claimed> {
        let claim = &claim;
        self.on_until_answered(&self.relaxed, |c| async move { queue::claim_due(&c, claim).await }).await
    }
    async fn claim_deferred(
        &self,
        token: i64,
        lane: DeferredLane,
        now: UnixMs,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let lane = &lane;
        self.on_until_answered(
            &self.relaxed,
            |c| async move { queue::claim_deferred(&c, token, lane, now, limit).await },
        )
        .await
    }
    async fn deferred_lanes(&self, after: Option<DeferredLane>, limit: usize) -> StoreResult<Vec<DeferredLane>> {
        let after = after.as_ref();
        self.on(&self.relaxed, |c| async move { queue::deferred_lanes(&c, after, limit).await }).await
    }
    async fn lead(&self, token: i64, now: UnixMs, lease_ms: u64) -> StoreResult<bool> {
        on_conn!(self, |c| queue::lead(&c, token, now, lease_ms))
    }
    async fn overdue_claims(&self, token: i64, due_before: UnixMs, window: usize) -> StoreResult<Vec<DeliveryKey>> {
        on_conn!(self, |c| queue::overdue_claims(&c, token, due_before, window))
    }
    async fn free_claims(&self, token: i64, deliveries: Vec<DeliveryKey>) -> StoreResult<usize> {
        let deliveries = &deliveries;
        in_tx!(self, |tx| async {
            let freed = queue::free_claims(&tx, token, deliveries).await?;
            notify(&tx, &Change::Due).await?;
            Ok(freed)
        })
    }
    async fn count_open_deliveries(&self) -> StoreResult<u64> {
        on_conn!(self, |c| queue::count_open_deliveries(&c))
    }
    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }

    async fn get_delivery(&self, msg_id: &str, id: &str) -> StoreResult<Delivery> {
        on_conn!(self, |c| queue::get_delivery(&c, msg_id, id))
    }
    async fn still_claimed(&self, msg_id: &str, id: &str, claim: i64) -> StoreResult<bool> {
        on_conn!(self, |c| async move {
            let found = c.query_opt(crate::columns::STILL_CLAIMED, &[&msg_id, &id, &claim]).await.map_err(pg_error)?;
            Ok(found.is_some())
        })
    }
    async fn record_attempt(&self, record: AttemptRecord) -> StoreResult<Recorded> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let lost = || StoreError::Unavailable("the attempt writer stopped".into());
        self.attempts.send((record, reply)).await.map_err(|_| lost())?;
        answer.await.map_err(|_| lost())?
    }
    async fn resend(
        &self,
        app_id: &str,
        msg_id: &str,
        endpoint_id: &str,
        new_id: String,
        now: UnixMs,
        claim: i64,
    ) -> StoreResult<Delivery> {
        in_tx!(self, |tx| queue::resend(&tx, app_id, msg_id, endpoint_id, &new_id, now, claim))
    }
    async fn recover(
        &self,
        recovery: &Recovery,
        after: Option<String>,
        chunk: usize,
    ) -> StoreResult<(Vec<Delivery>, Option<String>)> {
        in_tx!(self, |tx| async {
            let step = queue::recover(&tx, recovery, after.as_deref(), chunk.max(1)).await?;
            if !step.0.is_empty() {
                notify(&tx, &Change::Due).await?;
            }
            Ok(step)
        })
    }
    async fn promote_lanes(&self, lanes: Vec<(String, String)>, now: UnixMs) -> StoreResult<usize> {
        self.promote_each(lanes, now).await
    }
    async fn waiting_lanes(&self, after: (String, String), limit: usize) -> StoreResult<Vec<(String, String, bool)>> {
        on_conn!(self, |c| queue::waiting_lanes(&c, &after, limit))
    }
    async fn skip_delivery(&self, app_id: &str, msg_id: &str, endpoint_id: &str, now: UnixMs) -> StoreResult<Delivery> {
        in_tx!(self, |tx| queue::skip(&tx, app_id, msg_id, endpoint_id, now))
    }
    async fn close_stranded(&self, msg_id: &str, id: &str, now: UnixMs) -> StoreResult<bool> {
        in_tx!(self, |tx| queue::close_stranded(&tx, msg_id, id, now))
    }
    async fn ordering_lanes(
        &self,
        endpoint_id: &str,
        key: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<OrderingLane>> {
        on_conn!(self, |c| queue::ordering_lanes(&c, endpoint_id, key, limit))
    }
    async fn deliveries_of_message(&self, app_id: &str, msg_id: &str, page: Page) -> StoreResult<Listed<DeliveryView>> {
        let listed = on_conn!(self, |c| queue::deliveries_of_message(&c, app_id, msg_id, &page))?;
        self.sealer.open_views(listed)
    }
    async fn deliveries_of_endpoint(
        &self,
        app_id: &str,
        endpoint_id: &str,
        filter: ListFilter,
        page: Page,
    ) -> StoreResult<Listed<DeliveryView>> {
        on_conn!(self, |c| queue::deliveries_of_endpoint(&c, app_id, endpoint_id, &filter, &page))
    }
    async fn list_attempts(
        &self,
        app_id: &str,
        scope: AttemptScope<'_>,
        filter: ListFilter,
        page: Page,
    ) -> StoreResult<Listed<Attempt>> {
        on_conn!(self, |c| queue::list_attempts(&c, app_id, scope, &filter, &page))
    }
    async fn get_attempt(&self, app_id: &str, msg_id: &str, attempt_id: &str) -> StoreResult<Attempt> {
        on_conn!(self, |c| queue::get_attempt(&c, app_id, msg_id, attempt_id))
    }

    async fn create_source(&self, source: Source) -> StoreResult<Source> {
        let sealed = self.sealer.seal_source(source.clone());
        in_tx!(self, |tx| async {
            resources::insert_source(&tx, &sealed).await?;
            notify(&tx, &Change::Sources).await
        })
        .map(|_| source)
    }
    async fn get_source(&self, key: Key<'_>) -> StoreResult<Source> {
        let found = on_conn!(self, |c| resources::get_source(&c, key))?;
        self.sealer.open_source(found)
    }
    async fn list_sources(&self, page: Page) -> StoreResult<Listed<Source>> {
        let listed = on_conn!(self, |c| resources::list_sources(&c, &page))?;
        self.sealer.open_all(listed, Sealer::open_source)
    }
    async fn update_source(&self, source: Source) -> StoreResult<Source> {
        let sealed = self.sealer.seal_source(source.clone());
        in_tx!(self, |tx| async {
            resources::update_source(&tx, &sealed).await?;
            notify(&tx, &Change::Sources).await
        })
        .map(|_| source)
    }
    async fn delete_source(&self, id: &str) -> StoreResult<()> {
        in_tx!(self, |tx| async {
            resources::delete_source(&tx, id).await?;
            notify(&tx, &Change::Sources).await
        })
    }
    async fn list_source_messages(&self, source_id: &str, page: Page) -> StoreResult<Listed<Message>> {
        on_conn!(self, |c| queue::list_source_messages(&c, source_id, &page))
    }
    async fn purge_messages(&self, created_before: UnixMs, now: UnixMs, limit: usize) -> StoreResult<usize> {
        in_tx!(self, |tx| queue::purge_messages(&tx, created_before, now, limit))
    }
    async fn save_reconcile_run(&self, source_id: &str, started_at: UnixMs, run: String) -> StoreResult<()> {
        on_conn!(self, |c| resources::save_reconcile_run(&c, source_id, started_at, &run))
    }
    async fn reconcile_runs(&self, source_id: &str, limit: usize) -> StoreResult<Vec<String>> {
        on_conn!(self, |c| resources::reconcile_runs(&c, source_id, limit))
    }
    async fn add_stats(&self, rows: Vec<StatRow>) -> StoreResult<()> {
        // Until answered: rows given up on at the timeout are kept for the next flush, and
        // were counted twice when the statement committed after it.
        self.on_until_answered(&self.relaxed, |c| async move { stats::add(&c, &rows).await }).await
    }
    async fn stats_of(&self, scope: StatScope<'_>, since: UnixMs, until: UnixMs) -> StoreResult<Vec<StatRow>> {
        on_conn!(self, |c| stats::of(&c, scope, since, until))
    }
    async fn roll_up_stats(&self, minutes_before: UnixMs, drop_before: UnixMs, limit: usize) -> StoreResult<usize> {
        on_conn!(self, |c| stats::roll_up(&c, minutes_before, drop_before, limit))
    }
    async fn delivery_counts(
        &self,
        endpoint_id: &str,
        since: UnixMs,
        until: UnixMs,
    ) -> StoreResult<Vec<(hookline_core::delivery::DeliveryState, u64)>> {
        on_conn!(self, |c| stats::delivery_counts(&c, endpoint_id, since, until))
    }
    async fn purge_inbound_keys(&self, before: UnixMs, chunk: usize) -> StoreResult<usize> {
        self.purge_expired(&crate::columns::INBOUND_KEYS, before, chunk).await
    }

    async fn idempotent_response(&self, key: &str, since: UnixMs) -> StoreResult<Option<IdempotentResponse>> {
        on_conn!(self, |c| resources::idempotent_response(&c, key, since))
    }
    async fn reserve_idempotency_key(
        &self,
        key: &str,
        fingerprint: [u8; 32],
        token: [u8; 16],
        now: UnixMs,
        since: UnixMs,
        stale_before: UnixMs,
    ) -> StoreResult<Reservation> {
        on_conn!(self, |c| resources::reserve_idempotency_key(&c, key, &fingerprint, &token, now, since, stale_before))
    }
    async fn release_idempotency_key(&self, key: &str, token: [u8; 16]) -> StoreResult<()> {
        on_conn!(self, |c| resources::release_idempotency_key(&c, key, &token))
    }
    async fn save_idempotent_response(&self, response: IdempotentResponse) -> StoreResult<()> {
        on_conn!(self, |c| resources::save_idempotent_response(&c, &response))
    }
    async fn purge_idempotent_responses(&self, before: UnixMs, chunk: usize) -> StoreResult<usize> {
        self.purge_expired(&crate::columns::IDEMPOTENCY, before, chunk).await
    }
    async fn tokens(&self) -> StoreResult<Vec<Token>> {
        on_conn!(self, |c| resources::tokens(&c))
    }
    async fn ping(&self) -> StoreResult<()> {
        on_conn!(self, |c| async move { c.simple_query("SELECT 1").await.map(drop).map_err(pg_error) })
    }
    async fn add_token(&self, token: Token) -> StoreResult<()> {
        in_tx!(self, |tx| async {
            resources::add_token(&tx, &token).await?;
            notify(&tx, &Change::Tokens).await
        })
    }
    async fn delete_token(&self, id: &str) -> StoreResult<()> {
        in_tx!(self, |tx| async {
            resources::delete_token(&tx, id).await?;
            notify(&tx, &Change::Tokens).await
        })
    }
    async fn failing_endpoints(&self, limit: usize) -> StoreResult<Vec<Endpoint>> {
        let found = on_conn!(self, |c| resources::failing_endpoints(&c, limit))?;
        found.into_iter().map(|e| self.sealer.open_endpoint(e)).collect()
    }
    async fn add_session(&self, session: DashboardSession) -> StoreResult<()> {
        on_conn!(self, |c| resources::add_session(&c, &session))
    }
    async fn session(&self, id: [u8; 32], now: UnixMs) -> StoreResult<Option<DashboardSession>> {
        on_conn!(self, |c| resources::session(&c, &id, now))
    }
    async fn use_link(&self, link_id: [u8; 32], session: DashboardSession) -> StoreResult<Option<DashboardSession>> {
        on_conn!(self, |c| resources::use_link(&c, &link_id, &session))
    }
    async fn delete_session(&self, id: [u8; 32]) -> StoreResult<()> {
        on_conn!(self, |c| async {
            resources::run(&c, "DELETE FROM dashboard_sessions WHERE id = $1", &[&&id[..]]).await.map(|_| ())
        })
    }
    async fn queue_alert_email(&self, email: AlertEmail, app_max: usize, all_max: usize) -> StoreResult<u64> {
        in_tx!(self, |tx| alerts::queue(&tx, &email, app_max, all_max))
    }
    async fn take_alert_emails(&self, now: UnixMs, hold_ms: u64, limit: usize) -> StoreResult<Vec<AlertEmail>> {
        on_conn!(self, |c| alerts::take(&c, now, hold_ms, limit))
    }
    async fn alert_email_tried(&self, id: &str, retry: Option<(u32, UnixMs)>) -> StoreResult<()> {
        on_conn!(self, |c| alerts::tried(&c, id, retry))
    }
    async fn count_alert_failures(&self, counts: Vec<AlertDigest>) -> StoreResult<()> {
        in_tx!(self, |tx| alerts::count(&tx, &counts))
    }
    async fn take_alert_digests(&self, rules: DigestRules) -> StoreResult<DigestsTaken> {
        in_tx!(self, |tx| alerts::take_digests(&tx, &rules))
    }
    async fn purge_sessions(&self, now: UnixMs) -> StoreResult<usize> {
        on_conn!(self, |c| async {
            let n = resources::run(&c, "DELETE FROM dashboard_sessions WHERE expires_at <= $1", &[&now]).await?;
            Ok(n as usize)
        })
    }
    async fn expire_sessions(&self, app_id: &str, now: UnixMs, at: UnixMs) -> StoreResult<usize> {
        on_conn!(self, |c| async {
            let sql = "UPDATE dashboard_sessions SET expires_at = CASE WHEN link THEN 0 ELSE $3::BIGINT END \
                       WHERE app_id = $1 AND expires_at > CASE WHEN link THEN $2::BIGINT ELSE $3::BIGINT END";
            Ok(resources::run(&c, sql, &[&app_id, &now, &at]).await? as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn an_unreachable_database_is_named_with_its_cause() {
        let config: tokio_postgres::Config = "postgres://u@127.0.0.1:1/db".parse().unwrap();
        let e = config.connect(tokio_postgres::NoTls).await.err().unwrap();
        let said = super::pg_error(e).to_string();
        assert!(said.contains("error connecting to server") && said.contains("refused"), "{said}");
    }

    #[test]
    fn a_clock_off_the_servers_by_more_than_two_seconds_is_named() {
        assert_eq!(super::clock_skew(10_000, 8_000), None);
        assert_eq!(super::clock_skew(8_000, 10_000), None);
        assert!(super::clock_skew(15_000, 10_000).unwrap().contains("5000 ms ahead of"));
        assert!(super::clock_skew(10_000, 12_001).unwrap().contains("2001 ms behind"));
    }

    #[test]
    fn a_setting_goes_after_the_urls_options() {
        let plain = super::Server::parse("postgres://u@h/db").unwrap();
        let with = super::with_setting(&plain, "synchronous_commit=on");
        assert_eq!(with.config.get_options(), Some("-c synchronous_commit=on"));
        let optioned =
            super::Server::parse("postgres://u@h/db?options=-c%20search_path%3Dhl%20-c%20synchronous_commit%3Doff")
                .unwrap();
        let with = super::with_setting(&optioned, "synchronous_commit=on");
        let options = with.config.get_options().unwrap();
        assert_eq!(
            options, "-c search_path=hl -c synchronous_commit=off -c synchronous_commit=on",
            "the last one wins"
        );
    }
}
