//! `/api/v1/app`: applications, one per merchant.

use super::{check_uid, listed, views, AppState, JsonBody, ListQuery, PathParams, QueryParams, Shared};
use crate::error::{ApiError, ApiResult};
use crate::wire::{ApplicationIn, ApplicationOut, ApplicationPatch, EndpointSecretOut, ListResponse};
use axum::http::StatusCode;
use axum::routing::{get, MethodRouter};
use axum::Json;
use hookline_core::id::{has_prefix, prefix};
use hookline_core::signature::{Secret, SECRET_BYTES_GENERATED};
use hookline_store::{App, StoreError};
use std::sync::Arc;

pub fn routes() -> Vec<(&'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        ("/api/v1/app", get(list).post(create)),
        ("/api/v1/app/{app_id}", get(read).put(replace).patch(patch).delete(remove)),
        ("/api/v1/app/{app_id}/secret", get(secret)),
    ]
}

pub fn new_secret() -> Secret {
    Secret::from_key(rand::random::<[u8; SECRET_BYTES_GENERATED]>())
}

fn check(input: &ApplicationIn) -> ApiResult<()> {
    if input.name.trim().is_empty() {
        return Err(ApiError::field("name", "name must not be empty"));
    }
    check_uid(&input.uid)?;
    if let Some(policy) = &input.retry_policy {
        policy.validate().map_err(|e| ApiError::field("retryPolicy", e.to_string()))?;
    }
    Ok(())
}

/// Creates an application from `input`; shared with message creation's inline `application`.
pub async fn create_app(state: &AppState, input: ApplicationIn) -> ApiResult<App> {
    check(&input)?;
    let now = state.now();
    let app = App {
        id: state.new_id(prefix::APP),
        uid: input.uid,
        name: input.name,
        throttle_rate: input.throttle_rate,
        metadata: input.metadata.unwrap_or_default(),
        retry_policy: input.retry_policy,
        secret: new_secret().as_str().to_owned(),
        created_at: now,
        updated_at: now,
    };
    state.store.create_app(app).await.map_err(ApiError::from_store("application"))
}

async fn create(
    state: Shared,
    QueryParams(query): QueryParams<ListQuery>,
    JsonBody(input): JsonBody<ApplicationIn>,
) -> ApiResult<(StatusCode, Json<ApplicationOut>)> {
    if query.get_if_exists == Some(true) {
        if let Some(uid) = &input.uid {
            match state.store.get_app(uid).await {
                Ok(existing) => return Ok((StatusCode::OK, Json(views::app(existing)))),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(ApiError::from_store("application")(e)),
            }
        }
    }
    let app = create_app(&state, input).await?;
    Ok((StatusCode::CREATED, Json(views::app(app))))
}

async fn list(
    state: Shared,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListResponse<ApplicationOut>>> {
    let apps = state.store.list_apps(query.page(false)?).await.map_err(ApiError::from_store("application"))?;
    Ok(Json(listed(apps, |a| a.id.clone(), views::app)))
}

/// Finds an application by id or uid; every app-scoped route starts here.
pub async fn find(state: &AppState, key: &str) -> ApiResult<App> {
    state.store.get_app(key).await.map_err(ApiError::from_store("application"))
}

async fn read(state: Shared, PathParams(app_id): PathParams<String>) -> ApiResult<Json<ApplicationOut>> {
    Ok(Json(views::app(find(&state, &app_id).await?)))
}

async fn save(state: &AppState, app: App) -> ApiResult<Json<ApplicationOut>> {
    let saved = state.store.update_app(app).await.map_err(ApiError::from_store("application"))?;
    state.engine.catalog.invalidate(&saved.id);
    Ok(Json(views::app(saved)))
}

/// PUT is Svix's upsert: an unknown key that is not an app id creates the app with it as uid.
async fn replace(
    state: Shared,
    PathParams(app_id): PathParams<String>,
    JsonBody(mut input): JsonBody<ApplicationIn>,
) -> ApiResult<(StatusCode, Json<ApplicationOut>)> {
    check(&input)?;
    let mut app = match find(&state, &app_id).await {
        Err(ApiError::NotFound(_)) if !has_prefix(&app_id, prefix::APP) => {
            input.uid = Some(app_id);
            return Ok((StatusCode::CREATED, Json(views::app(create_app(&state, input).await?))));
        }
        other => other?,
    };
    app.name = input.name;
    app.uid = input.uid;
    app.throttle_rate = input.throttle_rate;
    app.metadata = input.metadata.unwrap_or_default();
    app.retry_policy = input.retry_policy;
    app.updated_at = state.now();
    Ok((StatusCode::OK, save(&state, app).await?))
}

async fn patch(
    state: Shared,
    PathParams(app_id): PathParams<String>,
    JsonBody(input): JsonBody<ApplicationPatch>,
) -> ApiResult<Json<ApplicationOut>> {
    let mut app = find(&state, &app_id).await?;
    if let Some(name) = input.name {
        app.name = name;
    }
    if let Some(uid) = input.uid {
        app.uid = uid;
    }
    if let Some(rate) = input.throttle_rate {
        app.throttle_rate = rate;
    }
    if let Some(metadata) = input.metadata {
        app.metadata = metadata;
    }
    if let Some(policy) = input.retry_policy {
        app.retry_policy = policy;
    }
    let as_input = ApplicationIn {
        name: app.name.clone(),
        uid: app.uid.clone(),
        throttle_rate: app.throttle_rate,
        metadata: None,
        retry_policy: app.retry_policy.clone(),
    };
    check(&as_input)?;
    app.updated_at = state.now();
    save(&state, app).await
}

async fn remove(state: Shared, PathParams(app_id): PathParams<String>) -> ApiResult<StatusCode> {
    let app = find(&state, &app_id).await?;
    state.store.delete_app(&app.id).await.map_err(ApiError::from_store("application"))?;
    state.engine.catalog.invalidate(&app.id);
    state.engine.catalog.invalidate_sources();
    Ok(StatusCode::NO_CONTENT)
}

/// Hookline: the secret that signs deliveries to per-message callback URLs.
async fn secret(state: Shared, PathParams(app_id): PathParams<String>) -> ApiResult<Json<EndpointSecretOut>> {
    Ok(Json(EndpointSecretOut { key: find(&state, &app_id).await?.secret }))
}
