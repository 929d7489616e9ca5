//! What a client of the event feed (`GET /v1/events`, SSE or WebSocket) asks for: the resume
//! point (`?after=` or `Last-Event-ID`), the filters, and a browser's token passed outside
//! `Authorization`. Both carriers read it from here.

use hyper::header::HeaderValue;

use crate::error::{Error, Result};
use crate::events;
use crate::events::feed::Filter;
use crate::types::text::percent_decode;

/// What the client asked for.
#[derive(Debug, Default, PartialEq)]
pub struct Query {
    pub after: Option<i64>,
    pub filter: Filter,
}

/// An event id as the client gives it back: 1 to 18 digits (what the document says).
fn parse_id(what: &str, v: &str) -> Result<i64> {
    Some(v)
        .filter(|v| (1..=18).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| {
            Error::bad_request(format!(
                "invalid {what}: the `id` of an event from this stream (1 to 18 digits)"
            ))
        })
}

/// The query string as the route declares it.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Resume after this event id (`Last-Event-ID` wins when both are given). Default: the
    /// next event.
    #[schemars(with = "Option<crate::service::query::Bounded<0, 999_999_999_999_999_999>>")]
    after: Option<EventId>,
    /// Comma-separated event types (`EventType`).
    #[schemars(with = "Option<crate::events::TypeList>")]
    types: Option<String>,
    /// Only this instance's events.
    #[schemars(length(min = 1, max = 128), pattern(crate::types::schema::NO_CONTROL))]
    instance: Option<String>,
    /// For browsers, whose EventSource and WebSocket cannot set `Authorization`: a token from
    /// `POST /v1/auth/token` (never an API key: 401). Read only when there is no
    /// `Authorization` header; never logged. A WebSocket may instead offer the subprotocols
    /// `gpuproxy.events` and `bearer.<token>` (`Sec-WebSocket-Protocol`); the answer selects
    /// `gpuproxy.events`.
    #[allow(dead_code)]
    #[schemars(pattern(r"^[^\x00-\x1f\x7f-\x9f]*$"))]
    access_token: Option<String>,
}

/// The `Last-Event-ID` header: an event id, or empty (as if absent).
pub struct LastEventId;

crate::types::schema::schema_of!(LastEventId, "LastEventId", {"type": "string",
    "pattern": "^([0-9]{1,18})?$"});

/// An event id in a query.
#[derive(Debug)]
pub struct EventId(i64);

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = crate::service::query::scalar_text(d)?;
        Some(s.as_str())
            .filter(|v| (1..=18).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<i64>().ok())
            .map(EventId)
            .ok_or_else(|| {
                serde::de::Error::custom("the `id` of an event from this stream (1 to 18 digits)")
            })
    }
}

impl Query {
    pub fn parse(q: Option<&str>, last_event_id: Option<&HeaderValue>) -> Result<Query> {
        let p: Params = crate::service::query::query(q)?;
        let mut out = Query {
            after: p.after.map(|a| a.0),
            ..Query::default()
        };
        if let Some(v) = p.types {
            let types: Vec<String> = v.split(',').map(|t| t.trim().to_owned()).collect();
            if let Some(bad) = types.iter().find(|t| !events::TYPES.contains(&t.as_str())) {
                return Err(Error::bad_request(format!(
                    "invalid query parameter `types`: `{}` is not one of {}",
                    crate::error::truncate(bad, 48),
                    events::TYPES.join(", ")
                )));
            }
            out.filter.types = Some(types);
        }
        if let Some(v) = p.instance {
            if v.is_empty() || v.chars().count() > 128 {
                return Err(Error::bad_request(
                    "invalid query parameter `instance`: an instance id",
                ));
            }
            out.filter.instance = Some(v);
        }
        // a reconnecting EventSource repeats the original URL: the header is the newer word
        if let Some(h) = last_event_id {
            let v = h
                .to_str()
                .map_err(|_| Error::bad_request("invalid `Last-Event-ID` header"))?;
            if !v.is_empty() {
                out.after = Some(parse_id("`Last-Event-ID` header", v)?);
            }
        }
        Ok(out)
    }
}

/// The subprotocol that carries a browser's token: `bearer.<token>`.
pub const BEARER_PROTOCOL: &str = "bearer.";

/// A token a browser passed outside `Authorization`: `?access_token=`, or a WebSocket
/// subprotocol `bearer.<token>`. Never logged: the access log has the path only.
pub fn browser_token(req: &hyper::Request<hyper::body::Incoming>) -> Result<Option<String>> {
    for kv in req.uri().query().unwrap_or("").split('&') {
        if let Some(v) = kv.strip_prefix("access_token=") {
            let v = percent_decode(v)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::bad_request("invalid query parameter `access_token`"))?;
            return Ok(Some(v));
        }
    }
    Ok(offered_protocols(req).find_map(|p| p.strip_prefix(BEARER_PROTOCOL).map(str::to_owned)))
}

/// The subprotocols the client offers (`Sec-WebSocket-Protocol`, comma-separated, any number of
/// headers).
pub fn offered_protocols(
    req: &hyper::Request<hyper::body::Incoming>,
) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;

    #[test]
    fn resume_points_and_filters_are_checked() {
        let h = HeaderValue::from_static("41");
        let q = Query::parse(Some("after=7&types=instance.status_changed"), Some(&h)).unwrap();
        assert_eq!(q.after, Some(41), "the header is the newer word");
        assert_eq!(
            q.filter.types.as_deref(),
            Some(&["instance.status_changed".to_owned()][..])
        );
        for bad in [
            "after=-1",
            "after=x",
            "types=instance.nope",
            "instance=",
            "foo=1",
            "after=%00",
        ] {
            let e = Query::parse(Some(bad), None).unwrap_err();
            assert_eq!(e.kind.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        let e = Query::parse(None, Some(&HeaderValue::from_static("x"))).unwrap_err();
        assert!(e.to_string().contains("Last-Event-ID"), "{e}");
    }

    #[test]
    fn filters_match_type_and_instance() {
        let e = events::Event {
            account_id: 1,
            seq: 3,
            at: String::new(),
            kind: events::STATUS_CHANGED.into(),
            instance_id: Some("i-1".into()),
            data: serde_json::json!({}),
        };
        let q = |s: &str| Query::parse(Some(s), None).unwrap();
        assert!(q("").filter.wants(&e));
        assert!(
            q("types=instance.status_changed,budget.warning")
                .filter
                .wants(&e)
        );
        assert!(!q("types=budget.warning").filter.wants(&e));
        assert!(q("instance=i-1").filter.wants(&e));
        assert!(!q("instance=i-2").filter.wants(&e));
    }
}
