//! Inbound sources: `/api/v1/source` to manage them, and `POST /in/{source}` where providers
//! (Stripe, Shopify, GitHub, ...) send webhooks. A request is verified over its raw bytes,
//! deduplicated on the provider's event id, filtered by event type, stored with its
//! deliveries in one synced commit, and only then acknowledged.

use super::apps::find as find_app;
use super::route::{tagged, Route};
use super::{listed, query, views, AppState, JsonBody, ListQuery, PathParams, QueryParams, Shared, Text};
use crate::error::{ApiError, ApiResult};
use crate::ingest;
use crate::stats::Inbound;
use crate::wire::*;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Json;
use hookline_core::id::prefix;
use hookline_core::inbound::{verify, Rejection};
use hookline_store::{Bytes, Message, PublishOutcome, Source, SourceSecret, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Provider headers forwarded with an inbound event, at most.
const FORWARDED_HEADERS_MAX: usize = 64;
/// Headers never forwarded: transport details, and credentials meant for Hookline or a
/// proxy before it ([`super::endpoints::SENSITIVE_HEADERS`]).
const NOT_FORWARDED: &[&str] = &["host", "content-length", "connection", "transfer-encoding"];
/// The prefix of forwarded provider headers on deliveries.
pub const FORWARDED_PREFIX: &str = "x-hookline-forwarded-";

pub fn routes() -> Vec<Route> {
    let (sources, source) = ("/api/v1/source", "/api/v1/source/{source_id}");
    tagged(
        "Inbound source",
        vec![
            Route::get(sources, list)
                .doc("listSources", "List inbound sources.")
                .query(&query::PAGE)
                .answers::<ListResponse<SourceOut>>(200, "A page of sources."),
            Route::post(sources, create)
                .doc("createSource", "Create a source; give its ingestUrl to the provider.")
                .body::<SourceIn>()
                .answers::<SourceOut>(201, "Created."),
            Route::get(source, read)
                .doc("getSource", "Get a source by id or uid (secrets are never shown).")
                .answers::<SourceOut>(200, "The source."),
            Route::put(source, replace)
                .doc("replaceSource", "Replace a source.")
                .body::<SourceIn>()
                .answers::<SourceOut>(200, "Replaced."),
            Route::patch(source, patch)
                .doc("patchSource", "Change some fields of a source (e.g. add a rotated secret).")
                .body::<SourcePatch>()
                .answers::<SourceOut>(200, "The changed source."),
            Route::delete(source, remove).doc("deleteSource", "Delete a source.").empty(204, "Deleted."),
            Route::get("/api/v1/source/{source_id}/event", events)
                .doc("listSourceEvents", "Events the source received and accepted.")
                .query(&[query::LIMIT, query::ITERATOR, query::ORDER, query::WITH_CONTENT])
                .answers::<ListResponse<MessageOut>>(200, "A page of events."),
            Route::post("/api/v1/source/{source_id}/event/{msg_id}/replay", replay)
                .doc("replaySourceEvent", "Deliver a received event again.")
                .answers::<ReplayOut>(202, "Due again at once."),
            Route::post("/api/v1/source/{source_id}/reconcile", reconcile_now)
                .doc(
                    "reconcileSource",
                    "List the provider's events (Stripe sources with an apiKey) and ingest those never received; \
                     answers when the run is done.",
                )
                .answers::<ReconcileRunOut>(200, "The run's result."),
            Route::get("/api/v1/source/{source_id}/reconcile", reconcile_runs)
                .doc("listSourceReconciliations", "The source's reconciliation runs, newest first (the last 100).")
                .answers::<ListResponse<ReconcileRunOut>>(200, "The runs."),
            Route::get("/api/v1/source/{source_id}/rejection", rejections)
                .doc("listSourceRejections", "Recently refused requests, for debugging a setup.")
                .answers::<Vec<RejectionOut>>(200, "The refusals, newest first."),
        ],
    )
}

/// The provider-facing routes; no bearer token: the signature is the credential.
pub fn ingest_routes() -> Vec<Route> {
    let summary = "Where the provider sends webhooks (no bearer token; the provider's signature is checked). \
        401 with the reason when unverified; 404 unknown source; 413 oversized; 503 storage unavailable.";
    tagged(
        "Inbound source",
        vec![
            Route::post("/in/{source}", ingest)
                .doc("ingest", summary)
                .public()
                .answers::<IngestOut>(200, "Stored, a duplicate, or filtered (`status` says which)."),
            Route::post("/in/{source}/{*rest}", ingest)
                .doc("ingestWithPath", "The same, for providers that append a path.")
                .public()
                .answers::<IngestOut>(200, "Stored, a duplicate, or filtered (`status` says which)."),
        ],
    )
}

fn secrets_from(input: Vec<SourceSecretIn>) -> ApiResult<Vec<SourceSecret>> {
    if input.is_empty() || input.len() > SOURCE_SECRETS_MAX {
        return Err(ApiError::field("secrets", format!("a source needs 1 to {SOURCE_SECRETS_MAX} secrets")));
    }
    input
        .into_iter()
        .map(|s| {
            let (value, expires) = match s {
                SourceSecretIn::Value(value) => (value, None),
                SourceSecretIn::WithExpiry { value, expires_at } => (value, expires_at),
            };
            if value.is_empty() || value.chars().count() > SOURCE_SECRET_CHARS_MAX {
                let detail = format!("a secret must be 1 to {SOURCE_SECRET_CHARS_MAX} characters");
                return Err(ApiError::field("secrets", detail));
            }
            let expires_at = match expires {
                Some(t) => Some(
                    parse_timestamp(&t)
                        .ok_or_else(|| ApiError::field("secrets", "expiresAt must be an RFC 3339 time"))?,
                ),
                None => None,
            };
            Ok(SourceSecret { value, expires_at })
        })
        .collect()
}

/// What `SourceSecretOut::ends_with` shows of a secret.
fn shown_end(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    match chars.len() {
        0..16 => String::new(),
        n => chars[n - 4..].iter().collect(),
    }
}

fn view(state: &AppState, s: Source) -> SourceOut {
    SourceOut {
        ingest_url: format!("{}/in/{}", state.public_url(), s.id),
        secrets: s
            .secrets
            .iter()
            .map(|secret| SourceSecretOut {
                ends_with: shown_end(&secret.value),
                expires_at: secret.expires_at.map(timestamp),
            })
            .collect(),
        id: s.id,
        uid: s.uid,
        name: s.name,
        preset: s.preset,
        event_types: s.event_types,
        config: s.config,
        reconciles: s.api_key.is_some(),
        app_id: s.app_id,
        created_at: timestamp(s.created_at),
        updated_at: timestamp(s.updated_at),
    }
}

/// Checks a source as it would be saved, over the uid `stored` (if it replaces one).
fn check(source: &Source, stored: Option<&Option<String>>) -> ApiResult<()> {
    super::check_text("name", &source.name, Text::Prose, 1, NAME_CHARS_MAX)?;
    super::check_uid_kept(&source.uid, stored, prefix::SOURCE)?;
    if let Some(types) = &source.event_types {
        if types.is_empty() || types.iter().any(|t| t.is_empty() || t.chars().count() > NAME_CHARS_MAX) {
            return Err(ApiError::field("eventTypes", "eventTypes must hold 1 or more names of 1 to 256 bytes"));
        }
    }
    let tolerance = source.config.tolerance_seconds;
    if tolerance.is_some_and(|t| !(1..=86_400).contains(&t)) {
        return Err(ApiError::field("config", "toleranceSeconds must be 1 to 86400"));
    }
    // As the schema states: it goes into an Authorization header of the provider's API.
    if let Some(key) = &source.api_key {
        if key.is_empty() || key.len() > 1024 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::field("apiKey", "apiKey must be 1 to 1024 visible ASCII characters"));
        }
    }
    let config = &source.config;
    // The bounds `SourceConfig`'s schema states.
    let sized = |value: &str, max: usize| (1..=max).contains(&value.chars().count());
    if !config.notification_url.as_deref().is_none_or(|url| sized(url, 2048)) {
        return Err(ApiError::field("config", "notificationUrl must be 1 to 2048 characters"));
    }
    if !config.public_key.as_deref().is_none_or(|key| sized(key, 256)) {
        return Err(ApiError::field("config", "publicKey must be 1 to 256 characters"));
    }
    if let Some(templates) = &config.event_id_templates {
        if !(1..=8).contains(&templates.len()) || !templates.iter().all(|t| sized(t, 512)) {
            return Err(ApiError::field(
                "config",
                "eventIdTemplates must hold 1 to 8 templates of 1 to 512 characters",
            ));
        }
    }
    Ok(())
}

async fn create(state: Shared, JsonBody(input): JsonBody<SourceIn>) -> ApiResult<(StatusCode, Json<SourceOut>)> {
    let app = find_app(&state, &input.app_id).await?;
    let now = state.now();
    let source = Source {
        id: state.new_id(prefix::SOURCE),
        uid: input.uid,
        name: input.name,
        app_id: app.id,
        preset: input.preset,
        secrets: secrets_from(input.secrets)?,
        event_types: input.event_types,
        config: input.config.unwrap_or_default(),
        created_at: now,
        updated_at: now,
        api_key: input.api_key,
    };
    check(&source, None)?;
    let created = state.store.create_source(source).await.map_err(ApiError::from_store("source"))?;
    state.engine.catalog.invalidate_sources();
    Ok((StatusCode::CREATED, Json(view(&state, created))))
}

async fn list(state: Shared, QueryParams(query): QueryParams<ListQuery>) -> ApiResult<Json<ListResponse<SourceOut>>> {
    let sources = state.store.list_sources(query.page(false)?).await.map_err(ApiError::from_store("source"))?;
    Ok(Json(listed(sources, |s| s.id.clone(), |s| view(&state, s))))
}

pub async fn find(state: &AppState, key: &str) -> ApiResult<Source> {
    state.store.get_source(key).await.map_err(ApiError::from_store("source"))
}

async fn read(state: Shared, PathParams(key): PathParams<String>) -> ApiResult<Json<SourceOut>> {
    Ok(Json(view(&state, find(&state, &key).await?)))
}

/// Saves a changed source; `stored_uid` is its uid before the change.
async fn save(state: &AppState, mut source: Source, stored_uid: Option<String>) -> ApiResult<Json<SourceOut>> {
    check(&source, Some(&stored_uid))?;
    source.updated_at = state.now();
    let saved = state.store.update_source(source).await.map_err(ApiError::from_store("source"))?;
    state.engine.catalog.invalidate_sources();
    Ok(Json(view(state, saved)))
}

async fn replace(
    state: Shared,
    PathParams(key): PathParams<String>,
    JsonBody(input): JsonBody<SourceIn>,
) -> ApiResult<Json<SourceOut>> {
    let mut source = find(&state, &key).await?;
    let stored_uid = source.uid.clone();
    source.app_id = find_app(&state, &input.app_id).await?.id;
    source.name = input.name;
    source.uid = input.uid;
    source.preset = input.preset;
    source.secrets = secrets_from(input.secrets)?;
    source.event_types = input.event_types;
    source.config = input.config.unwrap_or_default();
    source.api_key = input.api_key;
    save(&state, source, stored_uid).await
}

async fn patch(
    state: Shared,
    PathParams(key): PathParams<String>,
    JsonBody(input): JsonBody<SourcePatch>,
) -> ApiResult<Json<SourceOut>> {
    let mut source = find(&state, &key).await?;
    let stored_uid = source.uid.clone();
    if let Some(app_id) = input.app_id {
        source.app_id = find_app(&state, &app_id).await?.id;
    }
    if let Some(name) = input.name {
        source.name = name;
    }
    if let Some(uid) = input.uid {
        source.uid = uid;
    }
    if let Some(preset) = input.preset {
        source.preset = preset;
    }
    if let Some(api_key) = input.api_key {
        source.api_key = api_key;
    }
    if let Some(secrets) = input.secrets {
        source.secrets = secrets_from(secrets)?;
    }
    if let Some(types) = input.event_types {
        source.event_types = types;
    }
    if let Some(config) = input.config {
        source.config = config;
    }
    save(&state, source, stored_uid).await
}

async fn remove(state: Shared, PathParams(key): PathParams<String>) -> ApiResult<StatusCode> {
    let source = find(&state, &key).await?;
    state.store.delete_source(&source.id).await.map_err(ApiError::from_store("source"))?;
    state.engine.catalog.invalidate_sources();
    // Its refused requests can never be listed again (ids are not reused).
    state.rejections.lock().expect("rejections lock").remove(&source.id);
    state.engine.source_series.keep(|id| id != source.id);
    Ok(StatusCode::NO_CONTENT)
}

/// What a source received and accepted (verified), newest first.
async fn events(
    state: Shared,
    PathParams(key): PathParams<String>,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListResponse<MessageOut>>> {
    let source = find(&state, &key).await?;
    let received = state
        .store
        .list_source_messages(&source.id, query.page(true)?)
        .await
        .map_err(ApiError::from_store("source"))?;
    Ok(Json(listed(received, |m| m.id.clone(), |m| views::message(m, query.with_content.unwrap_or(true)))))
}

/// Delivers a received event again to every enabled endpoint of the source's application
/// that takes it (its event types and channels, as when it was received). An endpoint whose
/// delivery of it is still waiting in its ordering lane gets it there, and is not counted.
async fn replay(
    state: Shared,
    PathParams((key, msg_id)): PathParams<(String, String)>,
) -> ApiResult<(StatusCode, Json<ReplayOut>)> {
    let source = find(&state, &key).await?;
    let message = state.store.get_message(&source.app_id, &msg_id).await.map_err(ApiError::from_store("message"))?;
    if message.source_id.as_deref() != Some(source.id.as_str()) {
        return Err(ApiError::NotFound("message"));
    }
    let endpoints = state.engine.catalog.endpoints(&source.app_id).await.map_err(ApiError::from_store("endpoint"))?;
    let message = Arc::new(message);
    let mut replayed = 0;
    for endpoint in endpoints.iter().filter(|e| !e.disabled && crate::dispatch::takes(e, &message)) {
        match super::messages::send_again(&state, &source.app_id, message.clone(), &endpoint.id).await {
            Ok(()) => replayed += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(ApiError::from_store("message")(e)),
        }
    }
    Ok((StatusCode::ACCEPTED, Json(ReplayOut { replayed })))
}

/// The source's most recent refused requests (kept in memory, oldest first), newest first
/// as the document says.
async fn rejections(state: Shared, PathParams(key): PathParams<String>) -> ApiResult<Json<Vec<RejectionOut>>> {
    let source = find(&state, &key).await?;
    let log = state.rejections.lock().expect("rejections lock");
    Ok(Json(log.get(&source.id).map(|l| l.iter().rev().cloned().collect()).unwrap_or_default()))
}

/// Counts an answered request in the metrics and in the source's statistics (`filtered`
/// counts as accepted there: the request was good, its event type unwanted).
fn count(state: &AppState, source: &Source, outcome: &'static str) {
    state.engine.source_series.count(&source.id, outcome);
    let kind = match outcome {
        "accepted" | "filtered" => Inbound::Accepted,
        "duplicate" => Inbound::Duplicate,
        _ => Inbound::Refused,
    };
    state.engine.stats.inbound(&source.id, &source.app_id, kind, state.now());
}

fn reject(state: &AppState, source: &Source, rejection: Rejection, body_bytes: usize) -> ApiError {
    count(state, source, rejection.code());
    let mut log = state.rejections.lock().expect("rejections lock");
    let entries = log.entry(source.id.clone()).or_default();
    entries.push_back(RejectionOut {
        timestamp: timestamp(state.now()),
        code: rejection.code(),
        detail: rejection.to_string(),
        body_bytes,
    });
    while entries.len() > state.config.inbound.rejections_kept {
        entries.pop_front();
    }
    ApiError::Unverified(rejection)
}

/// The headers a delivery of an inbound event carries: the provider's content type, the
/// source, the original method and path, and the provider's own headers under a prefix.
fn forwarded_headers(source: &Source, method: &Method, uri: &Uri, headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("x-hookline-source".to_owned(), source.id.clone());
    out.insert("x-hookline-original-method".to_owned(), method.to_string());
    out.insert("x-hookline-original-path".to_owned(), uri.path_and_query().map(|p| p.to_string()).unwrap_or_default());
    if let Some(content_type) = headers.get("content-type").and_then(|v| v.to_str().ok()) {
        out.insert("content-type".to_owned(), content_type.to_owned());
    }
    let provider = headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !NOT_FORWARDED.contains(&name)
                && !super::endpoints::SENSITIVE_HEADERS.contains(&name)
                && name != "content-type"
        })
        .filter_map(|(name, value)| Some((format!("{FORWARDED_PREFIX}{name}"), value.to_str().ok()?.to_owned())))
        .take(FORWARDED_HEADERS_MAX);
    out.extend(provider);
    out
}

async fn ingest(
    State(state): Shared,
    PathParams(params): PathParams<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<IngestOut>> {
    let key = params.get("source").cloned().unwrap_or_default();
    let source = state.engine.catalog.source(&key).await.map_err(ApiError::from_store("source"))?;
    let body = super::read_body(body, &state.config).await.inspect_err(|e| match e {
        ApiError::PayloadTooLarge(_) => count(&state, &source, "oversized"),
        ApiError::RequestTimeout(_) => count(&state, &source, "body_timeout"),
        _ => {}
    })?;
    let now = state.now();
    let secrets: Vec<&str> =
        source.secrets.iter().filter(|s| s.expires_at.is_none_or(|at| at > now)).map(|s| s.value.as_str()).collect();
    let lookup = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified = verify(source.preset, &source.config, &lookup, &body, &secrets, now / 1000)
        .map_err(|rejection| reject(&state, &source, rejection, body.len()))?;
    let event_type = verified.event_type.clone().unwrap_or_else(|| format!("{}.event", preset_name(&source)));
    if source.event_types.as_ref().is_some_and(|accepted| !accepted.contains(&event_type)) {
        count(&state, &source, "filtered");
        return Ok(Json(IngestOut { status: "filtered", message_id: None }));
    }
    let forwarded = forwarded_headers(&source, &method, &uri, &headers);
    // The body is a slice of the connection's read buffer: kept as the message's payload,
    // it would pin that whole buffer until the delivery is done. A copy lets the buffer go
    // once this request is answered.
    let payload = Bytes::copy_from_slice(&body);
    let (message, outcome) = accept(&state, &source, payload, event_type, verified.event_id, forwarded).await?;
    let earlier = match outcome {
        PublishOutcome::Created => {
            count(&state, &source, "accepted");
            return Ok(Json(IngestOut { status: "accepted", message_id: Some(message.id.clone()) }));
        }
        PublishOutcome::Duplicate(existing) => existing.id,
        PublishOutcome::DuplicateOfPurged(msg_id) => msg_id,
    };
    count(&state, &source, "duplicate");
    Ok(Json(IngestOut { status: "duplicate", message_id: Some(earlier) }))
}

async fn reconcile_now(state: Shared, PathParams(key): PathParams<String>) -> ApiResult<Json<ReconcileRunOut>> {
    let source = find(&state, &key).await?;
    if !crate::reconcile::reconcilable(&source) {
        // The source's state, not the request, is what is missing: a conflict, as a
        // schema-valid request it is not the request's fault (422 would say it is).
        return Err(ApiError::Conflict("reconciliation needs a stripe source with an apiKey".into()));
    }
    Ok(Json(crate::reconcile::run(&state, &source).await))
}

async fn reconcile_runs(
    state: Shared,
    PathParams(key): PathParams<String>,
) -> ApiResult<Json<ListResponse<ReconcileRunOut>>> {
    let source = find(&state, &key).await?;
    let runs = state
        .store
        .reconcile_runs(&source.id, hookline_store::RECONCILE_RUNS_KEPT)
        .await
        .map_err(ApiError::from_store("source"))?;
    let data = runs.iter().filter_map(|text| serde_json::from_str(text).ok()).collect();
    Ok(Json(ListResponse { data, iterator: None, prev_iterator: None, done: true }))
}

/// Stores a verified event of `source` as a message for its application's endpoints, in
/// one commit with its dedupe key (so a provider's retry, or an event reconciliation finds
/// again, is a duplicate). Requests and reconciliation both end here.
pub async fn accept(
    state: &AppState,
    source: &Source,
    payload: Bytes,
    event_type: String,
    event_id: Option<String>,
    headers: BTreeMap<String, String>,
) -> ApiResult<(Arc<Message>, PublishOutcome)> {
    let now = state.now();
    let message = Arc::new(Message {
        id: state.new_id(prefix::MESSAGE),
        app_id: source.app_id.clone(),
        event_id: None,
        event_type,
        payload,
        channels: None,
        tags: None,
        callback_url: None,
        deliver_at: None,
        source_id: Some(source.id.clone()),
        headers: Some(headers),
        retain_until: None,
        ordering_key: None,
        created_at: now,
    });
    let dedupe = event_id.map(|id| (source.id.clone(), id));
    let outcome = ingest::submit(&state.engine, message.clone(), None, dedupe).await?;
    Ok((message, outcome))
}

fn preset_name(source: &Source) -> String {
    serde_json::to_value(source.preset).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
