//! `gpuproxy-agent`: the program on a rented machine that holds its instance's channel to
//! gpuproxyd (`/v1/agent`, docs/agents.md). It connects with the instance's agent token (from
//! the environment only: `GPUPROXY_AGENT_TOKEN`, never a flag or a log line), says hello (the
//! instance, its version, the GPUs `nvidia-smi` lists, the host's facts), sends a heartbeat
//! with each GPU's utilisation and memory every `heartbeat_s` the welcome names, answers pings,
//! and reconnects after any loss with jittered exponential back-off (so agents do not all come
//! back at once after a daemon restart). A refused token (401: the instance ended, or a new
//! token was minted) ends it with status 77.

mod gpus;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Exit status when the daemon refuses the token (sysexits' EX_NOPERM).
const EX_NOPERM: i32 = 77;

#[derive(Parser, Debug)]
#[command(
    name = "gpuproxy-agent",
    version,
    about = "The gpuproxyd agent of a rented machine"
)]
struct Args {
    /// The daemon's URL (`https://gpu.example.com`).
    #[arg(long, env = "GPUPROXY_URL")]
    url: String,
    /// The instance this machine is (what the token was minted for).
    #[arg(long, env = "GPUPROXY_INSTANCE_ID")]
    instance: String,
    /// A PEM file of certificates to trust besides the public roots (a private CA).
    #[arg(long, env = "GPUPROXY_CACERT")]
    cacert: Option<String>,
    /// The longest wait between reconnection attempts (seconds).
    #[arg(long, default_value_t = 60)]
    max_backoff_s: u64,
}

/// Why a connection ended.
enum Lost {
    /// The daemon refused the token: stop.
    Refused(String),
    /// Anything else: reconnect.
    Retry(String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let Ok(token) = std::env::var("GPUPROXY_AGENT_TOKEN") else {
        eprintln!("gpuproxy-agent: GPUPROXY_AGENT_TOKEN is not set");
        std::process::exit(64);
    };
    let tls = match tls_config(args.cacert.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gpuproxy-agent: {e}");
            std::process::exit(64);
        }
    };
    let mut failures: u32 = 0;
    loop {
        match session(&args, &token, tls.clone(), &mut failures).await {
            Lost::Refused(why) => {
                eprintln!("gpuproxy-agent: the daemon refused the agent token ({why}); stopping");
                std::process::exit(EX_NOPERM);
            }
            Lost::Retry(why) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures, Duration::from_secs(args.max_backoff_s));
                eprintln!(
                    "gpuproxy-agent: channel lost ({why}); reconnecting in {} ms",
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Full-jitter exponential back-off: a random wait up to min(max, 0.5 s × 2^failures).
fn backoff(failures: u32, max: Duration) -> Duration {
    let cap = Duration::from_millis(500)
        .saturating_mul(1u32 << failures.min(16))
        .min(max);
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).expect("the OS random source works");
    let frac = (u64::from_be_bytes(r) >> 11) as f64 / (1u64 << 53) as f64;
    cap.mul_f64(frac).max(Duration::from_millis(50))
}

fn tls_config(cacert: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = cacert {
        for c in gpuproxyd::types::pem::certificates(path)? {
            roots.add(c).map_err(|e| format!("{path}: {e}"))?;
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // the channel is an HTTP/1.1 upgrade
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// One connection, from the handshake to its loss. `failures` is reset once welcomed.
async fn session(
    args: &Args,
    token: &str,
    tls: Arc<rustls::ClientConfig>,
    failures: &mut u32,
) -> Lost {
    let url = args.url.trim_end_matches('/');
    let Some(rest) = url.strip_prefix("https://") else {
        return Lost::Refused("--url must be https://".into());
    };
    let host_port = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_owned(), p.parse::<u16>().unwrap_or(443)),
        _ => (host_port.to_owned(), 443),
    };
    let tcp = match TcpStream::connect((host.as_str(), port)).await {
        Ok(t) => t,
        Err(e) => return Lost::Retry(format!("connect: {e}")),
    };
    let _ = tcp.set_nodelay(true);
    let Ok(name) = ServerName::try_from(host.clone()) else {
        return Lost::Refused(format!("not a host name: {host}"));
    };
    let stream = match tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
    {
        Ok(s) => s,
        Err(e) => return Lost::Retry(format!("TLS: {e}")),
    };
    let Ok(mut req) = format!("wss://{host_port}/v1/agent").into_client_request() else {
        return Lost::Refused("not a URL".into());
    };
    match format!("Bearer {token}").parse() {
        Ok(v) => {
            req.headers_mut().insert("authorization", v);
        }
        Err(_) => return Lost::Refused("the token is not header text".into()),
    }
    let mut ws = match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => ws,
        Err(WsError::Http(r)) if r.status().as_u16() == 401 => {
            return Lost::Refused("HTTP 401".into());
        }
        Err(e) => return Lost::Retry(format!("handshake: {e}")),
    };
    let hello = json!({
        "type": "hello",
        "instance_id": args.instance,
        "agent_version": env!("CARGO_PKG_VERSION"),
        "gpus": gpus::inventory(),
        "host": gpus::host(),
    });
    if let Err(e) = ws.send(Message::text(hello.to_string())).await {
        return Lost::Retry(format!("hello: {e}"));
    }
    let mut every = None;
    loop {
        let tick = async {
            match every {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    if v["type"] == "welcome" {
                        let s = v["heartbeat_s"].as_u64().unwrap_or(15).max(1);
                        every = Some(Duration::from_secs(s));
                        *failures = 0;
                        eprintln!("gpuproxy-agent: connected; heartbeat every {s} s");
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    let why = f.map_or_else(|| "closed".to_owned(), |f| format!("{} {}", u16::from(f.code), f.reason));
                    return Lost::Retry(why);
                }
                // pings are answered by the library as it reads
                Some(Ok(_)) => {}
                Some(Err(e)) => return Lost::Retry(e.to_string()),
                None => return Lost::Retry("closed".into()),
            },
            _ = tick => {
                let beat = json!({"type": "heartbeat", "gpus": gpus::samples()});
                if let Err(e) = ws.send(Message::text(beat.to_string())).await {
                    return Lost::Retry(format!("heartbeat: {e}"));
                }
            }
        }
    }
}
