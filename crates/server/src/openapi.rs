//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`, built from the same route table
//! as the router (`api::route`): schemas are derived from the wire types the handlers
//! parse, and each operation's error statuses from what its route can refuse.

use crate::api::route::{QueryParam, Route};
use crate::wire::{NAME_CHARS_MAX, NAME_PATTERN, PRINTABLE_PATTERN};
use axum::http::Method;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

/// Every operation of the API, as (method, path) pairs.
pub fn operations() -> Vec<(String, String)> {
    crate::api::routes().iter().map(|r| (r.method.as_str().to_ascii_lowercase(), doc_path(r.path))).collect()
}

/// `{*rest}` (axum's catch-all) is an ordinary path parameter to a client.
fn doc_path(path: &str) -> String {
    path.replace("{*", "{")
}

/// What can go wrong, by status, and when a route can answer it.
fn error_statuses(route: &Route) -> Vec<(u16, &'static str)> {
    let mut out = Vec::new();
    let writes = route.method != Method::GET && route.method != Method::DELETE;
    let parsed = !route.query.is_empty() || route.body.is_some() || route.path.contains('{');
    if parsed || (route.method == Method::POST && !route.public) {
        out.push((
            400,
            "A path or query parameter (not UTF-8 once percent-decoded, say), the Idempotency-Key or the body does not parse (`bad_request`, `invalid_json`).",
        ));
    }
    if !route.public {
        out.push((401, "No valid bearer token (`authentication_failed`)."));
        out.push((
            403,
            "An application token reaching outside its application, or pointing an endpoint or a message's `callbackUrl` at a queue (`forbidden`).",
        ));
        out.push((404, "An id in the path or body names nothing this token can see (`not_found`)."));
    } else if route.path.starts_with("/in/") {
        out.push((401, "The provider's signature does not verify; `code` says why."));
        out.push((404, "No such source (`not_found`)."));
    }
    if route.body.is_some() || route.method == Method::POST {
        out.push((
            408,
            "The body did not arrive within `server.body_read_timeout_ms` of the server starting to wait for it (`request_timeout`).",
        ));
    }
    if !route.public && writes {
        out.push((409, "The resource's state does not allow it (a uid taken, a delivery already done, an ordered delivery still open in its lane, a disabled endpoint, a source without an apiKey), or a request with this Idempotency-Key is still running (`conflict`, `idempotency_key_in_use`)."));
    }
    if route.body.is_some() || route.method == Method::POST {
        out.push((413, "The body is larger than `api.body_bytes_max` (`payload_too_large`)."));
    }
    if route.body.is_some() {
        out.push((415, "The body is declared as something other than JSON (`unsupported_media_type`)."));
    }
    if route.body.is_some() || (route.method == Method::POST && !route.public) {
        out.push((422, "A field is invalid (`validation`), or the Idempotency-Key was used for another request (`idempotency_key_reused`); either with Svix's list of {loc, msg, type}."));
    }
    if !route.public {
        out.push((429, "An application token over `api.token_rate_limit_per_s` (`rate_limited`, with Retry-After)."));
    }
    out.push((
        431,
        "The request head is over `server.headers_max` or `server.header_bytes_max` (`headers_too_large`); over four times `server.header_bytes_max`, or over both 100 headers and `server.headers_max`, the HTTP layer answers a 431 without a body.",
    ));
    if !route.public || route.path.starts_with("/in/") || route.path == "/api/v1/health" {
        out.push((503, "Storage is unavailable; nothing was done (`storage_unavailable`, with Retry-After)."));
    }
    out
}

fn query_parameter(param: &QueryParam) -> Value {
    json!({"name": param.name, "in": "query", "required": false, "description": param.description, "schema": (param.schema)()})
}

/// Ids and uids are names (`wire::NAME_PATTERN`): a PUT creates with the path's key as uid.
/// A message is also found by its `eventId`; a provider's appended path is anything.
fn path_parameter_schema(name: &str) -> Value {
    match name {
        "rest" => json!({"type": "string", "minLength": 1}),
        "msg_id" => {
            json!({"type": "string", "minLength": 1, "maxLength": NAME_CHARS_MAX, "pattern": PRINTABLE_PATTERN})
        }
        _ => json!({"type": "string", "minLength": 1, "maxLength": NAME_CHARS_MAX, "pattern": NAME_PATTERN}),
    }
}

fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
        .map(|name| name.trim_start_matches('*'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": path_parameter_schema(name)}))
        .collect()
}

fn operation(route: &Route, generator: &mut schemars::SchemaGenerator) -> Value {
    let mut parameters = path_parameters(route.path);
    parameters.extend(route.query.iter().map(query_parameter));
    if route.method == Method::POST && !route.public {
        parameters.push(json!({
            "name": "idempotency-key", "in": "header", "required": false,
            "description": "Names this request for 24 h: the same request again replays the answer; another request with the key is a 422.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"}
        }));
    }
    let mut responses = Map::new();
    for answer in &route.answers {
        let mut response = json!({"description": answer.description});
        if let Some(body) = answer.body {
            response["content"] = json!({"application/json": {"schema": body(generator)}});
        }
        responses.insert(answer.status.to_string(), response);
    }
    for (status, description) in error_statuses(route) {
        responses.insert(
            status.to_string(),
            json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    let mut op = json!({
        "operationId": route.id,
        "tags": [route.tag],
        "summary": route.summary,
        "parameters": parameters,
        "responses": responses,
    });
    if let Some((body, required)) = route.body {
        op["requestBody"] = json!({"required": required, "content": {"application/json": {"schema": body(generator)}}});
    }
    if !route.public {
        op["security"] = json!([{"bearer": []}]);
    }
    op
}

/// The document, built once: it depends only on the code.
pub fn document() -> &'static Value {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(build)
}

fn build() -> Value {
    // OpenAPI 3.1: its schemas are JSON Schema 2020-12, which can say what a header map's
    // keys may be (`propertyNames`); 3.0 cannot.
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    let mut generator = settings.into_generator();
    let mut paths = Map::new();
    for route in crate::api::routes() {
        let item = paths.entry(doc_path(route.path)).or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = operation(&route, &mut generator);
    }
    let mut schemas = generator.take_definitions(true);
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["code", "detail"], "properties": {
            "code": {"type": "string", "description": "Stable error code, e.g. `not_found`, `validation`, `payload_too_large`."},
            "detail": {"description": "A human message, or for a 422 Svix's list of {loc, msg, type}."}
        }}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Hookline API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Svix v1 compatible management API of Hookline, a webhook gateway for payment events. \
                Hookline additions: per-message `callbackUrl` and `deliverAt`, per-endpoint `signatureScheme` and `retryPolicy`, \
                application tokens, inbound sources. \
                On PostgreSQL, text holding U+0000 (which PostgreSQL cannot store) is refused with 422 `validation`, \
                or not found where it names something; message payloads are stored as bytes and may hold it."
        },
        "servers": [{"url": "/"}],
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    })
}
