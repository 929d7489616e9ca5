//! What the route table says about each operation for its documentation ([`Op`]): the prose
//! (summary, description, what each status means here) and the types it reads and answers, as
//! functions that give their JSON Schema. `generate` turns the table into the OpenAPI document;
//! nothing else describes an operation.

use schemars::{JsonSchema, Schema, SchemaGenerator};

/// The JSON Schema of a type, registered with the generator (a `$ref` to
/// `#/components/schemas/<name>` for named types).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// `schema::<T>` as a [`SchemaFn`].
pub fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// One operation (a route and a method).
pub struct Op {
    /// `operationId`: the name generated clients give the call.
    pub id: &'static str,
    /// One of [`super::generate::TAGS`].
    pub tag: &'static str,
    pub summary: &'static str,
    /// Empty: none.
    pub description: &'static str,
    /// The type the query is read into (`service::query`); each field is a query parameter.
    pub query: Option<SchemaFn>,
    /// Header parameters the operation reads.
    pub headers: &'static [Header],
    /// The JSON body's type.
    pub body: Option<SchemaFn>,
    /// The body may be left out (its fields' defaults apply).
    pub optional_body: bool,
    /// The answers that are not errors.
    pub answers: &'static [Answer],
    /// Statuses this operation answers with its own meaning; the ones every operation of its
    /// kind may answer (401, 429, ... see `generate::common`) are added.
    pub errors: &'static [Answer],
    /// Operations that take a field of the answer ([`Op::link_field`]) as their path parameter
    /// (OpenAPI links from the first answer).
    pub links: &'static [&'static str],
    /// The answer's field the links pass; empty: `id`.
    pub link_field: &'static str,
}

/// The defaults an [`Op`] spreads (`..Op::NONE`).
impl Op {
    pub const NONE: Op = Op {
        id: "",
        tag: "",
        summary: "",
        description: "",
        query: None,
        headers: &[],
        body: None,
        optional_body: false,
        answers: &[],
        errors: &[],
        links: &[],
        link_field: "",
    };
}

/// A header parameter.
pub struct Header {
    pub name: &'static str,
    pub description: &'static str,
    pub schema: SchemaFn,
}

/// One status and what it carries.
pub struct Answer {
    pub status: u16,
    pub description: &'static str,
    pub content: Content,
    /// Response headers: name, description (their values are strings).
    pub headers: &'static [(&'static str, &'static str)],
}

pub enum Content {
    Json(SchemaFn),
    /// JSON (the schema), or `text/csv` when asked for.
    JsonOrCsv(SchemaFn),
    /// `text/event-stream`, each event described by the schema.
    EventStream(SchemaFn),
    /// The error body (`{"error": {code, message, request_id}}`).
    Error,
    /// Whatever the provider answered (passthrough).
    Any,
    /// Bytes of this media type (a program, a script).
    Binary(&'static str),
    None,
}

/// A JSON answer.
pub const fn json(status: u16, description: &'static str, schema: SchemaFn) -> Answer {
    Answer {
        status,
        description,
        content: Content::Json(schema),
        headers: &[],
    }
}

/// A JSON answer that can also be written as CSV.
pub const fn json_or_csv(status: u16, description: &'static str, schema: SchemaFn) -> Answer {
    Answer {
        status,
        description,
        content: Content::JsonOrCsv(schema),
        headers: &[],
    }
}

/// An error status with what it means for this operation.
pub const fn error(status: u16, description: &'static str) -> Answer {
    Answer {
        status,
        description,
        content: Content::Error,
        headers: &[],
    }
}
