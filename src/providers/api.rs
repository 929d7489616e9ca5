//! One provider's JSON API as every client calls it: the root URL, the pooled client, the
//! provider's gate (breaker, retries, 429 back-off), and how its key is sent. `send` is one
//! attempt that returns whatever the provider answered; `call` is a whole call through the gate
//! whose success is a 2xx with a JSON body (an empty body reads as `{}`). Error bodies are
//! reduced to the provider's code and message with the key cut out (`check_status`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request};
use serde_json::{Value, json};

use super::UpstreamError;
use super::http::{HttpClient, Reply, short};
use super::resilience::Gate;
use crate::config::Secret;

/// How a provider takes its key.
#[derive(Debug, Clone)]
pub enum KeyHeader {
    /// `Authorization: Bearer <key>` (Vast.ai, generic providers).
    Bearer,
    /// The key alone in this header (io.net: `x-api-key`).
    Plain(HeaderName),
}

pub struct JsonApi {
    pub base: String,
    pub http: HttpClient,
    pub gate: Gate,
    /// The header carrying the key, built once and marked sensitive (never logged).
    auth: Option<(HeaderName, HeaderValue)>,
    /// Kept to cut the key out of any error body that echoes it.
    key: Option<Secret>,
    /// Calls fail as `Disabled` with this reason when there is no (usable) key; `None` when the
    /// provider answers some calls without one (Vast.ai's search).
    needs_key: Option<&'static str>,
    /// The provider's own not-found codes (the JSON `error` of a 404), when it has them: a 404
    /// with any other body is read as a refused key ([`UpstreamError::Auth`]), never as "gone".
    /// `None`: a 404 stays a status (the client decides, e.g. by reading a list).
    gone_codes: Option<&'static [&'static str]>,
}

impl JsonApi {
    pub fn new(
        base: &str,
        http: HttpClient,
        gate: Gate,
        key: Option<Secret>,
        header: KeyHeader,
        needs_key: Option<&'static str>,
    ) -> JsonApi {
        let auth = key.as_ref().and_then(|k| {
            let (name, text) = match &header {
                KeyHeader::Bearer => (AUTHORIZATION, format!("Bearer {}", k.expose())),
                KeyHeader::Plain(n) => (n.clone(), k.expose().to_owned()),
            };
            let mut v = HeaderValue::from_str(&text).ok()?;
            v.set_sensitive(true);
            Some((name, v))
        });
        JsonApi {
            base: base.trim_end_matches('/').to_owned(),
            http,
            gate,
            auth,
            key,
            needs_key,
            gone_codes: None,
        }
    }

    /// Declares the provider's own not-found codes (see `gone_codes`).
    pub fn with_gone_codes(mut self, codes: &'static [&'static str]) -> JsonApi {
        self.gone_codes = Some(codes);
        self
    }

    /// Why calls cannot be made, when the key they need is missing or unusable.
    pub fn disabled(&self) -> Option<&'static str> {
        self.needs_key.filter(|_| self.auth.is_none())
    }

    /// Where passthrough requests go: the root, the client, and the key header.
    pub fn passthrough(&self) -> (&str, &HttpClient, Option<(HeaderName, HeaderValue)>) {
        (&self.base, &self.http, self.auth.clone())
    }

    /// One attempt with the key, returning the reply whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        left: Duration,
    ) -> Result<Reply, (UpstreamError, Option<Duration>)> {
        if let Some(why) = self.disabled() {
            return Err((UpstreamError::Disabled(why), None));
        }
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if body.is_some() {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        if let Some((name, value)) = &self.auth {
            b = b.header(name, value.clone());
        }
        let req = b
            .body(Full::new(
                body.map(|v| Bytes::from(v.to_string())).unwrap_or_default(),
            ))
            .map_err(|e| (UpstreamError::Connect(e.to_string()), None))?;
        self.http.send(req, left).await.map_err(|e| (e, None))
    }

    /// A 2xx reply's JSON (an empty body is `{}`), or the error its status means.
    pub fn json(&self, reply: &Reply) -> Result<Value, (UpstreamError, Option<Duration>)> {
        check_status(
            reply.status.as_u16(),
            &reply.body,
            reply.headers.get(RETRY_AFTER),
            self.key.as_ref(),
        )
        .map_err(|(e, after)| (self.not_found_or_auth(e), after))?;
        if reply.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        serde_json::from_slice(&reply.body)
            .map_err(|e| (UpstreamError::Decode(short(&e.to_string())), None))
    }

    /// A whole call through the gate (retried only when `idempotent`).
    pub async fn call(
        &self,
        op: &'static str,
        idempotent: bool,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, UpstreamError> {
        self.gate
            .call(op, idempotent, |left| {
                let (method, body) = (method.clone(), body.as_ref());
                async move {
                    let reply = self.send(method, path, body, left).await?;
                    self.json(&reply)
                }
            })
            .await
    }

    /// The provider's error for a failed reply (for calls that read the body themselves).
    pub fn error_of(&self, status: u16, body: &[u8]) -> UpstreamError {
        self.not_found_or_auth(
            check_status(status.max(400), body, None, self.key.as_ref())
                .err()
                .map(|(e, _)| e)
                .unwrap_or(UpstreamError::Status {
                    status,
                    detail: String::new(),
                }),
        )
    }

    /// A 404 that is not one of the provider's own not-found codes is a refused key.
    fn not_found_or_auth(&self, e: UpstreamError) -> UpstreamError {
        match (e, self.gone_codes) {
            (
                UpstreamError::Status {
                    status: 404,
                    detail,
                },
                Some(codes),
            ) if !codes.iter().any(|c| is_code(&detail, c)) => UpstreamError::Auth {
                status: 404,
                detail,
            },
            (e, _) => e,
        }
    }
}

/// Whether a reduced error body (`error_detail`) carries the provider code `code`.
pub fn is_code(detail: &str, code: &str) -> bool {
    detail == code
        || detail
            .strip_prefix(code)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// Whether an error is the provider's own not-found answer (a 404 that survived
/// [`JsonApi::json`]'s reading: one of its not-found codes, or any 404 of a provider without
/// codes).
pub fn is_not_found(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Status { status: 404, .. })
}

/// Maps a non-success status to an error: 429 (with `Retry-After` when there is one), or the
/// status with the provider's `error`/`msg` (redacted of our key, shortened).
pub fn check_status(
    status: u16,
    body: &[u8],
    retry_after: Option<&HeaderValue>,
    key: Option<&Secret>,
) -> Result<(), (UpstreamError, Option<Duration>)> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    if status == 429 {
        let after = retry_after
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err((UpstreamError::RateLimited, after));
    }
    let detail = error_detail(body, key);
    // a refused key, whatever the status says (Vast: 404 `auth_error`, or an expired session)
    if matches!(status, 401 | 403)
        || (status == 404 && (is_code(&detail, "auth_error") || detail.contains("Session expired")))
    {
        return Err((UpstreamError::Auth { status, detail }, None));
    }
    Err((UpstreamError::Status { status, detail }, None))
}

/// A provider's error body, reduced to its code and message (JSON `error`/`msg`/`message`/
/// `detail`, else the start of the text), with our key cut out should it be echoed.
pub fn error_detail(body: &[u8], key: Option<&Secret>) -> String {
    let text_body = String::from_utf8_lossy(body);
    let detail = match serde_json::from_slice::<Value>(body) {
        Ok(v) => ["error", "msg", "message", "detail"]
            .iter()
            .filter_map(|k| match v.get(*k) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(other) => Some(other.to_string()),
            })
            .collect::<Vec<_>>()
            .join(": "),
        Err(_) => text_body.trim().to_owned(),
    };
    let detail = match key.map(Secret::expose).filter(|k| !k.is_empty()) {
        Some(k) => detail.replace(k, "<redacted>"),
        None => detail,
    };
    short(&detail)
}
