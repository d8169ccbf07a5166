//! The alert emails' outbox (see `Store::queue_alert_email`), and the failure digests its
//! summaries come from (see `Store::count_alert_failures`).

use super::pg_error;
use super::resources::run;
use crate::columns;
use crate::*;
use deadpool_postgres::GenericClient;

const COLUMNS: &str = "id, app_id, about, to_addr, subject, body, tries, not_before";

fn email(row: &tokio_postgres::Row) -> StoreResult<AlertEmail> {
    let tries: i32 = row.try_get(6).map_err(pg_error)?;
    Ok(AlertEmail {
        id: row.try_get(0).map_err(pg_error)?,
        app_id: row.try_get(1).map_err(pg_error)?,
        about: row.try_get(2).map_err(pg_error)?,
        to: row.try_get(3).map_err(pg_error)?,
        subject: row.try_get(4).map_err(pg_error)?,
        body: row.try_get(5).map_err(pg_error)?,
        tries: tries as u32,
        not_before: row.try_get(7).map_err(pg_error)?,
    })
}

pub async fn queue(c: &impl GenericClient, e: &AlertEmail, app_max: usize, all_max: usize) -> StoreResult<u64> {
    if let Some(about) = &e.about {
        run(c, columns::ALERT_EMAIL_REPLACED, &[about, &e.id]).await?;
    }
    let tries = e.tries as i32;
    run(
        c,
        &format!(
            "INSERT INTO alert_emails ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING"
        ),
        &[&e.id, &e.app_id, &e.about, &e.to, &e.subject, &e.body, &tries, &e.not_before],
    )
    .await?;
    let dropped = run(c, columns::ALERT_EMAILS_OF_APP_OVER, &[&e.app_id, &(app_max as i64)]).await?;
    Ok(dropped + run(c, columns::ALERT_EMAILS_OVER, &[&(all_max as i64)]).await?)
}

/// Takes due emails; another node's take skips those this one holds locked.
pub async fn take(c: &impl GenericClient, now: UnixMs, hold_ms: u64, limit: usize) -> StoreResult<Vec<AlertEmail>> {
    let sql = format!(
        "UPDATE alert_emails SET not_before = $1 + $2 WHERE id IN \
         (SELECT id FROM alert_emails WHERE not_before <= $1 ORDER BY not_before, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING {COLUMNS}"
    );
    let found = c.query(&sql, &[&now, &(hold_ms as i64), &(limit as i64)]).await.map_err(pg_error)?;
    let mut taken = found.iter().map(email).collect::<StoreResult<Vec<_>>>()?;
    taken.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(taken)
}

pub async fn tried(c: &impl GenericClient, id: &str, retry: Option<(u32, UnixMs)>) -> StoreResult<()> {
    match retry {
        None => run(c, "DELETE FROM alert_emails WHERE id = $1", &[&id]).await,
        Some((tries, at)) => {
            run(c, "UPDATE alert_emails SET tries = $2, not_before = $3 WHERE id = $1", &[&id, &(tries as i32), &at])
                .await
        }
    }
    .map(|_| ())
}

fn digest(row: &tokio_postgres::Row) -> StoreResult<AlertDigest> {
    let (failing, exhausted): (i64, i64) = (row.try_get(6).map_err(pg_error)?, row.try_get(7).map_err(pg_error)?);
    Ok(AlertDigest {
        endpoint_id: row.try_get(0).map_err(pg_error)?,
        app_id: row.try_get(1).map_err(pg_error)?,
        to: row.try_get(2).map_err(pg_error)?,
        app: row.try_get(3).map_err(pg_error)?,
        endpoint: row.try_get(4).map_err(pg_error)?,
        url: row.try_get(5).map_err(pg_error)?,
        failing: failing as u64,
        exhausted: exhausted as u64,
        since: row.try_get(8).map_err(pg_error)?,
        sent_at: row.try_get(9).map_err(pg_error)?,
    })
}

/// Adds the counts in endpoint order, so that two nodes' counts lock rows in one order and
/// never deadlock (a take never waits for them: see `take_digests`).
pub async fn count(c: &impl GenericClient, counts: &[AlertDigest]) -> StoreResult<()> {
    let mut ordered: Vec<&AlertDigest> = counts.iter().collect();
    ordered.sort_by(|a, b| a.endpoint_id.cmp(&b.endpoint_id));
    for d in ordered {
        let (failing, exhausted) = (d.failing as i64, d.exhausted as i64);
        run(
            c,
            columns::COUNT_ALERT_FAILURES,
            &[&d.endpoint_id, &d.app_id, &d.to, &d.app, &d.endpoint, &d.url, &failing, &exhausted, &d.since],
        )
        .await?;
    }
    Ok(())
}

/// Digests due taken at most per call; the next call takes the rest.
const DIGESTS_TAKEN_MAX: i64 = 100;

/// How a take locks the digest rows it reads (not the applications it checks).
const LOCK: &str = "FOR UPDATE OF alert_digests SKIP LOCKED";

/// One node takes digests at a time (two takers' emails could push out each other's
/// application's oldest in opposite orders, and deadlock); the others find nothing due now
/// and look again soon.
const DIGESTS_TAKER_LOCK: i64 = 0x686c_6469_6765_7374;

/// Takes the digests due. Nothing here waits for a row a node's counts hold: due rows and
/// quiet ones are locked `SKIP LOCKED` (those are taken next time), so counts (which lock
/// rows in endpoint order) wait for a take and never the other way round. Counts added to a
/// row this take holds wait for it, then count towards the next summary.
pub async fn take_digests(c: &impl GenericClient, rules: &DigestRules) -> StoreResult<DigestsTaken> {
    let (now, gather, window) = (rules.now, rules.gather_ms as i64, rules.digest_ms as i64);
    let alone: bool = c
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&DIGESTS_TAKER_LOCK])
        .await
        .map_err(pg_error)?
        .try_get(0)
        .map_err(pg_error)?;
    if !alone {
        return Ok(DigestsTaken { next_due: Some(now), ..DigestsTaken::default() });
    }
    let sql = columns::due_digests_sql("GREATEST", LOCK);
    let due = c.query(&sql, &[&now, &gather, &window, &DIGESTS_TAKEN_MAX]).await.map_err(pg_error)?;
    let mut taken = DigestsTaken::default();
    for d in due.iter().map(digest) {
        let d = d?;
        taken.pushed_out += queue(c, &(rules.render)(&d), rules.app_max, rules.all_max).await?;
        run(c, columns::RESET_ALERT_DIGEST, &[&now, &d.endpoint_id]).await?;
        taken.queued += 1;
    }
    run(c, &columns::forget_quiet_digests_sql(LOCK), &[&now, &window]).await?;
    let next = c.query_one(&columns::next_digest_sql("GREATEST"), &[&gather, &window]).await.map_err(pg_error)?;
    taken.next_due = next.try_get(0).map_err(pg_error)?;
    Ok(taken)
}
