//! The sandbox io.net enterprise VMaaS API (docs/providers.md, "io.net").
//!
//! Every request is first validated against io.net's published definitions
//! (`openapi/providers/ionet-vmaas.json`, see `schema`): a request they refuse gets FastAPI's 422
//! `{"detail": [{loc, msg, type}]}` as io.net answers it (`page=0` on a deployment's VMs, a field
//! the deploy body does not have, a duration of 0, ...). Answers follow the published response
//! schemas (tests/ionet_conformance.rs checks both with a JSON Schema validator).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use hyper::Method;
use serde_json::{Value, json};

use crate::Args;
use crate::faults::Rng;
use crate::inventory;
use crate::server::{Answer, Api, Call};

const VMAAS: &str = "/enterprise/v1/io-cloud/vmaas";
/// io.net's fee and the currency conversion fee on a price quote, percent (the sandbox's figures).
const IONET_FEE_PERCENT: f64 = 2.5;
const CONVERSION_FEE_PERCENT: f64 = 0.5;

struct Deployment {
    id: String,
    name: String,
    hardware: Value,
    gpus_per_vm: u64,
    location: String,
    /// The configuration's price (USD/h), as deployed.
    price: f64,
    /// `{name: public key}` from the deploy body.
    ssh_keys: Value,
    /// `network_services` from the deploy body: `{name: {port, protocol, whitelist}}`.
    services: serde_json::Map<String, Value>,
    duration_hours: u64,
    created: Instant,
    created_at: String,
    destroyed: Option<Instant>,
}

struct World {
    hardware: Vec<Value>,
    deployments: Vec<Deployment>,
    rng: Rng,
}

pub struct Ionet {
    key: String,
    defs: crate::schema::Definitions,
    provision: Duration,
    deploy_returns_id: bool,
    world: Mutex<World>,
}

/// (discount, io.net fee, conversion fee, total) of `hours` of a configuration listed at
/// `price_per_hour`, for `replicas` VMs: what the price quote says and the deployment is charged.
fn priced(price_per_hour: f64, hours: f64, replicas: f64) -> (f64, f64, f64, f64) {
    let list = price_per_hour * hours * replicas;
    let discount = if hours >= 24.0 { list * 0.05 } else { 0.0 };
    let fee = (list - discount) * IONET_FEE_PERCENT / 100.0;
    let conversion = (list - discount) * CONVERSION_FEE_PERCENT / 100.0;
    (
        discount,
        fee,
        conversion,
        list - discount + fee + conversion,
    )
}

fn detail(status: u16, msg: &str) -> Answer {
    Answer::json(status, json!({"detail": msg}))
}

/// FastAPI's validation error shape.
fn invalid(loc: &[&str], msg: &str, kind: &str) -> Answer {
    Answer::json(
        422,
        json!({"detail": [{"loc": loc, "msg": msg, "type": kind}]}),
    )
}

impl Ionet {
    pub fn new(args: &Args) -> Ionet {
        Ionet {
            key: args.ionet_key.clone(),
            defs: crate::schema::Definitions::new(include_str!(
                "../../../openapi/providers/ionet-vmaas.json"
            )),
            provision: args.provision_time,
            deploy_returns_id: args.ionet_deploy_response != "empty",
            world: Mutex::new(World {
                hardware: inventory::ionet_hardware(args.seed, args.ionet_hardware),
                deployments: Vec::new(),
                // deployment ids differ from one start to the next (a daemon's ledger outlives
                // a sandbox: the demo run twice must not meet its old ids again)
                rng: Rng::new(args.seed ^ 0xd3_91 ^ super::faults::start_entropy()),
            }),
        }
    }

    fn status(&self, d: &Deployment) -> &'static str {
        match d.destroyed {
            Some(t) if t.elapsed() < self.provision / 2 => "termination requested",
            Some(_) => "destroyed",
            None if d.created.elapsed() < self.provision => "deployment requested",
            None => "running",
        }
    }

    /// What the deployment costs in the end: all of its paid time while it runs; once destroyed,
    /// the time it ran, but never less than the first hour (io.net refunds the rest pro rata and
    /// never the first hour: destroy-deployment).
    fn charged(&self, d: &Deployment) -> f64 {
        let paid = priced(d.price, d.duration_hours as f64, 1.0).3;
        match d.destroyed {
            None => paid,
            Some(at) => {
                let used_h = at.duration_since(d.created).as_secs_f64() / 3600.0;
                paid * used_h.max(1.0).min(d.duration_hours as f64) / d.duration_hours as f64
            }
        }
    }

    fn details(&self, d: &Deployment) -> Value {
        let h = &d.hardware;
        json!({
            "id": d.id,
            "status": self.status(d),
            "name": d.name,
            "created_at": d.created_at,
            "started_at": if self.status(d) == "running" { json!(d.created_at) } else { Value::Null },
            "finished_at": Value::Null,
            "amount_paid": inventory::round(priced(d.price, d.duration_hours as f64, 1.0).3, 4),
            "completed_percent": 0,
            "total_gpus": d.gpus_per_vm,
            "gpus_per_vm": d.gpus_per_vm,
            "total_vms": 1,
            "hardware_name": h["name"],
            "hardware_id": h["deploy_id"],
            "locations": [{"id": 1, "iso2": d.location, "name": d.location}],
            "brand_name": "NVIDIA",
            "compute_minutes_served": 0,
            "compute_minutes_remaining": d.duration_hours * 60,
            "ssh_keys": d.ssh_keys,
            "github_ids": [],
        })
    }

    /// `POST .../deploy`, its body already valid against the published definition.
    fn deploy(&self, call: &Call) -> Answer {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        let name = body["resource_private_name"].as_str().unwrap_or_default();
        let hours = body["duration_hours"].as_u64().unwrap_or(1);
        let gpus = body["gpus_per_vm"].as_u64().unwrap_or(1);
        let hw_id = &body["hardware_id"];
        let Some(loc) = body["location_ids"].get(0).map(|l| {
            l.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| l.to_string())
        }) else {
            return detail(400, "location_ids or node_pool_id is required");
        };
        let ssh_keys = match &body["ssh_keys"] {
            Value::Object(m) => json!(m),
            _ => json!({}),
        };
        let mut world = self.world.lock().unwrap();
        let same =
            |v: &Value| v.to_string().trim_matches('"') == hw_id.to_string().trim_matches('"');
        // one hardware type is listed per card count and location: the configuration deployed
        // (and billed) is the one with these cards here
        let listed: Vec<&Value> = world
            .hardware
            .iter()
            .filter(|h| same(&h["deploy_id"]))
            .collect();
        if listed.is_empty() {
            return detail(400, "hardware not available");
        }
        let Some(hw) = listed
            .iter()
            .find(|h| {
                h["num_cards"].as_u64() == Some(gpus)
                    && (h["location"].is_null() || h["location"].as_str() == Some(loc.as_str()))
            })
            .map(|h| (*h).clone())
        else {
            return detail(
                400,
                &format!("hardware not available with {gpus} GPUs per VM in {loc}"),
            );
        };
        if hw["sold_out"] == json!(true) {
            return detail(400, "hardware sold out");
        }
        if world
            .deployments
            .iter()
            .any(|d| d.name == name && d.destroyed.is_none())
        {
            return detail(409, "a deployment with this name exists");
        }
        let id = world.rng.uuid();
        world.deployments.push(Deployment {
            id: id.clone(),
            name: name.to_owned(),
            price: hw["price"].as_f64().unwrap_or(0.0),
            hardware: hw,
            gpus_per_vm: gpus,
            ssh_keys,
            services: body["network_services"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            location: loc,
            duration_hours: hours,
            created: Instant::now(),
            created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            destroyed: None,
        });
        if self.deploy_returns_id {
            Answer::json(200, json!({"status": "success", "deployment_id": id}))
        } else {
            Answer::json(200, json!({}))
        }
    }

    fn deployment_id<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.strip_prefix(VMAAS)?
            .strip_prefix("/deployment/")?
            .split('/')
            .next()
    }
}

impl Api for Ionet {
    fn op(&self, method: &Method, path: &str) -> &'static str {
        // the published definition names the operation when it has one
        if let Some(def) = self.defs.operation(method.as_str(), path) {
            const KNOWN: &[&str] = &[
                "hardware",
                "available",
                "price",
                "deploy",
                "list",
                "show",
                "destroy",
                "vms",
                "extend",
            ];
            if let Some(k) = KNOWN.iter().find(|k| **k == def.id) {
                return k;
            }
        }
        let Some(p) = path.strip_prefix(VMAAS) else {
            return "unknown";
        };
        match *method {
            Method::GET if p == "/hardware" => "hardware",
            Method::GET if p == "/hardware/max-gpus-per-vm" => "max_gpus",
            Method::GET if p == "/available-vms" => "available",
            Method::GET if p == "/price" => "price",
            Method::POST if p == "/deploy" => "deploy",
            Method::GET if p == "/deployments" => "list",
            Method::GET if p.starts_with("/deployment/") && p.ends_with("/vms") => "vms",
            Method::POST if p.starts_with("/deployment/") && p.ends_with("/extend") => "extend",
            Method::GET if p.starts_with("/deployment/") => "show",
            Method::DELETE if p.starts_with("/deployment/") => "destroy",
            _ => "unknown",
        }
    }

    fn handle(&self, op: &'static str, call: &Call) -> Answer {
        match call.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            None => return detail(401, "Not authenticated"),
            Some(k) if k != self.key => return detail(403, "Invalid API key"),
            Some(_) => {}
        }
        if let Some(def) = self.defs.operation(call.method.as_str(), &call.path) {
            let query = call.query_pairs();
            let errors = self.defs.check(&def, &query, &call.body);
            if !errors.is_empty() {
                return Answer::json(422, json!({ "detail": errors }));
            }
        }
        match op {
            "hardware" => {
                let world = self.world.lock().unwrap();
                Answer::json(200, json!({"data": {"hardware": world.hardware}}))
            }
            "max_gpus" => {
                let world = self.world.lock().unwrap();
                let hw: Vec<Value> = world
                    .hardware
                    .iter()
                    .map(|h| json!({"max_gpus_per_vm": h["num_cards"], "available": if h["sold_out"] == json!(true) {0} else {4}, "hardware_id": h["deploy_id"], "hardware_name": h["name"], "brand_name": "NVIDIA"}))
                    .collect();
                Answer::json(200, json!({"data": {"hardware": hw, "total": hw.len()}}))
            }
            // where a configuration can go (its query already valid): the first place has none
            "available" => Answer::json(
                200,
                json!({"data": [
                    {"id": 2, "iso2": "DE", "name": "Germany", "available_replicas": 0},
                    {"id": 1, "iso2": "US", "name": "United States", "available_replicas": 4}]}),
            ),
            // the total for the asked hours with io.net's fees (get-deployment-price): what a
            // deployment of these terms is charged, not the list price times the hours
            "price" => {
                let world = self.world.lock().unwrap();
                // the configuration priced: hardware, cards and place, as a deploy takes them
                let place: Option<String> = call
                    .param("location_ids")
                    .and_then(|l| serde_json::from_str::<Vec<Value>>(&l).ok())
                    .and_then(|l| l.first().cloned())
                    .map(|l| {
                        l.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| l.to_string())
                    });
                let cards = call
                    .param("gpus_per_vm")
                    .and_then(|g| g.parse::<u64>().ok());
                let hw = call.param("hardware_id").and_then(|id| {
                    world.hardware.iter().find(|h| {
                        h["deploy_id"].to_string().trim_matches('"') == id
                            && h["num_cards"].as_u64() == cards
                            && (h["location"].is_null()
                                || h["location"].as_str() == place.as_deref())
                    })
                });
                let Some(hw) = hw else {
                    return detail(404, "Not Found");
                };
                let num = |k: &str| {
                    call.param(k)
                        .and_then(|h| h.parse::<f64>().ok())
                        .unwrap_or(1.0)
                };
                let (hours, replicas) = (num("duration_hours"), num("replica_count"));
                let (discount, fee, conversion, total) =
                    priced(hw["price"].as_f64().unwrap_or(0.0), hours, replicas);
                let r = |x: f64| inventory::round(x, 4);
                Answer::json(
                    200,
                    json!({"data": {"replica_count": replicas as u64, "gpus_per_vm": hw["num_cards"],
                        "available_replica_count": [4], "discount": r(discount),
                        "ionet_fee": r(fee), "ionet_fee_percent": IONET_FEE_PERCENT,
                        "currency_conversion_fee": r(conversion),
                        "currency_conversion_fee_percent": CONVERSION_FEE_PERCENT,
                        "total_cost_usdc": r(total)}}),
                )
            }
            "deploy" => self.deploy(call),
            "list" => {
                let page = call
                    .param("page")
                    .and_then(|p| p.parse::<usize>().ok())
                    .unwrap_or(0);
                let size = call
                    .param("page_size")
                    .and_then(|p| p.parse::<usize>().ok())
                    .unwrap_or(10)
                    .clamp(1, 100);
                let status = call.param("status");
                let world = self.world.lock().unwrap();
                let all: Vec<Value> = world
                    .deployments
                    .iter()
                    .rev()
                    .filter(|d| status.as_deref().is_none_or(|s| s == self.status(d)))
                    .map(|d| json!({"id": d.id, "status": self.status(d), "name": d.name, "completed_percent": 0, "hardware_quantity": 1, "brand_name": "NVIDIA", "hardware_name": d.hardware["name"], "compute_minutes_served": 0, "compute_minutes_remaining": d.duration_hours * 60}))
                    .collect();
                let total = all.len();
                let items: Vec<Value> = all.into_iter().skip(page * size).take(size).collect();
                Answer::json(
                    200,
                    json!({"data": {"deployments": items, "total": total, "statuses": ["running", "completed", "failed", "deployment requested", "termination requested", "destroyed"]}}),
                )
            }
            "show" | "vms" | "extend" | "destroy" => {
                let mut world = self.world.lock().unwrap();
                let Some(id) = self.deployment_id(&call.path) else {
                    return detail(404, "Not Found");
                };
                let Some(d) = world.deployments.iter_mut().find(|d| d.id == id) else {
                    return detail(404, "Not Found");
                };
                match op {
                    "show" => Answer::json(200, json!({"data": self.details(d)})),
                    "vms" => {
                        let running = self.status(d) == "running";
                        // each service asked for is published on a port of the VM's address
                        let mut services = serde_json::Map::new();
                        services.insert("ssh".into(), json!({"port": 22, "protocol": "tcp", "whitelist": ["0.0.0.0/0"], "public_port": 30022, "public_ip": "198.51.100.9", "srv_record": format!("_ssh._tcp.{}.vm.example.net", &d.id[..8])}));
                        for (i, (name, s)) in d.services.iter().enumerate() {
                            let mut s = s.clone();
                            s["public_port"] = json!(31000 + i);
                            s["public_ip"] = json!("198.51.100.9");
                            services.insert(name.clone(), s);
                        }
                        let workers = if running {
                            vec![json!({
                                "device_id": d.id, "vm_id": format!("vm-{}", &d.id[..8]),
                                "hardware": d.hardware["name"], "brand_name": "NVIDIA",
                                "created_at": d.created_at, "uptime_percent": 100, "gpus_per_vm": d.gpus_per_vm,
                                "status": "running", "vm_events": [],
                                "network_services": services,
                                "ssh_access": "ubuntu@198.51.100.9 -p 30022",
                                "is_external": false
                            })]
                        } else {
                            vec![]
                        };
                        Answer::json(
                            200,
                            json!({"data": {"total": workers.len(), "workers": workers}}),
                        )
                    }
                    "extend" => {
                        let hours = serde_json::from_slice::<Value>(&call.body)
                            .ok()
                            .and_then(|b| b["duration_hours"].as_u64())
                            .filter(|h| *h > 0);
                        let Some(h) = hours else {
                            return invalid(
                                &["body", "duration_hours"],
                                "Input should be greater than 0",
                                "greater_than",
                            );
                        };
                        d.duration_hours += h;
                        Answer::json(200, json!({"data": self.details(d)}))
                    }
                    _ => {
                        if d.destroyed.is_none() {
                            d.destroyed = Some(Instant::now());
                        }
                        Answer::json(200, json!({}))
                    }
                }
            }
            _ => detail(404, "Not Found"),
        }
    }

    fn rate_limited(&self) -> Answer {
        detail(429, "Too Many Requests")
    }

    fn server_error(&self, status: u16) -> Answer {
        detail(status, "Internal Server Error")
    }

    fn control(&self, call: &Call) -> Option<Answer> {
        if call.method != Method::GET || call.path != "/_sandbox/ionet/deployments" {
            return None;
        }
        let world = self.world.lock().unwrap();
        let all: Vec<Value> = world
            .deployments
            .iter()
            .map(|d| {
                json!({"id": d.id, "name": d.name, "status": self.status(d),
                       "hardware_id": d.hardware["deploy_id"], "gpus_per_vm": d.gpus_per_vm,
                       "location": d.location, "price_per_hour": d.price,
                       "duration_hours": d.duration_hours,
                       "amount_paid": inventory::round(priced(d.price, d.duration_hours as f64, 1.0).3, 4),
                       "charged_usd": self.charged(d),
                       "ssh_keys": d.ssh_keys})
            })
            .collect();
        Some(Answer::json(200, json!({"deployments": all})))
    }

    fn reprice(&self, factor: f64) {
        for h in self.world.lock().unwrap().hardware.iter_mut() {
            let v = h["price"].as_f64().unwrap_or(0.0) * factor;
            h["price"] = json!(inventory::round(v, 4));
        }
    }
}
