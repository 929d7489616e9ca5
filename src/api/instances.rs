//! `POST/GET /v1/instances` and `GET/DELETE /v1/instances/{id}`: the HTTP side of `rentals`.
//! A caller only ever sees its own account's instances (anyone else's id is 404, not 403).

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::Api;
use super::call::Call;
use super::{Body, body, params, respond};
use crate::auth::Principal;
use crate::error::{Error, Kind, Result, Side};
use crate::rentals::idempotency::{self, Begin, Outcome};
use crate::rentals::ledger::{Event, InstanceKey, InstanceRow};
use crate::rentals::{RentBody, Rentals, Renter};

/// A rental by spec's answer and instance list the offers tried (`tries`) and why each was left.
async fn with_tries(r: &Rentals, row: &InstanceRow, v: &mut Value) -> Result<()> {
    if let Some(req) = &row.rental_request_id {
        let tries = crate::rentals::ledger::tries(r.db(), req).await?;
        v["rental_request_id"] = json!(req);
        v["tries"] = crate::rentals::failover::tries_view(&tries);
    }
    Ok(())
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The normalized instance a client sees; with `detail` (one instance), its events and SSH keys.
pub fn view(r: &InstanceRow, detail: Option<(Vec<Event>, Vec<InstanceKey>)>) -> Value {
    let mut v = json!({
        "id": r.id,
        "provider": r.provider,
        "provider_instance_id": r.provider_instance_id,
        "offer_id": r.offer_id,
        "gpu_model": r.gpu_model,
        "gpu_count": r.gpu_count,
        "price_per_hour": r.price_per_hour,
        // an intent not yet answered by the provider is, for the client, being provisioned
        "status": if r.status == crate::rentals::ledger::Status::Pending { "provisioning" } else { r.status.as_str() },
        "ssh": r.ssh,
        // what to paste into a terminal, once the provider gives host and port
        "ssh_command": r.ssh.as_ref().map(|s| format!("ssh -p {} {}@{}", s.port, s.user, s.host)),
        "interruptible": r.bid_per_hour.is_some(),
        "bid_per_hour": r.bid_per_hour,
        "storage_per_hour": r.storage_per_hour,
        "image": r.image,
        "disk_gb": r.disk_gb,
        "label": r.label,
        "failure": r.failure,
        "created_at": params::time(Some(r.created_at)),
        "started_at": params::time(r.started_at),
        "terminated_at": params::time(r.terminated_at),
        // the provider reports a state that never reaches running (destroyed after a grace)
        "dead_state": r.dead_reason,
        "expires_at": params::time(r.expires_at),
    });
    if let Some((ev, keys)) = detail {
        v["events"] = ev
            .into_iter()
            .map(|e| {
                json!({"at": params::time(Some(e.at)), "kind": e.kind, "status": e.status,
                       "price_per_hour": e.price_per_hour, "rate_per_hour": e.rate_per_hour,
                       "detail": e.detail})
            })
            .collect();
        v["ssh_keys"] = json!(keys);
    }
    v
}

fn rentals(state: &Arc<Api>) -> Result<&Arc<Rentals>> {
    state.rentals.as_ref().ok_or_else(|| {
        Error::new(
            Kind::DatabaseUnavailable,
            Side::Internal,
            "renting needs the database (DATABASE_URL is not set)",
        )
    })
}

/// An error as the body a replay gives back.
fn error_body(e: &Error) -> String {
    json!({"error": {"code": e.kind.code(), "message": e.message, "details": e.details}})
        .to_string()
}

/// Runs `op` under the request's `Idempotency-Key`, when it has one: in a task of its own that
/// records the answer whatever becomes of this request (`rentals::idempotency`).
async fn idempotent<F>(
    state: &Arc<Api>,
    p: &Principal,
    key: Option<String>,
    request: &str,
    body: &[u8],
    op: F,
) -> Result<Response<Body>>
where
    F: Future<Output = Result<(StatusCode, Value)>> + Send + 'static,
{
    let Some(key) = key else {
        let (status, v) = op.await?;
        return Ok(respond::json(status, &v));
    };
    idempotency::check_key(&key)?;
    let r = rentals(state)?;
    let cfg = &state.config.rentals;
    let account = p.account_id();
    let digest = idempotency::hash(request, body);
    let claim = idempotency::Request {
        account_id: account,
        key: &key,
        request,
        digest: &digest,
    };
    match r.idempotency().begin(r.db(), cfg, &claim).await? {
        Begin::Replay { status, body } => {
            let mut resp = respond::json_bytes(
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                Bytes::from(body),
            );
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(resp)
        }
        Begin::Run => {
            // the error itself comes back through a slot: the task keeps only what it records
            let failure = Arc::new(std::sync::Mutex::new(None));
            let slot = failure.clone();
            let op = async move {
                match op.await {
                    Ok((status, v)) => Outcome {
                        status: status.as_u16(),
                        body: v.to_string(),
                        outcome_unknown: false,
                    },
                    Err(e) => {
                        let out = Outcome {
                            status: e.kind.status().as_u16(),
                            body: error_body(&e),
                            outcome_unknown: e
                                .details
                                .as_ref()
                                .is_some_and(|d| d.get("instance_id").is_some()),
                        };
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        out
                    }
                }
            };
            let out = r
                .idempotency()
                .run(r.db().clone(), cfg, account, key.clone(), op)
                .await?;
            if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(e);
            }
            Ok(respond::json_bytes(
                StatusCode::from_u16(out.status).unwrap_or(StatusCode::OK),
                Bytes::from(out.body),
            ))
        }
    }
}

fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>> {
    match req.headers().get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_owned()))
            .map_err(|_| Error::bad_request("invalid `Idempotency-Key`: visible ASCII only")),
    }
}

/// `POST /v1/instances`.
pub async fn create(c: Call) -> Result<Response<Body>> {
    let (state, p, req) = (&c.api, c.principal()?.clone(), c.req);
    let key = idempotency_key(&req)?;
    let raw = body::read(req, &state.config.server).await?;
    rent(state, &p, key, &raw).await
}

/// A rental from its JSON body, under an `Idempotency-Key` if given (the REST route and the
/// MCP tool `rent_instance`).
pub async fn rent(
    state: &Arc<Api>,
    p: &Principal,
    key: Option<String>,
    raw: &[u8],
) -> Result<Response<Body>> {
    let r = rentals(state)?.clone();
    let b: RentBody =
        body::parse(raw)?.ok_or_else(|| Error::bad_request("a JSON body is required"))?;
    let who = Renter {
        account_id: p.account_id(),
        key_id: Some(p.key.key_id),
    };
    idempotent(state, p, key, "POST /v1/instances", raw, async move {
        let row = r.rent(who, &b).await?;
        let mut v = view(&row, None);
        with_tries(&r, &row, &mut v).await?;
        Ok((StatusCode::CREATED, v))
    })
    .await
}

/// `GET /v1/instances?limit=&cursor=`: the caller's instances, newest first (statuses as the
/// ledger has them; `GET /v1/instances/{id}` refreshes one from the provider).
pub fn list_query(query: Option<&str>) -> Result<(Option<f64>, i64)> {
    let (mut before, mut limit) = (None, 50i64);
    for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "limit" => limit = params::limit_param(v)?,
            // a creation time (epoch seconds): between 1970 and 5138, or it is no cursor of ours
            "cursor" => before = Some(v.parse::<f64>().ok().filter(|x| (0.0..1e11).contains(x)).ok_or_else(
                || {
                    Error::bad_request(
                        "invalid query parameter `cursor`: use `next_cursor` of the previous page",
                    )
                },
            )?),
            other => {
                return Err(Error::bad_request(format!(
                    "unknown query parameter `{}` (known: limit, cursor)",
                    crate::error::truncate(other, 64)
                )));
            }
        }
    }
    Ok((before, limit))
}

pub async fn list(state: &Arc<Api>, p: &Principal, query: Option<&str>) -> Result<Response<Body>> {
    let (before, limit) = list_query(query)?;
    let rows = rentals(state)?
        .list(p.account_id(), before, limit + 1)
        .await?;
    let more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = more
        .then(|| page.last().map(|r| r.created_at.to_string()))
        .flatten();
    Ok(respond::json(
        StatusCode::OK,
        &json!({"instances": page.iter().map(|r| view(r, None)).collect::<Vec<_>>(), "next_cursor": next}),
    ))
}

pub async fn show(c: Call) -> Result<Response<Body>> {
    let id = &c.decoded_param("instance id")?;
    show_one(&c.api, c.principal()?, id).await
}

/// One instance with its events and keys, refreshed from its provider (the REST route and the
/// MCP tool `get_instance`).
pub async fn show_one(state: &Arc<Api>, p: &Principal, id: &str) -> Result<Response<Body>> {
    let r = rentals(state)?;
    let row = r.get(p.account_id(), id).await?;
    let events = crate::rentals::ledger::events(r.db(), &row.id).await?;
    let keys = crate::rentals::ledger::instance_keys(r.db(), &row.id).await?;
    let mut v = view(&row, Some((events, keys)));
    with_tries(r, &row, &mut v).await?;
    Ok(respond::json(StatusCode::OK, &v))
}

/// `POST /v1/instances/{id}/extend` `{"hours": n}`.
pub async fn extend(c: Call) -> Result<Response<Body>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ExtendBody {
        hours: u32,
    }
    let id = c.decoded_param("instance id")?;
    let account = c.principal()?.account_id();
    let r = rentals(&c.api)?.clone();
    let limit = &c.api.config.server;
    let b: ExtendBody = body::json(c.req, limit)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body {\"hours\": <1 to 8760>} is required"))?;
    let row = r.extend(account, &id, b.hours).await?;
    Ok(respond::json(StatusCode::OK, &view(&row, None)))
}

/// `POST /v1/instances/{id}/stop` and `/start`.
pub async fn set_running(c: Call, running: bool) -> Result<Response<Body>> {
    let id = c.decoded_param("instance id")?;
    let r = rentals(&c.api)?.clone();
    let row = r
        .set_running(c.principal()?.account_id(), &id, running)
        .await?;
    Ok(respond::json(StatusCode::OK, &view(&row, None)))
}

/// `PUT /v1/instances/{id}/bid` `{"bid_per_hour": x}`.
pub async fn bid(c: Call) -> Result<Response<Body>> {
    let id = &c.decoded_param("instance id")?;
    let (state, p, req) = (&c.api, c.principal()?.clone(), c.req);
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct BidBody {
        bid_per_hour: f64,
    }
    let r = rentals(state)?.clone();
    let b: BidBody = body::json(req, &state.config.server)
        .await?
        .ok_or_else(|| Error::bad_request("a JSON body {\"bid_per_hour\": <USD/h>} is required"))?;
    let row = r.set_bid(p.account_id(), id, b.bid_per_hour).await?;
    Ok(respond::json(StatusCode::OK, &view(&row, None)))
}

pub async fn destroy(c: Call) -> Result<Response<Body>> {
    let id = &c.decoded_param("instance id")?;
    let key = idempotency_key(&c.req)?;
    destroy_one(&c.api, c.principal()?, id, key).await
}

/// Destroys one instance, under an `Idempotency-Key` if given (the REST route and the MCP tool
/// `destroy_instance`).
pub async fn destroy_one(
    state: &Arc<Api>,
    p: &Principal,
    id: &str,
    key: Option<String>,
) -> Result<Response<Body>> {
    let r = rentals(state)?.clone();
    let account = p.account_id();
    let request = format!("DELETE /v1/instances/{id}");
    let owned = id.to_owned();
    idempotent(state, p, key, &request, b"", async move {
        let row = r.destroy(account, &owned).await?;
        Ok((StatusCode::OK, view(&row, None)))
    })
    .await
}
