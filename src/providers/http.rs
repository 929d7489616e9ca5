//! The pooled upstream HTTP client every provider call goes through: hyper-util's client over
//! rustls (webpki roots; plain `http://` too, for the sandbox), keep-alive with a bounded idle pool
//! per host, HTTP/2 where the server offers it in ALPN, a connect timeout, and one attempt's
//! timeout covering the request and the whole body. Retries and breakers are `resilience`'s job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// hyper-util's pool bounds idle connections only; this bounds requests in flight per host
    /// (so connections to it) at `providers.max_connections_per_host`. A request waits for a
    /// permit within its own timeout.
    per_host: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    max_per_host: usize,
}

/// One attempt's outcome when the provider answered at all.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// TLS for the daemon's outbound calls (providers, webhooks): ring, the safe default versions,
/// the webpki roots, no client certificate.
pub fn tls_client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
    .with_no_client_auth()
}

impl HttpClient {
    pub fn new(cfg: &ProvidersConfig) -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout_ms.get()));
        http.set_nodelay(true);
        let tls = tls_client_config();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_idle_timeout(cfg.pool_idle_timeout_ms.get())
            .build(https);
        HttpClient {
            inner,
            request_timeout: cfg.request_timeout_ms.get(),
            max_body: usize::try_from(cfg.max_body_bytes.get()).unwrap_or(usize::MAX),
            per_host: Arc::new(Mutex::new(HashMap::new())),
            max_per_host: cfg.max_connections_per_host.get(),
        }
    }

    /// A slot for one request to `req`'s host.
    async fn permit(&self, req: &Request<Full<Bytes>>) -> OwnedSemaphorePermit {
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let sem = self
            .per_host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(host)
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_host)))
            .clone();
        sem.acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// One attempt, bounded by `request_timeout` and by `limit` (what is left of the call's
    /// deadline), whichever is sooner.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<Reply, UpstreamError> {
        let attempt = async {
            let _slot = self.permit(&req).await;
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
        // the slot is held until the response head (the body streams on that connection)
        let head = async {
            let _slot = self.permit(&req).await;
            self.inner.request(req).await
        };
        match tokio::time::timeout(self.request_timeout, head).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_per_host_are_bounded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n2, m2) = (now.clone(), max.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let (now, max) = (n2.clone(), m2.clone());
                tokio::spawn(async move {
                    let cur = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(cur, Ordering::SeqCst);
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        let client = HttpClient::new(&ProvidersConfig {
            max_connections_per_host: crate::config::nzsize(2),
            ..ProvidersConfig::default()
        });
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::get(format!("http://{addr}/"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                c.send(req, Duration::from_secs(10)).await.map(|r| r.status)
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), StatusCode::OK);
        }
        assert_eq!(max.load(Ordering::SeqCst), 2);
    }
}
