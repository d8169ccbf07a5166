//! Messages, deliveries, attempts, node leases and claims on PostgreSQL: the shared queue.
//! Due work is claimed with `FOR UPDATE SKIP LOCKED`, so nodes claiming at once take
//! different rows; completions are fenced on the claiming node's token.

use super::pg_error;
use super::resources::{get_endpoint, one, run};
use super::rows;
use crate::columns::{open_in_lane, IN_DELETION, NOT_DELETED, OPEN_ORDERED};
use crate::query::Query;
use crate::*;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

fn absent<T>(result: StoreResult<T>) -> StoreResult<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The message an earlier publish stored for what `publish` repeats (as a `Duplicate`): the
/// same provider event (its dedupe key; `DuplicateOfPurged` if retention has deleted its
/// message since), the same `eventId`, or, with neither, itself (an earlier try of it
/// committed). A try of a publish with a key finds itself through the key.
pub async fn earlier_message(c: &impl GenericClient, publish: &Publish) -> StoreResult<PublishOutcome> {
    let m = &publish.message;
    let found = match (&publish.dedupe, &m.event_id) {
        (Some((source_id, key)), _) => {
            // One read: the key, and its message unless retention has deleted it.
            let sql = format!(
                "SELECT {}, k.msg_id FROM inbound_keys k LEFT JOIN messages m ON m.id = k.msg_id \
                 WHERE k.source_id = $1 AND k.event_key = $2",
                prefixed("m", rows::MESSAGE_COLUMNS)
            );
            let earlier = |row: &tokio_postgres::Row| match row.get::<_, Option<String>>(0) {
                Some(_) => rows::message(row).map(|m| PublishOutcome::Duplicate(Box::new(m))),
                None => Ok(PublishOutcome::DuplicateOfPurged(row.get(rows::MESSAGE_COLUMNS.split(',').count()))),
            };
            return one(c, &sql, &[source_id, key], earlier).await;
        }
        (None, Some(event_id)) => message_by_event_id(c, &m.app_id, event_id).await,
        (None, None) => message_by_id(c, &m.id).await.map_err(|e| match e {
            StoreError::NotFound => StoreError::Unavailable("a new message was not written".into()),
            other => other,
        }),
    };
    found.map(|earlier| PublishOutcome::Duplicate(Box::new(earlier)))
}

/// `m.a, m.b, …` for a column list.
fn prefixed(alias: &str, columns: &str) -> String {
    columns.split(',').map(|col| format!("{alias}.{}", col.trim())).collect::<Vec<_>>().join(", ")
}

/// The deliveries of a write as one array per column (for `UNNEST`), each with the node
/// token claiming it and the state it is stored with (see `Publish::stored_state`).
pub struct DeliveryColumns<'a> {
    ids: Vec<&'a str>,
    msg_ids: Vec<&'a str>,
    app_ids: Vec<&'a str>,
    endpoint_ids: Vec<Option<&'a str>>,
    states: Vec<i64>,
    attempts: Vec<i64>,
    next_at: Vec<Option<i64>>,
    first: Vec<Option<i64>>,
    triggers: Vec<i64>,
    updated: Vec<i64>,
    claims: Vec<Option<i64>>,
    order_keys: Vec<Option<&'a str>>,
}

impl<'a> DeliveryColumns<'a> {
    pub fn of(deliveries: &[(&'a Delivery, Option<i64>, i64)]) -> DeliveryColumns<'a> {
        let all = || deliveries.iter().map(|(d, _, _)| *d);
        DeliveryColumns {
            ids: all().map(|d| d.id.as_str()).collect(),
            msg_ids: all().map(|d| d.msg_id.as_str()).collect(),
            app_ids: all().map(|d| d.app_id.as_str()).collect(),
            endpoint_ids: all().map(|d| d.endpoint_id.as_deref()).collect(),
            states: deliveries.iter().map(|(_, _, state)| *state).collect(),
            attempts: all().map(|d| i64::from(d.attempts)).collect(),
            next_at: all().map(|d| d.next_at).collect(),
            first: all().map(|d| d.first_attempt_at).collect(),
            triggers: all().map(|d| d.trigger as i64).collect(),
            updated: all().map(|d| d.updated_at).collect(),
            // An ordered delivery is never claimed at commit: it waits for its lane's turn.
            claims: deliveries.iter().map(|(d, claim, _)| claim.filter(|_| d.order_key.is_none())).collect(),
            order_keys: all().map(|d| d.order_key.as_deref()).collect(),
        }
    }

    /// The deliveries' lanes (the array after `params`).
    pub fn order_keys(&self) -> &(dyn ToSql + Sync) {
        &self.order_keys
    }

    pub fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.ids,
            &self.msg_ids,
            &self.app_ids,
            &self.endpoint_ids,
            &self.states,
            &self.attempts,
            &self.next_at,
            &self.first,
            &self.triggers,
            &self.updated,
            &self.claims,
        ]
    }
}

/// Inserts deliveries in one statement (`UNNEST` of one array per column).
async fn insert_deliveries(c: &impl GenericClient, deliveries: &[Delivery], claim: Option<i64>) -> StoreResult<()> {
    let claimed: Vec<(&Delivery, Option<i64>, i64)> = deliveries.iter().map(|d| (d, claim, d.state.code())).collect();
    let columns = DeliveryColumns::of(&claimed);
    let sql = "INSERT INTO deliveries (id, msg_id, app_id, endpoint_id, state, attempts, next_at, first_attempt_at, \
               trigger, updated_at, claimed_by, order_key, order_seq) \
               SELECT d.*, CASE WHEN d.order_key IS NOT NULL THEN nextval('order_seq') END \
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], \
               $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::text[]) \
               AS d(id, msg_id, app_id, endpoint_id, state, attempts, next_at, first_attempt_at, trigger, \
               updated_at, claimed_by, order_key)";
    let mut params = columns.params().to_vec();
    params.push(columns.order_keys());
    run(c, sql, &params).await.map(|_| ())
}

pub async fn get_message(c: &impl GenericClient, app_id: &str, key: &str) -> StoreResult<Message> {
    message_by_key(c, app_id, key, "").await
}

/// An application's message by id or event id (by id first: a message's `eventId` may be
/// another message's id); `lock` is a locking clause (or nothing).
async fn message_by_key(c: &impl GenericClient, app_id: &str, key: &str, lock: &str) -> StoreResult<Message> {
    let sql = format!(
        "SELECT {} FROM messages WHERE app_id = $1 AND (id = $2 OR event_id = $2) ORDER BY id = $2 DESC LIMIT 1 {lock}",
        rows::MESSAGE_COLUMNS
    );
    one(c, &sql, &[&app_id, &key], rows::message).await
}

/// An application's message by its `eventId` alone.
async fn message_by_event_id(c: &impl GenericClient, app_id: &str, event_id: &str) -> StoreResult<Message> {
    let sql = format!("SELECT {} FROM messages WHERE app_id = $1 AND event_id = $2", rows::MESSAGE_COLUMNS);
    one(c, &sql, &[&app_id, &event_id], rows::message).await
}

pub async fn message_by_id(c: &impl GenericClient, id: &str) -> StoreResult<Message> {
    let sql = format!("SELECT {} FROM messages WHERE id = $1", rows::MESSAGE_COLUMNS);
    one(c, &sql, &[&id], rows::message).await
}

pub async fn list_messages(
    c: &impl GenericClient,
    app_id: &str,
    filter: &ListFilter,
    page: &Page,
) -> StoreResult<Listed<Message>> {
    let query = Query::messages(app_id, filter, &rows::DIALECT);
    rows::page(c, query, rows::MESSAGE_COLUMNS, "messages", page, rows::message).await
}

/// The database server's start time, as text: it changes when the server restarts (or a
/// replica takes over), which may have lost commits made with `synchronous_commit = off`.
const SERVER_STARTED: &str = "pg_postmaster_start_time()::text";

/// The transaction lock registrations take, one at a time ("hooknode").
pub(crate) const NODE_REGISTRATION_LOCK: i64 = 0x686f_6f6b_6e6f_6465;

/// Registers a node; returns its lease and the database server's start time. Run in a
/// transaction: registrations take [`NODE_REGISTRATION_LOCK`] before their token, so they
/// commit in token order, which `claim_due` counts on (a snapshot that sees a token sees
/// every smaller one). Two nodes starting together could commit out of order, and a claim
/// whose snapshot saw the later one took the earlier one's fresh claims as a dead node's.
pub async fn register_node(
    c: &impl GenericClient,
    name: &str,
    now: i64,
    lease_ms: u64,
) -> StoreResult<(NodeLease, String)> {
    run(c, "SELECT pg_advisory_xact_lock($1)", &[&NODE_REGISTRATION_LOCK]).await?;
    let lease_until = now + lease_ms as i64;
    let sql = format!(
        "INSERT INTO nodes (name, lease_until, started_at) VALUES ($1, $2, $3) RETURNING token, {SERVER_STARTED}"
    );
    let (token, started) = one(c, &sql, &[&name, &lease_until, &now], |r| {
        Ok((r.try_get(0).map_err(pg_error)?, r.try_get(1).map_err(pg_error)?))
    })
    .await?;
    // Nodes gone for a day are forgotten; their claims were void long before. Only here,
    // after the newest node's row is in: the largest token ever given out stays, which
    // `claim_due` needs.
    run(c, "DELETE FROM nodes WHERE lease_until < $1", &[&(now - 86_400_000)]).await?;
    Ok((NodeLease { token, lease_until }, started))
}

/// Renews a node's lease; the database server's start time if it was renewed.
pub async fn renew_node(c: &impl GenericClient, token: i64, now: i64, lease_ms: u64) -> StoreResult<Option<String>> {
    let sql =
        format!("UPDATE nodes SET lease_until = $2 WHERE token = $1 AND lease_until >= $3 RETURNING {SERVER_STARTED}");
    let rows = c.query(&sql, &[&token, &(now + lease_ms as i64), &now]).await.map_err(pg_error)?;
    rows.first().map(|r| r.try_get(0).map_err(pg_error)).transpose()
}

pub async fn live_nodes(c: &impl GenericClient, now: i64) -> StoreResult<usize> {
    let row = c.query_one("SELECT count(*) FROM nodes WHERE lease_until >= $1", &[&now]).await.map_err(pg_error)?;
    Ok(row.get::<_, i64>(0) as usize)
}

pub async fn retire_node(c: &impl GenericClient, token: i64) -> StoreResult<()> {
    run(c, "UPDATE nodes SET lease_until = 0 WHERE token = $1", &[&token]).await?;
    run(c, "UPDATE leader SET lease_until = 0 WHERE token = $1", &[&token]).await.map(|_| ())
}

pub async fn overdue_claims(
    c: &impl GenericClient,
    token: i64,
    due_before: i64,
    window: usize,
) -> StoreResult<Vec<DeliveryKey>> {
    let statement = c.prepare_cached(rows::OVERDUE_CLAIMS).await.map_err(pg_error)?;
    let found = c.query(&statement, &[&due_before, &(window as i64), &token]).await.map_err(pg_error)?;
    Ok(found.iter().map(|r| DeliveryKey { msg_id: r.get(0), id: r.get(1) }).collect())
}

pub async fn free_claims(c: &impl GenericClient, token: i64, deliveries: &[DeliveryKey]) -> StoreResult<usize> {
    let msg_ids: Vec<&str> = deliveries.iter().map(|k| k.msg_id.as_str()).collect();
    let ids: Vec<&str> = deliveries.iter().map(|k| k.id.as_str()).collect();
    let sql = "UPDATE deliveries d SET claimed_by = NULL FROM unnest($1::text[], $2::text[]) AS k(msg_id, id) \
               WHERE d.msg_id = k.msg_id AND d.id = k.id AND d.claimed_by = $3 AND d.state IN (1, 3)";
    run(c, sql, &[&msg_ids, &ids, &token]).await.map(|n| n as usize)
}

pub async fn claim_due(c: &impl GenericClient, claim: &ClaimDue) -> StoreResult<Claimed> {
    // The window's rows of an application being deleted are closed, and those to lanes
    // behind deferred; of the others, the `$6` earliest are claimed (numbered apart).
    // A claim is taken over when its node's lease ran out. The live nodes are read from the
    // statement's snapshot, but a row another node claimed meanwhile is checked again at
    // its newest version (`FOR UPDATE`): a node registered after the snapshot would count
    // as dead there, and its fresh claim be taken. Node tokens come from a sequence and the
    // newest node's row is never deleted (`register_node`), so a token past the largest in
    // the snapshot (read from the snapshot even when first needed at such a recheck)
    // belongs to such a node.
    let sql = format!(
        "WITH due AS ( \
             SELECT msg_id, id, next_at, {IN_DELETION} AS gone, \
                 (order_key IS NULL AND endpoint_id IS NOT NULL AND endpoint_id = ANY($5)) AS deferred \
             FROM deliveries \
             WHERE state IN (1, 3) AND next_at <= $2 \
               AND (claimed_by IS NULL OR (claimed_by NOT IN (SELECT token FROM nodes WHERE lease_until >= $3) \
                    AND claimed_by <= (SELECT max(token) FROM nodes))) \
               AND EXISTS (SELECT 1 FROM nodes WHERE token = $1 AND lease_until >= $3) \
             ORDER BY next_at LIMIT $4 \
             FOR UPDATE OF deliveries SKIP LOCKED), \
         picked AS ( \
             SELECT msg_id, id, gone, deferred FROM ( \
                 SELECT msg_id, id, gone, deferred, \
                     row_number() OVER (PARTITION BY gone OR deferred ORDER BY next_at) AS n \
                 FROM due) numbered \
             WHERE gone OR deferred OR n <= $6) \
         UPDATE deliveries d SET claimed_by = CASE WHEN picked.gone OR picked.deferred THEN NULL ELSE $1 END, \
             next_at = CASE WHEN picked.gone THEN NULL ELSE d.next_at END, \
             state = CASE WHEN picked.gone THEN {CANCELED} WHEN picked.deferred THEN {DEFERRED} ELSE d.state END \
         FROM picked WHERE d.msg_id = picked.msg_id AND d.id = picked.id RETURNING {}, d.state",
        prefixed("d", rows::DELIVERY_COLUMNS)
    );
    let statement = c.prepare_cached(&sql).await.map_err(pg_error)?;
    let (window, limit) = (claim.window as i64, claim.limit as i64);
    let params: [&(dyn ToSql + Sync); 6] = [&claim.token, &claim.horizon, &claim.now, &window, &claim.behind, &limit];
    let found = c.query(&statement, &params).await.map_err(pg_error)?;
    let mut taken = Vec::with_capacity(found.len());
    for row in &found {
        taken.push((rows::delivery(row)?, row.try_get::<_, i64>(rows::DELIVERY_COLUMN_COUNT).map_err(pg_error)?));
    }
    Ok(Claimed::sort(taken))
}

pub async fn claim_deferred(
    c: &impl GenericClient,
    token: i64,
    lane: &DeferredLane,
    now: i64,
    limit: usize,
) -> StoreResult<Vec<Delivery>> {
    let lane_endpoint = rows::LANE_ENDPOINT;
    let sql = format!(
        "WITH picked AS ( \
             SELECT msg_id, id FROM deliveries WHERE state = 7 AND app_id = $2 AND {lane_endpoint} = $3 \
               AND {NOT_DELETED} AND EXISTS (SELECT 1 FROM nodes WHERE token = $1 AND lease_until >= $5) \
             ORDER BY next_at LIMIT $4 \
             FOR UPDATE OF deliveries SKIP LOCKED) \
         UPDATE deliveries d SET state = 1, claimed_by = $1 FROM picked \
         WHERE d.msg_id = picked.msg_id AND d.id = picked.id AND d.state = 7 RETURNING {}",
        prefixed("d", rows::DELIVERY_COLUMNS)
    );
    let statement = c.prepare_cached(&sql).await.map_err(pg_error)?;
    let endpoint = lane.endpoint_key();
    let params: [&(dyn ToSql + Sync); 5] = [&token, &lane.app_id, &endpoint, &(limit as i64), &now];
    let found = c.query(&statement, &params).await.map_err(pg_error)?;
    rows::all(&found, rows::delivery)
}

/// One index seek per lane (a recursive walk over `deliveries_deferred`): the next
/// `(app_id, endpoint)` after the one before.
pub async fn deferred_lanes(
    c: &impl GenericClient,
    after: Option<&DeferredLane>,
    limit: usize,
) -> StoreResult<Vec<DeferredLane>> {
    let lane_endpoint = rows::LANE_ENDPOINT;
    let next = |app: &str, endpoint: &str| {
        format!(
            "SELECT app_id, {lane_endpoint} AS endpoint FROM deliveries \
             WHERE state = 7 AND (app_id, {lane_endpoint}) > ({app}, {endpoint}) \
             ORDER BY app_id, {lane_endpoint} LIMIT 1"
        )
    };
    let sql = format!(
        "WITH RECURSIVE lanes AS ( \
             ({}) \
             UNION ALL \
             SELECT n.app_id, n.endpoint FROM lanes l CROSS JOIN LATERAL ({}) n) \
         SELECT app_id, endpoint FROM lanes LIMIT $3",
        next("$1", "$2"),
        next("l.app_id", "l.endpoint")
    );
    let (app, endpoint) = after.map_or(("", ""), |lane| (lane.app_id.as_str(), lane.endpoint_key()));
    let found = c.query(&sql, &[&app, &endpoint, &(limit as i64)]).await.map_err(pg_error)?;
    found
        .iter()
        .map(|r| {
            let (app, endpoint): (String, String) = (r.try_get(0).map_err(pg_error)?, r.try_get(1).map_err(pg_error)?);
            Ok(DeferredLane::from_key(&app, &endpoint))
        })
        .collect()
}

pub async fn lead(c: &impl GenericClient, token: i64, now: i64, lease_ms: u64) -> StoreResult<bool> {
    let sql = "INSERT INTO leader (id, token, lease_until) VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE \
               SET token = excluded.token, lease_until = excluded.lease_until \
               WHERE leader.token = excluded.token OR leader.lease_until < $3";
    Ok(run(c, sql, &[&token, &(now + lease_ms as i64), &now]).await? == 1)
}

pub async fn count_open_deliveries(c: &impl GenericClient) -> StoreResult<u64> {
    let n: i64 = one(c, rows::COUNT_OPEN_DELIVERIES, &[], |r| r.try_get(0).map_err(pg_error)).await?;
    Ok(n as u64)
}

pub async fn get_delivery(c: &impl GenericClient, msg_id: &str, id: &str) -> StoreResult<Delivery> {
    let sql = format!("SELECT {} FROM deliveries WHERE msg_id = $1 AND id = $2", rows::DELIVERY_COLUMNS);
    one(c, &sql, &[&msg_id, &id], rows::delivery).await
}

/// Restarting a delivery: due now, a fresh retry cycle, marked manual, claimed by `$2`.
/// An ordered one goes back to waiting in its lane (at its old place), and the lane's head
/// is made due after.
const RESTART: &str = "state = CASE WHEN order_key IS NULL THEN 1 ELSE 6 END, \
     next_at = CASE WHEN order_key IS NULL THEN $1::int8 END, attempts = 0, first_attempt_at = NULL, trigger = 1, \
     updated_at = $1, claimed_by = CASE WHEN order_key IS NULL THEN $2::int8 END";

/// Whether `msg_id` has a delivery to `endpoint_id`.
async fn has_delivery(c: &impl GenericClient, msg_id: &str, endpoint_id: &str) -> StoreResult<bool> {
    let found = c
        .query_opt("SELECT 1 FROM deliveries WHERE msg_id = $1 AND endpoint_id = $2", &[&msg_id, &endpoint_id])
        .await
        .map_err(pg_error)?;
    Ok(found.is_some())
}

pub async fn resend(
    c: &impl GenericClient,
    app_id: &str,
    msg_id: &str,
    endpoint_id: &str,
    new_id: &str,
    now: i64,
    claim: i64,
) -> StoreResult<Delivery> {
    // Locked until the commit: a retention pass skips it meanwhile (`purge_messages`), and
    // another resend of it waits, then finds the delivery this one made (two at once, both
    // finding none, made two; then every later resend or skip of the pair failed on them).
    // Not `FOR UPDATE`: a delivery's insert takes `FOR KEY SHARE` on its message.
    let message = message_by_key(c, app_id, msg_id, "FOR NO KEY UPDATE").await?;
    let endpoint = get_endpoint(c, app_id, endpoint_id).await?;
    let sql = format!(
        "UPDATE deliveries SET {RESTART} WHERE msg_id = $3 AND endpoint_id = $4 AND NOT {OPEN_ORDERED} RETURNING {}",
        rows::DELIVERY_COLUMNS
    );
    let delivery = match absent(one(c, &sql, &[&now, &claim, &message.id, &endpoint.id], rows::delivery).await)? {
        Some(delivery) => delivery,
        None if has_delivery(c, &message.id, &endpoint.id).await? => return Err(open_in_lane()),
        None => {
            let delivery = Delivery::resent(new_id.to_owned(), &message, &endpoint, now);
            insert_deliveries(c, std::slice::from_ref(&delivery), Some(claim)).await?;
            delivery
        }
    };
    match &delivery.order_key {
        None => Ok(delivery),
        Some(key) => {
            promote_lane(c, &endpoint.id, key, now).await?;
            get_delivery(c, &delivery.msg_id, &delivery.id).await
        }
    }
}

/// One step of a recover (`Store::recover`). The messages are locked until the commit, as
/// a resend's: a retention pass skips them.
pub async fn recover(
    c: &impl GenericClient,
    r: &Recovery,
    after: Option<&str>,
    chunk: usize,
) -> StoreResult<(Vec<Delivery>, Option<String>)> {
    let endpoint = get_endpoint(c, &r.app_id, &r.endpoint_id).await?;
    let p: fn(usize) -> String = |i| format!("${i}");
    let ((first, end), after) = (crate::columns::recover_id_bounds(r), after.unwrap_or(""));
    let span = crate::columns::recover_span_sql(p);
    let row = c.query_one(&span, &[&endpoint.id, &first, &after, &end, &(chunk as i64)]).await.map_err(pg_error)?;
    let (last, scanned): (Option<String>, i64) = (row.try_get(0).map_err(pg_error)?, row.try_get(1).map_err(pg_error)?);
    let Some(last) = last else { return Ok((Vec::new(), None)) };
    let sql = crate::columns::recover_sql(p, RESTART, true);
    let values: [&(dyn ToSql + Sync); 9] =
        [&r.now, &None::<i64>, &endpoint.id, &r.app_id, &r.since, &r.until, &after, &last, &first];
    let found = c.query(&sql, &values).await.map_err(pg_error)?;
    let recovered = rows::all(&found, rows::delivery)?;
    Ok((recovered, (scanned as usize == chunk).then_some(last)))
}

/// Makes the first waiting delivery of a lane due, if the lane has no open one: at `now`,
/// or at its own time if later (a message published with `deliverAt`). Runs in a
/// transaction (`c`), under the lane's lock until it ends: a promotion reads the lane after
/// every earlier holder committed. Without it, a resend or recover (whose delivery waits
/// ahead of the rest: it keeps its place) promoting its delivery, and another node's
/// promotion from a snapshot without it, each made a different delivery due: two open in
/// one lane (`a_lane_moved_by_two_nodes_at_once_has_one_open_delivery`). A transaction
/// holds at most one lane's lock, and takes it before it changes any of the lane's
/// waiting rows (the rows a promotion updates): no cycle of lane and row locks.
pub async fn promote_lane(c: &impl GenericClient, endpoint_id: &str, key: &str, now: i64) -> StoreResult<bool> {
    lock_lane(c, endpoint_id, key).await?;
    let sql = "UPDATE deliveries SET state = 1, next_at = GREATEST(COALESCE(next_at, $3), $3), updated_at = $3, \
               claimed_by = NULL \
               WHERE state = 6 AND (msg_id, id) IN ( \
                   SELECT w.msg_id, w.id FROM deliveries w \
                   WHERE w.endpoint_id = $1 AND w.order_key = $2 AND w.state = 6 \
                   AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.endpoint_id = $1 AND o.order_key = $2 \
                       AND o.order_key IS NOT NULL AND o.state IN (1, 3)) \
                   ORDER BY w.order_seq LIMIT 1)";
    Ok(run(c, sql, &[&endpoint_id, &key, &now]).await? == 1)
}

/// Takes the lane's lock until the transaction ends (taken again, it is held once more).
async fn lock_lane(c: &impl GenericClient, endpoint_id: &str, key: &str) -> StoreResult<()> {
    run(c, "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))", &[&endpoint_id, &key]).await?;
    Ok(())
}

/// The next lanes with waiting deliveries (`columns::waiting_lanes_sql`).
pub async fn waiting_lanes(
    c: &impl GenericClient,
    after: &(String, String),
    limit: usize,
) -> StoreResult<Vec<(String, String, bool)>> {
    let sql = crate::columns::waiting_lanes_sql(|n| format!("${n}"));
    let found = c.query(&sql, &[&after.0, &after.1, &(limit as i64)]).await.map_err(pg_error)?;
    found
        .iter()
        .map(|r| {
            let stalled: i32 = r.try_get(2).map_err(pg_error)?;
            Ok((r.try_get(0).map_err(pg_error)?, r.try_get(1).map_err(pg_error)?, stalled == 1))
        })
        .collect()
}

/// Skips the delivery of a message to an endpoint (see `sqlite::queue::skip`).
pub async fn skip(
    c: &impl GenericClient,
    app_id: &str,
    msg_id: &str,
    endpoint_id: &str,
    now: i64,
) -> StoreResult<Delivery> {
    // The lane's lock before the row's: a promotion holding the lane's lock may be about to
    // update this row if it waits (updated first, the skip waited for the lane's lock while
    // the promotion waited for the row: a deadlock, one of them aborted).
    let lane = "SELECT order_key FROM deliveries WHERE msg_id = $1 AND endpoint_id = $2 AND app_id = $3";
    let order_key = |row: &tokio_postgres::Row| row.try_get::<_, Option<String>>(0).map_err(pg_error);
    let key = absent(one(c, lane, &[&msg_id, &endpoint_id, &app_id], order_key).await)?.flatten();
    if let Some(key) = &key {
        lock_lane(c, endpoint_id, key).await?;
    }
    let sql = format!(
        concat!(
            "UPDATE deliveries SET state = 5, next_at = NULL, claimed_by = NULL, updated_at = $4 \
             WHERE msg_id = $1 AND endpoint_id = $2 AND app_id = $3 AND state IN (",
            crate::columns::open_states!(),
            ") RETURNING {}"
        ),
        rows::DELIVERY_COLUMNS
    );
    match absent(one(c, &sql, &[&msg_id, &endpoint_id, &app_id, &now], rows::delivery).await)? {
        Some(delivery) => {
            if let Some(key) = &delivery.order_key {
                promote_lane(c, endpoint_id, key, now).await?;
            }
            Ok(delivery)
        }
        None => {
            let sql = format!(
                "SELECT {} FROM deliveries WHERE msg_id = $1 AND endpoint_id = $2 AND app_id = $3",
                rows::DELIVERY_COLUMNS
            );
            one(c, &sql, &[&msg_id, &endpoint_id, &app_id], rows::delivery).await
        }
    }
}

/// Closes a delivery that has nowhere to go (see `Store::close_stranded`).
pub async fn close_stranded(c: &impl GenericClient, msg_id: &str, id: &str, now: i64) -> StoreResult<bool> {
    let [deleted, closed] = crate::columns::close_stranded_sql(|n| format!("${n}"));
    let lane = |row: &tokio_postgres::Row| -> StoreResult<(Option<String>, Option<String>)> {
        Ok((row.try_get(0).map_err(pg_error)?, row.try_get(1).map_err(pg_error)?))
    };
    let (endpoint_id, key) = match absent(one(c, &deleted, &[&msg_id, &id], lane).await)? {
        Some(gone) => {
            run(c, "DELETE FROM attempts WHERE msg_id = $1 AND delivery_id = $2", &[&msg_id, &id]).await?;
            gone
        }
        None => match absent(one(c, &closed, &[&msg_id, &id, &now], lane).await)? {
            Some(closed) => closed,
            None => return Ok(false),
        },
    };
    if let (Some(endpoint_id), Some(key)) = (endpoint_id, key) {
        promote_lane(c, &endpoint_id, &key, now).await?;
    }
    Ok(true)
}

/// An endpoint's lanes with waiting deliveries, or the one lane `key`, with their heads.
pub async fn ordering_lanes(
    c: &impl GenericClient,
    endpoint_id: &str,
    key: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<OrderingLane>> {
    let lanes: Vec<(String, u64)> = match key {
        Some(key) => {
            let sql = "SELECT count(*) FROM deliveries WHERE endpoint_id = $1 AND order_key = $2 AND state = 6";
            let waiting: i64 = one(c, sql, &[&endpoint_id, &key], |r| r.try_get(0).map_err(pg_error)).await?;
            vec![(key.to_owned(), waiting as u64)]
        }
        None => {
            let sql = "SELECT order_key, count(*) FROM deliveries WHERE endpoint_id = $1 AND state = 6 \
                       GROUP BY order_key ORDER BY count(*) DESC, order_key LIMIT $2";
            let found = c.query(sql, &[&endpoint_id, &(limit as i64)]).await.map_err(pg_error)?;
            found
                .iter()
                .map(|r| Ok((r.try_get(0).map_err(pg_error)?, r.try_get::<_, i64>(1).map_err(pg_error)? as u64)))
                .collect::<StoreResult<_>>()?
        }
    };
    let head_sql = format!(
        "SELECT {} FROM deliveries WHERE endpoint_id = $1 AND order_key = $2 AND order_key IS NOT NULL \
         AND state IN (1, 3) LIMIT 1",
        rows::DELIVERY_COLUMNS
    );
    let mut out = Vec::with_capacity(lanes.len());
    for (key, waiting) in lanes {
        let head = absent(one(c, &head_sql, &[&endpoint_id, &key], rows::delivery).await)?;
        out.push(OrderingLane { key, head, waiting });
    }
    Ok(out)
}

/// `delivery` with its endpoint or its message; `None` when its message is gone (deleted
/// by retention since the page was read: a read's statements do not share a snapshot).
async fn view(c: &impl GenericClient, delivery: Delivery, with_endpoint: bool) -> StoreResult<DeliveryView> {
    let endpoint = match (&delivery.endpoint_id, with_endpoint) {
        (Some(id), true) => absent(get_endpoint(c, &delivery.app_id, id).await)?,
        _ => None,
    };
    let message = match with_endpoint {
        true => None,
        false => absent(message_by_id(c, &delivery.msg_id).await)?,
    };
    Ok(DeliveryView { delivery, endpoint, message })
}

async fn views_page(
    c: &impl GenericClient,
    query: Query,
    page: &Page,
    with_endpoint: bool,
) -> StoreResult<Listed<DeliveryView>> {
    let listed = rows::page(c, query, rows::DELIVERY_COLUMNS, "deliveries", page, rows::delivery).await?;
    let mut items = Vec::with_capacity(listed.items.len());
    for delivery in listed.items {
        items.push(view(c, delivery, with_endpoint).await?);
    }
    Ok(Listed { items, done: listed.done })
}

pub async fn deliveries_of_message(
    c: &impl GenericClient,
    app_id: &str,
    msg_id: &str,
    page: &Page,
) -> StoreResult<Listed<DeliveryView>> {
    let message = get_message(c, app_id, msg_id).await?;
    let query = Query::new().and("app_id = ?", app_id.to_owned()).and("msg_id = ?", message.id);
    views_page(c, query, page, true).await
}

pub async fn deliveries_of_endpoint(
    c: &impl GenericClient,
    app_id: &str,
    endpoint_id: &str,
    filter: &ListFilter,
    page: &Page,
) -> StoreResult<Listed<DeliveryView>> {
    let endpoint = get_endpoint(c, app_id, endpoint_id).await?;
    let query = Query::new().and("app_id = ?", app_id.to_owned()).and("endpoint_id = ?", endpoint.id);
    // Its state, and when its message was created (not when the delivery last changed).
    let query = query
        .filtered(&ListFilter { before: None, after: None, ..filter.clone() }, "updated_at")
        .messages_created(filter)
        .of_messages("deliveries", filter, &rows::DIALECT);
    views_page(c, query, page, false).await
}

pub async fn list_attempts(
    c: &impl GenericClient,
    app_id: &str,
    scope: AttemptScope<'_>,
    filter: &ListFilter,
    page: &Page,
) -> StoreResult<Listed<Attempt>> {
    let query = Query::new().and("app_id = ?", app_id.to_owned());
    let query = match scope {
        AttemptScope::Endpoint(key) => query.and("endpoint_id = ?", get_endpoint(c, app_id, key).await?.id),
        AttemptScope::Message(key) => query.and("msg_id = ?", get_message(c, app_id, key).await?.id),
    };
    rows::page(
        c,
        query.filtered(filter, "created_at").of_attempts(filter).of_messages("attempts", filter, &rows::DIALECT),
        rows::ATTEMPT_COLUMNS,
        "attempts",
        page,
        rows::attempt,
    )
    .await
}

pub async fn get_attempt(c: &impl GenericClient, app_id: &str, msg_id: &str, attempt_id: &str) -> StoreResult<Attempt> {
    let message = get_message(c, app_id, msg_id).await?;
    let sql = format!("SELECT {} FROM attempts WHERE app_id = $1 AND msg_id = $2 AND id = $3", rows::ATTEMPT_COLUMNS);
    one(c, &sql, &[&app_id, &message.id, &attempt_id], rows::attempt).await
}

pub async fn list_source_messages(
    c: &impl GenericClient,
    source_id: &str,
    page: &Page,
) -> StoreResult<Listed<Message>> {
    let query = Query::new().and("source_id = ?", source_id.to_owned());
    rows::page(c, query, rows::MESSAGE_COLUMNS, "messages", page, rows::message).await
}

/// One batch of retention (in the caller's transaction): the messages, then what hangs
/// off them; a message with an open delivery stays until it closes. The messages are
/// locked first (skipping those a resend holds: `resend` locks its message), then deleted
/// by a second statement, whose fresh snapshot sees whatever a resend committed before the
/// lock. In one statement, one that met a resend's uncommitted restart of a delivery
/// waited for it and deleted it anyway: the resend was answered 202 and nothing was sent
/// (`a_resend_racing_retention_is_kept_or_refused`, 38 of 150 rounds).
pub async fn purge_messages(c: &impl GenericClient, created_before: i64, now: i64, limit: usize) -> StoreResult<usize> {
    let cutoff = crate::retention_cutoff_id(created_before);
    let closed = crate::columns::NO_OPEN_DELIVERY;
    let limit = limit as i64;
    let expired = format!(
        "SELECT id FROM messages WHERE id < $1 AND retain_until IS NULL AND {closed} \
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
    );
    let mut doomed: Vec<String> =
        c.query(&expired, &[&cutoff, &limit]).await.map_err(pg_error)?.iter().map(|r| r.get(0)).collect();
    if (doomed.len() as i64) < limit {
        let kept_until =
            format!("SELECT id FROM messages WHERE retain_until < $1 AND {closed} LIMIT $2 FOR UPDATE SKIP LOCKED");
        let more = c.query(&kept_until, &[&now, &(limit - doomed.len() as i64)]).await.map_err(pg_error)?;
        doomed.extend(more.iter().map(|r| r.get::<_, String>(0)));
    }
    if doomed.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "WITH gone AS (DELETE FROM messages WHERE id = ANY($1) AND {closed} RETURNING id), \
         gone_attempts AS (DELETE FROM attempts WHERE msg_id IN (SELECT id FROM gone)), \
         gone_deliveries AS (DELETE FROM deliveries WHERE msg_id IN (SELECT id FROM gone)) \
         SELECT count(*) FROM gone"
    );
    let gone: i64 = c.query_one(&sql, &[&doomed]).await.map_err(pg_error)?.get(0);
    Ok(gone as usize)
}

/// Deletes the rows of `table` created before `before` among the `chunk` keys after
/// `after` (from the start without it); how many, and the cursor for the next chunk (none
/// at the end).
pub async fn purge_expired(
    c: &impl GenericClient,
    table: &crate::columns::Expiring,
    after: Option<&[String]>,
    before: i64,
    chunk: usize,
) -> StoreResult<(usize, Option<Vec<String>>)> {
    let p: fn(usize) -> String = |i| format!("${i}");
    let limit = chunk as i64;
    let mut args: Vec<&(dyn ToSql + Sync)> =
        after.unwrap_or_default().iter().map(|k| k as &(dyn ToSql + Sync)).collect();
    args.push(&limit);
    let rows = c.query(&table.chunk_sql(after.is_none(), p), &args).await.map_err(pg_error)?;
    let keys: Vec<Vec<String>> = rows
        .iter()
        .map(|row| (0..table.keys.len()).map(|i| row.try_get(i)).collect::<Result<_, _>>())
        .collect::<Result<_, _>>()
        .map_err(pg_error)?;
    let Some(last) = keys.last() else { return Ok((0, None)) };
    args.pop();
    args.extend(last.iter().map(|k| k as &(dyn ToSql + Sync)));
    args.push(&before);
    let deleted = c.execute(&table.delete_sql(after.is_none(), p), &args).await.map_err(pg_error)?;
    Ok((deleted as usize, (keys.len() == chunk).then(|| last.clone())))
}
