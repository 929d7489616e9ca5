//! `EventsService.StreamEvents`: the caller's event feed (`service::events`, the same
//! [`Feed`] SSE and WebSocket carry) as a server stream. Each event is one message; the stream
//! ends with a status and, in `google.rpc.ErrorInfo` metadata, `resume_after`: the last event
//! id passed, to call again with as `after` (nothing missed, nothing twice). A draining daemon
//! ends it UNAVAILABLE (reconnect, to this address or another); a client that fell behind,
//! RESOURCE_EXHAUSTED; an ended key or token, UNAUTHENTICATED (a suspended account,
//! PERMISSION_DENIED). Like the SSE body, the stream is a state machine polled by hyper: no
//! task per stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use super::respond;
use super::services::Carrier;
use crate::events::feed::{Feed, Item};
use crate::service::events::FeedRequest;

#[tonic::async_trait]
impl pb::events_service_server::EventsService for Carrier {
    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        req: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let (c, p) = super::services::caller(&req)?;
        let r = req.get_ref();
        let want = crate::service::query::query(Some(&convert::feed_query(r)))
            .and_then(|params| FeedRequest::new(params, None))
            .map_err(|e| c.status(&e))?;
        let feed = crate::service::events::open(&c.api, &p, want)
            .await
            .map_err(|e| c.status(&e))?;
        let cut = feed.cut_slot();
        let mut resp = Response::new(EventStream {
            feed,
            request_id: c.request_id,
            done: false,
        });
        // for the connection: what closes it if the stream stalls (`events::hub`)
        resp.extensions_mut().insert(cut);
        Ok(resp)
    }
}

/// The feed as messages, then its end as a status.
pub struct EventStream {
    feed: Feed,
    request_id: String,
    done: bool,
}

impl Stream for EventStream {
    type Item = Result<pb::StreamEventsResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.feed.poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Item::Event(e)) => Poll::Ready(Some(Ok(pb::StreamEventsResponse {
                event: Some(convert::event(&e)),
            }))),
            Poll::Ready(Item::End(reason)) => {
                this.done = true;
                Poll::Ready(Some(Err(ended(reason, this.feed.last(), &this.request_id))))
            }
        }
    }
}

/// The status a feed ends with, for `reason` (`events::feed`), resuming after `last`.
fn ended(reason: &str, last: i64, request_id: &str) -> Status {
    use tonic::Code;
    let (code, message) = match reason {
        "draining" => (
            Code::Unavailable,
            "the daemon is shutting down: resume after `resume_after`",
        ),
        "slow_consumer" => (
            Code::ResourceExhausted,
            "the stream fell too far behind: resume after `resume_after`",
        ),
        "account_suspended" => (Code::PermissionDenied, "the account is suspended"),
        "key_revoked" | "key_expired" | "token_expired" => (
            Code::Unauthenticated,
            "the credential the stream was opened with ended",
        ),
        _ => (
            Code::Unavailable,
            "the event log could not be read: resume after `resume_after`",
        ),
    };
    let details = serde_json::json!({ "resume_after": last });
    let retry = matches!(code, Code::Unavailable).then_some(1);
    respond::status_with_info(code, message, reason, request_id, Some(&details), retry)
}
