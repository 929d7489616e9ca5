//! Volumes in the ledger (migration 0023): a row per volume, billed `rate_per_hour` (its size
//! times the GB-month price over 720 hours) from creation to deletion, counted by every budget
//! ([`super::SPENT`]) and `/v1/usage`. A volume is only ever ended by its owner's delete, or
//! when the provider's own list (of the same account) no longer has it.

use serde::Serialize;
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::budget::{Spend, budget_check};
use super::db_err;
use crate::accounts::Db;
use crate::error::{Error, Kind, Refusal, Result, Side};
use crate::events;

/// A volume as the ledger keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeRow {
    pub id: String,
    #[serde(skip)]
    pub account_id: i64,
    pub provider: String,
    pub provider_volume_id: Option<String>,
    pub offer_id: String,
    pub machine_id: String,
    pub name: Option<String>,
    pub size_gb: i32,
    pub price_micros_per_gb_month: i64,
    pub rate_per_hour: f64,
    pub status: String,
    pub failure: Option<String>,
    pub created_at: f64,
    pub deleted_at: Option<f64>,
    /// The open instance using it, if any.
    pub attached_to: Option<String>,
}

const COLS: &str = "v.id, v.account_id, v.provider, v.provider_volume_id, v.offer_id, v.machine_id, \
    v.name, v.size_gb, v.price_micros_per_gb_month, v.rate_per_hour, v.status, v.failure, \
    extract(epoch from v.created_at)::float8, extract(epoch from v.deleted_at)::float8, \
    (SELECT i.id FROM instances i WHERE i.volume_id = v.id \
       AND i.status NOT IN ('failed', 'terminated') LIMIT 1)";

fn volume(r: &Row) -> VolumeRow {
    VolumeRow {
        id: r.get(0),
        account_id: r.get(1),
        provider: r.get(2),
        provider_volume_id: r.get(3),
        offer_id: r.get(4),
        machine_id: r.get(5),
        name: r.get(6),
        size_gb: r.get(7),
        price_micros_per_gb_month: r.get(8),
        rate_per_hour: r.get(9),
        status: r.get(10),
        failure: r.get(11),
        created_at: r.get(12),
        deleted_at: r.get(13),
        attached_to: r.get(14),
    }
}

/// A volume about to be created.
pub struct NewVolume<'a> {
    pub id: &'a str,
    pub account_id: i64,
    pub api_key_id: Option<i64>,
    pub provider: &'a str,
    pub offer_id: &'a str,
    pub machine_id: &'a str,
    pub name: Option<&'a str>,
    pub size_gb: i32,
    pub price_micros_per_gb_month: i64,
    pub budget_window_hours: u32,
}

/// The hourly rate of `size_gb` at `micros` per GB-month (a month of 720 hours, as Vast prices
/// storage: `storage_cost × disk / 720` an hour).
pub fn volume_rate(size_gb: i32, micros: i64) -> f64 {
    f64::from(size_gb) * micros as f64 / 1e6 / 720.0
}

/// Records a volume being created (`creating`), its rate checked against every budget under the
/// account's lock first, with `volume.created`.
pub async fn reserve_volume(db: &Db, n: &NewVolume<'_>) -> Result<VolumeRow> {
    let rate = volume_rate(n.size_gb, n.price_micros_per_gb_month);
    db.transaction(async |tx| {
        budget_check(
            tx,
            &Spend {
                account_id: n.account_id,
                key_id: n.api_key_id,
                window_hours: n.budget_window_hours,
                extra_per_hour: rate,
                extra_micros: 0,
                new_instance: false,
                key_max_instances: None,
                replacing: None,
            },
        )
        .await?;
        tx.query_typed(
            "INSERT INTO volumes (id, account_id, api_key_id, provider, offer_id, machine_id, \
               name, size_gb, price_micros_per_gb_month, rate_per_hour, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'creating')",
            &[
                (&n.id, Type::TEXT),
                (&n.account_id, Type::INT8),
                (&n.api_key_id, Type::INT8),
                (&n.provider, Type::TEXT),
                (&n.offer_id, Type::TEXT),
                (&n.machine_id, Type::TEXT),
                (&n.name, Type::TEXT),
                (&n.size_gb, Type::INT4),
                (&n.price_micros_per_gb_month, Type::INT8),
                (&rate, Type::FLOAT8),
            ],
        )
        .await
        .map_err(db_err)?;
        let data = serde_json::json!({"volume_id": n.id, "status": "creating",
            "size_gb": n.size_gb, "provider": n.provider, "machine_id": n.machine_id});
        events::append(tx, n.account_id, events::VOLUME_CREATED, None, &data).await?;
        let rows = tx
            .query_typed(
                &format!("SELECT {COLS} FROM volumes v WHERE v.id = $1"),
                &[(&n.id, Type::TEXT)],
            )
            .await
            .map_err(db_err)?;
        Ok(volume(&rows[0]))
    })
    .await
}

/// One of the account's volumes (404 for anyone else's).
pub async fn get_volume(db: &Db, account_id: i64, id: &str) -> Result<VolumeRow> {
    db.query_opt(
        &format!("SELECT {COLS} FROM volumes v WHERE v.id = $1 AND v.account_id = $2"),
        &[(&id, Type::TEXT), (&account_id, Type::INT8)],
    )
    .await?
    .map(|r| volume(&r))
    .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, format!("no volume {id}")))
}

/// The account's volumes, newest first.
pub async fn list_volumes(db: &Db, account_id: i64) -> Result<Vec<VolumeRow>> {
    Ok(db
        .query(
            &format!(
                "SELECT {COLS} FROM volumes v WHERE v.account_id = $1 \
                 ORDER BY v.created_at DESC LIMIT 1000"
            ),
            &[(&account_id, Type::INT8)],
        )
        .await?
        .iter()
        .map(volume)
        .collect())
}

/// Every volume the reconciler looks after for `provider` (creating or available).
pub async fn live_volumes(db: &Db, provider: &str) -> Result<Vec<VolumeRow>> {
    Ok(db
        .query(
            &format!(
                "SELECT {COLS} FROM volumes v WHERE v.provider = $1 \
                 AND v.status IN ('creating', 'available')"
            ),
            &[(&provider, Type::TEXT)],
        )
        .await?
        .iter()
        .map(volume)
        .collect())
}

/// The provider listed it: `available`, with its id.
pub async fn volume_found(db: &Db, id: &str, provider_volume_id: &str) -> Result<()> {
    db.query(
        "UPDATE volumes SET status = 'available', provider_volume_id = $2 \
         WHERE id = $1 AND status = 'creating'",
        &[(&id, Type::TEXT), (&provider_volume_id, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// Ends a volume (`deleted`: it bills until now; `failed`: never made, it billed nothing), with
/// `volume.deleted` when it existed. Returns the row after, `None` when it had ended already.
pub async fn end_volume(
    db: &Db,
    v: &VolumeRow,
    failed: bool,
    why: &str,
) -> Result<Option<VolumeRow>> {
    let status = if failed { "failed" } else { "deleted" };
    db.transaction(async |tx| {
        let rows = tx
            .query_typed(
                "UPDATE volumes SET status = $2, failure = $3, \
                   deleted_at = CASE WHEN $2 = 'deleted' THEN now() ELSE created_at END \
                 WHERE id = $1 AND status IN ('creating', 'available') RETURNING id",
                &[
                    (&v.id, Type::TEXT),
                    (&status, Type::TEXT),
                    (&why, Type::TEXT),
                ],
            )
            .await
            .map_err(db_err)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let data = serde_json::json!({"volume_id": v.id, "status": status, "reason": why});
        events::append(tx, v.account_id, events::VOLUME_DELETED, None, &data).await?;
        let rows = tx
            .query_typed(
                &format!("SELECT {COLS} FROM volumes v WHERE v.id = $1"),
                &[(&v.id, Type::TEXT)],
            )
            .await
            .map_err(db_err)?;
        Ok(rows.first().map(volume))
    })
    .await
}

/// 409 `volume_in_use` when an open instance of the account uses volume `id` (checked in the
/// transaction that holds the account's budget lock, so two rentals cannot both take it).
pub async fn volume_free(tx: &tokio_postgres::Transaction<'_>, id: &str) -> Result<()> {
    let used = tx
        .query_typed(
            "SELECT id FROM instances WHERE volume_id = $1 \
               AND status NOT IN ('failed', 'terminated') LIMIT 1",
            &[(&id, Type::TEXT)],
        )
        .await
        .map_err(db_err)?;
    if let Some(r) = used.first() {
        let by: String = r.get(0);
        return Err(Error::refused(
            Refusal::VolumeInUse,
            format!("volume {id} is used by instance {by}"),
            Some(serde_json::json!({"volume_id": id, "instance_id": by})),
        ));
    }
    Ok(())
}
