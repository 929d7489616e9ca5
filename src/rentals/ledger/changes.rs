//! Changes to an open instance that move money or its end: a new bid, a longer lifetime, a
//! dead state seen.

use serde_json::json;
use tokio_postgres::types::Type;

use super::budget::{Spend, budget_check};
use super::history::{event_tx, note};
use super::{COLS, InstanceRow, db_err, row};
use crate::accounts::Db;
use crate::error::{Error, Kind, Result, Side};
use crate::events;

/// A changed bid: the new bid and price (bid + storage), checked against the budgets of the
/// account and of `payer` (the caller's key, which pays for the instance from now on) first.
pub async fn set_bid(
    db: &Db,
    r: &InstanceRow,
    bid: f64,
    window_hours: u32,
    payer: Option<i64>,
) -> Result<InstanceRow> {
    let detail = format!("bid {bid} USD/h");
    record_bid(db, r, bid, Some((window_hours, payer)), &detail).await
}

/// From now on `key` pays for instance `id` (its rate counts against that key's cap): the
/// caller's key pays for what it does, whoever rented the instance.
pub async fn set_payer(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    key: Option<i64>,
) -> Result<()> {
    if key.is_some() {
        tx.query_typed(
            "UPDATE instances SET payer_key_id = $2 WHERE id = $1",
            &[(&id, Type::TEXT), (&key, Type::INT8)],
        )
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// Puts `r`'s bid back to `bid` (what it was) when the provider did not take a change already
/// recorded: no budget check (it is what was paid for before).
pub async fn restore_bid(db: &Db, r: &InstanceRow, bid: f64) -> Result<InstanceRow> {
    let detail = format!("bid {bid} USD/h again: the provider did not take the change");
    record_bid(db, r, bid, None, &detail).await
}

/// The bid and its rate in one transaction, checked against the budgets (under the account's
/// lock) when `check` (the window, the paying key) is given.
async fn record_bid(
    db: &Db,
    r: &InstanceRow,
    bid: f64,
    check: Option<(u32, Option<i64>)>,
    detail: &str,
) -> Result<InstanceRow> {
    let price = bid + r.storage_per_hour;
    db.transaction(async |tx| {
        // while outbid it bills storage only; the raised bid bills in full once it runs again
        if let Some((window_hours, payer)) = check {
            let spend = Spend {
                account_id: r.account_id,
                key_id: payer.or(r.payer_key_id),
                window_hours,
                extra_per_hour: price,
                extra_micros: 0,
                new_instance: false,
            key_max_instances: None,
                replacing: Some(&r.id),
            };
            budget_check(tx, &spend).await?;
            set_payer(tx, &r.id, payer).await?;
        }
        let rows = tx
            .query_typed(
                &format!(
                    "UPDATE instances SET bid_per_hour = $2, price_per_hour = $3, updated_at = now() \
                     WHERE id = $1 RETURNING {COLS}"
                ),
                &[
                    (&r.id, Type::TEXT),
                    (&bid, Type::FLOAT8),
                    (&price, Type::FLOAT8),
                ],
            )
            .await
            .map_err(db_err)?;
        let n = rows
            .first()
            .map(row)
            .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, "no such instance"))?;
        let billed = n.rate(n.status);
        event_tx(
            tx,
            &n.id,
            "bid_changed",
            Some(n.status.as_str()),
            n.price_per_hour,
            billed,
            Some(detail),
        )
        .await?;
        Ok(n)
    })
    .await
}

/// Records a longer lifetime: `hours` more of the instance's life (the expiry moves), as an
/// `extended` event. Where the provider sells paid time, `lumps` records what it cost.
pub async fn extend(db: &Db, r: &InstanceRow, hours: u32) -> Result<InstanceRow> {
    let h = f64::from(hours);
    db.transaction(async |tx| {
        let rows = tx
            .query_typed(
                &format!(
                    "UPDATE instances SET expires_at = CASE WHEN expires_at IS NULL THEN NULL \
                       ELSE greatest(expires_at, now()) + make_interval(secs => $2) END, \
                       updated_at = now() WHERE id = $1 RETURNING {COLS}"
                ),
                &[(&r.id, Type::TEXT), (&(h * 3600.0), Type::FLOAT8)],
            )
            .await
            .map_err(db_err)?;
        let n = rows
            .first()
            .map(row)
            .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, "no such instance"))?;
        let detail = format!("+{hours} h");
        event_tx(
            tx,
            &n.id,
            "extended",
            Some(n.status.as_str()),
            n.price_per_hour,
            n.rate(n.status),
            Some(&detail),
        )
        .await?;
        Ok(n)
    })
    .await
}

/// Records how `row`'s exposed ports are reached when the provider's mapping is new or changed:
/// an `endpoints_ready` event, and `instance.endpoints_ready` for the account. Returns whether it
/// changed.
pub async fn set_endpoints(
    db: &Db,
    row: &InstanceRow,
    endpoints: &[crate::providers::Endpoint],
) -> Result<bool> {
    let value = serde_json::to_value(endpoints).map_err(Error::internal)?;
    db.transaction(async |tx| {
        let changed = tx
            .query_typed(
                "UPDATE instances SET endpoints = $2, updated_at = now()                  WHERE id = $1 AND endpoints IS DISTINCT FROM $2 RETURNING 1",
                &[(&row.id, Type::TEXT), (&value, Type::JSONB)],
            )
            .await
            .map_err(db_err)?;
        if changed.is_empty() {
            return Ok(false);
        }
        let detail = endpoints
            .iter()
            .map(|e| {
                format!(
                    "{}/{} at {}:{}",
                    e.port,
                    e.protocol.as_str(),
                    e.public_ip,
                    e.public_port
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        event_tx(
            tx,
            &row.id,
            "endpoints_ready",
            Some(row.status.as_str()),
            row.price_per_hour,
            row.rate(row.status),
            Some(&detail),
        )
        .await?;
        let data = json!({"endpoints": endpoints});
        events::append(tx, row.account_id, events::ENDPOINTS_READY, Some(&row.id), &data).await?;
        Ok(true)
    })
    .await
}

/// Marks (or clears, with `None`) the dead state the provider reports. Returns whether this is
/// the first sighting (an event is written then): for an instance that has run (`has_run`) it is
/// unreachable, not dead, and its account gets `instance.unreachable`.
pub async fn set_dead(db: &Db, row: &InstanceRow, reason: Option<&str>) -> Result<bool> {
    let id = row.id.as_str();
    let first = db
        .query(
            "UPDATE instances SET dead_since = CASE WHEN $2::text IS NULL THEN NULL \
               ELSE coalesce(dead_since, now()) END, dead_reason = $2, updated_at = now() \
             WHERE id = $1 AND (dead_reason IS DISTINCT FROM $2) \
             RETURNING (dead_since IS NOT NULL AND dead_since = now())",
            &[(&id, Type::TEXT), (&reason, Type::TEXT)],
        )
        .await?
        .first()
        .is_some_and(|r| r.get::<_, bool>(0));
    match reason {
        Some(why) if first && row.has_run() => {
            let detail = format!(
                "the provider reports `{why}` for an instance that ran: it is kept and billed \
                 (rentals.unreachable_grace_ms, rentals.unreachable_policy)"
            );
            note(db, id, "unreachable", &detail).await?;
            db.transaction(async |tx| {
                let data = json!({"status": row.status.as_str(), "reason": why});
                events::append(tx, row.account_id, events::UNREACHABLE, Some(id), &data)
                    .await
                    .map(|_| ())
            })
            .await?;
        }
        Some(why) if first => {
            note(
                db,
                id,
                "dead_state_seen",
                &format!("the provider reports `{why}`, a state that never reaches running"),
            )
            .await?;
        }
        _ => {}
    }
    Ok(first)
}
