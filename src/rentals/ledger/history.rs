//! The append-only instance events: one per state change, written in the change's
//! transaction, and read back for an instance's history.

use serde::Serialize;
use tokio_postgres::types::Type;

use super::{COLS, db_err, row};
use crate::accounts::Db;
use crate::error::Result;

pub(super) async fn event_tx(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    kind: &str,
    status: Option<&str>,
    price: f64,
    rate: f64,
    detail: Option<&str>,
) -> Result<()> {
    // the key that pays from this event on: the instance's payer (`lumps` names its own)
    tx.query_typed(
        "INSERT INTO instance_events (instance_id, kind, status, price_per_hour, rate_per_hour, \
           detail, paid_by) \
         SELECT $1, $2, $3, $4, $5, $6, coalesce(payer_key_id, api_key_id) \
         FROM instances WHERE id = $1",
        &[
            (&id, Type::TEXT),
            (&kind, Type::TEXT),
            (&status, Type::TEXT),
            (&price, Type::FLOAT8),
            (&rate, Type::FLOAT8),
            (&detail, Type::TEXT),
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Records an event that changes no status (a key attached, a dead state seen), at the rate in
/// force.
pub async fn note(db: &Db, id: &str, kind: &str, detail: &str) -> Result<()> {
    db.transaction(async |tx| {
        let rows = tx
            .query_typed(
                &format!("SELECT {COLS} FROM instances WHERE id = $1"),
                &[(&id, Type::TEXT)],
            )
            .await
            .map_err(db_err)?;
        let Some(r) = rows.first().map(row) else {
            return Ok(());
        };
        let billed = r.rate(r.status);
        event_tx(
            tx,
            id,
            kind,
            Some(r.status.as_str()),
            r.price_per_hour,
            billed,
            Some(detail),
        )
        .await
    })
    .await
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at: f64,
    pub kind: String,
    pub status: Option<String>,
    pub price_per_hour: Option<f64>,
    /// What the instance billed from this event on.
    pub rate_per_hour: Option<f64>,
    pub detail: Option<String>,
}

pub async fn events(db: &Db, id: &str) -> Result<Vec<Event>> {
    Ok(db
        .query(
            "SELECT extract(epoch from at)::float8, kind, status, price_per_hour, detail, \
               rate_per_hour FROM instance_events WHERE instance_id = $1 ORDER BY id",
            &[(&id, Type::TEXT)],
        )
        .await?
        .iter()
        .map(|r| Event {
            at: r.get(0),
            kind: r.get(1),
            status: r.get(2),
            price_per_hour: r.get(3),
            detail: r.get(4),
            rate_per_hour: r.get(5),
        })
        .collect())
}
