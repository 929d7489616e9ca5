//! `POST/GET /v1/ssh-keys` and `DELETE /v1/ssh-keys/{id}`: REST over `service::sshkeys`.

use hyper::{Response, StatusCode};

use super::call::Call;
use super::{Body, body, respond};
use crate::error::{Error, Result};
use crate::rentals::sshkeys::NewKey;
use crate::service::sshkeys;

/// `POST /v1/ssh-keys`.
pub async fn create(c: Call) -> Result<Response<Body>> {
    let (api, p) = (c.api.clone(), c.principal()?.clone());
    let k: NewKey = body::json(c.req, &api.config.server)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body {\"name\", \"public_key\"} is required"))?;
    let v = sshkeys::create(&api, &p, k).await?;
    Ok(respond::json(StatusCode::CREATED, &v))
}

/// `GET /v1/ssh-keys`.
pub async fn list(c: Call) -> Result<Response<Body>> {
    let v = sshkeys::list(&c.api, c.principal()?).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `DELETE /v1/ssh-keys/{id}`.
pub async fn delete(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("SSH key id")?;
    let v = sshkeys::delete(&c.api, c.principal()?, &id).await?;
    Ok(respond::json(StatusCode::OK, &v))
}
