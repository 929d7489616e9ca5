//! How `gpx` reaches the daemon: where (`--url`, `GPX_URL`, the saved login), as whom (`GPX_API_KEY`
//! or the saved key, sent as `Authorization: Bearer`), trusting which certificates (the public
//! roots, plus `--cacert` / `GPX_CACERT` for a private CA such as the demo's), and what an answer
//! means for the exit status (`Failure`).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Exit statuses (sysexits): a wrong command line, a refused key, a refused request, a daemon
/// or provider that cannot answer.
pub const EX_USAGE: i32 = 64;
pub const EX_DATAERR: i32 = 65;
pub const EX_UNAVAILABLE: i32 = 69;
pub const EX_NOPERM: i32 = 77;

/// Why a command failed: the message to print and the exit status.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// An HTTP answer that is not a success, as the server described it.
    fn of(status: u16, body: &Value) -> Failure {
        let code = match status {
            401 | 403 => EX_NOPERM,
            400..=499 => EX_DATAERR,
            _ => EX_UNAVAILABLE,
        };
        let e = &body["error"];
        let message = match (e["code"].as_str(), e["message"].as_str()) {
            (Some(c), Some(m)) => format!("{c}: {m} (HTTP {status})"),
            _ => format!("HTTP {status}: {body}"),
        };
        Failure::new(code, message)
    }
}

pub type Outcome<T> = Result<T, Failure>;

/// What `gpx login` keeps (mode 0600).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Saved {
    pub url: Option<String>,
    pub api_key: Option<String>,
    pub cacert: Option<String>,
}

/// `$XDG_CONFIG_HOME/gpx/config.json`, else `~/.config/gpx/config.json`.
pub fn config_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("gpx").join("config.json")
}

pub fn load() -> Saved {
    std::fs::read(config_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes the login, readable by its owner only.
pub fn save(s: &Saved) -> Outcome<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = config_path();
    let fail = |e: std::io::Error| Failure::new(1, format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(&serde_json::to_vec_pretty(s).unwrap_or_default())
        .map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)?;
    Ok(path)
}

/// The daemon as one user of it.
pub struct Api {
    base: String,
    key: String,
    http: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// The certificates of a PEM file (`--cacert`).
fn pem_certs(path: &str) -> Outcome<Vec<rustls_pki_types::CertificateDer<'static>>> {
    gpuproxyd::types::pem::certificates(path)
        .map_err(|e| Failure::new(EX_USAGE, format!("--cacert {e}")))
}

impl Api {
    pub fn new(url: &str, key: &str, cacert: Option<&str>) -> Outcome<Api> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = cacert {
            for c in pem_certs(path)? {
                roots
                    .add(c)
                    .map_err(|e| Failure::new(EX_USAGE, format!("--cacert {path}: {e}")))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::new(1, e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Api {
            base: url.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            http: HyperClient::builder(TokioExecutor::new()).build(https),
        })
    }

    fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.key))
            .header("user-agent", concat!("gpx/", env!("CARGO_PKG_VERSION")));
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        b.body(Full::new(Bytes::from(
            body.map(|v| v.to_string()).unwrap_or_default(),
        )))
        .expect("a request of ours")
    }

    /// One call: the answer's JSON, or why not.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Outcome<Value> {
        self.call_with(method, path, body, &[]).await
    }

    /// [`Api::call`] with extra headers (an `Idempotency-Key`).
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Outcome<Value> {
        let (status, bytes) = self.raw(method, path, body, headers).await?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(Failure::of(status, &v));
        }
        Ok(v)
    }

    /// One call's status and body as it came.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Outcome<(u16, Bytes)> {
        let mut req = self.request(method, path, body);
        for (k, v) in headers {
            if let (Ok(k), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(k.as_bytes()),
                hyper::header::HeaderValue::from_str(v),
            ) {
                req.headers_mut().insert(k, v);
            }
        }
        let res = tokio::time::timeout(Duration::from_secs(300), self.http.request(req))
            .await
            .map_err(|_| Failure::new(EX_UNAVAILABLE, "the daemon did not answer in 300 s"))?
            .map_err(|e| {
                Failure::new(EX_UNAVAILABLE, format!("cannot reach {}: {e}", self.base))
            })?;
        let status = res.status().as_u16();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::new(EX_UNAVAILABLE, format!("the answer broke off: {e}")))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// `GET /v1/events` as a stream of (id, type, data) from `after` on, calling `each` for every
    /// event until it says stop; `Ok(last id)` when the stream ends (closed by the daemon or
    /// broken), for the caller to resume from.
    pub async fn events(
        &self,
        after: Option<i64>,
        each: &mut dyn FnMut(i64, &str, &str) -> bool,
    ) -> Outcome<(Option<i64>, bool)> {
        let mut req = self.request(Method::GET, "/v1/events", None);
        req.headers_mut().insert(
            "accept",
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        if let Some(a) = after
            && let Ok(v) = hyper::header::HeaderValue::from_str(&a.to_string())
        {
            req.headers_mut().insert("last-event-id", v);
        }
        let res = self.http.request(req).await.map_err(|e| {
            Failure::new(EX_UNAVAILABLE, format!("cannot reach {}: {e}", self.base))
        })?;
        let status = res.status().as_u16();
        let mut body = res.into_body();
        if status != 200 {
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(Failure::of(status, &v));
        }
        let mut last = after;
        let mut buf = String::new();
        let (mut id, mut kind, mut data) = (None::<i64>, String::new(), String::new());
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            let Some(chunk) = frame.data_ref() else {
                continue;
            };
            buf.push_str(&String::from_utf8_lossy(chunk));
            while let Some(nl) = buf.find('\n') {
                let line = buf[..nl].trim_end_matches('\r').to_owned();
                buf.drain(..=nl);
                if line.is_empty() {
                    // the end of one event
                    if kind == "close" {
                        return Ok((last, true));
                    }
                    if let Some(n) = id.filter(|_| kind != "open") {
                        last = Some(n);
                        if !each(n, &kind, &data) {
                            return Ok((last, false));
                        }
                    }
                    (id, kind, data) = (None, String::new(), String::new());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
        }
        Ok((last, true))
    }
}
