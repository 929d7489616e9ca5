//! A small HTTPS client for tests: HTTP/1.1 or HTTP/2 chosen by ALPN, one connection reused for
//! several requests, and the server certificate it was shown.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One client connection.
pub struct Conn {
    sender: Sender,
    pub alpn: Option<Vec<u8>>,
    pub peer_cert: Vec<u8>,
    pub tls_version: Option<rustls::ProtocolVersion>,
    /// Resolves when the server closed the connection (or sent GOAWAY and finished).
    pub closed: tokio::task::JoinHandle<()>,
}

/// Why [`Conn::try_send`] got no answer.
#[derive(Debug)]
pub enum Unsent {
    /// The connection would not take it: nothing reached the server.
    NotSent(hyper::Error),
    /// Sent, and lost.
    Failed(hyper::Error),
}

pub struct Resp {
    pub status: u16,
    pub version: Version,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The body as text (for assertion messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Conn {
    /// Connects over TLS offering `alpn` (e.g. `&[b"h2", b"http/1.1"]`) and speaks what the
    /// server picked.
    pub async fn tls(addr: SocketAddr, alpn: &[&[u8]]) -> std::io::Result<Conn> {
        Self::tls_versions(addr, alpn, rustls::DEFAULT_VERSIONS).await
    }

    /// Like [`Conn::tls`], offering only the given TLS versions.
    pub async fn tls_versions(
        addr: SocketAddr,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        Self::tls_over(tcp, alpn, versions).await
    }

    /// TLS over a socket the caller opened (e.g. from another source address, or after writing
    /// a PROXY header).
    pub async fn tls_over(
        tcp: TcpStream,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> std::io::Result<Conn> {
        let connector = tokio_rustls::TlsConnector::from(super::testkit::insecure_client_config(
            alpn, versions,
        ));
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        let (_, session) = tls.get_ref();
        let version = session.protocol_version();
        let alpn = session.alpn_protocol().map(|p| p.to_vec());
        let peer_cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let io = TokioIo::new(tls);
        let h2 = alpn.as_deref() == Some(b"h2");
        let mut conn = Self::handshake(io, h2, alpn, peer_cert).await?;
        conn.tls_version = version;
        Ok(conn)
    }

    /// Plain HTTP/1.1 (or h2 with prior knowledge when `h2`).
    pub async fn plain(addr: SocketAddr, h2: bool) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        Self::plain_over(tcp, h2).await
    }

    pub async fn plain_over(tcp: TcpStream, h2: bool) -> std::io::Result<Conn> {
        Self::handshake(TokioIo::new(tcp), h2, None, Vec::new()).await
    }

    async fn handshake<I>(
        io: I,
        h2: bool,
        alpn: Option<Vec<u8>>,
        peer_cert: Vec<u8>,
    ) -> std::io::Result<Conn>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, closed) = if h2 {
            let (s, c) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            (
                Sender::H2(s),
                tokio::spawn(async move {
                    let _ = c.await;
                }),
            )
        } else {
            let (s, c) = http1::handshake(io).await.map_err(std::io::Error::other)?;
            (
                Sender::H1(s),
                tokio::spawn(async move {
                    let _ = c.await;
                }),
            )
        };
        Ok(Conn {
            sender,
            alpn,
            peer_cert,
            tls_version: None,
            closed,
        })
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Resp, hyper::Error> {
        let resp: Response<hyper::body::Incoming> = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// Like [`Conn::send`], telling a request the connection refused before sending it (closed,
    /// or the server said GOAWAY: a client would open a new connection) from one that failed
    /// after it was sent.
    pub async fn try_send(&mut self, req: Request<Full<Bytes>>) -> Result<Resp, Unsent> {
        let ready = match &mut self.sender {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        };
        if let Err(e) = ready {
            return Err(Unsent::NotSent(e));
        }
        self.send(req).await.map_err(|e| {
            // a stream the server's GOAWAY already excluded was not processed (RFC 9113 §6.8):
            // a client retries it on a new connection
            if e.is_canceled() || format!("{e:?}").contains("GoAway(") {
                Unsent::NotSent(e)
            } else {
                Unsent::Failed(e)
            }
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Resp, hyper::Error> {
        self.send(request("GET", path, Bytes::new())).await
    }
}

/// A request with the headers every test needs (Host for HTTP/1.1).
pub fn request(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(body.into()))
        .unwrap()
}

/// One GET on a fresh TLS connection.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    let mut c = Conn::tls(addr, &[b"h2", b"http/1.1"])
        .await
        .expect("connect");
    c.get(path).await.expect("request")
}

/// A TCP connection from a chosen loopback source address (127.0.0.x), so tests can act as
/// several clients.
pub async fn connect_from(src: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src.parse().unwrap(), 0))?;
    sock.connect(addr).await
}

/// One request on a fresh HTTP/1.1 TLS connection with `Authorization: Bearer <token>`, a JSON
/// body when `body` is not empty, and any extra headers.
pub async fn authed(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut c = Conn::tls(addr, &[b"http/1.1"]).await.expect("connect");
    let mut req = request(method, path, Bytes::copy_from_slice(body.as_bytes()));
    let h = req.headers_mut();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    if !body.is_empty() {
        h.insert("content-type", "application/json".parse().unwrap());
    }
    for (k, v) in headers {
        h.insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    c.send(req).await.expect("request")
}
