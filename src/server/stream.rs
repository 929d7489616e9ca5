//! The byte streams a connection goes through.
//!
//! - [`Prefixed`] (in `prefixed.rs`) replays bytes already read before reading the socket again.
//! - [`ClientIo`] is the client socket, plain or TLS ([`super::tls_io::TlsIo`], boxed: a rustls
//!   session is large, and an idle connection's task should stay small), with a readiness check
//!   that needs no buffer.
//! - [`Tracked`] is what hyper reads and writes: it stamps the connection's activity time whenever
//!   bytes arrive, so a connection is never parked in the middle of a request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub use super::prefixed::Prefixed;
use crate::conn::ConnShared;

/// A client socket, plain or TLS.
pub enum ClientIo {
    Plain(Prefixed<TcpStream>),
    Tls(Box<super::tls_io::TlsIo>),
}

impl ClientIo {
    fn socket(&self) -> &Prefixed<TcpStream> {
        match self {
            ClientIo::Plain(s) => s,
            ClientIo::Tls(t) => t.socket(),
        }
    }

    /// TLS buffers kept between requests while served (`true`), or freed (`false`: parked).
    pub fn set_active(&mut self, on: bool) {
        if let ClientIo::Tls(t) = self {
            t.set_retain(on);
        }
    }

    /// Caps the kernel's send buffer (`SO_SNDBUF`; the kernel doubles it): what a client that
    /// stops reading can hold in this socket. Best effort: a refusal leaves the kernel's sizing.
    pub fn set_send_buffer(&self, bytes: u32) {
        use std::os::fd::AsRawFd;
        let fd = self.socket().inner.as_raw_fd();
        let v = bytes.min(i32::MAX as u32) as libc::c_int;
        // SAFETY: a valid socket descriptor (owned by `self`) and a `c_int` option of its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    /// Ready when a read would make progress (or fail), without reading.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let ClientIo::Tls(t) = self
            && t.has_buffered()
        {
            return Poll::Ready(Ok(()));
        }
        let s = self.socket();
        if s.has_prefix() {
            return Poll::Ready(Ok(()));
        }
        s.inner.poll_read_ready(cx)
    }
}

/// Forwards one IO call to the plain or the TLS stream.
macro_rules! either {
    ($self:expr, $s:ident => $call:expr) => {
        match $self.get_mut() {
            ClientIo::Plain($s) => {
                let $s = Pin::new($s);
                $call
            }
            ClientIo::Tls(t) => {
                let $s = Pin::new(t.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => s.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(s) => s.is_write_vectored(),
            ClientIo::Tls(_) => false,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_shutdown(cx))
    }
}

/// What hyper reads and writes: the client stream (with any read-ahead replayed first), stamping
/// the connection's activity time on every read that brings bytes.
pub struct Tracked {
    pub io: Prefixed<ClientIo>,
    pub shared: Arc<ConnShared>,
    /// How much of a head's end (`\r\n\r\n`) the swallowed bytes have matched so far.
    pub head_end: u8,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.shared.touch_read();
        }
        r
    }
}

impl Tracked {
    /// Notes whether a write went through or waits for the client to read (the reaper drops a
    /// connection whose writes wait too long).
    fn note_write<T>(&mut self, r: &Poll<io::Result<T>>) {
        match r {
            Poll::Pending => self.shared.write_blocked(),
            Poll::Ready(_) => self.shared.write_progressed(),
        }
        if self.shared.is_streaming() {
            // an event stream never parks: its TLS buffers go whenever they are empty
            self.io.inner.set_active(false);
        }
    }
}

impl Tracked {
    /// While the connection swallows a response head: takes bytes up to and including the end
    /// of the head (`\r\n\r\n`) without sending them; returns how many it took.
    fn swallow(&mut self, buf: &[u8]) -> usize {
        for (i, b) in buf.iter().enumerate() {
            let want = if self.head_end.is_multiple_of(2) {
                b'\r'
            } else {
                b'\n'
            };
            self.head_end = if *b == want {
                self.head_end + 1
            } else {
                u8::from(*b == b'\r')
            };
            if self.head_end == 4 {
                self.head_end = 0;
                self.shared.head_swallowed();
                return i + 1;
            }
        }
        buf.len()
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shared.swallowing_head() {
            return Poll::Ready(Ok(this.swallow(buf)));
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note_write(&r);
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shared.swallowing_head() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return Poll::Ready(Ok(this.swallow(first)));
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note_write(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.note_write(&r);
        r
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
