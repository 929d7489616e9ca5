//! Instance agents' routes (docs/agents.md): the renter mints its instance's agent token
//! (`POST /v1/instances/{id}/agent-token`), and the agent opens its channel with it
//! (`GET /v1/agent`, a WebSocket; the session is `websocket::agent`).

use hyper::header::AUTHORIZATION;
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::call::Call;
use super::openapi::op::{Answer, Content, Op, error, json, schema};
use super::{Body, respond, websocket};
use crate::agents::tokens;
use crate::error::{Error, Result};

/// A minted agent token (shown once).
#[derive(Serialize, schemars::JsonSchema)]
#[schemars(rename = "AgentToken")]
pub struct AgentTokenView {
    pub instance_id: String,
    /// `gpa_…`: give it to the agent in its environment (`GPUPROXY_AGENT_TOKEN`); it is not
    /// shown again. Minting again replaces it.
    pub token: String,
    /// Where the agent connects (a WebSocket), relative to the daemon's URL.
    pub channel: &'static str,
}

/// `POST /v1/instances/{id}/agent-token`.
pub async fn mint(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("instance id")?;
    let db = c.db("agent tokens")?;
    let token = tokens::mint(&db, c.principal()?.account_id(), &id).await?;
    Ok(respond::json(
        StatusCode::CREATED,
        &AgentTokenView {
            instance_id: id,
            token,
            channel: "/v1/agent",
        },
    ))
}

/// `GET /v1/agent`: the agent token in `Authorization: Bearer gpa_…`, then the channel.
pub async fn channel(c: Call) -> Result<Response<Body>> {
    let opened = tokio::time::Instant::now();
    if !websocket::requested(&c.req) {
        return Err(Error::bad_request(
            "the agent channel is a WebSocket (`Upgrade: websocket`)",
        ));
    }
    let token = c
        .req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            Error::unauthorized(
                "missing_credentials",
                "send `Authorization: Bearer <agent token>`",
            )
        })?
        .to_owned();
    let db = c.db("agents")?;
    let id = tokens::authenticate(&db, &token).await?;
    websocket::accept_agent(c, id, opened)
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `POST /v1/instances/{id}/agent-token`.
pub const MINT_AGENT_TOKEN: Op = Op {
    id: "mintAgentToken",
    tag: "agents",
    summary: "Mint the instance's agent token (replacing any earlier one)",
    description: "The token opens the agent channel (`GET /v1/agent`) for this instance only, while the instance is open: it stops working when the instance ends, or when a new one is minted. Shown once; kept as its SHA-256.",
    answers: &[json(201, "The token", schema::<AgentTokenView>)],
    errors: &[
        error(404, "not_found: no such instance of yours"),
        error(409, "instance_not_open: the instance has ended"),
    ],
    ..Op::NONE
};

/// `GET /v1/agent`.
pub const AGENT_CHANNEL: Op = Op {
    id: "agentChannel",
    tag: "agents",
    summary: "An instance agent's channel (WebSocket)",
    description: "For the agent on a rented machine, with its instance's agent token (`Authorization: Bearer gpa_…`; an API key is refused). A WebSocket (HTTP/1.1 `Upgrade: websocket`, or an HTTP/2 extended CONNECT) of JSON text messages: the agent's `hello` first (within `agents.hello_timeout_ms`), answered `welcome` with the heartbeat interval, then `heartbeat`s. A ping every `agents.ping_interval_ms`; no pong within `agents.pong_timeout_ms` closes it 1008 `ping_timeout`. A message that is not valid, binary, or over `agents.max_message_bytes` closes it 1008 with the reason; a draining daemon closes it 1001. See docs/agents.md.",
    answers: &[Answer {
        status: 101,
        description: "Switching to the agent channel.",
        content: Content::None,
        headers: &[(
            "Sec-WebSocket-Accept",
            "The RFC 6455 answer to `Sec-WebSocket-Key`.",
        )],
    }],
    errors: &[
        error(400, "bad_request: not a WebSocket opening"),
        error(
            401,
            "missing_credentials, invalid_credentials: no agent token, or not one of an open instance",
        ),
    ],
    ..Op::NONE
};
