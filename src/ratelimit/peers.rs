//! Several daemons behind one load balancer share each global limit. Every
//! `ratelimit.peer_heartbeat_ms` a daemon announces itself in Redis (a key that expires after
//! `ratelimit.peer_ttl_ms`, listed in a set) and counts the announcements still alive; its
//! limiters then enforce 1/n of every tier (`Quota::shared`). Nothing here is on the request path:
//! a check reads the last count with one atomic load. While Redis is unreachable the last count
//! is kept.
//!
//! Over-admission bound (docs/operations.md, "Rate limiting"): with the balancer spreading a client evenly, the
//! n shares add up to the limit, plus at most n − 1 requests of burst rounding. While membership
//! changes, a daemon may use a count that is one heartbeat old: when k daemons join, the others
//! admit up to n/(n − k) of their share until their next heartbeat (at most
//! `peer_heartbeat_ms`); when a daemon leaves, the others under-admit until its key expires. A
//! daemon that has never reached Redis counts only itself.

use std::sync::Arc;

use metrics::gauge;

use super::RateLimits;
use crate::cache::Redis;
use crate::config::RateLimitConfig;
use crate::metrics::RATELIMIT_DAEMONS;

/// Runs the heartbeat until the task is dropped, setting `limits`' share.
pub async fn run(cfg: RateLimitConfig, limits: Arc<RateLimits>, redis: Redis) {
    let every = cfg.peer_heartbeat_ms.get();
    let ttl = cfg.peer_ttl_ms.get();
    let members = redis.tagged_key("ratelimit:daemons");
    let me = instance_id();
    gauge!(RATELIMIT_DAEMONS).set(f64::from(limits.daemons()));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match redis.heartbeat(&members, &me, ttl).await {
            Ok(n) => {
                if n != limits.daemons() {
                    tracing::info!(
                        daemons = n,
                        "rate-limit share changed: enforcing 1/{n} of each limit"
                    );
                }
                limits.set_daemons(n);
                gauge!(RATELIMIT_DAEMONS).set(f64::from(n));
            }
            Err(e) => {
                tracing::debug!(error = %e, "rate-limit heartbeat failed; keeping the last share")
            }
        }
    }
}

/// Unique per process: host, pid and random bits.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        getrandom::u32().unwrap_or(0)
    )
}
