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
use super::call::Call;
use super::feed_query::Query;
use crate::error::Result;
use crate::events::feed::{Feed, Item};

/// What EventSource clients wait before reconnecting (ms).
const RETRY_MS: u32 = 2000;

/// `GET /v1/events`.
pub async fn stream(c: Call) -> Result<Response<Body>> {
    let q = Query::parse(c.req.uri().query(), c.req.headers().get("last-event-id"))?;
    if super::websocket::requested(&c.req) {
        return super::websocket::accept(c, q).await;
    }
    let p = c.principal()?;
    let hub = c
        .api
        .events
        .clone()
        .ok_or_else(|| crate::service::needs_database("event streams"))?;
    let db = c
        .api
        .db
        .clone()
        .ok_or_else(|| crate::service::needs_database("event streams"))?;
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
