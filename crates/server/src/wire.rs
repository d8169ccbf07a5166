//! JSON wire types of the management API. Field names follow the Svix v1 API (camelCase,
//! current names with older aliases such as `filterTypes` and `rateLimit`); Hookline's own
//! additions are optional fields.

use hookline_core::retry::RetryPolicy;
use hookline_core::signature::SignatureScheme;
use hookline_core::UnixMs;
use hookline_store::Metadata;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

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

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationIn {
    pub name: String,
    pub uid: Option<String>,
    #[serde(alias = "rateLimit")]
    pub throttle_rate: Option<u32>,
    pub metadata: Option<Metadata>,
    pub retry_policy: Option<RetryPolicy>,
}

#[derive(Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationPatch {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub uid: Option<Option<String>>,
    #[serde(default, alias = "rateLimit", deserialize_with = "present")]
    pub throttle_rate: Option<Option<u32>>,
    pub metadata: Option<Metadata>,
    #[serde(default, deserialize_with = "present")]
    pub retry_policy: Option<Option<RetryPolicy>>,
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
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointIn {
    pub url: String,
    #[serde(default)]
    pub description: String,
    pub version: Option<u32>,
    pub disabled: Option<bool>,
    #[serde(alias = "filterTypes")]
    pub event_types: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    #[serde(alias = "rateLimit")]
    pub throttle_rate: Option<u32>,
    pub uid: Option<String>,
    pub secret: Option<String>,
    pub metadata: Option<Metadata>,
    pub headers: Option<BTreeMap<String, String>>,
    pub signature_scheme: Option<SignatureScheme>,
    pub retry_policy: Option<RetryPolicy>,
}

#[derive(Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    pub version: Option<u32>,
    pub disabled: Option<bool>,
    #[serde(default, alias = "filterTypes", deserialize_with = "present")]
    pub event_types: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pub channels: Option<Option<Vec<String>>>,
    #[serde(default, alias = "rateLimit", deserialize_with = "present")]
    pub throttle_rate: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    pub uid: Option<Option<String>>,
    pub metadata: Option<Metadata>,
    pub signature_scheme: Option<SignatureScheme>,
    #[serde(default, deserialize_with = "present")]
    pub retry_policy: Option<Option<RetryPolicy>>,
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
}

#[derive(Serialize, JsonSchema)]
pub struct EndpointSecretOut {
    pub key: String,
}

#[derive(Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSecretRotateIn {
    pub key: Option<String>,
    pub grace_period_seconds: Option<u64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointHeadersIn {
    pub headers: BTreeMap<String, String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointHeadersPatchIn {
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
    pub since: String,
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
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub archived: Option<bool>,
    pub deprecated: Option<bool>,
    pub schemas: Option<serde_json::Value>,
    pub group_name: Option<String>,
    pub feature_flags: Option<Vec<String>>,
    pub feature_flag: Option<String>,
}

#[derive(Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTypePatch {
    pub description: Option<String>,
    pub archived: Option<bool>,
    pub deprecated: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub schemas: Option<Option<serde_json::Value>>,
    #[serde(default, deserialize_with = "present")]
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

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageIn {
    pub event_type: String,
    /// Kept as the exact bytes received: never re-serialized.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub payload: Box<RawValue>,
    pub event_id: Option<String>,
    pub channels: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub application: Option<ApplicationIn>,
    pub deliver_at: Option<String>,
    pub callback_url: Option<String>,
    pub transformations_params: Option<serde_json::Value>,
    pub payload_retention_period: Option<i64>,
    pub payload_retention_hours: Option<i64>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageOut {
    pub id: String,
    pub event_id: Option<String>,
    pub event_type: String,
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub payload: Box<RawValue>,
    pub channels: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub timestamp: String,
    pub deliver_at: Option<String>,
    pub callback_url: Option<String>,
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

#[derive(Serialize, JsonSchema)]
pub struct HealthOut {
    pub status: &'static str,
}

/// A source secret as given: a string, or one with an expiry (for a provider's rotation).
#[derive(Deserialize, Clone, JsonSchema)]
#[serde(untagged)]
pub enum SourceSecretIn {
    Value(String),
    WithExpiry {
        value: String,
        #[serde(rename = "expiresAt")]
        expires_at: Option<String>,
    },
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceIn {
    pub name: String,
    pub uid: Option<String>,
    pub preset: hookline_core::inbound::Preset,
    pub secrets: Vec<SourceSecretIn>,
    pub event_types: Option<Vec<String>>,
    pub config: Option<hookline_core::inbound::SourceConfig>,
    /// The application whose endpoints receive the events (id or uid).
    pub app_id: String,
}

#[derive(Deserialize, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourcePatch {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub uid: Option<Option<String>>,
    pub preset: Option<hookline_core::inbound::Preset>,
    pub secrets: Option<Vec<SourceSecretIn>>,
    #[serde(default, deserialize_with = "present")]
    pub event_types: Option<Option<Vec<String>>>,
    pub config: Option<hookline_core::inbound::SourceConfig>,
    pub app_id: Option<String>,
}

/// A secret as shown back: never the value, only its last characters and expiry.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSecretOut {
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
