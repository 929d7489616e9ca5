//! `GET /v1/volume-offers`, `POST/GET /v1/volumes`, `GET/DELETE /v1/volumes/{id}`: REST over
//! `service::volumes`.

use hyper::{Response, StatusCode};

use super::call::Call;
use super::openapi::op::{Op, error, json, schema};
use super::{Body, body, respond};
use crate::error::{Error, Result};
use crate::rentals::volumes::NewVolume;
use crate::service::query::query;
use crate::service::volumes;

/// `GET /v1/volume-offers?provider=&size_gb=`.
pub async fn offers(c: Call) -> Result<Response<Body>> {
    let q = query(c.req.uri().query())?;
    let v = volumes::offers(&c.api, c.principal()?, q).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `POST /v1/volumes`.
pub async fn create(c: Call) -> Result<Response<Body>> {
    let (api, p) = (c.api.clone(), c.principal()?.clone());
    let b: NewVolume = body::json(c.req, &api.config.server)
        .await?
        .ok_or_else(|| {
            Error::bad_request("a JSON body {\"offer_id\", \"size_gb\", \"name\"?} is required")
        })?;
    let v = volumes::create(&api, &p, b).await?;
    Ok(respond::json(StatusCode::CREATED, &v))
}

/// `GET /v1/volumes`.
pub async fn list(c: Call) -> Result<Response<Body>> {
    let v = volumes::list(&c.api, c.principal()?).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `GET /v1/volumes/{id}`.
pub async fn show(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("volume id")?;
    let v = volumes::get(&c.api, c.principal()?, &id).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `DELETE /v1/volumes/{id}`.
pub async fn delete(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("volume id")?;
    let v = volumes::delete(&c.api, c.principal()?, &id).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `GET /v1/volume-offers`.
pub const LIST_VOLUME_OFFERS: Op = Op {
    id: "listVolumeOffers",
    tag: "volumes",
    summary: "Volume offers: disk on one machine, priced by the GB-month (Vast)",
    query: Some(schema::<crate::service::volumes::VolumeOffersQuery>),
    answers: &[json(
        200,
        "Offers, cheapest storage first",
        schema::<crate::service::volumes::VolumeOfferList>,
    )],
    errors: &[error(502, "provider_error")],
    ..Op::NONE
};

/// `POST /v1/volumes`.
pub const CREATE_VOLUME: Op = Op {
    id: "createVolume",
    tag: "volumes",
    summary: "Create a volume from a volume offer; it bills until deleted, whatever its instances do",
    body: Some(schema::<NewVolume>),
    answers: &[json(
        201,
        "The volume (`creating` until the provider lists it)",
        schema::<crate::service::volumes::VolumeView>,
    )],
    errors: &[
        error(402, "budget_exceeded"),
        error(409, "offer_unavailable"),
        error(415, "unsupported_media_type"),
        error(502, "provider_error"),
    ],
    links: &["getVolume", "deleteVolume"],
    ..Op::NONE
};

/// `GET /v1/volumes`.
pub const LIST_VOLUMES: Op = Op {
    id: "listVolumes",
    tag: "volumes",
    summary: "The caller's volumes, newest first",
    answers: &[json(
        200,
        "Volumes",
        schema::<crate::service::volumes::VolumeList>,
    )],
    ..Op::NONE
};

/// `GET /v1/volumes/{id}`.
pub const GET_VOLUME: Op = Op {
    id: "getVolume",
    tag: "volumes",
    summary: "One of the caller's volumes",
    answers: &[json(
        200,
        "The volume",
        schema::<crate::service::volumes::VolumeView>,
    )],
    ..Op::NONE
};

/// `DELETE /v1/volumes/{id}`.
pub const DELETE_VOLUME: Op = Op {
    id: "deleteVolume",
    tag: "volumes",
    summary: "Delete one of the caller's volumes (409 while an instance uses it); it stops billing",
    answers: &[json(
        200,
        "The deleted volume",
        schema::<crate::service::volumes::VolumeView>,
    )],
    errors: &[
        error(409, "volume_in_use, volume_not_ready"),
        error(502, "provider_error"),
    ],
    ..Op::NONE
};
