//! The API error type: one stable code per kind of failure, one status per code, and a
//! JSON body `{"code": "...", "detail": "..."}` (422 carries Svix's list of field errors).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hookline_store::StoreError;
use serde::Serialize;

/// One invalid field, in Svix's validation-error shape.
#[derive(Debug, Serialize)]
pub struct FieldError {
    pub loc: Vec<String>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this token may not do that")]
    Forbidden,
    #[error("too many requests for this token; retry after {0} s")]
    RateLimited(u64),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    #[error(
        "the body must be JSON sent as Content-Type: application/json \
         (curl: --json, or -H 'Content-Type: application/json'; curl -d alone sends a form)"
    )]
    UnsupportedMediaType,
    #[error("this Idempotency-Key was used with a different request (method, path or body); use a new key")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still in progress; retry when it has finished")]
    IdempotencyInProgress,
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body did not arrive within {0} ms")]
    RequestTimeout(u64),
    #[error("the request head is over {headers_max} headers or {bytes_max} bytes")]
    HeadTooLarge { headers_max: usize, bytes_max: usize },
    #[error("request refused: {0}")]
    Unverified(hookline_core::inbound::Rejection),
    #[error("storage is unavailable; nothing was accepted, retry later")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// One field failed validation.
    pub fn field(field: &str, msg: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![FieldError {
            loc: vec!["body".into(), field.into()],
            msg: msg.into(),
            kind: "value_error",
        }])
    }

    /// The exhaustive code → status table.
    pub fn code_and_status(&self) -> (&'static str, StatusCode) {
        match self {
            ApiError::Unauthorized => ("authentication_failed", StatusCode::UNAUTHORIZED),
            ApiError::Forbidden => ("forbidden", StatusCode::FORBIDDEN),
            ApiError::RateLimited(_) => ("rate_limited", StatusCode::TOO_MANY_REQUESTS),
            ApiError::NotFound(_) => ("not_found", StatusCode::NOT_FOUND),
            ApiError::Conflict(_) => ("conflict", StatusCode::CONFLICT),
            ApiError::MethodNotAllowed => ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED),
            ApiError::UnsupportedMediaType => ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ApiError::IdempotencyKeyReused => ("idempotency_key_reused", StatusCode::UNPROCESSABLE_ENTITY),
            ApiError::IdempotencyInProgress => ("idempotency_key_in_use", StatusCode::CONFLICT),
            ApiError::InvalidJson(_) => ("invalid_json", StatusCode::BAD_REQUEST),
            ApiError::BadRequest(_) => ("bad_request", StatusCode::BAD_REQUEST),
            ApiError::Validation(_) => ("validation", StatusCode::UNPROCESSABLE_ENTITY),
            ApiError::PayloadTooLarge(_) => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::RequestTimeout(_) => ("request_timeout", StatusCode::REQUEST_TIMEOUT),
            ApiError::HeadTooLarge { .. } => ("headers_too_large", StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            ApiError::Unverified(rejection) => (rejection.code(), StatusCode::UNAUTHORIZED),
            ApiError::Unavailable => ("storage_unavailable", StatusCode::SERVICE_UNAVAILABLE),
            ApiError::Internal => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// Maps a store error where the missing thing has a name.
    pub fn from_store(what: &'static str) -> impl Fn(StoreError) -> ApiError {
        move |e| match e {
            StoreError::NotFound => ApiError::NotFound(what),
            StoreError::Conflict(_) => ApiError::Conflict(format!("a {what} with this uid or id already exists")),
            StoreError::Invalid(detail) => {
                ApiError::Validation(vec![FieldError { loc: vec!["body".into()], msg: detail, kind: "value_error" }])
            }
            StoreError::Unavailable(detail) => {
                tracing::error!(%detail, "storage unavailable");
                ApiError::Unavailable
            }
            StoreError::Corrupt(detail) => {
                tracing::error!(%detail, "stored data is invalid");
                ApiError::Internal
            }
        }
    }
}

#[derive(Serialize)]
struct Body<'a, D: Serialize> {
    code: &'a str,
    detail: D,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code_and_status();
        let mut response = match &self {
            ApiError::Validation(fields) => (status, axum::Json(Body { code, detail: fields })).into_response(),
            // A 422 in Svix's list form as every other 422: its SDKs read any 422's `detail`
            // as that list, and a text raised an error of their own in place of the API's.
            ApiError::IdempotencyKeyReused => {
                let field = FieldError {
                    loc: vec!["header".into(), "idempotency-key".into()],
                    msg: self.to_string(),
                    kind: "value_error",
                };
                (status, axum::Json(Body { code, detail: [field] })).into_response()
            }
            other => (status, axum::Json(Body { code, detail: other.to_string() })).into_response(),
        };
        let retry_after = match self {
            ApiError::Unavailable => Some(5),
            ApiError::RateLimited(seconds) => Some(seconds),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from(seconds));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
