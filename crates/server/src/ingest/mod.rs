//! One pipeline for every way an event comes in. The publish API (`api/messages.rs`),
//! inbound provider webhooks (`api/sources.rs`, and reconciliation) and the queue
//! consumers (`ingest/queue`) each turn what they received into a [`Message`]; they all
//! end in [`submit`]: route to the application's endpoints, commit the message with its
//! deliveries (and its idempotent answer or dedupe key) in one synced transaction, then
//! hand the due deliveries to the engine. No source reaches into another's code.

pub mod queue;

use crate::api::Text;
use crate::dispatch::Engine;
use crate::error::{ApiError, ApiResult};
use crate::wire::{
    parse_timestamp, MessageIn, TransformationsParams, CHANNELS_MAX, NAME_CHARS_MAX, ORDERING_KEY_BYTES_MAX,
    RETENTION_DAYS_MAX, TAGS_MAX,
};
use hookline_core::id::prefix;
use hookline_core::ssrf::{check_url, AddressPolicy};
use hookline_core::UnixMs;
use hookline_store::{Bytes, Delivery, IdempotentResponse, Message, PublishOutcome};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Checks a publish body: the API's, and a queue message's (the same shape).
pub fn check(input: &MessageIn) -> ApiResult<()> {
    crate::api::check_text("eventType", &input.event_type, Text::Printable, 1, NAME_CHARS_MAX)?;
    if let Some(id) = &input.event_id {
        crate::api::check_text("eventId", id, Text::Printable, 1, NAME_CHARS_MAX)?;
    }
    if let Some(key) = &input.ordering_key {
        let visible = key.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty() || key.len() > ORDERING_KEY_BYTES_MAX || !visible {
            return Err(ApiError::field("orderingKey", "orderingKey must be 1 to 256 visible ASCII characters"));
        }
    }
    // Checked whether or not it is needed: an inline application that exists is not used.
    if let Some(app) = &input.application {
        crate::api::apps::check(app, None)?;
    }
    if !input.payload.get().trim_start().starts_with('{') {
        return Err(ApiError::field("payload", "payload must be a JSON object"));
    }
    let content_type = input.transformations_params.as_ref().and_then(|t| t.headers.as_ref()?.content_type.as_ref());
    if content_type.is_some_and(|v| v.is_empty() || axum::http::HeaderValue::from_str(v).is_err()) {
        return Err(ApiError::field("transformationsParams", "headers.content-type must be a header value"));
    }
    // Printable, as event types: a NUL stored in one made the PostgreSQL listings filtered
    // by channel or tag fail for its application (a JSON text with it is no `jsonb`).
    for (field, items, max) in [("channels", &input.channels, CHANNELS_MAX), ("tags", &input.tags, TAGS_MAX)] {
        let bad = |item: &String| crate::api::check_text(field, item, Text::Printable, 1, NAME_CHARS_MAX).is_err();
        if items.as_ref().is_some_and(|items| items.len() > max || items.iter().any(bad)) {
            let rule = format!("of 1 to {NAME_CHARS_MAX} characters, none a control character");
            return Err(ApiError::field(field, format!("{field}: at most {max}, each {rule}")));
        }
    }
    let retention = [
        ("payloadRetentionPeriod", input.payload_retention_period, RETENTION_DAYS_MAX),
        ("payloadRetentionHours", input.payload_retention_hours, RETENTION_DAYS_MAX * 24),
    ];
    for (field, value, max) in retention {
        if value.is_some_and(|v| !(1..=max).contains(&v)) {
            return Err(ApiError::field(field, format!("{field} must be 1 to {max}")));
        }
    }
    Ok(())
}

/// The message a checked publish body describes, for application `app_id`.
pub fn message(input: MessageIn, app_id: String, addresses: &AddressPolicy, now: UnixMs) -> ApiResult<Message> {
    let deliver_at = match input.deliver_at.as_deref() {
        Some(t) => {
            Some(parse_timestamp(t).ok_or_else(|| ApiError::field("deliverAt", "deliverAt must be an RFC 3339 time"))?)
        }
        None => None,
    };
    if let Some(url) = &input.callback_url {
        check_url(url, addresses).map_err(|e| ApiError::field("callbackUrl", e.to_string()))?;
    }
    // A raw payload is the body as given, its content type sent as a provider's is.
    let retain_until = retain_until(&input, now);
    let raw = input.transformations_params.unwrap_or(TransformationsParams { raw_payload: None, headers: None });
    let payload = match raw.raw_payload {
        Some(text) => Bytes::from(text.into_bytes()),
        None => Bytes::copy_from_slice(input.payload.get().as_bytes()),
    };
    let headers = raw.headers.and_then(|h| h.content_type).map(|v| BTreeMap::from([("content-type".to_owned(), v)]));
    Ok(Message {
        id: crate::new_id(prefix::MESSAGE, now),
        app_id,
        retain_until,
        event_id: input.event_id,
        event_type: input.event_type,
        payload,
        channels: input.channels,
        tags: input.tags,
        callback_url: input.callback_url,
        deliver_at,
        source_id: None,
        headers,
        ordering_key: input.ordering_key,
        created_at: now,
    })
}

/// When the message may be deleted, if it asked for a retention of its own (Svix's
/// `payloadRetentionPeriod` in days, or `payloadRetentionHours`).
fn retain_until(input: &MessageIn, now: UnixMs) -> Option<UnixMs> {
    const HOUR_MS: i64 = 3_600_000;
    match (input.payload_retention_hours, input.payload_retention_period) {
        (Some(hours), _) => Some(now.saturating_add(hours.saturating_mul(HOUR_MS))),
        (None, Some(days)) => Some(now.saturating_add(days.saturating_mul(24 * HOUR_MS))),
        (None, None) => None,
    }
}

/// Routes `message` to its application's endpoints (and its callback URL) and commits it
/// with its deliveries and its idempotent answer or dedupe key `(scope, key)`; answered
/// once durable. A duplicate (same `eventId`, or same dedupe key) commits nothing.
pub async fn submit(
    engine: &Arc<Engine>,
    message: Arc<Message>,
    answer: Option<IdempotentResponse>,
    dedupe: Option<(String, String)>,
) -> ApiResult<PublishOutcome> {
    let endpoints = engine.catalog.endpoints(&message.app_id).await.map_err(ApiError::from_store("endpoint"))?;
    let due_at = message.deliver_at.unwrap_or(message.created_at).max(message.created_at);
    let mut deliveries = engine.route(&endpoints, &message, due_at);
    if message.callback_url.is_some() {
        let id = crate::new_id(prefix::DELIVERY, message.created_at);
        deliveries.push(Delivery::pending(id, &message, None, due_at, message.created_at));
    }
    engine.commit(&message, deliveries, answer, dedupe).await.map_err(ApiError::from_store("message"))
}
