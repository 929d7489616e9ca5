//! Agent swarm load tool (loadtest/agents.sh): holds N instance-agent channels to a daemon,
//! each one a real WebSocket over TLS that says hello, answers pings and answers every `exec`
//! at once (`started`, then `finished` with exit code 0), and reconnects with full-jitter
//! back-off when it loses its channel (as `gpuproxy-agent` does), so a daemon restart can be
//! watched. Optionally it then sends commands to random agents through the API and reports how
//! long each took to reach its agent.
//!
//! Agent `i` is instance `swarm-<i>` with token `gpa_<i, 43 digits>`: the load script inserts
//! those rows (their hashes) into the database first. Like `gpuproxy-connhold`, it spreads
//! itself over child processes (`--per-process`) and loopback source addresses.
//!
//! Output: JSON lines. `{"event":"held",...}` once every agent is welcomed (or failed);
//! `{"event":"commands",...}` with the routing latencies (POST sent → `exec` at the agent);
//! `{"event":"done",...}` at the end, with how many channels were lost and regained.

#[path = "../loadkit.rs"]
mod loadkit;
#[path = "../testkit.rs"]
mod testkit;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Debug, Parser, Clone)]
#[command(
    name = "gpuproxy-agentswarm",
    about = "Hold many instance-agent channels"
)]
struct Args {
    /// The daemon's HTTPS address.
    #[arg(long)]
    target: SocketAddr,
    /// Agents in all (indices `--first` ..).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// At most this many agents per process; more start child processes.
    #[arg(long, default_value_t = 9000)]
    per_process: usize,
    /// Spread connections over this many source addresses 127.0.x.y.
    #[arg(long, default_value_t = 64)]
    sources: usize,
    /// Channels being opened at once, per process.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// How long to hold the channels once open (seconds).
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    /// The longest wait between reconnection attempts (seconds).
    #[arg(long, default_value_t = 10)]
    max_backoff_s: u64,
    /// Commands to send through the API once every agent is held (needs `--api-key`).
    #[arg(long, default_value_t = 0)]
    commands: usize,
    /// An API key of the agents' account, allowed to exec.
    #[arg(long)]
    api_key: Option<String>,
    /// (internal) index of this child.
    #[arg(long, hide = true)]
    child_index: Option<usize>,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
struct Report {
    event: String,
    #[serde(default)]
    held: usize,
    #[serde(default)]
    errors: BTreeMap<String, usize>,
    #[serde(default)]
    open_secs: f64,
    /// Agents welcomed after a retry, by their first error.
    #[serde(default)]
    retried: BTreeMap<String, usize>,
    /// Command id → when its `exec` arrived (unix ms).
    #[serde(default)]
    arrivals: HashMap<String, f64>,
    #[serde(default)]
    lost: usize,
    #[serde(default)]
    regained: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_ms: Option<f64>,
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn emit(r: &Report) {
    println!("{}", serde_json::to_string(r).expect("report serializes"));
}

fn source_ip(i: usize, sources: usize) -> IpAddr {
    let n = i % sources;
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        2 + (n / 250) as u8,
        1 + (n % 250) as u8,
    ))
}

/// Agent `i`'s token (the load script hashes the same text).
fn token(i: usize) -> String {
    format!("gpa_{i:043}")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens agent `i`'s channel and waits for its welcome.
async fn open(args: &Args, i: usize) -> Result<Ws, &'static str> {
    let sock = TcpSocket::new_v4().map_err(|_| "socket")?;
    sock.bind(SocketAddr::new(source_ip(i, args.sources), 0))
        .map_err(|_| "bind")?;
    let tcp = sock.connect(args.target).await.map_err(|_| "connect")?;
    // as gpuproxy-agent does: an answer's two messages (`started`, `finished`) go at once, not
    // the second after the first's delayed ACK (40 ms)
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = loadkit::tls_connector()
        .connect(name, tcp)
        .await
        .map_err(|_| "tls")?;
    let mut req = format!("wss://localhost:{}/v1/agent", args.target.port())
        .into_client_request()
        .map_err(|_| "request")?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(i)).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .map_err(|_| "handshake")?;
    let hello = json!({"type": "hello", "instance_id": format!("swarm-{i}"),
        "agent_version": "swarm", "gpus": [],
        "host": {"hostname": "swarm", "os": "linux", "cpus": 1, "memory_mb": 1}});
    ws.send(Message::text(hello.to_string()))
        .await
        .map_err(|_| "hello")?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => return Ok(ws),
            Some(Ok(_)) => {}
            _ => return Err("no_welcome"),
        }
    }
}

/// Serves an open channel until it ends: every `exec` answered at once, its arrival noted.
async fn serve(ws: &mut Ws, arrivals: &Mutex<HashMap<String, f64>>) {
    while let Some(Ok(m)) = ws.next().await {
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap_or_default();
        if v["type"] != "exec" {
            continue;
        }
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        arrivals.lock().unwrap().insert(id.clone(), now_ms());
        for m in [
            json!({"type": "started", "id": id}),
            json!({"type": "finished", "id": id, "exit_code": 0}),
        ] {
            if ws.send(Message::text(m.to_string())).await.is_err() {
                return;
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    arrivals: Mutex<HashMap<String, f64>>,
    lost: std::sync::atomic::AtomicUsize,
    regained: std::sync::atomic::AtomicUsize,
}

async fn run_worker(args: Args, first: usize, n: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let args = Arc::new(args);
    let tally = Arc::new(Tally::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), &'static str>>();
    // agents welcomed only after a retry, by their first error
    let (retried_tx, mut retried_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.hold_secs);
    for i in first..first + n {
        let (args, tally, gate, held_tx) =
            (args.clone(), tally.clone(), gate.clone(), held_tx.clone());
        let retried_tx = retried_tx.clone();
        tokio::spawn(async move {
            // refused or failed, it tries again after its back-off, as `gpuproxy-agent` does;
            // the first error is what the report counts
            let mut failures = 0;
            let mut first_error = None;
            let first_try = loop {
                let r = {
                    let _p = gate.acquire().await;
                    open(&args, i).await
                };
                match r {
                    Ok(ws) => break Ok(ws),
                    Err(e) if Instant::now() < deadline => {
                        first_error.get_or_insert(e);
                        tokio::time::sleep(gpuproxyd::agents::protocol::reconnect_backoff(
                            failures,
                            Duration::from_secs(args.max_backoff_s),
                        ))
                        .await;
                        failures += 1;
                    }
                    Err(e) => break Err(first_error.unwrap_or(e)),
                }
            };
            if let (Some(e), Ok(_)) = (first_error, &first_try) {
                let _ = retried_tx.send(e);
            }
            // reported once, and the sender dropped: the report is done when every agent has
            // answered
            let mut ws = match first_try {
                Ok(ws) => {
                    let _ = held_tx.send(Ok(()));
                    drop(held_tx);
                    ws
                }
                Err(e) => {
                    let _ = held_tx.send(Err(e));
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = serve(&mut ws, &tally.arrivals) => {}
                    _ = tokio::time::sleep_until(deadline.into()) => return,
                }
                tally.lost.fetch_add(1, Relaxed);
                let mut failures = 0;
                ws = loop {
                    tokio::time::sleep(gpuproxyd::agents::protocol::reconnect_backoff(
                        failures,
                        Duration::from_secs(args.max_backoff_s),
                    ))
                    .await;
                    if Instant::now() >= deadline {
                        return;
                    }
                    match open(&args, i).await {
                        Ok(ws) => break ws,
                        Err(_) => failures += 1,
                    }
                };
                tally.regained.fetch_add(1, Relaxed);
            }
        });
    }
    drop(held_tx);
    drop(retried_tx);
    let mut held = Report {
        event: "held".into(),
        ..Default::default()
    };
    while let Some(r) = held_rx.recv().await {
        match r {
            Ok(()) => held.held += 1,
            Err(e) => *held.errors.entry(e.into()).or_default() += 1,
        }
    }
    held.open_secs = start.elapsed().as_secs_f64();
    while let Ok(e) = retried_rx.try_recv() {
        *held.retried.entry(e.into()).or_default() += 1;
    }
    emit(&held);
    // the exec arrivals so far, every second (the parent times the commands with them)
    loop {
        let next = Instant::now() + Duration::from_secs(1);
        tokio::time::sleep_until(next.min(deadline).into()).await;
        let arrivals = std::mem::take(&mut *tally.arrivals.lock().unwrap());
        if !arrivals.is_empty() {
            emit(&Report {
                event: "arrivals".into(),
                arrivals,
                ..Default::default()
            });
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    emit(&Report {
        event: "done".into(),
        arrivals: std::mem::take(&mut *tally.arrivals.lock().unwrap()),
        lost: tally.lost.load(Relaxed),
        regained: tally.regained.load(Relaxed),
        ..Default::default()
    });
}

/// One keep-alive TLS connection for the API calls.
struct Api {
    conn: BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    key: String,
}

impl Api {
    async fn open(target: SocketAddr, key: &str) -> Api {
        let tcp = tokio::net::TcpStream::connect(target)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = loadkit::tls_connector()
            .connect(name, tcp)
            .await
            .expect("TLS");
        Api {
            conn: BufReader::new(tls),
            key: key.into(),
        }
    }

    /// POSTs `body` to `path`; the status and the body.
    async fn post(&mut self, path: &str, body: &str) -> (u16, String) {
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.key,
            body.len()
        );
        self.conn
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .expect("write");
        let mut line = String::new();
        self.conn.read_line(&mut line).await.expect("read");
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0;
        loop {
            line.clear();
            self.conn.read_line(&mut line).await.expect("read");
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut b = vec![0u8; len];
        self.conn.read_exact(&mut b).await.expect("body");
        (status, String::from_utf8_lossy(&b).into_owned())
    }
}

fn child_args(a: &Args, first: usize, n: usize, c: usize) -> Vec<String> {
    vec![
        format!("--target={}", a.target),
        format!("--agents={n}"),
        format!("--first={first}"),
        format!("--per-process={n}"),
        format!("--sources={}", a.sources),
        format!("--concurrency={}", a.concurrency),
        format!("--hold-secs={}", a.hold_secs),
        format!("--max-backoff-s={}", a.max_backoff_s),
        format!("--child-index={c}"),
    ]
}

fn percentiles(r: &mut Report, mut l: Vec<f64>) {
    if l.is_empty() {
        return;
    }
    l.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
    r.p50_ms = Some(at(0.5));
    r.p99_ms = Some(at(0.99));
    r.max_ms = l.last().copied();
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.child_index.is_some() {
        loadkit::die_with_parent();
        let (first, n) = (args.first, args.agents);
        run_worker(args, first, n).await;
        return;
    }
    let procs = args.agents.div_ceil(args.per_process.max(1)).max(1);
    let (_children, mut rx) = loadkit::fan_out::<Report, _>(procs, |c| {
        let first = args.first
            + (0..c)
                .map(|k| loadkit::share(args.agents, procs, k))
                .sum::<usize>();
        child_args(&args, first, loadkit::share(args.agents, procs, c), c)
    });
    let mut held = Report {
        event: "held".into(),
        ..Default::default()
    };
    let mut done = Report {
        event: "done".into(),
        ..Default::default()
    };
    let mut helds = 0;
    let mut sent: HashMap<String, f64> = HashMap::new();
    let mut arrivals: HashMap<String, f64> = HashMap::new();
    // once the commands are sent: when to time them (their arrivals come each second)
    let mut report_at: Option<tokio::time::Instant> = None;
    loop {
        let r = match report_at {
            Some(t) => match tokio::time::timeout_at(t, rx.recv()).await {
                Ok(r) => r,
                Err(_) => {
                    report_at = None;
                    let lat: Vec<f64> = sent
                        .iter()
                        .filter_map(|(id, t)| arrivals.get(id).map(|a| a - t))
                        .collect();
                    let mut r = Report {
                        event: "commands".into(),
                        held: lat.len(),
                        ..Default::default()
                    };
                    percentiles(&mut r, lat);
                    emit(&r);
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(r) = r else { break };
        match r.event.as_str() {
            "arrivals" => arrivals.extend(r.arrivals),
            "held" => {
                held.held += r.held;
                held.open_secs = held.open_secs.max(r.open_secs);
                for (k, v) in r.errors {
                    *held.errors.entry(k).or_default() += v;
                }
                for (k, v) in r.retried {
                    *held.retried.entry(k).or_default() += v;
                }
                helds += 1;
                if helds == procs {
                    emit(&held);
                    if args.commands > 0 {
                        sent = commands(&args).await;
                        report_at = Some(tokio::time::Instant::now() + Duration::from_millis(2500));
                    }
                }
            }
            "done" => {
                done.lost += r.lost;
                done.regained += r.regained;
            }
            _ => {}
        }
    }
    done.held = arrivals.len();
    emit(&done);
}

/// Sends `--commands` commands to random agents, one after another; when each was sent.
async fn commands(args: &Args) -> HashMap<String, f64> {
    let key = args.api_key.as_deref().expect("--api-key");
    let mut api = Api::open(args.target, key).await;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut sent = HashMap::new();
    let mut refused = 0;
    for _ in 0..args.commands {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = args.first + (rng % args.agents as u64) as usize;
        let t = now_ms();
        let (status, body) = api
            .post(
                &format!("/v1/instances/swarm-{i}/commands"),
                r#"{"kind":"exec","argv":["true"],"timeout_s":60}"#,
            )
            .await;
        let id = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned));
        match (status, id) {
            (202, Some(id)) => {
                sent.insert(id, t);
            }
            _ => {
                refused += 1;
                if refused < 3 {
                    eprintln!("command refused: {status} {body}");
                }
            }
        }
    }
    sent
}
