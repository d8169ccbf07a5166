//! Applications, event types, endpoints, sources, tokens and idempotent answers: the
//! configuration, on PostgreSQL.

use super::pg_error;
use super::rows;
use crate::query::Query;
use crate::sealed::Sealer;
use crate::*;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// `$1, $2, …, $n`.
pub fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

fn changed(rows: u64) -> StoreResult<()> {
    if rows == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

/// Deletes by key: a key PostgreSQL cannot hold (a NUL) names nothing stored.
async fn delete_by(c: &impl GenericClient, sql: &str, params: &Params<'_>) -> StoreResult<()> {
    match run(c, sql, params).await {
        Err(StoreError::Invalid(_)) => Err(StoreError::NotFound),
        other => changed(other?),
    }
}

/// Runs `sql` and maps its single row, or `NotFound`.
pub async fn one<T>(
    c: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
    map: fn(&tokio_postgres::Row) -> StoreResult<T>,
) -> StoreResult<T> {
    let statement = c.prepare_cached(sql).await.map_err(pg_error)?;
    match c.query_opt(&statement, params).await.map_err(pg_error) {
        Ok(Some(row)) => map(&row),
        // A key PostgreSQL cannot even hold (a NUL) names nothing stored.
        Ok(None) | Err(StoreError::Invalid(_)) => Err(StoreError::NotFound),
        Err(e) => Err(e),
    }
}

/// Runs a write on a cached statement; returns the rows it changed.
pub async fn run(c: &impl GenericClient, sql: &str, params: &Params<'_>) -> StoreResult<u64> {
    let statement = c.prepare_cached(sql).await.map_err(pg_error)?;
    c.execute(&statement, params).await.map_err(pg_error)
}

fn insert_sql(table: &str, columns: &str) -> String {
    format!("INSERT INTO {table} ({columns}) VALUES ({})", placeholders(columns.split(',').count()))
}

pub async fn insert_app(c: &impl GenericClient, app: &App) -> StoreResult<()> {
    let throttle = app.throttle_rate.map(i64::from);
    let (metadata, policy) = (rows::to_json(&app.metadata), rows::opt_json(&app.retry_policy));
    let sql = insert_sql("apps", rows::APP_COLUMNS);
    run(
        c,
        &sql,
        &[
            &app.id,
            &app.uid,
            &app.name,
            &throttle,
            &metadata,
            &policy,
            &app.secret,
            &app.created_at,
            &app.updated_at,
            &app.alert_email,
            &rows::to_json(&app.previous_secrets),
        ],
    )
    .await
    .map(|_| ())
}

/// Writes the sealed `app`'s secrets if the stored ones are still `read`'s (the row locked
/// meanwhile, inside the caller's transaction); false if not.
pub async fn set_app_secrets(c: &impl GenericClient, sealer: &Sealer, app: &App, read: &App) -> StoreResult<bool> {
    let locked = format!("SELECT {} FROM apps WHERE id = $1 FOR UPDATE", rows::APP_COLUMNS);
    if !sealer.same_app_secrets(one(c, &locked, &[&app.id], rows::app).await?, read)? {
        return Ok(false);
    }
    let sql = crate::columns::set_app_secrets_sql(|n| format!("${n}"));
    let previous = rows::to_json(&app.previous_secrets);
    run(c, &sql, &[&app.id, &app.secret, &previous, &app.updated_at]).await?;
    Ok(true)
}

pub async fn get_app(c: &impl GenericClient, key: &str) -> StoreResult<App> {
    let sql = format!("SELECT {} FROM apps WHERE id = $1 OR uid = $1 ORDER BY id = $1 DESC LIMIT 1", rows::APP_COLUMNS);
    one(c, &sql, &[&key], rows::app).await
}

pub async fn list_apps(c: &impl GenericClient, page: &Page) -> StoreResult<Listed<App>> {
    rows::page(c, Query::apps_shown(), rows::APP_COLUMNS, "apps", page, rows::app).await
}

pub async fn update_app(c: &impl GenericClient, app: &App) -> StoreResult<()> {
    let throttle = app.throttle_rate.map(i64::from);
    let (metadata, policy) = (rows::to_json(&app.metadata), rows::opt_json(&app.retry_policy));
    let sql = "UPDATE apps SET uid = $2, name = $3, throttle_rate = $4, metadata = $5, retry_policy = $6, \
               updated_at = $7, alert_email = $8 WHERE id = $1";
    let params: &Params =
        &[&app.id, &app.uid, &app.name, &throttle, &metadata, &policy, &app.updated_at, &app.alert_email];
    changed(run(c, sql, params).await?)
}

/// Deletes the application and its configuration, and marks it for the walk that deletes
/// the rest (`purge_deleted_app`).
pub async fn delete_app(c: &impl GenericClient, id: &str) -> StoreResult<()> {
    delete_by(c, "DELETE FROM apps WHERE id = $1", &[&id]).await?;
    for table in crate::columns::APP_CONFIG_TABLES {
        run(c, &format!("DELETE FROM {table} WHERE app_id = $1"), &[&id]).await?;
    }
    run(c, "INSERT INTO app_deletions (app_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&id]).await?;
    Ok(())
}

/// One step of the walk (`Store::purge_deleted_app`): the messages go with their deliveries
/// and attempts in one statement (its parts share one snapshot).
pub async fn purge_deleted_app(c: &impl GenericClient, app_id: &str, chunk: usize) -> StoreResult<bool> {
    let p: fn(usize) -> String = |i| format!("${i}");
    let chunk = chunk as i64;
    run(c, &crate::columns::app_deletion_step_sql(p), &[&app_id]).await?;
    let messages = "WITH gone AS (DELETE FROM messages WHERE id IN \
                    (SELECT id FROM messages WHERE app_id = $1 ORDER BY id LIMIT $2) RETURNING id), \
                    d AS (DELETE FROM deliveries WHERE msg_id IN (SELECT id FROM gone)), \
                    a AS (DELETE FROM attempts WHERE msg_id IN (SELECT id FROM gone)) \
                    SELECT count(*) FROM gone";
    let gone: i64 = one(c, messages, &[&app_id, &chunk], |r| r.try_get(0).map_err(pg_error)).await?;
    if gone == chunk || run(c, &crate::columns::delete_app_stats_sql(p), &[&app_id, &chunk]).await? == chunk as u64 {
        return Ok(true);
    }
    let sql = crate::columns::app_rows_left_sql(p);
    let left: bool = one(c, &sql, &[&app_id], |r| r.try_get(0).map_err(pg_error)).await?;
    if !left {
        run(c, "DELETE FROM app_deletions WHERE app_id = $1", &[&app_id]).await?;
    }
    Ok(left)
}

pub async fn insert_event_type(c: &impl GenericClient, t: &EventType) -> StoreResult<()> {
    let (schemas, flags) = (rows::opt_json(&t.schemas), rows::opt_json(&t.feature_flags));
    let sql = insert_sql("event_types", rows::EVENT_TYPE_COLUMNS);
    let params: [&(dyn ToSql + Sync); 9] = [
        &t.name,
        &t.description,
        &t.archived,
        &t.deprecated,
        &schemas,
        &t.group_name,
        &flags,
        &t.created_at,
        &t.updated_at,
    ];
    run(c, &sql, &params).await.map(|_| ())
}

pub async fn get_event_type(c: &impl GenericClient, name: &str) -> StoreResult<EventType> {
    let sql = format!("SELECT {} FROM event_types WHERE name = $1", rows::EVENT_TYPE_COLUMNS);
    one(c, &sql, &[&name], rows::event_type).await
}

pub async fn list_event_types(
    c: &impl GenericClient,
    page: &Page,
    include_archived: bool,
) -> StoreResult<Listed<EventType>> {
    let query = if include_archived { Query::new() } else { Query::new().and("archived = ?", false) };
    rows::page_by(c, query, rows::EVENT_TYPE_COLUMNS, "event_types", "name", page, rows::event_type).await
}

pub async fn update_event_type(c: &impl GenericClient, t: &EventType) -> StoreResult<()> {
    let (schemas, flags) = (rows::opt_json(&t.schemas), rows::opt_json(&t.feature_flags));
    let sql = "UPDATE event_types SET description = $2, archived = $3, deprecated = $4, schemas = $5, \
               group_name = $6, feature_flags = $7, updated_at = $8 WHERE name = $1";
    let params: [&(dyn ToSql + Sync); 8] =
        [&t.name, &t.description, &t.archived, &t.deprecated, &schemas, &t.group_name, &flags, &t.updated_at];
    changed(run(c, sql, &params).await?)
}

pub async fn delete_event_type(c: &impl GenericClient, name: &str) -> StoreResult<()> {
    delete_by(c, "DELETE FROM event_types WHERE name = $1", &[&name]).await
}

/// Writes a new endpoint row, or (with the endpoint as `read`) updates the stored one if
/// it is still as read: `Some(fail_since)` as written, `None` when it changed since.
async fn put_endpoint(
    c: &impl GenericClient,
    e: &Endpoint,
    read: Option<&Endpoint>,
) -> StoreResult<Option<Option<i64>>> {
    let throttle = e.throttle_rate.map(i64::from);
    let (event_types, channels) = (rows::opt_json(&e.event_types), rows::opt_json(&e.channels));
    let (metadata, headers, secrets) =
        (rows::to_json(&e.metadata), rows::to_json(&e.headers), rows::to_json(&e.secrets));
    let (scheme, policy) = (rows::to_json(&e.signature_scheme), rows::opt_json(&e.retry_policy));
    let params: [&(dyn ToSql + Sync); 18] = [
        &e.id,
        &e.app_id,
        &e.uid,
        &e.url,
        &e.description,
        &e.disabled,
        &event_types,
        &channels,
        &throttle,
        &metadata,
        &headers,
        &secrets,
        &scheme,
        &policy,
        &e.created_at,
        &e.updated_at,
        &e.fail_since,
        &e.fifo,
    ];
    let Some(read) = read else {
        run(c, &insert_sql("endpoints", rows::ENDPOINT_COLUMNS), &params).await?;
        return Ok(Some(e.fail_since));
    };
    let mut update: Vec<&(dyn ToSql + Sync)> =
        crate::columns::endpoint_update_params().into_iter().map(|i| params[i]).collect();
    update.extend([&read.updated_at as &(dyn ToSql + Sync), &read.disabled]);
    let sql = crate::columns::update_endpoint_sql(|n| format!("${n}"));
    match one(c, &sql, &update, |row| row.try_get::<_, Option<i64>>(0).map_err(pg_error)).await {
        Ok(fail_since) => Ok(Some(fail_since)),
        Err(StoreError::NotFound) => get_endpoint(c, &e.app_id, &e.id).await.map(|_| None),
        Err(e) => Err(e),
    }
}

/// `a = excluded.a, b = excluded.b, …` for every column but the first (the key).
fn excluded(columns: &str) -> String {
    columns
        .split(',')
        .skip(1)
        .map(str::trim)
        .map(|col| format!("{col} = excluded.{col}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn insert_endpoint(c: &impl GenericClient, e: &Endpoint) -> StoreResult<()> {
    get_app(c, &e.app_id).await?;
    put_endpoint(c, e, None).await.map(|_| ())
}

/// Updates the endpoint if it is still as `read` (see `Store::update_endpoint`): its
/// `fail_since` as written, `None` when it changed since.
pub async fn update_endpoint(
    c: &impl GenericClient,
    e: &Endpoint,
    read: &Endpoint,
) -> StoreResult<Option<Option<i64>>> {
    put_endpoint(c, e, Some(read)).await
}

pub async fn get_endpoint(c: &impl GenericClient, app_id: &str, key: &str) -> StoreResult<Endpoint> {
    let sql = format!(
        "SELECT {} FROM endpoints WHERE app_id = $1 AND (id = $2 OR uid = $2) ORDER BY id = $2 DESC LIMIT 1",
        rows::ENDPOINT_COLUMNS
    );
    one(c, &sql, &[&app_id, &key], rows::endpoint).await
}

pub async fn list_endpoints(c: &impl GenericClient, app_id: &str, page: &Page) -> StoreResult<Listed<Endpoint>> {
    let query = Query::new().and("app_id = ?", app_id.to_owned());
    rows::page(c, query, rows::ENDPOINT_COLUMNS, "endpoints", page, rows::endpoint).await
}

pub async fn app_endpoints(c: &impl GenericClient, app_id: &str) -> StoreResult<Vec<Endpoint>> {
    let sql = format!("SELECT {} FROM endpoints WHERE app_id = $1 ORDER BY id", rows::ENDPOINT_COLUMNS);
    let statement = c.prepare_cached(&sql).await.map_err(pg_error)?;
    rows::all(&c.query(&statement, &[&app_id]).await.map_err(pg_error)?, rows::endpoint)
}

pub async fn failing_endpoints(c: &impl GenericClient, limit: usize) -> StoreResult<Vec<Endpoint>> {
    let sql = format!(
        "SELECT {} FROM endpoints WHERE fail_since IS NOT NULL AND app_id <> $1 ORDER BY fail_since, id LIMIT $2",
        rows::ENDPOINT_COLUMNS
    );
    let statement = c.prepare_cached(&sql).await.map_err(pg_error)?;
    let found = c.query(&statement, &[&crate::OPERATIONAL_APP_ID, &(limit as i64)]).await.map_err(pg_error)?;
    rows::all(&found, rows::endpoint)
}

const SESSION_COLUMNS: &str = "id, link, token_id, app_id, created_at, expires_at";

fn session_row(r: &tokio_postgres::Row) -> StoreResult<DashboardSession> {
    let id: Vec<u8> = r.try_get(0).map_err(pg_error)?;
    Ok(DashboardSession {
        id: id.try_into().map_err(|_| StoreError::Corrupt("a dashboard session id is not 32 bytes".into()))?,
        link: r.try_get(1).map_err(pg_error)?,
        token_id: r.try_get(2).map_err(pg_error)?,
        app_id: r.try_get(3).map_err(pg_error)?,
        created_at: r.try_get(4).map_err(pg_error)?,
        expires_at: r.try_get(5).map_err(pg_error)?,
    })
}

pub async fn add_session(c: &impl GenericClient, s: &DashboardSession) -> StoreResult<()> {
    let sql = format!("INSERT INTO dashboard_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)");
    run(c, &sql, &[&&s.id[..], &s.link, &s.token_id, &s.app_id, &s.created_at, &s.expires_at]).await.map(|_| ())
}

pub async fn session(c: &impl GenericClient, id: &[u8; 32], now: UnixMs) -> StoreResult<Option<DashboardSession>> {
    let sql =
        format!("SELECT {SESSION_COLUMNS} FROM dashboard_sessions WHERE id = $1 AND NOT link AND expires_at > $2");
    let statement = c.prepare_cached(&sql).await.map_err(pg_error)?;
    let found = c.query_opt(&statement, &[&&id[..], &now]).await.map_err(pg_error)?;
    found.as_ref().map(session_row).transpose()
}

/// Turns a link into a session in place (see `Store::use_link`): an `expire_sessions`
/// waiting on the row checks it again as the session it became.
pub async fn use_link(
    c: &impl GenericClient,
    link_id: &[u8; 32],
    s: &DashboardSession,
) -> StoreResult<Option<DashboardSession>> {
    let sql = format!(
        "UPDATE dashboard_sessions SET id = $2, link = false, token_id = $3, created_at = $4, expires_at = $5 \
         WHERE id = $1 AND link AND expires_at > $4 RETURNING {SESSION_COLUMNS}"
    );
    let statement = c.prepare_cached(&sql).await.map_err(pg_error)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&&link_id[..], &&s.id[..], &s.token_id, &s.created_at, &s.expires_at];
    let used = c.query_opt(&statement, &params).await.map_err(pg_error)?;
    used.as_ref().map(session_row).transpose()
}

pub async fn delete_endpoint(c: &impl GenericClient, app_id: &str, id: &str) -> StoreResult<()> {
    delete_by(c, "DELETE FROM endpoints WHERE app_id = $1 AND id = $2", &[&app_id, &id]).await
}

/// One step of closing a deleted endpoint's open deliveries (see SQLite's).
pub async fn close_deliveries_step(
    c: &impl GenericClient,
    endpoint_id: &str,
    after: &str,
    chunk: usize,
) -> StoreResult<Option<String>> {
    let p: fn(usize) -> String = |i| format!("${i}");
    let (span, end, chunk) = (crate::columns::recover_span_sql(p), crate::columns::PAST_EVERY_ID, chunk as i64);
    let row = c.query_one(&span, &[&endpoint_id, &"", &after, &end, &chunk]).await.map_err(pg_error)?;
    let last: Option<String> = row.try_get(0).map_err(pg_error)?;
    let scanned: i64 = row.try_get(1).map_err(pg_error)?;
    let Some(last) = last else { return Ok(None) };
    run(c, &crate::columns::close_span_sql(p), &[&endpoint_id, &after, &last]).await?;
    Ok((scanned == chunk).then_some(last))
}

async fn put_source(c: &impl GenericClient, s: &Source, upsert: bool) -> StoreResult<()> {
    let (preset, secrets) = (rows::to_json(&s.preset), rows::to_json(&s.secrets));
    let (event_types, config) = (rows::opt_json(&s.event_types), rows::to_json(&s.config));
    let mut sql = insert_sql("sources", rows::SOURCE_COLUMNS);
    if upsert {
        sql.push_str(&format!(" ON CONFLICT (id) DO UPDATE SET {}", excluded(rows::SOURCE_COLUMNS)));
    }
    let params: [&(dyn ToSql + Sync); 11] = [
        &s.id,
        &s.uid,
        &s.name,
        &s.app_id,
        &preset,
        &secrets,
        &event_types,
        &config,
        &s.created_at,
        &s.updated_at,
        &s.api_key,
    ];
    run(c, &sql, &params).await.map(|_| ())
}

pub async fn insert_source(c: &impl GenericClient, source: &Source) -> StoreResult<()> {
    get_app(c, &source.app_id).await?;
    put_source(c, source, false).await
}

pub async fn update_source(c: &impl GenericClient, source: &Source) -> StoreResult<()> {
    get_source(c, &source.id).await?;
    get_app(c, &source.app_id).await?;
    put_source(c, source, true).await
}

pub async fn get_source(c: &impl GenericClient, key: &str) -> StoreResult<Source> {
    let sql =
        format!("SELECT {} FROM sources WHERE id = $1 OR uid = $1 ORDER BY id = $1 DESC LIMIT 1", rows::SOURCE_COLUMNS);
    one(c, &sql, &[&key], rows::source).await
}

pub async fn list_sources(c: &impl GenericClient, page: &Page) -> StoreResult<Listed<Source>> {
    rows::page(c, Query::new(), rows::SOURCE_COLUMNS, "sources", page, rows::source).await
}

pub async fn delete_source(c: &impl GenericClient, id: &str) -> StoreResult<()> {
    delete_by(c, "DELETE FROM sources WHERE id = $1", &[&id]).await?;
    run(c, "DELETE FROM inbound_keys WHERE source_id = $1", &[&id]).await?;
    run(c, "DELETE FROM reconcile_runs WHERE source_id = $1", &[&id]).await.map(|_| ())
}

pub async fn save_reconcile_run(
    c: &impl GenericClient,
    source_id: &str,
    started_at: i64,
    run_json: &str,
) -> StoreResult<()> {
    let sql = "INSERT INTO reconcile_runs (source_id, started_at, run) VALUES ($1, $2, $3) \
               ON CONFLICT (source_id, started_at) DO UPDATE SET run = excluded.run";
    run(c, sql, &[&source_id, &started_at, &run_json]).await?;
    // The newest runs of a source are kept.
    let sql = "DELETE FROM reconcile_runs WHERE source_id = $1 AND started_at < (SELECT min(started_at) FROM \
               (SELECT started_at FROM reconcile_runs WHERE source_id = $1 ORDER BY started_at DESC LIMIT $2) newest)";
    run(c, sql, &[&source_id, &(crate::RECONCILE_RUNS_KEPT as i64)]).await.map(|_| ())
}

pub async fn reconcile_runs(c: &impl GenericClient, source_id: &str, limit: usize) -> StoreResult<Vec<String>> {
    let sql = "SELECT run FROM reconcile_runs WHERE source_id = $1 ORDER BY started_at DESC LIMIT $2";
    let found = c.query(sql, &[&source_id, &(limit as i64)]).await.map_err(pg_error)?;
    found.iter().map(|r| r.try_get(0).map_err(pg_error)).collect()
}

pub async fn idempotent_response(
    c: &impl GenericClient,
    key: &str,
    since: i64,
) -> StoreResult<Option<IdempotentResponse>> {
    let sql = crate::columns::idempotent_answer_sql(|n| format!("${n}"));
    match one(c, &sql, &[&key, &since], idempotency_row).await {
        Ok(answer) => Ok(Some(answer)),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

fn idempotency_row(r: &tokio_postgres::Row) -> StoreResult<IdempotentResponse> {
    Ok(IdempotentResponse {
        key: r.try_get(0).map_err(pg_error)?,
        status: u16::try_from(r.try_get::<_, i64>(1).map_err(pg_error)?)
            .map_err(|_| StoreError::Corrupt("an idempotent status is out of range".into()))?,
        body: Bytes::from(r.try_get::<_, Vec<u8>>(2).map_err(pg_error)?),
        created_at: r.try_get(3).map_err(pg_error)?,
        fingerprint: r.try_get::<_, Vec<u8>>(4).map_err(pg_error)?.try_into().unwrap_or_default(),
    })
}

pub async fn reserve_idempotency_key(
    c: &impl GenericClient,
    key: &str,
    fingerprint: &[u8; 32],
    token: &[u8; 16],
    now: UnixMs,
    since: UnixMs,
    stale_before: UnixMs,
) -> StoreResult<Reservation> {
    let (fingerprint, token): (&[u8], &[u8]) = (&fingerprint[..], &token[..]);
    let sql = crate::columns::reserve_idempotency_sql(|n| format!("${n}"));
    let held_sql = crate::columns::held_idempotency_sql(|n| format!("${n}"));
    // What held the key may be gone before the second statement reads it (released,
    // purged): then the key is taken again, not assumed free (another request may be
    // taking it meanwhile).
    for _ in 0..3 {
        let taken = c.query_opt(&sql, &[&key, &fingerprint, &now, &since, &stale_before, &token]).await;
        if taken.map_err(pg_error)?.is_some() {
            return Ok(Reservation::Taken);
        }
        match one(c, &held_sql, &[&key], idempotency_row).await {
            Err(StoreError::NotFound) => continue,
            held => return held.map(Reservation::of_held),
        }
    }
    Err(StoreError::Unavailable("an Idempotency-Key kept changing hands; try again".into()))
}

pub async fn release_idempotency_key(c: &impl GenericClient, key: &str, token: &[u8; 16]) -> StoreResult<()> {
    let sql = crate::columns::release_idempotency_sql(|n| format!("${n}"));
    run(c, &sql, &[&key, &&token[..]]).await.map(|_| ())
}

pub async fn save_idempotent_response(c: &impl GenericClient, answer: &IdempotentResponse) -> StoreResult<()> {
    let sql = "INSERT INTO idempotency (key, status, body, created_at, fingerprint) VALUES ($1, $2, $3, $4, $5) \
               ON CONFLICT (key) DO UPDATE SET status = excluded.status, body = excluded.body, \
               created_at = excluded.created_at, fingerprint = excluded.fingerprint";
    let status = i64::from(answer.status);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&answer.key, &status, &&answer.body[..], &answer.created_at, &&answer.fingerprint[..]];
    run(c, sql, &params).await.map(|_| ())
}

pub async fn tokens(c: &impl GenericClient) -> StoreResult<Vec<Token>> {
    let found = c.query("SELECT id, hash, app_id, created_at FROM tokens ORDER BY id", &[]).await.map_err(pg_error)?;
    found
        .iter()
        .map(|r| {
            let hash: Vec<u8> = r.try_get(1).map_err(pg_error)?;
            let hash = hash.try_into().map_err(|_| StoreError::Corrupt("a token hash is not 32 bytes".into()))?;
            Ok(Token {
                id: r.try_get(0).map_err(pg_error)?,
                hash,
                app_id: r.try_get(2).map_err(pg_error)?,
                created_at: r.try_get(3).map_err(pg_error)?,
            })
        })
        .collect()
}

pub async fn add_token(c: &impl GenericClient, token: &Token) -> StoreResult<()> {
    let sql = "INSERT INTO tokens (id, hash, app_id, created_at) VALUES ($1, $2, $3, $4)";
    run(c, sql, &[&token.id, &&token.hash[..], &token.app_id, &token.created_at]).await.map(|_| ())
}

pub async fn delete_token(c: &impl GenericClient, id: &str) -> StoreResult<()> {
    delete_by(c, "DELETE FROM tokens WHERE id = $1", &[&id]).await
}
