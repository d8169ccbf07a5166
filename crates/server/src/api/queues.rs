//! `GET /api/v1/ingest-queue`: the queue consumers this node runs (configured in
//! `[ingest]`, read-only here), with their counts and lag.

use super::route::{tagged, Route};
use super::Shared;
use crate::ingest::queue::ConsumerOut;
use crate::wire::ListResponse;
use axum::extract::State;
use axum::Json;

pub fn routes() -> Vec<Route> {
    tagged(
        "Ingest queue",
        vec![Route::get("/api/v1/ingest-queue", list)
            .doc(
                "listIngestQueues",
                "The queue consumers this node runs (configured in the `[ingest]` section of the config file), \
                 with what each stored, refused and left to retry, and its lag.",
            )
            .answers::<ListResponse<ConsumerOut>>(200, "Every consumer (one page).")],
    )
}

async fn list(State(state): Shared) -> Json<ListResponse<ConsumerOut>> {
    let data = state.queues.iter().map(|q| q.view()).collect();
    Json(ListResponse { data, iterator: None, prev_iterator: None, done: true })
}
