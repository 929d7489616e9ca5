//! A two-layer cache for provider answers: in process (papaya, bounded) in front of Redis, with
//! single-flight fetches, stale-while-revalidate and stale-if-error.
//!
//! For an entry `age` old:
//! - `age < ttl`: fresh, served.
//! - `ttl ≤ age < ttl + stale_while_revalidate`: served marked stale, and one background refresh
//!   starts (if none runs).
//! - older, up to `stale_if_error`: a refresh runs and is waited for; if it fails, the old entry is
//!   served marked stale instead of an error.
//! - older still: gone; a miss.
//!
//! Single-flight: however many requests miss one key at once, one fetch runs (in its own task,
//! so a client that hangs up does not cancel it for the others) and all of them get its result.
//! Redis is read on an in-process miss and written after a fetch, each best effort with the
//! Redis client's short timeouts: with Redis down this is an in-process cache and nothing fails.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, counter};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::Redis;
use crate::metrics::{CACHE_HITS_TOTAL, CACHE_MISSES_TOTAL};
use crate::providers::UpstreamError;

/// Creates the cache series at 0, so hit ratios exist before the first lookup.
pub fn init_series() {
    for l in ["memory", "redis", "stale"] {
        metrics::counter!(CACHE_HITS_TOTAL, "layer" => l).absolute(0);
    }
    metrics::counter!(CACHE_MISSES_TOTAL).absolute(0);
}

/// A cached value and when it was fetched (wall clock, so ages carry across daemons via Redis).
#[derive(Debug)]
pub struct Entry<V> {
    pub value: V,
    pub fetched_at_ms: u64,
    /// Unique per entry made in this process, so work derived from an entry (a rendered page)
    /// can tell whether it is still the entry in use.
    pub id: u64,
}

static ENTRY_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<V> Entry<V> {
    pub fn new(value: V, fetched_at_ms: u64) -> Entry<V> {
        Entry {
            value,
            fetched_at_ms,
            id: ENTRY_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// How old the entry is at `now_ms` (a [`WallClock`] reading).
    pub fn age_at(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.fetched_at_ms))
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Redis,
    /// Fetched for this request (or by the fetch it joined).
    Upstream,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Redis => "redis",
            Source::Upstream => "upstream",
        }
    }
}

pub struct Lookup<V> {
    pub entry: Arc<Entry<V>>,
    /// The entry's age when it was looked up.
    pub age: Duration,
    pub source: Source,
    /// Past its TTL; `error` says why no fresh answer was had, when a refresh failed.
    pub stale: bool,
    pub error: Option<UpstreamError>,
}

type Shared<V> = Option<Result<Arc<Entry<V>>, UpstreamError>>;

#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

/// Wall-clock milliseconds since the epoch (entries' ages travel between daemons through Redis),
/// read through quanta: cheap, and tests move time with its mock instead of sleeping.
#[derive(Clone)]
pub struct WallClock {
    clock: quanta::Clock,
    base_unix_ms: u64,
    base_raw: u64,
}

impl WallClock {
    pub fn system() -> WallClock {
        WallClock::with(quanta::Clock::new(), unix_ms())
    }

    /// `clock` read as starting at `base_unix_ms` now.
    pub fn with(clock: quanta::Clock, base_unix_ms: u64) -> WallClock {
        WallClock {
            base_raw: clock.raw(),
            clock,
            base_unix_ms,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.base_unix_ms + self.clock.delta_as_nanos(self.base_raw, self.clock.raw()) / 1_000_000
    }
}

pub struct SwrCache<V> {
    /// Keeps Redis keys of different caches apart.
    name: &'static str,
    clock: WallClock,
    l1: papaya::HashMap<String, Arc<Entry<V>>, foldhash::fast::RandomState>,
    inflight: Mutex<HashMap<String, watch::Receiver<Shared<V>>>>,
    redis: Option<Redis>,
    windows: Windows,
    max_entries: usize,
    hits_memory: Counter,
    hits_redis: Counter,
    hits_stale: Counter,
    misses: Counter,
    /// Told of every answer fetched upstream (not of those read from Redis: the daemon that
    /// fetched them was told); the offer watches evaluate there.
    on_fetched: std::sync::OnceLock<FetchHook<V>>,
}

type FetchHook<V> = Box<dyn Fn(Arc<Entry<V>>) + Send + Sync>;

#[derive(Serialize, serde::Deserialize)]
struct Stored<V> {
    at: u64,
    v: V,
}

impl<V> SwrCache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub fn new(
        name: &'static str,
        redis: Option<Redis>,
        windows: Windows,
        max_entries: usize,
    ) -> Arc<Self> {
        Self::with_clock(name, redis, windows, max_entries, WallClock::system())
    }

    pub fn with_clock(
        name: &'static str,
        redis: Option<Redis>,
        windows: Windows,
        max_entries: usize,
        clock: WallClock,
    ) -> Arc<Self> {
        Arc::new(SwrCache {
            name,
            clock,
            l1: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            inflight: Mutex::new(HashMap::new()),
            redis,
            windows,
            max_entries: max_entries.max(1),
            hits_memory: counter!(CACHE_HITS_TOTAL, "layer" => "memory"),
            hits_redis: counter!(CACHE_HITS_TOTAL, "layer" => "redis"),
            hits_stale: counter!(CACHE_HITS_TOTAL, "layer" => "stale"),
            misses: counter!(CACHE_MISSES_TOTAL),
            on_fetched: std::sync::OnceLock::new(),
        })
    }

    /// Sets the hook told of each answer fetched upstream; later calls are ignored.
    pub fn on_fetched(&self, f: impl Fn(Arc<Entry<V>>) + Send + Sync + 'static) {
        let _ = self.on_fetched.set(Box::new(f));
    }

    fn redis_key(&self, redis: &Redis, key: &str) -> String {
        redis.key(&format!("{}:{key}", self.name))
    }

    /// The value for `key`, from cache or from `fetch` (see the module header for the rules).
    pub async fn get<F, Fut>(
        self: &Arc<Self>,
        key: &str,
        fetch: F,
    ) -> Result<Lookup<V>, UpstreamError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, UpstreamError>> + Send + 'static,
    {
        let mut found = self.l1.pin().get(key).cloned().map(|e| (e, Source::Memory));
        if found.is_none() {
            // boxed: the Redis read is the miss path, and inline it made every lookup's
            // future (two per offers request) several KB, copied on each request
            found = Box::pin(self.read_redis(key))
                .await
                .map(|e| (e, Source::Redis));
        }
        let w = self.windows;
        let Some((entry, source)) = found else {
            let entry = self.fetch_shared(key, fetch).await?;
            return Ok(Lookup {
                entry,
                age: Duration::ZERO,
                source: Source::Upstream,
                stale: false,
                error: None,
            });
        };
        let age = entry.age_at(self.clock.now_ms());
        if age < w.ttl {
            match source {
                Source::Redis => self.hits_redis.increment(1),
                _ => self.hits_memory.increment(1),
            }
            return Ok(Lookup {
                entry,
                age,
                source,
                stale: false,
                error: None,
            });
        }
        if age < w.ttl + w.stale_while_revalidate {
            drop(self.start_fetch(key, fetch));
            self.hits_stale.increment(1);
            return Ok(Lookup {
                entry,
                age,
                source,
                stale: true,
                error: None,
            });
        }
        if age < w.stale_if_error {
            return Ok(match self.fetch_shared(key, fetch).await {
                Ok(fresh) => Lookup {
                    entry: fresh,
                    age: Duration::ZERO,
                    source: Source::Upstream,
                    stale: false,
                    error: None,
                },
                Err(e) => {
                    self.hits_stale.increment(1);
                    Lookup {
                        entry,
                        age,
                        source,
                        stale: true,
                        error: Some(e),
                    }
                }
            });
        }
        self.l1.pin().remove(key);
        let entry = self.fetch_shared(key, fetch).await?;
        Ok(Lookup {
            entry,
            age: Duration::ZERO,
            source: Source::Upstream,
            stale: false,
            error: None,
        })
    }

    async fn read_redis(&self, key: &str) -> Option<Arc<Entry<V>>> {
        let redis = self.redis.as_ref()?;
        let text = redis.get(&self.redis_key(redis, key)).await?;
        let stored: Stored<V> = serde_json::from_str(&text).ok()?;
        let entry = Arc::new(Entry::new(stored.v, stored.at));
        self.insert(key, entry.clone());
        Some(entry)
    }

    async fn fetch_shared<F, Fut>(
        self: &Arc<Self>,
        key: &str,
        fetch: F,
    ) -> Result<Arc<Entry<V>>, UpstreamError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, UpstreamError>> + Send + 'static,
    {
        let mut rx = self.start_fetch(key, fetch);
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().expect("waited for Some"),
            Err(_) => Err(UpstreamError::Reset(
                "the fetch task ended without an answer".into(),
            )),
        }
    }

    /// Joins the fetch running for `key`, or starts one in its own task.
    fn start_fetch<F, Fut>(self: &Arc<Self>, key: &str, fetch: F) -> watch::Receiver<Shared<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, UpstreamError>> + Send + 'static,
    {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = inflight.get(key) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(key.to_owned(), rx.clone());
        drop(inflight);
        self.misses.increment(1);
        let me = self.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            let at = me.clock.now_ms();
            let out = fetch().await.map(|v| Arc::new(Entry::new(v, at)));
            if let Ok(entry) = &out {
                me.insert(&key, entry.clone());
                if let Some(f) = me.on_fetched.get() {
                    f(entry.clone());
                }
            }
            // Redis first (bounded by its command timeout), so that once anyone has this answer
            // every other daemon can find it
            if let (Ok(entry), Some(redis)) = (&out, me.redis.as_ref())
                && let Ok(text) = serde_json::to_string(&Stored {
                    at: entry.fetched_at_ms,
                    v: &entry.value,
                })
            {
                redis
                    .set_ex(&me.redis_key(redis, &key), text, me.windows.stale_if_error)
                    .await;
            }
            me.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            let _ = tx.send(Some(out));
        });
        rx
    }

    /// Bounded: at `max_entries`, entries past `stale_if_error` go first, then any one.
    fn insert(&self, key: &str, entry: Arc<Entry<V>>) {
        let map = self.l1.pin();
        if map.len() >= self.max_entries && !map.contains_key(key) {
            let (limit, now) = (self.windows.stale_if_error, self.clock.now_ms());
            let old: Vec<String> = map
                .iter()
                .filter(|(_, e)| e.age_at(now) >= limit)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &old {
                map.remove(k);
            }
            if map.len() >= self.max_entries
                && let Some(k) = map.keys().next().cloned()
            {
                map.remove(&k);
            }
        }
        map.insert(key.to_owned(), entry);
    }

    /// The first `Some` that `f` finds among the in-process entries (no I/O).
    pub fn find<T>(&self, mut f: impl FnMut(&V) -> Option<T>) -> Option<T> {
        self.l1.pin().iter().find_map(|(_, e)| f(&e.value))
    }

    /// Rewrites cached values in place: for every in-process entry where `f` returns a new value,
    /// that value replaces it (keeping its age) here and in Redis. Entries other daemons fetched
    /// that this one never read stay in Redis until they expire.
    pub async fn edit(&self, f: impl Fn(&V) -> Option<V>) {
        let changed: Vec<(String, Arc<Entry<V>>)> = {
            let map = self.l1.pin();
            map.iter()
                .filter_map(|(k, e)| {
                    let v = f(&e.value)?;
                    Some((k.clone(), Arc::new(Entry::new(v, e.fetched_at_ms))))
                })
                .collect()
        };
        for (k, e) in changed {
            self.l1.pin().insert(k.clone(), e.clone());
            if let Some(redis) = &self.redis
                && let Ok(text) = serde_json::to_string(&Stored {
                    at: e.fetched_at_ms,
                    v: &e.value,
                })
            {
                let left = self
                    .windows
                    .stale_if_error
                    .saturating_sub(e.age_at(self.clock.now_ms()));
                if !left.is_zero() {
                    redis.set_ex(&self.redis_key(redis, &k), text, left).await;
                }
            }
        }
    }

    /// Drops one key here and in Redis (after a change the cached value no longer shows, on
    /// this daemon or any other that reads it from Redis).
    pub async fn forget(&self, key: &str) {
        self.l1.pin().remove(key);
        if let Some(redis) = &self.redis {
            let _ = redis.del(vec![self.redis_key(redis, key)]).await;
        }
    }

    /// Drops every in-process entry (tests, and an operator's flush).
    pub fn clear(&self) {
        self.l1.pin().clear();
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A cache whose time the test moves (`time.increment`).
    fn cache(ttl: u64, swr: u64, sie: u64) -> (Arc<SwrCache<u32>>, Arc<quanta::Mock>) {
        let (clock, time) = quanta::Clock::mock();
        let c = SwrCache::with_clock(
            "t",
            None,
            Windows {
                ttl: Duration::from_millis(ttl),
                stale_while_revalidate: Duration::from_millis(swr),
                stale_if_error: Duration::from_millis(sie),
            },
            16,
            WallClock::with(clock, 1_000_000),
        );
        (c, time)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_fetch_once() {
        let (c, _) = cache(60_000, 0, 60_000);
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (c, calls) = (c.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                c.get("k", move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(7)
                })
                .await
                .map(|l| l.entry.value)
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stale_while_revalidate_then_stale_if_error() {
        let (c, time) = cache(20, 100_000, 200_000);
        let first = c.get("k", || async { Ok(1) }).await.unwrap();
        assert_eq!(
            (first.entry.value, first.source, first.stale),
            (1, Source::Upstream, false)
        );
        let hit = c.get("k", || async { Ok(99) }).await.unwrap();
        assert_eq!(
            (hit.entry.value, hit.source, hit.stale),
            (1, Source::Memory, false)
        );
        time.increment(Duration::from_millis(30));
        // stale: served at once, refresh in the background
        let stale = c.get("k", || async { Ok(2) }).await.unwrap();
        assert_eq!((stale.entry.value, stale.stale), (1, true));
        for _ in 0..100 {
            if c.l1.pin().get("k").is_some_and(|e| e.value == 2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let fresh = c.get("k", || async { Ok(3) }).await.unwrap();
        assert_eq!((fresh.entry.value, fresh.stale), (2, false));
    }

    #[tokio::test]
    async fn failing_fetch_serves_the_stale_entry_until_its_limit() {
        let (c, time) = cache(10, 0, 100_000);
        c.get("k", || async { Ok(1) }).await.unwrap();
        time.increment(Duration::from_millis(20));
        let l = c
            .get("k", || async { Err(UpstreamError::Timeout) })
            .await
            .unwrap();
        assert_eq!(
            (l.entry.value, l.stale, l.error),
            (1, true, Some(UpstreamError::Timeout))
        );
        let (none, time) = cache(10, 0, 15);
        none.get("k", || async { Ok(1) }).await.unwrap();
        time.increment(Duration::from_millis(15));
        let e = none
            .get("k", || async { Err(UpstreamError::Timeout) })
            .await;
        assert_eq!(e.err(), Some(UpstreamError::Timeout), "too old to serve");
    }

    #[tokio::test]
    async fn the_in_process_layer_is_bounded() {
        let (c, _) = cache(60_000, 0, 60_000);
        for i in 0..100u32 {
            c.get(&format!("k{i}"), move || async move { Ok(i) })
                .await
                .unwrap();
        }
        assert!(c.l1.pin().len() <= 16);
    }
}
