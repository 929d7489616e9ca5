//! `/v1/providers/{vastai|ionet}/{path}`: REST over `service::passthrough`. The caller's
//! `Authorization` (and every other header but content type and accept) is dropped; the body is
//! read only once the call is approved; the provider's answer is streamed back with only the
//! headers that describe its body.

use http_body_util::BodyExt;
use hyper::Response;
use hyper::header::{ACCEPT, CONTENT_TYPE};

use super::Body;
use super::call::Call;
use super::openapi::op::{Answer, Content, Op, error};
use crate::error::Result;
use crate::service::passthrough;

pub async fn forward(c: Call) -> Result<Response<Body>> {
    let (api, p, target, req) = (
        c.api.clone(),
        c.principal()?.clone(),
        c.param.unwrap_or_default(),
        c.req,
    );
    let approved = passthrough::approve(&api, &p, &target, req.method(), req.uri().query()).await?;
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let accept = req.headers().get(ACCEPT).cloned();
    let body = super::body::limited(req.into_body(), &api.config.server).await?;
    let resp = approved.send(&api, &p, content_type, accept, body).await?;
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(body.boxed());
    *out.status_mut() = parts.status;
    // only what describes the body: no cookies, no provider headers
    for name in [CONTENT_TYPE, hyper::header::CONTENT_LENGTH] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    Ok(out)
}

/// The `{provider}` of the route: the kinds whose providers answer passthrough calls without
/// rules of the operator's own.
pub struct ProviderParam;

impl schemars::JsonSchema for ProviderParam {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PassthroughProvider".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let kinds: Vec<&str> = crate::config::ProviderKind::ALL
            .into_iter()
            .filter(|k| k.passthrough_by_default())
            .map(|k| k.name())
            .collect();
        schemars::json_schema!({"type": "string", "enum": kinds})
    }
}

// The operations of this file's routes, for the OpenAPI document (`openapi::generate`).

const DESCRIPTION: &str = "Forwarded to the provider with the provider key injected and the caller's Authorization dropped; the provider's status, content type and body are streamed back. Only `passthrough.vastai` / `passthrough.ionet` rules pass; `{instance}` segments must name the caller's own instances. Instance lists, creation, destruction and account endpoints are not on the default lists (every account shares the provider key). A rule's `body=` keys limit the JSON body (403 `passthrough_forbidden` naming the key); a `state` change is checked (a start against the budget, 402) and recorded in the ledger; no `ssh` path is ever forwarded. Calls go through the provider's circuit breaker and 429 back-off (503 `provider_error`).";

const ANSWERS: &[Answer] = &[Answer {
    status: 200,
    description: "The provider's answer, as the provider sent it",
    content: Content::Any,
    headers: &[],
}];

const REFUSALS: [Answer; 5] = [
    error(
        403,
        "passthrough_forbidden: no rule allows this method and path, or the instance named is not the caller's (`details.rule`)",
    ),
    error(502, "provider_error"),
    error(504, "provider_error: timed out"),
    error(402, "budget_exceeded: a start that does not fit the budget"),
    error(409, "instance_not_open"),
];

/// A call with a body also answers what reading a body can.
const WITH_BODY: [Answer; 8] = {
    let [a, b, c, d, e] = REFUSALS;
    [
        error(
            408,
            "The request body did not arrive within server.body_read_timeout_ms",
        ),
        error(413, "The body is over server.max_body_bytes"),
        error(415, "The body is not application/json"),
        a,
        b,
        c,
        d,
        e,
    ]
};

const fn op(id: &'static str, summary: &'static str, errors: &'static [Answer]) -> Op {
    Op {
        id,
        tag: "passthrough",
        summary,
        description: DESCRIPTION,
        answers: ANSWERS,
        errors,
        ..Op::NONE
    }
}

/// `GET /v1/providers/{provider}/{path}`.
pub const PROVIDER_GET: Op = op(
    "providerGet",
    "GET a provider API path (allow-listed)",
    &REFUSALS,
);
/// `POST /v1/providers/{provider}/{path}`.
pub const PROVIDER_POST: Op = op(
    "providerPost",
    "POST a provider API path (allow-listed)",
    &WITH_BODY,
);
/// `PUT /v1/providers/{provider}/{path}`.
pub const PROVIDER_PUT: Op = op(
    "providerPut",
    "PUT a provider API path (allow-listed)",
    &WITH_BODY,
);
/// `DELETE /v1/providers/{provider}/{path}`.
pub const PROVIDER_DELETE: Op = op(
    "providerDelete",
    "DELETE a provider API path (allow-listed)",
    &REFUSALS,
);
