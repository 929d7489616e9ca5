//! `GET /v1/usage` (the caller's account) and `GET /v1/admin/accounts/{account}/usage` (any
//! account): REST over `service::usage`.

use hyper::{Response, StatusCode};

use super::call::Call;
use super::openapi::op::{Op, json, schema};
use super::{Body, respond};
use crate::error::Result;
use crate::service::{query::query, usage};

/// `GET /v1/usage?from=&to=&group_by=day|instance|key|provider`.
pub async fn mine(c: Call) -> Result<Response<Body>> {
    let q = query(c.req.uri().query())?;
    let v = usage::mine(&c.api, c.principal()?, q).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `GET /v1/admin/accounts/{account}/usage?...`.
pub async fn of_account(c: Call) -> Result<Response<Body>> {
    let q = query(c.req.uri().query())?;
    let v = usage::of_account(&c.api, &c.decoded_param("account")?, q).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `GET /v1/usage`.
pub const GET_USAGE: Op = Op {
    id: "getUsage",
    tag: "rentals",
    summary: "The caller's account's usage: USD, GPU-hours, instance-hours",
    query: Some(schema::<crate::service::usage::UsageQuery>),
    answers: &[json(
        200,
        "The usage report",
        schema::<crate::rentals::usage::ReportView>,
    )],
    ..Op::NONE
};
