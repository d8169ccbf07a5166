//! The alert emails' outbox (see `Store::queue_alert_email`).

use super::pg_error;
use super::resources::run;
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
        run(c, "DELETE FROM alert_emails WHERE about = $1", &[about]).await?;
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
    let dropped = run(c, crate::columns::ALERT_EMAILS_OF_APP_OVER, &[&e.app_id, &(app_max as i64)]).await?;
    Ok(dropped + run(c, crate::columns::ALERT_EMAILS_OVER, &[&(all_max as i64)]).await?)
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
