//! The alert emails' outbox (see `Store::queue_alert_email`).

use super::sql_error;
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
        conn.execute("DELETE FROM alert_emails WHERE about = ?1", [about]).map_err(sql_error)?;
    }
    conn.execute(
        &format!(
            "INSERT INTO alert_emails ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING"
        ),
        params![e.id, e.app_id, e.about, e.to, e.subject, e.body, e.tries, e.not_before],
    )
    .map_err(sql_error)?;
    let mut dropped =
        conn.execute(crate::columns::ALERT_EMAILS_OF_APP_OVER, params![e.app_id, app_max as i64]).map_err(sql_error)?;
    dropped += conn.execute(crate::columns::ALERT_EMAILS_OVER, [all_max as i64]).map_err(sql_error)?;
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
