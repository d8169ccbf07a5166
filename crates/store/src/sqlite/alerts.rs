//! The alert emails' outbox (see `Store::queue_alert_email`), and the failure digests its
//! summaries come from (see `Store::count_alert_failures`).

use super::sql_error;
use crate::columns;
use crate::*;
use rusqlite::{params, Connection};

const COLUMNS: &str = "id, app_id, about, to_addr, subject, body, tries, not_before";

fn email(row: &rusqlite::Row) -> rusqlite::Result<AlertEmail> {
    Ok(AlertEmail {
        id: row.get(0)?,
        app_id: row.get(1)?,
        about: row.get(2)?,
        to: row.get(3)?,
        subject: row.get(4)?,
        body: row.get(5)?,
        tries: row.get(6)?,
        not_before: row.get(7)?,
    })
}

pub fn queue(conn: &Connection, e: &AlertEmail, app_max: usize, all_max: usize) -> StoreResult<u64> {
    if let Some(about) = &e.about {
        conn.execute(columns::ALERT_EMAIL_REPLACED, params![about, e.id]).map_err(sql_error)?;
    }
    conn.execute(
        &format!(
            "INSERT INTO alert_emails ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING"
        ),
        params![e.id, e.app_id, e.about, e.to, e.subject, e.body, e.tries, e.not_before],
    )
    .map_err(sql_error)?;
    let mut dropped =
        conn.execute(columns::ALERT_EMAILS_OF_APP_OVER, params![e.app_id, app_max as i64]).map_err(sql_error)?;
    dropped += conn.execute(columns::ALERT_EMAILS_OVER, [all_max as i64]).map_err(sql_error)?;
    Ok(dropped as u64)
}

pub fn take(conn: &Connection, now: UnixMs, hold_ms: u64, limit: usize) -> StoreResult<Vec<AlertEmail>> {
    let sql = format!(
        "UPDATE alert_emails SET not_before = ?1 + ?2 WHERE id IN \
         (SELECT id FROM alert_emails WHERE not_before <= ?1 ORDER BY not_before, id LIMIT ?3) RETURNING {COLUMNS}"
    );
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let taken = statement.query_map(params![now, hold_ms as i64, limit as i64], email).map_err(sql_error)?;
    let mut taken = taken.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)?;
    taken.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(taken)
}

pub fn tried(conn: &Connection, id: &str, retry: Option<(u32, UnixMs)>) -> StoreResult<()> {
    match retry {
        None => conn.execute("DELETE FROM alert_emails WHERE id = ?1", [id]),
        Some((tries, at)) => {
            conn.execute("UPDATE alert_emails SET tries = ?2, not_before = ?3 WHERE id = ?1", params![id, tries, at])
        }
    }
    .map(|_| ())
    .map_err(sql_error)
}

fn digest(row: &rusqlite::Row) -> rusqlite::Result<AlertDigest> {
    Ok(AlertDigest {
        endpoint_id: row.get(0)?,
        app_id: row.get(1)?,
        to: row.get(2)?,
        app: row.get(3)?,
        endpoint: row.get(4)?,
        url: row.get(5)?,
        failing: row.get::<_, i64>(6)? as u64,
        exhausted: row.get::<_, i64>(7)? as u64,
        since: row.get(8)?,
        sent_at: row.get(9)?,
    })
}

pub fn count(conn: &Connection, counts: &[AlertDigest]) -> StoreResult<()> {
    let mut statement = conn.prepare_cached(columns::COUNT_ALERT_FAILURES).map_err(sql_error)?;
    for d in counts {
        let (failing, exhausted) = (d.failing as i64, d.exhausted as i64);
        statement
            .execute(params![d.endpoint_id, d.app_id, d.to, d.app, d.endpoint, d.url, failing, exhausted, d.since])
            .map_err(sql_error)?;
    }
    Ok(())
}

/// Digests due taken at most per call; the next call takes the rest.
const DIGESTS_TAKEN_MAX: i64 = 100;

pub fn take_digests(conn: &Connection, rules: &DigestRules) -> StoreResult<DigestsTaken> {
    let (now, gather, window) = (rules.now, rules.gather_ms as i64, rules.digest_ms as i64);
    let due = {
        let mut statement = conn.prepare_cached(&columns::due_digests_sql("max", "")).map_err(sql_error)?;
        let rows = statement.query_map(params![now, gather, window, DIGESTS_TAKEN_MAX], digest).map_err(sql_error)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)?
    };
    let mut taken = DigestsTaken::default();
    for d in &due {
        taken.pushed_out += queue(conn, &(rules.render)(d), rules.app_max, rules.all_max)?;
        conn.execute(columns::RESET_ALERT_DIGEST, params![now, d.endpoint_id]).map_err(sql_error)?;
        taken.queued += 1;
    }
    conn.execute(&columns::forget_quiet_digests_sql(""), params![now, window]).map_err(sql_error)?;
    taken.next_due =
        conn.query_row(&columns::next_digest_sql("max"), params![gather, window], |r| r.get(0)).map_err(sql_error)?;
    Ok(taken)
}
