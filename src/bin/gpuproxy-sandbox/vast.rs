//! The sandbox Vast.ai API (docs/providers.md, "Vast.ai"), with the behaviours that cost money:
//! - a create without `price` rents on demand at the full price, even for a bid offer (so a
//!   client that forgets the bid is caught); with `price` the instance is a bid at that price;
//! - `POST /_sandbox/vast/outbid {"id"}` outbids a bid instance: it goes `stopped` (still
//!   billing its disk) until `PUT /api/v0/instances/bid_price/{id}/` bids at least 25% more;
//! - `POST /_sandbox/vast/script {"next_states": [...]}` makes the next creates end in a state
//!   that never runs (`exited`, `offline`, `unknown`, `oci_failed`) or never get past `loading`
//!   (`stuck`), or refuse them (`refused`: 400, nothing created);
//! - `POST /_sandbox/vast/withdraw {"id"}` takes an offer off the market (rented elsewhere): it
//!   leaves search, and quotes and creates of it answer 404;
//! - two creates of one offer are both accepted; the later one goes `offline` soon after;
//! - SSH keys are attached per instance (`POST /api/v0/instances/{id}/ssh/`, refused until the
//!   instance is scheduled); the account-wide `POST /api/v0/ssh/` reaches every instance;
//! - billing by state: storage from creation, the GPU while running; `GET /_sandbox/vast/instances`
//!   shows what each instance holds and was charged, and `GET /api/v0/charges/` (paged, `limit`
//!   at most 100) bills it; `POST /_sandbox/vast/surcharge {"id", "amount"}` adds a charge line
//!   the model did not make (a bill that differs from the ledger);
//! - the shapes are the official client's (`pip install vastai`; tests/vast_conformance.rs runs
//!   it against this server): a wrong or revoked key (`POST /_sandbox/vast/key {"revoked"}`) is
//!   404 `auth_error`; search filters compare as the column's type (the CLI sends `"1"`);
//!   instances carry `extra_env` as `[name, value]` pairs; a start after a stop and a reboot
//!   (`PUT /api/v0/instances/reboot/{id}/`) pass through `rebooting`/`loading` again; a host can
//!   go `offline` and come back (`POST /_sandbox/vast/host {"id", "offline"}`); `frozen` bills the
//!   GPU (`POST /_sandbox/vast/freeze {"id", "frozen"}`); traffic
//!   (`POST /_sandbox/vast/traffic {"id", "up_gb", "down_gb"}`) is billed per GB; charges are
//!   lines `{type, source: "instance-<id>", amount, start, end, items: [gpu, disk, bwu, bwd]}`;
//!   paging tokens are opaque strings taken back raw (a JSON-quoted one is 400 `invalid_token`);
//!   a running instance reports `gpu_util` (37.5 until `POST /_sandbox/vast/gpu_util {"id",
//!   "util"}` sets it); an outbid raises the offer's `min_bid` to the competing bid;
//! - a host's price increase on a running contract (`POST /_sandbox/vast/price_increase {"id",
//!   "gpu_factor", "disk_factor"?, "cutover_in_s"?}`) is listed by
//!   `GET /api/v0/instances/pending-price-increases/` until accepted or rejected
//!   (`PUT /api/v0/instances/{accept,reject}-price-increase/`, body exactly
//!   `{"pending_price_increase_id"}`; a stale row is 404 `no_pending_price_increase`); accepted,
//!   the new prices bill from the contract's end (`vastai/api/price_increase.py`);
//! - volumes (`vast/volumes.rs`): volume offers, create, list, delete, attach at create, billed
//!   by the GB-month as charge lines of their own.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::Method;
use hyper::header::AUTHORIZATION;
use serde_json::{Map, Value, json};

mod volumes;

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
    /// The bid (`price`), when rented interruptible.
    bid: Option<f64>,
    /// Outbid: stopped until a bid of at least this comes.
    outbid_below: Option<f64>,
    /// The GPU utilisation the host reports while it runs (`POST /_sandbox/vast/gpu_util`).
    gpu_util: f64,
    /// An accepted host price increase: from this time (epoch seconds, the contract's end) the
    /// GPU and the disk bill at these multiples of the offer's prices.
    repriced: Option<(f64, f64, f64)>,
    /// The volume attached at create (`volume_info`) and where it is mounted.
    volume: Option<(u64, String)>,
    /// Stopped by the renter (`PUT /api/v0/instances/{id}/ {"state": "stopped"}`).
    stopped: bool,
    /// The latest start after a stop, or a reboot (`PUT /api/v0/instances/reboot/{id}/`): the
    /// instance passes through `rebooting` (a reboot) and `loading` again for the provisioning
    /// time, as Vast reports after a restart (docs/providers.md, "States after the first start").
    restarted: Option<(Instant, bool)>,
    /// The host went offline (`POST /_sandbox/vast/host {"id", "offline"}`): `offline` until it
    /// comes back; only the disk bills meanwhile.
    offline: bool,
    /// Paused with its memory (`POST /_sandbox/vast/freeze`): `frozen`, the GPU still bills.
    frozen: bool,
    /// Traffic (GB) the instance sent and received (`POST /_sandbox/vast/traffic`), billed at
    /// the offer's `inet_up_cost` / `inet_down_cost` ($/GB) as charge items `bwu` / `bwd`.
    up_gb: f64,
    down_gb: f64,
    /// Environment given at create (`extra_env` on the instance, as `[name, value]` pairs).
    env: Vec<(String, String)>,
    /// The launch given at create, shown as the instance's `onstart`, `image_runtype` and
    /// `image_args`; the template it was made from.
    onstart: Option<String>,
    /// Container ports mapped at create (`-p H:C[/udp]` env keys), as `8000/tcp`.
    mapped: Vec<String>,
    runtype: String,
    args: Vec<String>,
    template: Option<String>,
    /// A scripted end: a state that never runs, or `stuck` in loading.
    doom: Option<String>,
    /// Bought while another create of the offer held it: fails soon after.
    lost_race: bool,
    /// (key id, public key) attached to this instance.
    ssh_keys: Vec<(u64, String)>,
    /// Settled charges, USD (the GPU part and the disk part), and when they were last settled.
    charged_gpu: f64,
    charged_disk: f64,
    settled: Instant,
    /// When it was destroyed (epoch seconds), for the charge line's `end`.
    ended_unix: Option<f64>,
}

struct World {
    offers: Vec<Value>,
    instances: BTreeMap<u64, Instance>,
    /// Destroyed instances keep their bill (and keys) for the tests to read.
    gone: Vec<Value>,
    next_id: u64,
    next_key_id: u64,
    script: std::collections::VecDeque<String>,
    /// Extra charge lines (`POST /_sandbox/vast/surcharge`): a bill that differs from the
    /// billing-by-state model, as a real one may.
    surcharges: Vec<Value>,
    /// Hosts' price increases on running contracts (`POST /_sandbox/vast/price_increase`), with
    /// their `status` (pending, accepted, rejected) and the multiples asked.
    price_increases: Vec<Value>,
    /// Volumes (`volumes`), live and deleted (deleted ones keep their bill).
    volumes: BTreeMap<u64, volumes::Volume>,
    gone_volumes: Vec<volumes::Volume>,
}

pub struct Vast {
    refuse_after_create: bool,
    key: String,
    /// `POST /_sandbox/vast/key {"revoked": true}`: every call that needs the key answers 404
    /// `auth_error`, as Vast answers a revoked or wrong key.
    revoked: std::sync::atomic::AtomicBool,
    /// `POST /_sandbox/vast/key {"other_account": true}`: the key works but is another account's:
    /// its user id differs, it lists no instances and shows none of ours.
    other_account: std::sync::atomic::AtomicBool,
    provision: Duration,
    world: Mutex<World>,
}

impl Vast {
    pub fn new(args: &Args) -> Vast {
        Vast {
            refuse_after_create: args.vast_refuse_after_create,
            key: args.vast_key.clone(),
            revoked: std::sync::atomic::AtomicBool::new(false),
            other_account: std::sync::atomic::AtomicBool::new(false),
            provision: args.provision_time,
            world: Mutex::new(World {
                offers: inventory::vast_offers(args.seed, args.vast_offers),
                instances: BTreeMap::new(),
                gone: Vec::new(),
                // instance ids go on from one start to the next (a daemon's ledger outlives a
                // sandbox): 100 a second since the epoch, above Vast's own range of today
                next_id: 30_000_000 + (super::faults::start_entropy() % 10_000_000) * 100,
                next_key_id: 700,
                script: Default::default(),
                surcharges: Vec::new(),
                price_increases: Vec::new(),
                volumes: BTreeMap::new(),
                gone_volumes: Vec::new(),
            }),
        }
    }

    fn other(&self) -> bool {
        self.other_account
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn authorized(&self, call: &Call) -> bool {
        let bearer = call
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        !self.revoked.load(std::sync::atomic::Ordering::Relaxed)
            && (bearer == Some(self.key.as_str())
                || call.param("api_key").as_deref() == Some(self.key.as_str()))
    }

    /// (actual_status, status_msg, intended/cur state) as of now.
    fn state(&self, i: &Instance) -> (Value, &'static str, &'static str) {
        let age = i.created.elapsed();
        if age < self.provision / 2 {
            return (Value::Null, "scheduling", "running");
        }
        if i.lost_race {
            return (
                json!("offline"),
                "machine is rented by another client",
                "running",
            );
        }
        match i.doom.as_deref() {
            Some("stuck") => return (json!("loading"), "pulling image", "running"),
            Some("oci_failed") => {
                return (
                    json!("created"),
                    "Error response from daemon: OCI runtime create failed: unable to start container process",
                    "running",
                );
            }
            Some(s @ ("exited" | "offline" | "unknown")) => {
                return (json!(s), "container exited", "running");
            }
            _ => {}
        }
        if age < self.provision {
            return (json!("loading"), "pulling image", "running");
        }
        if i.offline {
            return (json!("offline"), "host is offline", "running");
        }
        if i.outbid_below.is_some() {
            return (
                json!("stopped"),
                "outbid: stopped until the bid is raised",
                "stopped",
            );
        }
        if i.stopped {
            return (json!("stopped"), "stopped by the renter", "stopped");
        }
        if i.frozen {
            return (json!("frozen"), "paused with its memory", "frozen");
        }
        if let Some((at, reboot)) = i.restarted {
            let since = at.elapsed();
            if reboot && since < self.provision / 2 {
                return (json!("rebooting"), "rebooting", "running");
            }
            if since < self.provision {
                return (json!("loading"), "starting the container", "running");
            }
        }
        (json!("running"), "success, running", "running")
    }

    /// The multiples of the offer's (GPU, disk) prices in force: an accepted increase from the
    /// contract's end on.
    fn multiples(i: &Instance) -> (f64, f64) {
        match i.repriced {
            Some((at, gpu, disk)) if unix_now() >= at => (gpu, disk),
            _ => (1.0, 1.0),
        }
    }

    fn storage_per_hour(i: &Instance) -> f64 {
        i.offer["storage_cost"].as_f64().unwrap_or(0.0) * i.disk / 720.0 * Self::multiples(i).1
    }

    /// Compute price per hour: the bid (a host's increase does not move it), or the on-demand
    /// price.
    fn compute_per_hour(i: &Instance) -> f64 {
        i.bid
            .unwrap_or_else(|| i.offer["dph_base"].as_f64().unwrap_or(0.0) * Self::multiples(i).0)
    }

    /// `GET /api/v0/instances/pending-price-increases/`: the envelope of the official client's
    /// `vastai/api/price_increase.py` (`list_pending`), pending rows only.
    fn pending_price_increases(&self) -> Answer {
        let world = self.world.lock().unwrap();
        let rows: Vec<Value> = world
            .price_increases
            .iter()
            .filter(|r| r["status"] == "pending")
            .map(|r| {
                let mut r = r.clone();
                if let Some(m) = r.as_object_mut() {
                    for k in ["status", "gpu_factor", "disk_factor"] {
                        m.remove(k);
                    }
                }
                r
            })
            .collect();
        Answer::json(
            200,
            json!({"success": true, "count": rows.len(), "truncated": false,
                   "pending_price_increases": rows}),
        )
    }

    /// `PUT /api/v0/instances/{accept,reject}-price-increase/`: the body is exactly
    /// `{"pending_price_increase_id": int}` (any other key is a 400: the backend forbids extra
    /// fields); a row that is not pending is 404 `no_pending_price_increase`. An accepted
    /// increase applies from the contract's current end; a rejected one is tombstoned.
    fn answer_price_increase(&self, accept: bool, call: &Call) -> Answer {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        let id = match body.as_object() {
            Some(m) if m.len() == 1 => m.get("pending_price_increase_id").and_then(Value::as_u64),
            _ => None,
        };
        let Some(id) = id else {
            return fail(
                400,
                "invalid_args",
                "the body is exactly {\"pending_price_increase_id\": <int>}",
            );
        };
        let mut world = self.world.lock().unwrap();
        let Some(row) = world.price_increases.iter_mut().find(|r| {
            r["pending_price_increase_id"].as_u64() == Some(id) && r["status"] == "pending"
        }) else {
            return fail(
                404,
                "no_pending_price_increase",
                "no such pending price increase",
            );
        };
        row["status"] = json!(if accept { "accepted" } else { "rejected" });
        let contract = row["contract_id"].as_u64().unwrap_or(0);
        let change = (
            row["contract_end_date"].as_f64().unwrap_or(0.0),
            row["gpu_factor"].as_f64().unwrap_or(1.0),
            row["disk_factor"].as_f64().unwrap_or(1.0),
        );
        if accept && let Some(i) = world.instances.get_mut(&contract) {
            self.settle(i);
            i.repriced = Some(change);
        }
        Answer::json(
            200,
            json!({"success": true, "pending_price_increase_id": id, "contract_id": contract}),
        )
    }

    /// Adds the charges since the last settlement, at the rate of the state now: storage
    /// always, the GPU while running. Run every 50 ms, so a state's time is billed within that.
    fn settle(&self, i: &mut Instance) {
        let hours = i.settled.elapsed().as_secs_f64() / 3600.0;
        i.settled = Instant::now();
        // storage always; the GPU while running or frozen (docs/providers.md)
        let state = self.state(i).0;
        if state == json!("running") || state == json!("frozen") {
            i.charged_gpu += Self::compute_per_hour(i) * hours;
        }
        i.charged_disk += Self::storage_per_hour(i) * hours;
    }

    pub fn settle_all(&self) {
        let mut world = self.world.lock().unwrap();
        for i in world.instances.values_mut() {
            self.settle(i);
        }
        for v in world.volumes.values_mut() {
            v.settle();
        }
    }

    fn instance_json(&self, i: &Instance) -> Value {
        let (status, msg, intended) = self.state(i);
        let running = status == json!("running");
        let o = &i.offer;
        let storage = Self::storage_per_hour(i);
        let compute = Self::compute_per_hour(i);
        json!({
            "id": i.id,
            "machine_id": o["machine_id"],
            "host_id": o["host_id"],
            "bundle_id": o["bundle_id"],
            "label": i.label,
            "actual_status": status,
            "intended_status": intended,
            "cur_state": intended,
            "next_state": intended,
            "status_msg": msg,
            "image_uuid": i.image,
            "extra_env": i.env.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "onstart": i.onstart,
            "image_runtype": i.runtype,
            "image_args": i.args,
            "template_hash_id": i.template,
            "gpu_util": if running { json!(i.gpu_util) } else { Value::Null },
            "inet_up_cost": o["inet_up_cost"],
            "inet_down_cost": o["inet_down_cost"],
            "num_gpus": o["num_gpus"],
            "gpu_name": o["gpu_name"],
            "gpu_ram": o["gpu_ram"],
            "gpu_totalram": o["gpu_total_ram"],
            "cpu_cores_effective": o["cpu_cores_effective"],
            "disk_space": i.disk,
            "dph_base": compute,
            "dph_total": compute + storage,
            "storage_cost": o["storage_cost"],
            "min_bid": o["min_bid"],
            "is_bid": i.bid.is_some(),
            "start_date": i.created_unix,
            "ssh_host": if running { json!(format!("ssh{}.vast.ai", i.id % 10)) } else { Value::Null },
            "ssh_port": if running { json!(20_000 + i.id % 10_000) } else { Value::Null },
            "public_ipaddr": if running { json!("203.0.113.7\n") } else { Value::Null },
            "ports": if running {
                let mut m = serde_json::Map::new();
                m.insert("22/tcp".into(), json!([{"HostIp": "0.0.0.0", "HostPort": (41_000 + i.id % 1000).to_string()}]));
                for (n, p) in i.mapped.iter().enumerate() {
                    m.insert(p.clone(), json!([{"HostIp": "0.0.0.0", "HostPort": (42_000 + (i.id % 1000) * 16 + n as u64).to_string()}]));
                }
                Value::Object(m)
            } else { json!({}) },
            "direct_port_start": -1,
            "direct_port_end": -1,
            "geolocation": o["geolocation"],
        })
    }

    /// (upload, download) USD: traffic times the offer's $/GB prices.
    fn bandwidth_usd(i: &Instance) -> (f64, f64) {
        (
            i.up_gb * i.offer["inet_up_cost"].as_f64().unwrap_or(0.0),
            i.down_gb * i.offer["inet_down_cost"].as_f64().unwrap_or(0.0),
        )
    }

    /// What the tests read: each instance's keys, bid and bill (live and destroyed).
    fn ledger_json(&self, i: &Instance) -> Value {
        json!({
            "id": i.id,
            "offer_id": i.offer["id"],
            "label": i.label,
            "actual_status": self.state(i).0,
            "is_bid": i.bid.is_some(),
            "bid": i.bid,
            "dph_base": Self::compute_per_hour(i),
            "storage_per_hour": Self::storage_per_hour(i),
            "charged_usd": i.charged_gpu + i.charged_disk + Self::bandwidth_usd(i).0 + Self::bandwidth_usd(i).1,
            "charged_gpu_usd": i.charged_gpu,
            "charged_disk_usd": i.charged_disk,
            "charged_bwu_usd": Self::bandwidth_usd(i).0,
            "charged_bwd_usd": Self::bandwidth_usd(i).1,
            "created_unix": i.created_unix,
            "ended_unix": i.ended_unix,
            "ssh_keys": i.ssh_keys.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>(),
            "destroyed": false,
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

/// The `after_token` of a paged call: an opaque string this API gave (`<prefix><n>`), taken back
/// as the official client sends it, raw; 0 without one. Anything else (a JSON-quoted token) is
/// 400 `invalid_token`.
fn cursor(call: &Call, prefix: char) -> Result<u64, Answer> {
    match call.param("after_token") {
        None => Ok(0),
        Some(t) => t
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                fail(
                    400,
                    "invalid_token",
                    "after_token is not a token this API gave",
                )
            }),
    }
}

fn fail(status: u16, error: &str, msg: &str) -> Answer {
    Answer::json(
        status,
        json!({"success": false, "error": error, "msg": msg}),
    )
}

/// A filter value as the column's type reads it: the official CLI sends what the user typed as
/// strings (`num_gpus=1` becomes `{"eq": "1"}`), and Vast compares them with the column's type,
/// as SQL would: a numeric string equals the number, `"true"` the boolean.
fn coerce(have: &Value, want: &Value) -> Value {
    match (have, want) {
        (Value::Number(_), Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| want.clone(), Value::Number),
        (Value::Bool(_), Value::String(s)) => match s.trim() {
            "true" | "True" | "1" => Value::Bool(true),
            "false" | "False" | "0" => Value::Bool(false),
            _ => want.clone(),
        },
        _ => want.clone(),
    }
}

/// Whether two values are equal as the column compares them (numbers by value).
fn same(have: &Value, want: &Value) -> bool {
    match (have.as_f64(), coerce(have, want).as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => *have == coerce(have, want),
    }
}

/// Whether an offer passes one `{op: value}` filter on `field`.
fn passes(offer: &Map<String, Value>, field: &str, cond: &Value) -> bool {
    let Some(cond) = cond.as_object() else {
        return true;
    };
    let have = offer.get(field).unwrap_or(&Value::Null);
    cond.iter().all(|(op, want)| {
        let cmp = |f: fn(f64, f64) -> bool| match (have.as_f64(), coerce(have, want).as_f64()) {
            (Some(a), Some(b)) => f(a, b),
            _ => false,
        };
        let listed = || {
            want.as_array()
                .is_some_and(|l| l.iter().any(|w| same(have, w)))
        };
        match op.as_str() {
            "eq" => same(have, want),
            "neq" => !same(have, want),
            "gt" => cmp(|a, b| a > b),
            "gte" => cmp(|a, b| a >= b),
            "lt" => cmp(|a, b| a < b),
            "lte" => cmp(|a, b| a <= b),
            "in" => listed(),
            "notin" => !listed(),
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
        let onstart = body.get("onstart").and_then(Value::as_str);
        if onstart.is_some_and(|s| s.chars().count() > 4048) {
            return fail(400, "invalid_args", "onstart is limited to 4048 characters");
        }
        let template = body.get("template_hash_id").and_then(Value::as_str);
        let runtype = match body.get("runtype").and_then(Value::as_str) {
            Some(
                r @ ("ssh"
                | "ssh_direct"
                | "ssh_proxy"
                | "ssh_direc ssh_proxy"
                | "jupyter"
                | "jupyter_direct"
                | "jupyter_proxy"
                | "jupyter_proxy ssh_proxy"
                | "jupyter_direc ssh_direc ssh_proxy"
                | "args"),
            ) => r.to_owned(),
            Some(other) => return fail(400, "invalid_args", &format!("unknown runtype {other}")),
            // the SDK leaves it out unless asked (a template brings its own): Vast's default
            None => "ssh".to_owned(),
        };
        let args: Vec<String> = match body.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if runtype == "args" => a
                .iter()
                .map(|x| x.as_str().unwrap_or_default().to_owned())
                .collect(),
            Some(_) => return fail(400, "invalid_args", "args is a list, for runtype args"),
        };
        // without `price` Vast rents on demand at the full price, whatever was meant
        let bid = match body.get("price") {
            None | Some(Value::Null) => None,
            Some(p) => match p.as_f64().filter(|p| (0.001..=128.0).contains(p)) {
                Some(p) => Some(p),
                None => return fail(400, "invalid_price", "price must be between 0.001 and 128"),
            },
        };
        let mut world = self.world.lock().unwrap();
        // a second buyer of a rented offer is accepted too, and fails later (docs/providers.md, "Offers and other quirks")
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
        let volume =
            match world.attach_volume(&offer, body.get("volume_info").unwrap_or(&Value::Null)) {
                Ok(v) => v,
                Err(refused) => return refused,
            };
        let doom = world.script.pop_front();
        if doom.as_deref() == Some("refused") {
            return fail(
                400,
                "invalid_args",
                "error 400/2301: the host declined the rental; try another offer",
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
                env: body
                    .get("env")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .filter(|(k, _)| !k.starts_with("-p "))
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                onstart: onstart.map(str::to_owned),
                mapped: body
                    .get("env")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.keys()
                            .filter_map(|k| k.strip_prefix("-p "))
                            .filter_map(|p| {
                                let (_, c) = p.split_once(':')?;
                                let (port, proto) = c.split_once('/').unwrap_or((c, "tcp"));
                                Some(format!("{}/{proto}", port.parse::<u16>().ok()?))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                runtype,
                args,
                template: template.map(str::to_owned),
                restarted: None,
                offline: false,
                frozen: false,
                up_gb: 0.0,
                down_gb: 0.0,
                ended_unix: None,
                disk,
                created: Instant::now(),
                created_unix: unix_now(),
                bid,
                outbid_below: None,
                gpu_util: 37.5,
                repriced: None,
                volume,
                stopped: false,
                doom,
                lost_race: taken,
                ssh_keys: Vec::new(),
                charged_gpu: 0.0,
                charged_disk: 0.0,
                settled: Instant::now(),
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

    /// `PUT /api/v0/instances/{id}/`: `{"state": "running"|"stopped"}` and/or `{"label"}`.
    fn manage(&self, call: &Call) -> Answer {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        let mut world = self.world.lock().unwrap();
        let Some(i) =
            id_in(&call.path, "/api/v0/instances/").and_then(|id| world.instances.get_mut(&id))
        else {
            return fail(404, "no_such_instance", "error 404/3603: no such instance");
        };
        self.settle(i);
        match body.get("state").and_then(Value::as_str) {
            Some("stopped") => i.stopped = true,
            Some("running") => {
                // a start of a stopped instance loads its container again
                if i.stopped {
                    i.restarted = Some((Instant::now(), false));
                }
                i.stopped = false;
                i.frozen = false;
            }
            Some(_) => return fail(400, "invalid_args", "state must be running or stopped"),
            None => {}
        }
        if let Some(l) = body.get("label").and_then(Value::as_str) {
            i.label = Some(l.to_owned());
        }
        Answer::json(200, json!({"success": true}))
    }

    /// `PUT /api/v0/instances/bid_price/{id}/ {"client_id": "me", "price": x}`.
    fn set_bid(&self, call: &Call) -> Answer {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        let Some(price) = body
            .get("price")
            .and_then(Value::as_f64)
            .filter(|p| (0.001..=128.0).contains(p))
        else {
            return fail(400, "invalid_price", "price must be between 0.001 and 128");
        };
        let mut world = self.world.lock().unwrap();
        let Some(i) = id_in(&call.path, "/api/v0/instances/bid_price/")
            .and_then(|id| world.instances.get_mut(&id))
        else {
            return fail(404, "no_such_instance", "error 404/3603: no such instance");
        };
        if i.bid.is_none() {
            return fail(400, "invalid_args", "not an interruptible instance");
        }
        self.settle(i);
        i.bid = Some(price);
        if i.outbid_below.is_some_and(|min| price >= min) {
            i.outbid_below = None;
        }
        Answer::json(200, json!({"success": true}))
    }

    /// `POST /api/v0/instances/{id}/ssh/ {"ssh_key"}`; `GET` lists; `DELETE .../ssh/{key}/`.
    fn instance_ssh(&self, op: &str, call: &Call) -> Answer {
        let p = trim(&call.path);
        let rest = p.strip_prefix("/api/v0/instances/").unwrap_or("");
        let mut parts = rest.split('/');
        let id = parts.next().and_then(|i| i.parse::<u64>().ok());
        let key_id = parts.nth(1).and_then(|k| k.parse::<u64>().ok());
        let mut world = self.world.lock().unwrap();
        world.next_key_id += 1;
        let next_key = world.next_key_id;
        let Some(i) = id.and_then(|id| world.instances.get_mut(&id)) else {
            return fail(404, "no_such_instance", "error 404/3603: no such instance");
        };
        match op {
            "ssh_attach" => {
                let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
                let Some(key) = body.get("ssh_key").and_then(Value::as_str) else {
                    return fail(400, "invalid_args", "ssh_key is required");
                };
                if self.state(i).0.is_null() {
                    return fail(
                        400,
                        "instance_not_ready",
                        "the instance is not scheduled yet; try again",
                    );
                }
                if !i.ssh_keys.iter().any(|(_, k)| k == key.trim()) {
                    i.ssh_keys.push((next_key, key.trim().to_owned()));
                }
                Answer::json(200, json!({"success": true, "key_id": next_key}))
            }
            "ssh_detach" => {
                let before = i.ssh_keys.len();
                i.ssh_keys.retain(|(k, _)| Some(*k) != key_id);
                if i.ssh_keys.len() == before {
                    return fail(404, "not_found", "no such key on this instance");
                }
                Answer::json(200, json!({"success": true}))
            }
            _ => Answer::json(
                200,
                json!({"ssh_keys": i.ssh_keys.iter().map(|(id, k)| json!({"id": id, "public_key": k})).collect::<Vec<_>>()}),
            ),
        }
    }

    /// `POST /api/v0/ssh/`: the account-wide key, added to every instance of the account (with a
    /// shared provider key: every tenant's). Modelled so a test can show it is never called.
    fn account_ssh(&self, call: &Call) -> Answer {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        let Some(key) = body.get("ssh_key").and_then(Value::as_str) else {
            return fail(400, "invalid_args", "ssh_key is required");
        };
        let mut world = self.world.lock().unwrap();
        world.next_key_id += 1;
        let kid = world.next_key_id;
        for i in world.instances.values_mut() {
            i.ssh_keys.push((kid, key.trim().to_owned()));
        }
        Answer::json(200, json!({"success": true, "id": kid}))
    }

    /// `GET /api/v0/charges/?select_filters={"day":{"gte":t0,"lte":t1},"type":{"in":[...]}}
    /// &latest_first=&limit=&format=&after_token=`, in the shape the official client reads
    /// (vastai/api/billing.py `show_invoices_v1`, cli/commands/billing.py
    /// `format_invoices_charges_results`): one line per instance (live or destroyed)
    /// `{type, source: "instance-<id>", description, amount, start, end, items, metadata}` whose
    /// `items` are the parts (`gpu`, `disk`, `bwu`, `bwd`), each a line itself; surcharges are
    /// lines of their own. `next_token` is an opaque string, taken back raw.
    fn charges(&self, call: &Call) -> Answer {
        let limit = match call.param("limit").map(|l| l.parse::<usize>()) {
            None => 20,
            Some(Ok(n)) if (1..=100).contains(&n) => n,
            Some(_) => return fail(400, "invalid_args", "limit must be between 1 and 100"),
        };
        let filters: Value = match call.param("select_filters") {
            None => Value::Null,
            Some(f) => match serde_json::from_str(&f) {
                Ok(v) => v,
                Err(_) => return fail(400, "invalid_args", "select_filters is not JSON"),
            },
        };
        let (gte, lte) = (
            filters["day"]["gte"].as_f64().unwrap_or(0.0),
            filters["day"]["lte"].as_f64().unwrap_or(f64::MAX),
        );
        let types: Vec<&str> = filters["type"]["in"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let after = match cursor(call, 'c') {
            Ok(n) => n as usize,
            Err(refused) => return refused,
        };
        let latest_first = call.param("latest_first").as_deref() == Some("true");
        self.settle_all();
        let now = unix_now();
        let world = self.world.lock().unwrap();
        let item = |kind: &str, what: &str, amount: f64, start: f64, end: f64| {
            json!({"type": kind, "source": Value::Null, "description": what,
                   "amount": inventory::round(amount, 6), "start": start, "end": end,
                   "items": [], "metadata": {}})
        };
        let mut lines: Vec<Value> = world
            .instances
            .values()
            .map(|i| self.ledger_json(i))
            .chain(world.gone.iter().cloned())
            .map(|i| {
                let (start, end) = (
                    i["created_unix"].as_f64().unwrap_or(0.0),
                    i["ended_unix"].as_f64().unwrap_or(now),
                );
                let part = |k: &str| i[k].as_f64().unwrap_or(0.0);
                let items = vec![
                    item("gpu", "GPU time", part("charged_gpu_usd"), start, end),
                    item("disk", "storage", part("charged_disk_usd"), start, end),
                    item(
                        "bwu",
                        "upload bandwidth",
                        part("charged_bwu_usd"),
                        start,
                        end,
                    ),
                    item(
                        "bwd",
                        "download bandwidth",
                        part("charged_bwd_usd"),
                        start,
                        end,
                    ),
                ];
                json!({
                    "type": "instance",
                    "source": format!("instance-{}", i["id"]),
                    "description": format!("Instance {} charges", i["id"]),
                    "amount": inventory::round(part("charged_usd"), 6),
                    "start": start,
                    "end": end,
                    "items": items,
                    "metadata": {"label": i["label"]},
                })
            })
            .chain(world.surcharges.iter().cloned())
            .chain(
                world
                    .volumes
                    .values()
                    .chain(world.gone_volumes.iter())
                    .map(|v| v.charge_line(now)),
            )
            .filter(|l| {
                let (start, end) = (
                    l["start"].as_f64().unwrap_or(0.0),
                    l["end"].as_f64().unwrap_or(0.0),
                );
                start <= lte
                    && end >= gte
                    && (types.is_empty() || types.contains(&l["type"].as_str().unwrap_or("")))
            })
            .collect();
        if latest_first {
            lines.reverse();
        }
        let total = lines.len();
        let more = total > after + limit;
        lines = lines.into_iter().skip(after).take(limit).collect();
        Answer::json(
            200,
            json!({
                "results": lines,
                "count": lines.len(),
                "total": total,
                "next_token": if more { json!(format!("c{}", after + limit)) } else { Value::Null },
            }),
        )
    }

    fn list(&self, call: &Call) -> Answer {
        let limit = call
            .param("limit")
            .and_then(|l| l.parse::<i64>().ok())
            .unwrap_or(25);
        let limit = if limit <= 0 { 5 } else { limit.min(25) } as usize;
        // the cursor comes back as the official client sends it: the string itself
        let after = match cursor(call, 'i') {
            Ok(n) => n,
            Err(refused) => return refused,
        };
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
            page.last().map(|i| json!(format!("i{}", i.id)))
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
            Method::POST if p == "/api/v0/ssh" => "ssh_account",
            Method::POST if p.starts_with("/api/v0/instances/") && p.ends_with("/ssh") => {
                "ssh_attach"
            }
            Method::GET if p.starts_with("/api/v0/instances/") && p.ends_with("/ssh") => "ssh_list",
            Method::DELETE if p.starts_with("/api/v0/instances/") && p.contains("/ssh/") => {
                "ssh_detach"
            }
            Method::POST if p == "/api/v0/volumes/search" => "volume_search",
            Method::PUT if p == "/api/v0/volumes" => "volume_create",
            Method::GET if p == "/api/v0/volumes" => "volume_list",
            Method::DELETE if p == "/api/v0/volumes" => "volume_delete",
            Method::GET if p == "/api/v0/instances/pending-price-increases" => {
                "pending_price_increases"
            }
            Method::PUT if p == "/api/v0/instances/accept-price-increase" => {
                "accept_price_increase"
            }
            Method::PUT if p == "/api/v0/instances/reject-price-increase" => {
                "reject_price_increase"
            }
            Method::PUT if p.starts_with("/api/v0/instances/bid_price/") => "set_bid",
            Method::PUT if p.starts_with("/api/v0/instances/reboot/") => "reboot",
            Method::PUT if p.starts_with("/api/v0/instances/") => "manage",
            Method::GET if p.starts_with("/api/v0/instances/") => "show",
            Method::DELETE if p.starts_with("/api/v0/instances/") => "destroy",
            Method::GET if p == "/api/v0/users/current" => "user",
            Method::GET if p == "/api/v0/charges" => "charges",
            _ => "unknown",
        }
    }

    fn handle(&self, op: &'static str, call: &Call) -> Answer {
        // Vast answers a wrong or revoked key with 404 `auth_error` (docs/providers.md)
        if !matches!(op, "search" | "unknown") && !self.authorized(call) {
            return fail(404, "auth_error", "Invalid user key");
        }
        match op {
            "search" => self.search(call),
            "create" => self.create(call),
            "list" if self.other() => Answer::json(
                200,
                json!({"success": true, "instances_found": 0, "total_instances": 0,
                       "label_counts": {}, "next_token": null, "instances": []}),
            ),
            "list" => self.list(call),
            "list_v0" => fail(410, "deprecated", "Use /api/v1/instances/ instead"),
            "charges" => self.charges(call),
            "manage" => self.manage(call),
            "set_bid" => self.set_bid(call),
            "pending_price_increases" => self.pending_price_increases(),
            "volume_search" => self.volume_search(call),
            "volume_create" => self.volume_create(call),
            "volume_list" => self.volume_list(call),
            "volume_delete" => self.volume_delete(call),
            "accept_price_increase" => self.answer_price_increase(true, call),
            "reject_price_increase" => self.answer_price_increase(false, call),
            "reboot" => {
                let mut world = self.world.lock().unwrap();
                let Some(i) = id_in(&call.path, "/api/v0/instances/reboot/")
                    .and_then(|id| world.instances.get_mut(&id))
                else {
                    return fail(404, "no_such_instance", "error 404/3603: no such instance");
                };
                self.settle(i);
                i.restarted = Some((Instant::now(), true));
                Answer::json(200, json!({"success": true}))
            }
            "ssh_attach" | "ssh_list" | "ssh_detach" => self.instance_ssh(op, call),
            "ssh_account" => self.account_ssh(call),
            "show" if self.other() => Answer::json(200, json!({ "instances": null })),
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
                    Some(mut i) => {
                        self.settle(&mut i);
                        i.ended_unix = Some(unix_now());
                        let mut v = self.ledger_json(&i);
                        v["destroyed"] = json!(true);
                        world.gone.push(v);
                        Answer::json(200, json!({"success": true}))
                    }
                    None => fail(404, "no_such_instance", "error 404/3603: no such instance"),
                }
            }
            "user" => Answer::json(
                200,
                json!({"id": if self.other() { 5151 } else { 4242 }, "email": "sandbox@example.com",
                       "balance": 0.0, "credit": 1000.0, "username": "sandbox"}),
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

    fn control(&self, call: &Call) -> Option<Answer> {
        let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
        Some(match (&call.method, call.path.as_str()) {
            (&Method::GET, "/_sandbox/vast/instances") => {
                self.settle_all();
                let world = self.world.lock().unwrap();
                let mut all: Vec<Value> = world
                    .instances
                    .values()
                    .map(|i| self.ledger_json(i))
                    .collect();
                all.extend(world.gone.iter().cloned());
                Answer::json(200, json!({"instances": all}))
            }
            (&Method::POST, "/_sandbox/vast/outbid") => {
                let mut world = self.world.lock().unwrap();
                let want = body.get("id").and_then(Value::as_u64);
                let mut n = 0;
                let mut asks = Vec::new();
                for i in world.instances.values_mut() {
                    if let (Some(bid), true) = (i.bid, want.is_none_or(|w| w == i.id)) {
                        self.settle(i);
                        // a competing bid a quarter higher: the machine's minimum bid now
                        let competing = inventory::round(bid * 1.25, 4);
                        i.outbid_below = Some(competing);
                        asks.push((i.offer["id"].as_u64(), competing));
                        n += 1;
                    }
                }
                for (ask, competing) in asks {
                    for o in world.offers.iter_mut().filter(|o| o["id"].as_u64() == ask) {
                        if o["min_bid"].as_f64().is_none_or(|m| m < competing) {
                            o["min_bid"] = json!(competing);
                        }
                    }
                }
                Answer::json(200, json!({"ok": true, "outbid": n}))
            }
            (&Method::POST, "/_sandbox/vast/surcharge") => {
                let (Some(id), Some(amount)) = (
                    body.get("id").and_then(Value::as_u64),
                    body.get("amount").and_then(Value::as_f64),
                ) else {
                    return Some(Answer::json(
                        400,
                        json!({"error": "`id` (an instance) and `amount` (USD)"}),
                    ));
                };
                let mut world = self.world.lock().unwrap();
                let n = world.surcharges.len();
                let now = unix_now();
                world.surcharges.push(json!({
                    "type": "instance",
                    "source": format!("instance-{id}"),
                    "description": format!("Instance {id}: adjustment {n}"),
                    "amount": amount,
                    "start": now,
                    "end": now,
                    "items": [{"type": "gpu", "source": null, "description": "GPU adjustment",
                               "amount": amount, "start": now, "end": now, "items": [],
                               "metadata": {}}],
                    "metadata": {},
                }));
                Answer::json(200, json!({"ok": true}))
            }
            (&Method::POST, "/_sandbox/vast/key") => {
                let flag = |k: &str| body.get(k).and_then(Value::as_bool).unwrap_or(false);
                let (revoked, other) = (flag("revoked"), flag("other_account"));
                self.revoked
                    .store(revoked, std::sync::atomic::Ordering::Relaxed);
                self.other_account
                    .store(other, std::sync::atomic::Ordering::Relaxed);
                Answer::json(
                    200,
                    json!({"ok": true, "revoked": revoked, "other_account": other}),
                )
            }
            (
                &Method::POST,
                "/_sandbox/vast/host"
                | "/_sandbox/vast/freeze"
                | "/_sandbox/vast/traffic"
                | "/_sandbox/vast/gpu_util",
            ) => {
                let Some(id) = body.get("id").and_then(Value::as_u64) else {
                    return Some(Answer::json(400, json!({"error": "`id`: an instance id"})));
                };
                let mut world = self.world.lock().unwrap();
                let Some(i) = world.instances.get_mut(&id) else {
                    return Some(Answer::json(404, json!({"error": "no such instance"})));
                };
                self.settle(i);
                match call.path.as_str() {
                    "/_sandbox/vast/host" => {
                        let offline = body.get("offline").and_then(Value::as_bool).unwrap_or(true);
                        // a host back from a restart loads the container again
                        if i.offline && !offline {
                            i.restarted = Some((Instant::now(), false));
                        }
                        i.offline = offline;
                    }
                    "/_sandbox/vast/freeze" => {
                        i.frozen = body.get("frozen").and_then(Value::as_bool).unwrap_or(true);
                    }
                    "/_sandbox/vast/gpu_util" => match body.get("util").and_then(Value::as_f64) {
                        Some(u) if (0.0..=100.0).contains(&u) => i.gpu_util = u,
                        _ => {
                            return Some(Answer::json(
                                400,
                                json!({"error": "`util`: a percentage from 0 to 100"}),
                            ));
                        }
                    },
                    _ => {
                        i.up_gb += body.get("up_gb").and_then(Value::as_f64).unwrap_or(0.0);
                        i.down_gb += body.get("down_gb").and_then(Value::as_f64).unwrap_or(0.0);
                    }
                }
                Answer::json(200, json!({"ok": true}))
            }
            (&Method::GET, "/_sandbox/vast/volumes") => {
                self.settle_all();
                let world = self.world.lock().unwrap();
                let all: Vec<Value> = world
                    .volumes
                    .values()
                    .chain(world.gone_volumes.iter())
                    .map(|v| v.ledger_json())
                    .collect();
                Answer::json(200, json!({"volumes": all}))
            }
            (&Method::GET, "/_sandbox/vast/price_increases") => {
                let world = self.world.lock().unwrap();
                Answer::json(200, json!({"price_increases": world.price_increases}))
            }
            (&Method::POST, "/_sandbox/vast/price_increase") => {
                let (Some(id), Some(gpu)) = (
                    body.get("id").and_then(Value::as_u64),
                    body.get("gpu_factor").and_then(Value::as_f64),
                ) else {
                    return Some(Answer::json(
                        400,
                        json!({"error": "`id` (an instance), `gpu_factor` (e.g. 1.2), optional `disk_factor`, `cutover_in_s`"}),
                    ));
                };
                let disk = body.get("disk_factor").and_then(Value::as_f64);
                let cutover = body
                    .get("cutover_in_s")
                    .and_then(Value::as_f64)
                    .unwrap_or(3600.0);
                let mut world = self.world.lock().unwrap();
                let Some(i) = world.instances.get(&id) else {
                    return Some(Answer::json(404, json!({"error": "no such instance"})));
                };
                // the backend's rates are per second (`vastai/cli/commands/price_increase.py`
                // shows them ×3600 per hour and ×3600×24×30 per month)
                let gpu_old = i.offer["dph_base"].as_f64().unwrap_or(0.0) / 3600.0;
                let disk_old = Self::storage_per_hour(i) / 3600.0;
                let host = i.offer["host_id"].clone();
                let now = unix_now();
                let n = world.price_increases.len() as u64 + 7001;
                let row = json!({
                    "pending_price_increase_id": n,
                    "contract_id": id,
                    "host_id": host,
                    "new_gpu_costpersec": gpu_old * gpu,
                    "new_disk_ram_costpersec": disk.map(|d| disk_old * d),
                    "new_bwu_cost": null,
                    "new_bwd_cost": null,
                    "new_platform_fee": null,
                    "old_gpu_costpersec": gpu_old,
                    "old_disk_ram_costpersec": disk_old,
                    "old_bwu_cost": i.offer["inet_up_cost"],
                    "old_bwd_cost": i.offer["inet_down_cost"],
                    "old_platform_fee": null,
                    "contract_end_date": now + cutover,
                    "ask_end_date": now + 30.0 * 86_400.0,
                    "created_at": now,
                    "status": "pending",
                    "gpu_factor": gpu,
                    "disk_factor": disk.unwrap_or(1.0),
                });
                world.price_increases.push(row);
                Answer::json(200, json!({"ok": true, "pending_price_increase_id": n}))
            }
            (&Method::POST, "/_sandbox/vast/withdraw") => {
                let Some(ask) = body.get("id").and_then(Value::as_u64) else {
                    return Some(Answer::json(400, json!({"error": "`id`: an offer id"})));
                };
                let mut world = self.world.lock().unwrap();
                let before = world.offers.len();
                world.offers.retain(|o| o["id"].as_u64() != Some(ask));
                Answer::json(
                    200,
                    json!({"ok": true, "withdrawn": before - world.offers.len()}),
                )
            }
            (&Method::POST, "/_sandbox/vast/script") => {
                let states: Vec<String> = body
                    .get("next_states")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                const KNOWN: &[&str] = &[
                    "exited",
                    "offline",
                    "unknown",
                    "oci_failed",
                    "stuck",
                    "normal",
                    "refused",
                ];
                if let Some(bad) = states.iter().find(|s| !KNOWN.contains(&s.as_str())) {
                    return Some(Answer::json(
                        400,
                        json!({"error": format!("unknown state {bad}; known: {KNOWN:?}")}),
                    ));
                }
                self.world.lock().unwrap().script.extend(states);
                Answer::json(200, json!({"ok": true}))
            }
            _ => return None,
        })
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
