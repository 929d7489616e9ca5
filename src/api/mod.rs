//! The HTTP API: one entry point per request, [`handle`], which names the request, routes it,
//! runs the handler, turns any error into a response (in `respond`, the only place that does),
//! and records metrics and the access log line.

pub mod account;
pub mod admin;
pub mod agents;
pub mod body;
pub mod call;
pub mod commands;
pub mod events;
pub mod feed_query;
pub mod grpc;
pub mod health;
pub mod instances;
pub mod mcp;
pub mod offers;
pub mod openapi;
pub mod passthrough;
pub mod respond;
pub mod router;
pub mod sshkeys;
pub mod usage;
pub mod volumes;
pub mod watches;
pub mod webhooks;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderValue};
use hyper::{Request, Response};

use crate::conn::{ListenerKind, Protocol};
use crate::error::{Error, Result};
use crate::metrics::RequestMetrics;
use crate::ratelimit::Verdict;
use crate::ratelimit::gcra::Decision;
use crate::state::AppState;
use crate::types::ip::IpKey;
use router::{Access, ROUTES, Route};

/// Response body type of every handler.
pub type Body = BoxBody<Bytes, hyper::Error>;

pub const REQUEST_ID: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-request-id");

/// What a handler may know about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnCtx {
    pub peer: SocketAddr,
    pub listener: ListenerKind,
    pub proto: Protocol,
}

/// What the handlers work with: the daemon's services ([`AppState`], reached through `Deref`)
/// and what only the API needs: its render caches and its request metrics.
pub struct Api {
    pub app: Arc<AppState>,
    /// Rendered `GET /v1/offers` pages.
    pub offer_pages: crate::service::offers::PageCache,
    /// Rendered `GET /v1/account` bodies, one per cached key record.
    pub account_views: crate::service::account::AccountViews,
    /// Indexed by `Route as usize`, with one more slot for unmatched paths.
    pub request_metrics: RequestMetrics,
    /// The OpenAPI document, generated from the route table at start-up.
    pub openapi: openapi::Document,
    /// MCP's `tools/list` answer, its input schemas taken from the document.
    pub mcp_tools: Vec<serde_json::Value>,
    /// The gRPC services (`grpc`), and their request metrics (by method).
    pub grpc: grpc::Registry,
    pub grpc_metrics: RequestMetrics,
}

impl Api {
    pub fn new(app: Arc<AppState>) -> Arc<Api> {
        let document = openapi::Document::new();
        let grpc = grpc::Registry::new(app.config.server.max_body_bytes.get() as usize);
        grpc.follow_phase(&app);
        Arc::new(Api {
            grpc,
            grpc_metrics: RequestMetrics::new(&grpc::metric_labels()),
            offer_pages: crate::service::offers::PageCache::new(
                app.config.offers.cache_max_entries.get(),
            ),
            account_views: crate::service::account::AccountViews::new(
                app.config.auth.cache_max_entries.get(),
            ),
            request_metrics: RequestMetrics::new(&Route::metric_labels()),
            mcp_tools: mcp::tools::list(&document.value),
            openapi: document,
            app,
        })
    }
}

impl std::ops::Deref for Api {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.app
    }
}

pub async fn handle(state: Arc<Api>, ctx: ConnCtx, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let request_id = client_request_id(&req).unwrap_or_else(|| state.next_request_id());
    state.conns.count_request(ctx.proto);
    if grpc::is_grpc(&req) {
        return Box::pin(grpc::handle(state, ctx, req, request_id)).await;
    }
    let matched = Route::of(req.uri().path())
        .filter(|(_, r, _)| !r.debug_only || state.config.server.debug_routes)
        .map(|(i, r, p)| (i, r, p.map(str::to_owned)));
    let slot = matched.as_ref().map_or(ROUTES.len(), |m| m.0);
    let route = matched.as_ref().map(|m| m.1);
    let method = req.method().clone();
    let access_path = state
        .config
        .log
        .access_log
        .then(|| req.uri().path().to_owned());

    // per-IP tier first: an unauthenticated flood costs one atomic per request
    let verdict = if route.is_none_or(|r| r.rate_limited) {
        let key = IpKey::new(ctx.peer.ip(), state.config.connections.ipv6_prefix_len);
        state.limits.check_ip(key)
    } else {
        None
    };
    let result = match verdict {
        Some(v) if matches!(v.decision, Decision::Limited { .. }) => Err(Error::rate_limited(v)),
        _ => dispatch(&state, matched.map(|(_, r, p)| (r, p)), req).await,
    };
    let mut resp = match result {
        Ok((mut r, caller_verdict)) => {
            let shown = match (verdict, caller_verdict) {
                (Some(a), Some(b)) => Some(crate::ratelimit::tighter(a, b)),
                (a, b) => a.or(b),
            };
            if let Some(v) = shown.filter(|_| state.limits.headers) {
                respond::set_ratelimit_headers(&mut r, &v);
            }
            r
        }
        Err(e) => respond::error_response(&e, &request_id),
    };
    if resp.status().as_u16() >= 400 && resp.headers().contains_key(respond::REPLAYED) {
        resp = respond::replayed_error(resp, &request_id).await;
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    if method == hyper::Method::HEAD {
        resp = head_of(resp);
    }

    let status = resp.status();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    state.request_metrics.record(slot, status.as_u16(), ms);
    if let Some(path) = access_path {
        tracing::info!(
            target: "access",
            request_id = %request_id,
            method = %method,
            path = %path,
            status = status.as_u16(),
            duration_ms = ms,
            client = %ctx.peer,
            proto = ctx.proto.as_str(),
        );
    }
    resp
}

/// The answer to a HEAD: the GET's status and headers (with its length), no body. hyper leaves
/// the body out on HTTP/1 itself, but on HTTP/2 would send it, which clients reject.
fn head_of(resp: Response<Body>) -> Response<Body> {
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    let len = resp.body().size_hint().exact();
    let (mut parts, _) = resp.into_parts();
    if let Some(n) = len {
        parts
            .headers
            .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Response::from_parts(
        parts,
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// Runs the route's handler, authenticating first where the route needs it. Returns the
/// response and the caller's rate-limit verdict (for the headers).
async fn dispatch(
    state: &Arc<Api>,
    matched: Option<(&'static Route, Option<String>)>,
    req: Request<Incoming>,
) -> Result<(Response<Body>, Option<Verdict>)> {
    let (route, param) = matched.ok_or_else(|| Error::not_found(req.uri().path()))?;
    // an HTTP/2 WebSocket (RFC 8441: CONNECT with `:protocol websocket`) is the GET it replaces
    let method = if websocket::extended_connect(&req) {
        &hyper::Method::GET
    } else {
        req.method()
    };
    let handler = route
        .handler(method)
        .ok_or_else(|| Error::method_not_allowed(req.method(), route.allowed()))?;
    let limit = state.config.server.max_body_bytes;
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(n) if n > limit.get() => return Err(Error::payload_too_large(limit.get())),
            Some(_) => {}
            None => return Err(Error::bad_request("invalid Content-Length header")),
        }
    }
    let (caller, verdict) = match route.access {
        Access::Public => (None, None),
        access => {
            let browser = match access {
                Access::Stream if !req.headers().contains_key(AUTHORIZATION) => {
                    feed_query::browser_token(&req)?
                }
                _ => None,
            };
            let p = match browser {
                Some(token) => state.auth.authenticate_token(&token).await?,
                None => state.auth.authenticate(req.headers()).await?,
            };
            if access == Access::Admin && !p.is_admin() {
                return Err(Error::forbidden(
                    "insufficient_scope",
                    "this endpoint needs a key with the `admin` scope",
                ));
            }
            if route.changes(method) {
                p.may_change()?;
            }
            let v = state.limits.check_caller(&p.key);
            if let Some(v) = v.filter(|v| matches!(v.decision, Decision::Limited { .. })) {
                return Err(Error::rate_limited(v));
            }
            (Some(p), v)
        }
    };
    let call = call::Call {
        api: state.clone(),
        caller,
        param,
        req,
    };
    Ok((handler(call).resolve().await?, verdict))
}

/// Keeps a caller's `x-request-id` when it is short and plain, so ids can be followed across hops.
fn client_request_id(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get(&REQUEST_ID)?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    ok.then(|| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size2<A, B, F>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every request's future is boxed and copied whole as it starts, so its size is a cost on
    /// every request, `/health` included: the heavy handlers (and the auth cache's miss path) are
    /// boxed so that the common path stays small. It was 13 KB before they were.
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(handle);
        assert!(size <= 3 * 1024, "api::handle's future is {size} bytes");
        // a cache-hit offers request allocates this one too (11.5 KB before the cache's Redis
        // read was boxed)
        let size = future_size2(offers::list);
        assert!(size <= 2 * 1024, "offers::list's future is {size} bytes");
    }
}
