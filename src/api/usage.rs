//! `GET /v1/usage` (the caller's account) and `GET /v1/admin/accounts/{account}/usage` (any
//! account): REST over `service::usage`.

use hyper::{Response, StatusCode};

use super::call::Call;
use super::openapi::op::{Op, json_or_csv, schema};
use super::{Body, respond};
use crate::error::Result;
use crate::service::{query::query, usage};

/// `GET /v1/usage?from=&to=&group_by=day|instance|key|provider|instance_day&format=json|csv`.
pub async fn mine(c: Call) -> Result<Response<Body>> {
    let q = wanted(&c)?;
    let (name, r) = usage::mine_report(&c.api, c.principal()?, &q).await?;
    Ok(write(&q, &name, &r))
}

/// `GET /v1/admin/accounts/{account}/usage?...`.
pub async fn of_account(c: Call) -> Result<Response<Body>> {
    let q = wanted(&c)?;
    let (name, r) = usage::of_account(&c.api, &c.decoded_param("account")?, &q).await?;
    Ok(write(&q, &name, &r))
}

/// The query, CSV chosen by `Accept: text/csv` when `format` does not say.
fn wanted(c: &Call) -> Result<usage::UsageQuery> {
    let mut q: usage::UsageQuery = query(c.req.uri().query())?;
    let csv = c
        .req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/csv"))
        });
    if csv && q.format.is_none() {
        q.format = Some(usage::UsageFormat::Csv);
    }
    Ok(q)
}

fn write(q: &usage::UsageQuery, name: &str, r: &crate::rentals::usage::Report) -> Response<Body> {
    if q.format == Some(usage::UsageFormat::Csv) {
        let mut resp = Response::new(respond::full(bytes::Bytes::from(r.to_csv())));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        return resp;
    }
    respond::json(
        StatusCode::OK,
        &crate::rentals::usage::ReportView::of(name, r),
    )
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `GET /v1/usage`.
pub const GET_USAGE: Op = Op {
    id: "getUsage",
    tag: "rentals",
    summary: "The caller's account's usage: USD, GPU-hours, instance-hours",
    query: Some(schema::<crate::service::usage::UsageQuery>),
    answers: &[json_or_csv(
        200,
        "The usage report (CSV with `format=csv` or `Accept: text/csv`)",
        schema::<crate::rentals::usage::ReportView>,
    )],
    ..Op::NONE
};
