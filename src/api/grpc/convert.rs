//! The typed services' views as gRPC messages, and gRPC requests as the services' input. Money
//! is decimal text in messages ([`usd`]); a request's decimal text goes to the services as the
//! JSON number it spells, so REST's checks apply unchanged.
//!
//! Requests are read into what REST's carriers give the services: a query string for offers
//! (`Filters::parse`), the JSON body of `POST /v1/instances` for a rental (hashed as it is for
//! an idempotency key, so a key is shared by both carriers). An instance is read from its JSON
//! view, because an idempotent answer is recorded (and replayed) as that JSON.

use serde_json::{Map, Value, json};

use super::offers_page::SearchOffersResponse;
use super::pb;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::providers::Offer;
use crate::rentals::usage::{Figures, ReportView};
use crate::service::offers::OffersPage;

/// USD as decimal text: the shortest that reads back as the same figure ("0.452").
pub fn usd(x: f64) -> String {
    format!("{x}")
}

/// An RFC 3339 time as a `Timestamp`.
pub fn timestamp(text: &str) -> Option<prost_types::Timestamp> {
    humantime::parse_rfc3339_weak(text).ok().map(Into::into)
}

/// A request's decimal text (`field` names it) as a JSON number.
fn decimal(field: &str, text: &str) -> Result<Value> {
    let ok = !text.is_empty()
        && text.len() <= 32
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|b| *b == b'.').count() <= 1
        && !text.starts_with('.')
        && !text.ends_with('.');
    let n = ok
        .then(|| serde_json::from_str::<serde_json::Number>(text).ok())
        .flatten()
        .ok_or_else(|| {
            Error::bad_request(format!(
                "invalid `{field}`: a decimal number of USD such as \"1.25\""
            ))
        })?;
    Ok(Value::Number(n))
}

/// `SearchOffers`' filters as `GET /v1/offers`' query string.
pub fn offers_query(r: &pb::SearchOffersRequest) -> Result<String> {
    let mut q = form_urlencoded::Serializer::new(String::new());
    let mut text = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            q.append_pair(k, &v);
        }
    };
    text("gpu", r.gpu.clone());
    text("min_gpus", r.min_gpus.map(|n| n.to_string()));
    text("max_gpus", r.max_gpus.map(|n| n.to_string()));
    text(
        "min_gpu_memory_gb",
        r.min_gpu_memory_gb.map(|n| n.to_string()),
    );
    for (k, v) in [
        ("max_price", &r.max_price),
        ("max_price_per_gpu", &r.max_price_per_gpu),
    ] {
        if let Some(v) = v {
            decimal(k, v)?;
        }
        text(k, v.clone());
    }
    text(
        "providers",
        (!r.providers.is_empty()).then(|| r.providers.join(",")),
    );
    text(
        "countries",
        (!r.countries.is_empty()).then(|| r.countries.join(",")),
    );
    text("interruptible", r.interruptible.then(|| "true".into()));
    text(
        "include_unavailable",
        r.include_unavailable.then(|| "true".into()),
    );
    text(
        "min_direct_ports",
        r.min_direct_ports.map(|n| n.to_string()),
    );
    text("disk_gb", r.disk_gb.map(|n| n.to_string()));
    text("sort", r.sort.clone());
    text("limit", r.limit.map(|n| n.to_string()));
    text("cursor", r.cursor.clone());
    Ok(q.finish())
}

pub fn offer(o: &Offer) -> pb::Offer {
    pb::Offer {
        id: o.id.clone(),
        provider: o.provider.as_str().to_owned(),
        gpu_model: o.gpu_model.clone(),
        provider_gpu_name: o.provider_gpu_name.clone(),
        gpu_count: o.gpu_count,
        gpu_memory_gb: o.gpu_memory_gb,
        price_per_hour: usd(o.price_per_hour),
        price_per_gpu_hour: usd(o.price_per_gpu_hour),
        cpu_cores: o.cpu_cores,
        ram_gb: o.ram_gb,
        disk_gb: o.disk_gb,
        country: o.country.clone(),
        region: o.region.clone(),
        reliability: o.reliability,
        interruptible: o.interruptible,
        min_bid_per_hour: o.min_bid_per_hour.map(usd),
        storage_per_hour: usd(o.storage_per_hour),
        upload_usd_per_gb: o.upload_usd_per_gb.map(usd),
        download_usd_per_gb: o.download_usd_per_gb.map(usd),
        available: o.available,
        direct_ports: o.direct_ports,
        machine_id: o.machine_id.clone(),
    }
}

pub fn offers_page(p: &OffersPage) -> SearchOffersResponse {
    SearchOffersResponse {
        status: p.status.to_owned(),
        stale: p.stale,
        offers: p.offers_encoded(|offers| {
            super::offers_page::encode_offers(&offers.iter().map(offer).collect::<Vec<_>>())
        }),
        total: p.total() as u64,
        next_cursor: p.next_cursor().map(str::to_owned),
        providers: p
            .reports()
            .map(|r| {
                (
                    r.provider.to_owned(),
                    pb::ProviderReport {
                        status: r.status.to_owned(),
                        offers: r.offers.map(|n| n as u64),
                        error_code: r.error.map(|e| e.0.to_owned()),
                        error_message: r.error.map(|e| e.1.to_owned()),
                    },
                )
            })
            .collect(),
    }
}

/// `RentInstance` as the JSON body of `POST /v1/instances`.
pub fn rent_body(r: &pb::RentInstanceRequest) -> Result<Vec<u8>> {
    let mut o = Map::new();
    let mut put = |k: &str, v: Value| {
        o.insert(k.to_owned(), v);
    };
    if !r.offer_id.is_empty() {
        put("offer_id", json!(r.offer_id));
    }
    if let Some(s) = &r.spec {
        put("spec", spec(s)?);
    }
    put("image", json!(r.image));
    put("disk_gb", json!(r.disk_gb));
    if r.agent {
        put("agent", json!(true));
    }
    let opt = |v: &Option<String>| v.as_ref().map(|v| json!(v));
    for (k, v) in [
        ("label", opt(&r.label)),
        ("onstart", opt(&r.onstart)),
        ("launch_mode", opt(&r.launch_mode)),
        ("template_hash_id", opt(&r.template_hash_id)),
        ("ssh_public_key", opt(&r.ssh_public_key)),
        ("duration_hours", r.duration_hours.map(|v| json!(v))),
        ("max_duration_hours", r.max_duration_hours.map(|v| json!(v))),
        (
            "max_price_per_hour",
            r.max_price_per_hour
                .as_deref()
                .map(|t| decimal("max_price_per_hour", t))
                .transpose()?,
        ),
        (
            "bid_per_hour",
            r.bid_per_hour
                .as_deref()
                .map(|t| decimal("bid_per_hour", t))
                .transpose()?,
        ),
        (
            "expires_at",
            r.expires_at.as_ref().map(|t| {
                let at = std::time::SystemTime::try_from(*t).unwrap_or(std::time::UNIX_EPOCH);
                json!(humantime::format_rfc3339_millis(at).to_string())
            }),
        ),
        ("env", (!r.env.is_empty()).then(|| json!(r.env))),
        ("args", (!r.args.is_empty()).then(|| json!(r.args))),
        (
            "ssh_key_ids",
            (!r.ssh_key_ids.is_empty()).then(|| json!(r.ssh_key_ids)),
        ),
    ] {
        if let Some(v) = v {
            put(k, v);
        }
    }
    if !r.ports.is_empty() {
        let ports: Vec<Value> = r
            .ports
            .iter()
            .map(|p| {
                let mut m = Map::new();
                m.insert("port".into(), json!(p.port));
                if let Some(proto) = &p.protocol {
                    m.insert("protocol".into(), json!(proto));
                }
                if !p.allow_from.is_empty() {
                    m.insert("allow_from".into(), json!(p.allow_from));
                }
                Value::Object(m)
            })
            .collect();
        put("ports", Value::Array(ports));
    }
    if let Some(v) = &r.volume {
        put("volume", json!({"id": v.id, "mount_path": v.mount_path}));
    }
    if let Some(i) = &r.on_interrupt {
        let mut m = Map::new();
        m.insert("action".into(), json!(i.action));
        if let Some(t) = &i.max_bid_per_hour {
            m.insert(
                "max_bid_per_hour".into(),
                decimal("on_interrupt.max_bid_per_hour", t)?,
            );
        }
        put("on_interrupt", Value::Object(m));
    }
    if let Some(i) = &r.idle {
        put(
            "idle",
            json!({"gpu_util_below": i.gpu_util_below, "for_minutes": i.for_minutes,
                   "action": i.action}),
        );
    }
    serde_json::to_vec(&Value::Object(o)).map_err(Error::internal)
}

fn text(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn money(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_f64).map(usd)
}

fn time(v: &Value, k: &str) -> Option<prost_types::Timestamp> {
    v.get(k).and_then(Value::as_str).and_then(timestamp)
}

/// An instance from its JSON view (`service::instances::InstanceView`, as REST writes it).
pub fn instance(v: &Value) -> pb::Instance {
    let int = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    pb::Instance {
        id: text(v, "id").unwrap_or_default(),
        provider: text(v, "provider").unwrap_or_default(),
        provider_instance_id: text(v, "provider_instance_id"),
        offer_id: text(v, "offer_id").unwrap_or_default(),
        gpu_model: text(v, "gpu_model").unwrap_or_default(),
        gpu_count: int("gpu_count") as i32,
        price_per_hour: money(v, "price_per_hour").unwrap_or_default(),
        status: text(v, "status").unwrap_or_default(),
        ssh: v.get("ssh").filter(|s| s.is_object()).map(|s| pb::Ssh {
            host: text(s, "host").unwrap_or_default(),
            port: s.get("port").and_then(Value::as_u64).unwrap_or(0) as u32,
            user: text(s, "user").unwrap_or_default(),
        }),
        ssh_command: text(v, "ssh_command"),
        endpoints: v
            .get("endpoints")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|e| pb::Endpoint {
                        port: e.get("port").and_then(Value::as_u64).unwrap_or(0) as u32,
                        protocol: text(e, "protocol").unwrap_or_default(),
                        public_ip: text(e, "public_ip").unwrap_or_default(),
                        public_port: e.get("public_port").and_then(Value::as_u64).unwrap_or(0)
                            as u32,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        interruptible: v
            .get("interruptible")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        bid_per_hour: money(v, "bid_per_hour"),
        storage_per_hour: money(v, "storage_per_hour").unwrap_or_else(|| usd(0.0)),
        image: text(v, "image").unwrap_or_default(),
        disk_gb: int("disk_gb") as i32,
        label: text(v, "label"),
        failure: text(v, "failure"),
        created_at: time(v, "created_at"),
        started_at: time(v, "started_at"),
        terminated_at: time(v, "terminated_at"),
        expires_at: time(v, "expires_at"),
        dead_state: text(v, "dead_state"),
        replaced_by: text(v, "replaced_by"),
        volume: v
            .get("volume")
            .filter(|x| x.is_object())
            .map(|x| pb::VolumeAttach {
                id: text(x, "id").unwrap_or_default(),
                mount_path: text(x, "mount_path").unwrap_or_default(),
            }),
        rental_request_id: text(v, "rental_request_id"),
        events: v
            .get("events")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|e| pb::InstanceEvent {
                        at: time(e, "at"),
                        kind: text(e, "kind").unwrap_or_default(),
                        status: text(e, "status"),
                        price_per_hour: money(e, "price_per_hour"),
                        detail: text(e, "detail"),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        on_interrupt: v
            .get("on_interrupt")
            .filter(|x| x.is_object())
            .map(|x| pb::OnInterrupt {
                action: text(x, "action").unwrap_or_default(),
                max_bid_per_hour: money(x, "max_bid_per_hour"),
            }),
        idle: v
            .get("idle")
            .filter(|x| x.is_object())
            .map(|x| pb::IdlePolicy {
                gpu_util_below: x
                    .get("gpu_util_below")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
                for_minutes: x.get("for_minutes").and_then(Value::as_f64).unwrap_or(0.0),
                action: text(x, "action").unwrap_or_default(),
            }),
    }
}

/// A serializable view (an instance) as a message, through its JSON.
pub fn instance_of<T: serde::Serialize>(view: &T) -> Result<pb::Instance> {
    Ok(instance(
        &serde_json::to_value(view).map_err(Error::internal)?,
    ))
}

fn figures(f: &Figures) -> pb::UsageFigures {
    pb::UsageFigures {
        usd: usd(f.usd),
        bandwidth_usd: usd(f.bandwidth_usd),
        storage_usd: usd(f.storage_usd),
        gpu_hours: f.gpu_hours,
        instance_hours: f.instance_hours,
    }
}

pub fn usage(r: &ReportView) -> pb::GetUsageResponse {
    pb::GetUsageResponse {
        account_id: r.account_id,
        account: r.account.clone(),
        from: r.from.clone(),
        to: r.to.clone(),
        group_by: serde_json::to_value(r.group_by)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        currency: r.currency.to_owned(),
        totals: Some(figures(&r.totals)),
        groups: r
            .groups
            .iter()
            .map(|g| pb::UsageGroup {
                key: g.key.clone(),
                figures: Some(figures(&g.figures)),
            })
            .collect(),
    }
}

/// `GetUsage` as `GET /v1/usage`'s query string.
pub fn usage_query(r: &pb::GetUsageRequest) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [("from", &r.from), ("to", &r.to), ("group_by", &r.group_by)] {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

/// `ListInstances` as `GET /v1/instances`' query string.
pub fn list_query(r: &pb::ListInstancesRequest) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(n) = r.limit {
        q.append_pair("limit", &n.to_string());
    }
    if let Some(cur) = &r.cursor {
        q.append_pair("cursor", cur);
    }
    q.finish()
}

/// `StreamEvents` as `GET /v1/events`' query string (the same checks name the same fields).
pub fn feed_query(r: &pb::StreamEventsRequest) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(a) = r.after {
        q.append_pair("after", &a.to_string());
    }
    if !r.types.is_empty() {
        q.append_pair("types", &r.types.join(","));
    }
    if let Some(i) = &r.instance {
        q.append_pair("instance", i);
    }
    q.finish()
}

pub fn event(e: &Event) -> pb::Event {
    pb::Event {
        id: e.seq,
        r#type: e.kind.clone(),
        at: timestamp(&e.at),
        instance_id: e.instance_id.clone(),
        data: match &e.data {
            Value::Object(m) => Some(structure(m)),
            _ => None,
        },
    }
}

fn structure(m: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
    }
}

fn value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(structure(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A `RentSpec` as REST's `spec` object (prices checked as decimals, named `spec.<field>`).
fn spec(s: &pb::RentSpec) -> Result<Value> {
    let mut m = Map::new();
    let mut add = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    add("gpu", s.gpu.as_ref().map(|v| json!(v)));
    add("min_gpus", s.min_gpus.map(|v| json!(v)));
    add("max_gpus", s.max_gpus.map(|v| json!(v)));
    add("min_gpu_memory_gb", s.min_gpu_memory_gb.map(|v| json!(v)));
    for (k, v) in [
        ("max_price_per_hour", &s.max_price_per_hour),
        ("max_price_per_gpu", &s.max_price_per_gpu),
    ] {
        add(
            k,
            v.as_deref()
                .map(|t| decimal(&format!("spec.{k}"), t))
                .transpose()?,
        );
    }
    add(
        "providers",
        (!s.providers.is_empty()).then(|| json!(s.providers)),
    );
    add(
        "countries",
        (!s.countries.is_empty()).then(|| json!(s.countries)),
    );
    add("interruptible", s.interruptible.then_some(json!(true)));
    add("min_reliability", s.min_reliability.map(|v| json!(v)));
    add("min_direct_ports", s.min_direct_ports.map(|v| json!(v)));
    Ok(Value::Object(m))
}

/// A `CreateWatch` as REST's body (`NewWatch`).
pub fn watch_body(r: &pb::CreateWatchRequest) -> Result<Vec<u8>> {
    let spec = match &r.spec {
        Some(s) => spec(s)?,
        None => json!({}),
    };
    let price = decimal("max_price_per_gpu", &r.max_price_per_gpu)?;
    Ok(json!({"spec": spec, "max_price_per_gpu": price})
        .to_string()
        .into_bytes())
}

/// A watch's view as its message.
pub fn watch(v: &crate::service::watches::WatchView) -> pb::Watch {
    pb::Watch {
        id: v.id.clone(),
        spec: v.spec.as_object().map(structure),
        max_price_per_gpu: usd(v.max_price_per_gpu),
        matches: v.matches,
        last_matched_at: v.last_matched_at.as_deref().and_then(timestamp),
        created_at: v.created_at.as_deref().and_then(timestamp),
    }
}

/// A `RunCommand` as REST's body (`NewCommand`), so the service reads and hashes one form.
pub fn command_body(r: &pb::RunCommandRequest) -> Vec<u8> {
    let mut b = serde_json::json!({"kind": r.kind, "argv": r.argv});
    if let Some(t) = r.timeout_s {
        b["timeout_s"] = t.into();
    }
    b.to_string().into_bytes()
}

/// A `ListCommands`'s page arguments, as REST's query.
pub fn commands_page(r: &pb::ListCommandsRequest) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(b) = &r.before {
        m.insert("before".into(), b.clone().into());
    }
    if let Some(l) = r.limit {
        m.insert("limit".into(), l.into());
    }
    m
}

/// A command's view as its message.
pub fn command(v: &crate::service::commands::CommandView) -> pb::Command {
    let t = |x: &Option<String>| x.as_deref().and_then(timestamp);
    pb::Command {
        id: v.id.clone(),
        instance_id: v.instance_id.clone(),
        kind: v.kind.clone(),
        argv: v.argv.clone(),
        timeout_s: v.timeout_s,
        status: v.status.clone(),
        exit_code: v.exit_code,
        error: v.error.clone(),
        output: v.output.clone(),
        output_bytes: v.output_bytes,
        output_truncated: v.output_truncated,
        key: v.key.clone(),
        created_at: t(&v.created_at),
        expires_at: t(&v.expires_at),
        sent_at: t(&v.sent_at),
        started_at: t(&v.started_at),
        finished_at: t(&v.finished_at),
    }
}

/// An SSH key's view as its message.
pub fn ssh_key(v: &crate::service::sshkeys::SshKeyView) -> pb::SshKey {
    pb::SshKey {
        id: v.id.clone(),
        name: v.name.clone(),
        public_key: v.public_key.clone(),
        fingerprint: v.fingerprint.clone(),
        created_at: v.created_at.as_deref().and_then(timestamp),
    }
}

/// A provider's volume offer as its message.
pub fn volume_offer(o: &crate::providers::VolumeOffer) -> pb::VolumeOffer {
    pb::VolumeOffer {
        id: o.id.clone(),
        provider: o.provider.as_str().to_owned(),
        machine_id: o.machine_id.clone(),
        free_gb: o.free_gb,
        price_per_gb_month: usd(o.price_per_gb_month),
        country: o.country.clone(),
        reliability: o.reliability,
    }
}

/// A volume's view as its message.
pub fn volume(v: &crate::service::volumes::VolumeView) -> pb::Volume {
    let t = |x: &Option<String>| x.as_deref().and_then(timestamp);
    pb::Volume {
        id: v.id.clone(),
        provider: v.provider.clone(),
        provider_volume_id: v.provider_volume_id.clone(),
        offer_id: v.offer_id.clone(),
        machine_id: v.machine_id.clone(),
        name: v.name.clone(),
        size_gb: v.size_gb,
        price_per_gb_month: usd(v.price_per_gb_month),
        price_per_hour: usd(v.price_per_hour),
        status: v.status.clone(),
        failure: v.failure.clone(),
        created_at: t(&v.created_at),
        deleted_at: t(&v.deleted_at),
        attached_to: v.attached_to.clone(),
    }
}

/// A webhook's view as its message.
pub fn webhook(v: &crate::service::webhooks::WebhookView) -> pb::Webhook {
    pb::Webhook {
        id: v.id.clone(),
        url: v.url.clone(),
        types: v.types.clone(),
        enabled: v.enabled,
        disabled_reason: v.disabled_reason.clone(),
        consecutive_failures: v.consecutive_failures,
        created_at: v.created_at.as_deref().and_then(timestamp),
        secret: v.secret.clone(),
    }
}

/// A webhook delivery's view as its message.
pub fn delivery(v: &crate::service::webhooks::DeliveryView) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        id: v.id,
        event_id: v.event_id,
        event_type: v.event_type.clone(),
        state: v.state.clone(),
        attempts: v.attempts,
        next_attempt_at: v.next_attempt_at.as_deref().and_then(timestamp),
        last_status: v.last_status,
        last_error: v.last_error.clone(),
        attempt_log: Some(value(&v.attempt_log)),
        created_at: v.created_at.as_deref().and_then(timestamp),
    }
}

/// A `ListWebhookDeliveries`'s page arguments, as REST's query.
pub fn deliveries_page(r: &pb::ListWebhookDeliveriesRequest) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(l) = r.limit {
        m.insert("limit".into(), l.into());
    }
    if let Some(b) = r.before {
        m.insert("before".into(), b.into());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_checked_and_kept_as_written() {
        assert_eq!(decimal("x", "1.25").unwrap(), json!(1.25));
        assert_eq!(decimal("x", "2").unwrap(), json!(2));
        for bad in ["", "1e3", "-1", ".5", "5.", "1.2.3", "NaN", "0x10"] {
            let e = decimal("max_price", bad).unwrap_err();
            assert!(e.message.contains("max_price"), "{bad}: {e}");
        }
        assert_eq!(usd(0.452), "0.452");
    }

    #[test]
    fn a_rent_request_is_the_rest_body() {
        let r = pb::RentInstanceRequest {
            offer_id: "vastai:1".into(),
            image: "ubuntu".into(),
            disk_gb: 20,
            max_price_per_hour: Some("1.5".into()),
            ports: vec![pb::PortSpec {
                port: 8080,
                protocol: None,
                allow_from: vec![],
            }],
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&rent_body(&r).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"offer_id": "vastai:1", "image": "ubuntu", "disk_gb": 20,
                   "max_price_per_hour": 1.5, "ports": [{"port": 8080}]})
        );
    }
}
