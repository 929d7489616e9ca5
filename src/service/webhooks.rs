//! The caller's signed webhooks as typed operations: create (the secret is in this answer
//! only), list, get, delete, enable again, and the delivery log. Another account's webhook is
//! 404, like an unknown one.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::query::{Bounded, Limit};
use super::{db, time};
use crate::auth::Principal;
use crate::error::Result;
use crate::events::webhook::{self, Delivery, NewWebhook, Webhook};
use crate::state::AppState;

/// A webhook as the API shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Webhook")]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    /// Empty: every event type.
    pub types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub consecutive_failures: i32,
    pub created_at: Option<String>,
    /// In the creation answer only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookView {
    fn of(w: &Webhook) -> WebhookView {
        WebhookView {
            id: w.id.clone(),
            url: w.url.clone(),
            types: w.types.clone(),
            enabled: w.enabled,
            disabled_reason: w.disabled_reason.clone(),
            consecutive_failures: w.consecutive_failures,
            created_at: time(Some(w.created_at)),
            secret: None,
        }
    }
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

/// One delivery of one event to a webhook.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "WebhookDelivery")]
pub struct DeliveryView {
    pub id: i64,
    pub event_id: i64,
    pub event_type: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<String>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    /// Each attempt: when, and its status or error.
    pub attempt_log: Value,
    pub created_at: Option<String>,
}

impl DeliveryView {
    fn of(d: &Delivery) -> DeliveryView {
        DeliveryView {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type.clone(),
            state: d.state.clone(),
            attempts: d.attempts,
            next_attempt_at: time(d.next_attempt_at),
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            attempt_log: d.history.clone(),
            created_at: time(Some(d.created_at)),
        }
    }
}

/// A page of deliveries, newest first.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `before` for the next page; `null` on the last.
    pub next_before: Option<i64>,
}

/// `GET /v1/webhooks/{id}/deliveries`'s query.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// Page size, 1 to 200.
    #[schemars(extend("default" = 50))]
    pub limit: Option<Limit>,
    /// `next_before` of the previous page: a delivery id.
    pub before: Option<Bounded<1, { i64::MAX }>>,
}

pub async fn create(app: &AppState, p: &Principal, new: NewWebhook) -> Result<WebhookView> {
    let db = db(app, "webhooks")?;
    let (w, secret) = webhook::create(&db, &app.config.webhooks, p.account_id(), &new).await?;
    Ok(WebhookView {
        secret: Some(secret),
        ..WebhookView::of(&w)
    })
}

pub async fn list(app: &AppState, p: &Principal) -> Result<WebhookList> {
    let all = webhook::list(&*db(app, "webhooks")?, p.account_id()).await?;
    Ok(WebhookList {
        webhooks: all.iter().map(WebhookView::of).collect(),
    })
}

pub async fn get(app: &AppState, p: &Principal, id: &str) -> Result<WebhookView> {
    let w = webhook::get(&*db(app, "webhooks")?, p.account_id(), id).await?;
    Ok(WebhookView::of(&w))
}

pub async fn delete(app: &AppState, p: &Principal, id: &str) -> Result<WebhookView> {
    let w = webhook::delete(&*db(app, "webhooks")?, p.account_id(), id).await?;
    Ok(WebhookView::of(&w))
}

/// Enables a webhook again after it was disabled for failing.
pub async fn enable(app: &AppState, p: &Principal, id: &str) -> Result<WebhookView> {
    let w = webhook::enable(&*db(app, "webhooks")?, p.account_id(), id).await?;
    Ok(WebhookView::of(&w))
}

pub async fn deliveries(
    app: &AppState,
    p: &Principal,
    id: &str,
    q: DeliveriesQuery,
) -> Result<DeliveryPage> {
    let limit = q.limit.map_or(50, |l| l.0);
    let rows = webhook::deliveries(
        &*db(app, "webhooks")?,
        p.account_id(),
        id,
        limit + 1,
        q.before.map(|b| b.0),
    )
    .await?;
    let more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    Ok(DeliveryPage {
        deliveries: page.iter().map(DeliveryView::of).collect(),
        next_before: if more {
            page.last().map(|d| d.id)
        } else {
            None
        },
    })
}
