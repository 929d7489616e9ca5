//! `GET /v1/events` with `Upgrade: websocket` (RFC 6455, HTTP/1.1), or an HTTP/2 extended
//! CONNECT with `:protocol websocket` (RFC 8441) on the same path: the same event feed as the
//! Server-Sent Events stream, as text frames.
//!
//! - Frames: `{"type":"open","last_event_id":N}` first, then each event as the JSON the SSE
//!   stream puts in `data:` (`id`, `type`, `at`, `instance_id`, `data`). Resume with `?after=`
//!   (or `Last-Event-ID`), filter with `types=` and `instance=`, as for SSE.
//! - A ping every `events.ping_interval_ms`; no pong within `events.pong_timeout_ms`: close
//!   1008 `ping_timeout`.
//! - Every close by the server has a code and the feed's reason: 1001 `draining` (reconnect
//!   elsewhere), 1013 `slow_consumer` (resume from the log), 1011 `unavailable`, 1008
//!   `ping_timeout` and the ends of access (`key_revoked`, `key_expired`, `token_expired`,
//!   `account_suspended`). Messages from the client are read (pings answered) and otherwise
//!   ignored.
//!
//! The handler answers 101 (HTTP/2: 200) and leaves the session in the response's extensions
//! ([`Upgrade`]); the connection (src/server) takes the socket back from hyper once the 101 is
//! written (HTTP/2: awaits the upgraded stream) and runs the session on it. The session
//! (`session.rs`) is a state machine the connection's task polls; `frame.rs` writes and reads
//! the frames. (tungstenite is used for the handshake's `Sec-WebSocket-Accept` only: its codec
//! keeps buffers for a connection's life, and the test clients use it.)

mod agent;
mod frame;
mod session;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::{Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Body;
use super::call::Call;
use super::feed_query::{BEARER_PROTOCOL, offered_protocols};
use crate::error::{Error, Result};
use crate::service::events::FeedRequest;

/// The socket a session runs on, whatever the listener (plain, TLS, after a PROXY header).
pub trait SessionIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> SessionIo for T {}

pub type Session =
    Box<dyn FnOnce(Box<dyn SessionIo>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// In an accepting answer's extensions: what to run once the socket is the session's. HTTP/1.1
/// (101): the connection takes the socket back from hyper. HTTP/2 (200 to an extended CONNECT):
/// the stream, which hyper hands over (`on_h2`) once the answer is sent.
#[derive(Clone)]
pub struct Upgrade(
    Arc<Mutex<Option<Session>>>,
    Arc<Mutex<Option<hyper::upgrade::OnUpgrade>>>,
);

impl Upgrade {
    pub fn take(&self) -> Option<Session> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// A session to run on an HTTP/1 socket once hyper lets go of it.
    pub fn session(s: Session) -> Upgrade {
        Upgrade(Arc::new(Mutex::new(Some(s))), Arc::new(Mutex::new(None)))
    }

    /// The HTTP/2 stream to come, for a session over HTTP/2.
    pub fn on_h2(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The subprotocol a client names (with `bearer.<token>`) to be told it was understood: a
/// browser fails a WebSocket whose answer selects none of the subprotocols it offered.
pub const PROTOCOL: &str = "gpuproxy.events";

/// Whether the request asks for a WebSocket (an HTTP/1.1 Upgrade or an HTTP/2 extended CONNECT).
pub fn requested(req: &hyper::Request<hyper::body::Incoming>) -> bool {
    extended_connect(req)
        || req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// An HTTP/2 extended CONNECT for a WebSocket (RFC 8441: `:method CONNECT`, `:protocol
/// websocket`), which hyper accepts because the server enables the connect protocol.
pub fn extended_connect(req: &hyper::Request<hyper::body::Incoming>) -> bool {
    req.method() == hyper::Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Client frames are small (pongs, a close): a message bigger than this closes the stream (1009).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// A checked WebSocket opening: over HTTP/2 (an extended CONNECT) or HTTP/1.1 with the
/// answer's `Sec-WebSocket-Accept`.
pub(super) struct Opening {
    h2: bool,
    accept: Option<String>,
}

/// Checks that `c` opens a WebSocket as RFC 6455 (HTTP/1.1) or RFC 8441 (HTTP/2) says: a 400
/// naming what is wrong otherwise.
pub(super) fn opening(c: &Call) -> Result<Opening> {
    let h2 = extended_connect(&c.req);
    let h = c.req.headers();
    if !h2 && c.req.version() != Version::HTTP_11 {
        return Err(Error::bad_request(
            "a WebSocket opens with an HTTP/1.1 Upgrade or an HTTP/2 extended CONNECT (RFC 8441)",
        ));
    }
    let has_token = |name, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !h2 && !has_token(CONNECTION, "upgrade") {
        return Err(Error::bad_request(
            "a WebSocket upgrade needs `Connection: Upgrade`",
        ));
    }
    if h.get("sec-websocket-version").map(|v| v.as_bytes()) != Some(b"13") {
        return Err(Error::bad_request("`Sec-WebSocket-Version` must be 13"));
    }
    // HTTP/1.1 only (RFC 8441 drops the key and its answer): 16 random bytes in base64
    let accept = if h2 {
        None
    } else {
        let key = h
            .get("sec-websocket-key")
            .map(|v| v.as_bytes())
            .filter(|k| k.len() == 24 && k.ends_with(b"=="))
            .ok_or_else(|| Error::bad_request("`Sec-WebSocket-Key` must be 16 bytes in base64"))?;
        Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key))
    };
    Ok(Opening { h2, accept })
}

/// The answer that opens the WebSocket (101, or 200 over HTTP/2), carrying `session` for the
/// connection to run (and `protocol`, the subprotocol selected, if any).
pub(super) fn opened(
    c: &mut Call,
    o: Opening,
    protocol: Option<&'static str>,
    session: Session,
) -> Result<Response<Body>> {
    let on_h2 = o.h2.then(|| hyper::upgrade::on(&mut c.req));
    let mut r = Response::new(http_body_util::Empty::new().map_err(|e| match e {}).boxed());
    let h = r.headers_mut();
    if let Some(accept) = o.accept {
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            "sec-websocket-accept",
            HeaderValue::from_str(&accept).map_err(Error::internal)?,
        );
    }
    if let Some(p) = protocol {
        h.insert("sec-websocket-protocol", HeaderValue::from_static(p));
    }
    *r.status_mut() = if o.h2 {
        StatusCode::OK
    } else {
        StatusCode::SWITCHING_PROTOCOLS
    };
    r.extensions_mut().insert(Upgrade(
        Arc::new(Mutex::new(Some(session))),
        Arc::new(Mutex::new(on_h2)),
    ));
    Ok(r)
}

/// The agent channel of `id` (its token checked): the session is `agent::Channel`.
pub(super) fn accept_agent(
    mut c: Call,
    id: crate::agents::tokens::AgentIdentity,
    since: tokio::time::Instant,
) -> Result<Response<Body>> {
    let o = opening(&c)?;
    let api = c.api.clone();
    let session: Session = Box::new(move |io| Box::pin(agent::session(io, api, id, since)));
    opened(&mut c, o, None, session)
}

pub(super) async fn accept(mut c: Call, q: FeedRequest) -> Result<Response<Body>> {
    let o = opening(&c)?;
    let ours = offered_protocols(&c.req).any(|p| p == PROTOCOL);
    if !ours && offered_protocols(&c.req).any(|p| p.starts_with(BEARER_PROTOCOL)) {
        return Err(Error::bad_request(
            "a token in `Sec-WebSocket-Protocol` (`bearer.<token>`) needs the subprotocol `gpuproxy.events` offered with it",
        ));
    }
    let feed = crate::service::events::open(&c.api, c.principal()?, q).await?;
    let cut = feed.cut_slot();
    let cfg = &c.api.config.events;
    let (every, pong) = (cfg.ping_interval_ms.get(), cfg.pong_timeout_ms.get());
    let session: Session = Box::new(move |io| {
        Box::pin(session::Session::new(
            io,
            feed,
            every,
            pong,
            MAX_CLIENT_MESSAGE,
        ))
    });
    let mut r = opened(&mut c, o, ours.then_some(PROTOCOL), session)?;
    r.extensions_mut().insert(cut);
    Ok(r)
}

/// The close code for a feed's end reason (RFC 6455 §7.4.1).
fn close_code(reason: &str) -> u16 {
    match reason {
        // going away
        "draining" => 1001,
        // try again later
        "slow_consumer" => 1013,
        // policy violation: the credential's access ended, not a fault, not to be retried with it
        "ping_timeout"
        | "key_revoked"
        | "key_expired"
        | "token_expired"
        | "account_suspended"
        | "invalid_credentials" => 1008,
        // internal error
        _ => 1011,
    }
}
