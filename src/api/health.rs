//! `/health` (liveness, no I/O), `/ready` (serving or not) and `/stats` (connection and request
//! figures).

use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::openapi::op::{Op, json, schema};

use super::Body;
use super::respond;
use crate::error::Result;
use crate::state::{AppState, Phase};

/// `/health`'s answer.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Liveness {
    #[schemars(extend("const" = "ok"))]
    status: &'static str,
}

pub fn health() -> Response<Body> {
    respond::json(StatusCode::OK, &Liveness { status: "ok" })
}

/// `/ready`'s answer: the daemon's state and each dependency's.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Readiness {
    #[schemars(extend("enum" = ["ready", "degraded", "starting", "draining"]))]
    status: &'static str,
    #[schemars(extend("enum" = DEPENDENCY))]
    database: &'static str,
    #[schemars(extend("enum" = DEPENDENCY))]
    redis: &'static str,
    /// The read replica of DATABASE_READ_URL (key lookups); down, lookups go to the primary.
    #[schemars(extend("enum" = DEPENDENCY))]
    database_read: &'static str,
}

const DEPENDENCY: [&str; 3] = ["up", "down", "unconfigured"];

/// `/ready`: 200 `ready` when serving with every dependency up; 200 `degraded` while a shared
/// dependency is down (Redis: auth works from PostgreSQL; PostgreSQL/PgBouncer: cached keys keep
/// working), with each one's state in the body: a balancer health-checking `/ready` must not take
/// every daemon out at once for what is wrong with all of them. 503 only for what is this
/// daemon's own: starting or draining.
pub fn ready(state: &AppState) -> Response<Body> {
    let phase = state.phase();
    let dep = |configured: bool, up: bool| match (configured, up) {
        (false, _) => "unconfigured",
        (true, true) => "up",
        (true, false) => "down",
    };
    let db_up = state.db.as_ref().is_none_or(|d| d.is_up());
    let redis_up = state.redis.as_ref().is_none_or(|r| r.is_up());
    // down, key lookups go to the primary: degraded (more load there), not broken
    let replica = state.auth.replica_up();
    let replica_up = replica.unwrap_or(true);
    let (code, status) = match phase {
        Phase::Ready if !db_up || !redis_up || !replica_up => (StatusCode::OK, "degraded"),
        Phase::Ready => (StatusCode::OK, "ready"),
        p => (StatusCode::SERVICE_UNAVAILABLE, p.as_str()),
    };
    respond::json(
        code,
        &Readiness {
            status,
            database: dep(state.db.is_some(), db_up),
            redis: dep(state.redis.is_some(), redis_up),
            database_read: dep(replica.is_some(), replica_up),
        },
    )
}

/// `/stats`: uptime, connection and request figures. `with_top_clients` adds the ten client
/// addresses holding the most connections (operator data: only on the metrics listener until
/// admin authentication exists).
pub fn stats_response(state: &AppState, with_top_clients: bool) -> Response<Body> {
    let c = state.conns.snapshot();
    let mut v = json!({
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "phase": state.phase().as_str(),
        "fd_limit": state.fd_limit,
        "connections": {
            "open": c.open,
            "max": c.max,
            "max_per_ip": c.max_per_ip,
            "total": c.total,
            "waiting": c.waiting,
            "by_protocol": c.by_protocol,
            "by_listener": {"https": c.https, "http": c.http},
            "per_shard": c.per_shard,
            "rejected": c.rejected,
            "closed": c.closed,
            "accept_errors": c.accept_errors,
        },
        "ratelimit": {"daemons": state.limits.daemons()},
        "requests": {
            "total": c.requests_total,
            "by_protocol": {"h1": c.requests_h1, "h2": c.requests_h2},
        },
    });
    if with_top_clients {
        v["top_clients"] = state
            .conns
            .top_clients(10)
            .into_iter()
            .map(|(ip, n)| json!({"client": ip.to_string(), "connections": n}))
            .collect();
    }
    respond::json(StatusCode::OK, &v)
}

/// `GET /debug/sleep?ms=N`: answers after N milliseconds (0..=60000).
pub async fn debug_sleep(query: Option<&str>) -> Result<Response<Body>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sleep {
        ms: crate::service::query::Bounded<0, 60_000>,
    }
    let ms = crate::service::query::query::<Sleep>(query)?.ms.0 as u64;
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    Ok(respond::json(StatusCode::OK, &json!({"slept_ms": ms})))
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `GET /health`.
pub const HEALTH: Op = Op {
    id: "health",
    tag: "operations",
    summary: "Liveness (no I/O)",
    answers: &[json(200, "Alive", schema::<super::health::Liveness>)],
    ..Op::NONE
};

/// `GET /debug/sleep` (served only with `server.debug_routes`; not in the document).
pub const DEBUG_SLEEP: Op = Op {
    id: "debugSleep",
    tag: "operations",
    summary: "Answers after `ms` milliseconds (tests of timeouts and draining)",
    ..Op::NONE
};

/// `GET /ready`.
pub const READY: Op = Op {
    id: "ready",
    tag: "operations",
    summary: "Readiness, with the state of PostgreSQL and Redis",
    description: "Not rate limited. `database: down` or `redis: down` only degrade it (200, status `degraded`): a shared outage must not take every daemon out of the balancer; 503 is for starting or draining.",
    answers: &[json(
        200,
        "Ready (status `ready`, or `degraded` while a shared dependency, Redis or the database, is down)",
        schema::<super::health::Readiness>,
    )],
    errors: &[json(
        503,
        "Starting or draining",
        schema::<super::health::Readiness>,
    )],
    ..Op::NONE
};

/// `GET /openapi.json`.
pub const OPENAPI: Op = Op {
    id: "openapi",
    tag: "operations",
    summary: "This document",
    answers: &[json(
        200,
        "OpenAPI 3.1 document",
        schema::<serde_json::Map<String, serde_json::Value>>,
    )],
    ..Op::NONE
};
