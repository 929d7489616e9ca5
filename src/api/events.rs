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
//!   resume from the log; a connection that took nothing for `events.max_lag_ms` is closed
//!   under it, see `events::hub`), `draining` (with `retry:`, reconnect elsewhere), `unavailable` (the
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
use super::feed_query;
use super::openapi::op::{Answer, Content, Header, Op, schema};
use crate::error::Result;
use crate::events::feed::{Feed, Item};

/// What EventSource clients wait before reconnecting (ms).
const RETRY_MS: u32 = 2000;

/// `GET /v1/events`.
pub async fn stream(c: Call) -> Result<Response<Body>> {
    let q = feed_query::parse(c.req.uri().query(), c.req.headers().get("last-event-id"))?;
    if super::websocket::requested(&c.req) {
        return super::websocket::accept(c, q).await;
    }
    let feed = crate::service::events::open(&c.api, c.principal()?, q).await?;
    let every = c.api.config.events.ping_interval_ms.get();
    let cut = feed.cut_slot();
    let body = SseBody::new(feed, every);
    let mut r = Response::new(body.boxed());
    *r.status_mut() = StatusCode::OK;
    // for the connection: what closes it if the stream stalls (`events::hub`)
    r.extensions_mut().insert(cut);
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

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `GET /v1/events`.
pub const STREAM_EVENTS: Op = Op {
    id: "streamEvents",
    tag: "events",
    summary: "The caller's account events, live (Server-Sent Events)",
    description: r#"A `text/event-stream` of the account's events: each is `id: <seq>` (per account, without gaps), `event: <type>`, `data: {"id","type","at","instance_id","data"}`. The stream opens with `event: open` (`data.last_event_id`: where it starts) and a `retry:` hint, sends `: ping` every `events.ping_interval_ms` when idle, and ends with `event: close` and `data.reason`: `slow_consumer` (it fell `events.max_queue` events or `events.max_queue_bytes` behind; a stream whose connection took nothing for `events.max_lag_ms` while events waited is cut with its connection), `draining` (reconnect; `retry:` says when) or `unavailable`. Resume with `Last-Event-ID` (or `after`): the events after it are read from the log (kept `events.retention_hours`), then live ones follow. At most `events.max_streams_per_account` streams per account (429 `stream_limit`). With `Upgrade: websocket` (HTTP/1.1, `Connection: Upgrade`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`) the same feed is a WebSocket (101); over HTTP/2 the same as an extended CONNECT with `:protocol websocket` and `Sec-WebSocket-Version: 13` (RFC 8441, answered 200): text frames `{"type":"open","last_event_id":N}`, then each event's JSON; a ping every `events.ping_interval_ms`, closed 1008 `ping_timeout` without a pong within `events.pong_timeout_ms`; server closes carry a code and the reason (1001 `draining`, 1013 `slow_consumer`, 1011 `unavailable`)."#,
    query: Some(schema::<crate::service::events::Params>),
    headers: &[Header {
        name: "Last-Event-ID",
        description: "The `id` of the last event received (EventSource sends it on reconnect). Empty: as if absent.",
        schema: schema::<super::feed_query::LastEventId>,
    }],
    answers: &[
        Answer {
            status: 101,
            description: "Switching to a WebSocket (the request asked with `Upgrade: websocket`).",
            content: Content::None,
            headers: &[(
                "Sec-WebSocket-Accept",
                "The RFC 6455 answer to `Sec-WebSocket-Key`.",
            )],
        },
        Answer {
            status: 200,
            description: "The stream",
            content: Content::EventStream(schema::<crate::events::StreamEvent>),
            headers: &[],
        },
    ],
    ..Op::NONE
};
