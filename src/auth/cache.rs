//! The in-process layer of the key cache: public id → key record (or "no such key"), with the
//! time it was fetched and last used. Readers take no lock (papaya). Bounded at
//! `auth.cache_max_entries`: a full table drops its expired entries (at most once a second, not
//! on every insert), then evicts the least recently used of a few sampled entries (approximate
//! LRU, as Redis does), so keys in use stay while a flood of unknown ids churns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::accounts::store::KeyRecord;

#[derive(Clone)]
struct Entry {
    /// `None`: no key has this id (a negative entry).
    record: Option<Arc<KeyRecord>>,
    fetched_ms: u64,
    /// Last read (ms since the cache's epoch), for eviction.
    used_ms: Arc<AtomicU64>,
}

/// Entries compared to pick one to evict.
const EVICTION_SAMPLE: usize = 8;

/// What the cache knows about an id.
pub enum Cached {
    /// Fresh: answer from it.
    Fresh(Option<Arc<KeyRecord>>),
    /// Past its TTL but within `stale_ms`: usable only when the database cannot be asked.
    Stale(Arc<KeyRecord>),
    Miss,
}

pub struct KeyCache {
    map: papaya::HashMap<Box<str>, Entry, foldhash::fast::RandomState>,
    ttl_ms: u64,
    negative_ttl_ms: u64,
    stale_ms: u64,
    max: usize,
    clock: quanta::Clock,
    epoch: u64,
    /// When the last sweep of expired entries ran (ms since `epoch`).
    swept_ms: AtomicU64,
}

impl KeyCache {
    pub fn new(ttl_ms: u64, negative_ttl_ms: u64, stale_ms: u64, max: usize) -> KeyCache {
        let clock = quanta::Clock::new();
        KeyCache {
            map: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            ttl_ms,
            negative_ttl_ms,
            stale_ms: stale_ms.max(ttl_ms),
            max,
            epoch: clock.raw(),
            clock,
            swept_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.delta_as_nanos(self.epoch, self.clock.raw()) / 1_000_000
    }

    pub fn get(&self, id: &str) -> Cached {
        let now = self.now_ms();
        let map = self.map.pin();
        let Some(e) = map.get(id) else {
            return Cached::Miss;
        };
        let age = now.saturating_sub(e.fetched_ms);
        e.used_ms.store(now, Ordering::Relaxed);
        match &e.record {
            Some(r) if age < self.ttl_ms => Cached::Fresh(Some(r.clone())),
            None if age < self.negative_ttl_ms => Cached::Fresh(None),
            Some(r) if age < self.stale_ms => Cached::Stale(r.clone()),
            _ => Cached::Miss,
        }
    }

    pub fn put(&self, id: &str, record: Option<Arc<KeyRecord>>) {
        let map = self.map.pin();
        let now = self.now_ms();
        if map.len() >= self.max && !map.contains_key(id) {
            let last = self.swept_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1_000
                && self
                    .swept_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.sweep();
            }
            while map.len() >= self.max {
                // the least recently used of a few entries, from a varying place in the table
                let room = map.len().saturating_sub(EVICTION_SAMPLE).clamp(1, 256);
                let skip = (self.clock.raw() as usize) % room;
                // on a tie, an unknown id goes before a key
                let victim = map
                    .iter()
                    .skip(skip)
                    .take(EVICTION_SAMPLE)
                    .min_by_key(|(_, e)| (e.used_ms.load(Ordering::Relaxed), e.record.is_some()))
                    .map(|(k, _)| k.clone());
                match victim {
                    Some(k) => {
                        map.remove(&k);
                    }
                    None => break,
                }
            }
        }
        map.insert(
            id.into(),
            Entry {
                record,
                fetched_ms: now,
                used_ms: Arc::new(AtomicU64::new(now)),
            },
        );
    }

    pub fn remove(&self, id: &str) {
        self.map.pin().remove(id);
    }

    /// Drops every entry (after missing revocation messages while Redis was unreachable).
    pub fn clear(&self) {
        self.map.pin().clear();
    }

    /// Drops entries too old to be used even as stale ones; returns how many remain.
    pub fn sweep(&self) -> usize {
        let now = self.now_ms();
        let map = self.map.pin();
        map.retain(|_, e| {
            let limit = if e.record.is_some() {
                self.stale_ms
            } else {
                self.negative_ttl_ms
            };
            now.saturating_sub(e.fetched_ms) < limit
        });
        map.len()
    }

    pub fn len(&self) -> usize {
        self.map.pin().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> Arc<KeyRecord> {
        Arc::new(KeyRecord::sample(id))
    }

    #[test]
    fn fresh_stale_and_expired() {
        let c = KeyCache::new(0, 0, 60_000, 10);
        c.put("a", Some(rec("a")));
        // ttl 0: immediately stale, still usable as stale
        assert!(matches!(c.get("a"), Cached::Stale(_)));
        c.put("n", None);
        assert!(matches!(c.get("n"), Cached::Miss));
        let c = KeyCache::new(60_000, 60_000, 60_000, 10);
        c.put("a", Some(rec("a")));
        c.put("n", None);
        assert!(matches!(c.get("a"), Cached::Fresh(Some(_))));
        assert!(matches!(c.get("n"), Cached::Fresh(None)));
        c.remove("a");
        assert!(matches!(c.get("a"), Cached::Miss));
    }

    #[test]
    fn size_is_bounded_and_keys_in_use_stay() {
        let c = KeyCache::new(60_000, 60_000, 60_000, 100);
        c.put("hot", Some(rec("hot")));
        for i in 0..300 {
            c.put(&format!("k{i}"), Some(rec("x")));
            // a key in use is read all the time
            std::thread::sleep(std::time::Duration::from_micros(1_100));
            assert!(
                matches!(c.get("hot"), Cached::Fresh(Some(_))),
                "evicted at {i}"
            );
        }
        assert_eq!(c.len(), 100);
        // entries that expire make room again
        let c = KeyCache::new(0, 0, 0, 100);
        for i in 0..1000 {
            c.put(&format!("k{i}"), None);
        }
        assert!(c.len() <= 100);
        assert!(matches!(c.get("k999"), Cached::Miss));
    }
}
