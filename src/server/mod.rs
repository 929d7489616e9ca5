//! Listeners, TLS, hyper serving and the drain on shutdown.
//!
//! [`Daemon::run`] takes listeners that are already bound (tests bind port 0) and a shutdown future.
//! Each accepted socket becomes one task: TLS handshake (HTTPS listener), protocol choice (ALPN, or
//! the HTTP/2 preface on the plain listener), then hyper's HTTP/1 or HTTP/2 connection directly
//! (not the `auto` builder, which costs ~8 KB more per connection; STACK-NOTES.md). On shutdown the
//! listeners close, every connection is asked to finish gracefully (HTTP/1 closes once idle, HTTP/2
//! sends GOAWAY), and `run` returns when all are gone or the grace period is over.

pub mod signals;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics::counter;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, Body, ConnCtx, respond};
use crate::config::{Config, ServerConfig};
use crate::conn::{ConnGuard, ListenerKind, Protocol};
use crate::metrics::{ACCEPT_ERRORS_TOTAL, TLS_HANDSHAKE_FAILURES_TOTAL};
use crate::state::{AppState, Phase};
use tls::CertStore;

/// The sockets a daemon serves; `None` leaves that listener off.
#[derive(Debug, Default)]
pub struct Listeners {
    pub https: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses the configuration names.
    pub async fn bind(cfg: &ServerConfig) -> io::Result<Listeners> {
        async fn one(addr: Option<SocketAddr>, what: &str) -> io::Result<Option<TcpListener>> {
            match addr {
                None => Ok(None),
                Some(a) => TcpListener::bind(a).await.map(Some).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot bind {what} listener {a}: {e}"))
                }),
            }
        }
        Ok(Listeners {
            https: one(cfg.https_listen.0, "https").await?,
            http: one(cfg.http_listen.0, "http").await?,
            metrics: one(cfg.metrics_listen.0, "metrics").await?,
        })
    }
}

/// One daemon: its state, its certificate and its metrics handle, ready to run.
pub struct Daemon {
    state: Arc<AppState>,
    certs: Option<Arc<CertStore>>,
    tls: Option<TlsAcceptor>,
    prometheus: PrometheusHandle,
}

impl Daemon {
    /// Loads what must be valid before any socket is served (the TLS pair).
    pub fn new(config: Config) -> Result<Daemon, String> {
        let prometheus = crate::metrics::install();
        let certs = match config.server.https_listen.0 {
            Some(_) => Some(CertStore::load(
                &config.server.tls_cert,
                &config.server.tls_key,
            )?),
            None => None,
        };
        crate::metrics::init_series(&api::router::Route::ALL.map(api::router::Route::label));
        let tls = certs
            .clone()
            .map(|c| TlsAcceptor::from(tls::server_config(c)));
        Ok(Daemon {
            state: AppState::new(Arc::new(config)),
            certs,
            tls,
            prometheus,
        })
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// The certificate store, for SIGHUP reloads.
    pub fn cert_store(&self) -> Option<Arc<CertStore>> {
        self.certs.clone()
    }

    /// Serves until `shutdown` resolves, then drains (see the module header).
    pub async fn run(self, listeners: Listeners, shutdown: impl Future<Output = ()>) {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let state = self.state;

        let upkeep = tokio::spawn(crate::metrics::upkeep(self.prometheus.clone()));
        let metrics_task = listeners
            .metrics
            .map(|l| tokio::spawn(serve_metrics(l, self.prometheus.clone(), cancel.clone())));

        let mut accept_tasks = Vec::new();
        if let (Some(l), Some(tls)) = (listeners.https, self.tls) {
            log_listening(&l, "https");
            accept_tasks.push(tokio::spawn(accept_loop(
                l,
                ListenerKind::Https,
                Some(tls),
                state.clone(),
                cancel.clone(),
                tracker.clone(),
            )));
        }
        if let Some(l) = listeners.http {
            log_listening(&l, "http");
            accept_tasks.push(tokio::spawn(accept_loop(
                l,
                ListenerKind::Http,
                None,
                state.clone(),
                cancel.clone(),
                tracker.clone(),
            )));
        }

        state.set_phase(Phase::Ready);
        shutdown.await;

        state.set_phase(Phase::Draining);
        let delay = state.config.server.drain_delay();
        if !delay.is_zero() {
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "/ready now 503; still accepting for the drain delay"
            );
            tokio::time::sleep(delay).await;
        }
        let open = state.conns.open();
        tracing::info!(
            open_connections = open,
            "shutting down: draining connections"
        );
        cancel.cancel();
        for t in accept_tasks {
            let _ = t.await;
        }
        tracker.close();
        let grace = state.config.server.shutdown_grace();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                open_connections = state.conns.open(),
                grace_ms = grace.as_millis() as u64,
                "grace period over; closing the remaining connections"
            );
        } else {
            tracing::info!("all connections drained");
        }
        if let Some(t) = metrics_task {
            t.abort();
        }
        upkeep.abort();
    }
}

fn log_listening(l: &TcpListener, what: &str) {
    if let Ok(a) = l.local_addr() {
        tracing::info!(listener = what, addr = %a, "listening");
    }
}

async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    tls: Option<TlsAcceptor>,
    state: Arc<AppState>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let guard = state.conns.register(kind);
                tracker.spawn(serve_conn(
                    state.clone(),
                    tls.clone(),
                    stream,
                    peer,
                    kind,
                    guard,
                    cancel.clone(),
                ));
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: accepting again at once would spin, so wait a little
                // (growing to 1 s) while open connections keep being served.
                counter!(ACCEPT_ERRORS_TOTAL).increment(1);
                tracing::warn!(listener = kind.as_str(), error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    // The listener drops here: new connections are refused from now on.
}

async fn serve_conn(
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: ListenerKind,
    mut guard: ConnGuard,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let cfg = &state.config.server;
    match tls {
        Some(acceptor) => {
            let hs = tokio::time::timeout(cfg.tls_handshake_timeout(), acceptor.accept(stream));
            let tls_stream = tokio::select! {
                r = hs => r,
                _ = cancel.cancelled() => return,
            };
            let tls_stream = match tls_stream {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    counter!(TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                    tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    counter!(TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                    tracing::debug!(client = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let proto = match tls_stream.get_ref().1.alpn_protocol() {
                Some(p) if p == tls::ALPN_H2 => Protocol::Http2,
                _ => Protocol::Http1,
            };
            guard.set_protocol(proto);
            let ctx = ConnCtx {
                peer,
                listener,
                proto,
            };
            serve_http(state, TokioIo::new(tls_stream), ctx, cancel).await;
        }
        None => {
            let sniff = tokio::time::timeout(cfg.header_read_timeout(), is_h2_preface(&stream));
            let proto = tokio::select! {
                r = sniff => match r {
                    Ok(Ok(true)) => Protocol::Http2,
                    Ok(Ok(false)) => Protocol::Http1,
                    _ => return,
                },
                _ = cancel.cancelled() => return,
            };
            guard.set_protocol(proto);
            let ctx = ConnCtx {
                peer,
                listener,
                proto,
            };
            serve_http(state, TokioIo::new(stream), ctx, cancel).await;
        }
    }
    drop(guard);
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection starts with the HTTP/2 prior-knowledge preface (h2c, e.g. HAProxy
/// `proto h2`); looks without consuming.
async fn is_h2_preface(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial preface: more bytes are on their way; peek would return at once, so wait.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls a hyper connection (HTTP/1 or HTTP/2; their `graceful_shutdown` methods share no trait)
/// until it ends, starting a graceful shutdown when the daemon drains.
macro_rules! drive {
    ($conn:expr, $cancel:expr, $peer:expr) => {{
        let mut conn = std::pin::pin!($conn);
        let res = tokio::select! {
            r = conn.as_mut() => r,
            _ = $cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = res {
            tracing::debug!(client = %$peer, error = %e, "connection ended with an error");
        }
    }};
}

async fn serve_http<I>(state: Arc<AppState>, io: I, ctx: ConnCtx, cancel: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let cfg = &state.config.server;
    let header_timeout = cfg.header_read_timeout();
    let streams = cfg.h2_max_concurrent_streams;
    let st = state.clone();
    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(api::handle(st, ctx, req).await) }
    });
    match ctx.proto {
        Protocol::Http1 => {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true)
                .serve_connection(io, svc);
            drive!(conn, cancel, ctx.peer);
        }
        Protocol::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(streams)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .serve_connection(io, svc);
            drive!(conn, cancel, ctx.peer);
        }
    }
}

/// The metrics listener: Prometheus text on `GET /metrics`, nothing else.
async fn serve_metrics(listener: TcpListener, handle: PrometheusHandle, cancel: CancellationToken) {
    log_listening(&listener, "metrics");
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = cancel.cancelled() => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(metrics_response(&req, &handle)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn metrics_response(
    req: &Request<hyper::body::Incoming>,
    handle: &PrometheusHandle,
) -> Response<Body> {
    if req.uri().path() != "/metrics" {
        let e = crate::error::Error::not_found(req.uri().path());
        return respond::error_response(&e, "metrics");
    }
    let mut resp = Response::new(respond::full(handle.render()));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
