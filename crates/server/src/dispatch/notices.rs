//! Operational events: what Hookline tells the owner when endpoints change or keep failing
//! (Svix's operational webhooks, with Svix's names and payloads, plus
//! `message.attempt.failed` on every failed attempt). Each event is a message of the
//! internal operational application, routed to its endpoints by their event types and
//! delivered by the same engine, with the same signatures, retries and address rules.
//! Nothing that happens to the operational application itself makes an event (no loops).

use super::Engine;
use crate::metrics as m;
use crate::wire::timestamp;
use hookline_core::id::prefix;
use hookline_core::UnixMs;
use hookline_store::{App, Attempt, Bytes, Endpoint, Message, StoreError, OPERATIONAL_APP_ID};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const ENDPOINT_CREATED: &str = "endpoint.created";
pub const ENDPOINT_UPDATED: &str = "endpoint.updated";
pub const ENDPOINT_DELETED: &str = "endpoint.deleted";
pub const ENDPOINT_DISABLED: &str = "endpoint.disabled";
pub const ENDPOINT_ENABLED: &str = "endpoint.enabled";
pub const ATTEMPT_FAILING: &str = "message.attempt.failing";
pub const ATTEMPT_EXHAUSTED: &str = "message.attempt.exhausted";
pub const ATTEMPT_RECOVERED: &str = "message.attempt.recovered";
pub const ATTEMPT_FAILED: &str = "message.attempt.failed";

/// Every operational event type, for validating an operational endpoint's `eventTypes`.
pub const EVENT_TYPES: &[&str] = &[
    ENDPOINT_CREATED,
    ENDPOINT_UPDATED,
    ENDPOINT_DELETED,
    ENDPOINT_DISABLED,
    ENDPOINT_ENABLED,
    ATTEMPT_FAILING,
    ATTEMPT_EXHAUSTED,
    ATTEMPT_RECOVERED,
    ATTEMPT_FAILED,
];

/// `message.attempt.failing` is sent on a message's fourth failed attempt in a row (as
/// Svix does); `message.attempt.recovered` on a success after it.
pub const FAILING_AFTER: u32 = 4;

/// How long to wait before committing an event again while the store refuses writes.
const RETRY_MS: u64 = 1_000;

/// Who disabled an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    Automatic,
}

/// One operational event: its type and its `data` (and, for emails, the endpoint's URL).
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub event_type: &'static str,
    pub data: Value,
    pub url: String,
}

impl Notice {
    /// `endpoint.created|updated|deleted|enabled` about `endpoint` of `app`.
    pub fn endpoint(event_type: &'static str, app: &App, endpoint: &Endpoint) -> Notice {
        Notice { event_type, data: subject(app, endpoint), url: endpoint.url.clone() }
    }

    /// `endpoint.disabled`, with when it started failing (if it was) and who disabled it.
    pub fn disabled(app: &App, endpoint: &Endpoint, fail_since: Option<UnixMs>, trigger: Trigger) -> Notice {
        let mut data = subject(app, endpoint);
        data["failSince"] = fail_since.map(timestamp).into();
        data["trigger"] = match trigger {
            Trigger::Manual => "manual",
            Trigger::Automatic => "automatic",
        }
        .into();
        Notice { event_type: ENDPOINT_DISABLED, data, url: endpoint.url.clone() }
    }

    /// `message.attempt.*` about an attempt of `message` to `endpoint`.
    pub fn attempt(
        event_type: &'static str,
        app: &App,
        endpoint: &Endpoint,
        message: &Message,
        attempt: &Attempt,
    ) -> Notice {
        let mut data = subject(app, endpoint);
        data["msgId"] = message.id.clone().into();
        data["msgEventId"] = message.event_id.clone().into();
        if let Some(source_id) = &message.source_id {
            data["sourceId"] = source_id.clone().into();
        }
        data["lastAttempt"] = json!({
            "id": attempt.id,
            "responseStatusCode": attempt.status_code,
            "timestamp": timestamp(attempt.created_at),
        });
        Notice { event_type, data, url: endpoint.url.clone() }
    }

    /// The payload sent: Svix's envelope.
    pub fn payload(&self) -> Bytes {
        Bytes::from(
            serde_json::to_vec(&json!({ "type": self.event_type, "data": self.data })).expect("JSON values serialize"),
        )
    }
}

fn subject(app: &App, endpoint: &Endpoint) -> Value {
    json!({ "appId": app.id, "appUid": app.uid, "endpointId": endpoint.id, "endpointUid": endpoint.uid })
}

impl Engine {
    /// Tells the owner about an endpoint of `app`: notes the event for the alert emails,
    /// and commits it for every operational endpoint that takes its type (nothing is
    /// stored when none does), retrying while the store refuses writes, then hands the
    /// deliveries to the scheduler. Events about the operational application itself are
    /// dropped here, so its endpoints' failures never make events; one of them disabled
    /// by Hookline is logged as an error and counted instead (the operators' alert
    /// channel stopped, and nothing else would say so).
    pub async fn notify(self: &Arc<Self>, app: &App, notice: Notice) {
        if app.id == OPERATIONAL_APP_ID {
            if notice.event_type == ENDPOINT_DISABLED && notice.data["trigger"] == "automatic" {
                tracing::error!(
                    endpoint = %notice.data["endpointId"].as_str().unwrap_or_default(),
                    "an operational endpoint failed until it was disabled: operational events to it are skipped until it is enabled again"
                );
                metrics::counter!(m::OPERATIONAL_ENDPOINTS_DISABLED).increment(1);
            }
            return;
        }
        if let Some(mailer) = &self.mailer {
            mailer.observe(app, &notice.url, &notice);
        }
        // Made once: tried again after a commit whose answer was lost, it is found by its
        // id as committed (a new id each try made a second event).
        let now = self.clock.now_ms();
        let message = Arc::new(Message {
            id: crate::new_id(prefix::MESSAGE, now),
            app_id: OPERATIONAL_APP_ID.to_owned(),
            event_id: None,
            event_type: notice.event_type.to_owned(),
            payload: notice.payload(),
            channels: None,
            tags: None,
            callback_url: None,
            deliver_at: None,
            source_id: None,
            headers: None,
            retain_until: None,
            ordering_key: None,
            created_at: now,
        });
        // Routed once too: a retry that finds its message committed hands the scheduler the
        // deliveries committed with it, not new ones.
        let mut routed = None;
        loop {
            match self.try_notify(&message, &mut routed).await {
                Ok(()) => {
                    metrics::counter!(m::OPERATIONAL_EVENTS, "type" => notice.event_type).increment(1);
                    return;
                }
                Err(StoreError::Unavailable(e)) if !*self.stopping.borrow() => {
                    tracing::warn!(error = %e, event_type = notice.event_type, "could not store an operational event; retrying");
                    tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, event_type = notice.event_type, "operational event not stored");
                    metrics::counter!(m::OPERATIONAL_EVENTS_LOST).increment(1);
                    return;
                }
            }
        }
    }

    /// Commits `message` with its deliveries, routed at the first try that reads the
    /// operational endpoints and kept in `routed` for the tries after.
    async fn try_notify(
        self: &Arc<Self>,
        message: &Arc<Message>,
        routed: &mut Option<Vec<hookline_store::Delivery>>,
    ) -> Result<(), StoreError> {
        let deliveries = match routed {
            Some(deliveries) => deliveries,
            None => {
                let mut endpoints = self.catalog.endpoints(OPERATIONAL_APP_ID).await?.to_vec();
                // One event a failed attempt, each a commit the attempt waits on holding its
                // slot: it goes to the endpoints that name it, not to those that take every
                // type (as Svix's SDKs make them, expecting Svix's types).
                if message.event_type == ATTEMPT_FAILED {
                    endpoints.retain(|e| e.event_types.is_some());
                }
                routed.insert(self.route(&endpoints, message, self.clock.now_ms()))
            }
        };
        if deliveries.is_empty() {
            return Ok(());
        }
        self.commit(message, deliveries.clone(), None, None).await.map(|_| ())
    }
}
