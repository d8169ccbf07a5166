//! Statistics kept by Hookline itself: per endpoint and per inbound source, per minute,
//! attempts succeeded and failed with a small latency histogram, and inbound requests
//! accepted, refused and duplicate. Counted in memory as attempts finish and requests
//! arrive, and written to the store by a background task every `FLUSH_MS` (before each
//! statistics read on this node, and at shutdown): never on the publish path. A crash loses
//! at most the last interval's counts; with several nodes, a read shows the others' counts
//! up to `FLUSH_MS` late.

use hookline_core::UnixMs;
use hookline_store::{StatCounts, StatRow, Store, MINUTE_MS};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What an inbound request came to, for the source's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    Accepted,
    Refused,
    Duplicate,
}

/// How often counts are written (wall time: a batch of upserts, one per scope and minute).
pub const FLUSH_MS: u64 = 5_000;

#[derive(Default)]
pub struct Recorder {
    /// Counts not yet written, by (scope, minute), with their application.
    pending: Mutex<HashMap<(String, UnixMs), (String, StatCounts)>>,
}

impl Recorder {
    fn add(&self, scope: &str, app_id: &str, now: UnixMs, count: impl FnOnce(&mut StatCounts)) {
        let minute = now - now.rem_euclid(MINUTE_MS);
        let mut pending = self.pending.lock().expect("stats lock");
        let (_, counts) =
            pending.entry((scope.to_owned(), minute)).or_insert_with(|| (app_id.to_owned(), StatCounts::default()));
        count(counts);
    }

    /// An attempt to an endpoint finished (`ok`: delivered). Attempts of messages from an
    /// inbound source count for the source too.
    pub fn attempt(
        &self,
        endpoint_id: &str,
        source_id: Option<&str>,
        app_id: &str,
        ok: bool,
        duration_ms: u64,
        now: UnixMs,
    ) {
        self.add(endpoint_id, app_id, now, |c| c.record_attempt(ok, duration_ms));
        if let Some(source_id) = source_id {
            self.add(source_id, app_id, now, |c| c.record_attempt(ok, duration_ms));
        }
    }

    /// A request to an inbound source was answered.
    pub fn inbound(&self, source_id: &str, app_id: &str, outcome: Inbound, now: UnixMs) {
        self.add(source_id, app_id, now, |c| match outcome {
            Inbound::Accepted => c.accepted += 1,
            Inbound::Refused => c.refused += 1,
            Inbound::Duplicate => c.duplicate += 1,
        });
    }

    /// Writes what was counted. On failure the counts are kept for the next flush.
    pub async fn flush(&self, store: &dyn Store) {
        let taken = std::mem::take(&mut *self.pending.lock().expect("stats lock"));
        if taken.is_empty() {
            return;
        }
        let rows: Vec<StatRow> = taken
            .iter()
            .map(|((scope, minute), (app_id, counts))| StatRow {
                scope: scope.clone(),
                app_id: app_id.clone(),
                width_ms: MINUTE_MS,
                bucket: *minute,
                counts: counts.clone(),
            })
            .collect();
        if let Err(e) = store.add_stats(rows).await {
            tracing::warn!(error = %e, "could not write statistics; keeping them for the next try");
            let mut pending = self.pending.lock().expect("stats lock");
            for (key, (app_id, counts)) in taken {
                pending.entry(key).or_insert_with(|| (app_id, StatCounts::default())).1.add(&counts);
            }
        }
    }

    /// Flushes every `FLUSH_MS` until the process ends (the engine flushes once more at
    /// shutdown).
    pub async fn flush_loop(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            tokio::time::sleep(Duration::from_millis(FLUSH_MS)).await;
            self.flush(store.as_ref()).await;
        }
    }
}
