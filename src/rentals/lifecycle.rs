//! An instance after it was rented: status reads through the short cache, destroying, stop and
//! start, bids, extending the lifetime, and the budget checks each of those makes.

use std::sync::Arc;

use serde_json::json;

use super::ledger::{InstanceRow, Status, Transition};
use super::request::check_bid;
use super::{RemoteView, Rentals, Renter, ledger, upstream_error};

/// A provider call that changes an instance failed. When it may have been done anyway (no
/// answer, a 5xx) the error names the instance (`details.instance_id`, `details.outcome:
/// "unknown"`): under an `Idempotency-Key` such an answer is kept and replayed, so a client's
/// retry does not make the change (buy the hours) a second time.
fn change_failed(p: ProviderId, e: &UpstreamError, instance_id: &str) -> Error {
    let mut err = upstream_error(p, e);
    if e.may_have_happened()
        && let Some(d) = err.details.as_mut().and_then(|d| d.as_object_mut())
    {
        d.insert("instance_id".into(), json!(instance_id));
        d.insert("outcome".into(), json!("unknown"));
    }
    err
}

/// How often a destroy the provider has not finished is looked at again.
const CONFIRM_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The provider's answer says the instance is gone (no such instance, or ended).
fn is_gone(
    answer: &std::result::Result<Option<crate::providers::RemoteInstance>, UpstreamError>,
) -> bool {
    matches!(
        answer,
        Ok(None)
            | Ok(Some(crate::providers::RemoteInstance {
                status: InstanceStatus::Terminated,
                ..
            }))
    )
}

/// What the provider made of a start or stop it was asked for.
#[derive(Debug)]
pub enum Outcome {
    Done,
    /// Refused or never sent, with why.
    NotDone(String),
    /// No telling (no answer, a 5xx): the provider's list settles it.
    Unknown,
}

impl Outcome {
    /// The outcome of a call that failed with `e`.
    pub fn of(e: &UpstreamError) -> Outcome {
        if e.may_have_happened() {
            Outcome::Unknown
        } else {
            Outcome::NotDone(e.to_string())
        }
    }
}
use crate::error::{Error, Kind, Refusal, Result, Side};
use crate::providers::{InstanceStatus, Provider, ProviderId, UpstreamError};

impl Rentals {
    /// `PUT /v1/instances/{id}/bid`: raises (or lowers) an interruptible instance's bid at the
    /// provider, then in the ledger (budget checked first); an outbid instance resumes once its
    /// bid is high enough again.
    pub async fn set_bid(&self, who: Renter, id: &str, bid: f64) -> Result<InstanceRow> {
        check_bid("bid_per_hour", bid, None)?;
        who.policy.price(bid)?;
        let account_id = who.account_id;
        let _turn = self.slots.acquire(account_id).await;
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
        // checked and recorded under the account's lock before the provider is asked: a bid the
        // account cannot pay never reaches it, and concurrent changes are checked against each
        // other's
        let window = self.config.rentals.budget_window_hours.get();
        let changed = ledger::set_bid(&self.db, &row, bid, window, who.key_id).await?;
        if let Err(e) = provider.set_bid(&pid, bid).await {
            // not taken: the ledger's bid goes back to what the provider has; when it may have
            // been taken (no answer, a 5xx) the new one stays, as the provider may have it
            if let (false, Some(before)) = (e.may_have_happened(), row.bid_per_hour) {
                ledger::restore_bid(&self.db, &changed, before).await?;
            }
            self.forget_status(&row).await;
            return Err(change_failed(p, &e, &row.id));
        }
        self.forget_status(&row).await;
        self.refresh(changed).await
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
                Ok(p.instance(&fetch_pid).await?.as_ref().map(RemoteView::of))
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
        mut row: InstanceRow,
        view: &RemoteView,
        kind: &str,
    ) -> Result<InstanceRow> {
        // the exposed ports' public address, once the provider maps them
        if !view.endpoints.is_empty()
            && view.endpoints != row.endpoints
            && view.status.is_open()
            && ledger::set_endpoints(&self.db, &row, &view.endpoints).await?
        {
            row.endpoints = view.endpoints.clone();
        }
        if view.dead != row.dead_reason && view.status.is_open() {
            ledger::set_dead(&self.db, &row, view.dead.as_deref()).await?;
        }
        // time paid up front: the provider's `amount_paid` is what was paid
        if let (Some(paid), Some(_)) = (view.paid, row.paid_hours)
            && view.status.is_open()
            && ledger::reconcile_paid(&self.db, &row, paid, self.extend_in_flight_secs()).await?
        {
            tracing::info!(instance = %row.id, paid_micros = paid.micros, hours = paid.hours, "the ledger took the provider's amount paid");
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
    pub async fn destroy(self: &Arc<Self>, account_id: i64, id: &str) -> Result<InstanceRow> {
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
        let gone = is_gone(&provider.instance(&pid).await);
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
            self.confirm_destroy(row.clone(), pid, provider);
            Ok(row)
        }
    }

    /// After a destroy the provider has not finished (io.net's `termination requested`): asks
    /// it every [`CONFIRM_EVERY`] whether the instance is gone, for up to a reconciler round
    /// (`rentals.reconcile_interval_ms`, whose round takes over after that), and ends it in the
    /// ledger as soon as it is. A terminating instance bills in full until it ends: without
    /// this, until the next round (a 90 s rental billed a third more).
    fn confirm_destroy(
        self: &Arc<Self>,
        row: InstanceRow,
        pid: String,
        provider: Arc<dyn Provider>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + me.config.rentals.reconcile_interval_ms.get();
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(CONFIRM_EVERY).await;
                if !is_gone(&provider.instance(&pid).await) {
                    continue;
                }
                let t = Transition::new(&[Status::Terminating], Status::Terminated, "terminated")
                    .detail("the provider confirmed the destroy");
                if let Err(e) = ledger::transition(&me.db, &row.id, t).await {
                    tracing::warn!(instance = %row.id, error = %e, "could not record a confirmed destroy; the reconciler will");
                }
                me.status.forget(&format!("{}:{pid}", row.provider)).await;
                return;
            }
        });
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
    /// caller's instance `provider_instance_id`), checked before it is forwarded: a start is
    /// begun ([`Rentals::begin_start`]: checked against the budget and recorded under the
    /// account's lock). Returns the row as it was, for [`Rentals::settle_state_change`] once the
    /// provider has answered.
    pub async fn check_state_change(
        &self,
        who: Renter,
        provider: &str,
        provider_instance_id: &str,
        state: &str,
    ) -> Result<InstanceRow> {
        if !matches!(state, "running" | "stopped") {
            return Err(Error::bad_request(
                "invalid `state`: `running` or `stopped`",
            ));
        }
        let row = ledger::by_provider_id(&self.db, who.account_id, provider, provider_instance_id)
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
            self.begin_start(&row, who.key_id, "through passthrough")
                .await?;
        }
        Ok(row)
    }

    /// What the provider made of a state change begun by [`Rentals::check_state_change`] (`row`
    /// as it was then): a stop it did is recorded; a start it did not do is undone; one whose
    /// outcome is unknown stays begun (billed in full) until a status sync reads the provider.
    pub async fn settle_state_change(
        &self,
        row: &InstanceRow,
        state: &str,
        outcome: Outcome,
        how: &str,
    ) -> Result<()> {
        match (state, outcome) {
            ("running", Outcome::NotDone(why)) => self.start_failed(row, &why).await?,
            ("running", _) => self.forget_status(row).await,
            (_, Outcome::Done) => self.record_state_change(row, state, how).await?,
            (_, _) => self.forget_status(row).await,
        }
        Ok(())
    }

    /// A start bills the instance in full again: checked against every budget and recorded
    /// (`row` moves to `provisioning`) in one transaction under the account's lock, before the
    /// provider is asked. Concurrent starts of one account are checked one after another, each
    /// against the others already begun, and a start the budget refuses never reaches the
    /// provider; [`Rentals::start_failed`] undoes one the provider did not do. A row that moved
    /// meanwhile (another start or a stop) is a 409. The caller's key (`payer`) pays for it from
    /// now on: its cap is checked, whoever rented the instance.
    pub(super) async fn begin_start(
        &self,
        row: &InstanceRow,
        payer: Option<i64>,
        how: &str,
    ) -> Result<InstanceRow> {
        let spend = ledger::Spend {
            account_id: row.account_id,
            key_id: payer.or(row.payer_key_id),
            window_hours: self.config.rentals.budget_window_hours.get(),
            extra_per_hour: row.rate(Status::Running),
            extra_micros: 0,
            new_instance: false,
            key_max_instances: None,
            replacing: Some(&row.id),
        };
        let from = [row.status];
        let t = Transition::new(&from, Status::Provisioning, "started").detail(how);
        let begun = self
            .db
            .transaction(async |tx| {
                ledger::budget_check(tx, &spend).await?;
                ledger::set_payer(tx, &row.id, payer).await?;
                ledger::transition_in(tx, &row.id, t).await
            })
            .await?;
        begun.ok_or_else(|| {
            Error::refused(
                Refusal::InstanceNotOpen,
                "the instance changed while it was being started (another start or stop): \
                 read it and try again",
                Some(json!({"instance_id": row.id})),
            )
        })
    }

    /// A start begun with [`Rentals::begin_start`] that the provider did not do: `row` (as it
    /// was before) goes back to its status, the attempt noted.
    pub(super) async fn start_failed(&self, row: &InstanceRow, why: &str) -> Result<()> {
        let t = Transition::new(&[Status::Provisioning], row.status, "start_failed").detail(why);
        ledger::transition(&self.db, &row.id, t).await?;
        self.forget_status(row).await;
        Ok(())
    }

    async fn forget_status(&self, row: &InstanceRow) {
        if let Some(pid) = &row.provider_instance_id {
            self.status.forget(&format!("{}:{pid}", row.provider)).await;
        }
    }

    /// How long a paid extension may be in flight: twice the longest a provider call may take
    /// (`providers.total_timeout_ms`); after that its outcome is read from the provider.
    pub(super) fn extend_in_flight_secs(&self) -> f64 {
        2.0 * self.config.providers.total_timeout_ms.get().as_secs_f64()
    }

    /// The caller's instance while the provider holds it (not pending, not ending), with its
    /// provider id and client; `what` says, in the 409, what cannot be done otherwise.
    pub(super) async fn live(
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
    /// where the provider sells paid time (io.net), buys the hours: the price is quoted, checked
    /// against every budget of the account and of the caller's key and recorded under the
    /// account's lock before the provider is asked (`ledger::lumps`), then settled with what the
    /// provider says was paid.
    pub async fn extend(&self, who: Renter, id: &str, hours: u32) -> Result<InstanceRow> {
        if !(1..=8760).contains(&hours) {
            return Err(Error::bad_request("invalid `hours`: 1 to 8760"));
        }
        let _turn = self.slots.acquire(who.account_id).await;
        let (row, pid, p, provider) = self
            .live(who.account_id, id, "it cannot be extended")
            .await?;
        // a key that must keep rentals short cannot make one longer than its cap
        if who.policy.require_max_duration_hours.is_some()
            && let Some(at) = row.expires_at
        {
            let now = super::reconcile::now();
            let end = at.max(now) + f64::from(hours) * 3600.0;
            who.policy.lifetime(Some((end - now) / 3600.0))?;
        }
        if !provider.sells_time() {
            if row.expires_at.is_none() {
                return Err(Error::refused(
                    Refusal::InstanceNotOpen,
                    "the instance has no lifetime to extend (it runs until destroyed)",
                    Some(json!({"instance_id": id})),
                ));
            }
            return ledger::extend(&self.db, &row, hours).await;
        }
        // the provider's price for the hours (fees included), else the rental's hourly price
        let local = row
            .offer_id
            .split_once(':')
            .map_or(row.offer_id.as_str(), |x| x.1);
        let quoted = match provider.quote_time(local, hours).await {
            Ok(Some(t)) => t.total_micros,
            Ok(None) => (row.price_per_hour * f64::from(hours) * 1e6).round() as i64,
            Err(e) => return Err(upstream_error(p, &e)),
        };
        let spend = ledger::Spend {
            account_id: row.account_id,
            key_id: who.key_id.or(row.payer_key_id),
            window_hours: self.config.rentals.budget_window_hours.get(),
            extra_per_hour: 0.0,
            extra_micros: quoted,
            new_instance: false,
            key_max_instances: None,
            replacing: None,
        };
        let intent = ledger::begin_extend(&self.db, &row, &spend, hours).await?;
        match provider.extend(&pid, hours).await {
            Ok(paid) => ledger::settle_extend(&self.db, &row, intent, hours, paid).await,
            Err(e) if !e.may_have_happened() => {
                ledger::extend_failed(&self.db, &row, intent, &e.to_string()).await?;
                Err(upstream_error(p, &e))
            }
            // still counted: the provider's `amount_paid` settles it (`ledger::reconcile_paid`)
            Err(e) => Err(change_failed(p, &e, &row.id)),
        }
    }

    /// `POST /v1/instances/{id}/stop|start`: through the provider and the ledger (a stopped
    /// instance bills its storage only; a start is checked against the budget first).
    pub async fn set_running(&self, who: Renter, id: &str, running: bool) -> Result<InstanceRow> {
        self.set_running_for(who, id, running, "asked through the API")
            .await
    }

    /// [`Rentals::set_running`], recording `how` it was asked (the API, an idle policy).
    pub(super) async fn set_running_for(
        &self,
        who: Renter,
        id: &str,
        running: bool,
        how: &str,
    ) -> Result<InstanceRow> {
        let account_id = who.account_id;
        let _turn = self.slots.acquire(account_id).await;
        let (row, pid, p, provider) = self
            .live(account_id, id, "it cannot be stopped or started now")
            .await?;
        if running {
            self.begin_start(&row, who.key_id, how).await?;
        }
        let state = if running { "running" } else { "stopped" };
        let done = provider.set_running(&pid, running).await;
        let outcome = match &done {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::of(e),
        };
        self.settle_state_change(&row, state, outcome, how).await?;
        match done {
            Ok(()) => {}
            Err(UpstreamError::Disabled(why)) => {
                return Err(Error::refused(
                    Refusal::NotStoppable,
                    format!("{}: {why}", row.provider),
                    Some(json!({"instance_id": id, "provider": row.provider})),
                ));
            }
            Err(e) => return Err(change_failed(p, &e, &row.id)),
        }
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
}
