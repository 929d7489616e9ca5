//! The one typed configuration tree, and where every config key is named.
//!
//! Layers, later wins: built-in defaults < TOML file < `GPUPROXY_*` environment < CLI flags
//! (`--set section.key=value` and the named flags in `cli.rs`). Every layer is merged as a TOML value
//! and deserialized once, with unknown keys rejected, so an error always names the key at fault.
//!
//! Secrets (`DATABASE_URL`, `REDIS_URL`, `JWT_SECRET`, `VASTAI_API_KEY`, `IONET_API_KEY`) are read only
//! from the environment, held in [`Secret`], and never printed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of environment variables that override config keys: `GPUPROXY_SERVER_HTTPS_LISTEN`
/// sets `server.https_listen`.
pub const ENV_PREFIX: &str = "GPUPROXY_";

/// Exit status for a bad configuration (sysexits.h `EX_USAGE`), used by `serve` and `check-config`.
pub const EXIT_BAD_CONFIG: i32 = 64;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub connections: ConnectionsConfig,
    pub proxy_protocol: ProxyProtocolConfig,
    pub ratelimit: RateLimitConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub providers: ProvidersConfig,
    pub offers: OffersConfig,
    pub rentals: RentalsConfig,
    pub passthrough: PassthroughConfig,
    pub log: LogConfig,
    /// Read from the environment only; skipped by (de)serialization so a file cannot carry them.
    #[serde(skip)]
    pub secrets: Secrets,
}

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
    pub tls_handshake_timeout_ms: u64,
    /// Time allowed to receive a request's head once it has begun (a slowloris client is cut),
    /// and for a new connection to begin its first request.
    pub header_read_timeout_ms: u64,
    /// After SIGTERM, keep accepting this long while `/ready` answers 503, so a load balancer's
    /// health check takes the daemon out before its listeners close.
    pub drain_delay_ms: u64,
    /// How long in-flight requests may run after the listeners close before the process exits
    /// anyway.
    pub shutdown_grace_ms: u64,
    /// Largest request body accepted; larger ones get 413 before the body is read.
    pub max_body_bytes: u64,
    /// HTTP/2 streams one client connection may have open at once.
    pub h2_max_concurrent_streams: u32,
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
            tls_handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            drain_delay_ms: 0,
            shutdown_grace_ms: 30_000,
            max_body_bytes: 1 << 20,
            h2_max_concurrent_streams: 256,
            debug_routes: false,
        }
    }
}

impl ServerConfig {
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.tls_handshake_timeout_ms)
    }
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
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
    pub max_per_ip: u32,
    /// IPv6 clients sharing this prefix share one per-IP cap (one /64 is usually one site).
    pub ipv6_prefix_len: u8,
    /// File descriptors kept back from the cap for listeners, upstream, PostgreSQL and Redis.
    pub fd_reserve: u64,
    /// Start anyway with the cap lowered to what the limit holds (also `--clamp-to-fd-limit`).
    pub clamp_to_fd_limit: bool,
    /// A keep-alive connection waiting longer than this for its next request is closed.
    pub idle_timeout_ms: u64,
    /// Connections older than this are closed gracefully (spreads load after a deploy); 0 = never.
    pub max_age_ms: u64,
    /// An HTTP/1 connection idle this long gives its HTTP buffers back and waits for its next
    /// request holding only the socket; 0 keeps hyper's buffers for the connection's life.
    pub park_after_ms: u64,
    /// How often the reaper walks the table to enforce the timeouts above.
    pub reap_interval_ms: u64,
    /// Shards of the connection table (a power of two); 0 = 4 × workers.
    pub shards: usize,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max: 0,
            max_per_ip: 1024,
            ipv6_prefix_len: 64,
            fd_reserve: 1024,
            clamp_to_fd_limit: false,
            idle_timeout_ms: 60_000,
            max_age_ms: 0,
            park_after_ms: 1_000,
            reap_interval_ms: 1_000,
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
    pub trusted_cidrs: Vec<String>,
    /// Time allowed for the header to arrive.
    pub header_timeout_ms: u64,
}

impl Default for ProxyProtocolConfig {
    fn default() -> Self {
        ProxyProtocolConfig {
            https: false,
            http: false,
            trusted_cidrs: vec!["127.0.0.1/32".into(), "::1/128".into()],
            header_timeout_ms: 5_000,
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
        self.trusted_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }
}

/// Rate limiting (GCRA). The per-IP tier runs before authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Send `RateLimit` on successful responses too (429s always carry it).
    pub headers: bool,
    /// Sustained requests per minute per client address (PROXY address when enabled).
    pub ip_per_minute: u64,
    /// Requests a fresh client address may send at once.
    pub ip_burst: u64,
    /// Sustained requests per minute per account (all its keys together), unless the account
    /// row overrides it.
    pub account_per_minute: u64,
    pub account_burst: u64,
    /// Sustained requests per minute per API key (and the tokens issued from it), unless the key
    /// row overrides it.
    pub key_per_minute: u64,
    pub key_burst: u64,
    /// Keys a tier tracks individually; beyond, new keys share `overflow_cells` budgets.
    pub max_keys: usize,
    /// Shared cells for keys beyond `max_keys` (colliding keys are limited together).
    pub overflow_cells: usize,
    /// How often keys back at a full burst are forgotten.
    pub sweep_interval_ms: u64,
    /// With Redis: how often this daemon announces itself (a key that expires after
    /// `peer_ttl_ms`) and counts the live daemons; each enforces 1/n of every limit.
    pub peer_heartbeat_ms: u64,
    /// Life of the announcement: a daemon that stops is no longer counted after this long.
    pub peer_ttl_ms: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            headers: true,
            ip_per_minute: 1000,
            ip_burst: 100,
            peer_heartbeat_ms: 1_000,
            peer_ttl_ms: 3_000,
            account_per_minute: 10_000,
            account_burst: 1_000,
            key_per_minute: 100_000,
            key_burst: 10_000,
            max_keys: 100_000,
            overflow_cells: 65_536,
            sweep_interval_ms: 10_000,
        }
    }
}

/// The PostgreSQL pool (bb8 + tokio-postgres), reached through PgBouncer in transaction mode at
/// `DATABASE_URL`. Every query is an unnamed statement (`query_typed`), so any pool size works
/// with any PgBouncer pool size.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Connections the daemon keeps to PgBouncer at most.
    pub pool_size: u32,
    /// How long a request waits for a pooled connection (including opening one) before it is
    /// answered 503 `auth_unavailable`.
    pub acquire_timeout_ms: u64,
    /// TCP connect plus startup of one new connection.
    pub connect_timeout_ms: u64,
    /// A query running longer than this is abandoned and counts as the database being down.
    pub query_timeout_ms: u64,
    /// Connections are replaced after this age (spreads reconnects after a PgBouncer restart).
    pub max_lifetime_ms: u64,
    /// Idle connections beyond need are closed after this long.
    pub idle_timeout_ms: u64,
    /// How often the pool is probed for `/ready` and the pool gauges.
    pub health_interval_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            pool_size: 20,
            acquire_timeout_ms: 1_000,
            connect_timeout_ms: 1_000,
            query_timeout_ms: 2_000,
            max_lifetime_ms: 1_800_000,
            idle_timeout_ms: 600_000,
            health_interval_ms: 1_000,
        }
    }
}

/// Redis (fred) at `REDIS_URL`: the shared auth cache and the revocation channel. Never on the
/// critical path: every command has a short timeout and fails fast while disconnected.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// A command not answered by then counts as a miss (the caller goes on without Redis).
    pub command_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Reconnect back-off grows up to this delay; reconnecting never stops.
    pub reconnect_max_delay_ms: u64,
    /// Prefix of every key and channel, so deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            command_timeout_ms: 250,
            connect_timeout_ms: 500,
            reconnect_max_delay_ms: 2_000,
            key_prefix: "gpx:".into(),
        }
    }
}

/// Authentication: the key cache layers and JWTs (signed with `JWT_SECRET`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Life of a key in the in-process cache. With Redis down, a key revoked elsewhere can pass
    /// on this daemon for at most this long.
    pub cache_ttl_ms: u64,
    /// Keys the in-process cache holds at most (beyond, lookups go to Redis/PostgreSQL).
    pub cache_max_entries: usize,
    /// An unknown key id is remembered as unknown this long, in process and in Redis.
    pub negative_ttl_ms: u64,
    /// Life of a key record in Redis.
    pub redis_ttl_ms: u64,
    /// While PostgreSQL is unreachable, an in-process entry fetched at most this long ago is
    /// still honoured (cached keys keep working through a database outage).
    pub stale_if_error_ms: u64,
    /// Lifetime of the tokens `POST /v1/auth/token` issues.
    pub jwt_ttl_ms: u64,
    /// `iss` of issued tokens, required on presented ones.
    pub jwt_issuer: String,
    /// `aud` of issued tokens, required on presented ones.
    pub jwt_audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub jwt_leeway_s: u64,
    /// How often `api_keys.last_used_at` is written (one batched UPDATE per interval).
    pub last_used_flush_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            cache_ttl_ms: 5_000,
            cache_max_entries: 100_000,
            negative_ttl_ms: 5_000,
            redis_ttl_ms: 60_000,
            stale_if_error_ms: 300_000,
            jwt_ttl_ms: 900_000,
            jwt_issuer: "gpuproxyd".into(),
            jwt_audience: "gpuproxyd-api".into(),
            jwt_leeway_s: 5,
            last_used_flush_ms: 10_000,
        }
    }
}

/// The clients a `[providers.<id>]` table may name as its `kind`.
pub const PROVIDER_KINDS: &[&str] = &["vastai", "ionet", "generic"];

/// The provider clients: one `[providers.<id>]` table per provider (the registry: adding a
/// provider is a table, plus a client file when its API is new), and the HTTP settings they
/// share: how long a call may take and how failures are contained.
///
/// (No `deny_unknown_fields` here: serde cannot combine it with the flattened tables. A
/// misspelled setting is still refused, as a value that is not a provider table.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProvidersConfig {
    /// TCP + TLS connect, per attempt.
    pub connect_timeout_ms: u64,
    /// One attempt: request sent to the whole body read.
    pub request_timeout_ms: u64,
    /// Every attempt and back-off of one call together; retries never go past it.
    pub total_timeout_ms: u64,
    /// Idle keep-alive connections kept per provider host.
    pub pool_max_idle_per_host: usize,
    /// Requests in flight (so connections) per provider host at most; more wait for a slot
    /// within their timeout.
    pub max_connections_per_host: usize,
    pub pool_idle_timeout_ms: u64,
    /// Retries of an idempotent call after a connect error, timeout, 429, 502, 503 or 504.
    pub max_retries: u32,
    /// First back-off; doubles per retry up to `retry_max_backoff_ms`, with full jitter.
    pub retry_base_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    /// After an upstream 429 without `Retry-After` (Vast.ai never sends one), calls to that
    /// provider wait this long (they fail fast, so cached or stale answers are used meanwhile).
    pub rate_limit_backoff_ms: u64,
    /// Consecutive failed calls that open a provider's circuit.
    pub breaker_consecutive_failures: u32,
    /// Or: this share of failed calls among the last `breaker_window` calls.
    pub breaker_error_rate: f64,
    pub breaker_window: u32,
    /// How long an open circuit refuses calls before one half-open probe is let through.
    pub breaker_open_ms: u64,
    /// Largest upstream body read (a provider answering more is treated as failing).
    pub max_body_bytes: u64,
    /// `[providers.<id>]`: every provider by id (the table's name, which prefixes its offer ids
    /// and labels its metrics).
    #[serde(flatten)]
    pub tables: BTreeMap<String, ProviderTable>,
}

/// One provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderTable {
    /// The client that speaks its API (one of [`PROVIDER_KINDS`]); empty: the table's name.
    pub kind: String,
    /// Offered at all; a disabled provider is not asked and cannot be rented from.
    pub enabled: bool,
    /// API root (tests and the demo point it at the sandbox).
    pub base_url: String,
    /// The environment variable holding its API key (keys never sit in a file). Without the
    /// key, Vast.ai still searches (its search needs none); io.net reports `disabled`.
    pub api_key_env: String,
    /// Offers one search asks for (Vast.ai's `limit`; others list everything).
    pub search_limit: u32,
    /// `/v1/providers/<id>/{path}` rules (see `[passthrough]`): `METHOD /path [body=keys]`.
    pub passthrough: Vec<crate::types::passthrough::Rule>,
}

impl Default for ProviderTable {
    fn default() -> Self {
        ProviderTable {
            kind: String::new(),
            enabled: true,
            base_url: String::new(),
            api_key_env: String::new(),
            search_limit: 1_000,
            passthrough: Vec::new(),
        }
    }
}

impl ProviderTable {
    /// The client kind, the table's name when `kind` is not given.
    pub fn kind<'a>(&'a self, id: &'a str) -> &'a str {
        if self.kind.is_empty() { id } else { &self.kind }
    }
}

fn rules(list: &[&str]) -> Vec<crate::types::passthrough::Rule> {
    list.iter()
        .map(|r| crate::types::passthrough::Rule::parse(r).expect("default rules parse"))
        .collect()
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        let vastai = ProviderTable {
            base_url: "https://console.vast.ai".into(),
            api_key_env: "VASTAI_API_KEY".into(),
            passthrough: rules(&[
                "GET /api/v0/instances/{instance}/",
                // start/stop only: the label holds our id, and a state change is recorded
                "PUT /api/v0/instances/{instance}/ body=state",
                "PUT /api/v0/instances/reboot/{instance}/ body=",
                "PUT /api/v0/instances/request_logs/{instance}/ body=",
                "POST /api/v0/bundles/",
            ]),
            ..ProviderTable::default()
        };
        let ionet = ProviderTable {
            base_url: "https://api.io.solutions".into(),
            api_key_env: "IONET_API_KEY".into(),
            passthrough: rules(&[
                "GET /enterprise/v1/io-cloud/vmaas/deployment/{instance}",
                "GET /enterprise/v1/io-cloud/vmaas/deployment/{instance}/vms",
                "POST /enterprise/v1/io-cloud/vmaas/deployment/{instance}/extend",
                "GET /enterprise/v1/io-cloud/vmaas/hardware",
                "GET /enterprise/v1/io-cloud/vmaas/available-vms",
                "GET /enterprise/v1/io-cloud/vmaas/price",
            ]),
            ..ProviderTable::default()
        };
        ProvidersConfig {
            tables: BTreeMap::from([("vastai".into(), vastai), ("ionet".into(), ionet)]),
            connect_timeout_ms: 2_000,
            request_timeout_ms: 5_000,
            total_timeout_ms: 10_000,
            pool_max_idle_per_host: 32,
            max_connections_per_host: 128,
            pool_idle_timeout_ms: 60_000,
            max_retries: 2,
            retry_base_backoff_ms: 100,
            retry_max_backoff_ms: 2_000,
            rate_limit_backoff_ms: 6_000,
            breaker_consecutive_failures: 5,
            breaker_error_rate: 0.5,
            breaker_window: 20,
            breaker_open_ms: 10_000,
            max_body_bytes: 32 * 1024 * 1024,
        }
    }
}

/// `GET /v1/offers`: the cache in front of the providers, and paging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffersConfig {
    /// A provider's answer is fresh this long.
    pub cache_ttl_ms: u64,
    /// After that, it is still served (marked stale) for this long while one background refresh
    /// runs.
    pub stale_while_revalidate_ms: u64,
    /// While a provider fails, an answer up to this old is served (marked stale) instead of an
    /// error; also the life of the Redis copy.
    pub stale_if_error_ms: u64,
    /// Provider answers the in-process layer keeps at most.
    pub cache_max_entries: usize,
    /// Page size when `limit` is not given, and the largest `limit` accepted.
    pub default_limit: u32,
    pub max_limit: u32,
    /// Disk size used to price Vast.ai storage when `disk_gb` is not given.
    pub default_disk_gb: u32,
}

impl Default for OffersConfig {
    fn default() -> Self {
        OffersConfig {
            cache_ttl_ms: 30_000,
            stale_while_revalidate_ms: 30_000,
            stale_if_error_ms: 600_000,
            cache_max_entries: 4_096,
            default_limit: 20,
            max_limit: 200,
            default_disk_gb: 20,
        }
    }
}

/// `/v1/providers/{provider}/{path}`: provider API calls forwarded with the provider key. Only
/// the `passthrough` rules of the provider's table pass (`METHOD /path [body=keys]`);
/// `{instance}` matches one path segment that must be the provider id of one of the caller's
/// own instances; a trailing `*` matches the rest. Listing or creating instances, and account
/// endpoints, stay out: every account shares one provider key, so those would show or spend
/// across accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassthroughConfig {
    pub enabled: bool,
}

impl Default for PassthroughConfig {
    fn default() -> Self {
        PassthroughConfig { enabled: true }
    }
}

/// Renting: the price check, status reads, the reconciler and `Idempotency-Key` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RentalsConfig {
    /// A rental is refused (409 `price_changed`) when the offer's price now is above the price
    /// the caller was shown (the offers cache) by more than this fraction.
    pub price_tolerance: f64,
    /// An instance's provider status is reused this long (a thousand pollers, one provider call).
    pub status_cache_ms: u64,
    /// How often the reconciler compares the ledger with the providers (it also runs at start).
    pub reconcile_interval_ms: u64,
    /// An intent still pending after this long is settled by the reconciler: adopted when the
    /// provider has an instance with our id, marked failed otherwise.
    pub intent_timeout_ms: u64,
    /// `Idempotency-Key` records are kept this long.
    pub idempotency_ttl_ms: u64,
    /// io.net deployments run for a fixed time: this many hours when the request does not say.
    pub default_duration_hours: u32,
    /// SSH keys an account may store in `/v1/ssh-keys`.
    pub max_ssh_keys: u32,
    /// An instance the provider reports in a state that never reaches `running` (Vast: exited,
    /// offline, unknown, a failed container create) this long is destroyed and marked failed.
    pub dead_state_grace_ms: u64,
    /// An instance not `running` this long after the provider accepted it is destroyed and
    /// marked failed (it would bill its disk, or more, forever).
    pub provisioning_timeout_ms: u64,
}

impl Default for RentalsConfig {
    fn default() -> Self {
        RentalsConfig {
            price_tolerance: 0.05,
            status_cache_ms: 2_000,
            reconcile_interval_ms: 60_000,
            intent_timeout_ms: 120_000,
            idempotency_ttl_ms: 86_400_000,
            default_duration_hours: 24,
            max_ssh_keys: 20,
            dead_state_grace_ms: 120_000,
            provisioning_timeout_ms: 600_000,
        }
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

/// A secret value: printable only as `<redacted>`, so it cannot leak through `{:?}` or a log field.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The one way to read the value; call it only where the secret is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The secrets, from the environment variables of the same (upper-case) names.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub database_url: Option<Secret>,
    pub redis_url: Option<Secret>,
    pub jwt_secret: Option<Secret>,
    /// Provider API keys, by the environment variable their table names (`api_key_env`).
    pub provider_keys: BTreeMap<String, Secret>,
}

/// Environment variable names of the secrets every deployment has, in the order of
/// [`Secrets`]' fields (provider keys come from the variables their tables name).
pub const SECRET_VARS: [&str; 3] = ["DATABASE_URL", "REDIS_URL", "JWT_SECRET"];

impl Secrets {
    /// The secrets from `env`; `key_vars` are the provider tables' `api_key_env` names.
    pub fn from_env<'a>(
        env: &[(String, String)],
        key_vars: impl IntoIterator<Item = &'a str>,
    ) -> Secrets {
        let get = |name: &str| {
            env.iter()
                .find(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| Secret::new(v.clone()))
        };
        Secrets {
            database_url: get(SECRET_VARS[0]),
            redis_url: get(SECRET_VARS[1]),
            jwt_secret: get(SECRET_VARS[2]),
            provider_keys: key_vars
                .into_iter()
                .filter(|v| !v.is_empty())
                .filter_map(|v| Some((v.to_owned(), get(v)?)))
                .collect(),
        }
    }

    /// The API key in the environment variable `var` (a provider table's `api_key_env`).
    pub fn provider_key(&self, var: &str) -> Option<&Secret> {
        self.provider_keys.get(var)
    }

    fn presence(&self, key_vars: &[&str]) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = vec![
            (SECRET_VARS[0].into(), self.database_url.is_some()),
            (SECRET_VARS[1].into(), self.redis_url.is_some()),
            (SECRET_VARS[2].into(), self.jwt_secret.is_some()),
        ];
        v.extend(
            key_vars
                .iter()
                .map(|k| (k.to_string(), self.provider_keys.contains_key(*k))),
        );
        v
    }
}

/// A configuration error that names the key (`server.https_listen`) or the source at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, environment variable, flag or file the error is about.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// Everything [`load`] reads, gathered by the caller so tests can pass their own.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// The TOML file, if one is given.
    pub file: Option<PathBuf>,
    /// The process environment (only `GPUPROXY_*` and the secret names are looked at).
    pub env: Vec<(String, String)>,
    /// `key.path=value` overrides from the command line, applied last.
    pub overrides: Vec<String>,
}

/// Builds the effective configuration from all layers and validates it.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialize");
    let mut merged = defaults.clone();

    if let Some(path) = &sources.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path.display().to_string(), format!("cannot read: {e}")))?;
        let file: toml::Value = toml::from_str(&text)
            .map_err(|e| err(path.display().to_string(), e.to_string().trim().to_string()))?;
        merge(&mut merged, file);
    }

    let mut env: Vec<_> = sources
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    env.sort();
    for (name, value) in env {
        let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let path = resolve_env_key(&defaults, &rest).ok_or_else(|| {
            err(
                name.clone(),
                "does not name a config key (GPUPROXY_<SECTION>_<KEY>, e.g. GPUPROXY_SERVER_WORKERS)",
            )
        })?;
        set_path(&mut merged, &path, parse_scalar(value));
    }

    for o in &sources.overrides {
        let (key, value) = o
            .split_once('=')
            .ok_or_else(|| err(o.clone(), "expected --set key.path=value"))?;
        let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        set_path(&mut merged, &path, parse_scalar(value.trim()));
    }

    let mut config: Config = serde_path_to_error::deserialize(merged).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // An unknown field is reported at its parent (top level) or at itself (nested):
        // make the key always end with the field's own name.
        let key = match inner.split('`').nth(1) {
            Some(field) if inner.starts_with("unknown field") => {
                if path == "." {
                    field.to_string()
                } else if path == field || path.ends_with(&format!(".{field}")) {
                    path
                } else {
                    format!("{path}.{field}")
                }
            }
            _ => path,
        };
        err(key, inner)
    })?;
    let key_vars: Vec<String> = config
        .providers
        .tables
        .values()
        .map(|t| t.api_key_env.clone())
        .collect();
    config.secrets = Secrets::from_env(&sources.env, key_vars.iter().map(String::as_str));
    validate(&config)?;
    Ok(config)
}

/// Checks that cannot be expressed by types alone.
fn validate(config: &Config) -> Result<(), ConfigError> {
    let s = &config.server;
    let cfg_proxy = &config.proxy_protocol;
    if s.https_listen.0.is_none() && s.http_listen.0.is_none() {
        return Err(err(
            "server.https_listen",
            "both server.https_listen and server.http_listen are off: nothing would be served",
        ));
    }
    if s.https_listen.0.is_some() {
        for (key, path) in [
            ("server.tls_cert", &s.tls_cert),
            ("server.tls_key", &s.tls_key),
        ] {
            if !Path::new(path).is_file() {
                return Err(err(
                    key,
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
    }
    for (key, v) in [
        (
            "server.tls_handshake_timeout_ms",
            s.tls_handshake_timeout_ms,
        ),
        ("server.header_read_timeout_ms", s.header_read_timeout_ms),
        ("server.max_body_bytes", s.max_body_bytes),
        (
            "server.h2_max_concurrent_streams",
            u64::from(s.h2_max_concurrent_streams),
        ),
    ] {
        if v == 0 {
            return Err(err(key, "must be greater than 0"));
        }
    }
    let c = &config.connections;
    for (key, v) in [
        ("connections.max_per_ip", u64::from(c.max_per_ip)),
        ("connections.idle_timeout_ms", c.idle_timeout_ms),
        ("connections.reap_interval_ms", c.reap_interval_ms),
    ] {
        if v == 0 {
            return Err(err(key, "must be greater than 0"));
        }
    }
    let r = &config.ratelimit;
    for (key, v) in [
        ("ratelimit.ip_per_minute", r.ip_per_minute),
        ("ratelimit.ip_burst", r.ip_burst),
        ("ratelimit.peer_heartbeat_ms", r.peer_heartbeat_ms),
        ("ratelimit.account_per_minute", r.account_per_minute),
        ("ratelimit.account_burst", r.account_burst),
        ("ratelimit.key_per_minute", r.key_per_minute),
        ("ratelimit.key_burst", r.key_burst),
        ("ratelimit.max_keys", r.max_keys as u64),
        ("ratelimit.overflow_cells", r.overflow_cells as u64),
        ("ratelimit.sweep_interval_ms", r.sweep_interval_ms),
    ] {
        if v == 0 {
            return Err(err(key, "must be greater than 0"));
        }
    }
    if r.peer_ttl_ms <= r.peer_heartbeat_ms {
        return Err(err(
            "ratelimit.peer_ttl_ms",
            "must be longer than ratelimit.peer_heartbeat_ms (a live daemon would drop out between beats)",
        ));
    }
    let (d, a, rd) = (&config.database, &config.auth, &config.redis);
    for (key, v) in [
        ("database.pool_size", u64::from(d.pool_size)),
        ("database.acquire_timeout_ms", d.acquire_timeout_ms),
        ("database.connect_timeout_ms", d.connect_timeout_ms),
        ("database.query_timeout_ms", d.query_timeout_ms),
        ("database.health_interval_ms", d.health_interval_ms),
        ("redis.command_timeout_ms", rd.command_timeout_ms),
        ("redis.connect_timeout_ms", rd.connect_timeout_ms),
        ("auth.cache_ttl_ms", a.cache_ttl_ms),
        ("auth.cache_max_entries", a.cache_max_entries as u64),
        ("auth.jwt_ttl_ms", a.jwt_ttl_ms),
        ("auth.last_used_flush_ms", a.last_used_flush_ms),
    ] {
        if v == 0 {
            return Err(err(key, "must be greater than 0"));
        }
    }
    if let Some(url) = &config.secrets.database_url {
        url.expose()
            .parse::<tokio_postgres::Config>()
            .map_err(|e| err("DATABASE_URL", format!("not a PostgreSQL URL: {e}")))?;
    }
    if let Some(url) = &config.secrets.redis_url {
        fred::prelude::Config::from_url(url.expose())
            .map_err(|e| err("REDIS_URL", format!("not a Redis URL: {e}")))?;
    }
    if config
        .secrets
        .jwt_secret
        .as_ref()
        .is_some_and(|s| s.expose().len() < 32)
    {
        return Err(err(
            "JWT_SECRET",
            "must be at least 32 characters (e.g. `openssl rand -hex 32`)",
        ));
    }
    validate_providers(&config.providers, &config.offers)?;
    let rc = &config.rentals;
    for (key, v) in [
        ("rentals.status_cache_ms", rc.status_cache_ms),
        ("rentals.reconcile_interval_ms", rc.reconcile_interval_ms),
        ("rentals.intent_timeout_ms", rc.intent_timeout_ms),
        ("rentals.idempotency_ttl_ms", rc.idempotency_ttl_ms),
        (
            "rentals.default_duration_hours",
            u64::from(rc.default_duration_hours),
        ),
        ("rentals.max_ssh_keys", u64::from(rc.max_ssh_keys)),
        ("rentals.dead_state_grace_ms", rc.dead_state_grace_ms),
        (
            "rentals.provisioning_timeout_ms",
            rc.provisioning_timeout_ms,
        ),
    ] {
        if v == 0 {
            return Err(err(key, "must be greater than 0"));
        }
    }
    if !(rc.price_tolerance >= 0.0 && rc.price_tolerance < 10.0) {
        return Err(err(
            "rentals.price_tolerance",
            "a fraction from 0 (e.g. 0.05 = 5%)",
        ));
    }
    if c.ipv6_prefix_len > 128 {
        return Err(err("connections.ipv6_prefix_len", "at most 128"));
    }
    if c.shards != 0 && !c.shards.is_power_of_two() {
        return Err(err(
            "connections.shards",
            "must be a power of two (or 0 for automatic)",
        ));
    }
    for (i, cidr) in cfg_proxy.trusted_cidrs.iter().enumerate() {
        cidr.parse::<crate::types::ip::Cidr>()
            .map_err(|e| err(format!("proxy_protocol.trusted_cidrs[{i}]"), e))?;
    }
    if cfg_proxy.header_timeout_ms == 0 {
        return Err(err(
            "proxy_protocol.header_timeout_ms",
            "must be greater than 0",
        ));
    }
    if s.workers > 1024 {
        return Err(err("server.workers", "at most 1024 (0 = one per core)"));
    }
    tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .map_err(|e| err("log.level", format!("not a valid filter: {e}")))?;
    Ok(())
}

fn validate_providers(p: &ProvidersConfig, o: &OffersConfig) -> Result<(), ConfigError> {
    for (id, t) in &p.tables {
        let key = |k: &str| format!("providers.{id}.{k}");
        if crate::types::ProviderId::register(id).is_none() {
            return Err(err(
                format!("providers.{id}"),
                "not a provider table, or not a valid provider id (1 to 32 lower-case letters, \
                 digits, `_` or `-`, starting with a letter)",
            ));
        }
        if !PROVIDER_KINDS.contains(&t.kind(id)) {
            return Err(err(
                key("kind"),
                format!(
                    "unknown provider kind `{}` (known: {})",
                    t.kind(id),
                    PROVIDER_KINDS.join(", ")
                ),
            ));
        }
        let ok = t.base_url.parse::<hyper::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
        });
        if !ok {
            return Err(err(
                key("base_url"),
                format!("`{}` is not an http(s) URL", t.base_url),
            ));
        }
        if t.search_limit == 0 {
            return Err(err(key("search_limit"), "must be greater than 0"));
        }
    }
    for (key, v) in [
        ("providers.connect_timeout_ms", p.connect_timeout_ms),
        ("providers.request_timeout_ms", p.request_timeout_ms),
        ("providers.total_timeout_ms", p.total_timeout_ms),
        (
            "providers.breaker_consecutive_failures",
            u64::from(p.breaker_consecutive_failures),
        ),
        ("providers.breaker_window", u64::from(p.breaker_window)),
        ("providers.max_body_bytes", p.max_body_bytes),
        (
            "providers.max_connections_per_host",
            p.max_connections_per_host as u64,
        ),
        ("offers.cache_ttl_ms", o.cache_ttl_ms),
        ("offers.cache_max_entries", o.cache_max_entries as u64),
        ("offers.default_limit", u64::from(o.default_limit)),
    ] {
        if v == 0 {
            return Err(err(key, "must be greater than 0"));
        }
    }
    if !(p.breaker_error_rate > 0.0 && p.breaker_error_rate <= 1.0) {
        return Err(err("providers.breaker_error_rate", "must be in (0, 1]"));
    }
    if o.max_limit < o.default_limit {
        return Err(err(
            "offers.max_limit",
            "must be at least offers.default_limit",
        ));
    }
    if o.stale_if_error_ms < o.cache_ttl_ms {
        return Err(err(
            "offers.stale_if_error_ms",
            "must be at least offers.cache_ttl_ms",
        ));
    }
    Ok(())
}

/// Finds the key path an environment variable (lower-cased, prefix removed) names, by walking the
/// defaults: `server_https_listen` → `["server", "https_listen"]`. Section and key names may
/// themselves contain underscores; the defaults tree disambiguates.
fn resolve_env_key(tree: &toml::Value, rest: &str) -> Option<Vec<String>> {
    let table = tree.as_table()?;
    for (k, v) in table {
        if rest == k && !v.is_table() {
            return Some(vec![k.clone()]);
        }
        if let Some(tail) = rest
            .strip_prefix(k.as_str())
            .and_then(|t| t.strip_prefix('_'))
            && v.is_table()
            && let Some(mut path) = resolve_env_key(v, tail)
        {
            path.insert(0, k.clone());
            return Some(path);
        }
    }
    None
}

/// An override's value: a TOML literal if it parses as one (`8`, `true`, `[1,2]`), else a string.
fn parse_scalar(s: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {s}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(s.to_string()))
}

fn set_path(root: &mut toml::Value, path: &[String], value: toml::Value) {
    let mut cur = root;
    for (i, k) in path.iter().enumerate() {
        let table = match cur {
            toml::Value::Table(t) => t,
            other => {
                *other = toml::Value::Table(Default::default());
                other.as_table_mut().expect("just set")
            }
        };
        if i + 1 == path.len() {
            table.insert(k.clone(), value);
            return;
        }
        cur = table
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

impl Config {
    /// The effective configuration as TOML, with each secret shown only as set or unset.
    pub fn render_redacted(&self) -> String {
        let mut out = toml::to_string_pretty(self).expect("config serializes");
        out.push_str("\n# secrets (environment only)\n");
        let vars: Vec<&str> = self
            .providers
            .tables
            .values()
            .map(|t| t.api_key_env.as_str())
            .filter(|v| !v.is_empty())
            .collect();
        for (name, set) in self.secrets.presence(&vars) {
            out.push_str(&format!(
                "# {name} = {}\n",
                if set { "<set, redacted>" } else { "<unset>" }
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(file: Option<&str>, env: &[(&str, &str)], overrides: &[&str]) -> Sources {
        let file = file.map(|text| {
            let dir = std::env::temp_dir().join(format!(
                "gpuproxyd-config-test-{}-{}",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join("c.toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        Sources {
            file,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    const PLAIN: &str = "[server]\nhttps_listen = \"off\"\nhttp_listen = \"127.0.0.1:1\"\n";

    #[test]
    fn layers_apply_in_order() {
        let c = load(&sources(
            Some(&format!("{PLAIN}workers = 3\n[log]\nlevel = \"debug\"\n")),
            &[
                ("GPUPROXY_SERVER_WORKERS", "5"),
                ("GPUPROXY_LOG_ACCESS_LOG", "false"),
            ],
            &["server.shutdown_grace_ms=7"],
        ))
        .unwrap();
        assert_eq!(c.server.workers, 5, "env beats file");
        assert_eq!(c.log.level, "debug", "file beats default");
        assert!(!c.log.access_log);
        assert_eq!(c.server.shutdown_grace_ms, 7, "flag applies");
        let c = load(&sources(
            Some(PLAIN),
            &[("GPUPROXY_SERVER_WORKERS", "5")],
            &["server.workers=9"],
        ))
        .unwrap();
        assert_eq!(c.server.workers, 9, "flag beats env");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load(&sources(Some(&format!("{PLAIN}bogus = 1\n")), &[], &[])).unwrap_err();
        assert_eq!(e.key, "server.bogus");
        let e = load(&sources(Some("[nosuch]\nx=1\n"), &[], &[])).unwrap_err();
        assert_eq!(e.key, "nosuch");
        let e = load(&sources(Some(PLAIN), &[("GPUPROXY_SERVER_NOPE", "1")], &[])).unwrap_err();
        assert_eq!(e.key, "GPUPROXY_SERVER_NOPE");
    }

    #[test]
    fn bad_values_are_named() {
        let e = load(&sources(
            Some(&format!("{PLAIN}workers = \"many\"\n")),
            &[],
            &[],
        ))
        .unwrap_err();
        assert_eq!(e.key, "server.workers");
        let e = load(&sources(
            Some("[server]\nhttps_listen = \"off\"\nhttp_listen = \"nonsense\"\n"),
            &[],
            &[],
        ))
        .unwrap_err();
        assert_eq!(e.key, "server.http_listen");
        assert!(e.message.contains("nonsense"), "{e}");
        let e = load(&sources(
            Some(&format!("{PLAIN}max_body_bytes = 0\n")),
            &[],
            &[],
        ))
        .unwrap_err();
        assert_eq!(e.key, "server.max_body_bytes");
    }

    #[test]
    fn secrets_only_from_env_and_redacted() {
        let c = load(&sources(
            Some(PLAIN),
            &[
                ("JWT_SECRET", "hunter2-hunter2-hunter2-hunter2-hunter2"),
                ("VASTAI_API_KEY", "vk-123"),
            ],
            &[],
        ))
        .unwrap();
        assert_eq!(
            c.secrets.jwt_secret.as_ref().unwrap().expose(),
            "hunter2-hunter2-hunter2-hunter2-hunter2"
        );
        let shown = format!("{}{:?}", c.render_redacted(), c);
        assert!(
            !shown.contains("hunter2") && !shown.contains("vk-123"),
            "{shown}"
        );
        assert!(shown.contains("# JWT_SECRET = <set, redacted>"));
        assert!(shown.contains("# DATABASE_URL = <unset>"));
        // a secret is not a config key, so a file cannot set it
        let e = load(&sources(
            Some(&format!("{PLAIN}[secrets]\njwt_secret = \"x\"\n")),
            &[],
            &[],
        ))
        .unwrap_err();
        assert_eq!(e.key, "secrets");
        // a short JWT secret is refused, by name
        let e = load(&sources(Some(PLAIN), &[("JWT_SECRET", "short")], &[])).unwrap_err();
        assert_eq!(e.key, "JWT_SECRET");
        let e = load(&sources(
            Some(PLAIN),
            &[("DATABASE_URL", "nonsense://")],
            &[],
        ))
        .unwrap_err();
        assert_eq!(e.key, "DATABASE_URL");
    }

    fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(t) = v.as_table() {
            for (k, v) in t {
                let path = format!("{prefix}{k}");
                if v.is_table() {
                    keys(v, &format!("{path}."), out);
                } else {
                    out.push(path);
                }
            }
        }
    }

    #[test]
    fn shipped_example_names_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gpuproxyd.toml");
        let file: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let (mut want, mut have) = (Vec::new(), Vec::new());
        keys(&defaults, "", &mut want);
        keys(&file, "", &mut have);
        want.sort();
        have.sort();
        assert_eq!(want, have, "config/gpuproxyd.toml must list every key");
        // and it is valid (certificate files aside, which the demo creates)
        let dir = std::env::temp_dir().join(format!("gpuproxyd-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["server.crt", "server.key"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let mut src = sources(None, &[], &[]);
        src.file = Some(path);
        src.overrides = vec![
            format!(
                "server.tls_cert={:?}",
                dir.join("server.crt").display().to_string()
            ),
            format!(
                "server.tls_key={:?}",
                dir.join("server.key").display().to_string()
            ),
        ];
        load(&src).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn rendered_config_loads_back() {
        let c = load(&sources(Some(PLAIN), &[], &[])).unwrap();
        let again = load(&sources(Some(&c.render_redacted()), &[], &[])).unwrap();
        assert_eq!(again.server.http_listen, c.server.http_listen);
        assert_eq!(again.server.https_listen, Listen(None));
    }
}
