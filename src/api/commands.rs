//! `POST/GET /v1/instances/{id}/commands` and `GET /v1/instances/{id}/commands/{command_id}`:
//! REST over `service::commands` (docs/agents.md).

use hyper::{Response, StatusCode};

use super::call::{Call, idempotency_key};
use super::openapi::op::{Header, Op, error, json, schema};
use super::{Body, body, respond};
use crate::error::{Error, Result};
use crate::service::commands;
use crate::service::query::query;
use crate::types::text::{percent_decode, percent_encode};

/// The instance id and command id of `/v1/instances/{id}/commands/{command_id}` (the route's
/// parameter text is `<id>/commands/<command_id>`, each still percent-encoded).
fn ids(c: &Call) -> Result<(String, String)> {
    let bad = || Error::bad_request("invalid instance or command id");
    let (id, rest) = c
        .param
        .as_deref()
        .and_then(|p| p.split_once('/'))
        .ok_or_else(bad)?;
    let cid = rest.strip_prefix("commands/").ok_or_else(bad)?;
    Ok((
        percent_decode(id).ok_or_else(bad)?,
        percent_decode(cid).ok_or_else(bad)?,
    ))
}

/// `POST /v1/instances/{id}/commands` (with an `Idempotency-Key`, once per key).
pub async fn create(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("instance id")?;
    let (api, p) = (c.api.clone(), c.principal()?.clone());
    let key = idempotency_key(&c.req)?;
    let raw = body::read(c.req, &api.config.server).await?;
    let (v, replayed) = commands::create(&api, &p, &id, key.as_deref(), &raw).await?;
    let mut r = respond::json(StatusCode::ACCEPTED, &v);
    let loc = format!("/v1/instances/{}/commands/{}", percent_encode(&id), v.id);
    if let Ok(loc) = loc.parse() {
        r.headers_mut().insert(hyper::header::LOCATION, loc);
    }
    if replayed {
        r.headers_mut().insert(
            respond::REPLAYED,
            hyper::header::HeaderValue::from_static("true"),
        );
    }
    Ok(r)
}

/// `GET /v1/instances/{id}/commands`.
pub async fn list(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("instance id")?;
    let q = query(c.req.uri().query())?;
    let v = commands::list(&c.api, c.principal()?, &id, q).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `GET /v1/instances/{id}/commands/{command_id}`.
pub async fn show(c: Call) -> Result<Response<Body>> {
    let (id, cid) = ids(&c)?;
    let v = commands::get(&c.api, c.principal()?, &id, &cid).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `POST /v1/instances/{id}/commands`.
pub const CREATE_COMMAND: Op = Op {
    id: "createCommand",
    tag: "agents",
    summary: "Run a command on the instance through its agent",
    description: "Recorded before anything else (`queued`, with a `command.created` audit event naming the key), then routed to the daemon holding the instance's agent; an agent that is offline gets it when it reconnects, or it `expired`s after `agents.command_queue_ttl_ms`. Follow it with `GET …/commands/{command_id}` or on the event feed (`command.output`, `command.finished`). Exec is at most once. Needs the account's `agent_exec` and the key's `allow_exec` policy (403 `exec_not_allowed`).",
    body: Some(schema::<crate::agents::commands::NewCommand>),
    answers: &[json(
        202,
        "The command, queued",
        schema::<crate::service::commands::CommandView>,
    )],
    errors: &[
        error(
            403,
            "exec_not_allowed: the account or the key does not allow commands; insufficient_scope: a `read` key",
        ),
        error(409, "instance_not_open: the instance has ended"),
        error(422, "idempotency_key_reused"),
    ],
    headers: &[Header {
        name: "Idempotency-Key",
        description: "The command is recorded once per key: the same key and body answer the command it recorded, as it is now (header `Idempotent-Replayed: true`; nothing is run again); the same key with another instance or body gets 422 `idempotency_key_reused`. Kept `rentals.idempotency_ttl_ms`.",
        schema: schema::<crate::rentals::idempotency::KeyForm>,
    }],
    links: &["getCommand"],
    ..Op::NONE
};

/// `GET /v1/instances/{id}/commands`.
pub const LIST_COMMANDS: Op = Op {
    id: "listCommands",
    tag: "agents",
    summary: "The instance's commands, newest first",
    query: Some(schema::<crate::service::commands::CommandsPage>),
    answers: &[json(
        200,
        "A page of commands",
        schema::<crate::service::commands::CommandList>,
    )],
    ..Op::NONE
};

/// `GET /v1/instances/{id}/commands/{command_id}`.
pub const GET_COMMAND: Op = Op {
    id: "getCommand",
    tag: "agents",
    summary: "A command: its status, exit code and output (the first `agents.command_output_bytes`)",
    answers: &[json(
        200,
        "The command",
        schema::<crate::service::commands::CommandView>,
    )],
    ..Op::NONE
};
