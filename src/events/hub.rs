//! The fan-out from the event log to the open streams of this daemon.
//!
//! - One feed per account with streams here: the last `seq` delivered to them, and the streams
//!   (each a bounded queue of `events.max_queue`).
//! - A committed transaction that wrote events tells the hub of its accounts (`Db`'s hook): the
//!   hub reads the new rows at once and publishes the account ids on one Redis channel, which
//!   every daemon's hub subscribes to (one subscription per daemon, not per stream).
//! - The log is also read every `events.poll_fallback_ms` for every feed, so an event whose
//!   notice was lost (Redis down, a reconnect) arrives at most that late, and none is lost.
//! - Delivery never waits: a stream whose queue is full (`events.max_queue` events or
//!   `events.max_queue_bytes` bytes) is dropped from its feed and told it was too slow
//!   (`slow_consumer`); the client resumes from the log with `Last-Event-ID`.
//! - A stream whose carrier has not taken an event for `events.max_lag_ms` while events wait
//!   for it is cut: its connection's writes are blocked (a client that stopped reading, behind
//!   the buffers of a proxy, or an HTTP/2 stream whose window the client never opens), so its
//!   carrier is not polled and cannot end it. The hub calls the connection's [`Cut`] (set by
//!   the server when the stream starts), which closes the connection.
//! - One account's events commit in `seq` order (`accounts::event_log`), so a feed that has
//!   delivered `seq` N has delivered everything before it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use metrics::counter;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Event, latest, read_many};
use crate::accounts::Db;
use crate::cache::Redis;
use crate::config::EventsConfig;
use crate::error::{Error, Kind, Refusal, Result, Side};
use crate::metrics::{EVENT_STREAMS_CLOSED_TOTAL, EVENT_STREAMS_CUT_TOTAL};

/// A burst larger than `events.max_queue` goes out in parts this far apart.
const BURST_PAUSE: Duration = Duration::from_millis(20);

pub struct Hub {
    db: Arc<Db>,
    redis: Option<Redis>,
    cfg: EventsConfig,
    feeds: Mutex<HashMap<i64, Feed>>,
    /// Accounts told of new events since the last read.
    poked: Mutex<HashSet<i64>>,
    wake: Notify,
    /// Told whenever the hub hears of new events (committed here or noticed through Redis):
    /// the webhook sender waits on it.
    activity: Arc<Notify>,
    next_id: AtomicU64,
    /// Cancelled when the daemon drains: every stream ends with its reconnect hint.
    draining: CancellationToken,
    /// The clock of [`Backlog::since_ms`].
    epoch: Instant,
}

struct Feed {
    last: i64,
    streams: Vec<Sub>,
}

struct Sub {
    id: u64,
    /// The public id of the key that opened it (with the key or through a token of it).
    key: String,
    /// `None` once it fell behind: its queue closes, and the feed ends after what is in it.
    tx: Option<mpsc::Sender<Queued>>,
    backlog: Arc<Backlog>,
    access: Arc<Access>,
}

/// A live event in a stream's queue, with the size it is counted at (its JSON).
pub struct Queued {
    event: Arc<Event>,
    bytes: u64,
}

/// What closes the connection a stream runs on (see the module's notes on stalls).
pub type Cut = Box<dyn Fn() + Send + Sync>;

/// How far a stream's carrier is behind, shared by the hub (which fills its queue) and the
/// stream (which empties it).
#[derive(Default)]
pub struct Backlog {
    /// Bytes of the events in the queue.
    bytes: AtomicU64,
    /// When (ms on the hub's clock) the stream last asked its queue for an event, or the queue
    /// last started filling: while events wait, they have waited at most since then.
    since_ms: AtomicU64,
    /// Set when the hub dropped the stream for falling behind.
    slow: AtomicBool,
    /// Set by the connection the stream runs on, once it does.
    cut: OnceLock<Cut>,
    /// The cut was made.
    cut_done: AtomicBool,
}

/// Where the server sets a stream's [`Cut`] (carried in the stream's answer's extensions).
#[derive(Clone)]
pub struct CutSlot(Arc<Backlog>);

impl CutSlot {
    pub fn set(&self, cut: Cut) {
        let _ = self.0.cut.set(cut);
    }
}

/// Set when the access a stream was opened with has ended (its key revoked or expired, its
/// account suspended): the stream ends with the reason.
#[derive(Default)]
pub struct Access {
    pub ended: CancellationToken,
    reason: std::sync::OnceLock<&'static str>,
}

impl Access {
    pub fn end(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.ended.cancel();
    }

    pub fn reason(&self) -> &'static str {
        self.reason.get().copied().unwrap_or("access_ended")
    }
}

/// A stream's registration: live events after `from` arrive through [`Subscription::poll_recv`];
/// dropping it leaves the feed.
pub struct Subscription {
    rx: mpsc::Receiver<Queued>,
    /// The feed's last delivered `seq` when the stream joined: the log up to here is the
    /// stream's to read, everything after is received live.
    pub from: i64,
    backlog: Arc<Backlog>,
    pub draining: CancellationToken,
    /// Ended when the caller's access ends.
    pub access: Arc<Access>,
    hub: Arc<Hub>,
    account_id: i64,
    id: u64,
}

impl Subscription {
    /// The next live event; `None` when the queue is closed (see [`Subscription::fell_behind`]).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Event>>> {
        self.backlog
            .since_ms
            .store(self.hub.now_ms(), Ordering::Relaxed);
        self.rx.poll_recv(cx).map(|q| {
            q.map(|q| {
                self.backlog.bytes.fetch_sub(q.bytes, Ordering::Relaxed);
                q.event
            })
        })
    }

    /// The hub dropped the stream for falling behind (`slow_consumer`).
    pub fn fell_behind(&self) -> bool {
        self.backlog.slow.load(Ordering::Acquire)
    }

    /// Where the connection that carries the stream leaves its [`Cut`].
    pub fn cut_slot(&self) -> CutSlot {
        CutSlot(self.backlog.clone())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut feeds = self.hub.feeds.lock().unwrap();
        if let Some(f) = feeds.get_mut(&self.account_id) {
            f.streams.retain(|s| s.id != self.id);
            if f.streams.is_empty() {
                feeds.remove(&self.account_id);
            }
        }
    }
}

impl Hub {
    pub fn new(db: Arc<Db>, redis: Option<Redis>, cfg: &EventsConfig) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            db: db.clone(),
            redis,
            cfg: cfg.clone(),
            feeds: Mutex::new(HashMap::new()),
            poked: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            activity: Arc::new(Notify::new()),
            next_id: AtomicU64::new(1),
            draining: CancellationToken::new(),
            epoch: Instant::now(),
        });
        let weak = Arc::downgrade(&hub);
        db.on_events_committed(move |accounts| {
            if let Some(hub) = weak.upgrade() {
                hub.committed(accounts);
            }
        });
        hub
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn channel(redis: &Redis) -> String {
        redis.key("events")
    }

    /// Events were committed for `accounts` here: read them now, and tell the other daemons.
    fn committed(&self, accounts: &[i64]) {
        self.poke(accounts.iter().copied());
        if let Some(redis) = self.redis.clone() {
            let ids = accounts
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            tokio::spawn(async move {
                // lost when Redis is down: the other daemons' polls cover it
                let _ = redis.publish(&Hub::channel(&redis), ids).await;
            });
        }
    }

    fn poke(&self, accounts: impl Iterator<Item = i64>) {
        self.poked.lock().unwrap().extend(accounts);
        self.wake.notify_one();
        self.activity.notify_one();
    }

    /// What the webhook sender waits on (see the field).
    pub fn activity(&self) -> Arc<Notify> {
        self.activity.clone()
    }

    /// Streams open now (for `/stats` and the gauge).
    pub fn streams(&self) -> usize {
        self.feeds
            .lock()
            .unwrap()
            .values()
            .map(|f| f.streams.len())
            .sum()
    }

    /// Cancelled when the daemon drains: what else holds long-lived channels (agents) ends them
    /// then too.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Every stream ends (SSE: `retry:` and a `draining` close), so clients reconnect elsewhere.
    pub fn drain(&self) {
        self.draining.cancel();
    }

    /// The keys (public ids) that opened the streams here.
    pub fn keys(&self) -> HashSet<String> {
        let feeds = self.feeds.lock().unwrap();
        feeds
            .values()
            .flat_map(|f| f.streams.iter().map(|s| s.key.clone()))
            .collect()
    }

    /// Ends every stream here opened with key `key` (or a token of it), for `reason`; how many.
    pub fn end_streams_of(&self, key: &str, reason: &'static str) -> usize {
        let feeds = self.feeds.lock().unwrap();
        let mut n = 0;
        for s in feeds.values().flat_map(|f| &f.streams) {
            if s.key == key {
                s.access.end(reason);
                n += 1;
            }
        }
        n
    }

    /// Registers a stream of `account_id`, opened with the key whose public id is `key`: 429
    /// `stream_limit` past `events.max_streams_per_account`.
    pub async fn subscribe(self: &Arc<Self>, account_id: i64, key: &str) -> Result<Subscription> {
        // a new feed starts at the account's latest event (read without the lock held; again
        // if the feed went away meanwhile)
        let mut latest_seq = None;
        loop {
            {
                let mut feeds = self.feeds.lock().unwrap();
                if feeds.contains_key(&account_id) || latest_seq.is_some() {
                    return self.join(&mut feeds, account_id, key, latest_seq.unwrap_or(0));
                }
            }
            latest_seq = Some(latest(&self.db, account_id).await?);
        }
    }

    fn join(
        self: &Arc<Self>,
        feeds: &mut HashMap<i64, Feed>,
        account_id: i64,
        key: &str,
        latest_seq: i64,
    ) -> Result<Subscription> {
        let cap = self.cfg.max_streams_per_account.get() as usize;
        let feed = feeds.entry(account_id).or_insert(Feed {
            last: latest_seq,
            streams: Vec::new(),
        });
        if feed.streams.len() >= cap {
            if feed.streams.is_empty() {
                feeds.remove(&account_id);
            }
            return Err(Error::new(
                Kind::Refused(Refusal::StreamLimit),
                Side::Client,
                format!(
                    "{cap} event streams are open for this account \
                     (events.max_streams_per_account)"
                ),
            ));
        }
        let (tx, rx) = mpsc::channel(self.cfg.max_queue.get() as usize);
        let backlog = Arc::new(Backlog::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let access = Arc::new(Access::default());
        feed.streams.push(Sub {
            id,
            key: key.to_owned(),
            tx: Some(tx),
            backlog: backlog.clone(),
            access: access.clone(),
        });
        Ok(Subscription {
            rx,
            from: feed.last,
            backlog,
            draining: self.draining.clone(),
            access,
            hub: self.clone(),
            account_id,
            id,
        })
    }

    /// The hub's work for the life of the daemon: the Redis subscription, and the reads of the
    /// log (on notice, and every `events.poll_fallback_ms`).
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(redis) = &self.redis {
            let (a, b) = (Arc::downgrade(self), Arc::downgrade(self));
            let on_message = move |msg: &str| {
                if let Some(hub) = a.upgrade() {
                    hub.poke(msg.split(',').filter_map(|s| s.parse().ok()));
                }
            };
            // notices sent while disconnected are lost: read every feed
            let on_resubscribe = move || {
                if let Some(hub) = b.upgrade() {
                    let all: Vec<i64> = hub.feeds.lock().unwrap().keys().copied().collect();
                    hub.poke(all.into_iter());
                }
            };
            match redis.subscribe(Hub::channel(redis), on_message, on_resubscribe) {
                Ok(t) => tasks.push(t),
                Err(e) => tracing::error!(error = %e, "cannot subscribe to event notices"),
            }
        }
        let hub = self.clone();
        tasks.push(tokio::spawn(async move { hub.run().await }));
        tasks
    }

    async fn run(self: Arc<Self>) {
        let every = Duration::from_millis(self.cfg.poll_fallback_ms.ms());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let all = tokio::select! {
                _ = self.wake.notified() => false,
                _ = tick.tick() => true,
            };
            self.cut_stalled();
            let poked: HashSet<i64> = std::mem::take(&mut *self.poked.lock().unwrap());
            let after: Vec<(i64, i64)> = {
                let feeds = self.feeds.lock().unwrap();
                feeds
                    .iter()
                    .filter(|(a, _)| all || poked.contains(a))
                    .map(|(a, f)| (*a, f.last))
                    .collect()
            };
            if after.is_empty() {
                continue;
            }
            let per_account = i64::from(self.cfg.max_queue.get());
            match read_many(&self.db, &after, per_account).await {
                Ok(events) => {
                    let behind = self.deliver(events);
                    if !behind.is_empty() {
                        // a burst: the rest once the streams have had a moment to take this part
                        let hub = Arc::downgrade(&self);
                        tokio::spawn(async move {
                            tokio::time::sleep(BURST_PAUSE).await;
                            if let Some(hub) = hub.upgrade() {
                                hub.poke(behind.into_iter());
                            }
                        });
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "event log read failed; the next poll retries");
                }
            }
        }
    }

    /// Hands each event to its account's streams, in order; a stream whose queue is full is
    /// dropped and marked slow. The reads bring at most `events.max_queue` events per account
    /// (a stream that reads could not take more at once); returns the accounts that may have
    /// more to come.
    fn deliver(&self, events: Vec<Event>) -> HashSet<i64> {
        let max = self.cfg.max_queue.get() as usize;
        let max_bytes = self.cfg.max_queue_bytes.get();
        let mut read: HashMap<i64, usize> = HashMap::new();
        // each event's size once, before the lock
        let events: Vec<(Arc<Event>, u64)> = events
            .into_iter()
            .map(|e| {
                let bytes = e.to_json().to_string().len() as u64;
                (Arc::new(e), bytes)
            })
            .collect();
        let now = self.now_ms();
        let mut feeds = self.feeds.lock().unwrap();
        for (e, bytes) in events {
            *read.entry(e.account_id).or_default() += 1;
            let Some(feed) = feeds.get_mut(&e.account_id) else {
                continue;
            };
            // read twice (a notice and a poll): delivered once
            if e.seq <= feed.last {
                continue;
            }
            feed.last = e.seq;
            for s in &mut feed.streams {
                let Some(tx) = &s.tx else { continue };
                let queued = s.backlog.bytes.load(Ordering::Relaxed);
                if queued > 0 && queued + bytes > max_bytes {
                    fall_behind(s);
                    continue;
                }
                let was_empty = tx.capacity() == tx.max_capacity();
                let q = Queued {
                    event: e.clone(),
                    bytes,
                };
                match tx.try_send(q) {
                    Ok(()) => {
                        s.backlog.bytes.fetch_add(bytes, Ordering::Relaxed);
                        if was_empty {
                            s.backlog.since_ms.store(now, Ordering::Relaxed);
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => fall_behind(s),
                    // its subscription is going: it leaves the feed when dropped
                    Err(mpsc::error::TrySendError::Closed(_)) => s.tx = None,
                }
            }
        }
        read.into_iter()
            .filter(|(_, n)| *n >= max)
            .map(|(a, _)| a)
            .collect()
    }

    /// Cuts the streams whose carrier has not taken an event for `events.max_lag_ms` while
    /// events (or the end of a stream that fell behind) wait for it: their connections' writes
    /// are blocked, so the carrier is not polled and cannot end the stream itself.
    fn cut_stalled(&self) {
        let max_lag = self.cfg.max_lag_ms.ms();
        let now = self.now_ms();
        let mut feeds = self.feeds.lock().unwrap();
        for s in feeds.values_mut().flat_map(|f| &mut f.streams) {
            let b = &s.backlog;
            let waiting = match &s.tx {
                Some(tx) => tx.capacity() < tx.max_capacity(),
                None => b.slow.load(Ordering::Relaxed),
            };
            if !waiting
                || now.saturating_sub(b.since_ms.load(Ordering::Relaxed)) <= max_lag
                || b.cut_done.swap(true, Ordering::Relaxed)
            {
                continue;
            }
            if s.tx.is_some() {
                fall_behind(s);
            }
            if let Some(cut) = s.backlog.cut.get() {
                counter!(EVENT_STREAMS_CUT_TOTAL).increment(1);
                cut();
            }
        }
    }
}

/// `s` is dropped from its feed for falling behind: its queue closes (the stream ends
/// `slow_consumer` after what is in it) and it is watched until it ends (see
/// [`Hub::cut_stalled`]).
fn fall_behind(s: &mut Sub) {
    s.tx = None;
    s.backlog.slow.store(true, Ordering::Release);
    // counted here: its carrier may not be polled again until the client reads (or the cut)
    counter!(EVENT_STREAMS_CLOSED_TOTAL, "reason" => "slow_consumer").increment(1);
}
