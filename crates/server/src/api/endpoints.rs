//! `/api/v1/app/{app_id}/endpoint`: merchants' URLs, their subscriptions, secrets and headers.

use super::apps::{find as find_app, new_secret};
use super::route::{tagged, Route};
use super::{listed, query, views, AppState, JsonBody, ListQuery, PathParams, Principal, QueryParams, Shared, Text};
use crate::dispatch::notices::{self, Notice};
use crate::error::{ApiError, ApiResult};
use crate::wire::*;
use axum::extract::Extension;
use axum::http::StatusCode;
use axum::Json;
use hookline_core::id::{has_prefix, prefix};
use hookline_core::queue_url::is_queue_url;
use hookline_core::signature::{Secret, SignatureScheme};
use hookline_core::ssrf::check_url;
use hookline_store::{App, Endpoint, Recovery, StoredSecret};
use std::collections::BTreeMap;

/// Secrets an endpoint may hold at once (the current one and those still in their grace).
const SECRETS_MAX: usize = 5;
/// Headers that carry credentials: the API never shows their values back, and an inbound
/// request's are never forwarded.
pub(super) const SENSITIVE_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "x-api-key"];

pub fn routes() -> Vec<Route> {
    let (eps, ep) = ("/api/v1/app/{app_id}/endpoint", "/api/v1/app/{app_id}/endpoint/{endpoint_id}");
    let headers_path = "/api/v1/app/{app_id}/endpoint/{endpoint_id}/headers";
    tagged(
        "Endpoint",
        vec![
            Route::get(eps, list)
                .doc("listEndpoints", "List an application's endpoints.")
                .query(&query::PAGE)
                .answers::<ListResponse<EndpointOut>>(200, "A page of endpoints."),
            Route::post(eps, create)
                .doc("createEndpoint", "Create an endpoint.")
                .body::<EndpointIn>()
                .answers::<EndpointOut>(201, "Created."),
            Route::get(ep, read)
                .doc("getEndpoint", "Get an endpoint by id or uid.")
                .answers::<EndpointOut>(200, "The endpoint."),
            Route::put(ep, replace)
                .doc("upsertEndpoint", "Replace an endpoint, or create it with this uid. Hookline's own settings left out (`headers`, `signatureScheme`, `retryPolicy`, `ordering`) are kept; PATCH changes or clears them.")
                .body::<EndpointIn>()
                .answers::<EndpointOut>(200, "Replaced.")
                .answers::<EndpointOut>(201, "Created with the path's key as uid."),
            Route::patch(ep, patch)
                .doc("patchEndpoint", "Change some fields of an endpoint.")
                .body::<EndpointPatch>()
                .answers::<EndpointOut>(200, "The changed endpoint."),
            Route::delete(ep, remove)
                .doc("deleteEndpoint", "Delete an endpoint; its open deliveries are canceled.")
                .empty(204, "Deleted."),
            Route::get("/api/v1/app/{app_id}/endpoint/{endpoint_id}/secret", secret)
                .doc("getEndpointSecret", "The endpoint's current signing secret.")
                .answers::<EndpointSecretOut>(200, "The secret."),
            Route::post("/api/v1/app/{app_id}/endpoint/{endpoint_id}/secret/rotate", rotate)
                .doc(
                    "rotateEndpointSecret",
                    "Rotate the secret; the old one keeps signing for the grace period (24 h), beside \
                     the new one (an `hmac-sha256-hex` endpoint's header has room for one signature: the \
                     new secret signs at once). Without a body, Hookline generates the new secret.",
                )
                .optional_body::<EndpointSecretRotateIn>()
                .answers::<EndpointSecretOut>(200, "The new secret."),
            Route::get(headers_path, headers)
                .doc("getEndpointHeaders", "Custom headers sent with each delivery.")
                .answers::<EndpointHeadersOut>(200, "The headers (sensitive ones by name only)."),
            Route::put(headers_path, replace_headers)
                .doc("setEndpointHeaders", "Replace the custom headers.")
                .body::<EndpointHeadersIn>()
                .empty(204, "Replaced."),
            Route::patch(headers_path, patch_headers)
                .doc("patchEndpointHeaders", "Add, change or delete custom headers.")
                .body::<EndpointHeadersPatchIn>()
                .empty(204, "Changed."),
            Route::post("/api/v1/app/{app_id}/endpoint/{endpoint_id}/recover", recover)
                .doc(
                    "recoverEndpoint",
                    "Resend every exhausted delivery, and every delivery skipped while the endpoint was \
                     disabled, for messages created since a time. The endpoint's deliveries are walked a \
                     few thousand at a time, each step committed: if the store fails during the walk, \
                     the answer is 503 with the steps done kept, and a recover again restarts the rest.",
                )
                .body::<RecoverIn>()
                .answers::<RecoverOut>(202, "Done: the deliveries are due again."),
            Route::post("/api/v1/app/{app_id}/endpoint/{endpoint_id}/send-example", send_example)
                .doc(
                    "sendEventTypeExample",
                    "Send a test message to this endpoint only, whatever event types it takes: its payload \
                     is `{\"type\": <eventType>, \"test\": true, \"timestamp\": <now>}`, signed and retried \
                     like any message.",
                )
                .body::<EventExampleIn>()
                .answers::<MessageOut>(202, "The test message, on its way to this endpoint."),
        ],
    )
}

async fn send_example(
    state: Shared,
    PathParams((app_id, endpoint_id)): PathParams<(String, String)>,
    JsonBody(input): JsonBody<EventExampleIn>,
) -> ApiResult<(StatusCode, Json<MessageOut>)> {
    super::check_text("eventType", &input.event_type, super::Text::Printable, 1, NAME_CHARS_MAX)?;
    let app = find_app(&state, &app_id).await?;
    let endpoint = find_in(&state, &app, &endpoint_id).await?;
    if endpoint.disabled {
        return Err(ApiError::Conflict("the endpoint is disabled; enable it to send it a test message".into()));
    }
    let now = state.now();
    let payload = serde_json::json!({"type": input.event_type, "test": true, "timestamp": timestamp(now)});
    let message = hookline_store::Message {
        id: state.new_id(prefix::MESSAGE),
        app_id: app.id.clone(),
        event_id: None,
        event_type: input.event_type,
        payload: bytes::Bytes::from(payload.to_string()),
        channels: None,
        tags: Some(vec!["test".into()]),
        callback_url: None,
        deliver_at: None,
        source_id: None,
        headers: None,
        ordering_key: None,
        retain_until: None,
        created_at: now,
    };
    // As any message to it: in its ordering lane when it is a FIFO endpoint.
    let delivery = state.engine.delivery_to(&endpoint, &message, now, now);
    let message = std::sync::Arc::new(message);
    state.engine.commit(&message, vec![delivery], None, None).await.map_err(ApiError::from_store("message"))?;
    Ok((StatusCode::ACCEPTED, Json(super::views::message((*message).clone(), true))))
}

fn check_list(field: &str, items: &Option<Vec<String>>) -> ApiResult<()> {
    if let Some(items) = items {
        let bad = |i: &String| i.is_empty() || i.chars().count() > NAME_CHARS_MAX;
        if items.is_empty() || items.len() > LIST_ITEMS_MAX || items.iter().any(bad) {
            return Err(ApiError::field(
                field,
                format!("{field} must hold 1 to {LIST_ITEMS_MAX} names of 1 to {NAME_CHARS_MAX} characters"),
            ));
        }
    }
    Ok(())
}

fn check_headers(headers: &BTreeMap<String, String>) -> ApiResult<()> {
    if headers.len() > ENDPOINT_HEADERS_MAX {
        return Err(ApiError::field("headers", format!("at most {ENDPOINT_HEADERS_MAX} headers")));
    }
    // Header names ignore case: two spellings of one would both be sent.
    let mut seen = std::collections::HashSet::new();
    if let Some(name) = headers.keys().find(|name| !seen.insert(name.to_ascii_lowercase())) {
        return Err(ApiError::field("headers", format!("`{name}` is given twice (header names ignore case)")));
    }
    for (name, value) in headers {
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || axum::http::HeaderValue::from_str(value).is_err()
        {
            return Err(ApiError::field("headers", format!("`{name}` is not a valid header")));
        }
        if hookline_core::signature::is_reserved_header(name) {
            return Err(ApiError::field("headers", format!("`{name}` is set by Hookline and cannot be overridden")));
        }
    }
    Ok(())
}

/// Checks an endpoint as it would be saved over `stored` (if it replaces one). Its URL and
/// uid are checked when new: one stored under older rules stays as it is through other
/// changes (disabling it, say).
fn check(state: &AppState, e: &Endpoint, stored: Option<&Endpoint>) -> ApiResult<()> {
    if stored.is_none_or(|s| s.url != e.url) {
        check_url(&e.url, &state.addresses).map_err(|err| ApiError::field("url", err.to_string()))?;
    }
    super::check_rate(e.throttle_rate)?;
    super::check_uid_kept(&e.uid, stored.map(|s| &s.uid), prefix::ENDPOINT)?;
    check_list("eventTypes", &e.event_types)?;
    check_list("channels", &e.channels)?;
    check_headers(&e.headers)?;
    super::check_text("description", &e.description, Text::Prose, 0, DESCRIPTION_CHARS_MAX)?;
    if let SignatureScheme::HmacSha256Hex { header } = &e.signature_scheme {
        if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(ApiError::field("signatureScheme", "header must be a valid header name"));
        }
        // Dropped by the HTTP layer (the deliveries went unsigned) or sent twice.
        if hookline_core::signature::is_reserved_header(header) {
            return Err(ApiError::field("signatureScheme", format!("`{header}` is set by Hookline")));
        }
    }
    if let Some(policy) = &e.retry_policy {
        policy.validate().map_err(|err| ApiError::field("retryPolicy", err.to_string()))?;
    }
    Ok(())
}

fn parse_secret(text: Option<String>) -> ApiResult<Secret> {
    match text {
        Some(text) => Secret::parse(&text).map_err(|e| ApiError::field("secret", e.to_string())),
        None => Ok(new_secret()),
    }
}

/// Queue destinations publish with the operator's broker credentials, on the operator's
/// network: only the admin token may point an endpoint (or a message's callback) at one.
pub(crate) fn queue_needs_admin(principal: &Principal, url: Option<&str>) -> ApiResult<()> {
    match (principal, url) {
        (Principal::App { .. }, Some(url)) if is_queue_url(url) => Err(ApiError::Forbidden),
        _ => Ok(()),
    }
}

async fn create(
    state: Shared,
    PathParams(app_id): PathParams<String>,
    Extension(principal): Extension<Principal>,
    JsonBody(input): JsonBody<EndpointIn>,
) -> ApiResult<(StatusCode, Json<EndpointOut>)> {
    queue_needs_admin(&principal, Some(&input.url))?;
    let app = find_app(&state, &app_id).await?;
    let created = create_endpoint(&state, &app, input).await?;
    Ok((StatusCode::CREATED, Json(views::endpoint(created))))
}

/// Creates an endpoint of `app` and announces it (`endpoint.created`).
pub async fn create_endpoint(state: &AppState, app: &App, input: EndpointIn) -> ApiResult<Endpoint> {
    let existing = state.engine.catalog.endpoints(&app.id).await.map_err(ApiError::from_store("endpoint"))?.len();
    let limit = state.config.api.endpoints_per_app_max;
    if existing >= limit {
        return Err(ApiError::field("url", format!("an application may have at most {limit} endpoints")));
    }
    let now = state.now();
    let secret = parse_secret(input.secret)?;
    let endpoint = Endpoint {
        id: state.new_id(prefix::ENDPOINT),
        app_id: app.id.clone(),
        uid: input.uid,
        url: input.url,
        description: input.description,
        disabled: input.disabled.unwrap_or(false),
        event_types: input.event_types,
        channels: input.channels,
        throttle_rate: input.throttle_rate,
        metadata: input.metadata.unwrap_or_default(),
        headers: input.headers.unwrap_or_default(),
        secrets: vec![StoredSecret { text: secret.as_str().to_owned(), expires_at: None }],
        signature_scheme: input.signature_scheme.unwrap_or_default(),
        retry_policy: input.retry_policy,
        fifo: input.ordering == Some(EndpointOrdering::Fifo),
        created_at: now,
        updated_at: now,
        fail_since: None,
    };
    check(state, &endpoint, None)?;
    let created = state.store.create_endpoint(endpoint).await.map_err(ApiError::from_store("endpoint"))?;
    state.engine.catalog.invalidate(&app.id);
    state.engine.notify(app, Notice::endpoint(notices::ENDPOINT_CREATED, app, &created)).await;
    Ok(created)
}

async fn list(
    state: Shared,
    PathParams(app_id): PathParams<String>,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListResponse<EndpointOut>>> {
    let app = find_app(&state, &app_id).await?;
    let endpoints =
        state.store.list_endpoints(&app.id, query.page(false)?).await.map_err(ApiError::from_store("endpoint"))?;
    Ok(Json(listed(endpoints, |e| e.id.clone(), views::endpoint)))
}

/// Finds an endpoint of an application, both by id or uid.
pub async fn find(state: &AppState, app_id: &str, endpoint_id: &str) -> ApiResult<Endpoint> {
    let app = find_app(state, app_id).await?;
    find_in(state, &app, endpoint_id).await
}

/// Finds an endpoint of `app` by id or uid.
pub async fn find_in(state: &AppState, app: &App, endpoint_id: &str) -> ApiResult<Endpoint> {
    state.store.get_endpoint(&app.id, endpoint_id).await.map_err(ApiError::from_store("endpoint"))
}

async fn read(
    state: Shared,
    PathParams((app_id, endpoint_id)): PathParams<(String, String)>,
) -> ApiResult<Json<EndpointOut>> {
    Ok(Json(views::endpoint(find(&state, &app_id, &endpoint_id).await?)))
}

/// How many times an edit reads and applies its change again when the endpoint changed
/// between its read and its write.
const EDIT_TRIES: usize = 5;

/// Reads the endpoint of `app` under `key`, applies `change` and saves it. The write
/// applies only over the endpoint as read: when something changed it meanwhile (an
/// automatic disable, another request) the edit reads it again and applies `change` to the
/// newer one, so no edit undoes another (a request that read the endpoint before it was
/// disabled wrote `disabled: false` back, re-enabling it without a word). A new URL is
/// checked again (one stored under older rules stays as it is through other changes);
/// enabling restarts the failure clock. Announces `endpoint.updated` when `announce`, and
/// `endpoint.disabled` (manual) or `endpoint.enabled` when the edit flipped it.
pub async fn edit(
    state: &AppState,
    app: &App,
    key: &str,
    announce: bool,
    mut change: impl FnMut(&mut Endpoint) -> ApiResult<()>,
) -> ApiResult<Endpoint> {
    for _ in 0..EDIT_TRIES {
        let read = find_in(state, app, key).await?;
        let mut endpoint = read.clone();
        change(&mut endpoint)?;
        check(state, &endpoint, Some(&read))?;
        // Later than the read even within its millisecond (a manual clock's tests too).
        endpoint.updated_at = state.now().max(read.updated_at + 1);
        let written = state.store.update_endpoint(endpoint, &read).await.map_err(ApiError::from_store("endpoint"))?;
        let Some(saved) = written else { continue };
        state.engine.catalog.invalidate(&saved.app_id);
        if announce {
            state.engine.notify(app, Notice::endpoint(notices::ENDPOINT_UPDATED, app, &saved)).await;
        }
        match (read.disabled, saved.disabled) {
            (false, true) => {
                let notice = Notice::disabled(app, &saved, saved.fail_since, notices::Trigger::Manual);
                state.engine.notify(app, notice).await;
            }
            (true, false) => state.engine.notify(app, Notice::endpoint(notices::ENDPOINT_ENABLED, app, &saved)).await,
            _ => {}
        }
        return Ok(saved);
    }
    Err(ApiError::Conflict("the endpoint kept changing while this request applied; try again".into()))
}

/// PUT is Svix's upsert: an unknown key that is not an endpoint id creates the endpoint
/// with it as uid. A `secret` other than the current one rotates to it, as `/secret/rotate`
/// would: the previous one keeps signing for the grace period.
async fn replace(
    state: Shared,
    PathParams((app_id, endpoint_id)): PathParams<(String, String)>,
    Extension(principal): Extension<Principal>,
    JsonBody(input): JsonBody<EndpointIn>,
) -> ApiResult<(StatusCode, Json<EndpointOut>)> {
    queue_needs_admin(&principal, Some(&input.url))?;
    let app = find_app(&state, &app_id).await?;
    let (status, saved) = upsert(&state, &app, &endpoint_id, input).await?;
    Ok((status, Json(views::endpoint(saved))))
}

/// Replaces the endpoint of `app` under `key`, or creates it with `key` as its uid.
pub async fn upsert(
    state: &AppState,
    app: &App,
    key: &str,
    mut input: EndpointIn,
) -> ApiResult<(StatusCode, Endpoint)> {
    match edit(state, app, key, true, |e| replace_with(state, e, input.clone())).await {
        Err(ApiError::NotFound("endpoint")) if !has_prefix(key, prefix::ENDPOINT) => {
            // The body's uid is checked even though the path's key takes its place.
            super::check_uid(&input.uid, prefix::ENDPOINT)?;
            input.uid = Some(key.to_owned());
            Ok((StatusCode::CREATED, create_endpoint(state, app, input).await?))
        }
        replaced => Ok((StatusCode::OK, replaced?)),
    }
}

/// A PUT's body applied to the endpoint it replaces.
fn replace_with(state: &AppState, e: &mut Endpoint, input: EndpointIn) -> ApiResult<()> {
    take_secret(state, e, input.secret)?;
    e.url = input.url;
    e.description = input.description;
    e.disabled = input.disabled.unwrap_or(false);
    e.event_types = input.event_types;
    e.channels = input.channels;
    e.throttle_rate = input.throttle_rate;
    e.uid = input.uid;
    e.metadata = input.metadata.unwrap_or_default();
    if let Some(headers) = input.headers {
        e.headers = headers;
    }
    // Hookline's own settings, which Svix's SDKs cannot send, are kept when left out (as
    // the headers are): an SDK's update of the URL must not turn FIFO or a retry policy off.
    if let Some(scheme) = input.signature_scheme {
        e.signature_scheme = scheme;
    }
    if let Some(policy) = input.retry_policy {
        e.retry_policy = Some(policy);
    }
    if let Some(ordering) = input.ordering {
        e.fifo = ordering == EndpointOrdering::Fifo;
    }
    Ok(())
}

/// A secret given with a PUT or a PATCH (Svix's SDKs send it in both): rotated to unless
/// the endpoint already holds it (current, or still signing after a rotation), so that
/// re-applying an old configuration never rolls a rotation back.
fn take_secret(state: &AppState, e: &mut Endpoint, given: Option<String>) -> ApiResult<()> {
    if let Some(text) = given.filter(|text| e.secrets.iter().all(|held| held.text != *text)) {
        let fresh = parse_secret(Some(text))?;
        e.secrets =
            rotated(std::mem::take(&mut e.secrets), &fresh, state.now(), state.config.delivery.rotation_grace_ms);
    }
    Ok(())
}

async fn patch(
    state: Shared,
    PathParams((app_id, endpoint_id)): PathParams<(String, String)>,
    Extension(principal): Extension<Principal>,
    JsonBody(input): JsonBody<EndpointPatch>,
) -> ApiResult<Json<EndpointOut>> {
    queue_needs_admin(&principal, input.url.as_deref())?;
    let app = find_app(&state, &app_id).await?;
    let patched = edit(&state, &app, &endpoint_id, true, |e| {
        let input = input.clone();
        set(&mut e.url, input.url);
        set(&mut e.description, input.description);
        set(&mut e.disabled, input.disabled);
        set(&mut e.event_types, input.event_types);
        set(&mut e.channels, input.channels);
        set(&mut e.throttle_rate, input.throttle_rate);
        set(&mut e.uid, input.uid);
        set(&mut e.metadata, input.metadata);
        set(&mut e.signature_scheme, input.signature_scheme);
        set(&mut e.fifo, input.ordering.map(|ordering| ordering == EndpointOrdering::Fifo));
        set(&mut e.retry_policy, input.retry_policy);
        take_secret(&state, e, input.secret)
    })
    .await?;
    Ok(Json(views::endpoint(patched)))
}

/// Sets `field` to `value` when the request gave one.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

async fn remove(
    state: Shared,
    PathParams((app_id, endpoint_id)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    let app = find_app(&state, &app_id).await?;
    delete_endpoint(&state, &app, &endpoint_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the endpoint of `app` under `key` and announces it (`endpoint.deleted`).
pub async fn delete_endpoint(state: &AppState, app: &App, key: &str) -> ApiResult<()> {
    let e = find_in(state, app, key).await?;
    hookline_store::delete_endpoint(&*state.store, &e.app_id, &e.id, hookline_store::WALK_CHUNK)
        .await
        .map_err(ApiError::from_store("endpoint"))?;
    state.engine.catalog.invalidate(&e.app_id);
    state.engine.series.keep_of_app(&e.app_id, |lane| lane != e.id);
    state.engine.notify(app, Notice::endpoint(notices::ENDPOINT_DELETED, app, &e)).await;
    Ok(())
}

async fn secret(
    state: Shared,
    PathParams((app_id, endpoint_id)): PathParams<(String, String)>,
) -> ApiResult<Json<EndpointSecretOut>> {
    Ok(Json(EndpointSecretOut { key: current_secret(&find(&state, &app_id, &endpoint_id).await?)? }))
}

/// The secret an endpoint is signed with now.
pub fn current_secret(e: &Endpoint) -> ApiResult<String> {
    e.secrets.first().map(|s| s.text.clone()).ok_or(ApiError::Internal)
}

/// The new secret signs at once; the previous one keeps signing beside it for the grace
/// period (24 h by default), so receivers can switch without dropping a delivery.
/// Answers with the new secret (Svix SDK 2 reads it; older SDKs ignore the body).
async fn rotate(
    state: Shared,
    PathParams((app_id, endpoint_id)): PathParams<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(Extension<super::AnswerNotKept>, Json<EndpointSecretOut>)> {
    let input = rotate_input(&state, &headers, body).await?;
    let app = find_app(&state, &app_id).await?;
    let key = rotate_secret(&state, &app, &endpoint_id, input).await?;
    Ok((Extension(super::AnswerNotKept), Json(EndpointSecretOut { key })))
}

/// A rotation's body, which may be absent (Hookline then generates the secret).
pub async fn rotate_input(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<EndpointSecretRotateIn> {
    super::optional_json(state, headers, body).await
}

/// Rotates the secret of the endpoint of `app` under `key`; returns the new secret.
pub async fn rotate_secret(state: &AppState, app: &App, key: &str, input: EndpointSecretRotateIn) -> ApiResult<String> {
    let (fresh, grace_ms) = rotation(state, input)?;
    edit(state, app, key, false, |e| {
        e.secrets = rotated(std::mem::take(&mut e.secrets), &fresh, state.now(), grace_ms);
        Ok(())
    })
    .await?;
    Ok(fresh.as_str().to_owned())
}

/// What a rotation's body asks for: the new secret (given or generated) and how long the
/// current one keeps signing beside it.
pub fn rotation(state: &AppState, input: EndpointSecretRotateIn) -> ApiResult<(Secret, u64)> {
    if input.grace_period_seconds.is_some_and(|s| s > GRACE_PERIOD_SECONDS_MAX) {
        let detail = format!("gracePeriodSeconds must be at most {GRACE_PERIOD_SECONDS_MAX}");
        return Err(ApiError::field("gracePeriodSeconds", detail));
    }
    let grace_ms = input.grace_period_seconds.map_or(state.config.delivery.rotation_grace_ms, |s| s * 1000);
    Ok((parse_secret(input.key)?, grace_ms))
}

/// `fresh` signs from now on; the current secret keeps signing for `grace_ms`, older ones
/// until their own expiry; at most `SECRETS_MAX` are kept.
pub fn rotated(old: Vec<StoredSecret>, fresh: &Secret, now: i64, grace_ms: u64) -> Vec<StoredSecret> {
    let mut secrets = vec![StoredSecret { text: fresh.as_str().to_owned(), expires_at: None }];
    for (index, old) in old.into_iter().enumerate() {
        let expires_at = if index == 0 { Some(now + grace_ms as i64) } else { old.expires_at };
        if expires_at.is_none_or(|at| at > now) && secrets.len() < SECRETS_MAX {
            secrets.push(StoredSecret { text: old.text, expires_at });
        }
    }
    secrets
}

pub fn headers_out(headers: BTreeMap<String, String>) -> EndpointHeadersOut {
    let (sensitive, shown): (BTreeMap<_, _>, BTreeMap<_, _>) =
        headers.into_iter().partition(|(name, _)| SENSITIVE_HEADERS.contains(&name.to_ascii_lowercase().as_str()));
    EndpointHeadersOut { headers: shown, sensitive: sensitive.into_keys().collect() }
}

async fn headers(
    state: Shared,
    PathParams((app_id, endpoint_id)): PathParams<(String, String)>,
) -> ApiResult<Json<EndpointHeadersOut>> {
    Ok(Json(headers_out(find(&state, &app_id, &endpoint_id).await?.headers)))
}

async fn replace_headers(
    state: Shared,
    PathParams((app_id, endpoint_id)): PathParams<(String, String)>,
    JsonBody(input): JsonBody<EndpointHeadersIn>,
) -> ApiResult<StatusCode> {
    let app = find_app(&state, &app_id).await?;
    set_headers(&state, &app, &endpoint_id, input.headers).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the custom headers of the endpoint of `app` under `key`.
pub async fn set_headers(state: &AppState, app: &App, key: &str, headers: BTreeMap<String, String>) -> ApiResult<()> {
    let replace = |e: &mut Endpoint| {
        e.headers = headers.clone();
        Ok(())
    };
    edit(state, app, key, true, replace).await.map(|_| ())
}

async fn patch_headers(
    state: Shared,
    PathParams((app_id, endpoint_id)): PathParams<(String, String)>,
    JsonBody(input): JsonBody<EndpointHeadersPatchIn>,
) -> ApiResult<StatusCode> {
    let app = find_app(&state, &app_id).await?;
    let deleted = input.delete_headers.unwrap_or_default();
    // Header names ignore case: a header patched or deleted in another spelling is the
    // same header (kept beside it, both were sent).
    edit(&state, &app, &endpoint_id, true, |e| {
        e.headers.retain(|name, _| !input.headers.keys().any(|given| given.eq_ignore_ascii_case(name)));
        e.headers.extend(input.headers.clone());
        e.headers.retain(|name, _| !deleted.iter().any(|gone| gone.eq_ignore_ascii_case(name)));
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Re-sends every delivery to this endpoint that was exhausted or skipped (published while
/// it was disabled), for messages created in `[since, until)`. Runs at once; the answer reports it finished.
async fn recover(
    state: Shared,
    PathParams((app_id, endpoint_id)): PathParams<(String, String)>,
    JsonBody(input): JsonBody<RecoverIn>,
) -> ApiResult<(StatusCode, Json<RecoverOut>)> {
    let e = find(&state, &app_id, &endpoint_id).await?;
    let now = state.now();
    let since =
        parse_timestamp(&input.since).ok_or_else(|| ApiError::field("since", "since must be an RFC 3339 time"))?;
    let until = match input.until.as_deref() {
        Some(t) => parse_timestamp(t).ok_or_else(|| ApiError::field("until", "until must be an RFC 3339 time"))?,
        None => now + 1,
    };
    let recovery = Recovery { app_id: e.app_id.clone(), endpoint_id: e.id.clone(), since, until, now };
    let count = hookline_store::recover_endpoint(&*state.store, &recovery, hookline_store::WALK_CHUNK)
        .await
        .map_err(ApiError::from_store("endpoint"))?;
    // Left unclaimed in the store: the next claim (on any node) takes them in batches.
    state.engine.wake();
    let out = RecoverOut {
        id: state.new_id(prefix::TASK),
        status: "finished",
        task: "endpoint.recover",
        updated_at: timestamp(now),
        recovered: count,
    };
    Ok((StatusCode::ACCEPTED, Json(out)))
}
