//! Records to wire types.

use crate::wire::*;
use hookline_store::{App, Attempt, Endpoint, EventType, Message};
use serde_json::value::RawValue;

pub fn app(a: App) -> ApplicationOut {
    ApplicationOut {
        id: a.id,
        uid: a.uid,
        name: a.name,
        throttle_rate: a.throttle_rate,
        rate_limit: a.throttle_rate,
        metadata: a.metadata,
        retry_policy: a.retry_policy,
        created_at: timestamp(a.created_at),
        updated_at: timestamp(a.updated_at),
        alert_email: a.alert_email,
    }
}

pub fn endpoint(e: Endpoint) -> EndpointOut {
    EndpointOut {
        id: e.id,
        uid: e.uid,
        url: e.url,
        description: e.description,
        version: 1,
        disabled: e.disabled,
        filter_types: e.event_types.clone(),
        event_types: e.event_types,
        channels: e.channels,
        throttle_rate: e.throttle_rate,
        rate_limit: e.throttle_rate,
        metadata: e.metadata,
        signature_scheme: e.signature_scheme,
        retry_policy: e.retry_policy,
        created_at: timestamp(e.created_at),
        updated_at: timestamp(e.updated_at),
        health: EndpointHealth {
            status: match (e.disabled, e.fail_since) {
                (true, _) => HealthStatus::Disabled,
                (false, Some(_)) => HealthStatus::Failing,
                (false, None) => HealthStatus::Healthy,
            },
            fail_since: e.fail_since.map(timestamp),
        },
        ordering: if e.fifo { EndpointOrdering::Fifo } else { EndpointOrdering::None },
    }
}

pub fn operational_endpoint(e: Endpoint) -> OperationalEndpointOut {
    OperationalEndpointOut {
        id: e.id,
        uid: e.uid,
        url: e.url,
        description: e.description,
        disabled: e.disabled,
        filter_types: e.event_types.clone(),
        event_types: e.event_types,
        throttle_rate: e.throttle_rate,
        rate_limit: e.throttle_rate,
        metadata: e.metadata,
        created_at: timestamp(e.created_at),
        updated_at: timestamp(e.updated_at),
    }
}

pub fn event_type(t: EventType) -> EventTypeOut {
    EventTypeOut {
        name: t.name,
        description: t.description,
        archived: t.archived,
        deprecated: t.deprecated,
        schemas: t.schemas,
        group_name: t.group_name,
        feature_flag: t.feature_flags.as_ref().and_then(|f| f.first().cloned()),
        feature_flags: t.feature_flags,
        created_at: timestamp(t.created_at),
        updated_at: timestamp(t.updated_at),
    }
}

/// The answer to a publish: [`message`], its payload `{}` unless it is a JSON object. A raw
/// payload may be any JSON (or none), and Svix's SDKs read an object: an array or a number
/// failed their parsing of the answer to a publish that was stored, and a caller that tried
/// again under a new key published twice.
pub fn published(m: Message, with_content: bool) -> MessageOut {
    let mut out = message(m, with_content);
    if !out.payload.get().starts_with('{') {
        out.payload = RawValue::from_string("{}".into()).expect("valid JSON");
    }
    out
}

/// The payload as stored; `{}` when content is not requested, or when it is no JSON (a raw
/// payload may be any text).
pub fn message(m: Message, with_content: bool) -> MessageOut {
    let payload = if with_content {
        String::from_utf8(m.payload.to_vec()).ok().and_then(|text| RawValue::from_string(text).ok())
    } else {
        None
    };
    MessageOut {
        id: m.id,
        event_id: m.event_id,
        event_type: m.event_type,
        payload: payload.unwrap_or_else(|| RawValue::from_string("{}".into()).expect("valid JSON")),
        channels: m.channels,
        tags: m.tags,
        timestamp: timestamp(m.created_at),
        deliver_at: m.deliver_at.map(timestamp),
        callback_url: m.callback_url,
        ordering_key: m.ordering_key,
    }
}

pub fn attempt(a: Attempt) -> MessageAttemptOut {
    MessageAttemptOut {
        endpoint_id: a.endpoint_id.unwrap_or(a.delivery_id),
        id: a.id,
        url: a.url,
        msg_id: a.msg_id,
        response: a.response,
        response_status_code: a.status_code,
        response_duration_ms: a.duration_ms,
        status: a.state.code(),
        status_text: a.state.text(),
        trigger_type: a.trigger as i64,
        timestamp: timestamp(a.created_at),
        error_class: a.error_class,
    }
}
