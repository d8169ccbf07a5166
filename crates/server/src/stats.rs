//! Statistics kept by Hookline itself: per endpoint and per inbound source, per minute,
//! attempts succeeded and failed with a small latency histogram, and inbound requests
//! accepted, refused and duplicate. Counted in memory as attempts finish and requests
//! arrive, and written to the store by a background task every `FLUSH_MS` (before each
//! statistics read on this node, and at shutdown): never on the publish path. A crash loses
//! at most the last interval's counts, and a store outage over an hour its oldest minutes'
//! (`PENDING_MINUTES_MAX`); with several nodes, a read shows the others' counts up to
//! `FLUSH_MS` late.

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

/// Minutes of counts kept per scope while the store cannot take them: a longer outage
/// loses its oldest minutes' counts rather than growing memory for as long as it lasts.
const PENDING_MINUTES_MAX: usize = 60;

#[derive(Default)]
pub struct Recorder {
    /// Rows not yet written, by scope: found without allocating on the attempt path (one
    /// row per minute; a scope spans two minutes at most between flushes).
    pending: Mutex<HashMap<String, Vec<StatRow>>>,
}

/// Adds `count` to the row of `scope` for `minute`, creating it (with `app_id`) if missing.
fn add_to(
    pending: &mut HashMap<String, Vec<StatRow>>,
    scope: &str,
    app_id: &str,
    minute: UnixMs,
    count: impl FnOnce(&mut StatCounts),
) {
    if !pending.contains_key(scope) {
        pending.insert(scope.to_owned(), Vec::new());
    }
    let rows = pending.get_mut(scope).expect("inserted above");
    let at = match rows.iter().position(|r| r.bucket == minute) {
        Some(at) => at,
        None => {
            let counts = StatCounts::default();
            let (scope, app_id) = (scope.to_owned(), app_id.to_owned());
            rows.push(StatRow { scope, app_id, width_ms: MINUTE_MS, bucket: minute, counts });
            rows.len() - 1
        }
    };
    count(&mut rows[at].counts);
}

impl Recorder {
    fn add(&self, scope: &str, app_id: &str, now: UnixMs, count: impl FnOnce(&mut StatCounts)) {
        let minute = now - now.rem_euclid(MINUTE_MS);
        add_to(&mut self.pending.lock().expect("stats lock"), scope, app_id, minute, count);
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

    /// Writes what was counted. On failure the counts are kept for the next flush. The
    /// write runs as a task of its own, so a caller that goes away (a statistics request
    /// whose client left) neither loses what was taken nor leaves it half done.
    pub async fn flush(self: &Arc<Self>, store: &Arc<dyn Store>) {
        let (recorder, store) = (self.clone(), store.clone());
        let _ = tokio::spawn(async move { recorder.write(store.as_ref()).await }).await;
    }

    async fn write(&self, store: &dyn Store) {
        let taken = std::mem::take(&mut *self.pending.lock().expect("stats lock"));
        let rows: Vec<StatRow> = taken.into_values().flatten().collect();
        if rows.is_empty() {
            return;
        }
        if let Err(e) = store.add_stats(rows.clone()).await {
            tracing::warn!(error = %e, "could not write statistics; keeping them for the next try");
            let dropped = self.put_back(rows);
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "statistics not written for over an hour: rows of their oldest minutes dropped"
                );
            }
        }
    }

    /// Keeps rows that could not be written, with what was counted since, at most
    /// `PENDING_MINUTES_MAX` minutes per scope (the latest). Returns the rows dropped.
    fn put_back(&self, rows: Vec<StatRow>) -> usize {
        let mut pending = self.pending.lock().expect("stats lock");
        for row in rows {
            add_to(&mut pending, &row.scope, &row.app_id, row.bucket, |c| c.add(&row.counts));
        }
        let mut dropped = 0;
        for rows in pending.values_mut().filter(|rows| rows.len() > PENDING_MINUTES_MAX) {
            rows.sort_unstable_by_key(|r| r.bucket);
            dropped += rows.len() - PENDING_MINUTES_MAX;
            rows.drain(..rows.len() - PENDING_MINUTES_MAX);
        }
        dropped
    }

    /// Flushes every `FLUSH_MS` until the process ends (the engine flushes once more at
    /// shutdown).
    pub async fn flush_loop(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            tokio::time::sleep(Duration::from_millis(FLUSH_MS)).await;
            self.flush(&store).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows put back after failed writes, with what was counted since, stay at most
    /// `PENDING_MINUTES_MAX` minutes per scope: the latest, their counts added up.
    #[test]
    fn counts_kept_through_an_outage_are_bounded() {
        let recorder = Recorder::default();
        let minute = |n: i64| n * MINUTE_MS;
        for n in 0..70 {
            recorder.inbound("src_a", "app_1", Inbound::Accepted, minute(n));
        }
        recorder.inbound("src_b", "app_1", Inbound::Refused, minute(3));
        let failed: Vec<StatRow> =
            std::mem::take(&mut *recorder.pending.lock().unwrap()).into_values().flatten().collect();
        recorder.inbound("src_a", "app_1", Inbound::Duplicate, minute(69));
        assert_eq!(recorder.put_back(failed), 10);
        let pending = recorder.pending.lock().unwrap();
        let a = &pending["src_a"];
        assert_eq!(a.len(), PENDING_MINUTES_MAX);
        assert_eq!(a.iter().map(|r| r.bucket).min(), Some(minute(10)), "the oldest minutes went");
        let last = a.iter().find(|r| r.bucket == minute(69)).unwrap();
        assert_eq!((last.counts.accepted, last.counts.duplicate), (1, 1), "counted since, added up");
        assert_eq!(pending["src_b"].len(), 1, "another scope keeps its minute");
    }
}
