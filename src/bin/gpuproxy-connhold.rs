//! Connection-holding load tool: opens N connections to a target (plain or TLS, optionally with a
//! PROXY v2 header), sends one request on each, keeps them open and idle, optionally sends a
//! request on a random subset every T seconds, and reports what it holds, errors by kind and the
//! latency of the periodic requests.
//!
//! One process may hold only so many file descriptors (20,000 here), so it spreads itself: with
//! more than `--per-process` connections it runs that many children of itself and adds up their
//! reports. Connections come from many loopback source addresses (127.0.x.y) so per-IP caps and
//! the ephemeral port range do not limit the test. TLS certificates are not verified (a load tool
//! against your own daemon).
//!
//! Output: JSON lines on stdout. `{"event":"held",...}` once every connection is open (or failed),
//! `{"event":"poke",...}` after each periodic round, `{"event":"done",...}` at the end.

#[path = "../loadkit.rs"]
mod loadkit;
#[path = "../testkit.rs"]
mod testkit;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

#[derive(Debug, Parser, Clone)]
#[command(
    name = "gpuproxy-connhold",
    about = "Hold many idle keep-alive connections to a target"
)]
struct Args {
    /// Address to connect to.
    #[arg(long)]
    target: SocketAddr,
    /// Speak TLS (ALPN http/1.1; the certificate is not verified).
    #[arg(long)]
    tls: bool,
    /// Send a PROXY v2 header first, claiming a client address in 10.0.0.0/8.
    #[arg(long)]
    proxy_v2: bool,
    /// Connections to hold in total.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// At most this many connections per process; more start child processes.
    #[arg(long, default_value_t = 9000)]
    per_process: usize,
    /// Spread connections over this many source addresses 127.0.x.y (from 127.0.1.1).
    #[arg(long, default_value_t = 64)]
    sources: usize,
    /// Connections being opened at once, per process.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Request path sent on each connection.
    #[arg(long, default_value = "/health")]
    path: String,
    /// How long to hold the connections once open (seconds).
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    /// Send a request on a random subset this often (seconds); 0 = never.
    #[arg(long, default_value_t = 0)]
    poke_every_secs: u64,
    /// Fraction of the held connections used in each periodic round.
    #[arg(long, default_value_t = 0.01)]
    poke_fraction: f64,
    /// Slowloris instead of idle keep-alive: each connection sends an unfinished request head
    /// and one more header line a second, reconnecting whenever the server cuts it.
    #[arg(long)]
    slowloris: bool,
    /// A header sent with every request (`Name: value`), e.g. `Authorization: Bearer gpx_...`.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Hold Server-Sent Events streams (`--path /v1/events`): each connection's request is
    /// answered with a stream that stays open; every event after the first is timed from its
    /// `at` (commit time) to its arrival, reported as the latencies.
    #[arg(long)]
    sse: bool,
    /// Hold WebSocket event streams (`--path /v1/events`): each connection asks for an
    /// HTTP/1.1 Upgrade, reads the 101 and the first frame (`open`), then is held.
    #[arg(long)]
    ws: bool,
    /// (internal) index of this child; children number their sources apart.
    #[arg(long, hide = true)]
    child_index: Option<usize>,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
struct Report {
    event: String,
    held: usize,
    errors: BTreeMap<String, usize>,
    open_secs: f64,
    /// Periodic-request latencies in ms (children send them raw; the parent summarizes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    latencies_ms: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_ms: Option<f64>,
    poke_requests: usize,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type Conn = BufReader<Box<dyn Stream>>;

fn source_ip(child: usize, i: usize, sources: usize) -> IpAddr {
    let n = child * sources + (i % sources);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (n / 250) as u8,
        1 + (n % 250) as u8,
    ))
}

/// The request head: `path`, and the `--header`s (and a WebSocket upgrade's when `ws`).
fn head(path: &str, headers: &[String], ws: bool) -> String {
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n");
    if ws {
        req.push_str(
            "upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// Sends one request and reads the whole response (an event stream: its head and first event);
/// errors are named by kind.
async fn request(conn: &mut Conn, args: &Args) -> Result<(), &'static str> {
    let req = head(&args.path, &args.headers, args.ws);
    conn.get_mut()
        .write_all(req.as_bytes())
        .await
        .map_err(|_| "write")?;
    let mut line = String::new();
    let mut len = 0usize;
    let mut first = true;
    loop {
        line.clear();
        let n = conn.read_line(&mut line).await.map_err(|_| "read")?;
        if n == 0 {
            return Err("closed");
        }
        if first {
            let want = if args.ws {
                "HTTP/1.1 101"
            } else {
                "HTTP/1.1 2"
            };
            if !line.starts_with(want) {
                return Err("status");
            }
            first = false;
        }
        let l = line.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().map_err(|_| "bad_response")?;
        }
        if line == "\r\n" {
            break;
        }
    }
    if args.ws {
        // the first frame (`open`): a server frame is unmasked, its length in the second byte
        // (or the two after it)
        let mut h = [0u8; 2];
        conn.read_exact(&mut h).await.map_err(|_| "read")?;
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                conn.read_exact(&mut l).await.map_err(|_| "read")?;
                usize::from(u16::from_be_bytes(l))
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await.map_err(|_| "read")?;
        return Ok(());
    }
    if args.sse {
        // chunked: read up to the end of the first event (`open`)
        loop {
            line.clear();
            if conn.read_line(&mut line).await.map_err(|_| "read")? == 0 {
                return Err("closed");
            }
            if line.starts_with("event: open") {
                return Ok(());
            }
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await.map_err(|_| "read")?;
    Ok(())
}

/// Connects (PROXY header and TLS as asked) from this connection's source address.
async fn connect_one(args: &Args, child: usize, i: usize) -> Result<Box<dyn Stream>, &'static str> {
    let src = source_ip(child, i, args.sources);
    let sock = TcpSocket::new_v4().map_err(|_| "socket")?;
    sock.bind(SocketAddr::new(src, 0)).map_err(|_| "bind")?;
    let mut tcp = tokio::time::timeout(Duration::from_secs(10), sock.connect(args.target))
        .await
        .map_err(|_| "connect_timeout")?
        .map_err(|_| "connect")?;
    if args.proxy_v2 {
        let n = (child * 1_000_000 + i) as u32;
        let claimed = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff))),
            40000,
        );
        let hdr = gpuproxyd::server::proxy::encode_v2(claimed, args.target);
        tcp.write_all(&hdr).await.map_err(|_| "write")?;
    }
    Ok(if args.tls {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        Box::new(
            tokio::time::timeout(
                Duration::from_secs(10),
                loadkit::tls_connector().connect(name, tcp),
            )
            .await
            .map_err(|_| "tls_timeout")?
            .map_err(|_| "tls")?,
        )
    } else {
        Box::new(tcp)
    })
}

async fn open_one(args: &Args, child: usize, i: usize) -> Result<Conn, &'static str> {
    let stream = connect_one(args, child, i).await?;
    let mut conn = BufReader::with_capacity(1024, stream);
    tokio::time::timeout(Duration::from_secs(10), request(&mut conn, args))
        .await
        .map_err(|_| "request_timeout")??;
    Ok(conn)
}

fn summarize(r: &mut Report) {
    let mut l = std::mem::take(&mut r.latencies_ms);
    if l.is_empty() {
        return;
    }
    l.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| l[((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1];
    r.p50_ms = Some(pick(0.50));
    r.p99_ms = Some(pick(0.99));
    r.max_ms = l.last().copied();
}

fn emit(r: &Report) {
    println!("{}", serde_json::to_string(r).unwrap());
}

/// One slowloris connection slot until `deadline`: an unfinished head, a header line a second,
/// a new connection whenever the server cuts it. Returns how many times it was cut.
async fn slowloris(args: Arc<Args>, child: usize, i: usize, deadline: Instant) -> usize {
    let mut cut = 0;
    while Instant::now() < deadline {
        let Ok(mut s) = connect_one(&args, child, i).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut head = head(&args.path, &args.headers, false);
        head.truncate(head.len() - 2); // unfinished
        if s.write_all(head.as_bytes()).await.is_ok() {
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if s.write_all(b"x-slow: 1\r\n").await.is_err() {
                    break;
                }
            }
        }
        cut += 1;
    }
    cut
}

/// Holds this process's share of connections.
async fn run_worker(args: Args, child: usize) {
    let start = Instant::now();
    if args.slowloris {
        let deadline = Instant::now() + Duration::from_secs(args.hold_secs);
        let args = Arc::new(args);
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| tokio::spawn(slowloris(args.clone(), child, i, deadline)))
            .collect();
        let mut report = Report {
            event: "slowloris".into(),
            held: args.connections,
            ..Default::default()
        };
        for t in tasks {
            *report.errors.entry("cut_by_server".into()).or_default() += t.await.unwrap_or(0);
        }
        report.open_secs = start.elapsed().as_secs_f64();
        emit(&report);
        return;
    }
    let sem = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = Vec::with_capacity(args.connections);
    let args = Arc::new(args);
    for i in 0..args.connections {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let a = args.clone();
        tasks.push(tokio::spawn(async move {
            let r = open_one(&a, child, i).await;
            drop(permit);
            r
        }));
    }
    let mut conns = Vec::with_capacity(args.connections);
    let mut report = Report {
        event: "held".into(),
        ..Default::default()
    };
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => conns.push(c),
            Err(kind) => *report.errors.entry(kind.into()).or_default() += 1,
        }
    }
    report.held = conns.len();
    report.open_secs = start.elapsed().as_secs_f64();
    emit(&report);

    let deadline = Instant::now() + Duration::from_secs(args.hold_secs);
    if args.sse || args.ws {
        hold_streams(conns, deadline).await;
        return;
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (child as u64);
    while Instant::now() < deadline {
        let wait = if args.poke_every_secs == 0 {
            deadline - Instant::now()
        } else {
            Duration::from_secs(args.poke_every_secs).min(deadline - Instant::now())
        };
        tokio::time::sleep(wait).await;
        if args.poke_every_secs == 0 || Instant::now() >= deadline || conns.is_empty() {
            continue;
        }
        let k = ((conns.len() as f64 * args.poke_fraction).ceil() as usize).max(1);
        let mut round = Report {
            event: "poke".into(),
            ..Default::default()
        };
        for _ in 0..k {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let idx = (rng as usize) % conns.len();
            let t = Instant::now();
            match request(&mut conns[idx], &args).await {
                Ok(()) => round.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3),
                Err(kind) => {
                    *round.errors.entry(format!("poke_{kind}")).or_default() += 1;
                    conns.swap_remove(idx);
                }
            }
            round.poke_requests += 1;
        }
        round.held = conns.len();
        emit(&round);
    }
    emit(&Report {
        event: "done".into(),
        held: conns.len(),
        ..Default::default()
    });
}

/// Reads every stream until `deadline`, timing each event from its `at` to its arrival; reports
/// the latencies (as a `poke` report) and what is still open.
async fn hold_streams(conns: Vec<Conn>, deadline: Instant) {
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let lat = lat.clone();
            tokio::spawn(async move {
                let mut line = String::new();
                loop {
                    line.clear();
                    let n = tokio::time::timeout_at(deadline.into(), c.read_line(&mut line)).await;
                    match n {
                        Err(_) => return true,
                        Ok(Ok(0)) | Ok(Err(_)) => return false,
                        Ok(Ok(_)) => {}
                    }
                    let Some(at) = line
                        .strip_prefix("data: ")
                        .and_then(|d| d.split("\"at\":\"").nth(1))
                        .and_then(|r| r.split('"').next())
                        .and_then(|t| humantime::parse_rfc3339(t).ok())
                    else {
                        continue;
                    };
                    let now = std::time::SystemTime::now();
                    let ms = now.duration_since(at).unwrap_or_default().as_secs_f64() * 1e3;
                    lat.lock().unwrap().push(ms);
                }
            })
        })
        .collect();
    let mut open = 0;
    for t in tasks {
        open += usize::from(t.await.unwrap_or(false));
    }
    let latencies_ms = std::mem::take(&mut *lat.lock().unwrap());
    emit(&Report {
        event: "poke".into(),
        poke_requests: latencies_ms.len(),
        latencies_ms,
        ..Default::default()
    });
    emit(&Report {
        event: "done".into(),
        held: open,
        ..Default::default()
    });
}

/// The command line of child `c` holding `n` connections.
fn child_args(a: &Args, n: usize, c: usize) -> Vec<String> {
    let mut v = vec![
        format!("--target={}", a.target),
        format!("--connections={n}"),
        format!("--per-process={n}"),
        format!("--sources={}", a.sources),
        format!("--concurrency={}", a.concurrency),
        format!("--path={}", a.path),
        format!("--hold-secs={}", a.hold_secs),
        format!("--poke-every-secs={}", a.poke_every_secs),
        format!("--poke-fraction={}", a.poke_fraction),
        format!("--child-index={c}"),
    ];
    if a.tls {
        v.push("--tls".into());
    }
    if a.proxy_v2 {
        v.push("--proxy-v2".into());
    }
    if a.slowloris {
        v.push("--slowloris".into());
    }
    if a.ws {
        v.push("--ws".into());
    }
    if a.sse {
        v.push("--sse".into());
    }
    for h in &a.headers {
        v.push(format!("--header={h}"));
    }
    v
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(child) = args.child_index {
        loadkit::die_with_parent();
        run_worker(args, child).await;
        return;
    }
    let procs = args.connections.div_ceil(args.per_process.max(1)).max(1);
    let (_children, mut rx) = loadkit::fan_out::<Report, _>(procs, |c| {
        child_args(&args, loadkit::share(args.connections, procs, c), c)
    });
    let mut held = Report {
        event: "held".into(),
        ..Default::default()
    };
    let mut all = Report {
        event: "done".into(),
        ..Default::default()
    };
    let mut held_seen = 0;
    let mut done_seen = 0;
    while let Some(r) = rx.recv().await {
        match r.event.as_str() {
            "held" => {
                held.held += r.held;
                held.open_secs = held.open_secs.max(r.open_secs);
                for (k, v) in r.errors {
                    *held.errors.entry(k).or_default() += v;
                }
                held_seen += 1;
                if held_seen == procs {
                    emit(&held);
                }
            }
            "poke" => {
                for (k, v) in &r.errors {
                    *all.errors.entry(k.clone()).or_default() += v;
                }
                all.latencies_ms.extend(&r.latencies_ms);
                all.poke_requests += r.poke_requests;
            }
            "done" => {
                all.held += r.held;
                done_seen += 1;
            }
            _ => {}
        }
    }
    for (k, v) in held.errors {
        *all.errors.entry(k).or_default() += v;
    }
    all.open_secs = held.open_secs;
    summarize(&mut all);
    if done_seen < procs {
        all.errors
            .insert("children_failed".into(), procs - done_seen);
    }
    emit(&all);
}
