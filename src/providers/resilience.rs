//! What contains a failing provider: a circuit breaker (opens on consecutive failures or on an
//! error rate over a window, lets one probe through after a pause, closes on its success), a
//! back-off after an upstream 429 (Vast.ai sends no `Retry-After`, so a configured pause), and
//! retries of idempotent calls with exponential back-off and full jitter that never run past
//! the call's deadline. Every attempt is counted in `gpuproxy_upstream_requests_total` and
//! timed in `gpuproxy_upstream_duration_milliseconds`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};

use super::{ProviderId, UpstreamError};
use crate::config::ProvidersConfig;
use crate::metrics::{
    CIRCUIT_OPEN, PROVIDER_AUTH_FAILURES_TOTAL, UPSTREAM_DURATION_MS, UPSTREAM_REQUESTS_TOTAL,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    /// One probe call is allowed (or in flight).
    HalfOpen,
}

struct BreakerInner {
    state: BreakerState,
    opened_at: quanta::Instant,
    probe_in_flight: bool,
    consecutive_failures: u32,
    /// Outcomes of the last `window` calls (true = failed).
    recent: VecDeque<bool>,
}

pub struct Breaker {
    inner: Mutex<BreakerInner>,
    consecutive: u32,
    error_rate: f64,
    window: usize,
    open_for: Duration,
    provider: ProviderId,
    /// Injected so tests move time instead of sleeping (quanta's mock).
    clock: quanta::Clock,
}

impl Breaker {
    pub fn new(provider: ProviderId, cfg: &ProvidersConfig) -> Breaker {
        Self::with_clock(provider, cfg, quanta::Clock::new())
    }

    pub fn with_clock(
        provider: ProviderId,
        cfg: &ProvidersConfig,
        clock: quanta::Clock,
    ) -> Breaker {
        gauge!(CIRCUIT_OPEN, "provider" => provider.as_str()).set(0.0);
        Breaker {
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                opened_at: clock.now(),
                probe_in_flight: false,
                consecutive_failures: 0,
                recent: VecDeque::new(),
            }),
            consecutive: cfg.breaker_consecutive_failures.get(),
            error_rate: cfg.breaker_error_rate,
            window: cfg.breaker_window.get() as usize,
            open_for: cfg.breaker_open_ms.get(),
            provider,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Whether a call may go out now; an open circuit past its pause turns half-open and lets
    /// exactly one probe through.
    pub fn allow(&self) -> bool {
        let mut b = self.lock();
        match b.state {
            BreakerState::Closed => true,
            BreakerState::Open if self.clock.now() - b.opened_at >= self.open_for => {
                b.state = BreakerState::HalfOpen;
                b.probe_in_flight = true;
                true
            }
            BreakerState::Open => false,
            BreakerState::HalfOpen if !b.probe_in_flight => {
                b.probe_in_flight = true;
                true
            }
            BreakerState::HalfOpen => false,
        }
    }

    pub fn record(&self, failed: bool) {
        let mut b = self.lock();
        if b.state == BreakerState::HalfOpen {
            b.probe_in_flight = false;
            if failed {
                self.open(&mut b);
            } else {
                b.state = BreakerState::Closed;
                b.consecutive_failures = 0;
                b.recent.clear();
                gauge!(CIRCUIT_OPEN, "provider" => self.provider.as_str()).set(0.0);
                tracing::info!(provider = self.provider.as_str(), "circuit closed");
            }
            return;
        }
        b.consecutive_failures = if failed {
            b.consecutive_failures + 1
        } else {
            0
        };
        b.recent.push_back(failed);
        if b.recent.len() > self.window {
            b.recent.pop_front();
        }
        let failures = b.recent.iter().filter(|f| **f).count();
        let rate_trips = b.recent.len() >= self.window
            && failures as f64 >= self.error_rate * b.recent.len() as f64;
        if b.state == BreakerState::Closed
            && (b.consecutive_failures >= self.consecutive || rate_trips)
        {
            self.open(&mut b);
        }
    }

    fn open(&self, b: &mut BreakerInner) {
        b.state = BreakerState::Open;
        b.opened_at = self.clock.now();
        b.recent.clear();
        b.consecutive_failures = 0;
        gauge!(CIRCUIT_OPEN, "provider" => self.provider.as_str()).set(1.0);
        tracing::warn!(provider = self.provider.as_str(), "circuit opened");
    }
}

/// Everything a call to one provider passes: back-off, breaker, retries, metrics.
pub struct Gate {
    pub provider: ProviderId,
    pub breaker: Breaker,
    /// Milliseconds since `epoch` before which no call goes out (after a 429).
    backoff_until_ms: AtomicU64,
    epoch: Instant,
    max_retries: u32,
    base_backoff: Duration,
    max_backoff: Duration,
    rate_limit_backoff: Duration,
    total_timeout: Duration,
}

impl Gate {
    pub fn new(provider: ProviderId, cfg: &ProvidersConfig) -> Gate {
        // exported from the start, so the alert's `increase` sees the first refusal
        counter!(PROVIDER_AUTH_FAILURES_TOTAL, "provider" => provider.as_str()).absolute(0);
        Gate {
            provider,
            breaker: Breaker::new(provider, cfg),
            backoff_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            max_retries: cfg.max_retries,
            base_backoff: cfg.retry_base_backoff_ms.get(),
            max_backoff: cfg.retry_max_backoff_ms.get(),
            rate_limit_backoff: cfg.rate_limit_backoff_ms.get(),
            total_timeout: cfg.total_timeout_ms.get(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether calls are held back now (open circuit or 429 back-off).
    pub fn is_holding_back(&self) -> bool {
        self.breaker.state() == BreakerState::Open
            || self.now_ms() < self.backoff_until_ms.load(Ordering::Relaxed)
    }

    /// Runs `attempt` (given the time left before the call's deadline) once, and again for
    /// retryable failures when `idempotent`, within `providers.total_timeout_ms`.
    /// `retry_after` reads a 429's `Retry-After`, when the provider sends one.
    pub async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        idempotent: bool,
        mut attempt: F,
    ) -> Result<T, UpstreamError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, (UpstreamError, Option<Duration>)>>,
    {
        let deadline = Instant::now() + self.total_timeout;
        let provider = self.provider.as_str();
        let mut tries = 0u32;
        loop {
            if self.now_ms() < self.backoff_until_ms.load(Ordering::Relaxed) {
                count(provider, op, "backing_off");
                return Err(UpstreamError::BackingOff);
            }
            if !self.breaker.allow() {
                count(provider, op, "circuit_open");
                return Err(UpstreamError::CircuitOpen);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let started = Instant::now();
            let out = attempt(left).await;
            histogram!(UPSTREAM_DURATION_MS, "provider" => provider, "op" => op)
                .record(started.elapsed().as_secs_f64() * 1e3);
            let err = match out {
                Ok(v) => {
                    count(provider, op, "ok");
                    self.breaker.record(false);
                    return Ok(v);
                }
                Err((e, retry_after)) => {
                    count(provider, op, status_label(&e));
                    self.breaker.record(e.is_provider_fault());
                    if let UpstreamError::Auth { status, .. } = &e {
                        counter!(PROVIDER_AUTH_FAILURES_TOTAL, "provider" => provider).increment(1);
                        tracing::error!(
                            provider,
                            op,
                            status,
                            "provider refused our API key; nothing is concluded about instances"
                        );
                    }
                    if e == UpstreamError::RateLimited {
                        let pause = retry_after.unwrap_or(self.rate_limit_backoff);
                        self.backoff_until_ms
                            .fetch_max(self.now_ms() + pause.as_millis() as u64, Ordering::Relaxed);
                        tracing::warn!(
                            provider,
                            op,
                            pause_ms = pause.as_millis() as u64,
                            "provider rate-limited us; backing off"
                        );
                    }
                    e
                }
            };
            tries += 1;
            if !idempotent || !err.retryable() || tries > self.max_retries {
                return Err(err);
            }
            let cap = self
                .base_backoff
                .saturating_mul(1u32 << (tries - 1).min(16))
                .min(self.max_backoff);
            let pause = cap.mul_f64(jitter());
            if Instant::now() + pause >= deadline {
                return Err(err);
            }
            tokio::time::sleep(pause).await;
        }
    }
}

fn count(provider: &'static str, op: &'static str, status: &'static str) {
    counter!(UPSTREAM_REQUESTS_TOTAL, "provider" => provider, "op" => op, "status" => status)
        .increment(1);
}

/// The `status` label of a failed attempt: the HTTP code when there was one.
fn status_label(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::Status { status, .. } | UpstreamError::Auth { status, .. } => {
            crate::metrics::status_label(*status)
        }
        UpstreamError::RateLimited => "429",
        e => e.code(),
    }
}

/// Uniform in [0, 1): full jitter, so retrying daemons do not march in step.
fn jitter() -> f64 {
    let r = getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15);
    (r >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ProvidersConfig {
        ProvidersConfig {
            breaker_consecutive_failures: crate::config::nz32(3),
            breaker_error_rate: 0.5,
            breaker_window: crate::config::nz32(10),
            breaker_open_ms: crate::config::MillisOrZero(30),
            max_retries: 2,
            retry_base_backoff_ms: crate::config::MillisOrZero(1),
            retry_max_backoff_ms: crate::config::MillisOrZero(2),
            rate_limit_backoff_ms: crate::config::MillisOrZero(60_000),
            total_timeout_ms: crate::config::Millis(5_000),
            ..ProvidersConfig::default()
        }
    }

    #[test]
    fn opens_on_consecutive_failures_and_probes_once() {
        let (clock, time) = quanta::Clock::mock();
        let b = Breaker::with_clock(ProviderId::register("vastai").unwrap(), &cfg(), clock);
        for _ in 0..2 {
            assert!(b.allow());
            b.record(true);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(true);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
        time.increment(Duration::from_millis(29));
        assert!(!b.allow(), "still open before the pause ends");
        time.increment(Duration::from_millis(1));
        assert!(b.allow(), "one probe after the pause");
        assert!(!b.allow(), "only one probe at a time");
        b.record(true);
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
        time.increment(Duration::from_millis(30));
        assert!(b.allow());
        b.record(false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow());
    }

    #[test]
    fn opens_on_error_rate_without_a_streak() {
        let b = Breaker::new(ProviderId::register("ionet").unwrap(), &cfg());
        // fail, ok, fail, ok ...: never 3 in a row, but half of the window fails
        for i in 0..10 {
            b.record(i % 2 == 0);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn retries_only_idempotent_retryable_failures() {
        let gate = Gate::new(
            ProviderId::register("vastai").unwrap(),
            &ProvidersConfig {
                breaker_consecutive_failures: crate::config::nz32(100),
                ..cfg()
            },
        );
        let mut n = 0;
        let r: Result<(), _> = gate
            .call("search", true, |_| {
                n += 1;
                async { Err((UpstreamError::Timeout, None)) }
            })
            .await;
        assert_eq!(r, Err(UpstreamError::Timeout));
        assert_eq!(n, 3, "one try and max_retries retries");

        let mut n = 0;
        let _ = gate
            .call::<(), _, _>("create", false, |_| {
                n += 1;
                async { Err((UpstreamError::Timeout, None)) }
            })
            .await;
        assert_eq!(n, 1, "never retried when not idempotent");

        let mut n = 0;
        let _ = gate
            .call::<(), _, _>("search", true, |_| {
                n += 1;
                async {
                    Err((
                        UpstreamError::Status {
                            status: 404,
                            detail: String::new(),
                        },
                        None,
                    ))
                }
            })
            .await;
        assert_eq!(n, 1, "a 404 is not retried");
    }

    #[tokio::test]
    async fn a_429_backs_the_provider_off() {
        let gate = Gate::new(ProviderId::register("vastai").unwrap(), &cfg());
        let r: Result<(), _> = gate
            .call("search", true, |_| async {
                Err((UpstreamError::RateLimited, None))
            })
            .await;
        assert_eq!(r, Err(UpstreamError::RateLimited));
        assert!(gate.is_holding_back());
        let mut called = false;
        let r: Result<(), _> = gate
            .call("search", true, |_| {
                called = true;
                async { Ok(()) }
            })
            .await;
        assert_eq!(r, Err(UpstreamError::BackingOff));
        assert!(!called);
    }

    #[tokio::test]
    async fn retries_stop_at_the_deadline() {
        let gate = Gate::new(
            ProviderId::register("vastai").unwrap(),
            &ProvidersConfig {
                total_timeout_ms: crate::config::Millis(50),
                retry_base_backoff_ms: crate::config::MillisOrZero(200),
                retry_max_backoff_ms: crate::config::MillisOrZero(200),
                max_retries: 10,
                breaker_consecutive_failures: crate::config::nz32(100),
                ..cfg()
            },
        );
        let mut n = 0;
        let _ = gate
            .call::<(), _, _>("search", true, |_| {
                n += 1;
                async { Err((UpstreamError::Timeout, None)) }
            })
            .await;
        // the jittered pause may be short enough for a few tries, never ten past 50 ms
        assert!(n < 10);
    }
}
