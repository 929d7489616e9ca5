//! The caller's own resources: `GET /v1/account` and `POST /v1/auth/token`.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde_json::json;

use super::{Body, respond};
use crate::accounts::store::{self, AccountRef};
use crate::auth::{Principal, Via};
use crate::error::{Error, Kind, Side};
use crate::state::AppState;

/// `GET /v1/account`: the account, its limits and budget, and the key in use.
pub async fn show(state: &Arc<AppState>, p: &Principal) -> Result<Response<Body>, Error> {
    let db = state.db.as_ref().ok_or_else(no_db)?;
    let account = store::get_account(db, &AccountRef::Id(p.account_id())).await?;
    let rl = &state.config.ratelimit;
    let (acct_rpm, acct_burst) = crate::ratelimit::effective(
        p.key.account_rate_limit,
        rl.account_per_minute,
        rl.account_burst,
    );
    let (key_rpm, key_burst) =
        crate::ratelimit::effective(p.key.key_rate_limit, rl.key_per_minute, rl.key_burst);
    Ok(respond::json(
        StatusCode::OK,
        &json!({
            "account": account,
            "limits": {
                "account": {"requests_per_minute": acct_rpm, "burst": acct_burst},
                "key": {"requests_per_minute": key_rpm, "burst": key_burst},
                "max_instances": account.max_instances,
            },
            "budget": {"daily_usd": account.daily_budget_usd},
            "key": {
                "public_id": p.key.public_id,
                "scopes": p.key.scopes,
                "via": match p.via { Via::ApiKey => "api_key", Via::Jwt => "jwt" },
            },
        }),
    ))
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
