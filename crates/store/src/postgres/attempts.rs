//! Attempt records on PostgreSQL, batched: every record waiting when the writer is free
//! goes into one statement (`UNNEST` of one array per column), fenced per row on its
//! claim, on a connection with `synchronous_commit = off` (losing the last of them in a
//! database crash costs a repeated delivery, never a lost one). Like SQLite's background
//! lane, a flood of attempt records costs one round trip per batch, not per record.

use super::{notify, pg_error};
use crate::*;
use deadpool_postgres::{GenericClient, Pool};
use hookline_core::UnixMs;
use std::collections::{HashMap, HashSet};
use tokio::sync::{mpsc, oneshot};

/// Records one statement writes at most.
const BATCH_MAX: usize = 512;

pub type Reply = oneshot::Sender<StoreResult<Recorded>>;

/// Takes records from `inbox` and writes them in batches until every sender is gone.
/// `pool` is the relaxed pool (`synchronous_commit = off`).
pub async fn run(pool: Pool, mut inbox: mpsc::Receiver<(AttemptRecord, Reply)>, timeout: std::time::Duration) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while inbox.recv_many(&mut batch, BATCH_MAX).await > 0 {
        let records: Vec<&AttemptRecord> = batch.iter().map(|(record, _)| record).collect();
        // Waited on until the server answers: given up on at the timeout (which counted the
        // wait for a connection too), a batch could commit after its callers were told it
        // failed, and their records, tried again, ran beside it. A second run whose
        // statement began before the first committed sees none of its rows, so `again`
        // missed them: applied records said not applied, as if another node had taken
        // their deliveries (dropped while still claimed here, an ordered lane not moved on).
        match super::until_answered(&pool, timeout, |client| write(client, &records)).await {
            Ok(applied) => {
                for (record, reply) in batch.drain(..) {
                    let key = (record.attempt.msg_id.clone(), record.attempt.delivery_id.clone());
                    let recorded = match applied.get(&key) {
                        Some(disabled) => Recorded { applied: true, disabled: *disabled },
                        None => Recorded::default(),
                    };
                    let _ = reply.send(Ok(recorded));
                }
            }
            Err(e) => {
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Writes a batch; returns the `(msg_id, delivery_id)` of the deliveries the writes applied
/// to (still claimed under the record's token), each with when its endpoint started
/// failing if that write disabled the endpoint.
async fn write(
    client: deadpool_postgres::Object,
    records: &[&AttemptRecord],
) -> StoreResult<HashMap<(String, String), Option<UnixMs>>> {
    let columns = Columns::of(records);
    let statement = client.prepare_cached(BATCH_SQL).await.map_err(pg_error)?;
    let found = client.query(&statement, &columns.params()).await.map_err(pg_error)?;
    let mut applied = HashMap::with_capacity(found.len());
    let mut disabled_apps = HashSet::new();
    for row in &found {
        let (msg_id, id): (String, String) = (row.try_get(0).map_err(pg_error)?, row.try_get(1).map_err(pg_error)?);
        let disabled: Option<UnixMs> = row.try_get(3).map_err(pg_error)?;
        if let (Some(app_id), Some(_)) = (row.try_get::<_, Option<String>>(2).map_err(pg_error)?, disabled) {
            disabled_apps.insert(app_id);
        }
        applied.insert((msg_id, id), disabled);
    }
    // After the commit: a node that misses it still drops the endpoint within the cache TTL.
    for app_id in disabled_apps {
        notify(&client, &Change::App(app_id)).await?;
    }
    Ok(applied)
}

/// The attempt rows, the fenced delivery updates and the endpoints' health in one
/// statement. It may run twice for one batch (a commit whose answer was lost with its
/// connection is sent again): an attempt already written (its id is random, so by that run) is
/// not written, counted or applied again, and counts as applied when its delivery is as
/// that write left it (`again`; the statement sees the tables as they were before it). If
/// that run disabled an endpoint (the endpoint is disabled, last changed at the time of the
/// endpoint's latest record here), it is said again: the first run's answer, which said so,
/// was lost, and the `endpoint.disabled` notice with it.
///
/// An endpoint's health follows the batch's applied attempts that made a request, as if
/// written one after the other in time order: the latest a success clears `fail_since`;
/// the latest a failure leaves it at the first failure after the batch's last success, or,
/// without a success in the batch, as it was or else at the batch's first failure (`run_from`,
/// `since`). It is disabled by a 410 or
/// by failing too long (the rule of `hookline_core::delivery::failing_too_long`, written
/// again in SQL), only if it is still enabled when the row is locked, so two nodes never
/// both report disabling it. Returns each applied delivery, with its app and `fail_since`
/// when its write disabled the endpoint.
const BATCH_SQL: &str = "\
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
        $8::text[], $9::int8[], $10::text[], $11::int8[], $12::int8[], $13::int8[], $14::int8[], $15::int8[],
        $16::int8[], $17::bool[], $18::int8[], $19::bool[], $20::int8[])
    AS t(id, msg_id, app_id, delivery_id, endpoint_id, url, status_code, response, duration_ms, error_class,
        state, trigger, created_at, next_state, next_at, first_attempt_at, keep_claim, claim, disable,
        disable_after)
),
logged AS (
    INSERT INTO attempts (id, msg_id, app_id, delivery_id, endpoint_id, url, status_code, response, duration_ms,
        error_class, state, trigger, created_at)
    SELECT id, msg_id, app_id, delivery_id, endpoint_id, url, status_code, response, duration_ms, error_class,
        state, trigger, created_at FROM input
    ON CONFLICT DO NOTHING
    RETURNING msg_id, id
),
updated AS (
    UPDATE deliveries d SET state = i.next_state, attempts = d.attempts + 1, next_at = i.next_at,
        first_attempt_at = COALESCE(d.first_attempt_at, i.first_attempt_at), trigger = 0, updated_at = i.created_at,
        claimed_by = CASE WHEN i.keep_claim THEN d.claimed_by END
    FROM input i
    WHERE d.msg_id = i.msg_id AND d.id = i.delivery_id AND d.claimed_by = i.claim
        AND EXISTS (SELECT 1 FROM logged l WHERE l.msg_id = i.msg_id AND l.id = i.id)
    RETURNING d.msg_id, d.id
),
again AS (
    SELECT i.msg_id, i.delivery_id FROM input i JOIN deliveries d ON d.msg_id = i.msg_id AND d.id = i.delivery_id
    WHERE EXISTS (SELECT 1 FROM attempts a WHERE a.msg_id = i.msg_id AND a.id = i.id)
        AND d.state = i.next_state AND d.next_at IS NOT DISTINCT FROM i.next_at
        AND d.claimed_by IS NOT DISTINCT FROM (CASE WHEN i.keep_claim THEN i.claim END)
),
made AS (
    SELECT i.* FROM input i JOIN updated u ON u.msg_id = i.msg_id AND u.id = i.delivery_id
    WHERE i.endpoint_id IS NOT NULL AND i.next_state <> 5
),
latest AS (
    SELECT DISTINCT ON (m.endpoint_id) m.endpoint_id, m.msg_id, m.delivery_id, m.next_state = 0 AS ok,
        m.created_at, m.disable_after,
        (SELECT bool_or(x.disable) FROM made x WHERE x.endpoint_id = m.endpoint_id) AS gone,
        EXISTS (SELECT 1 FROM made x WHERE x.endpoint_id = m.endpoint_id AND x.next_state = 0) AS any_ok,
        (SELECT min(x.created_at) FROM made x WHERE x.endpoint_id = m.endpoint_id AND x.next_state <> 0
            AND NOT EXISTS (SELECT 1 FROM made y WHERE y.endpoint_id = x.endpoint_id AND y.next_state = 0
                AND (y.created_at, y.id) > (x.created_at, x.id))) AS run_from
    FROM made m ORDER BY m.endpoint_id, m.created_at DESC, m.id DESC
),
judged AS (
    SELECT l.*, o.app_id, s.since,
        NOT o.disabled AND (l.gone OR (NOT l.ok AND l.disable_after > 0
            AND l.created_at - s.since >= l.disable_after
            AND floor(s.since / 86400000.0) <> floor(l.created_at / 86400000.0))) AS disabling
    FROM latest l JOIN endpoints o ON o.id = l.endpoint_id,
    LATERAL (SELECT CASE WHEN l.ok THEN NULL WHEN l.any_ok THEN l.run_from
        ELSE COALESCE(o.fail_since, l.run_from) END AS since) s
),
changed AS (
    UPDATE endpoints e SET fail_since = j.since,
        disabled = e.disabled OR j.disabling,
        updated_at = CASE WHEN j.disabling THEN j.created_at ELSE e.updated_at END
    FROM judged j
    WHERE e.id = j.endpoint_id AND ((j.disabling AND NOT e.disabled)
        OR (NOT j.disabling AND e.fail_since IS DISTINCT FROM j.since))
    RETURNING e.id, j.disabling
),
again_latest AS (
    SELECT DISTINCT ON (i.endpoint_id) i.endpoint_id, i.msg_id, i.delivery_id, i.created_at
    FROM input i JOIN again a ON a.msg_id = i.msg_id AND a.delivery_id = i.delivery_id
    WHERE i.endpoint_id IS NOT NULL AND i.next_state <> 5
    ORDER BY i.endpoint_id, i.created_at DESC, i.id DESC
)
SELECT u.msg_id, u.id, j.app_id, j.since
FROM updated u
LEFT JOIN judged j ON j.msg_id = u.msg_id AND j.delivery_id = u.id
    AND EXISTS (SELECT 1 FROM changed c WHERE c.id = j.endpoint_id AND c.disabling)
UNION ALL
SELECT a.msg_id, a.delivery_id, e.app_id, e.fail_since
FROM again a
LEFT JOIN again_latest l ON l.msg_id = a.msg_id AND l.delivery_id = a.delivery_id
LEFT JOIN endpoints e ON e.id = l.endpoint_id AND e.disabled AND e.updated_at = l.created_at";

/// One array per column of a batch.
struct Columns<'a> {
    ids: Vec<&'a str>,
    msg_ids: Vec<&'a str>,
    app_ids: Vec<&'a str>,
    delivery_ids: Vec<&'a str>,
    endpoint_ids: Vec<Option<&'a str>>,
    urls: Vec<&'a str>,
    statuses: Vec<i64>,
    responses: Vec<String>,
    durations: Vec<i64>,
    error_classes: Vec<Option<&'a str>>,
    states: Vec<i64>,
    triggers: Vec<i64>,
    created: Vec<i64>,
    next_states: Vec<i64>,
    next_at: Vec<Option<i64>>,
    first_attempt_at: Vec<i64>,
    keep_claims: Vec<bool>,
    claims: Vec<i64>,
    disables: Vec<bool>,
    disable_after: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(records: &[&'a AttemptRecord]) -> Columns<'a> {
        let attempts = || records.iter().map(|r| &r.attempt);
        Columns {
            ids: attempts().map(|a| a.id.as_str()).collect(),
            msg_ids: attempts().map(|a| a.msg_id.as_str()).collect(),
            app_ids: attempts().map(|a| a.app_id.as_str()).collect(),
            delivery_ids: attempts().map(|a| a.delivery_id.as_str()).collect(),
            endpoint_ids: attempts().map(|a| a.endpoint_id.as_deref()).collect(),
            urls: attempts().map(|a| a.url.as_str()).collect(),
            statuses: attempts().map(|a| i64::from(a.status_code)).collect(),
            // A merchant's answer may hold NUL bytes, which PostgreSQL text cannot: keep the rest.
            responses: attempts().map(|a| a.response.replace('\0', "\u{FFFD}")).collect(),
            durations: attempts().map(|a| a.duration_ms as i64).collect(),
            error_classes: attempts().map(|a| a.error_class.as_deref()).collect(),
            states: attempts().map(|a| a.state.code()).collect(),
            triggers: attempts().map(|a| a.trigger as i64).collect(),
            created: attempts().map(|a| a.created_at).collect(),
            next_states: records.iter().map(|r| r.state.code()).collect(),
            next_at: records.iter().map(|r| r.next_at).collect(),
            first_attempt_at: records.iter().map(|r| r.first_attempt_at).collect(),
            keep_claims: records.iter().map(|r| r.keep_claim).collect(),
            claims: records.iter().map(|r| r.claim).collect(),
            disables: records.iter().map(|r| r.disable_endpoint).collect(),
            disable_after: records.iter().map(|r| r.disable_after_ms as i64).collect(),
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 20] {
        [
            &self.ids,
            &self.msg_ids,
            &self.app_ids,
            &self.delivery_ids,
            &self.endpoint_ids,
            &self.urls,
            &self.statuses,
            &self.responses,
            &self.durations,
            &self.error_classes,
            &self.states,
            &self.triggers,
            &self.created,
            &self.next_states,
            &self.next_at,
            &self.first_attempt_at,
            &self.keep_claims,
            &self.claims,
            &self.disables,
            &self.disable_after,
        ]
    }
}
