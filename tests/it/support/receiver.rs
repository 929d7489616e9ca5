//! A webhook receiver for the tests: a plain HTTP/1.1 server on loopback that records every
//! request and answers from a script (statuses in order, then 200).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone)]
pub struct Received {
    pub signature: String,
    pub delivery: String,
    pub event: String,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Shared {
    got: Vec<Received>,
    script: VecDeque<u16>,
}

/// Whether answers are held back (a slow receiver), and the waiters' wake-up.
#[derive(Default)]
struct Gate {
    held: std::sync::atomic::AtomicBool,
    open: tokio::sync::Notify,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    gate: Arc<Gate>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let gate = Arc::new(Gate::default());
        let (s, g) = (shared.clone(), gate.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (s, g) = (s.clone(), g.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (s, g) = (s.clone(), g.clone());
                        async move {
                            let h = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            let (signature, delivery, event) = (
                                h("x-gpuproxy-signature"),
                                h("x-gpuproxy-delivery"),
                                h("x-gpuproxy-event"),
                            );
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let status = {
                                let mut s = s.lock().unwrap();
                                s.got.push(Received {
                                    signature,
                                    delivery,
                                    event,
                                    body,
                                });
                                s.script.pop_front().unwrap_or(200)
                            };
                            // a held receiver answers only once released
                            while g.held.load(std::sync::atomic::Ordering::Acquire) {
                                let open = g.open.notified();
                                if !g.held.load(std::sync::atomic::Ordering::Acquire) {
                                    break;
                                }
                                open.await;
                            }
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"{}")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            shared,
            gate,
            task,
        }
    }

    /// Holds every answer (requests are recorded as they come) until [`Receiver::release`].
    pub fn hold(&self) {
        self.gate
            .held
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn release(&self) {
        self.gate
            .held
            .store(false, std::sync::atomic::Ordering::Release);
        self.gate.open.notify_waiters();
    }

    /// The next answers, in order (200 after them).
    pub fn answer(&self, statuses: &[u16]) {
        self.shared.lock().unwrap().script.extend(statuses);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().got.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks `X-Gpuproxy-Signature` the way docs/guide.md tells receivers to: `t=<unix>,v1=<hex
/// HMAC-SHA256(secret, "<t>.<body>")>`, compared in constant time.
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x),
            Some(("v1", x)) => v1.push(x),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    v1.iter().any(|sig| {
        let Ok(bytes) = (0..sig.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(sig.get(i..i + 2).unwrap_or("x"), 16))
            .collect::<Result<Vec<u8>, _>>()
        else {
            return false;
        };
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        m.update(t.as_bytes());
        m.update(b".");
        m.update(body);
        m.verify_slice(&bytes).is_ok()
    })
}
