//! Renting instances: the price check, the budget, the ledger intent written before the provider
//! is called and committed (or failed) after, status reads through a short cache, destroying,
//! and (in `reconcile`) settling what a crash left between the two. `idempotency` makes a
//! retried request replay the first answer.
//!
//! Order of a rental (`rent`): input and SSH keys checked → the offer claimed (one rental of a
//! Vast offer at a time, across daemons: `ledger::claim_offer`) → quote (uncached) → price and
//! bid checks → `ledger::reserve` (budget and instance limit under the account's row lock,
//! intent row `pending`) → provider create (never retried) → `committed` (status `provisioning`)
//! or `failed` → claim released; a rented Vast offer leaves the offers cache at once. When the
//! provider's answer is lost (timeout, reset), the provider's instance list is searched for our
//! id at once; if that fails too, the intent stays pending and the reconciler settles it.
//!
//! Interruptible (bid) rentals always send their bid (`bid_per_hour`, default the offer's
//! current minimum bid): Vast rents on demand at the full price otherwise. SSH keys go where
//! the provider documents them: io.net's deploy body, or Vast's per-instance attach (`keys`).

pub mod audit;
pub mod billing;
pub mod budget;
pub mod failover;
pub mod idempotency;
pub mod keys;
pub mod ledger;
pub mod reconcile;
pub mod sshkeys;
pub mod usage;
pub mod watches;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::accounts::Db;
use crate::cache::swr::{SwrCache, Windows};
use crate::config::Config;
use crate::error::{Error, Kind, Refusal, Result, Side};
use crate::metrics::RENTALS_TOTAL;
use crate::providers::{
    InstanceStatus, Provider, ProviderId, Providers, RentRequest, Ssh, UpstreamError,
};
use ledger::{InstanceRow, Status, Transition};

/// `POST /v1/instances` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RentBody {
    /// One offer (from `GET /v1/offers`) ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub offer_id: String,
    /// ... or what any acceptable offer is: the matching offers are tried in order (failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<failover::Spec>,
    pub image: String,
    pub disk_gb: u32,
    pub label: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// One OpenSSH public key given inline (it is not stored in `/v1/ssh-keys`).
    pub ssh_public_key: Option<String>,
    /// Keys of the account's `/v1/ssh-keys` the instance gets.
    #[serde(default)]
    pub ssh_key_ids: Vec<String>,
    /// io.net only (its deployments run for a fixed time).
    pub duration_hours: Option<u32>,
    pub max_price_per_hour: Option<f64>,
    /// Interruptible offers (`vastai:<id>:bid`) only: the bid, compute USD/h (the instance's
    /// price is the bid plus its storage). Default: the offer's current minimum bid.
    pub bid_per_hour: Option<f64>,
    /// The instance is destroyed this long after the rental (hours, fractions allowed) ...
    pub max_duration_hours: Option<f64>,
    /// ... or at this time (RFC 3339). Default: `rentals.default_max_duration_hours` (0: none).
    pub expires_at: Option<String>,
}

/// The longest lifetime a rental may ask for (a year).
const MAX_LIFETIME_HOURS: f64 = 8760.0;

/// Vast's accepted bid range (USD/h).
pub const MAX_BID: f64 = 128.0;

/// Checks a bid (`field` names it in the error).
pub fn check_bid(field: &str, bid: f64, cap: Option<f64>) -> Result<()> {
    let cap = cap.unwrap_or(MAX_BID).min(MAX_BID);
    if !(bid.is_finite() && bid >= 0.001 && bid <= cap) {
        return Err(Error::bad_request(format!(
            "invalid `{field}`: a bid of at least 0.001 and at most {cap} USD/h"
        )));
    }
    Ok(())
}

impl RentBody {
    /// When the instance is to be destroyed (epoch seconds), from the body or the default.
    fn expiry(&self, now: f64, default_hours: f64) -> Result<Option<f64>> {
        if let Some(t) = &self.expires_at {
            let at = humantime::parse_rfc3339_weak(t)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64())
                .ok_or_else(|| {
                    Error::bad_request(
                        "invalid `expires_at`: an RFC 3339 time, e.g. 2026-12-24T18:00:00Z",
                    )
                })?;
            if at <= now || at > now + MAX_LIFETIME_HOURS * 3600.0 {
                return Err(Error::bad_request(
                    "invalid `expires_at`: in the future, at most a year from now",
                ));
            }
            return Ok(Some(at));
        }
        let hours = self.max_duration_hours.unwrap_or(default_hours);
        Ok((hours > 0.0).then_some(now + hours * 3600.0))
    }

    /// The offer's provider and the provider's part of its id, the rest of the body checked.
    fn validate(&self) -> Result<(ProviderId, &str)> {
        let bad = |field: &str, why: &str| Error::bad_request(format!("invalid `{field}`: {why}"));
        let (p, local) = self
            .offer_id
            .split_once(':')
            .and_then(|(p, l)| Some((ProviderId::parse(p)?, l)))
            .filter(|(_, l)| !l.is_empty() && l.chars().count() <= 128)
            .ok_or_else(|| {
                bad(
                    "offer_id",
                    "expected `vastai:<id>`, `vastai:<id>:bid` or `ionet:<cards>x<id>@<location>` from GET /v1/offers",
                )
            })?;
        self.check_common()?;
        if let Some(bid) = self.bid_per_hour {
            if !local.ends_with(crate::providers::vastai::BID_SUFFIX) {
                return Err(bad(
                    "bid_per_hour",
                    "only for interruptible offers (ids ending in `:bid`, from GET /v1/offers?interruptible=true)",
                ));
            }
            check_bid("bid_per_hour", bid, self.max_price_per_hour)?;
        }
        Ok((p, local))
    }

    /// Everything but the offer: image, disk, env, keys, durations, the price ceiling.
    fn check_common(&self) -> Result<()> {
        let bad = |field: &str, why: &str| Error::bad_request(format!("invalid `{field}`: {why}"));
        if self.image.trim().is_empty() || self.image.chars().count() > 512 {
            return Err(bad(
                "image",
                "a container image reference of 1 to 512 characters",
            ));
        }
        if !(8..=100_000).contains(&self.disk_gb) {
            return Err(bad("disk_gb", "between 8 and 100000"));
        }
        if self.label.as_ref().is_some_and(|l| l.chars().count() > 256) {
            return Err(bad("label", "at most 256 characters"));
        }
        if self.env.len() > 64
            || self
                .env
                .iter()
                .any(|(k, v)| k.is_empty() || k.chars().count() > 128 || v.chars().count() > 4096)
        {
            return Err(bad(
                "env",
                "at most 64 variables, names of 1 to 128 and values up to 4096 characters",
            ));
        }
        if let Some(k) = &self.ssh_public_key {
            sshkeys::parse(k).map_err(|why| bad("ssh_public_key", &why))?;
        }
        if self.ssh_key_ids.len() > 64
            || self
                .ssh_key_ids
                .iter()
                .any(|k| k.is_empty() || k.chars().count() > 64)
        {
            return Err(bad("ssh_key_ids", "at most 64 ids from GET /v1/ssh-keys"));
        }
        if self
            .duration_hours
            .is_some_and(|h| !(1..=8760).contains(&h))
        {
            return Err(bad("duration_hours", "between 1 and 8760"));
        }
        if self
            .max_price_per_hour
            .is_some_and(|m| !(m.is_finite() && m > 0.0))
        {
            return Err(bad("max_price_per_hour", "a price greater than 0"));
        }
        match (self.max_duration_hours, &self.expires_at) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "max_duration_hours",
                    "give either `max_duration_hours` or `expires_at`, not both",
                ));
            }
            (Some(h), None) if !(h.is_finite() && h > 0.0 && h <= MAX_LIFETIME_HOURS) => {
                return Err(bad(
                    "max_duration_hours",
                    "more than 0 and at most 8760 hours",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Who rents: the account, and the API key (per-key spend caps and usage by key).
#[derive(Debug, Clone, Copy)]
pub struct Renter {
    pub account_id: i64,
    pub key_id: Option<i64>,
}

/// The provider's view of an instance, as cached for status reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteView {
    pub status: InstanceStatus,
    pub ssh: Option<Ssh>,
    #[serde(default)]
    pub dead: Option<String>,
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
            for result in ["created", "refused", "failed", "unknown"] {
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
            &offers,
        );
        Arc::new(Rentals {
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
            upstream_calls,
        })
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    fn remember_uncommitted(&self, id: &str, provider_id: &str) {
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

    fn provider(&self, p: ProviderId) -> Result<&Arc<dyn Provider>> {
        self.providers.get(p).ok_or_else(|| {
            Error::refused(
                Refusal::ProviderDisabled,
                format!("provider `{}` is not enabled here", p.as_str()),
                None,
            )
        })
    }

    /// The price the caller was shown for `offer_id`, from the in-process offers cache.
    fn shown_price(&self, offer_id: &str) -> Option<f64> {
        self.offers.find(|offers| {
            offers
                .iter()
                .find(|o| o.id == offer_id)
                .map(|o| o.price_per_hour)
        })
    }

    /// `POST /v1/instances`: one offer (`offer_id`), or the offers matching a `spec` in turn.
    pub async fn rent(&self, who: Renter, body: &RentBody) -> Result<InstanceRow> {
        match (&body.spec, body.offer_id.is_empty()) {
            (Some(spec), true) => self.rent_by_spec(who, body, spec).await,
            (None, false) => self.rent_offer(who, body, &new_id(), None).await,
            (Some(_), false) => Err(Error::bad_request(
                "invalid `spec`: give either `offer_id` or `spec`, not both",
            )),
            (None, true) => Err(Error::bad_request(
                "invalid `offer_id`: give `offer_id` (from GET /v1/offers) or a `spec` to rent by",
            )),
        }
    }

    /// Rents one offer under our id `id`; `request` (request id, try number) when it is a try of
    /// a rental by spec.
    async fn rent_offer(
        &self,
        who: Renter,
        body: &RentBody,
        id: &str,
        request: Option<(&str, i32)>,
    ) -> Result<InstanceRow> {
        let account_id = who.account_id;
        let (pid, local) = body.validate()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let expires_at = body.expiry(now, self.config.rentals.default_max_duration_hours)?;
        let provider = self.provider(pid)?.clone();
        provider
            .check_offer_id(local)
            .map_err(|why| Error::bad_request(format!("invalid `offer_id`: {why}")))?;
        if let Some((field, why)) = provider.launch_refusal(&body.image, &body.env) {
            return Err(Error::bad_request(format!(
                "invalid `{field}`: {}: {why}",
                pid.as_str()
            )));
        }
        let keys = sshkeys::for_rental(
            &self.db,
            account_id,
            &body.ssh_key_ids,
            body.ssh_public_key.as_deref(),
        )
        .await?;
        // the budget and the instance limit before any provider call (the quote is upstream
        // work: a spent account or one at its limit costs none), at the price it was shown;
        // `reserve` checks again, atomically, at the quoted price
        let spend = ledger::Spend {
            account_id,
            key_id: who.key_id,
            window_hours: self.config.rentals.budget_window_hours.get(),
            extra_per_hour: self.shown_price(&body.offer_id).unwrap_or(0.0),
            new_instance: true,
            replacing: None,
        };
        self.db
            .transaction(async |tx| ledger::budget_check(tx, &spend).await)
            .await?;
        // one rental of an exclusive offer at a time, whichever daemon takes it
        let claim = provider.exclusive_offers().then(|| {
            local
                .strip_suffix(crate::providers::vastai::BID_SUFFIX)
                .unwrap_or(local)
        });
        if let Some(offer) = claim
            && !ledger::claim_offer(
                &self.db,
                pid.as_str(),
                offer,
                id,
                self.config.rentals.intent_timeout_ms.ms(),
            )
            .await?
        {
            counter!(RENTALS_TOTAL, "provider" => pid.as_str(), "result" => "refused").increment(1);
            return Err(Error::refused(
                Refusal::OfferUnavailable,
                format!(
                    "offer {} is being rented or is rented already",
                    body.offer_id
                ),
                Some(json!({"offer_id": body.offer_id})),
            ));
        }
        let out = self
            .rent_claimed(
                body,
                Intent {
                    who,
                    id,
                    request,
                    expires_at,
                },
                pid,
                local,
                &provider,
                &keys,
            )
            .await;
        if let Some(offer) = claim {
            if let Err(e) = ledger::release_offer(&self.db, pid.as_str(), offer, id).await {
                tracing::warn!(offer, error = %e, "offer claim not released; it expires by itself");
            }
            if out.is_ok() {
                self.drop_rented_offer(&format!("{}:{offer}", pid.as_str()))
                    .await;
            }
        }
        let row = out?;
        if !keys.is_empty() {
            if provider.ssh_keys_at_create() {
                ledger::keys_attached_at_create(&self.db, &row.id).await?;
            } else {
                keys::spawn_attach(self.db.clone(), provider, row.clone(), self.config.clone());
            }
        }
        Ok(row)
    }

    /// Takes a rented (exclusive) offer out of every cached answer, on demand and bid alike, in
    /// process and in Redis: the next page never shows it.
    async fn drop_rented_offer(&self, offer_id: &str) {
        let bid = format!("{offer_id}{}", crate::providers::vastai::BID_SUFFIX);
        let gone = |o: &crate::providers::Offer| o.id == offer_id || o.id == bid;
        self.offers
            .edit(|list: &Vec<crate::providers::Offer>| {
                list.iter()
                    .any(gone)
                    .then(|| list.iter().filter(|o| !gone(o)).cloned().collect())
            })
            .await;
    }

    async fn rent_claimed(
        &self,
        body: &RentBody,
        intent: Intent<'_>,
        pid: ProviderId,
        local: &str,
        provider: &Arc<dyn Provider>,
        keys: &[(String, String, String)],
    ) -> Result<InstanceRow> {
        let (id, who) = (intent.id, intent.who);
        let count = |result: &'static str| {
            counter!(RENTALS_TOTAL, "provider" => pid.as_str(), "result" => result).increment(1);
        };
        self.upstream_call(who.account_id)?;
        let quote = provider
            .quote(local, body.disk_gb)
            .await
            .map_err(|e| upstream_error(pid, &e))?
            .filter(|q| q.available)
            .ok_or_else(|| {
                count("refused");
                Error::refused(
                    Refusal::OfferUnavailable,
                    format!("offer {} is no longer available", body.offer_id),
                    Some(json!({"offer_id": body.offer_id})),
                )
            })?;
        // a provider that sells paid time prices the whole of it, fees included (io.net): that
        // is the rental's price, budgeted and recorded, not the catalogue's hourly list price
        let hours = body
            .duration_hours
            .unwrap_or(self.config.rentals.default_duration_hours.get());
        let mut quote = quote;
        let mut priced = None;
        if provider.sells_time()
            && let Some(t) = provider
                .quote_time(local, hours)
                .await
                .map_err(|e| upstream_error(pid, &e))?
        {
            quote.price_per_hour = t.per_hour();
            priced = Some(t.describe());
        }
        let (bid, price) = self.terms(body, &quote).inspect_err(|_| count("refused"))?;
        let row = ledger::reserve(
            &self.db,
            &ledger::NewInstance {
                id,
                account_id: who.account_id,
                provider: pid.as_str(),
                offer_id: &body.offer_id,
                gpu_model: &quote.gpu_model,
                gpu_count: quote.gpu_count as i32,
                price_per_hour: price,
                image: &body.image,
                disk_gb: body.disk_gb as i32,
                label: body.label.as_deref(),
                bid_per_hour: bid,
                storage_per_hour: quote.storage_per_hour,
                ssh_keys: keys,
                budget_window_hours: self.config.rentals.budget_window_hours.get(),
                expires_at: intent.expires_at,
                request: intent.request,
                api_key_id: who.key_id,
                terms: priced.as_deref(),
                minimum_hours: provider.minimum_billed_hours(),
            },
        )
        .await?;
        let req = RentRequest {
            our_id: id.to_owned(),
            offer: local.to_owned(),
            image: body.image.clone(),
            disk_gb: body.disk_gb,
            env: body.env.clone(),
            ssh_keys: keys
                .iter()
                .map(|(n, k, _)| (n.clone(), k.clone()))
                .collect(),
            bid_per_hour: bid,
            duration_hours: hours,
            gpu_count: quote.gpu_count,
        };
        match provider.create(&req).await {
            Ok(provider_id) => {
                count("created");
                // the provider has it: a failure to record that must not read as "nothing rented"
                self.commit(&row, &provider_id, "committed")
                    .await
                    .map_err(|e| {
                        tracing::error!(instance = %id, provider_id, error = %e, "rented, but the ledger could not record it; the next reconciler round records it");
                        self.remember_uncommitted(id, &provider_id);
                        outcome_unknown(id, "ledger_unavailable", &format!("the provider created instance {provider_id} but the ledger could not record it ({})", e.message))
                    })
            }
            // nothing was created: the provider refused, or the call never left
            Err(
                e @ (UpstreamError::Status {
                    status: 400..=499, ..
                }
                | UpstreamError::Auth { .. }
                | UpstreamError::Connect(_)
                | UpstreamError::CircuitOpen
                | UpstreamError::BackingOff
                | UpstreamError::RateLimited
                | UpstreamError::Disabled(_)),
            ) => {
                count("refused");
                self.fail_intent(id, &e).await?;
                Err(match e {
                    UpstreamError::Status {
                        status: 404 | 409 | 410,
                        ..
                    } => Error::refused(
                        Refusal::OfferUnavailable,
                        format!("the provider refused: {e}"),
                        Some(json!({"offer_id": body.offer_id})),
                    ),
                    e => upstream_error(pid, &e),
                })
            }
            // the answer was lost: look for our id at the provider now
            Err(e) => {
                tracing::warn!(instance = %id, provider = pid.as_str(), error = %e, "rental outcome unknown; looking it up");
                match reconcile::find_ours(provider.as_ref(), id).await {
                    Ok(Some(remote)) => {
                        count("created");
                        self.commit(&row, &remote.provider_id, "adopted")
                            .await
                            .map_err(|e| {
                                self.remember_uncommitted(id, &remote.provider_id);
                                outcome_unknown(id, "ledger_unavailable", &e.message)
                            })
                    }
                    Ok(None) => {
                        count("failed");
                        self.fail_intent(id, &e).await?;
                        Err(upstream_error(pid, &e))
                    }
                    Err(_) => {
                        count("unknown");
                        Err(outcome_unknown(
                            id,
                            e.code(),
                            &upstream_error(pid, &e).message,
                        ))
                    }
                }
            }
        }
    }

    /// Step 2 of a rental: the terms it rents at, from the fresh quote: the bid (interruptible
    /// offers: the one asked for, or the current minimum) and the price, checked against the
    /// caller's ceiling and the price it was shown.
    fn terms(
        &self,
        body: &RentBody,
        quote: &crate::providers::Quote,
    ) -> Result<(Option<f64>, f64)> {
        // an interruptible offer rents at a bid: the one asked for, or the current minimum
        let bid = match quote.min_bid {
            Some(min) => {
                let bid = body.bid_per_hour.unwrap_or(min);
                if bid < min {
                    return Err(Error::refused(
                        Refusal::BidTooLow,
                        format!(
                            "the minimum bid for offer {} is {min:.4} USD/h now; `bid_per_hour` {bid:.4} would be outbid at once",
                            body.offer_id
                        ),
                        Some(json!({"min_bid_per_hour": min, "bid_per_hour": bid})),
                    ));
                }
                Some(bid)
            }
            None => None,
        };
        let price = match bid {
            Some(b) => crate::providers::model::round_to(b + quote.storage_per_hour, 6),
            None => quote.price_per_hour,
        };
        if let Some(most) = quote.disk_gb
            && f64::from(body.disk_gb) > most
        {
            return Err(Error::bad_request(format!(
                "invalid `disk_gb`: offer {} has at most {most} GB of disk",
                body.offer_id
            )));
        }
        if let Some(max) = body.max_price_per_hour
            && price > max
        {
            return Err(Error::refused(
                Refusal::PriceChanged,
                format!(
                    "offer {} costs {:.4} USD/h now, above max_price_per_hour {:.4}",
                    body.offer_id, price, max
                ),
                Some(json!({"current_price_per_hour": price, "max_price_per_hour": max})),
            ));
        }
        // the shown price is checked for on-demand rentals; a bid is the caller's own price
        if bid.is_none()
            && let Some(shown) = self.shown_price(&body.offer_id)
            && quote.price_per_hour > shown * (1.0 + self.config.rentals.price_tolerance)
        {
            return Err(Error::refused(
                Refusal::PriceChanged,
                format!(
                    "offer {} costs {:.4} USD/h now, quoted {:.4} (tolerance {}%)",
                    body.offer_id,
                    quote.price_per_hour,
                    shown,
                    self.config.rentals.price_tolerance * 100.0
                ),
                Some(
                    json!({"current_price_per_hour": quote.price_per_hour, "quoted_price_per_hour": shown}),
                ),
            ));
        }
        Ok((bid, price))
    }

    /// `PUT /v1/instances/{id}/bid`: raises (or lowers) an interruptible instance's bid at the
    /// provider, then in the ledger (budget checked first); an outbid instance resumes once its
    /// bid is high enough again.
    pub async fn set_bid(&self, account_id: i64, id: &str, bid: f64) -> Result<InstanceRow> {
        check_bid("bid_per_hour", bid, None)?;
        let row = ledger::get(&self.db, account_id, id)
            .await?
            .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, format!("no instance {id}")))?;
        if row.bid_per_hour.is_none() {
            return Err(Error::refused(
                Refusal::NotInterruptible,
                "this instance was rented on demand: it has no bid",
                Some(json!({"instance_id": id})),
            ));
        }
        let pid = match (row.status, row.provider_instance_id.clone()) {
            (Status::Provisioning | Status::Running | Status::Interrupted, Some(pid)) => pid,
            (status, _) => {
                let status = status.as_str();
                return Err(Error::refused(
                    Refusal::InstanceNotOpen,
                    format!("the instance is {status}: its bid cannot change now"),
                    Some(json!({"instance_id": id, "status": status})),
                ));
            }
        };
        let p = ProviderId::parse(&row.provider)
            .ok_or_else(|| Error::internal(std::io::Error::other("bad provider in ledger")))?;
        let provider = self.provider(p)?.clone();
        // the budget first: a bid the account cannot pay never reaches the provider
        self.fits_budget(&row, bid + row.storage_per_hour, Some(&row.id))
            .await?;
        provider
            .set_bid(&pid, bid)
            .await
            .map_err(|e| upstream_error(p, &e))?;
        self.status.forget(&format!("{}:{pid}", row.provider)).await;
        let row = ledger::set_bid(
            &self.db,
            &row,
            bid,
            self.config.rentals.budget_window_hours.get(),
        )
        .await?;
        self.refresh(row).await
    }
    /// Marks a pending intent failed: the provider created nothing for it.
    async fn fail_intent(&self, id: &str, why: &UpstreamError) -> Result<()> {
        let why = why.to_string();
        ledger::transition(
            &self.db,
            id,
            Transition::new(&[Status::Pending], Status::Failed, "failed").detail(&why),
        )
        .await?;
        Ok(())
    }

    async fn commit(
        &self,
        row: &InstanceRow,
        provider_id: &str,
        kind: &str,
    ) -> Result<InstanceRow> {
        let detail = format!("provider instance {provider_id}");
        ledger::transition(
            &self.db,
            &row.id,
            Transition::new(
                &[Status::Pending, Status::Failed],
                Status::Provisioning,
                kind,
            )
            .provider_id(Some(provider_id))
            .detail(&detail),
        )
        .await?
        .ok_or_else(|| Error::internal(std::io::Error::other("intent vanished before commit")))
    }

    /// An instance of the caller's (404 for anyone else's), its status refreshed from the
    /// provider through the status cache.
    pub async fn get(&self, account_id: i64, id: &str) -> Result<InstanceRow> {
        let row = ledger::get(&self.db, account_id, id)
            .await?
            .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, format!("no instance {id}")))?;
        self.refresh(row).await
    }

    /// Brings an open row up to date with the provider (cached), recording any change.
    pub async fn refresh(&self, row: InstanceRow) -> Result<InstanceRow> {
        let (Some(pid), true) = (
            row.provider_instance_id.clone(),
            // the provider has it (pending has no provider id; ended rows are settled)
            row.status.is_open() && row.status != Status::Pending,
        ) else {
            return Ok(row);
        };
        let Some(p) = ProviderId::parse(&row.provider)
            .and_then(|p| self.providers.get(p))
            .cloned()
        else {
            return Ok(row);
        };
        let key = format!("{}:{pid}", row.provider);
        let fetch_pid = pid.clone();
        let view = match self
            .status
            .get(&key, move || async move {
                Ok(p.instance(&fetch_pid).await?.map(|r| RemoteView {
                    status: r.status,
                    ssh: r.ssh,
                    dead: r.dead,
                }))
            })
            .await
        {
            // a read that started before the row last changed (the reconciler saw something
            // newer meanwhile) cannot supersede it: it would roll the status back
            Ok(l) if (l.entry.fetched_at_ms as f64) / 1000.0 < row.updated_at => return Ok(row),
            Ok(l) => l.entry.value.clone(),
            // the provider is failing: show what the ledger has
            Err(_) => return Ok(row),
        };
        // a status read that finds nothing ends nothing on its own: the reconciler, which also
        // checks the key's account and the provider's list, settles it (docs/providers.md)
        let Some(view) = view else {
            return Ok(row);
        };
        self.apply(row, &view, "status").await
    }

    /// Records what the provider reports about an open row: a dead state, a status change (an
    /// instance the renter stopped stays `stopped`, not `interrupted`), new SSH details.
    pub async fn apply(
        &self,
        row: InstanceRow,
        view: &RemoteView,
        kind: &str,
    ) -> Result<InstanceRow> {
        if view.dead != row.dead_reason && view.status.is_open() {
            ledger::set_dead(&self.db, &row, view.dead.as_deref()).await?;
        }
        let status = match view.status {
            InstanceStatus::Interrupted if row.status == Status::Stopped => InstanceStatus::Stopped,
            s => s,
        };
        let ssh = view.ssh.clone();
        let status = Status::from(status);
        if status == row.status && (ssh.is_none() || ssh == row.ssh) {
            return Ok(row);
        }
        let kind = match status {
            Status::Interrupted => "interrupted",
            _ => kind,
        };
        let from = [row.status];
        Ok(ledger::transition(
            &self.db,
            &row.id,
            Transition::new(&from, status, kind).ssh(ssh.as_ref()),
        )
        .await?
        .unwrap_or(row))
    }

    /// Destroys an instance of the caller's. Destroying one already ended answers its state.
    pub async fn destroy(&self, account_id: i64, id: &str) -> Result<InstanceRow> {
        let row = ledger::get(&self.db, account_id, id)
            .await?
            .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, format!("no instance {id}")))?;
        if !row.is_open() {
            return Ok(row);
        }
        let Some(pid) = row.provider_instance_id.clone() else {
            return Err(Error::refused(
                Refusal::InstancePending,
                "the instance is still being created; retry in a few seconds",
                Some(json!({"instance_id": id})),
            ));
        };
        let p = ProviderId::parse(&row.provider)
            .ok_or_else(|| Error::internal(std::io::Error::other("bad provider in ledger")))?;
        let provider = self.provider(p)?.clone();
        let from = [row.status];
        let row = ledger::transition(
            &self.db,
            id,
            Transition::new(&from, Status::Terminating, "destroy_requested"),
        )
        .await?
        .unwrap_or(row);
        provider
            .destroy(&pid)
            .await
            .map_err(|e| upstream_error(p, &e))?;
        let gone = matches!(
            provider.instance(&pid).await,
            Ok(None)
                | Ok(Some(crate::providers::RemoteInstance {
                    status: InstanceStatus::Terminated,
                    ..
                }))
        );
        self.status.forget(&format!("{}:{pid}", row.provider)).await;
        if gone {
            Ok(ledger::transition(
                &self.db,
                id,
                Transition::new(&[Status::Terminating], Status::Terminated, "terminated"),
            )
            .await?
            .unwrap_or(row))
        } else {
            Ok(row)
        }
    }

    pub async fn list(
        &self,
        account_id: i64,
        before: Option<f64>,
        limit: i64,
    ) -> Result<Vec<InstanceRow>> {
        ledger::list(&self.db, account_id, before, limit).await
    }

    /// A start or stop asked through passthrough (`{"state": "running"|"stopped"}` on the
    /// caller's instance `provider_instance_id`), checked before it is forwarded: a start must
    /// fit the budget (the instance bills in full again). Returns the row, for
    /// [`Rentals::record_state_change`] once the provider has done it.
    pub async fn check_state_change(
        &self,
        account_id: i64,
        provider: &str,
        provider_instance_id: &str,
        state: &str,
    ) -> Result<InstanceRow> {
        if !matches!(state, "running" | "stopped") {
            return Err(Error::bad_request(
                "invalid `state`: `running` or `stopped`",
            ));
        }
        let row = ledger::by_provider_id(&self.db, account_id, provider, provider_instance_id)
            .await?
            .filter(InstanceRow::is_open)
            .ok_or_else(|| {
                Error::refused(
                    Refusal::InstanceNotOpen,
                    "the instance has ended: its state cannot change",
                    None,
                )
            })?;
        if state == "running" {
            self.start_fits_budget(&row).await?;
        }
        Ok(row)
    }

    /// A start bills the instance in full again: it must fit the budget first.
    async fn start_fits_budget(&self, row: &InstanceRow) -> Result<()> {
        self.fits_budget(row, row.price_per_hour, Some(&row.id))
            .await
    }

    /// Checks that `extra_per_hour` more for `row` (replacing its current rate, or on top of
    /// it) fits every budget of its account and of the key that rented it.
    async fn fits_budget(
        &self,
        row: &InstanceRow,
        extra_per_hour: f64,
        replacing: Option<&str>,
    ) -> Result<()> {
        let spend = ledger::Spend {
            account_id: row.account_id,
            key_id: row.api_key_id,
            window_hours: self.config.rentals.budget_window_hours.get(),
            extra_per_hour,
            new_instance: false,
            replacing,
        };
        self.db
            .transaction(async |tx| ledger::budget_check(tx, &spend).await)
            .await
    }

    /// The caller's instance while the provider holds it (not pending, not ending), with its
    /// provider id and client; `what` says, in the 409, what cannot be done otherwise.
    async fn live(
        &self,
        account_id: i64,
        id: &str,
        what: &str,
    ) -> Result<(InstanceRow, String, ProviderId, Arc<dyn Provider>)> {
        let row = ledger::get(&self.db, account_id, id)
            .await?
            .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, format!("no instance {id}")))?;
        let pid = match (&row.provider_instance_id, row.is_open()) {
            (Some(pid), true) if row.status != Status::Terminating => pid.clone(),
            _ => {
                return Err(Error::refused(
                    Refusal::InstanceNotOpen,
                    format!("the instance is {}: {what}", row.status.as_str()),
                    Some(json!({"instance_id": id, "status": row.status.as_str()})),
                ));
            }
        };
        let p = ProviderId::parse(&row.provider)
            .ok_or_else(|| Error::internal(std::io::Error::other("bad provider in ledger")))?;
        let provider = self.provider(p)?.clone();
        Ok((row, pid, p, provider))
    }

    /// `POST /v1/instances/{id}/extend {"hours"}`: moves the expiry (when the rental has one) and,
    /// where the provider sells paid time (io.net), buys the hours: that spend is checked against
    /// the budget before the provider is asked, and recorded.
    pub async fn extend(&self, account_id: i64, id: &str, hours: u32) -> Result<InstanceRow> {
        if !(1..=8760).contains(&hours) {
            return Err(Error::bad_request("invalid `hours`: 1 to 8760"));
        }
        let (row, pid, p, provider) = self.live(account_id, id, "it cannot be extended").await?;
        let window = self.config.rentals.budget_window_hours.get();
        let cost = row.price_per_hour * f64::from(hours);
        // the spend must fit the budget before the provider is asked for it
        if provider.sells_time() {
            self.fits_budget(&row, cost / f64::from(window), None)
                .await?;
            provider
                .extend(&pid, hours)
                .await
                .map_err(|e| upstream_error(p, &e))?;
            ledger::extend(&self.db, &row, hours, cost).await
        } else if row.expires_at.is_some() {
            ledger::extend(&self.db, &row, hours, 0.0).await
        } else {
            Err(Error::refused(
                Refusal::InstanceNotOpen,
                "the instance has no lifetime to extend (it runs until destroyed)",
                Some(json!({"instance_id": id})),
            ))
        }
    }

    /// `POST /v1/instances/{id}/stop|start`: through the provider and the ledger (a stopped
    /// instance bills its storage only; a start is checked against the budget first).
    pub async fn set_running(
        &self,
        account_id: i64,
        id: &str,
        running: bool,
    ) -> Result<InstanceRow> {
        let (row, pid, p, provider) = self
            .live(account_id, id, "it cannot be stopped or started now")
            .await?;
        if running {
            self.start_fits_budget(&row).await?;
        }
        match provider.set_running(&pid, running).await {
            Ok(()) => {}
            Err(UpstreamError::Disabled(why)) => {
                return Err(Error::refused(
                    Refusal::NotStoppable,
                    format!("{}: {why}", row.provider),
                    Some(json!({"instance_id": id, "provider": row.provider})),
                ));
            }
            Err(e) => return Err(upstream_error(p, &e)),
        }
        let state = if running { "running" } else { "stopped" };
        self.record_state_change(&row, state, "asked through the API")
            .await?;
        Ok(ledger::get(&self.db, account_id, id).await?.unwrap_or(row))
    }

    /// Records a start or stop the provider accepted: a stopped instance bills its storage only.
    pub async fn record_state_change(
        &self,
        row: &InstanceRow,
        state: &str,
        how: &str,
    ) -> Result<()> {
        let (to, kind) = if state == "stopped" {
            (Status::Stopped, "stopped")
        } else {
            (Status::Provisioning, "started")
        };
        if let Some(pid) = &row.provider_instance_id {
            self.status.forget(&format!("{}:{pid}", row.provider)).await;
        }
        ledger::transition(
            &self.db,
            &row.id,
            Transition::new(&[row.status], to, kind).detail(how),
        )
        .await?;
        Ok(())
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }
}
