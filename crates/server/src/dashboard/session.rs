//! Signing in (with an API token, or once with a portal link), signing out, and the
//! session behind every page.

use super::{render, Api, Dash, DashForm, DashState};
use crate::api::{principal_of, principal_of_token, Principal};
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use hookline_store::DashboardSession;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

const COOKIE: &str = "hookline_session";
/// The `token_id` of sessions opened with a portal link (API token ids never start so).
const PORTAL_PREFIX: &str = "portal_";

/// The signed-in person a page is for.
pub struct Visitor {
    pub principal: Principal,
    /// The token every form of this session carries.
    pub csrf: String,
    session_id: [u8; 32],
}

impl Visitor {
    /// The API as this person.
    pub fn api<'a>(&self, dash: &'a Dash) -> Api<'a> {
        Api { router: &dash.api, principal: self.principal.clone() }
    }

    /// The one application a merchant's session may see; `None` for the operator.
    pub fn app_id(&self) -> Option<&str> {
        match &self.principal {
            Principal::Admin { .. } => None,
            Principal::App { app_id, .. } => Some(app_id),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.app_id().is_none()
    }

    /// A form's CSRF token must be this session's (a page of another site cannot know it):
    /// the refusal when it is not.
    pub fn refuse_without_csrf(&self, given: &str) -> Option<Response> {
        if bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) {
            None
        } else {
            Some(render::refused(StatusCode::FORBIDDEN, "This form is out of date or did not come from this dashboard (CSRF token missing or wrong). Reload the page and try again."))
        }
    }
}

/// What the store keeps of a browser's secret.
pub fn secret_id(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new random secret, 256 bits, as hex.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn csrf_of(secret: &str) -> String {
    hex::encode(Sha256::new().chain_update(b"hookline dashboard csrf\0").chain_update(secret).finalize())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn to_sign_in() -> Response {
    Redirect::to("/dashboard/sign-in").into_response()
}

impl FromRequestParts<Arc<Dash>> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, dash: &Arc<Dash>) -> Result<Visitor, Response> {
        let Some(secret) = cookie(&parts.headers, COOKIE) else { return Err(to_sign_in()) };
        let session_id = secret_id(secret);
        let session = match dash.state.store.session(session_id, dash.state.now()).await {
            Ok(Some(session)) => session,
            Ok(None) => return Err(to_sign_in()),
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: cannot read the session");
                return Err(unavailable());
            }
        };
        let principal = match (&session.app_id, session.token_id.starts_with(PORTAL_PREFIX)) {
            (Some(app_id), true) => Principal::App { token_id: session.token_id.clone(), app_id: app_id.clone() },
            // A session opened with a token lasts only while the token does.
            _ => {
                let tokens = dash.state.tokens.read().expect("tokens lock");
                match tokens.iter().find(|t| t.id == session.token_id) {
                    Some(token) => principal_of_token(token),
                    None => return Err(to_sign_in()),
                }
            }
        };
        // A merchant's page costs one request of its token's budget, however many API
        // reads make it; each change it makes costs one more (`api::authenticate`).
        if let Principal::App { token_id, .. } = &principal {
            if let Some(refused) = refused_over_budget(dash, token_id) {
                return Err(refused);
            }
        }
        Ok(Visitor { principal, csrf: csrf_of(secret), session_id })
    }
}

/// Takes one request from the token's budget; the 429 page (with when to come back) when
/// it is spent.
fn refused_over_budget(dash: &Dash, token_id: &str) -> Option<Response> {
    crate::api::take_from_budget(&dash.state, token_id).err().map(|_| {
        let detail = "Too many requests for this token just now; wait a moment and reload.";
        render::refused(StatusCode::TOO_MANY_REQUESTS, detail)
    })
}

/// A form posted from another site is refused before anything else (the CSRF token is the
/// main defence; this also covers the sign-in forms, which have no session yet). Browsers
/// say where a request came from in `Sec-Fetch-Site`; older ones only in `Origin`.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !(site == "same-origin" || site == "none");
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => false,
        // `null` (a sandboxed or opaque origin) has no host: refused too.
        Some(origin) => origin.split_once("://").map(|(_, rest)| rest) != host,
    }
}

fn cross_site_refusal() -> Response {
    render::refused(StatusCode::FORBIDDEN, "This form was posted from another site.")
}

/// A new session's secret (for the cookie) and its row.
fn new_session(dash: &Dash, token_id: String, app_id: Option<String>) -> (String, DashboardSession) {
    let now = dash.state.now();
    let secret = new_secret();
    let session = DashboardSession {
        id: secret_id(&secret),
        link: false,
        token_id,
        app_id,
        created_at: now,
        expires_at: now + dash.state.config.dashboard.session_ttl_ms as i64,
    };
    (secret, session)
}

/// Opens a session for `principal` and sends the browser on to `next`.
async fn open_session(
    dash: &Dash,
    headers: &HeaderMap,
    token_id: String,
    app_id: Option<String>,
    next: &str,
) -> Response {
    let (secret, session) = new_session(dash, token_id, app_id);
    if let Err(e) = dash.state.store.add_session(session).await {
        tracing::warn!(error = %e, "dashboard: cannot store a session");
        return unavailable();
    }
    send_with_session(dash, headers, &secret, next).await
}

fn unavailable() -> Response {
    render::refused(StatusCode::SERVICE_UNAVAILABLE, "The database is unavailable; try again shortly.")
}

/// Sends the browser on to `next` with the session `secret`'s cookie. The session its
/// cookie named before, if any, ends: signing in again (an operator opening a merchant's
/// portal link, say) left it valid for its whole time, with no way to end it.
async fn send_with_session(dash: &Dash, headers: &HeaderMap, secret: &str, next: &str) -> Response {
    if let Some(before) = cookie(headers, COOKIE).filter(|before| *before != secret) {
        if let Err(e) = dash.state.store.delete_session(secret_id(before)).await {
            tracing::warn!(error = %e, "dashboard: cannot end the session signed in before");
        }
    }
    let config = &dash.state.config;
    let secure = if config.server.dev { "" } else { "; Secure" };
    let max_age = config.dashboard.session_ttl_ms / 1000;
    let cookie = format!("{COOKIE}={secret}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    let mut response = Redirect::to(next).into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    response
}

pub async fn sign_in_form() -> Response {
    render::sign_in(None)
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

pub async fn sign_in(dash: DashState, headers: HeaderMap, DashForm(form): DashForm<SignIn>) -> Response {
    if cross_site(&headers) {
        return cross_site_refusal();
    }
    let Some(principal) = principal_of(&dash.state, form.token.trim()) else {
        let page = render::sign_in(Some("That token is not valid here."));
        return (StatusCode::UNAUTHORIZED, page).into_response();
    };
    match principal {
        Principal::Admin { token_id } => open_session(&dash, &headers, token_id, None, "/dashboard").await,
        Principal::App { token_id, app_id } => {
            // A session is a write: signing in again and again cost the token nothing.
            if let Some(refused) = refused_over_budget(&dash, &token_id) {
                return refused;
            }
            let next = format!("/dashboard/app/{}", super::segment(&app_id));
            open_session(&dash, &headers, token_id, Some(app_id), &next).await
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn sign_out(dash: DashState, visitor: Visitor, DashForm(form): DashForm<CsrfForm>) -> Response {
    if let Some(refused) = visitor.refuse_without_csrf(&form.csrf) {
        return refused;
    }
    if let Err(e) = dash.state.store.delete_session(visitor.session_id).await {
        tracing::warn!(error = %e, "dashboard: cannot end a session");
        return unavailable();
    }
    let mut response = Redirect::to("/dashboard/sign-in").into_response();
    let cleared = format!("{COOKIE}=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cleared).expect("cookie is ASCII"));
    response
}

#[derive(Deserialize)]
pub struct PortalCode {
    #[serde(default)]
    code: String,
}

/// The page a portal link opens: a button, so that a link previewer fetching the URL does
/// not use the link up.
pub async fn portal_form(Query(query): Query<PortalCode>) -> Response {
    render::portal(&query.code)
}

pub async fn portal_sign_in(dash: DashState, headers: HeaderMap, DashForm(form): DashForm<PortalCode>) -> Response {
    if cross_site(&headers) {
        return cross_site_refusal();
    }
    // The link's row becomes the session (one statement: see `Store::use_link`). A code that
    // is no link costs one update by key that changes nothing; no budget is taken, as one
    // shared by every visitor would let anyone lock the merchants out.
    let link_id = secret_id(&form.code);
    let token_id = format!("{PORTAL_PREFIX}{}", hex::encode(&link_id[..8]));
    let (secret, session) = new_session(&dash, token_id, None);
    let app_id = match dash.state.store.use_link(link_id, session).await {
        Ok(Some(DashboardSession { app_id: Some(app_id), .. })) => app_id,
        Ok(_) => {
            let detail = "This portal link was already used, has expired, or is not one. Ask for a new link.";
            return render::refused(StatusCode::GONE, detail);
        }
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: cannot use a portal link");
            return unavailable();
        }
    };
    let next = format!("/dashboard/app/{}", super::segment(&app_id));
    send_with_session(&dash, &headers, &secret, &next).await
}

/// Mints a single-use portal link for an application: its secret, stored hashed.
pub async fn mint_link(
    state: &crate::api::AppState,
    minted_by: &str,
    app_id: &str,
) -> Result<String, hookline_store::StoreError> {
    let now = state.now();
    let code = new_secret();
    let link = DashboardSession {
        id: secret_id(&code),
        link: true,
        token_id: minted_by.to_owned(),
        app_id: Some(app_id.to_owned()),
        created_at: now,
        expires_at: now + state.config.dashboard.link_ttl_ms as i64,
    };
    state.store.add_session(link).await?;
    Ok(code)
}
