//! The pooled upstream HTTP client every provider call goes through: hyper-util's client over
//! rustls (webpki roots; plain `http://` too, for the sandbox), keep-alive with a bounded idle pool
//! per host, HTTP/2 where the server offers it in ALPN, a connect timeout, and one attempt's
//! timeout covering the request and the whole body. Retries and breakers are `resilience`'s job.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::UpstreamError;
use crate::config::ProvidersConfig;

/// Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    request_timeout: Duration,
    max_body: usize,
}

/// One attempt's outcome when the provider answered at all.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpClient {
    pub fn new(cfg: &ProvidersConfig) -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
        http.set_nodelay(true);
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms))
            .build(https);
        HttpClient {
            inner,
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            max_body: usize::try_from(cfg.max_body_bytes).unwrap_or(usize::MAX),
        }
    }

    /// One attempt, bounded by `request_timeout` and by `limit` (what is left of the call's
    /// deadline), whichever is sooner.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<Reply, UpstreamError> {
        let attempt = async {
            let resp = self.inner.request(req).await.map_err(classify)?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, self.max_body)
                .collect()
                .await
                .map_err(|e| UpstreamError::Reset(short(&e.to_string())))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.request_timeout.min(limit), attempt)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }
}

impl HttpClient {
    /// Sends without reading the body: the response head within `request_timeout`, the body
    /// left to the caller to stream (passthrough).
    pub async fn stream(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, UpstreamError> {
        match tokio::time::timeout(self.request_timeout, self.inner.request(req)).await {
            Ok(r) => r.map_err(classify),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }
}

/// Sorts hyper-util's errors into connect failures (nothing was sent; safe to retry anything) and
/// broken connections.
fn classify(e: hyper_util::client::legacy::Error) -> UpstreamError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_connect() {
        UpstreamError::Connect(short(&msg))
    } else {
        UpstreamError::Reset(short(&msg))
    }
}

/// At most 200 characters of a message, on a char boundary.
pub fn short(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
