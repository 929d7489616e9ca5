//! `/v1/admin/...`: accounts and keys over HTTPS, for keys with the `admin` scope. The same
//! operations as the `gpuproxyd accounts|keys` commands (`accounts::store`, `auth::admin`).

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde_json::json;

use super::account::no_db;
use super::call::Call;
use super::{Body, body, respond};
use crate::accounts::Db;
use crate::accounts::store::{self, AccountChange, AccountRef, KeyChange, NewAccount, NewKeySpec};
use crate::auth::admin;
use crate::auth::apikey;
use crate::error::{Error, Result};
use crate::service::query::{Bounded, NoQuery, query};
use crate::types::text::percent_decode;

/// What every admin handler starts from: the database, Redis, and the decoded path parameter.
struct Ctx {
    db: Arc<Db>,
    param: String,
}

fn ctx(c: &Call) -> Result<Ctx> {
    let db = c.api.db.clone().ok_or_else(no_db)?;
    let param = match &c.param {
        Some(p) => percent_decode(p)
            .filter(|s| !s.is_empty() && s.len() <= 100)
            .ok_or_else(|| Error::bad_request("the path parameter is not valid"))?,
        None => String::new(),
    };
    Ok(Ctx { db, param })
}

/// `POST /v1/admin/accounts`.
pub async fn create_account(c: Call) -> Result<Response<Body>> {
    let x = ctx(&c)?;
    let limit = &c.api.config.server;
    let new: NewAccount = body::json(c.req, limit)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body with at least `name` is required"))?;
    let a = store::create_account(&x.db, &new).await?;
    Ok(respond::json(StatusCode::CREATED, &a))
}

/// `GET /v1/admin/accounts`'s query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsPage {
    /// `next_after` of the previous page: an account id.
    pub after: Option<Bounded<0, { i64::MAX }>>,
    /// Page size, 1 to 500 (default 100).
    pub limit: Option<Bounded<1, 500>>,
}

/// `GET /v1/admin/accounts?after=&limit=`.
pub async fn list_accounts(c: Call) -> Result<Response<Body>> {
    let x = ctx(&c)?;
    let q: AccountsPage = query(c.req.uri().query())?;
    let after = q.after.map_or(0, |a| a.0);
    let n = q.limit.map_or(100, |l| l.0);
    let accounts = store::list_accounts(&x.db, after, n).await?;
    let next = (accounts.len() as i64 == n).then(|| accounts.last().map(|a| a.id));
    Ok(respond::json(
        StatusCode::OK,
        &json!({"accounts": accounts, "next_after": next.flatten()}),
    ))
}

/// `GET /v1/admin/accounts/{account}`.
pub async fn show_account(c: Call) -> Result<Response<Body>> {
    let x = ctx(&c)?;
    let a = store::get_account(&x.db, &AccountRef::parse(&x.param)).await?;
    Ok(respond::json(StatusCode::OK, &a))
}

/// `PATCH /v1/admin/accounts/{account}` `{daily_budget_usd?, monthly_budget_usd?,
/// on_budget_exhausted?, max_instances?}`.
pub async fn update_account(c: Call) -> Result<Response<Body>> {
    let x = ctx(&c)?;
    let limit = &c.api.config.server;
    let change: AccountChange = body::json(c.req, limit).await?.ok_or_else(|| {
        Error::bad_request(
            "a JSON body with `daily_budget_usd`, `monthly_budget_usd`, `on_budget_exhausted` or `max_instances` is required",
        )
    })?;
    let (a, p) = admin::update_account(
        &x.db,
        Some(&c.api.auth),
        c.api.redis.as_ref(),
        &AccountRef::parse(&x.param),
        &change,
    )
    .await?;
    Ok(respond::json(
        StatusCode::OK,
        &json!({"account": a, "propagation": p}),
    ))
}

/// `POST /v1/admin/accounts/{account}/suspend|resume`.
pub async fn set_account_status(c: Call, active: bool) -> Result<Response<Body>> {
    let x = ctx(&c)?;
    let (a, p) = admin::set_account_status(
        &x.db,
        Some(&c.api.auth),
        c.api.redis.as_ref(),
        &AccountRef::parse(&x.param),
        active,
    )
    .await?;
    Ok(respond::json(
        StatusCode::OK,
        &json!({"account": a, "propagation": p}),
    ))
}

/// `POST /v1/admin/accounts/{account}/keys`.
pub async fn create_key(c: Call) -> Result<Response<Body>> {
    let x = ctx(&c)?;
    let limit = &c.api.config.server;
    let spec: NewKeySpec = body::json(c.req, limit).await?.unwrap_or_default();
    let (key, token) = store::create_key(&x.db, &AccountRef::parse(&x.param), &spec).await?;
    Ok(respond::json(
        StatusCode::CREATED,
        &json!({
            "key": key,
            "token": token,
            "note": "store the token now: only its hash is kept, it cannot be shown again",
        }),
    ))
}

/// `GET /v1/admin/accounts/{account}/keys`.
pub async fn list_keys(c: Call) -> Result<Response<Body>> {
    let x = ctx(&c)?;
    let keys = store::list_keys(&x.db, &AccountRef::parse(&x.param)).await?;
    Ok(respond::json(StatusCode::OK, &json!({"keys": keys})))
}

fn key_id(x: &Ctx) -> Result<()> {
    if !apikey::is_public_id(&x.param) {
        return Err(Error::bad_request(
            "a key's public id is 12 letters and digits (the part after `gpx_`)",
        ));
    }
    Ok(())
}

/// `GET /v1/admin/keys/{public_id}`.
pub async fn show_key(c: Call) -> Result<Response<Body>> {
    let x = ctx(&c)?;
    key_id(&x)?;
    Ok(respond::json(
        StatusCode::OK,
        &store::get_key(&x.db, &x.param).await?,
    ))
}

/// `PATCH /v1/admin/keys/{public_id}` `{"spend_limit_usd": x | null}`.
pub async fn update_key(c: Call) -> Result<Response<Body>> {
    let x = ctx(&c)?;
    key_id(&x)?;
    let limit = &c.api.config.server;
    let change: KeyChange = body::json(c.req, limit).await?.ok_or_else(|| {
        Error::bad_request("a JSON body {\"spend_limit_usd\": <USD or null>} is required")
    })?;
    Ok(respond::json(
        StatusCode::OK,
        &store::update_key(&x.db, &x.param, &change).await?,
    ))
}

/// `DELETE /v1/admin/keys/{public_id}`.
pub async fn revoke_key(c: Call) -> Result<Response<Body>> {
    let x = ctx(&c)?;
    key_id(&x)?;
    let (key, p) =
        admin::revoke_key(&x.db, Some(&c.api.auth), c.api.redis.as_ref(), &x.param).await?;
    Ok(respond::json(
        StatusCode::OK,
        &json!({"key": key, "propagation": p}),
    ))
}

/// `GET /v1/admin/reconciliation`: the providers' charges against the ledger, per instance
/// (`rentals::billing`), for every provider that publishes charges.
pub async fn reconciliation(c: Call) -> Result<Response<Body>> {
    let x = ctx(&c)?;
    let NoQuery {} = query(c.req.uri().query())?;
    let mut providers = Vec::new();
    for p in c.api.providers.list.iter() {
        let name = p.id().as_str();
        if p.publishes_charges() {
            let rep = crate::rentals::billing::report(&x.db, name).await?;
            let mut v = serde_json::to_value(&rep).map_err(Error::internal)?;
            v["as_of"] = serde_json::json!(crate::service::time(rep.as_of));
            v["status"] = json!(if rep.as_of.is_some() {
                "reconciled"
            } else {
                "not_yet"
            });
            providers.push(v);
        } else {
            providers.push(json!({"provider": name, "status": "no_charges_api"}));
        }
    }
    Ok(respond::json(
        StatusCode::OK,
        &json!({
            "alert_threshold_usd": c.api.config.rentals.billing_drift_alert_usd,
            "interval_ms": c.api.config.rentals.billing_reconcile_interval_ms.ms(),
            "providers": providers,
        }),
    ))
}
