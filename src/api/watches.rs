//! `/v1/watches`: REST over `service::watches`.

use hyper::{Response, StatusCode};

use super::call::Call;
use super::openapi::op::{Op, error, json, schema};
use super::{Body, body, respond};
use crate::error::{Error, Result};
use crate::rentals::watches::NewWatch;
use crate::service::watches;

/// `POST /v1/watches`.
pub async fn create(c: Call) -> Result<Response<Body>> {
    let (api, p) = (c.api.clone(), c.principal()?.clone());
    let new: NewWatch = body::json(c.req, &api.config.server)
        .await?
        .ok_or_else(|| {
            Error::bad_request("a JSON body {\"spec\", \"max_price_per_gpu\"} is required")
        })?;
    let v = watches::create(&api, &p, new).await?;
    Ok(respond::json(StatusCode::CREATED, &v))
}

/// `GET /v1/watches`.
pub async fn list(c: Call) -> Result<Response<Body>> {
    let v = watches::list(&c.api, c.principal()?).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `GET /v1/watches/{id}`.
pub async fn show(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("watch id")?;
    let v = watches::get(&c.api, c.principal()?, &id).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `DELETE /v1/watches/{id}`.
pub async fn delete(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("watch id")?;
    let v = watches::delete(&c.api, c.principal()?, &id).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `GET /v1/watches`.
pub const LIST_WATCHES: Op = Op {
    id: "listWatches",
    tag: "watches",
    summary: "The caller's offer watches",
    answers: &[json(
        200,
        "Watches",
        schema::<crate::service::watches::WatchList>,
    )],
    ..Op::NONE
};

/// `POST /v1/watches`.
pub const CREATE_WATCH: Op = Op {
    id: "createWatch",
    tag: "watches",
    summary: "Watch for offers matching a spec at or below a price per GPU (at most `rentals.max_watches`)",
    description: "Evaluated on every upstream answer that refreshes the offers cache (never with a call of its own): each matching offer fires one `offer.watch_matched` event (`data`: `watch_id`, `offer`) per watch, on the event stream and to webhooks.",
    body: Some(schema::<crate::rentals::watches::NewWatch>),
    answers: &[json(
        201,
        "The watch",
        schema::<crate::service::watches::WatchView>,
    )],
    errors: &[
        error(409, "watch_limit"),
        error(415, "unsupported_media_type"),
    ],
    links: &["getWatch", "deleteWatch"],
    ..Op::NONE
};

/// `GET /v1/watches/{id}`.
pub const GET_WATCH: Op = Op {
    id: "getWatch",
    tag: "watches",
    summary: "One of the caller's watches",
    answers: &[json(
        200,
        "The watch",
        schema::<crate::service::watches::WatchView>,
    )],
    ..Op::NONE
};

/// `DELETE /v1/watches/{id}`.
pub const DELETE_WATCH: Op = Op {
    id: "deleteWatch",
    tag: "watches",
    summary: "Delete a watch",
    answers: &[json(
        200,
        "The deleted watch",
        schema::<crate::service::watches::WatchView>,
    )],
    ..Op::NONE
};
