//! The rentals ledger in PostgreSQL: instance rows and their append-only events. Every state
//! change writes the row and one event in the same transaction.
//!
//! Every event carries the instance's price and the *rate* it bills from that event on (see
//! [`rate`]): the full price while
//! provisioning, running or terminating, the storage price while stopped or interrupted (the
//! provider still bills the disk), 0 once ended. Spend over a window is the sum, over each
//! instance's event segments (one event to the next, the last one to now), of rate × hours of the
//! segment inside the window; pending intents and failed or ended rows bill nothing.
//!
//! Budget (checked in `reserve`, `set_bid` and passthrough starts, atomically with the change: the
//! account row is locked `FOR UPDATE`, so two changes of one account are checked one after the
//! other), over a rolling window of W = `rentals.budget_window_hours` (24):
//!
//! ```text
//! projected = spent in the last W hours + (current rate of open instances + the new rate) × W
//! ```
//!
//! *Open* means pending, provisioning, running, stopped, interrupted or terminating. The hour of
//! the day does not matter (a day-based budget admitted any number of expensive instances at
//! 23:55). A rental is refused (402 `budget_exceeded`) when `projected > daily_budget_usd` (the
//! account's budget per window), or (409 `instance_limit`) when the account already has
//! `max_instances` open instances. The month's budget (`monthly_budget_usd`, spent since the start
//! of the UTC month) and the renting key's (`spend_limit_usd`, its instances only) are checked
//! the same way ([`Budgets::figures`]); `budget` enforces them between rentals.

use serde::Serialize;
use serde_json::json;
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::accounts::{Db, classify};
use crate::error::{Error, Kind, Refusal, Result, Side};
use crate::events;
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
    /// Interruptible rentals: the bid sent to the provider (compute USD/h; `price_per_hour` is
    /// the bid plus the storage).
    pub bid_per_hour: Option<f64>,
    /// What the instance bills while stopped or interrupted.
    pub storage_per_hour: f64,
    /// `pending` inside the ledger; shown to clients as `provisioning` (see `api::instances`).
    pub status: Status,
    pub ssh: Option<Ssh>,
    pub failure: Option<String>,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub terminated_at: Option<f64>,
    /// Since when the provider reports a state that never reaches `running`, and which.
    pub dead_since: Option<f64>,
    pub dead_reason: Option<String>,
    /// The latest (re)start: acceptance, or a return to provisioning after it had run, stopped
    /// or frozen. The provisioning timeout counts from here.
    #[serde(skip)]
    pub restarted_at: Option<f64>,
    /// When it last became `running`: an instance that has ever run is never destroyed as stuck
    /// or dead (docs/providers.md, "States and what they cost").
    #[serde(skip)]
    pub ran_at: Option<f64>,
    /// When the row last changed: a provider status read before then cannot supersede it.
    #[serde(skip)]
    pub updated_at: f64,
    /// When the reconciler destroys it (the rental's `max_duration_hours` / `expires_at`).
    pub expires_at: Option<f64>,
    /// A rental by spec: the request all its tries share, and which try this is (1, 2, ...).
    pub rental_request_id: Option<String>,
    pub try_index: Option<i32>,
    /// The key that rented it (per-key spend caps, usage by key).
    #[serde(skip)]
    pub api_key_id: Option<i64>,
}

impl InstanceRow {
    /// Still costs money (or may again).
    pub fn is_open(&self) -> bool {
        self.status.is_open()
    }

    /// Has been seen running at some point: its renter's data is on it.
    pub fn has_run(&self) -> bool {
        self.ran_at.is_some()
    }

    /// Seen running since its latest (re)start.
    pub fn ran_since_restart(&self) -> bool {
        match (self.ran_at, self.restarted_at.or(self.started_at)) {
            (Some(ran), Some(start)) => ran >= start,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// An instance's status in the ledger: the provider's statuses plus `pending`, an intent the
/// provider has not answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Provisioning,
    Running,
    Stopped,
    Interrupted,
    /// Paused with its memory (Vast `frozen`): bills the GPU.
    Frozen,
    /// A state the provider reports that gpuproxyd does not know, or a host gone offline after
    /// the instance ran: billed in full, never destroyed as a failed start.
    Unknown,
    Failed,
    Terminating,
    Terminated,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Pending,
        Status::Provisioning,
        Status::Running,
        Status::Stopped,
        Status::Interrupted,
        Status::Frozen,
        Status::Unknown,
        Status::Failed,
        Status::Terminating,
        Status::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Provisioning => "provisioning",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Interrupted => "interrupted",
            Status::Frozen => "frozen",
            Status::Unknown => "unknown",
            Status::Failed => "failed",
            Status::Terminating => "terminating",
            Status::Terminated => "terminated",
        }
    }

    /// The column's text (its CHECK constraint allows only these).
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Still costs money (or may again).
    pub fn is_open(self) -> bool {
        !matches!(self, Status::Failed | Status::Terminated)
    }

    /// The rate (USD/h) an instance in this status bills: see the module header.
    pub fn rate(self, price_per_hour: f64, storage_per_hour: f64) -> f64 {
        match self {
            Status::Pending
            | Status::Provisioning
            | Status::Running
            | Status::Frozen
            | Status::Unknown
            | Status::Terminating => price_per_hour,
            Status::Stopped | Status::Interrupted => storage_per_hour,
            Status::Failed | Status::Terminated => 0.0,
        }
    }
}

impl From<InstanceStatus> for Status {
    fn from(s: InstanceStatus) -> Status {
        match s {
            InstanceStatus::Provisioning => Status::Provisioning,
            InstanceStatus::Running => Status::Running,
            InstanceStatus::Stopped => Status::Stopped,
            InstanceStatus::Interrupted => Status::Interrupted,
            InstanceStatus::Frozen => Status::Frozen,
            InstanceStatus::Unknown => Status::Unknown,
            InstanceStatus::Failed => Status::Failed,
            InstanceStatus::Terminating => Status::Terminating,
            InstanceStatus::Terminated => Status::Terminated,
        }
    }
}

/// One state change: the statuses it may start from, where it goes, the event it records, and
/// what it learns on the way (the provider's id, SSH details, why).
#[derive(Debug, Clone, Copy)]
pub struct Transition<'a> {
    pub from: &'a [Status],
    pub to: Status,
    pub event: &'a str,
    pub provider_instance_id: Option<&'a str>,
    pub ssh: Option<&'a Ssh>,
    pub detail: Option<&'a str>,
}

impl<'a> Transition<'a> {
    pub fn new(from: &'a [Status], to: Status, event: &'a str) -> Transition<'a> {
        Transition {
            from,
            to,
            event,
            provider_instance_id: None,
            ssh: None,
            detail: None,
        }
    }

    pub fn provider_id(self, id: Option<&'a str>) -> Self {
        Transition {
            provider_instance_id: id,
            ..self
        }
    }

    pub fn ssh(self, ssh: Option<&'a Ssh>) -> Self {
        Transition { ssh, ..self }
    }

    pub fn detail(self, detail: &'a str) -> Self {
        Transition {
            detail: Some(detail),
            ..self
        }
    }
}

const COLS: &str = "id, account_id, provider, provider_instance_id, offer_id, gpu_model, \
    gpu_count, price_per_hour, image, disk_gb, label, status, ssh_host, ssh_port, ssh_user, \
    failure, extract(epoch from created_at)::float8, extract(epoch from started_at)::float8, \
    extract(epoch from terminated_at)::float8, bid_per_hour, storage_per_hour, \
    extract(epoch from dead_since)::float8, dead_reason, extract(epoch from expires_at)::float8, \
    rental_request_id, try_index, api_key_id, extract(epoch from restarted_at)::float8, \
    extract(epoch from ran_at)::float8, extract(epoch from updated_at)::float8";

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
        status: Status::parse(r.get::<_, &str>(11)).unwrap_or(Status::Failed),
        ssh,
        failure: r.get(15),
        created_at: r.get(16),
        started_at: r.get(17),
        terminated_at: r.get(18),
        bid_per_hour: r.get(19),
        storage_per_hour: r.get(20),
        dead_since: r.get(21),
        dead_reason: r.get(22),
        expires_at: r.get(23),
        rental_request_id: r.get(24),
        try_index: r.get(25),
        api_key_id: r.get(26),
        restarted_at: r.get(27),
        ran_at: r.get(28),
        updated_at: r.get(29),
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
    pub bid_per_hour: Option<f64>,
    pub storage_per_hour: f64,
    /// (name, public key, fingerprint) of the keys the instance must get.
    pub ssh_keys: &'a [(String, String, String)],
    /// The budget's rolling window (`rentals.budget_window_hours`).
    pub budget_window_hours: u32,
    /// Epoch seconds when the instance is to be destroyed.
    pub expires_at: Option<f64>,
    /// A try of a rental by spec: (request id, try number).
    pub request: Option<(&'a str, i32)>,
    pub api_key_id: Option<i64>,
    /// How the provider priced it, when it said more than a price per hour (io.net's total for
    /// the paid time with its fees): recorded on the intent event.
    pub terms: Option<&'a str>,
    /// Paid time the provider never refunds (io.net: 1 h): charged in full when it ends sooner.
    pub minimum_hours: Option<f64>,
}

fn db_err(e: tokio_postgres::Error) -> Error {
    classify(e)
}

/// An account's spend (USD) by budget, from the event segments (module header) plus the
/// bandwidth its instances were billed (provider charge items `bwu`/`bwd`, counted when their
/// period ends; they arrive with the charges, so they lag) and the one-time amounts of its events
/// (the unrefunded rest of a minimum paid time): over the last `$3` hours; since the start of
/// the UTC month; over the last `$3` hours by the instances key `$2` rented.
pub const SPENT: &str = "WITH t AS (SELECT now() - make_interval(hours => $3) AS win, \
      (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS mon), \
    seg AS ( \
      SELECT i.api_key_id AS key, e.rate_per_hour AS rate, e.status, e.at AS t0, \
        coalesce(lead(e.at) OVER (PARTITION BY e.instance_id ORDER BY e.id), now()) AS t1 \
      FROM instance_events e JOIN instances i ON i.id = e.instance_id, t \
      WHERE i.account_id = $1 AND coalesce(i.terminated_at, now()) > least(t.win, t.mon)), \
    b AS (SELECT key, coalesce(rate, 0) AS rate, t0, least(t1, now()) AS t1 FROM seg \
      WHERE status NOT IN ('pending', 'failed', 'terminated')), \
    bw AS (SELECT i.api_key_id AS key, c.amount_micros / 1e6 AS usd, \
        coalesce(c.period_end, c.at) AS ended \
      FROM provider_charges c JOIN instances i ON i.provider = c.provider \
        AND i.provider_instance_id = c.provider_instance_id \
      WHERE i.account_id = $1 AND c.item IN ('bwu', 'bwd') \
      UNION ALL \
      SELECT i.api_key_id, e.lump_micros / 1e6, e.at \
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
}

/// Reads an account's budgets (locking its row `FOR UPDATE` when `lock`, so the checks of one
/// account run one after the other). `key`: the key whose cap applies; `replacing`: an instance
/// whose current rate a change replaces (a changed bid, a start).
pub async fn budgets(
    tx: &tokio_postgres::Transaction<'_>,
    account_id: i64,
    key: Option<i64>,
    window_hours: u32,
    replacing: Option<&str>,
    lock: bool,
) -> Result<Budgets> {
    let acct = tx
        .query_typed(
            &format!(
                "SELECT daily_budget_usd::float8, max_instances, status, \
                   monthly_budget_usd::float8, on_budget_exhausted, \
                   (SELECT spend_limit_usd::float8 FROM api_keys WHERE id = $2 AND account_id = $1) \
                 FROM accounts WHERE id = $1{}",
                if lock { " FOR UPDATE" } else { "" }
            ),
            &[(&account_id, Type::INT8), (&key, Type::INT8)],
        )
        .await
        .map_err(db_err)?;
    let acct = acct
        .first()
        .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, "no such account"))?;
    let sums = tx
        .query_typed(
            "SELECT count(*) FILTER (WHERE status NOT IN ('failed', 'terminated'))::int8, \
               coalesce(sum(CASE WHEN status IN ('stopped', 'interrupted') THEN storage_per_hour \
                   ELSE price_per_hour END) \
                 FILTER (WHERE status NOT IN ('failed', 'terminated') \
                   AND id IS DISTINCT FROM $2), 0)::float8, \
               coalesce(sum(CASE WHEN status IN ('stopped', 'interrupted') THEN storage_per_hour \
                   ELSE price_per_hour END) \
                 FILTER (WHERE status NOT IN ('failed', 'terminated') \
                   AND id IS DISTINCT FROM $2 AND api_key_id = $3), 0)::float8 \
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
        open_per_hour: s.get(1),
        key_open_per_hour: s.get(2),
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
    /// The key the instance is charged to (its `spend_limit_usd`).
    pub key_id: Option<i64>,
    pub window_hours: u32,
    /// The rate (USD/h) the change adds.
    pub extra_per_hour: f64,
    /// A new instance (the instance limit applies).
    pub new_instance: bool,
    pub replacing: Option<&'a str>,
}

/// Checks, inside `tx`, that the account is active, below its instance limit (for a new
/// instance), and that every budget that applies (the rolling window's, the month's, the key's)
/// fits: spent + (open + the new rate) × window ≤ limit. Locks the account row, so checks of
/// one account run one after the other.
pub async fn budget_check(tx: &tokio_postgres::Transaction<'_>, s: &Spend<'_>) -> Result<()> {
    let b = budgets(
        tx,
        s.account_id,
        s.key_id,
        s.window_hours,
        s.replacing,
        true,
    )
    .await?;
    if b.status != "active" {
        return Err(Error::forbidden(
            "account_suspended",
            "the account is suspended",
        ));
    }
    if s.new_instance && b.open_instances >= i64::from(b.max_instances) {
        return Err(Error::refused(
            Refusal::InstanceLimit,
            format!(
                "the account already has {} open instances (at most {})",
                b.open_instances, b.max_instances
            ),
            Some(json!({"open_instances": b.open_instances, "max_instances": b.max_instances})),
        ));
    }
    let hours = f64::from(s.window_hours);
    for f in b.figures() {
        // what was spent, plus what everything open (and the new rate) would cost over the next
        // window: the hour of the day does not matter
        let projected = f.spent + (f.open_per_hour + s.extra_per_hour) * hours;
        if projected > f.limit {
            let r2 = |x: f64| (x * 10_000.0).round() / 10_000.0;
            let (what, since) = match f.budget {
                "monthly" => ("the monthly budget", "this month"),
                "key" => ("this key's spend limit", "in the window"),
                _ => ("the budget", "in the window"),
            };
            return Err(Error::refused(
                Refusal::BudgetExceeded,
                format!(
                    "{:.4} USD/h more would bring the projected spend ({:.2} USD spent {since}, plus {} h of everything open) to {:.2} USD, over {what} of {:.2} USD",
                    s.extra_per_hour, f.spent, s.window_hours, projected, f.limit
                ),
                Some(json!({
                    "budget": f.budget,
                    "limit_usd": r2(f.limit),
                    "daily_budget_usd": r2(b.window_budget),
                    "window_hours": s.window_hours,
                    "spent_usd": r2(f.spent),
                    "spent_in_window_usd": r2(b.spent_in_window),
                    "open_instances_usd_per_hour": r2(f.open_per_hour),
                    "price_per_hour": r2(s.extra_per_hour),
                    "projected_spend_usd": r2(projected),
                })),
            ));
        }
    }
    Ok(())
}

/// Checks the budget and the instance limit and writes the intent (status `pending`) and the
/// keys the instance must get, in one transaction under the account's row lock.
pub async fn reserve(db: &Db, n: &NewInstance<'_>) -> Result<InstanceRow> {
    db.transaction(async |tx| {
        budget_check(
            tx,
            &Spend {
                account_id: n.account_id,
                key_id: n.api_key_id,
                window_hours: n.budget_window_hours,
                extra_per_hour: n.price_per_hour,
                new_instance: true,
                replacing: None,
            },
        )
        .await?;
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
        events::append_for_instance(tx, n.account_id, n.id, "intent", Some("pending"), None)
            .await?;
        Ok(row(&rows[0]))
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

/// An account's open instances (only those `key` rented, when given), oldest first.
pub async fn open_of(db: &Db, account_id: i64, key: Option<i64>) -> Result<Vec<InstanceRow>> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLS} FROM instances WHERE account_id = $1 \
                   AND ($2::int8 IS NULL OR api_key_id = $2) \
                   AND status NOT IN ('failed', 'terminated') ORDER BY created_at"
            ),
            &[(&account_id, Type::INT8), (&key, Type::INT8)],
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
async fn insert_instance(
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
               minimum_hours) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
               to_timestamp($14), $15, $16, $17, $18, $19) \
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
        ],
    )
    .await
    .map_err(db_err)
}

/// When `id` has just ended (`terminated`) sooner than the paid time its provider never refunds
/// (`minimum_hours`, from its start), charges the rest of that time at its price in one amount:
/// a `minimum_charge` event with `lump_micros`, once.
async fn charge_minimum(tx: &tokio_postgres::Transaction<'_>, id: &str) -> Result<()> {
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
           AND i.started_at IS NOT NULL AND x.left_h > 0 \
           AND NOT EXISTS (SELECT 1 FROM instance_events m WHERE m.instance_id = i.id \
             AND m.kind = 'minimum_charge')",
        &[(&id, Type::TEXT)],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn event_tx(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    kind: &str,
    status: Option<&str>,
    price: f64,
    rate: f64,
    detail: Option<&str>,
) -> Result<()> {
    tx.query_typed(
        "INSERT INTO instance_events (instance_id, kind, status, price_per_hour, rate_per_hour, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
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
        let billed = r.status.rate(r.price_per_hour, r.storage_per_hour);
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

/// A changed bid: the new bid and price (bid + storage), checked against the budget first.
pub async fn set_bid(db: &Db, r: &InstanceRow, bid: f64, window_hours: u32) -> Result<InstanceRow> {
    let price = bid + r.storage_per_hour;
    db.transaction(async |tx| {
        // while outbid it bills storage only; the raised bid bills in full once it runs again
        budget_check(
            tx,
            &Spend {
                account_id: r.account_id,
                key_id: r.api_key_id,
                window_hours,
                extra_per_hour: price,
                new_instance: false,
                replacing: Some(&r.id),
            },
        )
        .await?;
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
        let billed = n.status.rate(n.price_per_hour, n.storage_per_hour);
        let detail = format!("bid {bid} USD/h");
        event_tx(
            tx,
            &n.id,
            "bid_changed",
            Some(n.status.as_str()),
            n.price_per_hour,
            billed,
            Some(&detail),
        )
        .await?;
        Ok(n)
    })
    .await
}

/// Records an extension: `hours` more of the instance's life (the expiry moves, when it has one),
/// and `committed_usd` the provider charged for them (0 where it sells no paid time), as an
/// `extended` event. The budget was checked before the provider was asked.
pub async fn extend(
    db: &Db,
    r: &InstanceRow,
    hours: u32,
    committed_usd: f64,
) -> Result<InstanceRow> {
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
        let detail = if committed_usd > 0.0 {
            format!("+{hours} h, {committed_usd:.4} USD committed")
        } else {
            format!("+{hours} h")
        };
        event_tx(
            tx,
            &n.id,
            "extended",
            Some(n.status.as_str()),
            n.price_per_hour,
            n.status.rate(n.price_per_hour, n.storage_per_hour),
            Some(&detail),
        )
        .await?;
        Ok(n)
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

/// One key an instance must get, and how far it is.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceKey {
    pub name: String,
    pub fingerprint: String,
    #[serde(skip)]
    pub public_key: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

pub async fn instance_keys(db: &Db, id: &str) -> Result<Vec<InstanceKey>> {
    Ok(db
        .query(
            "SELECT name, fingerprint, public_key, state, attempts, last_error \
             FROM instance_ssh_keys WHERE instance_id = $1 ORDER BY name, fingerprint",
            &[(&id, Type::TEXT)],
        )
        .await?
        .iter()
        .map(|r| InstanceKey {
            name: r.get(0),
            fingerprint: r.get(1),
            public_key: r.get(2),
            state: r.get(3),
            attempts: r.get(4),
            last_error: r.get(5),
        })
        .collect())
}

/// Instances with keys still to attach (every account: the reconciler's view).
pub async fn with_pending_keys(db: &Db) -> Result<Vec<String>> {
    Ok(db
        .query(
            "SELECT DISTINCT k.instance_id FROM instance_ssh_keys k \
             JOIN instances i ON i.id = k.instance_id \
             WHERE k.state = 'pending' AND i.status IN ('provisioning', 'running') \
               AND i.provider_instance_id IS NOT NULL",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Records an attach attempt: `error` `None` = attached; `give_up` turns a failure final.
pub async fn key_attempt(
    db: &Db,
    id: &str,
    fingerprint: &str,
    error: Option<&str>,
    give_up: bool,
) -> Result<()> {
    let state = match (error, give_up) {
        (None, _) => "attached",
        (Some(_), true) => "failed",
        (Some(_), false) => "pending",
    };
    db.query(
        "UPDATE instance_ssh_keys SET state = $3, attempts = attempts + 1, last_error = $4, \
           attached_at = CASE WHEN $3 = 'attached' THEN now() ELSE attached_at END \
         WHERE instance_id = $1 AND fingerprint = $2 AND state = 'pending'",
        &[
            (&id, Type::TEXT),
            (&fingerprint, Type::TEXT),
            (&state, Type::TEXT),
            (&error, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// Marks every pending key of an instance attached (the provider took them at create).
pub async fn keys_attached_at_create(db: &Db, id: &str) -> Result<()> {
    db.query(
        "UPDATE instance_ssh_keys SET state = 'attached', attempts = 1, attached_at = now() \
         WHERE instance_id = $1 AND state = 'pending'",
        &[(&id, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// Claims `offer` for the rental `instance` until `ttl_ms` from now; `false` when another rental
/// holds a live claim on it (or the ledger has an open instance on it already).
pub async fn claim_offer(
    db: &Db,
    provider: &str,
    offer: &str,
    instance: &str,
    ttl_ms: u64,
) -> Result<bool> {
    let key = format!("{provider}:{offer}");
    let ttl = ttl_ms as f64 / 1000.0;
    let bid = format!("{key}{}", crate::providers::vastai::BID_SUFFIX);
    Ok(!db
        .query(
            "INSERT INTO offer_claims (offer_id, instance_id, expires_at) \
             SELECT $1, $2, now() + make_interval(secs => $3) \
             WHERE NOT EXISTS (SELECT 1 FROM instances WHERE offer_id IN ($1, $4) \
               AND status NOT IN ('failed', 'terminated')) \
             ON CONFLICT (offer_id) DO UPDATE SET instance_id = EXCLUDED.instance_id, \
               expires_at = EXCLUDED.expires_at WHERE offer_claims.expires_at < now() \
             RETURNING 1",
            &[
                (&key, Type::TEXT),
                (&instance, Type::TEXT),
                (&ttl, Type::FLOAT8),
                (&bid, Type::TEXT),
            ],
        )
        .await?
        .is_empty())
}

pub async fn release_offer(db: &Db, provider: &str, offer: &str, instance: &str) -> Result<()> {
    let key = format!("{provider}:{offer}");
    db.query(
        "DELETE FROM offer_claims WHERE offer_id = $1 AND instance_id = $2",
        &[(&key, Type::TEXT), (&instance, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// Applies `t` (when the instance is in one of `t.from`): the new status and one event, in one
/// transaction; sets `started_at` when it becomes provisioning/running the first time,
/// `restarted_at` when it goes back to provisioning after it had run, stopped or frozen, `ran_at`
/// whenever it becomes running, and
/// `terminated_at` when it ends. Returns the row after, or `None` when it was not in `from`
/// (someone else moved it).
pub async fn transition(db: &Db, id: &str, t: Transition<'_>) -> Result<Option<InstanceRow>> {
    let from: Vec<&str> = t.from.iter().map(|s| s.as_str()).collect();
    let status = t.to.as_str();
    let (kind, provider_instance_id, ssh, detail) =
        (t.event, t.provider_instance_id, t.ssh, t.detail);
    let (host, port, user) = match ssh {
        Some(s) => (
            Some(s.host.clone()),
            Some(i32::from(s.port)),
            Some(s.user.clone()),
        ),
        None => (None, None, None),
    };
    let failure = (t.to == Status::Failed).then_some(detail).flatten();
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
                       restarted_at = CASE \
                         WHEN $3 = 'provisioning' AND status NOT IN ('pending', 'provisioning') \
                           THEN now() \
                         WHEN $3 IN ('provisioning', 'running') THEN coalesce(restarted_at, now()) \
                         ELSE restarted_at END, \
                       ran_at = CASE WHEN $3 = 'running' THEN now() ELSE ran_at END, \
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
        let billed = t.to.rate(r.price_per_hour, r.storage_per_hour);
        event_tx(tx, id, kind, Some(status), r.price_per_hour, billed, detail).await?;
        events::append_for_instance(tx, r.account_id, id, kind, Some(status), detail).await?;
        if t.to == Status::Terminated {
            charge_minimum(tx, id).await?;
        }
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

/// The account's instance that the provider knows as `provider_instance_id`.
pub async fn by_provider_id(
    db: &Db,
    account_id: i64,
    provider: &str,
    provider_instance_id: &str,
) -> Result<Option<InstanceRow>> {
    Ok(db
        .query_opt(
            &format!(
                "SELECT {COLS} FROM instances WHERE provider = $1 AND provider_instance_id = $2 \
                   AND account_id = $3"
            ),
            &[
                (&provider, Type::TEXT),
                (&provider_instance_id, Type::TEXT),
                (&account_id, Type::INT8),
            ],
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

/// The ledger status for a provider status.
pub fn status_str(s: InstanceStatus) -> &'static str {
    s.as_str()
}
