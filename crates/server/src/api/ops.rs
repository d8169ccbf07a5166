//! Routes outside the API's token check: health, the OpenAPI document, and Prometheus
//! metrics (which check a token of their own).

use super::route::{tagged, Route};
use super::{bearer, hash_token, Shared};
use crate::error::ApiError;
use crate::wire::HealthOut;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use subtle::ConstantTimeEq;

pub fn routes() -> Vec<Route> {
    tagged(
        "Health",
        vec![
            Route::get("/api/v1/health", || async { Json(HealthOut { status: "ok" }) })
                .doc("health", "Answers 200 once the server is ready.")
                .public()
                .answers::<HealthOut>(200, "Ready."),
            Route::get("/api/v1/openapi.json", || async { Json(crate::openapi::document().clone()) })
                .doc("openapi", "This document.")
                .public()
                .answers::<serde_json::Value>(200, "The OpenAPI document."),
        ],
    )
}

/// Prometheus metrics: text, not part of the JSON API or its document. Their labels name
/// every application's endpoints and sources, so they answer only a bearer token: an admin
/// token, or `metrics.token` when set (a scraper's, which reaches nothing else); both
/// compared in constant time.
pub fn metrics() -> Route {
    Route::get("/metrics", render_metrics).public()
}

async fn render_metrics(State(state): Shared, headers: HeaderMap) -> Result<String, ApiError> {
    let given = bearer(&headers).unwrap_or_default();
    // An empty `metrics.token` is no token (it would match a request without one).
    let scraper = (state.config.metrics.token.as_deref())
        .filter(|t| !t.is_empty())
        .is_some_and(|t| bool::from(hash_token(given).ct_eq(&hash_token(t))));
    let admin = matches!(super::principal_of(&state, given), Some(super::Principal::Admin { .. }));
    if !(scraper || admin) {
        return Err(ApiError::Unauthorized);
    }
    let mut text = crate::metrics::handle().render();
    state.engine.series.render(&mut text);
    state.engine.source_series.render(&mut text);
    Ok(text)
}
