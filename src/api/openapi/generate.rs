//! The OpenAPI 3.1 document, generated from the route table: each route's pattern and access, each
//! method's [`Op`] (prose, and the types it reads and answers, whose JSON Schemas `schemars`
//! derives), and the statuses every operation of a kind may answer. `openapi/openapi.json` is a
//! copy of it (a test holds the two equal; `GPUPROXY_BLESS=1` rewrites the copy).

use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::op::{Answer, Content, Op, SchemaFn, schema};
use crate::api::call::{Access, PathText};
use crate::api::router::Route;

/// The tags, in the order the reference lists them: name and what the group is.
pub const TAGS: &[(&str, &str)] = &[
    ("operations", ""),
    ("auth", ""),
    ("admin", ""),
    ("offers", "GPU offers from every provider"),
    ("instances", "Renting GPU instances"),
    ("passthrough", "Allow-listed provider API calls"),
    ("ssh-keys", ""),
    (
        "volumes",
        "Disk that outlives instances (Vast), billed by the GB-month",
    ),
    ("events", ""),
    ("agents", "Instance agents: a channel to the rented machine"),
    ("rentals", "Usage and spend of the account's rentals"),
    ("webhooks", "Signed webhooks for the account's events"),
    (
        "watches",
        "Offer watches: an event when an offer at a price appears",
    ),
    ("mcp", "Model Context Protocol tools for LLM agents"),
];

const DESCRIPTION: &str = "One HTTPS API in front of GPU-rental providers (Vast.ai, io.net). \
Errors are always `{\"error\":{\"code\",\"message\",\"request_id\"}}`. Every response carries \
`x-request-id`; rate-limited routes carry `RateLimit` and `RateLimit-Policy` (IETF httpapi draft).";

/// The statuses many operations answer alike (`#/components/responses/<name>`): status, name,
/// what it means. Which operations carry which is [`common`].
const COMMON: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "Invalid input; the message names the field",
    ),
    (
        401,
        "Unauthorized",
        "No valid credentials (`missing_credentials`, `malformed_authorization`, \
         `invalid_credentials`, `token_expired`, `key_revoked`, `key_expired`); carries \
         `WWW-Authenticate: Bearer`",
    ),
    (
        403,
        "Forbidden",
        "`insufficient_scope`, `account_suspended` or `api_key_required`",
    ),
    (404, "NotFound", "No such resource (or not the caller's)"),
    (
        408,
        "RequestTimeout",
        "The request body did not arrive within server.body_read_timeout_ms \
         (`request_timeout`); the connection closes",
    ),
    (
        413,
        "PayloadTooLarge",
        "The body is over server.max_body_bytes (`payload_too_large`)",
    ),
    (
        415,
        "UnsupportedMediaType",
        "The body is not application/json (`unsupported_media_type`)",
    ),
    (
        429,
        "RateLimited",
        "`rate_limited`: the message names the tier (ip, account, key); `Retry-After` in \
         seconds. Also `upstream_budget_exceeded`: the account's provider calls this minute are \
         spent (rentals.account_upstream_calls_per_minute; `Retry-After`).",
    ),
    (
        503,
        "Unavailable",
        "`auth_unavailable`: credentials could not be checked (database unreachable and not \
         cached); retry. Also `auth_busy` (too many keys to look up right now; `Retry-After`).",
    ),
];

/// The path parameters, by name: what each is and its schema.
const PATH_PARAMS: &[(&str, &str, SchemaFn)] = &[
    (
        "id",
        "The id its creation or list answered.",
        schema::<PathText>,
    ),
    (
        "command_id",
        "The command's id (`cmd_…`), as its creation answered.",
        schema::<PathText>,
    ),
    (
        "account",
        "Account id, or its name (percent-encoded).",
        schema::<PathText>,
    ),
    (
        "public_id",
        "The key's public id: the 12 characters after `gpx_`.",
        schema::<crate::accounts::apikey::PublicId>,
    ),
    (
        "provider",
        "A provider whose API answers passthrough calls.",
        schema::<crate::api::passthrough::ProviderParam>,
    ),
    (
        "path",
        "The provider API path, e.g. `api/v0/instances/123/`",
        schema::<PathText>,
    ),
];

/// The statuses an operation answers because of what it is: not public (credentials, limits),
/// takes input (400), names a resource in its path (404), reads a body (408, 413, 415).
fn common(route: &Route, op: &Op) -> Vec<u16> {
    let mut v = Vec::new();
    let has_path = route.pattern.contains('{');
    if has_path || op.query.is_some() || op.body.is_some() {
        v.push(400);
    }
    if route.access != Access::Public {
        v.extend([401, 403, 503]);
    }
    if route.rate_limited {
        v.push(429);
    }
    if has_path {
        v.push(404);
    }
    if op.body.is_some() {
        v.extend([408, 413, 415]);
    }
    v
}

/// The document for `routes` (the debug-only ones left out).
pub fn document(routes: &[Route]) -> Result<Value, String> {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut g = SchemaGenerator::new(settings);
    let mut paths = Map::new();
    let mut query_types = Vec::new();
    // each operation's path parameter, for links to it
    let mut param_of = std::collections::HashMap::new();
    for r in routes.iter() {
        for (_, _, op) in r.methods {
            let param = r
                .pattern
                .rsplit('/')
                .find_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')));
            param_of.insert(op.id, param);
        }
    }
    for r in routes.iter().filter(|r| !r.debug_only) {
        let mut item = Map::new();
        let params = path_params(&mut g, r.pattern)?;
        if !params.is_empty() {
            item.insert("parameters".into(), Value::Array(params));
        }
        for (method, _, op) in r.methods {
            let op_value = operation(&mut g, r, op, &param_of, &mut query_types)?;
            item.insert(method.as_str().to_lowercase(), op_value);
        }
        paths.insert(r.pattern.into(), Value::Object(item));
    }
    let error = g.subschema_for::<crate::api::respond::ErrorBody<'static>>();
    let mut schemas = g.take_definitions(true);
    // a query's type is documented as its parameters, not as a schema of its own
    let text = serde_json::to_string(&(&paths, &schemas)).unwrap_or_default();
    for name in query_types {
        let r = format!("\"#/components/schemas/{name}\"");
        if text.matches(&r).count() == 0 {
            schemas.remove(&name);
        }
    }
    let responses: Map<String, Value> = COMMON
        .iter()
        .map(|(_, name, what)| {
            (
                (*name).to_owned(),
                json!({"description": what,
                       "content": {"application/json": {"schema": error.clone()}}}),
            )
        })
        .collect();
    let tags: Vec<Value> = TAGS
        .iter()
        .map(|(name, what)| match *what {
            "" => json!({ "name": name }),
            w => json!({"name": name, "description": w}),
        })
        .collect();
    Ok(json!({
        "openapi": "3.1.0",
        "info": {"title": "gpuproxyd API", "version": env!("CARGO_PKG_VERSION"),
                 "description": DESCRIPTION},
        "servers": [{"url": "https://127.0.0.1:8443"}],
        "security": [{"bearer": []}],
        "tags": tags,
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "An API key `gpx_<public id>_<secret>`, or a JWT from `POST /v1/auth/token`."}},
            "schemas": schemas,
            "responses": responses,
        },
    }))
}

/// The document as served and committed: pretty-printed, with a final newline.
pub fn text(routes: &[Route]) -> Result<String, String> {
    let v = document(routes)?;
    let mut s = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
    s.push('\n');
    Ok(s)
}

fn path_params(g: &mut SchemaGenerator, pattern: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for seg in pattern.split('/') {
        let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            continue;
        };
        let (_, what, f) = PATH_PARAMS
            .iter()
            .find(|(n, _, _)| *n == name)
            .ok_or_else(|| format!("{pattern}: path parameter `{name}` is not in PATH_PARAMS"))?;
        let mut p = json!({"name": name, "in": "path", "required": true,
                           "schema": f(g).to_value()});
        if !what.is_empty() {
            p["description"] = json!(what);
        }
        out.push(p);
    }
    Ok(out)
}

fn operation(
    g: &mut SchemaGenerator,
    r: &Route,
    op: &Op,
    param_of: &std::collections::HashMap<&str, Option<&str>>,
    query_types: &mut Vec<String>,
) -> Result<Value, String> {
    let at = || format!("{} ({})", r.pattern, op.id);
    if op.id.is_empty() || op.summary.is_empty() {
        return Err(format!("{}: an operation needs an id and a summary", at()));
    }
    if !TAGS.iter().any(|(t, _)| *t == op.tag) {
        return Err(format!("{}: tag `{}` is not in TAGS", at(), op.tag));
    }
    let mut v = json!({"operationId": op.id, "summary": op.summary, "tags": [op.tag]});
    if !op.description.is_empty() {
        v["description"] = json!(op.description);
    }
    if r.access == Access::Public {
        v["security"] = json!([]);
    }
    let mut params = Vec::new();
    if let Some(q) = op.query {
        let s = q(g);
        let ObjectSchema {
            name,
            properties,
            required,
        } = object_of(g, &s)
            .ok_or_else(|| format!("{}: the query type's schema is not an object", at()))?;
        query_types.extend(name);
        for (field, mut fs) in properties {
            let description = fs.as_object_mut().and_then(|o| o.remove("description"));
            let mut p = json!({"name": field, "in": "query", "schema": not_null(fs)});
            if required.contains(&field) {
                p["required"] = json!(true);
            }
            if let Some(d) = description {
                p["description"] = d;
            }
            params.push(p);
        }
    }
    for h in op.headers {
        params.push(json!({"name": h.name, "in": "header", "required": false,
                           "description": h.description, "schema": (h.schema)(g).to_value()}));
    }
    if !params.is_empty() {
        v["parameters"] = Value::Array(params);
    }
    if let Some(b) = op.body {
        v["requestBody"] = json!({"required": !op.optional_body,
            "content": {"application/json": {"schema": b(g).to_value()}}});
    }
    let mut responses = Map::new();
    for (i, a) in op.answers.iter().enumerate() {
        let mut resp = answer(g, a);
        if i == 0 && !op.links.is_empty() {
            let field = match op.link_field {
                "" => "id",
                f => f,
            };
            let mut links = Map::new();
            for l in op.links {
                let param = param_of.get(l).copied().flatten().ok_or_else(|| {
                    format!("{}: link to `{l}`, which takes no path parameter", at())
                })?;
                links.insert(
                    (*l).to_owned(),
                    json!({"operationId": l,
                           "parameters": {param: format!("$response.body#/{field}")}}),
                );
            }
            resp["links"] = Value::Object(links);
        }
        responses.insert(a.status.to_string(), resp);
    }
    for a in op.errors {
        responses.insert(a.status.to_string(), answer(g, a));
    }
    for status in common(r, op) {
        let (_, name, _) = COMMON
            .iter()
            .find(|(s, _, _)| *s == status)
            .expect("every common status is in COMMON");
        responses
            .entry(status.to_string())
            .or_insert_with(|| json!({"$ref": format!("#/components/responses/{name}")}));
    }
    if responses.is_empty() {
        return Err(format!("{}: no answers", at()));
    }
    v["responses"] = Value::Object(responses);
    Ok(v)
}

fn answer(g: &mut SchemaGenerator, a: &Answer) -> Value {
    let mut v = json!({ "description": a.description });
    let content = match a.content {
        Content::Json(f) => Some(("application/json", f(g).to_value())),
        Content::JsonOrCsv(f) => {
            v["content"] = json!({"application/json": {"schema": f(g).to_value()},
                                  "text/csv": {"schema": {"type": "string"}}});
            None
        }
        Content::EventStream(f) => Some(("text/event-stream", f(g).to_value())),
        Content::Error => Some((
            "application/json",
            g.subschema_for::<crate::api::respond::ErrorBody<'static>>()
                .to_value(),
        )),
        Content::Binary(media) => Some((media, json!({"type": "string", "format": "binary"}))),
        Content::Any | Content::None => None,
    };
    if let Some((media, s)) = content {
        v["content"] = json!({ media: {"schema": s} });
    }
    if !a.headers.is_empty() {
        let h: Map<String, Value> = a
            .headers
            .iter()
            .map(|(n, d)| {
                (
                    (*n).to_owned(),
                    json!({"description": d, "schema": {"type": "string"}}),
                )
            })
            .collect();
        v["headers"] = Value::Object(h);
    }
    v
}

/// An object schema's name (when it is a reference), properties and required fields.
struct ObjectSchema {
    name: Option<String>,
    properties: Vec<(String, Value)>,
    required: Vec<String>,
}

fn object_of(g: &SchemaGenerator, s: &Schema) -> Option<ObjectSchema> {
    let (name, obj) = match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next()?.to_owned();
            let def = g.definitions().get(&name)?.clone();
            (Some(name), def)
        }
        None => (None, s.as_value().clone()),
    };
    if obj.get("type").and_then(Value::as_str) != Some("object") {
        return None;
    }
    let props = obj
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let required = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some(ObjectSchema {
        name,
        properties: props,
        required,
    })
}

/// A query parameter is present or absent, never `null`: the `null` an optional field's schema
/// allows is taken out.
fn not_null(mut s: Value) -> Value {
    if let Some(values) = s.get_mut("enum").and_then(Value::as_array_mut) {
        values.retain(|v| !v.is_null());
    }
    if let Some(types) = s.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            s["type"] = types[0].clone();
        }
    }
    if let Some(any) = s.get_mut("anyOf").and_then(Value::as_array_mut) {
        any.retain(|x| x.get("type").is_none_or(|t| t != "null"));
        if any.len() == 1 {
            let one = any[0].clone();
            if let Some(o) = s.as_object_mut() {
                o.remove("anyOf");
                if let Value::Object(inner) = one {
                    o.extend(inner);
                }
            }
        }
    }
    s
}
