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
//! account's budget lock is held, so two changes of one account are checked one after the
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
//!
//! The parts: this file (instance rows, statuses, transitions, reads), `intents` (the row
//! written before a provider call, under the budget check), `budget` (spend and budgets),
//! `history` (events), `changes` (bids, lifetimes, dead states), `keys` (SSH keys per instance),
//! `claims` (one rental of an offer at a time).

mod budget;
mod changes;
mod claims;
mod history;
mod intents;
mod keys;
mod lumps;
mod repricing;
mod upkeep;
mod volumes;

use serde::Serialize;
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::accounts::{Db, classify};
use crate::error::{Error, Result};
use crate::events;
use crate::providers::{InstanceStatus, Ssh};

pub use budget::*;
pub use changes::*;
pub use claims::*;
pub use history::*;
pub use intents::*;
pub use keys::*;
pub use lumps::*;
pub use repricing::*;
pub use upkeep::*;
pub use volumes::*;

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
    /// The key that rented it.
    #[serde(skip)]
    pub api_key_id: Option<i64>,
    /// The key its rate is charged to from now on (per-key spend caps, usage by key): the
    /// renting key until another key starts it or changes its bid (the caller's key pays).
    #[serde(skip)]
    pub payer_key_id: Option<i64>,
    /// Paid up front (io.net): the hours bought so far. Such an instance bills no rate: its
    /// payments are amounts in the ledger, and unused hours come back when it ends (`lumps`).
    pub paid_hours: Option<i32>,
    /// How its exposed ports are reached, as the provider last reported them.
    pub endpoints: Vec<crate::providers::Endpoint>,
    /// What the reconciler does when it is outbid or idle (`rentals::policies`).
    pub policies: crate::rentals::policies::Policies,
    /// Since when its GPUs have been idle by its idle policy, and whether it was warned.
    #[serde(skip)]
    pub idle_since: Option<f64>,
    #[serde(skip)]
    pub idle_warned: bool,
    /// What its interruption policy last did or could not do.
    #[serde(skip)]
    pub upkeep_note: Option<String>,
    /// The rental its interruption policy's failover made in its place.
    pub replaced_by: Option<String>,
    /// The volume it was rented with, and where it is mounted.
    pub volume: Option<crate::rentals::mounts::VolumeAttach>,
}

impl InstanceRow {
    /// The rate (USD/h) it bills in `status`: see the module header; none when paid up front.
    pub fn rate(&self, status: Status) -> f64 {
        if self.paid_hours.is_some() {
            0.0
        } else {
            status.rate(self.price_per_hour, self.storage_per_hour)
        }
    }

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
    /// The status a client sees: an intent not yet answered by the provider is, for the client,
    /// being provisioned.
    pub fn shown(self) -> &'static str {
        if self == Status::Pending {
            "provisioning"
        } else {
            self.as_str()
        }
    }

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

pub(super) const COLS: &str = "id, account_id, provider, provider_instance_id, offer_id, gpu_model, \
    gpu_count, price_per_hour, image, disk_gb, label, status, ssh_host, ssh_port, ssh_user, \
    failure, extract(epoch from created_at)::float8, extract(epoch from started_at)::float8, \
    extract(epoch from terminated_at)::float8, bid_per_hour, storage_per_hour, \
    extract(epoch from dead_since)::float8, dead_reason, extract(epoch from expires_at)::float8, \
    rental_request_id, try_index, api_key_id, extract(epoch from restarted_at)::float8, \
    extract(epoch from ran_at)::float8, extract(epoch from updated_at)::float8, \
    coalesce(payer_key_id, api_key_id), paid_hours, endpoints, policies, \
    extract(epoch from idle_since)::float8, idle_warned, upkeep_note, replaced_by, volume_id, \
    volume_mount";

pub(super) fn row(r: &Row) -> InstanceRow {
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
        payer_key_id: r.get(30),
        paid_hours: r.get(31),
        endpoints: r
            .get::<_, Option<serde_json::Value>>(32)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
        policies: r
            .get::<_, Option<serde_json::Value>>(33)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
        idle_since: r.get(34),
        idle_warned: r.get(35),
        upkeep_note: r.get(36),
        replaced_by: r.get(37),
        volume: match (
            r.get::<_, Option<String>>(38),
            r.get::<_, Option<String>>(39),
        ) {
            (Some(id), Some(mount_path)) => {
                Some(crate::rentals::mounts::VolumeAttach { id, mount_path })
            }
            _ => None,
        },
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
    /// Paid up front (io.net): the hours bought and what they cost, in micro-dollars: committed
    /// with the intent, counted by every budget from then on.
    pub prepaid: Option<(u32, i64)>,
    /// The renting key's own instance limit (`accounts::policy`), checked with the budget.
    pub key_max_instances: Option<i32>,
    /// Its interruption and idle policies, and what a failover rents by again.
    pub policies: Option<&'a serde_json::Value>,
    pub relaunch: Option<&'a serde_json::Value>,
    /// A volume to attach: (volume id, mount path); checked free under the budget lock.
    pub volume: Option<(&'a str, &'a str)>,
}

pub(super) fn db_err(e: tokio_postgres::Error) -> Error {
    classify(e)
}

/// Applies `t` (when the instance is in one of `t.from`): the new status and one event, in one
/// transaction; sets `started_at` when it becomes provisioning/running the first time,
/// `restarted_at` when it goes back to provisioning after it had run, stopped or frozen, `ran_at`
/// whenever it becomes running, and
/// `terminated_at` when it ends. Returns the row after, or `None` when it was not in `from`
/// (someone else moved it).
pub async fn transition(db: &Db, id: &str, t: Transition<'_>) -> Result<Option<InstanceRow>> {
    db.transaction(async |tx| transition_in(tx, id, t).await)
        .await
}

/// [`transition`] inside `tx` (with what else must commit with it: a budget check under the
/// account's lock, say).
pub async fn transition_in(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    t: Transition<'_>,
) -> Result<Option<InstanceRow>> {
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
    {
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
        // an instance destroyed while stopped (or outbid) bills its disk until it ends, not
        // the GPU it is not running
        let billed = match t.from {
            [from @ (Status::Stopped | Status::Interrupted)] if t.to == Status::Terminating => {
                r.rate(*from)
            }
            _ => r.rate(t.to),
        };
        event_tx(tx, id, kind, Some(status), r.price_per_hour, billed, detail).await?;
        events::append_for_instance(tx, r.account_id, id, kind, Some(status), detail).await?;
        match t.to {
            Status::Terminated | Status::Failed if r.paid_hours.is_some() => {
                lumps::settle_end(tx, &r).await?;
            }
            Status::Provisioning if r.paid_hours.is_some() => {
                lumps::restore_released(tx, &r).await?;
            }
            Status::Terminated => charge_minimum(tx, id).await?,
            _ => {}
        }
        Ok(Some(r))
    }
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

/// The ledger status for a provider status.
pub fn status_str(s: InstanceStatus) -> &'static str {
    s.as_str()
}
