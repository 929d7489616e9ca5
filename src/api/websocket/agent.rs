//! An agent's channel (`GET /v1/agent` as a WebSocket, docs/agents.md), once its token has
//! named its instance: a state machine polled by its connection's task, as the event streams'
//! session is (`session.rs`). Between polls it holds the socket, the frame reader's state, one
//! timer, its registration and GCRA state; a read buffer only on the stack of a poll, and the
//! work of a message (a query, a Redis write) only while it runs, so an idle agent costs what
//! an idle event stream does.
//!
//! - The agent's first message is `hello` (within `agents.hello_timeout_ms`), naming the
//!   token's instance; the daemon records it as the holder (`agents::presence`), writes
//!   `instance.agent_connected`, registers the channel (`agents::channels`), answers `welcome`
//!   with the heartbeat interval, and sends the commands queued meanwhile. Heartbeats refresh
//!   the presence.
//! - Commands: woken by `agents::channels`, the channel claims queued commands
//!   (`agents::commands::claim`) and writes each as an `exec`; the agent's `started`, `output`
//!   and `finished` are recorded as they come, one message at a time (reading waits while one
//!   is being recorded).
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
//!   1008 too. A draining daemon closes 1001 `draining` (`Channels::drain`; the agent
//!   reconnects elsewhere); an
//!   ended instance or replaced token 1008 `instance_ended`; a newer channel of the same
//!   instance 1008 `replaced`.
//! - When it ends after a hello (however: closed, or its task dropped): the presence is dropped
//!   and `instance.agent_lost` written with the reason, the claimed commands never written put
//!   back, and a message's work still running finished (by a task of its own).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::SessionIo;
use super::frame::{self, Incoming, Reader};
use crate::agents::channels::Handle;
use crate::agents::commands::{self, Claimed, Outcome};
use crate::agents::presence;
use crate::agents::protocol::{self, AgentMessage, DaemonMessage};
use crate::agents::tokens::AgentIdentity;
use crate::api::Api;
use crate::metrics::{
    AGENT_CHANNELS_CLOSED_TOTAL, AGENT_COMMAND_SECONDS, AGENT_COMMANDS_TOTAL,
    AGENT_CONNECT_SECONDS, AGENT_MESSAGES_TOTAL, AGENTS_CONNECTED,
};
use crate::ratelimit::gcra::{Decision, Gcra, Quota};

/// Bytes read from the socket at once (on the stack of a poll, not kept).
const READ_CHUNK: usize = 4096;

/// How long the agent has to read our close before the socket goes.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How a channel ends: the close frame's code and reason, and the metric label.
struct End(u16, String, &'static str);

impl End {
    fn policy(reason: impl Into<String>, label: &'static str) -> End {
        End(1008, reason.into(), label)
    }

    fn unavailable() -> End {
        End(1011, "unavailable".into(), "unavailable")
    }
}

/// A frame waiting to be written (from `at` on), and the command it carries.
struct Out {
    bytes: Vec<u8>,
    at: usize,
    command: Option<Claimed>,
}

/// The writing side: frames queue here and are written as the agent reads.
struct Outbox {
    queue: VecDeque<Out>,
    max: usize,
    unflushed: bool,
}

impl Outbox {
    /// Queues a frame; `Err` when the agent is too slow (the queue is full).
    fn push(&mut self, bytes: Vec<u8>, command: Option<Claimed>) -> Result<(), End> {
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

    fn message(&mut self, m: &DaemonMessage, command: Option<Claimed>) -> Result<(), End> {
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

    /// Takes the claimed commands still waiting to be written (the agent never saw them), and
    /// every frame not begun: only a frame cut in the middle stays (the close goes after it).
    fn cut(&mut self) -> Vec<String> {
        let keep = usize::from(self.queue.front().is_some_and(|f| f.at > 0));
        self.queue
            .drain(keep..)
            .filter_map(|o| o.command.map(|c| c.id))
            .collect()
    }
}

/// What a message's work (a query, a Redis write) found, for the channel to act on.
enum Done {
    Nothing,
    /// The hello is recorded: the channel registers and answers `welcome` (and claims when
    /// commands are `queued`).
    Hello {
        queued: bool,
    },
    /// Commands claimed for this channel, to write as `exec`s.
    Claimed(Vec<Claimed>),
}

type Work = Pin<Box<dyn Future<Output = Result<Done, End>> + Send>>;

fn invalid() {
    counter!(AGENT_MESSAGES_TOTAL, "direction" => "in", "result" => "invalid").increment(1);
}

/// The channel of the agent `id` on `io`; `opened`: when its request came (the connect latency
/// runs from there to the welcome).
pub fn session(
    io: Box<dyn SessionIo>,
    api: Arc<Api>,
    id: AgentIdentity,
    opened: Instant,
) -> Channel {
    let cfg = &api.config.agents;
    let now = Instant::now();
    let hello_due = now + cfg.hello_timeout_ms.get();
    Channel {
        reader: Reader::messages(cfg.max_message_bytes.get() as usize),
        out: Outbox {
            queue: VecDeque::new(),
            max: cfg.max_queued_messages.get() as usize,
            unflushed: false,
        },
        gcra: Gcra::new(Quota::per_minute(
            cfg.messages_per_minute.get(),
            cfg.message_burst.get(),
        )),
        tat: AtomicU64::new(0),
        timer: Box::pin(tokio::time::sleep_until(hello_due)),
        hello_due: Some(hello_due),
        next_ping: now + cfg.ping_interval_ms.get(),
        pong_due: None,
        io,
        api,
        id,
        handle: None,
        work: None,
        unread: Vec::new(),
        want_claim: false,
        ending: None,
        client_closed: false,
        opened,
    }
}

/// One channel's state (see the module header).
pub struct Channel {
    io: Box<dyn SessionIo>,
    api: Arc<Api>,
    id: AgentIdentity,
    reader: Reader,
    out: Outbox,
    /// Bytes read past a message whose work runs: given to the reader once it is done.
    unread: Vec<u8>,
    /// Registered once the hello is recorded (`agents::channels`): how commands and the order
    /// to end reach it.
    handle: Option<Arc<Handle>>,
    /// The work of the message being handled, or of a claim.
    work: Option<Work>,
    /// Commands wait (woken, or a claim filled the room it had): claim once it can.
    want_claim: bool,
    gcra: Gcra,
    tat: AtomicU64,
    /// The deadline for the hello (until one comes), the next ping, the pong awaited; while
    /// closing, the timer is the end of the wait for the agent to read the close.
    timer: Pin<Box<Sleep>>,
    hello_due: Option<Instant>,
    next_ping: Instant,
    pong_due: Option<Instant>,
    /// Ending: the label (the close frame is queued after what was cut in the middle).
    ending: Option<&'static str>,
    /// The agent closed or left: nothing more is read.
    client_closed: bool,
    opened: Instant,
}

/// What a side of the socket did in one poll.
enum Step {
    /// Something happened: look again.
    Moved,
    /// Waiting (its waker is registered).
    Waiting,
    /// The session is over.
    Over,
}

impl Channel {
    /// Ends the channel with `e`: the claimed commands never written go back to `queued`, the
    /// close frame is queued, and the agent has [`CLOSE_WAIT`] to read it.
    fn end(&mut self, e: End) {
        if self.ending.is_some() {
            return;
        }
        let End(code, reason, label) = e;
        self.ending = Some(label);
        let unwritten = self.out.cut();
        self.requeue(unwritten);
        self.out.queue.push_back(Out {
            bytes: frame::close(code, &reason),
            at: 0,
            command: None,
        });
        if let Some(w) = self.work.take() {
            self.finish_apart(w, label);
        }
        self.timer.as_mut().reset(Instant::now() + CLOSE_WAIT);
    }

    /// Puts the commands `ids` (claimed, never written) back for the next channel.
    fn requeue(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let Some(db) = self.api.db.clone() else {
            return;
        };
        let instance = self.id.instance_id.clone();
        spawn(async move {
            if let Err(e) = commands::requeue(&db, &ids).await {
                tracing::warn!(instance = %instance, error = %e, "claimed commands not put back; the sweep ends them as lost");
            }
        });
    }

    /// Work still running when the channel ends is finished by a task of its own (an agent's
    /// `finished` is recorded): commands it claims go back to `queued`, a hello it records is
    /// followed by `instance.agent_lost` (`label`).
    fn finish_apart(&self, w: Work, label: &'static str) {
        let Some(db) = self.api.db.clone() else {
            return;
        };
        let (api, id) = (self.api.clone(), self.id.clone());
        spawn(async move {
            match w.await {
                Ok(Done::Claimed(c)) => {
                    let ids: Vec<String> = c.into_iter().map(|c| c.id).collect();
                    let _ = commands::requeue(&db, &ids).await;
                }
                Ok(Done::Hello { .. }) => {
                    presence::lost(&api.agents.journal, api.redis.as_ref(), &id, label)
                }
                _ => {}
            }
        });
    }

    /// What the registration says: the order to end, commands waiting.
    fn told(&mut self, cx: &mut Context<'_>) {
        let Some(h) = &self.handle else { return };
        let (end, woken) = h.told(cx);
        self.want_claim |= woken;
        if let Some(why) = end {
            let code = if why.as_str() == "draining" {
                1001
            } else {
                1008
            };
            self.end(End(code, why.as_str().into(), why.as_str()));
        }
    }

    /// Polls the running work; acts on what it found.
    fn poll_work(&mut self, cx: &mut Context<'_>) -> Step {
        let Some(w) = &mut self.work else {
            return Step::Waiting;
        };
        let Poll::Ready(r) = w.as_mut().poll(cx) else {
            return Step::Waiting;
        };
        self.work = None;
        if let Err(e) = r.and_then(|d| self.done(d)) {
            self.end(e);
        }
        Step::Moved
    }

    fn done(&mut self, d: Done) -> Result<(), End> {
        match d {
            Done::Nothing => {}
            Done::Hello { queued } => {
                self.handle = Some(self.api.agents.register(&self.id));
                gauge!(AGENTS_CONNECTED).increment(1.0);
                let cfg = &self.api.config.agents;
                let welcome = DaemonMessage::Welcome {
                    instance_id: self.id.instance_id.clone(),
                    heartbeat_s: cfg.heartbeat_interval_ms.get().as_secs().max(1) as u32,
                };
                self.out.message(&welcome, None)?;
                histogram!(AGENT_CONNECT_SECONDS).record(self.opened.elapsed().as_secs_f64());
                // what was sent while it was away
                self.want_claim |= queued;
            }
            Done::Claimed(claimed) => {
                if claimed.len() >= self.out.room() {
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
            }
        }
        Ok(())
    }

    /// Starts a claim when commands wait, nothing else runs and the queue has room.
    fn start_claim(&mut self) -> Step {
        if !self.want_claim || self.work.is_some() || self.ending.is_some() {
            return Step::Waiting;
        }
        let room = self.out.room();
        if room == 0 || self.handle.is_none() {
            return Step::Waiting;
        }
        self.want_claim = false;
        let Some(db) = self.api.db.clone() else {
            return Step::Waiting;
        };
        let instance = self.id.instance_id.clone();
        self.work = Some(Box::pin(async move {
            match commands::claim(&db, &instance, presence::daemon_id(), room as i64).await {
                Ok(c) => Ok(Done::Claimed(c)),
                Err(e) => {
                    // the sweep wakes the channel again (agents.sweep_interval_ms)
                    tracing::warn!(instance = %instance, error = %e, "commands not claimed");
                    Ok(Done::Nothing)
                }
            }
        }));
        Step::Moved
    }

    /// Reads what the agent sent, while no message's work runs.
    fn read(&mut self, cx: &mut Context<'_>) -> Step {
        let mut moved = false;
        if !self.unread.is_empty() && self.work.is_none() {
            let unread = std::mem::take(&mut self.unread);
            if let Some(over) = self.take(&unread) {
                return over;
            }
            moved = true;
        }
        let mut chunk = [0u8; READ_CHUNK];
        while self.work.is_none() && !self.client_closed {
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => break,
                Poll::Ready(Err(_)) => return Step::Over,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Step::Over,
                Poll::Ready(Ok(())) => {}
            }
            let n = buf.filled().len();
            if let Some(over) = self.take(&chunk[..n]) {
                return over;
            }
            moved = true;
        }
        if moved { Step::Moved } else { Step::Waiting }
    }

    /// Gives `data` to the frame reader and acts on each frame; what is left when a message's
    /// work starts waits in `unread`. `Some` when the session is over.
    fn take(&mut self, mut data: &[u8]) -> Option<Step> {
        while !data.is_empty() {
            if self.client_closed {
                return None;
            }
            if self.work.is_some() {
                self.unread.extend_from_slice(data);
                return None;
            }
            let (used, got) = self.reader.read(data);
            data = &data[used..];
            let Some(got) = got else { continue };
            if let Err(e) = self.incoming(got) {
                if e.2 == "client_closed" {
                    return Some(Step::Over);
                }
                self.end(e);
            }
        }
        None
    }

    /// One frame from the agent.
    fn incoming(&mut self, got: Incoming) -> Result<(), End> {
        let closing = self.ending.is_some();
        match got {
            Incoming::Ping(p) if !closing => self.out.push(frame::encode(frame::PONG, &p), None),
            Incoming::Pong => {
                if self.pong_due.take().is_some() {
                    self.next_ping = Instant::now() + self.api.config.agents.ping_interval_ms.get();
                }
                Ok(())
            }
            Incoming::Close(_) if closing => {
                // the answer to ours
                self.client_closed = true;
                Err(End(0, String::new(), "client_closed"))
            }
            Incoming::Close(code) => {
                self.client_closed = true;
                Err(End(
                    code.unwrap_or(frame::NORMAL),
                    String::new(),
                    "disconnected",
                ))
            }
            // closing: what the agent still sends is read and dropped
            _ if closing => Ok(()),
            Incoming::Ping(_) => Ok(()),
            Incoming::Fail(frame::TOO_BIG, _) => {
                invalid();
                Err(End::policy("message_too_big", "message_too_big"))
            }
            Incoming::Fail(code, why) => Err(End(code, why.into(), "protocol_error")),
            Incoming::Message { text: false, .. } => {
                invalid();
                Err(End::policy(
                    "invalid message: text messages only",
                    "invalid_message",
                ))
            }
            Incoming::Message { text: true, data } => self.message(&data),
        }
    }

    /// One whole text message from the agent: checked, then its work started.
    fn message(&mut self, m: &[u8]) -> Result<(), End> {
        let now = self.opened.elapsed().as_nanos() as u64 + 1;
        if let Decision::Limited { .. } = self.gcra.check(&self.tat, now) {
            invalid();
            return Err(End::policy("rate_limited", "rate_limited"));
        }
        let m = protocol::parse(m).map_err(|e| {
            invalid();
            End::policy(e.0, "invalid_message")
        })?;
        counter!(AGENT_MESSAGES_TOTAL, "direction" => "in", "result" => "ok").increment(1);
        let Some(db) = self.api.db.clone() else {
            return Err(End::unavailable());
        };
        let hello = self.handle.is_some() || self.hello_due.is_none();
        let (api, id) = (self.api.clone(), self.id.clone());
        let ttl = self.api.config.agents.presence_ttl_ms.get();
        let work: Work = match (m, hello) {
            (m @ AgentMessage::Hello { .. }, false) => {
                if !matches!(&m, AgentMessage::Hello { instance_id, .. } if *instance_id == self.id.instance_id)
                {
                    invalid();
                    return Err(End::policy(
                        "invalid message: `instance_id` is not the token's instance",
                        "invalid_message",
                    ));
                }
                self.hello_due = None;
                Box::pin(async move {
                    let queued =
                        presence::connected(&api.agents.journal, api.redis.as_ref(), &id, &m, ttl)
                            .await
                            .map_err(|_| End::unavailable())?;
                    Ok(Done::Hello { queued })
                })
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
            (AgentMessage::Heartbeat { gpus }, true) => Box::pin(async move {
                presence::hold(api.redis.as_ref(), &id, ttl, &gpus).await;
                Ok(Done::Nothing)
            }),
            (AgentMessage::Started { id: cid }, true) => Box::pin(async move {
                commands::started(&db, &id.instance_id, &cid)
                    .await
                    .map_err(|_| End::unavailable())?;
                Ok(Done::Nothing)
            }),
            (
                AgentMessage::Output {
                    id: cid,
                    stream,
                    data,
                },
                true,
            ) => {
                let keep = self.api.config.agents.command_output_bytes.get() as usize;
                Box::pin(async move {
                    commands::output(&db, &id.instance_id, &cid, stream.as_str(), &data, keep)
                        .await
                        .map_err(|_| End::unavailable())?;
                    Ok(Done::Nothing)
                })
            }
            (
                AgentMessage::Finished {
                    id: cid,
                    exit_code,
                    timed_out,
                    error,
                    output_bytes,
                },
                true,
            ) => Box::pin(async move {
                let o = Outcome {
                    exit_code,
                    timed_out,
                    error,
                    output_bytes,
                };
                if let Some((status, after)) = commands::finished(&db, &id.instance_id, &cid, &o)
                    .await
                    .map_err(|_| End::unavailable())?
                {
                    histogram!(AGENT_COMMAND_SECONDS, "stage" => "result").record(after);
                    counter!(AGENT_COMMANDS_TOTAL, "status" => status).increment(1);
                }
                Ok(Done::Nothing)
            }),
        };
        self.work = Some(work);
        Ok(())
    }

    /// Writes what is queued, then flushes.
    fn write(&mut self, cx: &mut Context<'_>) -> Step {
        let mut moved = false;
        while let Some(f) = self.out.queue.front() {
            match Pin::new(&mut self.io).poll_write(cx, &f.bytes[f.at..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Step::Over,
                Poll::Ready(Ok(n)) => {
                    self.out.wrote(n);
                    moved = true;
                }
                Poll::Pending => break,
            }
        }
        if self.out.unflushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.out.unflushed = false,
                Poll::Ready(Err(_)) => return Step::Over,
                Poll::Pending => {}
            }
        }
        if self.ending.is_some() && self.out.queue.is_empty() && !self.out.unflushed {
            // the close is written: the agent's answer (or its leaving) ends it, or the timer
            if self.client_closed {
                return Step::Over;
            }
        }
        if moved { Step::Moved } else { Step::Waiting }
    }

    /// The next deadline: the end of the close wait while ending, else the hello's, the pong's
    /// or the next ping.
    fn deadline(&self) -> Instant {
        let beat = self.pong_due.unwrap_or(self.next_ping);
        self.hello_due.map_or(beat, |h| h.min(beat))
    }

    /// The timer fired (a deadline passed).
    fn timed(&mut self) -> Step {
        if self.ending.is_some() {
            // the agent did not read our close in time
            return Step::Over;
        }
        let now = Instant::now();
        if self.hello_due.is_some_and(|h| now >= h) {
            self.end(End::policy("no_hello", "no_hello"));
        } else if self.pong_due.is_some_and(|p| now >= p) {
            self.end(End::policy("ping_timeout", "ping_timeout"));
        } else if self.pong_due.is_none() && now >= self.next_ping {
            match self.out.push(frame::encode(frame::PING, &[]), None) {
                Ok(()) => self.pong_due = Some(now + self.api.config.agents.pong_timeout_ms.get()),
                Err(e) => self.end(e),
            }
        }
        if self.ending.is_none() {
            let d = self.deadline();
            self.timer.as_mut().reset(d);
        }
        Step::Moved
    }
}

impl Future for Channel {
    type Output = ();

    /// The registration, the running work, a claim, reading, writing, then the timer, until all
    /// of them wait (the timer is polled last, after whatever reset it, so its waker is always
    /// registered).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = &mut *self;
        loop {
            me.told(cx);
            let mut moved = false;
            for step in [me.poll_work(cx), me.start_claim()] {
                moved |= matches!(step, Step::Moved);
            }
            for side in [Channel::read, Channel::write] {
                match side(me, cx) {
                    Step::Over => return Poll::Ready(()),
                    Step::Moved => moved = true,
                    Step::Waiting => {}
                }
            }
            if me.ending.is_none() && me.timer.deadline() != me.deadline() {
                let d = me.deadline();
                me.timer.as_mut().reset(d);
            }
            if me.timer.as_mut().poll(cx).is_ready() {
                match me.timed() {
                    Step::Over => return Poll::Ready(()),
                    _ => moved = true,
                }
            }
            if !moved {
                return Poll::Pending;
            }
        }
    }
}

impl Drop for Channel {
    /// However it ended: the metrics, the registration and presence dropped,
    /// `instance.agent_lost`, the claimed commands never written put back, running work
    /// finished apart.
    fn drop(&mut self) {
        let label = self.ending.unwrap_or("disconnected");
        counter!(AGENT_CHANNELS_CLOSED_TOTAL, "reason" => label).increment(1);
        if let Some(w) = self.work.take() {
            self.finish_apart(w, label);
        }
        let Some(h) = self.handle.take() else { return };
        self.api.agents.unregister(&self.id.instance_id, &h);
        gauge!(AGENTS_CONNECTED).decrement(1.0);
        let unwritten = self.out.cut();
        self.requeue(unwritten);
        presence::lost(
            &self.api.agents.journal,
            self.api.redis.as_ref(),
            &self.id,
            label,
        );
    }
}

/// Runs `f` by a task of its own, while the runtime runs (a channel dropped as it shuts down
/// leaves the rest to the sweep).
fn spawn(f: impl Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle channel holds besides its socket and TLS state: this struct (boxed once by its
    /// connection), its timer and its registration. It was an `async fn` of several KiB with a
    /// 4 KiB read buffer (23 KiB per agent in all); keep it small.
    #[test]
    fn an_idle_channel_is_small() {
        // 448 bytes when written
        let size = std::mem::size_of::<Channel>();
        assert!(size <= 640, "agent::Channel is {size} bytes");
    }
}
