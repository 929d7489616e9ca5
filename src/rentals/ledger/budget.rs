//! Budgets in the ledger: spend over a window from the event segments ([`SPENT`]), the
//! figures of every budget of an account or key ([`Budgets`]), and the check a change makes
//! under the account's budget lock ([`budget_check`]).

use serde::Serialize;
use serde_json::json;
use tokio_postgres::types::Type;

use super::db_err;
use crate::error::{Error, Kind, Refusal, Result, Side};

/// An account's spend (USD) by budget, from the event segments (module header) plus the
/// bandwidth its instances were billed (provider charge items `bwu`/`bwd`, counted when their
/// period ends; they arrive with the charges, so they lag) and the amounts of its events (time
/// paid up front, counted when paid, its refunds at the time of what they return: `lumps`; the
/// unrefunded rest of a minimum paid time): over the last `$3` hours; since the start of the UTC
/// month; over the last `$3` hours charged to key `$2` (each segment and amount to the key
/// that paid it: `paid_by`, else the renting key).
pub const SPENT: &str = "WITH t AS (SELECT now() - make_interval(hours => $3) AS win, \
      (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS mon), \
    seg AS ( \
      SELECT coalesce(e.paid_by, i.api_key_id) AS key, e.rate_per_hour AS rate, e.status, e.at AS t0, \
        coalesce(lead(e.at) OVER (PARTITION BY e.instance_id ORDER BY e.id), now()) AS t1 \
      FROM instance_events e JOIN instances i ON i.id = e.instance_id, t \
      WHERE i.account_id = $1 AND coalesce(i.terminated_at, now()) > least(t.win, t.mon) \
      UNION ALL \
      SELECT v.api_key_id, v.rate_per_hour, 'volume', v.created_at, coalesce(v.deleted_at, now()) \
      FROM volumes v, t WHERE v.account_id = $1 AND v.status <> 'failed' \
        AND coalesce(v.deleted_at, now()) > least(t.win, t.mon)), \
    b AS (SELECT key, coalesce(rate, 0) AS rate, t0, least(t1, now()) AS t1 FROM seg \
      WHERE status NOT IN ('pending', 'failed', 'terminated')), \
    bw AS (SELECT i.api_key_id AS key, c.amount_micros / 1e6 AS usd, \
        coalesce(c.period_end, c.at) AS ended \
      FROM provider_charges c JOIN instances i ON i.provider = c.provider \
        AND i.provider_instance_id = c.provider_instance_id \
      WHERE i.account_id = $1 AND c.item IN ('bwu', 'bwd') \
      UNION ALL \
      SELECT coalesce(e.paid_by, i.api_key_id), e.lump_micros / 1e6, coalesce(e.counts_at, e.at) \
      FROM instance_events e JOIN instances i ON i.id = e.instance_id \
      WHERE i.account_id = $1 AND e.lump_micros <> 0), \
    bws AS (SELECT coalesce(sum(usd) FILTER (WHERE ended > t.win), 0)::float8 AS win, \
        coalesce(sum(usd) FILTER (WHERE ended > t.mon), 0)::float8 AS mon, \
        coalesce(sum(usd) FILTER (WHERE ended > t.win AND key = $2), 0)::float8 AS key \
      FROM bw, t) \
    SELECT \
      coalesce(sum(rate * extract(epoch from (t1 - greatest(t0, t.win)))) \
        FILTER (WHERE t1 > t.win), 0)::float8 / 3600.0 + min(bws.win), \
      coalesce(sum(rate * extract(epoch from (t1 - greatest(t0, t.mon)))) \
        FILTER (WHERE t1 > t.mon), 0)::float8 / 3600.0 + min(bws.mon), \
      coalesce(sum(rate * extract(epoch from (t1 - greatest(t0, t.win)))) \
        FILTER (WHERE t1 > t.win AND b.key = $2), 0)::float8 / 3600.0 + min(bws.key) \
    FROM t, bws LEFT JOIN b ON true";

/// An account's limits and what it has spent and has open against each, as of now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Budgets {
    pub status: String,
    pub max_instances: i32,
    pub open_instances: i64,
    /// What everything open bills per hour now (the instance being replaced left out).
    pub open_per_hour: f64,
    /// Of which the instances the key rented.
    pub key_open_per_hour: f64,
    /// Open instances the key rented.
    pub key_open_instances: i64,
    pub window_hours: u32,
    pub window_budget: f64,
    pub spent_in_window: f64,
    pub monthly_budget: Option<f64>,
    pub spent_this_month: f64,
    pub key_limit: Option<f64>,
    pub key_spent_in_window: f64,
    pub on_exhausted: String,
}

/// One budget's figures: which, the limit, spent, and the rate that adds to it.
pub struct Figure {
    pub budget: &'static str,
    pub limit: f64,
    pub spent: f64,
    pub open_per_hour: f64,
}

impl Budgets {
    /// The budgets that apply (the monthly one and the key's only when set).
    pub fn figures(&self) -> Vec<Figure> {
        let mut out = vec![Figure {
            budget: "window",
            limit: self.window_budget,
            spent: self.spent_in_window,
            open_per_hour: self.open_per_hour,
        }];
        if let Some(limit) = self.monthly_budget {
            out.push(Figure {
                budget: "monthly",
                limit,
                spent: self.spent_this_month,
                open_per_hour: self.open_per_hour,
            });
        }
        if let Some(limit) = self.key_limit {
            out.push(Figure {
                budget: "key",
                limit,
                spent: self.key_spent_in_window,
                open_per_hour: self.key_open_per_hour,
            });
        }
        out
    }

    /// The check of a change against these figures (no database: [`budget_check`] reads them
    /// under the account's budget lock first): the account is active, a new instance fits the
    /// instance limit, and every budget that applies fits `spent + (open + new rate) × window`.
    pub fn check(&self, s: &Spend<'_>) -> Result<()> {
        if self.status != "active" {
            return Err(Error::forbidden(
                "account_suspended",
                "the account is suspended",
            ));
        }
        if s.new_instance && self.open_instances >= i64::from(self.max_instances) {
            return Err(Error::refused(
                Refusal::InstanceLimit,
                format!(
                    "the account already has {} open instances (at most {})",
                    self.open_instances, self.max_instances
                ),
                Some(
                    json!({"open_instances": self.open_instances, "max_instances": self.max_instances}),
                ),
            ));
        }
        if s.new_instance
            && let Some(max) = s.key_max_instances
            && self.key_open_instances >= i64::from(max)
        {
            return Err(crate::accounts::policy::refused(
                "max_instances",
                format!(
                    "this key already has {} open instances (its policy allows {max})",
                    self.key_open_instances
                ),
                json!({"open_instances": self.key_open_instances, "max_instances": max}),
            ));
        }
        let hours = f64::from(s.window_hours);
        for f in self.figures() {
            // what was spent, plus what everything open (and the new rate) would cost over the next
            // window: the hour of the day does not matter
            let now = s.extra_micros as f64 / 1e6;
            let projected = f.spent + now + (f.open_per_hour + s.extra_per_hour) * hours;
            if projected > f.limit {
                let r2 = |x: f64| (x * 10_000.0).round() / 10_000.0;
                let (what, since) = match f.budget {
                    "monthly" => ("the monthly budget", "this month"),
                    "key" => ("this key's spend limit", "in the window"),
                    _ => ("the budget", "in the window"),
                };
                let more = if s.extra_micros != 0 {
                    format!("{now:.4} USD paid now")
                } else {
                    format!("{:.4} USD/h more", s.extra_per_hour)
                };
                return Err(Error::refused(
                    Refusal::BudgetExceeded,
                    format!(
                        "{more} would bring the projected spend ({:.2} USD spent {since}, plus {} h of everything open) to {:.2} USD, over {what} of {:.2} USD",
                        f.spent, s.window_hours, projected, f.limit
                    ),
                    Some(json!({
                        "budget": f.budget,
                        "limit_usd": r2(f.limit),
                        "daily_budget_usd": r2(self.window_budget),
                        "window_hours": s.window_hours,
                        "spent_usd": r2(f.spent),
                        "spent_in_window_usd": r2(self.spent_in_window),
                        "open_instances_usd_per_hour": r2(f.open_per_hour),
                        "price_per_hour": r2(s.extra_per_hour),
                        "paid_now_usd": r2(now),
                        "projected_spend_usd": r2(projected),
                    })),
                ));
            }
        }
        Ok(())
    }
}

/// Takes the account's budget lock (transaction-scoped; see [`budgets`]).
pub async fn lock_budget(tx: &tokio_postgres::Transaction<'_>, account_id: i64) -> Result<()> {
    tx.query_typed(
        "SELECT pg_advisory_xact_lock(hashtextextended('rentals.budget', $1))",
        &[(&account_id, Type::INT8)],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Reads an account's budgets; with `lock`, first takes the account's budget lock (a
/// transaction-scoped advisory lock), so the checks of one account run one after the other,
/// each seeing what the ones before it recorded. `key`: the key whose cap applies; `replacing`:
/// an instance whose current rate a change replaces (a changed bid, a start).
///
/// Not the account's row `FOR UPDATE`, as it was: the row is also locked by every event append
/// (`event_seq`) and key-share locked by every insert that references it (instances, events),
/// and a `FOR UPDATE` waiting behind those key-share locks queued the event appends of the
/// transactions holding them behind itself: 40 concurrent rentals of one account deadlocked
/// (17-19 answered 503). The lock order is in docs/design.md, "Lock order".
pub async fn budgets(
    tx: &tokio_postgres::Transaction<'_>,
    account_id: i64,
    key: Option<i64>,
    window_hours: u32,
    replacing: Option<&str>,
    lock: bool,
) -> Result<Budgets> {
    if lock {
        lock_budget(tx, account_id).await?;
    }
    let acct = tx
        .query_typed(
            "SELECT daily_budget_usd::float8, max_instances, status, \
               monthly_budget_usd::float8, on_budget_exhausted, \
               (SELECT spend_limit_usd::float8 FROM api_keys WHERE id = $2 AND account_id = $1) \
             FROM accounts WHERE id = $1",
            &[(&account_id, Type::INT8), (&key, Type::INT8)],
        )
        .await
        .map_err(db_err)?;
    let acct = acct
        .first()
        .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, "no such account"))?;
    // the rates of what is open (time paid up front bills none: it is counted as paid), the
    // key's share being what it pays for; volumes bill their storage until deleted
    let volumes = tx
        .query_typed(
            "SELECT coalesce(sum(rate_per_hour), 0)::float8, \
               coalesce(sum(rate_per_hour) FILTER (WHERE api_key_id = $2), 0)::float8 \
             FROM volumes WHERE account_id = $1 AND status IN ('creating', 'available')",
            &[(&account_id, Type::INT8), (&key, Type::INT8)],
        )
        .await
        .map_err(db_err)?;
    let (volumes_per_hour, key_volumes_per_hour): (f64, f64) =
        (volumes[0].get(0), volumes[0].get(1));
    let sums = tx
        .query_typed(
            "SELECT count(*) FILTER (WHERE status NOT IN ('failed', 'terminated'))::int8, \
               coalesce(sum(CASE WHEN status IN ('stopped', 'interrupted') THEN storage_per_hour \
                   ELSE price_per_hour END) \
                 FILTER (WHERE status NOT IN ('failed', 'terminated') AND paid_hours IS NULL \
                   AND id IS DISTINCT FROM $2), 0)::float8, \
               coalesce(sum(CASE WHEN status IN ('stopped', 'interrupted') THEN storage_per_hour \
                   ELSE price_per_hour END) \
                 FILTER (WHERE status NOT IN ('failed', 'terminated') AND paid_hours IS NULL \
                   AND id IS DISTINCT FROM $2 \
                   AND coalesce(payer_key_id, api_key_id) = $3), 0)::float8, \
               count(*) FILTER (WHERE status NOT IN ('failed', 'terminated') \
                 AND api_key_id = $3)::int8 \
             FROM instances WHERE account_id = $1",
            &[
                (&account_id, Type::INT8),
                (&replacing, Type::TEXT),
                (&key, Type::INT8),
            ],
        )
        .await
        .map_err(db_err)?;
    let window = i32::try_from(window_hours).unwrap_or(i32::MAX);
    let spent = tx
        .query_typed(
            SPENT,
            &[
                (&account_id, Type::INT8),
                (&key, Type::INT8),
                (&window, Type::INT4),
            ],
        )
        .await
        .map_err(db_err)?;
    let (s, sp) = (&sums[0], &spent[0]);
    Ok(Budgets {
        window_budget: acct.get(0),
        max_instances: acct.get(1),
        status: acct.get(2),
        monthly_budget: acct.get(3),
        on_exhausted: acct.get(4),
        key_limit: acct.get(5),
        open_instances: s.get(0),
        open_per_hour: s.get::<_, f64>(1) + volumes_per_hour,
        key_open_per_hour: s.get::<_, f64>(2) + key_volumes_per_hour,
        key_open_instances: s.get(3),
        window_hours,
        spent_in_window: sp.get(0),
        spent_this_month: sp.get(1),
        key_spent_in_window: sp.get(2),
    })
}

/// What a budget check is about.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    pub account_id: i64,
    /// The key that pays for the change (its `spend_limit_usd`): the caller's.
    pub key_id: Option<i64>,
    pub window_hours: u32,
    /// The rate (USD/h) the change adds.
    pub extra_per_hour: f64,
    /// What the change pays at once (time bought up front), in micro-dollars.
    pub extra_micros: i64,
    /// A new instance (the instance limit applies, and the paying key's `max_instances`).
    pub new_instance: bool,
    /// The caller's key's own instance limit (`accounts::policy`).
    pub key_max_instances: Option<i32>,
    pub replacing: Option<&'a str>,
}

/// Checks, inside `tx`, that the account is active, below its instance limit (for a new
/// instance), and that every budget that applies (the rolling window's, the month's, the key's)
/// fits: spent + (open + the new rate) × window ≤ limit. Takes the account's budget lock, so checks of
/// one account run one after the other.
pub async fn budget_check(tx: &tokio_postgres::Transaction<'_>, s: &Spend<'_>) -> Result<()> {
    budgets(
        tx,
        s.account_id,
        s.key_id,
        s.window_hours,
        s.replacing,
        true,
    )
    .await?
    .check(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets() -> Budgets {
        Budgets {
            status: "active".into(),
            max_instances: 3,
            open_instances: 1,
            open_per_hour: 1.0,
            key_open_per_hour: 0.5,
            key_open_instances: 1,
            window_hours: 24,
            window_budget: 100.0,
            spent_in_window: 10.0,
            monthly_budget: None,
            spent_this_month: 40.0,
            key_limit: None,
            key_spent_in_window: 5.0,
            on_exhausted: "stop".into(),
        }
    }

    fn spend(per_hour: f64) -> Spend<'static> {
        Spend {
            account_id: 1,
            key_id: Some(1),
            window_hours: 24,
            extra_per_hour: per_hour,
            extra_micros: 0,
            new_instance: true,
            key_max_instances: None,
            replacing: None,
        }
    }

    fn refused_budget(r: Result<()>) -> Option<String> {
        let e = r.err()?;
        e.details
            .as_ref()
            .map(|d| d["budget"].as_str().unwrap_or("").to_owned())
    }

    /// spent + (open + new) × window: 10 + (1 + 2.75) × 24 = 100 fits a budget of 100; a cent
    /// an hour more does not, whatever the hour of the day.
    #[test]
    fn the_window_budget_counts_what_is_open_over_the_next_window() {
        let b = budgets();
        assert!(b.check(&spend(2.75)).is_ok());
        assert_eq!(
            refused_budget(b.check(&spend(2.76))).as_deref(),
            Some("window")
        );
    }

    #[test]
    fn the_monthly_and_the_key_budget_apply_when_set() {
        let mut b = budgets();
        b.monthly_budget = Some(50.0);
        // 40 + (1 + 0.1) × 24 = 66.4 > 50
        assert_eq!(
            refused_budget(b.check(&spend(0.1))).as_deref(),
            Some("monthly")
        );
        let mut b = budgets();
        b.key_limit = Some(20.0);
        // the key's own: 5 + (0.5 + 0.5) × 24 = 29 > 20 (the account's window fits)
        assert_eq!(refused_budget(b.check(&spend(0.5))).as_deref(), Some("key"));
        assert!(b.check(&spend(0.1)).is_ok(), "5 + 0.6 × 24 = 19.4");
    }

    #[test]
    fn a_suspended_account_and_the_instance_limit_refuse_first() {
        let mut b = budgets();
        b.status = "suspended".into();
        assert_eq!(b.check(&spend(0.0)).unwrap_err().kind.status(), 403);
        let mut b = budgets();
        b.open_instances = 3;
        let e = b.check(&spend(0.0)).unwrap_err();
        assert_eq!(e.kind.code(), "instance_limit");
        // a change to an open instance (a start, a bid) is not a new one
        let s = Spend {
            new_instance: false,
            ..spend(0.0)
        };
        assert!(b.check(&s).is_ok());
    }

    /// Time paid up front counts in full at once: 10 + 66 + 1 × 24 = 100 fits, a micro-dollar
    /// more does not, although it adds no rate.
    #[test]
    fn a_payment_up_front_counts_in_full_at_once() {
        let b = budgets();
        let s = |micros| Spend {
            extra_micros: micros,
            ..spend(0.0)
        };
        assert!(b.check(&s(66_000_000)).is_ok(), "10 + 66 + 24 = 100");
        let e = b.check(&s(66_000_001)).unwrap_err();
        assert_eq!(e.details.unwrap()["paid_now_usd"], 66.0);
    }
}
