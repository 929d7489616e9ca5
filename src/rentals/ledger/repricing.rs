//! Hosts' price increases in the ledger (`rentals::repricing`, migration 0022): each decided once
//! and told to the account in one transaction, its answer at the provider recorded, and an
//! accepted one applied to the instance's price when it takes effect.

use serde_json::Value;
use tokio_postgres::types::Type;

use super::history::event_tx;
use super::{COLS, db_err, row};
use crate::accounts::Db;
use crate::error::Result;
use crate::events;

/// One decision on a host's price increase.
pub struct Decision<'a> {
    pub provider: &'a str,
    pub pending_id: &'a str,
    pub instance_id: &'a str,
    pub account_id: i64,
    pub increase_pct: f64,
    pub accept: bool,
    pub applies_at: Option<f64>,
    /// The instance's price and storage (micro-dollars per hour) once it applies.
    pub price_micros: i64,
    pub storage_micros: i64,
    /// The account event's data.
    pub event: &'a Value,
}

/// Records `d` and its account event, once per pending row: `false` when it was decided before.
pub async fn decide_price_increase(db: &Db, d: &Decision<'_>) -> Result<bool> {
    db.transaction(async |tx| {
        let inserted = tx
            .query_typed(
                "INSERT INTO price_increases (provider, pending_id, instance_id, increase_pct, \
                   accept, applies_at, price_micros_per_hour, storage_micros_per_hour) \
                 VALUES ($1, $2, $3, $4::float8::numeric, $5, to_timestamp($6), $7, $8) \
                 ON CONFLICT (provider, pending_id) DO NOTHING RETURNING 1",
                &[
                    (&d.provider, Type::TEXT),
                    (&d.pending_id, Type::TEXT),
                    (&d.instance_id, Type::TEXT),
                    (&d.increase_pct, Type::FLOAT8),
                    (&d.accept, Type::BOOL),
                    (&d.applies_at, Type::FLOAT8),
                    (&d.price_micros, Type::INT8),
                    (&d.storage_micros, Type::INT8),
                ],
            )
            .await
            .map_err(db_err)?;
        if inserted.is_empty() {
            return Ok(false);
        }
        events::append(
            tx,
            d.account_id,
            events::PRICE_INCREASE,
            Some(d.instance_id),
            d.event,
        )
        .await?;
        Ok(true)
    })
    .await
}

/// The decision kept for a pending row not yet answered at the provider: whether it accepts.
pub async fn unanswered_price_increase(
    db: &Db,
    provider: &str,
    pending_id: &str,
) -> Result<Option<bool>> {
    Ok(db
        .query_opt(
            "SELECT accept FROM price_increases \
             WHERE provider = $1 AND pending_id = $2 AND outcome IS NULL",
            &[(&provider, Type::TEXT), (&pending_id, Type::TEXT)],
        )
        .await?
        .map(|r| r.get(0)))
}

/// The provider took the answer (`stale`: the row was no longer pending there).
pub async fn answered_price_increase(
    db: &Db,
    provider: &str,
    pending_id: &str,
    stale: bool,
) -> Result<()> {
    let outcome = if stale { "stale" } else { "answered" };
    db.query(
        "UPDATE price_increases SET outcome = $3 WHERE provider = $1 AND pending_id = $2",
        &[
            (&provider, Type::TEXT),
            (&pending_id, Type::TEXT),
            (&outcome, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// Applies every accepted increase whose time has come to its (still open) instance: the new
/// price from now on, a `price_changed` event. Returns how many.
pub async fn apply_due_price_increases(db: &Db) -> Result<usize> {
    db.transaction(async |tx| {
        let due = tx
            .query_typed(
                "UPDATE price_increases SET applied_at = now() \
                 WHERE accept AND outcome = 'answered' AND applied_at IS NULL \
                   AND applies_at <= now() \
                 RETURNING instance_id, price_micros_per_hour, storage_micros_per_hour, \
                   pending_id, increase_pct::float8",
                &[],
            )
            .await
            .map_err(db_err)?;
        let mut n = 0;
        for d in &due {
            let (id, price, storage): (String, i64, i64) = (d.get(0), d.get(1), d.get(2));
            let (pending, pct): (String, f64) = (d.get(3), d.get(4));
            let (price, storage) = (price as f64 / 1e6, storage as f64 / 1e6);
            let rows = tx
                .query_typed(
                    &format!(
                        "UPDATE instances SET price_per_hour = $2, storage_per_hour = $3, \
                           updated_at = now() \
                         WHERE id = $1 AND status NOT IN ('terminated', 'failed') \
                         RETURNING {COLS}"
                    ),
                    &[
                        (&id, Type::TEXT),
                        (&price, Type::FLOAT8),
                        (&storage, Type::FLOAT8),
                    ],
                )
                .await
                .map_err(db_err)?;
            let Some(r) = rows.first().map(row) else {
                continue;
            };
            let detail =
                format!("the host's price increase {pending} (+{pct:.1}%) applies: {price} USD/h");
            event_tx(
                tx,
                &r.id,
                "price_changed",
                Some(r.status.as_str()),
                r.price_per_hour,
                r.rate(r.status),
                Some(&detail),
            )
            .await?;
            n += 1;
        }
        Ok(n)
    })
    .await
}
