//! The HTTP side shared by both sandbox providers: serving, the control endpoints, call counting
//! and applying [`Faults`] around the provider's own handler.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderMap};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::faults::{Faults, Rng};

/// One request as the provider handlers see it.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Call {
    /// Every query parameter, decoded, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    /// A query parameter, percent-decoded (`+` as space).
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| percent_decode(v))
        })
    }
}

/// A query value, percent-decoded with `+` as a space (what HTML forms and Python send).
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    pub content_type: &'static str,
}

impl Answer {
    pub fn json(status: u16, v: serde_json::Value) -> Answer {
        Answer {
            status,
            body: Bytes::from(v.to_string()),
            content_type: "application/json",
        }
    }
    pub fn text(status: u16, t: &'static str) -> Answer {
        Answer {
            status,
            body: Bytes::from_static(t.as_bytes()),
            content_type: "text/plain",
        }
    }
}

/// A provider's wire format.
pub trait Api: Send + Sync + 'static {
    /// The operation a request is (for counting and fault scoping); `unknown` for anything else.
    fn op(&self, method: &Method, path: &str) -> &'static str;
    fn handle(&self, op: &'static str, call: &Call) -> Answer;
    /// The provider's 429.
    fn rate_limited(&self) -> Answer;
    /// The provider's server error.
    fn server_error(&self, status: u16) -> Answer;
    /// `POST /_sandbox/reprice` `{"factor": f}`: every price times f (a price that moved
    /// between quote and rent).
    fn reprice(&self, factor: f64);
    /// The provider's own control endpoints under `/_sandbox/` (scripted states, what each
    /// instance holds and was billed); `None` for paths it does not know.
    fn control(&self, _call: &Call) -> Option<Answer> {
        None
    }
}

pub struct Sandbox {
    name: &'static str,
    api: Arc<dyn Api>,
    faults: Mutex<Faults>,
    rng: Mutex<Rng>,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    /// The latest requests (at most [`KEPT_REQUESTS`]) and what they were answered, as
    /// `GET /_sandbox/requests` shows them: what a client sent, to hold it against what the
    /// provider's own client sends or its published definitions.
    requests: Mutex<std::collections::VecDeque<serde_json::Value>>,
}

/// Requests `GET /_sandbox/requests` keeps.
const KEPT_REQUESTS: usize = 5_000;

/// One request as recorded: its operation, method, path, decoded query and JSON body.
fn recorded(op: &str, call: &Call) -> serde_json::Value {
    let query: serde_json::Map<String, serde_json::Value> = call
        .query_pairs()
        .into_iter()
        .map(|(k, v)| (k, json!(v)))
        .collect();
    let body = if call.body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&call.body)
            .unwrap_or_else(|_| json!({"<not json>": String::from_utf8_lossy(&call.body)}))
    };
    json!({"op": op, "method": call.method.as_str(), "path": call.path, "query": query,
           "body": body})
}

impl Sandbox {
    /// Keeps a request; returns its number, for [`Sandbox::answered`].
    fn record(&self, mut entry: serde_json::Value) -> u64 {
        let mut kept = self.requests.lock().unwrap();
        let seq = kept
            .back()
            .and_then(|e| e["seq"].as_u64())
            .map_or(1, |s| s + 1);
        entry["seq"] = json!(seq);
        if kept.len() == KEPT_REQUESTS {
            kept.pop_front();
        }
        kept.push_back(entry);
        seq
    }

    /// Adds what the provider answered to request `seq` (its status and JSON body).
    fn answered(&self, seq: u64, a: &Answer) {
        let mut kept = self.requests.lock().unwrap();
        if let Some(e) = kept.iter_mut().rev().find(|e| e["seq"] == json!(seq)) {
            e["status"] = json!(a.status);
            e["answer"] = serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null);
        }
    }

    pub fn new(name: &'static str, seed: u64, faults: Faults, api: Arc<dyn Api>) -> Sandbox {
        Sandbox {
            name,
            api,
            faults: Mutex::new(faults),
            rng: Mutex::new(Rng::new(seed)),
            calls: Mutex::new(BTreeMap::new()),
            requests: Mutex::new(Default::default()),
        }
    }
}

pub async fn serve(listener: tokio::net::TcpListener, sb: Arc<Sandbox>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let sb = sb.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let sb = sb.clone();
                async move { handle(&sb, req).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// What a fault did to a call.
enum Delivery {
    Normal,
    Malformed,
    Truncated,
}

type Resp = Response<Paced>;

async fn handle(sb: &Sandbox, req: Request<Incoming>) -> Result<Resp, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let call = Call {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    if let Some(r) = control(sb, &call) {
        return Ok(respond(r, Delivery::Normal, 0));
    }
    let op = sb.api.op(&call.method, &call.path);
    *sb.calls.lock().unwrap().entry(op).or_default() += 1;
    let seq = sb.record(recorded(op, &call));
    let f = sb.faults.lock().unwrap().clone();
    if !f.applies_to(op) {
        let answer = sb.api.handle(op, &call);
        sb.answered(seq, &answer);
        return Ok(respond(answer, Delivery::Normal, 0));
    }
    if f.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
    }
    {
        let mut faults = sb.faults.lock().unwrap();
        if faults.rate_limit_burst > 0 {
            faults.rate_limit_burst -= 1;
            return Ok(respond(sb.api.rate_limited(), Delivery::Normal, 0));
        }
    }
    let (reset, error, malformed, truncated) = {
        let mut rng = sb.rng.lock().unwrap();
        (
            rng.chance(f.reset_rate),
            rng.chance(f.error_rate),
            rng.chance(f.malformed_rate),
            rng.chance(f.truncate_rate),
        )
    };
    if reset {
        // hyper closes the connection without a response when the service fails
        return Err(std::io::Error::other("sandbox fault: connection reset"));
    }
    if error {
        let status = if f.error_status == 0 {
            500
        } else {
            f.error_status
        };
        return Ok(respond(sb.api.server_error(status), Delivery::Normal, 0));
    }
    let answer = sb.api.handle(op, &call);
    sb.answered(seq, &answer);
    if f.answer_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(f.answer_delay_ms)).await;
    }
    let how = if malformed {
        Delivery::Malformed
    } else if truncated {
        Delivery::Truncated
    } else {
        Delivery::Normal
    };
    Ok(respond(answer, how, f.slow_body_ms))
}

fn control(sb: &Sandbox, call: &Call) -> Option<Answer> {
    let r = match (&call.method, call.path.as_str()) {
        (&Method::POST, "/_sandbox/faults") => match serde_json::from_slice::<Faults>(&call.body) {
            Ok(f) => {
                eprintln!("gpuproxy-sandbox[{}]: faults {:?}", sb.name, f);
                *sb.faults.lock().unwrap() = f;
                Answer::json(200, json!({"ok": true}))
            }
            Err(e) => Answer::json(400, json!({"error": e.to_string()})),
        },
        (&Method::GET, "/_sandbox/faults") => Answer::json(
            200,
            serde_json::to_value(&*sb.faults.lock().unwrap()).unwrap(),
        ),
        (&Method::GET, "/_sandbox/stats") => {
            let calls = sb.calls.lock().unwrap().clone();
            let total: u64 = calls.values().sum();
            Answer::json(200, json!({"calls": calls, "total": total}))
        }
        (&Method::POST, "/_sandbox/reprice") => {
            match serde_json::from_slice::<serde_json::Value>(&call.body)
                .ok()
                .and_then(|v| v["factor"].as_f64())
                .filter(|f| *f > 0.0)
            {
                Some(f) => {
                    sb.api.reprice(f);
                    Answer::json(200, json!({"ok": true}))
                }
                None => Answer::json(
                    400,
                    json!({"error": "expected {\"factor\": <positive number>}"}),
                ),
            }
        }
        (&Method::GET, "/_sandbox/requests") => {
            let kept: Vec<_> = sb.requests.lock().unwrap().iter().cloned().collect();
            Answer::json(200, json!({"requests": kept}))
        }
        (&Method::POST, "/_sandbox/requests/clear") => {
            sb.requests.lock().unwrap().clear();
            Answer::json(200, json!({"ok": true}))
        }
        (&Method::POST, "/_sandbox/reset") => {
            *sb.faults.lock().unwrap() = Faults::default();
            sb.calls.lock().unwrap().clear();
            sb.requests.lock().unwrap().clear();
            Answer::json(200, json!({"ok": true}))
        }
        (_, p) if p.starts_with("/_sandbox/") => return sb.api.control(call),
        _ => return None,
    };
    Some(r)
}

fn respond(a: Answer, how: Delivery, slow_ms: u64) -> Resp {
    let full_len = a.body.len();
    let (chunks, fail) = match how {
        Delivery::Normal => (split(a.body, if slow_ms > 0 { 4 } else { 1 }), false),
        Delivery::Malformed => (
            vec![Bytes::from_static(
                b"{\"offers\": [{\"id\": 1, \"gpu_name\": <html>",
            )],
            false,
        ),
        Delivery::Truncated => {
            let half = a.body.slice(..a.body.len() / 2);
            (vec![half], true)
        }
    };
    let len: usize = match how {
        Delivery::Truncated => full_len,
        _ => chunks.iter().map(Bytes::len).sum(),
    };
    let mut resp = Response::new(Paced {
        chunks: chunks.into(),
        pause: Duration::from_millis(slow_ms),
        sleep: None,
        fail_at_end: fail,
    });
    *resp.status_mut() =
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, a.content_type.parse().unwrap());
    resp.headers_mut()
        .insert(hyper::header::CONTENT_LENGTH, len.into());
    resp
}

fn split(b: Bytes, n: usize) -> Vec<Bytes> {
    if n <= 1 || b.len() < n {
        return vec![b];
    }
    let step = b.len().div_ceil(n);
    (0..b.len())
        .step_by(step)
        .map(|i| b.slice(i..(i + step).min(b.len())))
        .collect()
}

/// A body sent in pieces, with a pause before each piece after the first, that can end in an
/// error (the connection is then cut: a truncated body).
pub struct Paced {
    chunks: std::collections::VecDeque<Bytes>,
    pause: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    fail_at_end: bool,
}

impl Body for Paced {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(s) = self.sleep.as_mut() {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        match self.chunks.pop_front() {
            Some(c) => {
                if !self.pause.is_zero() && !self.chunks.is_empty() {
                    self.sleep = Some(Box::pin(tokio::time::sleep(self.pause)));
                }
                Poll::Ready(Some(Ok(Frame::data(c))))
            }
            None if self.fail_at_end => {
                self.fail_at_end = false;
                Poll::Ready(Some(Err(std::io::Error::other(
                    "sandbox fault: truncated body",
                ))))
            }
            None => Poll::Ready(None),
        }
    }
}
