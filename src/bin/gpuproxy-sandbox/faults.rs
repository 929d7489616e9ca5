//! Scripted faults: what a sandbox does to a call before (or instead of) answering it.

use serde::{Deserialize, Serialize};

/// Each rate is a probability per call in [0, 1]; `ops` limits the faults to some operations
/// (`search`, `create`, `show`, `list`, `destroy`, `hardware`, `deploy`, ...; empty = all).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub ops: Vec<String>,
    /// Added before answering.
    pub latency_ms: u64,
    /// Answer `error_status` (500 when 0) with the provider's error shape.
    pub error_rate: f64,
    pub error_status: u16,
    /// Answer the next N calls 429 (Vast.ai: plain text, no `Retry-After`), then recover.
    pub rate_limit_burst: u64,
    /// Close the connection without answering.
    pub reset_rate: f64,
    /// Answer 200 with a body that is not JSON.
    pub malformed_rate: f64,
    /// Send half the body, then cut the connection.
    pub truncate_rate: f64,
    /// Send the body in 4 pieces with this pause between them.
    pub slow_body_ms: u64,
    /// Do the work first, then wait this long before answering (a provider that has accepted
    /// a rental whose answer is late: the crash window of the caller).
    pub answer_delay_ms: u64,
}

impl Faults {
    pub fn applies_to(&self, op: &str) -> bool {
        self.ops.is_empty() || self.ops.iter().any(|o| o == op)
    }
}

/// Seconds since the epoch at start: what makes ids differ between starts (inventories stay
/// seeded).
pub fn start_entropy() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// splitmix64: small, seeded, good enough for inventories and fault dice.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// A random (v4-shaped) UUID.
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }
}
