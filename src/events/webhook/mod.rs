//! Signed webhooks (`/v1/webhooks`): an account's HTTP targets for its events, for agents that
//! hold no connection open.
//!
//! - A webhook keeps a cursor in the account's event log; [`sender`] turns the events after it
//!   into `webhook_deliveries` rows (one per webhook and event, in one transaction with the
//!   cursor's move, so none is skipped or doubled) and sends them at least once, signed
//!   ([`sign`]), retrying with back-off; the rows are the delivery log.
//! - Targets are checked against SSRF ([`target`]) when created and at every delivery.
//! - The secret is shown once, at creation; it is stored to sign with, never shown again or
//!   logged.

pub mod sender;
pub mod sign;
pub mod target;

use serde::Deserialize;
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::TYPES;
use crate::accounts::Db;
use crate::config::WebhooksConfig;
use crate::error::{Error, Kind, Refusal, Result, Side};

/// A webhook as its owner sees it (no secret).
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// Empty: every event type.
    pub types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub consecutive_failures: i32,
    pub created_at: f64,
}

/// `POST /v1/webhooks`'s body.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where deliveries are POSTed. The host must be a public address, or a name that resolves
    /// only to public addresses when a delivery is made (unless
    /// `webhooks.allow_private_targets`); redirects are not followed.
    #[schemars(length(min = 8, max = 2048))]
    #[schemars(pattern(r"^https?://[^\x00-\x20@#/?]+(/[^\x00-\x20#]*)?$"))]
    pub url: String,
    /// The event types to deliver; absent or empty: every type.
    #[serde(default)]
    #[schemars(with = "Vec<crate::events::EventType>", length(max = TYPES.len()))]
    #[schemars(extend("uniqueItems" = true))]
    pub types: Vec<String>,
}

const COLS: &str = "id, url, types, enabled, disabled_reason, consecutive_failures, \
                    extract(epoch FROM created_at)::float8";

fn webhook(r: &Row) -> Webhook {
    Webhook {
        id: r.get(0),
        url: r.get(1),
        types: r.get(2),
        enabled: r.get(3),
        disabled_reason: r.get(4),
        consecutive_failures: r.get(5),
        created_at: r.get(6),
    }
}

fn bad(field: &str, why: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("`{field}`: {why}"))
}

fn not_found() -> Error {
    Error::new(Kind::NotFound, Side::Client, "no such webhook")
}

/// Creates a webhook for the account's events from now on; returns it and its secret (the one
/// time the secret is shown).
pub async fn create(
    db: &Db,
    cfg: &WebhooksConfig,
    account_id: i64,
    new: &NewWebhook,
) -> Result<(Webhook, String)> {
    let t = target::parse(&new.url).map_err(|why| bad("url", why))?;
    target::check_literal(&t, cfg.allow_private_targets)
        .map_err(|why| Error::refused(Refusal::TargetNotAllowed, format!("`url`: {why}"), None))?;
    for (i, ty) in new.types.iter().enumerate() {
        if new.types[..i].contains(ty) {
            let ty = crate::error::truncate(ty, 40);
            return Err(bad("types", format!("lists `{ty}` twice")));
        }
        if !TYPES.contains(&ty.as_str()) {
            return Err(bad(
                "types",
                format!(
                    "`{}` is not one of {}",
                    crate::error::truncate(ty, 40),
                    TYPES.join(", ")
                ),
            ));
        }
    }
    let id = format!("wh_{}", sign::random_hex(12));
    let secret = sign::new_secret();
    let max = i64::from(cfg.max_per_account.get());
    // the count and the insert under the account's cap lock; the cursor starts at the account's
    // latest event: a webhook hears what happens after it exists
    let row = db
        .query_opt_capped(
            "webhooks.max_per_account",
            account_id,
            &format!(
                "INSERT INTO webhooks (id, account_id, url, types, secret, cursor) \
                 SELECT $1, $2, $3, $4, $5, a.event_seq FROM accounts a \
                 WHERE a.id = $2 AND (SELECT count(*) FROM webhooks WHERE account_id = $2) < $6 \
                 RETURNING {COLS}"
            ),
            &[
                (&id, Type::TEXT),
                (&account_id, Type::INT8),
                (&new.url, Type::TEXT),
                (&new.types, Type::TEXT_ARRAY),
                (&secret, Type::TEXT),
                (&max, Type::INT8),
            ],
        )
        .await?;
    match row {
        Some(r) => Ok((webhook(&r), secret)),
        None => Err(Error::refused(
            Refusal::WebhookLimit,
            format!("the account has {max} webhooks already (webhooks.max_per_account)"),
            None,
        )),
    }
}

pub async fn list(db: &Db, account_id: i64) -> Result<Vec<Webhook>> {
    let rows = db
        .query(
            &format!("SELECT {COLS} FROM webhooks WHERE account_id = $1 ORDER BY created_at, id"),
            &[(&account_id, Type::INT8)],
        )
        .await?;
    Ok(rows.iter().map(webhook).collect())
}

/// One of the account's webhooks (another account's is 404, like an unknown one).
pub async fn get(db: &Db, account_id: i64, id: &str) -> Result<Webhook> {
    db.query_opt(
        &format!("SELECT {COLS} FROM webhooks WHERE id = $1 AND account_id = $2"),
        &[(&id, Type::TEXT), (&account_id, Type::INT8)],
    )
    .await?
    .map(|r| webhook(&r))
    .ok_or_else(not_found)
}

/// Deletes a webhook and its delivery log; deliveries not yet sent are not sent.
pub async fn delete(db: &Db, account_id: i64, id: &str) -> Result<Webhook> {
    db.query_opt(
        &format!("DELETE FROM webhooks WHERE id = $1 AND account_id = $2 RETURNING {COLS}"),
        &[(&id, Type::TEXT), (&account_id, Type::INT8)],
    )
    .await?
    .map(|r| webhook(&r))
    .ok_or_else(not_found)
}

/// Enables a webhook again (after it was disabled for failing): its failure count restarts,
/// and the deliveries still pending go out.
pub async fn enable(db: &Db, account_id: i64, id: &str) -> Result<Webhook> {
    db.query_opt(
        &format!(
            "UPDATE webhooks SET enabled = true, disabled_reason = NULL, consecutive_failures = 0, failing_since = NULL \
             WHERE id = $1 AND account_id = $2 RETURNING {COLS}"
        ),
        &[(&id, Type::TEXT), (&account_id, Type::INT8)],
    )
    .await?
    .map(|r| webhook(&r))
    .ok_or_else(not_found)
}

/// One entry of the delivery log.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub event_id: i64,
    pub event_type: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<f64>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub history: Value,
    pub created_at: f64,
}

/// The webhook's deliveries, newest first: at most `limit`, with ids below `before` if given.
pub async fn deliveries(
    db: &Db,
    account_id: i64,
    id: &str,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<Delivery>> {
    get(db, account_id, id).await?;
    let before = before.unwrap_or(i64::MAX);
    let rows = db
        .query(
            "SELECT id, event_seq, event_type, state, attempts, \
                    CASE WHEN state = 'pending' THEN extract(epoch FROM next_attempt_at)::float8 END, \
                    last_status, last_error, history, extract(epoch FROM created_at)::float8 \
             FROM webhook_deliveries WHERE webhook_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            &[(&id, Type::TEXT), (&before, Type::INT8), (&limit, Type::INT8)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Delivery {
            id: r.get(0),
            event_id: r.get(1),
            event_type: r.get(2),
            state: r.get(3),
            attempts: r.get(4),
            next_attempt_at: r.get(5),
            last_status: r.get(6),
            last_error: r.get(7),
            history: r.get(8),
            created_at: r.get(9),
        })
        .collect())
}
