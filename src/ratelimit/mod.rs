//! Rate limiting: GCRA cells (`gcra`), keyed tables with bounded memory (`keyed`), and the tiers
//! the API applies. The per-IP tier runs before anything else a request costs; the per-account
//! and per-key tiers join when authentication exists.

pub mod gcra;
pub mod keyed;

use std::time::Duration;

use metrics::{counter, gauge};

use crate::config::RateLimitConfig;
use crate::conn::ip::IpKey;
use crate::metrics::{RATE_LIMITED_TOTAL, RATELIMIT_KEYS};
use gcra::{Decision, Quota};
use keyed::KeyedLimiter;

/// Which limit a decision came from (the `tier` label, and the name in the headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Ip,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Ip => "ip",
        }
    }
}

/// The outcome of the tiers for one request, with what the response headers need.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    pub tier: Tier,
    pub quota: Quota,
    pub decision: Decision,
}

impl Verdict {
    /// `RateLimit-Policy` (IETF httpapi draft): `"ip";q=1000;w=60`.
    pub fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.tier.as_str(),
            self.quota.per_period,
            self.quota.period.as_secs().max(1)
        )
    }

    /// `RateLimit`: `"ip";r=<remaining>;t=<seconds until reset>`.
    pub fn limit_header(&self) -> String {
        let (r, t) = match self.decision {
            Decision::Allowed { remaining, reset } => (remaining, ceil_secs(reset)),
            Decision::Limited { retry_after } => (0, ceil_secs(retry_after)),
        };
        format!("\"{}\";r={r};t={t}", self.tier.as_str())
    }
}

/// Whole seconds, rounded up (a client that waits this long will succeed).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000) as u64
}

pub struct RateLimits {
    ip: Option<KeyedLimiter<IpKey>>,
    pub headers: bool,
}

impl RateLimits {
    pub fn new(c: &RateLimitConfig) -> RateLimits {
        RateLimits {
            ip: c.enabled.then(|| {
                KeyedLimiter::new(
                    Quota::per_minute(c.ip_per_minute, c.ip_burst),
                    c.max_keys,
                    c.overflow_cells,
                )
            }),
            headers: c.headers,
        }
    }

    /// The per-IP tier; `None` when rate limiting is off.
    pub fn check_ip(&self, key: IpKey) -> Option<Verdict> {
        let l = self.ip.as_ref()?;
        let decision = l.check(&key);
        if matches!(decision, Decision::Limited { .. }) {
            counter!(RATE_LIMITED_TOTAL, "tier" => Tier::Ip.as_str()).increment(1);
        }
        Some(Verdict {
            tier: Tier::Ip,
            quota: l.quota(),
            decision,
        })
    }

    /// Forgets fresh keys and updates the key-count gauges.
    pub fn sweep(&self) {
        if let Some(l) = &self.ip {
            gauge!(RATELIMIT_KEYS, "tier" => Tier::Ip.as_str()).set(l.sweep() as f64);
        }
    }
}
