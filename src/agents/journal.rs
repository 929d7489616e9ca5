//! The agents' comings and goings (`instance.agent_connected`, `instance.agent_lost`) written in
//! batches by one writer task: the events handed in meanwhile go in one transaction, one
//! statement per account (`event_log::append_many`).
//!
//! Why: each event takes its account's row lock (`accounts.event_seq`) until commit. A storm of
//! channels opening (a daemon restarted under 18,000 agents of one account) written one
//! transaction per channel queued on that lock while holding pool connections, and API requests
//! got 503 `database_unavailable`. Batched, the storm is a few transactions a second on one
//! connection.
//!
//! - [`Journal::record`] waits until its event is committed (a hello is answered `welcome` only
//!   then), and says whether commands are queued for the instance (asked for the whole batch in
//!   one query, so a hello costs no claim of its own when nothing waits); a batch that fails
//!   fails each of its waiters (the hello is closed 1011 `unavailable`, the agent comes back
//!   after its back-off).
//! - [`Journal::record_later`] does not wait (a channel's end, from its `Drop`); an event of a
//!   failed batch is logged and dropped.
//! - [`Journal::flush`] waits for everything handed in before it (at shutdown, once the
//!   channels have ended).

use std::sync::{Arc, OnceLock};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::commands;
use crate::accounts::Db;
use crate::error::{Error, Result};

/// Events written in one transaction at most.
const MAX_BATCH: usize = 1024;

struct Entry {
    account_id: i64,
    instance_id: String,
    kind: &'static str,
    data: Value,
    /// Told when the batch is committed (whether commands wait for the instance), or failed.
    done: Option<oneshot::Sender<Option<bool>>>,
}

enum Msg {
    Event(Entry),
    Flush(oneshot::Sender<()>),
}

/// The writer of the agents' events (its task starts with the first event).
pub struct Journal {
    db: Option<Arc<Db>>,
    tx: OnceLock<mpsc::UnboundedSender<Msg>>,
}

impl Journal {
    pub fn new(db: Option<Arc<Db>>) -> Journal {
        Journal {
            db,
            tx: OnceLock::new(),
        }
    }

    fn sender(&self) -> Option<&mpsc::UnboundedSender<Msg>> {
        let db = self.db.clone()?;
        Some(self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write(db, rx));
            tx
        }))
    }

    fn send(
        &self,
        account_id: i64,
        instance_id: &str,
        kind: &'static str,
        data: Value,
        done: Option<oneshot::Sender<Option<bool>>>,
    ) -> bool {
        let Some(s) = self.sender() else { return false };
        s.send(Msg::Event(Entry {
            account_id,
            instance_id: instance_id.to_owned(),
            kind,
            data,
            done,
        }))
        .is_ok()
    }

    /// Writes the event; returns once it is committed, with whether commands are queued for the
    /// instance.
    pub async fn record(
        &self,
        account_id: i64,
        instance_id: &str,
        kind: &'static str,
        data: Value,
    ) -> Result<bool> {
        let unwritten = || Error::unavailable("the agent's event was not recorded");
        let (done, committed) = oneshot::channel();
        if !self.send(account_id, instance_id, kind, data, Some(done)) {
            return Err(unwritten());
        }
        committed.await.ok().flatten().ok_or_else(unwritten)
    }

    /// Writes the event with the next batch, without waiting.
    pub fn record_later(
        &self,
        account_id: i64,
        instance_id: &str,
        kind: &'static str,
        data: Value,
    ) {
        if !self.send(account_id, instance_id, kind, data, None) {
            tracing::warn!(instance = %instance_id, kind, "agent event not recorded: no database");
        }
    }

    /// Returns once every event handed in before is written (or failed).
    pub async fn flush(&self) {
        let Some(s) = self.tx.get() else { return };
        let (done, flushed) = oneshot::channel();
        if s.send(Msg::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

/// The writer task: takes what is waiting (up to [`MAX_BATCH`]), writes it, tells the waiters.
async fn write(db: Arc<Db>, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    while let Some(m) = rx.recv().await {
        let mut next = Some(m);
        while let Some(m) = next {
            match m {
                Msg::Event(e) => batch.push(e),
                Msg::Flush(f) => flushes.push(f),
            }
            next = if batch.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !batch.is_empty() {
            commit(&db, &mut batch).await;
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

/// Writes `batch` in one transaction (grouped by account, in order within each), and tells
/// each waiter how it went.
async fn commit(db: &Db, batch: &mut Vec<Entry>) {
    // stable: each account's events keep their order
    batch.sort_by_key(|e| e.account_id);
    let written = db
        .transaction(async |tx| {
            for group in batch.chunk_by(|a, b| a.account_id == b.account_id) {
                let events: Vec<(&str, Option<&str>, Value)> = group
                    .iter()
                    .map(|e| (e.kind, Some(e.instance_id.as_str()), e.data.clone()))
                    .collect();
                crate::events::append_many(tx, group[0].account_id, &events).await?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = &written {
        tracing::warn!(events = batch.len(), error = %e, "agent events not recorded");
    }
    let asking: Vec<String> = batch
        .iter()
        .filter(|e| e.done.is_some())
        .map(|e| e.instance_id.clone())
        .collect();
    let queued = match (&written, asking.is_empty()) {
        (Ok(()), false) => commands::queued_for(db, &asking).await.unwrap_or_else(|e| {
            // the sweep wakes the channels with commands waiting (agents.sweep_interval_ms)
            tracing::warn!(error = %e, "queued commands not looked up");
            Vec::new()
        }),
        _ => Vec::new(),
    };
    for e in batch.drain(..) {
        if let Some(done) = e.done {
            let _ = done.send(written.is_ok().then(|| queued.contains(&e.instance_id)));
        }
    }
}
