//! Ordering lanes: what waits behind what at an endpoint, and skipping a delivery so the
//! deliveries behind it go ahead.

use super::endpoints::find as find_endpoint;
use super::messages::find_message;
use super::route::{tagged, QueryParam, Route};
use super::{PathParams, QueryParams, Shared};
use crate::error::{ApiError, ApiResult};
use crate::wire::*;
use axum::Json;
use hookline_core::delivery::DeliveryState;
use hookline_store::StoreError;
use serde::Deserialize;

/// The most lanes one answer lists.
const LANES_MAX: usize = 100;

pub fn routes() -> Vec<Route> {
    tagged(
        "Ordering",
        vec![
            Route::get("/api/v1/app/{app_id}/endpoint/{endpoint_id}/ordering", lanes)
                .doc(
                    "listOrderingLanes",
                    "The endpoint's ordering lanes with deliveries waiting, most waiting first (at most 100), or \
                     the one lane `key`: the delivery they wait for and how many wait.",
                )
                .query(&[KEY])
                .answers::<OrderingOut>(200, "The lanes."),
            Route::post("/api/v1/app/{app_id}/msg/{msg_id}/endpoint/{endpoint_id}/skip", skip)
                .doc(
                    "skipDelivery",
                    "Skip the message's delivery to the endpoint: it is not attempted (again) unless a recover \
                     sends it, and the next delivery of its ordering lane goes ahead. 409 if it is already done.",
                )
                .answers::<DeliveryStatusOut>(200, "Skipped."),
        ],
    )
}

const KEY: QueryParam = QueryParam::string("key", "Only this ordering key's lane (`\"\"` for a FIFO endpoint's).");

#[derive(Debug, Default, Deserialize)]
pub struct LanesQuery {
    key: Option<String>,
}

async fn lanes(
    state: Shared,
    PathParams((app_key, endpoint_key)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<LanesQuery>,
) -> ApiResult<Json<OrderingOut>> {
    let endpoint = find_endpoint(&state, &app_key, &endpoint_key).await?;
    let lanes = state
        .store
        .ordering_lanes(&endpoint.id, query.key.as_deref(), LANES_MAX)
        .await
        .map_err(ApiError::from_store("endpoint"))?;
    let data = lanes
        .into_iter()
        .map(|lane| OrderingLaneOut {
            key: lane.key,
            head: lane.head.map(|d| OrderingHeadOut {
                msg_id: d.msg_id,
                status: d.state.code(),
                status_text: d.state.text(),
                attempts: d.attempts,
                next_attempt: d.next_at.map(timestamp),
            }),
            waiting: lane.waiting,
        })
        .collect();
    Ok(Json(OrderingOut { data }))
}

async fn skip(
    state: Shared,
    PathParams((app_key, msg_id, endpoint_key)): PathParams<(String, String, String)>,
) -> ApiResult<Json<DeliveryStatusOut>> {
    let (app, message) = find_message(&state, &app_key, &msg_id).await?;
    let endpoint = find_endpoint(&state, &app.id, &endpoint_key).await?;
    let delivery =
        state.store.skip_delivery(&app.id, &message.id, &endpoint.id, state.now()).await.map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound("delivery"),
            other => ApiError::from_store("delivery")(other),
        })?;
    if delivery.state != DeliveryState::Skipped {
        return Err(ApiError::Conflict(format!("the delivery is already done ({})", delivery.state.text())));
    }
    state.engine.wake();
    Ok(Json(DeliveryStatusOut { status: delivery.state.code(), status_text: delivery.state.text() }))
}
