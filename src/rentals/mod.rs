//! Renting instances: the price check, the budget, the ledger intent written before the provider
//! is called and committed (or failed) after, status reads through a short cache, destroying,
//! and (in `reconcile`) settling what a crash left between the two. `idempotency` makes a
//! retried request replay the first answer.
//!
//! Order of a rental (`rent`): input and SSH keys checked → the offer claimed (one rental of a
//! Vast offer at a time, across daemons: `ledger::claim_offer`) → quote (uncached) → price and
//! bid checks → `ledger::reserve` (budget and instance limit under the account's budget lock,
//! intent row `pending`) → provider create (never retried) → `committed` (status `provisioning`)
//! or `failed` → claim released; a rented Vast offer leaves the offers cache at once. When the
//! provider's answer is lost (timeout, reset), the provider's instance list is searched for our
//! id at once; if that fails too, the intent stays pending and the reconciler settles it.
//!
//! Interruptible (bid) rentals always send their bid (`bid_per_hour`, default the offer's
//! current minimum bid): Vast rents on demand at the full price otherwise. SSH keys go where
//! the provider documents them: io.net's deploy body, or Vast's per-instance attach (`keys`).
//!
//! The parts, one concern a file: `request` (what a rental asks for, checked), `renting` (one
//! rental), `failover` (a rental by spec over several offers), `lifecycle` (status, destroy,
//! stop/start, bids, extend), `resume` (what a retried key's rental became), `ledger` (rows, events, budgets, claims in PostgreSQL), `budget`
//! (budget policies between rentals), `reconcile` (settling with the providers), `billing`
//! (their charges), `idempotency`, `keys`/`sshkeys`, `usage`, `watches`, `audit`. This file holds
//! the [`Rentals`] service itself and what its parts share.

pub mod audit;
pub mod billing;
pub mod budget;
pub mod ending;
pub mod expiry;
pub mod failover;
pub mod idempotency;
pub mod keys;
pub mod ledger;
pub mod lifecycle;
pub mod mounts;
pub mod policies;
pub mod reconcile;
pub mod renting;
pub mod repricing;
pub mod request;
pub mod resume;
pub mod slots;
pub mod sshkeys;
pub mod upkeep;
pub mod usage;
pub mod volumes;
pub mod watches;

use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::accounts::Db;
use crate::accounts::policy::KeyPolicy;
use crate::cache::swr::{SwrCache, Windows};
use crate::config::Config;
use crate::error::{Error, Kind, Refusal, Result, Side};
use crate::metrics::RENTALS_TOTAL;
use crate::providers::{InstanceStatus, Provider, ProviderId, Providers, Ssh};
use ledger::{Status, Transition};
pub use request::{MAX_BID, RentBody, check_bid};

/// Who rents: the account, the API key (per-key spend caps and usage by key) and what the key
/// may rent (`accounts::policy`).
#[derive(Debug, Clone)]
pub struct Renter {
    pub account_id: i64,
    pub key_id: Option<i64>,
    pub policy: Arc<KeyPolicy>,
}

impl Renter {
    /// The caller of a request: its account, its key and the key's policies.
    pub fn of(p: &crate::auth::Principal) -> Renter {
        Renter {
            account_id: p.account_id(),
            key_id: Some(p.key.key_id),
            policy: Arc::new(p.key.policy.clone()),
        }
    }
}

/// The provider's view of an instance, as cached for status reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteView {
    pub status: InstanceStatus,
    pub ssh: Option<Ssh>,
    #[serde(default)]
    pub dead: Option<String>,
    /// Paid up front: what the provider says it cost in all (`ledger::reconcile_paid`).
    #[serde(default)]
    pub paid: Option<crate::providers::Paid>,
    /// The exposed ports as mapped (`ledger::set_endpoints`).
    #[serde(default)]
    pub endpoints: Vec<crate::providers::Endpoint>,
    /// GPU utilisation (percent), where the provider reports it: the idle policy's reading.
    #[serde(default)]
    pub gpu_util: Option<f64>,
}

impl RemoteView {
    pub fn of(r: &crate::providers::RemoteInstance) -> RemoteView {
        RemoteView {
            status: r.status,
            ssh: r.ssh.clone(),
            dead: r.dead.clone(),
            paid: r.paid,
            endpoints: r.endpoints.clone(),
            gpu_util: r.gpu_util,
        }
    }
}

pub struct Rentals {
    db: Arc<Db>,
    providers: Providers,
    config: Arc<Config>,
    /// Provider status per instance, reused for `rentals.status_cache_ms` (single-flight: many
    /// pollers of one instance make one provider call).
    status: Arc<SwrCache<Option<RemoteView>>>,
    /// The offers cache, for the price the caller was shown.
    offers: Arc<SwrCache<Vec<crate::providers::Offer>>>,
    /// Who waits on which `Idempotency-Key` in this daemon.
    idempotency: Arc<idempotency::Local>,
    /// Rentals the provider accepted but the ledger could not record (our id, provider id): the
    /// next reconciler round records them, without waiting for `rentals.intent_timeout_ms`.
    uncommitted: std::sync::Mutex<Vec<(String, String)>>,
    /// Provider calls per account (`rentals.account_upstream_calls_per_minute`).
    upstream_calls: crate::ratelimit::keyed::KeyedLimiter<i64>,
    /// Turns for one account's changes that may cost money
    /// (`rentals.max_concurrent_changes_per_account`).
    pub(crate) slots: slots::Slots,
    /// Failovers after an interruption running in this daemon, by request id (`upkeep`).
    failovers: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Where instance agents' readings are (their presence in Redis): the idle policy reads a
    /// live agent's GPU utilisation before the provider's.
    agents: Option<crate::cache::Redis>,
}

/// A rental whose outcome is not known (the provider's answer, or our record of it, was lost),
/// whatever layer failed: 502 `outcome_unknown` naming the instance, which the reconciler
/// settles. Kept under an `Idempotency-Key`, so a retry never rents twice.
fn outcome_unknown(id: &str, reason: &str, what: &str) -> Error {
    let mut e = Error::new(
        Kind::OutcomeUnknown,
        Side::Upstream,
        format!(
            "{what}; whether instance {id} was created is not known yet: the reconciler will settle it (GET /v1/instances/{id})"
        ),
    );
    e.details = Some(Box::new(
        json!({"instance_id": id, "outcome": "unknown", "reason": reason}),
    ));
    e
}

/// The intent a rental writes: our id, the try it is of a rental by spec, when it expires.
struct Intent<'a> {
    who: Renter,
    id: &'a str,
    request: Option<(&'a str, i32)>,
    expires_at: Option<f64>,
}

/// A fresh random id (UUID v4), ours for an instance.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

use crate::providers::upstream_error;

impl Rentals {
    pub fn new(
        config: Arc<Config>,
        db: Arc<Db>,
        providers: Providers,
        offers: Arc<SwrCache<Vec<crate::providers::Offer>>>,
        redis: Option<crate::cache::Redis>,
    ) -> Arc<Rentals> {
        // the series alerts and dashboards read exist before the first rental
        for p in &providers.list {
            for result in ["created", "refused", "unknown"] {
                counter!(RENTALS_TOTAL, "provider" => p.id().as_str(), "result" => result)
                    .absolute(0);
            }
        }
        let ttl = config.rentals.status_cache_ms.get();
        let calls = u64::from(config.rentals.account_upstream_calls_per_minute.get());
        let upstream_calls = crate::ratelimit::keyed::KeyedLimiter::new(
            crate::ratelimit::Quota::per_minute(calls, (calls / 4).max(1)),
            100_000,
            4_096,
        );
        watches::install(
            db.clone(),
            providers.list.iter().map(|p| p.id()).collect(),
            watches::Caps::of(&config.rentals),
            &offers,
        );
        let slots =
            slots::Slots::new(config.rentals.max_concurrent_changes_per_account.get() as usize);
        Arc::new(Rentals {
            agents: redis.clone(),
            status: SwrCache::new(
                "instance-status",
                redis,
                Windows {
                    ttl,
                    stale_while_revalidate: Duration::ZERO,
                    stale_if_error: ttl * 30,
                },
                100_000,
            ),
            db,
            providers,
            config,
            offers,
            idempotency: Arc::default(),
            uncommitted: Default::default(),
            failovers: Default::default(),
            upstream_calls,
            slots,
        })
    }

    /// Whether an agent of `id` holds a channel to some daemon (its presence in Redis).
    pub(crate) async fn agent_live(&self, id: &str) -> bool {
        match self.agents.as_ref() {
            Some(r) => crate::agents::presence::holder(r, id).await.is_some(),
            None => false,
        }
    }

    /// The GPU utilisation a live agent of `id` last reported (percent, its busiest GPU).
    pub(crate) async fn agent_gpu_util(&self, id: &str) -> Option<f64> {
        crate::agents::presence::gpu_util(self.agents.as_ref()?, id).await
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    pub(super) fn remember_uncommitted(&self, id: &str, provider_id: &str) {
        self.uncommitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id.to_owned(), provider_id.to_owned()));
    }

    /// Records the rentals the ledger missed (see `uncommitted`); those it still cannot record
    /// wait for the next round. Returns how many were recorded.
    pub(crate) async fn commit_missed(&self) -> usize {
        let missed =
            std::mem::take(&mut *self.uncommitted.lock().unwrap_or_else(|p| p.into_inner()));
        let mut done = 0;
        for (id, provider_id) in missed {
            let detail =
                format!("provider instance {provider_id} (recorded once the ledger was back)");
            match ledger::transition(
                &self.db,
                &id,
                Transition::new(&[Status::Pending], Status::Provisioning, "adopted")
                    .provider_id(Some(&provider_id))
                    .detail(&detail),
            )
            .await
            {
                Ok(_) => done += 1,
                Err(_) => self.remember_uncommitted(&id, &provider_id),
            }
        }
        done
    }

    /// Takes one provider call from the account's budget, or refuses (429 with when to retry).
    pub fn upstream_call(&self, account_id: i64) -> Result<()> {
        match self.upstream_calls.check(&account_id) {
            crate::ratelimit::Decision::Limited { retry_after } => {
                let secs = crate::ratelimit::ceil_secs(retry_after);
                Err(Error::refused(
                    Refusal::UpstreamBudget,
                    format!(
                        "this account's provider calls are spent for now (rentals.account_upstream_calls_per_minute); retry in {secs} s"
                    ),
                    Some(json!({"retry_after_s": secs})),
                ))
            }
            _ => Ok(()),
        }
    }

    pub fn idempotency(&self) -> &Arc<idempotency::Local> {
        &self.idempotency
    }

    pub(super) fn provider(&self, p: ProviderId) -> Result<&Arc<dyn Provider>> {
        self.providers.get(p).ok_or_else(|| {
            Error::refused(
                Refusal::ProviderDisabled,
                format!("provider `{}` is not enabled here", p.as_str()),
                None,
            )
        })
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }
}
