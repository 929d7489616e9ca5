//! The reconciler's part that carries out each rental's own policies (`rentals::policies`), on
//! every round, for every open instance the provider answered for:
//! - `idle`: while the instance runs, a reported GPU utilisation below the policy's share starts
//!   (or continues) an idle span, anything else ends it; `instance.idle` (`phase: warning`) goes
//!   out `rentals.idle_notice_ms` before the span reaches `for_minutes`, and once it has, the
//!   instance is stopped (`idle_stopped`) or destroyed (`idle_destroyed`). Never without the
//!   warning first, never on a missing reading.
//! - `on_interrupt` of an outbid instance: `rebid` raises the bid to the offer's current minimum
//!   bid (rented or not: `Provider::current_min_bid`) when that is within `max_bid_per_hour` and the budgets (the same checked path as
//!   `PUT /v1/instances/{id}/bid`); `destroy` ends it (`interrupt_destroyed`); `failover` names
//!   the rental that will replace it, destroys it (`interrupt_failed_over`), then rents by the
//!   rental's spec again without the lost offer, so there is never more than one live instance;
//!   `wait` does nothing. Each outcome is an `instance.interrupt_handled` event (once per
//!   outcome) and a `gpuproxy_reconciler_actions_total` action.
//!
//! A failover named but never started (the daemon stopped after the destroy) is started by a
//! later round under the same request id.

use std::sync::Arc;

use serde_json::json;

use super::ending::{act, end, now};
use super::ledger::{self, InstanceRow, Status};
use super::policies::{IdleAction, InterruptAction};
use super::{RentBody, Rentals, Renter};
use crate::accounts::policy::KeyPolicy;
use crate::error::Result;
use crate::events::{FAILED_OVER, IDLE, INTERRUPT_HANDLED};
use crate::providers::{Provider, RemoteInstance};

/// Applies `row`'s policies after the round brought it up to date with `i`.
pub(super) async fn run(
    r: &Arc<Rentals>,
    p: &dyn Provider,
    row: &InstanceRow,
    i: &RemoteInstance,
    pid: &str,
) -> Result<()> {
    idle(r, p, row, i, pid).await?;
    if row.status == Status::Interrupted {
        interrupted(r, p, row, pid).await?;
    }
    Ok(())
}

/// Who acts for a rental later: its account and the key that pays for it; what the key may
/// rent was checked when it rented.
fn renter(row: &InstanceRow) -> Renter {
    Renter {
        account_id: row.account_id,
        key_id: row.payer_key_id,
        policy: Arc::new(KeyPolicy::default()),
    }
}

async fn idle(
    r: &Arc<Rentals>,
    p: &dyn Provider,
    row: &InstanceRow,
    i: &RemoteInstance,
    pid: &str,
) -> Result<()> {
    let Some(policy) = &row.policies.idle else {
        return Ok(());
    };
    // a live agent's reading first (it reports what the GPUs do now, every heartbeat), else
    // the provider's
    let agent = r.agent_gpu_util(&row.id).await;
    let reading = agent
        .or(i.gpu_util)
        .filter(|_| row.status == Status::Running);
    let Some(util) = reading.filter(|u| *u < policy.gpu_util_below) else {
        // busy, not running, or no reading: no idle span
        if row.idle_since.is_some() {
            ledger::set_idle(&r.db, &row.id, None, false).await?;
        }
        return Ok(());
    };
    let t = now();
    let since = match row.idle_since {
        Some(s) => s,
        None => {
            ledger::set_idle(&r.db, &row.id, Some(t), false).await?;
            t
        }
    };
    let span = policy.span_secs();
    let notice = r.config.rentals.idle_notice_ms.get().as_secs_f64();
    let idle_for = t - since;
    let data = |phase: &str| {
        json!({"phase": phase, "gpu_util": util, "gpu_util_below": policy.gpu_util_below,
               "idle_seconds": idle_for.round(), "for_minutes": policy.for_minutes,
               "action": policy.action.as_str(),
               "acts_at": crate::types::text::rfc3339_of(Some(since + span))})
    };
    if !row.idle_warned {
        if idle_for >= (span - notice).max(0.0) {
            ledger::set_idle(&r.db, &row.id, Some(since), true).await?;
            ledger::account_event(&r.db, row.account_id, &row.id, IDLE, &data("warning")).await?;
            act("idle_warned");
        }
        // the warning always comes a round before the action
        return Ok(());
    }
    if idle_for < span {
        return Ok(());
    }
    let detail = format!(
        "GPU utilisation below {}% for {:.1} minutes (idle policy)",
        policy.gpu_util_below,
        idle_for / 60.0
    );
    match policy.action {
        IdleAction::Stop => {
            if let Err(e) = r
                .set_running_for(renter(row), &row.id, false, &detail)
                .await
            {
                tracing::warn!(instance = %row.id, error = %e.message, "idle policy: could not stop; next round retries");
                return Ok(());
            }
            ledger::set_idle(&r.db, &row.id, None, false).await?;
            ledger::account_event(&r.db, row.account_id, &row.id, IDLE, &data("stopped")).await?;
            act("idle_stopped");
        }
        IdleAction::Destroy => {
            if end(r, p, row, pid, "idle_destroyed", &detail).await? {
                ledger::account_event(&r.db, row.account_id, &row.id, IDLE, &data("destroyed"))
                    .await?;
            }
        }
    }
    Ok(())
}

async fn interrupted(
    r: &Arc<Rentals>,
    p: &dyn Provider,
    row: &InstanceRow,
    pid: &str,
) -> Result<()> {
    let Some(policy) = &row.policies.on_interrupt else {
        return Ok(());
    };
    let handled = |note: String, data: serde_json::Value| {
        let r = r.clone();
        let (account, id) = (row.account_id, row.id.clone());
        async move { ledger::upkeep_event(&r.db, account, &id, &note, INTERRUPT_HANDLED, &data).await }
    };
    match policy.action {
        InterruptAction::Wait => Ok(()),
        InterruptAction::Destroy => {
            let detail = "outbid (on_interrupt: destroy)";
            if end(r, p, row, pid, "interrupt_destroyed", detail).await? {
                handled(
                    "destroyed".into(),
                    json!({"action": "destroy", "outcome": "destroyed"}),
                )
                .await?;
            }
            Ok(())
        }
        InterruptAction::Rebid => {
            let max = policy.max_bid_per_hour.unwrap_or(0.0);
            let local = row
                .offer_id
                .split_once(':')
                .map(|(_, l)| l)
                .unwrap_or(&row.offer_id);
            let min = match p.current_min_bid(local).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(instance = %row.id, error = %e, "rebid: the offer's minimum bid could not be read; next round retries");
                    return Ok(());
                }
            };
            let refuse = |why: String| {
                let data = json!({"action": "rebid", "outcome": "refused", "reason": why,
                                  "max_bid_per_hour": max, "min_bid_per_hour": min});
                (format!("refused:{why}"), data)
            };
            let Some(min) = min else {
                let (note, data) = refuse("the provider shows no current minimum bid".into());
                if handled(note, data).await? {
                    act("rebid_refused");
                }
                return Ok(());
            };
            // Vast's bids have four decimals: the smallest bid at or above the minimum (a minimum
            // already in four decimals is taken as it is, whatever its float rounding)
            let bid = (min * 10_000.0 - 1e-6).ceil() / 10_000.0;
            if bid > max {
                let (note, data) = refuse(format!(
                    "the minimum bid is {bid} USD/h, above max_bid_per_hour {max}"
                ));
                if handled(note, data).await? {
                    act("rebid_refused");
                }
                return Ok(());
            }
            match r.set_bid(renter(row), &row.id, bid).await {
                Ok(_) => {
                    handled(
                        format!("rebid:{bid}"),
                        json!({"action": "rebid", "outcome": "rebid", "bid_per_hour": bid,
                               "max_bid_per_hour": max}),
                    )
                    .await?;
                    act("rebid");
                }
                Err(e) => {
                    let (note, data) = refuse(format!("{}: {}", e.kind.code(), e.message));
                    if handled(note, data).await? {
                        act("rebid_refused");
                    }
                }
            }
            Ok(())
        }
        InterruptAction::Failover => {
            // the replacement is named before anything ends, so a crash cannot lose it
            let request = match &row.replaced_by {
                Some(req) => req.clone(),
                None => {
                    let req = super::new_id();
                    ledger::set_replaced_by(&r.db, &row.id, &req).await?;
                    req
                }
            };
            handled(
                "failover_pending".into(),
                json!({"action": "failover", "outcome": "failing_over", "replaced_by": request}),
            )
            .await?;
            let detail = format!("outbid (on_interrupt: failover to rental {request})");
            if end(r, p, row, pid, "interrupt_failed_over", &detail).await? {
                start_failover(r, row.id.clone(), row.account_id, row.api_key_id, request);
            }
            Ok(())
        }
    }
}

/// Failovers whose daemon stopped between the destroy and the rental: started again under their
/// request id.
pub(super) async fn resume_failovers(r: &Arc<Rentals>) -> Result<()> {
    let older = 2.0 * r.config.rentals.intent_timeout_ms.ms() as f64 / 1000.0;
    for (id, account, key, request) in ledger::failovers_not_started(&r.db, older).await? {
        if r.failovers.lock().unwrap().contains(&request) {
            continue;
        }
        start_failover(r, id, account, key, request);
    }
    Ok(())
}

/// Rents by the replaced rental's spec again (without its lost offer) in a task of its own (a
/// rental by spec may wait for its tries to run), then says how it went.
fn start_failover(
    r: &Arc<Rentals>,
    old: String,
    account_id: i64,
    key: Option<i64>,
    request: String,
) {
    if !r.failovers.lock().unwrap().insert(request.clone()) {
        return;
    }
    let r = r.clone();
    tokio::spawn(async move {
        let outcome = failover(&r, &old, account_id, key, &request).await;
        r.failovers.lock().unwrap().remove(&request);
        let (note, data) = match outcome {
            Ok(new) => {
                act("interrupt_failed_over");
                (
                    "failover_done".to_owned(),
                    json!({"action": "failover", "outcome": "failed_over", "replaced_by": new.id,
                           "rental_request_id": request, "provider": new.provider,
                           "offer_id": new.offer_id}),
                )
            }
            Err(e) => {
                act("interrupt_failover_failed");
                tracing::warn!(instance = %old, request = %request, error = %e.message, "failover after an interruption found no replacement");
                (
                    "failover_failed".to_owned(),
                    json!({"action": "failover", "outcome": "failed", "rental_request_id": request,
                           "error": {"code": e.kind.code(), "message": e.message}}),
                )
            }
        };
        let written =
            ledger::upkeep_event(&r.db, account_id, &old, &note, INTERRUPT_HANDLED, &data)
                .await
                .and(if note == "failover_done" {
                    ledger::account_event(&r.db, account_id, &old, FAILED_OVER, &data).await
                } else {
                    Ok(())
                });
        if let Err(e) = written {
            tracing::warn!(instance = %old, error = %e.message, "failover outcome not recorded");
        }
    });
}

async fn failover(
    r: &Arc<Rentals>,
    old: &str,
    account_id: i64,
    key: Option<i64>,
    request: &str,
) -> Result<InstanceRow> {
    let kept = ledger::relaunch_of(&r.db, old).await?.ok_or_else(|| {
        crate::error::Error::bad_request("the rental kept no spec to fail over by")
    })?;
    let body: RentBody =
        serde_json::from_value(kept.clone()).map_err(crate::error::Error::internal)?;
    let spec = body.spec.clone().ok_or_else(|| {
        crate::error::Error::bad_request("the rental kept no spec to fail over by")
    })?;
    // as the key that rented, with what it may rent now (a key since revoked rents nothing)
    let policy = match key {
        Some(k) => crate::accounts::store::policy_of_key(&r.db, k)
            .await
            .map_err(crate::error::Error::internal)?
            .ok_or_else(|| {
                crate::error::Error::forbidden(
                    "key_revoked",
                    "the key that rented it is revoked: nothing is rented for it",
                )
            })?,
        None => KeyPolicy::default(),
    };
    let who = Renter {
        account_id,
        key_id: key,
        policy: Arc::new(policy),
    };
    let lost = ledger::get(&r.db, account_id, old)
        .await?
        .map(|row| vec![row.offer_id])
        .unwrap_or_default();
    let mut again = body;
    // the replacement keeps what a later failover rents by
    again.relaunch = Some(kept);
    let _turn = r.slots.acquire(account_id).await;
    r.rent_by_spec(who, &again, &spec, request, &lost).await
}
