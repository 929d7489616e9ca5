//! Renting by `spec`, with failover: the offers matching the spec are ranked (price, then
//! reliability) and tried in order, across providers, up to `rentals.max_offers_tried`.
//!
//! Every try is an instance row of its own (its intent), numbered under one `rental_request_id`:
//! a try that fails before its intent could be reserved (the offer is gone, its price moved,
//! another rental holds it) is recorded as an intent that failed at once. A try the provider
//! created is watched until it runs (at most `rentals.failover_wait_ms`); if the provider reports
//! it dead first (a state that never runs, for `rentals.dead_state_grace_ms`) it is destroyed and
//! marked failed before the next offer is tried, so one request never has two live instances.
//! If it cannot be destroyed, the failover stops there (the reconciler destroys it later).
//!
//! A refusal that is not about the offer (the budget, the instance limit, a suspended account)
//! ends the failover at once: the next offer would be refused too.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ledger::{self, InstanceRow, Status, Transition};
use super::{RemoteView, RentBody, Rentals, Renter, new_id};
use crate::error::{Error, Kind, Refusal, Result};
use crate::providers::{Offer, OfferFilter, ProviderId, SearchQuery, gpu};
use crate::types::schema::NO_NUL;

/// `spec` of `POST /v1/instances`: what any acceptable offer is.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[schemars(rename = "RentSpec")]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// A GPU model or family (`RTX 4090`, `H100`), as `GET /v1/offers?gpu=` takes.
    #[schemars(length(max = 64), pattern(NO_NUL), extend("example" = "RTX 4090"))]
    pub gpu: Option<String>,
    #[schemars(range(min = 1, max = 64))]
    pub min_gpus: Option<u32>,
    #[schemars(range(min = 1, max = 64))]
    pub max_gpus: Option<u32>,
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub min_gpu_memory_gb: Option<f64>,
    /// A ceiling on the whole offer's price (USD/h) ...
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_price_per_hour: Option<f64>,
    /// ... and/or on its price per GPU: at least one is required (a watch gives its price
    /// beside the spec).
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_price_per_gpu: Option<f64>,
    /// Only these providers (default: every enabled one).
    #[schemars(length(min = 1), extend("items" = {"type": "string", "pattern": NO_NUL}))]
    pub providers: Option<Vec<String>>,
    /// ISO 3166-1 alpha-2 codes.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("items" = {"type": "string", "pattern": "^[A-Za-z]{2}$"}))]
    pub countries: Option<Vec<String>>,
    /// Interruptible offers only (each rented at its current minimum bid), or on-demand only.
    #[serde(default)]
    pub interruptible: bool,
    /// 0–1; providers that publish no reliability (io.net) do not pass a minimum.
    #[schemars(range(min = 0, max = 1))]
    pub min_reliability: Option<f64>,
    /// Ports the machine can map directly (Vast `direct_port_count`); providers that publish
    /// none (io.net) do not pass a minimum.
    #[schemars(range(min = 1, max = 65535))]
    pub min_direct_ports: Option<u32>,
}

fn bad(field: &str, why: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("invalid `spec.{field}`: {why}"))
}

impl Spec {
    /// The filter every candidate must pass, and the providers to search; every error names the
    /// field.
    pub fn check(&self, enabled: &[ProviderId]) -> Result<(OfferFilter, Vec<ProviderId>)> {
        let positive = |field: &str, x: Option<f64>| match x {
            Some(v) if !(v.is_finite() && v > 0.0) => Err(bad(field, "a number greater than 0")),
            _ => Ok(x),
        };
        let gpus = |field: &str, n: Option<u32>| match n {
            Some(n) if !(1..=64).contains(&n) => Err(bad(field, "between 1 and 64")),
            _ => Ok(n),
        };
        let gpu = match &self.gpu {
            Some(g) if g.trim().is_empty() || g.len() > 64 => {
                return Err(bad("gpu", "a GPU model of 1 to 64 characters"));
            }
            Some(g) => Some(gpu::canonical(g, None)),
            None => None,
        };
        let (min_gpus, max_gpus) = (
            gpus("min_gpus", self.min_gpus)?,
            gpus("max_gpus", self.max_gpus)?,
        );
        if let (Some(lo), Some(hi)) = (min_gpus, max_gpus)
            && lo > hi
        {
            return Err(bad("min_gpus", "greater than `max_gpus`"));
        }
        let max_price = positive("max_price_per_hour", self.max_price_per_hour)?;
        let max_price_per_gpu = positive("max_price_per_gpu", self.max_price_per_gpu)?;
        if max_price.is_none() && max_price_per_gpu.is_none() {
            return Err(bad(
                "max_price_per_hour",
                "a rental by spec needs a price ceiling: `max_price_per_hour` or `max_price_per_gpu`",
            ));
        }
        if self
            .min_reliability
            .is_some_and(|r| !(r.is_finite() && (0.0..=1.0).contains(&r)))
        {
            return Err(bad("min_reliability", "between 0 and 1"));
        }
        let countries = match &self.countries {
            Some(cs) => {
                if cs.is_empty() || cs.len() > 64 {
                    return Err(bad("countries", "1 to 64 ISO 3166-1 alpha-2 codes"));
                }
                let mut out = Vec::with_capacity(cs.len());
                for c in cs {
                    out.push(crate::types::text::iso_country(c).ok_or_else(|| {
                        bad(
                            "countries",
                            format!(
                                "`{}` is not an ISO 3166-1 alpha-2 code",
                                crate::error::truncate(c, 16)
                            ),
                        )
                    })?);
                }
                Some(out)
            }
            None => None,
        };
        let providers = match &self.providers {
            None => enabled.to_vec(),
            Some(list) if list.is_empty() => {
                return Err(bad("providers", "at least one provider"));
            }
            Some(list) => {
                let mut out = Vec::new();
                for name in list {
                    let p = ProviderId::parse(name)
                        .filter(|p| enabled.contains(p))
                        .ok_or_else(|| {
                            bad(
                                "providers",
                                format!(
                                    "`{}` is not a provider enabled here",
                                    crate::error::truncate(name, 32)
                                ),
                            )
                        })?;
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                out
            }
        };
        Ok((
            OfferFilter {
                gpu,
                min_gpus,
                max_gpus,
                min_gpu_memory_gb: positive("min_gpu_memory_gb", self.min_gpu_memory_gb)?,
                max_price,
                max_price_per_gpu,
                countries,
                interruptible: self.interruptible,
                include_unavailable: false,
                min_reliability: self.min_reliability,
                min_direct_ports: match self.min_direct_ports {
                    Some(n) if !(1..=65535).contains(&n) => {
                        return Err(bad("min_direct_ports", "1 to 65535"));
                    }
                    n => n,
                },
            },
            providers,
        ))
    }
}

/// Cheapest first; among equal prices the more reliable (offers without a figure last); then
/// by id, so the order is stable.
fn rank(offers: &mut [Offer]) {
    offers.sort_by(|a, b| {
        a.price_per_hour
            .total_cmp(&b.price_per_hour)
            .then_with(|| {
                b.reliability
                    .unwrap_or(-1.0)
                    .total_cmp(&a.reliability.unwrap_or(-1.0))
            })
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// How a try that the provider created ended.
enum Watched {
    /// Running, or still provisioning when the wait ended: the rental's answer.
    Kept(InstanceRow),
    /// Reported dead (or gone) before it ran: why.
    Died(InstanceRow, String),
}

/// Whether a failed try is about that offer (the next one may do), or about the request or
/// account (every other offer would fail the same way).
fn offer_specific(e: &Error) -> bool {
    let outcome_unknown = e
        .details
        .as_ref()
        .is_some_and(|d| d.get("instance_id").is_some());
    match &e.kind {
        Kind::Refused(
            Refusal::OfferUnavailable
            | Refusal::PriceChanged
            | Refusal::BidTooLow
            | Refusal::ProviderDisabled,
        ) => true,
        Kind::Upstream(_) => !outcome_unknown,
        _ => false,
    }
}

impl Rentals {
    /// `POST /v1/instances` with a `spec`: see the module header.
    pub(super) async fn rent_by_spec(
        &self,
        who: Renter,
        body: &RentBody,
        spec: &Spec,
        request_id: &str,
        exclude: &[String],
    ) -> Result<InstanceRow> {
        let enabled: Vec<ProviderId> = self.providers.list.iter().map(|p| p.id()).collect();
        let (filter, providers) = spec.check(&enabled)?;
        body.check_common()?;
        if body.bid_per_hour.is_some() {
            return Err(Error::bad_request(
                "invalid `bid_per_hour`: a rental by spec bids each interruptible offer's current minimum; rent an `offer_id` to bid your own price",
            ));
        }
        // a provider that cannot honour the launch spec (io.net: no container image) is not
        // tried, rather than failed over into
        let launch = body.launch()?;
        let providers: Vec<ProviderId> = providers
            .into_iter()
            .filter(|p| {
                self.providers
                    .get(*p)
                    .is_some_and(|p| p.launch_refusal(&launch).is_none())
            })
            .collect();
        // only what the key may rent (`accounts::policy`): its providers, GPU models and price
        let providers: Vec<ProviderId> = providers
            .into_iter()
            .filter(|p| who.policy.provider(p.as_str()).is_ok())
            .filter(|p| {
                body.idle.is_none()
                    || body.agent
                    || self.providers.get(*p).is_some_and(|p| p.reports_gpu_util())
            })
            .collect();
        let mut candidates = self.candidates(&filter, &providers, body.disk_gb).await?;
        // a volume lives on one machine: only offers there
        if let Some(a) = &body.volume {
            let v = ledger::get_volume(&self.db, who.account_id, &a.id)
                .await
                .map_err(|_| Error::bad_request("invalid `volume.id`: no such volume of yours"))?;
            candidates.retain(|o| {
                o.provider.as_str() == v.provider
                    && o.machine_id.as_deref() == Some(v.machine_id.as_str())
            });
        }
        candidates.retain(|o| {
            who.policy.gpu_model(&o.gpu_model).is_ok()
                && who.policy.price(o.price_per_hour).is_ok()
                && !exclude.contains(&o.id)
        });
        // the tries: the best of what this rental may take (the key's policy, the volume's
        // machine, the offers a failover leaves out), not of everything matching
        candidates.truncate(self.config.rentals.max_offers_tried.get() as usize);
        if candidates.is_empty() {
            return Err(Error::refused(
                Refusal::OfferUnavailable,
                "no available offer matches the spec",
                Some(json!({"offers_matching": 0})),
            ));
        }
        for (n, offer) in candidates.iter().enumerate() {
            let index = n as i32 + 1;
            let id = new_id();
            let mut b = body.clone();
            b.spec = None;
            b.offer_id = offer.id.clone();
            // the ceiling each try is held to: the spec's, per offer
            b.max_price_per_hour = [
                body.max_price_per_hour,
                filter.max_price,
                filter
                    .max_price_per_gpu
                    .map(|m| m * f64::from(offer.gpu_count)),
            ]
            .into_iter()
            .flatten()
            .reduce(f64::min);
            match self
                .rent_offer(who.clone(), &b, &id, Some((request_id, index)))
                .await
            {
                Ok(row) => match self.watch(row).await? {
                    Watched::Kept(row) => return Ok(row),
                    Watched::Died(row, why) => self.abandon(&row, &why).await?,
                },
                Err(e) if offer_specific(&e) => {
                    tracing::info!(request = %request_id, offer = %offer.id, error = %e.message, "rental by spec: offer left, trying the next");
                    // refused before its intent was written: record the try anyway
                    if ledger::get(&self.db, who.account_id, &id).await?.is_none() {
                        ledger::failed_try(
                            &self.db,
                            &ledger::NewInstance {
                                id: &id,
                                account_id: who.account_id,
                                provider: offer.provider.as_str(),
                                offer_id: &offer.id,
                                gpu_model: &offer.gpu_model,
                                gpu_count: offer.gpu_count as i32,
                                price_per_hour: offer.price_per_hour,
                                image: &body.image,
                                disk_gb: body.disk_gb as i32,
                                label: body.label.as_deref(),
                                bid_per_hour: None,
                                storage_per_hour: offer.storage_per_hour,
                                ssh_keys: &[],
                                budget_window_hours: self.config.rentals.budget_window_hours.get(),
                                expires_at: None,
                                request: Some((request_id, index)),
                                api_key_id: who.key_id,
                                terms: None,
                                minimum_hours: None,
                                prepaid: None,
                                key_max_instances: None,
                                policies: None,
                                relaunch: None,
                                volume: None,
                            },
                            &format!("{}: {}", e.kind.code(), e.message),
                        )
                        .await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let tries = ledger::tries(&self.db, request_id).await?;
        Err(Error::refused(
            Refusal::OfferUnavailable,
            format!(
                "none of the {} offers tried could be rented (see `details.tries`)",
                tries.len()
            ),
            Some(json!({"rental_request_id": request_id, "tries": tries_view(&tries)})),
        ))
    }

    /// The available offers matching `filter` from `providers`, through the offers cache,
    /// ranked, at most `rentals.max_offers_tried`. A provider that cannot answer adds nothing.
    async fn candidates(
        &self,
        filter: &OfferFilter,
        providers: &[ProviderId],
        disk_gb: u32,
    ) -> Result<Vec<Offer>> {
        // the sizes GET /v1/offers searches for (shares its cache), priced back to `disk_gb`
        let priced = crate::providers::model::disk_bucket(disk_gb);
        let q = SearchQuery {
            gpu: filter.gpu.clone(),
            interruptible: filter.interruptible,
            disk_gb: priced,
        };
        let asks = self
            .providers
            .list
            .iter()
            .filter(|p| providers.contains(&p.id()) && p.disabled().is_none())
            .filter_map(|p| Some((p.clone(), p.search_key(&q)?)))
            .map(|(p, key)| {
                let q = q.clone();
                async move {
                    let name = p.id();
                    let out = self
                        .offers
                        .get(&key, move || async move { p.search(&q).await })
                        .await;
                    (name, out)
                }
            });
        let mut all = Vec::new();
        for (name, out) in futures_util::future::join_all(asks).await {
            match out {
                Ok(l) => all.extend(
                    l.entry
                        .value
                        .iter()
                        .map(|o| o.at_disk(disk_gb, priced))
                        .filter(|o| filter.matches(o))
                        .filter(|o| o.disk_gb.is_none_or(|d| f64::from(disk_gb) <= d)),
                ),
                Err(e) => {
                    tracing::warn!(provider = name.as_str(), error = %e, "rental by spec: provider not searched")
                }
            }
        }
        rank(&mut all);
        Ok(all)
    }

    /// Follows a try the provider created until it runs, is reported dead for the grace, ends,
    /// or `rentals.failover_wait_ms` passes.
    async fn watch(&self, mut row: InstanceRow) -> Result<Watched> {
        let (Some(pid), Some(p)) = (
            row.provider_instance_id.clone(),
            ProviderId::parse(&row.provider).and_then(|p| self.providers.get(p).cloned()),
        ) else {
            return Ok(Watched::Kept(row));
        };
        let cfg = &self.config.rentals;
        let deadline = Instant::now() + cfg.failover_wait_ms.get();
        let poll = cfg
            .status_cache_ms
            .get()
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let grace = cfg.dead_state_grace_ms.ms() as f64 / 1000.0;
        loop {
            if Instant::now() >= deadline {
                return Ok(Watched::Kept(row));
            }
            tokio::time::sleep(poll).await;
            let remote = match p.instance(&pid).await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Ok(Watched::Died(row, "the provider no longer lists it".into()));
                }
                // the provider is failing: ask again
                Err(_) => continue,
            };
            let view = RemoteView::of(&remote);
            row = self.apply(row, &view, "status").await?;
            let row_now = ledger::get(&self.db, row.account_id, &row.id)
                .await?
                .unwrap_or(row);
            row = row_now;
            if row.status == Status::Running {
                return Ok(Watched::Kept(row));
            }
            if !row.status.is_open() {
                let why = format!("the provider reported it {}", remote.status.as_str());
                return Ok(Watched::Died(row, why));
            }
            if let (Some(dead), Some(since)) = (&remote.dead, row.dead_since)
                && super::reconcile::now() - since >= grace
            {
                let why = format!(
                    "the provider reported `{dead}` for {grace:.0} s or more: it never reaches running"
                );
                return Ok(Watched::Died(row, why));
            }
        }
    }

    /// Destroys a try that will not run and marks it failed (`failover_abandoned`) before the
    /// next one is tried. A destroy the provider refuses ends the failover with its error.
    async fn abandon(&self, row: &InstanceRow, why: &str) -> Result<()> {
        let p = ProviderId::parse(&row.provider)
            .ok_or_else(|| Error::internal(std::io::Error::other("bad provider in ledger")))?;
        if let Some(pid) = &row.provider_instance_id {
            let provider = self.provider(p)?.clone();
            if let Err(e) = provider.destroy(pid).await
                && !matches!(provider.instance(pid).await, Ok(None))
            {
                return Err(crate::providers::upstream_error(p, &e));
            }
            self.status.forget(&format!("{}:{pid}", row.provider)).await;
        }
        let from = [
            row.status,
            Status::Provisioning,
            Status::Running,
            Status::Stopped,
            Status::Interrupted,
            Status::Failed,
        ];
        ledger::transition(
            &self.db,
            &row.id,
            Transition::new(&from, Status::Failed, "failover_abandoned").detail(why),
        )
        .await?;
        Ok(())
    }
}

/// The tries of a rental by spec as the client sees them: which offer, what became of it, why
/// it was left.
pub fn tries_view(tries: &[InstanceRow]) -> Vec<TryView> {
    tries
        .iter()
        .map(|t| TryView {
            try_index: t.try_index,
            offer_id: t.offer_id.clone(),
            provider: t.provider.clone(),
            instance_id: t.id.clone(),
            price_per_hour: t.price_per_hour,
            status: t.status.shown(),
            left_because: t.failure.clone(),
        })
        .collect()
}

/// One try of a rental by spec, as answers and errors show it.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct TryView {
    #[serde(rename = "try")]
    pub try_index: Option<i32>,
    pub offer_id: String,
    pub provider: String,
    pub instance_id: String,
    pub price_per_hour: f64,
    pub status: &'static str,
    /// Why the try was left (`None` for the one kept).
    pub left_because: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheapest first; among equal prices the more reliable, offers without a figure last; then
    /// by id, so the same offers always rank the same.
    #[test]
    fn offers_rank_by_price_then_reliability_then_id() {
        let mut offers = vec![
            Offer::sample("c", 1.0, 1, None),
            Offer::sample("b", 1.0, 1, Some(0.9)),
            Offer::sample("a", 2.0, 1, Some(0.99)),
            Offer::sample("d", 1.0, 1, Some(0.95)),
            Offer::sample("e", 0.5, 1, None),
            Offer::sample("f", 1.0, 1, Some(0.95)),
        ];
        rank(&mut offers);
        let ids: Vec<&str> = offers.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["e", "d", "f", "b", "c", "a"]);
    }

    /// A refusal about the offer moves on to the next one; one about the request or the account
    /// (or an outcome not known: it may have rented) ends the failover.
    #[test]
    fn only_offer_specific_failures_move_on() {
        let refused = |r| Error::refused(r, "x", None);
        assert!(offer_specific(&refused(Refusal::OfferUnavailable)));
        assert!(offer_specific(&refused(Refusal::PriceChanged)));
        assert!(!offer_specific(&refused(Refusal::BudgetExceeded)));
        assert!(!offer_specific(&refused(Refusal::InstanceLimit)));
        assert!(!offer_specific(&Error::bad_request("no")));
        let fault = || {
            crate::providers::upstream_error(
                crate::providers::ProviderId::register("vastai").unwrap(),
                &crate::providers::UpstreamError::Timeout,
            )
        };
        assert!(
            offer_specific(&fault()),
            "a provider fault before anything was rented"
        );
        let mut lost = fault();
        lost.details = Some(Box::new(serde_json::json!({"instance_id": "i-1"})));
        assert!(!offer_specific(&lost), "an outcome not known ends it");
    }
}
