//! What every rule that acts on an instance shares: the clock they judge by, counting what they
//! did (`gpuproxy_reconciler_actions_total{action}`), and ending an instance a rule ended (its
//! lifetime, its idle or interruption policy). Used by the reconciler (`reconcile`), the
//! rentals' own policies (`upkeep`) and hosts' price increases (`repricing`).

use std::time::{SystemTime, UNIX_EPOCH};

use metrics::counter;

use super::Rentals;
use super::ledger::{self, Status, Transition};
use crate::error::Result;
use crate::metrics::RECONCILER_ACTIONS_TOTAL;
use crate::providers::Provider;

/// Seconds since the epoch, now.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Counts one `action`.
pub(super) fn act(action: &'static str) {
    act_n(action, 1);
}

pub(super) fn act_n(action: &'static str, n: usize) {
    counter!(RECONCILER_ACTIONS_TOTAL, "action" => action).increment(n as u64);
}

/// Destroys an instance a rule ended (its lifetime, its idle or interruption policy) and marks it
/// terminated with why (`action`): it stops billing there. Whether it was destroyed; left for the
/// next round when the provider refuses.
pub(super) async fn end(
    r: &Rentals,
    p: &dyn Provider,
    row: &ledger::InstanceRow,
    pid: &str,
    action: &'static str,
    detail: &str,
) -> Result<bool> {
    end_as(r, p, row, pid, Status::Terminated, action, detail).await
}

/// [`end`], marking the row `to` (`terminated`, or `failed` for one that will never run).
pub(super) async fn end_as(
    r: &Rentals,
    p: &dyn Provider,
    row: &ledger::InstanceRow,
    pid: &str,
    to: Status,
    action: &'static str,
    detail: &str,
) -> Result<bool> {
    if let Err(e) = p.destroy(pid).await {
        tracing::warn!(instance = %row.id, error = %e, action, "could not destroy; next round retries");
        return Ok(false);
    }
    r.status.forget(&format!("{}:{pid}", row.provider)).await;
    if ledger::transition(
        &r.db,
        &row.id,
        Transition::new(&[row.status], to, action).detail(detail),
    )
    .await?
    .is_some()
    {
        act(action);
    }
    Ok(true)
}
