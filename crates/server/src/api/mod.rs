//! The management API: Svix v1 compatible routes, bearer auth, `Idempotency-Key`,
//! pagination, and extractors whose every rejection is a JSON error.

pub(crate) mod apps;
pub use apps::new_secret;
mod endpoints;
mod event_types;
mod messages;
mod operational;
mod ops;
mod ordering;
mod queues;
pub mod route;
pub mod sources;
mod stats;
mod views;

use crate::clock::Clock;
use crate::config::Config;
use crate::dispatch::Engine;
use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use bytes::Bytes;
use hookline_core::ssrf::AddressPolicy;
use hookline_core::UnixMs;
use hookline_store::{Page, Reservation, Store};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// List sizes: Svix's default and cap.
pub(crate) const LIST_LIMIT_DEFAULT: usize = 50;
pub(crate) const LIST_LIMIT_MAX: usize = 250;
/// The longest `Idempotency-Key` (Stripe's limit).
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub engine: Arc<Engine>,
    pub config: Config,
    pub addresses: AddressPolicy,
    /// Every API token (hashes), admin and application-scoped; changed by the token routes.
    pub tokens: std::sync::RwLock<Vec<hookline_store::Token>>,
    /// Request budgets of application-scoped tokens: (tokens left, when last refilled).
    pub rate_buckets: std::sync::Mutex<std::collections::HashMap<String, (f64, UnixMs)>>,
    /// `Idempotency-Key`s (scoped) whose first request is running on this node.
    pub idempotency_in_flight: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Recent refused inbound requests per source, for debugging a provider's setup.
    pub rejections:
        std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<crate::wire::RejectionOut>>>,
    /// The queue consumers this node runs (`[ingest]`), for `GET /api/v1/ingest-queue`.
    pub queues: Vec<Arc<crate::ingest::queue::ConsumerStatus>>,
    /// The store's last answer to a health check, and when it came.
    pub health: tokio::sync::Mutex<Option<(tokio::time::Instant, bool)>>,
}

pub type Shared = State<Arc<AppState>>;

impl AppState {
    pub fn now(&self) -> UnixMs {
        self.clock.now_ms()
    }

    pub fn new_id(&self, prefix: &str) -> String {
        crate::new_id(prefix, self.now())
    }

    /// Where clients reach this server (`api.public_url`, default `http://{server.listen}`),
    /// without a trailing slash.
    pub fn public_url(&self) -> String {
        let config = &self.config;
        let base = config.api.public_url.clone().unwrap_or_else(|| format!("http://{}", config.server.listen));
        base.trim_end_matches('/').to_owned()
    }
}

/// Registers a route with and without its trailing slash: the SDKs call without it,
/// the Svix documentation shows it with.
fn both(router: Router<Arc<AppState>>, path: &str, handler: MethodRouter<Arc<AppState>>) -> Router<Arc<AppState>> {
    if path.contains("{*") {
        // A catch-all already matches the trailing slash.
        return router.route(path, handler);
    }
    router.route(path, handler.clone()).route(&format!("{path}/"), handler)
}

/// Every operation of the API, as the OpenAPI document lists it (`/metrics` is not in it).
pub fn routes() -> Vec<route::Route> {
    let groups = [
        ops::routes(),
        apps::routes(),
        endpoints::routes(),
        operational::routes(),
        event_types::routes(),
        messages::routes(),
        ordering::routes(),
        sources::routes(),
        sources::ingest_routes(),
        stats::routes(),
        queues::routes(),
    ];
    groups.into_iter().flatten().collect()
}

pub fn router(state: Arc<AppState>) -> Router {
    let (mut api, mut public) = (Router::new(), Router::new());
    for route in routes().into_iter().chain([ops::metrics()]) {
        if route.public {
            public = both(public, route.path, route.handler);
        } else {
            api = both(api, route.path, route.handler);
        }
    }
    let api = api
        .layer(axum::middleware::from_fn_with_state(state.clone(), writes_run_to_end))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    let api = public
        .merge(api)
        .layer(axum::extract::DefaultBodyLimit::max(state.config.api.body_bytes_max))
        .with_state(state.clone());
    let all = match state.config.dashboard.enabled {
        true => api.clone().merge(crate::dashboard::router(state, api)),
        false => api,
    };
    all.fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).map(str::trim)
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who is calling: the operator, or a merchant holding a token for one application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin { token_id: String },
    App { token_id: String, app_id: String },
}

impl Principal {
    fn token_id(&self) -> &str {
        match self {
            Principal::Admin { token_id } | Principal::App { token_id, .. } => token_id,
        }
    }

    /// The admin's token id; an application's token is refused (403).
    fn admin_token_id(&self) -> ApiResult<&str> {
        match self {
            Principal::Admin { token_id } => Ok(token_id),
            Principal::App { .. } => Err(ApiError::Forbidden),
        }
    }
}

/// The caller of a request the dashboard makes to the API on behalf of a signed-in person
/// (set only in-process: no client can send it). It then passes the same checks as a token.
#[derive(Clone, Debug)]
pub(crate) struct OnBehalfOf(pub Principal);

/// Who holds `token`, comparing against every token in constant time without stopping at a
/// match.
pub(crate) fn principal_of(state: &AppState, token: &str) -> Option<Principal> {
    let given = hash_token(token);
    let tokens = state.tokens.read().expect("tokens lock");
    let mut found = None;
    for token in tokens.iter() {
        if bool::from(token.hash.ct_eq(&given)) {
            found = Some(principal_of_token(token));
        }
    }
    found
}

pub(crate) fn principal_of_token(token: &hookline_store::Token) -> Principal {
    match &token.app_id {
        None => Principal::Admin { token_id: token.id.clone() },
        Some(app_id) => Principal::App { token_id: token.id.clone(), app_id: app_id.clone() },
    }
}

async fn authenticate(State(state): Shared, mut request: Request, next: Next) -> Response {
    // The dashboard's reads were charged once, for the page that makes them; each change
    // it makes is charged as a request of its own (one form could resend to 250 endpoints
    // for one request of the token's budget).
    let write = !matches!(*request.method(), Method::GET | Method::HEAD);
    let (principal, charged) = match request.extensions().get::<OnBehalfOf>() {
        Some(OnBehalfOf(principal)) => (Some(principal.clone()), !write),
        None => (bearer(request.headers()).and_then(|token| principal_of(&state, token)), false),
    };
    let Some(principal) = principal else {
        return ApiError::Unauthorized.into_response();
    };
    if let Principal::App { app_id, token_id } = &principal {
        if !charged {
            if let Err(e) = take_from_budget(&state, token_id) {
                return e.into_response();
            }
        }
        if let Err(e) = confine(&state, app_id, request.method(), request.uri().path()).await {
            return e.into_response();
        }
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Buckets kept before idle ones are forgotten (a dashboard portal session is a bucket).
const RATE_BUCKETS_KEPT: usize = 10_000;

/// A token bucket per application token (or portal session), refilled on the server's clock.
pub(crate) fn take_from_budget(state: &AppState, token_id: &str) -> ApiResult<()> {
    let rate = f64::from(state.config.api.token_rate_limit_per_s);
    if rate == 0.0 {
        return Ok(());
    }
    let (burst, now) = (2.0 * rate, state.now());
    let mut buckets = state.rate_buckets.lock().expect("rate buckets lock");
    // Swept when a bucket is added, not at every request of a known one: with more buckets
    // all in use, each request walked them all under this lock.
    if buckets.len() >= RATE_BUCKETS_KEPT && !buckets.contains_key(token_id) {
        // A bucket idle long enough to be full again is the same as no bucket.
        let refilled_ms = (burst / rate * 1000.0) as i64;
        buckets.retain(|_, (_, last)| now - *last < refilled_ms);
    }
    let (left, last) = buckets.entry(token_id.to_owned()).or_insert((burst, now));
    *left = (*left + (now - *last).max(0) as f64 / 1000.0 * rate).min(burst);
    *last = now;
    if *left < 1.0 {
        let wait_s = ((1.0 - *left) / rate).ceil().max(1.0) as u64;
        return Err(ApiError::RateLimited(wait_s));
    }
    *left -= 1.0;
    Ok(())
}

/// What an application-scoped token may do: read the global event-type catalog, and act
/// within its own application's subtree, except managing the application itself (its
/// callback secret's rotation included) and its tokens. Another application's ids answer
/// 404, as if they did not exist.
async fn confine(state: &AppState, own_app: &str, method: &Method, path: &str) -> ApiResult<()> {
    let path = path.trim_end_matches('/');
    if path.starts_with("/api/v1/event-type") {
        return if method == Method::GET { Ok(()) } else { Err(ApiError::Forbidden) };
    }
    // An application's own statistics, as its endpoints' (`/api/v1/stats/app/{app}/…`).
    let rest = path.strip_prefix("/api/v1/app/").or_else(|| path.strip_prefix("/api/v1/stats/app/"));
    let Some(rest) = rest else { return Err(ApiError::Forbidden) };
    let (key, below) = rest.split_once('/').unwrap_or((rest, ""));
    let app = state.engine.catalog.app(key).await.map_err(ApiError::from_store("application"))?;
    if app.id != own_app {
        return Err(ApiError::NotFound("application"));
    }
    // A uid in the path: handlers find the application through the cache (a publish) or
    // the store (the rest), and on several nodes the cache may not have heard yet that an
    // admin moved this uid to another application. Both must name the token's own.
    if key != own_app {
        let stored = state.store.get_app(key).await.map_err(ApiError::from_store("application"))?;
        if stored.id != own_app {
            return Err(ApiError::NotFound("application"));
        }
    }
    let manages_app = (below.is_empty() && method != Method::GET) || below == "secret/rotate";
    if manages_app || below == "token" || below.starts_with("token/") {
        return Err(ApiError::Forbidden);
    }
    Ok(())
}

/// A POST's `Idempotency-Key`, scoped by caller, with the fingerprint of its request.
#[derive(Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: [u8; 32],
}

impl IdempotencyKey {
    /// The answer to keep for this key.
    pub fn answer(&self, status: StatusCode, body: Bytes, now: UnixMs) -> hookline_store::IdempotentResponse {
        hookline_store::IdempotentResponse {
            key: self.key.clone(),
            fingerprint: self.fingerprint,
            status: status.as_u16(),
            body,
            created_at: now,
        }
    }
}

/// Set by a handler that stored its own answer in the same commit as its work.
#[derive(Clone)]
pub struct AnswerStored;

/// Set on an answer that carries a secret (a token, a signing secret, a portal link): it is
/// never kept for an `Idempotency-Key` replay, since the store keeps secrets only sealed or
/// hashed. The same key sent again runs the request again.
#[derive(Clone)]
pub struct AnswerNotKept;

/// Keys whose first request is still running on this node; removed when it ends, however
/// it ends (the guard is dropped with the request's future).
struct InFlight<'a> {
    keys: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    key: String,
}

impl<'a> InFlight<'a> {
    fn take(keys: &'a std::sync::Mutex<std::collections::HashSet<String>>, key: &str) -> Option<InFlight<'a>> {
        keys.lock().expect("idempotency lock").insert(key.to_owned()).then(|| InFlight { keys, key: key.to_owned() })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.keys.lock().expect("idempotency lock").remove(&self.key);
    }
}

/// A request that changes something runs to its end even if the client goes (hyper drops
/// a connection's request when it closes): dropped after its commit, a handler lost what
/// follows it, an endpoint change's notices (`endpoint.updated`, `.disabled`, `.enabled`)
/// and this node's cache invalidation (on SQLite the engine went on sending with the old
/// configuration, to a disabled endpoint say), or the answer an `Idempotency-Key` keeps (a
/// retry with the key ran the request again). Reads are dropped with their client.
async fn writes_run_to_end(state: Shared, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let detached = state.engine.detached.clone();
    crate::dispatch::run_to_end(idempotency(state, request, next), &detached).await
}

/// `Idempotency-Key` as the IETF draft and Stripe define it: the same key with the same
/// request (method, route, body) replays the first answer; with another request it is a 422;
/// while the first request runs, a 409.
async fn idempotency(State(state): Shared, request: Request, next: Next) -> Response {
    let given = (request.method() == Method::POST)
        .then(|| request.headers().get("idempotency-key").map(|v| v.as_bytes().to_vec()))
        .flatten();
    let Some(given) = given else {
        return next.run(request).await;
    };
    if given.is_empty() || given.len() > IDEMPOTENCY_KEY_BYTES_MAX || !given.iter().all(|b| (0x21..=0x7e).contains(b)) {
        let detail = format!("Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters");
        return ApiError::BadRequest(detail).into_response();
    }
    // Scoped by caller: two tenants' keys never collide.
    let caller = request.extensions().get::<Principal>().map(Principal::token_id).unwrap_or_default();
    let key = hex::encode(Sha256::new().chain_update(caller).chain_update(b" ").chain_update(&given).finalize());
    // Taken before the body is read: from its first byte on, the request is in progress.
    let Some(_running) = InFlight::take(&state.idempotency_in_flight, &key) else {
        return ApiError::IdempotencyInProgress.into_response();
    };
    let (parts, body) = request.into_parts();
    let body = match read_body(body, &state.config).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let fingerprint: [u8; 32] = Sha256::new()
        .chain_update(parts.method.as_str())
        .chain_update(b" ")
        .chain_update(parts.uri.path().trim_end_matches('/'))
        .chain_update(b"?")
        .chain_update(parts.uri.query().unwrap_or_default())
        .chain_update(b"\n")
        .chain_update(&body)
        .finalize()
        .into();
    // Taken in the store too, so that on several nodes one request with the key runs.
    let now = state.now();
    let since = now - state.config.api.idempotency_ttl_ms as i64;
    let reserved = Reserved { store: state.store.clone(), key: key.clone(), token: rand::random(), held: true };
    let taken = state.store.reserve_idempotency_key(
        &key,
        fingerprint,
        reserved.token,
        now,
        since,
        now - crate::config::IDEMPOTENCY_ABANDONED_MS as i64,
    );
    match taken.await {
        Ok(Reservation::Taken) => {}
        Ok(other) => {
            reserved.settled();
            return match other {
                Reservation::Answered(stored) if stored.fingerprint == fingerprint => {
                    replay(stored.status, stored.body)
                }
                Reservation::Running { fingerprint: theirs } if theirs == fingerprint => {
                    ApiError::IdempotencyInProgress.into_response()
                }
                _ => ApiError::IdempotencyKeyReused.into_response(),
            };
        }
        // It may have been taken all the same (a timeout after the commit): the guard gives
        // it up as it drops.
        Err(e) => return ApiError::from_store("idempotency key")(e).into_response(),
    }
    let idempotency = IdempotencyKey { key, fingerprint };
    let mut request = Request::from_parts(parts, Body::from(body));
    request.extensions_mut().insert(idempotency.clone());
    let response = next.run(request).await;
    if response.extensions().get::<AnswerStored>().is_some() {
        reserved.settled();
        return response;
    }
    if !response.status().is_success() || response.extensions().get::<AnswerNotKept>().is_some() {
        // Nothing to replay: the key is free for the next request (a failed one may be sent
        // again as it was; an answer holding a secret is not kept).
        reserved.release().await;
        return response;
    }
    // Kept whatever its size (an answer is our own, and echoes at most a request's body,
    // `api.body_bytes_max`): one over a cap was a 500 after the work was done, and the
    // retry that a 500 calls for did it again.
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::Internal.into_response();
    };
    let answer = idempotency.answer(parts.status, bytes.clone(), state.now());
    if let Err(e) = state.store.save_idempotent_response(answer).await {
        // The work is done and durable; only the replay record is missing. Say so in the log.
        // The reservation stays until abandoned: a retry meanwhile hears 409, not a second run.
        tracing::warn!(error = %e, "could not store idempotent answer");
    }
    reserved.settled();
    Response::from_parts(parts, Body::from(bytes))
}

/// This request's reservation of an `Idempotency-Key` (its random `token` in the store's
/// row tells it from another request's): given up if dropped still held, as when the
/// request's future panics or its store call failed, so the key is not left answering 409
/// until abandoned for a request that never ran or never will answer.
struct Reserved {
    store: Arc<dyn Store>,
    key: String,
    token: [u8; 16],
    held: bool,
}

impl Reserved {
    /// Nothing to give up: the key held something else, or the answer replaced the
    /// reservation (or, its save failed, the reservation stays until abandoned).
    fn settled(mut self) {
        self.held = false;
    }

    async fn release(mut self) {
        self.held = false;
        give_up(&*self.store, &self.key, self.token).await;
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let (store, key, token) = (self.store.clone(), std::mem::take(&mut self.key), self.token);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { give_up(&*store, &key, token).await });
        }
    }
}

async fn give_up(store: &dyn Store, key: &str, token: [u8; 16]) {
    if let Err(e) = store.release_idempotency_key(key, token).await {
        tracing::warn!(error = %e, "could not release an Idempotency-Key; it frees itself once abandoned");
    }
}

/// A JSON body that may be left out altogether (read as `T::default()`).
pub async fn optional_json<T: DeserializeOwned + Default>(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> ApiResult<T> {
    check_content_type(headers)?;
    let body = read_body(body, &state.config).await?;
    if body.is_empty() {
        return Ok(T::default());
    }
    parse_json(&body, state.config.api.json_depth_max)
}

/// Reads a whole body of at most `api.body_bytes_max` bytes: 413 above it, 408 when it did
/// not arrive in `server.body_read_timeout_ms`, 400 when the client broke off.
pub async fn read_body(body: Body, config: &Config) -> ApiResult<Bytes> {
    let limit = config.api.body_bytes_max;
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if caused_by::<http_body_util::LengthLimitError>(&e) {
            ApiError::PayloadTooLarge(limit)
        } else if caused_by::<crate::serve::BodyTimedOut>(&e) {
            ApiError::RequestTimeout(config.server.body_read_timeout_ms)
        } else {
            ApiError::BadRequest(format!("the body could not be read: {e}"))
        }
    })
}

/// Whether `error` or an error it wraps is a `T`.
fn caused_by<T: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<T>())
}

fn replay(status: u16, body: Bytes) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// A JSON body: syntax errors are 400 `invalid_json`, wrong fields 422 `validation`,
/// oversized bodies 413, slow ones 408 (`read_body`).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        check_content_type(request.headers())?;
        let bytes = read_body(request.into_body(), &state.config).await?;
        parse_json(&bytes, state.config.api.json_depth_max).map(JsonBody)
    }
}

/// A body declared as something other than JSON is refused; an undeclared one is read as JSON.
pub fn check_content_type(headers: &axum::http::HeaderMap) -> ApiResult<()> {
    match media_type(headers) {
        None => Ok(()),
        Some(essence) if essence == "application/json" || essence.ends_with("+json") => Ok(()),
        Some(_) => Err(ApiError::UnsupportedMediaType),
    }
}

/// The media type a request declares for its body (its `content-type` without parameters,
/// in lower case), if it declares one.
pub fn media_type(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get("content-type")?.to_str().unwrap_or("");
    Some(value.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// Which control characters a text may hold.
#[derive(Clone, Copy)]
pub enum Text {
    /// Names and descriptions: newline and tab only (`wire::TEXT_PATTERN`).
    Prose,
    /// Event types and ids: none (`wire::PRINTABLE_PATTERN`).
    Printable,
}

/// `chars_min` to `chars_max` characters (counted as JSON Schema counts them), without the
/// control characters `kind` refuses.
pub fn check_text(field: &str, value: &str, kind: Text, chars_min: usize, chars_max: usize) -> ApiResult<()> {
    let allowed = |c: char| !c.is_control() || matches!((kind, c), (Text::Prose, '\n' | '\t'));
    let chars = value.chars().count();
    if chars < chars_min || chars > chars_max || !value.chars().all(allowed) {
        return Err(ApiError::field(
            field,
            format!("{field} must be {chars_min} to {chars_max} characters without control characters"),
        ));
    }
    Ok(())
}

/// The deepest nesting of arrays and objects in `bytes`, not counting brackets in strings.
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses a body nested at most `depth_max` deep (`api.json_depth_max`), payloads included:
/// a payload is kept raw, where no recursion limit applies, and merchants' parsers must not
/// choke on it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], depth_max: usize) -> ApiResult<T> {
    if json_depth(bytes) > depth_max {
        return Err(ApiError::InvalidJson(format!("nesting deeper than {depth_max} levels")));
    }
    // Every body is an object; serde's derived structs would also read an array by position.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::field("body", "the body must be a JSON object, not an array"));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::field("body", e.to_string()),
        _ => ApiError::InvalidJson(e.to_string()),
    })
}

/// Path parameters, with a JSON error when they do not parse.
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// Query parameters, with a JSON error when they do not parse.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// The query parameters of every listing; each route reads the ones it supports.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub limit: Option<usize>,
    pub iterator: Option<String>,
    pub order: Option<String>,
    pub status: Option<i64>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub channel: Option<String>,
    pub event_types: Option<String>,
    pub tag: Option<String>,
    pub include_archived: Option<bool>,
    pub with_content: Option<bool>,
    pub get_if_exists: Option<bool>,
    pub endpoint_id: Option<String>,
    pub status_code_class: Option<u16>,
}

/// An optional RFC 3339 time from a query parameter.
pub fn query_time(name: &str, value: &Option<String>) -> ApiResult<Option<UnixMs>> {
    value
        .as_deref()
        .map(|t| {
            crate::wire::parse_timestamp(t)
                .ok_or_else(|| ApiError::BadRequest(format!("{name} must be an RFC 3339 time")))
        })
        .transpose()
}

/// A query parameter holding NUL is refused (400): no id, key or name holds one, and
/// PostgreSQL's text cannot, so it answered an error where SQLite answered a page.
fn without_nul(name: &str, value: &Option<String>) -> ApiResult<()> {
    match value.as_deref().is_some_and(|v| v.contains('\0')) {
        true => Err(ApiError::BadRequest(format!("{name} must not hold a NUL character"))),
        false => Ok(()),
    }
}

impl ListQuery {
    pub fn page(&self, newest_first_by_default: bool) -> ApiResult<Page> {
        without_nul("iterator", &self.iterator)?;
        let descending = match self.order.as_deref() {
            None => newest_first_by_default,
            Some("descending") => true,
            Some("ascending") => false,
            Some(other) => {
                return Err(ApiError::BadRequest(format!("order must be `ascending` or `descending`, not `{other}`")))
            }
        };
        let limit = self.limit.unwrap_or(LIST_LIMIT_DEFAULT).clamp(1, LIST_LIMIT_MAX);
        // A `prevIterator` is the first item's key after a `-`: the page before it; an
        // `iterator` is the last item's key, after a `+` when the key begins with either
        // (a space too: a `+` not percent-encoded in a query reads as one, and no key holds
        // a space).
        let (iterator, backwards) = match self.iterator.as_deref().filter(|i| !i.is_empty()) {
            Some(i) => match i.strip_prefix('-') {
                Some(before) => (Some(before.to_owned()), true),
                None => (Some(i.strip_prefix(['+', ' ']).unwrap_or(i).to_owned()), false),
            },
            None => (None, false),
        };
        Ok(Page { limit, iterator, descending, backwards })
    }

    pub fn filter(&self) -> ApiResult<hookline_store::ListFilter> {
        for (name, value) in [
            ("channel", &self.channel),
            ("tag", &self.tag),
            ("event_types", &self.event_types),
            ("endpoint_id", &self.endpoint_id),
        ] {
            without_nul(name, value)?;
        }
        let status = self
            .status
            .map(|code| {
                hookline_core::delivery::DeliveryState::from_code(code)
                    .ok_or_else(|| ApiError::BadRequest("status must be 0 to 6".into()))
            })
            .transpose()?;
        Ok(hookline_store::ListFilter {
            status,
            event_types: self
                .event_types
                .as_ref()
                .map(|t| t.split(',').map(str::to_owned).filter(|s| !s.is_empty()).collect()),
            channel: self.channel.clone(),
            tag: self.tag.clone(),
            before: query_time("before", &self.before)?,
            after: query_time("after", &self.after)?,
            endpoint_id: self.endpoint_id.clone(),
            status_code_class: match self.status_code_class {
                None => None,
                Some(class @ (0 | 100 | 200 | 300 | 400 | 500)) => Some(class),
                Some(_) => {
                    return Err(ApiError::BadRequest("status_code_class must be 0, 100, 200, 300, 400 or 500".into()))
                }
            },
        })
    }
}

/// The query parameters of [`ListQuery`] as the OpenAPI document describes them.
pub mod query {
    use super::route::QueryParam;
    use serde_json::json;

    pub const LIMIT: QueryParam = QueryParam {
        name: "limit",
        description: "Items per page, at most 250 (larger is read as 250, 0 as 1). Default 50.",
        schema: || json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}),
    };
    pub const ITERATOR: QueryParam =
        QueryParam::text("iterator", "Where to continue: a page's `iterator` for the page after it (an id or name, after a `+` when it begins with `-` or `+`), its `prevIterator` (`-` and an id or name) for the page before it.");
    pub const ORDER: QueryParam = QueryParam {
        name: "order",
        description: "`descending` (newest first) or `ascending`.",
        schema: || json!({"type": "string", "enum": ["ascending", "descending"]}),
    };
    pub const STATUS: QueryParam = QueryParam {
        name: "status",
        description: "Only deliveries in this state: 0 success, 1 pending, 2 fail, 3 sending, 4 canceled, 5 skipped (published while the endpoint was disabled, or skipped by an operator), 6 waiting (behind an earlier delivery of its ordering key).",
        schema: || json!({"type": "integer", "minimum": 0, "maximum": 6}),
    };
    pub const BEFORE: QueryParam =
        QueryParam::date_time("before", "Only what was created before this time (RFC 3339).");
    pub const AFTER: QueryParam = QueryParam::date_time("after", "Only what was created after this time (RFC 3339).");
    pub const CHANNEL: QueryParam = QueryParam::text("channel", "Only messages on this channel.");
    pub const EVENT_TYPES: QueryParam = QueryParam::text("event_types", "Only these event types, comma-separated.");
    pub const TAG: QueryParam = QueryParam::text("tag", "Only messages with this tag.");
    pub const WITH_CONTENT: QueryParam = QueryParam::boolean("with_content", "Include payloads (default true).");
    pub const INCLUDE_ARCHIVED: QueryParam =
        QueryParam::boolean("include_archived", "Include archived event types (default false).");
    pub const GET_IF_EXISTS: QueryParam = QueryParam::boolean(
        "get_if_exists",
        "If an application with the body's uid exists, answer it (200) instead of a 409.",
    );
    pub const EXPUNGE: QueryParam = QueryParam::boolean("expunge", "Delete for good instead of archiving.");
    pub const ATTEMPT_CONTENT: QueryParam =
        QueryParam::boolean("with_content", "Include each endpoint's answer (`response`; default true).");
    pub const ENDPOINT_ID: QueryParam =
        QueryParam::text("endpoint_id", "Only attempts to this endpoint (its id or uid).");
    pub const STATUS_CODE_CLASS: QueryParam = QueryParam {
        name: "status_code_class",
        description: "Only attempts answered with a status of this class (200: 200 to 299), or with none (0).",
        schema: || json!({"type": "integer", "enum": [0, 100, 200, 300, 400, 500]}),
    };
    pub const PAGE: [QueryParam; 3] = [LIMIT, ITERATOR, ORDER];
    pub const FILTER: [QueryParam; 6] = [STATUS, BEFORE, AFTER, CHANNEL, EVENT_TYPES, TAG];
}

/// Builds a Svix list answer; the iterator is the key (id or name) of the last item, after
/// a `+` when it begins with `-` or `+` (an event type's name may begin with `-`, which as
/// an iterator read as a `prevIterator`: a listing went back, or round for ever). No key
/// begins with `+`.
pub fn listed<T, O>(
    listed: hookline_store::Listed<T>,
    key: impl Fn(&T) -> String,
    out: impl Fn(T) -> O,
) -> crate::wire::ListResponse<O> {
    let iterator = listed.items.last().map(&key).map(|last| match last.starts_with(['-', '+']) {
        true => format!("+{last}"),
        false => last,
    });
    let prev_iterator = listed.items.first().map(|first| format!("-{}", key(first)));
    crate::wire::ListResponse {
        data: listed.items.into_iter().map(out).collect(),
        iterator,
        prev_iterator,
        done: listed.done,
    }
}

/// `throttleRate`: deliveries per second to an endpoint, at least 1 (absent: no limit).
pub fn check_rate(rate: Option<u32>) -> ApiResult<()> {
    if rate == Some(0) {
        return Err(ApiError::field("throttleRate", "throttleRate must be at least 1 delivery per second"));
    }
    Ok(())
}

/// Checks a uid a change sets, unless it is the one stored: a uid stored before the rules
/// of [`check_uid`] stays valid through later changes (one in an id's form could not be
/// kept through any edit, a secret's rotation included).
pub fn check_uid_kept(uid: &Option<String>, stored: Option<&Option<String>>, kind: &str) -> ApiResult<()> {
    match stored {
        Some(stored) if stored == uid => Ok(()),
        _ => check_uid(uid, kind),
    }
}

/// Checks a user-given `uid` of a resource whose ids start with `kind`: Svix allows letters,
/// digits, `-`, `_` and `.`, up to 256; Hookline also refuses the form of an id of that kind
/// (`wire::APP_UID_PATTERN` and its siblings), since a path's key names a resource by either.
pub fn check_uid(uid: &Option<String>, kind: &str) -> ApiResult<()> {
    let Some(uid) = uid else { return Ok(()) };
    check_name("uid", uid)?;
    if hookline_core::id::has_prefix(uid, kind) {
        return Err(ApiError::field(
            "uid",
            format!(
                "uid must not have the form of an id (`{kind}_` and {} letters or digits)",
                hookline_core::id::ENCODED_LEN
            ),
        ));
    }
    Ok(())
}

/// An email address as `wire::EMAIL_PATTERN` describes it (and as lettre reads it).
pub fn check_email(field: &str, email: &str) -> ApiResult<()> {
    let atom = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b));
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = email.len() <= crate::wire::EMAIL_BYTES_MAX
        && email.split_once('@').is_some_and(|(local, domain)| {
            let atoms: Vec<&str> = local.split('.').collect();
            let short = |(i, a): (usize, &&str)| a.len() <= if i == 0 { 21 } else { 20 };
            let sized = match atoms.len() {
                1 => local.len() <= 64,
                2 | 3 => atoms.iter().enumerate().all(short),
                _ => false,
            };
            sized && atoms.iter().all(|a| atom(a)) && domain.split('.').count() >= 2 && domain.split('.').all(label)
        })
        && email.parse::<lettre::Address>().is_ok();
    ok.then_some(())
        .ok_or_else(|| ApiError::field(field, format!("{field} must be an email address such as ops@example.com")))
}

/// Uids and event type names (`wire::NAME_PATTERN`): 1 to 256 letters, digits, `-`, `_`, `.`.
pub fn check_name(field: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= crate::wire::NAME_CHARS_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    ok.then_some(())
        .ok_or_else(|| ApiError::field(field, format!("{field} must be 1 to 256 letters, digits, `-`, `_` or `.`")))
}

#[cfg(test)]
mod tests {
    use super::{check_email, check_uid, json_depth};
    use crate::wire::{APP_UID_PATTERN, ENDPOINT_UID_PATTERN, NAME_PATTERN, SOURCE_UID_PATTERN};
    use hookline_core::id::{new_id, prefix, ENCODED_LEN};

    #[test]
    fn uid_patterns_name_their_kinds() {
        for (pattern, kind) in [
            (APP_UID_PATTERN, prefix::APP),
            (ENDPOINT_UID_PATTERN, prefix::ENDPOINT),
            (SOURCE_UID_PATTERN, prefix::SOURCE),
        ] {
            let name = NAME_PATTERN.strip_prefix('^').expect("anchored");
            assert_eq!(pattern, format!("^(?!{kind}_[0-9A-Za-z]{{{ENCODED_LEN}}}$){name}"));
            let id = new_id(kind, 1_700_000_000_000, [9; 10]);
            assert!(check_uid(&Some(id.clone()), kind).is_err(), "{id} is refused as a uid");
            for fine in [format!("{id}x"), format!("x{id}"), format!("{kind}_merchant-42"), "merchant-42".into()] {
                assert!(check_uid(&Some(fine.clone()), kind).is_ok(), "{fine} is a uid");
            }
        }
        let endpoint_id = new_id(prefix::ENDPOINT, 1, [1; 10]);
        assert!(check_uid(&Some(endpoint_id), prefix::APP).is_ok(), "another kind's id names no application");
    }

    #[test]
    fn email_addresses_are_what_the_documented_pattern_says_and_smtp_takes() {
        let long_run = "a".repeat(64);
        let accepted = [
            "ops@example.com".to_owned(),
            "first.last+alerts@pay-ments.example.co".into(),
            format!("{long_run}@example.com"),
            format!("{}.{}.{}@example.com", "a".repeat(21), "b".repeat(20), "c".repeat(20)),
            "x@3.m.LRk-CyTsX.4".into(),
        ];
        for email in &accepted {
            assert!(check_email("alertEmail", email).is_ok(), "{email}");
            assert!(email.parse::<lettre::Address>().is_ok(), "lettre takes {email}");
        }
        let refused = [
            format!("{long_run}a@example.com"),
            format!("{}.b@example.com", "a".repeat(22)),
            "a.b.c.d@example.com".into(),
            "a..b@example.com".into(),
            ".a@example.com".into(),
            "ops@localhost".into(),
            "ops@-example.com".into(),
            "ops@example..com".into(),
            "o ps@example.com".into(),
            // Found by schemathesis: a schema-valid address once, and over SMTP's 64 bytes.
            "hFs2L-OJW9.TXLt6ID.5SS.Y6zkQ-YFCOaaWle7d-.XT.ffCF5.99HLPkefVAn0eGZ._oXHb.00g9@3.m.LRk-CyTsX.4".into(),
        ];
        for email in &refused {
            assert!(check_email("alertEmail", email).is_err(), "{email}");
        }
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        let cases: [(&str, usize); 6] = [
            ("{}", 1),
            (r#"{"a":[1,{"b":[]}]}"#, 4),
            (r#"{"a":"[[[[{{{{"}"#, 1),
            (r#"{"a":"\"[["}"#, 1),
            ("12", 0),
            ("[[[]]][[]]", 3),
        ];
        for (text, expected) in cases {
            assert_eq!(json_depth(text.as_bytes()), expected, "{text}");
        }
    }
}
