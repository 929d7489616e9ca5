//! `POST/GET /v1/ssh-keys` and `DELETE /v1/ssh-keys/{id}`: the caller's SSH public keys, which
//! rentals name in `ssh_key_ids`. Another account's key id is 404, like an unknown one.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::call::Call;
use super::{Body, body, respond};
use crate::error::{Error, Kind, Result, Side};
use crate::rentals::sshkeys::{self, Key, NewKey};
use crate::service::time;

fn view(k: &Key) -> Value {
    json!({"id": k.id, "name": k.name, "public_key": k.public_key,
           "fingerprint": k.fingerprint, "created_at": time(Some(k.created_at))})
}

fn db(c: &Call) -> Result<Arc<crate::accounts::Db>> {
    c.api.db.clone().ok_or_else(|| {
        Error::new(
            Kind::DatabaseUnavailable,
            Side::Internal,
            "SSH keys need the database (DATABASE_URL is not set)",
        )
    })
}

/// `POST /v1/ssh-keys`.
pub async fn create(c: Call) -> Result<Response<Body>> {
    let (db, account) = (db(&c)?, c.principal()?.account_id());
    let (max, api) = (c.api.config.rentals.max_ssh_keys, c.api.clone());
    let k: NewKey = body::json(c.req, &api.config.server)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body {\"name\", \"public_key\"} is required"))?;
    let key = sshkeys::create(&db, account, max.get(), &k).await?;
    Ok(respond::json(StatusCode::CREATED, &view(&key)))
}

/// `GET /v1/ssh-keys`.
pub async fn list(c: Call) -> Result<Response<Body>> {
    let keys = sshkeys::list(&*db(&c)?, c.principal()?.account_id()).await?;
    Ok(respond::json(
        StatusCode::OK,
        &json!({"ssh_keys": keys.iter().map(view).collect::<Vec<_>>()}),
    ))
}

/// `DELETE /v1/ssh-keys/{id}`.
pub async fn delete(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("SSH key id")?;
    let key = sshkeys::delete(&*db(&c)?, c.principal()?.account_id(), &id).await?;
    Ok(respond::json(StatusCode::OK, &view(&key)))
}
