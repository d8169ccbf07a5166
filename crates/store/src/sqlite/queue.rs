//! Messages, their deliveries and the attempt log: the durable queue.

use super::fanout;
use super::resources::get_endpoint;
use super::rows;
use super::sql_error;
use crate::columns::{open_in_lane, Expiring, IN_DELETION, NOT_DELETED, OPEN_ORDERED};
use crate::query::Query;
use crate::*;
use hookline_core::delivery::DeliveryState;
use hookline_core::UnixMs;
use rusqlite::{params, Connection, OptionalExtension};

macro_rules! delivery_values {
    () => {
        "deliveries (id, msg_id, app_id, endpoint_id, state, attempts, next_at, first_attempt_at, trigger, \
         updated_at, claimed_by, order_key, order_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    };
}
const INSERT_DELIVERY: &str = concat!("INSERT INTO ", delivery_values!());
const INSERT_DELIVERY_IF_ABSENT: &str = concat!("INSERT OR IGNORE INTO ", delivery_values!());

/// The next place in the ordering lanes (one counter for all: only the order within a
/// lane matters, and the single writer makes it the commit order).
fn next_order_seq(conn: &Connection) -> StoreResult<i64> {
    conn.prepare_cached("UPDATE order_seq SET value = value + 1 WHERE id = 1 RETURNING value")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(sql_error)
}

/// Inserts a delivery with its stored state (`d.state`'s code, or [`DEFERRED`]); an ordered
/// one gets the next place in its lane and is never claimed at commit (it waits, and
/// `promote_lanes` makes the head of each lane due). With `if_absent`, a delivery that has
/// a row already is left as it is.
pub(super) fn insert_delivery(
    conn: &Connection,
    d: &Delivery,
    claim: Option<i64>,
    state: i64,
    if_absent: bool,
) -> StoreResult<()> {
    let order_seq = match &d.order_key {
        Some(_) => Some(next_order_seq(conn)?),
        None => None,
    };
    let claim = if d.order_key.is_some() { None } else { claim };
    conn.prepare_cached(if if_absent { INSERT_DELIVERY_IF_ABSENT } else { INSERT_DELIVERY })
        .and_then(|mut s| {
            s.execute(params![
                d.id,
                d.msg_id,
                d.app_id,
                d.endpoint_id,
                state,
                d.attempts,
                d.next_at,
                d.first_attempt_at,
                d.trigger as i64,
                d.updated_at,
                claim,
                d.order_key,
                order_seq
            ])
        })
        .map(|_| ())
        .map_err(sql_error)
}

pub fn publish(conn: &Connection, publish: &Publish) -> StoreResult<PublishOutcome> {
    let m = &publish.message;
    if let Some((source_id, key)) = &publish.dedupe {
        let earlier: Option<String> = conn
            .prepare_cached("SELECT msg_id FROM inbound_keys WHERE source_id = ?1 AND event_key = ?2")
            .and_then(|mut s| s.query_row([source_id, key], |r| r.get(0)).optional())
            .map_err(sql_error)?;
        if let Some(msg_id) = earlier {
            // Retention may have deleted the earlier message (its key lives as long as the
            // dedupe window): the event was taken all the same.
            return Ok(match message_by_id(conn, &msg_id).map(Some).or_else(absent)? {
                Some(existing) => PublishOutcome::Duplicate(Box::new(existing)),
                None => PublishOutcome::DuplicateOfPurged(msg_id),
            });
        }
        conn.prepare_cached(
            "INSERT INTO inbound_keys (source_id, event_key, msg_id, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| s.execute(params![source_id, key, m.id, m.created_at]))
        .map_err(sql_error)?;
    }
    if let Some(event_id) = &m.event_id {
        // Cached: this runs on the writer for every publish that names an `eventId`.
        let sql = format!("SELECT {} FROM messages WHERE app_id = ?1 AND event_id = ?2", rows::MESSAGE_COLUMNS);
        if let Some(existing) = conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row([&m.app_id, event_id], rows::message).optional())
            .map_err(sql_error)?
        {
            return Ok(PublishOutcome::Duplicate(Box::new(existing)));
        }
    }
    let sql = format!(
        "INSERT INTO messages ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        rows::MESSAGE_COLUMNS
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.execute(params![
                m.id,
                m.app_id,
                m.event_id,
                m.event_type,
                &m.payload[..],
                rows::opt_json(&m.channels),
                rows::opt_json(&m.tags),
                m.callback_url,
                m.deliver_at,
                m.source_id,
                rows::opt_json(&m.headers),
                m.retain_until,
                m.created_at,
                m.ordering_key
            ])
        })
        .map_err(sql_error)?;
    if !fanout::insert(conn, publish)? {
        for d in &publish.deliveries {
            insert_delivery(conn, d, publish.claim_of(d), publish.stored_state(d), false)?;
        }
    }
    // Each lane this publish added to gets a due head, if it had no open delivery.
    for d in &publish.deliveries {
        if let (Some(endpoint_id), Some(key)) = (&d.endpoint_id, &d.order_key) {
            promote_lane(conn, endpoint_id, key, d.updated_at)?;
        }
    }
    if let Some(answer) = &publish.idempotency {
        save_idempotent_response(conn, answer)?;
    }
    Ok(PublishOutcome::Created)
}

/// An application's message by id or event id (by id first: a message's `eventId` may be
/// another message's id).
pub fn get_message(conn: &Connection, app_id: &str, key: &str) -> StoreResult<Message> {
    let sql = format!(
        "SELECT {} FROM messages WHERE app_id = ?1 AND (id = ?2 OR event_id = ?2) ORDER BY id = ?2 DESC LIMIT 1",
        rows::MESSAGE_COLUMNS
    );
    conn.prepare_cached(&sql).and_then(|mut s| s.query_row([app_id, key], rows::message)).map_err(sql_error)
}

pub fn message_by_id(conn: &Connection, id: &str) -> StoreResult<Message> {
    let sql = format!("SELECT {} FROM messages WHERE id = ?1", rows::MESSAGE_COLUMNS);
    conn.prepare_cached(&sql).and_then(|mut s| s.query_row([id], rows::message)).map_err(sql_error)
}

pub fn list_messages(
    conn: &Connection,
    app_id: &str,
    filter: &ListFilter,
    page: &Page,
) -> StoreResult<Listed<Message>> {
    let query = Query::messages(app_id, filter, &rows::DIALECT);
    rows::page(conn, query, rows::MESSAGE_COLUMNS, "messages", page, rows::message)
}

/// A single-node store: the process registering now is the only one, so every earlier
/// registration is gone and its claims are void at once.
pub fn register_node(conn: &Connection, name: &str, now: i64, lease_ms: u64) -> StoreResult<NodeLease> {
    conn.execute("DELETE FROM nodes", []).map_err(sql_error)?;
    let lease_until = now + lease_ms as i64;
    let token = conn
        .query_row(
            "INSERT INTO nodes (name, lease_until, started_at) VALUES (?1, ?2, ?3) RETURNING token",
            params![name, lease_until, now],
            |r| r.get(0),
        )
        .map_err(sql_error)?;
    Ok(NodeLease { token, lease_until })
}

pub fn renew_node(conn: &Connection, token: i64, now: i64, lease_ms: u64) -> StoreResult<bool> {
    let renewed = conn
        .prepare_cached("UPDATE nodes SET lease_until = ?2 WHERE token = ?1 AND lease_until >= ?3")
        .and_then(|mut s| s.execute(params![token, now + lease_ms as i64, now]))
        .map_err(sql_error)?;
    Ok(renewed == 1)
}

pub fn live_nodes(conn: &Connection, now: i64) -> StoreResult<usize> {
    let sql = "SELECT count(*) FROM nodes WHERE lease_until >= ?1";
    let count: i64 = conn.prepare_cached(sql).and_then(|mut s| s.query_row([now], |r| r.get(0))).map_err(sql_error)?;
    Ok(count as usize)
}

pub fn retire_node(conn: &Connection, token: i64) -> StoreResult<()> {
    conn.execute("UPDATE nodes SET lease_until = 0 WHERE token = ?1", [token]).map_err(sql_error)?;
    conn.execute("UPDATE leader SET lease_until = 0 WHERE token = ?1", [token]).map_err(sql_error)?;
    Ok(())
}

pub fn overdue_claims(conn: &Connection, token: i64, due_before: i64, window: usize) -> StoreResult<Vec<DeliveryKey>> {
    let mut statement = conn.prepare_cached(rows::OVERDUE_CLAIMS).map_err(sql_error)?;
    let found = statement
        .query_map(params![due_before, window as i64, token], |r| Ok(DeliveryKey { msg_id: r.get(0)?, id: r.get(1)? }))
        .map_err(sql_error)?;
    found.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)
}

pub fn free_claims(conn: &Connection, token: i64, deliveries: &[DeliveryKey]) -> StoreResult<usize> {
    let mut statement = conn
        .prepare_cached(
            "UPDATE deliveries SET claimed_by = NULL \
             WHERE msg_id = ?1 AND id = ?2 AND claimed_by = ?3 AND state IN (1, 3)",
        )
        .map_err(sql_error)?;
    let mut freed = 0;
    for key in deliveries {
        freed += statement.execute(params![key.msg_id, key.id, token]).map_err(sql_error)?;
    }
    Ok(freed)
}

pub fn claim_due(conn: &Connection, claim: &ClaimDue) -> StoreResult<Claimed> {
    // A dead node's fan-outs become rows here, so they are claimed below like any other.
    let now = claim.now;
    fanout::write_out(conn, fanout::Which::Stale { before: now - fanout::WRITE_OUT_AFTER_MS, now })?;
    let defer = "order_key IS NULL AND endpoint_id IS NOT NULL AND endpoint_id IN (SELECT value FROM json_each(?5))";
    // The window's rows of an application being deleted are closed, and those to lanes
    // behind deferred; of the others, the `?6` earliest are claimed (numbered apart).
    let sql = format!(
        "UPDATE deliveries SET claimed_by = CASE WHEN {IN_DELETION} OR {defer} THEN NULL ELSE ?1 END, \
             next_at = CASE WHEN {IN_DELETION} THEN NULL ELSE next_at END, \
             state = CASE WHEN {IN_DELETION} THEN {CANCELED} WHEN {defer} THEN {DEFERRED} ELSE state END \
         WHERE (msg_id, id) IN ( \
             SELECT msg_id, id FROM ( \
                 SELECT msg_id, id, set_apart, row_number() OVER (PARTITION BY set_apart ORDER BY next_at) AS n \
                 FROM ( \
                     SELECT msg_id, id, next_at, ({IN_DELETION} OR {defer}) AS set_apart FROM deliveries \
                     WHERE state IN (1, 3) AND next_at <= ?2 \
                     AND (claimed_by IS NULL OR claimed_by NOT IN (SELECT token FROM nodes WHERE lease_until >= ?3)) \
                     ORDER BY next_at LIMIT ?4)) \
             WHERE set_apart OR n <= ?6) \
         AND EXISTS (SELECT 1 FROM nodes WHERE token = ?1 AND lease_until >= ?3) \
         RETURNING {}, state",
        rows::DELIVERY_COLUMNS
    );
    let behind = serde_json::to_string(&claim.behind).expect("a list of strings is JSON");
    let (window, limit) = (claim.window as i64, claim.limit as i64);
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let taken = statement
        .query_map(params![claim.token, claim.horizon, now, window, behind, limit], |r| {
            Ok((rows::delivery(r)?, r.get::<_, i64>(rows::DELIVERY_COLUMN_COUNT)?))
        })
        .map_err(sql_error)?;
    Ok(Claimed::sort(taken.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)?))
}

pub fn claim_deferred(
    conn: &Connection,
    token: i64,
    lane: &DeferredLane,
    now: i64,
    limit: usize,
) -> StoreResult<Vec<Delivery>> {
    let lane_endpoint = rows::LANE_ENDPOINT;
    let sql = format!(
        "UPDATE deliveries SET state = 1, claimed_by = ?1 WHERE (msg_id, id) IN ( \
             SELECT msg_id, id FROM deliveries WHERE state = 7 AND app_id = ?2 AND {lane_endpoint} = ?3 \
             AND {NOT_DELETED} ORDER BY next_at LIMIT ?4) \
         AND EXISTS (SELECT 1 FROM nodes WHERE token = ?1 AND lease_until >= ?5) \
         RETURNING {}",
        rows::DELIVERY_COLUMNS
    );
    let endpoint = lane.endpoint_key();
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let found = statement
        .query_map(params![token, lane.app_id, endpoint, limit as i64, now], rows::delivery)
        .map_err(sql_error)?;
    found.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)
}

/// One or two index seeks per lane: the next endpoint of the same application, or else
/// the first of the next application. (SQLite seeks a row-value comparison by its first
/// column only, which would read through every deferred row of the application's lanes.)
pub fn deferred_lanes(conn: &Connection, after: Option<&DeferredLane>, limit: usize) -> StoreResult<Vec<DeferredLane>> {
    let lane_endpoint = rows::LANE_ENDPOINT;
    let same_app = format!(
        "SELECT app_id, {lane_endpoint} FROM deliveries WHERE state = 7 AND app_id = ?1 AND {lane_endpoint} > ?2 \
         ORDER BY {lane_endpoint} LIMIT 1"
    );
    let next_app = format!(
        "SELECT app_id, {lane_endpoint} FROM deliveries WHERE state = 7 AND app_id > ?1 \
         ORDER BY app_id, {lane_endpoint} LIMIT 1"
    );
    let mut same_app = conn.prepare_cached(&same_app).map_err(sql_error)?;
    let mut next_app = conn.prepare_cached(&next_app).map_err(sql_error)?;
    let pair = |r: &rusqlite::Row| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?));
    let mut cursor =
        after.map_or((String::new(), String::new()), |lane| (lane.app_id.clone(), lane.endpoint_key().to_owned()));
    let mut found = Vec::new();
    while found.len() < limit {
        let next = match same_app.query_row(params![cursor.0, cursor.1], pair).optional().map_err(sql_error)? {
            Some(next) => Some(next),
            None => next_app.query_row(params![cursor.0], pair).optional().map_err(sql_error)?,
        };
        let Some(next) = next else { break };
        found.push(DeferredLane::from_key(&next.0, &next.1));
        cursor = next;
    }
    Ok(found)
}

pub fn lead(conn: &Connection, token: i64, now: i64, lease_ms: u64) -> StoreResult<bool> {
    conn.prepare_cached(
        "INSERT INTO leader (id, token, lease_until) VALUES (1, ?1, ?2) ON CONFLICT (id) DO UPDATE \
         SET token = excluded.token, lease_until = excluded.lease_until \
         WHERE leader.token = excluded.token OR leader.lease_until < ?3",
    )
    .and_then(|mut s| s.execute(params![token, now + lease_ms as i64, now]))
    .map_err(sql_error)?;
    let leader: i64 = conn.query_row("SELECT token FROM leader WHERE id = 1", [], |r| r.get(0)).map_err(sql_error)?;
    Ok(leader == token)
}

pub fn count_open_deliveries(conn: &Connection) -> StoreResult<u64> {
    conn.query_row(rows::COUNT_OPEN_DELIVERIES, [], |r| r.get::<_, i64>(0)).map(|n| n as u64).map_err(sql_error)
}

/// Deletes a batch of messages past retention with their deliveries and attempts; a
/// message with an open delivery (or a fan-out not yet attempted) stays until it closes.
pub fn purge_messages(conn: &Connection, created_before: i64, now: i64, limit: usize) -> StoreResult<usize> {
    let cutoff = crate::retention_cutoff_id(created_before);
    let closed = format!(
        concat!(
            "{} AND NOT EXISTS (SELECT 1 FROM fanouts f WHERE f.msg_id = messages.id AND f.state IN (",
            crate::columns::open_states!(),
            "))"
        ),
        crate::columns::NO_OPEN_DELIVERY
    );
    let mut ids: Vec<String> = Vec::with_capacity(limit);
    for (sql, bound) in [
        (
            format!("SELECT id FROM messages WHERE id < ?1 AND retain_until IS NULL AND {closed} ORDER BY id LIMIT ?2"),
            cutoff.into(),
        ),
        (
            format!("SELECT id FROM messages WHERE retain_until < ?1 AND {closed} LIMIT ?2"),
            rusqlite::types::Value::Integer(now),
        ),
    ] {
        let room = (limit - ids.len()) as i64;
        let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
        let found = statement.query_map(params![bound, room], |r| r.get(0)).map_err(sql_error)?;
        ids.extend(found.collect::<rusqlite::Result<Vec<String>>>().map_err(sql_error)?);
    }
    for id in &ids {
        for sql in [
            "DELETE FROM attempts WHERE msg_id = ?1",
            "DELETE FROM deliveries WHERE msg_id = ?1",
            "DELETE FROM fanouts WHERE msg_id = ?1",
            "DELETE FROM messages WHERE id = ?1",
        ] {
            conn.prepare_cached(sql).and_then(|mut s| s.execute([id])).map_err(sql_error)?;
        }
    }
    Ok(ids.len())
}

pub fn get_delivery(conn: &Connection, msg_id: &str, id: &str) -> StoreResult<Delivery> {
    let sql = format!("SELECT {} FROM deliveries WHERE msg_id = ?1 AND id = ?2", rows::DELIVERY_COLUMNS);
    conn.prepare_cached(&sql).and_then(|mut s| s.query_row([msg_id, id], rows::delivery)).map_err(sql_error)
}

pub fn record_attempt(conn: &Connection, record: &AttemptRecord) -> StoreResult<Recorded> {
    let a = &record.attempt;
    let sql = format!(
        "INSERT INTO attempts ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        rows::ATTEMPT_COLUMNS
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.execute(params![
                a.id,
                a.msg_id,
                a.app_id,
                a.delivery_id,
                a.endpoint_id,
                a.url,
                a.status_code,
                a.response,
                a.duration_ms,
                a.error_class,
                a.state.code(),
                a.trigger as i64,
                a.created_at
            ])
        })
        .map_err(sql_error)?;
    let applied = conn
        .prepare_cached(
            "UPDATE deliveries SET state = ?2, attempts = attempts + 1, next_at = ?3, \
             first_attempt_at = COALESCE(first_attempt_at, ?4), trigger = 0, updated_at = ?5, \
             claimed_by = CASE WHEN ?7 THEN claimed_by END \
             WHERE msg_id = ?6 AND id = ?1 AND claimed_by = ?8",
        )
        .and_then(|mut s| {
            s.execute(params![
                a.delivery_id,
                record.state.code(),
                record.next_at,
                record.first_attempt_at,
                a.created_at,
                a.msg_id,
                record.keep_claim,
                record.claim
            ])
        })
        .map_err(sql_error)?
        == 1;
    let applied = applied || fanout::record_unwritten(conn, record)?;
    let disabled = match &a.endpoint_id {
        Some(endpoint_id) if applied && record.state != DeliveryState::Skipped => {
            endpoint_health(conn, endpoint_id, record)?
        }
        _ => None,
    };
    Ok(Recorded { applied, disabled })
}

/// Keeps the endpoint's `fail_since` (cleared by a success, set by the first failure after
/// one) and disables it when the record asks or it has failed too long. Returns when it
/// started failing if this write disabled it.
fn endpoint_health(conn: &Connection, endpoint_id: &str, record: &AttemptRecord) -> StoreResult<Option<UnixMs>> {
    let now = record.attempt.created_at;
    if record.state == DeliveryState::Delivered {
        conn.prepare_cached("UPDATE endpoints SET fail_since = NULL WHERE id = ?1 AND fail_since IS NOT NULL")
            .and_then(|mut s| s.execute([endpoint_id]))
            .map_err(sql_error)?;
        return Ok(None);
    }
    let found = conn
        .prepare_cached("SELECT disabled, fail_since FROM endpoints WHERE id = ?1")
        .and_then(|mut s| s.query_row([endpoint_id], |r| Ok((r.get::<_, bool>(0)?, r.get::<_, Option<i64>>(1)?))))
        .optional()
        .map_err(sql_error)?;
    let Some((was_disabled, fail_since)) = found else { return Ok(None) };
    let since = fail_since.unwrap_or(now);
    let disable = !was_disabled
        && (record.disable_endpoint || hookline_core::delivery::failing_too_long(since, now, record.disable_after_ms));
    if disable || fail_since.is_none() {
        conn.prepare_cached(
            "UPDATE endpoints SET fail_since = ?2, disabled = disabled OR ?3, \
             updated_at = CASE WHEN ?3 THEN ?4 ELSE updated_at END WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![endpoint_id, since, disable, now]))
        .map_err(sql_error)?;
    }
    Ok(disable.then_some(since))
}

/// Restarting a delivery: due now, a fresh retry cycle, marked manual, claimed by `?2`
/// (the node that sends it) or by nobody. An ordered one goes back to waiting in its lane
/// (at its old place), and the lane's head is made due after.
pub(crate) const RESTART: &str = "state = CASE WHEN order_key IS NULL THEN 1 ELSE 6 END, \
     next_at = CASE WHEN order_key IS NULL THEN ?1 END, attempts = 0, first_attempt_at = NULL, trigger = 1, \
     updated_at = ?1, claimed_by = CASE WHEN order_key IS NULL THEN ?2 END";

/// Whether `msg_id` has a delivery to `endpoint_id`.
fn has_delivery(conn: &Connection, msg_id: &str, endpoint_id: &str) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM deliveries WHERE msg_id = ?1 AND endpoint_id = ?2")
        .and_then(|mut s| s.exists([msg_id, endpoint_id]))
        .map_err(sql_error)
}

pub fn resend(
    conn: &Connection,
    app_id: &str,
    msg_id: &str,
    endpoint_id: &str,
    new_id: &str,
    now: i64,
    claim: i64,
) -> StoreResult<Delivery> {
    let message = get_message(conn, app_id, msg_id)?;
    let endpoint = get_endpoint(conn, app_id, endpoint_id)?;
    fanout::write_out(conn, fanout::Which::Message(&message.id))?;
    let sql = format!(
        "UPDATE deliveries SET {RESTART} WHERE msg_id = ?3 AND endpoint_id = ?4 AND NOT {OPEN_ORDERED} RETURNING {}",
        rows::DELIVERY_COLUMNS
    );
    let updated = conn
        .query_row(&sql, params![now, claim, message.id, endpoint.id], rows::delivery)
        .optional()
        .map_err(sql_error)?;
    let delivery = match updated {
        Some(delivery) => delivery,
        None if has_delivery(conn, &message.id, &endpoint.id)? => return Err(open_in_lane()),
        None => {
            let delivery = Delivery::resent(new_id.to_owned(), &message, &endpoint, now);
            insert_delivery(conn, &delivery, Some(claim), delivery.state.code(), false)?;
            delivery
        }
    };
    match &delivery.order_key {
        None => Ok(delivery),
        Some(key) => {
            promote_lane(conn, &endpoint.id, key, now)?;
            get_delivery(conn, &delivery.msg_id, &delivery.id)
        }
    }
}

/// One step of a recover (`Store::recover`).
pub fn recover(
    conn: &Connection,
    r: &Recovery,
    after: Option<&str>,
    chunk: usize,
) -> StoreResult<(Vec<Delivery>, Option<String>)> {
    let endpoint = get_endpoint(conn, &r.app_id, &r.endpoint_id)?;
    let p: fn(usize) -> String = |i| format!("?{i}");
    let (first, end) = crate::columns::recover_id_bounds(r);
    let span = conn
        .prepare_cached(&crate::columns::recover_span_sql(p))
        .and_then(|mut s| {
            s.query_row(params![endpoint.id, first, after.unwrap_or(""), end, chunk as i64], |row| {
                Ok((row.get::<_, Option<String>>(0)?, row.get::<_, i64>(1)?))
            })
        })
        .map_err(sql_error)?;
    let (Some(last), scanned) = span else { return Ok((Vec::new(), None)) };
    let mut statement = conn.prepare_cached(&crate::columns::recover_sql(p, RESTART, false)).map_err(sql_error)?;
    let after = after.unwrap_or("");
    let values = params![r.now, None::<i64>, endpoint.id, r.app_id, r.since, r.until, after, last, first];
    let found = statement.query_map(values, rows::delivery).map_err(sql_error)?;
    let recovered = found.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)?;
    Ok((recovered, (scanned as usize == chunk).then_some(last)))
}

/// Makes the first waiting delivery of a lane due, if the lane has no open one: at `now`,
/// or at its own time if later (a message published with `deliverAt`). Returns whether it
/// did.
pub fn promote_lane(conn: &Connection, endpoint_id: &str, key: &str, now: i64) -> StoreResult<bool> {
    let promoted = conn
        .prepare_cached(
            "UPDATE deliveries SET state = 1, next_at = max(coalesce(next_at, ?3), ?3), updated_at = ?3, \
             claimed_by = NULL WHERE (msg_id, id) IN ( \
                 SELECT w.msg_id, w.id FROM deliveries w \
                 WHERE w.endpoint_id = ?1 AND w.order_key = ?2 AND w.state = 6 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.endpoint_id = ?1 AND o.order_key = ?2 \
                     AND o.order_key IS NOT NULL AND o.state IN (1, 3)) \
                 ORDER BY w.order_seq LIMIT 1)",
        )
        .and_then(|mut s| s.execute(params![endpoint_id, key, now]))
        .map_err(sql_error)?;
    Ok(promoted == 1)
}

/// The next lanes with waiting deliveries (`columns::waiting_lanes_sql`).
pub fn waiting_lanes(
    conn: &Connection,
    after: &(String, String),
    limit: usize,
) -> StoreResult<Vec<(String, String, bool)>> {
    let mut statement =
        conn.prepare_cached(&crate::columns::waiting_lanes_sql(|n| format!("?{n}"))).map_err(sql_error)?;
    let found = statement
        .query_map(params![after.0, after.1, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? == 1)))
        .map_err(sql_error)?;
    found.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)
}

/// Promotes the head of each lane given.
pub fn promote_lanes(conn: &Connection, lanes: &[(String, String)], now: i64) -> StoreResult<usize> {
    let mut promoted = 0;
    for (endpoint_id, key) in lanes {
        promoted += usize::from(promote_lane(conn, endpoint_id, key, now)?);
    }
    Ok(promoted)
}

/// Skips the delivery of a message to an endpoint (an operator's call): an open or
/// waiting one becomes `Skipped` and the next in its lane is made due. A delivery already
/// done is returned unchanged. Ids, not uids; only the application's own.
pub fn skip(conn: &Connection, app_id: &str, msg_id: &str, endpoint_id: &str, now: i64) -> StoreResult<Delivery> {
    fanout::write_out(conn, fanout::Which::Message(msg_id))?;
    let sql = format!(
        concat!(
            "UPDATE deliveries SET state = 5, next_at = NULL, claimed_by = NULL, updated_at = ?4 \
             WHERE msg_id = ?1 AND endpoint_id = ?2 AND app_id = ?3 AND state IN (",
            crate::columns::open_states!(),
            ") RETURNING {}"
        ),
        rows::DELIVERY_COLUMNS
    );
    let skipped = conn
        .query_row(&sql, params![msg_id, endpoint_id, app_id, now], rows::delivery)
        .optional()
        .map_err(sql_error)?;
    match skipped {
        Some(delivery) => {
            if let Some(key) = &delivery.order_key {
                promote_lane(conn, endpoint_id, key, now)?;
            }
            Ok(delivery)
        }
        None => {
            let sql = format!(
                "SELECT {} FROM deliveries WHERE msg_id = ?1 AND endpoint_id = ?2 AND app_id = ?3",
                rows::DELIVERY_COLUMNS
            );
            conn.query_row(&sql, params![msg_id, endpoint_id, app_id], rows::delivery).map_err(sql_error)
        }
    }
}

/// Closes a delivery that has nowhere to go (see `Store::close_stranded`). The single
/// writer keeps SQLite from making one; the engine's call is answered all the same.
pub fn close_stranded(conn: &Connection, msg_id: &str, id: &str, now: i64) -> StoreResult<bool> {
    fanout::write_out(conn, fanout::Which::Message(msg_id))?;
    let [deleted, closed] = crate::columns::close_stranded_sql(|n| format!("?{n}"));
    let lane = |row: &rusqlite::Row| Ok((row.get::<_, Option<String>>(0)?, row.get::<_, Option<String>>(1)?));
    let gone = conn.query_row(&deleted, params![msg_id, id], lane).optional().map_err(sql_error)?;
    if gone.is_some() {
        conn.execute("DELETE FROM attempts WHERE msg_id = ?1 AND delivery_id = ?2", params![msg_id, id])
            .map_err(sql_error)?;
    }
    let stranded = match gone {
        Some(gone) => Some(gone),
        None => conn.query_row(&closed, params![msg_id, id, now], lane).optional().map_err(sql_error)?,
    };
    let Some((endpoint_id, key)) = stranded else { return Ok(false) };
    if let (Some(endpoint_id), Some(key)) = (endpoint_id, key) {
        promote_lane(conn, &endpoint_id, &key, now)?;
    }
    Ok(true)
}

/// The lanes of an endpoint with deliveries waiting (most waiting first), or the one lane
/// `key`, each with its open head.
pub fn ordering_lanes(
    conn: &Connection,
    endpoint_id: &str,
    key: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<OrderingLane>> {
    let lanes: Vec<(String, u64)> = match key {
        Some(key) => {
            let waiting: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM deliveries WHERE endpoint_id = ?1 AND order_key = ?2 AND state = 6",
                )
                .and_then(|mut s| s.query_row(params![endpoint_id, key], |r| r.get(0)))
                .map_err(sql_error)?;
            vec![(key.to_owned(), waiting as u64)]
        }
        None => {
            let mut statement = conn
                .prepare_cached(
                    "SELECT order_key, count(*) FROM deliveries WHERE endpoint_id = ?1 AND state = 6 \
                     GROUP BY order_key ORDER BY count(*) DESC, order_key LIMIT ?2",
                )
                .map_err(sql_error)?;
            let found = statement
                .query_map(params![endpoint_id, limit as i64], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
                .map_err(sql_error)?;
            found.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)?
        }
    };
    let head_sql = format!(
        "SELECT {} FROM deliveries WHERE endpoint_id = ?1 AND order_key = ?2 AND order_key IS NOT NULL \
         AND state IN (1, 3) LIMIT 1",
        rows::DELIVERY_COLUMNS
    );
    let mut heads = conn.prepare_cached(&head_sql).map_err(sql_error)?;
    lanes
        .into_iter()
        .map(|(key, waiting)| {
            let head = heads.query_row(params![endpoint_id, key], rows::delivery).optional().map_err(sql_error)?;
            Ok(OrderingLane { key, head, waiting })
        })
        .collect()
}

/// `delivery` with its endpoint or its message; `None` when its message is gone (deleted
/// by retention since the page was read: a read's statements do not share a snapshot).
fn view(conn: &Connection, delivery: Delivery, with_endpoint: bool) -> StoreResult<DeliveryView> {
    let endpoint = match (&delivery.endpoint_id, with_endpoint) {
        (Some(id), true) => get_endpoint(conn, &delivery.app_id, id).map(Some).or_else(absent)?,
        _ => None,
    };
    let message = match with_endpoint {
        true => None,
        false => message_by_id(conn, &delivery.msg_id).map(Some).or_else(absent)?,
    };
    Ok(DeliveryView { delivery, endpoint, message })
}

fn absent<T>(e: StoreError) -> StoreResult<Option<T>> {
    if e == StoreError::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

/// A page of deliveries matching `query`, each with its endpoint or its message beside it.
fn views_page(conn: &Connection, query: Query, page: &Page, with_endpoint: bool) -> StoreResult<Listed<DeliveryView>> {
    let listed = rows::page(conn, query, rows::DELIVERY_COLUMNS, "deliveries", page, rows::delivery)?;
    let items = listed.items.into_iter().map(|d| view(conn, d, with_endpoint)).collect::<StoreResult<Vec<_>>>()?;
    Ok(Listed { items, done: listed.done })
}

pub fn deliveries_of_message(
    conn: &Connection,
    app_id: &str,
    msg_id: &str,
    page: &Page,
) -> StoreResult<Listed<DeliveryView>> {
    let message = get_message(conn, app_id, msg_id)?;
    let query = Query::new().and("app_id = ?", app_id.to_owned()).and("msg_id = ?", message.id);
    views_page(conn, query, page, true)
}

pub fn deliveries_of_endpoint(
    conn: &Connection,
    app_id: &str,
    endpoint_id: &str,
    filter: &ListFilter,
    page: &Page,
) -> StoreResult<Listed<DeliveryView>> {
    let endpoint = get_endpoint(conn, app_id, endpoint_id)?;
    let query = Query::new().and("app_id = ?", app_id.to_owned()).and("endpoint_id = ?", endpoint.id);
    // Its state, and when its message was created (not when the delivery last changed).
    let query = query
        .filtered(&ListFilter { before: None, after: None, ..filter.clone() }, "updated_at")
        .messages_created(filter)
        .of_messages("deliveries", filter, &rows::DIALECT);
    views_page(conn, query, page, false)
}

pub fn list_attempts(
    conn: &Connection,
    app_id: &str,
    scope: AttemptScope,
    filter: &ListFilter,
    page: &Page,
) -> StoreResult<Listed<Attempt>> {
    let query = Query::new().and("app_id = ?", app_id.to_owned());
    let query = match scope {
        AttemptScope::Endpoint(key) => query.and("endpoint_id = ?", get_endpoint(conn, app_id, key)?.id),
        AttemptScope::Message(key) => query.and("msg_id = ?", get_message(conn, app_id, key)?.id),
    };
    rows::page(
        conn,
        query.filtered(filter, "created_at").of_attempts(filter).of_messages("attempts", filter, &rows::DIALECT),
        rows::ATTEMPT_COLUMNS,
        "attempts",
        page,
        rows::attempt,
    )
}

pub fn get_attempt(conn: &Connection, app_id: &str, msg_id: &str, attempt_id: &str) -> StoreResult<Attempt> {
    let message = get_message(conn, app_id, msg_id)?;
    let sql = format!("SELECT {} FROM attempts WHERE app_id = ?1 AND msg_id = ?2 AND id = ?3", rows::ATTEMPT_COLUMNS);
    conn.query_row(&sql, [app_id, &message.id, attempt_id], rows::attempt).map_err(sql_error)
}

pub fn idempotent_response(conn: &Connection, key: &str, since: i64) -> StoreResult<Option<IdempotentResponse>> {
    conn.prepare_cached(&crate::columns::idempotent_answer_sql(|n| format!("?{n}")))
        .and_then(|mut s| s.query_row(params![key, since], idempotency_row).optional())
        .map_err(sql_error)
}

fn idempotency_row(r: &rusqlite::Row) -> rusqlite::Result<IdempotentResponse> {
    Ok(IdempotentResponse {
        key: r.get(0)?,
        status: r.get(1)?,
        body: Bytes::from(r.get::<_, Vec<u8>>(2)?),
        created_at: r.get(3)?,
        fingerprint: r.get::<_, Vec<u8>>(4)?.try_into().unwrap_or_default(),
    })
}

pub fn reserve_idempotency_key(
    conn: &Connection,
    key: &str,
    fingerprint: &[u8; 32],
    token: &[u8; 16],
    now: UnixMs,
    since: UnixMs,
    stale_before: UnixMs,
) -> StoreResult<Reservation> {
    let taken = conn
        .prepare_cached(&crate::columns::reserve_idempotency_sql(|n| format!("?{n}")))
        .and_then(|mut s| {
            s.query_row(params![key, &fingerprint[..], now, since, stale_before, &token[..]], |_| Ok(())).optional()
        })
        .map_err(sql_error)?;
    if taken.is_some() {
        return Ok(Reservation::Taken);
    }
    conn.prepare_cached(&crate::columns::held_idempotency_sql(|n| format!("?{n}")))
        .and_then(|mut s| s.query_row([key], idempotency_row))
        .map(Reservation::of_held)
        .map_err(sql_error)
}

pub fn release_idempotency_key(conn: &Connection, key: &str, token: &[u8; 16]) -> StoreResult<()> {
    conn.prepare_cached(&crate::columns::release_idempotency_sql(|n| format!("?{n}")))
        .and_then(|mut s| s.execute(params![key, &token[..]]))
        .map_err(sql_error)?;
    Ok(())
}

pub fn save_idempotent_response(conn: &Connection, answer: &IdempotentResponse) -> StoreResult<()> {
    let sql =
        "INSERT OR REPLACE INTO idempotency (key, status, body, created_at, fingerprint) VALUES (?1, ?2, ?3, ?4, ?5)";
    conn.prepare_cached(sql)
        .and_then(|mut s| {
            s.execute(params![answer.key, answer.status, &answer.body[..], answer.created_at, &answer.fingerprint[..]])
        })
        .map_err(sql_error)?;
    Ok(())
}

pub fn tokens(conn: &Connection) -> StoreResult<Vec<Token>> {
    let mut statement =
        conn.prepare("SELECT id, hash, app_id, created_at FROM tokens ORDER BY id").map_err(sql_error)?;
    let rows = statement
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, i64>(3)?))
        })
        .map_err(sql_error)?;
    rows.map(|row| {
        let (id, hash, app_id, created_at) = row.map_err(sql_error)?;
        let hash = hash.try_into().map_err(|_| StoreError::Corrupt("a token hash is not 32 bytes".into()))?;
        Ok(Token { id, hash, app_id, created_at })
    })
    .collect()
}

pub fn add_token(conn: &Connection, token: &Token) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO tokens (id, hash, app_id, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![token.id, &token.hash[..], token.app_id, token.created_at],
    )
    .map_err(sql_error)?;
    Ok(())
}

pub fn delete_token(conn: &Connection, id: &str) -> StoreResult<()> {
    let deleted = conn.execute("DELETE FROM tokens WHERE id = ?1", [id]).map_err(sql_error)?;
    if deleted == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub fn list_source_messages(conn: &Connection, source_id: &str, page: &Page) -> StoreResult<Listed<Message>> {
    let query = Query::new().and("source_id = ?", source_id.to_owned());
    rows::page(conn, query, rows::MESSAGE_COLUMNS, "messages", page, rows::message)
}

/// Deletes the rows of `table` created before `before` among the `chunk` keys after
/// `after` (from the start without it); how many, and the cursor for the next chunk (none
/// at the end).
pub fn purge_expired(
    conn: &Connection,
    table: &Expiring,
    after: Option<&[String]>,
    before: i64,
    chunk: usize,
) -> StoreResult<(usize, Option<Vec<String>>)> {
    let p: fn(usize) -> String = |i| format!("?{i}");
    let mut args: Vec<rusqlite::types::Value> = after.unwrap_or_default().iter().cloned().map(Into::into).collect();
    args.push((chunk as i64).into());
    let mut statement = conn.prepare_cached(&table.chunk_sql(after.is_none(), p)).map_err(sql_error)?;
    let keys: Vec<Vec<String>> = statement
        .query_map(rusqlite::params_from_iter(&args), |row| (0..table.keys.len()).map(|i| row.get(i)).collect())
        .map_err(sql_error)?
        .collect::<Result<_, _>>()
        .map_err(sql_error)?;
    let Some(last) = keys.last() else { return Ok((0, None)) };
    args.pop();
    args.extend(last.iter().cloned().map(Into::into));
    args.push(before.into());
    let deleted =
        conn.execute(&table.delete_sql(after.is_none(), p), rusqlite::params_from_iter(&args)).map_err(sql_error)?;
    Ok((deleted, (keys.len() == chunk).then(|| last.clone())))
}
