//! Vast.ai (docs/providers.md, "Vast.ai"): offer search (`POST /api/v0/bundles/`, no key needed; the key is
//! sent as `Authorization: Bearer` when configured) and the normalization of its offers.
//!
//! Quirks handled here: memory in MB (MiB in practice: 24564 for a 24 GB card), CPU and RAM given
//! for the whole host (the renter's share is `cpu_cores_effective` and RAM in proportion),
//! storage priced per GB-month (an hour of `disk_gb` is added to the compute price, as gpuhunt
//! does, so prices compare with io.net's), `geolocation` as "Region, CC", a bare country or null,
//! numbers sometimes sent as strings, and unknown fields.

use std::time::Duration;

use hyper::Method;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::api::is_not_found;
use super::api::{JsonApi, KeyHeader};
pub use super::api::{check_status, error_detail};
use super::http::{HttpClient, short};
use super::model::{
    InstanceStatus, Offer, ProviderId, Quote, RemoteInstance, RentRequest, Ssh, flag, location,
    micros, num, round_to, text,
};
use super::resilience::Gate;
use super::{BoxFuture, Charge, Provider, SearchQuery, UpstreamError, gpu};
use crate::config::{Config, ProviderTable};

/// The offer id suffix of an interruptible offer: `vastai:<id>:bid` rents at a bid.
pub const BID_SUFFIX: &str = ":bid";

/// Vast's own not-found codes (docs/providers.md, "Errors"): `no_such_instance` and `not_found`
/// for an instance, `no_such_ask` for an offer. Any other 404 (`auth_error`, an expired
/// session, a bare 404) is a refused key, never "gone".
/// `no_pending_price_increase` is its answer for a price increase no longer pending.
pub const GONE_CODES: &[&str] = &[
    "no_such_volume",
    "no_such_instance",
    "not_found",
    "no_such_ask",
    "no_pending_price_increase",
];

pub struct Vastai {
    id: ProviderId,
    api: JsonApi,
    search_limit: u32,
}

impl Vastai {
    pub fn new(id: ProviderId, table: &ProviderTable, config: &Config, http: HttpClient) -> Vastai {
        Vastai {
            id,
            // searching needs no key; the rest does (the provider answers 401 without one)
            api: JsonApi::new(
                &table.base_url,
                http,
                Gate::new(id, &config.providers),
                config.secrets.provider_key(&table.api_key_env).cloned(),
                KeyHeader::Bearer,
                None,
            )
            .with_gone_codes(GONE_CODES),
            search_limit: table.search_limit.get(),
        }
    }

    /// The search body: the official CLI's default filters, the pushed-down GPU names and the
    /// disk the renter wants (which also prices storage: `allocated_storage`).
    pub fn search_body(&self, q: &SearchQuery) -> Value {
        let mut body = json!({
            "verified": {"eq": true},
            "external": {"eq": false},
            "rentable": {"eq": true},
            "rented": {"eq": false},
            "disk_space": {"gte": q.disk_gb},
            "order": [["dph_total", "asc"]],
            "type": if q.interruptible { "bid" } else { "on-demand" },
            "limit": self.search_limit,
            "allocated_storage": q.disk_gb,
        });
        if let Some(names) = q.gpu.as_deref().and_then(gpu::vast_names) {
            body["gpu_name"] = json!({ "in": names });
        }
        body
    }

    async fn search_once(
        &self,
        body: &Value,
        q: &SearchQuery,
        left: Duration,
    ) -> Result<Vec<Offer>, (UpstreamError, Option<Duration>)> {
        let reply = self
            .api
            .send(Method::POST, "/api/v0/bundles/", Some(body), left)
            .await?;
        let v = self.api.json(&reply)?;
        let offers = v
            .get("offers")
            .and_then(Value::as_array)
            .ok_or_else(|| (UpstreamError::Decode("no `offers` array".into()), None))?;
        Ok(normalize_all(
            self.id,
            offers,
            f64::from(q.disk_gb),
            q.interruptible,
        ))
    }
}

impl Provider for Vastai {
    fn id(&self) -> ProviderId {
        self.id
    }

    fn search_key(&self, q: &SearchQuery) -> Option<String> {
        let mut names = q
            .gpu
            .as_deref()
            .and_then(gpu::vast_names)
            .unwrap_or_default();
        names.sort_unstable();
        Some(format!(
            "{}:bundles:v1:type={}:disk={}:limit={}:gpu={}",
            self.id,
            if q.interruptible { "bid" } else { "on-demand" },
            q.disk_gb,
            self.search_limit,
            names.join("|")
        ))
    }

    fn search<'a>(
        &'a self,
        q: &'a SearchQuery,
    ) -> BoxFuture<'a, Result<Vec<Offer>, UpstreamError>> {
        Box::pin(async move {
            let body = self.search_body(q);
            self.api
                .gate
                .call("search", true, |left| self.search_once(&body, q, left))
                .await
        })
    }

    fn gate(&self) -> &Gate {
        &self.api.gate
    }

    fn quote<'a>(
        &'a self,
        offer: &'a str,
        disk_gb: u32,
    ) -> BoxFuture<'a, Result<Option<Quote>, UpstreamError>> {
        Box::pin(async move {
            let (raw, bid) = match offer.strip_suffix(BID_SUFFIX) {
                Some(r) => (r, true),
                None => (offer, false),
            };
            let Ok(id) = raw.parse::<u64>() else {
                return Ok(None);
            };
            let body = json!({
                "id": {"eq": id},
                "rentable": {"eq": true},
                "rented": {"eq": false},
                "allocated_storage": disk_gb,
                "limit": 1,
                "type": if bid { "bid" } else { "on-demand" },
            });
            let v = self
                .api
                .call("quote", true, Method::POST, "/api/v0/bundles/", Some(body))
                .await?;
            let offers = v
                .get("offers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let disk = f64::from(disk_gb);
            Ok(offers
                .iter()
                .find(|o| o.get("id").and_then(Value::as_u64) == Some(id))
                .and_then(|o| {
                    let n = normalize(self.id, o, disk, bid)?;
                    Some(Quote {
                        price_per_hour: n.price_per_hour,
                        storage_per_hour: round_to(storage_per_hour(o, disk), 6),
                        min_bid: if bid { num(o.get("min_bid")) } else { None },
                        gpu_model: n.gpu_model,
                        gpu_count: n.gpu_count,
                        available: n.available,
                        disk_gb: n.disk_gb,
                        machine_id: n.machine_id,
                    })
                }))
        })
    }

    /// The offer's `min_bid` from a search that leaves out the `rentable`/`rented` filters (the
    /// official client's `rented=any` drops them), so a machine rented by the bid that outbid us
    /// is still found.
    fn current_min_bid<'a>(
        &'a self,
        offer: &'a str,
    ) -> BoxFuture<'a, Result<Option<f64>, UpstreamError>> {
        Box::pin(async move {
            let raw = offer.strip_suffix(BID_SUFFIX).unwrap_or(offer);
            let Ok(id) = raw.parse::<u64>() else {
                return Ok(None);
            };
            let body = json!({"id": {"eq": id}, "limit": 1, "type": "bid"});
            let v = self
                .api
                .call(
                    "min_bid",
                    true,
                    Method::POST,
                    "/api/v0/bundles/",
                    Some(body),
                )
                .await?;
            Ok(v.get("offers")
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .find(|o| o.get("id").and_then(Value::as_u64) == Some(id))
                })
                .and_then(|o| num(o.get("min_bid")))
                .filter(|b| b.is_finite() && *b > 0.0))
        })
    }

    fn has_volumes(&self) -> bool {
        true
    }

    /// `POST /api/v0/volumes/search/` as the official client's `search_volumes` sends it (its
    /// default filters, `disk_space` at least the size, cheapest storage first).
    fn volume_offers(
        &self,
        size_gb: u32,
    ) -> BoxFuture<'_, Result<Vec<super::VolumeOffer>, UpstreamError>> {
        Box::pin(async move {
            let body = json!({
                "verified": {"eq": true},
                "external": {"eq": false},
                "disk_space": {"gte": size_gb.max(1)},
                "order": [["storage_cost", "asc"]],
                "limit": 64,
                "allocated_storage": size_gb.max(1),
            });
            let v = self
                .api
                .call(
                    "volume_search",
                    true,
                    Method::POST,
                    "/api/v0/volumes/search/",
                    Some(body),
                )
                .await?;
            Ok(v.get("offers")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|o| volume_offer(self.id, o)).collect())
                .unwrap_or_default())
        })
    }

    /// `PUT /api/v0/volumes/ {"size": int, "id": int, "name"}` (`vastai/api/storage.py`
    /// `create_volume`). The answer's shape is unpublished: the volume is found by its name.
    fn create_volume<'a>(
        &'a self,
        offer: &'a str,
        size_gb: u32,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let Ok(id) = offer.parse::<u64>() else {
                return Err(UpstreamError::Status {
                    status: 404,
                    detail: "no_such_ask".into(),
                });
            };
            self.api
                .call(
                    "volume_create",
                    false,
                    Method::PUT,
                    "/api/v0/volumes/",
                    Some(json!({"size": size_gb, "id": id, "name": name})),
                )
                .await
                .map(|_| ())
        })
    }

    /// `GET /api/v0/volumes?owner=me&type=all_volume` (`show_volumes`).
    fn list_volumes(&self) -> BoxFuture<'_, Result<Vec<super::RemoteVolume>, UpstreamError>> {
        Box::pin(async move {
            let v = self
                .api
                .call(
                    "volume_list",
                    true,
                    Method::GET,
                    "/api/v0/volumes?owner=me&type=all_volume",
                    None,
                )
                .await?;
            Ok(v.get("volumes")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|r| {
                            Some(super::RemoteVolume {
                                provider_id: r.get("id")?.as_u64()?.to_string(),
                                name: text(r.get("label")),
                                machine_id: r
                                    .get("machine_id")
                                    .and_then(Value::as_u64)
                                    .map(|m| m.to_string()),
                                size_gb: num(r.get("disk_space")).unwrap_or(0.0),
                                instances: r
                                    .get("instances")
                                    .and_then(Value::as_array)
                                    .map(|i| {
                                        i.iter()
                                            .filter_map(|x| x.as_u64().map(|n| n.to_string()))
                                            .collect()
                                    })
                                    .unwrap_or_default(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default())
        })
    }

    /// `DELETE /api/v0/volumes/?id=N` (`delete_volume`: "all instances using the volume must be
    /// destroyed before deletion").
    fn delete_volume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, UpstreamError>> {
        Box::pin(async move {
            let Ok(n) = id.parse::<u64>() else {
                return Ok(false);
            };
            let path = format!("/api/v0/volumes/?id={n}");
            match self
                .api
                .call("volume_delete", false, Method::DELETE, &path, None)
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if is_not_found(&e) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    /// `GET /api/v0/instances/pending-price-increases/` (`vastai/api/price_increase.py`
    /// `list_pending`): per-second rates old and new, `null` for a part that does not change.
    fn pending_price_increases(
        &self,
    ) -> BoxFuture<'_, Result<Vec<super::PriceIncrease>, UpstreamError>> {
        Box::pin(async move {
            let v = self
                .api
                .call(
                    "pending_price_increases",
                    true,
                    Method::GET,
                    "/api/v0/instances/pending-price-increases/",
                    None,
                )
                .await?;
            let rows = v
                .get("pending_price_increases")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            Ok(rows.iter().filter_map(price_increase).collect())
        })
    }

    /// `PUT /api/v0/instances/{accept,reject}-price-increase/` with exactly
    /// `{"pending_price_increase_id": int}`; a stale row is 404 `no_pending_price_increase` (or,
    /// from older backends, 409).
    fn answer_price_increase<'a>(
        &'a self,
        id: &'a str,
        accept: bool,
    ) -> BoxFuture<'a, Result<bool, UpstreamError>> {
        Box::pin(async move {
            let Ok(n) = id.parse::<u64>() else {
                return Ok(false);
            };
            let (op, path) = if accept {
                (
                    "accept_price_increase",
                    "/api/v0/instances/accept-price-increase/",
                )
            } else {
                (
                    "reject_price_increase",
                    "/api/v0/instances/reject-price-increase/",
                )
            };
            match self
                .api
                .call(
                    op,
                    false,
                    Method::PUT,
                    path,
                    Some(json!({"pending_price_increase_id": n})),
                )
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if is_not_found(&e) => Ok(false),
                Err(UpstreamError::Status { status: 409, .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    /// `gpu_util` on every instance (`vastai/data/instance.py`).
    fn reports_gpu_util(&self) -> bool {
        true
    }

    /// Vast takes every launch field (`build_create_instance_payload` in the official client);
    /// it maps ports publicly, with no allow-list.
    fn launch_refusal(&self, launch: &super::Launch) -> Option<(&'static str, String)> {
        launch
            .ports
            .iter()
            .any(|p| p.allow_from.is_some())
            .then(|| {
                (
                    "ports",
                    "Vast maps ports publicly: it takes no `allow_from`".to_owned(),
                )
            })
    }

    fn create<'a>(&'a self, req: &'a RentRequest) -> BoxFuture<'a, Result<String, UpstreamError>> {
        Box::pin(async move {
            let launch = &req.launch;
            let mut env = serde_json::Map::new();
            for (k, v) in &launch.env {
                env.insert(k.clone(), json!(v));
            }
            // a port mapping is an env key `-p H:C` (docs/providers.md, "Create instance")
            for p in &launch.ports {
                let suffix = if p.protocol == super::Protocol::Udp {
                    "/udp"
                } else {
                    ""
                };
                env.insert(format!("-p {0}:{0}{suffix}", p.port), json!("1"));
            }
            // keys are attached per instance once it exists (`attach_ssh_key`), never as env
            let mut body = json!({
                "client_id": "me",
                "image": launch.image,
                "disk": req.disk_gb,
                "label": req.our_id,
                "env": env,
                "cancel_unavail": true,
            });
            // as the official client builds it (`build_create_instance_payload`): `args` keeps
            // the image's entrypoint (runtype `args`), `ssh` replaces it; a template brings its
            // own launch mode unless one is asked for
            match (&launch.entrypoint_args, &launch.template_hash_id) {
                (Some(args), _) => {
                    body["runtype"] = json!("args");
                    if !args.is_empty() {
                        body["args"] = json!(args);
                    }
                }
                (None, None) => body["runtype"] = json!("ssh"),
                (None, Some(_)) => {}
            }
            if let Some(script) = &launch.onstart {
                body["onstart"] = json!(script);
            }
            if let Some(hash) = &launch.template_hash_id {
                body["template_hash_id"] = json!(hash);
            }
            // an existing volume, linked (`build_volume_info` with `link_volume`)
            if let Some(v) = &req.volume {
                let id: u64 = v
                    .provider_volume_id
                    .parse()
                    .map_err(|_| UpstreamError::Disabled("the volume has no provider id yet"))?;
                body["volume_info"] = json!({"mount_path": v.mount_path, "create_new": false,
                                             "volume_id": id});
            }
            // without `price` Vast rents on demand at the full price and does not say so
            // (docs/providers.md, "Offers and other quirks"): an interruptible rental always sends its bid
            let ask = match (req.offer.strip_suffix(BID_SUFFIX), req.bid_per_hour) {
                (Some(ask), Some(bid)) => {
                    body["price"] = json!(bid);
                    ask
                }
                (Some(_), None) => {
                    return Err(UpstreamError::Disabled(
                        "an interruptible rental needs a bid",
                    ));
                }
                (None, _) => req.offer.as_str(),
            };
            let path = format!("/api/v0/asks/{ask}/");
            let reply = self
                .api
                .gate
                .call("create", false, |left| {
                    self.api.send(Method::PUT, &path, Some(&body), left)
                })
                .await?;
            let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
            let contract = v
                .get("new_contract")
                .and_then(|c| c.as_u64().or_else(|| num(Some(c)).map(|x| x as u64)));
            let ok = reply.status.is_success()
                && v.get("success").and_then(Value::as_bool) != Some(false);
            match (ok, contract) {
                (true, Some(id)) => Ok(id.to_string()),
                (true, None) => Err(UpstreamError::Decode(
                    "create answered without `new_contract`".into(),
                )),
                (false, contract) => {
                    // Vast can refuse and still have created the instance (a bid left stopped):
                    // destroy it, so a refusal never leaves something billing
                    if let Some(id) = contract {
                        tracing::warn!(
                            provider = "vastai",
                            instance = id,
                            "create refused but an instance exists; destroying it"
                        );
                        let _ = self.destroy_id(&id.to_string()).await;
                    }
                    Err(self.api.error_of(reply.status.as_u16(), &reply.body))
                }
            }
        })
    }

    fn instance<'a>(
        &'a self,
        provider_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RemoteInstance>, UpstreamError>> {
        Box::pin(async move {
            // as the official client asks (vastai/api/instances.py `show_instance`)
            let path = format!("/api/v0/instances/{provider_id}/?owner=me");
            match self.api.call("show", true, Method::GET, &path, None).await {
                // `{"instances": null}` for an id this key does not hold
                Ok(v) => Ok(v
                    .get("instances")
                    .filter(|i| i.is_object())
                    .and_then(remote_instance)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn destroy<'a>(&'a self, provider_id: &'a str) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(self.destroy_id(provider_id))
    }

    fn passthrough(&self) -> (&str, &HttpClient, Option<(HeaderName, HeaderValue)>) {
        self.api.passthrough()
    }

    fn exclusive_offers(&self) -> bool {
        true
    }

    fn ssh_keys_at_create(&self) -> bool {
        false
    }

    fn attach_ssh_key<'a>(
        &'a self,
        provider_id: &'a str,
        public_key: &'a str,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            // per instance (docs/providers.md, "Offers and other quirks"); `POST /api/v0/ssh/` would add the key to the
            // account and every instance of every tenant
            let path = format!("/api/v0/instances/{provider_id}/ssh/");
            self.api
                .call(
                    "ssh_attach",
                    true,
                    Method::POST,
                    &path,
                    Some(json!({ "ssh_key": public_key })),
                )
                .await
                .map(|_| ())
        })
    }

    fn set_running<'a>(
        &'a self,
        provider_id: &'a str,
        running: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let path = format!("/api/v0/instances/{provider_id}/");
            let state = if running { "running" } else { "stopped" };
            self.api
                .call(
                    "manage",
                    true,
                    Method::PUT,
                    &path,
                    Some(json!({ "state": state })),
                )
                .await
                .map(|_| ())
        })
    }

    /// `GET /api/v0/users/current/`: the account's user id (docs/providers.md).
    fn identity(&self) -> BoxFuture<'_, Result<Option<String>, UpstreamError>> {
        Box::pin(async move {
            let v = self
                .api
                .call("user", true, Method::GET, "/api/v0/users/current/", None)
                .await?;
            Ok(super::model::id_string(v.get("id")))
        })
    }

    /// `GET /api/v0/users/current/` `credit` (a user field the official client shows:
    /// `vastai/cli/display.py` `user_fields`).
    fn credit(&self) -> BoxFuture<'_, Result<Option<i64>, UpstreamError>> {
        Box::pin(async move {
            let v = self
                .api
                .call("user", true, Method::GET, "/api/v0/users/current/", None)
                .await?;
            Ok(super::model::micros(v.get("credit")))
        })
    }

    fn publishes_charges(&self) -> bool {
        true
    }

    /// `GET /api/v0/charges/` (docs/providers.md, "Charges"), with the official client's query
    /// keys (`select_filters`, `latest_first`, `limit`, `format`, then `after_token` = the last
    /// answer's `next_token`, sent raw), 100 lines a page. Each line names what it bills in
    /// `source` (`instance-<id>`, `volume-<id>`) and nests its parts in `items`.
    fn charges<'a>(
        &'a self,
        from: f64,
        to: f64,
    ) -> BoxFuture<'a, Result<Option<Vec<Charge>>, UpstreamError>> {
        Box::pin(async move {
            let filters = json!({"day": {"gte": from.floor() as i64, "lte": to.ceil() as i64},
                "type": {"in": ["instance", "volume"]}});
            let filters = crate::types::text::percent_encode(&filters.to_string());
            let mut out = Vec::new();
            let mut after: Option<String> = None;
            for _ in 0..10_000 {
                let mut path = format!(
                    "/api/v0/charges/?select_filters={filters}&latest_first=false&limit=100&format=tree"
                );
                if let Some(t) = &after {
                    path.push_str("&after_token=");
                    path.push_str(&crate::types::text::percent_encode(t));
                }
                let v = self
                    .api
                    .call("charges", true, Method::GET, &path, None)
                    .await?;
                for line in v
                    .get("results")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.extend(charge_items(line));
                }
                after = next_token(&v);
                if after.is_none() {
                    break;
                }
            }
            Ok(Some(out))
        })
    }

    fn set_bid<'a>(
        &'a self,
        provider_id: &'a str,
        bid_per_hour: f64,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let path = format!("/api/v0/instances/bid_price/{provider_id}/");
            self.api
                .call(
                    "set_bid",
                    true,
                    Method::PUT,
                    &path,
                    Some(json!({"client_id": "me", "price": bid_per_hour})),
                )
                .await
                .map(|_| ())
        })
    }

    fn list_instances(&self) -> BoxFuture<'_, Result<Vec<RemoteInstance>, UpstreamError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut after: Option<String> = None;
            for _ in 0..1000 {
                // the official client's query (vastai/api/instances.py `show_instances`)
                let mut path = format!(
                    "/api/v1/instances/?select_filters={}&order_by={}&limit=25",
                    crate::types::text::percent_encode("{}"),
                    crate::types::text::percent_encode(r#"[{"col":"id","dir":"asc"}]"#)
                );
                // the cursor as the official client sends it: the string itself, not JSON
                if let Some(t) = &after {
                    path.push_str("&after_token=");
                    path.push_str(&crate::types::text::percent_encode(t));
                }
                let v = self
                    .api
                    .call("list", true, Method::GET, &path, None)
                    .await?;
                if let Some(list) = v.get("instances").and_then(Value::as_array) {
                    out.extend(list.iter().filter_map(remote_instance));
                }
                after = next_token(&v);
                if after.is_none() {
                    break;
                }
            }
            Ok(out)
        })
    }
}

/// One charge line's parts: a line for `instance-<id>` becomes one [`Charge`] per item (or one
/// `total` when it has none), for provider instance `<id>`; a line for `volume-<id>` likewise,
/// for `volume-<id>` (volumes and instances have ids of their own); lines for anything else none.
pub fn charge_items(line: &Value) -> Vec<Charge> {
    let digits = |id: &&str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    let source = line.get("source").and_then(Value::as_str).unwrap_or("");
    let pid = match (
        source.strip_prefix("instance-"),
        source.strip_prefix("volume-"),
    ) {
        (Some(id), _) if digits(&id) => id.to_owned(),
        (_, Some(id)) if digits(&id) => format!("volume-{id}"),
        _ => return Vec::new(),
    };
    let pid = pid.as_str();
    let period = |v: &Value, dflt: (f64, f64)| {
        (
            num(v.get("start")).unwrap_or(dflt.0),
            num(v.get("end")).unwrap_or(dflt.1),
        )
    };
    let (start, end) = period(line, (0.0, 0.0));
    let text_of = |v: &Value| text(v.get("description")).unwrap_or_default();
    let items = line
        .get("items")
        .and_then(Value::as_array)
        .filter(|i| !i.is_empty());
    match items {
        None => micros(line.get("amount"))
            .map(|amount_micros| Charge {
                provider_instance_id: pid.to_owned(),
                item: "total".into(),
                start,
                end,
                description: text_of(line),
                amount_micros,
            })
            .into_iter()
            .collect(),
        Some(items) => items
            .iter()
            .filter_map(|it| {
                let (s, e) = period(it, (start, end));
                Some(Charge {
                    provider_instance_id: pid.to_owned(),
                    item: text(it.get("type")).unwrap_or_else(|| "other".into()),
                    start: s,
                    end: e,
                    description: text_of(it),
                    amount_micros: micros(it.get("amount"))?,
                })
            })
            .collect(),
    }
}

/// The `next_token` of a paged answer (a string or a number; empty or absent: the last page).
fn next_token(v: &Value) -> Option<String> {
    v.get("next_token").and_then(|t| match t {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

impl Vastai {
    async fn destroy_id(&self, provider_id: &str) -> Result<(), UpstreamError> {
        let path = format!("/api/v0/instances/{provider_id}/");
        match self
            .api
            .call("destroy", true, Method::DELETE, &path, None)
            .await
        {
            Ok(_) => Ok(()),
            // already gone, as Vast itself says (any other 404 is an `Auth` error)
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// One Vast.ai instance object (v0 show or v1 list); docs/providers.md, "States and what they
/// cost".
///
/// `actual_status` null/`created`/`loading`/`rebooting` is provisioning (also after a stop→start,
/// a reboot or a host restart of an instance that ran: the reconciler tells them apart);
/// `exited`, `unknown`, `offline` are `unknown` with the reason in `dead` (never running for a
/// new instance; unreachable for one that ran), and a `created` whose message says the container
/// could not be created is `dead` too; `frozen` bills the GPU; a bid instance that is stopped was
/// outbid (`interrupted`); `cur_state: unloaded` means destroyed; any other status is `unknown`.
pub fn remote_instance(v: &Value) -> Option<RemoteInstance> {
    let id = v
        .get("id")
        .and_then(|i| i.as_u64().map(|n| n.to_string()))?;
    let actual = v
        .get("actual_status")
        .and_then(Value::as_str)
        .map(str::trim);
    let msg = text(v.get("status_msg")).unwrap_or_default();
    let is_bid = flag(v.get("is_bid")).unwrap_or(false);
    let unloaded = v.get("cur_state").and_then(Value::as_str) == Some("unloaded");
    let mut dead = None;
    let status = match actual {
        _ if unloaded => InstanceStatus::Terminated,
        Some("running") => InstanceStatus::Running,
        Some("stopped") if is_bid => InstanceStatus::Interrupted,
        Some("stopped") => InstanceStatus::Stopped,
        Some("frozen") => InstanceStatus::Frozen,
        Some(s @ ("exited" | "unknown" | "offline")) => {
            dead = Some(if msg.is_empty() {
                s.to_owned()
            } else {
                format!("{s}: {}", short(&msg))
            });
            InstanceStatus::Unknown
        }
        Some("created") if msg.contains("OCI runtime create failed") => {
            dead = Some(format!("created: {}", short(&msg)));
            InstanceStatus::Provisioning
        }
        None | Some("" | "created" | "loading" | "rebooting" | "scheduling") => {
            InstanceStatus::Provisioning
        }
        Some(_) => InstanceStatus::Unknown,
    };
    let ssh = match (text(v.get("ssh_host")), num(v.get("ssh_port"))) {
        (Some(host), Some(port))
            if status == InstanceStatus::Running && port > 0.0 && port < 65536.0 =>
        {
            Some(Ssh {
                host,
                port: port as u16,
                user: "root".into(),
            })
        }
        _ => None,
    };
    Some(RemoteInstance {
        provider_id: id,
        our_id: text(v.get("label")),
        status,
        ssh,
        dead,
        paid: None,
        endpoints: endpoints(v),
        // reported while it runs; a number outside 0..=100 is not a reading
        gpu_util: num(v.get("gpu_util")).filter(|u| (0.0..=100.0).contains(u)),
    })
}

/// A volume offer row (`search volumes`: `id`, `machine_id`, `disk_space`, `storage_cost` in
/// USD per GB-month, `geolocation`, `reliability`).
fn volume_offer(provider: ProviderId, o: &Value) -> Option<super::VolumeOffer> {
    Some(super::VolumeOffer {
        id: format!("{}:{}", provider.as_str(), o.get("id")?.as_u64()?),
        provider,
        machine_id: o.get("machine_id")?.as_u64()?.to_string(),
        free_gb: num(o.get("disk_space")).filter(|d| *d >= 0.0)?,
        price_per_gb_month: num(o.get("storage_cost")).filter(|c| c.is_finite() && *c >= 0.0)?,
        country: location(o.get("geolocation").and_then(Value::as_str)).0,
        reliability: num(o.get("reliability")).filter(|r| (0.0..=1.0).contains(r)),
    })
}

/// One pending row: each part's new rate over its old one (a part whose new rate is `null`, or
/// whose old one is unknown or 0, does not count as changing).
fn price_increase(r: &Value) -> Option<super::PriceIncrease> {
    let ratio = |new: &str, old: &str| {
        let (n, o) = (num(r.get(new))?, num(r.get(old))?);
        (n.is_finite() && o.is_finite() && o > 0.0).then_some(n / o)
    };
    Some(super::PriceIncrease {
        id: r.get("pending_price_increase_id")?.as_u64()?.to_string(),
        provider_instance_id: r.get("contract_id")?.as_u64()?.to_string(),
        gpu: ratio("new_gpu_costpersec", "old_gpu_costpersec"),
        storage: ratio("new_disk_ram_costpersec", "old_disk_ram_costpersec"),
        upload: ratio("new_bwu_cost", "old_bwu_cost"),
        download: ratio("new_bwd_cost", "old_bwd_cost"),
        applies_at: num(r.get("contract_end_date")),
    })
}

/// The mapped ports of an instance: `ports` is a docker-style map (`{"8000/tcp": [{"HostIp":
/// "0.0.0.0", "HostPort": "41685"}]}`, the host port a string) and `public_ipaddr` the address
/// (may end in whitespace: docs/providers.md, "Show instance"). SSH's 22 is left out.
fn endpoints(v: &Value) -> Vec<super::Endpoint> {
    let Some(ip) = text(v.get("public_ipaddr")).map(|s| s.trim().to_owned()) else {
        return Vec::new();
    };
    let Some(ports) = v.get("ports").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut out: Vec<super::Endpoint> = ports
        .iter()
        .filter_map(|(k, maps)| {
            let (port, proto) = k.split_once('/').unwrap_or((k, "tcp"));
            let port: u16 = port.parse().ok()?;
            let protocol = match proto {
                "udp" => super::Protocol::Udp,
                _ => super::Protocol::Tcp,
            };
            if port == 22 && protocol == super::Protocol::Tcp {
                return None;
            }
            let host = maps.as_array()?.first()?.get("HostPort")?;
            let public_port = num(Some(host))?;
            (1.0..=65535.0)
                .contains(&public_port)
                .then(|| super::Endpoint {
                    port,
                    protocol,
                    public_ip: ip.clone(),
                    public_port: public_port as u16,
                })
        })
        .collect();
    out.sort_by_key(|e| (e.port, e.protocol.as_str()));
    out
}

/// An offer's storage price for `disk_gb` GB, per hour (Vast prices it per GB-month).
fn storage_per_hour(o: &Value, disk_gb: f64) -> f64 {
    disk_gb * num(o.get("storage_cost")).unwrap_or(0.0) / 720.0
}

/// Normalizes every offer that can be read; the others are skipped and logged once per answer.
pub fn normalize_all(
    pid: ProviderId,
    offers: &[Value],
    disk_gb: f64,
    interruptible: bool,
) -> Vec<Offer> {
    let mut out = Vec::with_capacity(offers.len());
    let mut skipped = 0usize;
    for o in offers {
        match normalize(pid, o, disk_gb, interruptible) {
            Some(x) => out.push(x),
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            provider = "vastai",
            skipped,
            "offers without id, GPU count or price skipped"
        );
    }
    out
}

/// One Vast.ai offer; `None` when it lacks what an offer needs (id, GPU count, a price).
pub fn normalize(pid: ProviderId, o: &Value, disk_gb: f64, interruptible: bool) -> Option<Offer> {
    let id = o.get("id").and_then(Value::as_u64).or_else(|| {
        num(o.get("id"))
            .filter(|x| *x >= 0.0 && x.fract() == 0.0)
            .map(|x| x as u64)
    })?;
    let gpu_count = num(o.get("num_gpus")).filter(|n| *n >= 1.0)? as u32;
    let raw_name = text(o.get("gpu_name")).unwrap_or_default();
    let mem_gb = num(o.get("gpu_ram")).map(|mb| round_to(mb / 1024.0, 1));
    let storage_hour = storage_per_hour(o, disk_gb);
    // a storage price below 0 (or none a float can hold) is no price: the offer cannot be read
    if !(storage_hour.is_finite() && storage_hour >= 0.0) {
        return None;
    }
    let min_bid = num(o.get("min_bid"));
    let compute = if interruptible {
        min_bid?
    } else {
        num(o.get("dph_base")).or_else(|| num(o.get("dph_total")).map(|t| t - storage_hour))?
    };
    if compute < 0.0 {
        return None;
    }
    let price = round_to(compute + storage_hour, 4);
    let cores_host = num(o.get("cpu_cores")).filter(|c| *c > 0.0);
    let cores = num(o.get("cpu_cores_effective")).or(cores_host);
    let ram_gb = match (num(o.get("cpu_ram")), cores, cores_host) {
        (Some(ram), Some(eff), Some(host)) => {
            Some(round_to(ram * (eff / host).min(1.0) / 1024.0, 1))
        }
        _ => None,
    };
    let (country, region) = location(o.get("geolocation").and_then(Value::as_str));
    let reliability = num(o.get("reliability2")).or_else(|| num(o.get("reliability")));
    let available =
        flag(o.get("rentable")).unwrap_or(true) && !flag(o.get("rented")).unwrap_or(false);
    Some(Offer {
        id: if interruptible {
            format!("{pid}:{id}{BID_SUFFIX}")
        } else {
            format!("{pid}:{id}")
        },
        provider: pid,
        gpu_model: gpu::canonical(&raw_name, mem_gb),
        provider_gpu_name: raw_name,
        gpu_count,
        gpu_memory_gb: mem_gb.unwrap_or(0.0),
        price_per_hour: price,
        price_per_gpu_hour: round_to(price / f64::from(gpu_count), 4),
        cpu_cores: cores.map(|c| round_to(c, 1)),
        ram_gb,
        disk_gb: num(o.get("disk_space")).map(|d| round_to(d, 1)),
        country,
        region,
        reliability: reliability.map(|r| round_to(r.clamp(0.0, 1.0), 4)),
        interruptible,
        min_bid_per_hour: min_bid.map(|b| round_to(b + storage_hour, 4)),
        storage_per_hour: round_to(storage_hour, 6),
        upload_usd_per_gb: num(o.get("inet_up_cost")).filter(|c| *c >= 0.0),
        download_usd_per_gb: num(o.get("inet_down_cost")).filter(|c| *c >= 0.0),
        available,
        direct_ports: num(o.get("direct_port_count"))
            .filter(|n| (0.0..=65535.0).contains(n))
            .map(|n| n as u32),
        machine_id: o
            .get("machine_id")
            .and_then(Value::as_u64)
            .map(|m| m.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn vast() -> ProviderId {
        ProviderId::register("vastai").unwrap()
    }

    /// A realistic offer, with the fields docs/providers.md lists (and some it does not).
    fn sample() -> Value {
        serde_json::from_str(
            r#"{
            "id": 7012345, "ask_contract_id": 7012345, "bundle_id": 991, "machine_id": 4242,
            "host_id": 77, "cluster_id": null, "num_gpus": 2, "gpu_name": "A100 SXM4",
            "gpu_ram": 81920, "gpu_total_ram": 163840, "gpu_frac": 1.0, "gpu_arch": "nvidia",
            "compute_cap": 800, "cuda_max_good": 12.4, "driver_version": "550.54.14",
            "cpu_name": "AMD EPYC 7V13 64-Core Processor  ", "cpu_cores": 128,
            "cpu_cores_effective": 32.0, "cpu_ram": 515725, "cpu_arch": "amd64",
            "disk_space": 812.4, "disk_bw": 3400.5, "inet_up": 850.1, "inet_down": 2100.0,
            "dph_base": 2.4, "dph_total": 2.4222, "min_bid": 1.1, "storage_cost": 0.2,
            "reliability": 0.991, "reliability2": 0.9934, "verification": "verified",
            "geolocation": "Alberta, CA", "geolocode": 12, "hosting_type": 1,
            "rentable": true, "rented": false, "is_bid": false, "start_date": 1.7e9,
            "end_date": 1.8e9, "duration": 86400.0, "score": 412.1, "dlperf": 233.0,
            "search": {"gpuCostPerHour": 2.4, "diskHour": 0.0222, "totalHour": 2.4222},
            "sla_premium": 0.0, "brand_new_field": {"nested": [1, 2]}
        }"#,
        )
        .unwrap()
    }

    #[test]
    fn a_full_offer() {
        let o = normalize(vast(), &sample(), 80.0, false).unwrap();
        assert_eq!(o.id, "vastai:7012345");
        assert_eq!(o.gpu_model, "A100 80GB SXM");
        assert_eq!(o.provider_gpu_name, "A100 SXM4");
        assert_eq!(o.gpu_count, 2);
        assert_eq!(o.gpu_memory_gb, 80.0);
        // 2.4 + 80 GB × 0.2 $/GB-month / 720 h
        assert_eq!(o.price_per_hour, 2.4222);
        assert_eq!(o.price_per_gpu_hour, 1.2111);
        assert_eq!(o.cpu_cores, Some(32.0));
        // a quarter of the host's 515,725 MB
        assert_eq!(o.ram_gb, Some(125.9));
        assert_eq!(o.disk_gb, Some(812.4));
        assert_eq!(o.country.as_deref(), Some("CA"));
        assert_eq!(o.region.as_deref(), Some("Alberta"));
        assert_eq!(o.reliability, Some(0.9934));
        assert!(!o.interruptible && o.available);
        assert_eq!(o.min_bid_per_hour, Some(1.1222));
    }

    #[test]
    fn interruptible_offers_are_priced_at_the_minimum_bid() {
        let o = normalize(vast(), &sample(), 0.0, true).unwrap();
        assert!(o.interruptible);
        assert_eq!(o.price_per_hour, 1.1);
        assert_eq!(
            o.id, "vastai:7012345:bid",
            "a bid rental is its own configuration"
        );
    }

    #[test]
    fn instance_states_that_never_run_are_dead_and_an_outbid_bid_is_interrupted() {
        let inst = |actual: Value, msg: &str, bid: bool| {
            remote_instance(&json!({"id": 9, "label": "x", "actual_status": actual,
                "status_msg": msg, "is_bid": bid, "cur_state": "running"}))
            .unwrap()
        };
        for s in ["exited", "offline", "unknown"] {
            let r = inst(json!(s), "", false);
            assert_eq!(r.status, InstanceStatus::Unknown);
            assert_eq!(r.dead.as_deref(), Some(s));
        }
        let r = inst(
            json!("created"),
            "OCI runtime create failed: no such file",
            false,
        );
        assert!(r.dead.unwrap().contains("OCI runtime create failed"));
        assert_eq!(inst(json!("created"), "", false).dead, None);
        assert_eq!(inst(Value::Null, "", false).dead, None);
        assert_eq!(
            inst(json!("loading"), "", false).status,
            InstanceStatus::Provisioning
        );
        assert_eq!(
            inst(json!("stopped"), "", true).status,
            InstanceStatus::Interrupted
        );
        assert_eq!(
            inst(json!("stopped"), "", false).status,
            InstanceStatus::Stopped
        );
        assert_eq!(
            inst(json!("running"), "", true).status,
            InstanceStatus::Running
        );
        assert_eq!(
            inst(json!("frozen"), "", false).status,
            InstanceStatus::Frozen
        );
        assert_eq!(
            inst(json!("rebooting"), "", false).status,
            InstanceStatus::Provisioning
        );
        let odd = inst(json!("migrating"), "", false);
        assert_eq!((odd.status, odd.dead), (InstanceStatus::Unknown, None));
    }

    #[test]
    fn odd_values_do_not_fail_the_offer() {
        let mut v = sample();
        v["geolocation"] = Value::Null;
        v["cpu_cores"] = Value::Null; // gpuhunt saw this
        v["gpu_ram"] = json!("24564");
        v["gpu_name"] = json!("RTX 4090");
        v["dph_base"] = json!("0.35");
        v["reliability2"] = Value::Null;
        let o = normalize(vast(), &v, 0.0, false).unwrap();
        assert_eq!((o.country, o.region), (None, None));
        assert_eq!(o.ram_gb, None);
        assert_eq!(o.cpu_cores, Some(32.0));
        assert_eq!(o.gpu_memory_gb, 24.0);
        assert_eq!(o.gpu_model, "RTX 4090");
        assert_eq!(o.price_per_hour, 0.35);
        assert_eq!(o.reliability, Some(0.991));

        let mut bare = sample();
        bare["geolocation"] = json!("Norway");
        let o = normalize(vast(), &bare, 0.0, false).unwrap();
        assert_eq!(o.country.as_deref(), Some("NO"));
    }

    #[test]
    fn unreadable_offers_are_skipped_not_fatal() {
        let mut no_id = sample();
        no_id.as_object_mut().unwrap().remove("id");
        let mut no_price = sample();
        no_price["dph_base"] = Value::Null;
        no_price["dph_total"] = json!("free");
        let list = vec![
            no_id,
            sample(),
            no_price,
            json!("not an object"),
            json!(null),
        ];
        let out = normalize_all(vast(), &list, 0.0, false);
        assert_eq!(out.len(), 1);
        // only dph_total: the storage part is taken out, then put back for the disk asked
        let mut total_only = sample();
        total_only["dph_base"] = Value::Null;
        assert_eq!(
            normalize(vast(), &total_only, 80.0, false)
                .unwrap()
                .price_per_hour,
            2.4222
        );
    }

    #[test]
    fn charges_are_read_as_vast_writes_them() {
        // the shape of vastai/api/billing.py `show_invoices_v1` results
        let line = json!({"type": "instance", "source": "instance-30001", "description": "x",
            "amount": 1.2345, "start": 1.7e9, "end": 1.7e9 + 3600.0, "metadata": {},
            "items": [
                {"type": "gpu", "amount": 1.0, "start": 1.7e9, "end": 1.7e9 + 3600.0,
                 "description": "GPU", "source": null, "items": []},
                {"type": "disk", "amount": "0.2", "description": "storage", "items": []},
                {"type": "bwu", "amount": 0.0345, "items": []},
                {"type": "bwd", "amount": null, "items": []}]});
        let c = charge_items(&line);
        assert_eq!(c.len(), 3, "an item without an amount is skipped: {c:?}");
        assert_eq!(c[0].provider_instance_id, "30001");
        assert_eq!((c[0].item.as_str(), c[0].amount_micros), ("gpu", 1_000_000));
        assert_eq!((c[1].item.as_str(), c[1].amount_micros), ("disk", 200_000));
        assert_eq!(
            c[1].start, 1.7e9,
            "an item without a period takes the line's"
        );
        assert_eq!(crate::providers::Charge::kind(&c[2].item), "bandwidth");
        let total = json!({"source": "instance-7", "amount": 0.5, "start": 1.0, "end": 2.0});
        assert_eq!(charge_items(&total)[0].item, "total");
        // a volume's line is its own, apart from every instance's
        let vol = json!({"type": "volume", "source": "volume-9", "amount": 1.0,
            "items": [{"type": "disk", "amount": 1.0}]});
        let v = charge_items(&vol);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].provider_instance_id.as_str(), v[0].item.as_str()),
            ("volume-9", "disk")
        );
        for other in [
            json!({"source": "volume-", "amount": 1.0, "items": []}),
            json!({"source": "template-9", "amount": 1.0}),
            json!({"instance_id": 9, "timestamp": 1.0, "amount": 1.0}),
            json!({"source": "instance-", "amount": 1.0}),
        ] {
            assert!(charge_items(&other).is_empty(), "{other}");
        }
    }

    #[test]
    fn a_404_is_gone_only_when_vast_says_so() {
        use crate::providers::api::is_code;
        let auth = check_status(
            404,
            br#"{"success":false,"error":"auth_error","msg":"Invalid user key"}"#,
            None,
            None,
        );
        assert!(matches!(
            auth,
            Err((UpstreamError::Auth { status: 404, .. }, _))
        ));
        let expired = check_status(
            404,
            br#"{"msg":"Session expired. Please log in again."}"#,
            None,
            None,
        );
        assert!(matches!(expired, Err((UpstreamError::Auth { .. }, _))));
        for s in [401, 403] {
            assert!(matches!(
                check_status(s, b"", None, None),
                Err((UpstreamError::Auth { .. }, _))
            ));
        }
        let gone = check_status(
            404,
            br#"{"success":false,"error":"no_such_instance","msg":"x"}"#,
            None,
            None,
        );
        let Err((
            UpstreamError::Status {
                status: 404,
                detail,
            },
            _,
        )) = gone
        else {
            panic!("{gone:?}")
        };
        assert!(GONE_CODES.iter().any(|c| is_code(&detail, c)));
        assert!(!is_code("not_found_really: x", "not_found"));
        assert!(
            UpstreamError::Auth {
                status: 404,
                detail: String::new()
            }
            .is_provider_fault()
        );
    }

    #[test]
    fn error_bodies_are_reduced_and_redacted() {
        let key = Secret::new("vk-123secret");
        let d = error_detail(
            br#"{"success":false,"error":"auth_error","msg":"Invalid user key vk-123secret"}"#,
            Some(&key),
        );
        assert_eq!(d, "auth_error: Invalid user key <redacted>");
        assert_eq!(
            error_detail(b"API requests too frequent", None),
            "API requests too frequent"
        );
        let r = check_status(429, b"API requests too frequent", None, None);
        assert_eq!(r, Err((UpstreamError::RateLimited, None)));
    }
}
