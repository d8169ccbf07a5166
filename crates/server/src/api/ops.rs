//! Routes without auth: health, Prometheus metrics, the OpenAPI document.

use super::route::{tagged, Route};
use crate::wire::HealthOut;
use axum::Json;

pub fn routes() -> Vec<Route> {
    tagged(
        "Health",
        vec![
            Route::get("/api/v1/health", || async { Json(HealthOut { status: "ok" }) })
                .doc("health", "Answers 200 once the server is ready.")
                .public()
                .answers::<HealthOut>(200, "Ready."),
            Route::get("/api/v1/openapi.json", || async { Json(crate::openapi::document()) })
                .doc("openapi", "This document.")
                .public()
                .answers::<serde_json::Value>(200, "The OpenAPI document."),
        ],
    )
}

/// Prometheus metrics: text, not part of the JSON API or its document.
pub fn metrics() -> Route {
    Route::get("/metrics", || async { crate::metrics::handle().render() }).public()
}
