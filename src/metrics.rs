//! Metric names, in one place, and the Prometheus exporter.
//!
//! Every metric the daemon exports is named by a constant here; the README, the alert rules in
//! config/prometheus/ and the dashboard use the same strings. Histograms get explicit buckets
//! (metrics-exporter-prometheus renders summaries otherwise, and `histogram_quantile` needs buckets).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter, labels `route`, `status`: every response the API listeners sent.
pub const REQUESTS_TOTAL: &str = "gpuproxy_requests_total";
/// Counter, labels `route`: responses with a 5xx status (the daemon's or an upstream's fault).
pub const REQUESTS_FAILED: &str = "gpuproxy_requests_failed";
/// Histogram, label `route`: time from request head to response head, in milliseconds.
pub const REQUEST_DURATION_MS: &str = "gpuproxy_request_duration_milliseconds";
/// Gauge: client connections open now (all listeners).
pub const CONNECTIONS_ACTIVE: &str = "gpuproxy_connections_active";
/// Gauge: the global connection cap in force (configured, or sized from the fd limit).
pub const CONNECTIONS_MAX: &str = "gpuproxy_connections_max";
/// Gauge: RLIMIT_NOFILE after raising the soft limit to the hard one.
pub const FD_LIMIT: &str = "gpuproxy_fd_limit";
/// Counter, label `reason` (`global_cap`, `per_ip_cap`, `proxy_untrusted`, `proxy_invalid`):
/// connections refused before being served.
pub const CONNECTIONS_REJECTED_TOTAL: &str = "gpuproxy_connections_rejected_total";
/// Counter, label `reason` (`idle_timeout`, `header_timeout`, `handshake_timeout`, `max_age`,
/// `drain`): connections the daemon closed.
pub const CONNECTIONS_CLOSED_TOTAL: &str = "gpuproxy_connections_closed_total";
/// Counter, label `tier` (`ip`, `account`, `key`): requests answered 429.
pub const RATE_LIMITED_TOTAL: &str = "gpuproxy_rate_limited_total";
/// Gauge, label `tier`: keys a rate-limit tier tracks individually (after the last sweep).
pub const RATELIMIT_KEYS: &str = "gpuproxy_ratelimit_keys";
/// Counter, labels `listener` (`https`/`http`): client connections accepted.
pub const CONNECTIONS_TOTAL: &str = "gpuproxy_connections_total";
/// Counter: TLS handshakes that failed or timed out.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "gpuproxy_tls_handshake_failures_total";
/// Counter, label `result` (`ok`/`error`): TLS certificate reloads on SIGHUP.
pub const TLS_RELOADS_TOTAL: &str = "gpuproxy_tls_reloads_total";
/// Counter: accept() errors (e.g. out of file descriptors), each followed by a short back-off.
pub const ACCEPT_ERRORS_TOTAL: &str = "gpuproxy_accept_errors_total";
/// Gauge: PostgreSQL connections of the pool in use now (checked out).
pub const DB_CONNECTIONS_ACTIVE: &str = "gpuproxy_db_connections_active";
/// Gauge: the pool's size (`database.pool_size`); alerts divide active by it.
pub const DB_CONNECTIONS_MAX: &str = "gpuproxy_db_connections_max";
/// Histogram: time a query waited for a pooled connection, in milliseconds.
pub const DB_POOL_WAIT_MS: &str = "gpuproxy_db_pool_wait_milliseconds";
/// Counter, label `result` (`ok`/`error`): statements sent to PostgreSQL (through PgBouncer).
pub const DB_QUERIES_TOTAL: &str = "gpuproxy_db_queries_total";
/// Gauge: 1 while the last database probe (or query) succeeded.
pub const DB_UP: &str = "gpuproxy_db_up";
/// Gauge: 1 while the Redis connection is up (0 also when Redis is not configured).
pub const REDIS_UP: &str = "gpuproxy_redis_up";
/// Counter, label `source` (`memory`, `redis`, `database`, `stale`): where a credential lookup
/// was answered from.
pub const AUTH_LOOKUPS_TOTAL: &str = "gpuproxy_auth_lookups_total";
/// Counter, label `code` (the error code): requests refused by authentication.
pub const AUTH_FAILURES_TOTAL: &str = "gpuproxy_auth_failures_total";
/// Counter, labels `provider`, `result` (`created`, `refused`, `failed`, `unknown`): rentals.
pub const RENTALS_TOTAL: &str = "gpuproxy_rentals_total";
/// Gauge, label `provider`: instances the ledger has as running.
pub const INSTANCES_RUNNING: &str = "gpuproxy_instances_running";
/// Gauge: USD per hour the open instances bill now (the full price while provisioning, running or
/// terminating; the storage price while stopped or interrupted).
pub const SPEND_USD_PER_HOUR: &str = "gpuproxy_spend_usd_per_hour";
/// Counter, label `action` (`adopted`, `abandoned`, `orphan_destroyed`, `status_synced`,
/// `vanished`, `dead_destroyed`, `stuck_destroyed`, `unreachable_destroyed`, `expired`): what the
/// reconciler did.
pub const RECONCILER_ACTIONS_TOTAL: &str = "gpuproxy_reconciler_actions_total";
/// Counter, labels `budget` (`window`, `monthly`, `key`) and `event` (`warning`, `exhausted`,
/// `stopped`, `destroyed`, `not_stoppable`): budgets crossed and what the reconciler did about it.
pub const BUDGET_EVENTS_TOTAL: &str = "gpuproxy_budget_events_total";
/// Gauge: `GET /v1/events` streams open on this daemon.
pub const EVENT_STREAMS: &str = "gpuproxy_event_streams";
/// Counter, label `reason` (`client`, `slow_consumer`, `draining`, `unavailable`,
/// `ping_timeout`): event streams (SSE and WebSocket) ended, by why.
pub const EVENT_STREAMS_CLOSED_TOTAL: &str = "gpuproxy_event_streams_closed_total";
/// Counter: events delivered to streams (each event once per stream it reached).
/// Webhook delivery attempts, by result (`delivered`, `retry`, `failed`: given up or refused).
pub const WEBHOOK_ATTEMPTS_TOTAL: &str = "gpuproxy_webhook_attempts_total";
/// Webhooks disabled for failing `webhooks.disable_after_failures` times in a row.
pub const WEBHOOKS_DISABLED_TOTAL: &str = "gpuproxy_webhooks_disabled_total";
pub const EVENTS_DELIVERED_TOTAL: &str = "gpuproxy_events_delivered_total";
/// Gauge, label `provider`: the sum over instances of |billed − ledger| (USD) at the last
/// reconciliation with the provider's charges.
pub const BILLING_DRIFT_USD: &str = "gpuproxy_billing_drift_usd";
/// Gauge: `rentals.billing_drift_alert_usd`, for the alert rule to compare with.
pub const BILLING_DRIFT_ALERT_USD: &str = "gpuproxy_billing_drift_alert_usd";
/// Gauge, label `provider`: when the provider's charges were last reconciled (unix seconds).
pub const BILLING_RECONCILED_AT: &str = "gpuproxy_billing_reconciled_timestamp_seconds";
/// Gauge: live daemons sharing the rate limits (this daemon enforces 1/n of each).
pub const RATELIMIT_DAEMONS: &str = "gpuproxy_ratelimit_daemons";
/// Counter, labels `provider`, `op`, `status` (HTTP code, or `timeout`, `connect_error`,
/// `connection_reset`, `malformed_response`, `circuit_open`, `backing_off`): every upstream attempt.
pub const UPSTREAM_REQUESTS_TOTAL: &str = "gpuproxy_upstream_requests_total";
/// Histogram, labels `provider`, `op`: one upstream attempt, milliseconds.
pub const UPSTREAM_DURATION_MS: &str = "gpuproxy_upstream_duration_milliseconds";
/// Gauge, label `provider`: 1 while the provider's circuit breaker is open.
pub const CIRCUIT_OPEN: &str = "gpuproxy_circuit_open";
/// Counter, label `provider`: provider calls refused for our API key (401/403, or a 404 that is
/// not the provider's own not-found answer). Any increase means a revoked or wrong key: the
/// ledger keeps every instance as it was (docs/providers.md).
pub const PROVIDER_AUTH_FAILURES_TOTAL: &str = "gpuproxy_provider_auth_failures_total";
/// Counter, label `layer` (`memory`, `redis`, `stale`): provider answers served from cache.
pub const CACHE_HITS_TOTAL: &str = "gpuproxy_cache_hits_total";
/// Counter: provider answers that had to be fetched (one per upstream fetch, not per request).
pub const CACHE_MISSES_TOTAL: &str = "gpuproxy_cache_misses_total";
/// Gauge, labels `version`, `commit`: always 1; carries the build's identity.
pub const BUILD_INFO: &str = "gpuproxy_build_info";

/// Request-duration buckets in milliseconds: 0.1 ms to 10 s, roughly ×2.5 per step.
pub const DURATION_BUCKETS_MS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process (tests may start several daemons in one
/// process; they share it) and returns the handle that renders the scrape page.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_milliseconds".into()),
                    &DURATION_BUCKETS_MS,
                )
                .expect("buckets are non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => option_env!("GPUPROXY_COMMIT").unwrap_or("unknown")).set(1.0);
            handle
        })
        .clone()
}

/// Runs the exporter's periodic upkeep (draining histogram buffers) until the task is dropped.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// `status` label values: the codes the daemon answers with, then classes for anything else.
/// Static strings so the hot path does not format numbers.
const STATUS_LABELS: [&str; 22] = [
    "200", "201", "204", "400", "401", "402", "403", "404", "405", "409", "413", "422", "429",
    "500", "502", "503", "504", "2xx", "3xx", "4xx", "5xx", "1xx",
];

/// The `status` label of an HTTP code (a static string; classes for codes not listed).
pub fn status_label(code: u16) -> &'static str {
    STATUS_LABELS[status_index(code)]
}

fn status_index(code: u16) -> usize {
    STATUS_LABELS[..17]
        .iter()
        .position(|l| l.parse::<u16>() == Ok(code))
        .unwrap_or(match code {
            0..=199 => 21,
            200..=299 => 17,
            300..=399 => 18,
            400..=499 => 19,
            _ => 20,
        })
}

/// The per-request series (`gpuproxy_requests_total`, `_failed`, `_duration_milliseconds`) as
/// handles, one set per route. The `counter!` macros look a series up in the registry (hash the
/// labels, take a shard lock) on every call; on the cheapest authenticated route that was a
/// measurable share of the request. Each handle is registered the first time its route/status is
/// seen, so `/metrics` lists only series that happened (plus the `_failed` ones, created at 0
/// for the alerts).
pub struct RequestMetrics {
    routes: Box<[RouteSeries]>,
}

struct RouteSeries {
    label: &'static str,
    failed: OnceLock<Counter>,
    duration: OnceLock<Histogram>,
    by_status: [OnceLock<Counter>; STATUS_LABELS.len()],
}

impl RequestMetrics {
    /// One slot per route label; callers index by the position of the label in `routes`. The
    /// `_failed` series exist from the start, at 0: the alerts divide by them (a missing series
    /// makes `rate(failed) / rate(total)` empty, not 0).
    pub fn new(routes: &[&'static str]) -> RequestMetrics {
        RequestMetrics {
            routes: routes
                .iter()
                .map(|&label| {
                    let failed = metrics::counter!(REQUESTS_FAILED, "route" => label);
                    failed.absolute(0);
                    RouteSeries {
                        label,
                        failed: OnceLock::from(failed),
                        duration: OnceLock::new(),
                        by_status: std::array::from_fn(|_| OnceLock::new()),
                    }
                })
                .collect(),
        }
    }

    /// Counts one response of `route` (an index into the labels given to `new`).
    pub fn record(&self, route: usize, status: u16, duration_ms: f64) {
        let r = &self.routes[route];
        let label = r.label;
        let i = status_index(status);
        r.by_status[i]
            .get_or_init(|| {
                metrics::counter!(REQUESTS_TOTAL, "route" => label, "status" => STATUS_LABELS[i])
            })
            .increment(1);
        if status >= 500 {
            r.failed
                .get_or_init(|| metrics::counter!(REQUESTS_FAILED, "route" => label))
                .increment(1);
        }
        r.duration
            .get_or_init(|| metrics::histogram!(REQUEST_DURATION_MS, "route" => label))
            .record(duration_ms);
    }
}

fn describe() {
    describe_counter!(REQUESTS_TOTAL, "Responses sent, by route and status.");
    describe_gauge!(
        BILLING_DRIFT_USD,
        "Sum over instances of |provider billed - ledger| at the last reconciliation, USD."
    );
    describe_gauge!(
        BILLING_DRIFT_ALERT_USD,
        "rentals.billing_drift_alert_usd: the drift that alerts."
    );
    describe_gauge!(
        BILLING_RECONCILED_AT,
        "When the provider's charges were last reconciled with the ledger (unix seconds)."
    );
    describe_gauge!(EVENT_STREAMS, "GET /v1/events streams open on this daemon.");
    describe_counter!(
        WEBHOOK_ATTEMPTS_TOTAL,
        "Webhook delivery attempts, by result (delivered, retry, failed)."
    );
    describe_counter!(
        WEBHOOKS_DISABLED_TOTAL,
        "Webhooks disabled after webhooks.disable_after_failures failed attempts in a row."
    );
    describe_counter!(
        EVENT_STREAMS_CLOSED_TOTAL,
        "Event streams ended, by reason (client, slow_consumer, draining, unavailable)."
    );
    describe_counter!(
        EVENTS_DELIVERED_TOTAL,
        "Events delivered to streams (once per stream reached)."
    );
    describe_counter!(
        BUDGET_EVENTS_TOTAL,
        "Budgets crossed (warning, exhausted) and instances stopped or destroyed because of it."
    );
    describe_counter!(REQUESTS_FAILED, "Responses with a 5xx status, by route.");
    describe_histogram!(
        REQUEST_DURATION_MS,
        metrics::Unit::Milliseconds,
        "Time from request head to response head."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Client connections open now.");
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Client connections accepted, by listener."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes that failed or timed out."
    );
    describe_counter!(TLS_RELOADS_TOTAL, "TLS certificate reloads, by result.");
    describe_counter!(ACCEPT_ERRORS_TOTAL, "accept() errors, e.g. EMFILE.");
    describe_counter!(RATE_LIMITED_TOTAL, "Requests answered 429, by tier.");
    describe_gauge!(RATELIMIT_KEYS, "Keys tracked per rate-limit tier.");
    describe_gauge!(
        DB_CONNECTIONS_ACTIVE,
        "Pooled PostgreSQL connections in use."
    );
    describe_gauge!(DB_CONNECTIONS_MAX, "Size of the PostgreSQL pool.");
    describe_histogram!(
        DB_POOL_WAIT_MS,
        metrics::Unit::Milliseconds,
        "Time waited for a pooled PostgreSQL connection."
    );
    describe_counter!(
        DB_QUERIES_TOTAL,
        "Statements sent to PostgreSQL, by result."
    );
    describe_gauge!(DB_UP, "1 while PostgreSQL answers.");
    describe_gauge!(REDIS_UP, "1 while Redis is connected.");
    describe_counter!(
        AUTH_LOOKUPS_TOTAL,
        "Credential lookups, by the layer that answered."
    );
    describe_counter!(
        AUTH_FAILURES_TOTAL,
        "Requests refused by authentication, by code."
    );
    describe_counter!(
        UPSTREAM_REQUESTS_TOTAL,
        "Provider API attempts, by provider, operation and outcome."
    );
    describe_histogram!(
        UPSTREAM_DURATION_MS,
        metrics::Unit::Milliseconds,
        "Duration of one provider API attempt."
    );
    describe_gauge!(
        CIRCUIT_OPEN,
        "1 while a provider's circuit breaker is open."
    );
    describe_counter!(
        PROVIDER_AUTH_FAILURES_TOTAL,
        "Provider calls refused for our API key (a revoked or wrong key), by provider."
    );
    describe_counter!(
        CACHE_HITS_TOTAL,
        "Provider answers served from cache, by layer (memory, redis, stale)."
    );
    describe_counter!(CACHE_MISSES_TOTAL, "Provider answers fetched upstream.");
    describe_gauge!(BUILD_INFO, "Build identity; always 1.");
}

#[cfg(test)]
mod request_metrics_tests {
    use super::*;

    #[test]
    fn status_labels() {
        let label = |c| STATUS_LABELS[status_index(c)];
        assert_eq!(label(200), "200");
        assert_eq!(label(429), "429");
        assert_eq!(label(504), "504");
        assert_eq!(label(206), "2xx");
        assert_eq!(label(301), "3xx");
        assert_eq!(label(418), "4xx");
        assert_eq!(label(599), "5xx");
        assert_eq!(label(101), "1xx");
    }
}
