//! `/v1/providers/{vastai|ionet}/{path}`: an allow-listed provider API call made with the
//! provider's key. The caller's `Authorization` (and every other header but content type and
//! accept) is dropped, the provider key injected, and the response streamed back. A path naming
//! an instance passes only for the caller's own instances; anything else is 403
//! `passthrough_forbidden` saying which rule refused it. A rule's `body=` keys limit what the
//! body may hold; a `state` change (start/stop) is checked and recorded in the ledger. Calls go
//! through the provider's gate (circuit breaker, 429 back-off) like every other upstream call.

use http_body_util::{BodyExt, Full};
use std::time::Duration;

use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper::{Request, Response};
use metrics::counter;
use serde_json::json;
use tokio_postgres::types::Type;

use super::Body;
use super::call::Call;
use super::openapi::op::{Answer, Content, Op, error};
use crate::error::{Error, Kind, Refusal, Result, Side};
use crate::metrics::UPSTREAM_REQUESTS_TOTAL;
use crate::providers::UpstreamError;
use crate::types::{ProviderId, passthrough};

fn forbidden(message: String, rule: Option<&str>) -> Error {
    Error::refused(
        Refusal::PassthroughForbidden,
        message,
        Some(json!({ "rule": rule })),
    )
}

pub async fn forward(c: Call) -> Result<Response<Body>> {
    let (state, p, param, req) = (
        &c.api,
        c.principal()?.clone(),
        c.param.unwrap_or_default(),
        c.req,
    );
    let (p, param) = (&p, param.as_str());
    if !state.config.passthrough.enabled {
        return Err(forbidden("passthrough is switched off here".into(), None));
    }
    let (name, rest) = param.split_once('/').unwrap_or((param, ""));
    let pid = ProviderId::parse(name).ok_or_else(|| {
        Error::new(
            Kind::NotFound,
            Side::Client,
            format!("no provider `{}`", crate::error::truncate(name, 32)),
        )
    })?;
    let raw_path = format!("/{rest}");
    let path = crate::types::text::percent_decode(&raw_path).ok_or_else(|| {
        Error::bad_request("the provider path has broken percent-encoding or a control character")
    })?;
    let rules = state
        .config
        .providers
        .tables
        .get(pid.as_str())
        .map(|t| t.passthrough.as_slice())
        .unwrap_or_default();
    let allowed =
        passthrough::check(rules, req.method(), &path).map_err(|why| forbidden(why, None))?;
    if let Some(instance) = &allowed.instance {
        let db = state.db.as_ref().ok_or_else(|| {
            Error::new(
                Kind::DatabaseUnavailable,
                Side::Internal,
                "instance ownership needs the database",
            )
        })?;
        let account = p.account_id();
        let owned = db
            .query_opt(
                "SELECT 1 FROM instances WHERE provider = $1 AND provider_instance_id = $2 AND account_id = $3",
                &[(&name, Type::TEXT), (instance, Type::TEXT), (&account, Type::INT8)],
            )
            .await?
            .is_some();
        if !owned {
            return Err(forbidden(
                format!(
                    "instance {} is not one of this account's instances",
                    crate::error::truncate(instance, 64)
                ),
                Some(&allowed.rule.text),
            ));
        }
    }
    // one provider call on the account's budget (the provider key is shared by all accounts)
    if let Some(r) = &state.rentals {
        r.upstream_call(p.account_id())?;
    }
    let provider = state
        .providers
        .get(pid)
        .ok_or_else(|| {
            Error::new(
                Kind::NotFound,
                Side::Client,
                format!("provider `{name}` is not enabled here"),
            )
        })?
        .clone();
    let (base, http, auth) = provider.passthrough();
    let Some((auth_name, auth_value)) = auth else {
        return Err(crate::providers::upstream_error(
            pid,
            &UpstreamError::Disabled("no API key is configured for it"),
        ));
    };
    // what was checked is what is sent: the decoded path and the named parameters, encoded again
    let mut uri = format!("{base}{}", passthrough::forward_path(&path));
    if let Some(q) = allowed
        .rule
        .forward_query(req.uri().query())
        .map_err(|why| forbidden(why, Some(&allowed.rule.text)))?
    {
        uri.push('?');
        uri.push_str(&q);
    }
    let method = req.method().clone();
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let accept = req.headers().get(ACCEPT).cloned();
    let limit = &state.config.server;
    let body = super::body::limited(req.into_body(), limit).await?;
    allowed
        .rule
        .check_body(&body)
        .map_err(|why| forbidden(why, Some(&allowed.rule.text)))?;
    // a start or stop: checked and then recorded, so the ledger bills what the provider does
    let state_change = match (&allowed.instance, &allowed.rule.body_keys) {
        (Some(instance), Some(keys)) if keys.iter().any(|k| k == "state") => {
            match serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("state").cloned())
            {
                Some(s) => {
                    let s = s.as_str().unwrap_or("").to_owned();
                    let r = state.rentals.as_ref().ok_or_else(|| {
                        Error::new(
                            Kind::DatabaseUnavailable,
                            Side::Internal,
                            "state changes need the database",
                        )
                    })?;
                    let row = r
                        .check_state_change(p.account_id(), name, instance, &s)
                        .await?;
                    Some((r.clone(), row, s))
                }
                None => None,
            }
        }
        _ => None,
    };
    let mut up = Request::builder()
        .method(method)
        .uri(uri)
        .header(
            USER_AGENT,
            HeaderValue::from_static(concat!("gpuproxyd/", env!("CARGO_PKG_VERSION"))),
        )
        .body(Full::new(body))
        .map_err(|_| Error::bad_request("the provider path is not a valid URI"))?;
    let h = up.headers_mut();
    if let Some(ct) = content_type {
        h.insert(CONTENT_TYPE, ct);
    }
    if let Some(a) = accept {
        h.insert(ACCEPT, a);
    }
    h.insert(auth_name, auth_value);
    // one attempt (a passthrough call may not be idempotent), through the breaker and back-off;
    // a 429 or 5xx counts against the provider and answers as our own upstream error
    let mut once = Some(up);
    let resp = provider
        .gate()
        .call("passthrough", false, |_left| {
            let req = once.take();
            async move {
                let req = req.ok_or((UpstreamError::Reset("already sent".into()), None))?;
                let resp = http.stream(req).await.map_err(|e| (e, None))?;
                let status = resp.status().as_u16();
                if status == 429 {
                    let after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    return Err((UpstreamError::RateLimited, after));
                }
                if status >= 500 {
                    return Err((
                        UpstreamError::Status {
                            status,
                            detail: String::new(),
                        },
                        None,
                    ));
                }
                Ok(resp)
            }
        })
        .await
        .map_err(|e| crate::providers::upstream_error(pid, &e))?;
    if let Some((r, row, s)) = state_change
        && resp.status().is_success()
    {
        r.record_state_change(&row, &s, "through passthrough")
            .await?;
    }
    counter!(UPSTREAM_REQUESTS_TOTAL, "provider" => pid.as_str(), "op" => "passthrough", "status" => crate::metrics::status_label(resp.status().as_u16())).increment(1);
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

/// `GET /v1/providers/{provider}/{path}`.
pub const PROVIDER_GET: Op = Op {
    id: "providerGet",
    tag: "passthrough",
    summary: "GET a provider API path (allow-listed)",
    description: "Forwarded to the provider with the provider key injected and the caller's Authorization dropped; the provider's status, content type and body are streamed back. Only `passthrough.vastai` / `passthrough.ionet` rules pass; `{instance}` segments must name the caller's own instances. Instance lists, creation, destruction and account endpoints are not on the default lists (every account shares the provider key). A rule's `body=` keys limit the JSON body (403 `passthrough_forbidden` naming the key); a `state` change is checked (a start against the budget, 402) and recorded in the ledger; no `ssh` path is ever forwarded. Calls go through the provider's circuit breaker and 429 back-off (503 `provider_error`).",
    answers: &[Answer {
        status: 200,
        description: "The provider's answer, as the provider sent it",
        content: Content::Any,
        headers: &[],
    }],
    errors: &[
        error(
            403,
            "passthrough_forbidden: no rule allows this method and path, or the instance named is not the caller's (`details.rule`)",
        ),
        error(502, "provider_error"),
        error(504, "provider_error: timed out"),
        error(402, "budget_exceeded: a start that does not fit the budget"),
        error(409, "instance_not_open"),
    ],
    ..Op::NONE
};

/// `POST /v1/providers/{provider}/{path}`.
pub const PROVIDER_POST: Op = Op {
    id: "providerPost",
    tag: "passthrough",
    summary: "POST a provider API path (allow-listed)",
    description: "Forwarded to the provider with the provider key injected and the caller's Authorization dropped; the provider's status, content type and body are streamed back. Only `passthrough.vastai` / `passthrough.ionet` rules pass; `{instance}` segments must name the caller's own instances. Instance lists, creation, destruction and account endpoints are not on the default lists (every account shares the provider key). A rule's `body=` keys limit the JSON body (403 `passthrough_forbidden` naming the key); a `state` change is checked (a start against the budget, 402) and recorded in the ledger; no `ssh` path is ever forwarded. Calls go through the provider's circuit breaker and 429 back-off (503 `provider_error`).",
    answers: &[Answer {
        status: 200,
        description: "The provider's answer, as the provider sent it",
        content: Content::Any,
        headers: &[],
    }],
    errors: &[
        error(
            408,
            "The request body did not arrive within server.body_read_timeout_ms",
        ),
        error(413, "The body is over server.max_body_bytes"),
        error(415, "The body is not application/json"),
        error(
            403,
            "passthrough_forbidden: no rule allows this method and path, or the instance named is not the caller's (`details.rule`)",
        ),
        error(502, "provider_error"),
        error(504, "provider_error: timed out"),
        error(402, "budget_exceeded: a start that does not fit the budget"),
        error(409, "instance_not_open"),
    ],
    ..Op::NONE
};

/// `PUT /v1/providers/{provider}/{path}`.
pub const PROVIDER_PUT: Op = Op {
    id: "providerPut",
    tag: "passthrough",
    summary: "PUT a provider API path (allow-listed)",
    description: "Forwarded to the provider with the provider key injected and the caller's Authorization dropped; the provider's status, content type and body are streamed back. Only `passthrough.vastai` / `passthrough.ionet` rules pass; `{instance}` segments must name the caller's own instances. Instance lists, creation, destruction and account endpoints are not on the default lists (every account shares the provider key). A rule's `body=` keys limit the JSON body (403 `passthrough_forbidden` naming the key); a `state` change is checked (a start against the budget, 402) and recorded in the ledger; no `ssh` path is ever forwarded. Calls go through the provider's circuit breaker and 429 back-off (503 `provider_error`).",
    answers: &[Answer {
        status: 200,
        description: "The provider's answer, as the provider sent it",
        content: Content::Any,
        headers: &[],
    }],
    errors: &[
        error(
            408,
            "The request body did not arrive within server.body_read_timeout_ms",
        ),
        error(413, "The body is over server.max_body_bytes"),
        error(415, "The body is not application/json"),
        error(
            403,
            "passthrough_forbidden: no rule allows this method and path, or the instance named is not the caller's (`details.rule`)",
        ),
        error(502, "provider_error"),
        error(504, "provider_error: timed out"),
        error(402, "budget_exceeded: a start that does not fit the budget"),
        error(409, "instance_not_open"),
    ],
    ..Op::NONE
};

/// `DELETE /v1/providers/{provider}/{path}`.
pub const PROVIDER_DELETE: Op = Op {
    id: "providerDelete",
    tag: "passthrough",
    summary: "DELETE a provider API path (allow-listed)",
    description: "Forwarded to the provider with the provider key injected and the caller's Authorization dropped; the provider's status, content type and body are streamed back. Only `passthrough.vastai` / `passthrough.ionet` rules pass; `{instance}` segments must name the caller's own instances. Instance lists, creation, destruction and account endpoints are not on the default lists (every account shares the provider key). A rule's `body=` keys limit the JSON body (403 `passthrough_forbidden` naming the key); a `state` change is checked (a start against the budget, 402) and recorded in the ledger; no `ssh` path is ever forwarded. Calls go through the provider's circuit breaker and 429 back-off (503 `provider_error`).",
    answers: &[Answer {
        status: 200,
        description: "The provider's answer, as the provider sent it",
        content: Content::Any,
        headers: &[],
    }],
    errors: &[
        error(
            403,
            "passthrough_forbidden: no rule allows this method and path, or the instance named is not the caller's (`details.rule`)",
        ),
        error(502, "provider_error"),
        error(504, "provider_error: timed out"),
        error(402, "budget_exceeded: a start that does not fit the budget"),
        error(409, "instance_not_open"),
    ],
    ..Op::NONE
};
