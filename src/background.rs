//! The daemon's periodic work, each job a registered [`Service`] (Pingora's `BackgroundService`
//! is the model): a name (the `service` label of its metrics and the field of its log lines), an
//! interval, and one round of work. [`services`] is the one list of them; the server starts it
//! with [`start`] and stops it by dropping the handles.
//!
//! A round that fails is logged and counted, and the next one runs on time; a round that takes
//! longer than the interval delays the next one instead of piling them up. Each service has
//! `gpuproxy_background_rounds_total{service,result}`,
//! `gpuproxy_background_round_duration_milliseconds{service}` and
//! `gpuproxy_background_last_success_timestamp_seconds{service}` (an alert can tell a job that
//! stopped succeeding).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use tokio::task::JoinHandle;

use crate::metrics::{
    BACKGROUND_LAST_SUCCESS, BACKGROUND_ROUND_DURATION_MS, BACKGROUND_ROUNDS_TOTAL,
};
use crate::state::AppState;

/// One round of a service's work; `Err` carries what to log.
pub type Round = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One periodic job.
pub struct Service {
    pub name: &'static str,
    pub interval: Duration,
    /// Wait this long before the first round (0: at once).
    pub first_after: Duration,
    pub round: Box<dyn Fn() -> Round + Send + Sync>,
}

impl Service {
    fn new<F, Fut>(name: &'static str, interval: Duration, round: F) -> Service
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Service {
            name,
            interval,
            first_after: Duration::ZERO,
            round: Box::new(move || Box::pin(round())),
        }
    }

    fn first_after(mut self, d: Duration) -> Service {
        self.first_after = d;
        self
    }
}

/// Every periodic job of a daemon with these services (a job whose dependency is not
/// configured, e.g. the reconciler without a database, is not in the list).
pub fn services(state: &Arc<AppState>) -> Vec<Service> {
    let cfg = state.config.clone();
    let mut list = Vec::new();
    {
        let s = state.clone();
        list.push(Service::new(
            "ratelimit_sweep",
            cfg.ratelimit.sweep_interval_ms.get(),
            move || {
                let s = s.clone();
                async move {
                    s.limits.sweep();
                    Ok(())
                }
            },
        ));
    }
    if let Some(db) = state.db.clone() {
        db.publish_pool_size();
        list.push(Service::new(
            "database_health",
            cfg.database.health_interval_ms.get(),
            move || {
                let db = db.clone();
                async move {
                    db.health_round().await;
                    Ok(())
                }
            },
        ));
    }
    if let Some(redis) = state.redis.clone() {
        list.push(Service::new(
            "redis_health",
            Duration::from_millis(500),
            move || {
                let up = if redis.is_up() { 1.0 } else { 0.0 };
                async move {
                    gauge!(crate::metrics::REDIS_UP).set(up);
                    Ok(())
                }
            },
        ));
    }
    {
        gauge!(crate::metrics::PROVIDER_CREDIT_ALERT_USD).set(cfg.providers.credit_alert_usd);
        let s = state.clone();
        list.push(Service::new(
            "provider_credit",
            cfg.providers.credit_interval_ms.get(),
            move || {
                let s = s.clone();
                async move { crate::providers::credit_round(&s.providers).await }
            },
        ));
    }
    crate::agents::channels::register_metrics();
    if let Some(db) = state.db.clone() {
        let (agents, grace) = (state.agents.clone(), cfg.agents.command_grace_ms.get());
        let keys_ttl = cfg.rentals.idempotency_ttl_ms.get();
        list.push(Service::new(
            "agent_sweep",
            cfg.agents.sweep_interval_ms.get(),
            move || {
                let (agents, db) = (agents.clone(), db.clone());
                async move {
                    agents
                        .sweep(&db, grace, keys_ttl)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        ));
    }
    if let Some(r) = state.rentals.clone() {
        crate::rentals::reconcile::register_metrics();
        crate::rentals::budget::register_metrics();
        crate::rentals::billing::register_metrics(&r);
        let every = cfg.rentals.reconcile_interval_ms.get();
        let process_start = crate::rentals::reconcile::now();
        let rr = r.clone();
        list.push(Service::new("reconcile", every, move || {
            let r = rr.clone();
            async move {
                crate::rentals::reconcile::once(&r, process_start)
                    .await
                    .map_err(|e| e.to_string())
            }
        }));
        let rr = r.clone();
        list.push(Service::new("expiry", Duration::from_secs(1), move || {
            let r = rr.clone();
            async move { crate::rentals::expiry::round(&r).await }
        }));
        let rr = r.clone();
        list.push(Service::new("budgets", every, move || {
            let r = rr.clone();
            async move {
                crate::rentals::budget::enforce(&r)
                    .await
                    .map_err(|e| e.to_string())
            }
        }));
        let rr = r.clone();
        list.push(Service::new("sweeps", every, move || {
            let r = rr.clone();
            async move { crate::rentals::reconcile::sweep(&r).await }
        }));
        let billing = cfg.rentals.billing_reconcile_interval_ms.get();
        list.push(
            Service::new("billing", billing, move || {
                let r = r.clone();
                async move { crate::rentals::billing::round(&r).await }
            })
            // after the reconciler's first round, not in the middle of start-up
            .first_after(billing.min(Duration::from_secs(30))),
        );
    }
    list
}

/// Runs every service as a task of its own.
pub fn start(list: Vec<Service>) -> Vec<JoinHandle<()>> {
    list.into_iter().map(|s| tokio::spawn(run(s))).collect()
}

async fn run(s: Service) {
    let name = s.name;
    for result in ["ok", "error"] {
        counter!(BACKGROUND_ROUNDS_TOTAL, "service" => name, "result" => result).absolute(0);
    }
    if !s.first_after.is_zero() {
        tokio::time::sleep(s.first_after).await;
    }
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let start = Instant::now();
        let outcome = (s.round)().await;
        histogram!(BACKGROUND_ROUND_DURATION_MS, "service" => name)
            .record(start.elapsed().as_secs_f64() * 1e3);
        match outcome {
            Ok(()) => {
                counter!(BACKGROUND_ROUNDS_TOTAL, "service" => name, "result" => "ok").increment(1);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                gauge!(BACKGROUND_LAST_SUCCESS, "service" => name).set(now);
            }
            Err(e) => {
                counter!(BACKGROUND_ROUNDS_TOTAL, "service" => name, "result" => "error")
                    .increment(1);
                tracing::warn!(service = name, error = %e, "background round failed; the next round retries");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Rounds run on their interval, a failing round does not stop the next.
    #[tokio::test(start_paused = true)]
    async fn rounds_repeat_and_survive_failures() {
        let n = Arc::new(AtomicU32::new(0));
        let seen = n.clone();
        let s = Service::new("test", Duration::from_secs(1), move || {
            let n = seen.clone();
            async move {
                let i = n.fetch_add(1, Ordering::SeqCst);
                if i.is_multiple_of(2) {
                    Err("odd".into())
                } else {
                    Ok(())
                }
            }
        });
        let h = start(vec![s]);
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        assert_eq!(n.load(Ordering::SeqCst), 5, "at 0, 1, 2, 3 and 4 s");
        for h in h {
            h.abort();
        }
    }
}
