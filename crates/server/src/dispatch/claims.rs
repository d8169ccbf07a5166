//! The claimer: this node's lease and its windows of due work. A heartbeat renews the lease
//! when a third of it has passed; every poll (or sooner when woken) the claimer takes
//! batches of due deliveries from the store while the node holds fewer than
//! `cluster.held_max`, so memory follows the work in flight, not the backlog. A lost lease
//! (the node was cut off longer than the lease) means a new registration; work held under
//! the old token is dropped as it comes due, and claimed again from the store.
//!
//! Due work of an endpoint whose lane here has no room is deferred, not claimed (and so is a
//! publish's to a lane that is behind, see `lanes_behind`): it waits in the store outside
//! the due work every claim reads, so one endpoint's backlog does not stand before another
//! endpoint's retries or scheduled messages. Each lane takes its deferred deliveries back
//! as it has room (`lane_room`): up to twice what it may run at once, running, parked and
//! on their way together.

use super::{delivery_lane, lane_key, Due, EndpointLane, Engine, CALLBACK_LANE};
use crate::config::ClusterConfig;
use crate::metrics as m;
use hookline_store::{ClaimDue, DeferredLane, Delivery, DeliveryKey, NodeLease};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lanes with deferred deliveries a look at the store lists at most.
const DEFERRED_LANES_LISTED: usize = 10_000;

/// The earliest due open deliveries a sweep of stray claims looks among (a stray claim is
/// never sent, so it stays among the earliest while other work moves on).
const STRAY_WINDOW: usize = 10_000;

/// The deliveries this node holds in memory: a count, its gauge's handle (made once, not
/// looked up in the registry twice per delivery), and the ids held (as hashes, each with
/// its number of holds and the newest hold's number) for the sweep of stray claims and
/// [`Hold::is_newest`].
pub struct Held {
    pub count: AtomicUsize,
    gauge: metrics::Gauge,
    ids: Mutex<HashMap<u64, HeldId>>,
    /// The number the next hold takes.
    next: AtomicU64,
}

#[derive(Default)]
struct HeldId {
    holds: u32,
    newest: u64,
}

impl Held {
    pub fn new() -> Held {
        Held {
            count: AtomicUsize::new(0),
            gauge: metrics::gauge!(m::HELD),
            ids: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        }
    }

    /// Whether a delivery of this id is held (or, rarely, one whose id hashes alike: a
    /// stray claim then waits for the next sweep; nothing held is ever taken for stray).
    fn has(&self, delivery_id: &str) -> bool {
        self.ids.lock().expect("held lock").contains_key(&id_hash(delivery_id))
    }
}

fn id_hash(delivery_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    delivery_id.hash(&mut hasher);
    hasher.finish()
}

/// One delivery held in memory; counted while it lives, however it leaves.
pub struct Hold {
    held: Arc<Held>,
    id: u64,
    number: u64,
}

impl Hold {
    pub fn new(held: &Arc<Held>, delivery_id: &str) -> Hold {
        let id = id_hash(delivery_id);
        let mut ids = held.ids.lock().expect("held lock");
        // Numbered under the lock, so that of two holds of one id the later is the newest.
        let number = held.next.fetch_add(1, Ordering::Relaxed);
        let entry = ids.entry(id).or_default();
        (entry.holds, entry.newest) = (entry.holds + 1, number);
        drop(ids);
        held.count.fetch_add(1, Ordering::SeqCst);
        held.gauge.increment(1.0);
        Hold { held: held.clone(), id, number }
    }

    /// Whether no later hold of this delivery was taken: a delivery held twice (a copy
    /// kept for its retry or parked, when an operator skipped it, sent it again and this
    /// node claimed it once more) is the later claim's to send; the earlier copy is stale.
    /// (Two ids hashing alike would leave the earlier unsent, and claimed until the sweep
    /// of stray claims frees it: a delay, never a loss.)
    pub fn is_newest(&self) -> bool {
        self.held.ids.lock().expect("held lock").get(&self.id).is_some_and(|held| held.newest == self.number)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut ids = self.held.ids.lock().expect("held lock");
        if let Some(held) = ids.get_mut(&self.id) {
            held.holds -= 1;
            if held.holds == 0 {
                ids.remove(&self.id);
            }
        }
        drop(ids);
        self.held.count.fetch_sub(1, Ordering::SeqCst);
        self.held.gauge.decrement(1.0);
    }
}

/// The lanes with deliveries deferred in the store, as this node knows them: those it
/// deferred, and those a look at the store found (another node's, or from before a restart).
/// Each remembers when it was last noted, so that a claim which found a lane empty forgets
/// it only if nothing was deferred to it meanwhile.
#[derive(Default)]
pub struct Deferred {
    lanes: Mutex<HashMap<String, (DeferredLane, u64)>>,
    notes: AtomicU64,
    /// When the store was last asked for lanes with deferred deliveries (engine clock), and
    /// the lane the next look goes on from (`None`: from the first).
    looked_at: AtomicI64,
    looked_after: Mutex<Option<DeferredLane>>,
    /// Which lane comes first in the next round of claims of deferred deliveries.
    turn: AtomicUsize,
}

impl Deferred {
    /// Notes lanes deferred to (by a claim or a publish) or found in the store.
    pub(super) fn note(&self, found: impl IntoIterator<Item = DeferredLane>) {
        let mut lanes = self.lanes.lock().expect("deferred lock");
        for lane in found {
            let note = self.notes.fetch_add(1, Ordering::Relaxed) + 1;
            let key = lane_key(&lane.app_id, lane.endpoint_id.as_deref()).into_owned();
            lanes.insert(key, (lane, note));
        }
    }

    /// Whether the lane `key` has deliveries deferred, as far as this node knows.
    pub fn has(&self, key: &str) -> bool {
        self.lanes.lock().expect("deferred lock").contains_key(key)
    }

    fn all(&self) -> Vec<(String, DeferredLane, u64)> {
        let lanes = self.lanes.lock().expect("deferred lock");
        lanes.iter().map(|(key, (lane, note))| (key.clone(), lane.clone(), *note)).collect()
    }

    /// Forgets `key` unless it was noted again after `note`.
    fn forget(&self, key: &str, note: u64) {
        let mut lanes = self.lanes.lock().expect("deferred lock");
        if lanes.get(key).is_some_and(|(_, last)| *last == note) {
            lanes.remove(key);
        }
    }
}

/// The configured node name, or `<host>-<pid>`.
pub fn node_name(cluster: &ClusterConfig) -> String {
    cluster.node_name.clone().unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id()))
}

/// This machine's host name (`hookline` when it has none).
pub fn host_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    if host.is_empty() {
        "hookline".to_owned()
    } else {
        host
    }
}

impl Engine {
    /// Claims due work every poll (or sooner when woken) while there is room.
    pub(super) async fn claim_loop(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        let poll = Duration::from_millis(self.cluster.poll_ms);
        loop {
            if *stopping.borrow() {
                return;
            }
            self.claim_while_room(self.token()).await;
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                _ = self.claim_now.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Renews the lease when a third of it has passed (checked every poll, on the engine's
    /// clock), in a task of its own so that slow claims never starve the renewal. The live
    /// nodes are counted after each renewal in a task of their own too: the count is a
    /// read, which may queue behind the API's on SQLite, and must not delay the next renewal.
    pub(super) async fn heartbeat(self: Arc<Self>, mut lease: NodeLease) {
        let mut stopping = self.stopping.subscribe();
        let poll = Duration::from_millis(self.cluster.poll_ms);
        let mut renewed_at = self.clock.now_ms();
        self.count_nodes(renewed_at).await;
        // A node that crashed between a commit and making its lane's next delivery due may
        // be this one, restarted: the leader lease of its old token keeps the leader's
        // sweep away for up to three retention intervals, and the count of live nodes need
        // not drop (its old lease may have run out before this start).
        let engine = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(engine.cluster.lease_ms / 3);
            while !engine.sweep_lanes(engine.clock.now_ms(), "this node started").await {
                if *engine.stopping.borrow() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        let mut counting: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let now = self.clock.now_ms();
            if now - renewed_at >= self.cluster.lease_ms as i64 / 3 {
                if let Some(fresh) = self.renew(lease, now).await {
                    lease = fresh;
                    self.lease_until.store(lease.lease_until, Ordering::SeqCst);
                    renewed_at = now;
                    if counting.as_ref().is_none_or(|count| count.is_finished()) {
                        let engine = self.clone();
                        counting = Some(tokio::spawn(async move { engine.count_nodes(now).await }));
                    }
                }
            }
            self.client.sweep_idle();
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Frees this node's claims in the store on deliveries it does not hold in memory. No
    /// known path leaves such a claim, but one would keep its delivery from being sent for
    /// as long as the node lives (its lease stays renewed). Every lease (on the engine's
    /// clock) the sweep lists the node's open claims due a lease ago or earlier
    /// ([`hookline_store::Store::overdue_claims`]); one it does not hold at two sweeps in a
    /// row, under the same token, is freed and claimed again as due work. Two sweeps a lease
    /// apart, so that work on its way into memory (a commit's or a claim's, a moment) is never
    /// taken for stray.
    pub(super) async fn sweep_stray_claims(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        let every = self.cluster.lease_ms as i64;
        let (mut token, mut suspects) = (self.token(), HashSet::new());
        loop {
            let at = self.clock.now_ms() + every;
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                _ = self.clock.sleep_until(at) => {}
            }
            if token != self.token() {
                (token, suspects) = (self.token(), HashSet::new());
            }
            let overdue = match self.store.overdue_claims(token, self.clock.now_ms() - every, STRAY_WINDOW).await {
                Ok(overdue) => overdue,
                Err(e) => {
                    tracing::warn!(error = %e, "could not look for stray claims");
                    continue;
                }
            };
            let stray: HashSet<DeliveryKey> = overdue.into_iter().filter(|k| !self.held.has(&k.id)).collect();
            let lost: Vec<DeliveryKey> = stray.iter().filter(|k| suspects.contains(*k)).cloned().collect();
            suspects = stray;
            if lost.is_empty() {
                continue;
            }
            match self.store.free_claims(token, lost.clone()).await {
                Ok(freed) => {
                    tracing::warn!(
                        freed,
                        "freed claims on deliveries this node no longer held; they are claimed again"
                    );
                    metrics::counter!(m::STRAY_CLAIMS_FREED).increment(freed as u64);
                    for key in &lost {
                        suspects.remove(key);
                    }
                    self.wake();
                }
                Err(e) => tracing::warn!(error = %e, "could not free stray claims"),
            }
        }
    }

    /// Counts the live nodes, which share each endpoint's rate limit (kept as it was when the
    /// store cannot say). Fewer than before: a node is gone (its lease ran out, or it
    /// stopped), perhaps between a commit and making its ordering lane's next delivery due,
    /// so the lanes are swept now, within about a lease and a third of its death, not at the
    /// leader's next retention pass (minutes when the leader is the one gone). Safe beside
    /// the leader's sweep and another node's. A node replaced between two counts leaves the
    /// count as it was: its lanes wait for the leader's pass.
    async fn count_nodes(&self, now: i64) {
        let Ok(nodes) = self.store.live_nodes(now).await else { return };
        let before = self.live_nodes.swap(nodes.max(1), Ordering::Relaxed);
        if nodes < before && !self.sweep_lanes(now, "a node is gone").await {
            // The count as it was, so that the next count sees the drop and sweeps again.
            let _ = self.live_nodes.compare_exchange(nodes.max(1), before, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Makes the heads of stalled ordering lanes due (`why` says what made a lane stall
    /// likely); false if the store could not be walked.
    pub(super) async fn sweep_lanes(&self, now: i64, why: &str) -> bool {
        match hookline_store::sweep_stalled_lanes(self.store.as_ref(), now, hookline_store::WALK_CHUNK).await {
            Ok(0) => true,
            Ok(moved) => {
                tracing::info!(moved, "{why}: made the heads of stalled ordering lanes due");
                self.wake();
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "{why}: could not sweep the ordering lanes; trying again later");
                false
            }
        }
    }

    /// Renews the lease, or registers anew if it was lost. `None` when the store could not
    /// be reached (tried again at the next poll).
    async fn renew(&self, lease: NodeLease, now: i64) -> Option<NodeLease> {
        let lease_ms = self.cluster.lease_ms;
        match self.store.renew_node(lease.token, now, lease_ms).await {
            // Renewed, but only after the lease had ended here: this node may have dropped
            // work meanwhile (`Engine::holds`), which its token would keep claimed.
            Ok(true) if self.clock.now_ms() > lease.lease_until => {
                tracing::warn!(token = lease.token, "this node's lease ended before its renewal came back");
                self.register_again(lease.token).await
            }
            Ok(true) => Some(NodeLease { token: lease.token, lease_until: now + lease_ms as i64 }),
            Ok(false) => {
                tracing::warn!(token = lease.token, "this node's lease expired; its claims go to other nodes");
                self.register_again(lease.token).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew this node's lease");
                None
            }
        }
    }

    /// Registers this node anew (work held under the old token is dropped as it comes due)
    /// and retires the old token, so that what it still claims in the store is free at once.
    async fn register_again(&self, old_token: i64) -> Option<NodeLease> {
        let (lease_ms, now) = (self.cluster.lease_ms, self.clock.now_ms());
        match self.store.register_node(&node_name(&self.cluster), now, lease_ms).await {
            Ok(fresh) => {
                // The lease first: work claimed under the new token must never meet the old
                // lease's end in `holds` (it would be dropped, and stay claimed by a live
                // token). Old work may pass `holds` in between; it was due anyway.
                self.lease_until.store(fresh.lease_until, Ordering::SeqCst);
                self.token.store(fresh.token, Ordering::SeqCst);
                tracing::info!(token = fresh.token, "registered this node again");
                if let Err(e) = self.store.retire_node(old_token).await {
                    tracing::warn!(error = %e, "could not retire the old token; its claims free up when it expires");
                }
                Some(fresh)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not register this node again");
                None
            }
        }
    }

    /// Claims batches of due work while this node holds less than `held_max`, then its
    /// lanes' deferred deliveries as they have room.
    async fn claim_while_room(&self, token: i64) {
        self.look_for_deferred().await;
        if self.claim_due_work(token).await {
            self.claim_deferred_work(token).await;
        }
    }

    /// How many more deliveries this node may hold.
    fn room(&self) -> usize {
        self.cluster.held_max.saturating_sub(self.held.count.load(Ordering::SeqCst))
    }

    /// Claims due work in windows of `claim_batch_max` while there is room: in each, the
    /// deliveries to an endpoint whose lane has all it may take (`lane_room`) are deferred,
    /// and of the rest as many as there is room for are claimed. Deferring is bounded by
    /// `held_max` a round, so a large backlog is set aside over several polls, a window per
    /// statement. False when the store could not
    /// be reached (nothing more is tried this round).
    async fn claim_due_work(&self, token: i64) -> bool {
        let window = self.cluster.claim_batch_max;
        let mut deferred = 0;
        loop {
            let room = self.room();
            if room == 0 || token != self.token() {
                return true;
            }
            let now = self.clock.now_ms();
            let behind = self.endpoints_full();
            let claim = ClaimDue { token, horizon: now + self.horizon_ms(), now, window, limit: room, behind };
            let claimed = match self.store.claim_due(claim).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim due deliveries");
                    return false;
                }
            };
            let full = claimed.taken() == window;
            if claimed.taken() > 0 {
                let (claimed_n, deferred_n, closed) = (claimed.deliveries.len(), claimed.deferred, claimed.closed);
                tracing::debug!(claimed = claimed_n, deferred = deferred_n, closed, "claimed due work");
            }
            deferred += claimed.deferred;
            self.deferred.note(claimed.deferred_lanes);
            self.enqueue_claimed(claimed.deliveries, token);
            if !full || deferred >= self.cluster.held_max {
                return true;
            }
        }
    }

    /// The endpoints (not callback lanes) whose lanes have no room for more deliveries from
    /// the store (`lane_room`).
    fn endpoints_full(&self) -> Vec<String> {
        let lanes = self.endpoint_lanes.lock().expect("lanes lock");
        let full =
            lanes.iter().filter(|(key, lane)| !key.starts_with(CALLBACK_LANE) && self.lane_room(Some(lane)) == 0);
        full.map(|(key, _)| key.clone()).collect()
    }

    /// Hands deliveries claimed from the store to the scheduler, each counted in its lane's
    /// `incoming` until dispatched, so that the next claim sees what the lane was given.
    fn enqueue_claimed(&self, deliveries: Vec<Delivery>, token: i64) {
        {
            let mut lanes = self.endpoint_lanes.lock().expect("lanes lock");
            for delivery in &deliveries {
                lanes.entry(delivery_lane(delivery).into_owned()).or_default().incoming += 1;
            }
        }
        for delivery in deliveries {
            let hold = Hold::new(&self.held, &delivery.id);
            self.requeue(Due { at: 0, delivery, message: None, claim: token, incoming: true, hold });
        }
    }

    /// Asks the store for lanes with deferred deliveries every third of a lease: those
    /// another node deferred, or this node before a restart. Each look goes on from the
    /// lane the last one ended at, so every lane is found however many there are.
    async fn look_for_deferred(&self) {
        let now = self.clock.now_ms();
        let looked_at = self.deferred.looked_at.load(Ordering::Relaxed);
        if looked_at != 0 && now - looked_at < self.cluster.lease_ms as i64 / 3 {
            return;
        }
        self.deferred.looked_at.store(now, Ordering::Relaxed);
        let after = self.deferred.looked_after.lock().expect("deferred lock").clone();
        match self.store.deferred_lanes(after, DEFERRED_LANES_LISTED).await {
            Ok(found) => {
                let last = (found.len() == DEFERRED_LANES_LISTED).then(|| found.last().cloned()).flatten();
                *self.deferred.looked_after.lock().expect("deferred lock") = last;
                self.deferred.note(found);
            }
            Err(e) => tracing::warn!(error = %e, "could not list lanes with deferred deliveries"),
        }
    }

    /// Claims each lane's deferred deliveries while it has room (`lane_room`) and the node
    /// holds less than `held_max`, starting each round one lane further on, so that when
    /// room runs out first, no lane is always last.
    async fn claim_deferred_work(&self, token: i64) {
        let mut lanes = self.deferred.all();
        lanes.sort_by(|a, b| a.0.cmp(&b.0));
        if !lanes.is_empty() {
            let turn = self.deferred.turn.fetch_add(1, Ordering::Relaxed);
            let first = turn % lanes.len();
            lanes.rotate_left(first);
        }
        for (key, lane, note) in lanes {
            let lane_room = {
                let lanes = self.endpoint_lanes.lock().expect("lanes lock");
                self.lane_room(lanes.get(&key))
            };
            let room = lane_room.min(self.room()).min(self.cluster.claim_batch_max);
            if room == 0 || token != self.token() {
                continue;
            }
            match self.store.claim_deferred(token, lane, self.clock.now_ms(), room).await {
                Ok(claimed) => {
                    if claimed.len() < room {
                        self.deferred.forget(&key, note);
                    }
                    self.enqueue_claimed(claimed, token);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim deferred deliveries");
                    return;
                }
            }
        }
    }

    /// How many more deliveries a lane takes from the store: up to twice what it may run at
    /// once (one at a time while paced), running, parked and on their way together. `None`:
    /// no lane yet.
    fn lane_room(&self, lane: Option<&EndpointLane>) -> usize {
        let cap = self.config.endpoint_max_in_flight;
        match lane {
            None => 2 * cap,
            Some(lane) => {
                let cap = if lane.paced(self.config.unreachable_pause_ms) { 1 } else { cap };
                (2 * cap).saturating_sub(lane.running + lane.parked.len() + lane.incoming)
            }
        }
    }
}
