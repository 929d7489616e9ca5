//! Server-side TLS over rustls's unbuffered API, so the daemon owns every buffer and an idle
//! connection holds none: the TLS bytes read but not yet processed, the plaintext hyper has not
//! read yet, and the encrypted bytes not yet written are each freed as soon as they are empty.
//! (The buffered `ServerConnection` keeps a 4 KiB receive buffer for the life of a connection,
//! half of what an idle TLS connection cost.)

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::prefixed::Prefixed;

/// Bytes asked of the socket per read: a typical request's records fit; a larger record (up to
/// 16 KiB) takes a few reads. Kept small because an active HTTP/1 connection keeps this buffer
/// until it is parked.
const READ_CHUNK: usize = 4 * 1024;
/// Room made in `outgoing` per TLS record beyond its plaintext (header, nonce, tag, content type;
/// 22 to 29 bytes for the suites we offer). The room is zero-filled before rustls writes into it,
/// once per response, so it is kept tight; a suite needing more gets it on a second try.
const RECORD_OVERHEAD: usize = 32;
/// Largest plaintext per TLS record.
const MAX_FRAGMENT: usize = 16 * 1024;

pub struct TlsIo {
    sock: Prefixed<TcpStream>,
    conn: UnbufferedServerConnection,
    /// TLS bytes read from the socket and not yet processed.
    incoming: Vec<u8>,
    /// Decrypted bytes not yet read by the caller; `plain_pos` is how far it read.
    plaintext: Vec<u8>,
    plain_pos: usize,
    /// Encrypted bytes not yet written; `out_pos` is how far the socket took them.
    outgoing: Vec<u8>,
    out_pos: usize,
    peer_closed: bool,
    handshake_done: bool,
    /// While hyper serves an HTTP/1 connection, buffers keep their capacity between requests
    /// (no allocation per request); `release` frees them when the connection is parked. Off
    /// (free each buffer as soon as it is empty) for connections that are never parked (h2).
    retain: bool,
}

/// What one round of record processing did.
enum Step {
    /// Something changed (records consumed, data produced): go round again.
    Progress,
    /// Nothing more can be done without more bytes from the peer.
    NeedRead,
    /// Handshake complete and nothing to read: writing is possible.
    Writable,
    /// The peer sent close_notify (or the connection is closed).
    Closed,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsIo {
    /// Runs the handshake on `sock`.
    pub async fn accept(
        config: Arc<rustls::ServerConfig>,
        sock: Prefixed<TcpStream>,
    ) -> io::Result<TlsIo> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_err)?;
        let mut io = TlsIo {
            sock,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            plain_pos: 0,
            outgoing: Vec::new(),
            out_pos: 0,
            peer_closed: false,
            handshake_done: false,
            retain: false,
        };
        loop {
            match io.step()? {
                Step::Progress => {}
                Step::Writable => break,
                Step::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the handshake",
                    ));
                }
                Step::NeedRead => {
                    io.write_out().await?;
                    if io.handshake_done {
                        break;
                    }
                    if io.read_some().await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "closed during the handshake",
                        ));
                    }
                }
            }
        }
        io.write_out().await?;
        Ok(io)
    }

    /// Keep buffers between requests (see `retain`).
    pub fn set_retain(&mut self, on: bool) {
        self.retain = on;
        if !on {
            self.release();
        }
    }

    /// Frees every buffer that holds nothing (a parked connection holds none).
    pub fn release(&mut self) {
        if self.incoming.is_empty() && !self.retain {
            self.incoming = Vec::new();
        }
        if self.plain_pos == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plain_pos = 0;
        }
        if self.out_pos == self.outgoing.len() {
            self.outgoing = Vec::new();
            self.out_pos = 0;
        }
    }

    fn empty_out(&mut self) {
        if self.retain {
            self.outgoing.clear();
        } else {
            self.outgoing = Vec::new();
        }
        self.out_pos = 0;
    }

    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    pub fn socket(&self) -> &Prefixed<TcpStream> {
        &self.sock
    }

    /// Bytes already received (decrypted or not) that a socket-readiness wait would not see.
    pub fn has_buffered(&self) -> bool {
        self.plain_pos < self.plaintext.len() || !self.incoming.is_empty()
    }

    async fn read_some(&mut self) -> io::Result<usize> {
        let used = self.incoming.len();
        self.incoming.resize(used + READ_CHUNK, 0);
        let n = self.sock.read(&mut self.incoming[used..]).await;
        self.incoming.truncate(used + *n.as_ref().unwrap_or(&0));
        n
    }

    async fn write_out(&mut self) -> io::Result<()> {
        if self.out_pos < self.outgoing.len() {
            self.sock.write_all(&self.outgoing[self.out_pos..]).await?;
        }
        self.empty_out();
        self.sock.flush().await
    }

    /// Processes what `incoming` holds, one state at a time. Decrypted bytes go straight into
    /// `direct` when given (saving a copy and a buffer per request), the rest into `plaintext`.
    fn step(&mut self) -> io::Result<Step> {
        self.step_into(None)
    }

    fn step_into(&mut self, mut direct: Option<&mut ReadBuf<'_>>) -> io::Result<Step> {
        let UnbufferedStatus { mut discard, state } =
            self.conn.process_tls_records(&mut self.incoming[..]);
        let step = match state.map_err(tls_err)? {
            ConnectionState::ReadTraffic(mut rt) => {
                while let Some(rec) = rt.next_record() {
                    let AppDataRecord {
                        discard: d,
                        payload,
                    } = rec.map_err(tls_err)?;
                    if self.plain_pos == self.plaintext.len() {
                        self.plaintext.clear();
                        self.plain_pos = 0;
                    }
                    let mut rest = payload;
                    if self.plaintext.is_empty()
                        && let Some(b) = direct.as_mut()
                    {
                        let k = rest.len().min(b.remaining());
                        b.put_slice(&rest[..k]);
                        rest = &rest[k..];
                    }
                    self.plaintext.extend_from_slice(rest);
                    discard += d;
                }
                Step::Progress
            }
            ConnectionState::ReadEarlyData(mut ed) => {
                while let Some(rec) = ed.next_record() {
                    let AppDataRecord {
                        discard: d,
                        payload,
                    } = rec.map_err(tls_err)?;
                    self.plaintext.extend_from_slice(payload);
                    discard += d;
                }
                Step::Progress
            }
            ConnectionState::EncodeTlsData(mut enc) => {
                encode_into(&mut enc, &mut self.outgoing)?;
                Step::Progress
            }
            // queued in `outgoing`, which is always written out in order before anything else
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                Step::Progress
            }
            ConnectionState::BlockedHandshake => Step::NeedRead,
            ConnectionState::WriteTraffic(_) => {
                self.handshake_done = true;
                Step::Writable
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                self.peer_closed = true;
                Step::Closed
            }
            _ => Step::NeedRead,
        };
        if discard > 0 {
            self.incoming.drain(..discard);
        }
        if self.incoming.is_empty() && !self.retain {
            self.incoming = Vec::new();
        }
        Ok(step)
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.outgoing.len() {
            let n =
                ready!(Pin::new(&mut self.sock).poll_write(cx, &self.outgoing[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.empty_out();
        Poll::Ready(Ok(()))
    }

    /// Encrypts `data` (or a close_notify when `None`) into `outgoing`; returns the bytes taken.
    fn encrypt(&mut self, data: Option<&[u8]>) -> io::Result<usize> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming[..]);
            let written = match state.map_err(tls_err)? {
                ConnectionState::WriteTraffic(mut wt) => {
                    let start = self.outgoing.len();
                    let len = data.map_or(0, <[u8]>::len);
                    let room = len + RECORD_OVERHEAD * (len / MAX_FRAGMENT + 1);
                    self.outgoing.resize(start + room, 0);
                    let mut run = |out: &mut [u8]| match data {
                        Some(d) => wt.encrypt(d, out),
                        None => wt.queue_close_notify(out),
                    };
                    let n = match run(&mut self.outgoing[start..]) {
                        Ok(n) => n,
                        Err(EncryptError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => {
                            self.outgoing.resize(start + required_size, 0);
                            run(&mut self.outgoing[start..])
                                .map_err(|e| io::Error::other(e.to_string()))?
                        }
                        Err(e) => return Err(io::Error::other(e.to_string())),
                    };
                    self.outgoing.truncate(start + n);
                    Some(len)
                }
                // records that arrived meanwhile are decrypted and kept for the next read
                ConnectionState::ReadTraffic(mut rt) => {
                    while let Some(rec) = rt.next_record() {
                        let AppDataRecord {
                            discard: d,
                            payload,
                        } = rec.map_err(tls_err)?;
                        self.plaintext.extend_from_slice(payload);
                        discard += d;
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut enc) => {
                    encode_into(&mut enc, &mut self.outgoing)?;
                    None
                }
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    None
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                _ => return Err(io::Error::other("TLS connection not writable")),
            };
            if discard > 0 {
                self.incoming.drain(..discard);
            }
            if self.incoming.is_empty() && !self.retain {
                self.incoming = Vec::new();
            }
            if let Some(n) = written {
                return Ok(n);
            }
        }
    }
}

/// Appends the next handshake record to `out`, growing it to what rustls asks for.
fn encode_into<D>(
    enc: &mut rustls::unbuffered::EncodeTlsData<'_, D>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let start = out.len();
    out.resize(start + 4096, 0);
    let n = match enc.encode(&mut out[start..]) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(start + required_size, 0);
            enc.encode(&mut out[start..])
                .map_err(|e| io::Error::other(e.to_string()))?
        }
        Err(e) => return Err(io::Error::other(e.to_string())),
    };
    out.truncate(start + n);
    Ok(())
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plaintext.len() {
                let n = (this.plaintext.len() - this.plain_pos).min(buf.remaining());
                buf.put_slice(&this.plaintext[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plaintext.len() {
                    this.plaintext.clear();
                    this.plain_pos = 0;
                    if !this.retain {
                        this.plaintext = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let step = this.step_into(Some(buf))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            match step {
                Step::Progress => continue,
                Step::Closed => return Poll::Ready(Ok(())),
                Step::NeedRead | Step::Writable => {
                    ready!(this.poll_write_out(cx))?;
                    // no buffer until the socket has bytes: an idle connection polled by hyper
                    // allocates nothing
                    if !this.sock.has_prefix() {
                        ready!(this.sock.inner.poll_read_ready(cx))?;
                    }
                    let used = this.incoming.len();
                    this.incoming.reserve(READ_CHUNK);
                    let spare = this.incoming.spare_capacity_mut();
                    let mut rb = ReadBuf::uninit(&mut spare[..READ_CHUNK]);
                    let r = Pin::new(&mut this.sock).poll_read(cx, &mut rb);
                    let n = rb.filled().len();
                    // SAFETY: ReadBuf guarantees its first `n` bytes were written.
                    unsafe { this.incoming.set_len(used + n) };
                    if this.incoming.is_empty() && !this.retain {
                        this.incoming = Vec::new();
                    }
                    ready!(r)?;
                    if n == 0 {
                        // EOF without close_notify: end of stream all the same
                        this.peer_closed = true;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // keep what waits to be sent bounded: send the backlog first when it is large
        if this.outgoing.len() - this.out_pos > 64 * 1024 {
            ready!(this.poll_write_out(cx))?;
        }
        let n = buf.len().min(MAX_FRAGMENT * 4);
        let n = this.encrypt(Some(&buf[..n]))?;
        // start sending now; what the socket does not take yet goes with the next write or flush
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.sock).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.handshake_done && this.outgoing.is_empty() && !this.peer_closed {
            // best effort: a close_notify, once
            let _ = this.encrypt(None);
            this.handshake_done = false;
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.sock).poll_shutdown(cx)
    }
}
