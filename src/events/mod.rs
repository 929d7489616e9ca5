//! The account event log: every account-visible event (an instance's status change, an
//! interruption, an expiry, a failover, a budget warning, a revoked key) is a row of
//! `account_events`, written in the transaction of the change it reports, numbered per account
//! without gaps (`seq`), kept `events.retention_hours` and swept by the reconciler.
//!
//! Writers call [`append`] (`accounts::event_log`, where the account records can reach it too)
//! or [`append_for_instance`] inside [`Db::transaction`]; once the
//! transaction commits, [`hub::Hub`] hears of the account and delivers the new rows to the
//! account's open streams (`GET /v1/events`), on this daemon and, through Redis, on the others.
//! [`feed::Feed`] is one client's view of them, whatever carries it (SSE or WebSocket).

pub mod feed;
pub mod hub;
pub mod webhook;

use serde_json::{Value, json};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::accounts::Db;
use crate::error::Result;

pub use crate::accounts::event_log::{
    AGENT_CONNECTED, AGENT_LOST, BUDGET_EXHAUSTED, BUDGET_WARNING, COMMAND_CREATED,
    COMMAND_FINISHED, COMMAND_OUTPUT, ENDPOINTS_READY, EXPIRED, EXPIRING, FAILED_OVER, IDLE,
    INTERRUPT_HANDLED, INTERRUPTED, KEY_REVOKED, PRICE_INCREASE, STATUS_CHANGED, TYPES,
    UNREACHABLE, VOLUME_CREATED, VOLUME_DELETED, WATCH_MATCHED, WEBHOOK_DISABLED, append,
    append_many,
};

/// An event type's name, as streams, webhooks and watches carry it (one of [`TYPES`]).
pub struct EventType;

impl schemars::JsonSchema for EventType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EventType".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "enum": TYPES})
    }
}

/// Event types as a query gives them: comma-separated [`TYPES`].
pub struct TypeList;

impl schemars::JsonSchema for TypeList {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TypeList".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let one = TYPES.map(|t| t.replace('.', r"\.")).join("|");
        schemars::json_schema!({"type": "string", "pattern": format!("^({one})(,({one}))*$")})
    }
}

/// One event of a Server-Sent Events stream (`GET /v1/events`).
pub struct StreamEvent;

impl schemars::JsonSchema for StreamEvent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StreamEvent".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut names: Vec<&str> = TYPES.to_vec();
        names.extend(["open", "close"]);
        schemars::json_schema!({"type": "object", "required": ["event", "data"],
            "description": "One event of the stream. `data` is JSON: for the account's events \
                `{\"id\",\"type\",\"at\",\"instance_id\",\"data\"}`; for `open` \
                `{\"last_event_id\"}`; for `close` `{\"reason\",\"last_event_id\"}`.",
            "properties": {
                "event": {"enum": names},
                "data": {"type": "string", "contentMediaType": "application/json"},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "retry": {"type": "integer", "minimum": 0}}})
    }
}

/// One event as streams deliver it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub account_id: i64,
    /// Per account, from 1, without gaps: the stream's `id:` and what `Last-Event-ID` names.
    pub seq: i64,
    /// RFC 3339, milliseconds.
    pub at: String,
    pub kind: String,
    pub instance_id: Option<String>,
    pub data: Value,
}

impl Event {
    /// The JSON a stream carries (`data:` of SSE).
    pub fn to_json(&self) -> Value {
        json!({"id": self.seq, "type": self.kind, "at": self.at,
               "instance_id": self.instance_id, "data": self.data})
    }
}

/// The instance's events for one change of its ledger row (`reason`: the ledger's event kind,
/// `status`: the status it moved to, `None` for a note that changes no status).
pub async fn append_for_instance(
    tx: &tokio_postgres::Transaction<'_>,
    account_id: i64,
    instance_id: &str,
    reason: &str,
    status: Option<&str>,
    detail: Option<&str>,
) -> Result<()> {
    let Some(status) = status else {
        return Ok(());
    };
    let data = json!({"status": status, "reason": reason, "detail": detail});
    append(tx, account_id, STATUS_CHANGED, Some(instance_id), &data).await?;
    // the changes a client acts on get their own type too
    let special = match (reason, status) {
        ("expired", _) => Some(EXPIRED),
        ("failover_abandoned", _) => Some(FAILED_OVER),
        // outbid, a dead instance destroyed, an instance the provider no longer has
        (_, "interrupted") | ("dead_destroyed" | "vanished", _) => Some(INTERRUPTED),
        _ => None,
    };
    if let Some(kind) = special {
        append(tx, account_id, kind, Some(instance_id), &data).await?;
    }
    Ok(())
}

const COLS: &str = "account_id, seq, \
    to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), type, instance_id, data";

fn row(r: &Row) -> Event {
    Event {
        account_id: r.get(0),
        seq: r.get(1),
        at: r.get(2),
        kind: r.get(3),
        instance_id: r.get(4),
        data: r.get(5),
    }
}

/// An account's events after `$2` up to `$3` (inclusive), oldest first, at most `$4`.
fn read_sql() -> String {
    format!(
        "SELECT {COLS} FROM account_events \
         WHERE account_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4"
    )
}

/// An account's events after `after` up to `upto` (inclusive), oldest first, at most `limit`.
pub async fn read(
    db: &Db,
    account_id: i64,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<Event>> {
    let params = read_params(&account_id, &after, &upto, &limit);
    let rows = db.query(&read_sql(), &params).await?;
    Ok(rows.iter().map(row).collect())
}

fn read_params<'a>(
    account_id: &'a i64,
    after: &'a i64,
    upto: &'a i64,
    limit: &'a i64,
) -> [crate::accounts::Param<'a>; 4] {
    [
        (account_id, Type::INT8),
        (after, Type::INT8),
        (upto, Type::INT8),
        (limit, Type::INT8),
    ]
}

/// [`read`] inside a transaction (the webhook sender's enqueue): the account's events after
/// `after`, oldest first, at most `limit`.
pub(crate) async fn read_in(
    tx: &tokio_postgres::Transaction<'_>,
    account_id: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<Event>> {
    let params = read_params(&account_id, &after, &i64::MAX, &limit);
    let rows = tx
        .query_typed(&read_sql(), &params)
        .await
        .map_err(crate::accounts::classify)?;
    Ok(rows.iter().map(row).collect())
}

/// The events after each (account, seq) pair, in one query (the fan-out's reads): at most
/// `per_account` for each account (one account's burst does not hold up the others), oldest
/// first per account.
pub async fn read_many(db: &Db, after: &[(i64, i64)], per_account: i64) -> Result<Vec<Event>> {
    let (accounts, seqs): (Vec<i64>, Vec<i64>) = after.iter().copied().unzip();
    let rows = db
        .query(
            &format!(
                "SELECT e.* FROM unnest($1::int8[], $2::int8[]) AS w(a, s) \
                 CROSS JOIN LATERAL (SELECT {COLS} FROM account_events \
                   WHERE account_id = w.a AND seq > w.s ORDER BY seq LIMIT $3) e \
                 ORDER BY e.account_id, e.seq"
            ),
            &[
                (&accounts, Type::INT8_ARRAY),
                (&seqs, Type::INT8_ARRAY),
                (&per_account, Type::INT8),
            ],
        )
        .await?;
    Ok(rows.iter().map(row).collect())
}

/// The account's latest `seq` (0 before its first event).
pub async fn latest(db: &Db, account_id: i64) -> Result<i64> {
    Ok(db
        .query_opt(
            "SELECT event_seq FROM accounts WHERE id = $1",
            &[(&account_id, Type::INT8)],
        )
        .await?
        .map_or(0, |r| r.get(0)))
}

/// Deletes events older than `hours`, and webhook deliveries settled (delivered or failed)
/// longer ago; returns how many events.
pub async fn sweep(db: &Db, hours: u32) -> Result<u64> {
    let hours = f64::from(hours);
    let rows = db
        .query(
            "WITH d AS (DELETE FROM account_events \
                        WHERE at < now() - make_interval(secs => $1 * 3600) RETURNING 1), \
                  w AS (DELETE FROM webhook_deliveries WHERE state <> 'pending' \
                        AND created_at < now() - make_interval(secs => $1 * 3600)) \
             SELECT count(*) FROM d",
            &[(&hours, Type::FLOAT8)],
        )
        .await?;
    Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64))
}
