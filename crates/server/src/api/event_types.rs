//! `/api/v1/event-type`: the catalog of event types merchants subscribe to.

use super::{listed, views, AppState, JsonBody, ListQuery, PathParams, QueryParams, Shared};
use crate::error::{ApiError, ApiResult};
use crate::wire::{EventTypeIn, EventTypeOut, EventTypePatch, ListResponse};
use axum::http::StatusCode;
use axum::routing::{get, MethodRouter};
use axum::Json;
use hookline_store::EventType;
use std::sync::Arc;

pub fn routes() -> Vec<(&'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        ("/api/v1/event-type", get(list).post(create)),
        ("/api/v1/event-type/{event_type_name}", get(read).put(replace).patch(patch).delete(remove)),
    ]
}

/// Event type names: letters, digits, `-`, `_` and `.`, up to 256 (`payment.succeeded`).
fn check_name(name: &str) -> ApiResult<()> {
    let ok =
        !name.is_empty() && name.len() <= 256 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    ok.then_some(())
        .ok_or_else(|| ApiError::field("name", "event type names are 1 to 256 letters, digits, `-`, `_` or `.`"))
}

fn flags(many: Option<Vec<String>>, one: Option<String>) -> Option<Vec<String>> {
    many.or_else(|| one.map(|f| vec![f]))
}

async fn create(state: Shared, JsonBody(input): JsonBody<EventTypeIn>) -> ApiResult<(StatusCode, Json<EventTypeOut>)> {
    check_name(&input.name)?;
    let now = state.now();
    let event_type = EventType {
        name: input.name,
        description: input.description,
        archived: input.archived.unwrap_or(false),
        deprecated: input.deprecated.unwrap_or(false),
        schemas: input.schemas,
        group_name: input.group_name,
        feature_flags: flags(input.feature_flags, input.feature_flag),
        created_at: now,
        updated_at: now,
    };
    check_texts(&event_type)?;
    let created = state.store.create_event_type(event_type).await.map_err(ApiError::from_store("event type"))?;
    Ok((StatusCode::CREATED, Json(views::event_type(created))))
}

async fn list(
    state: Shared,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListResponse<EventTypeOut>>> {
    let page = query.page(false)?;
    let types = state
        .store
        .list_event_types(page, query.include_archived.unwrap_or(false))
        .await
        .map_err(ApiError::from_store("event type"))?;
    Ok(Json(listed(types, |t| t.name.clone(), views::event_type)))
}

async fn find(state: &AppState, name: &str) -> ApiResult<EventType> {
    state.store.get_event_type(name).await.map_err(ApiError::from_store("event type"))
}

async fn read(state: Shared, PathParams(name): PathParams<String>) -> ApiResult<Json<EventTypeOut>> {
    Ok(Json(views::event_type(find(&state, &name).await?)))
}

fn check_texts(t: &EventType) -> ApiResult<()> {
    super::check_text("description", &t.description, 4096)?;
    if let Some(group) = &t.group_name {
        super::check_text("groupName", group, 256)?;
    }
    Ok(())
}

async fn save(state: &AppState, mut event_type: EventType) -> ApiResult<Json<EventTypeOut>> {
    check_texts(&event_type)?;
    event_type.updated_at = state.now();
    let saved = state.store.update_event_type(event_type).await.map_err(ApiError::from_store("event type"))?;
    Ok(Json(views::event_type(saved)))
}

/// PUT takes the full type; the name comes from the path (a body `name` must match it).
async fn replace(
    state: Shared,
    PathParams(name): PathParams<String>,
    JsonBody(input): JsonBody<serde_json::Value>,
) -> ApiResult<(StatusCode, Json<EventTypeOut>)> {
    let mut body = input;
    if let Some(map) = body.as_object_mut() {
        map.entry("name").or_insert_with(|| serde_json::Value::String(name.clone()));
    }
    let input: EventTypeIn = serde_json::from_value(body).map_err(|e| ApiError::field("body", e.to_string()))?;
    if input.name != name {
        return Err(ApiError::field("name", "the body's name must match the path"));
    }
    match find(&state, &name).await {
        Ok(mut existing) => {
            existing.description = input.description;
            existing.archived = input.archived.unwrap_or(false);
            existing.deprecated = input.deprecated.unwrap_or(false);
            existing.schemas = input.schemas;
            existing.group_name = input.group_name;
            existing.feature_flags = flags(input.feature_flags, input.feature_flag);
            Ok((StatusCode::OK, save(&state, existing).await?))
        }
        Err(ApiError::NotFound(_)) => create(state, JsonBody(input)).await,
        Err(e) => Err(e),
    }
}

async fn patch(
    state: Shared,
    PathParams(name): PathParams<String>,
    JsonBody(input): JsonBody<EventTypePatch>,
) -> ApiResult<Json<EventTypeOut>> {
    let mut t = find(&state, &name).await?;
    if let Some(description) = input.description {
        t.description = description;
    }
    if let Some(archived) = input.archived {
        t.archived = archived;
    }
    if let Some(deprecated) = input.deprecated {
        t.deprecated = deprecated;
    }
    if let Some(schemas) = input.schemas {
        t.schemas = schemas;
    }
    if let Some(group) = input.group_name {
        t.group_name = group;
    }
    if let Some(f) = input.feature_flags {
        t.feature_flags = f;
    } else if let Some(f) = input.feature_flag {
        t.feature_flags = f.map(|f| vec![f]);
    }
    save(&state, t).await
}

/// Svix archives on delete unless `expunge=true`; archiving keeps history readable.
async fn remove(
    state: Shared,
    PathParams(name): PathParams<String>,
    QueryParams(query): QueryParams<std::collections::HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let mut t = find(&state, &name).await?;
    if query.get("expunge").map(String::as_str) == Some("true") {
        state.store.delete_event_type(&t.name).await.map_err(ApiError::from_store("event type"))?;
    } else {
        t.archived = true;
        let _ = save(&state, t).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
