//! The delivery engine: an in-memory due queue (fed by this node's own commits and by
//! batches it claims from the store, see `claims.rs`) and the dispatcher that signs,
//! sends, classifies and records each attempt. A slow endpoint only ever holds its own
//! slots.

mod catalog;
pub(crate) mod claims;
mod client;
mod http1;
pub mod notices;
mod publish;
mod queues;

pub use catalog::{AppEndpoints, Catalog};
pub use client::DeliveryClient;
pub use publish::{run_to_end, takes};

use crate::clock::Clock;
use crate::config::{ClusterConfig, DeliveryConfig};
use crate::metrics as m;
use crate::metrics::endpoints::{EndpointSeries, Settled};
use crate::metrics::sources::SourceSeries;
use hookline_core::classify::{classify, error_class, unreachable, Verdict, PACE_AFTER_UNREACHABLE};
use hookline_core::delivery::{DeliveryState, Trigger};
use hookline_core::id::prefix;
use hookline_core::retry::{next_attempt, RetryPolicy};
use hookline_core::signature::{sign_headers, Secret, SignatureScheme};
use hookline_core::ssrf::AddressPolicy;
use hookline_core::UnixMs;
use hookline_store::{
    App, Attempt, AttemptRecord, Delivery, Endpoint, Message, Recorded, Store, StoreError, StoredSecret,
};
use notices::Notice;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};

/// How long to wait before retrying a write of an attempt's outcome that the store refused.
const RECORD_RETRY_MS: u64 = 1_000;

/// A delivery this node holds, waiting for its time. The message is carried along when it
/// is at hand (fresh from a publish) and loaded from the store otherwise (claimed work).
pub struct Due {
    /// When it is due; once parked in its lane, when it was parked.
    pub at: UnixMs,
    pub delivery: Delivery,
    pub message: Option<Arc<Message>>,
    /// The node token it was claimed under; work of an earlier token is dropped.
    claim: i64,
    /// Claimed from the store and counted in its lane's `incoming` until dispatched.
    incoming: bool,
    hold: claims::Hold,
}

struct Queued(Due, u64);

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.0.at, self.1) == (other.0.at, other.1)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.at, self.1).cmp(&(other.0.at, other.1))
    }
}

pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: DeliveryConfig,
    cluster: ClusterConfig,
    /// This node's current lease token (a new one after a lost lease), and when its lease
    /// ends unless renewed (engine clock): past that, other nodes may take its work over.
    token: AtomicI64,
    lease_until: AtomicI64,
    /// Nodes with a live lease, as the heartbeat last counted them: rate limits are shared.
    live_nodes: AtomicUsize,
    /// Deliveries held in memory: the claimer stops claiming at `cluster.held_max`.
    held: Arc<claims::Held>,
    /// Writes running on after their client went away; shutdown waits for them.
    pub detached: Arc<publish::Detached>,
    /// Lanes with deliveries deferred in the store, which the claimer takes as they have room.
    deferred: claims::Deferred,
    /// Wakes the claimer before its next poll (work was freed or made due).
    claim_now: Notify,
    client: DeliveryClient,
    /// Deliveries to `redis://`, `amqp://` and `nats://` endpoints.
    queues: queues::QueuePublisher,
    pub catalog: Catalog,
    due: mpsc::UnboundedSender<Due>,
    global_slots: Arc<Semaphore>,
    /// Per endpoint: deliveries running, and those due but waiting for a turn. Waiting ones
    /// are parked here as small records, not as tasks, so an endpoint that comes back after
    /// a long outage with 100,000 due retries costs memory for 100,000 records only.
    endpoint_lanes: Mutex<HashMap<String, EndpointLane>>,
    stopping: watch::Sender<bool>,
    /// Sends alert emails, when an SMTP server is configured.
    mailer: Option<Arc<crate::alerts::Mailer>>,
    /// Counts attempts per endpoint and source per minute, written in the background.
    pub stats: Arc<crate::stats::Recorder>,
    in_flight: AtomicUsize,
    /// The in-flight gauge and the end-to-end histogram, and each lane's series (kept here,
    /// so that a deleted endpoint's go: see `metrics::endpoints`).
    in_flight_gauge: metrics::Gauge,
    end_to_end_seconds: metrics::Histogram,
    pub series: EndpointSeries,
    /// Each inbound source's request counts (kept here for the same reason).
    pub source_series: SourceSeries,
    idle: Notify,
    jitter: Mutex<rand::rngs::StdRng>,
}

#[derive(Default)]
struct EndpointLane {
    running: usize,
    parked: VecDeque<Due>,
    /// Deliveries claimed from the store for this lane and not yet dispatched (in the
    /// scheduler's channel or waiting for their time): the claimer counts them as taken.
    incoming: usize,
    /// Attempts in a row that did not reach the endpoint; from `PACE_AFTER_UNREACHABLE`
    /// on, its deliveries run one at a time with a pause between them, until one reaches it.
    unreachable: u32,
    /// When the lane's last delivery started (or is due to start), on the engine's clock.
    last_start: UnixMs,
    /// With a rate limit: when the next delivery may start (ms, fractional so that rates
    /// that do not divide a second stay exact), and the deliveries waiting for a start, in
    /// order. One timer task per lane hands out starts while any wait (`rate_timer`).
    next_rate_start: f64,
    rate_waiters: VecDeque<oneshot::Sender<()>>,
    rate_timer: bool,
    /// The spacing of starts, as the latest delivery found the rate and the node count.
    rate_interval_ms: f64,
}

impl EndpointLane {
    /// Whether the lane runs one delivery at a time, `pause_ms` apart (0 turns pacing off).
    fn paced(&self, pause_ms: u64) -> bool {
        pause_ms > 0 && self.unreachable >= PACE_AFTER_UNREACHABLE
    }

    /// When a delivery taking a turn now may start: at once, or, while paced, `pause_ms`
    /// after the one before.
    fn take_start(&mut self, now: UnixMs, pause_ms: u64) -> UnixMs {
        let at = if self.paced(pause_ms) { now.max(self.last_start + pause_ms as i64) } else { now };
        self.last_start = at;
        at
    }

    /// Whether the lane is behind: it parks `cap` deliveries or more, and the first of them
    /// was parked before `overdue`.
    fn behind(&self, cap: usize, overdue: UnixMs) -> bool {
        self.parked.len() >= cap && self.parked.front().is_some_and(|due| due.at < overdue)
    }
}

/// A claim no node holds (node tokens count up from 1): an attempt recorded under it is kept
/// and changes no delivery.
const NO_CLAIM: i64 = i64::MIN;

/// The key of the lane a delivery to `endpoint_id` of `app_id` waits in: its endpoint, or
/// one per application for per-message callback URLs. Borrowed for an endpoint, so a
/// lookup makes no string.
fn lane_key<'a>(app_id: &str, endpoint_id: Option<&'a str>) -> std::borrow::Cow<'a, str> {
    match endpoint_id {
        Some(endpoint_id) => endpoint_id.into(),
        None => format!("{CALLBACK_LANE}{app_id}").into(),
    }
}

/// How the key of an application's callback lane starts (endpoint ids never do).
const CALLBACK_LANE: &str = "callback:";

/// The key of the lane `delivery` waits in.
fn delivery_lane(delivery: &Delivery) -> std::borrow::Cow<'_, str> {
    lane_key(&delivery.app_id, delivery.endpoint_id.as_deref())
}

/// Hands an endpoint's turn to its next parked delivery however a delivery task ends.
struct Turn {
    engine: Arc<Engine>,
    key: String,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.engine.release(&self.key);
    }
}

/// Decrements the in-flight count however a delivery task ends.
struct InFlight<'a>(&'a Engine);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
        self.0.in_flight_gauge.decrement(1.0);
    }
}

impl Engine {
    /// Builds the engine, registers this node with the store and starts the scheduler and
    /// the claimer, which loads due work in batches as room allows.
    pub async fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: DeliveryConfig,
        cluster: ClusterConfig,
        policy: AddressPolicy,
        jitter_seed: Option<u64>,
        mailer: Option<Arc<crate::alerts::Mailer>>,
    ) -> Result<Arc<Engine>, StoreError> {
        let (due, receiver) = mpsc::unbounded_channel();
        let queues = queues::QueuePublisher::new(policy.clone(), &config);
        let client = DeliveryClient::new(
            policy,
            config.request_timeout_ms,
            config.connect_timeout_ms,
            config.response_bytes_max,
            config.max_in_flight,
        );
        let jitter = match jitter_seed {
            Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        let lease = store.register_node(&claims::node_name(&cluster), clock.now_ms(), cluster.lease_ms).await?;
        tracing::info!(token = lease.token, "registered this node");
        let engine = Arc::new(Engine {
            catalog: Catalog::new(store.clone()),
            global_slots: Arc::new(Semaphore::new(config.max_in_flight)),
            store,
            clock,
            config,
            cluster,
            token: AtomicI64::new(lease.token),
            lease_until: AtomicI64::new(lease.lease_until),
            live_nodes: AtomicUsize::new(1),
            held: Arc::new(claims::Held::new()),
            detached: Default::default(),
            deferred: claims::Deferred::default(),
            claim_now: Notify::new(),
            client,
            queues,
            due,
            endpoint_lanes: Mutex::default(),
            stopping: watch::channel(false).0,
            mailer,
            stats: Arc::default(),
            in_flight: AtomicUsize::new(0),
            in_flight_gauge: metrics::gauge!(m::IN_FLIGHT),
            end_to_end_seconds: metrics::histogram!(m::END_TO_END_SECONDS),
            series: EndpointSeries::default(),
            source_series: SourceSeries::default(),
            idle: Notify::new(),
            jitter: Mutex::new(jitter),
        });
        tokio::spawn(engine.clone().schedule(receiver));
        tokio::spawn(engine.clone().heartbeat(lease));
        tokio::spawn(engine.clone().claim_loop());
        tokio::spawn(engine.clone().sweep_stray_claims());
        tokio::spawn(engine.clone().close_idle_links());
        tokio::spawn(engine.stats.clone().flush_loop(engine.store.clone()));
        Ok(engine)
    }

    /// The token this node claims under: publishes and resends made here are claimed with
    /// it, so the node that committed them delivers them from memory.
    pub fn token(&self) -> i64 {
        self.token.load(Ordering::SeqCst)
    }

    /// Whether a delivery due at `at` is held in memory by the committing node (claimed at
    /// commit) or left in the store to be claimed nearer its time.
    pub fn holds_at(&self, at: UnixMs) -> bool {
        at <= self.clock.now_ms() + self.horizon_ms()
    }

    /// How far ahead claims reach: two polls, so due work is in memory before its time.
    fn horizon_ms(&self) -> i64 {
        2 * self.cluster.poll_ms as i64
    }

    /// The endpoints (`None`: the application's callback URLs, which share a lane) among
    /// `deliveries` whose lane at this node is behind: it parks as many deliveries as may
    /// run at once (`delivery.endpoint_max_in_flight`), and the first of them has waited
    /// longer than the claims look ahead (two polls). A publish leaves its deliveries to
    /// them unclaimed, in the store, for a claim with room, so a slow or throttled
    /// endpoint's backlog does not grow this node's memory without bound, while a quick
    /// endpoint's burst, parked for less than that, is sent from memory. The lanes are not
    /// looked at while the node holds fewer deliveries than one endpoint may run at once.
    fn lanes_behind(&self, deliveries: &[Delivery]) -> Vec<Option<String>> {
        let cap = self.config.endpoint_max_in_flight;
        if self.held.count.load(Ordering::Relaxed) < cap {
            return Vec::new();
        }
        let overdue = self.clock.now_ms() - self.horizon_ms();
        let lanes = self.endpoint_lanes.lock().expect("lanes lock");
        let mut found: Vec<Option<String>> = Vec::new();
        for d in deliveries {
            let behind = lanes.get(delivery_lane(d).as_ref()).is_some_and(|lane| lane.behind(cap, overdue));
            if behind && !found.contains(&d.endpoint_id) {
                found.push(d.endpoint_id.clone());
            }
        }
        found
    }

    /// Hands a committed delivery claimed under `claim` to the scheduler.
    pub fn enqueue(&self, delivery: Delivery, message: Option<Arc<Message>>, claim: i64) {
        let hold = claims::Hold::new(&self.held, &delivery.id);
        self.requeue(Due { at: 0, delivery, message, claim, incoming: false, hold });
    }

    fn requeue(&self, mut due: Due) {
        due.at = due.delivery.next_at.unwrap_or_else(|| self.clock.now_ms());
        // Sending fails only after shutdown; the delivery stays open in the store.
        let _ = self.due.send(due);
    }

    /// Looks for due work now rather than at the next poll (after a recover, say).
    pub fn wake(&self) {
        self.claim_now.notify_one();
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Stops taking due work and waits up to the configured grace for in-flight deliveries.
    /// Whatever has not finished stays open in the store for the next start.
    pub async fn shutdown(&self) {
        self.stopping.send_replace(true);
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        let drained = tokio::time::timeout(grace, async {
            loop {
                let notified = self.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = self.in_flight(),
                "shutdown grace elapsed; unfinished deliveries resume at next start"
            );
        }
        self.stats.flush(&self.store).await;
        if let Some(mailer) = &self.mailer {
            mailer.flush().await;
        }
        // Everything this node still holds is free for the other nodes at once.
        if let Err(e) = self.store.retire_node(self.token()).await {
            tracing::warn!(error = %e, "could not retire this node's lease; its claims free up when it expires");
        }
    }

    async fn schedule(self: Arc<Self>, mut receiver: mpsc::UnboundedReceiver<Due>) {
        let mut queue: BinaryHeap<Reverse<Queued>> = BinaryHeap::new();
        let mut seq: u64 = 0;
        let mut stopping = self.stopping.subscribe();
        loop {
            metrics::gauge!(m::QUEUE_DEPTH).set(queue.len() as f64);
            let next_at = queue.peek().map(|Reverse(q)| q.0.at);
            let wake = async {
                match next_at {
                    Some(at) => self.clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                received = receiver.recv() => {
                    let Some(due) = received else { return };
                    if due.at <= self.clock.now_ms() {
                        self.dispatch(due);
                    } else {
                        seq += 1;
                        queue.push(Reverse(Queued(due, seq)));
                    }
                }
                _ = wake => {
                    let now = self.clock.now_ms();
                    while queue.peek().is_some_and(|Reverse(q)| q.0.at <= now) {
                        let Reverse(Queued(due, _)) = queue.pop().expect("peeked");
                        self.dispatch(due);
                    }
                }
            }
        }
    }

    /// Whether this node still holds `due`: claimed under its current token, and its lease
    /// not past its end. Work it no longer holds is dropped from memory (not sent): other
    /// nodes may have taken it over, and this node claims it again after registering anew.
    fn holds(&self, due: &Due) -> bool {
        due.claim == self.token() && self.clock.now_ms() <= self.lease_until.load(Ordering::SeqCst)
    }

    /// Starts a due delivery if its endpoint has a free turn, or parks it. Work this node no
    /// longer holds is dropped (`holds`).
    fn dispatch(self: &Arc<Self>, mut due: Due) {
        let key = delivery_lane(&due.delivery).into_owned();
        let at = {
            let mut lanes = self.endpoint_lanes.lock().expect("lanes lock");
            // Claimed work is no longer on its way: parked or running below, or dropped.
            if std::mem::take(&mut due.incoming) {
                if let Some(lane) = lanes.get_mut(&key) {
                    lane.incoming = lane.incoming.saturating_sub(1);
                }
            }
            if !self.holds(&due) {
                return;
            }
            let lane = lanes.entry(key.clone()).or_default();
            let cap = if lane.paced(self.config.unreachable_pause_ms) { 1 } else { self.config.endpoint_max_in_flight };
            if lane.running >= cap {
                due.at = self.clock.now_ms();
                lane.parked.push_back(due);
                return;
            }
            lane.running += 1;
            lane.take_start(self.clock.now_ms(), self.config.unreachable_pause_ms)
        };
        self.start_turn(key, due, at);
    }

    /// Starts a delivery that holds a turn of its lane, at `at` (a paced lane's pause; the
    /// turn stays taken meanwhile, so the endpoint sees one attempt at a time).
    fn start_turn(self: &Arc<Self>, key: String, due: Due, at: UnixMs) {
        if at <= self.clock.now_ms() {
            return self.spawn_delivery(key, due);
        }
        let engine = self.clone();
        tokio::spawn(async move {
            engine.clock.sleep_until(at).await;
            engine.spawn_delivery(key, due);
        });
    }

    fn spawn_delivery(self: &Arc<Self>, key: String, due: Due) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.in_flight_gauge.increment(1.0);
        tokio::spawn(self.clone().deliver(key, due));
    }

    /// A delivery to `key` ended: its turn goes to the next parked delivery, if any (after
    /// a pause, and only as the lane's one delivery, while the endpoint cannot be reached).
    /// During shutdown nothing new starts; parked deliveries stay open in the store.
    fn release(self: &Arc<Self>, key: &str) {
        let (next, widened) = {
            let mut lanes = self.endpoint_lanes.lock().expect("lanes lock");
            let Some(lane) = lanes.get_mut(key) else { return };
            let paced = lane.paced(self.config.unreachable_pause_ms);
            let (half, parked_before) = (self.config.endpoint_max_in_flight / 2, lane.parked.len());
            let next = if paced && lane.running > 1 { None } else { lane.parked.pop_front() };
            let stopping = *self.stopping.borrow();
            // A lane no longer paced (its endpoint answered again) takes as many turns as it
            // has room for: it ran one delivery at a time while paced, and each delivery
            // that ends hands on only its own turn, so its backlog went on one at a time.
            let mut widened = Vec::new();
            while next.is_some() && !paced && !stopping && lane.running < self.config.endpoint_max_in_flight {
                let Some(due) = lane.parked.pop_front() else { break };
                lane.running += 1;
                widened.push((due, lane.take_start(self.clock.now_ms(), self.config.unreachable_pause_ms)));
            }
            let next = match next.filter(|_| !stopping) {
                Some(due) => {
                    let at = lane.take_start(self.clock.now_ms(), self.config.unreachable_pause_ms);
                    Some((due, at, parked_before > half && lane.parked.len() <= half))
                }
                None => {
                    lane.running -= 1;
                    let rate_spent = lane.next_rate_start <= self.clock.now_ms() as f64 && !lane.rate_timer;
                    let empty = lane.running == 0 && lane.parked.is_empty() && lane.incoming == 0;
                    if empty && lane.unreachable == 0 && rate_spent {
                        lanes.remove(key);
                    }
                    None
                }
            };
            (next, widened)
        };
        for (due, at) in widened {
            self.start_turn(key.to_owned(), due, at);
        }
        if let Some((due, at, half_gone)) = next {
            self.start_turn(key.to_owned(), due, at);
            // Half its parked deliveries gone: a lane with more deferred in the store takes
            // them now rather than at the next poll.
            if half_gone && self.deferred.has(key) {
                self.wake();
            }
        }
    }

    /// Waits for a start on a lane limited to `rate_per_s`. The limit is the endpoint's,
    /// shared by the live nodes: each node starts that lane's deliveries `nodes / rate`
    /// seconds apart, counted from the start before, so a stalled node catches up without
    /// a burst and no second sees more than the rate. Nothing is dropped, only delayed.
    /// False if shutdown came first. `rate_per_s` is at least 1 (`Target::rate_per_s`).
    async fn rate_turn(self: &Arc<Self>, key: &str, rate_per_s: u32) -> bool {
        let nodes = self.live_nodes.load(Ordering::Relaxed).max(1) as f64;
        let interval_ms = 1000.0 * nodes / f64::from(rate_per_s);
        let waiting = {
            let mut lanes = self.endpoint_lanes.lock().expect("lanes lock");
            let lane = lanes.entry(key.to_owned()).or_default();
            lane.rate_interval_ms = interval_ms;
            let now = self.clock.now_ms() as f64;
            if lane.rate_waiters.is_empty() && lane.next_rate_start <= now {
                lane.next_rate_start = now + interval_ms;
                return true;
            }
            let (sender, receiver) = oneshot::channel();
            lane.rate_waiters.push_back(sender);
            if !lane.rate_timer {
                lane.rate_timer = true;
                tokio::spawn(self.clone().hand_out_starts(key.to_owned()));
            }
            receiver
        };
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            started = waiting => started.is_ok(),
            _ = stopping.wait_for(|s| *s) => false,
        }
    }

    /// A rate-limited lane's timer: one start per interval to the waiting deliveries, in
    /// order, until none waits. The interval is read at each start, so a changed rate or
    /// node count applies to the deliveries already waiting.
    async fn hand_out_starts(self: Arc<Self>, key: String) {
        loop {
            let at = {
                let lanes = self.endpoint_lanes.lock().expect("lanes lock");
                lanes.get(&key).map_or(0.0, |lane| lane.next_rate_start)
            };
            self.clock.sleep_until(at.ceil() as UnixMs).await;
            let mut lanes = self.endpoint_lanes.lock().expect("lanes lock");
            let Some(lane) = lanes.get_mut(&key) else { return };
            // A waiter that went away (shutdown) gives its start to the next.
            let next = std::iter::from_fn(|| lane.rate_waiters.pop_front()).find(|w| !w.is_closed());
            let Some(waiter) = next else {
                lane.rate_timer = false;
                return;
            };
            let _ = waiter.send(());
            lane.next_rate_start = self.clock.now_ms() as f64 + lane.rate_interval_ms;
        }
    }

    /// Counts attempts in a row that did not reach the endpoint of `key`.
    fn note_reach(&self, key: &str, reached: bool) {
        let mut lanes = self.endpoint_lanes.lock().expect("lanes lock");
        let Some(lane) = lanes.get_mut(key) else { return };
        if reached {
            if lane.unreachable >= PACE_AFTER_UNREACHABLE {
                tracing::info!(lane = key, "endpoint reachable again; its deliveries run at full speed");
            }
            lane.unreachable = 0;
        } else {
            lane.unreachable = lane.unreachable.saturating_add(1);
            if lane.unreachable == PACE_AFTER_UNREACHABLE {
                tracing::warn!(lane = key, "endpoint cannot be reached; pacing its deliveries");
            }
        }
    }

    /// Waits for a slot, unless shutdown comes first.
    async fn slot(&self, slots: Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            permit = slots.acquire_owned() => permit.ok(),
            _ = stopping.wait_for(|s| *s) => None,
        }
    }

    async fn deliver(self: Arc<Self>, key: String, due: Due) {
        let turn = Turn { engine: self.clone(), key };
        let _in_flight = InFlight(&self);
        let message = match due.message.clone() {
            Some(message) => message,
            None => match self.store.message_by_id(&due.delivery.msg_id).await {
                Ok(message) => Arc::new(message),
                Err(StoreError::NotFound) => return self.close_stranded(due).await,
                Err(_) => return self.retry_later(due),
            },
        };
        // Where the delivery goes, read now and again after each wait that can be long.
        macro_rules! resolved_or_return {
            () => {
                match self.resolve_target(&due.delivery, &message).await {
                    Ok(Some(target)) => target,
                    Ok(None) => return self.close_stranded(due).await,
                    Err(_) => return self.retry_later(due),
                }
            };
        }
        let mut target = resolved_or_return!();
        // Waits holding the lane's turn, not a global slot: a throttled endpoint's backlog
        // never slows another endpoint. The wait can be long, so afterwards the claim is
        // checked and the endpoint read again (deleted, disabled, re-pointed meanwhile).
        // A disabled endpoint's delivery is skipped without waiting for a start.
        if let Some(rate) = target.rate_per_s.filter(|_| !target.disabled) {
            if !self.rate_turn(&turn.key, rate).await || !self.holds(&due) {
                return;
            }
            target = resolved_or_return!();
        }
        // A disabled endpoint's delivery sends nothing: it takes no slot. A wait for one can
        // be long under load: after it the endpoint is read again (disabled, re-pointed,
        // its secret rotated meanwhile), as after a rate limit's wait.
        let _global_slot = match target.disabled {
            true => None,
            false => match self.global_slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    let slot = match self.slot(self.global_slots.clone()).await {
                        None => return,
                        slot => slot,
                    };
                    target = resolved_or_return!();
                    slot
                }
            },
        };
        // A delivery is sent by its newest copy here: an operator may have sent it again
        // (a resend, a recover) while this node held it, and the copy made then is the one
        // the store's state is about. An older one went out beside it, and its outcome
        // (given up on, its attempts counted from before) could be recorded over the new.
        // An ordered one is also sent only while it is its lane's open one, under this
        // node's claim: an operator may have skipped it (and the next has gone ahead) while
        // this node held it, and another node claimed it in its turn. Read after the wait
        // for a slot, which can be long under load: read before it, a skip during the wait
        // sent this one after the next.
        if !due.hold.is_newest() {
            return;
        }
        if due.delivery.order_key.is_some() {
            match self.store.still_claimed(&due.delivery.msg_id, &due.delivery.id, due.claim).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => return self.retry_later(due),
            }
        }
        if target.disabled {
            return self.finish(due, &turn.key, &target, &message, None).await;
        }
        // Held still, right before sending? The waits above can be long (the store, a rate
        // limit, a slot), and a parked delivery's turn may have come after the lease was
        // lost (a node paused past its lease): another node may be sending it.
        if *self.stopping.borrow() || !self.holds(&due) {
            return;
        }
        let now = self.clock.now_ms();
        let mut headers = sign_headers(&target.scheme, &message.id, now / 1000, &message.payload, &target.secrets);
        // Inbound messages carry the provider's content type and original request headers.
        let forwarded = message.headers.iter().flatten();
        let content_type = forwarded.clone().find(|(k, _)| *k == "content-type").map(|(_, v)| v.as_str());
        headers.push(("content-type".into(), content_type.unwrap_or("application/json").into()));
        headers.extend(forwarded.filter(|(k, _)| *k != "content-type").map(|(k, v)| (k.clone(), v.clone())));
        // The signature is Hookline's: an endpoint header of the signature header's name
        // (saved before that header was chosen, say) is not sent beside it.
        let own = target.headers.iter().filter(|(name, _)| !headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(name)));
        let own: Vec<_> = own.cloned().collect();
        headers.extend(own);
        let sent = match hookline_core::queue_url::is_queue_url(&target.url) {
            true => {
                let endpoint = due.delivery.endpoint_id.as_deref().unwrap_or("callback");
                // An operator's resend is a new message to the broker: under the same
                // JetStream id within the stream's duplicate window, it was dropped as a
                // repeat and recorded as delivered.
                let endpoint = match due.delivery.trigger {
                    Trigger::Manual => format!("{endpoint}.{now}"),
                    Trigger::Scheduled => endpoint.to_owned(),
                };
                // Boxed: a broker's connect is kilobytes of state that every HTTP delivery
                // task would carry otherwise.
                Box::pin(self.queues.publish(&target.url, &message.id, &endpoint, &headers, message.payload.clone()))
                    .await
            }
            false => self.client.post(&target.url, &headers, message.payload.clone(), now).await,
        };
        self.finish(due, &turn.key, &target, &message, Some(sent)).await;
    }

    /// Records the attempt and schedules what follows. `sent` is `None` when no request
    /// was made because the endpoint is disabled.
    async fn finish(
        self: &Arc<Self>,
        due: Due,
        lane: &str,
        target: &Target,
        message: &Message,
        sent: Option<client::Sent>,
    ) {
        let now = self.clock.now_ms();
        let d = &due.delivery;
        let first_attempt_at = d.first_attempt_at.unwrap_or(now);
        if let Some(sent) = &sent {
            self.note_reach(lane, !unreachable(&sent.outcome));
        }
        let (state, next_at, disable, class) = match &sent {
            None => (DeliveryState::Skipped, None, false, Some("endpoint_disabled")),
            Some(sent) => {
                let class = error_class(&sent.outcome);
                match classify(&sent.outcome) {
                    Verdict::Delivered => (DeliveryState::Delivered, None, false, class),
                    Verdict::DisableEndpoint => (DeliveryState::Exhausted, None, target.endpoint_id.is_some(), class),
                    Verdict::Retry { retry_after_ms } => {
                        let jitter = self.jitter.lock().expect("jitter lock").random::<f64>();
                        match next_attempt(
                            &target.policy,
                            d.attempts + 1,
                            first_attempt_at,
                            now,
                            retry_after_ms,
                            jitter,
                        ) {
                            Some(at) => (DeliveryState::Pending, Some(at), false, class),
                            None => (DeliveryState::Exhausted, None, false, class),
                        }
                    }
                }
            }
        };
        let attempt_state = if state == DeliveryState::Delivered { state } else { DeliveryState::Exhausted };
        // Sent again while this copy was in flight (a resend, a recover): the newer copy is
        // the delivery's now. This one's request is recorded as an attempt, under a claim no
        // node holds, so the delivery's state, schedule and claim stay the newer copy's.
        let overtaken = !due.hold.is_newest();
        let record = AttemptRecord {
            attempt: Attempt {
                id: crate::new_id(prefix::ATTEMPT, now),
                msg_id: message.id.clone(),
                app_id: d.app_id.clone(),
                delivery_id: d.id.clone(),
                endpoint_id: d.endpoint_id.clone(),
                url: target.url.clone(),
                status_code: sent.as_ref().map_or(0, |s| s.status_code),
                response: sent.as_ref().map_or_else(|| "endpoint is disabled".into(), |s| s.response_excerpt.clone()),
                duration_ms: sent.as_ref().map_or(0, |s| s.duration_ms),
                error_class: class.map(str::to_owned),
                state: attempt_state,
                trigger: d.trigger,
                created_at: now,
            },
            state,
            next_at,
            first_attempt_at,
            disable_endpoint: disable,
            disable_after_ms: self.config.disable_after_ms,
            claim: if overtaken { NO_CLAIM } else { due.claim },
            keep_claim: !overtaken && next_at.is_some_and(|at| self.holds_at(at)) && self.holds(&due),
        };
        let keep = record.keep_claim;
        let recorded = match self.record(&record).await {
            // Shutdown came first, or another node took the delivery over.
            None | Some(Recorded { applied: false, .. }) => return,
            Some(_) if overtaken => return,
            Some(recorded) => recorded,
        };
        if recorded.disabled.is_some() {
            self.catalog.invalidate(&d.app_id);
        }
        if let Some(lane) = state.is_final().then(|| publish::lane(d)).flatten() {
            Box::pin(self.next_in_lane(lane, now)).await;
        }
        self.observe(d, state, class, sent.as_ref(), message.created_at, now);
        if let (Some(sent), Some(endpoint_id)) = (&sent, &target.endpoint_id) {
            let ok = state == DeliveryState::Delivered;
            let source = message.source_id.as_deref();
            self.stats.attempt(endpoint_id, source, &d.app_id, ok, sent.duration_ms, now);
        }
        if let (Some(_), Some(endpoint)) = (&sent, &target.endpoint) {
            let notices = attempt_notices(&target.app, endpoint, message, &record.attempt, d.attempts, state, recorded);
            for notice in notices {
                // Boxed, like the ordering lane's step above: rare paths, whose state every
                // delivery task would carry otherwise.
                Box::pin(self.notify(&target.app, notice)).await;
            }
        }
        if keep {
            let mut due = due;
            let delivery = &mut due.delivery;
            delivery.attempts += 1;
            delivery.first_attempt_at = Some(first_attempt_at);
            delivery.next_at = next_at;
            delivery.trigger = Trigger::Scheduled;
            due.message = None;
            self.requeue(due);
        }
    }

    /// Makes the next delivery of an ordering lane due after its head is done. If the store
    /// cannot be written now, the leader's sweep of every lane does it later.
    async fn next_in_lane(&self, lane: (String, String), now: UnixMs) {
        match self.store.promote_lanes(vec![lane], now).await {
            Ok(0) => {}
            Ok(_) => self.wake(),
            Err(e) => tracing::warn!(error = %e, "could not move an ordering lane on; the leader's sweep will"),
        }
    }

    /// Writes an attempt's outcome, retrying while the store is unavailable. `None` if
    /// shutdown came first (the delivery is still open in the store and runs again);
    /// otherwise what the write did (whether it applied under this node's claim).
    async fn record(&self, record: &AttemptRecord) -> Option<Recorded> {
        loop {
            match self.store.record_attempt(record.clone()).await {
                Ok(recorded) => return Some(recorded),
                Err(e) => {
                    tracing::warn!(error = %e, delivery = %record.attempt.delivery_id, "could not record attempt; retrying");
                    if *self.stopping.borrow() {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(RECORD_RETRY_MS)).await;
                }
            }
        }
    }

    /// Closes a delivery with nowhere to go: its message, application or endpoint is gone
    /// (on PostgreSQL, a resend or publish can commit beside the retention pass or deletion
    /// that did not see it). Dropped unrecorded, it would be freed by the sweep of stray
    /// claims, claimed and dropped again for ever, and hold its ordering lane.
    async fn close_stranded(&self, due: Due) {
        let d = &due.delivery;
        match self.store.close_stranded(&d.msg_id, &d.id, self.clock.now_ms()).await {
            Ok(true) => {
                tracing::warn!(delivery = %d.id, message = %d.msg_id, "closed a delivery whose message, application or endpoint is gone");
                self.wake();
            }
            // Closed already (its endpoint or application deleted meanwhile, and this copy
            // left over), or still deliverable, a stale cached copy saying otherwise: this
            // copy goes, and an open delivery's claim is freed by the stray-claim sweep and
            // claimed again. (Tried again here, a copy of a closed delivery came back every
            // second for as long as the node ran.)
            Ok(false) => {}
            Err(_) => self.retry_later(due),
        }
    }

    /// Tries a delivery again shortly, when the store could not be read for it.
    fn retry_later(&self, mut due: Due) {
        due.delivery.next_at = Some(self.clock.now_ms() + RECORD_RETRY_MS as i64);
        self.requeue(due);
    }

    /// Where and how to send: the endpoint, or the message's callback URL. `None` when there
    /// is nowhere to send any more (deleted); an error when the store could not say.
    async fn resolve_target(&self, d: &Delivery, message: &Message) -> Result<Option<Target>, StoreError> {
        let app = match self.catalog.app(&d.app_id).await {
            Ok(app) => app,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let app_policy = app.retry_policy.clone().unwrap_or_else(|| self.config.retry_policy.clone());
        match &d.endpoint_id {
            Some(endpoint_id) => {
                let endpoint = match self.catalog.endpoint(&d.app_id, endpoint_id).await? {
                    Some(endpoint) => endpoint,
                    // Not in this node's copy of the app's endpoints: deleted, or created
                    // after the copy was taken, its change not heard yet (another node's
                    // notification missed while reconnecting). The store says which; a
                    // delivery claimed here and dropped would stay claimed, never sent.
                    None => match self.store.get_endpoint(&d.app_id, endpoint_id).await {
                        // By id: a key matches a uid too (one stored before uids could not
                        // take an id's form), which would be another endpoint.
                        Ok(endpoint) if endpoint.id == *endpoint_id => {
                            self.catalog.invalidate(&d.app_id);
                            Arc::new(endpoint)
                        }
                        Ok(_) | Err(StoreError::NotFound) => return Ok(None),
                        Err(e) => return Err(e),
                    },
                };
                let secrets = live_secrets(&endpoint.secrets, self.clock.now_ms()).collect();
                Ok(Some(Target {
                    app: app.clone(),
                    endpoint: Some(endpoint.clone()),
                    endpoint_id: Some(endpoint.id.clone()),
                    url: endpoint.url.clone(),
                    scheme: endpoint.signature_scheme.clone(),
                    secrets,
                    headers: endpoint.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    policy: endpoint.retry_policy.clone().unwrap_or(app_policy),
                    disabled: endpoint.disabled,
                    rate_per_s: endpoint.throttle_rate.or(app.throttle_rate).filter(|rate| *rate > 0),
                }))
            }
            None => Ok(message.callback_url.clone().map(|url| Target {
                app: app.clone(),
                endpoint: None,
                endpoint_id: None,
                url,
                scheme: SignatureScheme::StandardWebhooks,
                secrets: Secret::parse(&app.secret)
                    .into_iter()
                    .chain(live_secrets(&app.previous_secrets, self.clock.now_ms()))
                    .collect(),
                headers: Vec::new(),
                policy: app_policy,
                disabled: false,
                rate_per_s: None,
            })),
        }
    }
}

/// The secrets of `stored` that still sign at `now`.
fn live_secrets(stored: &[StoredSecret], now: UnixMs) -> impl Iterator<Item = Secret> + '_ {
    stored.iter().filter(move |s| s.expires_at.is_none_or(|at| at > now)).filter_map(|s| Secret::parse(&s.text).ok())
}

struct Target {
    app: Arc<App>,
    /// The endpoint as the catalog has it; `None` for a callback URL.
    endpoint: Option<Arc<Endpoint>>,
    endpoint_id: Option<String>,
    url: String,
    scheme: SignatureScheme,
    secrets: Vec<Secret>,
    headers: Vec<(String, String)>,
    policy: RetryPolicy,
    disabled: bool,
    /// The endpoint's `throttleRate`, or its application's: deliveries per second at most.
    rate_per_s: Option<u32>,
}

/// The operational events an attempt makes: `failed` for every failure, `failing` on the
/// fourth failure in a row, `exhausted` when retries ran out, `recovered` on a success
/// after `failing` was sent, and `endpoint.disabled` when this attempt disabled the endpoint.
fn attempt_notices(
    app: &App,
    endpoint: &Endpoint,
    message: &Message,
    attempt: &Attempt,
    failed_before: u32,
    state: DeliveryState,
    recorded: Recorded,
) -> Vec<Notice> {
    use notices::*;
    let about = |event_type| Notice::attempt(event_type, app, endpoint, message, attempt);
    let mut made = Vec::new();
    if state == DeliveryState::Delivered {
        if failed_before >= FAILING_AFTER {
            made.push(about(ATTEMPT_RECOVERED));
        }
    } else {
        made.push(about(ATTEMPT_FAILED));
        if failed_before + 1 == FAILING_AFTER {
            made.push(about(ATTEMPT_FAILING));
        }
        if state == DeliveryState::Exhausted {
            made.push(about(ATTEMPT_EXHAUSTED));
        }
    }
    if let Some(fail_since) = recorded.disabled {
        made.push(Notice::disabled(app, endpoint, Some(fail_since), Trigger::Automatic));
    }
    made
}

impl Engine {
    fn observe(
        &self,
        d: &Delivery,
        state: DeliveryState,
        class: Option<&'static str>,
        sent: Option<&client::Sent>,
        created_at: UnixMs,
        now: UnixMs,
    ) {
        let settled = match state {
            DeliveryState::Delivered => {
                self.end_to_end_seconds.record((now - created_at).max(0) as f64 / 1000.0);
                Settled::Succeeded
            }
            DeliveryState::Exhausted => Settled::Exhausted,
            DeliveryState::Skipped => Settled::Neither,
            _ => Settled::Failed,
        };
        let duration_ms = sent.map(|s| s.duration_ms);
        self.series.lane(&delivery_lane(d), &d.app_id).attempt(class.unwrap_or("success"), duration_ms, settled);
    }

    /// Drops the series of `app_id`'s deleted endpoints (all of them if the application is
    /// gone), as the store has them now; nothing if this node has none of its series.
    pub async fn forget_deleted_endpoints(&self, app_id: &str) {
        if !self.series.has_app(app_id) {
            return;
        }
        let endpoints = match self.catalog.app(app_id).await {
            Ok(_) => self.catalog.endpoints(app_id).await,
            Err(e) => Err(e),
        };
        match endpoints {
            Ok(endpoints) => {
                let callbacks = lane_key(app_id, None);
                self.series.keep_of_app(app_id, |lane| lane == callbacks || endpoints.has(lane));
            }
            Err(StoreError::NotFound) => self.series.keep_of_app(app_id, |_| false),
            Err(e) => tracing::debug!(error = %e, "could not read an application's endpoints; its series stay"),
        }
    }

    /// Drops the series of deleted sources, as the store has them now.
    pub async fn forget_deleted_sources(&self) {
        for id in self.source_series.ids() {
            if let Err(StoreError::NotFound) = self.catalog.source(&id).await {
                self.source_series.keep(|kept| kept != id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lane parking `count` deliveries, the first parked at `first_at`.
    fn lane(count: usize, first_at: UnixMs) -> EndpointLane {
        let held = Arc::new(claims::Held::new());
        let publish = hookline_store::conformance::publish("app_1", &["ep_1"], None, 0);
        let mut lane = EndpointLane::default();
        for n in 0..count {
            let delivery = publish.deliveries[0].clone();
            let hold = claims::Hold::new(&held, &delivery.id);
            let due = Due { at: first_at + n as i64, delivery, message: None, claim: 1, incoming: false, hold };
            lane.parked.push_back(due);
        }
        lane
    }

    /// A lane is behind only when it parks its cap and its first delivery has waited past
    /// the mark: a quick endpoint's burst, however long its queue, is not (its publishes are
    /// claimed and sent from memory), nor is a short queue however old.
    #[test]
    fn a_lane_is_behind_when_full_and_its_first_parked_has_waited() {
        let (cap, overdue) = (4, 1_000);
        assert!(lane(4, 999).behind(cap, overdue), "full, and waiting since before the mark");
        assert!(lane(40, 999).behind(cap, overdue));
        assert!(!lane(40, 1_000).behind(cap, overdue), "a burst parked since the mark only");
        assert!(!lane(3, 0).behind(cap, overdue), "under the cap, however long it waited");
        assert!(!lane(0, 0).behind(cap, overdue));
    }
}
