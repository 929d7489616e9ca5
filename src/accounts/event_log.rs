//! Writing the account event log (`account_events`, migration 0010): the row every
//! account-visible change adds in its own transaction, and the names of the event types. Reading
//! and delivering the log is `crate::events`; this part lives with the account records because
//! they write to it too (a revoked key).

use serde_json::Value;
use tokio_postgres::types::Type;

use super::{classify, events_written};
use crate::error::Error;

pub const STATUS_CHANGED: &str = "instance.status_changed";
pub const INTERRUPTED: &str = "instance.interrupted";
/// A running instance whose host the provider reports offline/unknown (it is kept, and billed).
pub const UNREACHABLE: &str = "instance.unreachable";
pub const EXPIRING: &str = "instance.expiring";
/// An instance's exposed ports got (or changed) their public address and port.
pub const ENDPOINTS_READY: &str = "instance.endpoints_ready";
pub const EXPIRED: &str = "instance.expired";
/// An instance's GPUs have been idle by its idle policy: stopped or destroyed soon (`phase`
/// `warning`), or now (`stopped` / `destroyed`).
pub const IDLE: &str = "instance.idle";
/// An outbid instance's interruption policy acted (`rebid`, `destroyed`, `failed_over`) or could
/// not (`refused`, with why).
pub const INTERRUPT_HANDLED: &str = "instance.interrupt_handled";
/// A host asked for more (Vast's pending price increases), and what `rentals` decided.
pub const PRICE_INCREASE: &str = "instance.price_increase";
/// An instance's agent opened its channel (`data`: its version, GPUs, host, the daemon holding
/// it), or the channel ended (`data.reason`).
pub const AGENT_CONNECTED: &str = "instance.agent_connected";
pub const AGENT_LOST: &str = "instance.agent_lost";
/// A command sent to an instance's agent (`data`: the command, and the key that sent it: the
/// audit trail), a piece of its output (`data.stream`, `data.data`), and its end (`data.status`,
/// `data.exit_code`).
pub const COMMAND_CREATED: &str = "command.created";
pub const COMMAND_OUTPUT: &str = "command.output";
pub const COMMAND_FINISHED: &str = "command.finished";
pub const FAILED_OVER: &str = "rental.failed_over";
/// A volume was asked for (`data.volume_id`; it bills from now), or ended (`volume.deleted`).
pub const VOLUME_CREATED: &str = "volume.created";
pub const VOLUME_DELETED: &str = "volume.deleted";
pub const BUDGET_WARNING: &str = "budget.warning";
pub const BUDGET_EXHAUSTED: &str = "budget.exhausted";
pub const KEY_REVOKED: &str = "key.revoked";
pub const WATCH_MATCHED: &str = "offer.watch_matched";
/// A webhook disabled after failing for `webhooks.disable_after_ms` (its owner enables it again).
pub const WEBHOOK_DISABLED: &str = "webhook.disabled";

/// The event types a client can ask for (`types=`), as they appear in the stream.
pub const TYPES: [&str; 22] = [
    STATUS_CHANGED,
    INTERRUPTED,
    INTERRUPT_HANDLED,
    IDLE,
    PRICE_INCREASE,
    UNREACHABLE,
    ENDPOINTS_READY,
    AGENT_CONNECTED,
    AGENT_LOST,
    COMMAND_CREATED,
    COMMAND_OUTPUT,
    COMMAND_FINISHED,
    EXPIRING,
    EXPIRED,
    FAILED_OVER,
    VOLUME_CREATED,
    VOLUME_DELETED,
    BUDGET_WARNING,
    BUDGET_EXHAUSTED,
    KEY_REVOKED,
    WATCH_MATCHED,
    WEBHOOK_DISABLED,
];

/// Appends an event for `account_id` in `tx`; returns its `seq` (per account, from 1, no gaps:
/// taken from `accounts.event_seq`, whose row lock holds until commit, so one account's events
/// commit in `seq` order).
pub async fn append(
    tx: &tokio_postgres::Transaction<'_>,
    account_id: i64,
    kind: &str,
    instance_id: Option<&str>,
    data: &Value,
) -> Result<i64, Error> {
    let rows = tx
        .query_typed(
            "WITH a AS (UPDATE accounts SET event_seq = event_seq + 1 WHERE id = $1 \
                        RETURNING id, event_seq) \
             INSERT INTO account_events (account_id, seq, type, instance_id, data) \
             SELECT id, event_seq, $2, $3, $4 FROM a RETURNING seq",
            &[
                (&account_id, Type::INT8),
                (&kind, Type::TEXT),
                (&instance_id, Type::TEXT),
                (data, Type::JSONB),
            ],
        )
        .await
        .map_err(classify)?;
    events_written(account_id);
    Ok(rows.first().map_or(0, |r| r.get(0)))
}

/// Appends several events for `account_id` in `tx` at once (one statement, one lock of the
/// account's row), in their order; `events`: (type, instance, data). For writers of many small
/// events (agents' comings and goings), so a storm of them is a few statements.
pub async fn append_many(
    tx: &tokio_postgres::Transaction<'_>,
    account_id: i64,
    events: &[(&str, Option<&str>, Value)],
) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len() as i64;
    let kinds: Vec<&str> = events.iter().map(|e| e.0).collect();
    let instances: Vec<Option<&str>> = events.iter().map(|e| e.1).collect();
    let data: Vec<&Value> = events.iter().map(|e| &e.2).collect();
    tx.query_typed(
        "WITH a AS (UPDATE accounts SET event_seq = event_seq + $2 WHERE id = $1 \
                    RETURNING id, event_seq) \
         INSERT INTO account_events (account_id, seq, type, instance_id, data) \
         SELECT a.id, a.event_seq - $2 + u.n, u.t, u.i, u.d \
         FROM a, unnest($3::text[], $4::text[], $5::jsonb[]) WITH ORDINALITY AS u(t, i, d, n)",
        &[
            (&account_id, Type::INT8),
            (&n, Type::INT8),
            (&kinds, Type::TEXT_ARRAY),
            (&instances, Type::TEXT_ARRAY),
            (&data, Type::JSONB_ARRAY),
        ],
    )
    .await
    .map_err(classify)?;
    events_written(account_id);
    Ok(())
}
