//! Passthrough as a typed operation: an allow-listed call to a provider's own API, made with the
//! provider's key for a caller. Two steps, so that a carrier reads the body only for a call
//! that may be made: [`approve`] checks the path against the provider's rules (`{instance}`
//! segments must name the caller's own instances) and takes one call from the account's
//! upstream budget; [`Approved::send`] checks the body against the rule's `body=` keys, checks a
//! `state` change (start/stop) against the ledger, sends once through the provider's gate
//! (circuit breaker, 429 back-off) and records the state change the provider made. The answer
//! is the provider's, its body still streaming.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request};
use metrics::counter;
use serde_json::json;

use crate::auth::Principal;
use crate::error::{Error, Kind, Refusal, Result, Side};
use crate::metrics::UPSTREAM_REQUESTS_TOTAL;
use crate::providers::{Provider, UpstreamError};
use crate::rentals::ledger;
use crate::rentals::lifecycle::Outcome;
use crate::state::AppState;
use crate::types::{ProviderId, passthrough};

fn forbidden(message: String, rule: Option<&str>) -> Error {
    Error::refused(
        Refusal::PassthroughForbidden,
        message,
        Some(json!({ "rule": rule })),
    )
}

/// A call the rules allow, to be sent with its body.
pub struct Approved<'a> {
    pid: ProviderId,
    provider: Arc<dyn Provider>,
    allowed: passthrough::Allowed<'a>,
    method: Method,
    /// The provider URI: the checked (decoded) path encoded again, and the parameters the rule
    /// names.
    uri: String,
}

/// Checks `target` (`<provider>/<path>`, still percent-encoded, as the route gives it) with
/// `method` and `query` against the provider's rules and the caller's instances.
pub async fn approve<'a>(
    app: &'a AppState,
    p: &Principal,
    target: &str,
    method: &Method,
    query: Option<&str>,
) -> Result<Approved<'a>> {
    if !app.config.passthrough.enabled {
        return Err(forbidden("passthrough is switched off here".into(), None));
    }
    let (name, rest) = target.split_once('/').unwrap_or((target, ""));
    let pid = ProviderId::parse(name).ok_or_else(|| {
        Error::new(
            Kind::NotFound,
            Side::Client,
            format!("no provider `{}`", crate::error::truncate(name, 32)),
        )
    })?;
    let path = crate::types::text::percent_decode(&format!("/{rest}")).ok_or_else(|| {
        Error::bad_request("the provider path has broken percent-encoding or a control character")
    })?;
    let rules = app
        .config
        .providers
        .tables
        .get(pid.as_str())
        .map(|t| t.passthrough.as_slice())
        .unwrap_or_default();
    let allowed = passthrough::check(rules, method, &path).map_err(|why| forbidden(why, None))?;
    if let Some(instance) = &allowed.instance {
        let db = super::db(app, "instance ownership checks")?;
        let owned = ledger::by_provider_id(&db, p.account_id(), name, instance)
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
    if let Some(r) = &app.rentals {
        r.upstream_call(p.account_id())?;
    }
    let provider = app
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
    let (base, _, auth) = provider.passthrough();
    if auth.is_none() {
        return Err(crate::providers::upstream_error(
            pid,
            &UpstreamError::Disabled("no API key is configured for it"),
        ));
    }
    let mut uri = format!("{base}{}", passthrough::forward_path(&path));
    if let Some(q) = allowed
        .rule
        .forward_query(query)
        .map_err(|why| forbidden(why, Some(&allowed.rule.text)))?
    {
        uri.push('?');
        uri.push_str(&q);
    }
    Ok(Approved {
        pid,
        provider,
        allowed,
        method: method.clone(),
        uri,
    })
}

impl Approved<'_> {
    /// Sends the call with `body` (and the caller's `content_type` and `accept`, the only headers
    /// passed on) and answers the provider's response.
    pub async fn send(
        self,
        app: &AppState,
        p: &Principal,
        content_type: Option<HeaderValue>,
        accept: Option<HeaderValue>,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let Approved {
            pid,
            provider,
            allowed,
            method,
            uri,
        } = self;
        let (_, http, auth) = provider.passthrough();
        let Some((auth_name, auth_value)) = auth else {
            return Err(crate::providers::upstream_error(
                pid,
                &UpstreamError::Disabled("no API key is configured for it"),
            ));
        };
        allowed
            .rule
            .check_body(&body)
            .map_err(|why| forbidden(why, Some(&allowed.rule.text)))?;
        // the instance and the state a start or stop asks for
        let wanted = match (&allowed.instance, &allowed.rule.body_keys) {
            (Some(instance), Some(keys)) if keys.iter().any(|k| k == "state") => {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("state").cloned())
                    .map(|s| (instance, s.as_str().unwrap_or("").to_owned()))
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
        // a start or stop: checked (a start begun) last before the call, so the ledger bills
        // what the provider does
        let state_change = match wanted {
            Some((instance, s)) => {
                let r = app
                    .rentals
                    .as_ref()
                    .ok_or_else(|| super::needs_database("state changes"))?;
                let row = r
                    .check_state_change(crate::rentals::Renter::of(p), pid.as_str(), instance, &s)
                    .await?;
                Some((r.clone(), row, s))
            }
            None => None,
        };
        // one attempt (a passthrough call may not be idempotent), through the breaker and
        // back-off; a 429 or 5xx counts against the provider and answers as our own upstream
        // error
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
            .await;
        // a start was begun before the call (checked and recorded under the account's lock):
        // settled by the answer; a stop is recorded when done
        if let Some((r, row, s)) = state_change {
            let outcome = match &resp {
                Ok(a) if a.status().is_success() => Outcome::Done,
                Ok(a) => Outcome::NotDone(format!("the provider answered {}", a.status().as_u16())),
                Err(e) => Outcome::of(e),
            };
            r.settle_state_change(&row, &s, outcome, "through passthrough")
                .await?;
        }
        let resp = resp.map_err(|e| crate::providers::upstream_error(pid, &e))?;
        counter!(UPSTREAM_REQUESTS_TOTAL, "provider" => pid.as_str(), "op" => "passthrough",
                 "status" => crate::metrics::status_label(resp.status().as_u16()))
        .increment(1);
        Ok(resp)
    }
}
