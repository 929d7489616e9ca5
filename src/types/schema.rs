//! JSON Schemas of wire forms that the Rust type does not show: a time written as RFC 3339 text,
//! text that may hold no NUL (PostgreSQL refuses it), a path segment. Fields name these with
//! `#[schemars(with = "...")]`; the OpenAPI document (`api::openapi`) is generated from them.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// A time as RFC 3339 text (`2026-12-24T18:00:00Z`).
pub struct Time;

impl JsonSchema for Time {
    fn schema_name() -> Cow<'static, str> {
        "Time".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "date-time"})
    }
}

/// A time as RFC 3339 text, or `null`.
pub struct MaybeTime;

impl JsonSchema for MaybeTime {
    fn schema_name() -> Cow<'static, str> {
        "MaybeTime".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": ["string", "null"], "format": "date-time"})
    }
}

/// The pattern of text without NUL.
pub const NO_NUL: &str = r"^[^\x00]*$";

/// The pattern of text without control characters (C0, DEL, C1), at least one character.
pub const NO_CONTROL: &str = r"^[^\x00-\x1f\x7f-\x9f]+$";

/// Implements `JsonSchema` for a type whose wire form is the JSON Schema given (inlined where it
/// is used): for the types that read their own text (query values, cursors, ids).
macro_rules! schema_of {
    ($t:ty, $name:literal, $schema:tt) => {
        impl ::schemars::JsonSchema for $t {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!($schema)
            }
        }
    };
}
pub(crate) use schema_of;

/// The (top-level) body fields where `null` means "none" (no monthly budget, no spend cap);
/// everywhere else a body's `null` is refused (`service::body`).
pub const NULLABLE: [&str; 2] = ["monthly_budget_usd", "spend_limit_usd"];

/// A request body type's schema as `service::body` reads it: an optional field is left out,
/// never `null` (but for [`NULLABLE`]). `#[schemars(transform = request_body)]` on the type.
pub fn request_body(schema: &mut Schema) {
    let Some(props) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    for (name, p) in props.iter_mut() {
        if NULLABLE.contains(&name.as_str()) {
            continue;
        }
        if let Some(types) = p.get_mut("type").and_then(serde_json::Value::as_array_mut) {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                p["type"] = types[0].clone();
            }
        }
        if let Some(any) = p.get_mut("anyOf").and_then(serde_json::Value::as_array_mut) {
            any.retain(|x| x.get("type").is_none_or(|t| t != "null"));
            if any.len() == 1
                && let Some(o) = p.as_object_mut()
                && let Some(serde_json::Value::Object(inner)) =
                    o.remove("anyOf").and_then(|a| a.get(0).cloned())
            {
                o.extend(inner);
            }
        }
        if let Some(values) = p.get_mut("enum").and_then(serde_json::Value::as_array_mut) {
            values.retain(|v| !v.is_null());
        }
        if p.get("default").is_some_and(serde_json::Value::is_null)
            && let Some(o) = p.as_object_mut()
        {
            o.remove("default");
        }
    }
}
