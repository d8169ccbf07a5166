//! Routes outside the API's token check: health, the OpenAPI document, and Prometheus
//! metrics (which check a token of their own).

use super::route::{tagged, Route};
use super::{bearer, hash_token, Shared};
use crate::error::ApiError;
use crate::wire::HealthOut;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use std::time::Duration;
use subtle::ConstantTimeEq;

pub fn routes() -> Vec<Route> {
    tagged(
        "Health",
        vec![
            Route::get("/api/v1/health", health)
                .doc(
                    "health",
                    "Answers 200 once the server is ready and while its store answers (a round trip to where \
                     writes go, at most once a second), 503 while it does not: a node cut off from its \
                     database leaves the load balancer's pool.",
                )
                .public()
                .answers::<HealthOut>(200, "Ready."),
            Route::get("/api/v1/openapi.json", || async { Json(crate::openapi::document().clone()) })
                .doc("openapi", "This document.")
                .public()
                .answers::<serde_json::Value>(200, "The OpenAPI document."),
        ],
    )
}

/// How long a health check's answer from the store is reused: a flood of unauthenticated
/// checks costs the store one round trip a second.
const HEALTH_KEPT: Duration = Duration::from_secs(1);

/// How long a health check waits for the store.
const HEALTH_WAIT: Duration = Duration::from_secs(2);

async fn health(State(state): Shared) -> Result<Json<HealthOut>, ApiError> {
    // Held across the round trip: checks arriving meanwhile take its answer.
    let mut last = state.health.lock().await;
    let fresh = last.filter(|(at, _)| at.elapsed() < HEALTH_KEPT);
    let up = match fresh {
        Some((_, up)) => up,
        None => {
            let answered = tokio::time::timeout(HEALTH_WAIT, state.store.ping()).await;
            let up = matches!(answered, Ok(Ok(())));
            if !up {
                tracing::warn!(answer = ?answered.map_err(|_| "timed out"), "health check: the store does not answer");
            }
            *last = Some((tokio::time::Instant::now(), up));
            up
        }
    };
    match up {
        true => Ok(Json(HealthOut { status: "ok" })),
        false => Err(ApiError::Unavailable),
    }
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
