//! The agent channels this daemon holds, and how work reaches them from any daemon.
//!
//! - Each channel past its hello is registered here by instance (`register`); a second channel
//!   for the same instance replaces the first (closed 1008 `replaced`).
//! - A command accepted anywhere is routed (`route`): to the channel here when this daemon holds
//!   the agent, else as a notice on the holder's Redis channel (`<prefix>agents:<daemon id>`,
//!   found from the agent's presence), which wakes the channel there. A woken channel claims the
//!   commands queued in PostgreSQL (`commands::claim`); the notice carries nothing else, so a lost
//!   one loses nothing.
//! - Admission (`admit`): at most `agents.max_opening` channels check their token at once, so a
//!   storm of agents opening leaves the database pool to API requests.
//! - A draining daemon ends every channel (`drain`: 1001 `draining`, the agents reconnect
//!   elsewhere), and any registering after.
//! - The sweep (`sweep`, every `agents.sweep_interval_ms`) covers what notices may miss, and ends
//!   what nobody will answer: it ends commands (`commands::sweep`), wakes the channels here with
//!   commands queued, and closes the channels whose token no longer opens one (the instance ended,
//!   or a newer token was minted: 1008 `instance_ended`). After a Redis reconnection every channel
//!   here is woken (notices sent meanwhile are lost).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::Context;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use metrics::{counter, gauge, histogram};

use super::commands;
use super::journal::Journal;
use super::presence::{daemon_id, holder};
use super::tokens::{self, AgentIdentity};
use crate::accounts::Db;
use crate::cache::Redis;
use crate::config::AgentsConfig;
use crate::metrics::{
    AGENT_CHANNELS_CLOSED_TOTAL, AGENT_COMMAND_SECONDS, AGENT_COMMANDS_TOTAL, AGENTS_CONNECTED,
};
use tokio::sync::{Semaphore, SemaphorePermit};

/// The agents' series, there from the start (the alerts divide by them).
pub fn register_metrics() {
    gauge!(AGENTS_CONNECTED).increment(0.0);
    for reason in ["disconnected", "draining", "ping_timeout"] {
        counter!(AGENT_CHANNELS_CLOSED_TOTAL, "reason" => reason).increment(0);
    }
    for status in commands::FINAL {
        counter!(AGENT_COMMANDS_TOTAL, "status" => status).increment(0);
    }
    for stage in ["routed", "result"] {
        let _ = histogram!(AGENT_COMMAND_SECONDS, "stage" => stage);
    }
}

/// Why a registered channel is told to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    /// Another channel for the same instance registered.
    Replaced = 1,
    /// Its instance ended, or its token was replaced.
    InstanceEnded = 2,
    /// The daemon drains.
    Draining = 3,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Replaced => "replaced",
            EndReason::InstanceEnded => "instance_ended",
            EndReason::Draining => "draining",
        }
    }
}

/// What one registered channel is told: commands are waiting, or it must end. Flags and the
/// waker of the task polling the channel (no future is held per channel for them).
pub struct Handle {
    waker: AtomicWaker,
    woken: AtomicBool,
    end_reason: AtomicU8,
    token_hash: [u8; 32],
}

impl Handle {
    /// What the channel was told since it last asked: why it must end (if it must), and whether
    /// commands are waiting. Its task is woken when it is told more.
    pub fn told(&self, cx: &mut Context<'_>) -> (Option<EndReason>, bool) {
        self.waker.register(cx.waker());
        let end = match self.end_reason.load(Ordering::Acquire) {
            1 => Some(EndReason::Replaced),
            2 => Some(EndReason::InstanceEnded),
            3 => Some(EndReason::Draining),
            _ => None,
        };
        (end, self.woken.swap(false, Ordering::AcqRel))
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn end(&self, why: EndReason) {
        // the first reason stays
        let _ = self
            .end_reason
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }
}

/// The channels this daemon holds.
pub struct Channels {
    held: papaya::HashMap<Box<str>, Arc<Handle>, foldhash::fast::RandomState>,
    redis: Option<Redis>,
    draining: AtomicBool,
    /// The agents' comings and goings, written in batches.
    pub journal: Journal,
    opening: Semaphore,
    opening_wait: Duration,
}

impl Channels {
    pub fn new(redis: Option<Redis>, db: Option<Arc<Db>>, cfg: &AgentsConfig) -> Arc<Channels> {
        Arc::new(Channels {
            held: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .build(),
            redis,
            draining: AtomicBool::new(false),
            journal: Journal::new(db),
            opening: Semaphore::new(
                cfg.max_opening.get().min(Semaphore::MAX_PERMITS as u64) as usize
            ),
            opening_wait: cfg.opening_wait_ms.get(),
        })
    }

    /// A place among the channels opening (held while the token is checked); 503 when none
    /// frees up within `agents.opening_wait_ms`.
    pub async fn admit(&self) -> crate::error::Result<SemaphorePermit<'_>> {
        let busy = || {
            crate::error::Error::busy(
                "too many agent channels opening at once (agents.max_opening); retry after a back-off",
            )
        };
        match tokio::time::timeout(self.opening_wait, self.opening.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => {
                counter!(AGENT_CHANNELS_CLOSED_TOTAL, "reason" => "not_admitted").increment(1);
                Err(busy())
            }
        }
    }

    /// Ends every channel here, and those registering from now on (1001 `draining`).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        for h in self.held.pin().values() {
            h.end(EndReason::Draining);
        }
    }

    /// Registers the channel of `id` (after its hello); an earlier one of the instance is told
    /// to end (`replaced`).
    pub fn register(&self, id: &AgentIdentity) -> Arc<Handle> {
        let h = Arc::new(Handle {
            waker: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            end_reason: AtomicU8::new(0),
            token_hash: id.token_hash,
        });
        if self.draining.load(Ordering::Acquire) {
            h.end(EndReason::Draining);
        }
        if let Some(old) = self
            .held
            .pin()
            .insert(id.instance_id.as_str().into(), h.clone())
        {
            old.end(EndReason::Replaced);
        }
        h
    }

    /// Removes `h` (not a channel that replaced it).
    pub fn unregister(&self, instance_id: &str, h: &Arc<Handle>) {
        let _ = self
            .held
            .pin()
            .remove_if(instance_id, |_, v| Arc::ptr_eq(v, h));
    }

    /// How many channels are registered.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Wakes the channel of `instance_id` here, if this daemon holds it.
    pub fn wake(&self, instance_id: &str) -> bool {
        match self.held.pin().get(instance_id) {
            Some(h) => {
                h.wake();
                true
            }
            None => false,
        }
    }

    fn wake_all(&self) {
        for h in self.held.pin().values() {
            h.wake();
        }
    }

    /// Whether a channel holds `instance_id`'s agent, here or on another daemon (its presence).
    pub async fn online(&self, instance_id: &str) -> bool {
        if self.held.pin().contains_key(instance_id) {
            return true;
        }
        match &self.redis {
            Some(r) => holder(r, instance_id).await.is_some(),
            None => false,
        }
    }

    /// Tells the channel holding `instance_id`'s agent that commands are waiting: here directly,
    /// on another daemon through Redis. Nothing when no daemon holds it (the commands wait for
    /// its next hello).
    pub async fn route(&self, instance_id: &str) {
        if self.wake(instance_id) {
            return;
        }
        let Some(r) = &self.redis else { return };
        match holder(r, instance_id).await {
            Some(d) if d == daemon_id() => {}
            Some(d) => {
                if let Err(e) = r
                    .publish(&notice_channel(r, &d), instance_id.to_owned())
                    .await
                {
                    // the holder's sweep finds it (agents.sweep_interval_ms)
                    tracing::warn!(instance = %instance_id, error = %e, "command notice not sent");
                }
            }
            None => {}
        }
    }

    /// Listens for notices to this daemon's channels (needs Redis).
    pub fn listen(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let r = self.redis.as_ref()?;
        let (a, b) = (self.clone(), self.clone());
        match r.subscribe(
            notice_channel(r, daemon_id()),
            move |instance| {
                a.wake(instance);
            },
            move || b.wake_all(),
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to agent command notices");
                None
            }
        }
    }

    /// One sweep (see the module header).
    pub async fn sweep(
        &self,
        db: &Db,
        grace: Duration,
        idempotency_ttl: Duration,
    ) -> crate::error::Result<()> {
        let sweep = commands::sweep(db, grace.as_secs_f64(), idempotency_ttl.as_secs_f64());
        for (status, n) in sweep.await? {
            if n > 0 {
                counter!(AGENT_COMMANDS_TOTAL, "status" => status).increment(n);
            }
        }
        let held: Vec<(String, [u8; 32])> = self
            .held
            .pin()
            .iter()
            .map(|(k, h)| (k.to_string(), h.token_hash))
            .collect();
        for id in tokens::no_longer_valid(db, &held).await? {
            if let Some(h) = self.held.pin().get(id.as_str()) {
                h.end(EndReason::InstanceEnded);
            }
        }
        let ids: Vec<String> = held.into_iter().map(|h| h.0).collect();
        for id in commands::queued_for(db, &ids).await? {
            self.wake(&id);
        }
        Ok(())
    }
}

/// The Redis channel that wakes agent channels held by `daemon`.
fn notice_channel(r: &Redis, daemon: &str) -> String {
    r.key(&format!("agents:{daemon}"))
}
