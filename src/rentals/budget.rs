//! Budgets enforced over time. Each reconciler round looks at every account with open instances
//! and every budget that applies to it (see `ledger::Budgets`): the rolling window's
//! (`daily_budget_usd` over `rentals.budget_window_hours`), the month's (`monthly_budget_usd`,
//! since the start of the UTC month) and each key's (`spend_limit_usd` over the window, for the
//! instances that key rented).
//!
//! - spent ≥ `rentals.budget_warn_ratio` × limit: a `budget.warning` event, once per period;
//! - spent ≥ limit: a `budget.exhausted` event (once per period), then the account's
//!   `on_budget_exhausted` policy on the open instances the budget covers (a key's: those it
//!   pays for), each action a
//!   `budget.action` event and an instance event: `stop` stops those billing in full where the
//!   provider can (Vast; io.net deployments cannot be stopped: recorded as `not_stoppable`, once
//!   per period), `destroy` destroys every open one, `alert` only records and counts.
//!
//! New rentals, starts, bids and extends are refused meanwhile (402): the rent-time check
//! (`ledger::budget_check`) sees the spend at or over the limit, until it falls out of the
//! window (or the month ends, or the limit is raised).

use metrics::counter;
use tokio_postgres::types::Type;

use super::Rentals;
use super::ledger::{self, Figure, InstanceRow, Status, Transition};
use crate::error::Result;
use crate::events;
use crate::metrics::BUDGET_EVENTS_TOTAL;
use crate::providers::{ProviderId, UpstreamError};

/// One budget of one account (and key) as a round sees it.
struct Scope {
    account_id: i64,
    key_id: Option<i64>,
    figure: Figure,
    policy: String,
}

fn count(budget: &'static str, event: &'static str) {
    counter!(BUDGET_EVENTS_TOTAL, "budget" => budget, "event" => event).increment(1);
}

/// The series alerts read exist before the first budget is crossed.
pub fn register_metrics() {
    for budget in ["window", "monthly", "key"] {
        for event in [
            "warning",
            "exhausted",
            "stopped",
            "destroyed",
            "not_stoppable",
        ] {
            counter!(BUDGET_EVENTS_TOTAL, "budget" => budget, "event" => event).absolute(0);
        }
    }
}

/// When the budget's current period started (SQL): the rolling window's or the month's.
fn period_start(budget: &str) -> &'static str {
    match budget {
        "monthly" => "(date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')",
        _ => "(now() - make_interval(hours => $5))",
    }
}

/// Records a budget event unless one of `kind` (for this budget, key and instance) was recorded
/// in the current period; returns whether it was recorded.
async fn record_once(
    r: &Rentals,
    s: &Scope,
    kind: &str,
    instance: Option<&str>,
    detail: &str,
) -> Result<bool> {
    let window = i32::try_from(r.config.rentals.budget_window_hours.get()).unwrap_or(i32::MAX);
    let sql = format!(
        "INSERT INTO budget_events (account_id, budget, api_key_id, kind, spent_usd, limit_usd, \
           instance_id, detail) \
         SELECT $1, $2, $3, $4, $6, $7, $8, $9 \
         WHERE NOT EXISTS (SELECT 1 FROM budget_events WHERE account_id = $1 AND budget = $2 \
           AND api_key_id IS NOT DISTINCT FROM $3 AND kind = $4 \
           AND instance_id IS NOT DISTINCT FROM $8 AND at > {}) \
         RETURNING id",
        period_start(s.figure.budget)
    );
    // the event log hears of warnings and exhaustion (budget.action rows are the actions taken;
    // their instances' own events report them)
    let logged = [events::BUDGET_WARNING, events::BUDGET_EXHAUSTED].contains(&kind);
    r.db.transaction(async |tx| {
        let rows = tx
            .query_typed(
                &sql,
                &[
                    (&s.account_id, Type::INT8),
                    (&s.figure.budget, Type::TEXT),
                    (&s.key_id, Type::INT8),
                    (&kind, Type::TEXT),
                    (&window, Type::INT4),
                    (&s.figure.spent, Type::FLOAT8),
                    (&s.figure.limit, Type::FLOAT8),
                    (&instance, Type::TEXT),
                    (&detail, Type::TEXT),
                ],
            )
            .await
            .map_err(crate::accounts::classify)?;
        if !rows.is_empty() && logged {
            let data = serde_json::json!({"budget": s.figure.budget, "key_id": s.key_id,
                "spent_usd": s.figure.spent, "limit_usd": s.figure.limit,
                "policy": s.policy, "detail": detail});
            events::append(tx, s.account_id, kind, None, &data).await?;
        }
        Ok(!rows.is_empty())
    })
    .await
}

/// One round over every account with open instances.
pub async fn enforce(r: &Rentals) -> Result<()> {
    let window = r.config.rentals.budget_window_hours.get();
    let owners =
        r.db.query(
            "SELECT i.account_id, k.id, k.spend_limit_usd IS NOT NULL \
             FROM instances i \
               LEFT JOIN api_keys k ON k.id = coalesce(i.payer_key_id, i.api_key_id) \
             WHERE i.status NOT IN ('failed', 'terminated') \
             GROUP BY i.account_id, k.id, k.spend_limit_usd \
             ORDER BY i.account_id",
            &[],
        )
        .await?;
    let mut accounts: Vec<i64> = owners.iter().map(|o| o.get(0)).collect();
    accounts.dedup();
    for account_id in accounts {
        let keys: Vec<i64> = owners
            .iter()
            .filter(|o| o.get::<_, i64>(0) == account_id && o.get::<_, bool>(2))
            .filter_map(|o| o.get(1))
            .collect();
        let mut scopes = Vec::new();
        let b =
            r.db.transaction(async |tx| {
                ledger::budgets(tx, account_id, None, window, None, false).await
            })
            .await?;
        for figure in b.figures() {
            scopes.push(Scope {
                account_id,
                key_id: None,
                figure,
                policy: b.on_exhausted.clone(),
            });
        }
        for key in keys {
            let kb =
                r.db.transaction(async |tx| {
                    ledger::budgets(tx, account_id, Some(key), window, None, false).await
                })
                .await?;
            scopes.extend(
                kb.figures()
                    .into_iter()
                    .filter(|f| f.budget == "key")
                    .map(|figure| Scope {
                        account_id,
                        key_id: Some(key),
                        figure,
                        policy: kb.on_exhausted.clone(),
                    }),
            );
        }
        for s in &scopes {
            if let Err(e) = check(r, s).await {
                tracing::warn!(account = account_id, budget = s.figure.budget, error = %e, "budget round failed for this account; the next round retries");
            }
        }
    }
    Ok(())
}

/// Warns about, or acts on, one budget.
async fn check(r: &Rentals, s: &Scope) -> Result<()> {
    let f = &s.figure;
    if f.spent <= 0.0 {
        return Ok(());
    }
    let figures = format!(
        "{:.4} USD spent of a {} budget of {:.4} USD",
        f.spent, f.budget, f.limit
    );
    if f.spent >= r.config.rentals.budget_warn_ratio * f.limit
        && f.spent < f.limit
        && record_once(r, s, "budget.warning", None, &figures).await?
    {
        tracing::warn!(
            account = s.account_id,
            key = s.key_id,
            budget = f.budget,
            spent = f.spent,
            limit = f.limit,
            "budget warning"
        );
        count(f.budget, "warning");
    }
    if f.spent < f.limit {
        return Ok(());
    }
    if record_once(r, s, "budget.exhausted", None, &figures).await? {
        tracing::warn!(account = s.account_id, key = s.key_id, budget = f.budget, spent = f.spent, limit = f.limit, policy = %s.policy, "budget exhausted");
        count(f.budget, "exhausted");
    }
    if s.policy == "alert" {
        return Ok(());
    }
    for row in ledger::open_of(&r.db, s.account_id, s.key_id).await? {
        act(r, s, &row, &figures).await?;
    }
    Ok(())
}

/// Records what the budget did to `row` at its provider. A status sync that saw the provider's
/// new state between the call and this (a client's `GET`, the reconciler) has moved the row
/// already, as a plain status change: the budget's reason is then noted on it, so the ledger
/// still says why the instance stopped.
async fn record_action(r: &Rentals, row: &InstanceRow, t: Transition<'_>, why: &str) -> Result<()> {
    let kind = t.event;
    if ledger::transition(&r.db, &row.id, t.detail(why))
        .await?
        .is_none()
    {
        ledger::note(&r.db, &row.id, kind, why).await?;
    }
    Ok(())
}

/// Applies the policy to one open instance of an exhausted budget.
async fn act(r: &Rentals, s: &Scope, row: &InstanceRow, figures: &str) -> Result<()> {
    let Some(pid) = row.provider_instance_id.as_deref() else {
        // an intent the provider has not answered: the next round sees it
        return Ok(());
    };
    let Some(provider) = ProviderId::parse(&row.provider).and_then(|p| r.providers.get(p)) else {
        return Ok(());
    };
    let why = format!(
        "budget exhausted: {figures} (on_budget_exhausted = {})",
        s.policy
    );
    match s.policy.as_str() {
        "destroy" if row.status != Status::Terminating => {
            if let Err(e) = provider.destroy(pid).await {
                tracing::warn!(instance = %row.id, error = %e, "budget: could not destroy; next round retries");
                return Ok(());
            }
            r.status.forget(&format!("{}:{pid}", row.provider)).await;
            let from = [row.status];
            let t = Transition::new(&from, Status::Terminated, "budget_destroyed");
            record_action(r, row, t, &why).await?;
            record_once(r, s, "budget.action", Some(&row.id), "destroyed").await?;
            count(s.figure.budget, "destroyed");
        }
        "stop"
            if matches!(
                row.status,
                Status::Provisioning | Status::Running | Status::Frozen | Status::Unknown
            ) =>
        {
            match provider.set_running(pid, false).await {
                Ok(()) => {
                    r.status.forget(&format!("{}:{pid}", row.provider)).await;
                    let from = [row.status];
                    let t = Transition::new(&from, Status::Stopped, "budget_stopped");
                    record_action(r, row, t, &why).await?;
                    record_once(r, s, "budget.action", Some(&row.id), "stopped").await?;
                    count(s.figure.budget, "stopped");
                }
                Err(UpstreamError::Disabled(cannot)) => {
                    let detail = format!("not_stoppable: {cannot}; it bills until it ends");
                    if record_once(r, s, "budget.action", Some(&row.id), &detail).await? {
                        tracing::warn!(instance = %row.id, provider = %row.provider, "budget exhausted but the provider cannot stop this instance");
                        ledger::note(&r.db, &row.id, "budget_not_stoppable", &detail).await?;
                        count(s.figure.budget, "not_stoppable");
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %row.id, error = %e, "budget: could not stop; next round retries");
                }
            }
        }
        _ => {}
    }
    Ok(())
}
