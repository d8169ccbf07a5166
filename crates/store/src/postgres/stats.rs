//! Statistics on PostgreSQL: one upsert statement per flush (`UNNEST` of one array per
//! column), roll-ups from minutes to hours and expiry in small batches.

use super::pg_error;
use crate::columns::{stat_counter_sums, STAT_COLUMNS, STAT_COUNTERS};
use crate::*;
use deadpool_postgres::GenericClient;
use hookline_core::delivery::DeliveryState;
use tokio_postgres::types::ToSql;

pub async fn add(c: &impl GenericClient, rows: &[StatRow]) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let scopes: Vec<&str> = rows.iter().map(|r| r.scope.as_str()).collect();
    let apps: Vec<&str> = rows.iter().map(|r| r.app_id.as_str()).collect();
    let widths: Vec<i64> = rows.iter().map(|r| r.width_ms).collect();
    let buckets: Vec<i64> = rows.iter().map(|r| r.bucket).collect();
    let counters: Vec<Vec<i64>> = (0..STAT_COUNTERS)
        .map(|i| rows.iter().map(|r| r.counts.in_column_order().nth(i).unwrap_or(0) as i64).collect())
        .collect();
    let arrays = (1..=4 + STAT_COUNTERS)
        .map(|i| format!("${i}::{}[]", if i <= 2 { "text" } else { "int8" }))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO stats ({STAT_COLUMNS}) SELECT * FROM UNNEST({arrays}) \
         ON CONFLICT (scope, width_ms, bucket) DO UPDATE SET {}",
        stat_counter_sums("stats")
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&scopes, &apps, &widths, &buckets];
    params.extend(counters.iter().map(|c| c as &(dyn ToSql + Sync)));
    let statement = c.prepare_cached(&sql).await.map_err(pg_error)?;
    c.execute(&statement, &params).await.map_err(pg_error)?;
    Ok(())
}

pub async fn of(
    c: &impl GenericClient,
    scope: StatScope<'_>,
    since: UnixMs,
    until: UnixMs,
) -> StoreResult<Vec<StatRow>> {
    let (condition, key) = match scope {
        StatScope::One(id) => ("scope = $1", id),
        StatScope::EndpointsOf(app_id) => ("app_id = $1 AND scope LIKE 'ep\\_%'", app_id),
        // By width first, so the age index serves the range.
        StatScope::Endpoints => {
            ("width_ms IN (60000, 3600000) AND app_id <> $1 AND scope LIKE 'ep\\_%'", crate::OPERATIONAL_APP_ID)
        }
    };
    let sql =
        format!("SELECT {STAT_COLUMNS} FROM stats WHERE {condition} AND bucket >= $2 AND bucket < $3 ORDER BY bucket");
    let statement = c.prepare_cached(&sql).await.map_err(pg_error)?;
    let found = c.query(&statement, &[&key, &since, &until]).await.map_err(pg_error)?;
    found
        .iter()
        .map(|r| {
            let mut counts = [0u64; STAT_COUNTERS];
            for (i, slot) in counts.iter_mut().enumerate() {
                *slot = r.try_get::<_, i64>(4 + i).map_err(pg_error)?.max(0) as u64;
            }
            Ok(StatRow {
                scope: r.try_get(0).map_err(pg_error)?,
                app_id: r.try_get(1).map_err(pg_error)?,
                width_ms: r.try_get(2).map_err(pg_error)?,
                bucket: r.try_get(3).map_err(pg_error)?,
                counts: StatCounts::from_column_order(counts),
            })
        })
        .collect()
}

/// Rolls up to `limit` minute rows older than `minutes_before` into their hours (the rows
/// are deleted and summed in one statement), then deletes up to `limit` rows older than
/// `drop_before`. Returns the rows handled.
pub async fn roll_up(
    c: &impl GenericClient,
    minutes_before: UnixMs,
    drop_before: UnixMs,
    limit: usize,
) -> StoreResult<usize> {
    let counters = STAT_COLUMNS.split(',').skip(4).map(str::trim).collect::<Vec<_>>();
    let sums = counters.iter().map(|c| format!("sum({c})::int8")).collect::<Vec<_>>().join(", ");
    let roll = format!(
        "WITH picked AS (
            DELETE FROM stats WHERE (scope, width_ms, bucket) IN (
                SELECT scope, width_ms, bucket FROM stats WHERE width_ms = $1 AND bucket < $2
                ORDER BY bucket, scope LIMIT $3)
            RETURNING *),
        summed AS (
            INSERT INTO stats ({STAT_COLUMNS})
            SELECT scope, max(app_id), $4::int8, bucket - bucket % $4, {sums} FROM picked
            GROUP BY scope, bucket - bucket % $4
            ON CONFLICT (scope, width_ms, bucket) DO UPDATE SET {})
        SELECT count(*) FROM picked",
        stat_counter_sums("stats")
    );
    let statement = c.prepare_cached(&roll).await.map_err(pg_error)?;
    let rolled: i64 = c
        .query_one(&statement, &[&MINUTE_MS, &minutes_before, &(limit as i64), &HOUR_MS])
        .await
        .map_err(pg_error)?
        .get(0);
    let expired = c
        .execute(
            "DELETE FROM stats WHERE ctid IN (SELECT ctid FROM stats WHERE bucket < $1 LIMIT $2)",
            &[&drop_before, &(limit as i64)],
        )
        .await
        .map_err(pg_error)?;
    Ok(rolled as usize + expired as usize)
}

pub async fn delivery_counts(
    c: &impl GenericClient,
    endpoint_id: &str,
    since: UnixMs,
    until: UnixMs,
) -> StoreResult<Vec<(DeliveryState, u64)>> {
    let (from, to) = (retention_cutoff_id(since), retention_cutoff_id(until));
    let statement = c
        .prepare_cached(
            "SELECT state, count(*) FROM deliveries WHERE endpoint_id = $1 AND msg_id >= $2 AND msg_id < $3 \
             GROUP BY state",
        )
        .await
        .map_err(pg_error)?;
    let found = c.query(&statement, &[&endpoint_id, &from, &to]).await.map_err(pg_error)?;
    let mut counts = Vec::new();
    for r in &found {
        let (code, n): (i64, i64) = (r.try_get(0).map_err(pg_error)?, r.try_get(1).map_err(pg_error)?);
        if let Some(state) = crate::state_of_code(code) {
            counts.push((state, n.max(0) as u64));
        }
    }
    Ok(counts)
}
