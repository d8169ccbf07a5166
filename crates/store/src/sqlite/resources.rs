//! Applications, event types and endpoints: the configuration a sender manages.

use super::rows;
use super::sql_error;
use crate::query::Query;
use crate::sealed::Sealer;
use crate::*;
use rusqlite::{params, Connection, OptionalExtension};

fn one<T>(result: rusqlite::Result<Option<T>>) -> StoreResult<T> {
    result.map_err(sql_error)?.ok_or(StoreError::NotFound)
}

fn changed(rows: usize) -> StoreResult<()> {
    if rows == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

pub fn insert_app(conn: &Connection, app: &App) -> StoreResult<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO apps ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        rows::APP_COLUMNS
    ))
    .and_then(|mut s| {
        s.execute(params![
            app.id,
            app.uid,
            app.name,
            app.throttle_rate,
            rows::to_json(&app.metadata),
            rows::opt_json(&app.retry_policy),
            app.secret,
            app.created_at,
            app.updated_at,
            app.alert_email,
            rows::to_json(&app.previous_secrets)
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

/// Writes the sealed `app`'s secrets if the stored ones are still `read`'s; false if not.
pub fn set_app_secrets(conn: &Connection, sealer: &Sealer, app: &App, read: &App) -> StoreResult<bool> {
    if !sealer.same_app_secrets(get_app(conn, &app.id)?, read)? {
        return Ok(false);
    }
    let sql = crate::columns::set_app_secrets_sql(|n| format!("?{n}"));
    let previous = rows::to_json(&app.previous_secrets);
    conn.execute(&sql, params![app.id, app.secret, previous, app.updated_at]).map_err(sql_error)?;
    Ok(true)
}

pub fn get_app(conn: &Connection, key: &str) -> StoreResult<App> {
    let sql = format!("SELECT {} FROM apps WHERE id = ?1 OR uid = ?1 ORDER BY id = ?1 DESC LIMIT 1", rows::APP_COLUMNS);
    one(conn.query_row(&sql, [key], rows::app).optional())
}

pub fn list_apps(conn: &Connection, page: &Page) -> StoreResult<Listed<App>> {
    rows::page(conn, Query::apps_shown(), rows::APP_COLUMNS, "apps", page, rows::app)
}

pub fn update_app(conn: &Connection, app: &App) -> StoreResult<()> {
    changed(
        conn.execute(
            "UPDATE apps SET uid = ?2, name = ?3, throttle_rate = ?4, metadata = ?5, retry_policy = ?6, updated_at = ?7, \
             alert_email = ?8 WHERE id = ?1",
            params![
                app.id,
                app.uid,
                app.name,
                app.throttle_rate,
                rows::to_json(&app.metadata),
                rows::opt_json(&app.retry_policy),
                app.updated_at,
                app.alert_email
            ],
        )
        .map_err(sql_error)?,
    )
}

/// Deletes the application and its configuration, and marks it for the walk that deletes
/// the rest (`purge_deleted_app`).
pub fn delete_app(conn: &Connection, id: &str) -> StoreResult<()> {
    changed(conn.execute("DELETE FROM apps WHERE id = ?1", [id]).map_err(sql_error)?)?;
    for table in crate::columns::APP_CONFIG_TABLES {
        conn.execute(&format!("DELETE FROM {table} WHERE app_id = ?1"), [id]).map_err(sql_error)?;
    }
    conn.execute("INSERT OR IGNORE INTO app_deletions (app_id) VALUES (?1)", [id]).map_err(sql_error)?;
    Ok(())
}

/// One step of the walk (`Store::purge_deleted_app`).
pub fn purge_deleted_app(conn: &Connection, app_id: &str, chunk: usize) -> StoreResult<bool> {
    let p: fn(usize) -> String = |i| format!("?{i}");
    let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute(params![app_id, chunk as i64]));
    conn.execute(&crate::columns::app_deletion_step_sql(p), [app_id]).map_err(sql_error)?;
    let mut messages = 0;
    for table in ["deliveries", "attempts", "fanouts", "messages"] {
        messages = run(&crate::columns::delete_app_messages_sql(table, p)).map_err(sql_error)?;
    }
    if messages == chunk || run(&crate::columns::delete_app_stats_sql(p)).map_err(sql_error)? == chunk {
        return Ok(true);
    }
    let left: bool =
        conn.query_row(&crate::columns::app_rows_left_sql(p), [app_id], |r| r.get(0)).map_err(sql_error)?;
    if !left {
        conn.execute("DELETE FROM app_deletions WHERE app_id = ?1", [app_id]).map_err(sql_error)?;
    }
    Ok(left)
}

pub fn insert_event_type(conn: &Connection, t: &EventType) -> StoreResult<()> {
    conn.execute(
        &format!("INSERT INTO event_types ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)", rows::EVENT_TYPE_COLUMNS),
        params![
            t.name,
            t.description,
            t.archived,
            t.deprecated,
            rows::opt_json(&t.schemas),
            t.group_name,
            rows::opt_json(&t.feature_flags),
            t.created_at,
            t.updated_at
        ],
    )
    .map_err(sql_error)?;
    Ok(())
}

pub fn get_event_type(conn: &Connection, name: &str) -> StoreResult<EventType> {
    let sql = format!("SELECT {} FROM event_types WHERE name = ?1", rows::EVENT_TYPE_COLUMNS);
    one(conn.query_row(&sql, [name], rows::event_type).optional())
}

pub fn list_event_types(conn: &Connection, page: &Page, include_archived: bool) -> StoreResult<Listed<EventType>> {
    let query = if include_archived { Query::new() } else { Query::new().and("archived = ?", false) };
    rows::page_by(conn, query, rows::EVENT_TYPE_COLUMNS, "event_types", "name", page, rows::event_type)
}

pub fn update_event_type(conn: &Connection, t: &EventType) -> StoreResult<()> {
    changed(
        conn.execute(
            "UPDATE event_types SET description = ?2, archived = ?3, deprecated = ?4, schemas = ?5, group_name = ?6, \
             feature_flags = ?7, updated_at = ?8 WHERE name = ?1",
            params![
                t.name,
                t.description,
                t.archived,
                t.deprecated,
                rows::opt_json(&t.schemas),
                t.group_name,
                rows::opt_json(&t.feature_flags),
                t.updated_at
            ],
        )
        .map_err(sql_error)?,
    )
}

pub fn delete_event_type(conn: &Connection, name: &str) -> StoreResult<()> {
    changed(conn.execute("DELETE FROM event_types WHERE name = ?1", [name]).map_err(sql_error)?)
}

fn endpoint_values(e: &Endpoint) -> [rusqlite::types::Value; 18] {
    use rusqlite::types::Value;
    let text = |s: &str| Value::Text(s.to_owned());
    let opt = |s: Option<String>| s.map(Value::Text).unwrap_or(Value::Null);
    [
        text(&e.id),
        text(&e.app_id),
        opt(e.uid.clone()),
        text(&e.url),
        text(&e.description),
        Value::Integer(e.disabled as i64),
        opt(rows::opt_json(&e.event_types)),
        opt(rows::opt_json(&e.channels)),
        e.throttle_rate.map(|r| Value::Integer(r as i64)).unwrap_or(Value::Null),
        Value::Text(rows::to_json(&e.metadata)),
        Value::Text(rows::to_json(&e.headers)),
        Value::Text(rows::to_json(&e.secrets)),
        Value::Text(rows::to_json(&e.signature_scheme)),
        opt(rows::opt_json(&e.retry_policy)),
        Value::Integer(e.created_at),
        Value::Integer(e.updated_at),
        e.fail_since.map_or(Value::Null, Value::Integer),
        Value::Integer(e.fifo as i64),
    ]
}

/// How `put_row` writes. An update rewrites the row in place, found by its id (the first
/// column): not `REPLACE`, which would delete another row holding a unique value this one
/// takes (a sibling's uid), where the update must be refused as a conflict.
enum Put {
    Insert,
    Update,
}

/// Writes one whole row; `values` in column order.
fn put_row(
    conn: &Connection,
    put: Put,
    table: &str,
    columns: &str,
    values: &[rusqlite::types::Value],
) -> StoreResult<()> {
    let placeholders = (1..=values.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
    let sql = match put {
        Put::Insert => format!("INSERT INTO {table} ({columns}) VALUES ({placeholders})"),
        Put::Update => format!("UPDATE {table} SET ({columns}) = ({placeholders}) WHERE id = ?1"),
    };
    conn.prepare_cached(&sql)
        .and_then(|mut statement| statement.execute(rusqlite::params_from_iter(values)))
        .map_err(sql_error)
        .and_then(changed)
}

pub fn insert_endpoint(conn: &Connection, e: &Endpoint) -> StoreResult<()> {
    get_app(conn, &e.app_id)?;
    put_row(conn, Put::Insert, "endpoints", rows::ENDPOINT_COLUMNS, &endpoint_values(e))
}

/// Updates the endpoint if it is still as `read` (see `Store::update_endpoint`): its
/// `fail_since` as written, `None` when it changed since.
pub fn update_endpoint(conn: &Connection, e: &Endpoint, read: &Endpoint) -> StoreResult<Option<Option<i64>>> {
    use rusqlite::types::Value;
    let values = endpoint_values(e);
    let mut update: Vec<Value> =
        crate::columns::endpoint_update_params().into_iter().map(|i| values[i].clone()).collect();
    update.extend([Value::Integer(read.updated_at), Value::Integer(read.disabled as i64)]);
    let sql = crate::columns::update_endpoint_sql(|n| format!("?{n}"));
    let written = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_row(rusqlite::params_from_iter(update), |r| r.get::<_, Option<i64>>(0)).optional())
        .map_err(sql_error)?;
    match written {
        Some(fail_since) => Ok(Some(fail_since)),
        None => get_endpoint(conn, &e.app_id, &e.id).map(|_| None),
    }
}

pub fn get_endpoint(conn: &Connection, app_id: &str, key: &str) -> StoreResult<Endpoint> {
    let sql = format!(
        "SELECT {} FROM endpoints WHERE app_id = ?1 AND (id = ?2 OR uid = ?2) ORDER BY id = ?2 DESC LIMIT 1",
        rows::ENDPOINT_COLUMNS
    );
    one(conn.query_row(&sql, [app_id, key], rows::endpoint).optional())
}

pub fn list_endpoints(conn: &Connection, app_id: &str, page: &Page) -> StoreResult<Listed<Endpoint>> {
    let query = Query::new().and("app_id = ?", app_id.to_owned());
    rows::page(conn, query, rows::ENDPOINT_COLUMNS, "endpoints", page, rows::endpoint)
}

pub fn app_endpoints(conn: &Connection, app_id: &str) -> StoreResult<Vec<Endpoint>> {
    let sql = format!("SELECT {} FROM endpoints WHERE app_id = ?1 ORDER BY id", rows::ENDPOINT_COLUMNS);
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let endpoints = statement.query_map([app_id], rows::endpoint).map_err(sql_error)?;
    endpoints.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)
}

pub fn failing_endpoints(conn: &Connection, limit: usize) -> StoreResult<Vec<Endpoint>> {
    let sql = format!(
        "SELECT {} FROM endpoints WHERE fail_since IS NOT NULL AND app_id <> ?1 ORDER BY fail_since, id LIMIT ?2",
        rows::ENDPOINT_COLUMNS
    );
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let endpoints = statement
        .query_map(rusqlite::params![crate::OPERATIONAL_APP_ID, limit as i64], rows::endpoint)
        .map_err(sql_error)?;
    endpoints.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)
}

const SESSION_COLUMNS: &str = "id, link, token_id, app_id, created_at, expires_at";

fn session_row(r: &rusqlite::Row) -> rusqlite::Result<DashboardSession> {
    let id: Vec<u8> = r.get(0)?;
    let id = id.try_into().map_err(|_| {
        let problem = "a dashboard session id is not 32 bytes".into();
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, problem)
    })?;
    Ok(DashboardSession {
        id,
        link: r.get(1)?,
        token_id: r.get(2)?,
        app_id: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
    })
}

pub fn add_session(conn: &Connection, s: &DashboardSession) -> StoreResult<()> {
    let sql = format!("INSERT INTO dashboard_sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
    conn.execute(&sql, rusqlite::params![&s.id[..], s.link, s.token_id, s.app_id, s.created_at, s.expires_at])
        .map_err(sql_error)?;
    Ok(())
}

pub fn session(conn: &Connection, id: &[u8; 32], now: UnixMs) -> StoreResult<Option<DashboardSession>> {
    let sql =
        format!("SELECT {SESSION_COLUMNS} FROM dashboard_sessions WHERE id = ?1 AND NOT link AND expires_at > ?2");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    statement.query_row(rusqlite::params![&id[..], now], session_row).optional().map_err(sql_error)
}

pub fn use_link(conn: &Connection, link_id: &[u8; 32], s: &DashboardSession) -> StoreResult<Option<DashboardSession>> {
    let sql = format!(
        "UPDATE dashboard_sessions SET id = ?2, link = 0, token_id = ?3, created_at = ?4, expires_at = ?5 \
         WHERE id = ?1 AND link AND expires_at > ?4 RETURNING {SESSION_COLUMNS}"
    );
    let params = rusqlite::params![&link_id[..], &s.id[..], s.token_id, s.created_at, s.expires_at];
    conn.query_row(&sql, params, session_row).optional().map_err(sql_error)
}

pub fn delete_endpoint(conn: &Connection, app_id: &str, id: &str) -> StoreResult<()> {
    changed(conn.execute("DELETE FROM endpoints WHERE app_id = ?1 AND id = ?2", [app_id, id]).map_err(sql_error)?)?;
    // Its deliveries held in fan-outs become rows, which the steps after close.
    super::fanout::write_out(conn, super::fanout::Which::All)?;
    Ok(())
}

/// One step of closing a deleted endpoint's open deliveries (they can never be made): those
/// of its next `chunk` deliveries after `after`. Returns where the next step starts, if any.
pub fn close_deliveries_step(
    conn: &Connection,
    endpoint_id: &str,
    after: &str,
    chunk: usize,
) -> StoreResult<Option<String>> {
    let p: fn(usize) -> String = |i| format!("?{i}");
    let end = crate::columns::PAST_EVERY_ID;
    let span = conn
        .prepare_cached(&crate::columns::recover_span_sql(p))
        .and_then(|mut s| {
            s.query_row(params![endpoint_id, "", after, end, chunk as i64], |row| {
                Ok((row.get::<_, Option<String>>(0)?, row.get::<_, i64>(1)?))
            })
        })
        .map_err(sql_error)?;
    let (Some(last), scanned) = span else { return Ok(None) };
    conn.prepare_cached(&crate::columns::close_span_sql(p))
        .and_then(|mut s| s.execute(params![endpoint_id, after, last]))
        .map_err(sql_error)?;
    Ok((scanned as usize == chunk).then_some(last))
}

fn source_values(s: &Source) -> [rusqlite::types::Value; 11] {
    use rusqlite::types::Value;
    [
        Value::Text(s.id.clone()),
        s.uid.clone().map(Value::Text).unwrap_or(Value::Null),
        Value::Text(s.name.clone()),
        Value::Text(s.app_id.clone()),
        Value::Text(rows::to_json(&s.preset)),
        Value::Text(rows::to_json(&s.secrets)),
        rows::opt_json(&s.event_types).map(Value::Text).unwrap_or(Value::Null),
        Value::Text(rows::to_json(&s.config)),
        Value::Integer(s.created_at),
        Value::Integer(s.updated_at),
        s.api_key.clone().map(Value::Text).unwrap_or(Value::Null),
    ]
}

pub fn insert_source(conn: &Connection, source: &Source) -> StoreResult<()> {
    get_app(conn, &source.app_id)?;
    put_row(conn, Put::Insert, "sources", rows::SOURCE_COLUMNS, &source_values(source))
}

pub fn update_source(conn: &Connection, source: &Source) -> StoreResult<()> {
    get_source(conn, &source.id)?;
    get_app(conn, &source.app_id)?;
    put_row(conn, Put::Update, "sources", rows::SOURCE_COLUMNS, &source_values(source))
}

pub fn get_source(conn: &Connection, key: &str) -> StoreResult<Source> {
    let sql =
        format!("SELECT {} FROM sources WHERE id = ?1 OR uid = ?1 ORDER BY id = ?1 DESC LIMIT 1", rows::SOURCE_COLUMNS);
    one(conn.query_row(&sql, [key], rows::source).optional())
}

pub fn list_sources(conn: &Connection, page: &Page) -> StoreResult<Listed<Source>> {
    rows::page(conn, Query::new(), rows::SOURCE_COLUMNS, "sources", page, rows::source)
}

pub fn delete_source(conn: &Connection, id: &str) -> StoreResult<()> {
    changed(conn.execute("DELETE FROM sources WHERE id = ?1", [id]).map_err(sql_error)?)?;
    conn.execute("DELETE FROM inbound_keys WHERE source_id = ?1", [id]).map_err(sql_error)?;
    conn.execute("DELETE FROM reconcile_runs WHERE source_id = ?1", [id]).map_err(sql_error)?;
    Ok(())
}

pub fn save_reconcile_run(conn: &Connection, source_id: &str, started_at: i64, run: &str) -> StoreResult<()> {
    conn.execute(
        "INSERT OR REPLACE INTO reconcile_runs (source_id, started_at, run) VALUES (?1, ?2, ?3)",
        rusqlite::params![source_id, started_at, run],
    )
    .map_err(sql_error)?;
    // The newest runs of a source are kept.
    conn.execute(
        "DELETE FROM reconcile_runs WHERE source_id = ?1 AND started_at < (SELECT min(started_at) FROM \
         (SELECT started_at FROM reconcile_runs WHERE source_id = ?1 ORDER BY started_at DESC LIMIT ?2))",
        rusqlite::params![source_id, crate::RECONCILE_RUNS_KEPT as i64],
    )
    .map_err(sql_error)?;
    Ok(())
}

pub fn reconcile_runs(conn: &Connection, source_id: &str, limit: usize) -> StoreResult<Vec<String>> {
    let mut statement = conn
        .prepare_cached("SELECT run FROM reconcile_runs WHERE source_id = ?1 ORDER BY started_at DESC LIMIT ?2")
        .map_err(sql_error)?;
    let found = statement.query_map(rusqlite::params![source_id, limit as i64], |r| r.get(0)).map_err(sql_error)?;
    found.collect::<rusqlite::Result<Vec<String>>>().map_err(sql_error)
}
