//! What the rentals' own policies leave in the ledger (`rentals::upkeep`): the idle span being
//! watched, the interruption policy's last outcome (so a round repeats no event), the rental a
//! failover made, and the account events that tell the renter.

use serde_json::Value;
use tokio_postgres::types::Type;

use super::db_err;
use crate::accounts::Db;
use crate::error::Result;
use crate::events;

/// Starts (`since`), keeps, or ends (`None`) an idle span, with whether it was warned.
pub async fn set_idle(db: &Db, id: &str, since: Option<f64>, warned: bool) -> Result<()> {
    db.query(
        "UPDATE instances SET idle_since = to_timestamp($2), idle_warned = $3 WHERE id = $1",
        &[
            (&id, Type::TEXT),
            (&since, Type::FLOAT8),
            (&warned, Type::BOOL),
        ],
    )
    .await?;
    Ok(())
}

/// Records `note` as the interruption policy's latest outcome and, when it differs from the one
/// before, the account event `kind` with `data` in the same transaction. Returns whether it was
/// new.
pub async fn upkeep_event(
    db: &Db,
    account_id: i64,
    id: &str,
    note: &str,
    kind: &str,
    data: &Value,
) -> Result<bool> {
    db.transaction(async |tx| {
        let changed = tx
            .query_typed(
                "UPDATE instances SET upkeep_note = $2 \
                 WHERE id = $1 AND upkeep_note IS DISTINCT FROM $2 RETURNING id",
                &[(&id, Type::TEXT), (&note, Type::TEXT)],
            )
            .await
            .map_err(db_err)?;
        if changed.is_empty() {
            return Ok(false);
        }
        events::append(tx, account_id, kind, Some(id), data).await?;
        Ok(true)
    })
    .await
}

/// An account event about an instance, in a transaction of its own.
pub async fn account_event(
    db: &Db,
    account_id: i64,
    id: &str,
    kind: &str,
    data: &Value,
) -> Result<()> {
    db.transaction(async |tx| {
        events::append(tx, account_id, kind, Some(id), data).await?;
        Ok(())
    })
    .await
}

/// What a failover of `id` rents by again (the rental's body), if it kept one.
pub async fn relaunch_of(db: &Db, id: &str) -> Result<Option<Value>> {
    Ok(db
        .query_opt(
            "SELECT relaunch FROM instances WHERE id = $1",
            &[(&id, Type::TEXT)],
        )
        .await?
        .and_then(|r| r.get::<_, Option<Value>>(0)))
}

/// Names the rental request a failover makes in `id`'s place (before it runs: a crash leaves it
/// named, and the next round starts it again).
pub async fn set_replaced_by(db: &Db, id: &str, request_id: &str) -> Result<()> {
    db.query(
        "UPDATE instances SET replaced_by = $2 WHERE id = $1",
        &[(&id, Type::TEXT), (&request_id, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// Failovers named but never started (their daemon stopped between the destroy and the rental):
/// (instance, account, renting key, request id) of rows whose note says a failover is pending and
/// whose request has no try yet, older than `older_than_secs`.
pub async fn failovers_not_started(
    db: &Db,
    older_than_secs: f64,
) -> Result<Vec<(String, i64, Option<i64>, String)>> {
    let rows = db
        .query(
            "SELECT i.id, i.account_id, i.api_key_id, i.replaced_by FROM instances i \
             WHERE i.upkeep_note = 'failover_pending' AND i.replaced_by IS NOT NULL \
               AND i.terminated_at < now() - make_interval(secs => $1) \
               AND NOT EXISTS (SELECT 1 FROM instances t WHERE t.rental_request_id = i.replaced_by)",
            &[(&older_than_secs, Type::FLOAT8)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}
