//! `POST /mcp`: the Model Context Protocol over Streamable HTTP, for LLM agents, with the tools
//! of [`tools`] (the REST routes' own code behind them).
//!
//! - Both eras the official SDKs speak: the stateless per-request envelope of revision
//!   2026-07-28 (`server/discover`; every request carries its version and client capabilities in
//!   `params._meta`, mirrored in the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name`
//!   headers, checked to agree) and the `initialize` handshake of 2024-11-05 to 2025-11-25
//!   (the `MCP-Protocol-Version` header, when sent, must name one of them).
//! - Stateless: no `Mcp-Session-Id` is issued (the protocol allows it), so any daemon behind the
//!   balancer answers any request. Every answer is one `application/json` JSON-RPC message;
//!   there is no server-initiated stream (`GET /mcp` is 405), and notifications get 202.
//! - Each POST is a request like any other: authenticated (API key or JWT in `Authorization`),
//!   rate limited on every tier. A tool's failure is a result with `isError` and the REST
//!   error's `{code, message, details}`, so the model can read and correct it.
//! - `Origin`, when sent, must be in `mcp.allowed_origins` (403 otherwise).

pub mod tools;

use hyper::header::HeaderMap;
use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::call::Call;
use super::openapi::op::{Answer, Content, Op, error, json, schema};
use super::{Body, body, respond};
use crate::error::{Error, Kind, Result, Side};

/// Revisions reached through `initialize`, oldest first.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// Revisions of the per-request envelope.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];

const VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
const CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
const SERVER_INFO_KEY: &str = "io.modelcontextprotocol/serverInfo";

// JSON-RPC and MCP error codes
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const HEADER_MISMATCH: i64 = -32020;
const UNSUPPORTED_VERSION: i64 = -32022;

const INSTRUCTIONS: &str = "gpuproxyd rents GPU instances from several providers under one \
    account and budget. Search with search_offers, rent an offer_id (or a spec) with \
    rent_instance, follow it with get_instance, and destroy_instance when done: instances bill \
    until destroyed. Pass idempotency_key to rent_instance and destroy_instance so a retried call \
    cannot act twice.";

/// A JSON-RPC error to answer with.
struct RpcError {
    code: i64,
    message: String,
    data: Option<Value>,
}

fn rpc(code: i64, message: impl Into<String>) -> RpcError {
    RpcError {
        code,
        message: message.into(),
        data: None,
    }
}

/// The HTTP status of a JSON-RPC error (as the SDKs' transports expect it).
fn status_of(code: i64) -> StatusCode {
    match code {
        METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        PARSE_ERROR | INVALID_REQUEST | INVALID_PARAMS | HEADER_MISMATCH | UNSUPPORTED_VERSION
        | -32021 => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    }
}

fn error_response(id: Value, e: RpcError) -> Response<Body> {
    let mut err = json!({"code": e.code, "message": e.message});
    if let Some(d) = e.data {
        err["data"] = d;
    }
    respond::json(
        status_of(e.code),
        &json!({"jsonrpc": "2.0", "id": id, "error": err}),
    )
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `Origin`, when present, must be allowed.
fn check_origin(cfg: &crate::config::McpConfig, h: &HeaderMap) -> Result<()> {
    match h.get(hyper::header::ORIGIN) {
        None => Ok(()),
        Some(o) => {
            let o = o.to_str().unwrap_or("");
            if cfg
                .allowed_origins
                .iter()
                .any(|a| a.eq_ignore_ascii_case(o))
            {
                Ok(())
            } else {
                Err(Error::forbidden(
                    "origin_not_allowed",
                    "this Origin may not call /mcp (mcp.allowed_origins)",
                ))
            }
        }
    }
}

/// `POST /mcp`.
pub async fn post(c: Call) -> Result<Response<Body>> {
    let api = c.api.clone();
    if !api.config.mcp.enabled {
        return Err(Error::new(
            Kind::NotFound,
            Side::Client,
            "no route for /mcp",
        ));
    }
    check_origin(&api.config.mcp, c.req.headers())?;
    let p = c.principal()?.clone();
    let headers = c.req.headers().clone();
    let raw = body::read(c.req, &api.config.server).await?;
    let msg: Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(e) => {
            return Ok(error_response(
                Value::Null,
                rpc(
                    PARSE_ERROR,
                    format!("Parse error: the body is not JSON ({e})"),
                ),
            ));
        }
    };
    let Some(obj) = msg.as_object() else {
        return Ok(error_response(
            Value::Null,
            rpc(
                INVALID_REQUEST,
                "one JSON-RPC message (an object) per POST; batches are not accepted",
            ),
        ));
    };
    let id = obj.get("id").cloned();
    // what an error answer may echo: a valid id, else null
    let echo = || {
        id.clone()
            .filter(|i| i.is_string() || i.is_i64() || i.is_u64())
            .unwrap_or(Value::Null)
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Ok(error_response(
            echo(),
            rpc(INVALID_REQUEST, "`jsonrpc` must be \"2.0\""),
        ));
    }
    if let Some(k) = obj
        .keys()
        .find(|k| !["jsonrpc", "id", "method", "params", "result", "error"].contains(&k.as_str()))
    {
        return Ok(error_response(
            echo(),
            rpc(
                INVALID_REQUEST,
                format!("unknown member `{}`", crate::error::truncate(k, 32)),
            ),
        ));
    }
    let method = match obj.get("method") {
        Some(Value::String(m)) if !obj.contains_key("result") && !obj.contains_key("error") => m,
        None if !echo().is_null() && (obj.contains_key("result") ^ obj.contains_key("error")) => {
            // a response to a server request (none are sent): accepted, nothing to answer
            return Ok(accepted());
        }
        _ => {
            return Ok(error_response(
                echo(),
                rpc(
                    INVALID_REQUEST,
                    "a request needs `method` (text); a response `id` and one of `result`, `error`",
                ),
            ));
        }
    };
    let method = method.as_str();
    if !matches!(obj.get("params"), None | Some(Value::Object(_))) {
        return Ok(error_response(
            echo(),
            rpc(INVALID_PARAMS, "`params` must be an object"),
        ));
    }
    let Some(id) = id else {
        // a notification (`notifications/initialized`, cancellations): nothing to answer
        return Ok(accepted());
    };
    if !(id.is_string() || id.is_i64() || id.is_u64()) {
        return Ok(error_response(
            Value::Null,
            rpc(INVALID_REQUEST, "`id` must be a string or an integer"),
        ));
    }
    let params = match obj.get("params") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let modern = params
        .get("_meta")
        .and_then(Value::as_object)
        .is_some_and(|m| m.contains_key(VERSION_KEY))
        || method == "server/discover";
    let check = if modern {
        check_modern(&headers, method, &params)
    } else {
        check_handshake_era(&headers, method)
    };
    if let Err(e) = check {
        return Ok(error_response(id, e));
    }
    let result = match method {
        "initialize" => Ok(initialize(&params)),
        "server/discover" => Ok(discover()),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": tools::allowed(&api.mcp_tools, &p)})),
        "tools/call" => call_tool(&api, &p, &params).await,
        _ => Err(rpc(
            METHOD_NOT_FOUND,
            format!("Method not found: `{}`", crate::error::truncate(method, 64)),
        )),
    };
    Ok(match result {
        Ok(mut r) => {
            if modern && r.as_object().is_some_and(|o| !o.is_empty()) {
                r["resultType"] = json!("complete");
                if matches!(method, "tools/list" | "server/discover") {
                    r["ttlMs"] = json!(0);
                    r["cacheScope"] = json!("private");
                }
            }
            respond::json(
                StatusCode::OK,
                &json!({"jsonrpc": "2.0", "id": id, "result": r}),
            )
        }
        Err(e) => error_response(id, e),
    })
}

fn accepted() -> Response<Body> {
    let mut r = Response::new(respond::full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

/// The 2026-07-28 envelope: version and client capabilities in `_meta`, mirrored by the
/// headers, the version one this server speaks.
fn check_modern(
    h: &HeaderMap,
    method: &str,
    params: &Map<String, Value>,
) -> std::result::Result<(), RpcError> {
    let Some(meta) = params.get("_meta").and_then(Value::as_object) else {
        return Err(rpc(
            INVALID_PARAMS,
            format!(
                "params._meta must be an object carrying `{VERSION_KEY}` and `{CAPABILITIES_KEY}`"
            ),
        ));
    };
    let missing: Vec<&str> = [VERSION_KEY, CAPABILITIES_KEY]
        .into_iter()
        .filter(|k| !meta.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Err(rpc(
            INVALID_PARAMS,
            format!("params._meta lacks {}", missing.join(", ")),
        ));
    }
    let version = &meta[VERSION_KEY];
    if header(h, "mcp-protocol-version") != version.as_str() {
        return Err(rpc(
            HEADER_MISMATCH,
            "the MCP-Protocol-Version header does not match params._meta's protocol version",
        ));
    }
    if header(h, "mcp-method") != Some(method) {
        return Err(rpc(
            HEADER_MISMATCH,
            "the Mcp-Method header does not match the request's method",
        ));
    }
    if method == "tools/call"
        && let Some(name) = params.get("name").and_then(Value::as_str)
        && header(h, "mcp-name").is_some_and(|n| n != name)
    {
        return Err(rpc(
            HEADER_MISMATCH,
            "the Mcp-Name header does not match the tool's name",
        ));
    }
    let Some(v) = version.as_str() else {
        return Err(rpc(INVALID_PARAMS, "the protocol version must be text"));
    };
    if !MODERN_VERSIONS.contains(&v) {
        return Err(RpcError {
            code: UNSUPPORTED_VERSION,
            message: "Unsupported protocol version".into(),
            data: Some(json!({"supported": MODERN_VERSIONS, "requested": v})),
        });
    }
    Ok(())
}

/// The handshake era: a version header, when sent (every request after `initialize` from
/// 2025-06-18 on), names a revision of that era.
fn check_handshake_era(h: &HeaderMap, method: &str) -> std::result::Result<(), RpcError> {
    match header(h, "mcp-protocol-version") {
        Some(v) if method != "initialize" && !HANDSHAKE_VERSIONS.contains(&v) => Err(RpcError {
            code: UNSUPPORTED_VERSION,
            message: format!(
                "unsupported MCP-Protocol-Version `{}`",
                crate::error::truncate(v, 32)
            ),
            data: Some(json!({"supported": HANDSHAKE_VERSIONS, "requested": v})),
        }),
        _ => Ok(()),
    }
}

fn server_info() -> Value {
    json!({"name": "gpuproxyd", "title": "gpuproxyd: GPU rentals across providers",
           "version": env!("CARGO_PKG_VERSION")})
}

fn capabilities() -> Value {
    json!({"tools": {"listChanged": false}})
}

/// `initialize`: the client's revision when this server has it, else the newest of the era
/// (the client then decides whether it can go on).
fn initialize(params: &Map<String, Value>) -> Value {
    let asked = params.get("protocolVersion").and_then(Value::as_str);
    let version = asked
        .filter(|v| HANDSHAKE_VERSIONS.contains(v))
        .unwrap_or(HANDSHAKE_VERSIONS[HANDSHAKE_VERSIONS.len() - 1]);
    json!({"protocolVersion": version, "capabilities": capabilities(),
           "serverInfo": server_info(), "instructions": INSTRUCTIONS})
}

/// `server/discover`: every revision this server speaks.
fn discover() -> Value {
    let all: Vec<&str> = HANDSHAKE_VERSIONS
        .iter()
        .chain(MODERN_VERSIONS.iter())
        .copied()
        .collect();
    json!({"supportedVersions": all, "capabilities": capabilities(),
           "instructions": INSTRUCTIONS, "_meta": {SERVER_INFO_KEY: server_info()}})
}

async fn call_tool(
    api: &std::sync::Arc<super::Api>,
    p: &crate::auth::Principal,
    params: &Map<String, Value>,
) -> std::result::Result<Value, RpcError> {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err(rpc(INVALID_PARAMS, "`name` (the tool) is required"));
    };
    let args = match params.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(rpc(INVALID_PARAMS, "`arguments` must be an object")),
    };
    let Some(out) = tools::call(api, p, name, args).await else {
        return Err(rpc(
            INVALID_PARAMS,
            format!(
                "Unknown tool `{}` (tools/list names them)",
                crate::error::truncate(name, 64)
            ),
        ));
    };
    Ok(match out {
        Ok(v) => json!({"content": [{"type": "text", "text": v.to_string()}],
                        "structuredContent": v, "isError": false}),
        Err(e) => {
            if e.side != Side::Client {
                tracing::warn!(tool = name, error = %e, "MCP tool failed");
            }
            let v = json!({"error": {"code": e.kind.code(), "message": e.message,
                                     "details": e.details}});
            json!({"content": [{"type": "text", "text": v.to_string()}],
                   "structuredContent": v, "isError": true})
        }
    })
}

/// A JSON-RPC 2.0 message as `POST /mcp` takes it (read as JSON and checked by hand: its
/// `params` depend on the method).
pub struct RpcMessage;

impl schemars::JsonSchema for RpcMessage {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "McpMessage".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "object", "additionalProperties": false,
            "required": ["jsonrpc", "method"],
            "description": "One JSON-RPC 2.0 message: a request (with `id`) or a notification \
                (without). Methods: `initialize`, `ping`, `tools/list`, `tools/call` (handshake \
                era, 2024-11-05 to 2025-11-25, the `MCP-Protocol-Version` header naming the \
                revision after `initialize`), and `server/discover` plus the same with the \
                2026-07-28 envelope in `params._meta` (`io.modelcontextprotocol/protocolVersion`, \
                `io.modelcontextprotocol/clientCapabilities`) mirrored by the \
                `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers.",
            "properties": {"jsonrpc": {"const": "2.0"}, "id": {"type": ["string", "integer"]},
                           "method": {"type": "string"}, "params": {"type": "object"}}})
    }
}

/// A JSON-RPC 2.0 response as `POST /mcp` answers it.
pub struct RpcAnswer;

impl schemars::JsonSchema for RpcAnswer {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "McpResponse".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "object", "required": ["jsonrpc", "id"],
            "properties": {"jsonrpc": {"const": "2.0"},
                "id": {"type": ["string", "integer", "null"]},
                "result": {"type": "object", "description": "For `tools/call`: `content` (one \
                    text block of JSON), `structuredContent` (the REST route's answer, or \
                    `{\"error\": {code, message, details}}`) and `isError`."},
                "error": {"type": "object", "required": ["code", "message"],
                          "properties": {"code": {"type": "integer"},
                                         "message": {"type": "string"}, "data": {}}}}})
    }
}

/// What a refused MCP request answers: a JSON-RPC error, or our error body before JSON-RPC
/// applies.
pub struct RpcRefusal;

impl schemars::JsonSchema for RpcRefusal {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "McpRefusal".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let rpc = g.subschema_for::<RpcAnswer>();
        let error = g.subschema_for::<crate::api::respond::ErrorBody<'static>>();
        schemars::json_schema!({"oneOf": [rpc, error]})
    }
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `POST /mcp`.
pub const MCP: Op = Op {
    id: "mcp",
    tag: "mcp",
    summary: "Model Context Protocol (Streamable HTTP): tools search_offers, rent_instance, list_instances, get_instance, destroy_instance, run_command, get_command, list_commands, get_usage",
    description: "Stateless (no `Mcp-Session-Id`); every answer is one `application/json` JSON-RPC message; no server-initiated stream (GET is 405). Tools run the REST routes' code with the caller's key: the same rate limits, budgets and `Idempotency-Key` rules (`idempotency_key` argument). An `Origin` header must be listed in `mcp.allowed_origins`.",
    body: Some(schema::<RpcMessage>),
    answers: &[
        json(
            200,
            "The JSON-RPC response (a tool's failure is a result with `isError`)",
            schema::<RpcAnswer>,
        ),
        Answer {
            status: 202,
            description: "A notification (or a response) accepted; no body",
            content: Content::None,
            headers: &[],
        },
    ],
    errors: &[
        json(
            400,
            "A JSON-RPC error: parse error (-32700), invalid request (-32600), invalid params or unknown tool (-32602), header mismatch (-32020), unsupported protocol version (-32022, `data.supported`)",
            schema::<RpcRefusal>,
        ),
        json(
            404,
            "Method not found (-32601), or `not_found` when `mcp.enabled` is off",
            schema::<RpcRefusal>,
        ),
        error(403, "`origin_not_allowed`, or the key may not call it"),
        error(415, "unsupported_media_type"),
    ],
    ..Op::NONE
};
