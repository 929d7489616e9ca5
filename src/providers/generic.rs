//! A provider that already speaks our normalized model (`kind = "generic"`): an in-house GPU
//! pool, a reseller, or a test stub. Adding one is a `[providers.<id>]` table and nothing else.
//!
//! The API it must serve, under its `base_url` (key, when configured, as `Authorization:
//! Bearer`; every body JSON):
//!
//! - `GET /offers` → `{"offers": [{"id", "gpu_model", "gpu_count", "price_per_hour", …}]}`: each
//!   item in our offer shape ([`super::Offer`]'s fields; `id` is the provider's own id, it gets the
//!   `<provider>:` prefix here; `gpu_memory_gb`, `cpu_cores`, `ram_gb`, `disk_gb`, `country`,
//!   `region`, `reliability`, `available` are optional).
//! - `POST /instances` `{"offer", "image", "disk_gb", "label", "env", "ssh_keys": {name: key}}` →
//!   `{"id"}`. `label` is our instance id (the reconciler finds ours by it).
//! - `GET /instances/{id}` → `{"id", "label", "status", "ssh": {"host", "port", "user"}?}` with
//!   `status` one of ours (`provisioning`, `running`, `stopped`, `failed`, `terminated`); 404 when
//!   gone. `GET /instances` → `{"instances": [...]}`. `DELETE /instances/{id}`; 404 = gone.

use hyper::Method;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::api::{JsonApi, KeyHeader};
use super::http::HttpClient;
use super::model::{
    InstanceStatus, Offer, ProviderId, Quote, RemoteInstance, RentRequest, Ssh, flag, num,
    round_to, text,
};
use super::resilience::Gate;
use super::{BoxFuture, Provider, SearchQuery, UpstreamError, gpu};
use crate::config::{Config, ProviderTable};

pub struct Generic {
    id: ProviderId,
    api: JsonApi,
}

impl Generic {
    pub fn new(
        id: ProviderId,
        table: &ProviderTable,
        config: &Config,
        http: HttpClient,
    ) -> Generic {
        Generic {
            id,
            api: JsonApi::new(
                &table.base_url,
                http,
                Gate::new(id, &config.providers),
                config.secrets.provider_key(&table.api_key_env).cloned(),
                KeyHeader::Bearer,
                None,
            ),
        }
    }

    async fn offers(&self, op: &'static str) -> Result<Vec<Offer>, UpstreamError> {
        let v = self
            .api
            .call(op, true, Method::GET, "/offers", None)
            .await?;
        let items = v
            .get("offers")
            .and_then(Value::as_array)
            .ok_or_else(|| UpstreamError::Decode("no `offers` array".into()))?;
        let out: Vec<Offer> = items.iter().filter_map(|o| normalize(self.id, o)).collect();
        if out.len() < items.len() {
            tracing::warn!(
                provider = self.id.as_str(),
                skipped = items.len() - out.len(),
                "offers without id, GPU count or price skipped"
            );
        }
        Ok(out)
    }
}

/// One offer in our shape; `None` without an id, a GPU count or a price.
pub fn normalize(pid: ProviderId, o: &Value) -> Option<Offer> {
    let id = text(o.get("id"))?;
    let gpu_count = num(o.get("gpu_count")).filter(|n| *n >= 1.0)? as u32;
    let price = num(o.get("price_per_hour")).filter(|p| *p >= 0.0)?;
    let raw = text(o.get("gpu_model")).unwrap_or_default();
    let mem = num(o.get("gpu_memory_gb"));
    Some(Offer {
        id: format!("{pid}:{id}"),
        provider: pid,
        gpu_model: gpu::canonical(&raw, mem),
        provider_gpu_name: raw,
        gpu_count,
        gpu_memory_gb: mem.unwrap_or(0.0),
        price_per_hour: round_to(price, 4),
        price_per_gpu_hour: round_to(price / f64::from(gpu_count), 4),
        cpu_cores: num(o.get("cpu_cores")),
        ram_gb: num(o.get("ram_gb")),
        disk_gb: num(o.get("disk_gb")),
        country: text(o.get("country")).map(|c| c.to_ascii_uppercase()),
        region: text(o.get("region")),
        reliability: num(o.get("reliability")).map(|r| r.clamp(0.0, 1.0)),
        interruptible: false,
        min_bid_per_hour: None,
        storage_per_hour: 0.0,
        upload_usd_per_gb: None,
        download_usd_per_gb: None,
        available: flag(o.get("available")).unwrap_or(true),
        direct_ports: None,
        machine_id: None,
    })
}

fn remote(v: &Value) -> Option<RemoteInstance> {
    let status = match v.get("status").and_then(Value::as_str)? {
        "running" => InstanceStatus::Running,
        "stopped" => InstanceStatus::Stopped,
        "failed" => InstanceStatus::Failed,
        "terminating" => InstanceStatus::Terminating,
        "terminated" => InstanceStatus::Terminated,
        _ => InstanceStatus::Provisioning,
    };
    let ssh = v.get("ssh").and_then(|s| {
        Some(Ssh {
            host: text(s.get("host"))?,
            port: num(s.get("port")).filter(|p| *p > 0.0 && *p < 65536.0)? as u16,
            user: text(s.get("user")).unwrap_or_else(|| "root".into()),
        })
    });
    Some(RemoteInstance {
        provider_id: text(v.get("id"))?,
        our_id: text(v.get("label")),
        status,
        ssh,
        dead: None,
        paid: None,
        endpoints: Vec::new(),
        gpu_util: None,
    })
}

impl Provider for Generic {
    fn id(&self) -> ProviderId {
        self.id
    }

    /// One catalogue answers every query (no interruptible capacity).
    fn search_key(&self, q: &SearchQuery) -> Option<String> {
        (!q.interruptible).then(|| format!("{}:offers:v1", self.id))
    }

    fn search<'a>(
        &'a self,
        _q: &'a SearchQuery,
    ) -> BoxFuture<'a, Result<Vec<Offer>, UpstreamError>> {
        Box::pin(self.offers("search"))
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
            let want = format!("{}:{offer}", self.id);
            Ok(self
                .offers("quote")
                .await?
                .into_iter()
                .find(|o| o.id == want)
                .map(Quote::of))
        })
    }

    fn create<'a>(&'a self, req: &'a RentRequest) -> BoxFuture<'a, Result<String, UpstreamError>> {
        Box::pin(async move {
            let keys: serde_json::Map<String, Value> = req
                .ssh_keys
                .iter()
                .map(|(n, k)| (n.clone(), json!(k)))
                .collect();
            let body = json!({"offer": req.offer, "image": req.launch.image,
                              "disk_gb": req.disk_gb, "label": req.our_id,
                              "env": req.launch.env, "ssh_keys": keys});
            let v = self
                .api
                .call("create", false, Method::POST, "/instances", Some(body))
                .await?;
            text(v.get("id")).ok_or_else(|| UpstreamError::Decode("create answered no `id`".into()))
        })
    }

    fn instance<'a>(
        &'a self,
        provider_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RemoteInstance>, UpstreamError>> {
        Box::pin(async move {
            let path = format!("/instances/{provider_id}");
            match self.api.call("show", true, Method::GET, &path, None).await {
                Ok(v) => Ok(remote(&v)),
                Err(UpstreamError::Status { status: 404, .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn destroy<'a>(&'a self, provider_id: &'a str) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let path = format!("/instances/{provider_id}");
            match self
                .api
                .call("destroy", true, Method::DELETE, &path, None)
                .await
            {
                Ok(_) | Err(UpstreamError::Status { status: 404, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn passthrough(&self) -> (&str, &HttpClient, Option<(HeaderName, HeaderValue)>) {
        self.api.passthrough()
    }

    fn list_instances(&self) -> BoxFuture<'_, Result<Vec<RemoteInstance>, UpstreamError>> {
        Box::pin(async move {
            let v = self
                .api
                .call("list", true, Method::GET, "/instances", None)
                .await?;
            Ok(v.get("instances")
                .and_then(Value::as_array)
                .map(|l| l.iter().filter_map(remote).collect())
                .unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_in_our_shape_get_the_provider_prefix() {
        let pid = ProviderId::register("acme").unwrap();
        let o = normalize(
            pid,
            &json!({"id": "pool-7", "gpu_model": "H100 80GB HBM3", "gpu_count": 4,
                    "price_per_hour": 8.0, "country": "fi", "reliability": 1.5}),
        )
        .unwrap();
        assert_eq!(o.id, "acme:pool-7");
        assert_eq!(o.gpu_model, "H100 80GB SXM");
        assert_eq!((o.price_per_gpu_hour, o.reliability), (2.0, Some(1.0)));
        assert_eq!(o.country.as_deref(), Some("FI"));
        assert!(o.available);
        for bad in [
            json!({"gpu_count": 1, "price_per_hour": 1}),
            json!({"id": "x", "price_per_hour": 1}),
            json!({"id": "x", "gpu_count": 1}),
        ] {
            assert!(normalize(pid, &bad).is_none(), "{bad}");
        }
    }
}
