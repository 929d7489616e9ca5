//! Instance agents' routes (docs/agents.md): the renter mints its instance's agent token
//! (`POST /v1/instances/{id}/agent-token`), the machine downloads the agent
//! (`GET /v1/agent/download`, `GET /v1/agent/install.sh`; `agents::install`), and the agent
//! opens its channel with its token (`GET /v1/agent`, a WebSocket; the session is
//! `websocket::agent`).

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
    let id = {
        let _admitted = c.api.agents.admit().await?;
        tokens::authenticate(&db, &token).await?
    };
    websocket::accept_agent(c, id, opened)
}

fn not_here(why: &str) -> Error {
    Error::new(
        crate::error::Kind::NotFound,
        crate::error::Side::Client,
        format!("this daemon hands out no agent: {why}"),
    )
}

/// `GET /v1/agent/download`: the agent program, with its SHA-256 (`x-checksum-sha256`, and the
/// `ETag`; `If-None-Match` with it answers 304).
pub fn download(c: &Call) -> Result<Response<Body>> {
    let b = crate::agents::install::binary(&c.api.config.agents)
        .ok_or_else(|| not_here("no agent program (`agents.binary_path`)"))?;
    let etag = format!("\"sha256:{}\"", b.sha256);
    let fresh = c
        .req
        .headers()
        .get(hyper::header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut r = Response::builder()
        .header(hyper::header::ETAG, &etag)
        .header("x-checksum-sha256", &b.sha256)
        .header(hyper::header::CACHE_CONTROL, "no-cache");
    if fresh {
        r = r.status(StatusCode::NOT_MODIFIED);
        return r
            .body(respond::full(bytes::Bytes::new()))
            .map_err(Error::internal);
    }
    r.header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(respond::full(b.bytes.clone()))
        .map_err(Error::internal)
}

/// `GET /v1/agent/install.sh`: the install script (downloads the agent from this daemon,
/// checks its SHA-256, starts it in the background).
pub fn install_script(c: &Call) -> Result<Response<Body>> {
    let inst = crate::agents::install::Installer::of(&c.api.config.agents)
        .map_err(|e| not_here(e.message.trim_start_matches("invalid `agent`: ")))?;
    Response::builder()
        .header(
            hyper::header::CONTENT_TYPE,
            "text/x-shellscript; charset=utf-8",
        )
        .body(respond::full(inst.script()))
        .map_err(Error::internal)
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
        error(
            503,
            "over_capacity: too many channels opening at once (`agents.max_opening`); retry after `Retry-After`",
        ),
    ],
    ..Op::NONE
};

/// `GET /v1/agent/download`.
pub const AGENT_DOWNLOAD: Op = Op {
    id: "downloadAgent",
    tag: "agents",
    summary: "The agent program (gpuproxy-agent, Linux x86-64)",
    description: "The `gpuproxy-agent` this daemon was built with (`agents.binary_path`), as the install script fetches it. `x-checksum-sha256` and the `ETag` carry its SHA-256; `If-None-Match` with the ETag answers 304. No credentials: the program is no secret. 404 when this daemon hands out none.",
    answers: &[Answer {
        status: 200,
        description: "The program.",
        content: Content::Binary("application/octet-stream"),
        headers: &[("x-checksum-sha256", "The program's SHA-256 (hex).")],
    }],
    errors: &[error(404, "not_found: this daemon hands out no agent")],
    ..Op::NONE
};

/// `GET /v1/agent/install.sh`.
pub const AGENT_INSTALL_SCRIPT: Op = Op {
    id: "agentInstallScript",
    tag: "agents",
    summary: "The agent's install script (POSIX sh)",
    description: "Downloads the agent from `agents.public_url`, checks it against the SHA-256 written into the script, installs it (`GPUPROXY_AGENT_DIR`, default /usr/local/bin) and starts it in the background. It reads `GPUPROXY_INSTANCE_ID` and `GPUPROXY_AGENT_TOKEN` from the environment; the token is never an argument. 404 when this daemon hands out no agent (no `agents.public_url` or no program).",
    answers: &[Answer {
        status: 200,
        description: "The script.",
        content: Content::Binary("text/x-shellscript"),
        headers: &[],
    }],
    errors: &[error(404, "not_found: this daemon hands out no agent")],
    ..Op::NONE
};
