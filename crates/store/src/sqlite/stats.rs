//! Statistics on SQLite: counters per scope and bucket, added to by upserts, rolled up
//! from minutes to hours and expired in small batches.

use super::sql_error;
use crate::columns::{stat_counter_sums, STAT_COLUMNS, STAT_COUNTERS};
use crate::*;
use rusqlite::{params_from_iter, Connection, Row};

fn upsert_sql() -> String {
    let placeholders = (1..=STAT_COLUMNS.split(',').count()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
    format!(
        "INSERT INTO stats ({STAT_COLUMNS}) VALUES ({placeholders}) \
         ON CONFLICT (scope, width_ms, bucket) DO UPDATE SET {}",
        stat_counter_sums("stats")
    )
}

pub fn add(conn: &Connection, rows: &[StatRow]) -> StoreResult<()> {
    let mut statement = conn.prepare_cached(&upsert_sql()).map_err(sql_error)?;
    for row in rows {
        let mut values: Vec<rusqlite::types::Value> =
            vec![row.scope.clone().into(), row.app_id.clone().into(), row.width_ms.into(), row.bucket.into()];
        values.extend(row.counts.in_column_order().map(|n| rusqlite::types::Value::Integer(n as i64)));
        statement.execute(params_from_iter(values)).map_err(sql_error)?;
    }
    Ok(())
}

pub fn of(conn: &Connection, scope: StatScope<'_>, since: UnixMs, until: UnixMs) -> StoreResult<Vec<StatRow>> {
    let (condition, key) = match scope {
        StatScope::One(id) => ("scope = ?1", id),
        StatScope::EndpointsOf(app_id) => ("app_id = ?1 AND scope LIKE 'ep\\_%' ESCAPE '\\'", app_id),
        // By width first, so the age index serves the range.
        StatScope::Endpoints => (
            "width_ms IN (60000, 3600000) AND app_id <> ?1 AND scope LIKE 'ep\\_%' ESCAPE '\\'",
            crate::OPERATIONAL_APP_ID,
        ),
    };
    let sql =
        format!("SELECT {STAT_COLUMNS} FROM stats WHERE {condition} AND bucket >= ?2 AND bucket < ?3 ORDER BY bucket");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let rows = statement.query_map(rusqlite::params![key, since, until], row).map_err(sql_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)
}

fn row(r: &Row) -> rusqlite::Result<StatRow> {
    let mut counts = [0u64; STAT_COUNTERS];
    for (i, slot) in counts.iter_mut().enumerate() {
        *slot = r.get::<_, i64>(4 + i)?.max(0) as u64;
    }
    Ok(StatRow {
        scope: r.get(0)?,
        app_id: r.get(1)?,
        width_ms: r.get(2)?,
        bucket: r.get(3)?,
        counts: StatCounts::from_column_order(counts),
    })
}

/// Rolls up to `limit` minute rows older than `minutes_before` into their hours, then
/// deletes up to `limit` rows older than `drop_before`. Returns the rows handled.
pub fn roll_up(conn: &Connection, minutes_before: UnixMs, drop_before: UnixMs, limit: usize) -> StoreResult<usize> {
    let picked = "(scope, width_ms, bucket) IN (SELECT scope, width_ms, bucket FROM stats \
                  WHERE width_ms = ?1 AND bucket < ?2 ORDER BY bucket, scope LIMIT ?3)";
    let counters = STAT_COLUMNS.split(',').skip(4).map(str::trim).collect::<Vec<_>>();
    let sums = counters.iter().map(|c| format!("sum({c})")).collect::<Vec<_>>().join(", ");
    let roll = format!(
        "INSERT INTO stats ({STAT_COLUMNS}) SELECT scope, max(app_id), ?4, bucket - bucket % ?4, {sums} \
         FROM stats WHERE {picked} GROUP BY scope, bucket - bucket % ?4 \
         ON CONFLICT (scope, width_ms, bucket) DO UPDATE SET {}",
        stat_counter_sums("stats")
    );
    let args = rusqlite::params![MINUTE_MS, minutes_before, limit as i64, HOUR_MS];
    conn.execute(&roll, args).map_err(sql_error)?;
    let rolled = conn
        .execute(
            &format!("DELETE FROM stats WHERE {picked}"),
            rusqlite::params![MINUTE_MS, minutes_before, limit as i64],
        )
        .map_err(sql_error)?;
    let expired = conn
        .execute(
            "DELETE FROM stats WHERE rowid IN (SELECT rowid FROM stats WHERE bucket < ?1 LIMIT ?2)",
            rusqlite::params![drop_before, limit as i64],
        )
        .map_err(sql_error)?;
    Ok(rolled + expired)
}

/// Deliveries to the endpoint of messages created in `[since, until)`, by state.
pub fn delivery_counts(
    conn: &Connection,
    endpoint_id: &str,
    since: UnixMs,
    until: UnixMs,
) -> StoreResult<Vec<(hookline_core::delivery::DeliveryState, u64)>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT state, count(*) FROM deliveries WHERE endpoint_id = ?1 AND msg_id >= ?2 AND msg_id < ?3 \
             GROUP BY state",
        )
        .map_err(sql_error)?;
    let (from, to) = (retention_cutoff_id(since), retention_cutoff_id(until));
    let rows = statement
        .query_map(rusqlite::params![endpoint_id, from, to], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .map_err(sql_error)?;
    let mut counts = Vec::new();
    for found in rows {
        let (code, n) = found.map_err(sql_error)?;
        if let Some(state) = crate::state_of_code(code) {
            counts.push((state, n.max(0) as u64));
        }
    }
    Ok(counts)
}
