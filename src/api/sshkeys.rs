//! `POST/GET /v1/ssh-keys` and `DELETE /v1/ssh-keys/{id}`: the caller's SSH public keys, which
//! rentals name in `ssh_key_ids`. Another account's key id is 404, like an unknown one.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::Api;
use super::router::Route;
use super::{Body, body, instances::time, respond};
use crate::auth::Principal;
use crate::error::{Error, Kind, Result, Side};
use crate::rentals::sshkeys::{self, Key, NewKey};

fn view(k: &Key) -> Value {
    json!({"id": k.id, "name": k.name, "public_key": k.public_key,
           "fingerprint": k.fingerprint, "created_at": time(Some(k.created_at))})
}

pub async fn handle(
    state: &Arc<Api>,
    p: &Principal,
    route: Route,
    param: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let db = state.db.as_ref().ok_or_else(|| {
        Error::new(
            Kind::DatabaseUnavailable,
            Side::Internal,
            "SSH keys need the database (DATABASE_URL is not set)",
        )
    })?;
    let account = p.account_id();
    match (route, req.method().clone()) {
        (Route::SshKeys, Method::POST) => {
            let k: NewKey = body::json(req, state.config.server.max_body_bytes)
                .await?
                .ok_or_else(|| {
                    Error::bad_request("a JSON body {\"name\", \"public_key\"} is required")
                })?;
            let key = sshkeys::create(db, account, state.config.rentals.max_ssh_keys, &k).await?;
            Ok(respond::json(StatusCode::CREATED, &view(&key)))
        }
        (Route::SshKeys, _) => {
            let keys = sshkeys::list(db, account).await?;
            Ok(respond::json(
                StatusCode::OK,
                &json!({"ssh_keys": keys.iter().map(view).collect::<Vec<_>>()}),
            ))
        }
        _ => {
            let id = param
                .and_then(super::router::percent_decode)
                .ok_or_else(|| Error::bad_request("invalid SSH key id"))?;
            let key = sshkeys::delete(db, account, &id).await?;
            Ok(respond::json(StatusCode::OK, &view(&key)))
        }
    }
}
