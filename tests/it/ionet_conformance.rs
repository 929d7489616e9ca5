//! The sandbox io.net and gpuproxyd's io.net client held to io.net's published definitions.
//!
//! io.net publishes each VMaaS endpoint's OpenAPI 3.1 definition on its reference pages; the
//! repository keeps them in `openapi/providers/ionet-vmaas.json` (one document, each operation
//! with its source page). This test runs gpuproxyd against the sandbox for every io.net call it
//! makes (the catalogue, a rental in a located and an unlocated configuration, status polls and
//! SSH details, the reconciler's list, an extension, a destroy), adds requests the definitions
//! refuse (`page=0`, a field the deploy body has not, a duration of 0, a missing currency, an id
//! that is not a UUID), and checks every recorded exchange with a JSON Schema validator
//! (`jsonschema`, pinned, in a cached virtual environment): gpuproxyd's requests are valid, the
//! sandbox answers 422 exactly where the definitions refuse a request, and every answer fits the
//! published response schema of its status.

use crate::support;
use crate::support::stack::Stack;

use std::process::Command;

use serde_json::{Value, json};
use support::rentals::{account, call, cheapest, post, until};
use support::sandbox::IONET_KEY;

/// The JSON Schema validator, pinned.
const JSONSCHEMA: &str = "jsonschema==4.23.0";

const VMAAS: &str = "/enterprise/v1/io-cloud/vmaas";

/// Every recorded exchange checked against the definitions: (how many, the problems).
fn check(exchanges: &Value) -> (u64, Vec<String>) {
    let bin = support::pyenv::venv(JSONSCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exchanges.json");
    std::fs::write(&file, exchanges.to_string()).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(bin.join("python"))
        .arg(format!("{root}/tests/it/support/openapi_check.py"))
        .arg(format!("{root}/openapi/providers/ionet-vmaas.json"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi_check.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["checked"].as_u64().unwrap(),
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_net_requests_and_answers_follow_the_published_definitions() {
    let Stack { db, sb, d } = Stack::start(
        "ionet_conformance",
        &["--provision-time", "500ms"],
        &["rentals.reconcile_interval_ms=200"],
    )
    .await;
    let token = account(&db, "renter", 10_000.0, 10);

    // gpuproxyd's calls: a located and an unlocated configuration, polls, extend, destroy
    let located = cheapest(&d, &token, "ionet", "").await;
    let r = call(
        &d,
        &token,
        "GET",
        "/v1/offers?providers=ionet&limit=200",
        "",
        None,
    )
    .await;
    let unlocated = r.json()["offers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"].as_str().unwrap().ends_with("@any") && o["available"] == true)
        .cloned()
        .expect("an io.net configuration listed without a location");
    let mut ids = Vec::new();
    for o in [&located, &unlocated] {
        let body = json!({"offer_id": o["id"], "image": "general", "disk_gb": 20,
                          "duration_hours": 2, "max_duration_hours": 2,
                          "ssh_public_key": support::rentals::KEY_A})
        .to_string();
        let r = post(&d, &token, &body).await;
        assert_eq!(r.status, 201, "{}: {:?}", o["id"], r.json());
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let deps = sb.ionet_deployments().await;
    assert!(
        deps.iter().all(|d| d["location"] != "any"),
        "a real location is sent, never `any`: {deps:?}"
    );
    for id in &ids {
        let v = until(&d, &token, id, "running with SSH", |v| {
            v["status"] == "running" && v["ssh"].is_object()
        })
        .await;
        assert_eq!(v["ssh"]["port"], 30022, "{v}");
    }
    let r = call(
        &d,
        &token,
        "POST",
        &format!("/v1/instances/{}/extend", ids[0]),
        r#"{"hours": 1}"#,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/instances/{}", ids[1]),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    support::eventually("the reconciler listed deployments", || async {
        (sb.calls("ionet", "list").await > 0).then_some(())
    })
    .await;

    // requests the definitions refuse, straight to the sandbox with the key
    let dep = deps[0]["id"].as_str().unwrap();
    let key = Some(("x-api-key", IONET_KEY));
    let refused = [
        (
            "GET",
            format!("{VMAAS}/deployment/{dep}/vms?page=0&page_size=20"),
            String::new(),
        ),
        (
            "GET",
            format!("{VMAAS}/deployment/{dep}/vms?page=1&page_size=500"),
            String::new(),
        ),
        (
            "GET",
            format!("{VMAAS}/deployment/not-a-uuid"),
            String::new(),
        ),
        (
            "POST",
            format!("{VMAAS}/deploy"),
            json!({"resource_private_name": "x", "duration_hours": 1, "gpus_per_vm": 1,
                   "hardware_id": 12, "location_ids": ["US"], "image": "ubuntu:22.04"})
            .to_string(),
        ),
        (
            "POST",
            format!("{VMAAS}/deploy"),
            json!({"resource_private_name": "x", "duration_hours": 0, "gpus_per_vm": 9,
                   "hardware_id": 12})
            .to_string(),
        ),
        (
            "GET",
            format!(
                "{VMAAS}/price?location_ids=%5B%22US%22%5D&hardware_id=12&duration_hours=1&gpus_per_vm=1&replica_count=1"
            ),
            String::new(),
        ),
        (
            "POST",
            format!("{VMAAS}/deployment/{dep}/extend"),
            r#"{"duration_hours": 0}"#.to_owned(),
        ),
    ];
    for (method, path, body) in &refused {
        let v = support::sandbox::raw_call(&sb.ionet, method, path, body, key).await;
        let detail = v["detail"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: {v}"));
        assert!(
            detail
                .iter()
                .all(|e| e["loc"].is_array() && e["msg"].is_string()),
            "{path}: {v}"
        );
    }
    // and ones they accept that the sandbox answers as io.net does
    let (cards, hw, place) = support::rentals::ionet_config(located["id"].as_str().unwrap());
    let v = support::sandbox::raw_call(
        &sb.ionet,
        "GET",
        &format!(
            "{VMAAS}/price?location_ids=%5B%22{place}%22%5D&hardware_id={}&currency=usdc&duration_hours=3&gpus_per_vm={cards}&replica_count=1",
            hw.replace(' ', "%20")
        ),
        "",
        key,
    )
    .await;
    assert!(v["data"]["total_cost_usdc"].is_number(), "{v}");

    let exchanges = sb.control("ionet", "GET", "/_sandbox/requests", "").await;
    let (checked, problems) = check(&exchanges);
    assert!(
        problems.is_empty(),
        "exchanges that break io.net's published definitions:\n{}",
        problems.join("\n")
    );
    let ops: std::collections::BTreeSet<&str> = exchanges["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["op"].as_str().unwrap())
        .collect();
    for op in [
        "hardware",
        "available",
        "deploy",
        "show",
        "vms",
        "list",
        "extend",
        "destroy",
        "price",
    ] {
        assert!(ops.contains(op), "no `{op}` exchange was checked: {ops:?}");
    }
    assert!(checked as usize >= refused.len() + 9, "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_io_net_cannot_take_is_refused_by_name_never_dropped() {
    let Stack { db, sb, d } =
        Stack::start("ionet_launch", &["--provision-time", "500ms"], &[]).await;
    let token = account(&db, "renter", 10_000.0, 10);
    let o = cheapest(&d, &token, "ionet", "").await;
    let id = o["id"].as_str().unwrap();
    for (extra, field) in [
        (json!({"image": "pytorch/pytorch:latest"}), "`image`"),
        (json!({"env": {"HF_TOKEN": "x"}}), "`env`"),
        (json!({"disk_gb": 90_000}), "`disk_gb`"),
        (json!({"onstart": "nvidia-smi"}), "`onstart`"),
        (json!({"args": ["--port", "8000"]}), "`launch_mode`"),
        (json!({"launch_mode": "entrypoint"}), "`launch_mode`"),
        (
            json!({"template_hash_id": "661d064bbda1f2a133816b6d55da07c3"}),
            "`template_hash_id`",
        ),
    ] {
        let body = support::rentals::rent_body_with(id, &extra);
        let r = post(&d, &token, &body.to_string()).await;
        assert_eq!(r.status, 400, "{extra}: {:?}", r.json());
        let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(field), "{extra}: {msg}");
    }
    assert_eq!(sb.calls("ionet", "deploy").await, 0, "nothing was deployed");
    // the VM image type is sent the documented way
    let body: Value = json!({"offer_id": id, "image": "datascience", "disk_gb": 20});
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let exchanges = sb.control("ionet", "GET", "/_sandbox/requests", "").await;
    let deploy = exchanges["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["op"] == "deploy")
        .unwrap()
        .clone();
    assert_eq!(deploy["body"]["vm_image_type"], "datascience", "{deploy}");
    // a rental by spec with a container image does not fail over into io.net
    let spec = json!({"spec": {"providers": ["ionet"], "gpu": o["gpu_model"],
                               "max_price_per_hour": 1000.0},
                      "image": "pytorch/pytorch:latest", "disk_gb": 20});
    let r = post(&d, &token, &spec.to_string()).await;
    assert_eq!(r.status, 409, "{:?}", r.json());
    assert_eq!(sb.calls("ionet", "deploy").await, 1);
    // nor one with a start script io.net cannot run
    let spec = json!({"spec": {"providers": ["ionet"], "gpu": o["gpu_model"],
                               "max_price_per_hour": 1000.0},
                      "image": "general", "disk_gb": 20, "onstart": "nvidia-smi"});
    let r = post(&d, &token, &spec.to_string()).await;
    assert_eq!(r.status, 409, "{:?}", r.json());
    assert_eq!(sb.calls("ionet", "deploy").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_destroyed_in_its_first_hour_is_charged_the_hour_as_io_net_charges_it() {
    let Stack { db, sb, d } = Stack::start(
        "ionet_first_hour",
        &["--provision-time", "300ms"],
        &["ratelimit.enabled=false"],
    )
    .await;
    let token = account(&db, "renter", 10_000.0, 10);
    let o = cheapest(&d, &token, "ionet", "").await;
    let body = json!({"offer_id": o["id"], "image": "general", "disk_gb": 20, "duration_hours": 3});
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let price = r.json()["price_per_hour"].as_f64().unwrap();
    let v = until(&d, &token, &id, "running", |v| v["status"] == "running").await;
    // the three hours are paid at once: spend the moment they are bought, what io.net has paid
    let dep = sb.ionet_deployment(&v["provider_instance_id"]).await;
    let paid = dep["amount_paid"].as_f64().unwrap();
    let committed = support::rentals::spent(&db, "renter").await;
    assert!(
        (committed - paid).abs() < 1e-4 && (paid - 3.0 * price).abs() < 1e-3,
        "the ledger counts the {paid} USD paid for 3 h at once: {committed}"
    );
    let v = support::rentals::destroy_until_ended(&d, &token, &id).await;
    let refund = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "refund")
        .unwrap_or_else(|| panic!("the unused hours come back, the first hour kept: {v}"))
        .clone();
    assert!(
        refund["detail"].as_str().unwrap().contains("first 1 h"),
        "{refund}"
    );
    let dep = sb.ionet_deployment(&v["provider_instance_id"]).await;
    let charged = dep["charged_usd"].as_f64().unwrap();
    let spent = support::rentals::spent(&db, "renter").await;
    assert!(
        (spent - charged).abs() < 1e-4 && (spent - price).abs() < 1e-4,
        "the ledger ({spent}) charges what io.net does ({charged}): the first hour at {price}/h"
    );
    let usage = call(&d, &token, "GET", "/v1/usage", "", None).await.json();
    assert!(
        (usage["totals"]["usd"].as_f64().unwrap() - spent).abs() < 1e-4,
        "{usage}"
    );
    // a second DELETE charges nothing more
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/instances/{id}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!((support::rentals::spent(&db, "renter").await - spent).abs() < 1e-9);
}
