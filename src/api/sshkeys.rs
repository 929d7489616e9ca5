//! `POST/GET /v1/ssh-keys` and `GET/DELETE /v1/ssh-keys/{id}`: REST over `service::sshkeys`.

use hyper::{Response, StatusCode};

use super::call::Call;
use super::openapi::op::{Op, error, json, schema};
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

/// `GET /v1/ssh-keys/{id}`.
pub async fn show(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("SSH key id")?;
    let v = sshkeys::get(&c.api, c.principal()?, &id).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `DELETE /v1/ssh-keys/{id}`.
pub async fn delete(c: Call) -> Result<Response<Body>> {
    let id = c.decoded_param("SSH key id")?;
    let v = sshkeys::delete(&c.api, c.principal()?, &id).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `GET /v1/ssh-keys/{id}`.
pub const GET_SSH_KEY: Op = Op {
    id: "getSshKey",
    tag: "ssh-keys",
    summary: "One of the caller's SSH public keys",
    answers: &[json(
        200,
        "The key",
        schema::<crate::service::sshkeys::SshKeyView>,
    )],
    ..Op::NONE
};

/// `GET /v1/ssh-keys`.
pub const LIST_SSH_KEYS: Op = Op {
    id: "listSshKeys",
    tag: "ssh-keys",
    summary: "The caller's SSH public keys",
    answers: &[json(
        200,
        "Keys",
        schema::<crate::service::sshkeys::SshKeyList>,
    )],
    ..Op::NONE
};

/// `POST /v1/ssh-keys`.
pub const ADD_SSH_KEY: Op = Op {
    id: "addSshKey",
    tag: "ssh-keys",
    summary: "Store an SSH public key (at most `rentals.max_ssh_keys` per account)",
    body: Some(schema::<crate::rentals::sshkeys::NewKey>),
    answers: &[json(
        201,
        "The key",
        schema::<crate::service::sshkeys::SshKeyView>,
    )],
    errors: &[
        error(409, "ssh_key_exists, ssh_key_limit"),
        error(415, "unsupported_media_type"),
    ],
    links: &["deleteSshKey"],
    ..Op::NONE
};

/// `DELETE /v1/ssh-keys/{id}`.
pub const DELETE_SSH_KEY: Op = Op {
    id: "deleteSshKey",
    tag: "ssh-keys",
    summary: "Delete one of the caller's SSH keys (instances that have it keep it)",
    answers: &[json(
        200,
        "The deleted key",
        schema::<crate::service::sshkeys::SshKeyView>,
    )],
    ..Op::NONE
};
