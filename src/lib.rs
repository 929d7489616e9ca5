//! gpuproxyd: one daemon between API clients and GPU-rental providers.
//!
//! The request path, module by module (docs/design.md has the whole picture):
//!
//! - [`server`]: listeners, PROXY protocol, TLS (rustls, ALPN h2/http1.1, SIGHUP reload), hyper
//!   serving with idle HTTP/1 parking, drain.
//! - [`conn`]: the sharded connection table, admission caps, the reaper, fd limits.
//! - [`ratelimit`]: GCRA limiters per IP, per account and per API key.
//! - [`auth`]: API keys and JWTs, the key cache (in process → Redis → PostgreSQL, or a read
//!   replica first: `auth::replica`), and the admin changes every daemon's cache must hear of
//!   (`auth::admin`).
//! - [`accounts`]: PostgreSQL through PgBouncer (bb8 pool), migrations, account and key records,
//!   API key generation and hashing (`accounts::apikey`).
//! - [`cache`]: the Redis client (fred) with reconnects, timeouts and pub/sub, and the two-layer
//!   stale-while-revalidate cache with single-flight fetches (`cache::swr`).
//! - [`providers`]: the `Provider` trait, Vast.ai and io.net clients, the normalized offer and
//!   instance model, the pooled upstream client, breaker/retries.
//! - [`rentals`]: renting: offer claims, price and bid checks, budget, ledger (spend by event
//!   segments), SSH keys per account and their per-instance attach, idempotency, the reconciler
//!   (adoption, dead and stuck instances), offer watches evaluated on refreshed offers
//!   (`rentals::watches`).
//! - [`events`]: the account event log (written with the changes it reports) and the fan-out
//!   that delivers it to `GET /v1/events` streams on every daemon (`events::hub`); one client's
//!   view of it is an `events::feed::Feed`, carried as SSE or over a WebSocket (`api::websocket`);
//!   signed webhooks deliver it to clients that hold no connection (`events::webhook`: the
//!   sender, signatures, SSRF checks of targets).
//! - [`service`]: the typed operations every carrier (REST, MCP) calls: typed input (query
//!   structs, bodies) in, `Serialize` views out.
//! - [`api`]: routing, handlers (over `api::Api`: the services plus the API's render caches and
//!   request metrics), and the one place errors become HTTP responses.
//! - [`state`]: the services of one daemon (`AppState`).
//! - [`background`]: the daemon's periodic work, one registered service per job (reconcile,
//!   budgets, sweeps, billing, health probes, limiter sweeps), started from one list.
//! - [`types`]: leaf data every layer shares: provider ids, passthrough rules, client address
//!   keys and CIDRs, listener kinds, rate-limit verdicts, text helpers.
//! - [`error`]: the one error type (kind, side at fault, retryable).
//! - [`config`]: the typed config tree: defaults < TOML < `GPUPROXY_*` env < flags.
//! - [`metrics`]: metric names and the Prometheus exporter.
//! - [`cli`]: the command line (`serve`, `check-config`, `doctor`, `migrate`, `accounts`, `keys`),
//!   used by the thin `main.rs`.
//! - [`alloc`]: returning freed memory to the OS after connections park.
//!
//! (`src/testkit.rs` is not part of the library: the load tools and the tests include it, so its
//! accept-any-certificate verifier never ships in the daemon.)

pub mod accounts;
pub mod agents;
pub mod alloc;
pub mod api;
pub mod auth;
pub mod background;
pub mod cache;
pub mod cli;
pub mod config;
pub mod conn;
pub mod error;
pub mod events;
pub mod logging;
pub mod metrics;
pub mod providers;
pub mod ratelimit;
pub mod rentals;
pub mod server;
pub mod service;
pub mod state;
pub mod types;

pub use server::{Daemon, Listeners};

/// Runs a daemon on already-bound listeners until `shutdown` resolves, then drains.
pub async fn run(
    listeners: Listeners,
    config: config::Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let daemon = Daemon::new(config)?;
    daemon.run(listeners, shutdown).await;
    Ok(())
}
