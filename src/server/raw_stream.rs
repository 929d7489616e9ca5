//! An HTTP/1.1 event stream, written on the socket without hyper: a stream that lives for hours
//! should not keep hyper's connection (its read and write buffers, some 10 KiB) for its whole
//! life. hyper hands a connection back only after a 101, so hyper is given a 101 whose head the
//! connection's stream swallows (`ConnShared::swallow_next_head`), and the session writes the
//! real head (the handler's status and headers, `Connection: close`: the body ends with the
//! connection) and then the body's frames, flushing each.
//!
//! The session is a state machine the connection's task polls, holding between polls only the
//! socket, the body and the frame being written. It reads the socket only to see the client
//! leave (anything the client sends after the request is dropped).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Body as _;
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::api::{self, Body};

/// The session that writes `resp` (an event stream's answer) on the socket, and the 101 hyper is
/// given in its place.
pub fn session(resp: Response<Body>) -> (api::websocket::Session, Response<Body>) {
    let (parts, body) = resp.into_parts();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("OK").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == hyper::header::CONNECTION || name == hyper::header::TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    let session: api::websocket::Session = Box::new(move |io| {
        Box::pin(RawStream {
            io,
            body,
            out: Some((Bytes::from(head), 0)),
            unflushed: false,
            ended: false,
        })
    });
    let mut r = Response::new(api::respond::full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    (session, r)
}

struct RawStream {
    io: Box<dyn api::websocket::SessionIo>,
    body: Body,
    /// What is being written (the head, then each frame of the body), and how much of it went.
    out: Option<(Bytes, usize)>,
    /// Written, not flushed yet.
    unflushed: bool,
    /// The body is over: the socket is shut down once the rest is written.
    ended: bool,
}

impl Future for RawStream {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = &mut *self;
        // the client leaving is seen as the end of what it sends
        let mut sink = [0u8; 32];
        loop {
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut me.io).poll_read(cx, &mut buf) {
                Poll::Pending => break,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => return Poll::Ready(()),
            }
        }
        loop {
            if me.out.is_none() {
                if me.ended {
                    break;
                }
                match Pin::new(&mut me.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            me.out = Some((data, 0));
                        }
                        continue;
                    }
                    Poll::Ready(_) => {
                        me.ended = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            let Some((data, at)) = &mut me.out else { break };
            match Pin::new(&mut me.io).poll_write(cx, &data[*at..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => {
                    *at += n;
                    if *at == data.len() {
                        me.out = None;
                        me.unflushed = true;
                    }
                }
                Poll::Pending => break,
            }
        }
        if me.unflushed {
            match Pin::new(&mut me.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => me.unflushed = false,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        if me.ended && me.out.is_none() {
            return Pin::new(&mut me.io).poll_shutdown(cx).map(|_| ());
        }
        Poll::Pending
    }
}
