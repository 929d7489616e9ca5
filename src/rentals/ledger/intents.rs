//! Rental intents: the row (and its `intent` event) written before the provider is called,
//! under the budget check ([`reserve`]); the tries of a rental by spec; what is open.

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::budget::{Spend, budget_check};
use super::history::event_tx;
use super::{COLS, InstanceRow, NewInstance, Status, db_err, row};
use crate::accounts::Db;
use crate::error::Result;
use crate::events;

/// Checks the budget and the instance limit and writes the intent (status `pending`) and the
/// keys the instance must get, in one transaction under the account's budget lock.
pub async fn reserve(db: &Db, n: &NewInstance<'_>) -> Result<InstanceRow> {
    db.transaction(async |tx| {
        budget_check(
            tx,
            &Spend {
                account_id: n.account_id,
                key_id: n.api_key_id,
                window_hours: n.budget_window_hours,
                // time paid up front is paid now, and bills no rate
                extra_per_hour: if n.prepaid.is_some() {
                    0.0
                } else {
                    n.price_per_hour
                },
                extra_micros: n.prepaid.map_or(0, |p| p.1),
                new_instance: true,
                key_max_instances: n.key_max_instances,
                replacing: None,
            },
        )
        .await?;
        if let Some((volume, _)) = n.volume {
            super::volume_free(tx, volume).await?;
        }
        let rows = insert_instance(tx, n, Status::Pending, None).await?;
        for (name, key, fingerprint) in n.ssh_keys {
            tx.query_typed(
                "INSERT INTO instance_ssh_keys (instance_id, fingerprint, public_key, name) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[
                    (&n.id, Type::TEXT),
                    (fingerprint, Type::TEXT),
                    (key, Type::TEXT),
                    (name, Type::TEXT),
                ],
            )
            .await
            .map_err(db_err)?;
        }
        let detail = n
            .bid_per_hour
            .map(|b| format!("interruptible at a bid of {b} USD/h"))
            .or_else(|| n.terms.map(str::to_owned));
        let r = row(&rows[0]);
        match n.prepaid {
            Some((hours, micros)) => {
                let detail = format!(
                    "{hours} h paid up front: {} USD ({})",
                    micros as f64 / 1e6,
                    detail.as_deref().unwrap_or("the provider's price")
                );
                super::lumps::lump_tx(tx, &r, "intent", micros, None, None, &detail).await?;
            }
            None => {
                event_tx(
                    tx,
                    n.id,
                    "intent",
                    Some("pending"),
                    n.price_per_hour,
                    0.0,
                    detail.as_deref(),
                )
                .await?;
            }
        }
        events::append_for_instance(tx, n.account_id, n.id, "intent", Some("pending"), None)
            .await?;
        Ok(r)
    })
    .await
}

/// A try of a rental by spec that failed before its intent could be reserved (the offer was
/// gone, its price moved, another rental held it): recorded as an intent that failed at once, so
/// every try is in the ledger. Bills nothing.
pub async fn failed_try(db: &Db, n: &NewInstance<'_>, why: &str) -> Result<()> {
    db.transaction(async |tx| {
        insert_instance(tx, n, Status::Failed, Some(why)).await?;
        event_tx(
            tx,
            n.id,
            "intent",
            Some("pending"),
            n.price_per_hour,
            0.0,
            None,
        )
        .await?;
        event_tx(
            tx,
            n.id,
            "failed",
            Some("failed"),
            n.price_per_hour,
            0.0,
            Some(why),
        )
        .await?;
        events::append_for_instance(tx, n.account_id, n.id, "failed", Some("failed"), Some(why))
            .await
    })
    .await
}

/// An account's open instances (only those `key` pays for, when given), oldest first.
pub async fn open_of(db: &Db, account_id: i64, key: Option<i64>) -> Result<Vec<InstanceRow>> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLS} FROM instances WHERE account_id = $1 \
                   AND ($2::int8 IS NULL OR coalesce(payer_key_id, api_key_id) = $2) \
                   AND status NOT IN ('failed', 'terminated') ORDER BY created_at"
            ),
            &[(&account_id, Type::INT8), (&key, Type::INT8)],
        )
        .await?;
    Ok(rows.iter().map(row).collect())
}

/// Open instances whose lifetime is over (`expires_at` passed), soonest first, at most `limit`.
pub async fn due_to_expire(db: &Db, limit: i64) -> Result<Vec<InstanceRow>> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLS} FROM instances WHERE expires_at <= now() \
                   AND expires_at IS NOT NULL AND status NOT IN ('failed', 'terminated') \
                   AND status NOT IN ('pending', 'terminating') \
                   AND provider_instance_id IS NOT NULL ORDER BY expires_at LIMIT $1"
            ),
            &[(&limit, Type::INT8)],
        )
        .await?;
    Ok(rows.iter().map(row).collect())
}

/// The rows of the rental `subject` of an account: the instance of that id, or the tries of the
/// rental by spec of that request id, oldest first.
pub async fn of_rental(db: &Db, account_id: i64, subject: &str) -> Result<Vec<InstanceRow>> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLS} FROM instances WHERE account_id = $1 \
                   AND (id = $2 OR rental_request_id = $2) ORDER BY created_at, try_index"
            ),
            &[(&account_id, Type::INT8), (&subject, Type::TEXT)],
        )
        .await?;
    Ok(rows.iter().map(row).collect())
}

/// The tries of a rental by spec, in order.
pub async fn tries(db: &Db, request_id: &str) -> Result<Vec<InstanceRow>> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLS} FROM instances WHERE rental_request_id = $1 ORDER BY try_index"
            ),
            &[(&request_id, Type::TEXT)],
        )
        .await?;
    Ok(rows.iter().map(row).collect())
}

/// The instance row of an intent: `pending` (a rental about to call the provider), or `failed`
/// with why (a try of a rental by spec refused before that).
pub(super) async fn insert_instance(
    tx: &tokio_postgres::Transaction<'_>,
    n: &NewInstance<'_>,
    status: Status,
    failure: Option<&str>,
) -> Result<Vec<Row>> {
    let status = status.as_str();
    tx.query_typed(
        &format!(
            "INSERT INTO instances (id, account_id, provider, offer_id, gpu_model, \
               gpu_count, price_per_hour, image, disk_gb, label, status, bid_per_hour, \
               storage_per_hour, expires_at, rental_request_id, try_index, api_key_id, failure, \
               minimum_hours, paid_hours, policies, relaunch, volume_id, volume_mount) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
               to_timestamp($14), $15, $16, $17, $18, $19, $20, $21, $22, $23, $24) \
             RETURNING {COLS}"
        ),
        &[
            (&n.id, Type::TEXT),
            (&n.account_id, Type::INT8),
            (&n.provider, Type::TEXT),
            (&n.offer_id, Type::TEXT),
            (&n.gpu_model, Type::TEXT),
            (&n.gpu_count, Type::INT4),
            (&n.price_per_hour, Type::FLOAT8),
            (&n.image, Type::TEXT),
            (&n.disk_gb, Type::INT4),
            (&n.label, Type::TEXT),
            (&status, Type::TEXT),
            (&n.bid_per_hour, Type::FLOAT8),
            (&n.storage_per_hour, Type::FLOAT8),
            (&n.expires_at, Type::FLOAT8),
            (&n.request.map(|r| r.0), Type::TEXT),
            (&n.request.map(|r| r.1), Type::INT4),
            (&n.api_key_id, Type::INT8),
            (&failure, Type::TEXT),
            (&n.minimum_hours, Type::FLOAT8),
            (&n.prepaid.map(|p| p.0 as i32), Type::INT4),
            (&n.policies, Type::JSONB),
            (&n.relaunch, Type::JSONB),
            (&n.volume.map(|v| v.0), Type::TEXT),
            (&n.volume.map(|v| v.1), Type::TEXT),
        ],
    )
    .await
    .map_err(db_err)
}

/// When `id` has just ended (`terminated`) sooner than the paid time its provider never refunds
/// (`minimum_hours`, from its start), charges the rest of that time at its price in one amount:
/// a `minimum_charge` event with `lump_micros`, once. Rows from before time paid up front was
/// recorded as paid (`lumps` settles those).
pub(super) async fn charge_minimum(tx: &tokio_postgres::Transaction<'_>, id: &str) -> Result<()> {
    tx.query_typed(
        "INSERT INTO instance_events (instance_id, kind, status, price_per_hour, rate_per_hour, \
           detail, lump_micros) \
         SELECT i.id, 'minimum_charge', i.status, i.price_per_hour, 0, \
           format('the provider never refunds the first %s h: %s h not used, charged at %s USD/h', \
             i.minimum_hours, round(x.left_h::numeric, 4), i.price_per_hour), \
           round(x.left_h * i.price_per_hour * 1e6)::int8 \
         FROM instances i, LATERAL (SELECT i.minimum_hours - extract(epoch from \
             (i.terminated_at - i.started_at))::float8 / 3600.0 AS left_h) x \
         WHERE i.id = $1 AND i.status = 'terminated' AND i.minimum_hours IS NOT NULL \
           AND i.paid_hours IS NULL \
           AND i.started_at IS NOT NULL AND x.left_h > 0 \
           AND NOT EXISTS (SELECT 1 FROM instance_events m WHERE m.instance_id = i.id \
             AND m.kind = 'minimum_charge')",
        &[(&id, Type::TEXT)],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}
