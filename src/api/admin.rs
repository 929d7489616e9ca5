//! `/v1/admin/...`: REST over `service::admin`, for keys with the `admin` scope.

use hyper::{Response, StatusCode};

use super::call::Call;
use super::openapi::op::{Op, error, json, schema};
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

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `GET /v1/admin/accounts`.
pub const ADMIN_LIST_ACCOUNTS: Op = Op {
    id: "adminListAccounts",
    tag: "admin",
    summary: "List accounts (admin)",
    query: Some(schema::<crate::service::admin::AccountsPage>),
    answers: &[json(
        200,
        "A page of accounts",
        schema::<crate::service::admin::AccountList>,
    )],
    ..Op::NONE
};

/// `POST /v1/admin/accounts`.
pub const ADMIN_CREATE_ACCOUNT: Op = Op {
    id: "adminCreateAccount",
    tag: "admin",
    summary: "Create an account (admin)",
    body: Some(schema::<crate::accounts::store::NewAccount>),
    answers: &[json(
        201,
        "Created",
        schema::<crate::accounts::store::Account>,
    )],
    links: &[
        "adminGetAccount",
        "adminUpdateAccount",
        "adminSuspendAccount",
        "adminResumeAccount",
        "adminListKeys",
        "adminCreateKey",
        "adminGetUsage",
    ],
    errors: &[error(409, "Already exists (an account of that name)")],
    link_field: "name",
    ..Op::NONE
};

/// `GET /v1/admin/accounts/{account}`.
pub const ADMIN_GET_ACCOUNT: Op = Op {
    id: "adminGetAccount",
    tag: "admin",
    summary: "Show an account (admin)",
    answers: &[json(
        200,
        "The account",
        schema::<crate::accounts::store::Account>,
    )],
    ..Op::NONE
};

/// `PATCH /v1/admin/accounts/{account}`.
pub const ADMIN_UPDATE_ACCOUNT: Op = Op {
    id: "adminUpdateAccount",
    tag: "admin",
    summary: "Change an account's budgets, its policy when one is spent, or its instance limit (admin)",
    body: Some(schema::<crate::accounts::store::AccountChange>),
    answers: &[json(
        200,
        "The account, and whether running daemons were told",
        schema::<crate::service::admin::AccountChanged>,
    )],
    ..Op::NONE
};

/// `POST /v1/admin/accounts/{account}/suspend`.
pub const ADMIN_SUSPEND_ACCOUNT: Op = Op {
    id: "adminSuspendAccount",
    tag: "admin",
    summary: "Suspend an account: its keys and tokens get 403 `account_suspended` (admin)",
    answers: &[json(
        200,
        "Suspended",
        schema::<crate::service::admin::AccountChanged>,
    )],
    ..Op::NONE
};

/// `POST /v1/admin/accounts/{account}/resume`.
pub const ADMIN_RESUME_ACCOUNT: Op = Op {
    id: "adminResumeAccount",
    tag: "admin",
    summary: "Resume a suspended account (admin)",
    answers: &[json(
        200,
        "Active again",
        schema::<crate::service::admin::AccountChanged>,
    )],
    ..Op::NONE
};

/// `GET /v1/admin/accounts/{account}/keys`.
pub const ADMIN_LIST_KEYS: Op = Op {
    id: "adminListKeys",
    tag: "admin",
    summary: "List an account's keys (admin)",
    answers: &[json(
        200,
        "Keys (never their secrets)",
        schema::<crate::service::admin::KeyList>,
    )],
    ..Op::NONE
};

/// `POST /v1/admin/accounts/{account}/keys`.
pub const ADMIN_CREATE_KEY: Op = Op {
    id: "adminCreateKey",
    tag: "admin",
    summary: "Create a key for an account (admin); the token is shown only in this response",
    body: Some(schema::<crate::accounts::store::NewKeySpec>),
    answers: &[json(
        201,
        "Created",
        schema::<crate::service::admin::NewKeyView>,
    )],
    links: &["adminGetKey", "adminUpdateKey", "adminRevokeKey"],
    optional_body: true,
    ..Op::NONE
};

/// `GET /v1/admin/keys/{public_id}`.
pub const ADMIN_GET_KEY: Op = Op {
    id: "adminGetKey",
    tag: "admin",
    summary: "Show a key (admin)",
    answers: &[json(
        200,
        "The key",
        schema::<crate::accounts::store::KeyInfo>,
    )],
    ..Op::NONE
};

/// `DELETE /v1/admin/keys/{public_id}`.
pub const ADMIN_REVOKE_KEY: Op = Op {
    id: "adminRevokeKey",
    tag: "admin",
    summary: "Revoke a key; every daemon drops it within a second through Redis (admin)",
    answers: &[json(
        200,
        "Revoked",
        schema::<crate::service::admin::KeyRevoked>,
    )],
    ..Op::NONE
};

/// `PATCH /v1/admin/keys/{public_id}`.
pub const ADMIN_UPDATE_KEY: Op = Op {
    id: "adminUpdateKey",
    tag: "admin",
    summary: "Set or remove a key's spend cap (admin)",
    body: Some(schema::<crate::accounts::store::KeyChange>),
    answers: &[json(
        200,
        "The key",
        schema::<crate::accounts::store::KeyInfo>,
    )],
    ..Op::NONE
};

/// `GET /v1/admin/accounts/{account}/usage`.
pub const ADMIN_GET_USAGE: Op = Op {
    id: "adminGetUsage",
    tag: "admin",
    summary: "An account's usage (admin)",
    query: Some(schema::<crate::service::usage::UsageQuery>),
    answers: &[super::openapi::op::json_or_csv(
        200,
        "The usage report (CSV with `format=csv` or `Accept: text/csv`)",
        schema::<crate::rentals::usage::ReportView>,
    )],
    ..Op::NONE
};

/// `GET /v1/admin/reconciliation`.
pub const ADMIN_RECONCILIATION: Op = Op {
    id: "adminReconciliation",
    tag: "admin",
    summary: "The providers' charges against the ledger, per instance (admin)",
    answers: &[json(
        200,
        "The last reconciliation per provider",
        schema::<crate::service::admin::Reconciliation>,
    )],
    query: Some(schema::<crate::service::query::NoQuery>),
    ..Op::NONE
};
