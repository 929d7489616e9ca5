//! An agent's channel (`GET /v1/agent` as a WebSocket, docs/agents.md), once its token has
//! named its instance.
//!
//! - The agent's first message is `hello` (within `agents.hello_timeout_ms`), naming the
//!   token's instance; the daemon records it as the holder (`agents::presence`), writes
//!   `instance.agent_connected`, and answers `welcome` with the heartbeat interval. Heartbeats
//!   refresh the presence.
//! - A ping every `agents.ping_interval_ms`; no pong within `agents.pong_timeout_ms`: closed
//!   1008 `ping_timeout`. The agent's pings are answered.
//! - Every message is checked whole (`agents::protocol`); a bad one closes the channel 1008 with
//!   the reason, a message over `agents.max_message_bytes` 1008 `message_too_big`, a binary one
//!   1008 too. A draining daemon closes 1001 `draining` (the agent reconnects elsewhere).
//! - When it ends after a hello: the presence is dropped and `instance.agent_lost` written with
//!   the reason.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::time::Instant;

use super::SessionIo;
use super::frame::{self, Incoming, Reader};
use crate::agents::presence;
use crate::agents::protocol::{self, AgentMessage, DaemonMessage};
use crate::agents::tokens::AgentIdentity;
use crate::api::Api;
use crate::metrics::{AGENT_CHANNELS_CLOSED_TOTAL, AGENT_MESSAGES_TOTAL, AGENTS_CONNECTED};

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 4096;

/// How a channel ends: the close frame's code and reason.
struct End(u16, String, &'static str);

impl End {
    fn policy(reason: impl Into<String>, label: &'static str) -> End {
        End(1008, reason.into(), label)
    }
}

type Writer = WriteHalf<Box<dyn SessionIo>>;

async fn send(wr: &mut Writer, bytes: &[u8]) -> bool {
    wr.write_all(bytes).await.is_ok() && wr.flush().await.is_ok()
}

async fn send_message(wr: &mut Writer, m: &DaemonMessage) -> bool {
    let text = serde_json::to_string(m).expect("messages serialize");
    counter!(AGENT_MESSAGES_TOTAL, "direction" => "out", "result" => "ok").increment(1);
    send(wr, &frame::encode(frame::TEXT, text.as_bytes())).await
}

/// Runs the channel of the agent `id` on `io` until it ends.
pub async fn run(io: Box<dyn SessionIo>, api: Arc<Api>, id: AgentIdentity) {
    let cfg = api.config.agents.clone();
    let (every, pong_wait) = (cfg.ping_interval_ms.get(), cfg.pong_timeout_ms.get());
    let ttl = cfg.presence_ttl_ms.get();
    let draining = api
        .events
        .as_ref()
        .map(|h| h.draining())
        .unwrap_or_default();
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut reader = Reader::messages(cfg.max_message_bytes.get() as usize);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut hello = false;
    let hello_due = Instant::now() + cfg.hello_timeout_ms.get();
    let mut next_ping = Instant::now() + every;
    let mut pong_due: Option<Instant> = None;
    let end: Option<End> = 'channel: loop {
        let wake = match (hello, pong_due) {
            (false, _) => hello_due.min(pong_due.unwrap_or(next_ping)),
            (true, Some(p)) => p,
            (true, None) => next_ping,
        };
        tokio::select! {
            r = rd.read(&mut chunk) => {
                let n = match r {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => n,
                };
                let mut data = &chunk[..n];
                while !data.is_empty() {
                    let (used, got) = reader.read(data);
                    data = &data[used..];
                    let Some(got) = got else { continue };
                    match got {
                        Incoming::Ping(p) => {
                            if !send(&mut wr, &frame::encode(frame::PONG, &p)).await {
                                break 'channel None;
                            }
                        }
                        Incoming::Pong => {
                            if pong_due.take().is_some() {
                                next_ping = Instant::now() + every;
                            }
                        }
                        Incoming::Close(code) => {
                            let _ = send(&mut wr, &frame::close(code.unwrap_or(frame::NORMAL), "")).await;
                            break 'channel None;
                        }
                        Incoming::Fail(frame::TOO_BIG, _) => {
                            counter!(AGENT_MESSAGES_TOTAL, "direction" => "in", "result" => "invalid").increment(1);
                            break 'channel Some(End::policy("message_too_big", "message_too_big"));
                        }
                        Incoming::Fail(code, why) => break 'channel Some(End(code, why.into(), "protocol_error")),
                        Incoming::Message { text: false, .. } => {
                            counter!(AGENT_MESSAGES_TOTAL, "direction" => "in", "result" => "invalid").increment(1);
                            break 'channel Some(End::policy("invalid message: text messages only", "invalid_message"));
                        }
                        Incoming::Message { text: true, data: m } => {
                            let m = match protocol::parse(&m) {
                                Ok(m) => m,
                                Err(e) => {
                                    counter!(AGENT_MESSAGES_TOTAL, "direction" => "in", "result" => "invalid").increment(1);
                                    break 'channel Some(End::policy(e.0, "invalid_message"));
                                }
                            };
                            counter!(AGENT_MESSAGES_TOTAL, "direction" => "in", "result" => "ok").increment(1);
                            match (&m, hello) {
                                (AgentMessage::Hello { instance_id, .. }, false) => {
                                    if *instance_id != id.instance_id {
                                        break 'channel Some(End::policy(
                                            "invalid message: `instance_id` is not the token's instance",
                                            "invalid_message",
                                        ));
                                    }
                                    let Some(db) = api.db.as_deref() else { break 'channel None };
                                    if presence::connected(db, api.redis.as_ref(), &id, &m, ttl).await.is_err() {
                                        break 'channel Some(End(1011, "unavailable".into(), "unavailable"));
                                    }
                                    hello = true;
                                    gauge!(AGENTS_CONNECTED).increment(1.0);
                                    let welcome = DaemonMessage::Welcome {
                                        instance_id: id.instance_id.clone(),
                                        heartbeat_s: cfg.heartbeat_interval_ms.get().as_secs().max(1) as u32,
                                    };
                                    if !send_message(&mut wr, &welcome).await {
                                        break 'channel None;
                                    }
                                }
                                (AgentMessage::Hello { .. }, true) => {
                                    break 'channel Some(End::policy("invalid message: a second `hello`", "invalid_message"));
                                }
                                (AgentMessage::Heartbeat { .. }, false) => {
                                    break 'channel Some(End::policy("invalid message: `hello` first", "invalid_message"));
                                }
                                (AgentMessage::Heartbeat { gpus }, true) => {
                                    presence::hold(api.redis.as_ref(), &id, ttl, gpus).await;
                                }
                            }
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if !hello && now >= hello_due {
                    break Some(End::policy("no_hello", "no_hello"));
                }
                if pong_due.is_some_and(|p| now >= p) {
                    break Some(End::policy("ping_timeout", "ping_timeout"));
                }
                if pong_due.is_none() && now >= next_ping {
                    if !send(&mut wr, &frame::encode(frame::PING, &[])).await {
                        break None;
                    }
                    pong_due = Some(now + pong_wait);
                }
            }
            _ = draining.cancelled() => break Some(End(1001, "draining".into(), "draining")),
        }
    };
    let label = match &end {
        Some(End(code, reason, label)) => {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                send(&mut wr, &frame::close(*code, reason)),
            )
            .await;
            *label
        }
        None => "disconnected",
    };
    counter!(AGENT_CHANNELS_CLOSED_TOTAL, "reason" => label).increment(1);
    if hello {
        gauge!(AGENTS_CONNECTED).decrement(1.0);
        if let Some(db) = api.db.as_deref()
            && let Err(e) = presence::lost(db, api.redis.as_ref(), &id, label).await
        {
            tracing::warn!(instance = %id.instance_id, error = %e, "agent_lost not recorded");
        }
    }
}
