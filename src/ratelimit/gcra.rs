//! The generic cell rate algorithm over one `AtomicU64` per key.
//!
//! State is the theoretical arrival time (TAT) in nanoseconds since the limiter's epoch; 0 is a
//! fresh key. A request at `now` is admitted when `max(TAT, now) - now <= tau` (tau = burst
//! tolerance = T × (burst − 1), T = the interval between requests at the sustained rate), and then
//! TAT becomes `max(TAT, now) + T`. The update is a compare-and-swap loop: no lock, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use crate::types::limits::{Decision, Quota};

/// The parameters derived from a [`Quota`].
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    /// Nanoseconds between requests at the sustained rate.
    t: u64,
    /// Burst tolerance in nanoseconds.
    tau: u64,
    pub quota: Quota,
}

impl Gcra {
    pub fn new(q: Quota) -> Gcra {
        let per = q.per_period.max(1);
        let t = (q.period.as_nanos() as u64 / per).max(1);
        Gcra {
            t,
            tau: t.saturating_mul(q.burst.max(1) - 1),
            quota: q,
        }
    }

    /// Checks and, when allowed, records one request at `now` (ns since the epoch, > 0).
    pub fn check(&self, tat: &AtomicU64, now: u64) -> Decision {
        let mut cur = tat.load(Ordering::Acquire);
        loop {
            let base = cur.max(now);
            if base - now > self.tau {
                return Decision::Limited {
                    retry_after: Duration::from_nanos(base - now - self.tau),
                };
            }
            let new = base + self.t;
            match tat.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let headroom = (now + self.tau + self.t).saturating_sub(new);
                    return Decision::Allowed {
                        remaining: headroom / self.t,
                        reset: Duration::from_nanos(new - now),
                    };
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Whether a key with this TAT is back at its full burst (and can be forgotten).
    pub fn is_fresh(&self, tat: u64, now: u64) -> bool {
        tat <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_quota() {
        let q = Quota::per_minute(1000, 100);
        assert_eq!(q.shared(1), q);
        let s = q.shared(3);
        assert_eq!(
            (s.per_period, s.period, s.burst),
            (1000, Duration::from_secs(180), 34)
        );
        // three shares: exactly the rate, the burst plus at most n - 1
        let g = Gcra::new(s);
        assert_eq!(g.t * 1000, 180_000_000_000);
        assert_eq!(Quota::per_minute(10, 1).shared(4).burst, 1);
    }
    use proptest::prelude::*;
    use std::sync::Arc;

    const SEC: u64 = 1_000_000_000;

    fn admitted(g: &Gcra, times: &[u64]) -> Vec<bool> {
        let tat = AtomicU64::new(0);
        times
            .iter()
            .map(|t| matches!(g.check(&tat, *t), Decision::Allowed { .. }))
            .collect()
    }

    #[test]
    fn burst_then_rate() {
        let g = Gcra::new(Quota::per_minute(60, 5)); // one per second, burst 5
        let t0 = 10 * SEC;
        let r = admitted(&g, &[t0, t0, t0, t0, t0, t0]);
        assert_eq!(r, [true, true, true, true, true, false]);
        let tat = AtomicU64::new(0);
        for _ in 0..5 {
            g.check(&tat, t0);
        }
        match g.check(&tat, t0) {
            Decision::Limited { retry_after } => assert_eq!(retry_after, Duration::from_secs(1)),
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            g.check(&tat, t0 + SEC),
            Decision::Allowed { remaining: 0, .. }
        ));
    }

    #[test]
    fn remaining_counts_down() {
        let g = Gcra::new(Quota::per_minute(60, 3));
        let tat = AtomicU64::new(0);
        let rem: Vec<u64> = (0..3)
            .map(|_| match g.check(&tat, SEC) {
                Decision::Allowed { remaining, .. } => remaining,
                d => panic!("{d:?}"),
            })
            .collect();
        assert_eq!(rem, [2, 1, 0]);
    }

    proptest! {
        /// For any arrivals, admitted ≤ burst + rate × elapsed.
        #[test]
        fn never_admits_more_than_the_quota(
            per_min in 1u64..2000,
            burst in 1u64..50,
            gaps in proptest::collection::vec(0u64..200_000_000, 1..400),
        ) {
            let g = Gcra::new(Quota::per_minute(per_min, burst));
            let mut now = SEC;
            let mut times = Vec::new();
            for gap in gaps { now += gap; times.push(now); }
            let ok = admitted(&g, &times).iter().filter(|a| **a).count() as u64;
            let elapsed = times.last().unwrap() - times[0];
            let t = 60 * SEC / per_min;
            prop_assert!(ok <= burst + elapsed / t + 1, "admitted {} of burst {} + {}", ok, burst, elapsed / t);
        }

        /// A client that paces itself at the rate is never limited.
        #[test]
        fn paced_client_is_never_limited(per_min in 1u64..100_000, burst in 1u64..10, n in 1usize..300) {
            let g = Gcra::new(Quota::per_minute(per_min, burst));
            let t = (60 * SEC / per_min).max(1);
            let times: Vec<u64> = (0..n as u64).map(|i| SEC + i * t).collect();
            prop_assert!(admitted(&g, &times).iter().all(|a| *a));
        }
    }

    #[test]
    fn threads_hammering_one_key_admit_what_one_thread_would() {
        let g = Arc::new(Gcra::new(Quota::per_minute(600, 100)));
        let now = 5 * SEC; // a frozen clock: exactly `burst` may pass
        let tat = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (g, tat) = (g.clone(), tat.clone());
                std::thread::spawn(move || {
                    (0..10_000)
                        .filter(|_| matches!(g.check(&tat, now), Decision::Allowed { .. }))
                        .count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let single = admitted(&g, &vec![now; 40_000])
            .iter()
            .filter(|a| **a)
            .count();
        assert_eq!(total, single);
        assert_eq!(total, 100);
    }
}
