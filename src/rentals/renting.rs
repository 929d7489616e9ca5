//! Renting one offer: the offer claimed, the quote, price and bid checks, the ledger intent
//! (budget and instance limit under the account's budget lock), the provider call, and the intent
//! committed or failed (see the order in `rentals`).

use std::sync::Arc;

use metrics::counter;
use serde_json::json;

use super::ledger::{InstanceRow, Status, Transition};
use super::request::RentBody;
use super::{
    Intent, Rentals, Renter, keys, ledger, new_id, outcome_unknown, reconcile, sshkeys,
    upstream_error,
};
use crate::error::{Error, Refusal, Result};
use crate::metrics::RENTALS_TOTAL;
use crate::providers::{Provider, ProviderId, RentRequest, UpstreamError};

impl Rentals {
    /// The price the caller was shown for `offer_id`, from the in-process offers cache.
    pub(super) fn shown_price(&self, offer_id: &str) -> Option<f64> {
        self.shown_offer(offer_id).map(|o| o.price_per_hour)
    }

    /// The offer as the caller was shown it, from the in-process offers cache.
    pub(super) fn shown_offer(&self, offer_id: &str) -> Option<crate::providers::Offer> {
        self.offers
            .find(|offers| offers.iter().find(|o| o.id == offer_id).cloned())
    }

    /// `POST /v1/instances`: one offer (`offer_id`), or the offers matching a `spec` in turn.
    pub async fn rent(&self, who: Renter, body: &RentBody) -> Result<InstanceRow> {
        self.rent_as(who, body, &new_id()).await
    }

    /// [`Rentals::rent`] under our id `id`: the instance's (one offer), or the rental by spec's
    /// request id (an `Idempotency-Key` is bound to it before anything runs: `resume`).
    pub async fn rent_as(&self, who: Renter, body: &RentBody, id: &str) -> Result<InstanceRow> {
        let relaunch = body.check_policies()?;
        let _turn = self.slots.acquire(who.account_id).await;
        match (&body.spec, body.offer_id.is_empty()) {
            (Some(spec), true) => {
                let mut body = body.clone();
                body.relaunch = relaunch;
                self.rent_by_spec(who, &body, spec, id, &[]).await
            }
            (None, false) => self.rent_offer(who, body, id, None).await,
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
    pub(super) async fn rent_offer(
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
        // what the key may rent, before anything is asked of anyone (`accounts::policy`): the
        // offer as `GET /v1/offers` showed it; the quote is checked again
        who.policy.provider(pid.as_str())?;
        who.policy
            .lifetime(expires_at.map(|t| (t - now) / 3600.0))?;
        if let Some(o) = self.shown_offer(&body.offer_id) {
            who.policy.gpu_model(&o.gpu_model)?;
            who.policy
                .price(body.bid_per_hour.unwrap_or(o.price_per_hour))?;
        }
        if let Some(bid) = body.bid_per_hour {
            who.policy.price(bid)?;
        }
        let launch = body.launch()?;
        // checked before anything is reserved: this daemon can hand an agent out, and the
        // renter's own start script leaves room for its install
        if body.agent {
            let inst = crate::agents::install::Installer::of(&self.config.agents)?;
            if has_start_hook(provider.as_ref()) {
                inst.fits(&launch)?;
            }
        }
        if let Some((field, why)) = provider.launch_refusal(&launch) {
            return Err(Error::bad_request(format!(
                "invalid `{field}`: {}: {why}",
                pid.as_str()
            )));
        }
        // the agent's heartbeats carry the utilisation where the provider reports none
        if body.idle.is_some() && !provider.reports_gpu_util() && !body.agent {
            return Err(Error::bad_request(format!(
                "invalid `idle`: {} reports no GPU utilisation to judge idleness by (`agent: true` would: its agent reports it)",
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
        // (time sold up front is paid at once: the shown price over the hours asked)
        let shown = self.shown_price(&body.offer_id).unwrap_or(0.0);
        let prepaid_hours = provider.sells_time().then(|| self.paid_hours(body));
        let spend = ledger::Spend {
            account_id,
            key_id: who.key_id,
            window_hours: self.config.rentals.budget_window_hours.get(),
            extra_per_hour: if prepaid_hours.is_some() { 0.0 } else { shown },
            extra_micros: prepaid_hours.map_or(0, |h| (shown * f64::from(h) * 1e6) as i64),
            new_instance: true,
            key_max_instances: who.policy.max_instances,
            replacing: None,
        };
        self.db
            .transaction(async |tx| ledger::budget_check(tx, &spend).await)
            .await?;
        // one rental of an exclusive offer at a time, whichever daemon takes it; the claim is
        // held on a lease this rental renews, so a daemon that dies lets go of it within the lease
        let lease = self.config.rentals.idempotency_lease_ms.ms();
        let claim = provider.exclusive_offers().then(|| {
            local
                .strip_suffix(crate::providers::vastai::BID_SUFFIX)
                .unwrap_or(local)
        });
        if let Some(offer) = claim
            && !ledger::claim_offer(&self.db, pid.as_str(), offer, id, lease).await?
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
        let work = self.rent_claimed(
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
        );
        let out = match claim {
            Some(offer) => self.holding_claim(pid, offer, id, lease, work).await,
            None => work.await,
        };
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

    /// Runs `work` while renewing the offer claim of rental `id` every third of its lease.
    async fn holding_claim<T>(
        &self,
        pid: ProviderId,
        offer: &str,
        id: &str,
        lease_ms: u64,
        work: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        let mut renew = tokio::time::interval(std::time::Duration::from_millis(lease_ms / 3));
        renew.tick().await;
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = renew.tick() => {
                    if let Err(e) = ledger::renew_offer(&self.db, pid.as_str(), offer, id, lease_ms).await {
                        tracing::warn!(offer, error = %e, "offer claim not renewed");
                    }
                }
            }
        }
    }

    /// The hours a rental from a provider that sells paid time buys (`duration_hours`).
    fn paid_hours(&self, body: &RentBody) -> u32 {
        body.duration_hours
            .unwrap_or(self.config.rentals.default_duration_hours.get())
    }

    /// Takes a rented (exclusive) offer out of every cached answer, on demand and bid alike, in
    /// process and in Redis: the next page never shows it.
    pub(super) async fn drop_rented_offer(&self, offer_id: &str) {
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

    pub(super) async fn rent_claimed(
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
        let hours = self.paid_hours(body);
        let mut quote = quote;
        let mut priced = None;
        let mut prepaid = None;
        if provider.sells_time() {
            // paid at once: the provider's total for the hours, else the list price over them
            prepaid = Some((
                hours,
                (quote.price_per_hour * f64::from(hours) * 1e6).round() as i64,
            ));
            if let Some(t) = provider
                .quote_time(local, hours)
                .await
                .map_err(|e| upstream_error(pid, &e))?
            {
                quote.price_per_hour = t.per_hour();
                priced = Some(t.describe());
                prepaid = Some((hours, t.total_micros));
            }
        }
        let (bid, price) = self.terms(body, &quote).inspect_err(|_| count("refused"))?;
        // a volume lives on one machine: only an offer there can attach it
        let volume = match &body.volume {
            Some(a) => {
                let v = self.volume_for_rental(who.account_id, a, pid).await?;
                if quote
                    .machine_id
                    .as_deref()
                    .is_some_and(|m| m != v.machine_id)
                {
                    count("refused");
                    return Err(Error::bad_request(format!(
                        "invalid `volume`: volume {} lives on machine {}; offer {} is on machine {} (GET /v1/offers shows each offer's `machine_id`)",
                        v.id,
                        v.machine_id,
                        body.offer_id,
                        quote.machine_id.as_deref().unwrap_or("?")
                    )));
                }
                Some((v.clone(), Self::mount(&v, a)))
            }
            None => None,
        };
        // the key's policy against the terms now, before anything is reserved or rented
        who.policy.gpu_model(&quote.gpu_model)?;
        who.policy.price(bid.unwrap_or(price))?;
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
                prepaid,
                key_max_instances: who.policy.max_instances,
                policies: body.policies().stored().as_ref(),
                relaunch: body.relaunch.as_ref(),
                volume: volume
                    .as_ref()
                    .map(|(v, m)| (v.id.as_str(), m.mount_path.as_str())),
            },
        )
        .await?;
        let mut launch = body.launch()?;
        if body.agent {
            self.install_agent(provider.as_ref(), who.account_id, id, &mut launch)
                .await?;
        }
        let req = RentRequest {
            our_id: id.to_owned(),
            offer: local.to_owned(),
            launch,
            disk_gb: body.disk_gb,
            ssh_keys: keys
                .iter()
                .map(|(n, k, _)| (n.clone(), k.clone()))
                .collect(),
            bid_per_hour: bid,
            duration_hours: hours,
            gpu_count: quote.gpu_count,
            volume: volume.map(|(_, m)| m),
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
                    // not listed yet is not "not created": a create may show up late (io.net
                    // deploys asynchronously). The intent stays pending (counted) and the answer
                    // names it; the reconciler settles it from the provider's list once it is
                    // older than `rentals.intent_timeout_ms`
                    Ok(None) | Err(_) => {
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
    pub(super) fn terms(
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

    /// A rental with `agent: true` on a provider with a start hook: a token minted for the
    /// instance (its intent is recorded) and the launch set up to install the agent with it
    /// (`agents::install`). A provider without one gets nothing here: the instance shows the
    /// install line instead.
    async fn install_agent(
        &self,
        provider: &dyn crate::providers::Provider,
        account_id: i64,
        id: &str,
        launch: &mut crate::providers::Launch,
    ) -> Result<()> {
        if !has_start_hook(provider) {
            return Ok(());
        }
        let inst = crate::agents::install::Installer::of(&self.config.agents)?;
        let token = crate::agents::tokens::mint(&self.db, account_id, id).await?;
        crate::agents::install::attach(&inst, id, &token, launch)
    }

    /// Marks a pending intent failed: the provider created nothing for it.
    pub(super) async fn fail_intent(&self, id: &str, why: &UpstreamError) -> Result<()> {
        let why = why.to_string();
        ledger::transition(
            &self.db,
            id,
            Transition::new(&[Status::Pending], Status::Failed, "failed").detail(&why),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn commit(
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
}

/// Whether the provider runs a script when an instance starts (Vast's `onstart`): it does not
/// refuse one.
fn has_start_hook(provider: &dyn crate::providers::Provider) -> bool {
    let hook = crate::providers::Launch {
        onstart: Some("true".into()),
        ..Default::default()
    };
    provider.launch_refusal(&hook).is_none()
}
