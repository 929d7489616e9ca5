//! `/v1/watches`: REST over `service::watches`.

use hyper::{Response, StatusCode};

use super::call::Call;
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
