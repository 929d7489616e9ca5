//! The sandbox Vast.ai held to Vast's own client, and gpuproxyd held to the same client.
//!
//! The official CLI/SDK (`pip install vastai`, pinned below, in a cached virtual environment like
//! schemathesis's) is what Vast publishes for talking to its API: what it sends is what Vast
//! expects, and what it parses is what Vast answers (docs/providers.md, "The oracle"). This test
//! 1. runs the official client with `--url` against the sandbox for every operation gpuproxyd
//!    performs (search, create on demand and with a bid, show, the v1 list over several pages,
//!    start/stop, reboot, change bid, per-instance SSH attach/detach, charges over several pages,
//!    hosts' pending price increases listed, accepted and rejected, volumes searched, created,
//!    shown, linked at create and deleted, destroy), through the CLI's own output formatting as well as `--raw`: the sandbox's answers
//!    must parse without error;
//! 2. runs gpuproxyd against the same sandbox doing the same operations;
//! 3. compares, operation by operation, what the sandbox recorded of each: gpuproxyd's request
//!    must match one of the official client's for that operation (method, path with ids taken
//!    out, the set of query keys, and every JSON body key it sends among the official client's,
//!    with the same JSON type). An operation gpuproxyd performs that the official client was not
//!    seen to perform fails the test too.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use support::accounts::TestDb;
use support::rentals::{KEY_A, account, call, cheapest, post, rent_body, until};
use support::sandbox::{Sandbox, VAST_KEY};
use support::services;

/// The official client, pinned: bump it deliberately (its requests are the reference).
const VASTAI: &str = "vastai==1.9.1";

/// The official client against one sandbox.
struct Official {
    bin: PathBuf,
    url: String,
    home: tempfile::TempDir,
}

impl Official {
    fn new(url: &str) -> Official {
        Official {
            bin: support::pyenv::venv(VASTAI),
            url: url.to_owned(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// `vastai --url <sandbox> --api-key <key> <args>`: it must succeed without a traceback.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(self.bin.join("vastai"))
            .args(["--url", &self.url, "--api-key", VAST_KEY, "--retry", "1"])
            .args(args)
            .env("HOME", self.home.path())
            .env("NO_COLOR", "1")
            .env("COLUMNS", "200")
            .output()
            .expect("run the official vastai client");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success() && !stderr.contains("Traceback") && !stdout.contains("Traceback"),
            "vastai {args:?} failed against the sandbox:\n{stdout}\n{stderr}"
        );
        stdout
    }

    /// The same with `--raw` (before the command: `--args` takes everything after it), parsed
    /// (the CLI prints Python reprs for a few commands).
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--raw"];
        all.extend_from_slice(args);
        let text = self.run(&all);
        serde_json::from_str(&text)
            .or_else(|_| serde_json::from_str(&python_repr_to_json(&text)))
            .unwrap_or_else(|e| panic!("vastai {args:?} printed no JSON ({e}):\n{text}"))
    }

    /// Runs a snippet of the official SDK (`vastai.api.*`) with `client` bound to the sandbox.
    fn sdk(&self, code: &str) {
        let script = format!(
            "from vastai.api.client import VastClient\n\
             client = VastClient(api_key={VAST_KEY:?}, server_url={:?}, retry=1)\n{code}\n",
            self.url
        );
        let out = Command::new(self.bin.join("python"))
            .args(["-c", &script])
            .env("HOME", self.home.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the official SDK failed against the sandbox:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `{'key_id': 701, 'success': True}` (the CLI prints some answers with Python's repr) as JSON.
fn python_repr_to_json(s: &str) -> String {
    s.trim()
        .replace('\'', "\"")
        .replace("True", "true")
        .replace("False", "false")
        .replace("None", "null")
}

/// What is compared of a request.
#[derive(Debug, Clone)]
struct Shape {
    method: String,
    /// The path with every all-digit segment as `{id}`.
    path: String,
    query: BTreeSet<String>,
    /// Top-level JSON body keys and their types (`null` matches any type: the official client
    /// sends `price: null` on demand).
    body: BTreeMap<String, &'static str>,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shape(r: &Value) -> Shape {
    let path = r["path"]
        .as_str()
        .unwrap()
        .split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    Shape {
        method: r["method"].as_str().unwrap().to_owned(),
        path: path.trim_end_matches('/').to_owned(),
        query: r["query"]
            .as_object()
            .map(|q| q.keys().cloned().collect())
            .unwrap_or_default(),
        body: r["body"]
            .as_object()
            .map(|b| b.iter().map(|(k, v)| (k.clone(), json_type(v))).collect())
            .unwrap_or_default(),
    }
}

/// Why `ours` does not match `theirs` (`None`: it matches).
fn mismatch(ours: &Shape, theirs: &Shape) -> Option<String> {
    if ours.method != theirs.method || ours.path != theirs.path {
        return Some(format!(
            "{} {} vs the official {} {}",
            ours.method, ours.path, theirs.method, theirs.path
        ));
    }
    if ours.query != theirs.query {
        return Some(format!(
            "query keys {:?} vs the official {:?}",
            ours.query, theirs.query
        ));
    }
    for (k, t) in &ours.body {
        match theirs.body.get(k) {
            None => {
                return Some(format!(
                    "body key `{k}`, which the official client never sends"
                ));
            }
            Some(o) if *o != "null" && o != t => {
                return Some(format!(
                    "body `{k}` is a {t}; the official client sends a {o}"
                ));
            }
            _ => {}
        }
    }
    None
}

async fn requests(sb: &Sandbox) -> Vec<Value> {
    sb.control("vastai", "GET", "/_sandbox/requests", "").await["requests"]
        .as_array()
        .unwrap()
        .clone()
}

/// Requests by operation (the sandbox's own names: search, create, show, list, manage, ...).
fn by_op(reqs: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in reqs {
        out.entry(r["op"].as_str().unwrap().to_owned())
            .or_default()
            .push(r.clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpuproxyd_asks_vast_what_the_official_client_asks_and_the_sandbox_answers_it() {
    let s = services::shared();
    let db = TestDb::new(s, "vast_conformance");
    let sb = Sandbox::start(&["--provision-time", "1s"]);
    let vast = Official::new(&sb.vast);

    // 1. the official client, every operation, through its formatting and --raw
    let offers = vast.json(&[
        "search",
        "offers",
        "gpu_name in [RTX_4090,RTX_3090] num_gpus=1 disk_space>=50",
        "--storage",
        "50",
        "--limit",
        "64",
        "--order",
        "dph_total",
    ]);
    let offers = offers.as_array().unwrap();
    assert!(
        offers.len() > 2,
        "a filtered search finds offers (the CLI sends `num_gpus` as the string \"1\")"
    );
    assert!(
        offers.iter().all(|o| o["num_gpus"] == 1),
        "the filter holds"
    );
    vast.run(&["search", "offers", "num_gpus=1", "--limit", "3"]);
    // the SDK's search adds `rented` to the CLI's default filters
    vast.sdk(&format!(
        "from vastai.api.offers import search_offers\n\
         o = search_offers(client, query={{'gpu_name': {{'in': ['RTX 4090']}}, \
             'disk_space': {{'gte': 20}}}}, order=[['dph_total', 'asc']], limit=64, storage=20)\n\
         assert o, 'offers'\n\
         one = search_offers(client, query={{'id': {{'eq': {}}}}}, limit=1, storage=20, \
             offer_type='bid')\n\
         assert len(one) == 1, one\n",
        offers[0]["id"]
    ));
    let bids = vast.json(&[
        "search",
        "offers",
        "num_gpus=1",
        "--type",
        "bid",
        "--limit",
        "3",
    ]);
    let on_demand = vast.json(&[
        "create",
        "instance",
        &offers[0]["id"].to_string(),
        "--image",
        "pytorch/pytorch",
        "--disk",
        "50",
        "--label",
        "official-1",
        "--env",
        "-e HF_HOME=/workspace -p 8000:8000",
        "--ssh",
        "--cancel-unavail",
    ]);
    assert_eq!(on_demand["success"], true, "{on_demand}");
    let od = on_demand["new_contract"].to_string();
    let bid = vast.json(&[
        "create",
        "instance",
        &bids[0]["id"].to_string(),
        "--image",
        "pytorch/pytorch",
        "--disk",
        "20",
        "--label",
        "official-2",
        "--bid_price",
        "0.2",
        "--ssh",
    ]);
    let bid_id = bid["new_contract"].to_string();
    // a workload launched at start: a script, the image's entrypoint with arguments, env
    let launched = vast.json(&[
        "create",
        "instance",
        &offers[1]["id"].to_string(),
        "--image",
        "vllm/vllm-openai:latest",
        "--disk",
        "30",
        "--label",
        "official-3",
        "--env",
        "-e HF_HOME=/workspace -p 8000:8000 -p 9000:9000/udp",
        "--onstart-cmd",
        "echo started >> /var/log/onstart.log",
        "--args",
        "--model",
        "facebook/opt-125m",
    ]);
    assert_eq!(launched["success"], true, "{launched}");
    let shown = vast.json(&["show", "instance", &launched["new_contract"].to_string()]);
    assert_eq!(shown["image_runtype"], "args", "{shown}");
    assert_eq!(shown["image_args"], json!(["--model", "facebook/opt-125m"]));
    // enough instances for the v1 list (25 a page) and the charges (100 a page, as gpuproxyd
    // asks for them) to page, through the official SDK
    let taken = [
        offers[0]["id"].to_string(),
        offers[1]["id"].to_string(),
        offers[2]["id"].to_string(),
        bids[0]["id"].to_string(),
    ];
    let more_offers = vast.json(&["search", "offers", "num_gpus>=1", "--limit", "150"]);
    let ids: Vec<String> = more_offers
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].to_string())
        .filter(|id| !taken.contains(id))
        .take(100)
        .collect();
    vast.sdk(&format!(
        "from vastai.api.instances import create_instance\n\
         for i in {ids:?}:\n    \
             r = create_instance(client, int(i), image='ubuntu:22.04', disk=10, label='bulk', ssh=True)\n    \
             assert r['success'], r\n"
    ));
    let shown = vast.json(&["show", "instance", &od]);
    assert_eq!(shown["id"].to_string(), od);
    assert!(
        shown["extra_env"].is_object(),
        "the client turned the pairs into a map: {shown}"
    );
    assert_eq!(shown["extra_env"]["HF_HOME"], "/workspace");
    let all = vast.json(&["show", "instances"]);
    assert!(
        all.as_array().unwrap().len() > 25,
        "the client paged the v1 list"
    );
    vast.run(&["show", "instances"]);
    vast.run(&["stop", "instance", &od]);
    vast.run(&["start", "instance", &od]);
    vast.run(&["reboot", "instance", &od]);
    vast.run(&["change", "bid", &bid_id, "--price", "0.3"]);
    vast.run(&["label", "instance", &od, "relabelled"]);
    support::eventually("the instance scheduled", || async {
        let s = vast.json(&["show", "instance", &od]);
        (!s["actual_status"].is_null()).then_some(())
    })
    .await;
    let key = vast.json(&["attach", "ssh", &od, KEY_A]);
    vast.run(&["detach", "ssh", &od, &key["key_id"].to_string()]);
    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/traffic",
        &json!({"id": od.parse::<u64>().unwrap(), "up_gb": 3.0, "down_gb": 12.5}).to_string(),
    )
    .await;
    let page1 = vast.json(&["show", "invoices-v1", "--charges", "--limit", "2"]);
    let token = page1["next_token"].as_str().expect("more than one page");
    let page2 = vast.json(&[
        "show",
        "invoices-v1",
        "--charges",
        "--limit",
        "2",
        "--next-token",
        token,
    ]);
    assert_eq!(page2["results"].as_array().unwrap().len(), 2, "{page2}");
    vast.run(&[
        "show",
        "invoices-v1",
        "--charges",
        "--verbose",
        "--format",
        "tree",
    ]);
    vast.run(&["show", "invoices-v1", "--charges"]);
    // volumes: searched, created on an offer's machine, shown, linked at create, deleted
    let machine = offers[2]["machine_id"].to_string();
    let vol_offers = vast.json(&["search", "volumes", &format!("machine_id={machine}")]);
    let vol_offer = vol_offers[0]["id"].to_string();
    vast.run(&["search", "volumes", "--storage", "20", "--limit", "64"]);
    vast.run(&[
        "create",
        "volume",
        &vol_offer,
        "-s",
        "20",
        "-n",
        "official-vol",
    ]);
    let vols = vast.json(&["show", "volumes"]);
    let vol = vols
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["label"] == "official-vol")
        .unwrap_or_else(|| panic!("the volume by its name: {vols}"))["id"]
        .to_string();
    vast.run(&["show", "volumes"]);
    let linked = vast.json(&[
        "create",
        "instance",
        &offers[2]["id"].to_string(),
        "--image",
        "ubuntu:22.04",
        "--disk",
        "10",
        "--ssh",
        "--link-volume",
        &vol,
        "--mount-path",
        "/data",
    ]);
    assert_eq!(linked["success"], true, "{linked}");
    vast.run(&[
        "destroy",
        "instance",
        &linked["new_contract"].to_string(),
        "-y",
    ]);
    vast.run(&["delete", "volume", &vol]);

    // hosts' price increases: listed, accepted for one instance, rejected for another
    let launched_id = launched["new_contract"].to_string();
    for pid in [&od, &launched_id] {
        sb.control(
            "vastai",
            "POST",
            "/_sandbox/vast/price_increase",
            &json!({"id": pid.parse::<u64>().unwrap(), "gpu_factor": 1.2}).to_string(),
        )
        .await;
    }
    let pending = vast.json(&["show", "pending-price-increases"]);
    assert_eq!(
        pending["pending_price_increases"].as_array().map(Vec::len),
        Some(2),
        "{pending}"
    );
    vast.run(&["show", "pending-price-increases"]);
    vast.run(&["accept", "price-increase", &od, "--yes"]);
    vast.run(&["reject", "price-increase", &launched_id, "--yes"]);
    vast.run(&["destroy", "instance", &bid_id, "-y"]);
    let user = vast.json(&["show", "user"]);
    assert!(user["id"].is_number(), "{user}");
    let official = by_op(&requests(&sb).await);
    sb.control("vastai", "POST", "/_sandbox/requests/clear", "")
        .await;

    // 2. gpuproxyd doing the same
    let token = account(&db, "conformance", 10_000.0, 10);
    let d = sb
        .daemon(
            &db,
            &[
                "rentals.reconcile_interval_ms=300",
                "rentals.billing_reconcile_interval_ms=300",
            ],
        )
        .await;
    let r = call(
        &d,
        &token,
        "GET",
        "/v1/offers?providers=vastai&gpu=RTX%204090",
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let o = cheapest(&d, &token, "vastai", "").await;
    let r = post(&d, &token, &rent_body(o["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let inst = r.json();
    let id = inst["id"].as_str().unwrap().to_owned();
    let b = cheapest(&d, &token, "vastai", "&interruptible=true").await;
    let r = post(&d, &token, &rent_body(b["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let bid_inst = r.json();
    let bid_ours = bid_inst["id"].as_str().unwrap().to_owned();
    // the same workload through gpuproxyd: the same create body as the official client's
    let w = cheapest(&d, &token, "vastai", "&disk_gb=30").await;
    let launch = json!({"offer_id": w["id"], "image": "vllm/vllm-openai:latest", "disk_gb": 30,
                        "env": {"HF_HOME": "/workspace"},
                        "ports": [{"port": 8000}, {"port": 9000, "protocol": "udp"}],
                        "onstart": "echo started >> /var/log/onstart.log",
                        "args": ["--model", "facebook/opt-125m"]});
    let r = post(&d, &token, &launch.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let launched_ours = r.json()["provider_instance_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // a small increase (accepted) and a large one (rejected) on gpuproxyd's instances
    for (pid, factor) in [
        (inst["provider_instance_id"].as_str().unwrap(), 1.05),
        (launched_ours.as_str(), 1.5),
    ] {
        sb.control(
            "vastai",
            "POST",
            "/_sandbox/vast/price_increase",
            &json!({"id": pid.parse::<u64>().unwrap(), "gpu_factor": factor}).to_string(),
        )
        .await;
    }
    let v = until(&d, &token, &id, "running with its key", |v| {
        v["status"] == "running" && v["ssh_keys"][0]["state"] == "attached"
    })
    .await;
    assert_eq!(v["status"], "running");
    for (path, body) in [
        (format!("/v1/instances/{id}/stop"), String::new()),
        (format!("/v1/instances/{id}/start"), String::new()),
    ] {
        let r = call(&d, &token, "POST", &path, &body, None).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.json());
    }
    let new_bid = bid_inst["bid_per_hour"].as_f64().unwrap() * 1.5;
    let r = call(
        &d,
        &token,
        "PUT",
        &format!("/v1/instances/{bid_ours}/bid"),
        &json!({"bid_per_hour": (new_bid * 1e4).round() / 1e4}).to_string(),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/instances/{bid_ours}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    // a volume: offers, created, attached at rent, deleted once its instance is gone
    let vo = call(&d, &token, "GET", "/v1/volume-offers?size_gb=20", "", None)
        .await
        .json();
    let all = call(
        &d,
        &token,
        "GET",
        "/v1/offers?providers=vastai&limit=200&sort=price",
        "",
        None,
    )
    .await
    .json();
    let (vol_offer, host) = vo["offers"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| {
            let o = all["offers"].as_array().unwrap().iter().find(|o| {
                o["machine_id"] == v["machine_id"]
                    && o["id"] != inst["offer_id"]
                    && o["id"] != w["id"]
            })?;
            Some((v["id"].clone(), o["id"].clone()))
        })
        .expect("a volume offer on the machine of a listed offer");
    let r = call(
        &d,
        &token,
        "POST",
        "/v1/volumes",
        &json!({"offer_id": vol_offer, "size_gb": 20}).to_string(),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let vol_ours = r.json()["id"].as_str().unwrap().to_owned();
    let mut body: Value = serde_json::from_str(&rent_body(host.as_str().unwrap())).unwrap();
    body["volume"] = json!({"id": vol_ours, "mount_path": "/data"});
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let on_vol = r.json()["id"].as_str().unwrap().to_owned();
    support::rentals::destroy_until_ended(&d, &token, &on_vol).await;
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/volumes/{vol_ours}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());

    // the reconciler pages the v1 list and the billing run pages the charges
    let ours = support::eventually("the list paged and the charges read", || async {
        let ours = by_op(&requests(&sb).await);
        let paged = |op: &str| {
            ours.get(op)
                .is_some_and(|rs| rs.iter().any(|r| r["query"].get("after_token").is_some()))
        };
        (paged("list")
            && paged("charges")
            && ours.contains_key("accept_price_increase")
            && ours.contains_key("reject_price_increase"))
        .then_some(ours)
    })
    .await;

    // 3. the launched workload (a script, arguments to the entrypoint, env and ports): the values
    // too, not only the shape
    let body_of = |reqs: &[Value], image: &str| -> Value {
        reqs.iter()
            .map(|r| r["body"].clone())
            .find(|b| b["image"] == image)
            .unwrap_or_else(|| panic!("no create of {image}"))
    };
    let (theirs, mine) = (
        body_of(&official["create"], "vllm/vllm-openai:latest"),
        body_of(&ours["create"], "vllm/vllm-openai:latest"),
    );
    for k in ["image", "env", "onstart", "runtype", "args"] {
        assert_eq!(mine[k], theirs[k], "`{k}`: ours {mine}, theirs {theirs}");
    }
    assert_eq!(mine["disk"].as_f64(), theirs["disk"].as_f64());

    // operation by operation
    let mut problems = Vec::new();
    for (op, reqs) in &ours {
        let Some(theirs) = official.get(op) else {
            problems.push(format!(
                "`{op}`: gpuproxyd sent {} request(s) the official client never made, e.g. {}",
                reqs.len(),
                reqs[0]
            ));
            continue;
        };
        let theirs: Vec<Shape> = theirs.iter().map(shape).collect();
        for r in reqs {
            let mine = shape(r);
            let why: Vec<String> = theirs.iter().filter_map(|t| mismatch(&mine, t)).collect();
            if why.len() == theirs.len() {
                problems.push(format!("`{op}` {r}: {}", why.join("; ")));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "gpuproxyd's requests differ from the official client's:\n{}",
        problems.join("\n")
    );
    let performed: BTreeSet<&str> = ours.keys().map(String::as_str).collect();
    for op in [
        "search",
        "create",
        "show",
        "list",
        "manage",
        "set_bid",
        "ssh_attach",
        "destroy",
        "charges",
        "pending_price_increases",
        "accept_price_increase",
        "reject_price_increase",
        "volume_search",
        "volume_create",
        "volume_list",
        "volume_delete",
    ] {
        assert!(
            performed.contains(op),
            "gpuproxyd did not `{op}`: {performed:?}"
        );
    }
    assert_eq!(
        official.get("unknown"),
        None,
        "the sandbox knows every route the official client used"
    );
}
