//! `GET /v1/offers`: REST over `service::offers` (the query read into `OffersQuery`, the page
//! written as the service rendered it, `Cache-Control: private, no-store`).

use std::sync::Arc;

use hyper::header::{CACHE_CONTROL, HeaderValue};
use hyper::{Response, StatusCode};

use super::openapi::op::{Op, error, json, schema};
use super::{Api, Body, respond};
use crate::error::Result;
use crate::service::offers::{self, Filters};

pub async fn list(api: &Arc<Api>, query: Option<&str>) -> Result<Response<Body>> {
    let f = Filters::parse(query, &api.config.offers)?;
    let page = offers::search(api, &api.offer_pages, f).await?;
    let mut resp = respond::json_bytes(StatusCode::OK, page.to_json());
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(resp)
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

/// `GET /v1/offers`.
pub const LIST_OFFERS: Op = Op {
    id: "listOffers",
    tag: "offers",
    summary: "Search GPU offers across Vast.ai and io.net",
    description: "Both providers are searched in parallel through the offers cache (fresh for `offers.cache_ttl_ms`, then served stale while one refresh runs, and while a provider fails served stale up to `offers.stale_if_error_ms` old). Only the GPU model, interruptible and disk size are sent upstream; every other filter, the sort and the paging apply to the cached answer. When one provider fails the answer has the other's offers with `status: partial`; when none can answer, 502 `providers_unavailable`. A parameter that is unknown, repeated or invalid gets 400 naming it.",
    query: Some(schema::<crate::service::offers::OffersQuery>),
    answers: &[json(
        200,
        "A page of offers",
        schema::<crate::service::offers::OffersPage>,
    )],
    errors: &[error(502, "No provider could answer")],
    ..Op::NONE
};
