//! `/v1/webhooks`: REST over `service::webhooks` (the secret is in the creation answer only).

use hyper::{Response, StatusCode};

use super::call::Call;
use super::openapi::op::{Op, error, json, schema};
use super::{Body, body, respond};
use crate::error::{Error, Result};
use crate::events::webhook::NewWebhook;
use crate::service::query::query;
use crate::service::webhooks;

/// `POST /v1/webhooks`: 201 with the secret, the only time it is shown.
pub async fn create(c: Call) -> Result<Response<Body>> {
    let (api, p) = (c.api.clone(), c.principal()?.clone());
    let new: NewWebhook = body::json(c.req, &api.config.server)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body {\"url\", \"types\"?} is required"))?;
    let v = webhooks::create(&api, &p, new).await?;
    Ok(respond::json(StatusCode::CREATED, &v))
}

/// `GET /v1/webhooks`.
pub async fn list(c: Call) -> Result<Response<Body>> {
    let v = webhooks::list(&c.api, c.principal()?).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `GET /v1/webhooks/{id}`.
pub async fn show(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("webhook id")?;
    let v = webhooks::get(&c.api, c.principal()?, &id).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `DELETE /v1/webhooks/{id}`.
pub async fn delete(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("webhook id")?;
    let v = webhooks::delete(&c.api, c.principal()?, &id).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `POST /v1/webhooks/{id}/enable`: after it was disabled for failing.
pub async fn enable(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("webhook id")?;
    let v = webhooks::enable(&c.api, c.principal()?, &id).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `GET /v1/webhooks/{id}/deliveries?limit=&before=`: newest first; `next_before` pages on.
pub async fn deliveries(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("webhook id")?;
    let q = query(c.req.uri().query())?;
    let v = webhooks::deliveries(&c.api, c.principal()?, &id, q).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `GET /v1/webhooks`.
pub const LIST_WEBHOOKS: Op = Op {
    id: "listWebhooks",
    tag: "webhooks",
    summary: "The caller's webhooks (without their secrets)",
    answers: &[json(
        200,
        "Webhooks",
        schema::<crate::service::webhooks::WebhookList>,
    )],
    ..Op::NONE
};

/// `POST /v1/webhooks`.
pub const CREATE_WEBHOOK: Op = Op {
    id: "createWebhook",
    tag: "webhooks",
    summary: "Register a signed webhook for the account's events (at most `webhooks.max_per_account`)",
    description: r#"Deliveries are POSTed with `X-Gpuproxy-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, `X-Gpuproxy-Event` and `X-Gpuproxy-Delivery`; at least once, retried on 408, 429, 5xx and connection failures with exponential back-off and jitter up to `webhooks.max_attempts`; other answers are final."#,
    body: Some(schema::<crate::events::webhook::NewWebhook>),
    answers: &[json(
        201,
        "The webhook and its secret (shown only here)",
        schema::<crate::service::webhooks::WebhookView>,
    )],
    errors: &[
        error(
            400,
            "bad_request, target_not_allowed (a host address that is not public)",
        ),
        error(409, "webhook_limit"),
        error(415, "unsupported_media_type"),
    ],
    links: &["getWebhook", "listWebhookDeliveries", "deleteWebhook"],
    ..Op::NONE
};

/// `GET /v1/webhooks/{id}`.
pub const GET_WEBHOOK: Op = Op {
    id: "getWebhook",
    tag: "webhooks",
    summary: "One of the caller's webhooks",
    answers: &[json(
        200,
        "The webhook",
        schema::<crate::service::webhooks::WebhookView>,
    )],
    ..Op::NONE
};

/// `DELETE /v1/webhooks/{id}`.
pub const DELETE_WEBHOOK: Op = Op {
    id: "deleteWebhook",
    tag: "webhooks",
    summary: "Delete a webhook and its delivery log (pending deliveries are not sent)",
    answers: &[json(
        200,
        "The deleted webhook",
        schema::<crate::service::webhooks::WebhookView>,
    )],
    ..Op::NONE
};

/// `POST /v1/webhooks/{id}/enable`.
pub const ENABLE_WEBHOOK: Op = Op {
    id: "enableWebhook",
    tag: "webhooks",
    summary: "Enable a webhook again after it was disabled for failing (its failure count restarts)",
    answers: &[json(
        200,
        "The webhook",
        schema::<crate::service::webhooks::WebhookView>,
    )],
    ..Op::NONE
};

/// `GET /v1/webhooks/{id}/deliveries`.
pub const LIST_WEBHOOK_DELIVERIES: Op = Op {
    id: "listWebhookDeliveries",
    tag: "webhooks",
    summary: "The webhook's delivery log, newest first",
    query: Some(schema::<crate::service::webhooks::DeliveriesQuery>),
    answers: &[json(
        200,
        "Deliveries",
        schema::<crate::service::webhooks::DeliveryPage>,
    )],
    ..Op::NONE
};
