//! The caller's account event feed as a typed operation: where it resumes (an event id) and
//! what it keeps (event types, one instance), opened as a [`Feed`] that a carrier writes out
//! (Server-Sent Events and WebSocket in `api/`; a gRPC stream later). Framing, pings and close
//! codes are the carriers'; what is owed and in which order is the feed's.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::broadcast::error::RecvError;

use crate::auth::{Auth, Principal, Via};
use crate::error::{Error, Result, Side};
use crate::events;
use crate::events::feed::{Feed, Filter};
use crate::events::hub::Hub;
use crate::state::AppState;

/// What a client of the feed asks for.
#[derive(Debug, Default, PartialEq)]
pub struct FeedRequest {
    pub after: Option<i64>,
    pub filter: Filter,
}

/// Opens the caller's feed: subscribed to the live events first, then the log is read from
/// `after` up to where the subscription took over (nothing missed, nothing twice).
pub async fn open(app: &AppState, p: &Principal, r: FeedRequest) -> Result<Feed> {
    let hub = app
        .events
        .clone()
        .ok_or_else(|| super::needs_database("event streams"))?;
    let db = super::db(app, "event streams")?;
    let sub = hub.subscribe(p.account_id(), &p.key.public_id).await?;
    // a resume point ahead of this daemon's feed is held to the log's latest id (a client's id
    // from another daemon that heard of newer events, or one that never existed)
    let after = match r.after {
        Some(a) if a > sub.from => Some(a.min(events::latest(&db, p.account_id()).await?)),
        a => a,
    };
    let expires = p.expires_at.map(|at| {
        let reason = match p.via {
            Via::Jwt if p.key.expires_at != Some(at) => "token_expired",
            _ => "key_expired",
        };
        (UNIX_EPOCH + Duration::from_secs(at.max(0) as u64), reason)
    });
    Ok(Feed::new(db, p.account_id(), sub, after, r.filter, expires))
}

/// Ends the streams whose access has ended, on this daemon: whenever `auth` drops keys from its
/// cache (a revocation, a suspension or a change, here or told through Redis by another
/// daemon), each key that opened a stream here is read afresh, and a key no longer admitted
/// ends its streams with the refusal's code (`key_revoked`, `key_expired`,
/// `account_suspended`). A key that cannot be read now (the database unreachable) keeps its
/// streams: they end when the key is read again and refused.
pub async fn end_streams_without_access(auth: Arc<Auth>, hub: Arc<Hub>) {
    let mut told = auth.forgotten();
    loop {
        let keys: Vec<String> = match told.recv().await {
            // an empty list: the whole cache was dropped (a Redis reconnect)
            Ok(ids) if ids.is_empty() => hub.keys().into_iter().collect(),
            Ok(ids) => {
                let open = hub.keys();
                ids.iter().filter(|k| open.contains(*k)).cloned().collect()
            }
            Err(RecvError::Lagged(_)) => hub.keys().into_iter().collect(),
            Err(RecvError::Closed) => return,
        };
        for key in keys {
            match auth.recheck(&key).await {
                Ok(()) => {}
                Err(e) if e.side == Side::Client => {
                    let n = hub.end_streams_of(&key, e.kind.code());
                    tracing::info!(
                        key,
                        reason = e.kind.code(),
                        streams = n,
                        "event streams ended: their access ended"
                    );
                }
                Err(e) => tracing::warn!(key, error = %e,
                    "cannot recheck a streaming key; its streams stay open"),
            }
        }
    }
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

impl FeedRequest {
    /// The request from the typed query and the carrier's resume point (`Last-Event-ID` over
    /// HTTP: a reconnecting EventSource repeats the original URL, so it is the newer word).
    pub fn new(p: Params, last_event_id: Option<&str>) -> Result<FeedRequest> {
        let mut out = FeedRequest {
            after: p.after.map(|a| a.0),
            ..FeedRequest::default()
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
        if let Some(v) = last_event_id.filter(|v| !v.is_empty()) {
            out.after = Some(parse_id("`Last-Event-ID` header", v)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;

    fn parse(q: &str, last: Option<&str>) -> Result<FeedRequest> {
        FeedRequest::new(crate::service::query::query(Some(q))?, last)
    }

    #[test]
    fn resume_points_and_filters_are_checked() {
        let q = parse("after=7&types=instance.status_changed", Some("41")).unwrap();
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
            let e = parse(bad, None).unwrap_err();
            assert_eq!(e.kind.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        let e = parse("", Some("x")).unwrap_err();
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
        let q = |s: &str| parse(s, None).unwrap();
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
