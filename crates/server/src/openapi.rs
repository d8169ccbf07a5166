//! The OpenAPI 3 document served at `/api/v1/openapi.json`. Schemas are derived from the
//! wire types, so they cannot drift from what the API parses; the operation table below is
//! checked against the router by the integration tests.

use crate::wire::*;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

struct Doc {
    generator: SchemaGenerator,
    paths: Map<String, Value>,
}

impl Doc {
    fn schema<T: JsonSchema>(&mut self) -> Value {
        serde_json::to_value(self.generator.subschema_for::<T>()).expect("schemas serialize")
    }

    #[allow(clippy::too_many_arguments)]
    fn op(
        &mut self,
        method: &str,
        path: &str,
        id: &str,
        tag: &str,
        summary: &str,
        request: Option<Value>,
        status: u16,
        response: Option<Value>,
    ) {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut operation = json!({
            "operationId": id,
            "tags": [tag],
            "summary": summary,
            "parameters": params,
            "responses": {
                status.to_string(): match response {
                    Some(schema) => json!({"description": "OK", "content": {"application/json": {"schema": schema}}}),
                    None => json!({"description": "No content"}),
                },
                "default": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if method != "get" && method != "delete" {
            operation["parameters"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "idempotency-key", "in": "header", "schema": {"type": "string"}}));
        }
        if let Some(schema) = request {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        if !path.ends_with("/health") && !path.ends_with("/openapi.json") && !path.starts_with("/in/") {
            operation["security"] = json!([{"bearer": []}]);
        }
        let entry = self.paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        entry[method] = operation;
    }
}

/// Every operation of the API, as (method, path) pairs, for the router check.
pub fn operations() -> Vec<(String, String)> {
    let doc = document();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.push((method.clone(), path.clone()));
        }
    }
    out
}

pub fn document() -> Value {
    let mut d = Doc { generator: SchemaSettings::openapi3().into_generator(), paths: Map::new() };
    let app = "/api/v1/app/{app_id}";
    let ep = "/api/v1/app/{app_id}/endpoint/{endpoint_id}";
    let msg = "/api/v1/app/{app_id}/msg/{msg_id}";
    let et = "/api/v1/event-type/{event_type_name}";

    d.op("get", "/api/v1/health", "health", "Health", "Answers 200 once the server is ready.", None, 200, None);
    let (r, s) = (None, Some(d.schema::<ListResponse<ApplicationOut>>()));
    d.op("get", "/api/v1/app", "listApplications", "Application", "List applications.", r, 200, s);
    let (r, s) = (Some(d.schema::<ApplicationIn>()), Some(d.schema::<ApplicationOut>()));
    d.op(
        "post",
        "/api/v1/app",
        "createApplication",
        "Application",
        "Create an application (`get_if_exists=true` returns an existing uid).",
        r,
        201,
        s,
    );
    let s = Some(d.schema::<ApplicationOut>());
    d.op("get", app, "getApplication", "Application", "Get an application by id or uid.", None, 200, s);
    let (r, s) = (Some(d.schema::<ApplicationIn>()), Some(d.schema::<ApplicationOut>()));
    d.op(
        "put",
        app,
        "upsertApplication",
        "Application",
        "Replace an application, or create it with this uid.",
        r,
        200,
        s,
    );
    let (r, s) = (Some(d.schema::<ApplicationPatch>()), Some(d.schema::<ApplicationOut>()));
    d.op("patch", app, "patchApplication", "Application", "Change some fields of an application.", r, 200, s);
    d.op(
        "delete",
        app,
        "deleteApplication",
        "Application",
        "Delete an application and everything in it.",
        None,
        204,
        None,
    );
    let s = Some(d.schema::<EndpointSecretOut>());
    d.op(
        "get",
        &format!("{app}/secret"),
        "getApplicationSecret",
        "Application",
        "Hookline: the secret that signs per-message callback URLs.",
        None,
        200,
        s,
    );

    let s = Some(d.schema::<ListResponse<TokenOut>>());
    d.op(
        "get",
        &format!("{app}/token"),
        "listApplicationTokens",
        "Application",
        "Hookline: the application's scoped tokens (never their values).",
        None,
        200,
        s,
    );
    let s = Some(d.schema::<TokenOut>());
    let summary =
        "Hookline: a token that reaches only this application (for a merchant portal); its value is shown once.";
    d.op("post", &format!("{app}/token"), "createApplicationToken", "Application", summary, None, 201, s);
    d.op(
        "delete",
        &format!("{app}/token/{{token_id}}"),
        "deleteApplicationToken",
        "Application",
        "Revoke a scoped token.",
        None,
        204,
        None,
    );

    let eps = "/api/v1/app/{app_id}/endpoint";
    let s = Some(d.schema::<ListResponse<EndpointOut>>());
    d.op("get", eps, "listEndpoints", "Endpoint", "List an application's endpoints.", None, 200, s);
    let (r, s) = (Some(d.schema::<EndpointIn>()), Some(d.schema::<EndpointOut>()));
    d.op("post", eps, "createEndpoint", "Endpoint", "Create an endpoint.", r, 201, s);
    let s = Some(d.schema::<EndpointOut>());
    d.op("get", ep, "getEndpoint", "Endpoint", "Get an endpoint by id or uid.", None, 200, s);
    let (r, s) = (Some(d.schema::<EndpointIn>()), Some(d.schema::<EndpointOut>()));
    d.op("put", ep, "upsertEndpoint", "Endpoint", "Replace an endpoint, or create it with this uid.", r, 200, s);
    let (r, s) = (Some(d.schema::<EndpointPatch>()), Some(d.schema::<EndpointOut>()));
    d.op("patch", ep, "patchEndpoint", "Endpoint", "Change some fields of an endpoint.", r, 200, s);
    d.op(
        "delete",
        ep,
        "deleteEndpoint",
        "Endpoint",
        "Delete an endpoint; its open deliveries are canceled.",
        None,
        204,
        None,
    );
    let s = Some(d.schema::<EndpointSecretOut>());
    d.op(
        "get",
        &format!("{ep}/secret"),
        "getEndpointSecret",
        "Endpoint",
        "The endpoint's current signing secret.",
        None,
        200,
        s,
    );
    let (r, s) = (Some(d.schema::<EndpointSecretRotateIn>()), Some(d.schema::<EndpointSecretOut>()));
    d.op(
        "post",
        &format!("{ep}/secret/rotate"),
        "rotateEndpointSecret",
        "Endpoint",
        "Rotate the secret; the old one keeps signing for the grace period (24 h).",
        r,
        200,
        s,
    );
    // The body is optional: without one, Hookline generates the new secret.
    d.paths[&format!("{ep}/secret/rotate")]["post"]["requestBody"]["required"] = json!(false);
    let s = Some(d.schema::<EndpointHeadersOut>());
    d.op(
        "get",
        &format!("{ep}/headers"),
        "getEndpointHeaders",
        "Endpoint",
        "Custom headers sent with each delivery.",
        None,
        200,
        s,
    );
    let r = Some(d.schema::<EndpointHeadersIn>());
    d.op(
        "put",
        &format!("{ep}/headers"),
        "setEndpointHeaders",
        "Endpoint",
        "Replace the custom headers.",
        r,
        204,
        None,
    );
    let r = Some(d.schema::<EndpointHeadersPatchIn>());
    d.op(
        "patch",
        &format!("{ep}/headers"),
        "patchEndpointHeaders",
        "Endpoint",
        "Add, change or delete custom headers.",
        r,
        204,
        None,
    );
    let (r, s) = (Some(d.schema::<RecoverIn>()), Some(d.schema::<RecoverOut>()));
    d.op(
        "post",
        &format!("{ep}/recover"),
        "recoverEndpoint",
        "Endpoint",
        "Resend every exhausted delivery since a time.",
        r,
        202,
        s,
    );

    let ets = "/api/v1/event-type";
    let s = Some(d.schema::<ListResponse<EventTypeOut>>());
    d.op("get", ets, "listEventTypes", "Event type", "List event types.", None, 200, s);
    let (r, s) = (Some(d.schema::<EventTypeIn>()), Some(d.schema::<EventTypeOut>()));
    d.op("post", ets, "createEventType", "Event type", "Create an event type.", r, 201, s);
    let s = Some(d.schema::<EventTypeOut>());
    d.op("get", et, "getEventType", "Event type", "Get an event type.", None, 200, s);
    let (r, s) = (Some(d.schema::<EventTypeIn>()), Some(d.schema::<EventTypeOut>()));
    d.op("put", et, "upsertEventType", "Event type", "Replace or create an event type.", r, 200, s);
    let (r, s) = (Some(d.schema::<EventTypePatch>()), Some(d.schema::<EventTypeOut>()));
    d.op("patch", et, "patchEventType", "Event type", "Change some fields of an event type.", r, 200, s);
    d.op(
        "delete",
        et,
        "deleteEventType",
        "Event type",
        "Archive an event type (`expunge=true` deletes it).",
        None,
        204,
        None,
    );

    let msgs = "/api/v1/app/{app_id}/msg";
    let s = Some(d.schema::<ListResponse<MessageOut>>());
    d.op("get", msgs, "listMessages", "Message", "List messages, newest first.", None, 200, s);
    let (r, s) = (Some(d.schema::<MessageIn>()), Some(d.schema::<MessageOut>()));
    d.op(
        "post",
        msgs,
        "createMessage",
        "Message",
        "Publish a message; answered once it and its deliveries are durable.",
        r,
        202,
        s,
    );
    let s = Some(d.schema::<MessageOut>());
    d.op("get", msg, "getMessage", "Message", "Get a message by id or eventId.", None, 200, s);
    let s = Some(d.schema::<MessageAttemptOut>());
    d.op("get", &format!("{msg}/attempt/{{attempt_id}}"), "getAttempt", "Attempt", "Get one attempt.", None, 200, s);
    let s = Some(d.schema::<ListResponse<MessageEndpointOut>>());
    d.op(
        "get",
        &format!("{msg}/endpoint"),
        "listAttemptedDestinations",
        "Attempt",
        "Where a message went, with each delivery's status.",
        None,
        200,
        s,
    );
    d.op(
        "post",
        &format!("{msg}/endpoint/{{endpoint_id}}/resend"),
        "resendMessage",
        "Attempt",
        "Send a message to an endpoint again now.",
        None,
        202,
        None,
    );
    let s = Some(d.schema::<ListResponse<MessageAttemptOut>>());
    d.op(
        "get",
        "/api/v1/app/{app_id}/attempt/msg/{msg_id}",
        "listAttemptsByMessage",
        "Attempt",
        "A message's attempts.",
        None,
        200,
        s,
    );
    let s = Some(d.schema::<ListResponse<MessageAttemptOut>>());
    d.op(
        "get",
        "/api/v1/app/{app_id}/attempt/endpoint/{endpoint_id}",
        "listAttemptsByEndpoint",
        "Attempt",
        "An endpoint's attempts.",
        None,
        200,
        s,
    );
    let s = Some(d.schema::<ListResponse<EndpointMessageOut>>());
    d.op(
        "get",
        &format!("{ep}/msg"),
        "listAttemptedMessages",
        "Attempt",
        "What an endpoint was sent, with each delivery's status.",
        None,
        200,
        s,
    );

    let srcs = "/api/v1/source";
    let src = "/api/v1/source/{source_id}";
    let s = Some(d.schema::<ListResponse<SourceOut>>());
    d.op("get", srcs, "listSources", "Inbound source", "List inbound sources.", None, 200, s);
    let (r, s) = (Some(d.schema::<SourceIn>()), Some(d.schema::<SourceOut>()));
    d.op(
        "post",
        srcs,
        "createSource",
        "Inbound source",
        "Create a source; give its ingestUrl to the provider.",
        r,
        201,
        s,
    );
    let s = Some(d.schema::<SourceOut>());
    d.op(
        "get",
        src,
        "getSource",
        "Inbound source",
        "Get a source by id or uid (secrets are never shown).",
        None,
        200,
        s,
    );
    let (r, s) = (Some(d.schema::<SourceIn>()), Some(d.schema::<SourceOut>()));
    d.op("put", src, "replaceSource", "Inbound source", "Replace a source.", r, 200, s);
    let (r, s) = (Some(d.schema::<SourcePatch>()), Some(d.schema::<SourceOut>()));
    d.op(
        "patch",
        src,
        "patchSource",
        "Inbound source",
        "Change some fields of a source (e.g. add a rotated secret).",
        r,
        200,
        s,
    );
    d.op("delete", src, "deleteSource", "Inbound source", "Delete a source.", None, 204, None);
    let s = Some(d.schema::<ListResponse<MessageOut>>());
    d.op(
        "get",
        &format!("{src}/event"),
        "listSourceEvents",
        "Inbound source",
        "Events the source received and accepted.",
        None,
        200,
        s,
    );
    d.op(
        "post",
        &format!("{src}/event/{{msg_id}}/replay"),
        "replaySourceEvent",
        "Inbound source",
        "Deliver a received event again.",
        None,
        202,
        None,
    );
    let s = Some(d.schema::<Vec<RejectionOut>>());
    d.op(
        "get",
        &format!("{src}/rejection"),
        "listSourceRejections",
        "Inbound source",
        "Recently refused requests, for debugging a setup.",
        None,
        200,
        s,
    );
    let s = Some(d.schema::<IngestOut>());
    let ingest = "Where the provider sends webhooks (no bearer token; the provider's signature is checked). \
        200 when stored (or a duplicate, or filtered); 401 with the reason when unverified; 404 unknown source; 413 oversized; 503 storage unavailable.";
    d.op("post", "/in/{source}", "ingest", "Inbound source", ingest, None, 200, s);
    let s = Some(d.schema::<IngestOut>());
    d.op(
        "post",
        "/in/{source}/{rest}",
        "ingestWithPath",
        "Inbound source",
        "The same, for providers that append a path.",
        None,
        200,
        s,
    );

    let mut schemas = d.generator.take_definitions(true);
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["code", "detail"], "properties": {
            "code": {"type": "string", "description": "Stable error code, e.g. `not_found`, `validation`, `payload_too_large`."},
            "detail": {"description": "A human message, or for `validation` Svix's list of {loc, msg, type}."}
        }}),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Hookline API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Svix v1 compatible management API of Hookline, a webhook gateway for payment events. \
                Hookline additions: per-message `callbackUrl` and `deliverAt`, per-endpoint `signatureScheme` and `retryPolicy`."
        },
        "servers": [{"url": "/"}],
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": d.paths,
    })
}
