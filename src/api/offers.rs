//! `GET /v1/offers`: REST over `service::offers` (the query read into `OffersQuery`, the page
//! written as the service rendered it, `Cache-Control: private, no-store`).

use std::sync::Arc;

use hyper::header::{CACHE_CONTROL, HeaderValue};
use hyper::{Response, StatusCode};

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
