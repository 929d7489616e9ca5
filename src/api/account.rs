//! The caller's own resources: `GET /v1/account` and `POST /v1/auth/token`.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::{Body, respond};
use crate::auth::{Principal, Via};
use crate::error::{Error, Kind, Side};
use crate::state::AppState;

/// `GET /v1/account`: the account, its limits and budget, and the key in use. Answered from the
/// cached key record (at most `auth.cache_ttl_ms` old): no query per request. Typed (not
/// `json!`) because this is the cheapest authenticated route, the one load tests hit.
pub fn show(state: &Arc<AppState>, p: &Principal) -> Response<Body> {
    let k = &p.key;
    let rl = &state.config.ratelimit;
    let (acct_rpm, acct_burst) = crate::ratelimit::effective(
        k.account_rate_limit,
        rl.account_per_minute,
        rl.account_burst,
    );
    let (key_rpm, key_burst) =
        crate::ratelimit::effective(k.key_rate_limit, rl.key_per_minute, rl.key_burst);
    respond::json(
        StatusCode::OK,
        &AccountView {
            account: AccountSummary {
                id: k.account_id,
                name: &k.account_name,
                status: if k.account_active {
                    "active"
                } else {
                    "suspended"
                },
                daily_budget_usd: k.account_daily_budget_usd,
                max_instances: k.account_max_instances,
            },
            limits: Limits {
                account: Limit {
                    requests_per_minute: acct_rpm,
                    burst: acct_burst,
                },
                key: Limit {
                    requests_per_minute: key_rpm,
                    burst: key_burst,
                },
                max_instances: k.account_max_instances,
            },
            budget: Budget {
                daily_usd: k.account_daily_budget_usd,
            },
            key: KeySummary {
                public_id: &k.public_id,
                scopes: &k.scopes,
                via: match p.via {
                    Via::ApiKey => "api_key",
                    Via::Jwt => "jwt",
                },
            },
        },
    )
}

#[derive(Serialize)]
struct AccountView<'a> {
    account: AccountSummary<'a>,
    limits: Limits,
    budget: Budget,
    key: KeySummary<'a>,
}

#[derive(Serialize)]
struct AccountSummary<'a> {
    id: i64,
    name: &'a str,
    status: &'static str,
    daily_budget_usd: f64,
    max_instances: i32,
}

#[derive(Serialize)]
struct Limits {
    account: Limit,
    key: Limit,
    max_instances: i32,
}

#[derive(Serialize)]
struct Limit {
    requests_per_minute: u64,
    burst: u64,
}

#[derive(Serialize)]
struct Budget {
    daily_usd: f64,
}

#[derive(Serialize)]
struct KeySummary<'a> {
    public_id: &'a str,
    scopes: &'a [String],
    via: &'static str,
}

/// `POST /v1/auth/token`: exchanges the API key in `Authorization` for a short-lived JWT.
pub fn token(state: &Arc<AppState>, p: &Principal) -> Result<Response<Body>, Error> {
    if p.via != Via::ApiKey {
        return Err(Error::forbidden(
            "api_key_required",
            "a token is exchanged for an API key, not for another token",
        ));
    }
    let jwt = state.auth.jwt().ok_or_else(|| {
        Error::new(
            Kind::Unavailable,
            Side::Internal,
            "tokens are not enabled on this daemon (JWT_SECRET is unset)",
        )
    })?;
    let (token, claims) = jwt.issue(&p.key)?;
    Ok(respond::json(
        StatusCode::OK,
        &json!({
            "token": token,
            "token_type": "Bearer",
            "expires_in": claims.exp - claims.iat,
            "expires_at": claims.exp,
            "account_id": p.account_id(),
            "scopes": claims.scopes,
        }),
    ))
}

pub fn no_db() -> Error {
    Error::new(
        Kind::DatabaseUnavailable,
        Side::Internal,
        "no database is configured on this daemon (DATABASE_URL is unset)",
    )
}
