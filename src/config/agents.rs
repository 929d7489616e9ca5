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
    /// Messages an agent may send per minute, sustained (GCRA), and at once; past them the
    /// channel is closed (1008 `rate_limited`).
    pub messages_per_minute: NonZeroU64,
    pub message_burst: NonZeroU64,
    /// Messages waiting to be written to one agent; one more and the agent is too slow: its
    /// channel is closed (1013 `slow_consumer`), as an event stream's is.
    pub max_queued_messages: NonZeroU64,
    /// Output kept per command (bytes of stdout and stderr together); the rest is counted, not
    /// kept.
    pub command_output_bytes: NonZeroU64,
    /// A command no agent has taken this long after it was sent is `expired`.
    pub command_queue_ttl_ms: Millis,
    /// A command sent to an agent that has not answered this long after its own timeout is
    /// `lost` (its agent or daemon went away while it ran).
    pub command_grace_ms: Millis,
    /// How often each daemon expires and finds lost commands, wakes channels with commands
    /// waiting, and closes the channels of ended instances (and replaced tokens).
    pub sweep_interval_ms: Millis,
    /// Agent channels opening at once (their token checked in PostgreSQL); the next wait up to
    /// `opening_wait_ms`, then get 503 `over_capacity` with `Retry-After` (the agent retries
    /// after its back-off). Keep it well below `storage.pool_size`: a storm of agents opening (a
    /// daemon restarted under thousands) then leaves the pool to API requests.
    pub max_opening: NonZeroU64,
    pub opening_wait_ms: Millis,
    /// Where agents reach this daemon (`https://gpu.example.com`): what a rental with
    /// `agent: true` tells its agent, and where the install script downloads it from. Empty:
    /// this daemon installs no agent.
    pub public_url: String,
    /// The agent program handed out at `/v1/agent/download`. Empty: `gpuproxy-agent` next to
    /// the daemon's own executable.
    pub binary_path: String,
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
            messages_per_minute: nz64(1200),
            message_burst: nz64(200),
            max_queued_messages: nz64(100),
            command_output_bytes: nz64(64 << 10),
            command_queue_ttl_ms: Millis(600_000),
            command_grace_ms: Millis(30_000),
            sweep_interval_ms: Millis(5_000),
            max_opening: nz64(8),
            opening_wait_ms: Millis(2_000),
            public_url: String::new(),
            binary_path: String::new(),
        }
    }
}

impl AgentsConfig {
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        let u = self.public_url.trim_end_matches('/');
        // it is written into a shell script: nothing a shell would read specially
        let special = |c: char| c.is_whitespace() || "\"'$`\\".contains(c);
        let fine = u.is_empty()
            || (u.len() > "https://".len() && u.starts_with("https://") && !u.contains(special));
        if !fine {
            return Err(super::err(
                "agents.public_url",
                "an https:// URL without spaces, quotes, `$`, backquotes or backslashes",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_url_is_https_and_safe_in_a_script() {
        let with = |u: &str| AgentsConfig {
            public_url: u.into(),
            ..AgentsConfig::default()
        };
        assert!(with("").validate().is_ok());
        assert!(with("https://gpu.example.com/").validate().is_ok());
        for bad in [
            "http://gpu.example.com",
            "https://",
            "https://a b",
            "https://x$(id)",
        ] {
            assert!(with(bad).validate().is_err(), "{bad}");
        }
    }
}
