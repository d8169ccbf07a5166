//! `/api/v1/operational-webhook/endpoint`: Svix's operational webhook endpoints, where
//! Hookline sends its own events (see `dispatch/notices.rs`). They are the endpoints of the
//! internal operational application and share the endpoint code; only the admin reaches them.

use super::endpoints::{self, headers_out};
use super::route::{tagged, Route};
use super::{listed, query, views, AppState, JsonBody, ListQuery, PathParams, QueryParams, Shared};
use crate::error::{ApiError, ApiResult};
use crate::wire::*;
use axum::http::StatusCode;
use axum::Json;
use hookline_store::{App, OPERATIONAL_APP_ID};
use std::sync::Arc;

pub fn routes() -> Vec<Route> {
    let (eps, ep) = ("/api/v1/operational-webhook/endpoint", "/api/v1/operational-webhook/endpoint/{endpoint_id}");
    let headers_path = "/api/v1/operational-webhook/endpoint/{endpoint_id}/headers";
    tagged(
        "Webhook Endpoint",
        vec![
            Route::get(eps, list)
                .doc("listOperationalWebhookEndpoints", "List the operational webhook endpoints.")
                .query(&query::PAGE)
                .answers::<ListResponse<OperationalEndpointOut>>(200, "A page of operational webhook endpoints."),
            Route::post(eps, create)
                .doc(
                    "createOperationalWebhookEndpoint",
                    "Create an operational webhook endpoint: Hookline posts its own events to it, signed \
                     with its secret (Standard Webhooks).",
                )
                .body::<OperationalEndpointIn>()
                .answers::<OperationalEndpointOut>(201, "Created."),
            Route::get(ep, read)
                .doc("getOperationalWebhookEndpoint", "Get an operational webhook endpoint by id or uid.")
                .answers::<OperationalEndpointOut>(200, "The endpoint."),
            Route::put(ep, replace)
                .doc(
                    "updateOperationalWebhookEndpoint",
                    "Replace an operational webhook endpoint, or create it with this uid.",
                )
                .body::<OperationalEndpointUpsertIn>()
                .answers::<OperationalEndpointOut>(200, "Replaced.")
                .answers::<OperationalEndpointOut>(201, "Created with the path's key as uid."),
            Route::delete(ep, remove)
                .doc("deleteOperationalWebhookEndpoint", "Delete an operational webhook endpoint.")
                .empty(204, "Deleted."),
            Route::get("/api/v1/operational-webhook/endpoint/{endpoint_id}/secret", secret)
                .doc("getOperationalWebhookEndpointSecret", "The endpoint's current signing secret.")
                .answers::<EndpointSecretOut>(200, "The secret."),
            Route::post("/api/v1/operational-webhook/endpoint/{endpoint_id}/secret/rotate", rotate)
                .doc(
                    "rotateOperationalWebhookEndpointSecret",
                    "Rotate the secret; the old one keeps signing for the grace period (24 h). \
                     Without a key, Hookline generates the new secret.",
                )
                .optional_body::<EndpointSecretRotateIn>()
                .empty(204, "Rotated."),
            Route::get(headers_path, headers)
                .doc("getOperationalWebhookEndpointHeaders", "Custom headers sent with each event.")
                .answers::<EndpointHeadersOut>(200, "The headers (sensitive ones by name only)."),
            Route::put(headers_path, replace_headers)
                .doc("updateOperationalWebhookEndpointHeaders", "Replace the custom headers.")
                .body::<EndpointHeadersIn>()
                .empty(204, "Replaced."),
        ],
    )
}

/// The internal application holding the operational endpoints (made at start).
async fn operational_app(state: &AppState) -> ApiResult<Arc<App>> {
    state.engine.catalog.app(OPERATIONAL_APP_ID).await.map_err(ApiError::from_store("application"))
}

/// Operational endpoints take only operational event types.
fn check_types(types: &Option<Vec<String>>) -> ApiResult<()> {
    let count = types.as_ref().map_or(1, Vec::len);
    if !(1..=OPERATIONAL_EVENT_TYPES.len()).contains(&count) {
        let detail = format!("eventTypes must list 1 to {} operational event types", OPERATIONAL_EVENT_TYPES.len());
        return Err(ApiError::field("eventTypes", detail));
    }
    let unknown = types.iter().flatten().find(|t| !OPERATIONAL_EVENT_TYPES.contains(&t.as_str()));
    match unknown {
        Some(t) => Err(ApiError::field(
            "eventTypes",
            format!("`{t}` is not an operational event type ({})", OPERATIONAL_EVENT_TYPES.join(", ")),
        )),
        None => Ok(()),
    }
}

impl From<OperationalEndpointIn> for EndpointIn {
    fn from(input: OperationalEndpointIn) -> EndpointIn {
        EndpointIn {
            url: input.url,
            description: input.description,
            version: None,
            disabled: input.disabled,
            event_types: input.event_types,
            channels: None,
            throttle_rate: input.throttle_rate,
            uid: input.uid,
            secret: input.secret,
            metadata: input.metadata,
            headers: input.headers,
            signature_scheme: None,
            retry_policy: None,
            ordering: None,
        }
    }
}

async fn list(
    state: Shared,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListResponse<OperationalEndpointOut>>> {
    let endpoints = state
        .store
        .list_endpoints(OPERATIONAL_APP_ID, query.page(false)?)
        .await
        .map_err(ApiError::from_store("endpoint"))?;
    Ok(Json(listed(endpoints, |e| e.id.clone(), views::operational_endpoint)))
}

async fn create(
    state: Shared,
    JsonBody(input): JsonBody<OperationalEndpointIn>,
) -> ApiResult<(StatusCode, Json<OperationalEndpointOut>)> {
    check_types(&input.event_types)?;
    let app = operational_app(&state).await?;
    let created = endpoints::create_endpoint(&state, &app, input.into()).await?;
    Ok((StatusCode::CREATED, Json(views::operational_endpoint(created))))
}

async fn read(state: Shared, PathParams(key): PathParams<String>) -> ApiResult<Json<OperationalEndpointOut>> {
    let app = operational_app(&state).await?;
    Ok(Json(views::operational_endpoint(endpoints::find_in(&state, &app, &key).await?)))
}

/// Svix's upsert. The secret, headers and anything not in the body are kept.
async fn replace(
    state: Shared,
    PathParams(key): PathParams<String>,
    JsonBody(input): JsonBody<OperationalEndpointUpsertIn>,
) -> ApiResult<(StatusCode, Json<OperationalEndpointOut>)> {
    check_types(&input.event_types)?;
    let app = operational_app(&state).await?;
    let full = OperationalEndpointIn {
        url: input.url,
        description: input.description,
        throttle_rate: input.throttle_rate,
        uid: input.uid,
        disabled: input.disabled,
        event_types: input.event_types,
        secret: None,
        metadata: input.metadata,
        headers: None,
    };
    let (status, saved) = endpoints::upsert(&state, &app, &key, full.into()).await?;
    Ok((status, Json(views::operational_endpoint(saved))))
}

async fn remove(state: Shared, PathParams(key): PathParams<String>) -> ApiResult<StatusCode> {
    let app = operational_app(&state).await?;
    endpoints::delete_endpoint(&state, &app, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn secret(state: Shared, PathParams(key): PathParams<String>) -> ApiResult<Json<EndpointSecretOut>> {
    let app = operational_app(&state).await?;
    let e = endpoints::find_in(&state, &app, &key).await?;
    Ok(Json(EndpointSecretOut { key: endpoints::current_secret(&e)? }))
}

async fn rotate(
    state: Shared,
    PathParams(key): PathParams<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<StatusCode> {
    let input = endpoints::rotate_input(&state, &headers, body).await?;
    let app = operational_app(&state).await?;
    endpoints::rotate_secret(&state, &app, &key, input).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn headers(state: Shared, PathParams(key): PathParams<String>) -> ApiResult<Json<EndpointHeadersOut>> {
    let app = operational_app(&state).await?;
    Ok(Json(headers_out(endpoints::find_in(&state, &app, &key).await?.headers)))
}

async fn replace_headers(
    state: Shared,
    PathParams(key): PathParams<String>,
    JsonBody(input): JsonBody<EndpointHeadersIn>,
) -> ApiResult<StatusCode> {
    let app = operational_app(&state).await?;
    endpoints::set_headers(&state, &app, &key, input.headers).await?;
    Ok(StatusCode::NO_CONTENT)
}
