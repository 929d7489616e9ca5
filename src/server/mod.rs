//! Listeners, accepting, the metrics listener and the drain on shutdown.
//!
//! [`Daemon::run`] takes listeners that are already bound (tests bind port 0) and a shutdown future.
//! Each accepted socket takes a place under the global cap and becomes one task
//! (`connection.rs`: PROXY header, per-IP admission, TLS, hyper's HTTP/1 or HTTP/2 connection —
//! chosen directly, not through the `auto` builder, which costs ~8 KB more per connection:
//! docs/design.md, "Measured crate behaviour"). On shutdown the listeners close, every connection is asked to finish
//! gracefully (HTTP/1 closes once idle, HTTP/2 sends GOAWAY), and `run` returns when all are gone
//! or the grace period is over.

mod connection;
pub mod notify;
pub mod prefixed;
pub mod proxy;
mod raw_stream;
pub mod signals;
pub mod stream;
pub mod tls;
pub mod tls_io;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, Body, respond};
use crate::config::{Config, ServerConfig};
use crate::conn::reaper::{self, ReapPolicy};
use crate::conn::table::TableConfig;
use crate::conn::{ConnTable, ListenerKind, fdlimit};
use crate::metrics::{CONNECTIONS_MAX, FD_LIMIT};
use crate::state::{AppState, Phase};
use connection::ConnEnv;
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
        // the configured backlog (tokio's bind asks for 1024 whatever the host allows)
        let backlog = cfg.listen_backlog.get();
        let one = |addr: Option<SocketAddr>, what: &str| -> io::Result<Option<TcpListener>> {
            let Some(a) = addr else { return Ok(None) };
            let bind = || -> io::Result<TcpListener> {
                let socket = if a.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket.bind(a)?;
                socket.listen(backlog)
            };
            bind().map(Some).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot bind {what} listener {a}: {e}"))
            })
        };
        Ok(Listeners {
            https: one(cfg.https_listen.0, "https")?,
            http: one(cfg.http_listen.0, "http")?,
            metrics: one(cfg.metrics_listen.0, "metrics")?,
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
    /// Loads what must be valid before any socket is served (the TLS pair), raises the file
    /// descriptor limit and sizes the connection cap from it.
    pub fn new(config: Config) -> Result<Daemon, String> {
        let prometheus = crate::metrics::install();
        let certs = match config.server.https_listen.0 {
            Some(_) => Some(
                CertStore::load(&config.server.tls_cert, &config.server.tls_key).map_err(|e| {
                    format!("invalid configuration: server.tls_cert/server.tls_key: {e}")
                })?,
            ),
            None => None,
        };
        // each module creates the series its alerts need at 0 (the API's own come with its
        // request metrics)
        metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES_TOTAL).absolute(0);
        metrics::counter!(crate::metrics::ACCEPT_ERRORS_TOTAL).absolute(0);
        crate::conn::init_series();
        crate::ratelimit::init_series();
        crate::cache::swr::init_series();
        let tls = certs
            .clone()
            .map(|c| TlsAcceptor::from(tls::server_config(c)));

        let c = &config.connections;
        let limits =
            fdlimit::raise_nofile().map_err(|e| format!("cannot read RLIMIT_NOFILE: {e}"))?;
        let max_total = fdlimit::size_cap(c.max, c.fd_reserve, limits.soft, c.clamp_to_fd_limit)
            .map_err(|e| e.to_string())?;
        if c.max > max_total {
            tracing::warn!(
                configured = c.max,
                clamped = max_total,
                fd_limit = limits.soft,
                "connections.max clamped to the file-descriptor limit"
            );
        }
        gauge!(FD_LIMIT).set(limits.soft as f64);
        gauge!(CONNECTIONS_MAX).set(max_total as f64);
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let shards = match c.shards {
            0 => (workers * 4).next_power_of_two(),
            n => n,
        };
        let table = ConnTable::new(TableConfig {
            shards,
            max_total,
            max_per_ip: c.max_per_ip.get(),
            v6_prefix: c.ipv6_prefix_len,
        });
        tracing::info!(
            max_connections = max_total,
            max_per_ip = c.max_per_ip,
            fd_limit = limits.soft,
            shards,
            "connection caps"
        );
        let db = match &config.secrets.database_url {
            Some(url) => Some(crate::accounts::Db::new(url, &config.database)?),
            None => {
                tracing::warn!("DATABASE_URL is unset: authenticated routes answer 503");
                None
            }
        };
        let read_db = match &config.secrets.database_read_url {
            Some(url) => Some(crate::accounts::Db::new(url, &config.database)?),
            None => None,
        };
        let redis = match &config.secrets.redis_url {
            Some(url) => Some(crate::cache::Redis::connect(url, &config.redis)?),
            None => {
                tracing::warn!("REDIS_URL is unset: running on in-process caches only");
                None
            }
        };
        if config.secrets.jwt_secret.is_none() {
            tracing::warn!(
                "JWT_SECRET is unset: POST /v1/auth/token answers 503, tokens are refused"
            );
        }
        Ok(Daemon {
            state: AppState::new(Arc::new(config), table, limits.soft, db, read_db, redis),
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
        let cfg = state.config.clone();
        let env = Arc::new(ConnEnv {
            state: api::Api::new(state.clone()),
            tls: self.tls,
            trusted: cfg.proxy_protocol.trusted(),
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        });

        let upkeep = tokio::spawn(crate::metrics::upkeep(self.prometheus.clone()));
        let reaper = tokio::spawn(reaper::run(
            state.conns.clone(),
            ReapPolicy {
                idle_timeout_ms: cfg.connections.idle_timeout_ms.ms(),
                first_request_timeout_ms: cfg.server.header_read_timeout_ms.ms(),
                max_age_ms: cfg.connections.max_age_ms.ms(),
                write_timeout_ms: cfg.connections.write_timeout_ms.ms(),
                force_close_after_ms: cfg.connections.force_close_after_ms.ms(),
            },
            cfg.connections.reap_interval_ms.get(),
        ));
        let mut background = state.auth.spawn_tasks(&cfg);
        if !cfg.agents.public_url.is_empty() {
            // read (and hashed) now, not on the first download's request path
            crate::agents::install::binary(&cfg.agents);
        }
        background.extend(state.agents.listen());
        if let Some(hub) = &state.events {
            background.extend(hub.spawn());
            background.push(tokio::spawn(
                crate::service::events::end_streams_without_access(state.auth.clone(), hub.clone()),
            ));
        }
        if let (Some(db), Some(hub)) = (&state.db, &state.events) {
            let sender = crate::events::webhook::sender::Sender::new(
                db.clone(),
                &cfg.webhooks,
                hub.activity(),
            );
            background.push(sender.spawn());
        }
        background.extend(crate::background::start(crate::background::services(
            &state,
        )));
        if let Some(redis) = state.redis.clone() {
            background.push(tokio::spawn(crate::ratelimit::peers::run(
                cfg.ratelimit.clone(),
                state.limits.clone(),
                redis.clone(),
            )));
        }
        let metrics_task = listeners.metrics.map(|l| {
            tokio::spawn(serve_metrics(
                l,
                self.prometheus.clone(),
                state.clone(),
                cancel.clone(),
            ))
        });

        let mut accept_tasks = Vec::new();
        for (l, kind) in [
            (
                listeners.https.filter(|_| env.tls.is_some()),
                ListenerKind::Https,
            ),
            (listeners.http, ListenerKind::Http),
        ] {
            if let Some(l) = l {
                log_listening(&l, kind.as_str());
                accept_tasks.push(tokio::spawn(accept_loop(
                    l,
                    kind,
                    env.clone(),
                    tracker.clone(),
                )));
            }
        }

        state.set_phase(Phase::Ready);
        let notifier = notify::Notifier::from_env();
        notifier.ready();
        let watchdog = notifier.spawn_watchdog();
        shutdown.await;

        state.set_phase(Phase::Draining);
        notifier.stopping();
        let delay = cfg.server.drain_delay();
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
        // event streams end now with their reconnect hint (they would hold the drain otherwise)
        if let Some(hub) = &state.events {
            hub.drain();
        }
        // so do agent channels (1001 `draining`: the agents reconnect elsewhere)
        state.agents.drain();
        cancel.cancel();
        for t in accept_tasks {
            let _ = t.await;
        }
        tracker.close();
        let grace = cfg.server.shutdown_grace();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                open_connections = state.conns.open(),
                grace_ms = grace.as_millis() as u64,
                "grace period over; closing the remaining connections"
            );
        } else {
            tracing::info!("all connections drained");
        }
        // last uses seen during the drain are written before exit, and the agents' goings
        state.auth.flush_last_used().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), state.agents.journal.flush()).await;
        reaper.abort();
        if let Some(w) = watchdog {
            w.abort();
        }
        for t in background {
            t.abort();
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
    env: Arc<ConnEnv>,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(5);
    let table = env.state.conns.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = env.cancel.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                match table.reserve(kind) {
                    Ok(reservation) => {
                        tracker.spawn(connection::serve(
                            env.clone(),
                            stream,
                            peer,
                            kind,
                            reservation,
                        ));
                    }
                    Err(reason) if kind == ListenerKind::Http => {
                        tracker.spawn(connection::refuse_plain(stream, reason));
                    }
                    Err(_) => drop(stream),
                }
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: accepting again at once would spin, so wait a little
                // (growing to 1 s) while open connections keep being served.
                table.count_accept_error();
                tracing::warn!(listener = kind.as_str(), error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = env.cancel.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    // The listener drops here: new connections are refused from now on.
}

/// The metrics listener: Prometheus text on `GET /metrics`, nothing else.
async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    state: Arc<AppState>,
    cancel: CancellationToken,
) {
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
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let handle = handle.clone();
                let state = state.clone();
                async move { Ok::<_, Infallible>(metrics_response(&req, &handle, &state)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `GET /metrics`, `GET /health`, and `GET /stats` with the top client addresses (operator-only data, so it is
/// served here rather than on the API listeners).
fn metrics_response(
    req: &Request<hyper::body::Incoming>,
    handle: &PrometheusHandle,
    state: &Arc<AppState>,
) -> Response<Body> {
    if req.uri().path() == "/stats" {
        return api::health::stats_response(state, true);
    }
    // liveness on the plain listener too, for container and orchestrator probes
    if req.uri().path() == "/health" {
        return api::health::health();
    }
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
