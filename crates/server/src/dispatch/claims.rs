//! The claimer: this node's lease and its windows of due work. A heartbeat renews the lease
//! when a third of it has passed; every poll (or sooner when woken) the claimer takes
//! batches of due deliveries from the store while the node holds fewer than
//! `cluster.held_max`, so memory follows the work in flight, not the backlog. A lost lease (the node was cut off longer
//! than the lease) means a new registration; work held under the old token is dropped
//! as it comes due, and claimed again from the store.

use super::Engine;
use crate::config::ClusterConfig;
use crate::metrics as m;
use hookline_store::NodeLease;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The deliveries this node holds in memory: a count, and its gauge's handle (made once,
/// not looked up in the registry twice per delivery).
pub struct Held {
    pub count: AtomicUsize,
    gauge: metrics::Gauge,
}

impl Held {
    pub fn new() -> Held {
        Held { count: AtomicUsize::new(0), gauge: metrics::gauge!(m::HELD) }
    }
}

/// One delivery held in memory; counted while it lives, however it leaves.
pub struct Hold(Arc<Held>);

impl Hold {
    pub fn new(held: &Arc<Held>) -> Hold {
        held.count.fetch_add(1, Ordering::SeqCst);
        held.gauge.increment(1.0);
        Hold(held.clone())
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.gauge.decrement(1.0);
    }
}

/// The configured node name, or `<host>-<pid>`.
pub fn node_name(cluster: &ClusterConfig) -> String {
    cluster.node_name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        format!("{}-{}", if host.is_empty() { "hookline" } else { &host }, std::process::id())
    })
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
        let mut counting: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let now = self.clock.now_ms();
            if now - renewed_at >= self.cluster.lease_ms as i64 / 3 {
                if let Some(fresh) = self.renew(lease, now).await {
                    lease = fresh;
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

    /// Counts the live nodes, which share each endpoint's rate limit (kept as it was when the
    /// store cannot say).
    async fn count_nodes(&self, now: i64) {
        if let Ok(nodes) = self.store.live_nodes(now).await {
            self.live_nodes.store(nodes.max(1), Ordering::Relaxed);
        }
    }

    /// Renews the lease, or registers anew if it was lost. `None` when the store could not
    /// be reached (tried again at the next poll).
    async fn renew(&self, lease: NodeLease, now: i64) -> Option<NodeLease> {
        let lease_ms = self.cluster.lease_ms;
        match self.store.renew_node(lease.token, now, lease_ms).await {
            Ok(true) => Some(NodeLease { token: lease.token, lease_until: now + lease_ms as i64 }),
            Ok(false) => {
                tracing::warn!(token = lease.token, "this node's lease expired; its claims go to other nodes");
                let fresh = self.store.register_node(&node_name(&self.cluster), now, lease_ms).await;
                match fresh {
                    Ok(fresh) => {
                        self.token.store(fresh.token, Ordering::SeqCst);
                        tracing::info!(token = fresh.token, "registered this node again");
                        Some(fresh)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not register this node again");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew this node's lease");
                None
            }
        }
    }

    /// Claims batches of due work while this node holds less than `held_max`.
    async fn claim_while_room(&self, token: i64) {
        let batch = self.cluster.claim_batch_max;
        loop {
            let room = self.cluster.held_max.saturating_sub(self.held.count.load(Ordering::SeqCst));
            if room == 0 || token != self.token() {
                return;
            }
            let now = self.clock.now_ms();
            let limit = room.min(batch);
            let claimed = match self.store.claim_due(token, now + self.horizon_ms(), now, limit).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim due deliveries");
                    return;
                }
            };
            let full = claimed.len() == limit;
            if !claimed.is_empty() {
                tracing::debug!(claimed = claimed.len(), "claimed due deliveries");
            }
            for delivery in claimed {
                self.enqueue(delivery, None, token);
            }
            if !full {
                return;
            }
        }
    }
}
