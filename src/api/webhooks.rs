//! `/v1/webhooks`: REST over `service::webhooks` (the secret is in the creation answer only).

use hyper::{Response, StatusCode};

use super::call::Call;
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
