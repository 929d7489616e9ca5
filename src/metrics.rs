//! Metric names, in one place, and the Prometheus exporter.
//!
//! Every metric the daemon exports is declared once in [`CATALOG`] (name, kind, labels, help):
//! the constants the call sites use, the HELP/TYPE lines and the table in docs/metrics.md come
//! from it; the alert rules in config/prometheus/ and the dashboard use the same strings. Histograms get explicit buckets
//! (metrics-exporter-prometheus renders summaries otherwise, and `histogram_quantile` needs buckets).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What kind of series a metric is (its `# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One exported metric, as [`CATALOG`] declares it.
#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    /// The label names the daemon sets on it (a unit test holds the call sites to these).
    pub labels: &'static [&'static str],
    /// The `# HELP` text, also the meaning column of docs/metrics.md.
    pub help: &'static str,
}

/// Declares every metric once: a constant per name for the call sites, and [`CATALOG`], from
/// which `describe()` writes the HELP/TYPE lines and docs/metrics.md its table.
macro_rules! catalog {
    ($($konst:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $(#[doc = $help] pub const $konst: &str = $name;)*
        /// The constants' own names, in [`CATALOG`] order (for the call-site test).
        #[cfg(test)]
        static IDENTS: &[&str] = &[$(stringify!($konst)),*];
        /// Every metric the daemon exports, in the order docs/metrics.md lists them.
        pub static CATALOG: &[MetricDef] = &[$(MetricDef {
            name: $name,
            kind: MetricKind::$kind,
            labels: &[$($label),*],
            help: $help,
        }),*];
    };
}

catalog! {
    REQUESTS_TOTAL = "gpuproxy_requests_total", Counter, ["route", "status"],
        "Responses the API listeners sent, by route and status.";
    REQUESTS_FAILED = "gpuproxy_requests_failed", Counter, ["route"],
        "Responses with a 5xx status (the daemon's or an upstream's fault), by route.";
    REQUEST_DURATION_MS = "gpuproxy_request_duration_milliseconds", Histogram, ["route"],
        "Time from request head to response head, in milliseconds (buckets 0.1 ms to 10 s).";
    CONNECTIONS_ACTIVE = "gpuproxy_connections_active", Gauge, [],
        "Client connections open now, all listeners (refreshed by the reaper each connections.reap_interval_ms).";
    CONNECTIONS_MAX = "gpuproxy_connections_max", Gauge, [],
        "The global connection cap in force (configured, or sized from the fd limit).";
    FD_LIMIT = "gpuproxy_fd_limit", Gauge, [],
        "RLIMIT_NOFILE after raising the soft limit to the hard one.";
    CONNECTIONS_REJECTED_TOTAL = "gpuproxy_connections_rejected_total", Counter, ["reason"],
        "Connections refused before being served, by reason: global_cap, per_ip_cap, proxy_untrusted, proxy_invalid.";
    CONNECTIONS_CLOSED_TOTAL = "gpuproxy_connections_closed_total", Counter, ["reason"],
        "Connections the daemon closed, by reason: idle_timeout, header_timeout, handshake_timeout, max_age, drain, write_timeout, forced, slow_consumer.";
    CONNECTIONS_TOTAL = "gpuproxy_connections_total", Counter, ["listener"],
        "Client connections accepted, by listener (https, http).";
    TLS_HANDSHAKE_FAILURES_TOTAL = "gpuproxy_tls_handshake_failures_total", Counter, [],
        "TLS handshakes that failed or timed out.";
    TLS_RELOADS_TOTAL = "gpuproxy_tls_reloads_total", Counter, ["result"],
        "TLS certificate reloads on SIGHUP, by result (ok, error).";
    ACCEPT_ERRORS_TOTAL = "gpuproxy_accept_errors_total", Counter, [],
        "accept() errors (e.g. EMFILE, out of file descriptors), each followed by a short back-off.";
    RATE_LIMITED_TOTAL = "gpuproxy_rate_limited_total", Counter, ["tier"],
        "Requests answered 429, by tier (ip, account, key).";
    RATELIMIT_KEYS = "gpuproxy_ratelimit_keys", Gauge, ["tier"],
        "Keys a rate-limit tier tracks individually, after the last sweep.";
    RATELIMIT_DAEMONS = "gpuproxy_ratelimit_daemons", Gauge, [],
        "Live daemons sharing the rate limits (this daemon enforces 1/n of each).";
    DB_CONNECTIONS_ACTIVE = "gpuproxy_db_connections_active", Gauge, [],
        "Pooled PostgreSQL connections in use now (checked out).";
    DB_CONNECTIONS_MAX = "gpuproxy_db_connections_max", Gauge, [],
        "The PostgreSQL pool's size (database.pool_size); alerts divide active by it.";
    DB_POOL_WAIT_MS = "gpuproxy_db_pool_wait_milliseconds", Histogram, [],
        "Time a query waited for a pooled PostgreSQL connection, in milliseconds.";
    DB_QUERIES_TOTAL = "gpuproxy_db_queries_total", Counter, ["result"],
        "Statements sent to PostgreSQL (through PgBouncer), by result (ok, error).";
    DB_UP = "gpuproxy_db_up", Gauge, [],
        "1 while the last database probe (or query) succeeded.";
    REDIS_UP = "gpuproxy_redis_up", Gauge, [],
        "1 while the Redis connection is up (0 also when Redis is not configured).";
    AUTH_LOOKUPS_TOTAL = "gpuproxy_auth_lookups_total", Counter, ["source"],
        "Credential lookups, by where they were answered: memory, redis, replica, database, stale.";
    AUTH_FAILURES_TOTAL = "gpuproxy_auth_failures_total", Counter, ["code"],
        "Requests refused by authentication, by error code.";
    UPSTREAM_REQUESTS_TOTAL = "gpuproxy_upstream_requests_total", Counter, ["provider", "op", "status"],
        "Provider API attempts, by provider, operation and outcome (HTTP code, or timeout, connect_error, connection_reset, malformed_response, circuit_open, backing_off).";
    UPSTREAM_DURATION_MS = "gpuproxy_upstream_duration_milliseconds", Histogram, ["provider", "op"],
        "Duration of one provider API attempt, in milliseconds.";
    CIRCUIT_OPEN = "gpuproxy_circuit_open", Gauge, ["provider"],
        "1 while the provider's circuit breaker is open.";
    PROVIDER_AUTH_FAILURES_TOTAL = "gpuproxy_provider_auth_failures_total", Counter, ["provider"],
        "Provider calls refused for our API key (401/403, or a 404 that is not the provider's own not-found answer): a revoked or wrong key; the ledger is left as it was.";
    CACHE_HITS_TOTAL = "gpuproxy_cache_hits_total", Counter, ["layer"],
        "Provider answers served from cache, by layer (memory, redis, stale).";
    CACHE_MISSES_TOTAL = "gpuproxy_cache_misses_total", Counter, [],
        "Provider answers fetched upstream (one per fetch, not per waiting request).";
    RENTALS_TOTAL = "gpuproxy_rentals_total", Counter, ["provider", "result"],
        "Rentals, by provider and result (created, refused, unknown: a lost answer, the intent kept pending).";
    INSTANCES_RUNNING = "gpuproxy_instances_running", Gauge, ["provider"],
        "Instances the ledger has as running (each reconciler round).";
    SPEND_USD_PER_HOUR = "gpuproxy_spend_usd_per_hour", Gauge, [],
        "USD per hour the open instances bill now (the full price while provisioning, running or terminating; the storage price while stopped or interrupted).";
    BILLING_DRIFT_USD = "gpuproxy_billing_drift_usd", Gauge, ["provider"],
        "Sum over instances of |provider billed - ledger| at the last reconciliation with the provider's charges, USD.";
    PROVIDER_CREDIT_USD = "gpuproxy_provider_credit_usd", Gauge, ["provider"],
        "The provider account's credit (Vast users/current `credit`), USD, read every providers.credit_interval_ms.";
    PROVIDER_CREDIT_ALERT_USD = "gpuproxy_provider_credit_alert_usd", Gauge, [],
        "providers.credit_alert_usd, for the alert rule to compare the credit with.";
    BILLING_DRIFT_ALERT_USD = "gpuproxy_billing_drift_alert_usd", Gauge, [],
        "rentals.billing_drift_alert_usd, for the alert rule to compare the drift with.";
    BILLING_RECONCILED_AT = "gpuproxy_billing_reconciled_timestamp_seconds", Gauge, ["provider"],
        "When the provider's charges were last reconciled with the ledger (unix seconds).";
    BUDGET_EVENTS_TOTAL = "gpuproxy_budget_events_total", Counter, ["budget", "event"],
        "Budgets crossed and what the reconciler did about it, by budget (window, monthly, key) and event (warning, exhausted, stopped, destroyed, not_stoppable).";
    RECONCILER_ACTIONS_TOTAL = "gpuproxy_reconciler_actions_total", Counter, ["action"],
        "What the reconciler did, by action (adopted, abandoned, orphan_destroyed, status_synced, vanished, dead_destroyed, stuck_destroyed, unreachable_destroyed, agent_kept (a destroy rule skipped: the instance agent holds a channel), expired, paid_settled; a rental's own policies: idle_warned, idle_stopped, idle_destroyed, rebid, rebid_refused, interrupt_destroyed, interrupt_failed_over, interrupt_failover_failed; hosts' price increases: price_increase_accepted, price_increase_rejected).";
    EVENT_STREAMS = "gpuproxy_event_streams", Gauge, [],
        "Event streams (SSE, WebSocket and gRPC StreamEvents) open on this daemon.";
    AGENTS_CONNECTED = "gpuproxy_agents_connected", Gauge, [],
        "Instance agents holding their channel (/v1/agent) on this daemon, counted from their hello.";
    AGENT_MESSAGES_TOTAL = "gpuproxy_agent_messages_total", Counter, ["direction", "result"],
        "Agent channel messages, by direction (in: from agents, out: to them) and result (ok; invalid: refused, closing the channel with 1008).";
    AGENT_CHANNELS_CLOSED_TOTAL = "gpuproxy_agent_channels_closed_total", Counter, ["reason"],
        "Agent channels ended, by reason (disconnected, draining, ping_timeout, no_hello, invalid_message, message_too_big, protocol_error, rate_limited, slow_consumer, instance_ended, replaced, unavailable; not_admitted: refused 503 before opening, agents.max_opening).";
    AGENT_CONNECT_SECONDS = "gpuproxy_agent_connect_seconds", Histogram, [],
        "Time from an agent's channel request to its welcome (token check, WebSocket upgrade, hello, presence and event written), in seconds.";
    AGENT_COMMAND_SECONDS = "gpuproxy_agent_command_seconds", Histogram, ["stage"],
        "Commands through agents, from accepted (POST) to a stage, in seconds: routed (written to the agent's channel; only commands accepted while their agent was connected) and result (the agent's answer, run time included).";
    AGENT_COMMANDS_TOTAL = "gpuproxy_agent_commands_total", Counter, ["status"],
        "Commands through agents that ended, by status (exited, timed_out, start_failed, expired, lost).";
    GRPC_CALLS_IN_FLIGHT = "gpuproxy_grpc_calls_in_flight", Gauge, [],
        "gRPC calls running until their answer's head (a call past its grpc-timeout deadline is dropped, and leaves this at once).";
    GRPC_DEADLINES_EXCEEDED_TOTAL = "gpuproxy_grpc_deadlines_exceeded_total", Counter, [],
        "gRPC calls and streams ended DEADLINE_EXCEEDED by their grpc-timeout.";
    EVENT_STREAMS_CLOSED_TOTAL = "gpuproxy_event_streams_closed_total", Counter, ["reason"],
        "Event streams ended, by reason (client, slow_consumer, draining, unavailable, ping_timeout).";
    EVENT_STREAMS_CUT_TOTAL = "gpuproxy_event_streams_cut_total", Counter, [],
        "Connections closed under an event stream that took no event for events.max_lag_ms while events waited (a client that stopped reading behind a proxy or an HTTP/2 window).";
    EVENTS_DELIVERED_TOTAL = "gpuproxy_events_delivered_total", Counter, [],
        "Events delivered to streams (each event once per stream it reached).";
    WEBHOOK_ATTEMPTS_TOTAL = "gpuproxy_webhook_attempts_total", Counter, ["result"],
        "Webhook delivery attempts, by result (delivered, retry, failed: given up, a final answer, a refused target).";
    WEBHOOKS_DISABLED_TOTAL = "gpuproxy_webhooks_disabled_total", Counter, [],
        "Webhooks disabled after failing for webhooks.disable_after_ms with webhooks.disable_after_failures failed attempts in a row.";
    BACKGROUND_ROUNDS_TOTAL = "gpuproxy_background_rounds_total", Counter, ["service", "result"],
        "Rounds of the daemon's background services, by service (reconcile, expiry, budgets, sweeps, billing, database_health, redis_health, ratelimit_sweep) and result (ok, error).";
    BACKGROUND_ROUND_DURATION_MS = "gpuproxy_background_round_duration_milliseconds", Histogram, ["service"],
        "Duration of one background round, in milliseconds.";
    BACKGROUND_LAST_SUCCESS = "gpuproxy_background_last_success_timestamp_seconds", Gauge, ["service"],
        "When a background service last completed a round without error (unix seconds).";
    BUILD_INFO = "gpuproxy_build_info", Gauge, ["version", "commit"],
        "Build identity (version, commit); always 1.";
}

/// Buckets of the `_seconds` histograms (agent connections and commands): 1 ms to an hour.
pub const SECONDS_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0, 3600.0,
];

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
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
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

/// HELP and TYPE for every metric of [`CATALOG`] (milliseconds histograms also name their unit).
fn describe() {
    for m in CATALOG {
        let unit = m
            .name
            .ends_with("_milliseconds")
            .then_some(metrics::Unit::Milliseconds);
        match (m.kind, unit) {
            (MetricKind::Counter, _) => describe_counter!(m.name, m.help),
            (MetricKind::Gauge, _) => describe_gauge!(m.name, m.help),
            (MetricKind::Histogram, Some(u)) => describe_histogram!(m.name, u, m.help),
            (MetricKind::Histogram, None) => describe_histogram!(m.name, m.help),
        }
    }
}

/// The metrics table of docs/metrics.md (between its `generated` markers), from [`CATALOG`].
pub fn docs_table() -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for m in CATALOG {
        let labels: Vec<String> = m.labels.iter().map(|l| format!("`{l}`")).collect();
        out += &format!(
            "| `{}` | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            labels.join(", "),
            m.help.replace('|', "\\|")
        );
    }
    out
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

#[cfg(test)]
mod catalog_tests {
    use super::*;

    /// The `name!(ARGS)` calls of the metrics macros in `text`: (constant, label names).
    fn call_sites(text: &str) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for mac in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(mac) {
                let rest = &text[at + mac.len()..];
                let (mut depth, mut end) = (1, rest.len());
                for (i, c) in rest.char_indices() {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                let args = &rest[..end];
                let first = args.split(',').next().unwrap_or("").trim();
                let konst = first.rsplit("::").next().unwrap_or(first).to_owned();
                let labels = args
                    .split("=>")
                    .filter_map(|a| a.rsplit('"').nth(1).map(str::to_owned))
                    .collect::<Vec<_>>();
                let labels = if args.contains("=>") {
                    labels[..args.matches("=>").count()].to_vec()
                } else {
                    vec![]
                };
                out.push((konst, labels));
            }
        }
        out
    }

    fn sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                ));
            }
        }
    }

    /// Every metric a call site sets is in the catalog, with exactly the labels declared there:
    /// a label added at a call site and not in the catalog (or the docs) fails here.
    #[test]
    fn call_sites_use_declared_metrics_and_labels() {
        assert_eq!(IDENTS.len(), CATALOG.len());
        let mut files = Vec::new();
        sources(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut seen = 0;
        for (path, text) in &files {
            let text = text.split("#[cfg(test)]").next().unwrap_or(text);
            for (konst, labels) in call_sites(text) {
                let Some(i) = IDENTS.iter().position(|k| *k == konst) else {
                    continue; // a macro over another name (e.g. a handle kept in a field)
                };
                let declared: Vec<&str> = CATALOG[i].labels.to_vec();
                let mut used: Vec<&str> = labels.iter().map(String::as_str).collect();
                used.sort();
                let mut want = declared.clone();
                want.sort();
                assert_eq!(used, want, "{path}: {konst} with labels {labels:?}");
                seen += 1;
            }
        }
        assert!(seen > 30, "only {seen} call sites found");
        let mut names: Vec<_> = CATALOG.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len(), "a metric declared twice");
        for m in CATALOG {
            assert!(
                m.name.starts_with("gpuproxy_") && !m.help.is_empty(),
                "{}",
                m.name
            );
        }
    }
}
