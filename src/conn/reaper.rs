//! The reaper: one task that walks the shards every `connections.reap_interval_ms` and asks
//! connections to close when they have been idle too long, never sent a complete first request
//! in time, or reached their maximum age. Connections with a request in flight are never touched
//! for idleness. It drops at once a connection whose client has not read an answer for
//! `connections.write_timeout_ms`, and one still open `connections.force_close_after_ms` after
//! it was asked to close. It also refreshes the connection gauges.

use std::sync::Arc;
use std::time::Duration;

use metrics::gauge;

use super::table::{CloseReason, ConnTable, Phase};
use crate::metrics::{CONNECTIONS_ACTIVE, CONNECTIONS_MAX};

#[derive(Debug, Clone, Copy)]
pub struct ReapPolicy {
    /// A connection waiting for its next request longer than this is closed.
    pub idle_timeout_ms: u64,
    /// A new connection that has not begun a request by then is closed.
    pub first_request_timeout_ms: u64,
    /// Connections older than this are closed gracefully; 0 = no limit.
    pub max_age_ms: u64,
    /// A connection whose answer the client has not read for this long is dropped at once.
    pub write_timeout_ms: u64,
    /// A connection asked to close and still open this long after is dropped at once.
    pub force_close_after_ms: u64,
}

/// One pass over the table; returns how many connections were asked to close.
pub fn reap_once(table: &ConnTable, policy: &ReapPolicy) -> usize {
    let now = table.now_ms();
    let mut asked = 0;
    table.for_each(|c| {
        // hard closes first: a client that does not read, or one that did not go when asked
        if c.write_stalled_ms() > policy.write_timeout_ms {
            c.kill(CloseReason::WriteTimeout);
            asked += 1;
            return;
        }
        if c.close_asked_for_ms()
            .is_some_and(|t| t > policy.force_close_after_ms)
        {
            c.kill(CloseReason::Forced);
            asked += 1;
            return;
        }
        let reason =
            if policy.max_age_ms > 0 && now.saturating_sub(c.accepted_ms) > policy.max_age_ms {
                Some(CloseReason::MaxAge)
            } else if c.phase() != Phase::Handshake && c.inflight() == 0 {
                let limit = if c.requests() == 0 {
                    policy.first_request_timeout_ms
                } else {
                    policy.idle_timeout_ms
                };
                (c.idle_ms() > limit).then_some(if c.requests() == 0 {
                    CloseReason::HeaderTimeout
                } else {
                    CloseReason::IdleTimeout
                })
            } else {
                None
            };
        if let Some(r) = reason
            && c.request_close(r)
        {
            asked += 1;
        }
    });
    asked
}

/// Runs [`reap_once`] forever at `interval`.
pub async fn run(table: Arc<ConnTable>, policy: ReapPolicy, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    gauge!(CONNECTIONS_MAX).set(table.config().max_total as f64);
    loop {
        tick.tick().await;
        reap_once(&table, &policy);
        gauge!(CONNECTIONS_ACTIVE).set(table.open() as f64);
    }
}
