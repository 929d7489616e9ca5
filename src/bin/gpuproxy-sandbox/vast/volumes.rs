//! The sandbox's Vast volumes, as the official client uses them (`vastai/api/storage.py`,
//! `vastai/api/offers.py` `search_volumes`, `build_volume_info` in `vastai/api/instances.py`):
//! - `POST /api/v0/volumes/search/` lists volume offers: one per machine of the offer inventory
//!   (`id` = 800000 + machine id), its free disk and the machine's `storage_cost` ($/GB-month),
//!   filtered and ordered like offers;
//! - `PUT /api/v0/volumes/ {"size": int, "id": <volume offer>, "name"?}` creates a volume on that
//!   machine; the answer names no id (its shape is unpublished: the client prints it), so a
//!   client finds its volume by the name it gave;
//! - `GET /api/v0/volumes?owner=me&type=all_volume` → `{"volumes": [...]}` with the fields the
//!   client's `show volumes` prints (`id`, `label`, `disk_space`, `status`, `machine_id`,
//!   `start_date`, `instances`, ...);
//! - `DELETE /api/v0/volumes/?id=N`: refused (400 `volume_in_use`) while an instance uses it
//!   ("All instances using the volume must be destroyed before deletion"); an unknown id is 404
//!   `no_such_volume`;
//! - a create with `volume_info {mount_path, create_new: false, volume_id}` links a volume, which
//!   must be on the offer's machine (400 otherwise); `create_new: true` makes one from a volume
//!   offer of that machine;
//! - a volume bills `size × storage_cost / 720` an hour from creation to deletion, whatever
//!   its instances do: charge lines `{type: "volume", source: "volume-<id>", items: [disk]}`.

use std::time::Instant;

use serde_json::{Map, Value, json};

use super::{Vast, World, fail, passes, unix_now};
use crate::inventory;
use crate::server::{Answer, Call};

/// Volume offer ids: this plus the machine id.
const OFFER_BASE: u64 = 800_000;

pub(super) struct Volume {
    pub id: u64,
    pub machine_id: u64,
    offer: Value,
    pub size: f64,
    pub name: Option<String>,
    created_unix: f64,
    pub charged: f64,
    settled: Instant,
    pub ended_unix: Option<f64>,
}

impl Volume {
    fn per_hour(&self) -> f64 {
        self.offer["storage_cost"].as_f64().unwrap_or(0.0) * self.size / 720.0
    }

    pub(super) fn settle(&mut self) {
        let hours = self.settled.elapsed().as_secs_f64() / 3600.0;
        self.settled = Instant::now();
        self.charged += self.per_hour() * hours;
    }

    /// The volume's charge line (`GET /api/v0/charges/`).
    pub(super) fn charge_line(&self, now: f64) -> Value {
        let end = self.ended_unix.unwrap_or(now);
        let amount = inventory::round(self.charged, 6);
        json!({
            "type": "volume",
            "source": format!("volume-{}", self.id),
            "description": format!("Volume {} storage", self.id),
            "amount": amount,
            "start": self.created_unix,
            "end": end,
            "items": [{"type": "disk", "source": null, "description": "volume storage",
                       "amount": amount, "start": self.created_unix, "end": end,
                       "items": [], "metadata": {}}],
            "metadata": {"label": self.name},
        })
    }

    /// What the sandbox shows the tests: the volume and what it was charged.
    pub(super) fn ledger_json(&self) -> Value {
        json!({"id": self.id, "machine_id": self.machine_id, "size": self.size,
               "name": self.name, "charged_usd": self.charged,
               "storage_per_hour": self.per_hour(), "deleted": self.ended_unix.is_some()})
    }
}

/// The machine's volume offer (one per machine of the inventory), its free disk after `used`.
fn volume_offer(machine_offer: &Value, used: f64) -> Value {
    let machine = machine_offer["machine_id"].as_u64().unwrap_or(0);
    let o = machine_offer;
    json!({
        "id": OFFER_BASE + machine,
        "machine_id": machine,
        "host_id": o["host_id"],
        "disk_space": inventory::round((o["disk_space"].as_f64().unwrap_or(0.0) - used).max(0.0), 1),
        "storage_cost": o["storage_cost"],
        "geolocation": o["geolocation"],
        "reliability": o["reliability"],
        "reliability2": o["reliability2"],
        "inet_up": o["inet_up"],
        "inet_down": o["inet_down"],
        "verified": true,
        "external": false,
        "static_ip": o["static_ip"],
        "cuda_vers": o["cuda_max_good"],
        "driver_version": o["driver_version"],
        "gpu_name": o["gpu_name"],
    })
}

impl World {
    /// Disk taken by live volumes on `machine`.
    fn volume_space_used(&self, machine: u64) -> f64 {
        self.volumes
            .values()
            .filter(|v| v.machine_id == machine)
            .map(|v| v.size)
            .sum()
    }

    /// One volume offer per machine, with its free disk.
    fn volume_offers(&self) -> Vec<Value> {
        let mut seen = std::collections::BTreeSet::new();
        self.offers
            .iter()
            .filter(|o| seen.insert(o["machine_id"].as_u64().unwrap_or(0)))
            .map(|o| {
                volume_offer(
                    o,
                    self.volume_space_used(o["machine_id"].as_u64().unwrap_or(0)),
                )
            })
            .collect()
    }

    /// Creates a volume from volume offer `offer_id`; the volume's id, or why not.
    pub(super) fn new_volume(
        &mut self,
        offer_id: u64,
        size: f64,
        name: Option<String>,
    ) -> Result<u64, Answer> {
        let Some(offer) = self
            .volume_offers()
            .into_iter()
            .find(|o| o["id"].as_u64() == Some(offer_id))
        else {
            return Err(fail(404, "no_such_ask", "no such volume offer"));
        };
        if !(size >= 1.0 && size <= offer["disk_space"].as_f64().unwrap_or(0.0)) {
            return Err(fail(
                400,
                "invalid_args",
                "size must be at least 1 GB and fit the offer's free disk",
            ));
        }
        self.next_id += 1;
        let id = 40_000_000 + self.next_id;
        self.volumes.insert(
            id,
            Volume {
                id,
                machine_id: offer["machine_id"].as_u64().unwrap_or(0),
                offer,
                size,
                name,
                created_unix: unix_now(),
                charged: 0.0,
                settled: Instant::now(),
                ended_unix: None,
            },
        );
        Ok(id)
    }

    /// The machine offer `ask` is on.
    fn machine_of(&self, ask: &Value) -> u64 {
        ask["machine_id"].as_u64().unwrap_or(0)
    }

    /// `volume_info` of a create for offer `ask`: the volume to attach (linked, or made now) and
    /// its mount path, or why not.
    pub(super) fn attach_volume(
        &mut self,
        ask: &Value,
        info: &Value,
    ) -> Result<Option<(u64, String)>, Answer> {
        if info.is_null() {
            return Ok(None);
        }
        let bad = |why: &str| fail(400, "invalid_args", why);
        let Some(path) = info["mount_path"].as_str().filter(|p| p.starts_with('/')) else {
            return Err(bad("volume_info.mount_path is required"));
        };
        let Some(vid) = info["volume_id"].as_u64() else {
            return Err(bad("volume_info.volume_id is required"));
        };
        let machine = self.machine_of(ask);
        let id = if info["create_new"].as_bool().unwrap_or(false) {
            if vid != OFFER_BASE + machine {
                return Err(bad("the volume offer is not on the instance's machine"));
            }
            let size = info["size"].as_f64().unwrap_or(15.0);
            self.new_volume(vid, size, info["name"].as_str().map(str::to_owned))?
        } else {
            match self.volumes.get(&vid) {
                None => return Err(fail(404, "no_such_volume", "no such volume")),
                Some(v) if v.machine_id != machine => {
                    return Err(bad(
                        "a volume can only be attached to an instance on its machine",
                    ));
                }
                Some(_) => vid,
            }
        };
        Ok(Some((id, path.to_owned())))
    }
}

impl Vast {
    /// `POST /api/v0/volumes/search/`.
    pub(super) fn volume_search(&self, call: &Call) -> Answer {
        let q: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        let Some(q) = q.as_object() else {
            return fail(400, "invalid_args", "body must be a JSON object");
        };
        let limit = q.get("limit").and_then(Value::as_u64).unwrap_or(64) as usize;
        let world = self.world.lock().unwrap();
        let mut out: Vec<Value> = world
            .volume_offers()
            .into_iter()
            .filter(|o| {
                let m: &Map<String, Value> = o.as_object().unwrap();
                q.iter().all(|(k, v)| {
                    matches!(k.as_str(), "order" | "limit" | "allocated_storage") || passes(m, k, v)
                })
            })
            .collect();
        let alloc = q
            .get("allocated_storage")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        for o in &mut out {
            let month = o["storage_cost"].as_f64().unwrap_or(0.0) * alloc;
            o["storage_total_cost"] = json!(inventory::round(month, 6));
        }
        out.sort_by(|a, b| {
            let f = |v: &Value| v["storage_cost"].as_f64().unwrap_or(0.0);
            f(a).partial_cmp(&f(b)).unwrap_or(std::cmp::Ordering::Equal)
        });
        out.truncate(limit);
        Answer::json(200, json!({"offers": out}))
    }

    /// `PUT /api/v0/volumes/ {"size", "id", "name"?}`.
    pub(super) fn volume_create(&self, call: &Call) -> Answer {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        let (Some(size), Some(offer)) = (
            body.get("size").and_then(Value::as_f64),
            body.get("id").and_then(Value::as_u64),
        ) else {
            return fail(
                400,
                "invalid_args",
                "size and id (a volume offer) are required",
            );
        };
        let name = body.get("name").and_then(Value::as_str).map(str::to_owned);
        let mut world = self.world.lock().unwrap();
        match world.new_volume(offer, size, name) {
            Ok(_) => Answer::json(200, json!({"success": true, "msg": "Volume created"})),
            Err(refused) => refused,
        }
    }

    /// `GET /api/v0/volumes?owner=me&type=all_volume|local_volume|network_volume`.
    pub(super) fn volume_list(&self, call: &Call) -> Answer {
        if call.param("type").as_deref() == Some("network_volume") {
            return Answer::json(200, json!({"volumes": []}));
        }
        let mut world = self.world.lock().unwrap();
        for v in world.volumes.values_mut() {
            v.settle();
        }
        let world = &*world;
        let rows: Vec<Value> = world
            .volumes
            .values()
            .map(|v| {
                let users: Vec<u64> = world
                    .instances
                    .values()
                    .filter(|i| i.volume.as_ref().is_some_and(|(id, _)| *id == v.id))
                    .map(|i| i.id)
                    .collect();
                json!({
                    "id": v.id,
                    "cluster_id": null,
                    "label": v.name,
                    "disk_space": v.size,
                    "status": "running",
                    "disk_name": format!("vol-{}", v.id),
                    "driver_version": v.offer["driver_version"],
                    "inet_up": v.offer["inet_up"],
                    "inet_down": v.offer["inet_down"],
                    "reliability2": v.offer["reliability2"],
                    "start_date": v.created_unix,
                    "machine_id": v.machine_id,
                    "verification": "verified",
                    "host_id": v.offer["host_id"],
                    "geolocation": v.offer["geolocation"],
                    "storage_cost": v.offer["storage_cost"],
                    "instances": users,
                })
            })
            .collect();
        Answer::json(200, json!({"volumes": rows}))
    }

    /// `DELETE /api/v0/volumes/?id=N`.
    pub(super) fn volume_delete(&self, call: &Call) -> Answer {
        let Some(id) = call.param("id").and_then(|s| s.parse::<u64>().ok()) else {
            return fail(400, "invalid_args", "id (a volume) is required");
        };
        let mut world = self.world.lock().unwrap();
        if !world.volumes.contains_key(&id) {
            return fail(404, "no_such_volume", "no such volume");
        }
        if world
            .instances
            .values()
            .any(|i| i.volume.as_ref().is_some_and(|(v, _)| *v == id))
        {
            return fail(
                400,
                "volume_in_use",
                "All instances using the volume must be destroyed before deletion",
            );
        }
        let mut v = world.volumes.remove(&id).expect("checked above");
        v.settle();
        v.ended_unix = Some(unix_now());
        world.gone_volumes.push(v);
        Answer::json(200, json!({"success": true}))
    }
}
