//! `[ratelimit]`: the tiers and the keyed tables' bounds.

use std::num::{NonZeroU64, NonZeroUsize};

use serde::{Deserialize, Serialize};

use super::{nz64, nzsize};

use super::Millis;

/// Rate limiting (GCRA). The per-IP tier runs before authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Send `RateLimit` on successful responses too (429s always carry it).
    pub headers: bool,
    /// Sustained requests per minute per client address (PROXY address when enabled).
    pub ip_per_minute: NonZeroU64,
    /// Requests a fresh client address may send at once.
    pub ip_burst: NonZeroU64,
    /// Sustained requests per minute per account (all its keys together), unless the account
    /// row overrides it.
    pub account_per_minute: NonZeroU64,
    pub account_burst: NonZeroU64,
    /// Sustained requests per minute per API key (and the tokens issued from it), unless the key
    /// row overrides it.
    pub key_per_minute: NonZeroU64,
    pub key_burst: NonZeroU64,
    /// Keys a tier tracks individually; beyond, new keys share `overflow_cells` budgets.
    pub max_keys: NonZeroUsize,
    /// Shared cells for keys beyond `max_keys` (colliding keys are limited together).
    pub overflow_cells: NonZeroUsize,
    /// How often keys back at a full burst are forgotten.
    pub sweep_interval_ms: Millis,
    /// With Redis: how often this daemon announces itself (a key that expires after
    /// `peer_ttl_ms`) and counts the live daemons; each enforces 1/n of every limit.
    pub peer_heartbeat_ms: Millis,
    /// Life of the announcement: a daemon that stops is no longer counted after this long.
    pub peer_ttl_ms: Millis,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            headers: true,
            ip_per_minute: nz64(1000),
            ip_burst: nz64(100),
            peer_heartbeat_ms: Millis(1_000),
            peer_ttl_ms: Millis(3_000),
            account_per_minute: nz64(10_000),
            account_burst: nz64(1_000),
            key_per_minute: nz64(100_000),
            key_burst: nz64(10_000),
            max_keys: nzsize(100_000),
            overflow_cells: nzsize(65_536),
            sweep_interval_ms: Millis(10_000),
        }
    }
}

impl RateLimitConfig {
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        if self.peer_ttl_ms <= self.peer_heartbeat_ms {
            return Err(super::err(
                "ratelimit.peer_ttl_ms",
                "must be longer than ratelimit.peer_heartbeat_ms (a live daemon would drop out between beats)",
            ));
        }
        Ok(())
    }
}
