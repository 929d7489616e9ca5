//! Hosts' price increases on running contracts (Vast's pending price increases,
//! `vastai/api/price_increase.py` in the official client), on every reconciler round for a
//! provider with open instances of ours:
//! - each pending increase on one of our instances (rows for instances not in the ledger are
//!   left alone: the provider account may be shared) is decided once: rejected when any part of
//!   the price rises by more than `rentals.price_increase_reject_above_pct`, accepted otherwise;
//!   the decision and `instance.price_increase` (the parts' increases, the decision, when it
//!   would apply, the price before and after) are written together;
//! - the decision is answered at the provider until it takes (a row no longer pending there is
//!   `stale`), counted as `price_increase_accepted` / `price_increase_rejected`;
//! - an accepted increase changes the ledger's price from when it takes effect (the contract's
//!   current end: the time until then bills at the old price), a `price_changed` event. An
//!   interruptible instance's compute price is its bid, which a host's ask does not move: only
//!   its storage follows.

use serde_json::json;

use super::Rentals;
use super::ending::act;
use super::ledger::{self, InstanceRow};
use crate::error::Result;
use crate::providers::{PriceIncrease, Provider};

/// Micro-dollars of a USD amount.
fn micros(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

/// One round for provider `p` over its open rows `open`.
pub(super) async fn round(r: &Rentals, p: &dyn Provider, open: &[&InstanceRow]) -> Result<()> {
    let name = p.id().as_str();
    let pending = match p.pending_price_increases().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(provider = name, error = %e, "cannot list pending price increases; next round retries");
            return Ok(());
        }
    };
    let threshold = r.config.rentals.price_increase_reject_above_pct;
    for inc in &pending {
        let Some(row) = open
            .iter()
            .find(|x| x.provider_instance_id.as_deref() == Some(&inc.provider_instance_id))
        else {
            continue;
        };
        decide(r, name, row, inc, threshold).await?;
        let Some(accept) = ledger::unanswered_price_increase(&r.db, name, &inc.id).await? else {
            continue;
        };
        match p.answer_price_increase(&inc.id, accept).await {
            Ok(took) => {
                ledger::answered_price_increase(&r.db, name, &inc.id, !took).await?;
                if took {
                    act(if accept {
                        "price_increase_accepted"
                    } else {
                        "price_increase_rejected"
                    });
                }
            }
            Err(e) => {
                tracing::warn!(provider = name, instance = %row.id, error = %e, "could not answer a price increase; next round retries");
            }
        }
    }
    let applied = ledger::apply_due_price_increases(&r.db).await?;
    if applied > 0 {
        tracing::info!(
            provider = name,
            applied,
            "accepted price increases now in force"
        );
    }
    Ok(())
}

/// Decides `inc` for `row` once (and tells the account).
async fn decide(
    r: &Rentals,
    provider: &str,
    row: &InstanceRow,
    inc: &PriceIncrease,
    threshold: f64,
) -> Result<()> {
    let pct = inc.max_increase_pct();
    let accept = pct <= threshold;
    let storage = row.storage_per_hour * inc.storage.unwrap_or(1.0);
    let compute = match row.bid_per_hour {
        Some(bid) => bid,
        None => (row.price_per_hour - row.storage_per_hour).max(0.0) * inc.gpu.unwrap_or(1.0),
    };
    let part = |m: Option<f64>| m.map(|m| ((m - 1.0) * 1e4).round() / 100.0);
    let event = json!({
        "pending_id": inc.id,
        "increase_pct": (pct * 100.0).round() / 100.0,
        "parts_pct": {"gpu": part(inc.gpu), "storage": part(inc.storage),
                      "upload": part(inc.upload), "download": part(inc.download)},
        "decision": if accept { "accepted" } else { "rejected" },
        "reject_above_pct": threshold,
        "applies_at": crate::types::text::rfc3339_of(inc.applies_at),
        "price_per_hour": row.price_per_hour,
        "price_per_hour_after": if accept { Some(compute + storage) } else { None },
    });
    ledger::decide_price_increase(
        &r.db,
        &ledger::Decision {
            provider,
            pending_id: &inc.id,
            instance_id: &row.id,
            account_id: row.account_id,
            increase_pct: pct,
            accept,
            applies_at: inc.applies_at,
            price_micros: micros(compute + storage),
            storage_micros: micros(storage),
            event: &event,
        },
    )
    .await?;
    Ok(())
}
