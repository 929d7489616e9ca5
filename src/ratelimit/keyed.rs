//! A keyed table of GCRA cells with bounded memory.
//!
//! Lookups of an existing key take no lock and allocate nothing (papaya's lock-free map; one
//! atomic CAS per check). New keys are inserted until the table holds `max_keys`; after that a new
//! key is checked against a fixed array of `overflow_cells` cells chosen by its hash, so keys that
//! collide there share one budget. That degrades towards *stricter* limiting under address
//! spraying, never towards letting everything through, and the memory stays bounded:
//! `max_keys` entries plus the fixed array. [`KeyedLimiter::sweep`] forgets keys whose state is
//! back at a full burst, which is what keeps the table small in normal operation.
//!
//! A key swept at the same moment it is checked may lose that one update (one extra admission at
//! most); the bound above is unaffected.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use super::gcra::{Decision, Gcra, Quota};

pub struct KeyedLimiter<K> {
    gcra: Gcra,
    /// foldhash: keys are addresses and ids, not attacker-chosen strings of any length, and its
    /// per-process random seed keeps collisions unpredictable.
    map: papaya::HashMap<K, AtomicU64, foldhash::fast::RandomState>,
    max_keys: usize,
    overflow: Box<[AtomicU64]>,
    hasher: foldhash::fast::RandomState,
    /// quanta reads the TSC (calibrated once): about a third of `Instant::now()`'s cost, which
    /// was half of a whole check.
    clock: quanta::Clock,
    epoch: u64,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> KeyedLimiter<K> {
    pub fn new(quota: Quota, max_keys: usize, overflow_cells: usize) -> Self {
        Self::with_clock(quota, max_keys, overflow_cells, quanta::Clock::new())
    }

    /// With a given clock (tests pass quanta's mock and move time themselves).
    pub fn with_clock(
        quota: Quota,
        max_keys: usize,
        overflow_cells: usize,
        clock: quanta::Clock,
    ) -> Self {
        KeyedLimiter {
            gcra: Gcra::new(quota),
            // Blocking resizes: with incremental ones a resize finishes only as later inserts
            // help copy, and until then every lookup probes two tables (measured 10x slower
            // over 100k keys once inserts stop).
            map: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            max_keys,
            overflow: (0..overflow_cells.max(1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            epoch: clock.raw(),
            clock,
        }
    }

    pub fn quota(&self) -> Quota {
        self.gcra.quota
    }

    fn now(&self) -> u64 {
        self.clock.delta_as_nanos(self.epoch, self.clock.raw()) + 1
    }

    pub fn check(&self, key: &K) -> Decision {
        self.check_with(key, &self.gcra)
    }

    /// Checks against another quota than the table's (a per-key or per-account override).
    /// Freshness does not depend on the quota, so sweeping stays correct.
    pub fn check_with(&self, key: &K, gcra: &Gcra) -> Decision {
        let now = self.now();
        let map = self.map.pin();
        if let Some(cell) = map.get(key) {
            return gcra.check(cell, now);
        }
        if map.len() >= self.max_keys {
            let i = (self.hasher.hash_one(key) as usize) % self.overflow.len();
            return gcra.check(&self.overflow[i], now);
        }
        let cell = map.get_or_insert_with(key.clone(), || AtomicU64::new(0));
        gcra.check(cell, now)
    }

    /// Forgets keys that are back at a full burst; returns how many keys remain.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        let map = self.map.pin();
        map.retain(|_, v| !self.gcra.is_fresh(v.load(Ordering::Relaxed), now));
        map.len()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn keys_are_independent_and_swept_when_fresh() {
        let (clock, time) = quanta::Clock::mock();
        let l = KeyedLimiter::with_clock(
            Quota {
                per_period: 10,
                period: Duration::from_millis(100),
                burst: 2,
            },
            1000,
            16,
            clock,
        );
        assert!(matches!(l.check(&1u32), Decision::Allowed { .. }));
        assert!(matches!(l.check(&1u32), Decision::Allowed { .. }));
        assert!(matches!(l.check(&1u32), Decision::Limited { .. }));
        assert!(matches!(l.check(&2u32), Decision::Allowed { .. }));
        assert_eq!(l.len(), 2);
        time.increment(Duration::from_millis(10));
        assert_eq!(
            l.sweep(),
            1,
            "key 1 is not back at a full burst after one interval"
        );
        time.increment(Duration::from_millis(10));
        assert_eq!(l.sweep(), 0, "both back at a full burst after 2 intervals");
    }

    /// Three daemons, each enforcing a third of a 600/min, burst-30 limit, one client sending
    /// to them in turn as fast as it likes for 6 s of (mock) time: the client gets the global
    /// limit (30 + 10/s), plus at most n - 1 = 2 of burst rounding, never more.
    #[test]
    fn three_shares_add_up_to_the_global_limit() {
        let (clock, time) = quanta::Clock::mock();
        let share = Quota::per_minute(600, 30).shared(3);
        let daemons: Vec<KeyedLimiter<u32>> = (0..3)
            .map(|_| KeyedLimiter::with_clock(share, 100, 16, clock.clone()))
            .collect();
        let mut admitted = 0u64;
        for step in 0..60_000u64 {
            // a request every 0.1 ms of mock time, round-robin over the daemons
            let d = &daemons[(step % 3) as usize];
            if matches!(d.check(&1), Decision::Allowed { .. }) {
                admitted += 1;
            }
            time.increment(Duration::from_micros(100));
        }
        let expected = 30 + 10 * 6;
        // at most n - 1 over; at most one refill per daemon short (the one due at exactly 6 s)
        assert!(
            (expected - 3..=expected + 2).contains(&admitted),
            "admitted {admitted}, global limit {expected}"
        );
    }

    #[test]
    fn a_million_distinct_keys_stay_within_the_bound() {
        let max_keys = 50_000;
        let l = KeyedLimiter::new(Quota::per_minute(1000, 10), max_keys, 4096);
        let start = Instant::now();
        let mut admitted = 0u64;
        for ip in 0u32..1_000_000 {
            if matches!(l.check(&ip), Decision::Allowed { .. }) {
                admitted += 1;
            }
        }
        let minutes = start.elapsed().as_secs_f64() / 60.0;
        assert!(l.len() <= max_keys, "{} keys", l.len());
        // keys past the bound share 4096 budgets: the spray is limited, not waved through
        let overflow_bound = 4096.0 * (10.0 + 1000.0 * minutes + 1.0);
        let beyond = admitted - max_keys as u64;
        assert!(
            (beyond as f64) <= overflow_bound,
            "admitted {beyond} past the tracked keys; bound {overflow_bound}"
        );
        assert!(admitted < 1_000_000);
    }
}
