//! `gpuproxy-agent`: the program on a rented machine that holds its instance's channel to
//! gpuproxyd (`/v1/agent`, docs/agents.md). It connects with the instance's agent token (from
//! the environment only: `GPUPROXY_AGENT_TOKEN`, never a flag or a log line), says hello (the
//! instance, its version, the GPUs `nvidia-smi` lists, the host's facts), sends a heartbeat
//! with each GPU's utilisation and memory every `heartbeat_s` the welcome names, answers pings,
//! runs the commands the daemon sends (`exec`), and reconnects after any loss with jittered
//! exponential back-off (so agents do not all come back at once after a daemon restart). A
//! refused token (401: the instance ended, or a new token was minted) ends it with status 77.
//!
//! The messages are the daemon's own definitions (`gpuproxyd::agents::protocol`).

mod exec;
mod gpus;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use gpuproxyd::agents::protocol::{AgentMessage, DaemonMessage};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
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

/// Messages of running commands waiting for a connection.
const OUTBOX: usize = 256;

/// What outlives one connection: the commands' messages waiting to be sent (and the one whose
/// sending failed, sent first on the next connection), and the commands running.
struct Work {
    tx: mpsc::Sender<AgentMessage>,
    rx: mpsc::Receiver<AgentMessage>,
    unsent: Option<AgentMessage>,
    running: Arc<Mutex<HashSet<String>>>,
}

impl Work {
    /// Starts command `id` unless it already runs (a command is run at most once).
    fn exec(&self, id: String, argv: Vec<String>, timeout_s: u32) {
        if argv.is_empty()
            || !self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone())
        {
            return;
        }
        let (tx, running) = (self.tx.clone(), self.running.clone());
        tokio::spawn(async move {
            exec::run(id.clone(), argv, timeout_s, tx).await;
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }
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
    let (tx, rx) = mpsc::channel(OUTBOX);
    let mut work = Work {
        tx,
        rx,
        unsent: None,
        running: Arc::default(),
    };
    loop {
        match session(&args, &token, tls.clone(), &mut failures, &mut work).await {
            Lost::Refused(why) => {
                eprintln!("gpuproxy-agent: the daemon refused the agent token ({why}); stopping");
                std::process::exit(EX_NOPERM);
            }
            Lost::Retry(why) => {
                failures = failures.saturating_add(1);
                let wait = gpuproxyd::agents::protocol::reconnect_backoff(
                    failures,
                    Duration::from_secs(args.max_backoff_s),
                );
                eprintln!(
                    "gpuproxy-agent: channel lost ({why}); reconnecting in {} ms",
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
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
    work: &mut Work,
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
    let hello = AgentMessage::Hello {
        instance_id: args.instance.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        gpus: gpus::inventory(),
        host: gpus::host(),
    };
    if let Err(e) = ws.send(text(&hello)).await {
        return Lost::Retry(format!("hello: {e}"));
    }
    let mut every = None;
    let mut next_beat: Option<Instant> = None;
    loop {
        let tick = async {
            match next_beat {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // once welcomed: the message whose sending failed last time, then commands' messages
        if every.is_some()
            && let Some(m) = work.unsent.take()
            && let Err(e) = ws.send(text(&m)).await
        {
            work.unsent = Some(m);
            return Lost::Retry(format!("send: {e}"));
        }
        let outgoing = async {
            match every {
                Some(_) => work.rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<DaemonMessage>(&t) {
                    Ok(DaemonMessage::Welcome { heartbeat_s, .. }) => {
                        let d = Duration::from_secs(u64::from(heartbeat_s.max(1)));
                        every = Some(d);
                        next_beat = Some(Instant::now() + d);
                        *failures = 0;
                        eprintln!("gpuproxy-agent: connected; heartbeat every {heartbeat_s} s");
                    }
                    Ok(DaemonMessage::Exec { id, argv, timeout_s }) => work.exec(id, argv, timeout_s),
                    Err(e) => eprintln!("gpuproxy-agent: a message it does not know ({e}); ignored"),
                },
                Some(Ok(Message::Close(f))) => {
                    let why = f.map_or_else(|| "closed".to_owned(), |f| format!("{} {}", u16::from(f.code), f.reason));
                    return Lost::Retry(why);
                }
                // pings are answered by the library as it reads
                Some(Ok(_)) => {}
                Some(Err(e)) => return Lost::Retry(e.to_string()),
                None => return Lost::Retry("closed".into()),
            },
            m = outgoing => {
                let Some(m) = m else { continue };
                if let Err(e) = ws.send(text(&m)).await {
                    work.unsent = Some(m);
                    return Lost::Retry(format!("send: {e}"));
                }
            }
            _ = tick => {
                next_beat = every.map(|d| Instant::now() + d);
                let beat = AgentMessage::Heartbeat { gpus: gpus::samples() };
                if let Err(e) = ws.send(text(&beat)).await {
                    return Lost::Retry(format!("heartbeat: {e}"));
                }
            }
        }
    }
}

fn text(m: &AgentMessage) -> Message {
    Message::text(serde_json::to_string(m).expect("messages serialize"))
}
