//! `GET /v1/usage` (the caller's account) and `GET /v1/admin/accounts/{account}/usage` (any
//! account): the rentals ledger's usage report (`rentals::usage`).

use hyper::{Response, StatusCode};

use super::account::no_db;
use super::call::Call;
use super::{Body, respond};
use crate::accounts::store::{self, AccountRef};
use crate::error::{Error, Result};
use crate::rentals::usage::{self, GroupBy, Span};
use crate::types::text::percent_decode;

/// `from`, `to` and `group_by` from the query; every error names the parameter.
fn query(q: Option<&str>) -> Result<(Span, GroupBy)> {
    let mut span = Span {
        from: None,
        to: None,
    };
    let mut group_by = GroupBy::Day;
    for kv in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v).unwrap_or_default();
        match k {
            "from" => span.from = Some(usage::parse_time("from", &v)?),
            "to" => span.to = Some(usage::parse_time("to", &v)?),
            "group_by" => {
                group_by = GroupBy::parse(&v).ok_or_else(|| {
                    Error::bad_request(
                        "invalid query parameter `group_by`: day, instance, key or provider",
                    )
                })?
            }
            other => {
                return Err(Error::bad_request(format!(
                    "unknown query parameter `{}` (known: from, to, group_by)",
                    crate::error::truncate(other, 64)
                )));
            }
        }
    }
    span.check()?;
    Ok((span, group_by))
}

/// `GET /v1/usage?from=&to=&group_by=day|instance|key|provider`.
pub async fn mine(c: Call) -> Result<Response<Body>> {
    report_for(&c.api, c.principal()?, c.req.uri().query()).await
}

/// The caller's usage for a query string (the REST route and the MCP tool `get_usage`).
pub async fn report_for(
    api: &std::sync::Arc<super::Api>,
    p: &crate::auth::Principal,
    q: Option<&str>,
) -> Result<Response<Body>> {
    let (span, group_by) = query(q)?;
    let db = api.db.clone().ok_or_else(no_db)?;
    let r = usage::report(&db, p.account_id(), span, group_by).await?;
    Ok(respond::json(
        StatusCode::OK,
        &usage::to_json(&p.key.account_name, &r),
    ))
}

/// `GET /v1/admin/accounts/{account}/usage?...`.
pub async fn of_account(c: Call) -> Result<Response<Body>> {
    let (span, group_by) = query(c.req.uri().query())?;
    let db = c.api.db.clone().ok_or_else(no_db)?;
    let name = c.decoded_param("account")?;
    let account = store::get_account(&db, &AccountRef::parse(&name)).await?;
    let r = usage::report(&db, account.id, span, group_by).await?;
    Ok(respond::json(
        StatusCode::OK,
        &usage::to_json(&account.name, &r),
    ))
}
