//! Rate-limit outcomes as plain values: the quota, a GCRA decision, the tier it came from, and
//! the `RateLimit` / `RateLimit-Policy` header values they make. The limiters (`ratelimit`)
//! produce them; errors and responses only read them.

use std::time::Duration;

use hyper::header::HeaderValue;

/// Requests per period with a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub per_period: u64,
    pub period: Duration,
    pub burst: u64,
}

impl Quota {
    pub fn per_minute(n: u64, burst: u64) -> Quota {
        Quota {
            per_period: n,
            period: Duration::from_secs(60),
            burst,
        }
    }

    /// One daemon's share when `n` daemons enforce this quota together: the same count over an
    /// n-times longer period (exactly 1/n of the rate, no rounding), and the burst divided by n,
    /// rounded up (so n daemons together allow at most n − 1 requests more than the burst).
    pub fn shared(self, n: u32) -> Quota {
        let n = n.max(1);
        Quota {
            per_period: self.per_period,
            period: self.period * n,
            burst: self.burst.div_ceil(u64::from(n)).max(1),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        /// Requests that could still be made right now.
        remaining: u64,
        /// Until the key is back to a full burst.
        reset: Duration,
    },
    Limited {
        /// Wait at least this long before the next request can succeed.
        retry_after: Duration,
    },
}

/// Which limit a decision came from (the `tier` label, and the name in the headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Ip,
    Account,
    Key,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Ip, Tier::Account, Tier::Key];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Ip => "ip",
            Tier::Account => "account",
            Tier::Key => "key",
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
    pub fn policy_header(&self) -> HeaderValue {
        header_value(
            self.tier,
            ('q', self.quota.per_period),
            ('w', self.quota.period.as_secs().max(1)),
        )
    }

    /// `RateLimit`: `"ip";r=<remaining>;t=<seconds until reset>`.
    pub fn limit_header(&self) -> HeaderValue {
        let (r, t) = match self.decision {
            Decision::Allowed { remaining, reset } => (remaining, ceil_secs(reset)),
            Decision::Limited { retry_after } => (0, ceil_secs(retry_after)),
        };
        header_value(self.tier, ('r', r), ('t', t))
    }
}

/// `"<tier>";<a>=<n>;<b>=<m>`, written on the stack without `core::fmt` (both headers go on
/// every limited route's response).
fn header_value(tier: Tier, a: (char, u64), b: (char, u64)) -> HeaderValue {
    let mut buf = [0u8; 64];
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        buf[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    put(b"\"");
    put(tier.as_str().as_bytes());
    put(b"\"");
    for (name, value) in [a, b] {
        put(&[b';', name as u8, b'=']);
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = value;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        put(&digits[i..]);
    }
    HeaderValue::from_bytes(&buf[..n]).expect("ASCII digits and tier names")
}

/// Whole seconds, rounded up (a client that waits this long will succeed).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000) as u64
}
