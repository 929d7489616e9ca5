//! Reading request bodies: size-limited, JSON only; the JSON is read into its type by
//! `service::body::parse` (errors that name the field at fault).

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use crate::config::ServerConfig;
use crate::error::{Error, Kind, Side};

/// The body as `T`; an empty body is `None` (the caller decides whether that is allowed).
pub async fn json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: &ServerConfig,
) -> Result<Option<T>, Error> {
    let bytes = read(req, limit).await?;
    crate::service::body::parse(&bytes)
}

/// The raw body (JSON content type checked, size-limited), for callers that also hash it.
pub async fn read(req: Request<Incoming>, limit: &ServerConfig) -> Result<Bytes, Error> {
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let mime = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(Error::new(
                Kind::UnsupportedMediaType,
                Side::Client,
                "request bodies must be `application/json`",
            ));
        }
    }
    limited(req.into_body(), limit).await
}

/// Any body (JSON or not), size-limited: 413 past `server.max_body_bytes`, 400 when it cannot be
/// read.
/// The body, at most `server.max_body_bytes`, arrived within `server.body_read_timeout_ms` (a
/// client that trickles a body does not hold its connection and this task for as long as it
/// likes: 408, and the connection closes, the body being unread).
pub async fn limited(body: Incoming, limit: &ServerConfig) -> Result<Bytes, Error> {
    let bytes = limit.max_body_bytes.get();
    let timeout = limit.body_read_timeout_ms.get();
    let read = Limited::new(body, bytes as usize).collect();
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(Error::new(
            Kind::RequestTimeout,
            Side::Client,
            format!(
                "the request body did not arrive within {} ms (server.body_read_timeout_ms)",
                timeout.as_millis()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Error::payload_too_large(bytes))
        }
        Ok(Err(_)) => Err(Error::bad_request("the request body could not be read")),
        Ok(Ok(b)) => Ok(b.to_bytes()),
    }
}
