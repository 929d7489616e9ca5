//! The rentals ledger in PostgreSQL: instance rows and their append-only events. Every state
//! change writes the row and one event in the same transaction.
//!
//! Budget (checked in `reserve`, atomically with writing the intent: the account row is locked
//! `FOR UPDATE`, so two rentals of one account are checked one after the other):
//!
//! ```text
//! projected = spent today + (hourly price of open instances + price of the new one) × hours left today
//! ```
//!
//! where *today* is the UTC day, *spent today* is Σ price × hours each instance was open today
//! (from `started_at`, or `created_at` for a pending intent, to `terminated_at` or now), and *open*
//! means pending, provisioning, running, stopped or terminating. A rental is refused (402
//! `budget_exceeded`) when `projected > daily_budget_usd`, or (409 `instance_limit`) when the
//! account already has `max_instances` open instances.

use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::accounts::{Db, classify};
use crate::error::{Error, Kind, Result, Side};
use crate::providers::{InstanceStatus, Ssh};

/// An instance as the ledger has it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceRow {
    pub id: String,
    #[serde(skip)]
    pub account_id: i64,
    pub provider: String,
    pub provider_instance_id: Option<String>,
    pub offer_id: String,
    pub gpu_model: String,
    pub gpu_count: i32,
    pub price_per_hour: f64,
    pub image: String,
    pub disk_gb: i32,
    pub label: Option<String>,
    /// `pending` inside the ledger; shown to clients as `provisioning` (see `api::instances`).
    pub status: String,
    pub ssh: Option<Ssh>,
    pub failure: Option<String>,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub terminated_at: Option<f64>,
}

const COLS: &str = "id, account_id, provider, provider_instance_id, offer_id, gpu_model, \
    gpu_count, price_per_hour, image, disk_gb, label, status, ssh_host, ssh_port, ssh_user, \
    failure, extract(epoch from created_at)::float8, extract(epoch from started_at)::float8, \
    extract(epoch from terminated_at)::float8";

fn row(r: &Row) -> InstanceRow {
    let ssh = match (r.get::<_, Option<String>>(12), r.get::<_, Option<i32>>(13)) {
        (Some(host), Some(port)) => Some(Ssh {
            host,
            port: port as u16,
            user: r
                .get::<_, Option<String>>(14)
                .unwrap_or_else(|| "root".into()),
        }),
        _ => None,
    };
    InstanceRow {
        id: r.get(0),
        account_id: r.get(1),
        provider: r.get(2),
        provider_instance_id: r.get(3),
        offer_id: r.get(4),
        gpu_model: r.get(5),
        gpu_count: r.get(6),
        price_per_hour: r.get(7),
        image: r.get(8),
        disk_gb: r.get(9),
        label: r.get(10),
        status: r.get(11),
        ssh,
        failure: r.get(15),
        created_at: r.get(16),
        started_at: r.get(17),
        terminated_at: r.get(18),
    }
}

pub struct NewInstance<'a> {
    pub id: &'a str,
    pub account_id: i64,
    pub provider: &'a str,
    pub offer_id: &'a str,
    pub gpu_model: &'a str,
    pub gpu_count: i32,
    pub price_per_hour: f64,
    pub image: &'a str,
    pub disk_gb: i32,
    pub label: Option<&'a str>,
}

fn db_err(e: tokio_postgres::Error) -> Error {
    classify(e)
}

/// Checks the budget and the instance limit and writes the intent (status `pending`), in one
/// transaction under the account's row lock.
pub async fn reserve(db: &Db, n: &NewInstance<'_>) -> Result<InstanceRow> {
    db.transaction(async |tx| {
        let acct = tx
            .query_typed(
                "SELECT daily_budget_usd::float8, max_instances, status FROM accounts \
                 WHERE id = $1 FOR UPDATE",
                &[(&n.account_id, Type::INT8)],
            )
            .await
            .map_err(db_err)?;
        let acct = acct
            .first()
            .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, "no such account"))?;
        let (budget, max_instances, status): (f64, i32, String) =
            (acct.get(0), acct.get(1), acct.get(2));
        if status != "active" {
            return Err(Error::forbidden("account_suspended", "the account is suspended"));
        }
        let sums = tx
            .query_typed(
                "SELECT count(*) FILTER (WHERE status NOT IN ('failed', 'terminated'))::int8, \
                   coalesce(sum(price_per_hour) FILTER (WHERE status NOT IN ('failed', 'terminated')), 0)::float8, \
                   coalesce(sum(price_per_hour * extract(epoch from (coalesce(terminated_at, now()) \
                       - greatest(coalesce(started_at, created_at), date_trunc('day', now(), 'UTC')))) / 3600.0) \
                     FILTER (WHERE status <> 'failed' \
                       AND coalesce(terminated_at, now()) > date_trunc('day', now(), 'UTC')), 0)::float8, \
                   (extract(epoch from (date_trunc('day', now(), 'UTC') + interval '1 day' - now())) / 3600.0)::float8 \
                 FROM instances WHERE account_id = $1",
                &[(&n.account_id, Type::INT8)],
            )
            .await
            .map_err(db_err)?;
        let s = &sums[0];
        let (open, open_per_hour, spent_today, hours_left): (i64, f64, f64, f64) =
            (s.get(0), s.get(1), s.get(2), s.get(3));
        if open >= i64::from(max_instances) {
            return Err(Error::rejected(
                StatusCode::CONFLICT,
                "instance_limit",
                format!("the account already has {open} open instances (at most {max_instances})"),
                Some(json!({"open_instances": open, "max_instances": max_instances})),
            ));
        }
        let projected = spent_today + (open_per_hour + n.price_per_hour) * hours_left;
        if projected > budget {
            let r2 = |x: f64| (x * 10_000.0).round() / 10_000.0;
            return Err(Error::rejected(
                StatusCode::PAYMENT_REQUIRED,
                "budget_exceeded",
                format!(
                    "renting at {:.4} USD/h would bring today's projected spend to {:.2} USD, over the daily budget of {:.2} USD",
                    n.price_per_hour, projected, budget
                ),
                Some(json!({
                    "daily_budget_usd": r2(budget),
                    "spent_today_usd": r2(spent_today),
                    "open_instances_usd_per_hour": r2(open_per_hour),
                    "price_per_hour": r2(n.price_per_hour),
                    "hours_left_today": r2(hours_left),
                    "projected_spend_usd": r2(projected),
                })),
            ));
        }
        let rows = tx
            .query_typed(
                &format!(
                    "INSERT INTO instances (id, account_id, provider, offer_id, gpu_model, \
                       gpu_count, price_per_hour, image, disk_gb, label, status) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending') RETURNING {COLS}"
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
                ],
            )
            .await
            .map_err(db_err)?;
        event_tx(tx, n.id, "intent", Some("pending"), Some(n.price_per_hour), None).await?;
        Ok(row(&rows[0]))
    })
    .await
}

async fn event_tx(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    kind: &str,
    status: Option<&str>,
    price: Option<f64>,
    detail: Option<&str>,
) -> Result<()> {
    tx.query_typed(
        "INSERT INTO instance_events (instance_id, kind, status, price_per_hour, detail) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            (&id, Type::TEXT),
            (&kind, Type::TEXT),
            (&status, Type::TEXT),
            (&price, Type::FLOAT8),
            (&detail, Type::TEXT),
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Moves an instance to `status` (when it is in one of `from`), with an event of `kind`; sets
/// `started_at` when it becomes provisioning/running the first time and `terminated_at` when it
/// ends. Returns the row after, or `None` when it was not in `from` (someone else moved it).
#[allow(clippy::too_many_arguments)]
pub async fn transition(
    db: &Db,
    id: &str,
    from: &[&str],
    status: &str,
    kind: &str,
    provider_instance_id: Option<&str>,
    ssh: Option<&Ssh>,
    detail: Option<&str>,
) -> Result<Option<InstanceRow>> {
    let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
    let (host, port, user) = match ssh {
        Some(s) => (
            Some(s.host.clone()),
            Some(i32::from(s.port)),
            Some(s.user.clone()),
        ),
        None => (None, None, None),
    };
    let failure = (status == "failed").then_some(detail).flatten();
    db.transaction(async |tx| {
        let rows = tx
            .query_typed(
                &format!(
                    "UPDATE instances SET status = $3, \
                       provider_instance_id = coalesce($4, provider_instance_id), \
                       ssh_host = coalesce($5, ssh_host), ssh_port = coalesce($6, ssh_port), \
                       ssh_user = coalesce($7, ssh_user), failure = coalesce($8, failure), \
                       started_at = CASE WHEN $3 IN ('provisioning', 'running') \
                         THEN coalesce(started_at, now()) ELSE started_at END, \
                       terminated_at = CASE WHEN $3 IN ('terminated', 'failed') \
                         THEN coalesce(terminated_at, now()) ELSE terminated_at END, \
                       updated_at = now() \
                     WHERE id = $1 AND status = ANY($2) RETURNING {COLS}"
                ),
                &[
                    (&id, Type::TEXT),
                    (&from, Type::TEXT_ARRAY),
                    (&status, Type::TEXT),
                    (&provider_instance_id, Type::TEXT),
                    (&host, Type::TEXT),
                    (&port, Type::INT4),
                    (&user, Type::TEXT),
                    (&failure, Type::TEXT),
                ],
            )
            .await
            .map_err(db_err)?;
        let Some(r) = rows.first().map(row) else {
            return Ok(None);
        };
        event_tx(tx, id, kind, Some(status), Some(r.price_per_hour), detail).await?;
        Ok(Some(r))
    })
    .await
}

pub async fn get(db: &Db, account_id: i64, id: &str) -> Result<Option<InstanceRow>> {
    Ok(db
        .query_opt(
            &format!("SELECT {COLS} FROM instances WHERE id = $1 AND account_id = $2"),
            &[(&id, Type::TEXT), (&account_id, Type::INT8)],
        )
        .await?
        .as_ref()
        .map(row))
}

/// A page of an account's instances, newest first, older than `before` (a created_at epoch).
pub async fn list(
    db: &Db,
    account_id: i64,
    before: Option<f64>,
    limit: i64,
) -> Result<Vec<InstanceRow>> {
    Ok(db
        .query(
            &format!(
                "SELECT {COLS} FROM instances WHERE account_id = $1 \
                   AND ($2::float8 IS NULL OR created_at < to_timestamp($2)) \
                 ORDER BY created_at DESC, id LIMIT $3"
            ),
            &[
                (&account_id, Type::INT8),
                (&before, Type::FLOAT8),
                (&limit, Type::INT8),
            ],
        )
        .await?
        .iter()
        .map(row)
        .collect())
}

/// Rows in one of `statuses`, every account (the reconciler's view).
pub async fn in_status(db: &Db, statuses: &[&str]) -> Result<Vec<InstanceRow>> {
    let s: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
    Ok(db
        .query(
            &format!("SELECT {COLS} FROM instances WHERE status = ANY($1) ORDER BY created_at"),
            &[(&s, Type::TEXT_ARRAY)],
        )
        .await?
        .iter()
        .map(row)
        .collect())
}

/// What the reconciler looks at, in one query: every open row (pending included), and failed
/// rows younger than `failed_secs` (a provider may still hold an instance made for them).
pub async fn for_reconciler(db: &Db, failed_secs: f64) -> Result<Vec<InstanceRow>> {
    Ok(db
        .query(
            &format!(
                "SELECT {COLS} FROM instances WHERE status NOT IN ('failed', 'terminated') \
                   OR (status = 'failed' AND created_at > now() - make_interval(secs => $1)) \
                 ORDER BY created_at"
            ),
            &[(&failed_secs, Type::FLOAT8)],
        )
        .await?
        .iter()
        .map(row)
        .collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at: f64,
    pub kind: String,
    pub status: Option<String>,
    pub price_per_hour: Option<f64>,
    pub detail: Option<String>,
}

pub async fn events(db: &Db, id: &str) -> Result<Vec<Event>> {
    Ok(db
        .query(
            "SELECT extract(epoch from at)::float8, kind, status, price_per_hour, detail \
             FROM instance_events WHERE instance_id = $1 ORDER BY id",
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
        })
        .collect())
}

/// The ledger status for a provider status.
pub fn status_str(s: InstanceStatus) -> &'static str {
    s.as_str()
}
