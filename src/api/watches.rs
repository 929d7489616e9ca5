//! `/v1/watches`: an account's offer watches (a rental spec and a price per GPU); a matching
//! offer arrives as an `offer.watch_matched` event (stream, WebSocket, webhooks). Another
//! account's watch is 404, like an unknown one.

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::call::Call;
use super::{Body, body, respond};
use crate::error::{Error, Result};
use crate::providers::ProviderId;
use crate::rentals::watches::{self, NewWatch, Watch};
use crate::service::time;

fn view(w: &Watch) -> Value {
    json!({"id": w.id, "spec": w.spec, "max_price_per_gpu": w.max_price_per_gpu,
           "matches": w.matches, "last_matched_at": time(w.last_matched_at),
           "created_at": time(Some(w.created_at))})
}

/// `POST /v1/watches`.
pub async fn create(c: Call) -> Result<Response<Body>> {
    let (db, account) = (c.db("watches")?, c.principal()?.account_id());
    let api = c.api.clone();
    let new: NewWatch = body::json(c.req, &api.config.server)
        .await?
        .ok_or_else(|| {
            Error::bad_request("a JSON body {\"spec\", \"max_price_per_gpu\"} is required")
        })?;
    let enabled: Vec<ProviderId> = api.providers.list.iter().map(|p| p.id()).collect();
    let w = watches::create(
        &db,
        api.config.rentals.max_watches.get(),
        &enabled,
        account,
        &new,
    )
    .await?;
    Ok(respond::json(StatusCode::CREATED, &view(&w)))
}

/// `GET /v1/watches`.
pub async fn list(c: Call) -> Result<Response<Body>> {
    let all = watches::list(&*c.db("watches")?, c.principal()?.account_id()).await?;
    Ok(respond::json(
        StatusCode::OK,
        &json!({"watches": all.iter().map(view).collect::<Vec<_>>()}),
    ))
}

/// `GET /v1/watches/{id}`.
pub async fn show(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("watch id")?;
    let w = watches::get(&*c.db("watches")?, c.principal()?.account_id(), &id).await?;
    Ok(respond::json(StatusCode::OK, &view(&w)))
}

/// `DELETE /v1/watches/{id}`.
pub async fn delete(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("watch id")?;
    let w = watches::delete(&*c.db("watches")?, c.principal()?.account_id(), &id).await?;
    Ok(respond::json(StatusCode::OK, &view(&w)))
}
