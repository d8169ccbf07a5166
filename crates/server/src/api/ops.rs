//! Routes without auth: health, Prometheus metrics, the OpenAPI document.

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

/// Prometheus metrics: text, not part of the JSON API or its document. Behind a bearer
/// token when `metrics.token` is set (compared in constant time).
pub fn metrics() -> Route {
    Route::get("/metrics", render_metrics).public()
}

async fn render_metrics(State(state): Shared, headers: HeaderMap) -> Result<String, ApiError> {
    if let Some(token) = &state.config.metrics.token {
        let given = bearer(&headers).unwrap_or_default();
        if !bool::from(hash_token(given).ct_eq(&hash_token(token))) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(crate::metrics::handle().render())
}
