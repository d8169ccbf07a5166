//! The dashboard: an operator console and a merchant portal, server-rendered HTML at
//! `/dashboard`. A page never reads the store itself: it calls the API's own routes
//! in-process on behalf of the signed-in person ([`Api`]), so it shows what the API shows
//! and is refused what the API refuses (an application's portal sees that application only).
//!
//! Sign-in makes a session kept in the store (so every node knows it and sign-out ends it):
//! the browser holds a random secret in an `HttpOnly`, `SameSite=Strict` cookie (`Secure`
//! outside dev mode); every form carries a CSRF token derived from that secret.

mod pages;
mod render;
mod session;

use crate::api::{AppState, OnBehalfOf, Principal};
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

pub use session::{mint_link, Visitor};

/// What the dashboard's handlers share: the server's state and the API router they call.
pub struct Dash {
    pub state: Arc<AppState>,
    api: Router,
}

pub type DashState = axum::extract::State<Arc<Dash>>;

/// A form's body, read as the API reads bodies (`api::read_body`): a body that does not
/// arrive within `server.body_read_timeout_ms` is a 408 page and one over
/// `api.body_bytes_max` a 413 (axum's `Form` answered 400 to both); a form that does not
/// fit its fields is a 422 page, one not sent as a form a 415.
pub struct DashForm<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Arc<Dash>> for DashForm<T> {
    type Rejection = Response;

    async fn from_request(request: Request<Body>, dash: &Arc<Dash>) -> Result<Self, Response> {
        if crate::api::media_type(request.headers()).as_deref() != Some("application/x-www-form-urlencoded") {
            let detail = "A form is sent as application/x-www-form-urlencoded.";
            return Err(render::refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail));
        }
        let body = crate::api::read_body(request.into_body(), &dash.state.config).await;
        let bytes = body.map_err(|e| render::refused(e.code_and_status().1, &e.to_string()))?;
        serde_urlencoded::from_bytes(&bytes)
            .map(DashForm)
            .map_err(|e| render::refused(StatusCode::UNPROCESSABLE_ENTITY, &format!("The form could not be read: {e}")))
    }
}

/// The dashboard's routes, served beside the API (`api`, the finished API router).
pub fn router(state: Arc<AppState>, api: Router) -> Router {
    let dash = Arc::new(Dash { state, api });
    Router::new()
        .route("/dashboard", get(pages::overview))
        .route("/dashboard/", get(pages::overview))
        .route("/dashboard/sign-in", get(session::sign_in_form).post(session::sign_in))
        .route("/dashboard/sign-out", post(session::sign_out))
        .route("/dashboard/portal", get(session::portal_form).post(session::portal_sign_in))
        .route("/dashboard/assets/dashboard.css", get(render::stylesheet))
        .route("/dashboard/assets/dashboard.js", get(render::script))
        .route("/dashboard/app", get(pages::apps))
        .route("/dashboard/app/{app}", get(pages::app))
        .route("/dashboard/app/{app}/{action}", post(pages::app_action))
        .route("/dashboard/app/{app}/endpoint/{endpoint}", get(pages::endpoint))
        .route("/dashboard/app/{app}/endpoint/{endpoint}/{action}", post(pages::endpoint_action))
        .route("/dashboard/app/{app}/msg", get(pages::messages))
        .route("/dashboard/app/{app}/msg/{msg}", get(pages::message))
        .route("/dashboard/app/{app}/msg/{msg}/resend", post(pages::resend))
        .route("/dashboard/source", get(pages::sources))
        .route("/dashboard/source/{source}", get(pages::source))
        .route("/dashboard/source/{source}/event/{msg}/replay", post(pages::replay))
        .route("/dashboard/operational", get(pages::operational))
        .route("/dashboard/{*rest}", get(|| async { render::not_found() }))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(dash)
}

/// Every dashboard answer: scripts and styles from our own origin only (nothing inline can
/// run), never framed, never cached, no referrer to other sites (a portal link's code
/// stays out of their logs).
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
               form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// An API answer that was not a success: its status and the error's code and message.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub code: String,
    pub detail: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        render::failure(&self)
    }
}

/// The API, called in-process as one signed-in person.
pub struct Api<'a> {
    router: &'a Router,
    principal: Principal,
}

impl Api<'_> {
    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        let bytes = self.call(Method::GET, path, None).await?;
        json(&bytes)
    }

    /// Every item of a listing, page after page: `path` has a query (its `limit` among it).
    /// For lists an action or a choice needs whole (an application's endpoints, a message's
    /// destinations), which the API gives in pages of 250 at most.
    pub async fn get_all(&self, path: &str) -> Result<Vec<Value>, Failure> {
        let (mut all, mut iterator) = (Vec::new(), None::<String>);
        loop {
            let page = match &iterator {
                Some(it) => format!("{path}&iterator={}", query_value(it)),
                None => path.to_owned(),
            };
            let list = self.get(&page).await?;
            all.extend(render::items(&list).iter().cloned());
            match (list["done"].as_bool(), list["iterator"].as_str()) {
                (Some(false), Some(next)) if iterator.as_deref() != Some(next) => iterator = Some(next.to_owned()),
                _ => return Ok(all),
            }
        }
    }

    /// The answer's bytes as sent (a payload is shown exactly as it was published).
    pub async fn get_raw(&self, path: &str) -> Result<bytes::Bytes, Failure> {
        self.call(Method::GET, path, None).await
    }

    /// A POST, with a JSON body or none.
    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        json(&self.call(Method::POST, path, body).await?)
    }

    pub async fn patch(&self, path: &str, body: Value) -> Result<Value, Failure> {
        json(&self.call(Method::PATCH, path, Some(body)).await?)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<bytes::Bytes, Failure> {
        let mut request = Request::builder().method(method).uri(path);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let mut request = request.body(body).map_err(|e| internal(e.to_string()))?;
        request.extensions_mut().insert(OnBehalfOf(self.principal.clone()));
        let response = self.router.clone().oneshot(request).await.map_err(|e| internal(e.to_string()))?;
        let status = response.status();
        let bytes =
            axum::body::to_bytes(response.into_body(), usize::MAX).await.map_err(|e| internal(e.to_string()))?;
        if status.is_success() {
            return Ok(bytes);
        }
        let value = json(&bytes).unwrap_or(Value::Null);
        let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        // A validation error's detail is Svix's list of `{loc, msg}`: each said in turn.
        let detail = match value.get("detail").and_then(Value::as_array) {
            Some(fields) => {
                let said = fields.iter().filter_map(|f| f.get("msg").and_then(Value::as_str));
                said.collect::<Vec<_>>().join("; ")
            }
            None => text("detail"),
        };
        Err(Failure { status, code: text("code"), detail })
    }
}

fn json(bytes: &[u8]) -> Result<Value, Failure> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|e| internal(format!("the API answered something not JSON: {e}")))
}

fn internal(detail: String) -> Failure {
    Failure { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal".into(), detail }
}

/// A path segment as the API's paths take it (ids and uids are URL-safe; this keeps any
/// other character from changing the path).
pub fn segment(value: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(value, KEEP).to_string()
}

/// A query-string value.
pub fn query_value(value: &str) -> String {
    segment(value)
}
