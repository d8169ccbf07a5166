//! `/api/v1/app/{app_id}/msg` and the attempt log: publishing (one commit for the message
//! and all its deliveries), listing, resending.

use super::apps::{create_app, find as find_app};
use super::endpoints::{find as find_endpoint, queue_needs_admin};
use super::route::{tagged, Route};
use super::{
    listed, query, views, AnswerStored, AppState, IdempotencyKey, JsonBody, ListQuery, PathParams, Principal,
    QueryParams, Shared,
};
use crate::error::{ApiError, ApiResult};
use crate::ingest;
use crate::metrics as m;
use crate::wire::*;
use axum::extract::Extension;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hookline_core::id::{has_prefix, prefix};
use hookline_store::{App, AttemptScope, Bytes, Message, PublishOutcome, StoreError, OPERATIONAL_APP_ID};
use std::sync::Arc;

pub fn routes() -> Vec<Route> {
    let msgs = "/api/v1/app/{app_id}/msg";
    let listing = [&query::PAGE[..], &query::FILTER[..]].concat();
    let messages = vec![
        Route::get(msgs, list)
            .doc("listMessages", "List messages, newest first.")
            .query(&listing)
            .query(&[query::WITH_CONTENT])
            .answers::<ListResponse<MessageOut>>(200, "A page of messages."),
        Route::post(msgs, publish)
            .doc("createMessage", "Publish a message; answered once it and its deliveries are durable.")
            .query(&[query::WITH_CONTENT])
            .body::<MessageIn>()
            .answers::<MessageOut>(202, "Stored with its deliveries, synced to disk.")
            .answers::<MessageOut>(200, "A message with this `eventId` exists: that message; nothing new is sent."),
        Route::get("/api/v1/app/{app_id}/msg/{msg_id}", read)
            .doc("getMessage", "Get a message by id or eventId.")
            .query(&[query::WITH_CONTENT])
            .answers::<MessageOut>(200, "The message."),
    ];
    let attempts = vec![
        Route::get("/api/v1/app/{app_id}/msg/{msg_id}/attempt/{attempt_id}", read_attempt)
            .doc("getAttempt", "Get one attempt.")
            .answers::<MessageAttemptOut>(200, "The attempt."),
        Route::get("/api/v1/app/{app_id}/msg/{msg_id}/endpoint", destinations)
            .doc("listAttemptedDestinations", "Where a message went, with each delivery's status.")
            .query(&query::PAGE)
            .answers::<ListResponse<MessageEndpointOut>>(200, "A page of destinations."),
        Route::post("/api/v1/app/{app_id}/msg/{msg_id}/endpoint/{endpoint_id}/resend", resend)
            .doc(
                "resendMessage",
                "Send a message to an endpoint again now; an ordered delivery waits its turn in its lane. \
                 409 for an ordered delivery still open in its lane (it is sent in its turn; skip it instead).",
            )
            .answers::<EmptyOut>(202, "Due again at once."),
        Route::get("/api/v1/app/{app_id}/attempt/msg/{msg_id}", attempts_of_message)
            .doc("listAttemptsByMessage", "A message's attempts.")
            .query(&listing)
            .query(&[query::ENDPOINT_ID, query::STATUS_CODE_CLASS, query::ATTEMPT_CONTENT])
            .answers::<ListResponse<MessageAttemptOut>>(200, "A page of attempts."),
        Route::get("/api/v1/app/{app_id}/attempt/endpoint/{endpoint_id}", attempts_of_endpoint)
            .doc("listAttemptsByEndpoint", "An endpoint's attempts.")
            .query(&listing)
            .query(&[query::STATUS_CODE_CLASS, query::ATTEMPT_CONTENT])
            .answers::<ListResponse<MessageAttemptOut>>(200, "A page of attempts."),
        Route::get("/api/v1/app/{app_id}/endpoint/{endpoint_id}/msg", messages_of_endpoint)
            .doc("listAttemptedMessages", "What an endpoint was sent, with each delivery's status.")
            .query(&listing)
            .query(&[query::WITH_CONTENT])
            .answers::<ListResponse<EndpointMessageOut>>(200, "A page of messages."),
    ];
    tagged("Message", messages).into_iter().chain(tagged("Attempt", attempts)).collect()
}

/// The application a message goes to, created on the fly when the body carries one.
async fn target_app(state: &AppState, app_key: &str, inline: Option<ApplicationIn>) -> ApiResult<Arc<App>> {
    let cached = state.engine.catalog.app(app_key).await.map_err(ApiError::from_store("application"));
    match (cached, inline) {
        // The internal operational application is not one (as for every app-scoped route):
        // a message published there would reach the operators' endpoints as a forged alert.
        (Ok(app), _) if app.id == OPERATIONAL_APP_ID => Err(ApiError::NotFound("application")),
        (Ok(app), _) => Ok(app),
        // A key in the form of an application id names the application Hookline gave it to,
        // as for PUT: none has it, and none is created with it as uid.
        (Err(ApiError::NotFound(_)), Some(mut inline)) if !has_prefix(app_key, prefix::APP) => {
            // Created under the path's key, so the next publish there finds it: another uid
            // would leave the path naming nothing (and its key unchecked).
            if inline.uid.as_deref().is_some_and(|uid| uid != app_key) {
                return Err(ApiError::field(
                    "application.uid",
                    "an application created on publish takes the uid in the path; leave application.uid out or make it the same",
                ));
            }
            inline.uid = Some(app_key.to_owned());
            match create_app(state, inline).await {
                Err(ApiError::Conflict(_)) => find_app(state, app_key).await.map(Arc::new),
                other => other.map(Arc::new),
            }
        }
        (Err(e), _) => Err(e),
    }
}

async fn publish(
    state: Shared,
    PathParams(app_key): PathParams<String>,
    QueryParams(query): QueryParams<ListQuery>,
    idempotency: Option<Extension<IdempotencyKey>>,
    Extension(principal): Extension<Principal>,
    JsonBody(mut input): JsonBody<MessageIn>,
) -> ApiResult<Response> {
    if input.app.is_some() {
        return Err(ApiError::field("app", "app is for queue messages; here the application is in the path"));
    }
    queue_needs_admin(&principal, input.callback_url.as_deref())?;
    ingest::check(&input)?;
    let now = state.now();
    // The whole body is checked before an application is created on the fly: a publish
    // refused for its `deliverAt` or `callbackUrl` left the application it named behind.
    let inline = input.application.take();
    let mut message = ingest::message(input, String::new(), &state.addresses, now)?;
    let app = target_app(&state, &app_key, inline).await?;
    message.app_id = app.id.clone();
    let message = Arc::new(message);
    let with_content = query.with_content.unwrap_or(true);
    let body =
        serde_json::to_vec(&views::published((*message).clone(), with_content)).map_err(|_| ApiError::Internal)?;
    let answer = idempotency.map(|Extension(key)| key.answer(StatusCode::ACCEPTED, Bytes::from(body.clone()), now));
    match ingest::submit(&state.engine, message, answer, None).await? {
        PublishOutcome::Created => {
            metrics::counter!(m::PUBLISHED).increment(1);
            let mut response = (StatusCode::ACCEPTED, [("content-type", "application/json")], body).into_response();
            response.extensions_mut().insert(AnswerStored);
            Ok(response)
        }
        // The same eventId was published before: answer with the stored message, deliver nothing new.
        PublishOutcome::Duplicate(existing) => {
            Ok((StatusCode::OK, Json(views::published(*existing, with_content))).into_response())
        }
        // Only a dedupe key finds a message retention deleted; the API's publishes have none.
        PublishOutcome::DuplicateOfPurged(_) => Err(ApiError::Internal),
    }
}

async fn list(
    state: Shared,
    PathParams(app_key): PathParams<String>,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListResponse<MessageOut>>> {
    let app = find_app(&state, &app_key).await?;
    let messages = state
        .store
        .list_messages(&app.id, query.filter()?, query.page(true)?)
        .await
        .map_err(ApiError::from_store("message"))?;
    let with_content = query.with_content.unwrap_or(true);
    Ok(Json(listed(messages, |m| m.id.clone(), |m| views::message(m, with_content))))
}

pub async fn find_message(state: &AppState, app_key: &str, msg_id: &str) -> ApiResult<(App, Message)> {
    let app = find_app(state, app_key).await?;
    let message = state.store.get_message(&app.id, msg_id).await.map_err(ApiError::from_store("message"))?;
    Ok((app, message))
}

async fn read(
    state: Shared,
    PathParams((app_key, msg_id)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<MessageOut>> {
    let (_, message) = find_message(&state, &app_key, &msg_id).await?;
    Ok(Json(views::message(message, query.with_content.unwrap_or(true))))
}

async fn read_attempt(
    state: Shared,
    PathParams((app_key, msg_id, attempt_id)): PathParams<(String, String, String)>,
) -> ApiResult<Json<MessageAttemptOut>> {
    let (app, message) = find_message(&state, &app_key, &msg_id).await?;
    let attempt =
        state.store.get_attempt(&app.id, &message.id, &attempt_id).await.map_err(ApiError::from_store("attempt"))?;
    Ok(Json(views::attempt(attempt)))
}

async fn attempts_of_message(
    state: Shared,
    PathParams((app_key, msg_id)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListResponse<MessageAttemptOut>>> {
    let (app, message) = find_message(&state, &app_key, &msg_id).await?;
    let mut filter = query.filter()?;
    if let Some(key) = &filter.endpoint_id {
        filter.endpoint_id = Some(find_endpoint(&state, &app.id, key).await?.id);
    }
    let attempts = state
        .store
        .list_attempts(&app.id, AttemptScope::Message(&message.id), filter, query.page(true)?)
        .await
        .map_err(ApiError::from_store("message"))?;
    Ok(Json(listed(attempts, |a| a.id.clone(), |a| attempt_view(a, &query))))
}

async fn attempts_of_endpoint(
    state: Shared,
    PathParams((app_key, endpoint_id)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListResponse<MessageAttemptOut>>> {
    let endpoint = find_endpoint(&state, &app_key, &endpoint_id).await?;
    // The endpoint is the path's: one named in the query too is not looked at.
    let filter = hookline_store::ListFilter { endpoint_id: None, ..query.filter()? };
    let attempts = state
        .store
        .list_attempts(&endpoint.app_id, AttemptScope::Endpoint(&endpoint.id), filter, query.page(true)?)
        .await
        .map_err(ApiError::from_store("endpoint"))?;
    Ok(Json(listed(attempts, |a| a.id.clone(), |a| attempt_view(a, &query))))
}

/// An attempt as a listing shows it: without the endpoint's answer when asked
/// `with_content=false`, as Svix's listings are.
fn attempt_view(attempt: hookline_store::Attempt, query: &ListQuery) -> MessageAttemptOut {
    let mut out = views::attempt(attempt);
    if query.with_content == Some(false) {
        out.response = String::new();
    }
    out
}

/// Where a message went: each endpoint with the delivery's status and next attempt.
async fn destinations(
    state: Shared,
    PathParams((app_key, msg_id)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListResponse<MessageEndpointOut>>> {
    let (app, message) = find_message(&state, &app_key, &msg_id).await?;
    let views_listed = state
        .store
        .deliveries_of_message(&app.id, &message.id, query.page(false)?)
        .await
        .map_err(ApiError::from_store("message"))?;
    let mut out = listed(views_listed, |v| v.delivery.id.clone(), |v| v);
    let data = out
        .data
        .drain(..)
        .filter_map(|v| {
            let endpoint = v.endpoint?;
            Some(MessageEndpointOut {
                endpoint: views::endpoint(endpoint),
                status: v.delivery.state.code(),
                status_text: v.delivery.state.text(),
                next_attempt: v.delivery.next_at.filter(|_| !v.delivery.state.is_final()).map(timestamp),
            })
        })
        .collect();
    Ok(Json(ListResponse { data, iterator: out.iterator, prev_iterator: out.prev_iterator, done: out.done }))
}

/// What an endpoint was sent: each message with the delivery's status and next attempt.
async fn messages_of_endpoint(
    state: Shared,
    PathParams((app_key, endpoint_id)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListResponse<EndpointMessageOut>>> {
    let endpoint = find_endpoint(&state, &app_key, &endpoint_id).await?;
    let with_content = query.with_content.unwrap_or(true);
    let found = state
        .store
        .deliveries_of_endpoint(&endpoint.app_id, &endpoint.id, query.filter()?, query.page(true)?)
        .await
        .map_err(ApiError::from_store("endpoint"))?;
    let out = listed(found, |v| v.delivery.id.clone(), |v| v);
    let data = out
        .data
        .into_iter()
        .filter_map(|v| {
            Some(EndpointMessageOut {
                message: views::message(v.message?, with_content),
                status: v.delivery.state.code(),
                status_text: v.delivery.state.text(),
                next_attempt: v.delivery.next_at.filter(|_| !v.delivery.state.is_final()).map(timestamp),
            })
        })
        .collect();
    Ok(Json(ListResponse { data, iterator: out.iterator, prev_iterator: out.prev_iterator, done: out.done }))
}

/// Sends the message to the endpoint again now, with a fresh retry cycle.
async fn resend(
    state: Shared,
    PathParams((app_key, msg_id, endpoint_id)): PathParams<(String, String, String)>,
) -> ApiResult<(StatusCode, Json<EmptyOut>)> {
    let (app, message) = find_message(&state, &app_key, &msg_id).await?;
    let endpoint = find_endpoint(&state, &app.id, &endpoint_id).await?;
    send_again(&state, &app.id, Arc::new(message), &endpoint.id).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::NotFound("message or endpoint"),
        StoreError::Conflict(why) => ApiError::Conflict(why),
        other => ApiError::from_store("message")(other),
    })?;
    Ok((StatusCode::ACCEPTED, Json(EmptyOut {})))
}

/// Makes the message's delivery to the endpoint due now, with a fresh retry cycle
/// ([`hookline_store::Store::resend`]). An unordered one this node sends at once, claimed
/// by it; an ordered one waits its turn in its lane, whose head the store made due for
/// whichever node claims it (put in memory here too, it went out twice).
pub(super) async fn send_again(
    state: &AppState,
    app_id: &str,
    message: Arc<Message>,
    endpoint_id: &str,
) -> hookline_store::StoreResult<()> {
    let claim = state.engine.token();
    let delivery = state
        .store
        .resend(app_id, &message.id, endpoint_id, state.new_id(prefix::DELIVERY), state.now(), claim)
        .await?;
    match delivery.order_key {
        Some(_) => state.engine.wake(),
        None => state.engine.enqueue(delivery, Some(message), claim),
    }
    Ok(())
}
