//! `GET /v1/account` and `POST /v1/auth/token`: REST over `service::account`.

use std::sync::Arc;

use hyper::{Response, StatusCode};

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
