//! `/v1/webhooks`: an account's signed webhooks (create, list, show, delete, enable again) and
//! each one's delivery log. The secret is in the creation answer only. Another account's
//! webhook is 404, like an unknown one.

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::call::Call;
use super::{Body, body, respond};
use crate::error::{Error, Result};
use crate::events::webhook::{self, Delivery, NewWebhook, Webhook};
use crate::service::query::{Bounded, Limit, query};
use crate::service::time;

fn view(w: &Webhook) -> Value {
    json!({"id": w.id, "url": w.url, "types": w.types, "enabled": w.enabled,
           "disabled_reason": w.disabled_reason,
           "consecutive_failures": w.consecutive_failures,
           "created_at": time(Some(w.created_at))})
}

fn delivery(d: &Delivery) -> Value {
    json!({"id": d.id, "event_id": d.event_id, "event_type": d.event_type,
           "state": d.state, "attempts": d.attempts,
           "next_attempt_at": time(d.next_attempt_at),
           "last_status": d.last_status, "last_error": d.last_error,
           "attempt_log": d.history, "created_at": time(Some(d.created_at))})
}

/// `POST /v1/webhooks`: 201 with the secret, the only time it is shown.
pub async fn create(c: Call) -> Result<Response<Body>> {
    let (db, account) = (c.db("webhooks")?, c.principal()?.account_id());
    let api = c.api.clone();
    let new: NewWebhook = body::json(c.req, &api.config.server)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body {\"url\", \"types\"?} is required"))?;
    let (w, secret) = webhook::create(&db, &api.config.webhooks, account, &new).await?;
    let mut v = view(&w);
    v["secret"] = json!(secret);
    Ok(respond::json(StatusCode::CREATED, &v))
}

/// `GET /v1/webhooks`.
pub async fn list(c: Call) -> Result<Response<Body>> {
    let all = webhook::list(&*c.db("webhooks")?, c.principal()?.account_id()).await?;
    Ok(respond::json(
        StatusCode::OK,
        &json!({"webhooks": all.iter().map(view).collect::<Vec<_>>()}),
    ))
}

/// `GET /v1/webhooks/{id}`.
pub async fn show(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("webhook id")?;
    let w = webhook::get(&*c.db("webhooks")?, c.principal()?.account_id(), &id).await?;
    Ok(respond::json(StatusCode::OK, &view(&w)))
}

/// `DELETE /v1/webhooks/{id}`.
pub async fn delete(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("webhook id")?;
    let w = webhook::delete(&*c.db("webhooks")?, c.principal()?.account_id(), &id).await?;
    Ok(respond::json(StatusCode::OK, &view(&w)))
}

/// `POST /v1/webhooks/{id}/enable`: after it was disabled for failing.
pub async fn enable(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("webhook id")?;
    let w = webhook::enable(&*c.db("webhooks")?, c.principal()?.account_id(), &id).await?;
    Ok(respond::json(StatusCode::OK, &view(&w)))
}

/// `GET /v1/webhooks/{id}/deliveries`'s query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<Limit>,
    /// `next_before` of the previous page: a delivery id.
    pub before: Option<Bounded<1, { i64::MAX }>>,
}

/// `GET /v1/webhooks/{id}/deliveries?limit=&before=`: newest first; `next_before` pages on.
pub async fn deliveries(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("webhook id")?;
    let q: DeliveriesQuery = query(c.req.uri().query())?;
    let (before, limit) = (q.before.map(|b| b.0), q.limit.map_or(50, |l| l.0));
    let db = c.db("webhooks")?;
    let rows =
        webhook::deliveries(&db, c.principal()?.account_id(), &id, limit + 1, before).await?;
    let more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    Ok(respond::json(
        StatusCode::OK,
        &json!({"deliveries": page.iter().map(delivery).collect::<Vec<_>>(),
                "next_before": if more { page.last().map(|d| d.id) } else { None }}),
    ))
}
