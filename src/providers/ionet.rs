//! io.net (docs/providers.md, "io.net"): the enterprise VMaaS hardware catalogue
//! (`GET /enterprise/v1/io-cloud/vmaas/hardware`, key in `x-api-key`) and its normalization.
//!
//! Quirks handled here: the `{"data": {"hardware": [...]}}` envelope, `deploy_id` as an int or a
//! string (it is what deploying takes, so it is the offer id), `price` for the whole
//! configuration per hour, memory and storage in GB, `sold_out` only sometimes present, and a
//! location that may be missing (then taken from the `id` suffix, `B200_sxm6x8__US`).

use std::time::Duration;

use hyper::Method;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::api::{JsonApi, KeyHeader};
use super::http::HttpClient;
use super::model::{
    InstanceStatus, Launch, Offer, Paid, ProviderId, Quote, RemoteInstance, RentRequest, Ssh, flag,
    id_string, location, micros, num, round_to, text,
};
use super::resilience::Gate;
use super::{BoxFuture, Provider, SearchQuery, TimeQuote, UpstreamError, gpu};
use crate::config::{Config, ProviderTable};

pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
pub const VMAAS: &str = "/enterprise/v1/io-cloud/vmaas";
/// io.net's VM image types (`vm_image_type` in the deploy body): what `image` names here.
/// The location part of an offer id listed without a location (`ionet:1x5@any`): deploying it
/// asks `available-vms` where it can go.
pub const ANY_LOCATION: &str = "any";
pub const VM_IMAGE_TYPES: [&str; 2] = ["general", "datascience"];
/// Deployment names are `gpx-<our instance id>`: unique, and how the reconciler finds ours.
pub const NAME_PREFIX: &str = "gpx-";

pub struct Ionet {
    id: ProviderId,
    api: JsonApi,
}

impl Ionet {
    pub fn new(id: ProviderId, table: &ProviderTable, config: &Config, http: HttpClient) -> Ionet {
        Ionet {
            id,
            api: JsonApi::new(
                &table.base_url,
                http,
                Gate::new(id, &config.providers),
                config.secrets.provider_key(&table.api_key_env).cloned(),
                KeyHeader::Plain(API_KEY_HEADER),
                Some("no io.net API key (the variable its table's api_key_env names is unset)"),
            ),
        }
    }

    async fn hardware_once(
        &self,
        left: Duration,
    ) -> Result<Vec<Offer>, (UpstreamError, Option<Duration>)> {
        let reply = self
            .api
            .send(Method::GET, &format!("{VMAAS}/hardware"), None, left)
            .await?;
        let v = self.api.json(&reply)?;
        let items = v
            .pointer("/data/hardware")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                (
                    UpstreamError::Decode("no `data.hardware` array".into()),
                    None,
                )
            })?;
        Ok(normalize_all(self.id, items))
    }
}

impl Provider for Ionet {
    fn id(&self) -> ProviderId {
        self.id
    }

    fn disabled(&self) -> Option<&'static str> {
        self.api.disabled()
    }

    /// The whole catalogue is one answer (a few hundred items): every query shares it.
    fn search_key(&self, q: &SearchQuery) -> Option<String> {
        (!q.interruptible).then(|| format!("{}:hardware:v1", self.id))
    }

    fn search<'a>(
        &'a self,
        _q: &'a SearchQuery,
    ) -> BoxFuture<'a, Result<Vec<Offer>, UpstreamError>> {
        Box::pin(async move {
            if let Some(why) = self.disabled() {
                return Err(UpstreamError::Disabled(why));
            }
            self.api
                .gate
                .call("search", true, |left| self.hardware_once(left))
                .await
        })
    }

    fn gate(&self) -> &Gate {
        &self.api.gate
    }

    fn quote<'a>(
        &'a self,
        offer: &'a str,
        _disk_gb: u32,
    ) -> BoxFuture<'a, Result<Option<Quote>, UpstreamError>> {
        Box::pin(async move {
            let offers = self
                .api
                .gate
                .call("quote", true, |left| self.hardware_once(left))
                .await?;
            let want = format!("{}:{offer}", self.id);
            Ok(offers.into_iter().find(|o| o.id == want).map(Quote::of))
        })
    }

    fn create<'a>(&'a self, req: &'a RentRequest) -> BoxFuture<'a, Result<String, UpstreamError>> {
        Box::pin(async move {
            // exactly the configuration the offer id names: hardware, card count, location
            let (cards, hw, loc) = parse_offer(&req.offer).ok_or(UpstreamError::Disabled(
                "not an io.net offer id (`<cards>x<hardware>@<location>`)",
            ))?;
            let hardware_id = hw
                .parse::<u64>()
                .map(|n| json!(n))
                .unwrap_or_else(|_| json!(hw));
            let name = format!("{NAME_PREFIX}{}", req.our_id);
            let mut body = json!({
                "resource_private_name": name,
                "duration_hours": req.duration_hours,
                "gpus_per_vm": cards,
                "hardware_id": hardware_id,
                "location_ids": [self.location_for(hw, cards, loc).await?],
                "vm_image_type": req.launch.image,
            });
            // an exposed port is a network service (deploy-vms: port, protocol, a CIDR whitelist)
            if !req.launch.ports.is_empty() {
                let services: serde_json::Map<String, Value> = req
                    .launch
                    .ports
                    .iter()
                    .map(|p| {
                        (
                            format!("{}-{}", p.protocol.as_str(), p.port),
                            json!({"port": p.port, "protocol": p.protocol.as_str(),
                                   "whitelist": p.allow_from.clone()
                                       .unwrap_or_else(|| vec!["0.0.0.0/0".into()])}),
                        )
                    })
                    .collect();
                body["network_services"] = Value::Object(services);
            }
            if !req.ssh_keys.is_empty() {
                let keys: serde_json::Map<String, Value> = req
                    .ssh_keys
                    .iter()
                    .map(|(n, k)| (n.clone(), json!(k)))
                    .collect();
                body["ssh_keys"] = Value::Object(keys);
            }
            let v = self
                .api
                .call(
                    "create",
                    false,
                    Method::POST,
                    &format!("{VMAAS}/deploy"),
                    Some(body),
                )
                .await?;
            if let Some(id) = v.get("deployment_id").and_then(|i| id_string(Some(i))) {
                return Ok(id);
            }
            // the deploy answer may carry no id (docs/providers.md, "Offers and other quirks"): find it by its unique name
            self.find_by_name(&name).await?.ok_or_else(|| {
                UpstreamError::Decode(
                    "deploy answered without an id and no deployment has our name".into(),
                )
            })
        })
    }

    fn instance<'a>(
        &'a self,
        provider_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RemoteInstance>, UpstreamError>> {
        Box::pin(async move {
            let d = match self
                .api
                .call(
                    "show",
                    true,
                    Method::GET,
                    &format!("{VMAAS}/deployment/{provider_id}"),
                    None,
                )
                .await
            {
                Ok(v) => v,
                Err(e @ UpstreamError::Status { status: 404, .. }) => {
                    return self.gone_or(provider_id, e).await.map(|()| None);
                }
                Err(e) => return Err(e),
            };
            let data = d.get("data").cloned().unwrap_or(Value::Null);
            let mut inst = remote_deployment(&data)
                .ok_or_else(|| UpstreamError::Decode("deployment without id/status".into()))?;
            if inst.status == InstanceStatus::Running {
                let vms = self
                    .api
                    .call(
                        "vms",
                        true,
                        Method::GET,
                        &format!("{VMAAS}/deployment/{provider_id}/vms?page=1&page_size=100"),
                        None,
                    )
                    .await?;
                let workers = vms
                    .pointer("/data/workers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                inst.ssh = workers.iter().find_map(|w| {
                    w.get("ssh_access")
                        .and_then(Value::as_str)
                        .and_then(parse_ssh)
                });
                inst.endpoints = workers.iter().flat_map(services).collect();
            }
            Ok(Some(inst))
        })
    }

    fn destroy<'a>(&'a self, provider_id: &'a str) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            match self
                .api
                .call(
                    "destroy",
                    true,
                    Method::DELETE,
                    &format!("{VMAAS}/deployment/{provider_id}"),
                    None,
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(e @ UpstreamError::Status { status: 404, .. }) => {
                    self.gone_or(provider_id, e).await
                }
                Err(e) => Err(e),
            }
        })
    }

    fn passthrough(&self) -> (&str, &HttpClient, Option<(HeaderName, HeaderValue)>) {
        self.api.passthrough()
    }

    fn sells_time(&self) -> bool {
        true
    }

    /// The first hour is never refunded (destroy-deployment; docs/providers.md).
    fn minimum_billed_hours(&self) -> Option<f64> {
        Some(1.0)
    }

    /// `GET /vmaas/price` (docs/providers.md, io.net): the total for the hours, with io.net's fee,
    /// the currency conversion fee and any discount: what the deployment is charged.
    fn quote_time<'a>(
        &'a self,
        offer: &'a str,
        hours: u32,
    ) -> BoxFuture<'a, Result<Option<TimeQuote>, UpstreamError>> {
        Box::pin(async move {
            let Some((cards, hw, loc)) = parse_offer(offer) else {
                return Ok(None);
            };
            let loc = self.location_for(hw, cards, loc).await?;
            let pe = crate::types::text::percent_encode;
            let path = format!(
                "{VMAAS}/price?location_ids={}&hardware_id={}&currency=usdc&duration_hours={hours}&gpus_per_vm={cards}&replica_count=1",
                pe(&json!([loc]).to_string()),
                pe(hw)
            );
            let v = self
                .api
                .call("price", true, Method::GET, &path, None)
                .await?;
            let d = v.get("data").cloned().unwrap_or(Value::Null);
            let total = micros(d.get("total_cost_usdc"))
                .filter(|t| *t > 0)
                .ok_or_else(|| UpstreamError::Decode("price answered no total_cost_usdc".into()))?;
            Ok(Some(TimeQuote {
                hours,
                total_micros: total,
                fee_micros: micros(d.get("ionet_fee")).unwrap_or(0),
                conversion_fee_micros: micros(d.get("currency_conversion_fee")).unwrap_or(0),
                discount_micros: micros(d.get("discount")).unwrap_or(0),
            }))
        })
    }

    fn extend<'a>(
        &'a self,
        provider_id: &'a str,
        hours: u32,
    ) -> BoxFuture<'a, Result<Option<Paid>, UpstreamError>> {
        Box::pin(async move {
            // spends money: never retried (a lost answer is settled by reading the deployment)
            let v = self
                .api
                .call(
                    "extend",
                    false,
                    Method::POST,
                    &format!("{VMAAS}/deployment/{provider_id}/extend"),
                    Some(json!({ "duration_hours": hours })),
                )
                .await?;
            // the answer is the deployment's details (extend-cluster): what it has paid in all
            Ok(v.get("data").and_then(paid_of))
        })
    }

    /// A VM deployment takes no container image and no environment (the deploy body has neither:
    /// docs/providers.md, io.net); its image is one of io.net's VM image types, sent as
    /// `vm_image_type`.
    fn launch_refusal(&self, launch: &Launch) -> Option<(&'static str, String)> {
        if let Some(field) = launch.vast_only_field() {
            return Some((
                field,
                format!("io.net VM deployments take no `{field}` (deploy-vms has no such field)"),
            ));
        }
        if !VM_IMAGE_TYPES.contains(&launch.image.as_str()) {
            return Some((
                "image",
                format!(
                    "io.net deploys VMs from its own images, not containers: `image` must be one of {VM_IMAGE_TYPES:?}"
                ),
            ));
        }
        if !launch.env.is_empty() {
            return Some((
                "env",
                "io.net VM deployments take no environment variables".to_owned(),
            ));
        }
        None
    }

    fn check_offer_id(&self, local: &str) -> Result<(), &'static str> {
        parse_offer(local).map(|_| ()).ok_or(
            "io.net offers are `<provider>:<cards>x<hardware>@<location>` (from GET /v1/offers)",
        )
    }

    fn list_instances(&self) -> BoxFuture<'_, Result<Vec<RemoteInstance>, UpstreamError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for page in 0..1000u32 {
                let v = self
                    .api
                    .call(
                        "list",
                        true,
                        Method::GET,
                        &format!("{VMAAS}/deployments?page={page}&page_size=100"),
                        None,
                    )
                    .await?;
                let list = v
                    .pointer("/data/deployments")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let total = v
                    .pointer("/data/total")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                out.extend(list.iter().filter_map(remote_deployment));
                if list.is_empty() || u64::from(page + 1) * 100 >= total {
                    break;
                }
            }
            Ok(out)
        })
    }
}

impl Ionet {
    /// The location to deploy in: the offer's, or, for a configuration listed without one, the
    /// first location `available-vms` says has a replica (io.net takes no wildcard).
    async fn location_for(&self, hw: &str, cards: u32, loc: &str) -> Result<String, UpstreamError> {
        if loc != ANY_LOCATION {
            return Ok(loc.to_owned());
        }
        let path = format!(
            "{VMAAS}/available-vms?hardware_id={}&hardware_qty={cards}",
            crate::types::text::percent_encode(hw)
        );
        let v = self
            .api
            .call("available", true, Method::GET, &path, None)
            .await?;
        v.get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|l| l.get("available_replicas").and_then(Value::as_u64) > Some(0))
            .find_map(|l| text(l.get("iso2")))
            .ok_or(UpstreamError::Status {
                status: 409,
                detail: "no location has this configuration available".into(),
            })
    }

    /// io.net's 404 has no code of its own (FastAPI's `{"detail": "Not Found"}` answers an unknown
    /// route as well, and a refused key is undocumented): a deployment is gone only when the
    /// deployments list, read with the same key, succeeds and lacks it. Otherwise the 404 is a
    /// refused key (`Auth`), or the list's own error.
    async fn gone_or(&self, provider_id: &str, e: UpstreamError) -> Result<(), UpstreamError> {
        let listed = self.list_instances().await?;
        if listed
            .iter()
            .any(|d| d.provider_id == provider_id && d.status != InstanceStatus::Terminated)
        {
            let UpstreamError::Status { detail, .. } = e else {
                return Err(e);
            };
            return Err(UpstreamError::Auth {
                status: 404,
                detail,
            });
        }
        Ok(())
    }

    async fn find_by_name(&self, name: &str) -> Result<Option<String>, UpstreamError> {
        let want = name.strip_prefix(NAME_PREFIX);
        Ok(self
            .list_instances()
            .await?
            .into_iter()
            .find(|d| d.our_id.as_deref() == want)
            .map(|d| d.provider_id))
    }
}

/// A deployment (list item or details).
pub fn remote_deployment(d: &Value) -> Option<RemoteInstance> {
    let id = id_string(d.get("id"))?;
    let status = match d.get("status").and_then(Value::as_str)? {
        "running" => InstanceStatus::Running,
        "deployment requested" => InstanceStatus::Provisioning,
        "termination requested" => InstanceStatus::Terminating,
        "destroyed" | "completed" => InstanceStatus::Terminated,
        "failed" => InstanceStatus::Failed,
        // outside the published enum (an example shows `active`): billed and reported, never
        // read as a failed start (docs/providers.md)
        _ => InstanceStatus::Unknown,
    };
    Some(RemoteInstance {
        provider_id: id,
        our_id: text(d.get("name")).and_then(|n| n.strip_prefix(NAME_PREFIX).map(str::to_owned)),
        status,
        ssh: None,
        dead: None,
        paid: paid_of(d),
        endpoints: Vec::new(),
        gpu_util: None,
    })
}

/// What a deployment's details say it paid in all (`amount_paid`, USD) and for how long
/// (`compute_minutes_served` + `compute_minutes_remaining`): get-deployment-details.
pub fn paid_of(d: &Value) -> Option<Paid> {
    let micros = micros(d.get("amount_paid"))?;
    let minutes = ["compute_minutes_served", "compute_minutes_remaining"]
        .iter()
        .map(|k| d.get(*k).and_then(Value::as_f64))
        .sum::<Option<f64>>()?;
    let hours = (minutes / 60.0).round();
    (hours >= 1.0 && hours <= f64::from(u32::MAX)).then_some(Paid {
        micros,
        hours: hours as u32,
    })
}

/// A VM's exposed ports (`network_services`: `{name: {port, protocol, public_port, public_ip}}`,
/// get-deployment-vms), SSH's left out.
fn services(worker: &Value) -> Vec<crate::providers::Endpoint> {
    let Some(map) = worker.get("network_services").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut out: Vec<crate::providers::Endpoint> = map
        .iter()
        .filter(|(name, _)| name.as_str() != "ssh")
        .filter_map(|(_, s)| {
            let n = |k: &str| num(s.get(k)).filter(|p| (1.0..=65535.0).contains(p));
            Some(crate::providers::Endpoint {
                port: n("port")? as u16,
                protocol: match s.get("protocol").and_then(Value::as_str) {
                    Some("udp") => crate::providers::Protocol::Udp,
                    _ => crate::providers::Protocol::Tcp,
                },
                public_ip: text(s.get("public_ip"))?,
                public_port: n("public_port")? as u16,
            })
        })
        .collect();
    out.sort_by_key(|e| (e.port, e.protocol.as_str()));
    out
}

/// The io.net part of an offer id, `<cards>x<deploy id>@<location>`: (cards, deploy id,
/// location). The deploy id may itself hold `x` or `@` (`8B300.240V`), so the card count is
/// read up to the first `x` and the location after the last `@`.
pub fn parse_offer(local: &str) -> Option<(u32, &str, &str)> {
    let (rest, loc) = local.rsplit_once('@')?;
    let (cards, hw) = rest.split_once('x')?;
    let cards: u32 = cards.parse().ok().filter(|c| (1..=8).contains(c))?;
    (!hw.is_empty() && !loc.is_empty()).then_some((cards, hw, loc))
}

/// `user@host -p port` (or `ssh user@host`, port 22 when absent).
pub fn parse_ssh(s: &str) -> Option<Ssh> {
    let mut user_host = None;
    let mut port = 22u16;
    let mut words = s.split_whitespace().filter(|w| *w != "ssh");
    while let Some(w) = words.next() {
        if w == "-p" {
            port = words.next()?.parse().ok()?;
        } else if let Some((u, h)) = w.split_once('@') {
            user_host = Some((u.to_owned(), h.to_owned()));
        }
    }
    let (user, host) = user_host?;
    Some(Ssh { host, port, user })
}

pub fn normalize_all(pid: ProviderId, items: &[Value]) -> Vec<Offer> {
    let mut out = Vec::with_capacity(items.len());
    let mut skipped = 0usize;
    for it in items {
        match normalize(pid, it) {
            Some(o) => out.push(o),
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            provider = "ionet",
            skipped,
            "hardware items without deploy_id, cards or price skipped"
        );
    }
    out
}

/// One hardware item; `None` without a `deploy_id`, a card count or a price.
pub fn normalize(pid: ProviderId, it: &Value) -> Option<Offer> {
    let deploy_id = id_string(it.get("deploy_id"))?;
    let cards = num(it.get("num_cards")).filter(|n| *n >= 1.0)? as u32;
    let price = num(it.get("price")).filter(|p| *p >= 0.0)?;
    let raw_name = text(it.get("name")).unwrap_or_default();
    let mem = num(it.get("vram_per_card"));
    let loc = text(it.get("location")).or_else(|| {
        text(it.get("id"))
            .and_then(|id| id.rsplit_once("__").map(|(_, l)| l.to_owned()))
            .filter(|l| !l.is_empty() && !l.bytes().all(|b| b.is_ascii_digit()))
    });
    let (country, region) = location(loc.as_deref());
    let where_ = country
        .clone()
        .or(region.clone())
        .unwrap_or_else(|| ANY_LOCATION.into());
    Some(Offer {
        id: format!("{pid}:{cards}x{deploy_id}@{where_}"),
        provider: pid,
        gpu_model: gpu::canonical(&raw_name, mem),
        provider_gpu_name: raw_name,
        gpu_count: cards,
        gpu_memory_gb: mem.unwrap_or(0.0),
        price_per_hour: round_to(price, 4),
        price_per_gpu_hour: round_to(price / f64::from(cards), 4),
        cpu_cores: num(it.get("vcpu")),
        ram_gb: num(it.get("memory")),
        disk_gb: num(it.get("storage")),
        country,
        region,
        reliability: None,
        interruptible: false,
        min_bid_per_hour: None,
        storage_per_hour: 0.0,
        upload_usd_per_gb: None,
        download_usd_per_gb: None,
        available: !flag(it.get("sold_out")).unwrap_or(false),
        direct_ports: None,
        machine_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> ProviderId {
        ProviderId::register("ionet").unwrap()
    }
    use serde_json::json;

    #[test]
    fn hardware_items_in_both_id_shapes() {
        let a = json!({
            "id": "12__2", "deploy_id": 12, "name": "GeForce RTX 4090", "num_cards": 2,
            "supplier": "internal", "price": 0.98, "vram_per_card": 24, "vcpu": 16,
            "memory": 64, "storage": 1000, "interconnect": null, "nvlink": false,
            "location": "US", "sold_out": false
        });
        let o = normalize(io(), &a).unwrap();
        assert_eq!(o.id, "ionet:2x12@US");
        assert_eq!(o.gpu_model, "RTX 4090");
        assert_eq!((o.gpu_count, o.gpu_memory_gb), (2, 24.0));
        assert_eq!((o.price_per_hour, o.price_per_gpu_hour), (0.98, 0.49));
        assert_eq!(
            (o.cpu_cores, o.ram_gb, o.disk_gb),
            (Some(16.0), Some(64.0), Some(1000.0))
        );
        assert_eq!(o.country.as_deref(), Some("US"));
        assert!(o.available && !o.interruptible && o.reliability.is_none());

        let b = json!({
            "id": "8B300.240V__FI", "deploy_id": "8B300.240V", "name": "B300", "num_cards": 8,
            "price": "52.5", "vram_per_card": 288, "supplier": "external", "sold_out": true
        });
        let o = normalize(io(), &b).unwrap();
        assert_eq!(o.id, "ionet:8x8B300.240V@FI", "location from the id suffix");
        assert_eq!(
            parse_offer("8x8B300.240V@FI"),
            Some((8, "8B300.240V", "FI"))
        );
        assert_eq!(parse_offer("2x12@US"), Some((2, "12", "US")));
        for bad in ["12@US", "0x12@US", "9x12@US", "2x@US", "2x12@", "2x12"] {
            assert_eq!(parse_offer(bad), None, "{bad}");
        }
        assert_eq!(o.price_per_gpu_hour, 6.5625);
        assert!(!o.available);
        assert_eq!(o.ram_gb, None);
    }

    #[test]
    fn unreadable_items_are_skipped() {
        let items = vec![
            json!({"deploy_id": null, "num_cards": 1, "price": 1.0}),
            json!({"deploy_id": 3, "num_cards": 0, "price": 1.0}),
            json!({"deploy_id": 4, "num_cards": 1, "price": "n/a"}),
            json!({"deploy_id": 5, "num_cards": 1, "price": 1.5, "name": "H100 80GB HBM3"}),
            json!(17),
        ];
        let out = normalize_all(io(), &items);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, "ionet:1x5@any");
        assert_eq!(out[0].gpu_model, "H100 80GB SXM");
    }
}
