//! The messages of the agent channel (`/v1/agent`, docs/agents.md): JSON text frames, each an
//! object with a `type`. Every message is validated whole before it is acted on: an unknown
//! type or field, a missing field, a value out of its range or text with a NUL is refused, and
//! the channel closes with 1008 and the reason ([`parse`]).
//!
//! Agent → daemon: `hello` (first, once), `heartbeat`, and for each command: `started`, `output`
//! (pieces of stdout and stderr), `finished`. Daemon → agent: `welcome` (the answer to `hello`:
//! how often to send heartbeats), `exec` (a command to run).

use serde::{Deserialize, Serialize};

/// At most this many GPUs in one message.
const MAX_GPUS: usize = 64;
/// The longest text field.
const MAX_TEXT: usize = 256;
/// The largest piece of output in one `output` message (the agent sends more messages).
pub const MAX_OUTPUT_PIECE: usize = 64 << 10;
/// The longest `error` of a `finished`.
const MAX_ERROR: usize = 1024;

/// What an agent sends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// The first message: who it is and what the machine has.
    Hello {
        /// The instance the agent runs on (must be its token's).
        instance_id: String,
        agent_version: String,
        #[serde(default)]
        gpus: Vec<GpuInfo>,
        host: HostInfo,
    },
    /// Every `heartbeat_s` (the `welcome`'s): the GPUs' utilisation and memory now.
    Heartbeat {
        #[serde(default)]
        gpus: Vec<GpuSample>,
    },
    /// A command (`exec`'s `id`) has started.
    Started { id: String },
    /// A piece of a command's output, as it came (at most [`MAX_OUTPUT_PIECE`] bytes).
    Output {
        id: String,
        stream: OutputStream,
        data: String,
    },
    /// A command ended: its exit code (none when a signal ended it), whether the agent killed it
    /// at its timeout, or why it could not start (`error`).
    Finished {
        id: String,
        #[serde(default)]
        exit_code: Option<i32>,
        #[serde(default)]
        timed_out: bool,
        #[serde(default)]
        error: Option<String>,
        /// All the output it produced, when the agent forwarded only part of it.
        #[serde(default)]
        output_bytes: Option<u64>,
    },
}

/// Which of a command's outputs a piece comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// One GPU as `nvidia-smi` names it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub memory_mb: u64,
}

/// The host's facts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostInfo {
    pub hostname: String,
    pub os: String,
    pub cpus: u32,
    pub memory_mb: u64,
}

/// One GPU's reading.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSample {
    pub index: u32,
    /// Percent, 0 to 100.
    pub util_pct: f64,
    pub memory_used_mb: u64,
}

/// What the daemon sends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DaemonMessage {
    /// The answer to `hello`.
    Welcome {
        instance_id: String,
        /// Send a heartbeat this often.
        heartbeat_s: u32,
    },
    /// Run `argv` (no shell); kill it after `timeout_s`. Answered with `started`, `output`s and
    /// `finished`, each naming `id`.
    Exec {
        id: String,
        argv: Vec<String>,
        timeout_s: u32,
    },
}

/// How long an agent waits before reconnecting after `failures` failed attempts: full-jitter
/// exponential back-off, a random time up to min(`max`, 0.5 s × 2^failures) (at least 50 ms),
/// so agents do not all return at once after a daemon restart. `gpuproxy-agent` and the load
/// tool's swarm both wait this.
pub fn reconnect_backoff(failures: u32, max: std::time::Duration) -> std::time::Duration {
    let cap = std::time::Duration::from_millis(500)
        .saturating_mul(1u32 << failures.min(16))
        .min(max);
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).expect("the OS random source works");
    let frac = (u64::from_be_bytes(r) >> 11) as f64 / (1u64 << 53) as f64;
    cap.mul_f64(frac).max(std::time::Duration::from_millis(50))
}

/// A message refused: the reason the channel closes with (1008).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

/// Reads and checks one message.
pub fn parse(text: &[u8]) -> Result<AgentMessage, Invalid> {
    let m: AgentMessage = serde_json::from_slice(text).map_err(|e| {
        // serde's message names the field or variant; the position is no use to anyone
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg);
        Invalid(format!(
            "invalid message: {}",
            crate::types::text::truncate(msg, 96)
        ))
    })?;
    check(&m)?;
    Ok(m)
}

fn text(field: &str, v: &str) -> Result<(), Invalid> {
    if v.is_empty() || v.len() > MAX_TEXT || v.contains('\0') {
        return Err(Invalid(format!(
            "invalid `{field}`: 1 to {MAX_TEXT} bytes without NUL"
        )));
    }
    Ok(())
}

fn check(m: &AgentMessage) -> Result<(), Invalid> {
    match m {
        AgentMessage::Hello {
            instance_id,
            agent_version,
            gpus,
            host,
        } => {
            text("instance_id", instance_id)?;
            text("agent_version", agent_version)?;
            text("host.hostname", &host.hostname)?;
            text("host.os", &host.os)?;
            if gpus.len() > MAX_GPUS {
                return Err(Invalid(format!("invalid `gpus`: at most {MAX_GPUS}")));
            }
            for g in gpus {
                text("gpus.name", &g.name)?;
            }
        }
        AgentMessage::Heartbeat { gpus } => {
            if gpus.len() > MAX_GPUS {
                return Err(Invalid(format!("invalid `gpus`: at most {MAX_GPUS}")));
            }
            if let Some(g) = gpus
                .iter()
                .find(|g| !(g.util_pct.is_finite() && (0.0..=100.0).contains(&g.util_pct)))
            {
                return Err(Invalid(format!(
                    "invalid `gpus.util_pct` of GPU {}: 0 to 100",
                    g.index
                )));
            }
        }
        AgentMessage::Started { id } => text("id", id)?,
        AgentMessage::Output { id, data, .. } => {
            text("id", id)?;
            if data.len() > MAX_OUTPUT_PIECE {
                return Err(Invalid(format!(
                    "invalid `data`: at most {MAX_OUTPUT_PIECE} bytes per message"
                )));
            }
        }
        AgentMessage::Finished { id, error, .. } => {
            text("id", id)?;
            if error
                .as_ref()
                .is_some_and(|e| e.is_empty() || e.len() > MAX_ERROR)
            {
                return Err(Invalid(format!("invalid `error`: 1 to {MAX_ERROR} bytes")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_whole_and_checked() {
        let hello = br#"{"type":"hello","instance_id":"i-1","agent_version":"0.1.0",
            "gpus":[{"index":0,"name":"NVIDIA GeForce RTX 4090","memory_mb":24564}],
            "host":{"hostname":"c1","os":"linux","cpus":16,"memory_mb":64000}}"#;
        assert!(matches!(parse(hello), Ok(AgentMessage::Hello { .. })));
        let beat =
            br#"{"type":"heartbeat","gpus":[{"index":0,"util_pct":37.5,"memory_used_mb":1024}]}"#;
        assert_eq!(
            parse(beat).unwrap(),
            AgentMessage::Heartbeat {
                gpus: vec![GpuSample {
                    index: 0,
                    util_pct: 37.5,
                    memory_used_mb: 1024
                }]
            }
        );
        for (bad, says) in [
            (&b"not json"[..], "invalid message"),
            (br#"{"type":"nope"}"#, "unknown variant"),
            (br#"{"type":"heartbeat","gpus":[],"x":1}"#, "unknown field"),
            (
                br#"{"type":"heartbeat","gpus":[{"index":0,"util_pct":101,"memory_used_mb":1}]}"#,
                "util_pct",
            ),
            (
                br#"{"type":"hello","instance_id":"","agent_version":"1","host":{"hostname":"h","os":"linux","cpus":1,"memory_mb":1}}"#,
                "instance_id",
            ),
            (br#"{"type":"hello","instance_id":"i"}"#, "missing field"),
            (br#"{"gpus":[]}"#, "type"),
            (br#"{"type":"started","id":""}"#, "`id`"),
            (
                br#"{"type":"output","id":"cmd_1","stream":"stdin","data":""}"#,
                "unknown variant",
            ),
            (br#"{"type":"finished","id":"cmd_1","error":""}"#, "`error`"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.0.contains(says), "{}: {}", String::from_utf8_lossy(bad), e.0);
            assert!(!e.0.contains("line"), "{}", e.0);
        }
        let big = format!(
            r#"{{"type":"output","id":"cmd_1","stream":"stdout","data":"{}"}}"#,
            "x".repeat(MAX_OUTPUT_PIECE + 1)
        );
        assert!(parse(big.as_bytes()).unwrap_err().0.contains("`data`"));
        assert_eq!(
            parse(br#"{"type":"finished","id":"cmd_1","exit_code":3}"#).unwrap(),
            AgentMessage::Finished {
                id: "cmd_1".into(),
                exit_code: Some(3),
                timed_out: false,
                error: None,
                output_bytes: None
            }
        );
    }
}
