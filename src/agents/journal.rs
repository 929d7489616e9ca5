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
//! - [`Journal::record_later`] does not wait (a channel's end, from its `Drop`). While the
//!   database is away such events are kept (up to [`MAX_KEPT`]) and tried again, before what
//!   came after, with a back-off from 250 ms to 10 s.
//! - [`Journal::flush`] waits for everything handed in before it (at shutdown, once the
//!   channels have ended).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
            let store = move |events, asking| {
                let db = db.clone();
                async move { write_batch(&db, events, asking).await }
            };
            tokio::spawn(write(store, rx));
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

/// One event as the store writes it: account, type, instance, data.
#[derive(Debug, Clone, PartialEq)]
struct Event(i64, &'static str, String, Value);

/// What a write found: of the instances asking, those with commands queued; or why it failed.
type Written = std::result::Result<Vec<String>, String>;

/// The first wait before a failed batch is tried again, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Events without a waiter kept for retrying while the database is away; past this the oldest
/// are dropped (and logged).
const MAX_KEPT: usize = 100_000;

/// The writer task: takes what is waiting, writes it in batches of at most [`MAX_BATCH`], tells
/// the waiters. A batch that fails fails its waiters at once (their hellos are refused, the
/// agents come back); its events without a waiter (channels' ends) are tried again, first,
/// after a back-off, so the log keeps each instance's comings and goings in order.
async fn write<S, F>(store: S, mut rx: mpsc::UnboundedReceiver<Msg>)
where
    S: Fn(Vec<Event>, Vec<String>) -> F,
    F: Future<Output = Written>,
{
    let mut pending: VecDeque<Entry> = VecDeque::new();
    let mut flushes = Vec::new();
    let mut backoff: Option<Duration> = None;
    loop {
        let mut take = |m| match m {
            Msg::Event(e) => pending.push_back(e),
            Msg::Flush(f) => flushes.push(f),
        };
        match backoff {
            None => match rx.recv().await {
                Some(m) => take(m),
                None => return,
            },
            Some(d) => tokio::time::sleep(d).await,
        }
        while let Ok(m) = rx.try_recv() {
            take(m);
        }
        while !pending.is_empty() {
            let n = pending.len().min(MAX_BATCH);
            let batch: Vec<Entry> = pending.drain(..n).collect();
            let events = batch
                .iter()
                .map(|e| Event(e.account_id, e.kind, e.instance_id.clone(), e.data.clone()))
                .collect();
            let asking = batch
                .iter()
                .filter(|e| e.done.is_some())
                .map(|e| e.instance_id.clone())
                .collect();
            match store(events, asking).await {
                Ok(queued) => {
                    backoff = None;
                    for e in batch {
                        if let Some(done) = e.done {
                            let _ = done.send(Some(queued.contains(&e.instance_id)));
                        }
                    }
                }
                Err(why) => {
                    let wait = backoff.map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX));
                    tracing::warn!(events = batch.len(), error = %why, retry_in_ms = wait.as_millis() as u64, "agent events not recorded");
                    backoff = Some(wait);
                    // waiters are told now; the rest goes back, in front, in order
                    let kept: Vec<Entry> = batch
                        .into_iter()
                        .filter_map(|mut e| match e.done.take() {
                            Some(done) => {
                                let _ = done.send(None);
                                None
                            }
                            None => Some(e),
                        })
                        .collect();
                    for e in kept.into_iter().rev() {
                        pending.push_front(e);
                    }
                    if pending.len() > MAX_KEPT {
                        let dropped = pending.len() - MAX_KEPT;
                        pending.drain(..dropped);
                        tracing::error!(
                            dropped,
                            "agent events dropped: the database has been away too long"
                        );
                    }
                    break;
                }
            }
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

/// Writes `events` in one transaction (grouped by account, in order within each); then which of
/// `asking` have commands queued.
async fn write_batch(db: &Db, mut events: Vec<Event>, asking: Vec<String>) -> Written {
    // stable: each account's events keep their order
    events.sort_by_key(|e| e.0);
    db.transaction(async |tx| {
        for group in events.chunk_by(|a, b| a.0 == b.0) {
            let rows: Vec<(&str, Option<&str>, Value)> = group
                .iter()
                .map(|e| (e.1, Some(e.2.as_str()), e.3.clone()))
                .collect();
            crate::events::append_many(tx, group[0].0, &rows).await?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?;
    if asking.is_empty() {
        return Ok(Vec::new());
    }
    Ok(commands::queued_for(db, &asking).await.unwrap_or_else(|e| {
        // the sweep wakes the channels with commands waiting (agents.sweep_interval_ms)
        tracing::warn!(error = %e, "queued commands not looked up");
        Vec::new()
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn event(tx: &mpsc::UnboundedSender<Msg>, n: i64, done: Option<oneshot::Sender<Option<bool>>>) {
        let e = Entry {
            account_id: 1,
            instance_id: format!("i-{n}"),
            kind: "instance.agent_lost",
            data: Value::from(n),
            done,
        };
        tx.send(Msg::Event(e)).unwrap();
    }

    /// The database fails twice: the waiter of the failed batch is told at once, the events
    /// without a waiter are written once it is back, before those that came after, in order.
    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_fails_its_waiters_and_retries_the_rest_in_order() {
        let calls = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(Mutex::new(Vec::new()));
        let (c, w) = (calls.clone(), written.clone());
        let store = move |events: Vec<Event>, asking: Vec<String>| {
            let (c, w) = (c.clone(), w.clone());
            async move {
                if c.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err("the database is away".to_owned());
                }
                w.lock().unwrap().extend(events.iter().map(|e| e.3.clone()));
                Ok(asking)
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write(store, rx));
        let (done, hello) = oneshot::channel();
        event(&tx, 1, None);
        event(&tx, 2, Some(done));
        event(&tx, 3, None);
        assert_eq!(hello.await.unwrap(), None, "the waiter is failed at once");
        event(&tx, 4, None);
        let (done, flushed) = oneshot::channel();
        tx.send(Msg::Flush(done)).unwrap();
        flushed.await.unwrap();
        // the flush answered after a failed round: wait for the writes
        while written.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(*written.lock().unwrap(), [1, 3, 4].map(Value::from));
        // a waiter once the database is back is told it was written
        let (done, hello) = oneshot::channel();
        event(&tx, 5, Some(done));
        assert_eq!(hello.await.unwrap(), Some(true));
        assert!(calls.load(Ordering::SeqCst) >= 3);
        drop(tx);
        writer.await.unwrap();
    }
}
