//! Mapping between rows and records: JSON columns, optional columns, page clauses.

use super::sql_error;
use crate::*;
use hookline_core::delivery::{DeliveryState, Trigger};
use rusqlite::types::Value;
use rusqlite::Row;
use serde::de::DeserializeOwned;

pub use crate::columns::*;
use crate::query::{self, Dialect, Query};

pub fn from_json<T: DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

pub fn from_opt_json<T: DeserializeOwned>(text: Option<String>) -> rusqlite::Result<Option<T>> {
    text.map(|t| from_json(&t)).transpose()
}

fn state(code: i64) -> rusqlite::Result<DeliveryState> {
    state_of_code(code).ok_or(rusqlite::Error::IntegralValueOutOfRange(0, code))
}

pub fn app(row: &Row) -> rusqlite::Result<App> {
    Ok(App {
        id: row.get(0)?,
        uid: row.get(1)?,
        name: row.get(2)?,
        throttle_rate: row.get(3)?,
        metadata: from_json(&row.get::<_, String>(4)?)?,
        retry_policy: from_opt_json(row.get(5)?)?,
        secret: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
        alert_email: row.get(9)?,
        previous_secrets: from_json(&row.get::<_, String>(10)?)?,
    })
}

pub fn event_type(row: &Row) -> rusqlite::Result<EventType> {
    Ok(EventType {
        name: row.get(0)?,
        description: row.get(1)?,
        archived: row.get(2)?,
        deprecated: row.get(3)?,
        schemas: from_opt_json(row.get(4)?)?,
        group_name: row.get(5)?,
        feature_flags: from_opt_json(row.get(6)?)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
    })
}

pub fn endpoint(row: &Row) -> rusqlite::Result<Endpoint> {
    Ok(Endpoint {
        id: row.get(0)?,
        app_id: row.get(1)?,
        uid: row.get(2)?,
        url: row.get(3)?,
        description: row.get(4)?,
        disabled: row.get(5)?,
        event_types: from_opt_json(row.get(6)?)?,
        channels: from_opt_json(row.get(7)?)?,
        throttle_rate: row.get(8)?,
        metadata: from_json(&row.get::<_, String>(9)?)?,
        headers: from_json(&row.get::<_, String>(10)?)?,
        secrets: from_json(&row.get::<_, String>(11)?)?,
        signature_scheme: from_json(&row.get::<_, String>(12)?)?,
        retry_policy: from_opt_json(row.get(13)?)?,
        created_at: row.get(14)?,
        updated_at: row.get(15)?,
        fail_since: row.get(16)?,
        fifo: row.get(17)?,
    })
}

pub fn message(row: &Row) -> rusqlite::Result<Message> {
    Ok(Message {
        id: row.get(0)?,
        app_id: row.get(1)?,
        event_id: row.get(2)?,
        event_type: row.get(3)?,
        payload: Bytes::from(row.get::<_, Vec<u8>>(4)?),
        channels: from_opt_json(row.get(5)?)?,
        tags: from_opt_json(row.get(6)?)?,
        callback_url: row.get(7)?,
        deliver_at: row.get(8)?,
        source_id: row.get(9)?,
        headers: from_opt_json(row.get(10)?)?,
        retain_until: row.get(11)?,
        created_at: row.get(12)?,
        ordering_key: row.get(13)?,
    })
}

pub fn source(row: &Row) -> rusqlite::Result<Source> {
    Ok(Source {
        id: row.get(0)?,
        uid: row.get(1)?,
        name: row.get(2)?,
        app_id: row.get(3)?,
        preset: from_json(&row.get::<_, String>(4)?)?,
        secrets: from_json(&row.get::<_, String>(5)?)?,
        event_types: from_opt_json(row.get(6)?)?,
        config: from_json(&row.get::<_, String>(7)?)?,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
        api_key: row.get(10)?,
    })
}

pub fn delivery(row: &Row) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        id: row.get(0)?,
        msg_id: row.get(1)?,
        app_id: row.get(2)?,
        endpoint_id: row.get(3)?,
        state: state(row.get(4)?)?,
        attempts: row.get(5)?,
        next_at: row.get(6)?,
        first_attempt_at: row.get(7)?,
        trigger: Trigger::from_code(row.get(8)?),
        updated_at: row.get(9)?,
        order_key: row.get(10)?,
    })
}

pub fn attempt(row: &Row) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        id: row.get(0)?,
        msg_id: row.get(1)?,
        app_id: row.get(2)?,
        delivery_id: row.get(3)?,
        endpoint_id: row.get(4)?,
        url: row.get(5)?,
        status_code: row.get(6)?,
        response: row.get(7)?,
        duration_ms: row.get(8)?,
        error_class: row.get(9)?,
        state: state(row.get(10)?)?,
        trigger: Trigger::from_code(row.get(11)?),
        created_at: row.get(12)?,
    })
}

/// How SQLite spells what the backends do not share.
pub const DIALECT: Dialect = Dialect {
    channel_contains: "EXISTS (SELECT 1 FROM json_each(messages.channels) WHERE value = ?)",
    event_type_in: "event_type IN (SELECT value FROM json_each(?))",
    tag_contains: "EXISTS (SELECT 1 FROM json_each(messages.tags) WHERE value = ?)",
    placeholder: numbered,
};

fn numbered(n: usize) -> String {
    format!("?{n}")
}

fn bind(value: query::Value) -> Value {
    match value {
        query::Value::Text(text) => Value::Text(text),
        query::Value::Int(n) => Value::Integer(n),
        query::Value::Bool(b) => Value::Integer(b.into()),
        query::Value::Texts(texts) => Value::Text(to_json(&texts)),
    }
}

/// A page of `query` over `table`, ordered by id.
pub fn page<T>(
    conn: &rusqlite::Connection,
    query: Query,
    columns: &str,
    table: &str,
    page: &Page,
    map: impl Fn(&Row) -> rusqlite::Result<T>,
) -> StoreResult<Listed<T>> {
    page_by(conn, query, columns, table, "id", page, map)
}

/// A page of `query` over `table`, ordered by `order_column`.
pub fn page_by<T>(
    conn: &rusqlite::Connection,
    query: Query,
    columns: &str,
    table: &str,
    order_column: &str,
    page: &Page,
    map: impl Fn(&Row) -> rusqlite::Result<T>,
) -> StoreResult<Listed<T>> {
    let (sql, values) = query.page_sql(&DIALECT, columns, table, order_column, page);
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let items = statement
        .query_map(rusqlite::params_from_iter(values.into_iter().map(bind)), map)
        .map_err(sql_error)?
        .collect::<rusqlite::Result<Vec<T>>>()
        .map_err(sql_error)?;
    Ok(crate::query::listed(items, page))
}
