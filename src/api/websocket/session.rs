//! A WebSocket event stream's session: a state machine polled by its connection's task (no task
//! of its own), holding between polls only the socket, the feed, one timer and the frame
//! reader's few bytes of state, so an idle WebSocket stream costs what an idle SSE stream does.
//!
//! - Writes one frame at a time and flushes: the `open` message, then each event, a ping every
//!   `events.ping_interval_ms`, a pong for each ping of the client's. The feed is asked for its
//!   next event only when nothing is being written: while the client does not read, the
//!   stream's queue is its backlog (and `events::hub` cuts it after `events.max_lag_ms`).
//! - Reads whatever the client sends, whenever: a pong ends the wait for it, a ping is answered,
//!   a close is answered and ends the session, a protocol error closes it with its code.
//! - Ends with a close frame carrying the feed's reason (`close_code`), then waits up to
//!   [`CLOSE_WAIT`] for the client's close before the socket goes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::SessionIo;
use super::frame::{self, Incoming, Reader};
use crate::events::feed::{Feed, Item};

/// How long the client has to answer the server's close before the socket goes.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Bytes read from the socket at once (on the stack of a poll, not kept).
const READ_CHUNK: usize = 512;

pub struct Session {
    io: Box<dyn SessionIo>,
    feed: Feed,
    reader: Reader,
    /// The frame being written, and how much of it went.
    out: Option<(Vec<u8>, usize)>,
    /// Written frames not flushed yet.
    unflushed: bool,
    /// What is owed before the next event: a pong (the client's ping's payload), a ping.
    pong: Option<Vec<u8>>,
    ping: bool,
    /// The close frame to write (once set, no event is asked for).
    close: Option<Vec<u8>>,
    /// The client has closed (or broke the protocol): after our close, the socket goes at once.
    client_closed: bool,
    /// Our close frame is written: waiting for the client's.
    closing: bool,
    /// The next ping; while a pong is awaited, its deadline; while closing, the end of the wait.
    timer: Pin<Box<Sleep>>,
    every: Duration,
    pong_timeout: Duration,
    /// When the ping whose pong is awaited went.
    ping_sent: Option<Instant>,
}

impl Session {
    pub fn new(
        io: Box<dyn SessionIo>,
        feed: Feed,
        every: Duration,
        pong_timeout: Duration,
        max_client_message: usize,
    ) -> Session {
        let open = serde_json::json!({"type": "open", "last_event_id": feed.last()});
        Session {
            io,
            feed,
            reader: Reader::new(max_client_message),
            out: Some((frame::encode(frame::TEXT, open.to_string().as_bytes()), 0)),
            unflushed: false,
            pong: None,
            ping: false,
            close: None,
            client_closed: false,
            closing: false,
            timer: Box::pin(tokio::time::sleep(every)),
            every,
            pong_timeout,
            ping_sent: None,
        }
    }

    /// Ends the stream with the feed's `reason` (a close frame with its code).
    fn end(&mut self, reason: &'static str) {
        if self.close.is_none() && !self.closing {
            self.close = Some(frame::close(super::close_code(reason), reason));
        }
    }

    /// Reads what the client sent; `true` when the session is over (the client left).
    fn read(&mut self, cx: &mut Context<'_>) -> bool {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return true,
                Poll::Ready(Ok(())) => {}
            }
            let mut data = buf.filled();
            while !data.is_empty() {
                let (n, got) = self.reader.read(data);
                data = &data[n..];
                match got {
                    None => {}
                    Some(Incoming::Ping(payload)) => self.pong = Some(payload),
                    Some(Incoming::Pong) => {
                        if let Some(sent) = self.ping_sent.take()
                            && !self.closing
                        {
                            self.timer.as_mut().reset(sent + self.every);
                        }
                    }
                    Some(Incoming::Close(code)) => {
                        if self.closing {
                            return true; // the answer to ours
                        }
                        self.client_closed = true;
                        if self.close.is_none() {
                            self.close = Some(frame::close(code.unwrap_or(frame::NORMAL), ""));
                        }
                        return false;
                    }
                    // closed with the code; the client's close (or its leaving) is awaited like
                    // any other, what it still sends read and dropped
                    Some(Incoming::Fail(code, why)) if self.close.is_none() => {
                        self.close = Some(frame::close(code, why));
                    }
                    Some(Incoming::Fail(..)) => {}
                    // this reader keeps no messages (`Reader::new`)
                    Some(Incoming::Message { .. }) => {}
                }
            }
        }
    }

    /// The next frame to write, if any is due.
    fn next_frame(&mut self, cx: &mut Context<'_>) -> Option<Vec<u8>> {
        if let Some(p) = self.pong.take() {
            return Some(frame::encode(frame::PONG, &p));
        }
        if std::mem::take(&mut self.ping) {
            return Some(frame::encode(frame::PING, &[]));
        }
        if self.close.is_none() && !self.closing {
            match self.feed.poll_next(cx) {
                Poll::Ready(Item::Event(e)) => {
                    return Some(frame::encode(
                        frame::TEXT,
                        e.to_json().to_string().as_bytes(),
                    ));
                }
                Poll::Ready(Item::End(reason)) => self.end(reason),
                Poll::Pending => {}
            }
        }
        let close = self.close.take()?;
        self.closing = true;
        self.timer.as_mut().reset(Instant::now() + CLOSE_WAIT);
        Some(close)
    }
}

impl Session {
    /// Writes what is due, then flushes; `true` when the session is over (the socket failed, or
    /// the close handshake is done).
    fn write(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.out.is_none() {
                match self.next_frame(cx) {
                    Some(f) => self.out = Some((f, 0)),
                    None => break,
                }
            }
            let Some((buf, at)) = &mut self.out else {
                break;
            };
            match Pin::new(&mut self.io).poll_write(cx, &buf[*at..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(n)) => {
                    *at += n;
                    if *at == buf.len() {
                        self.out = None;
                        self.unflushed = true;
                    }
                }
                Poll::Pending => break,
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return true,
                Poll::Pending => {}
            }
        }
        self.closing && self.client_closed && self.out.is_none() && !self.unflushed
    }
}

impl Future for Session {
    type Output = ();

    /// Reads, writes, then the timer, until all three wait (the timer is polled last, after
    /// whatever reset it, so its waker is always registered).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = &mut *self;
        loop {
            if me.read(cx) || me.write(cx) {
                return Poll::Ready(());
            }
            if me.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if me.closing || me.close.is_some() {
                // no answer to our close, or it could not even be written: the socket goes
                return Poll::Ready(());
            }
            if me.ping_sent.is_some() {
                me.feed.end("ping_timeout");
                me.end("ping_timeout");
            } else {
                let now = Instant::now();
                me.ping = true;
                me.ping_sent = Some(now);
                me.timer.as_mut().reset(now + me.pong_timeout);
            }
        }
    }
}
