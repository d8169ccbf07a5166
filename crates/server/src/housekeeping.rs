//! Background duties of a running node: following changes other nodes make (cache
//! invalidation, with a TTL as a backstop), and, on the one node holding the leader
//! lease, retention: old messages, expired idempotent answers and provider event ids, and
//! statistics rolled up from minutes to hours and expired.

use crate::api::AppState;
use crate::config::Config;
use hookline_store::{Change, Store, StoreError, Token};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

const DAY_MS: i64 = 24 * 3_600_000;

/// Keys of idempotent answers and provider event ids a retention statement looks at: a
/// few milliseconds of the writer's time each.
const PURGE_CHUNK: usize = 2_000;

/// Every API token: the stored ones (hashes) and the one the configuration names, which
/// stands in for any generated admin token (deleted at start, see `ensure_admin_token`; a
/// node configured so never takes one another node may still hold).
pub async fn load_tokens(store: &dyn Store, config: &Config) -> Result<Vec<Token>, StoreError> {
    let mut tokens = store.tokens().await?;
    if let Some(token) = &config.api.admin_token {
        tokens.retain(|t| t.app_id.is_some());
        let hash = crate::api::hash_token(token);
        // The id names this value of the token, not the setting: a dashboard session keeps
        // only its token's id, so when the operator changes a leaked token, the sessions
        // opened with the old one end with it.
        tokens.push(Token { id: format!("tok_config_{}", hex::encode(&hash[..8])), hash, app_id: None, created_at: 0 });
    }
    Ok(tokens)
}

/// Applies changes told by the store to this node's caches; flushes them whole every
/// `cache_ttl_ms` and whenever notifications may have been missed.
pub async fn follow_changes(state: Arc<AppState>) {
    let ttl = Duration::from_millis(state.config.cluster.cache_ttl_ms);
    let mut changes = state.store.changes();
    let mut flush_at = tokio::time::Instant::now() + ttl;
    loop {
        let change = async {
            match changes.as_mut() {
                Some(receiver) => receiver.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = change => match received {
                Ok(change) => apply(&state, change).await,
                Err(RecvError::Lagged(_)) => apply(&state, Change::Flush).await,
                Err(RecvError::Closed) => changes = None,
            },
            _ = tokio::time::sleep_until(flush_at) => {
                apply(&state, Change::Flush).await;
                flush_at = tokio::time::Instant::now() + ttl;
            }
        }
    }
}

async fn apply(state: &AppState, change: Change) {
    let catalog = &state.engine.catalog;
    match change {
        Change::App(app_id) => {
            catalog.invalidate(&app_id);
            // Another node may have deleted an endpoint or the application: looked up
            // aside, so that the changes after this one wait for no store read.
            let engine = state.engine.clone();
            tokio::spawn(async move { engine.forget_deleted_endpoints(&app_id).await });
        }
        Change::Sources => {
            catalog.invalidate_sources();
            let engine = state.engine.clone();
            tokio::spawn(async move { engine.forget_deleted_sources().await });
        }
        Change::Tokens => reload_tokens(state).await,
        Change::Due => state.engine.wake(),
        Change::Flush => {
            catalog.flush();
            reload_tokens(state).await;
            state.engine.wake();
        }
    }
}

/// Every `SERIES_SWEEP_MS`: drops the metric series of endpoints and sources deleted
/// without this node hearing of it (SQLite tells no changes; a notification missed) or
/// recorded into by an attempt that ended after the deletion. Only applications with a lane
/// idle since the last sweep are looked up: a deleted endpoint's lane gets no more attempts.
pub async fn sweep_deleted_series(state: Arc<AppState>) {
    loop {
        tokio::time::sleep(Duration::from_millis(SERIES_SWEEP_MS)).await;
        for app_id in state.engine.series.idle_apps() {
            state.engine.forget_deleted_endpoints(&app_id).await;
        }
        state.engine.forget_deleted_sources().await;
    }
}

/// How often idle metric series are checked against the store.
const SERIES_SWEEP_MS: u64 = 600_000;

async fn reload_tokens(state: &AppState) {
    match load_tokens(state.store.as_ref(), &state.config).await {
        Ok(tokens) => *state.tokens.write().expect("tokens lock") = tokens,
        Err(e) => tracing::warn!(error = %e, "could not reload API tokens; keeping the cached ones"),
    }
}

/// On the leader node, every `retention.interval_ms`: deletes messages past retention in
/// small batches, idempotent answers past their time to live and provider event ids past
/// the dedupe window; and every `inbound.reconcile_interval_ms` reconciles the sources,
/// unless the last reconciliation is still running (a provider's rate limits can stretch
/// one over hours; runs piling up would only add to them). Other nodes only keep asking
/// for the lease.
pub async fn lead_and_retain(state: Arc<AppState>) {
    let config = &state.config;
    let every = config.retention.interval_ms as i64;
    let reconcile_every = config.inbound.reconcile_interval_ms as i64;
    let mut reconciled_at = i64::MIN;
    let mut reconciling: Option<tokio::task::JoinHandle<()>> = None;
    let mut deletions = Deletions::default();
    let mut lease = Lease::new(state.store.as_ref(), state.clock.as_ref(), every);
    loop {
        let now = state.clock.now_ms();
        // The node's token of now (a node that lost its own lease registers again).
        lease.token = state.engine.token();
        let taken = lease.take(now).await;
        // Not leading, or not known to lead for two intervals (the lease may have gone to
        // another node meanwhile): a reconciliation this node began stops, so that two
        // never run at once.
        if !lease.within_margin(now) {
            if let Some(run) = reconciling.take().filter(|run| !run.is_finished()) {
                tracing::warn!("this node no longer leads (or cannot tell): stopping its reconciliation");
                run.abort();
            }
        }
        match taken {
            Ok(true) => {
                retain(&state, &mut lease, &mut deletions).await;
                let due = reconcile_every > 0 && now.saturating_sub(reconciled_at) >= reconcile_every;
                if due && lease.held().await && reconciling.as_ref().is_none_or(|run| run.is_finished()) {
                    reconciled_at = now;
                    let state = state.clone();
                    reconciling = Some(tokio::spawn(async move { crate::reconcile::all(&state).await }));
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not take or keep the leader lease"),
        }
        state.clock.sleep_until(now + every).await;
    }
}

/// The leader lease as a retention pass holds it. A lease lasts three intervals and is
/// taken again at each pass; a pass longer than that (a first pass over millions of
/// messages past a shortened retention) renews it whenever a step finds it an interval
/// old, and stops at the first step that finds it lost, so two nodes do not purge or roll
/// up at once (a step may still outlast the margin when `database.timeout_ms` is above
/// `retention.interval_ms`). The lane sweep and the deletion walks are safe to run twice.
struct Lease<'a> {
    store: &'a dyn Store,
    clock: &'a dyn crate::clock::Clock,
    token: i64,
    every: i64,
    renewed_at: Option<i64>,
}

impl<'a> Lease<'a> {
    fn new(store: &'a dyn Store, clock: &'a dyn crate::clock::Clock, every: i64) -> Lease<'a> {
        Lease { store, clock, token: 0, every, renewed_at: None }
    }

    /// Takes or keeps the lease at `now`: true while this node leads. When the store cannot
    /// be asked, when it was last taken stays as it was.
    async fn take(&mut self, now: i64) -> Result<bool, StoreError> {
        let led = self.store.lead(self.token, now, 3 * self.every as u64).await?;
        self.renewed_at = led.then_some(now);
        Ok(led)
    }

    /// Whether the lease counts as held at `now` without asking the store: taken less than
    /// two intervals ago (a third of the lease kept for clocks that differ).
    fn within_margin(&self, now: i64) -> bool {
        self.renewed_at.is_some_and(|at| now - at < 2 * self.every)
    }

    /// Whether this node still leads; renews the lease when an interval has passed since it
    /// was last taken. When the store cannot be asked, as far as `within_margin` says.
    async fn held(&mut self) -> bool {
        let Some(renewed_at) = self.renewed_at else { return false };
        let now = self.clock.now_ms();
        if now - renewed_at < self.every {
            return true;
        }
        match self.take(now).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!("the leader lease went to another node during a retention pass: stopping it");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the leader lease during a retention pass");
                self.within_margin(now)
            }
        }
    }
}

/// One retention pass; each step and each batch of messages first checks the lease.
async fn retain(state: &AppState, lease: &mut Lease<'_>, deletions: &mut Deletions) {
    let (store, config) = (state.store.as_ref(), &state.config);
    let now = state.clock.now_ms();
    if let Err(e) = store.purge_idempotent_responses(now - config.api.idempotency_ttl_ms as i64, PURGE_CHUNK).await {
        tracing::warn!(error = %e, "could not purge idempotency keys");
    }
    if !lease.held().await {
        return;
    }
    if let Err(e) = store.purge_inbound_keys(now - config.inbound.dedupe_window_ms as i64, PURGE_CHUNK).await {
        tracing::warn!(error = %e, "could not purge inbound event ids");
    }
    if let Err(e) = store.purge_sessions(now).await {
        tracing::warn!(error = %e, "could not purge expired dashboard sessions");
    }
    let batch = config.retention.batch_max;
    let created_before = match config.retention.days {
        0 => i64::MIN,
        days => now - days as i64 * DAY_MS,
    };
    let mut deleted = 0;
    while lease.held().await {
        match store.purge_messages(created_before, now, batch).await {
            Ok(n) => {
                deleted += n;
                if n < batch {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not delete messages past retention");
                break;
            }
        }
        // Between batches, publishes and attempt records have the store to themselves.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if deleted > 0 {
        tracing::info!(deleted, "deleted messages past retention");
    }
    if !lease.held().await {
        return;
    }
    finish_app_deletions(&state.store, deletions).await;
    roll_up_stats(store, lease, now, batch).await;
    if !lease.held().await {
        return;
    }
    // Lanes whose head was made due by nobody (a node died between a commit and the
    // promotion after it, or the head's message was deleted) move on here.
    match hookline_store::sweep_stalled_lanes(store, now, hookline_store::WALK_CHUNK).await {
        Ok(0) => {}
        Ok(moved) => {
            tracing::info!(moved, "made the heads of stalled ordering lanes due");
            state.engine.wake();
        }
        Err(e) => tracing::warn!(error = %e, "could not sweep the ordering lanes"),
    }
}

/// The application deletions the retention passes watch.
#[derive(Default)]
struct Deletions {
    /// Each deletion under way at the last pass, with its steps then.
    seen: BTreeMap<String, i64>,
    /// The walks this node took up, until they end.
    walking: BTreeMap<String, tokio::task::JoinHandle<()>>,
}

/// Takes up the deletions whose walk took no step since the last pass: cut short by a crash
/// or an outage. A walk under way (on any node) counts its steps on its mark, and is left
/// to finish; so is one this node took up and still runs (a step slower than a pass).
/// Each taken up walks on a task of its own, so the pass goes on meanwhile.
async fn finish_app_deletions(store: &Arc<dyn Store>, deletions: &mut Deletions) {
    deletions.walking.retain(|_, walk| !walk.is_finished());
    let under_way: BTreeMap<String, i64> = match store.deleted_apps().await {
        Ok(found) => found.into_iter().collect(),
        Err(e) => return tracing::warn!(error = %e, "could not read the application deletions under way"),
    };
    for (app_id, steps) in &under_way {
        if deletions.seen.get(app_id) != Some(steps) || deletions.walking.contains_key(app_id) {
            continue;
        }
        let (store, id) = (store.clone(), app_id.clone());
        let walk = tokio::spawn(async move {
            match hookline_store::purge_deleted_app(&*store, &id).await {
                Ok(()) => tracing::info!(app_id = id, "finished deleting an application whose deletion was cut short"),
                Err(e) => tracing::warn!(error = %e, app_id = id, "could not finish deleting an application"),
            }
        });
        deletions.walking.insert(app_id.clone(), walk);
    }
    deletions.seen = under_way;
}

/// Minute statistics are kept for a day, then summed into hours.
pub const STATS_MINUTES_KEPT_MS: i64 = DAY_MS;
/// Statistics older than this go.
pub const STATS_KEPT_MS: i64 = 90 * DAY_MS;

/// Rolls statistics a day old up into hours and deletes those past 90 days, a batch at a
/// time with pauses between, as the message retention does.
async fn roll_up_stats(store: &dyn Store, lease: &mut Lease<'_>, now: i64, batch: usize) {
    while lease.held().await {
        match store.roll_up_stats(now - STATS_MINUTES_KEPT_MS, now - STATS_KEPT_MS, batch).await {
            Ok(0) => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => {
                tracing::warn!(error = %e, "could not roll up statistics");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    /// A retention pass longer than the lease keeps it (renewed once an interval old, not
    /// at every step), and stops at the first step after another node took it.
    #[tokio::test]
    async fn a_long_pass_renews_the_lease_and_stops_once_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = hookline_store::sqlite::SqliteStore::open(dir.path(), &[9; 32]).unwrap();
        let clock = ManualClock::new(1_000_000);
        let (ours, theirs, every) = (1, 2, 1_000);
        let mut lease = Lease::new(&store, &clock, every);
        lease.token = ours;
        assert!(lease.take(clock.now_ms()).await.unwrap());
        clock.advance(900);
        assert!(lease.held().await);
        assert_eq!(lease.renewed_at, Some(1_000_000), "younger than an interval: not renewed");
        clock.advance(600);
        assert!(lease.held().await);
        assert_eq!(lease.renewed_at, Some(1_001_500));
        // Past the lease as first taken (three intervals), inside the renewed one.
        clock.advance(2_000);
        assert!(!store.lead(theirs, clock.now_ms(), 3 * every as u64).await.unwrap(), "the renewed lease holds");
        clock.advance(1_001);
        assert!(store.lead(theirs, clock.now_ms(), 3 * every as u64).await.unwrap(), "expired, another node leads");
        assert!(!lease.held().await, "the pass stops");
        assert!(!lease.held().await, "and stays stopped");
        assert!(!store.lead(ours, clock.now_ms(), 3 * every as u64).await.unwrap());
    }
}
