//! Rate limiting: GCRA cells (`gcra`), keyed tables with bounded memory (`keyed`), and the tiers
//! the API applies. The per-IP tier runs before anything else a request costs; the per-account
//! and per-key tiers run right after authentication, with the overrides stored on the account
//! and the key (an override without a burst gets a tenth of its per-minute rate, at least 1).

pub mod gcra;
pub mod keyed;
pub mod peers;

use metrics::{counter, gauge};

use crate::accounts::store::KeyRecord;
use crate::config::RateLimitConfig;
use crate::metrics::{RATE_LIMITED_TOTAL, RATELIMIT_KEYS};
use crate::types::ip::IpKey;
pub use crate::types::limits::{Decision, Quota, Tier, Verdict, ceil_secs};
use gcra::Gcra;
use keyed::KeyedLimiter;

/// Creates the `tier` series at zero, so alerts see them before the first 429.
pub fn init_series() {
    for t in Tier::ALL {
        counter!(RATE_LIMITED_TOTAL, "tier" => t.as_str()).absolute(0);
    }
}

/// The (per minute, burst) in force for a tier given an override `(per minute, burst?)`.
pub fn effective(over: Option<(u32, Option<u32>)>, per_minute: u64, burst: u64) -> (u64, u64) {
    match over {
        Some((rpm, b)) => (
            u64::from(rpm),
            b.map_or((u64::from(rpm) / 10).max(1), u64::from),
        ),
        None => (per_minute, burst),
    }
}

pub struct RateLimits {
    ip: Option<KeyedLimiter<IpKey>>,
    account: Option<KeyedLimiter<i64>>,
    key: Option<KeyedLimiter<i64>>,
    pub headers: bool,
    /// Live daemons sharing the limits (see `peers`); this daemon enforces 1/n of each. Read
    /// with one relaxed load per check; written by the heartbeat.
    share: std::sync::atomic::AtomicU32,
}

impl RateLimits {
    pub fn new(c: &RateLimitConfig) -> RateLimits {
        RateLimits {
            ip: c.enabled.then(|| {
                KeyedLimiter::new(
                    Quota::per_minute(c.ip_per_minute.get(), c.ip_burst.get()),
                    c.max_keys.get(),
                    c.overflow_cells.get(),
                )
            }),
            account: c.enabled.then(|| {
                KeyedLimiter::new(
                    Quota::per_minute(c.account_per_minute.get(), c.account_burst.get()),
                    c.max_keys.get(),
                    c.overflow_cells.get(),
                )
            }),
            key: c.enabled.then(|| {
                KeyedLimiter::new(
                    Quota::per_minute(c.key_per_minute.get(), c.key_burst.get()),
                    c.max_keys.get(),
                    c.overflow_cells.get(),
                )
            }),
            headers: c.headers,
            share: std::sync::atomic::AtomicU32::new(1),
        }
    }

    /// Live daemons sharing the limits, as last counted.
    pub fn daemons(&self) -> u32 {
        self.share.load(std::sync::atomic::Ordering::Relaxed).max(1)
    }

    pub fn set_daemons(&self, n: u32) {
        self.share
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// The per-account and per-key tiers for an authenticated caller: the first that limits,
    /// else the one with the least left (for the response headers).
    pub fn check_caller(&self, key: &KeyRecord) -> Option<Verdict> {
        let a = self.check_tier(
            Tier::Account,
            self.account.as_ref()?,
            key.account_id,
            key.account_rate_limit,
        );
        if matches!(a.decision, Decision::Limited { .. }) {
            return Some(a);
        }
        let k = self.check_tier(
            Tier::Key,
            self.key.as_ref()?,
            key.key_id,
            key.key_rate_limit,
        );
        Some(tighter(a, k))
    }

    fn check_tier(
        &self,
        tier: Tier,
        table: &KeyedLimiter<i64>,
        id: i64,
        over: Option<(u32, Option<u32>)>,
    ) -> Verdict {
        let n = self.daemons();
        let (decision, quota) = match over {
            None if n == 1 => (table.check(&id), table.quota()),
            None => {
                let g = Gcra::new(table.quota().shared(n));
                (table.check_with(&id, &g), g.quota)
            }
            Some(_) => {
                let d = table.quota();
                let (rpm, burst) = effective(over, d.per_period, d.burst);
                let g = Gcra::new(Quota::per_minute(rpm, burst).shared(n));
                (table.check_with(&id, &g), g.quota)
            }
        };
        if matches!(decision, Decision::Limited { .. }) {
            counter!(RATE_LIMITED_TOTAL, "tier" => tier.as_str()).increment(1);
        }
        Verdict {
            tier,
            quota,
            decision,
        }
    }

    /// The per-IP tier; `None` when rate limiting is off.
    pub fn check_ip(&self, key: IpKey) -> Option<Verdict> {
        let l = self.ip.as_ref()?;
        let n = self.daemons();
        let (decision, quota) = if n == 1 {
            (l.check(&key), l.quota())
        } else {
            let g = Gcra::new(l.quota().shared(n));
            (l.check_with(&key, &g), g.quota)
        };
        if matches!(decision, Decision::Limited { .. }) {
            counter!(RATE_LIMITED_TOTAL, "tier" => Tier::Ip.as_str()).increment(1);
        }
        Some(Verdict {
            tier: Tier::Ip,
            quota,
            decision,
        })
    }

    /// Forgets fresh keys and updates the key-count gauges.
    pub fn sweep(&self) {
        if let Some(l) = &self.ip {
            gauge!(RATELIMIT_KEYS, "tier" => Tier::Ip.as_str()).set(l.sweep() as f64);
        }
        if let Some(l) = &self.account {
            gauge!(RATELIMIT_KEYS, "tier" => Tier::Account.as_str()).set(l.sweep() as f64);
        }
        if let Some(l) = &self.key {
            gauge!(RATELIMIT_KEYS, "tier" => Tier::Key.as_str()).set(l.sweep() as f64);
        }
    }
}

/// Of two allowed verdicts, the one with fewer requests left.
pub fn tighter(a: Verdict, b: Verdict) -> Verdict {
    let left = |v: &Verdict| match v.decision {
        Decision::Allowed { remaining, .. } => remaining,
        Decision::Limited { .. } => 0,
    };
    if left(&b) < left(&a) { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn headers_are_written_in_full() {
        let v = Verdict {
            tier: Tier::Account,
            quota: Quota::per_minute(u64::MAX, 10),
            decision: Decision::Allowed {
                remaining: 0,
                reset: Duration::from_millis(1500),
            },
        };
        assert_eq!(
            v.policy_header(),
            format!("\"account\";q={};w=60", u64::MAX).as_str()
        );
        assert_eq!(v.limit_header(), "\"account\";r=0;t=2");
        let v = Verdict {
            tier: Tier::Ip,
            quota: Quota::per_minute(1000, 100),
            decision: Decision::Limited {
                retry_after: Duration::from_secs(3),
            },
        };
        assert_eq!(v.policy_header(), "\"ip\";q=1000;w=60");
        assert_eq!(v.limit_header(), "\"ip\";r=0;t=3");
    }
}
