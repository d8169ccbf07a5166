//! `/api/v1/event-type`: the catalog of event types merchants subscribe to.

use super::route::{tagged, Route};
use super::{listed, query, views, AppState, JsonBody, ListQuery, PathParams, QueryParams, Shared, Text};
use crate::error::{ApiError, ApiResult};
use crate::wire::{EventTypeIn, EventTypeOut, EventTypePatch, EventTypeUpdate, ListResponse};
use axum::http::StatusCode;
use axum::Json;
use hookline_store::EventType;
use serde::Deserialize;

pub fn routes() -> Vec<Route> {
    let (types, one) = ("/api/v1/event-type", "/api/v1/event-type/{event_type_name}");
    tagged(
        "Event type",
        vec![
            Route::get(types, list)
                .doc("listEventTypes", "List event types (archived ones with `include_archived=true`).")
                .query(&[query::LIMIT, query::ITERATOR, query::ORDER, query::INCLUDE_ARCHIVED])
                .answers::<ListResponse<EventTypeOut>>(200, "A page of event types."),
            Route::post(types, create)
                .doc("createEventType", "Create an event type; creating an archived one's name restores it.")
                .body::<EventTypeIn>()
                .answers::<EventTypeOut>(201, "Created (or restored from the archive)."),
            Route::get(one, read)
                .doc("getEventType", "Get an event type, archived or not (`archived` says which).")
                .answers::<EventTypeOut>(200, "The event type."),
            Route::put(one, replace)
                .doc("upsertEventType", "Replace an event type, or create it with the path's name.")
                .body::<EventTypeUpdate>()
                .answers::<EventTypeOut>(200, "Replaced.")
                .answers::<EventTypeOut>(201, "Created."),
            Route::patch(one, patch)
                .doc("patchEventType", "Change some fields of an event type.")
                .body::<EventTypePatch>()
                .answers::<EventTypeOut>(200, "The changed event type."),
            Route::delete(one, remove)
                .doc(
                    "deleteEventType",
                    "Archive an event type, as Svix does: it stays readable with `archived: true`, \
                     leaves the list, and comes back by create, PUT or PATCH `archived: false`. \
                     `expunge=true` deletes it for good.",
                )
                .query(&[query::EXPUNGE])
                .empty(204, "Archived (or, with `expunge=true`, deleted)."),
        ],
    )
}

fn flags(many: Option<Vec<String>>, one: Option<String>) -> Option<Vec<String>> {
    many.or_else(|| one.map(|f| vec![f]))
}

/// Creates an event type. A name that is archived is restored with the new fields, as Svix
/// does; a name in use is a 409.
async fn create(state: Shared, JsonBody(input): JsonBody<EventTypeIn>) -> ApiResult<(StatusCode, Json<EventTypeOut>)> {
    super::check_name("name", &input.name)?;
    let now = state.now();
    let name = input.name.clone();
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
    match state.store.create_event_type(event_type.clone()).await {
        Ok(created) => Ok((StatusCode::CREATED, Json(views::event_type(created)))),
        Err(hookline_store::StoreError::Conflict(_)) => match find(&state, &name).await? {
            archived if archived.archived => {
                let restored = EventType { created_at: archived.created_at, ..event_type };
                Ok((StatusCode::CREATED, save(&state, restored).await?))
            }
            _ => Err(ApiError::Conflict("an event type with this name already exists".into())),
        },
        Err(e) => Err(ApiError::from_store("event type")(e)),
    }
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
    super::check_text("description", &t.description, Text::Prose, 0, crate::wire::DESCRIPTION_CHARS_MAX)?;
    if let Some(group) = &t.group_name {
        super::check_text("groupName", group, Text::Prose, 0, crate::wire::NAME_CHARS_MAX)?;
    }
    Ok(())
}

async fn save(state: &AppState, mut event_type: EventType) -> ApiResult<Json<EventTypeOut>> {
    check_texts(&event_type)?;
    event_type.updated_at = state.now();
    let saved = state.store.update_event_type(event_type).await.map_err(ApiError::from_store("event type"))?;
    Ok(Json(views::event_type(saved)))
}

/// PUT takes every field but the name, which is the path's (Svix's `EventTypeUpdate`).
async fn replace(
    state: Shared,
    PathParams(name): PathParams<String>,
    JsonBody(update): JsonBody<EventTypeUpdate>,
) -> ApiResult<(StatusCode, Json<EventTypeOut>)> {
    let input = EventTypeIn {
        name: name.clone(),
        description: update.description,
        archived: update.archived,
        deprecated: update.deprecated,
        schemas: update.schemas,
        group_name: update.group_name,
        feature_flags: update.feature_flags,
        feature_flag: update.feature_flag,
    };
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

#[derive(Deserialize)]
struct RemoveQuery {
    expunge: Option<bool>,
}

/// Svix archives on delete unless `expunge=true`; archiving keeps history readable.
async fn remove(
    state: Shared,
    PathParams(name): PathParams<String>,
    QueryParams(query): QueryParams<RemoveQuery>,
) -> ApiResult<StatusCode> {
    let mut t = find(&state, &name).await?;
    if query.expunge == Some(true) {
        state.store.delete_event_type(&t.name).await.map_err(ApiError::from_store("event type"))?;
    } else {
        t.archived = true;
        let _ = save(&state, t).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
