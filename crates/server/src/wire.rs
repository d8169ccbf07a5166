//! JSON wire types of the management API. Field names follow the Svix v1 API (camelCase,
//! current names with older aliases such as `filterTypes` and `rateLimit`); Hookline's own
//! additions are optional fields.

use hookline_core::exact;
use hookline_core::retry::RetryPolicy;
use hookline_core::signature::SignatureScheme;
use hookline_core::UnixMs;
use hookline_store::Metadata;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// Free text (names, descriptions): no control characters but newline and tab, as
/// `api::check_text` enforces. Lengths are counted in characters, as JSON Schema counts them.
pub const TEXT_PATTERN: &str = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$";
/// Uids and event type names: letters, digits, `-`, `_` and `.` (Svix's rule).
pub const NAME_PATTERN: &str = r"^[a-zA-Z0-9\-_.]+$";
/// A uid is a name not in the form of an id of its kind (`hookline_core::id::has_prefix`):
/// a path's key names a resource by either, so a uid that took a deleted resource's id
/// would answer for it. `api::check_uid` enforces it; `uid_patterns_name_their_kinds` holds
/// each pattern to its prefix.
pub const APP_UID_PATTERN: &str = r"^(?!app_[0-9A-Za-z]{22}$)[a-zA-Z0-9\-_.]+$";
pub const ENDPOINT_UID_PATTERN: &str = r"^(?!ep_[0-9A-Za-z]{22}$)[a-zA-Z0-9\-_.]+$";
pub const SOURCE_UID_PATTERN: &str = r"^(?!src_[0-9A-Za-z]{22}$)[a-zA-Z0-9\-_.]+$";
/// Endpoint and callback URLs: `http://` or `https://`, or a queue destination
/// (`redis://host/stream`, `amqp://host/exchange?routingKey=...`, `nats://host/subject`), as
/// `ssrf::check_url` requires.
pub const URL_PATTERN: &str = r"^(https?|redis|amqp|nats)://";
pub const NAME_CHARS_MAX: usize = 256;
/// Event types or channels an endpoint may list.
pub const LIST_ITEMS_MAX: usize = 256;
pub const DESCRIPTION_CHARS_MAX: usize = 4096;
pub const URL_BYTES_MAX: usize = 2048;

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`) in patches.
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub fn timestamp(ms: UnixMs) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 time (the SDKs send offsets such as `+00:00` or `Z`).
pub fn parse_timestamp(text: &str) -> Option<UnixMs> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse<T> {
    pub data: Vec<T>,
    pub iterator: Option<String>,
    pub prev_iterator: Option<String>,
    pub done: bool,
}

#[derive(Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationIn {
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub name: String,
    /// Your own key, which paths take in place of the id; not in the form of an application id (`app_` and 22 letters or digits).
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = APP_UID_PATTERN))]
    pub uid: Option<String>,
    /// Deliveries per second at most to each of its endpoints that sets none (the cluster's, not each node's); more wait their turn.
    #[serde(alias = "rateLimit", default, deserialize_with = "exact::integer_option")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub throttle_rate: Option<u32>,
    pub metadata: Option<Metadata>,
    #[serde(default, deserialize_with = "exact::object_option")]
    pub retry_policy: Option<RetryPolicy>,
    /// Where alert emails about its endpoints go (Hookline's; Svix reads the metadata key
    /// `svix.email`, which is used when this is absent).
    #[schemars(length(min = 3, max = EMAIL_BYTES_MAX), regex(pattern = EMAIL_PATTERN))]
    pub alert_email: Option<String>,
}

/// `MessageIn.application`: an `ApplicationIn` without its `uid` (the path gives it), or null.
fn application_on_publish(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut application = <ApplicationIn as JsonSchema>::json_schema(generator);
    if let Some(properties) = application.get_mut("properties").and_then(|p| p.as_object_mut()) {
        properties.remove("uid");
    }
    schemars::json_schema!({"anyOf": [application, {"type": "null"}]})
}

/// The longest email address accepted (RFC 5321's path limit).
pub const EMAIL_BYTES_MAX: usize = 254;
/// The email addresses accepted: a local part of letters, digits, `_`, `+` and `-`, either
/// one run of up to 64 or two or three dot-separated runs (the first up to 21, the others up
/// to 20, so never past SMTP's 64), at a domain of two or more labels. `api::check_email`
/// spells the same rule; the bounded runs keep the pattern free of look-aheads, which
/// generators of test data cannot honour.
pub const EMAIL_PATTERN: &str = "^([A-Za-z0-9_+-]{1,64}|[A-Za-z0-9_+-]{1,21}(\\.[A-Za-z0-9_+-]{1,20}){1,2})@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\
    (\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$";

#[derive(Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationPatch {
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    /// Your own key, which paths take in place of the id; not in the form of an application id (`app_` and 22 letters or digits).
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = APP_UID_PATTERN))]
    pub uid: Option<Option<String>>,
    /// Deliveries per second at most to each of its endpoints that sets none (the cluster's, not each node's); more wait their turn.
    #[serde(default, alias = "rateLimit", deserialize_with = "exact::integer_present")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub throttle_rate: Option<Option<u32>>,
    pub metadata: Option<Metadata>,
    #[serde(default, deserialize_with = "exact::object_present")]
    pub retry_policy: Option<Option<RetryPolicy>>,
    /// Where alert emails about its endpoints go.
    #[serde(default, deserialize_with = "present")]
    #[schemars(length(min = 3, max = EMAIL_BYTES_MAX), regex(pattern = EMAIL_PATTERN))]
    pub alert_email: Option<Option<String>>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationOut {
    pub id: String,
    pub uid: Option<String>,
    pub name: String,
    pub throttle_rate: Option<u32>,
    pub rate_limit: Option<u32>,
    pub metadata: Metadata,
    pub retry_policy: Option<RetryPolicy>,
    pub created_at: String,
    pub updated_at: String,
    pub alert_email: Option<String>,
}

#[derive(Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointIn {
    /// Where deliveries go: an `https://` URL (`http://` in dev mode or with
    /// `network.allow_http`), or a queue the delivery is published to:
    /// `redis://host[:port]/<stream>`, `amqp://host[:port]/<exchange>?routingKey=<key>`,
    /// `nats://host[:port]/<subject>` (JetStream).
    #[schemars(length(min = 1, max = URL_BYTES_MAX), regex(pattern = URL_PATTERN), extend("format" = "uri"))]
    pub url: String,
    #[serde(default)]
    #[schemars(length(max = DESCRIPTION_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub description: String,
    #[serde(default, deserialize_with = "exact::integer_option")]
    #[schemars(range(max = u32::MAX))]
    pub version: Option<u32>,
    pub disabled: Option<bool>,
    #[serde(alias = "filterTypes")]
    #[schemars(length(min = 1, max = LIST_ITEMS_MAX), inner(length(min = 1, max = NAME_CHARS_MAX)))]
    pub event_types: Option<Vec<String>>,
    #[schemars(length(min = 1, max = LIST_ITEMS_MAX), inner(length(min = 1, max = NAME_CHARS_MAX)))]
    pub channels: Option<Vec<String>>,
    /// Deliveries per second at most to this endpoint (the cluster's, not each node's); more wait their turn, never dropped or failed.
    #[serde(alias = "rateLimit", default, deserialize_with = "exact::integer_option")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub throttle_rate: Option<u32>,
    /// Your own key, which paths take in place of the id; not in the form of an endpoint id (`ep_` and 22 letters or digits).
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = ENDPOINT_UID_PATTERN))]
    pub uid: Option<String>,
    #[schemars(regex(pattern = SECRET_PATTERN))]
    pub secret: Option<String>,
    pub metadata: Option<Metadata>,
    #[serde(default, deserialize_with = "case_folded_option")]
    #[schemars(schema_with = "optional_headers_schema")]
    pub headers: Option<BTreeMap<String, String>>,
    pub signature_scheme: Option<SignatureScheme>,
    #[serde(default, deserialize_with = "exact::object_option")]
    pub retry_policy: Option<RetryPolicy>,
    /// Hookline's: `fifo` delivers everything sent to this endpoint strictly in publish
    /// order, each delivery waiting until the one before it is done.
    pub ordering: Option<EndpointOrdering>,
}

/// How an endpoint orders its deliveries: `none` (messages with an `orderingKey` still
/// keep their key's order) or `fifo` (everything in publish order).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointOrdering {
    #[default]
    None,
    Fifo,
}

#[derive(Clone, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPatch {
    #[schemars(length(min = 1, max = URL_BYTES_MAX), regex(pattern = URL_PATTERN), extend("format" = "uri"))]
    pub url: Option<String>,
    #[schemars(length(max = DESCRIPTION_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "exact::integer_option")]
    #[schemars(range(max = u32::MAX))]
    pub version: Option<u32>,
    pub disabled: Option<bool>,
    #[serde(default, alias = "filterTypes", deserialize_with = "present")]
    #[schemars(length(min = 1, max = LIST_ITEMS_MAX), inner(length(min = 1, max = NAME_CHARS_MAX)))]
    pub event_types: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schemars(length(min = 1, max = LIST_ITEMS_MAX), inner(length(min = 1, max = NAME_CHARS_MAX)))]
    pub channels: Option<Option<Vec<String>>>,
    /// Deliveries per second at most to this endpoint (the cluster's, not each node's); more wait their turn, never dropped or failed.
    #[serde(default, alias = "rateLimit", deserialize_with = "exact::integer_present")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub throttle_rate: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    /// Your own key, which paths take in place of the id; not in the form of an endpoint id (`ep_` and 22 letters or digits).
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = ENDPOINT_UID_PATTERN))]
    pub uid: Option<Option<String>>,
    pub metadata: Option<Metadata>,
    pub signature_scheme: Option<SignatureScheme>,
    #[serde(default, deserialize_with = "exact::object_present")]
    pub retry_policy: Option<Option<RetryPolicy>>,
    pub ordering: Option<EndpointOrdering>,
    /// A signing secret (`whsec_` and base64): one the endpoint does not hold yet is rotated
    /// to, as `/secret/rotate` would; the previous one keeps signing for the grace period.
    #[schemars(regex(pattern = SECRET_PATTERN))]
    pub secret: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointOut {
    pub id: String,
    pub uid: Option<String>,
    pub url: String,
    pub description: String,
    pub version: u32,
    pub disabled: bool,
    pub event_types: Option<Vec<String>>,
    pub filter_types: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    pub throttle_rate: Option<u32>,
    pub rate_limit: Option<u32>,
    pub metadata: Metadata,
    pub signature_scheme: SignatureScheme,
    pub retry_policy: Option<RetryPolicy>,
    pub created_at: String,
    pub updated_at: String,
    /// Hookline's: whether the endpoint's latest attempts succeed.
    pub health: EndpointHealth,
    pub ordering: EndpointOrdering,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHealth {
    /// `healthy` (its latest attempt succeeded, or none was made), `failing` (every attempt
    /// since `failSince` failed), or `disabled`.
    pub status: HealthStatus,
    /// When the first of the failed attempts since the last success was made.
    pub fail_since: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HealthStatus {
    Healthy,
    Failing,
    Disabled,
}

/// An operational webhook endpoint (Svix's `OperationalWebhookEndpointIn`): where Hookline
/// sends its own events about endpoints and failing deliveries.
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationalEndpointIn {
    #[schemars(length(min = 1, max = URL_BYTES_MAX), regex(pattern = URL_PATTERN), extend("format" = "uri"))]
    pub url: String,
    #[serde(default)]
    #[schemars(length(max = DESCRIPTION_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub description: String,
    /// Deliveries per second at most to this endpoint.
    #[serde(alias = "rateLimit", default, deserialize_with = "exact::integer_option")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub throttle_rate: Option<u32>,
    /// Your own key, which paths take in place of the id; not in the form of an endpoint id (`ep_` and 22 letters or digits).
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = ENDPOINT_UID_PATTERN))]
    pub uid: Option<String>,
    pub disabled: Option<bool>,
    /// The operational events it receives (when absent, all but `message.attempt.failed`,
    /// which goes only to endpoints that name it).
    // `default` says what serde does for a missing `Option` anyway; it is spelled out so
    // the schema, which `schema_with` writes, does not list the field as required.
    #[serde(alias = "filterTypes", default)]
    #[schemars(schema_with = "operational_types_schema")]
    pub event_types: Option<Vec<String>>,
    #[schemars(regex(pattern = SECRET_PATTERN))]
    pub secret: Option<String>,
    pub metadata: Option<Metadata>,
    #[serde(default, deserialize_with = "case_folded_option")]
    #[schemars(schema_with = "optional_headers_schema")]
    pub headers: Option<BTreeMap<String, String>>,
}

/// `PUT` of an operational webhook endpoint (Svix's `OperationalWebhookEndpointUpsertIn`).
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationalEndpointUpsertIn {
    #[schemars(length(min = 1, max = URL_BYTES_MAX), regex(pattern = URL_PATTERN), extend("format" = "uri"))]
    pub url: String,
    #[serde(default)]
    #[schemars(length(max = DESCRIPTION_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub description: String,
    /// Deliveries per second at most to this endpoint.
    #[serde(alias = "rateLimit", default, deserialize_with = "exact::integer_option")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub throttle_rate: Option<u32>,
    /// Your own key, which paths take in place of the id; not in the form of an endpoint id (`ep_` and 22 letters or digits).
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = ENDPOINT_UID_PATTERN))]
    pub uid: Option<String>,
    pub disabled: Option<bool>,
    /// The operational events it receives (when absent, all but `message.attempt.failed`,
    /// which goes only to endpoints that name it).
    // `default` says what serde does for a missing `Option` anyway; it is spelled out so
    // the schema, which `schema_with` writes, does not list the field as required.
    #[serde(alias = "filterTypes", default)]
    #[schemars(schema_with = "operational_types_schema")]
    pub event_types: Option<Vec<String>>,
    pub metadata: Option<Metadata>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationalEndpointOut {
    pub id: String,
    pub uid: Option<String>,
    pub url: String,
    pub description: String,
    pub disabled: bool,
    pub event_types: Option<Vec<String>>,
    pub filter_types: Option<Vec<String>>,
    pub throttle_rate: Option<u32>,
    pub rate_limit: Option<u32>,
    pub metadata: Metadata,
    pub created_at: String,
    pub updated_at: String,
}

/// The operational event types, as the list an operational endpoint may take.
pub const OPERATIONAL_EVENT_TYPES: &[&str] = crate::dispatch::notices::EVENT_TYPES;

fn operational_types_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["array", "null"],
        "minItems": 1,
        "maxItems": OPERATIONAL_EVENT_TYPES.len(),
        "items": { "type": "string", "enum": OPERATIONAL_EVENT_TYPES },
    })
}

#[derive(Serialize, JsonSchema)]
pub struct EndpointSecretOut {
    pub key: String,
}

#[derive(Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSecretRotateIn {
    #[schemars(regex(pattern = SECRET_PATTERN))]
    pub key: Option<String>,
    /// How long the previous secret keeps signing (default `delivery.rotation_grace_ms`).
    #[serde(default, deserialize_with = "exact::integer_option")]
    #[schemars(range(max = GRACE_PERIOD_SECONDS_MAX))]
    pub grace_period_seconds: Option<u64>,
}

/// The longest grace period of a rotated-out secret: 30 days.
pub const GRACE_PERIOD_SECONDS_MAX: u64 = 30 * 24 * 3600;
/// `whsec_` and the canonical base64 (padded, no stray bits) of 24 to 64 bytes, as
/// `signature::Secret::parse` reads it.
pub const SECRET_PATTERN: &str =
    "^whsec_(?:(?:[A-Za-z0-9+/]{4}){8,20}(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?\
    |(?:[A-Za-z0-9+/]{4}){21}(?:[A-Za-z0-9+/][AQgw]==)?)$";

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointHeadersIn {
    #[serde(deserialize_with = "case_folded")]
    #[schemars(schema_with = "headers_schema")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointHeadersPatchIn {
    #[serde(deserialize_with = "case_folded")]
    #[schemars(schema_with = "headers_schema")]
    pub headers: BTreeMap<String, String>,
    pub delete_headers: Option<Vec<String>>,
}

#[derive(Serialize, JsonSchema)]
pub struct EndpointHeadersOut {
    pub headers: BTreeMap<String, String>,
    pub sensitive: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecoverIn {
    #[schemars(extend("format" = "date-time"))]
    pub since: String,
    #[schemars(extend("format" = "date-time"))]
    pub until: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoverOut {
    pub id: String,
    pub status: &'static str,
    pub task: &'static str,
    pub updated_at: String,
    /// Hookline: how many deliveries were restarted.
    pub recovered: usize,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTypeIn {
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = NAME_PATTERN))]
    pub name: String,
    #[serde(default)]
    #[schemars(length(max = DESCRIPTION_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub description: String,
    pub archived: Option<bool>,
    pub deprecated: Option<bool>,
    pub schemas: Option<serde_json::Value>,
    #[schemars(length(max = NAME_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub group_name: Option<String>,
    pub feature_flags: Option<Vec<String>>,
    pub feature_flag: Option<String>,
}

/// An event type's fields but its name, which the path gives (`PUT /event-type/{name}`).
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTypeUpdate {
    #[serde(default)]
    #[schemars(length(max = DESCRIPTION_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub description: String,
    pub archived: Option<bool>,
    pub deprecated: Option<bool>,
    pub schemas: Option<serde_json::Value>,
    #[schemars(length(max = NAME_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub group_name: Option<String>,
    pub feature_flags: Option<Vec<String>>,
    pub feature_flag: Option<String>,
}

#[derive(Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTypePatch {
    #[schemars(length(max = DESCRIPTION_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub description: Option<String>,
    pub archived: Option<bool>,
    pub deprecated: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub schemas: Option<Option<serde_json::Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schemars(length(max = NAME_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub group_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub feature_flags: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pub feature_flag: Option<Option<String>>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeOut {
    pub name: String,
    pub description: String,
    pub archived: bool,
    pub deprecated: bool,
    pub schemas: Option<serde_json::Value>,
    pub group_name: Option<String>,
    pub feature_flags: Option<Vec<String>>,
    pub feature_flag: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageIn {
    /// A queue message's application (id or uid); the publish route takes it from the path
    /// and refuses it here.
    #[schemars(skip)]
    pub app: Option<String>,
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = PRINTABLE_PATTERN))]
    pub event_type: String,
    /// Kept as the exact bytes received: never re-serialized.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub payload: Box<RawValue>,
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = PRINTABLE_PATTERN))]
    pub event_id: Option<String>,
    #[schemars(
        length(max = CHANNELS_MAX),
        inner(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = PRINTABLE_PATTERN))
    )]
    pub channels: Option<Vec<String>>,
    #[schemars(length(max = TAGS_MAX), inner(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = PRINTABLE_PATTERN)))]
    pub tags: Option<Vec<String>>,
    /// Creates the application when the path names none, under the key in the path as its
    /// `uid`; a `uid` here is therefore not documented, and one that differs from the path's
    /// is refused with 422.
    #[serde(default, deserialize_with = "exact::object_option")]
    #[schemars(schema_with = "application_on_publish")]
    pub application: Option<ApplicationIn>,
    #[schemars(extend("format" = "date-time"))]
    pub deliver_at: Option<String>,
    /// Also send this message to this URL, signed with the application's secret; a queue
    /// URL only with the admin token.
    #[schemars(length(min = 1, max = URL_BYTES_MAX), regex(pattern = URL_PATTERN), extend("format" = "uri"))]
    pub callback_url: Option<String>,
    /// Svix's raw payloads (its SDKs' `message_in_raw`): Hookline runs no transformations,
    /// and takes only these two.
    #[serde(default, deserialize_with = "exact::object_option")]
    pub transformations_params: Option<TransformationsParams>,
    /// Days to keep this message instead of `retention.days`.
    #[serde(default, deserialize_with = "exact::integer_option")]
    #[schemars(range(min = 1, max = RETENTION_DAYS_MAX))]
    pub payload_retention_period: Option<i64>,
    /// Hours to keep this message (wins over `payloadRetentionPeriod`).
    #[serde(default, deserialize_with = "exact::integer_option")]
    #[schemars(range(min = 1, max = RETENTION_DAYS_MAX * 24))]
    pub payload_retention_hours: Option<i64>,
    /// Hookline's: messages with one key (a payment, order or subscription id) reach each
    /// endpoint in publish order, each waiting until the one before it succeeded, was
    /// exhausted or was skipped. Visible ASCII, at most 256.
    #[schemars(length(min = 1, max = ORDERING_KEY_BYTES_MAX), regex(pattern = ORDERING_KEY_PATTERN))]
    pub ordering_key: Option<String>,
}

/// A message's body sent as given rather than as JSON (`payload` is then `{}`).
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransformationsParams {
    /// Sent as the body, byte for byte (UTF-8 text), in place of `payload`.
    pub raw_payload: Option<String>,
    #[serde(default, deserialize_with = "exact::object_option")]
    pub headers: Option<RawPayloadHeaders>,
}

#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPayloadHeaders {
    /// The body's content type (default `application/json`).
    #[serde(rename = "content-type")]
    #[schemars(length(min = 1), regex(pattern = HEADER_VALUE_PATTERN))]
    pub content_type: Option<String>,
}

/// Ordering keys: visible ASCII (so characters are bytes), 1 to 256.
pub const ORDERING_KEY_PATTERN: &str = "^[!-~]+$";
pub const ORDERING_KEY_BYTES_MAX: usize = 256;

/// Event types and event ids: no control characters at all.
pub const PRINTABLE_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";
/// Channels a message may name.
pub const CHANNELS_MAX: usize = 10;
/// Tags a message may carry.
pub const TAGS_MAX: usize = 10;
/// The longest a message may ask to be kept: 100 years.
pub const RETENTION_DAYS_MAX: i64 = 36_500;

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageOut {
    pub id: String,
    pub event_id: Option<String>,
    pub event_type: String,
    /// The payload as published: an object, or for a raw payload or an inbound provider's
    /// body the JSON as given (an array, say); `{}` when content is not asked for or the body
    /// is no JSON. The answer to a publish always holds an object (`{}` for any other).
    #[schemars(with = "serde_json::Value")]
    pub payload: Box<RawValue>,
    pub channels: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub timestamp: String,
    pub deliver_at: Option<String>,
    pub callback_url: Option<String>,
    pub ordering_key: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageAttemptOut {
    pub id: String,
    pub url: String,
    pub msg_id: String,
    /// For a per-message callback URL, the delivery's id (`dlv_…`).
    pub endpoint_id: String,
    pub response: String,
    pub response_status_code: u16,
    pub response_duration_ms: u64,
    pub status: i64,
    pub status_text: &'static str,
    pub trigger_type: i64,
    pub timestamp: String,
    pub error_class: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageEndpointOut {
    #[serde(flatten)]
    pub endpoint: EndpointOut,
    pub status: i64,
    pub status_text: &'static str,
    pub next_attempt: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointMessageOut {
    #[serde(flatten)]
    pub message: MessageOut,
    pub status: i64,
    pub status_text: &'static str,
    pub next_attempt: Option<String>,
}

/// An answer with nothing to say beyond its status (Svix answers `{}`).
#[derive(Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EmptyOut {}

/// What a replay of a received event did.
#[derive(Serialize, JsonSchema)]
pub struct ReplayOut {
    /// How many deliveries were made due again.
    pub replayed: usize,
}

#[derive(Serialize, JsonSchema)]
pub struct HealthOut {
    pub status: &'static str,
}

/// A source secret as given: a string, or one with an expiry (for a provider's rotation).
#[derive(Deserialize, Clone, JsonSchema)]
#[serde(untagged)]
pub enum SourceSecretIn {
    Value(#[schemars(length(min = 1, max = SOURCE_SECRET_CHARS_MAX))] String),
    WithExpiry {
        #[schemars(length(min = 1, max = SOURCE_SECRET_CHARS_MAX))]
        value: String,
        #[serde(rename = "expiresAt")]
        #[schemars(extend("format" = "date-time"))]
        expires_at: Option<String>,
    },
}

pub const SOURCE_SECRET_CHARS_MAX: usize = 1024;
/// Secrets a source holds at once (a provider's rotation).
pub const SOURCE_SECRETS_MAX: usize = 5;

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceIn {
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub name: String,
    /// Your own key, which paths take in place of the id; not in the form of a source id (`src_` and 22 letters or digits).
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = SOURCE_UID_PATTERN))]
    pub uid: Option<String>,
    pub preset: hookline_core::inbound::Preset,
    #[serde(deserialize_with = "exact::objects")]
    #[schemars(length(min = 1, max = SOURCE_SECRETS_MAX))]
    pub secrets: Vec<SourceSecretIn>,
    #[schemars(length(min = 1), inner(length(min = 1, max = NAME_CHARS_MAX)))]
    pub event_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "exact::object_option")]
    pub config: Option<hookline_core::inbound::SourceConfig>,
    /// The application whose endpoints receive the events (id or uid).
    pub app_id: String,
    /// A key for the provider's events API (Stripe: a restricted key with read access to
    /// events): Hookline then reconciles, ingesting events it never received. Sealed at
    /// rest, never shown.
    #[schemars(length(min = 1, max = SOURCE_SECRET_CHARS_MAX), regex(pattern = API_KEY_PATTERN))]
    pub api_key: Option<String>,
}

/// API keys: visible ASCII (they go in an `Authorization` header).
pub const API_KEY_PATTERN: &str = "^[!-~]+$";

#[derive(Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourcePatch {
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = TEXT_PATTERN))]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    /// Your own key, which paths take in place of the id; not in the form of a source id (`src_` and 22 letters or digits).
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = SOURCE_UID_PATTERN))]
    pub uid: Option<Option<String>>,
    pub preset: Option<hookline_core::inbound::Preset>,
    #[serde(default, deserialize_with = "exact::objects_option")]
    #[schemars(length(min = 1, max = SOURCE_SECRETS_MAX))]
    pub secrets: Option<Vec<SourceSecretIn>>,
    #[serde(default, deserialize_with = "present")]
    #[schemars(length(min = 1), inner(length(min = 1, max = NAME_CHARS_MAX)))]
    pub event_types: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "exact::object_option")]
    pub config: Option<hookline_core::inbound::SourceConfig>,
    pub app_id: Option<String>,
    /// A new API key, or null to stop reconciling.
    #[serde(default, deserialize_with = "present")]
    #[schemars(length(min = 1, max = SOURCE_SECRET_CHARS_MAX), regex(pattern = API_KEY_PATTERN))]
    pub api_key: Option<Option<String>>,
}

/// A secret as shown back: never the value, only its last characters and expiry.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSecretOut {
    /// The secret's last 4 characters, to tell secrets apart; empty for a secret under 16
    /// characters, of which they would give away too much.
    pub ends_with: String,
    pub expires_at: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceOut {
    pub id: String,
    pub uid: Option<String>,
    pub name: String,
    pub preset: hookline_core::inbound::Preset,
    pub secrets: Vec<SourceSecretOut>,
    pub event_types: Option<Vec<String>>,
    pub config: hookline_core::inbound::SourceConfig,
    /// Whether the source has an API key and is reconciled.
    pub reconciles: bool,
    pub app_id: String,
    /// The URL to give the provider.
    pub ingest_url: String,
    pub created_at: String,
    pub updated_at: String,
}

/// What `POST /in/{source}` answers when it accepts, filters or recognises a duplicate.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestOut {
    /// `accepted`, `duplicate` or `filtered`.
    pub status: &'static str,
    pub message_id: Option<String>,
}

/// A request a source refused, kept in a short in-memory log for debugging a setup.
#[derive(Serialize, Clone, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectionOut {
    pub timestamp: String,
    pub code: &'static str,
    pub detail: String,
    pub body_bytes: usize,
}

/// An application-scoped API token. `token` is present only in the answer that creates it.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenOut {
    pub id: String,
    pub app_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub created_at: String,
}

pub use hookline_core::signature::HEADER_NAME_PATTERN;
/// Header values: no control characters but tab.
pub const HEADER_VALUE_PATTERN: &str = r"^[^\u0000-\u0008\u000A-\u001F\u007F]*$";
/// Custom headers an endpoint may send.
pub const ENDPOINT_HEADERS_MAX: usize = 32;

/// An endpoint's custom headers: at most 32, valid names other than the reserved ones (in any
/// case), valid values.
fn headers_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    headers_json_schema("object")
}

fn optional_headers_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    headers_json_schema(["object", "null"])
}

/// Custom headers with one spelling of each name (names ignore case): of several, the last
/// in byte order is kept, with its value. Refused, two spellings were a 422 the document
/// could not say (a JSON Schema cannot compare names ignoring case).
fn case_folded<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    // In byte order, so a later spelling replaces an earlier one under their common key.
    let given = BTreeMap::<String, String>::deserialize(d)?;
    let mut by_folded = BTreeMap::new();
    for (name, value) in given {
        by_folded.insert(name.to_ascii_lowercase(), (name, value));
    }
    Ok(by_folded.into_values().collect())
}

fn case_folded_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    #[derive(Deserialize)]
    struct Folded(#[serde(deserialize_with = "case_folded")] BTreeMap<String, String>);
    Ok(Option::<Folded>::deserialize(d)?.map(|Folded(headers)| headers))
}

fn headers_json_schema(kind: impl serde::Serialize) -> schemars::Schema {
    let reserved = hookline_core::signature::reserved_headers_pattern();
    schemars::json_schema!({
        "type": kind,
        "description": "Header names ignore case: of several spellings of one name (`X-A` and `x-a`), one is kept, \
            the last in byte order (`x-a`), with its value.",
        "maxProperties": ENDPOINT_HEADERS_MAX,
        "propertyNames": {"pattern": HEADER_NAME_PATTERN, "not": {"pattern": reserved}},
        "additionalProperties": {"type": "string", "pattern": HEADER_VALUE_PATTERN},
    })
}

/// Svix's endpoint stats: deliveries of messages created in the range, by status.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatsOut {
    /// Delivered.
    pub success: u64,
    /// Waiting for their first attempt or a retry (those behind an earlier message of
    /// their ordering key included).
    pub pending: u64,
    /// Being attempted now.
    pub sending: u64,
    /// Given up on (retries exhausted, or the endpoint answered `410 Gone`).
    pub fail: u64,
    pub canceled: u64,
    /// Recorded while the endpoint was disabled, never attempted (`recover` sends them).
    pub skipped: u64,
}

/// Attempts to an endpoint in the range, by outcome, with latency from a histogram (the
/// upper bound of the bucket the quantile falls in: 50, 100, 250, 500, 1000, 2500 or
/// 10000 ms; null without attempts).
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAttemptStatsOut {
    pub success: u64,
    pub fail: u64,
    pub canceled: u64,
    pub latency_p50_ms: Option<u64>,
    pub latency_p99_ms: Option<u64>,
}

/// Attempts per period, one array element per point.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptSeries {
    pub success_count: Vec<u64>,
    pub failure_count: Vec<u64>,
    /// Null where a point has no attempts (see `EndpointAttemptStatsOut` for the buckets).
    pub latency_p50_ms: Vec<Option<u64>>,
    pub latency_p99_ms: Vec<Option<u64>>,
}

/// A time series of attempts (Svix's hosted `AppAttemptStats` shape, plus latency).
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptSeriesOut {
    pub data: AttemptSeries,
    /// `OneMinute`, `FiveMinutes`, `OneHour` or `OneDay`.
    pub period: &'static str,
    /// The first point's start.
    pub start_date: String,
    /// The end of the last point.
    pub end_date: String,
}

/// The delivery queue: deliveries not finished, across the cluster, and in flight here.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatsOut {
    /// Deliveries waiting for their next attempt or being attempted, on every node.
    pub open: u64,
    /// Attempts in flight on the node that answered.
    pub in_flight: u64,
}

/// An endpoint failing now, with its application.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailingEndpointOut {
    pub app_id: String,
    pub endpoint: EndpointOut,
}

/// A test message's event type (Svix's `EventExampleIn`).
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventExampleIn {
    #[schemars(length(min = 1, max = NAME_CHARS_MAX), regex(pattern = PRINTABLE_PATTERN))]
    pub event_type: String,
}

/// A portal link's options: none yet (Svix's `featureFlags`, `readOnly` and `expiry` are
/// refused rather than ignored; the session lasts `dashboard.session_ttl_ms`).
#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppPortalAccessIn {}

/// Svix's `ApplicationTokenExpireIn`: when an application's portal sessions and unused portal
/// links end. Svix's `sessionIds` is refused (Hookline's portal sessions have no ids to give).
#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppTokenExpireIn {
    /// Seconds from now until the sessions end, at most three days; none or 0: at once.
    /// Portal links not yet used end at once whatever this says.
    #[serde(default, deserialize_with = "exact::integer_option")]
    #[schemars(range(min = 0, max = EXPIRE_SECONDS_MAX))]
    pub expiry: Option<i64>,
}

/// The longest `expiry` of `AppTokenExpireIn`, Svix's limit.
pub const EXPIRE_SECONDS_MAX: i64 = 259_200;

/// A single-use link that signs a merchant in to the dashboard's portal for one application.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppPortalAccessOut {
    /// Open it in a browser within `dashboard.link_ttl_ms` (default 10 minutes); it works once.
    pub url: String,
    /// The link's secret (the `code` in `url`).
    pub token: String,
}

/// An inbound source per period: requests, and the attempts forwarding its events.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSeries {
    /// Requests verified and stored (or verified and filtered out by event type).
    pub accepted: Vec<u64>,
    /// Requests refused: signature, replay window, size or shape.
    pub refused: Vec<u64>,
    /// Requests carrying an event id already received.
    pub duplicate: Vec<u64>,
    pub forwarded: AttemptSeries,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSeriesOut {
    pub data: SourceSeries,
    pub period: &'static str,
    pub start_date: String,
    pub end_date: String,
}

/// An endpoint's ordering lanes: the deliveries of one key (or of a FIFO endpoint) wait
/// behind the open one.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderingOut {
    pub data: Vec<OrderingLaneOut>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderingLaneOut {
    /// The ordering key (`""`: a FIFO endpoint's one lane).
    pub key: String,
    /// The delivery the others wait for (being attempted, or waiting for its retry); null
    /// when none is open.
    pub head: Option<OrderingHeadOut>,
    /// How many deliveries wait behind it.
    pub waiting: u64,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderingHeadOut {
    pub msg_id: String,
    pub status: i64,
    pub status_text: &'static str,
    /// Attempts made so far in this retry cycle.
    pub attempts: u32,
    pub next_attempt: Option<String>,
}

/// A delivery's state after an operator's call.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatusOut {
    pub status: i64,
    pub status_text: &'static str,
}

/// One reconciliation of a source against its provider's events API.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileRunOut {
    pub started_at: String,
    pub finished_at: String,
    /// Events listed from this time on.
    pub since: String,
    /// Events the provider listed.
    pub found: u64,
    /// Of those, events Hookline had received already.
    pub already_had: u64,
    /// Events it had missed, now stored and forwarded.
    pub ingested: u64,
    /// Events the source's `eventTypes` does not take.
    pub filtered: u64,
    /// Events in which the source's event id settings find no id: not taken, as they could
    /// not be matched with the webhooks' events (each run would take them again); `errors`
    /// names the first.
    #[serde(default)]
    pub without_id: u64,
    /// What went wrong: a failed page ends the run (the next run starts over); the first
    /// event without an id is named, and the run goes on.
    pub errors: Vec<String>,
    /// The event this run went on after: where the run before stopped at its page limit
    /// (older events than those it read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_after: Option<String>,
    /// The last event listed when the run stopped at its page limit
    /// (`inbound.reconcile_pages_max`): the next run goes on after it, the run after that
    /// starts again from the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_after: Option<String>,
}
