//! Fan-outs kept as one row. A publish whose deliveries are alike (all claimed by the node that
//! commits it, unordered, in one state, none to the callback URL) writes one `fanouts` row
//! listing each delivery's id and endpoint instead of a row per delivery. The node delivers
//! them from memory, and each delivery's row is written once, when its first attempt is
//! recorded, in the state that attempt left it ([`record_unwritten`]). So a publish to
//! 100 endpoints commits two rows, not 101, and a delivery that succeeds at once never
//! enters the due index.
//!
//! A fan-out is written out ([`write_out`]): rows for the deliveries not yet attempted, as
//! the publish would have written them, and the `fanouts` row deleted. That happens when
//! it is [`WRITE_OUT_AFTER_MS`] old or its node's lease has ended (before every claim, so
//! a dead node's deliveries are claimed like any other), before any write that works on
//! deliveries by message or endpoint (resend, skip, endpoint deletion), and before reads of
//! deliveries (the store asks [`any`] first). Everything outside this module sees rows only.

use super::queue::insert_delivery;
use super::rows;
use super::sql_error;
use crate::*;
use rusqlite::{params, Connection, OptionalExtension};

/// Fewer deliveries than this are written as rows at once: one row costs no more than the
/// fan-out row it would replace.
pub const MIN_DELIVERIES: usize = 2;

/// A fan-out older than this is written out: its deliveries not yet attempted (slow or
/// retried endpoints) get their rows, and the `fanouts` table stays small.
pub const WRITE_OUT_AFTER_MS: i64 = 2_000;

/// Which fan-outs to write out.
pub enum Which<'a> {
    All,
    Message(&'a str),
    /// Older than `before`, or held by a node whose lease has ended at `now`.
    Stale {
        before: i64,
        now: i64,
    },
}

/// An id the list can hold: one with a tab or a line break (never one of the server's) is
/// written as a row instead, so the list can never be misread.
fn plain(id: &str) -> bool {
    !id.is_empty() && !id.contains(['\t', '\n'])
}

/// Stores the publish's deliveries as one fan-out row if they qualify; false if they must
/// be written as rows.
pub fn insert(conn: &Connection, publish: &Publish) -> StoreResult<bool> {
    let Some(claim) = publish.claim.filter(|_| publish.unclaimed.is_empty()) else { return Ok(false) };
    let [first, ..] = &publish.deliveries[..] else { return Ok(false) };
    let alike = |d: &Delivery| {
        d.order_key.is_none()
            && plain(&d.id)
            && d.endpoint_id.as_deref().is_some_and(plain)
            && (d.msg_id == first.msg_id && d.app_id == first.app_id && d.state == first.state)
            && (d.attempts == first.attempts && d.next_at == first.next_at)
            && (d.first_attempt_at == first.first_attempt_at && d.trigger == first.trigger)
            && d.updated_at == first.updated_at
    };
    if publish.deliveries.len() < MIN_DELIVERIES || !publish.deliveries.iter().all(alike) {
        return Ok(false);
    }
    // A line per delivery: `<id>\t<endpoint id>\n`.
    let mut entries = String::with_capacity(publish.deliveries.len() * 64);
    for d in &publish.deliveries {
        entries.extend([&d.id, "\t", d.endpoint_id.as_deref().unwrap_or_default(), "\n"]);
    }
    conn.prepare_cached(
        "INSERT INTO fanouts (msg_id, app_id, state, attempts, next_at, first_attempt_at, trigger, updated_at, \
         claimed_by, entries) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            first.msg_id,
            first.app_id,
            first.state.code(),
            first.attempts,
            first.next_at,
            first.first_attempt_at,
            first.trigger as i64,
            first.updated_at,
            claim,
            entries
        ])
    })
    .map_err(sql_error)?;
    Ok(true)
}

/// Writes the delivery's row in the state its first recorded attempt left it, if its
/// message's fan-out is still claimed under the record's token; false otherwise (its row
/// was written already, or the claim was lost). The delivery is not looked up in the list:
/// only the node that holds the fan-out records its attempts, with the ids it was given,
/// and reading the list (kilobytes, beyond the row's first page) on every attempt cost
/// more than the rows it saves.
pub fn record_unwritten(conn: &Connection, record: &AttemptRecord) -> StoreResult<bool> {
    let a = &record.attempt;
    let Some(endpoint_id) = a.endpoint_id.as_deref() else { return Ok(false) };
    let written = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO deliveries (id, msg_id, app_id, endpoint_id, state, attempts, next_at, \
             first_attempt_at, trigger, updated_at, claimed_by, order_key, order_seq) \
             SELECT ?1, msg_id, app_id, ?2, ?3, attempts + 1, ?4, COALESCE(first_attempt_at, ?5), 0, ?6, \
                 CASE WHEN ?7 THEN claimed_by END, NULL, NULL \
             FROM fanouts WHERE msg_id = ?8 AND claimed_by = ?9",
        )
        .and_then(|mut s| {
            s.execute(params![
                a.delivery_id,
                endpoint_id,
                record.state.code(),
                record.next_at,
                record.first_attempt_at,
                a.created_at,
                record.keep_claim,
                a.msg_id,
                record.claim
            ])
        })
        .map_err(sql_error)?;
    Ok(written == 1)
}

/// Whether any fan-out is unwritten.
pub fn any(conn: &Connection) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM fanouts LIMIT 1")
        .and_then(|mut s| s.query_row([], |_| Ok(())).optional())
        .map(|found| found.is_some())
        .map_err(sql_error)
}

/// One `fanouts` row as read back.
struct Unwritten {
    template: Delivery,
    claim: Option<i64>,
    entries: String,
}

/// Writes out the chosen fan-outs: a row for every delivery that has none, as the publish
/// would have written it, then the fan-out row is deleted. Returns how many were.
pub fn write_out(conn: &Connection, which: Which) -> StoreResult<usize> {
    // The delivery's columns in `rows::delivery`'s order, then the claim and the list.
    const COLUMNS: &str = "'', msg_id, app_id, NULL, state, attempts, next_at, first_attempt_at, trigger, \
         updated_at, NULL, claimed_by, entries";
    let read = |r: &rusqlite::Row| -> rusqlite::Result<Unwritten> {
        Ok(Unwritten { template: rows::delivery(r)?, claim: r.get(11)?, entries: r.get(12)? })
    };
    let (filter, values): (&str, Vec<rusqlite::types::Value>) = match which {
        Which::All => ("", vec![]),
        Which::Message(id) => ("WHERE msg_id = ?1", vec![id.to_owned().into()]),
        Which::Stale { before, now } => (
            "WHERE updated_at <= ?1 OR claimed_by NOT IN (SELECT token FROM nodes WHERE lease_until >= ?2)",
            vec![before.into(), now.into()],
        ),
    };
    let found = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM fanouts {filter}"))
        .and_then(|mut s| s.query_map(rusqlite::params_from_iter(values), read)?.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql_error)?;
    for fanout in &found {
        for line in fanout.entries.split('\n').filter(|l| !l.is_empty()) {
            let Some((id, endpoint_id)) = line.split_once('\t') else { continue };
            let delivery = Delivery { id: id.into(), endpoint_id: Some(endpoint_id.into()), ..fanout.template.clone() };
            insert_delivery(conn, &delivery, fanout.claim, delivery.state.code(), true)?;
        }
        conn.prepare_cached("DELETE FROM fanouts WHERE msg_id = ?1")
            .and_then(|mut s| s.execute([&fanout.template.msg_id]))
            .map_err(sql_error)?;
    }
    Ok(found.len())
}
