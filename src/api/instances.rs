//! `/v1/instances…`: REST over `service::instances` (renting, listing, showing, destroying,
//! extending, bids, stop and start). The handlers read the path, query, headers and body into
//! the service's types and write its view back; `Idempotency-Key` is a header here.

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};

use super::call::{Call, idempotency_key};
use super::openapi::op::{Answer, Header, Op, error, json, schema};
use super::{Body, body, respond};
use crate::error::{Error, Result};
use crate::service::instances::{self, Bid, Extend, InstanceView};
use crate::service::query::query;

/// An idempotent operation's answer as it was recorded; a replay says so in a header.
fn answered(a: instances::Answer) -> Response<Body> {
    let mut resp = respond::json_bytes(
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK),
        Bytes::from(a.body),
    );
    if a.replayed {
        resp.headers_mut()
            .insert(respond::REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

/// `POST /v1/instances`.
pub async fn create(c: Call) -> Result<Response<Body>> {
    let (api, p, req) = (&c.api, c.principal()?.clone(), c.req);
    let key = idempotency_key(&req)?;
    let raw = body::read(req, &api.config.server).await?;
    Ok(answered(instances::rent(api, &p, key, &raw).await?))
}

/// `GET /v1/instances?limit=&cursor=`.
pub async fn list(c: Call) -> Result<Response<Body>> {
    let q = query(c.req.uri().query())?;
    let page = instances::list(&c.api, c.principal()?, q).await?;
    Ok(respond::json(StatusCode::OK, &page))
}

/// `GET /v1/instances/{id}`.
pub async fn show(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("instance id")?;
    let v = instances::get(&c.api, c.principal()?, &id).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `DELETE /v1/instances/{id}`.
pub async fn destroy(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("instance id")?;
    let key = idempotency_key(&c.req)?;
    Ok(answered(
        instances::destroy(&c.api, c.principal()?, &id, key).await?,
    ))
}

/// `POST /v1/instances/{id}/extend` `{"hours": n}`.
pub async fn extend(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("instance id")?;
    let p = c.principal()?.clone();
    let key = idempotency_key(&c.req)?;
    let b: Extend = body::json(c.req, &c.api.config.server)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body {\"hours\": <1 to 8760>} is required"))?;
    Ok(answered(instances::extend(&c.api, &p, &id, b, key).await?))
}

/// `POST /v1/instances/{id}/stop` and `/start`.
pub async fn set_running(c: Call, running: bool) -> Result<Response<Body>> {
    let id = c.decoded_param("instance id")?;
    let key = idempotency_key(&c.req)?;
    Ok(answered(
        instances::set_running(&c.api, c.principal()?, &id, running, key).await?,
    ))
}

/// `PUT /v1/instances/{id}/bid` `{"bid_per_hour": x}`.
pub async fn bid(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("instance id")?;
    let p = c.principal()?.clone();
    let key = idempotency_key(&c.req)?;
    let b: Bid = body::json(c.req, &c.api.config.server)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body {\"bid_per_hour\": <USD/h>} is required"))?;
    Ok(answered(instances::set_bid(&c.api, &p, &id, b, key).await?))
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// The answer of the operations on one instance.
const THE_INSTANCE: &[Answer] = &[json(200, "The instance", schema::<InstanceView>)];

/// What stopping and starting refuse.
const STOP_START_REFUSALS: &[Answer] = &[
    error(422, "idempotency_key_reused"),
    error(402, "budget_exceeded (start)"),
    error(
        409,
        "not_stoppable (the provider cannot stop instances), instance_not_open",
    ),
    error(502, "provider_error"),
    error(504, "provider_error: timed out"),
];

/// The `Idempotency-Key` header of the operations that change an instance (rent, destroy,
/// extend, stop, start, bid).
const IDEMPOTENCY: Header = Header {
    name: "Idempotency-Key",
    description: "The same key and body replay the first answer (header `Idempotent-Replayed: true`); the same key with another body gets 422 `idempotency_key_reused`. Kept `rentals.idempotency_ttl_ms`.",
    schema: schema::<crate::rentals::idempotency::KeyForm>,
};

/// `POST /v1/instances`.
pub const RENT_INSTANCE: Op = Op {
    id: "rentInstance",
    tag: "instances",
    summary: "Rent an offer",
    description: "The offer's price is fetched again (409 `price_changed` when above `max_price_per_hour` or above the price shown by `GET /v1/offers` by more than `rentals.price_tolerance`; 409 `offer_unavailable` when gone). The daily budget and instance limit are checked atomically with writing the ledger intent (402 `budget_exceeded` with the figures, 409 `instance_limit`). Projected spend = spent in the last `rentals.budget_window_hours` (24) + (current hourly rate of open instances + this one) × that window; the hour of the day does not matter.",
    headers: &[IDEMPOTENCY],
    body: Some(schema::<crate::rentals::RentBody>),
    answers: &[json(
        201,
        "The instance, provisioning",
        schema::<crate::service::instances::InstanceView>,
    )],
    errors: &[
        error(402, "budget_exceeded, with `details`"),
        error(
            409,
            "price_changed, offer_unavailable (gone, or another rental of this offer is in flight), bid_too_low, instance_limit, idempotency_in_progress",
        ),
        error(422, "idempotency_key_reused"),
        error(
            502,
            "provider_error (the provider refused or failed; `details.instance_id` when the outcome is not known yet) `outcome_unknown`: whether the instance was created is not known yet (the provider's answer or our record of it was lost); `details.instance_id` names it and the reconciler settles it.",
        ),
        error(504, "provider_error: the provider timed out"),
    ],
    links: &[
        "getInstance",
        "destroyInstance",
        "stopInstance",
        "startInstance",
        "extendInstance",
        "changeBid",
    ],
    ..Op::NONE
};

/// `GET /v1/instances`.
pub const LIST_INSTANCES: Op = Op {
    id: "listInstances",
    tag: "instances",
    summary: "The caller's instances, newest first",
    query: Some(schema::<crate::service::instances::ListInstances>),
    answers: &[json(
        200,
        "A page",
        schema::<crate::service::instances::InstancePage>,
    )],
    ..Op::NONE
};

/// `GET /v1/instances/{id}`.
pub const GET_INSTANCE: Op = Op {
    id: "getInstance",
    tag: "instances",
    summary: "One instance, its status refreshed from the provider (cached `rentals.status_cache_ms`), with its ledger events",
    answers: THE_INSTANCE,
    ..Op::NONE
};

/// `DELETE /v1/instances/{id}`.
pub const DESTROY_INSTANCE: Op = Op {
    id: "destroyInstance",
    tag: "instances",
    summary: "Destroy an instance",
    description: "Answers the instance, `terminating` or `terminated`; an instance already ended answers its state. 409 `instance_pending` while the provider has not answered the rental yet.",
    headers: &[IDEMPOTENCY],
    answers: THE_INSTANCE,
    errors: &[
        error(409, "instance_pending"),
        error(502, "provider_error"),
        error(422, "idempotency_key_reused"),
    ],
    ..Op::NONE
};

/// `PUT /v1/instances/{id}/bid`.
pub const CHANGE_BID: Op = Op {
    id: "changeBid",
    tag: "instances",
    summary: "Change an interruptible instance's bid (Vast `bid_price`); an outbid instance resumes once its bid is high enough",
    body: Some(schema::<crate::service::instances::Bid>),
    headers: &[IDEMPOTENCY],
    answers: THE_INSTANCE,
    errors: &[
        error(422, "idempotency_key_reused"),
        error(402, "budget_exceeded: the new bid does not fit the budget"),
        error(409, "not_interruptible, instance_not_open"),
        error(502, "provider_error"),
    ],
    ..Op::NONE
};

/// `POST /v1/instances/{id}/stop`.
pub const STOP_INSTANCE: Op = Op {
    id: "stopInstance",
    tag: "instances",
    summary: "Stop an instance (Vast): it bills its disk only until started",
    headers: &[IDEMPOTENCY],
    answers: THE_INSTANCE,
    errors: STOP_START_REFUSALS,
    ..Op::NONE
};

/// `POST /v1/instances/{id}/start`.
pub const START_INSTANCE: Op = Op {
    id: "startInstance",
    tag: "instances",
    summary: "Start a stopped instance (Vast); checked against the budget and recorded before the provider is asked",
    headers: &[IDEMPOTENCY],
    answers: THE_INSTANCE,
    errors: STOP_START_REFUSALS,
    ..Op::NONE
};

/// `POST /v1/instances/{id}/extend`.
pub const EXTEND_INSTANCE: Op = Op {
    id: "extendInstance",
    tag: "instances",
    summary: "Extend an instance's life: moves its expiry; on io.net buys the hours (the spend is checked against the budget first and recorded)",
    body: Some(schema::<crate::service::instances::Extend>),
    headers: &[IDEMPOTENCY],
    answers: THE_INSTANCE,
    errors: &[
        error(422, "idempotency_key_reused"),
        error(402, "budget_exceeded"),
        error(409, "instance_not_open (ended, or no lifetime to extend)"),
        error(415, "unsupported_media_type"),
        error(502, "provider_error"),
        error(504, "provider_error: timed out"),
    ],
    ..Op::NONE
};
