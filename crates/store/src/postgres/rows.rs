//! Mapping between PostgreSQL rows and records, and the page query builder. JSON columns
//! are text holding the same JSON as SQLite's, so both backends share one encoding.

use super::pg_error;
use crate::*;
use deadpool_postgres::GenericClient;
use hookline_core::delivery::{DeliveryState, Trigger};
use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

pub use crate::columns::*;
use crate::query::{self, Dialect, Query};

fn from_json<T: DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("a stored JSON column: {e}")))
}

fn from_opt_json<T: DeserializeOwned>(text: Option<String>) -> StoreResult<Option<T>> {
    text.map(|t| from_json(&t)).transpose()
}

/// Reads column `index`, mapping a type mismatch to `Corrupt`.
fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> StoreResult<T> {
    row.try_get(index).map_err(|e| StoreError::Corrupt(format!("column {index}: {e}")))
}

fn state(code: i64) -> StoreResult<DeliveryState> {
    state_of_code(code).ok_or_else(|| StoreError::Corrupt(format!("delivery state {code}")))
}

fn small<T: TryFrom<i64>>(value: i64) -> StoreResult<T> {
    T::try_from(value).map_err(|_| StoreError::Corrupt(format!("{value} is out of range")))
}

pub fn app(row: &Row) -> StoreResult<App> {
    Ok(App {
        id: get(row, 0)?,
        uid: get(row, 1)?,
        name: get(row, 2)?,
        throttle_rate: get::<Option<i64>>(row, 3)?.map(small).transpose()?,
        metadata: from_json(&get::<String>(row, 4)?)?,
        retry_policy: from_opt_json(get(row, 5)?)?,
        secret: get(row, 6)?,
        created_at: get(row, 7)?,
        updated_at: get(row, 8)?,
        alert_email: get(row, 9)?,
        previous_secrets: from_json(&get::<String>(row, 10)?)?,
    })
}

pub fn event_type(row: &Row) -> StoreResult<EventType> {
    Ok(EventType {
        name: get(row, 0)?,
        description: get(row, 1)?,
        archived: get(row, 2)?,
        deprecated: get(row, 3)?,
        schemas: from_opt_json(get(row, 4)?)?,
        group_name: get(row, 5)?,
        feature_flags: from_opt_json(get(row, 6)?)?,
        created_at: get(row, 7)?,
        updated_at: get(row, 8)?,
    })
}

pub fn endpoint(row: &Row) -> StoreResult<Endpoint> {
    Ok(Endpoint {
        id: get(row, 0)?,
        app_id: get(row, 1)?,
        uid: get(row, 2)?,
        url: get(row, 3)?,
        description: get(row, 4)?,
        disabled: get(row, 5)?,
        event_types: from_opt_json(get(row, 6)?)?,
        channels: from_opt_json(get(row, 7)?)?,
        throttle_rate: get::<Option<i64>>(row, 8)?.map(small).transpose()?,
        metadata: from_json(&get::<String>(row, 9)?)?,
        headers: from_json(&get::<String>(row, 10)?)?,
        secrets: from_json(&get::<String>(row, 11)?)?,
        signature_scheme: from_json(&get::<String>(row, 12)?)?,
        retry_policy: from_opt_json(get(row, 13)?)?,
        created_at: get(row, 14)?,
        updated_at: get(row, 15)?,
        fail_since: get(row, 16)?,
        fifo: get(row, 17)?,
    })
}

pub fn message(row: &Row) -> StoreResult<Message> {
    Ok(Message {
        id: get(row, 0)?,
        app_id: get(row, 1)?,
        event_id: get(row, 2)?,
        event_type: get(row, 3)?,
        payload: Bytes::from(get::<Vec<u8>>(row, 4)?),
        channels: from_opt_json(get(row, 5)?)?,
        tags: from_opt_json(get(row, 6)?)?,
        callback_url: get(row, 7)?,
        deliver_at: get(row, 8)?,
        source_id: get(row, 9)?,
        headers: from_opt_json(get(row, 10)?)?,
        retain_until: get(row, 11)?,
        created_at: get(row, 12)?,
        ordering_key: get(row, 13)?,
    })
}

pub fn source(row: &Row) -> StoreResult<Source> {
    Ok(Source {
        id: get(row, 0)?,
        uid: get(row, 1)?,
        name: get(row, 2)?,
        app_id: get(row, 3)?,
        preset: from_json(&get::<String>(row, 4)?)?,
        secrets: from_json(&get::<String>(row, 5)?)?,
        event_types: from_opt_json(get(row, 6)?)?,
        config: from_json(&get::<String>(row, 7)?)?,
        created_at: get(row, 8)?,
        updated_at: get(row, 9)?,
        api_key: get(row, 10)?,
    })
}

pub fn delivery(row: &Row) -> StoreResult<Delivery> {
    Ok(Delivery {
        id: get(row, 0)?,
        msg_id: get(row, 1)?,
        app_id: get(row, 2)?,
        endpoint_id: get(row, 3)?,
        state: state(get(row, 4)?)?,
        attempts: small(get(row, 5)?)?,
        next_at: get(row, 6)?,
        first_attempt_at: get(row, 7)?,
        trigger: Trigger::from_code(get(row, 8)?),
        updated_at: get(row, 9)?,
        order_key: get(row, 10)?,
    })
}

pub fn attempt(row: &Row) -> StoreResult<Attempt> {
    Ok(Attempt {
        id: get(row, 0)?,
        msg_id: get(row, 1)?,
        app_id: get(row, 2)?,
        delivery_id: get(row, 3)?,
        endpoint_id: get(row, 4)?,
        url: get(row, 5)?,
        status_code: small(get(row, 6)?)?,
        response: get(row, 7)?,
        duration_ms: small(get(row, 8)?)?,
        error_class: get(row, 9)?,
        state: state(get(row, 10)?)?,
        trigger: Trigger::from_code(get(row, 11)?),
        created_at: get(row, 12)?,
    })
}

pub fn all<T>(rows: &[Row], map: fn(&Row) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(map).collect()
}

/// How PostgreSQL spells what the backends do not share.
pub const DIALECT: Dialect = Dialect {
    channel_contains: "jsonb_exists(channels::jsonb, ?)",
    event_type_in: "event_type = ANY(?)",
    tag_contains: "jsonb_exists(tags::jsonb, ?)",
    placeholder: numbered,
};

fn numbered(n: usize) -> String {
    format!("${n}")
}

fn bind(value: query::Value) -> Box<dyn ToSql + Sync + Send> {
    match value {
        query::Value::Text(text) => Box::new(text),
        query::Value::Int(n) => Box::new(n),
        query::Value::Bool(b) => Box::new(b),
        query::Value::Texts(texts) => Box::new(texts),
    }
}

/// A page of `query` over `table`, ordered by id.
pub async fn page<T>(
    client: &impl GenericClient,
    query: Query,
    columns: &str,
    table: &str,
    page: &Page,
    map: fn(&Row) -> StoreResult<T>,
) -> StoreResult<Listed<T>> {
    page_by(client, query, columns, table, "id", page, map).await
}

/// A page of `query` over `table`, ordered by `order_column`.
pub async fn page_by<T>(
    client: &impl GenericClient,
    query: Query,
    columns: &str,
    table: &str,
    order_column: &str,
    page: &Page,
    map: fn(&Row) -> StoreResult<T>,
) -> StoreResult<Listed<T>> {
    let (sql, values) = query.page_sql(&DIALECT, columns, table, order_column, page);
    let bound: Vec<Box<dyn ToSql + Sync + Send>> = values.into_iter().map(bind).collect();
    let params: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
    let found = client.query(&sql, &params).await.map_err(pg_error)?;
    Ok(query::listed(all(&found, map)?, page))
}
