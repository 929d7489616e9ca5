//! The sandbox Vast.ai API (providers.md §1.8).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::Method;
use hyper::header::AUTHORIZATION;
use serde_json::{Map, Value, json};

use crate::Args;
use crate::inventory;
use crate::server::{Answer, Api, Call};

struct Instance {
    id: u64,
    offer: Value,
    label: Option<String>,
    image: String,
    disk: f64,
    created: Instant,
    created_unix: f64,
}

struct World {
    offers: Vec<Value>,
    instances: BTreeMap<u64, Instance>,
    next_id: u64,
}

pub struct Vast {
    refuse_after_create: bool,
    key: String,
    provision: Duration,
    world: Mutex<World>,
}

impl Vast {
    pub fn new(args: &Args) -> Vast {
        Vast {
            refuse_after_create: args.vast_refuse_after_create,
            key: args.vast_key.clone(),
            provision: args.provision_time,
            world: Mutex::new(World {
                offers: inventory::vast_offers(args.seed, args.vast_offers),
                instances: BTreeMap::new(),
                next_id: 30_000_000,
            }),
        }
    }

    fn authorized(&self, call: &Call) -> bool {
        let bearer = call
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        bearer == Some(self.key.as_str())
            || call.param("api_key").as_deref() == Some(self.key.as_str())
    }

    fn instance_json(&self, i: &Instance) -> Value {
        let age = i.created.elapsed();
        let status = if age < self.provision / 2 {
            Value::Null
        } else if age < self.provision {
            json!("loading")
        } else {
            json!("running")
        };
        let running = status == json!("running");
        let o = &i.offer;
        let storage = o["storage_cost"].as_f64().unwrap_or(0.0) * i.disk / 720.0;
        json!({
            "id": i.id,
            "machine_id": o["machine_id"],
            "host_id": o["host_id"],
            "bundle_id": o["bundle_id"],
            "label": i.label,
            "actual_status": status,
            "intended_status": "running",
            "cur_state": "running",
            "next_state": "running",
            "status_msg": if running { "success, running" } else { "pulling image" },
            "image_uuid": i.image,
            "num_gpus": o["num_gpus"],
            "gpu_name": o["gpu_name"],
            "gpu_ram": o["gpu_ram"],
            "gpu_totalram": o["gpu_total_ram"],
            "cpu_cores_effective": o["cpu_cores_effective"],
            "disk_space": i.disk,
            "dph_base": o["dph_base"],
            "dph_total": o["dph_base"].as_f64().unwrap_or(0.0) + storage,
            "storage_cost": o["storage_cost"],
            "is_bid": false,
            "start_date": i.created_unix,
            "ssh_host": if running { json!(format!("ssh{}.vast.ai", i.id % 10)) } else { Value::Null },
            "ssh_port": if running { json!(20_000 + i.id % 10_000) } else { Value::Null },
            "public_ipaddr": if running { json!("203.0.113.7\n") } else { Value::Null },
            "ports": if running { json!({"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": (41_000 + i.id % 1000).to_string()}]}) } else { json!({}) },
            "direct_port_start": -1,
            "direct_port_end": -1,
            "geolocation": o["geolocation"],
        })
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn trim(path: &str) -> &str {
    path.strip_suffix('/').unwrap_or(path)
}

fn id_in(path: &str, prefix: &str) -> Option<u64> {
    trim(path).strip_prefix(prefix)?.parse().ok()
}

fn fail(status: u16, error: &str, msg: &str) -> Answer {
    Answer::json(
        status,
        json!({"success": false, "error": error, "msg": msg}),
    )
}

/// Whether an offer passes one `{op: value}` filter on `field`.
fn passes(offer: &Map<String, Value>, field: &str, cond: &Value) -> bool {
    let Some(cond) = cond.as_object() else {
        return true;
    };
    let have = offer.get(field).unwrap_or(&Value::Null);
    cond.iter().all(|(op, want)| {
        let cmp = |f: fn(f64, f64) -> bool| match (have.as_f64(), want.as_f64()) {
            (Some(a), Some(b)) => f(a, b),
            _ => false,
        };
        match op.as_str() {
            "eq" => have == want,
            "neq" => have != want,
            "gt" => cmp(|a, b| a > b),
            "gte" => cmp(|a, b| a >= b),
            "lt" => cmp(|a, b| a < b),
            "lte" => cmp(|a, b| a <= b),
            "in" => want.as_array().is_some_and(|l| l.contains(have)),
            "notin" => want.as_array().is_none_or(|l| !l.contains(have)),
            _ => true,
        }
    })
}

impl Vast {
    fn search(&self, call: &Call) -> Answer {
        let q: Value = if call.method == Method::GET {
            match call.param("q").map(|s| serde_json::from_str(&s)) {
                Some(Ok(v)) => v,
                _ => return fail(400, "invalid_args", "q must be a JSON object"),
            }
        } else {
            match serde_json::from_slice(&call.body) {
                Ok(v) => v,
                Err(_) => return fail(400, "invalid_args", "body must be a JSON object"),
            }
        };
        let Some(q) = q.as_object() else {
            return fail(400, "invalid_args", "query must be an object");
        };
        let alloc = q
            .get("allocated_storage")
            .and_then(Value::as_f64)
            .unwrap_or(5.0);
        let limit = q.get("limit").and_then(Value::as_u64).unwrap_or(64) as usize;
        let world = self.world.lock().unwrap();
        let rented: Vec<u64> = world
            .instances
            .values()
            .filter_map(|i| i.offer["id"].as_u64())
            .collect();
        let mut out: Vec<Value> = world
            .offers
            .iter()
            .map(|o| {
                let mut o = o.clone();
                let storage = o["storage_cost"].as_f64().unwrap_or(0.0) * alloc / 720.0;
                let base = o["dph_base"].as_f64().unwrap_or(0.0);
                o["dph_total"] = json!(inventory::round(base + storage, 6));
                o["storage_total_cost"] = json!(inventory::round(storage, 6));
                if rented.contains(&o["id"].as_u64().unwrap_or(0)) {
                    o["rented"] = json!(true);
                    o["rentable"] = json!(false);
                }
                o
            })
            .filter(|o| {
                let m = o.as_object().unwrap();
                q.iter().all(|(k, v)| {
                    matches!(
                        k.as_str(),
                        "order" | "type" | "limit" | "allocated_storage" | "disable_bundling"
                    ) || passes(m, k, v)
                })
            })
            .collect();
        if let Some(order) = q.get("order").and_then(Value::as_array) {
            for pair in order.iter().rev() {
                let (Some(field), dir) = (
                    pair.get(0).and_then(Value::as_str),
                    pair.get(1).and_then(Value::as_str),
                ) else {
                    continue;
                };
                out.sort_by(|a, b| {
                    let (x, y) = (
                        a[field].as_f64().unwrap_or(0.0),
                        b[field].as_f64().unwrap_or(0.0),
                    );
                    let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
                    if dir == Some("desc") { o.reverse() } else { o }
                });
            }
        }
        out.truncate(limit);
        Answer::json(200, json!({"offers": out}))
    }

    fn create(&self, call: &Call) -> Answer {
        let Some(ask) = id_in(&call.path, "/api/v0/asks/") else {
            return fail(404, "no_such_ask", "unknown ask");
        };
        let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        let Some(image) = body
            .get("image")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return fail(400, "invalid_args", "image is required");
        };
        let disk = body.get("disk").and_then(Value::as_f64).unwrap_or(8.0);
        if disk < 8.0 {
            return fail(400, "invalid_args", "disk must be at least 8 GB");
        }
        let mut world = self.world.lock().unwrap();
        let taken = world
            .instances
            .values()
            .any(|i| i.offer["id"].as_u64() == Some(ask));
        let Some(offer) = world
            .offers
            .iter()
            .find(|o| o["id"].as_u64() == Some(ask))
            .cloned()
        else {
            return fail(
                404,
                "no_such_ask",
                &format!("error 404/3603: ask {ask} not found"),
            );
        };
        if taken {
            return fail(
                404,
                "no_such_ask",
                &format!("error 404/3603: ask {ask} is no longer available"),
            );
        }
        world.next_id += 1;
        let id = world.next_id;
        world.instances.insert(
            id,
            Instance {
                id,
                offer,
                label: body.get("label").and_then(Value::as_str).map(str::to_owned),
                image: image.to_owned(),
                disk,
                created: Instant::now(),
                created_unix: unix_now(),
            },
        );
        if self.refuse_after_create {
            return Answer::json(
                400,
                json!({"success": false, "error": "invalid_args", "msg": "bid too low; instance left stopped", "new_contract": id}),
            );
        }
        Answer::json(
            200,
            json!({"success": true, "new_contract": id, "instance_api_key": format!("ik-{id}")}),
        )
    }

    fn list(&self, call: &Call) -> Answer {
        let limit = call
            .param("limit")
            .and_then(|l| l.parse::<i64>().ok())
            .unwrap_or(25);
        let limit = if limit <= 0 { 5 } else { limit.min(25) } as usize;
        let after = call
            .param("after_token")
            .map(|t| t.trim_matches('"').to_owned())
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
        let world = self.world.lock().unwrap();
        let page: Vec<&Instance> = world
            .instances
            .range(after + 1..)
            .map(|(_, i)| i)
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        let page = &page[..page.len().min(limit)];
        let next = if more {
            page.last().map(|i| json!(i.id.to_string()))
        } else {
            None
        };
        let mut labels: BTreeMap<String, u64> = BTreeMap::new();
        for i in world.instances.values() {
            if let Some(l) = &i.label {
                *labels.entry(l.clone()).or_default() += 1;
            }
        }
        Answer::json(
            200,
            json!({
                "success": true,
                "instances_found": page.len(),
                "total_instances": world.instances.len(),
                "label_counts": labels,
                "next_token": next.unwrap_or(Value::Null),
                "instances": page.iter().map(|i| self.instance_json(i)).collect::<Vec<_>>(),
            }),
        )
    }
}

impl Api for Vast {
    fn op(&self, method: &Method, path: &str) -> &'static str {
        let p = trim(path);
        match *method {
            Method::POST if p == "/api/v0/bundles" => "search",
            Method::GET if p == "/api/v0/bundles" => "search",
            Method::PUT if p.starts_with("/api/v0/asks/") => "create",
            Method::GET if p == "/api/v1/instances" => "list",
            Method::GET if p == "/api/v0/instances" => "list_v0",
            Method::GET if p.starts_with("/api/v0/instances/") => "show",
            Method::DELETE if p.starts_with("/api/v0/instances/") => "destroy",
            Method::GET if p == "/api/v0/users/current" => "user",
            _ => "unknown",
        }
    }

    fn handle(&self, op: &'static str, call: &Call) -> Answer {
        if !matches!(op, "search" | "unknown") && !self.authorized(call) {
            return fail(401, "auth_error", "Invalid user key");
        }
        match op {
            "search" => self.search(call),
            "create" => self.create(call),
            "list" => self.list(call),
            "list_v0" => fail(410, "deprecated", "Use /api/v1/instances/ instead"),
            "show" => {
                let world = self.world.lock().unwrap();
                let inst =
                    id_in(&call.path, "/api/v0/instances/").and_then(|id| world.instances.get(&id));
                Answer::json(
                    200,
                    json!({"instances": inst.map(|i| self.instance_json(i))}),
                )
            }
            "destroy" => {
                let mut world = self.world.lock().unwrap();
                match id_in(&call.path, "/api/v0/instances/")
                    .and_then(|id| world.instances.remove(&id))
                {
                    Some(_) => Answer::json(200, json!({"success": true})),
                    None => fail(404, "no_such_instance", "error 404/3603: no such instance"),
                }
            }
            "user" => Answer::json(
                200,
                json!({"id": 4242, "email": "sandbox@example.com", "balance": 0.0, "credit": 1000.0, "username": "sandbox"}),
            ),
            _ => fail(404, "not_found", "error 404/3603: no such route"),
        }
    }

    fn rate_limited(&self) -> Answer {
        Answer::text(429, "API requests too frequent endpoint threshold=2.0")
    }

    fn server_error(&self, status: u16) -> Answer {
        fail(
            status,
            "server_error",
            "error 500/0001: internal error, try again",
        )
    }

    fn reprice(&self, factor: f64) {
        for o in self.world.lock().unwrap().offers.iter_mut() {
            for k in ["dph_base", "min_bid"] {
                let v = o[k].as_f64().unwrap_or(0.0) * factor;
                o[k] = json!(inventory::round(v, 4));
            }
        }
    }
}
