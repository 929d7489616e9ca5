//! `[rentals]`: price checks, status cache, reconciler, idempotency, SSH keys, dead and stuck
//! instances.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use super::nz32;

use super::Millis;

/// Renting: the price check, status reads, the reconciler and `Idempotency-Key` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RentalsConfig {
    /// A rental is refused (409 `price_changed`) when the offer's price now is above the price
    /// the caller was shown (the offers cache) by more than this fraction.
    pub price_tolerance: f64,
    /// An instance's provider status is reused this long (a thousand pollers, one provider call).
    pub status_cache_ms: Millis,
    /// How often the reconciler compares the ledger with the providers (it also runs at start).
    pub reconcile_interval_ms: Millis,
    /// An intent still pending after this long is settled by the reconciler: adopted when the
    /// provider has an instance with our id, marked failed otherwise.
    pub intent_timeout_ms: Millis,
    /// `Idempotency-Key` records are kept this long.
    pub idempotency_ttl_ms: Millis,
    /// A running `Idempotency-Key` record's lease, renewed by its request; once it runs out (the
    /// daemon died) the next request with the key takes it over.
    pub idempotency_lease_ms: Millis,
    /// Requests waiting for a running key's answer, per key and daemon; more get 409
    /// `idempotency_in_progress` with `Retry-After` at once.
    pub idempotency_max_waiters: NonZeroU32,
    /// How long such a request waits before 409 `idempotency_in_progress`.
    pub idempotency_wait_ms: Millis,
    /// io.net deployments run for a fixed time: this many hours when the request does not say.
    pub default_duration_hours: NonZeroU32,
    /// Every rental is destroyed this many hours after it was made unless it says otherwise
    /// (`max_duration_hours` / `expires_at`); 0: no default lifetime.
    pub default_max_duration_hours: f64,
    /// The budget is a rolling window this long: spend in the last window plus what everything
    /// open (and the new rental) would cost over the next one must fit the account's budget.
    pub budget_window_hours: NonZeroU32,
    /// SSH keys an account may store in `/v1/ssh-keys`.
    pub max_ssh_keys: NonZeroU32,
    /// Offer watches (`POST /v1/watches`) per account; more get 409 `watch_limit`. Every upstream
    /// offers answer is matched against every watch, so this bounds that work too.
    pub max_watches: NonZeroU32,
    /// A watch fires again for the same offer only after this long (an offer that stays listed
    /// is one event per cooldown, not one per refresh).
    pub watch_cooldown_ms: Millis,
    /// A watch's events per upstream answer: more matching offers than this are one event
    /// listing them (`matched`, and the cheapest of them in `offers`).
    pub watch_events_per_refresh: NonZeroU32,
    /// An account's watch events per upstream answer: past this, each of its watches' matches
    /// are one event per watch.
    pub watch_account_events_per_refresh: NonZeroU32,
    /// An instance the provider reports in a state that never reaches `running` (Vast: exited,
    /// offline, unknown, a failed container create) this long is destroyed and marked failed.
    pub dead_state_grace_ms: Millis,
    /// An instance that has never run and is not `running` this long after its latest (re)start
    /// is destroyed and marked failed (it would bill its disk, or more, forever). An instance that
    /// has ever run is never destroyed for this: a stop→start, a reboot or a host restart passes
    /// through `loading` again (docs/providers.md).
    pub provisioning_timeout_ms: Millis,
    /// A running instance whose host the provider reports `offline`/`unknown` (or that exits)
    /// gets an `instance.unreachable` event; after this long `unreachable_policy` applies.
    pub unreachable_grace_ms: Millis,
    /// What happens to an instance unreachable for `unreachable_grace_ms`: `keep` (it stays,
    /// billed, until its renter or its lifetime ends it: the renter's data is on it) or
    /// `destroy` (destroyed and marked failed, action `unreachable_destroyed`).
    pub unreachable_policy: UnreachablePolicy,
    /// An instance with an idle policy gets `instance.idle` this long before the policy stops or
    /// destroys it (at once when its idle span is shorter).
    pub idle_notice_ms: Millis,
    /// A host's price increase on a running contract (Vast's pending price increases) is
    /// rejected when it raises any part of the price by more than this percentage, accepted
    /// otherwise (the new price applies after the contract's current end). 0 rejects every one.
    pub price_increase_reject_above_pct: f64,
    /// Each reconciler round records a `budget.warning` (once per budget period) for an account
    /// or key that has spent this fraction of a budget.
    pub budget_warn_ratio: f64,
    /// How often the providers' charges (Vast: `GET /api/v0/charges/`) are pulled and compared
    /// with the ledger, per instance (also once shortly after start).
    pub billing_reconcile_interval_ms: Millis,
    /// The drift (sum over instances of |billed − ledger|, USD, per provider) that alerts
    /// (`gpuproxy_billing_drift_alert_usd`).
    pub billing_drift_alert_usd: f64,
    /// Provider calls an account's requests may cause per minute (rental quotes, each try of a
    /// rental by spec, passthrough calls), bursts of a quarter of it; beyond, 429
    /// `upstream_budget_exceeded` with `Retry-After`. One tenant cannot spend the shared
    /// provider key's rate limits for all.
    pub account_upstream_calls_per_minute: NonZeroU32,
    /// One account's changes that may cost money (rent, extend, start, stop, bid) running at
    /// once in a daemon; more wait their turn holding no database connection, so one account's
    /// burst cannot take the connection pool from the others.
    pub max_concurrent_changes_per_account: NonZeroU32,
    /// A rental by `spec` tries at most this many matching offers, cheapest first.
    pub max_offers_tried: NonZeroU32,
    /// A rental by `spec` waits this long for each try to be `running` (a try the provider
    /// reports dead before then is destroyed and the next offer tried); a try still provisioning
    /// at the end is the answer, and the reconciler watches it from there.
    pub failover_wait_ms: Millis,
}

/// `rentals.unreachable_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnreachablePolicy {
    Keep,
    Destroy,
}

impl Default for RentalsConfig {
    fn default() -> Self {
        RentalsConfig {
            price_tolerance: 0.05,
            status_cache_ms: Millis(2_000),
            reconcile_interval_ms: Millis(60_000),
            intent_timeout_ms: Millis(120_000),
            idempotency_ttl_ms: Millis(86_400_000),
            idempotency_lease_ms: Millis(30_000),
            idempotency_max_waiters: nz32(32),
            idempotency_wait_ms: Millis(60_000),
            default_duration_hours: nz32(24),
            default_max_duration_hours: 0.0,
            budget_window_hours: nz32(24),
            max_ssh_keys: nz32(20),
            max_watches: nz32(20),
            watch_cooldown_ms: Millis(3_600_000),
            watch_events_per_refresh: nz32(5),
            watch_account_events_per_refresh: nz32(20),
            dead_state_grace_ms: Millis(120_000),
            provisioning_timeout_ms: Millis(600_000),
            unreachable_grace_ms: Millis(1_800_000),
            unreachable_policy: UnreachablePolicy::Keep,
            idle_notice_ms: Millis(300_000),
            price_increase_reject_above_pct: 10.0,
            budget_warn_ratio: 0.8,
            billing_reconcile_interval_ms: Millis(86_400_000),
            billing_drift_alert_usd: 5.0,
            account_upstream_calls_per_minute: nz32(120),
            max_concurrent_changes_per_account: nz32(4),
            max_offers_tried: nz32(5),
            failover_wait_ms: Millis(90_000),
        }
    }
}

impl RentalsConfig {
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        use super::err;
        if !(self.default_max_duration_hours >= 0.0 && self.default_max_duration_hours <= 8760.0) {
            return Err(err(
                "rentals.default_max_duration_hours",
                "hours from 0 (no default lifetime) to 8760",
            ));
        }
        if !(self.billing_drift_alert_usd.is_finite() && self.billing_drift_alert_usd >= 0.0) {
            return Err(err("rentals.billing_drift_alert_usd", "USD, 0 or more"));
        }
        if !(self.budget_warn_ratio > 0.0 && self.budget_warn_ratio <= 1.0) {
            return Err(err(
                "rentals.budget_warn_ratio",
                "a fraction above 0 and at most 1 (e.g. 0.8 = 80%)",
            ));
        }
        if !(self.price_increase_reject_above_pct.is_finite()
            && (0.0..=1000.0).contains(&self.price_increase_reject_above_pct))
        {
            return Err(err(
                "rentals.price_increase_reject_above_pct",
                "a percentage from 0 (reject every increase) to 1000",
            ));
        }
        if !(self.price_tolerance >= 0.0 && self.price_tolerance < 10.0) {
            return Err(err(
                "rentals.price_tolerance",
                "a fraction from 0 (e.g. 0.05 = 5%)",
            ));
        }
        Ok(())
    }
}
