//! What only HTTP carries of an event-feed request (`GET /v1/events`, SSE or WebSocket): the
//! `Last-Event-ID` header beside the typed query (`service::events`), and a browser's token
//! passed outside `Authorization`. Both carriers read them from here.

use hyper::header::HeaderValue;

use crate::error::{Error, Result};
use crate::service::events::{FeedRequest, Params};
use crate::types::text::percent_decode;

/// The feed request of an HTTP request: its query and `Last-Event-ID` header.
pub fn parse(q: Option<&str>, last_event_id: Option<&HeaderValue>) -> Result<FeedRequest> {
    let p: Params = crate::service::query::query(q)?;
    let last = last_event_id
        .map(|h| {
            h.to_str()
                .map_err(|_| Error::bad_request("invalid `Last-Event-ID` header"))
        })
        .transpose()?;
    FeedRequest::new(p, last)
}

/// The `Last-Event-ID` header: an event id, or empty (as if absent).
pub struct LastEventId;

crate::types::schema::schema_of!(LastEventId, "LastEventId", {"type": "string",
    "pattern": "^([0-9]{1,18})?$"});

/// The subprotocol that carries a browser's token: `bearer.<token>`.
pub const BEARER_PROTOCOL: &str = "bearer.";

/// A token a browser passed outside `Authorization`: `?access_token=`, or a WebSocket
/// subprotocol `bearer.<token>`. Never logged: the access log has the path only.
pub fn browser_token(req: &hyper::Request<hyper::body::Incoming>) -> Result<Option<String>> {
    for kv in req.uri().query().unwrap_or("").split('&') {
        if let Some(v) = kv.strip_prefix("access_token=") {
            let v = percent_decode(v)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::bad_request("invalid query parameter `access_token`"))?;
            return Ok(Some(v));
        }
    }
    Ok(offered_protocols(req).find_map(|p| p.strip_prefix(BEARER_PROTOCOL).map(str::to_owned)))
}

/// The subprotocols the client offers (`Sec-WebSocket-Protocol`, comma-separated, any number of
/// headers).
pub fn offered_protocols(
    req: &hyper::Request<hyper::body::Incoming>,
) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}
