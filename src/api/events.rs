//! `GET /v1/events`: the caller's account events as Server-Sent Events (with `Upgrade:
//! websocket`, the same feed over a WebSocket: `websocket`).
//!
//! - Each event is `id: <seq>`, `event: <type>`, `data: <JSON>`; `seq` counts per account
//!   without gaps, so `Last-Event-ID` (or `?after=`) resumes exactly: the log is read from there
//!   up to where the live feed took over (`events::hub::Subscription::from`), then live events
//!   follow. Without either, the stream starts with the next event.
//! - `types=` (comma-separated) and `instance=` filter what is sent; filtered events still move
//!   the stream on.
//! - It opens with `event: open` (`last_event_id`: where it starts) and a `retry:` hint.
//! - A comment (`: ping`) every `events.ping_interval_ms` with nothing else to send.
//! - The stream ends with `event: close` and a reason: `slow_consumer` (its queue overflowed;
//!   resume from the log), `draining` (with `retry:`, reconnect elsewhere), `unavailable` (the
//!   log could not be read).
//! - The body is a state machine polled by hyper: no task per stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use super::Body;
use super::account::no_db;
use super::router::{Call, percent_decode};
use crate::error::{Error, Result};
use crate::events;
use crate::events::feed::{Feed, Filter, Item};

/// What EventSource clients wait before reconnecting (ms).
const RETRY_MS: u32 = 2000;

/// What the client asked for.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Query {
    pub after: Option<i64>,
    pub filter: Filter,
}

/// An event id as the client gives it back: 1 to 18 digits (what the document says).
fn parse_id(what: &str, v: &str) -> Result<i64> {
    Some(v)
        .filter(|v| (1..=18).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| {
            Error::bad_request(format!(
                "invalid {what}: the `id` of an event from this stream (1 to 18 digits)"
            ))
        })
}

impl Query {
    pub(super) fn parse(q: Option<&str>, last_event_id: Option<&HeaderValue>) -> Result<Query> {
        let mut out = Query::default();
        for kv in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = percent_decode(v).ok_or_else(|| {
                Error::bad_request(format!(
                    "invalid query parameter `{}`: broken percent-encoding or a control character",
                    crate::error::truncate(k, 32)
                ))
            })?;
            match k {
                "after" => out.after = Some(parse_id("query parameter `after`", &v)?),
                "types" => {
                    let types: Vec<String> = v.split(',').map(|t| t.trim().to_owned()).collect();
                    if let Some(bad) = types.iter().find(|t| !events::TYPES.contains(&t.as_str())) {
                        return Err(Error::bad_request(format!(
                            "invalid query parameter `types`: `{}` is not one of {}",
                            crate::error::truncate(bad, 48),
                            events::TYPES.join(", ")
                        )));
                    }
                    out.filter.types = Some(types);
                }
                // read by `browser_token` at authentication
                "access_token" => {}
                "instance" => {
                    if v.is_empty() || v.chars().count() > 128 {
                        return Err(Error::bad_request(
                            "invalid query parameter `instance`: an instance id",
                        ));
                    }
                    out.filter.instance = Some(v);
                }
                other => {
                    return Err(Error::bad_request(format!(
                        "unknown query parameter `{}` (known: after, types, instance, access_token)",
                        crate::error::truncate(other, 64)
                    )));
                }
            }
        }
        // a reconnecting EventSource repeats the original URL: the header is the newer word
        if let Some(h) = last_event_id {
            let v = h
                .to_str()
                .map_err(|_| Error::bad_request("invalid `Last-Event-ID` header"))?;
            if !v.is_empty() {
                out.after = Some(parse_id("`Last-Event-ID` header", v)?);
            }
        }
        Ok(out)
    }
}

/// The subprotocol that carries a browser's token: `bearer.<token>`.
pub const BEARER_PROTOCOL: &str = "bearer.";

/// A token a browser passed outside `Authorization`: `?access_token=`, or a WebSocket
/// subprotocol `bearer.<token>`. Never logged: the access log has the path only.
pub(super) fn browser_token(req: &hyper::Request<hyper::body::Incoming>) -> Result<Option<String>> {
    for kv in req.uri().query().unwrap_or("").split('&') {
        if let Some(v) = kv.strip_prefix("access_token=") {
            let v = percent_decode(v)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::bad_request("invalid query parameter `access_token`"))?;
            return Ok(Some(v));
        }
    }
    Ok(super::websocket::offered_protocols(req)
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL).map(str::to_owned)))
}

/// `GET /v1/events`.
pub async fn stream(c: Call) -> Result<Response<Body>> {
    let q = Query::parse(c.req.uri().query(), c.req.headers().get("last-event-id"))?;
    if super::websocket::requested(&c.req) {
        return super::websocket::accept(c, q).await;
    }
    let p = c.principal()?;
    let hub = c.api.events.clone().ok_or_else(no_db)?;
    let db = c.api.db.clone().ok_or_else(no_db)?;
    let sub = hub.subscribe(p.account_id(), p.key.key_id).await?;
    let every = c.api.config.events.ping_interval_ms.get();
    let feed = Feed::new(db, p.account_id(), sub, q.after, q.filter);
    let body = SseBody::new(feed, every);
    let mut r = Response::new(body.boxed());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx and similar: pass each event on as it comes
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

/// The SSE carrier of a [`Feed`]: the `open` event first, a comment ping when nothing else was
/// sent for `every`, `event: close` last.
struct SseBody {
    feed: Feed,
    ping: Pin<Box<tokio::time::Sleep>>,
    every: Duration,
    started: bool,
    done: bool,
}

impl SseBody {
    fn new(feed: Feed, every: Duration) -> Self {
        SseBody {
            feed,
            ping: Box::pin(tokio::time::sleep(every)),
            every,
            started: false,
            done: false,
        }
    }

    fn frame(
        &mut self,
        text: String,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, hyper::Error>>> {
        self.ping
            .as_mut()
            .reset(tokio::time::Instant::now() + self.every);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))))
    }
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, hyper::Error>>> {
        let me = &mut *self;
        if me.done {
            return Poll::Ready(None);
        }
        if !me.started {
            me.started = true;
            let data = serde_json::json!({"last_event_id": me.feed.last()});
            return me.frame(format!("retry: {RETRY_MS}\nevent: open\ndata: {data}\n\n"));
        }
        match me.feed.poll_next(cx) {
            Poll::Ready(Item::Event(e)) => {
                let text = format!(
                    "id: {}\nevent: {}\ndata: {}\n\n",
                    e.seq,
                    e.kind,
                    e.to_json()
                );
                me.frame(text)
            }
            Poll::Ready(Item::End(reason)) => {
                me.done = true;
                let retry = if reason == "draining" {
                    format!("retry: {RETRY_MS}\n")
                } else {
                    String::new()
                };
                let data = serde_json::json!({"reason": reason, "last_event_id": me.feed.last()});
                me.frame(format!("{retry}event: close\ndata: {data}\n\n"))
            }
            Poll::Pending => {
                if me.ping.as_mut().poll(cx).is_ready() {
                    return me.frame(": ping\n\n".to_owned());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_points_and_filters_are_checked() {
        let h = HeaderValue::from_static("41");
        let q = Query::parse(Some("after=7&types=instance.status_changed"), Some(&h)).unwrap();
        assert_eq!(q.after, Some(41), "the header is the newer word");
        assert_eq!(
            q.filter.types.as_deref(),
            Some(&["instance.status_changed".to_owned()][..])
        );
        for bad in [
            "after=-1",
            "after=x",
            "types=instance.nope",
            "instance=",
            "foo=1",
            "after=%00",
        ] {
            let e = Query::parse(Some(bad), None).unwrap_err();
            assert_eq!(e.kind.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        let e = Query::parse(None, Some(&HeaderValue::from_static("x"))).unwrap_err();
        assert!(e.to_string().contains("Last-Event-ID"), "{e}");
    }

    #[test]
    fn filters_match_type_and_instance() {
        let e = events::Event {
            account_id: 1,
            seq: 3,
            at: String::new(),
            kind: events::STATUS_CHANGED.into(),
            instance_id: Some("i-1".into()),
            data: serde_json::json!({}),
        };
        let q = |s: &str| Query::parse(Some(s), None).unwrap();
        assert!(q("").filter.wants(&e));
        assert!(
            q("types=instance.status_changed,budget.warning")
                .filter
                .wants(&e)
        );
        assert!(!q("types=budget.warning").filter.wants(&e));
        assert!(q("instance=i-1").filter.wants(&e));
        assert!(!q("instance=i-2").filter.wants(&e));
    }
}
