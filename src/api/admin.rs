//! `/v1/admin/...`: REST over `service::admin`, for keys with the `admin` scope.

use hyper::{Response, StatusCode};

use super::call::Call;
use super::{Body, body, respond};
use crate::accounts::store::{AccountChange, KeyChange, NewAccount, NewKeySpec};
use crate::error::{Error, Result};
use crate::service::admin;
use crate::service::query::{NoQuery, query};
use crate::types::text::percent_decode;

pub use crate::service::admin::AccountsPage;

/// The path parameter (an account id or name, a key's public id), decoded: 1 to 100 bytes.
fn param(c: &Call) -> Result<String> {
    c.param
        .as_deref()
        .and_then(percent_decode)
        .filter(|s| !s.is_empty() && s.len() <= 100)
        .ok_or_else(|| Error::bad_request("the path parameter is not valid"))
}

fn ok(v: &impl serde::Serialize) -> Result<Response<Body>> {
    Ok(respond::json(StatusCode::OK, v))
}

/// `POST /v1/admin/accounts`.
pub async fn create_account(c: Call) -> Result<Response<Body>> {
    let api = c.api.clone();
    let new: NewAccount = body::json(c.req, &api.config.server)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body with at least `name` is required"))?;
    let a = admin::create_account(&api, new).await?;
    Ok(respond::json(StatusCode::CREATED, &a))
}

/// `GET /v1/admin/accounts?after=&limit=`.
pub async fn list_accounts(c: Call) -> Result<Response<Body>> {
    let q = query(c.req.uri().query())?;
    ok(&admin::list_accounts(&c.api, q).await?)
}

/// `GET /v1/admin/accounts/{account}`.
pub async fn show_account(c: Call) -> Result<Response<Body>> {
    ok(&admin::get_account(&c.api, &param(&c)?).await?)
}

/// `PATCH /v1/admin/accounts/{account}` `{daily_budget_usd?, monthly_budget_usd?,
/// on_budget_exhausted?, max_instances?}`.
pub async fn update_account(c: Call) -> Result<Response<Body>> {
    let (api, account) = (c.api.clone(), param(&c)?);
    let change: AccountChange = body::json(c.req, &api.config.server).await?.ok_or_else(|| {
        Error::bad_request(
            "a JSON body with `daily_budget_usd`, `monthly_budget_usd`, `on_budget_exhausted` or `max_instances` is required",
        )
    })?;
    ok(&admin::update_account(&api, &account, change).await?)
}

/// `POST /v1/admin/accounts/{account}/suspend|resume`.
pub async fn set_account_status(c: Call, active: bool) -> Result<Response<Body>> {
    ok(&admin::set_account_status(&c.api, &param(&c)?, active).await?)
}

/// `POST /v1/admin/accounts/{account}/keys`.
pub async fn create_key(c: Call) -> Result<Response<Body>> {
    let (api, account) = (c.api.clone(), param(&c)?);
    let spec: NewKeySpec = body::json(c.req, &api.config.server)
        .await?
        .unwrap_or_default();
    let v = admin::create_key(&api, &account, spec).await?;
    Ok(respond::json(StatusCode::CREATED, &v))
}

/// `GET /v1/admin/accounts/{account}/keys`.
pub async fn list_keys(c: Call) -> Result<Response<Body>> {
    ok(&admin::list_keys(&c.api, &param(&c)?).await?)
}

/// `GET /v1/admin/keys/{public_id}`.
pub async fn show_key(c: Call) -> Result<Response<Body>> {
    ok(&admin::get_key(&c.api, &param(&c)?).await?)
}

/// `PATCH /v1/admin/keys/{public_id}` `{"spend_limit_usd": x | null}`.
pub async fn update_key(c: Call) -> Result<Response<Body>> {
    let (api, id) = (c.api.clone(), param(&c)?);
    let change: KeyChange = body::json(c.req, &api.config.server)
        .await?
        .ok_or_else(|| {
            Error::bad_request("a JSON body {\"spend_limit_usd\": <USD or null>} is required")
        })?;
    ok(&admin::update_key(&api, &id, change).await?)
}

/// `DELETE /v1/admin/keys/{public_id}`.
pub async fn revoke_key(c: Call) -> Result<Response<Body>> {
    ok(&admin::revoke_key(&c.api, &param(&c)?).await?)
}

/// `GET /v1/admin/reconciliation`: the providers' charges against the ledger.
pub async fn reconciliation(c: Call) -> Result<Response<Body>> {
    let NoQuery {} = query(c.req.uri().query())?;
    ok(&admin::reconciliation(&c.api).await?)
}
