//! An agent's channel (`GET /v1/agent` as a WebSocket, docs/agents.md), once its token has
//! named its instance.
//!
//! - The agent's first message is `hello` (within `agents.hello_timeout_ms`), naming the
//!   token's instance; the daemon records it as the holder (`agents::presence`), writes
//!   `instance.agent_connected`, registers the channel (`agents::channels`), answers `welcome`
//!   with the heartbeat interval, and sends the commands queued meanwhile. Heartbeats refresh
//!   the presence.
//! - Commands: woken by `agents::channels`, the channel claims queued commands
//!   (`agents::commands::claim`) and writes each as an `exec`; the agent's `started`, `output`
//!   and `finished` are recorded as they come.
//! - Writes go through a queue of at most `agents.max_queued_messages`; an agent that does not
//!   read is closed 1013 `slow_consumer` once it would overflow (commands are claimed only
//!   while there is room, so they wait in PostgreSQL instead). Claimed commands never written
//!   go back to `queued` when the channel ends.
//! - An agent's messages are limited by GCRA (`agents.messages_per_minute`, `message_burst`):
//!   past them 1008 `rate_limited`.
//! - A ping every `agents.ping_interval_ms`; no pong within `agents.pong_timeout_ms`: closed
//!   1008 `ping_timeout`. The agent's pings are answered.
//! - Every message is checked whole (`agents::protocol`); a bad one closes the channel 1008 with
//!   the reason, a message over `agents.max_message_bytes` 1008 `message_too_big`, a binary one
//!   1008 too. A draining daemon closes 1001 `draining` (the agent reconnects elsewhere); an
//!   ended instance or replaced token 1008 `instance_ended`; a newer channel of the same
//!   instance 1008 `replaced`.
//! - When it ends after a hello: the presence is dropped and `instance.agent_lost` written with
//!   the reason.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::time::Instant;

use super::SessionIo;
use super::frame::{self, Incoming, Reader};
use crate::agents::channels::Handle;
use crate::agents::commands::{self, Outcome};
use crate::agents::presence;
use crate::agents::protocol::{self, AgentMessage, DaemonMessage};
use crate::agents::tokens::AgentIdentity;
use crate::api::Api;
use crate::metrics::{
    AGENT_CHANNELS_CLOSED_TOTAL, AGENT_COMMAND_SECONDS, AGENT_COMMANDS_TOTAL,
    AGENT_CONNECT_SECONDS, AGENT_MESSAGES_TOTAL, AGENTS_CONNECTED,
};
use crate::ratelimit::gcra::{Decision, Gcra, Quota};

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 4096;

/// How a channel ends: the close frame's code and reason, and the metric label.
struct End(u16, String, &'static str);

impl End {
    fn policy(reason: impl Into<String>, label: &'static str) -> End {
        End(1008, reason.into(), label)
    }
}

type Writer = WriteHalf<Box<dyn SessionIo>>;

/// A frame waiting to be written (from `at` on), and the command it carries.
struct Out {
    bytes: Vec<u8>,
    at: usize,
    command: Option<commands::Claimed>,
}

/// The writing side: frames queue here and are written as the agent reads.
struct Outbox {
    queue: VecDeque<Out>,
    max: usize,
    unflushed: bool,
}

impl Outbox {
    /// Queues a frame; `Err` when the agent is too slow (the queue is full).
    fn push(&mut self, bytes: Vec<u8>, command: Option<commands::Claimed>) -> Result<(), End> {
        if self.queue.len() >= self.max {
            return Err(End(1013, "slow_consumer".into(), "slow_consumer"));
        }
        self.queue.push_back(Out {
            bytes,
            at: 0,
            command,
        });
        Ok(())
    }

    fn message(
        &mut self,
        m: &DaemonMessage,
        command: Option<commands::Claimed>,
    ) -> Result<(), End> {
        let text = serde_json::to_string(m).expect("messages serialize");
        counter!(AGENT_MESSAGES_TOTAL, "direction" => "out", "result" => "ok").increment(1);
        self.push(frame::encode(frame::TEXT, text.as_bytes()), command)
    }

    fn room(&self) -> usize {
        self.max.saturating_sub(self.queue.len())
    }

    /// `n` more bytes of the front frame went out; when it is done, it is dropped (and the
    /// routing of the command it carried is timed).
    fn wrote(&mut self, n: usize) {
        self.unflushed = true;
        let Some(front) = self.queue.front_mut() else {
            return;
        };
        front.at += n;
        if front.at >= front.bytes.len()
            && let Some(done) = self.queue.pop_front()
            && let Some(c) = done.command
            && let Some(after) = c.routed_after
        {
            histogram!(AGENT_COMMAND_SECONDS, "stage" => "routed").record(after);
        }
    }

    /// The claimed commands still waiting to be written (the agent never saw them).
    fn unwritten(&self) -> Vec<String> {
        self.queue
            .iter()
            .filter(|o| o.at == 0)
            .filter_map(|o| o.command.as_ref().map(|c| c.id.clone()))
            .collect()
    }
}

/// What the writing side did: wrote bytes of the front frame, or flushed.
enum Wrote {
    Bytes(usize),
    Flushed,
}

/// Writes some of the front frame; with nothing queued, flushes what was written, if anything.
/// Cancel-safe: a `write` that did not complete wrote nothing.
async fn write_some(wr: &mut Writer, out: &Outbox) -> std::io::Result<Wrote> {
    match out.queue.front() {
        Some(f) => match wr.write(&f.bytes[f.at..]).await? {
            0 => Err(std::io::ErrorKind::WriteZero.into()),
            n => Ok(Wrote::Bytes(n)),
        },
        None if out.unflushed => wr.flush().await.map(|()| Wrote::Flushed),
        None => std::future::pending().await,
    }
}

async fn woken(h: Option<&Arc<Handle>>) {
    match h {
        Some(h) => h.wake.notified().await,
        None => std::future::pending().await,
    }
}

async fn told_to_end(h: Option<&Arc<Handle>>) {
    match h {
        Some(h) => h.end.notified().await,
        None => std::future::pending().await,
    }
}

fn invalid() {
    counter!(AGENT_MESSAGES_TOTAL, "direction" => "in", "result" => "invalid").increment(1);
}

/// Runs the channel of the agent `id` on `io` until it ends; `opened`: when its request came
/// (the connect latency runs from there to the welcome).
pub async fn run(io: Box<dyn SessionIo>, api: Arc<Api>, id: AgentIdentity, opened: Instant) {
    let mut ch = Channel {
        cfg: api.config.agents.clone(),
        api,
        id,
        handle: None,
        out: Outbox {
            queue: VecDeque::new(),
            max: 0,
            unflushed: false,
        },
        want_claim: false,
        gcra: Gcra::new(Quota::per_minute(1, 1)),
        tat: AtomicU64::new(0),
        epoch: Instant::now(),
        opened,
    };
    ch.out.max = ch.cfg.max_queued_messages.get() as usize;
    ch.gcra = Gcra::new(Quota::per_minute(
        ch.cfg.messages_per_minute.get(),
        ch.cfg.message_burst.get(),
    ));
    let (rd, mut wr) = tokio::io::split(io);
    let end = ch.serve(rd, &mut wr).await;
    ch.finish(end, &mut wr).await;
}

/// One channel's state.
struct Channel {
    api: Arc<Api>,
    cfg: crate::config::AgentsConfig,
    id: AgentIdentity,
    /// Registered at hello (`agents::channels`): how commands and the order to end reach it.
    handle: Option<Arc<Handle>>,
    out: Outbox,
    /// Woken while the queue was full: claim once it has room.
    want_claim: bool,
    gcra: Gcra,
    tat: AtomicU64,
    epoch: Instant,
    opened: Instant,
}

impl Channel {
    async fn serve(
        &mut self,
        mut rd: tokio::io::ReadHalf<Box<dyn SessionIo>>,
        wr: &mut Writer,
    ) -> Option<End> {
        let (every, pong_wait) = (
            self.cfg.ping_interval_ms.get(),
            self.cfg.pong_timeout_ms.get(),
        );
        let draining = self
            .api
            .events
            .as_ref()
            .map(|h| h.draining())
            .unwrap_or_default();
        let mut reader = Reader::messages(self.cfg.max_message_bytes.get() as usize);
        let mut chunk = vec![0u8; READ_CHUNK];
        let hello_due = Instant::now() + self.cfg.hello_timeout_ms.get();
        let mut next_ping = Instant::now() + every;
        let mut pong_due: Option<Instant> = None;
        loop {
            let wake = match (self.handle.is_some(), pong_due) {
                (false, _) => hello_due.min(pong_due.unwrap_or(next_ping)),
                (true, Some(p)) => p,
                (true, None) => next_ping,
            };
            tokio::select! {
                r = rd.read(&mut chunk) => {
                    let n = match r {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => n,
                    };
                    let mut data = &chunk[..n];
                    while !data.is_empty() {
                        let (used, got) = reader.read(data);
                        data = &data[used..];
                        let Some(got) = got else { continue };
                        match got {
                            Incoming::Ping(p) => {
                                if let Err(e) = self.out.push(frame::encode(frame::PONG, &p), None) {
                                    return Some(e);
                                }
                            }
                            Incoming::Pong => {
                                if pong_due.take().is_some() {
                                    next_ping = Instant::now() + every;
                                }
                            }
                            Incoming::Close(code) => {
                                return Some(End(code.unwrap_or(frame::NORMAL), String::new(), "disconnected"));
                            }
                            Incoming::Fail(frame::TOO_BIG, _) => {
                                invalid();
                                return Some(End::policy("message_too_big", "message_too_big"));
                            }
                            Incoming::Fail(code, why) => return Some(End(code, why.into(), "protocol_error")),
                            Incoming::Message { text: false, .. } => {
                                invalid();
                                return Some(End::policy("invalid message: text messages only", "invalid_message"));
                            }
                            Incoming::Message { text: true, data: m } => {
                                if let Err(e) = self.message(&m).await {
                                    return Some(e);
                                }
                            }
                        }
                    }
                }
                w = write_some(wr, &self.out) => match w {
                    Err(_) => return None,
                    Ok(Wrote::Flushed) => self.out.unflushed = false,
                    Ok(Wrote::Bytes(n)) => {
                        self.out.wrote(n);
                        if self.out.queue.is_empty() && self.want_claim && let Err(e) = self.claim().await {
                            return Some(e);
                        }
                    }
                },
                _ = woken(self.handle.as_ref()) => {
                    if let Err(e) = self.claim().await {
                        return Some(e);
                    }
                }
                _ = told_to_end(self.handle.as_ref()) => {
                    let why = self.handle.as_ref().and_then(|h| h.end_reason()).map_or("replaced", |r| r.as_str());
                    return Some(End::policy(why, why));
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if self.handle.is_none() && now >= hello_due {
                        return Some(End::policy("no_hello", "no_hello"));
                    }
                    if pong_due.is_some_and(|p| now >= p) {
                        return Some(End::policy("ping_timeout", "ping_timeout"));
                    }
                    if pong_due.is_none() && now >= next_ping {
                        if let Err(e) = self.out.push(frame::encode(frame::PING, &[]), None) {
                            return Some(e);
                        }
                        pong_due = Some(now + pong_wait);
                    }
                }
                _ = draining.cancelled() => return Some(End(1001, "draining".into(), "draining")),
            }
        }
    }

    /// One whole text message from the agent.
    async fn message(&mut self, m: &[u8]) -> Result<(), End> {
        let now = self.epoch.elapsed().as_nanos() as u64 + 1;
        if let Decision::Limited { .. } = self.gcra.check(&self.tat, now) {
            invalid();
            return Err(End::policy("rate_limited", "rate_limited"));
        }
        let m = protocol::parse(m).map_err(|e| {
            invalid();
            End::policy(e.0, "invalid_message")
        })?;
        counter!(AGENT_MESSAGES_TOTAL, "direction" => "in", "result" => "ok").increment(1);
        let unavailable = || End(1011, "unavailable".into(), "unavailable");
        let Some(db) = self.api.db.clone() else {
            return Err(unavailable());
        };
        let hello = self.handle.is_some();
        match (&m, hello) {
            (AgentMessage::Hello { instance_id, .. }, false) => {
                if *instance_id != self.id.instance_id {
                    invalid();
                    return Err(End::policy(
                        "invalid message: `instance_id` is not the token's instance",
                        "invalid_message",
                    ));
                }
                let ttl = self.cfg.presence_ttl_ms.get();
                presence::connected(&db, self.api.redis.as_ref(), &self.id, &m, ttl)
                    .await
                    .map_err(|_| unavailable())?;
                self.handle = Some(self.api.agents.register(&self.id));
                gauge!(AGENTS_CONNECTED).increment(1.0);
                let welcome = DaemonMessage::Welcome {
                    instance_id: self.id.instance_id.clone(),
                    heartbeat_s: self.cfg.heartbeat_interval_ms.get().as_secs().max(1) as u32,
                };
                self.out.message(&welcome, None)?;
                histogram!(AGENT_CONNECT_SECONDS).record(self.opened.elapsed().as_secs_f64());
                // what was sent while it was away
                self.claim().await?;
            }
            (AgentMessage::Hello { .. }, true) => {
                invalid();
                return Err(End::policy(
                    "invalid message: a second `hello`",
                    "invalid_message",
                ));
            }
            (_, false) => {
                invalid();
                return Err(End::policy(
                    "invalid message: `hello` first",
                    "invalid_message",
                ));
            }
            (AgentMessage::Heartbeat { gpus }, true) => {
                let ttl = self.cfg.presence_ttl_ms.get();
                presence::hold(self.api.redis.as_ref(), &self.id, ttl, gpus).await;
            }
            (AgentMessage::Started { id }, true) => {
                commands::started(&db, &self.id.instance_id, id)
                    .await
                    .map_err(|_| unavailable())?;
            }
            (AgentMessage::Output { id, stream, data }, true) => {
                let keep = self.cfg.command_output_bytes.get() as usize;
                commands::output(&db, &self.id.instance_id, id, stream.as_str(), data, keep)
                    .await
                    .map_err(|_| unavailable())?;
            }
            (
                AgentMessage::Finished {
                    id,
                    exit_code,
                    timed_out,
                    error,
                    output_bytes,
                },
                true,
            ) => {
                let o = Outcome {
                    exit_code: *exit_code,
                    timed_out: *timed_out,
                    error: error.clone(),
                    output_bytes: *output_bytes,
                };
                if let Some((status, after)) = commands::finished(&db, &self.id.instance_id, id, &o)
                    .await
                    .map_err(|_| unavailable())?
                {
                    histogram!(AGENT_COMMAND_SECONDS, "stage" => "result").record(after);
                    counter!(AGENT_COMMANDS_TOTAL, "status" => status).increment(1);
                }
            }
        }
        Ok(())
    }

    /// Claims as many queued commands as the queue has room for, and queues them as `exec`s.
    async fn claim(&mut self) -> Result<(), End> {
        let room = self.out.room();
        if room == 0 {
            self.want_claim = true;
            return Ok(());
        }
        self.want_claim = false;
        let Some(db) = self.api.db.clone() else {
            return Ok(());
        };
        let claimed = match commands::claim(
            &db,
            &self.id.instance_id,
            presence::daemon_id(),
            room as i64,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                // the sweep wakes the channel again (agents.sweep_interval_ms)
                tracing::warn!(instance = %self.id.instance_id, error = %e, "commands not claimed");
                return Ok(());
            }
        };
        if claimed.len() == room {
            // there may be more: claim again once these are written
            self.want_claim = true;
        }
        for c in claimed {
            let m = DaemonMessage::Exec {
                id: c.id.clone(),
                argv: c.argv.clone(),
                timeout_s: c.timeout_s as u32,
            };
            self.out.message(&m, Some(c))?;
        }
        Ok(())
    }

    /// After the loop: the close frame, the metrics, the registration and presence dropped,
    /// `instance.agent_lost`, and the claimed commands never written put back.
    async fn finish(&mut self, end: Option<End>, wr: &mut Writer) {
        let label = match &end {
            Some(End(code, reason, label)) => {
                let close = async {
                    // a frame cut in the middle would garble the close after it
                    if let Some(f) = self.out.queue.front()
                        && f.at > 0
                    {
                        wr.write_all(&f.bytes[f.at..]).await?;
                    }
                    wr.write_all(&frame::close(*code, reason)).await?;
                    wr.flush().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
                *label
            }
            None => "disconnected",
        };
        counter!(AGENT_CHANNELS_CLOSED_TOTAL, "reason" => label).increment(1);
        let Some(h) = self.handle.take() else { return };
        self.api.agents.unregister(&self.id.instance_id, &h);
        gauge!(AGENTS_CONNECTED).decrement(1.0);
        let Some(db) = self.api.db.as_deref() else {
            return;
        };
        if let Err(e) = commands::requeue(db, &self.out.unwritten()).await {
            tracing::warn!(instance = %self.id.instance_id, error = %e, "claimed commands not put back; the sweep ends them as lost");
        }
        if let Err(e) = presence::lost(db, self.api.redis.as_ref(), &self.id, label).await {
            tracing::warn!(instance = %self.id.instance_id, error = %e, "agent_lost not recorded");
        }
    }
}
