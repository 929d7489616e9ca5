//! `[database]`, `[redis]` and `[auth]`: the pool through PgBouncer, the Redis client, the
//! key cache and tokens.

use std::num::{NonZeroU32, NonZeroUsize};

use serde::{Deserialize, Serialize};

use super::{nz32, nzsize};

use super::{Millis, MillisOrZero};

/// The PostgreSQL pool (bb8 + tokio-postgres), reached through PgBouncer in transaction mode at
/// `DATABASE_URL`. Every query is an unnamed statement (`query_typed`), so any pool size works
/// with any PgBouncer pool size.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Connections the daemon keeps to PgBouncer at most.
    pub pool_size: NonZeroU32,
    /// How long a request waits for a pooled connection (including opening one) before it is
    /// answered 503 `auth_unavailable`.
    pub acquire_timeout_ms: Millis,
    /// TCP connect plus startup of one new connection.
    pub connect_timeout_ms: Millis,
    /// A query running longer than this is abandoned and counts as the database being down.
    pub query_timeout_ms: Millis,
    /// Connections are replaced after this age (spreads reconnects after a PgBouncer restart).
    pub max_lifetime_ms: MillisOrZero,
    /// Idle connections beyond need are closed after this long.
    pub idle_timeout_ms: MillisOrZero,
    /// How often the pool is probed for `/ready` and the pool gauges.
    pub health_interval_ms: Millis,
    /// With `DATABASE_READ_URL` (a replica for key lookups): after a key or account change this
    /// daemon hears of, lookups go to the primary this long. Keep it above the replica's lag.
    pub read_primary_after_change_ms: MillisOrZero,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            pool_size: nz32(20),
            acquire_timeout_ms: Millis(1_000),
            connect_timeout_ms: Millis(1_000),
            query_timeout_ms: Millis(2_000),
            max_lifetime_ms: MillisOrZero(1_800_000),
            idle_timeout_ms: MillisOrZero(600_000),
            health_interval_ms: Millis(1_000),
            read_primary_after_change_ms: MillisOrZero(5_000),
        }
    }
}

/// Redis (fred) at `REDIS_URL`: the shared auth cache and the revocation channel. Never on the
/// critical path: every command has a short timeout and fails fast while disconnected.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// A command not answered by then counts as a miss (the caller goes on without Redis).
    pub command_timeout_ms: Millis,
    pub connect_timeout_ms: Millis,
    /// Reconnect back-off grows up to this delay; reconnecting never stops.
    pub reconnect_max_delay_ms: MillisOrZero,
    /// Prefix of every key and channel, so deployments can share one Redis.
    pub key_prefix: String,
    /// PEM file of the CA certificates trusted for a TLS `REDIS_URL` (`rediss://`,
    /// `rediss-cluster://`, `rediss-sentinel://`); empty: the system's roots. Managed Redis
    /// services and self-run ones usually sign with a private CA.
    pub tls_ca_file: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            command_timeout_ms: Millis(250),
            connect_timeout_ms: Millis(500),
            reconnect_max_delay_ms: MillisOrZero(2_000),
            key_prefix: "gpx:".into(),
            tls_ca_file: String::new(),
        }
    }
}

/// Authentication: the key cache layers and JWTs (signed with `JWT_SECRET`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Life of a key in the in-process cache. With Redis down, a key revoked elsewhere can pass
    /// on this daemon for at most this long.
    pub cache_ttl_ms: Millis,
    /// Keys the in-process cache holds at most (beyond, lookups go to Redis/PostgreSQL).
    pub cache_max_entries: NonZeroUsize,
    /// An unknown key id is remembered as unknown this long, in process and in Redis.
    pub negative_ttl_ms: MillisOrZero,
    /// Lookups the in-process cache cannot answer (Redis, then PostgreSQL) this daemon makes per
    /// second at most, bursts included; beyond, 503 `auth_busy` with `Retry-After` (a flood of
    /// random key ids never becomes a database storm). Cached keys are not affected.
    pub max_uncached_lookups_per_second: NonZeroU32,
    /// Life of a key record in Redis.
    pub redis_ttl_ms: MillisOrZero,
    /// While PostgreSQL is unreachable, an in-process entry fetched at most this long ago is
    /// still honoured (cached keys keep working through a database outage).
    pub stale_if_error_ms: MillisOrZero,
    /// Lifetime of the tokens `POST /v1/auth/token` issues.
    pub jwt_ttl_ms: Millis,
    /// `iss` of issued tokens, required on presented ones.
    pub jwt_issuer: String,
    /// `aud` of issued tokens, required on presented ones.
    pub jwt_audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub jwt_leeway_s: u64,
    /// How often `api_keys.last_used_at` is written (one batched UPDATE per interval).
    pub last_used_flush_ms: Millis,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            cache_ttl_ms: Millis(5_000),
            cache_max_entries: nzsize(100_000),
            negative_ttl_ms: MillisOrZero(5_000),
            max_uncached_lookups_per_second: crate::config::nz32(500),
            redis_ttl_ms: MillisOrZero(60_000),
            stale_if_error_ms: MillisOrZero(300_000),
            jwt_ttl_ms: Millis(900_000),
            jwt_issuer: "gpuproxyd".into(),
            jwt_audience: "gpuproxyd-api".into(),
            jwt_leeway_s: 5,
            last_used_flush_ms: Millis(10_000),
        }
    }
}
