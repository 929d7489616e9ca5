//! One client connection, from accept to close:
//!
//! 1. PROXY header, on listeners that enable it (trusted peers must send one, others must not);
//! 2. registration in the connection table under the client address (per-IP cap);
//! 3. TLS handshake with a timeout (HTTPS listener); protocol from ALPN, or the h2c preface;
//! 4. serving. HTTP/1 connections alternate between *waiting* — only the socket held, until it is
//!    readable — and *active* — hyper serving — and go back to waiting (giving hyper's buffers
//!    back) after `connections.park_after_ms` without traffic. HTTP/2 connections stay in hyper.
//!
//! The reaper or the drain ask a connection to close through its `ConnShared::close`; a waiting
//! connection closes at once, an active one gracefully (HTTP/1 `Connection: close` after the
//! current response, HTTP/2 GOAWAY).

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics::counter;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::proxy::{self, HeaderError};
use super::stream::{ClientIo, Prefixed, Tracked};
use crate::api::{self, Body, ConnCtx};
use crate::conn::table::Reservation;
use crate::conn::{
    CloseReason, ConnHandle, ConnShared, ListenerKind, Phase, Protocol, RejectReason,
};
use crate::error::Error;
use crate::events::hub::CutSlot;
use crate::metrics::TLS_HANDSHAKE_FAILURES_TOTAL;
use crate::types::ip::Cidr;

/// What every connection task of one daemon shares.
pub struct ConnEnv {
    /// The API's handlers and the daemon's services behind them.
    pub state: Arc<api::Api>,
    pub tls: Option<TlsAcceptor>,
    pub trusted: Vec<Cidr>,
    pub cancel: CancellationToken,
    /// Serving runs as a task of its own, spawned here when set-up is done, so the long-lived
    /// task of an idle connection carries none of the set-up steps' state.
    pub tracker: tokio_util::task::TaskTracker,
}

pub async fn serve(
    env: Arc<ConnEnv>,
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: ListenerKind,
    reservation: Reservation,
) {
    let _ = stream.set_nodelay(true);
    let state = &env.state;
    let cfg = &state.config;

    let tls = env.tls.clone().filter(|_| listener == ListenerKind::Https);
    // A peer outside `trusted_cidrs` is its own client (it may not send a PROXY header): it is
    // counted against its address's cap at once, not only after the header wait, so silent
    // untrusted peers cannot hold global slots past their per-IP cap.
    let proxied = cfg.proxy_protocol.enabled_for(listener);
    let trusted = proxied && env.trusted.iter().any(|c| c.contains(peer.ip()));
    let mut reservation = Some(reservation);
    let mut early = None;
    if proxied && !trusted {
        match admit(reservation.take(), peer, listener, tls.is_some()) {
            Ok(h) => early = Some(h),
            Err(reason) => {
                if tls.is_none() {
                    refuse_plain(stream, reason).await;
                }
                return;
            }
        }
    }

    // 1. PROXY protocol
    let (client, prefix) = if proxied {
        let timeout = cfg.proxy_protocol.header_timeout_ms.get();
        let read = Box::pin(tokio::time::timeout(
            timeout,
            proxy::read_header(&mut stream, peer, trusted),
        ));
        let res = tokio::select! {
            r = read => r,
            _ = env.cancel.cancelled() => return,
        };
        match res {
            Ok(Ok(x)) => x,
            Ok(Err(HeaderError::Untrusted)) => {
                state.conns.count_reject(RejectReason::ProxyUntrusted);
                tracing::debug!(%peer, "PROXY header from an untrusted peer; closed");
                return;
            }
            Ok(Err(HeaderError::Invalid(why))) => {
                state.conns.count_reject(RejectReason::ProxyInvalid);
                tracing::debug!(%peer, reason = why, "bad PROXY header; closed");
                return;
            }
            Ok(Err(HeaderError::Io(_))) => return,
            Err(_) => {
                let r = if trusted {
                    RejectReason::ProxyInvalid
                } else {
                    RejectReason::ProxyUntrusted
                };
                state.conns.count_reject(r);
                return;
            }
        }
    } else {
        (peer, bytes::Bytes::new())
    };

    // 2. per-IP admission under the real client address (done already for untrusted peers)
    let handle = match early.map_or_else(
        || admit(reservation.take(), client, listener, tls.is_some()),
        Ok,
    ) {
        Ok(h) => h,
        Err(reason) => {
            if tls.is_none() {
                refuse_plain(stream, reason).await;
            }
            return;
        }
    };
    let shared = handle.shared.clone();
    let sock = Prefixed::new(stream, prefix);

    // 3. TLS and protocol
    let (io, proto) = match tls {
        Some(acceptor) => {
            // Boxed, like the serving futures below: the task's own state stays small for the
            // whole life of the connection instead of being sized for its largest step.
            let hs = Box::pin(tokio::time::timeout(
                cfg.server.tls_handshake_timeout(),
                super::tls_io::TlsIo::accept(acceptor.config().clone(), sock),
            ));
            let res = tokio::select! {
                r = hs => r,
                _ = env.cancel.cancelled() => return,
                _ = shared.close.notified() => return,
            };
            let tls_stream = match res {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    counter!(TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                    tracing::debug!(%client, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    counter!(TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                    state.conns.count_close(CloseReason::HandshakeTimeout);
                    return;
                }
            };
            let proto = match tls_stream.alpn_protocol() {
                Some(p) if p == super::tls::ALPN_H2 => Protocol::Http2,
                _ => Protocol::Http1,
            };
            (ClientIo::Tls(Box::new(tls_stream)), proto)
        }
        None => {
            let mut sock = sock;
            let sniff =
                tokio::time::timeout(cfg.server.header_read_timeout(), is_h2_preface(&mut sock));
            let proto = tokio::select! {
                r = sniff => match r {
                    Ok(Ok(true)) => Protocol::Http2,
                    Ok(Ok(false)) => Protocol::Http1,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        state.conns.count_close(CloseReason::HeaderTimeout);
                        return;
                    }
                },
                _ = env.cancel.cancelled() => return,
                _ = shared.close.notified() => return,
            };
            (ClientIo::Plain(sock), proto)
        }
    };
    shared.set_protocol(proto);
    shared.set_phase(Phase::Waiting);
    shared.touch();
    let ctx = ConnCtx {
        peer: client,
        listener,
        proto,
    };
    let io = Prefixed::new(io, bytes::Bytes::new());
    drop(shared);
    match proto {
        // After a TLS handshake the first request may already sit decrypted in rustls (it can
        // arrive with the client's Finished), invisible to a socket-readiness wait: start hyper.
        Protocol::Http1 => {
            let tls = listener == ListenerKind::Https;
            env.tracker
                .spawn(serve_h1(env.clone(), io, ctx, handle, tls));
        }
        Protocol::Http2 => {
            env.tracker.spawn(serve_h2(env.clone(), io, ctx, handle));
        }
    }
}

/// The per-request service: counts the request on its connection and runs the API.
#[derive(Clone)]
struct ApiService {
    state: Arc<api::Api>,
    ctx: ConnCtx,
    shared: Arc<ConnShared>,
    /// A WebSocket session a 101 answer left (`api::websocket`): run on the socket once hyper
    /// has written the answer and lets go of it (HTTP/1 only).
    upgrade: Arc<std::sync::Mutex<Option<api::websocket::Upgrade>>>,
}

impl hyper::service::Service<Request<Incoming>> for ApiService {
    type Response = Response<Body>;
    type Error = Infallible;
    /// Boxed so the future is `Unpin`, which `poll_without_shutdown` needs.
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (state, ctx, shared) = (self.state.clone(), self.ctx, self.shared.clone());
        let upgrade = self.upgrade.clone();
        if client_wants_close(&req) {
            shared.set_wants_close();
        }
        Box::pin(async move {
            shared.request_started();
            let _done = InFlight(&shared);
            let mut resp = api::handle(state.clone(), ctx, req).await;
            if let Some(slot) = resp.extensions_mut().remove::<CutSlot>() {
                // a stalled event stream: HTTP/1.1 carries only it and its writes are blocked,
                // so the socket goes now; HTTP/2 says GOAWAY (other streams finish)
                let shared = shared.clone();
                slot.set(Box::new(move || match ctx.proto {
                    crate::conn::Protocol::Http1 => shared.kill(CloseReason::SlowConsumer),
                    crate::conn::Protocol::Http2 => {
                        shared.request_close(CloseReason::SlowConsumer);
                    }
                }));
            }
            if let Some(u) = resp.extensions_mut().remove::<api::websocket::Upgrade>() {
                match u.on_h2() {
                    // HTTP/2: the stream is the session's once the 200 is sent; the connection
                    // goes on serving other streams
                    Some(stream) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let (Ok(io), Some(session)) = (stream.await, u.take()) else {
                                return;
                            };
                            shared.request_started();
                            shared.set_streaming();
                            tokio::select! {
                                _ = session(Box::new(TokioIo::new(io))) => {}
                                _ = shared.kill.notified() => {}
                            }
                            shared.request_finished();
                            crate::alloc::after_stream();
                        });
                    }
                    None => *upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(u),
                }
            }
            if resp
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes() == b"text/event-stream")
            {
                shared.set_streaming();
                if ctx.proto == crate::conn::Protocol::Http1 && resp.status() == StatusCode::OK {
                    // written without hyper: see `raw_stream`
                    let (session, head) = super::raw_stream::session(resp);
                    shared.swallow_next_head();
                    *upgrade.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(api::websocket::Upgrade::session(session));
                    return Ok(head);
                }
            }
            // draining: an HTTP/1 client learns it must not send on this connection again (hyper
            // closes it after this answer); HTTP/2 gets GOAWAY instead
            if ctx.proto == crate::conn::Protocol::Http1
                && state.phase() == crate::state::Phase::Draining
            {
                resp.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok(resp)
        })
    }
}

/// Registers the connection under `client` (its per-IP cap), from its global reservation.
fn admit(
    reservation: Option<Reservation>,
    client: SocketAddr,
    listener: ListenerKind,
    tls: bool,
) -> Result<ConnHandle, RejectReason> {
    match reservation {
        Some(r) => r.register(client, listener, tls),
        // (each path takes the reservation once)
        None => Err(RejectReason::ProxyInvalid),
    }
}

/// Marks the connection active and builds what hyper serves: the service and the tracked stream.
fn activate(
    state: &Arc<api::Api>,
    io: Prefixed<ClientIo>,
    ctx: ConnCtx,
    shared: &Arc<ConnShared>,
) -> (ApiService, TokioIo<Tracked>) {
    shared.set_phase(Phase::Active);
    let svc = ApiService {
        state: state.clone(),
        ctx,
        shared: shared.clone(),
        upgrade: Default::default(),
    };
    let tracked = Tracked {
        io,
        shared: shared.clone(),
        head_end: 0,
    };
    (svc, TokioIo::new(tracked))
}

/// `Connection: close`, or HTTP/1.0 without `keep-alive`.
fn client_wants_close(req: &Request<Incoming>) -> bool {
    let conn = req
        .headers()
        .get(hyper::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    match req.version() {
        hyper::Version::HTTP_10 => !conn.is_some_and(|c| c.contains("keep-alive")),
        hyper::Version::HTTP_11 => conn.is_some_and(|c| c.contains("close")),
        _ => false,
    }
}

/// Marks the request finished even when the client goes away mid-request.
struct InFlight<'a>(&'a ConnShared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

enum Wake {
    Readable,
    Close(CloseReason),
    Gone,
}

/// Waits, holding only the socket, until the client sends something or the connection must close.
async fn wait_readable(env: &ConnEnv, io: &Prefixed<ClientIo>, shared: &ConnShared) -> Wake {
    if io.has_prefix() {
        return Wake::Readable;
    }
    shared.set_phase(Phase::Waiting);
    let readable = || async {
        match poll_fn(|cx| io.inner.poll_read_ready(cx)).await {
            Ok(()) => Wake::Readable,
            Err(_) => Wake::Gone,
        }
    };
    tokio::select! {
        biased;
        _ = env.cancel.cancelled() => {
            // a request may be on the wire already: serve what comes within the linger
            let linger = env.state.config.server.drain_linger_ms.get();
            tokio::time::timeout(linger, readable())
                .await
                .unwrap_or(Wake::Close(CloseReason::Drain))
        }
        _ = shared.close.notified() => Wake::Close(shared.close_reason().unwrap_or(CloseReason::Drain)),
        w = readable() => w,
    }
}

async fn serve_h1(
    env: Arc<ConnEnv>,
    mut io: Prefixed<ClientIo>,
    ctx: ConnCtx,
    handle: ConnHandle,
    mut start_active: bool,
) {
    let shared = &handle.shared;
    let state = &env.state;
    loop {
        let wake = if std::mem::take(&mut start_active) {
            Wake::Readable
        } else {
            wait_readable(&env, &io, shared).await
        };
        match wake {
            Wake::Readable => {}
            Wake::Close(reason) => {
                state.conns.count_close(reason);
                // an idle connection closed politely (TLS close_notify, then FIN), so a client
                // about to reuse it sees it end rather than a protocol violation
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(Duration::from_millis(200), io.shutdown()).await;
                return;
            }
            Wake::Gone => return,
        }
        // Boxed: a waiting connection's task carries none of the serving state inline.
        io.inner.set_active(true);
        let next = Box::pin(serve_h1_active(&env, io, ctx, shared)).await;
        match next {
            Served::Parked(mut parked) => {
                parked.inner.set_active(false);
                io = parked;
                crate::alloc::after_park();
            }
            // run here, with hyper's connection (and the serving future) gone
            Served::Session(tracked, session) => {
                run_upgraded(state, tracked, shared, session).await;
                return;
            }
            Served::Done => return,
        }
    }
}

/// How serving an HTTP/1 connection with hyper ended.
enum Served {
    /// Idle long enough to be parked: the socket, with any bytes hyper had read ahead.
    Parked(Prefixed<ClientIo>),
    /// A session (WebSocket, or an event stream written without hyper) owns the socket now.
    Session(Tracked, api::websocket::Session),
    /// The connection is over.
    Done,
}

/// Serves with hyper until the connection ends or goes idle long enough to be parked: then
/// hyper's connection is ended without closing the socket, and the socket (with any bytes hyper
/// had read ahead) is handed back; likewise to a session a 101 answer left.
async fn serve_h1_active(
    env: &ConnEnv,
    io: Prefixed<ClientIo>,
    ctx: ConnCtx,
    shared: &Arc<ConnShared>,
) -> Served {
    let state = &env.state;
    let cfg = &state.config;
    let park_after = cfg.connections.park_after_ms;
    let (svc, tracked) = activate(state, io, ctx, shared);
    let upgrade = svc.upgrade.clone();
    let mut conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.server.header_read_timeout())
        // an unfinished head holds at most this much (hyper's default is about 400 KiB)
        .max_buf_size(cfg.server.max_header_bytes.get() as usize)
        .keep_alive(true)
        .serve_connection(tracked, svc);
    let mut parking = false;
    let mut closing: Option<CloseReason> = None;
    // draining: when an idle connection is closed (see `server.drain_linger_ms`)
    let mut linger: Option<tokio::time::Instant> = None;
    let result = loop {
        let linger_timer = async {
            match linger {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        let park_timer = async {
            if park_after.ms() == 0 || parking || closing.is_some() {
                std::future::pending::<()>().await
            }
            // Idle past the mark yet not parked (a request in flight, or none served yet): check
            // again a whole period later, not every millisecond.
            let idle = shared.idle_ms();
            let wait = if idle >= park_after.ms() {
                park_after.ms()
            } else {
                park_after.ms() - idle
            };
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        };
        tokio::select! {
            r = poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
            _ = park_timer => {
                if shared.inflight() == 0
                    && shared.quiet_since_response()
                    && shared.idle_ms() >= park_after.ms()
                {
                    parking = true;
                    Pin::new(&mut conn).graceful_shutdown();
                }
            }
            _ = env.cancel.cancelled(), if closing.is_none() => {
                // not at once: a request may be on the wire; what arrives is answered with
                // `Connection: close`, and an idle connection closes after the linger
                closing = Some(CloseReason::Drain);
                linger = Some(tokio::time::Instant::now() + cfg.server.drain_linger_ms.get());
            }
            _ = linger_timer => {
                linger = None;
                Pin::new(&mut conn).graceful_shutdown();
            }
            _ = shared.kill.notified() => {
                // dropped with hyper's state: the socket closes now, whatever it was writing
                state.conns.count_close(shared.close_reason().unwrap_or(CloseReason::Forced));
                return Served::Done;
            }
            _ = shared.close.notified(), if closing.is_none() => {
                closing = Some(shared.close_reason().unwrap_or(CloseReason::Drain));
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    match result {
        Err(e) => {
            tracing::debug!(client = %ctx.peer, error = %e, "HTTP/1 connection error");
            if e.is_timeout() {
                state.conns.count_close(CloseReason::HeaderTimeout);
                return Served::Done;
            }
            // a request hyper could not parse got its 400: close gently, or the rest of what
            // the client is still sending makes the kernel answer with a reset that can reach
            // the client before the 400 does
            let most = linger_bytes(cfg.server.max_body_bytes.get());
            linger_close(conn.into_parts().io.into_inner(), most).await;
            Served::Done
        }
        Ok(()) => {
            let session = upgrade
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .and_then(|u| u.take());
            if let Some(session) = session {
                // the 101 is written (or swallowed, for an event stream): the socket (and what
                // hyper read past the request) is the session's now
                let parts = conn.into_parts();
                let mut tracked = parts.io.into_inner();
                if !parts.read_buf.is_empty() {
                    tracked.io.unread(parts.read_buf);
                }
                return Served::Session(tracked, session);
            }
            if let Some(reason) = closing {
                state.conns.count_close(reason);
                return Served::Done;
            }
            if !parking || shared.wants_close() {
                // the client closed, asked for `Connection: close`, or its request's body was
                // left unread (a 413 from its length, a refusal before the body): a lingering
                // close, so a client still sending reads its answer and a TLS close_notify, not
                // a reset (a closed client ends it at once)
                let most = linger_bytes(cfg.server.max_body_bytes.get());
                linger_close(conn.into_parts().io.into_inner(), most).await;
                return Served::Done;
            }
            let parts = conn.into_parts();
            let mut io = parts.io.into_inner().io;
            if !parts.read_buf.is_empty() {
                io.unread(parts.read_buf);
            }
            Served::Parked(io)
        }
    }
}

/// How long a refused connection is read (and dropped) after its answer, and at least how much
/// (more when bodies may be larger: [`linger_bytes`]).
const LINGER_BYTES: usize = 256 * 1024;
const LINGER_FOR: Duration = Duration::from_secs(2);

/// The most a refused connection is read after its answer: what a client may still be sending,
/// a request body up to four times `server.max_body_bytes` (a body over the limit is refused
/// too, and its sender is still writing it), bounded in time by `LINGER_FOR` anyway.
fn linger_bytes(max_body: u64) -> usize {
    (max_body.saturating_mul(4) as usize).max(LINGER_BYTES)
}

/// Closes a connection after an error answer the way servers avoid losing it (nginx's
/// lingering close): the write side is shut (TLS `close_notify`, then FIN), then what the client
/// still sends is read and dropped until it closes too, `most` bytes or `LINGER_FOR`.
async fn linger_close(mut io: Tracked, most: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(LINGER_FOR, async {
        let _ = io.shutdown().await;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < most {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// Runs an event stream's session (a WebSocket, or an HTTP/1.1 SSE stream written without hyper)
/// on its connection: it counts as a request in flight (the reaper leaves it alone) and ends when
/// the session does or the connection is killed; then the allocator is asked to give back what
/// the stream held.
async fn run_upgraded(
    state: &api::Api,
    tracked: Tracked,
    shared: &Arc<ConnShared>,
    session: api::websocket::Session,
) {
    shared.request_started();
    let _done = InFlight(shared);
    shared.set_streaming();
    let sndbuf = state.config.events.stream_send_buffer_bytes;
    if sndbuf > 0 {
        tracked.io.inner.set_send_buffer(sndbuf);
    }
    tokio::select! {
        _ = session(Box::new(tracked)) => {}
        _ = shared.kill.notified() => {
            state.conns.count_close(shared.close_reason().unwrap_or(CloseReason::Forced));
        }
    }
    crate::alloc::after_stream();
}

async fn serve_h2(env: Arc<ConnEnv>, io: Prefixed<ClientIo>, ctx: ConnCtx, handle: ConnHandle) {
    let env = &*env;
    let shared = &handle.shared;
    let state = &env.state;
    let cfg = &state.config;
    let (svc, tracked) = activate(state, io, ctx, shared);
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // WebSockets over HTTP/2 (RFC 8441): `GET /v1/events` as an extended CONNECT
        .enable_connect_protocol()
        .max_concurrent_streams(cfg.server.h2_max_concurrent_streams.get())
        .max_header_list_size(cfg.server.max_header_bytes.get())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .serve_connection(tracked, svc);
    let mut conn = std::pin::pin!(conn);
    let (res, reason) = tokio::select! {
        r = conn.as_mut() => (r, None),
        _ = env.cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            (conn.await, Some(CloseReason::Drain))
        }
        _ = shared.close.notified() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => (r, Some(shared.close_reason().unwrap_or(CloseReason::Drain))),
                _ = shared.kill.notified() => (Ok(()), shared.close_reason()),
            }
        }
        _ = shared.kill.notified() => (Ok(()), shared.close_reason()),
    };
    if let Some(r) = reason {
        state.conns.count_close(r);
    }
    if let Err(e) = res {
        tracing::debug!(client = %ctx.peer, error = %e, "HTTP/2 connection error");
    }
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection starts with the HTTP/2 prior-knowledge preface (h2c, e.g. HAProxy
/// `proto h2`). Reads only as far as needed and puts what it read back in front.
async fn is_h2_preface(sock: &mut Prefixed<TcpStream>) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let mut byte = [0u8; 24];
    while buf.len() < H2_PREFACE.len() {
        let want = H2_PREFACE.len() - buf.len();
        let n = sock.read(&mut byte[..want]).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
        if buf[..] != H2_PREFACE[..buf.len()] {
            break;
        }
    }
    let is_h2 = buf[..] == H2_PREFACE[..];
    sock.unread(bytes::Bytes::from(buf));
    Ok(is_h2)
}

/// Over a cap on the plain listener: a minimal 503 with `Connection: close`, then close.
pub async fn refuse_plain(stream: TcpStream, reason: RejectReason) {
    let err = Error::over_capacity(reason.as_str());
    let bytes = api::respond::raw_http1_error(&err);
    // best effort, without waiting: the point is to shed load
    let _ = stream.try_write(&bytes);
    let mut sink = [0u8; 2048];
    let _ = stream.try_read(&mut sink); // unread request bytes would turn our FIN into a RST
    drop(stream);
}
