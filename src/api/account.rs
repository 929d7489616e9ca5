//! `GET /v1/account` and `POST /v1/auth/token`: REST over `service::account`.

use std::sync::Arc;

use hyper::{Response, StatusCode};

use super::openapi::op::{Op, json, schema};
use super::{Api, Body, respond};
use crate::auth::Principal;
use crate::error::Result;
use crate::service::account;

/// `GET /v1/account`: the account, its limits and budget, and the key in use, answered from the
/// cached key record (no query per request) as the API's render cache holds it.
pub fn show(api: &Arc<Api>, p: &Principal) -> Response<Body> {
    respond::json_bytes(
        StatusCode::OK,
        api.account_views.body(&p.key, p.via, &api.config.ratelimit),
    )
}

/// `POST /v1/auth/token`.
pub fn token(api: &Arc<Api>, p: &Principal) -> Result<Response<Body>> {
    Ok(respond::json(StatusCode::OK, &account::token(api, p)?))
}

/// `GET /v1/account/keys`.
pub async fn keys(c: super::call::Call) -> Result<Response<Body>> {
    let v = account::keys(&c.api, c.principal()?).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `GET /v1/account/keys`.
pub const LIST_OWN_KEYS: Op = Op {
    id: "listOwnKeys",
    tag: "auth",
    summary: "The API keys of the caller's account (public ids, scopes, limits and policies; never a secret)",
    answers: &[json(200, "Keys", schema::<crate::service::admin::KeyList>)],
    ..Op::NONE
};

/// `POST /v1/auth/token`.
pub const CREATE_TOKEN: Op = Op {
    id: "createToken",
    tag: "auth",
    summary: "Exchange the API key in `Authorization` for a short-lived JWT",
    description: "Only an API key can be exchanged (a token gets 403 `api_key_required`). The token is HS256, carries the account, key and scopes, lives `auth.jwt_ttl_ms` (15 min by default, never past the key's expiry), and is refused once its key is revoked or its account suspended.",
    answers: &[json(
        200,
        "A token",
        schema::<crate::service::account::TokenView>,
    )],
    ..Op::NONE
};

/// `GET /v1/account`.
pub const GET_ACCOUNT: Op = Op {
    id: "getAccount",
    tag: "auth",
    summary: "The caller's account, limits and budget",
    answers: &[json(
        200,
        "The account",
        schema::<crate::service::account::AccountView<'static>>,
    )],
    ..Op::NONE
};
