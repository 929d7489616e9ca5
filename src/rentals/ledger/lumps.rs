//! Money paid up front (io.net): amounts in the ledger rather than a rate.
//!
//! A provider that sells paid time is paid when the time is bought (docs/providers.md, io.net:
//! `duration_hours` at deploy, `extend`), so a commitment is spend the moment it is made: each
//! payment is an instance event carrying `lump_micros` (integer micro-dollars), charged to the
//! key that made it (`paid_by`), and every budget counts it from then on
//! ([`super::SPENT`]). Such an instance bills no rate.
//!
//! - **Rent**: the intent carries the quoted total (the provider's price for the hours, fees
//!   included), under the budget check ([`super::reserve`]).
//! - **Extend**: [`begin_extend`] checks the budget and records the quoted amount under the
//!   account's budget lock before the provider is asked; [`settle_extend`] records what the
//!   provider then says was paid in all (`amount_paid`), [`extend_failed`] takes the amount back
//!   when the provider did not take the extension. An outcome that is not known stays counted
//!   (`extending_since` set) until the provider's `amount_paid` settles it ([`reconcile_paid`]).
//! - **End**: io.net never refunds the first hour and refunds the rest of the unused time pro
//!   rata ([`charged`]); [`settle_end`] writes the refund, taken from the newest payments first
//!   and counted at their time (`counts_at`), so a window never sees a refund without its
//!   payment. An intent the provider never created gets everything back (`released`); one
//!   adopted after it had failed pays again (`restored`).

use tokio_postgres::types::Type;

use super::budget::{Spend, budget_check, lock_budget};
use super::{InstanceRow, db_err};
use crate::accounts::Db;
use crate::error::Result;
use crate::providers::Paid;

/// The kinds of event that give money back; every other amount is a payment.
const RETURNS: &str = "('refund', 'released', 'restored')";

/// What a deployment paid `paid_micros` for `paid_hours` costs once it ends after
/// `used_hours`: the time used, never less than the first `minimum_hours`, never more than was
/// paid for, pro rata (io.net, destroy-deployment: docs/providers.md).
pub fn charged(paid_micros: i64, paid_hours: i32, minimum_hours: f64, used_hours: f64) -> i64 {
    let h = f64::from(paid_hours.max(1));
    let used = used_hours.max(minimum_hours).clamp(0.0, h);
    ((paid_micros as f64) * used / h).round() as i64
}

/// The amounts that bring `groups` (the net amount counted at each time, oldest first) to
/// `target`: a cut comes off the newest amounts first, each counted at its time; an addition
/// counts at the oldest time.
pub fn adjustments(groups: &[(f64, i64)], target: i64) -> Vec<(f64, i64)> {
    let net: i64 = groups.iter().map(|g| g.1).sum();
    let mut diff = target - net;
    if diff > 0 {
        return groups
            .first()
            .map(|g| vec![(g.0, diff)])
            .unwrap_or_default();
    }
    let mut out = Vec::new();
    for &(at, amount) in groups.iter().rev() {
        if diff == 0 {
            break;
        }
        let cut = (-diff).min(amount.max(0));
        if cut > 0 {
            out.push((at, -cut));
            diff += cut;
        }
    }
    if diff < 0 {
        // more to take back than any one time holds (cannot happen with payments ≥ 0)
        if let Some(g) = groups.first() {
            out.push((g.0, diff));
        }
    }
    out
}

/// Records an amount on `r` as an event at its current status and rate: `paid_by` the key it
/// is charged to (the instance's payer when `None`), counted at `counts_at` (epoch seconds; the
/// event's own time when `None`). Returns the event's id.
pub(super) async fn lump_tx(
    tx: &tokio_postgres::Transaction<'_>,
    r: &InstanceRow,
    kind: &str,
    micros: i64,
    paid_by: Option<i64>,
    counts_at: Option<f64>,
    detail: &str,
) -> Result<i64> {
    let (status, rate) = (r.status.as_str(), r.rate(r.status));
    let rows = tx
        .query_typed(
            "INSERT INTO instance_events (instance_id, kind, status, price_per_hour, \
               rate_per_hour, detail, lump_micros, paid_by, counts_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, coalesce($8, payer_key_id, api_key_id), \
               to_timestamp($9) \
             FROM instances WHERE id = $1 RETURNING id",
            &[
                (&r.id, Type::TEXT),
                (&kind, Type::TEXT),
                (&status, Type::TEXT),
                (&r.price_per_hour, Type::FLOAT8),
                (&rate, Type::FLOAT8),
                (&detail, Type::TEXT),
                (&micros, Type::INT8),
                (&paid_by, Type::INT8),
                (&counts_at, Type::FLOAT8),
            ],
        )
        .await
        .map_err(db_err)?;
    Ok(rows.first().map(|x| x.get(0)).unwrap_or(0))
}

/// The amounts of `id` by the time they count (oldest first), and the payments in all.
async fn amounts(tx: &tokio_postgres::Transaction<'_>, id: &str) -> Result<(Vec<(f64, i64)>, i64)> {
    let rows = tx
        .query_typed(
            &format!(
                "SELECT extract(epoch from coalesce(counts_at, at))::float8 AS t, \
                   sum(lump_micros)::int8, \
                   coalesce(sum(lump_micros) FILTER (WHERE kind NOT IN {RETURNS}), 0)::int8 \
                 FROM instance_events WHERE instance_id = $1 AND lump_micros <> 0 \
                 GROUP BY 1 ORDER BY 1"
            ),
            &[(&id, Type::TEXT)],
        )
        .await
        .map_err(db_err)?;
    let groups = rows.iter().map(|x| (x.get(0), x.get(1))).collect();
    let paid = rows.iter().map(|x| x.get::<_, i64>(2)).sum();
    Ok((groups, paid))
}

fn usd(micros: i64) -> String {
    format!("{:.4}", micros as f64 / 1e6)
}

/// Brings `r`'s amounts to `target` with events of `kind` (see [`adjustments`]).
async fn settle_to(
    tx: &tokio_postgres::Transaction<'_>,
    r: &InstanceRow,
    kind: &str,
    target: i64,
    detail: &str,
) -> Result<()> {
    let (groups, _) = amounts(tx, &r.id).await?;
    for (at, amount) in adjustments(&groups, target) {
        lump_tx(tx, r, kind, amount, None, Some(at), detail).await?;
    }
    Ok(())
}

/// `r` has just ended (terminated, or failed): what the provider keeps of its payments. One it
/// never created keeps nothing (`released`); otherwise the time it ran from its start to the
/// destroy (the first `terminating`, else its end), never less than the first hour (`refund`).
pub(super) async fn settle_end(
    tx: &tokio_postgres::Transaction<'_>,
    r: &InstanceRow,
) -> Result<()> {
    let (_, paid) = amounts(tx, &r.id).await?;
    if r.provider_instance_id.is_none() {
        let detail = "nothing was created: the payment is not made";
        return settle_to(tx, r, "released", 0, detail).await;
    }
    let rows = tx
        .query_typed(
            "SELECT coalesce(i.minimum_hours, 0)::float8, \
               extract(epoch from (least(i.terminated_at, coalesce((SELECT min(e.at) \
                 FROM instance_events e WHERE e.instance_id = i.id AND e.status = 'terminating' \
                   AND e.at >= coalesce(i.started_at, i.created_at)), i.terminated_at)) \
                 - coalesce(i.started_at, i.created_at)))::float8 / 3600.0 \
             FROM instances i WHERE i.id = $1",
            &[(&r.id, Type::TEXT)],
        )
        .await
        .map_err(db_err)?;
    let Some(x) = rows.first() else {
        return Ok(());
    };
    let (minimum, used): (f64, Option<f64>) = (x.get(0), x.get(1));
    let hours = r.paid_hours.unwrap_or(1);
    let used = used.unwrap_or(0.0);
    let keep = charged(paid, hours, minimum, used);
    let detail = format!(
        "ran {used:.4} h of {hours} h paid ({} USD): {} USD kept (never less than the first {minimum} h), {} USD refunded",
        usd(paid),
        usd(keep),
        usd(paid - keep)
    );
    settle_to(tx, r, "refund", keep, &detail).await
}

/// `r` was adopted after its intent had failed (a late answer): it pays again what was given
/// back.
pub(super) async fn restore_released(
    tx: &tokio_postgres::Transaction<'_>,
    r: &InstanceRow,
) -> Result<()> {
    let (groups, paid) = amounts(tx, &r.id).await?;
    if groups.iter().map(|g| g.1).sum::<i64>() == paid {
        return Ok(());
    }
    let detail = "the provider created it after all: the payment is made";
    settle_to(tx, r, "restored", paid, detail).await
}

/// An extension about to be asked of the provider: checked against every budget of the account
/// and of the caller's key (`spend.key_id`) with `quoted` micro-dollars more, and recorded
/// (`extend_intent`, charged to that key) under the account's budget lock. Returns the event's
/// id, which [`settle_extend`] and [`extend_failed`] name.
pub async fn begin_extend(db: &Db, r: &InstanceRow, spend: &Spend<'_>, hours: u32) -> Result<i64> {
    let quoted = spend.extra_micros;
    db.transaction(async |tx| {
        budget_check(tx, spend).await?;
        tx.query_typed(
            "UPDATE instances SET extending_since = now() WHERE id = $1",
            &[(&r.id, Type::TEXT)],
        )
        .await
        .map_err(db_err)?;
        let detail = format!(
            "+{hours} h asked of the provider, quoted {} USD",
            usd(quoted)
        );
        lump_tx(tx, r, "extend_intent", quoted, spend.key_id, None, &detail).await
    })
    .await
}

/// The provider took the extension: `hours` more paid (and of life, when the rental has an
/// expiry); `paid` what it says the instance cost in all, when it says (the difference from the
/// quote is recorded, charged to the same key).
pub async fn settle_extend(
    db: &Db,
    r: &InstanceRow,
    intent: i64,
    hours: u32,
    paid: Option<Paid>,
) -> Result<InstanceRow> {
    db.transaction(async |tx| {
        let rows = tx
            .query_typed(
                &format!(
                    "UPDATE instances SET paid_hours = coalesce($3, paid_hours + $2), \
                       expires_at = CASE WHEN expires_at IS NULL THEN NULL \
                         ELSE greatest(expires_at, now()) + make_interval(hours => $2) END, \
                       extending_since = NULL, updated_at = now() \
                     WHERE id = $1 RETURNING {}",
                    super::COLS
                ),
                &[
                    (&r.id, Type::TEXT),
                    (&(hours as i32), Type::INT4),
                    (&paid.map(|p| p.hours as i32), Type::INT4),
                ],
            )
            .await
            .map_err(db_err)?;
        let n = rows.first().map(super::row).ok_or_else(|| {
            crate::error::Error::internal(std::io::Error::other("no such instance"))
        })?;
        let (_, so_far) = amounts(tx, &r.id).await?;
        let (payer, at) = intent_of(tx, intent).await?;
        let more = paid.map_or(0, |p| p.micros - so_far);
        let detail = match paid {
            Some(p) => format!(
                "+{hours} h: the provider has {} USD paid for {} h in all",
                usd(p.micros),
                p.hours
            ),
            None => format!("+{hours} h"),
        };
        lump_tx(tx, &n, "extended", more, payer, Some(at), &detail).await?;
        Ok(n)
    })
    .await
}

/// The key an extension was charged to and when it counts.
async fn intent_of(
    tx: &tokio_postgres::Transaction<'_>,
    intent: i64,
) -> Result<(Option<i64>, f64)> {
    let rows = tx
        .query_typed(
            "SELECT paid_by, extract(epoch from at)::float8 FROM instance_events WHERE id = $1",
            &[(&intent, Type::INT8)],
        )
        .await
        .map_err(db_err)?;
    Ok(rows
        .first()
        .map(|x| (x.get(0), x.get(1)))
        .unwrap_or((None, 0.0)))
}

/// The provider did not take the extension: its quoted amount is taken back.
pub async fn extend_failed(db: &Db, r: &InstanceRow, intent: i64, why: &str) -> Result<()> {
    db.transaction(async |tx| {
        tx.query_typed(
            "UPDATE instances SET extending_since = NULL WHERE id = $1",
            &[(&r.id, Type::TEXT)],
        )
        .await
        .map_err(db_err)?;
        let rows = tx
            .query_typed(
                "SELECT lump_micros FROM instance_events WHERE id = $1",
                &[(&intent, Type::INT8)],
            )
            .await
            .map_err(db_err)?;
        let quoted: i64 = rows.first().map(|x| x.get(0)).unwrap_or(0);
        let (payer, at) = intent_of(tx, intent).await?;
        let detail = format!("not extended: {why}");
        lump_tx(tx, r, "extend_failed", -quoted, payer, Some(at), &detail).await?;
        Ok(())
    })
    .await
}

/// Open instances of `provider` with an extension in flight for longer than any answer takes
/// (`in_flight_secs`): its outcome is read from the provider ([`reconcile_paid`]).
pub async fn extends_in_doubt(
    db: &Db,
    provider: &str,
    in_flight_secs: f64,
) -> Result<Vec<InstanceRow>> {
    let rows = db
        .query(
            &format!(
                "SELECT {} FROM instances WHERE provider = $1 AND extending_since IS NOT NULL \
                   AND extending_since < now() - make_interval(secs => $2) \
                   AND status NOT IN ('failed', 'terminated', 'terminating')",
                super::COLS
            ),
            &[(&provider, Type::TEXT), (&in_flight_secs, Type::FLOAT8)],
        )
        .await?;
    Ok(rows.iter().map(super::row).collect())
}

/// What the provider says `r` cost in all (`amount_paid`, the hours bought): where the ledger
/// differs (a quote that was not the price, an extension whose answer was lost), the ledger takes
/// the provider's figure (`paid_adjusted`). Not while an extension is in flight (begun less than
/// `in_flight_secs` ago: longer than any provider call takes); under the account's budget lock,
/// so an extension cannot start in between. Returns whether it changed.
pub async fn reconcile_paid(
    db: &Db,
    r: &InstanceRow,
    paid: Paid,
    in_flight_secs: f64,
) -> Result<bool> {
    // every status read of a deployment comes here: the lock only when the figures differ
    let agrees = db
        .transaction(async |tx| {
            let (_, so_far) = amounts(tx, &r.id).await?;
            Ok(so_far == paid.micros && r.paid_hours == Some(paid.hours as i32))
        })
        .await?;
    if agrees {
        return Ok(false);
    }
    db.transaction(async |tx| {
        lock_budget(tx, r.account_id).await?;
        let rows = tx
            .query_typed(
                "SELECT paid_hours FROM instances WHERE id = $1 AND paid_hours IS NOT NULL \
                   AND status NOT IN ('failed', 'terminated', 'terminating') \
                   AND (extending_since IS NULL \
                     OR extending_since < now() - make_interval(secs => $2))",
                &[(&r.id, Type::TEXT), (&in_flight_secs, Type::FLOAT8)],
            )
            .await
            .map_err(db_err)?;
        let Some(x) = rows.first() else {
            return Ok(false);
        };
        let hours: i32 = x.get(0);
        let (_, so_far) = amounts(tx, &r.id).await?;
        if so_far == paid.micros && hours == paid.hours as i32 {
            return Ok(false);
        }
        tx.query_typed(
            "UPDATE instances SET paid_hours = $2, extending_since = NULL WHERE id = $1",
            &[(&r.id, Type::TEXT), (&(paid.hours as i32), Type::INT4)],
        )
        .await
        .map_err(db_err)?;
        let detail = format!(
            "the provider has {} USD paid for {} h; the ledger had {} USD for {hours} h",
            usd(paid.micros),
            paid.hours,
            usd(so_far)
        );
        lump_tx(
            tx,
            r,
            "paid_adjusted",
            paid.micros - so_far,
            None,
            None,
            &detail,
        )
        .await?;
        Ok(true)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// io.net: the first hour is never refunded; after it, the time used, pro rata.
    #[test]
    fn the_first_hour_is_kept_and_the_rest_refunded_pro_rata() {
        assert_eq!(charged(3_000_000, 3, 1.0, 0.1), 1_000_000);
        assert_eq!(charged(3_000_000, 3, 1.0, 1.5), 1_500_000);
        assert_eq!(
            charged(3_000_000, 3, 1.0, 7.0),
            3_000_000,
            "never more than paid"
        );
        assert_eq!(charged(3_000_000, 3, 0.0, 0.0), 0);
    }

    #[test]
    fn a_refund_comes_off_the_newest_payments_first() {
        let groups = [(100.0, 5_000), (200.0, 3_000), (300.0, 2_000)];
        assert_eq!(
            adjustments(&groups, 6_000),
            vec![(300.0, -2_000), (200.0, -2_000)]
        );
        assert_eq!(adjustments(&groups, 10_000), vec![]);
        assert_eq!(adjustments(&groups, 12_000), vec![(100.0, 2_000)]);
        assert_eq!(
            adjustments(&groups, 0),
            vec![(300.0, -2_000), (200.0, -3_000), (100.0, -5_000)]
        );
        // a group already given back (a failed extension) is passed over
        let groups = [(100.0, 5_000), (200.0, 0)];
        assert_eq!(adjustments(&groups, 4_000), vec![(100.0, -1_000)]);
    }
}
