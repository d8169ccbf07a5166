//! One row per operation: its method, path and handler, and what the OpenAPI document says
//! of it (summary, body, answers, query parameters). The router and the document are both
//! built from these rows, so neither can list an operation the other lacks.

use super::AppState;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::MethodRouter;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use std::sync::Arc;

/// Makes the schema of a wire type, registering it in the document's components.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

pub fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// A query parameter the handler reads, with its JSON schema as served in the document.
#[derive(Clone, Copy)]
pub struct QueryParam {
    pub name: &'static str,
    pub description: &'static str,
    pub schema: fn() -> serde_json::Value,
}

impl QueryParam {
    pub const fn boolean(name: &'static str, description: &'static str) -> QueryParam {
        QueryParam { name, description, schema: || serde_json::json!({"type": "boolean"}) }
    }

    pub const fn string(name: &'static str, description: &'static str) -> QueryParam {
        QueryParam { name, description, schema: || serde_json::json!({"type": "string"}) }
    }

    /// Text without NUL, which no id, key or name holds (400 otherwise; PostgreSQL's text
    /// cannot hold it).
    pub const fn text(name: &'static str, description: &'static str) -> QueryParam {
        QueryParam { name, description, schema: || serde_json::json!({"type": "string", "pattern": r"^[^\u0000]*$"}) }
    }

    /// An RFC 3339 time.
    pub const fn date_time(name: &'static str, description: &'static str) -> QueryParam {
        QueryParam { name, description, schema: || serde_json::json!({"type": "string", "format": "date-time"}) }
    }
}

/// A successful answer: status, description, body schema (none for `204`).
pub struct Answer {
    pub status: u16,
    pub description: &'static str,
    pub body: Option<SchemaFn>,
}

pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub handler: MethodRouter<Arc<AppState>>,
    pub id: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    /// The request body's schema and whether a body is required.
    pub body: Option<(SchemaFn, bool)>,
    pub answers: Vec<Answer>,
    pub query: Vec<QueryParam>,
    /// Served without a bearer token (health, the document, providers' ingest).
    pub public: bool,
}

macro_rules! method_constructors {
    ($($name:ident => $method:ident),*) => {
        $(
            pub fn $name<H: Handler<T, Arc<AppState>>, T: 'static>(path: &'static str, handler: H) -> Route {
                Route::new(Method::$method, path, axum::routing::$name(handler))
            }
        )*
    };
}

impl Route {
    fn new(method: Method, path: &'static str, handler: MethodRouter<Arc<AppState>>) -> Route {
        Route {
            method,
            path,
            handler,
            id: "",
            tag: "",
            summary: "",
            body: None,
            answers: Vec::new(),
            query: Vec::new(),
            public: false,
        }
    }

    method_constructors!(get => GET, post => POST, put => PUT, patch => PATCH, delete => DELETE);

    /// The operation id and summary (`tag` is set for a whole group with [`tagged`]).
    pub fn doc(mut self, id: &'static str, summary: &'static str) -> Route {
        self.id = id;
        self.summary = summary;
        self
    }

    pub fn body<T: JsonSchema>(mut self) -> Route {
        self.body = Some((schema::<T>, true));
        self
    }

    /// A body that may be left out altogether.
    pub fn optional_body<T: JsonSchema>(mut self) -> Route {
        self.body = Some((schema::<T>, false));
        self
    }

    pub fn answers<T: JsonSchema>(mut self, status: u16, description: &'static str) -> Route {
        self.answers.push(Answer { status, description, body: Some(schema::<T>) });
        self
    }

    /// An answer without a body (`204`).
    pub fn empty(mut self, status: u16, description: &'static str) -> Route {
        self.answers.push(Answer { status, description, body: None });
        self
    }

    pub fn query(mut self, params: &[QueryParam]) -> Route {
        self.query.extend_from_slice(params);
        self
    }

    pub fn public(mut self) -> Route {
        self.public = true;
        self
    }
}

/// Sets the document tag of a group of routes.
pub fn tagged(tag: &'static str, routes: Vec<Route>) -> Vec<Route> {
    routes.into_iter().map(|route| Route { tag, ..route }).collect()
}
