//! Routes without auth: health, Prometheus metrics, the OpenAPI document.

use super::AppState;
use crate::wire::HealthOut;
use axum::routing::{get, MethodRouter};
use axum::Json;
use std::sync::Arc;

pub fn routes() -> Vec<(&'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        ("/api/v1/health", get(|| async { Json(HealthOut { status: "ok" }) })),
        ("/metrics", get(|| async { crate::metrics::handle().render() })),
        ("/api/v1/openapi.json", get(|| async { Json(crate::openapi::document()) })),
    ]
}
