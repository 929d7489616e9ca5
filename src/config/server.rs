//! `[server]`, `[connections]`, `[proxy_protocol]` and `[log]`: listeners, connection caps, the
//! PROXY protocol trust list, logging; and the `Listen` address type.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::num::{NonZeroU32, NonZeroU64};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{nz32, nz64};

use super::{Millis, MillisOrZero};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTPS listener (TLS terminated here, ALPN h2 and http/1.1). "off" disables it.
    pub https_listen: Listen,
    /// Plain HTTP listener, for use behind a TLS-terminating load balancer. "off" disables it.
    pub http_listen: Listen,
    /// Prometheus scrape listener, kept apart so it can stay on loopback.
    pub metrics_listen: Listen,
    /// Tokio worker threads; 0 means one per core.
    pub workers: usize,
    /// PEM certificate chain for the HTTPS listener; reloaded on SIGHUP.
    pub tls_cert: PathBuf,
    /// PEM private key matching `tls_cert`; reloaded on SIGHUP.
    pub tls_key: PathBuf,
    /// A client that has not finished the TLS handshake by then is dropped.
    pub tls_handshake_timeout_ms: Millis,
    /// Time allowed to receive a request's head once it has begun (a slowloris client is cut),
    /// and for a new connection to begin its first request.
    pub header_read_timeout_ms: Millis,
    /// After SIGTERM, keep accepting this long while `/ready` answers 503, so a load balancer's
    /// health check takes the daemon out before its listeners close.
    pub drain_delay_ms: MillisOrZero,
    /// How long in-flight requests may run after the listeners close before the process exits
    /// anyway.
    pub shutdown_grace_ms: MillisOrZero,
    /// When the listeners close, an idle HTTP/1 keep-alive connection stays open this long for a
    /// request the client may already have sent (closing it at once loses that request); one that
    /// arrives is answered with `Connection: close`.
    pub drain_linger_ms: MillisOrZero,
    /// Largest request body accepted; larger ones get 413 before the body is read.
    pub max_body_bytes: NonZeroU64,
    /// A request body must have arrived this long after the handler asks for it (a trickled
    /// body gets 408 and its connection closes).
    pub body_read_timeout_ms: Millis,
    /// Largest request head (request line and headers) accepted: HTTP/1 read buffer and HTTP/2
    /// header list. An API needs a few KiB; a larger head gets 431, and a connection can never
    /// hold more than this while its head is unfinished. At least 8192.
    pub max_header_bytes: NonZeroU32,
    /// The listen backlog asked of the kernel (capped by `net.core.somaxconn`): connections the
    /// kernel completes while the daemon is busy accepting.
    pub listen_backlog: NonZeroU32,
    /// HTTP/2 streams one client connection may have open at once.
    pub h2_max_concurrent_streams: NonZeroU32,
    /// Serves `GET /debug/sleep?ms=N` (a request that takes N ms, at most 60 s) for drain and
    /// timeout drills. Off in production.
    pub debug_routes: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            https_listen: Listen(Some(SocketAddr::from(([0, 0, 0, 0], 8443)))),
            http_listen: Listen(None),
            metrics_listen: Listen(Some(SocketAddr::from(([127, 0, 0, 1], 9090)))),
            workers: 0,
            tls_cert: PathBuf::from("certs/server.crt"),
            tls_key: PathBuf::from("certs/server.key"),
            tls_handshake_timeout_ms: Millis(10_000),
            header_read_timeout_ms: Millis(10_000),
            drain_delay_ms: MillisOrZero(0),
            shutdown_grace_ms: MillisOrZero(30_000),
            drain_linger_ms: MillisOrZero(1_000),
            max_body_bytes: nz64(1 << 20),
            body_read_timeout_ms: Millis(30_000),
            max_header_bytes: nz32(16_384),
            listen_backlog: nz32(4096),
            h2_max_concurrent_streams: nz32(256),
            debug_routes: false,
        }
    }
}

impl ServerConfig {
    pub fn tls_handshake_timeout(&self) -> Duration {
        self.tls_handshake_timeout_ms.get()
    }
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout_ms.get()
    }
    pub fn drain_delay(&self) -> Duration {
        self.drain_delay_ms.get()
    }
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace_ms.get()
    }
}

/// Connection governance: caps, timeouts and idle memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Global cap on open client connections; 0 = as many as RLIMIT_NOFILE allows after
    /// `fd_reserve`. A value the limit cannot hold stops the start (see `clamp_to_fd_limit`).
    pub max: u64,
    /// Cap per client address (after the PROXY protocol); IPv6 counted per `ipv6_prefix_len`.
    pub max_per_ip: NonZeroU32,
    /// IPv6 clients sharing this prefix share one per-IP cap (one /64 is usually one site).
    pub ipv6_prefix_len: u8,
    /// File descriptors kept back from the cap for listeners, upstream, PostgreSQL and Redis.
    pub fd_reserve: u64,
    /// Start anyway with the cap lowered to what the limit holds (also `--clamp-to-fd-limit`).
    pub clamp_to_fd_limit: bool,
    /// A keep-alive connection waiting longer than this for its next request is closed.
    pub idle_timeout_ms: Millis,
    /// Connections older than this are closed gracefully (spreads load after a deploy); 0 = never.
    pub max_age_ms: MillisOrZero,
    /// A connection whose client has read nothing of an answer for this long is dropped (a
    /// client that never reads holds its buffers and task otherwise).
    pub write_timeout_ms: Millis,
    /// A connection asked to close (idle, too old, draining) and still open this long after is
    /// dropped (its client neither finished nor read what was in flight).
    pub force_close_after_ms: Millis,
    /// An HTTP/1 connection idle this long gives its HTTP buffers back and waits for its next
    /// request holding only the socket; 0 keeps hyper's buffers for the connection's life.
    pub park_after_ms: MillisOrZero,
    /// How often the reaper walks the table to enforce the timeouts above.
    pub reap_interval_ms: Millis,
    /// Shards of the connection table (a power of two); 0 = 4 × workers.
    pub shards: usize,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max: 0,
            max_per_ip: nz32(1024),
            ipv6_prefix_len: 64,
            fd_reserve: 1024,
            clamp_to_fd_limit: false,
            idle_timeout_ms: Millis(60_000),
            max_age_ms: MillisOrZero(0),
            write_timeout_ms: Millis(30_000),
            force_close_after_ms: Millis(30_000),
            park_after_ms: MillisOrZero(1_000),
            reap_interval_ms: Millis(1_000),
            shards: 0,
        }
    }
}

/// PROXY protocol (v1 and v2) on the listeners that enable it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocolConfig {
    /// Expect headers on the HTTPS listener (HAProxy in TCP mode, `send-proxy-v2`).
    pub https: bool,
    /// Expect headers on the plain HTTP listener.
    pub http: bool,
    /// Peers allowed to send a header (the load balancers). They must send one; any other peer
    /// is served as a direct client and refused if it sends a header.
    pub trusted_cidrs: Vec<crate::types::ip::Cidr>,
    /// Time allowed for the header to arrive.
    pub header_timeout_ms: Millis,
}

impl Default for ProxyProtocolConfig {
    fn default() -> Self {
        ProxyProtocolConfig {
            https: false,
            http: false,
            trusted_cidrs: ["127.0.0.1/32", "::1/128"]
                .map(|c| c.parse().expect("valid default"))
                .to_vec(),
            header_timeout_ms: Millis(5_000),
        }
    }
}

impl ProxyProtocolConfig {
    pub fn enabled_for(&self, l: crate::types::listener::ListenerKind) -> bool {
        match l {
            crate::types::listener::ListenerKind::Https => self.https,
            crate::types::listener::ListenerKind::Http => self.http,
        }
    }
    /// The trust list, parsed (validated at load, so this cannot fail afterwards).
    pub fn trusted(&self) -> Vec<crate::types::ip::Cidr> {
        self.trusted_cidrs.clone()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` for log shippers, `text` for people at a terminal.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `gpuproxyd=debug,info`.
    pub level: String,
    /// One line per request (request id, method, path, status, duration, client address).
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
            access_log: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// A listen address that can be switched off with `"off"` (or an empty string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(a) => s.collect_str(&a),
            None => s.serialize_str("off"),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.trim() {
            "" | "off" => Ok(Listen(None)),
            t => t.parse().map(|a| Listen(Some(a))).map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{t}` is not an address like 127.0.0.1:8443 or [::]:8443 (or \"off\")"
                ))
            }),
        }
    }
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        use super::err;
        if self.https_listen.0.is_none() && self.http_listen.0.is_none() {
            return Err(err(
                "server.https_listen",
                "both server.https_listen and server.http_listen are off: nothing would be served",
            ));
        }
        if self.https_listen.0.is_some() {
            for (key, path) in [
                ("server.tls_cert", &self.tls_cert),
                ("server.tls_key", &self.tls_key),
            ] {
                if !std::path::Path::new(path).is_file() {
                    return Err(err(
                        key,
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        if !(8192..=1 << 20).contains(&self.max_header_bytes.get()) {
            return Err(err(
                "server.max_header_bytes",
                "between 8192 and 1048576 (hyper reads at least 8 KiB at once)",
            ));
        }
        if self.workers > 1024 {
            return Err(err("server.workers", "at most 1024 (0 = one per core)"));
        }
        Ok(())
    }
}

impl ConnectionsConfig {
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        use super::err;
        if self.ipv6_prefix_len > 128 {
            return Err(err("connections.ipv6_prefix_len", "at most 128"));
        }
        if self.shards != 0 && !self.shards.is_power_of_two() {
            return Err(err(
                "connections.shards",
                "must be a power of two (or 0 for automatic)",
            ));
        }
        Ok(())
    }
}
