//! `/v1/instances…`: REST over `service::instances` (renting, listing, showing, destroying,
//! extending, bids, stop and start). The handlers read the path, query, headers and body into
//! the service's types and write its view back; `Idempotency-Key` is a header here.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};

use super::call::Call;
use super::{Body, body, respond};
use crate::error::{Error, Result};
use crate::service::instances::{self, Answer, Bid, Extend};
use crate::service::query::query;

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>> {
    match req.headers().get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_owned()))
            .map_err(|_| Error::bad_request("invalid `Idempotency-Key`: visible ASCII only")),
    }
}

/// An idempotent operation's answer as it was recorded; a replay says so in a header.
fn answered(a: Answer) -> Response<Body> {
    let mut resp = respond::json_bytes(
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK),
        Bytes::from(a.body),
    );
    if a.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
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
    let b: Extend = body::json(c.req, &c.api.config.server)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body {\"hours\": <1 to 8760>} is required"))?;
    let v = instances::extend(&c.api, &p, &id, b).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `POST /v1/instances/{id}/stop` and `/start`.
pub async fn set_running(c: Call, running: bool) -> Result<Response<Body>> {
    let id = c.decoded_param("instance id")?;
    let v = instances::set_running(&c.api, c.principal()?, &id, running).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `PUT /v1/instances/{id}/bid` `{"bid_per_hour": x}`.
pub async fn bid(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("instance id")?;
    let p = c.principal()?.clone();
    let b: Bid = body::json(c.req, &c.api.config.server)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body {\"bid_per_hour\": <USD/h>} is required"))?;
    let v = instances::set_bid(&c.api, &p, &id, b).await?;
    Ok(respond::json(StatusCode::OK, &v))
}
