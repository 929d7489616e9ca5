//! The MCP tools: each a JSON Schema for its input and a call into the service the REST route
//! calls (`service::*`, so auth, budgets, the upstream-call budget and `Idempotency-Key` rules
//! are the REST ones). The input schemas come from `openapi/openapi.json` (the query parameters of the
//! route, or its request body), so the two descriptions cannot drift apart.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::super::Api;
use crate::auth::Principal;
use crate::error::{Error, Kind, Result, Side};
use crate::service::query::arguments;
use crate::service::{commands, instances, offers, usage};

/// The tools, as `tools/list` shows them, their input schemas taken from the OpenAPI document
/// `doc` (built once, `Api::mcp_tools`).
pub fn list(doc: &Value) -> Vec<Value> {
    let id = json!({"type": "object", "additionalProperties": false, "required": ["id"],
                    "properties": {"id": {"type": "string", "minLength": 1, "maxLength": 128,
                                          "description": "The instance id (from rent_instance or list_instances)."}}});
    let idem = json!({"type": "string", "minLength": 1, "maxLength": 255,
        "description": "Makes a retried call return the first call's answer instead of acting twice (as the Idempotency-Key header of the REST route)."});
    let mut rent = inline(doc, &doc["components"]["schemas"]["RentRequest"]);
    rent["properties"]["idempotency_key"] = idem.clone();
    let mut destroy = id.clone();
    destroy["properties"]["idempotency_key"] = idem.clone();
    let instance = json!({"type": "string", "minLength": 1, "maxLength": 128,
        "description": "The instance id (from rent_instance or list_instances)."});
    let mut run = inline(doc, &doc["components"]["schemas"]["NewCommand"]);
    run["properties"]["instance_id"] = instance.clone();
    run["properties"]["idempotency_key"] = idem;
    push_required(&mut run, "instance_id");
    let mut commands = query_schema(doc, "/v1/instances/{id}/commands");
    commands["properties"]["instance_id"] = instance.clone();
    push_required(&mut commands, "instance_id");
    let command = json!({"type": "object", "additionalProperties": false,
        "required": ["instance_id", "command_id"],
        "properties": {"instance_id": instance, "command_id": {"type": "string",
            "minLength": 5, "maxLength": 64, "pattern": "^cmd_[0-9A-Za-z]+$",
            "description": "The command id (from run_command or list_commands)."}}});
    vec![
        tool(
            "search_offers",
            "Search the GPU offers of every enabled provider (cached answers, refreshed as GET /v1/offers does). Filters as GET /v1/offers's query parameters; arrays or comma-separated text for lists.",
            query_schema(doc, "/v1/offers"),
            true,
        ),
        tool(
            "rent_instance",
            "Rent an instance: an `offer_id` from search_offers, or a `spec` whose matching offers are tried cheapest first. Spends the account's budget. Pass `idempotency_key` so a retry cannot rent twice.",
            rent,
            false,
        ),
        tool(
            "list_instances",
            "The account's instances, newest first.",
            query_schema(doc, "/v1/instances"),
            true,
        ),
        tool(
            "get_instance",
            "One instance with its status (refreshed from its provider), events and SSH keys.",
            id,
            true,
        ),
        tool(
            "destroy_instance",
            "Destroy an instance (it stops billing). Pass `idempotency_key` so a retry is answered, not repeated.",
            destroy,
            false,
        ),
        tool(
            "run_command",
            "Run a program on an instance through its agent (no shell: `argv` is the program and its arguments). Answers at once with the command `queued`; follow it with get_command (status, exit code, output). Needs the account's and the key's exec policy. Pass `idempotency_key` so a retry cannot run it twice.",
            run,
            false,
        ),
        tool(
            "get_command",
            "A command run through an instance's agent: its status (queued, sent, running, exited, timed_out, start_failed, expired, lost), exit code and the first part of its output.",
            command,
            true,
        ),
        tool(
            "list_commands",
            "The commands run on an instance, newest first.",
            commands,
            true,
        ),
        tool(
            "get_usage",
            "The account's spend over a period, grouped by day, instance, key or provider.",
            query_schema(doc, "/v1/usage"),
            true,
        ),
    ]
}

/// The tools `p` may use: a `read` key sees only the read-only ones.
pub fn allowed(tools: &[Value], p: &Principal) -> Vec<Value> {
    tools
        .iter()
        .filter(|t| !p.key.read_only() || read_only(t))
        .cloned()
        .collect()
}

fn read_only(tool: &Value) -> bool {
    tool["annotations"]["readOnlyHint"] == true
}

fn tool(name: &str, description: &str, input: Value, read_only: bool) -> Value {
    json!({"name": name, "description": description, "inputSchema": input,
           "annotations": {"readOnlyHint": read_only, "destructiveHint": !read_only && name == "destroy_instance",
                           "openWorldHint": true}})
}

/// A schema with its `#/components/schemas/...` references replaced by what they name (a
/// tool's schema stands alone).
fn inline(doc: &Value, v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                return inline(doc, &doc["components"]["schemas"][name]);
            }
            Value::Object(
                o.iter()
                    .filter(|(k, _)| k.as_str() != "example")
                    .map(|(k, v)| (k.clone(), inline(doc, v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| inline(doc, x)).collect()),
        other => other.clone(),
    }
}

/// Adds `name` to an object schema's `required`.
fn push_required(schema: &mut Value, name: &str) {
    match schema["required"].as_array_mut() {
        Some(r) => r.push(json!(name)),
        None => schema["required"] = json!([name]),
    }
}

/// An object schema of a GET route's query parameters.
fn query_schema(doc: &Value, path: &str) -> Value {
    let mut props = Map::new();
    for p in doc["paths"][path]["get"]["parameters"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let p = inline(doc, p);
        if p["in"] != "query" {
            continue;
        }
        let mut s = p["schema"].clone();
        if let Some(d) = p["description"].as_str() {
            s["description"] = json!(d);
        }
        if let Some(name) = p["name"].as_str() {
            props.insert(name.to_owned(), s);
        }
    }
    json!({"type": "object", "additionalProperties": false, "properties": props})
}

fn bad_args(why: impl Into<String>) -> Error {
    Error::new(Kind::BadRequest, Side::Client, why.into())
}

/// `search_offers`'s arguments as the route's query type: lists (`providers`, `countries`) may
/// be arrays, which the query carries comma-separated.
fn offer_arguments(mut args: Map<String, Value>) -> Result<offers::OffersQuery> {
    for (k, v) in args.iter_mut() {
        if let Value::Array(items) = v {
            let parts = items
                .iter()
                .map(|x| match x {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(bad_args(format!("`{k}`: a list of text or numbers"))),
                })
                .collect::<Result<Vec<_>>>()?;
            *v = Value::String(parts.join(","));
        }
    }
    arguments(args)
}

fn take_string(args: &mut Map<String, Value>, name: &str) -> Result<Option<String>> {
    match args.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad_args(format!("`{name}` must be text"))),
    }
}

/// A view as a tool's JSON result.
fn value(v: &impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(v).map_err(Error::internal)
}

/// An idempotent operation's recorded answer (the first run's view, or a replay of it) as a
/// tool's result.
fn answer(a: instances::Answer) -> Result<Value> {
    serde_json::from_str(&a.body)
        .map_err(|e| Error::new(Kind::Internal, Side::Internal, "a recorded answer").with_source(e))
}

/// What a tool call gave: the view the service answered, or its error. Each tool calls the
/// same service the REST route does (`service::instances`, `service::commands`,
/// `service::usage`), with the
/// arguments read into the route's own input type.
pub async fn call(
    api: &Arc<Api>,
    p: &Principal,
    name: &str,
    mut args: Map<String, Value>,
) -> Option<Result<Value>> {
    // a tool that changes something is the REST write it calls: a `read` key may not
    if api
        .mcp_tools
        .iter()
        .any(|t| t["name"] == name && !read_only(t))
        && let Err(e) = p.may_change()
    {
        return Some(Err(e));
    }
    Some(match name {
        "search_offers" => match offer_arguments(args)
            .and_then(|q| offers::Filters::from_query(q, &api.config.offers))
        {
            Ok(f) => match offers::search(api, &api.offer_pages, f).await {
                Ok(page) => serde_json::from_slice(&page.to_json()).map_err(Error::internal),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        "list_instances" => match arguments(args) {
            Ok(q) => instances::list(api, p, q).await.and_then(|v| value(&v)),
            Err(e) => Err(e),
        },
        "get_usage" => match arguments(args) {
            Ok(q) => usage::mine(api, p, q).await.and_then(|v| value(&v)),
            Err(e) => Err(e),
        },
        "get_instance" => match take_string(&mut args, "id") {
            Ok(Some(id)) if args.is_empty() => {
                instances::get(api, p, &id).await.and_then(|v| value(&v))
            }
            Ok(Some(_)) => Err(bad_args("get_instance takes only `id`")),
            Ok(None) => Err(bad_args("`id` is required")),
            Err(e) => Err(e),
        },
        "destroy_instance" => {
            let key = take_string(&mut args, "idempotency_key");
            match (take_string(&mut args, "id"), key) {
                (Ok(Some(id)), Ok(key)) if args.is_empty() => {
                    instances::destroy(api, p, &id, key).await.and_then(answer)
                }
                (Ok(Some(_)), Ok(_)) => Err(bad_args(
                    "destroy_instance takes only `id` and `idempotency_key`",
                )),
                (Ok(None), _) => Err(bad_args("`id` is required")),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        "run_command" => {
            let key = take_string(&mut args, "idempotency_key");
            match (take_string(&mut args, "instance_id"), key) {
                (Ok(Some(id)), Ok(key)) => {
                    let raw = Value::Object(args).to_string();
                    commands::create(api, p, &id, key.as_deref(), raw.as_bytes())
                        .await
                        .and_then(|(v, _)| value(&v))
                }
                (Ok(None), _) => Err(bad_args("`instance_id` is required")),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        "get_command" => {
            let cid = take_string(&mut args, "command_id");
            match (take_string(&mut args, "instance_id"), cid) {
                (Ok(Some(id)), Ok(Some(cid))) if args.is_empty() => {
                    commands::get(api, p, &id, &cid)
                        .await
                        .and_then(|v| value(&v))
                }
                (Ok(Some(_)), Ok(Some(_))) => Err(bad_args(
                    "get_command takes only `instance_id` and `command_id`",
                )),
                (Ok(None), _) | (_, Ok(None)) => {
                    Err(bad_args("`instance_id` and `command_id` are required"))
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        "list_commands" => match take_string(&mut args, "instance_id") {
            Ok(Some(id)) => match arguments(args) {
                Ok(q) => commands::list(api, p, &id, q).await.and_then(|v| value(&v)),
                Err(e) => Err(e),
            },
            Ok(None) => Err(bad_args("`instance_id` is required")),
            Err(e) => Err(e),
        },
        "rent_instance" => match take_string(&mut args, "idempotency_key") {
            Ok(key) => {
                let raw = Value::Object(args).to_string();
                instances::rent(api, p, key, raw.as_bytes())
                    .await
                    .and_then(answer)
            }
            Err(e) => Err(e),
        },
        _ => return None,
    })
}
