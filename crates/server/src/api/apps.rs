//! `/api/v1/app`: applications, one per merchant.

use super::hash_token;
use super::route::{tagged, Route};
use super::{listed, query, views, AppState, JsonBody, ListQuery, PathParams, QueryParams, Shared, Text};
use crate::error::{ApiError, ApiResult};
use crate::wire::{
    timestamp, AppPortalAccessIn, AppPortalAccessOut, AppTokenExpireIn, ApplicationIn, ApplicationOut,
    ApplicationPatch, EndpointSecretOut, EndpointSecretRotateIn, ListResponse, TokenOut, EXPIRE_SECONDS_MAX,
    NAME_CHARS_MAX,
};
use axum::http::StatusCode;
use axum::Json;
use hookline_core::id::{has_prefix, prefix};
use hookline_core::signature::{Secret, SECRET_BYTES_GENERATED};
use hookline_store::{App, StoreError, StoredSecret, Token, OPERATIONAL_APP_ID};

pub fn routes() -> Vec<Route> {
    let (apps, app) = ("/api/v1/app", "/api/v1/app/{app_id}");
    let tokens = "/api/v1/app/{app_id}/token";
    tagged(
        "Application",
        vec![
            Route::get(apps, list)
                .doc("listApplications", "List applications.")
                .query(&query::PAGE)
                .answers::<ListResponse<ApplicationOut>>(200, "A page of applications."),
            Route::post(apps, create)
                .doc("createApplication", "Create an application.")
                .query(&[query::GET_IF_EXISTS])
                .body::<ApplicationIn>()
                .answers::<ApplicationOut>(201, "Created.")
                .answers::<ApplicationOut>(200, "`get_if_exists=true` and the uid exists: that application."),
            Route::get(app, read)
                .doc("getApplication", "Get an application by id or uid.")
                .answers::<ApplicationOut>(200, "The application."),
            Route::put(app, replace)
                .doc("upsertApplication", "Replace an application, or create it with this uid.")
                .body::<ApplicationIn>()
                .answers::<ApplicationOut>(200, "Replaced.")
                .answers::<ApplicationOut>(201, "Created with the path's key as uid."),
            Route::patch(app, patch)
                .doc("patchApplication", "Change some fields of an application.")
                .body::<ApplicationPatch>()
                .answers::<ApplicationOut>(200, "The changed application."),
            Route::delete(app, remove)
                .doc(
                    "deleteApplication",
                    "Delete an application and everything in it. The application, its endpoints, sources \
                     and tokens go at once, and no node claims its deliveries afterwards; its messages, \
                     deliveries, attempts and statistics are deleted right after the answer, a few thousand \
                     at a time (taken up by a later retention pass if the node stops first).",
                )
                .empty(204, "Deleted."),
            Route::get("/api/v1/app/{app_id}/secret", secret)
                .doc("getApplicationSecret", "Hookline: the secret that signs per-message callback URLs.")
                .answers::<EndpointSecretOut>(200, "The secret."),
            Route::post("/api/v1/app/{app_id}/secret/rotate", rotate_secret)
                .doc(
                    "rotateApplicationSecret",
                    "Hookline, admin token only: rotate the secret that signs per-message callback URLs, as \
                     an endpoint's is rotated: the new secret (the body's `key`, or a generated one) signs at \
                     once, and the current one keeps signing beside it for the grace period \
                     (`gracePeriodSeconds`, else `delivery.rotation_grace_ms`, 24 h by default); secrets \
                     rotated out earlier keep their own end; at most 5 are kept. The body may be absent.",
                )
                .optional_body::<EndpointSecretRotateIn>()
                .answers::<EndpointSecretOut>(200, "The new secret."),
            Route::get(tokens, list_tokens)
                .doc("listApplicationTokens", "Hookline: the application's scoped tokens (never their values).")
                .answers::<ListResponse<TokenOut>>(200, "The tokens."),
            Route::post(tokens, create_token)
                .doc(
                    "createApplicationToken",
                    "Hookline: a token that reaches only this application (for a merchant portal); its value is shown once.",
                )
                .answers::<TokenOut>(201, "The token, with its value."),
            Route::delete("/api/v1/app/{app_id}/token/{token_id}", delete_token)
                .doc("deleteApplicationToken", "Revoke a scoped token.")
                .empty(204, "Revoked."),
            Route::post("/api/v1/auth/app-portal-access/{app_id}", portal_access)
                .doc(
                    "getAppPortalAccess",
                    "A single-use link that signs a merchant in to the dashboard's portal for this application \
                     (admin token). It must be opened within `dashboard.link_ttl_ms` (default 10 minutes).",
                )
                .optional_body::<AppPortalAccessIn>()
                .answers::<AppPortalAccessOut>(200, "The link."),
            Route::post("/api/v1/auth/app/{app_id}/expire-all", expire_all)
                .doc(
                    "expireAllApplicationSessions",
                    "Ends every dashboard session of this application (from portal links or its scoped tokens) \
                     at once or after `expiry` seconds, and its portal links not yet used at once (admin \
                     token). Sessions ending sooner keep their time. The scoped tokens themselves stay valid.",
                )
                .optional_body::<AppTokenExpireIn>()
                .empty(204, "Expired (also when the application had no sessions)."),
        ],
    )
}

async fn portal_access(
    state: Shared,
    PathParams(app_id): PathParams<String>,
    axum::Extension(principal): axum::Extension<super::Principal>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(axum::Extension<super::AnswerNotKept>, Json<AppPortalAccessOut>)> {
    let AppPortalAccessIn {} = super::optional_json(&state, &headers, body).await?;
    if !state.config.dashboard.enabled {
        return Err(ApiError::Conflict("the dashboard is off (dashboard.enabled = false)".into()));
    }
    let app = find(&state, &app_id).await?;
    let minted_by = principal.admin_token_id()?;
    let code =
        crate::dashboard::mint_link(&state, minted_by, &app.id).await.map_err(ApiError::from_store("application"))?;
    let url = format!("{}/dashboard/portal?code={code}", state.public_url());
    Ok((axum::Extension(super::AnswerNotKept), Json(AppPortalAccessOut { url, token: code })))
}

/// Svix's expire-all: the application's portal sessions and links end, every node at once
/// (each request reads its session from the store).
async fn expire_all(
    state: Shared,
    PathParams(app_id): PathParams<String>,
    axum::Extension(principal): axum::Extension<super::Principal>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<StatusCode> {
    let AppTokenExpireIn { expiry } = super::optional_json(&state, &headers, body).await?;
    let seconds = expiry.unwrap_or(0);
    if !(0..=EXPIRE_SECONDS_MAX).contains(&seconds) {
        return Err(ApiError::field("expiry", format!("expiry must be 0 to {EXPIRE_SECONDS_MAX} seconds")));
    }
    principal.admin_token_id()?;
    let app = find(&state, &app_id).await?;
    let now = state.now();
    let ended = state
        .store
        .expire_sessions(&app.id, now, now + seconds * 1_000)
        .await
        .map_err(ApiError::from_store("application"))?;
    tracing::info!(app_id = %app.id, sessions = ended, expiry = seconds, "portal sessions expired");
    Ok(StatusCode::NO_CONTENT)
}

pub fn new_secret() -> Secret {
    Secret::from_key(rand::random::<[u8; SECRET_BYTES_GENERATED]>())
}

/// Checks an application as it would be saved, over the uid `stored` (if it replaces one).
pub fn check(input: &ApplicationIn, stored: Option<&Option<String>>) -> ApiResult<()> {
    super::check_rate(input.throttle_rate)?;
    super::check_text("name", &input.name, Text::Prose, 1, NAME_CHARS_MAX)?;
    super::check_uid_kept(&input.uid, stored, prefix::APP)?;
    if input.uid.as_deref() == Some(OPERATIONAL_APP_ID) {
        return Err(ApiError::field("uid", "this uid is reserved"));
    }
    if let Some(email) = &input.alert_email {
        super::check_email("alertEmail", email)?;
    }
    if let Some(policy) = &input.retry_policy {
        policy.validate().map_err(|e| ApiError::field("retryPolicy", e.to_string()))?;
    }
    Ok(())
}

/// Creates an application from `input`; shared with message creation's inline `application`.
pub async fn create_app(state: &AppState, input: ApplicationIn) -> ApiResult<App> {
    check(&input, None)?;
    let now = state.now();
    let app = App {
        id: state.new_id(prefix::APP),
        uid: input.uid,
        name: input.name,
        throttle_rate: input.throttle_rate,
        metadata: input.metadata.unwrap_or_default(),
        retry_policy: input.retry_policy,
        secret: new_secret().as_str().to_owned(),
        previous_secrets: Vec::new(),
        created_at: now,
        updated_at: now,
        alert_email: input.alert_email,
    };
    state.store.create_app(app).await.map_err(ApiError::from_store("application"))
}

async fn create(
    state: Shared,
    QueryParams(query): QueryParams<ListQuery>,
    JsonBody(input): JsonBody<ApplicationIn>,
) -> ApiResult<(StatusCode, Json<ApplicationOut>)> {
    check(&input, None)?;
    if query.get_if_exists == Some(true) {
        if let Some(uid) = &input.uid {
            match state.store.get_app(uid).await {
                Ok(existing) => return Ok((StatusCode::OK, Json(views::app(existing)))),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(ApiError::from_store("application")(e)),
            }
        }
    }
    let app = create_app(&state, input).await?;
    Ok((StatusCode::CREATED, Json(views::app(app))))
}

async fn list(
    state: Shared,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<ListResponse<ApplicationOut>>> {
    let apps = state.store.list_apps(query.page(false)?).await.map_err(ApiError::from_store("application"))?;
    Ok(Json(listed(apps, |a| a.id.clone(), views::app)))
}

/// Finds an application by id or uid; every app-scoped route starts here. The internal
/// operational application is not one: its endpoints have routes of their own.
pub async fn find(state: &AppState, key: &str) -> ApiResult<App> {
    if key == OPERATIONAL_APP_ID {
        return Err(ApiError::NotFound("application"));
    }
    state.store.get_app(key).await.map_err(ApiError::from_store("application"))
}

async fn read(state: Shared, PathParams(app_id): PathParams<String>) -> ApiResult<Json<ApplicationOut>> {
    Ok(Json(views::app(find(&state, &app_id).await?)))
}

async fn save(state: &AppState, app: App) -> ApiResult<Json<ApplicationOut>> {
    let saved = state.store.update_app(app).await.map_err(ApiError::from_store("application"))?;
    state.engine.catalog.invalidate(&saved.id);
    Ok(Json(views::app(saved)))
}

/// PUT is Svix's upsert: an unknown key that is not an app id creates the app with it as uid.
async fn replace(
    state: Shared,
    PathParams(app_id): PathParams<String>,
    JsonBody(mut input): JsonBody<ApplicationIn>,
) -> ApiResult<(StatusCode, Json<ApplicationOut>)> {
    let mut app = match find(&state, &app_id).await {
        Err(ApiError::NotFound(_)) if !has_prefix(&app_id, prefix::APP) => {
            check(&input, None)?;
            input.uid = Some(app_id);
            return Ok((StatusCode::CREATED, Json(views::app(create_app(&state, input).await?))));
        }
        other => other?,
    };
    check(&input, Some(&app.uid))?;
    app.name = input.name;
    app.uid = input.uid;
    app.throttle_rate = input.throttle_rate;
    app.metadata = input.metadata.unwrap_or_default();
    app.retry_policy = input.retry_policy;
    app.alert_email = input.alert_email;
    app.updated_at = state.now();
    Ok((StatusCode::OK, save(&state, app).await?))
}

async fn patch(
    state: Shared,
    PathParams(app_id): PathParams<String>,
    JsonBody(input): JsonBody<ApplicationPatch>,
) -> ApiResult<Json<ApplicationOut>> {
    let mut app = find(&state, &app_id).await?;
    let stored_uid = app.uid.clone();
    if let Some(name) = input.name {
        app.name = name;
    }
    if let Some(uid) = input.uid {
        app.uid = uid;
    }
    if let Some(rate) = input.throttle_rate {
        app.throttle_rate = rate;
    }
    if let Some(metadata) = input.metadata {
        app.metadata = metadata;
    }
    if let Some(policy) = input.retry_policy {
        app.retry_policy = policy;
    }
    if let Some(email) = input.alert_email {
        app.alert_email = email;
    }
    let as_input = ApplicationIn {
        name: app.name.clone(),
        uid: app.uid.clone(),
        throttle_rate: app.throttle_rate,
        metadata: None,
        retry_policy: app.retry_policy.clone(),
        alert_email: app.alert_email.clone(),
    };
    check(&as_input, Some(&stored_uid))?;
    app.updated_at = state.now();
    save(&state, app).await
}

async fn remove(state: Shared, PathParams(app_id): PathParams<String>) -> ApiResult<StatusCode> {
    let app = find(&state, &app_id).await?;
    state.store.delete_app(&app.id).await.map_err(ApiError::from_store("application"))?;
    // Its messages, deliveries, attempts and statistics after the answer, a step at a time:
    // the application is gone for every route already.
    let (store, app_id) = (state.store.clone(), app.id.clone());
    tokio::spawn(async move {
        if let Err(e) = hookline_store::purge_deleted_app(&*store, &app_id).await {
            tracing::warn!(error = %e, app_id, "could not delete all of a deleted application's messages yet; the retention pass will");
        }
    });
    state.engine.catalog.invalidate(&app.id);
    state.engine.catalog.invalidate_sources();
    state.engine.series.keep_of_app(&app.id, |_| false);
    // Its sources went with it.
    let engine = state.engine.clone();
    tokio::spawn(async move { engine.forget_deleted_sources().await });
    state.tokens.write().expect("tokens lock").retain(|t| t.app_id.as_deref() != Some(app.id.as_str()));
    Ok(StatusCode::NO_CONTENT)
}

/// Hookline: the secret that signs deliveries to per-message callback URLs.
async fn secret(state: Shared, PathParams(app_id): PathParams<String>) -> ApiResult<Json<EndpointSecretOut>> {
    Ok(Json(EndpointSecretOut { key: find(&state, &app_id).await?.secret }))
}

/// Rotates the callback secret; see the route's description. Admin only. Retried when
/// another rotation came between the read and the write.
async fn rotate_secret(
    state: Shared,
    PathParams(app_id): PathParams<String>,
    axum::Extension(principal): axum::Extension<super::Principal>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(axum::Extension<super::AnswerNotKept>, Json<EndpointSecretOut>)> {
    principal.admin_token_id()?;
    let input = super::endpoints::rotate_input(&state, &headers, body).await?;
    let (fresh, grace_ms) = super::endpoints::rotation(&state, input)?;
    for _ in 0..3 {
        let read = find(&state, &app_id).await?;
        let mut app = read.clone();
        let current = StoredSecret { text: std::mem::take(&mut app.secret), expires_at: None };
        let old = std::iter::once(current).chain(std::mem::take(&mut app.previous_secrets)).collect();
        let mut secrets = super::endpoints::rotated(old, &fresh, state.now(), grace_ms).into_iter();
        app.secret = secrets.next().ok_or(ApiError::Internal)?.text;
        app.previous_secrets = secrets.collect();
        // Later than the read even within its millisecond, as an endpoint's edit.
        app.updated_at = state.now().max(read.updated_at + 1);
        let id = app.id.clone();
        if state.store.set_app_secrets(app, &read).await.map_err(ApiError::from_store("application"))? {
            state.engine.catalog.invalidate(&id);
            let key = fresh.as_str().to_owned();
            return Ok((axum::Extension(super::AnswerNotKept), Json(EndpointSecretOut { key })));
        }
    }
    Err(ApiError::Conflict("the application kept changing while its secret was rotated; try again".into()))
}

fn token_view(token: &hookline_store::Token, value: Option<String>) -> TokenOut {
    TokenOut {
        id: token.id.clone(),
        app_id: token.app_id.clone().unwrap_or_default(),
        token: value,
        created_at: timestamp(token.created_at),
    }
}

/// Hookline: a token that can reach only this application (for a merchant portal). The
/// value is shown once; only its hash is kept.
async fn create_token(
    state: Shared,
    PathParams(app_id): PathParams<String>,
) -> ApiResult<(StatusCode, axum::Extension<super::AnswerNotKept>, Json<TokenOut>)> {
    let app = find(&state, &app_id).await?;
    let value = format!("hk_app_{}", hex::encode(rand::random::<[u8; 24]>()));
    let token = Token {
        id: state.new_id(prefix::TOKEN),
        hash: hash_token(&value),
        app_id: Some(app.id),
        created_at: state.now(),
    };
    state.store.add_token(token.clone()).await.map_err(ApiError::from_store("token"))?;
    let out = token_view(&token, Some(value));
    state.tokens.write().expect("tokens lock").push(token);
    Ok((StatusCode::CREATED, axum::Extension(super::AnswerNotKept), Json(out)))
}

async fn list_tokens(state: Shared, PathParams(app_id): PathParams<String>) -> ApiResult<Json<ListResponse<TokenOut>>> {
    let app = find(&state, &app_id).await?;
    let tokens = state.tokens.read().expect("tokens lock");
    let data: Vec<TokenOut> =
        tokens.iter().filter(|t| t.app_id.as_deref() == Some(app.id.as_str())).map(|t| token_view(t, None)).collect();
    Ok(Json(ListResponse { iterator: data.last().map(|t| t.id.clone()), prev_iterator: None, data, done: true }))
}

async fn delete_token(
    state: Shared,
    PathParams((app_id, token_id)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    let app = find(&state, &app_id).await?;
    let belongs = state
        .tokens
        .read()
        .expect("tokens lock")
        .iter()
        .any(|t| t.id == token_id && t.app_id.as_deref() == Some(app.id.as_str()));
    if !belongs {
        return Err(ApiError::NotFound("token"));
    }
    state.store.delete_token(&token_id).await.map_err(ApiError::from_store("token"))?;
    state.tokens.write().expect("tokens lock").retain(|t| t.id != token_id);
    Ok(StatusCode::NO_CONTENT)
}
