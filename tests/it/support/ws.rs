//! A WebSocket client for `GET /v1/events` over TLS (tokio-tungstenite on a rustls stream).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// TLS over `tcp` offering HTTP/1.1 only (an upgrade and an event stream are HTTP/1.1 things),
/// trusting the test daemon's self-signed certificate.
pub async fn tls_http1(tcp: TcpStream) -> TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(super::testkit::insecure_client_config(
        &[b"http/1.1"],
        rustls::DEFAULT_VERSIONS,
    ));
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS")
}

/// What the upgrade got when it was refused: the status and the body.
pub type Refused = (u16, String);

/// Opens `path` as a WebSocket as the holder of `token` (empty: no `Authorization`), with extra
/// request headers.
pub async fn open(
    addr: SocketAddr,
    token: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, Refused> {
    let tls = tls_http1(TcpStream::connect(addr).await.expect("connect")).await;
    let mut req = format!("wss://localhost{path}")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    // an empty token: no Authorization header (a browser's WebSocket cannot send one)
    if !token.is_empty() {
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    for (k, v) in headers {
        h.insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::client_async(req, tls).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("WebSocket handshake: {e}"),
    }
}

/// A WebSocket over one HTTP/2 stream (RFC 8441).
pub type H2Ws = WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Opens `path` as a WebSocket over HTTP/2 (an extended CONNECT with `:protocol websocket` on a
/// TLS connection that negotiated h2); also returns the connection's request sender, so the
/// test can send other requests on the same connection meanwhile.
pub async fn open_h2(
    addr: SocketAddr,
    token: &str,
    path: &str,
) -> Result<
    (
        H2Ws,
        hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    ),
    Refused,
> {
    use http_body_util::BodyExt;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let connector = tokio_rustls::TlsConnector::from(super::testkit::insecure_client_config(
        &[b"h2"],
        rustls::DEFAULT_VERSIONS,
    ));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(format!("https://localhost{path}"))
        .header("sec-websocket-version", "13")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = send.send_request(req).await.expect("extended CONNECT");
    if resp.status() != 200 {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        return Err((status, String::from_utf8_lossy(&body).into_owned()));
    }
    let io = hyper::upgrade::on(&mut resp)
        .await
        .expect("the stream upgraded");
    let ws = WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(io), Role::Client, None)
        .await;
    Ok((ws, send))
}

/// The next text message as JSON (pings are answered and skipped); `Err` with the close frame's
/// code and reason when the server closed; panics when nothing comes within `within`.
pub async fn next<S>(
    ws: &mut WebSocketStream<S>,
    within: Duration,
) -> Result<serde_json::Value, (u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(within, ws.next())
            .await
            .expect("a WebSocket message in time");
        match m {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).expect("JSON")),
            Some(Ok(Message::Close(Some(f)))) => {
                return Err((u16::from(f.code), f.reason.to_string()));
            }
            Some(Ok(Message::Close(None))) | None => return Err((0, String::new())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("WebSocket error: {e}"),
        }
    }
}
