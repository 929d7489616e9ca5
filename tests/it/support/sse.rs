//! A Server-Sent Events client for tests: `GET /v1/events` over TLS (HTTP/1.1), read event by
//! event as the daemon sends them.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// One event (comments are skipped).
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: serde_json::Value,
    pub retry: Option<u64>,
}

pub struct Sse {
    body: Incoming,
    buf: String,
    pub status: u16,
    _conn: tokio::task::JoinHandle<()>,
}

/// What [`Sse::open`] got when the stream did not open: the status and the body.
pub type Refused = (u16, String);

impl Sse {
    /// Opens `path` (e.g. `/v1/events?types=...`) as the holder of `token`. `rcvbuf` shrinks
    /// the client's socket receive buffer (a client that stops reading fills it soon).
    pub async fn open(
        addr: SocketAddr,
        token: &str,
        path: &str,
        last_event_id: Option<i64>,
        rcvbuf: Option<u32>,
    ) -> Result<Sse, Refused> {
        Sse::open_from(None, addr, token, path, last_event_id, rcvbuf).await
    }

    /// [`Sse::open`] from the loopback address `src` (through HAProxy: the client it sees).
    pub async fn open_from(
        src: Option<&str>,
        addr: SocketAddr,
        token: &str,
        path: &str,
        last_event_id: Option<i64>,
        rcvbuf: Option<u32>,
    ) -> Result<Sse, Refused> {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n).unwrap();
        }
        if let Some(src) = src {
            sock.bind(SocketAddr::new(src.parse().unwrap(), 0)).unwrap();
        }
        let tcp = sock.connect(addr).await.expect("connect");
        let tls = super::ws::tls_http1(tcp).await;
        let (mut sender, conn) = http1::handshake(TokioIo::new(tls)).await.expect("h1");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::get(path)
            .header("host", "localhost")
            .header("accept", "text/event-stream");
        // an empty token: no Authorization header (a browser's EventSource cannot send one)
        if !token.is_empty() {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .expect("response head");
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            return Err((status, String::from_utf8_lossy(&body).into_owned()));
        }
        assert_eq!(
            resp.headers()["content-type"],
            "text/event-stream",
            "an event stream"
        );
        // over HTTP/1.1 the daemon writes the stream itself, the body ending with the connection
        assert_eq!(resp.headers()["connection"], "close");
        assert!(resp.headers().contains_key("x-request-id"));
        Ok(Sse {
            body: resp.into_body(),
            buf: String::new(),
            status,
            _conn: conn,
        })
    }

    /// The next event within `within`; `None` when the stream ended or nothing came in time.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let end = tokio::time::Instant::now() + within;
        loop {
            while let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                if let Some(e) = parse(&block) {
                    return Some(e);
                }
            }
            let frame = tokio::time::timeout_at(end, self.body.frame())
                .await
                .ok()??;
            if let Ok(data) = frame.ok()?.into_data() {
                self.buf
                    .push_str(std::str::from_utf8(&data).expect("UTF-8"));
            }
        }
    }

    /// Events until one of `kind` whose `data` satisfies `done` (included), each within
    /// `within` of the previous one; panics when the stream ends or stalls first.
    pub async fn until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&SseEvent) -> bool,
    ) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        loop {
            let e = self
                .next(within)
                .await
                .unwrap_or_else(|| panic!("the stream ended or stalled; so far: {seen:#?}"));
            let stop = done(&e);
            seen.push(e);
            if stop {
                return seen;
            }
        }
    }
}

fn parse(block: &str) -> Option<SseEvent> {
    let mut e = SseEvent::default();
    let mut data = String::new();
    let mut any = false;
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "" => {} // a comment
            "id" => {
                e.id = value.parse().ok();
                any = true;
            }
            "event" => {
                e.event = value.to_owned();
                any = true;
            }
            "data" => {
                data.push_str(value);
                any = true;
            }
            "retry" => e.retry = value.parse().ok(),
            _ => {}
        }
    }
    if !any {
        return None;
    }
    e.data = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
    Some(e)
}
