//! `/health` (liveness, no I/O), `/ready` (serving or not) and `/stats` (connection and request
//! figures).

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde_json::json;

use super::Body;
use super::respond;
use crate::error::{Error, Result};
use crate::state::{AppState, Phase};

pub fn health() -> Response<Body> {
    respond::json(StatusCode::OK, &json!({"status": "ok"}))
}

pub fn ready(state: &Arc<AppState>) -> Response<Body> {
    let phase = state.phase();
    let status = if phase == Phase::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond::json(status, &json!({"status": phase.as_str()}))
}

/// `/stats`: uptime, connection and request figures. `with_top_clients` adds the ten client
/// addresses holding the most connections (operator data: only on the metrics listener until
/// admin authentication exists).
pub fn stats_response(state: &Arc<AppState>, with_top_clients: bool) -> Response<Body> {
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
    let ms = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="))
        .ok_or_else(|| Error::bad_request("query parameter `ms` is required"))?
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms <= 60_000)
        .ok_or_else(|| Error::bad_request("`ms` must be an integer from 0 to 60000"))?;
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    Ok(respond::json(StatusCode::OK, &json!({"slept_ms": ms})))
}
