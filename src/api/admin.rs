//! `/v1/admin/...`: accounts and keys over HTTPS, for keys with the `admin` scope. The same
//! operations as the `gpuproxyd accounts|keys` commands (`accounts::store`, `auth::admin`).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::Api;
use super::account::no_db;
use super::router::{Route, percent_decode};
use super::{Body, body, respond};
use crate::accounts::Db;
use crate::accounts::store::{self, AccountRef, NewAccount, NewKeySpec};
use crate::auth::admin;
use crate::auth::apikey;
use crate::error::{Error, Result};

pub async fn handle(
    state: &Arc<Api>,
    route: Route,
    param: Option<String>,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let db: &Db = state.db.as_ref().ok_or_else(no_db)?;
    let redis = state.redis.as_ref();
    let limit = state.config.server.max_body_bytes;
    let param = match param {
        Some(p) => Some(
            percent_decode(&p)
                .filter(|s| !s.is_empty() && s.len() <= 100)
                .ok_or_else(|| Error::bad_request("the path parameter is not valid"))?,
        ),
        None => None,
    };
    let account_ref = || AccountRef::parse(param.as_deref().unwrap_or_default());
    let method = req.method().clone();
    match (route, method) {
        (Route::AdminAccounts, Method::POST) => {
            let new: NewAccount = body::json(req, limit).await?.ok_or_else(|| {
                Error::bad_request("a JSON body with at least `name` is required")
            })?;
            let a = store::create_account(db, &new).await?;
            Ok(respond::json(StatusCode::CREATED, &a))
        }
        (Route::AdminAccounts, _) => {
            let q = req.uri().query().unwrap_or("");
            let after = query_int(q, "after", 0, i64::MAX)?.unwrap_or(0);
            let n = query_int(q, "limit", 1, 500)?.unwrap_or(100);
            let accounts = store::list_accounts(db, after, n).await?;
            let next = (accounts.len() as i64 == n).then(|| accounts.last().map(|a| a.id));
            Ok(respond::json(
                StatusCode::OK,
                &json!({"accounts": accounts, "next_after": next.flatten()}),
            ))
        }
        (Route::AdminAccount, _) => {
            let a = store::get_account(db, &account_ref()).await?;
            Ok(respond::json(StatusCode::OK, &a))
        }
        (Route::AdminAccountSuspend | Route::AdminAccountResume, _) => {
            let active = route == Route::AdminAccountResume;
            let (a, p) =
                admin::set_account_status(db, Some(&state.auth), redis, &account_ref(), active)
                    .await?;
            Ok(respond::json(
                StatusCode::OK,
                &json!({"account": a, "propagation": p}),
            ))
        }
        (Route::AdminAccountKeys, Method::POST) => {
            let spec: NewKeySpec = body::json(req, limit).await?.unwrap_or_default();
            let (key, token) = store::create_key(db, &account_ref(), &spec).await?;
            Ok(respond::json(
                StatusCode::CREATED,
                &json!({
                    "key": key,
                    "token": token,
                    "note": "store the token now: only its hash is kept, it cannot be shown again",
                }),
            ))
        }
        (Route::AdminAccountKeys, _) => {
            let keys = store::list_keys(db, &account_ref()).await?;
            Ok(respond::json(StatusCode::OK, &json!({"keys": keys})))
        }
        (Route::AdminKey, m) => {
            let id = param.as_deref().unwrap_or_default();
            if !apikey::is_public_id(id) {
                return Err(Error::bad_request(
                    "a key's public id is 12 letters and digits (the part after `gpx_`)",
                ));
            }
            if m == Method::DELETE {
                let (key, p) = admin::revoke_key(db, Some(&state.auth), redis, id).await?;
                Ok(respond::json(
                    StatusCode::OK,
                    &json!({"key": key, "propagation": p}),
                ))
            } else {
                Ok(respond::json(
                    StatusCode::OK,
                    &store::get_key(db, id).await?,
                ))
            }
        }
        _ => Err(Error::not_found(route.label())),
    }
}

/// An integer query parameter within `[min, max]`, or an error naming it.
fn query_int(query: &str, name: &str, min: i64, max: i64) -> Result<Option<i64>> {
    let Some(v) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
    else {
        return Ok(None);
    };
    v.parse::<i64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .map(Some)
        .ok_or_else(|| {
            Error::bad_request(format!("`{name}` must be an integer from {min} to {max}"))
        })
}
