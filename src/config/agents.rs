//! `[agents]`: the channel instance agents hold (`/v1/agent`, docs/agents.md).

use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

use super::{Millis, nz64};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// An agent gets a ping this often; no pong within `pong_timeout_ms` and the channel is
    /// closed (1008 `ping_timeout`).
    pub ping_interval_ms: Millis,
    pub pong_timeout_ms: Millis,
    /// The first message (`hello`) must come within this, or the channel is closed (1008).
    pub hello_timeout_ms: Millis,
    /// What the `welcome` tells an agent: send a heartbeat this often.
    pub heartbeat_interval_ms: Millis,
    /// The largest message an agent may send (bytes); a larger one closes the channel (1008
    /// `message_too_big`).
    pub max_message_bytes: NonZeroU64,
    /// Which daemon holds an agent is kept in Redis this long after its last heartbeat.
    pub presence_ttl_ms: Millis,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            ping_interval_ms: Millis(30_000),
            pong_timeout_ms: Millis(10_000),
            hello_timeout_ms: Millis(10_000),
            heartbeat_interval_ms: Millis(15_000),
            max_message_bytes: nz64(10 << 20),
            presence_ttl_ms: Millis(60_000),
        }
    }
}
