//! Volumes (issue 30, point 3) against the sandbox Vast: created from a volume offer, billed by
//! the GB-month and counted by the budget, attached at rent to an offer on its machine only, one
//! instance at a time, surviving two rentals and the reconciler, deleted only by its owner.
//! io.net has none: refused by name.

use crate::support;
use crate::support::stack::Stack;

use serde_json::{Value, json};
use support::accounts::TestDb;
use support::rentals::{account, call, message, post, rent_body_with, until};
use support::sandbox::Sandbox;

const FAST: &[&str] = &[
    "rentals.status_cache_ms=100",
    "rentals.reconcile_interval_ms=200",
    "ratelimit.enabled=false",
];

async fn account_event_types(db: &TestDb<'_>, account: &str) -> Vec<(String, Value)> {
    db.client()
        .await
        .query(
            "SELECT e.type, e.data FROM account_events e JOIN accounts a ON a.id = e.account_id \
             WHERE a.name = $1 ORDER BY e.seq",
            &[&account],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn sandbox_volumes(sb: &Sandbox) -> Vec<Value> {
    sb.control("vastai", "GET", "/_sandbox/vast/volumes", "")
        .await["volumes"]
        .as_array()
        .unwrap()
        .clone()
}

/// Vast on-demand offers on `machine` (or on any other machine with `other`).
async fn offers_on(
    d: &support::daemon::DaemonProc,
    token: &str,
    machine: &str,
    other: bool,
) -> Vec<Value> {
    let r = call(
        d,
        token,
        "GET",
        "/v1/offers?providers=vastai&limit=200&sort=price",
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    r.json()["offers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| (o["machine_id"] == machine) != other && o["machine_id"].is_string())
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_survives_two_rentals_and_is_deleted_only_by_its_owner() {
    let mut cfg = FAST.to_vec();
    // a rented offer leaves cached answers until the next refresh
    cfg.push("offers.cache_ttl_ms=300");
    cfg.push("rentals.billing_reconcile_interval_ms=300");
    let Stack { db, sb, d } = Stack::start("volumes", &["--provision-time", "300ms"], &cfg).await;
    let token = account(&db, "keeper", 10_000.0, 5);

    // io.net has no volumes
    let r = call(
        &d,
        &token,
        "GET",
        "/v1/volume-offers?provider=ionet",
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(message(&r).contains("ionet"), "{}", message(&r));

    let r = call(&d, &token, "GET", "/v1/volume-offers?size_gb=50", "", None).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let vo = r.json()["offers"][0].clone();
    assert!(
        vo["machine_id"].is_string() && vo["price_per_gb_month"].is_number(),
        "{vo}"
    );
    // bad bodies are named and create nothing
    for (bad, field) in [
        (json!({"offer_id": vo["id"], "size_gb": 0}), "size_gb"),
        (json!({"offer_id": "ionet:1", "size_gb": 10}), "offer_id"),
        (
            json!({"offer_id": vo["id"], "size_gb": 10, "colour": "red"}),
            "colour",
        ),
        (json!({"size_gb": 10}), "offer_id"),
    ] {
        let r = call(&d, &token, "POST", "/v1/volumes", &bad.to_string(), None).await;
        assert_eq!(r.status, 400, "{bad}: {:?}", r.json());
        assert!(message(&r).contains(field), "{bad}: {}", message(&r));
    }
    assert_eq!(sb.calls("vastai", "volume_create").await, 0);

    // a budget too small for it: 402 before Vast is asked
    let poor = account(&db, "poor", 0.0001, 5);
    let body = json!({"offer_id": vo["id"], "size_gb": 50, "name": "data"}).to_string();
    let r = call(&d, &poor, "POST", "/v1/volumes", &body, None).await;
    assert_eq!(r.status, 402, "{:?}", r.json());
    assert_eq!(sb.calls("vastai", "volume_create").await, 0);

    let r = call(&d, &token, "POST", "/v1/volumes", &body, None).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let vol = r.json();
    let vid = vol["id"].as_str().unwrap().to_owned();
    assert_eq!(
        vol["status"], "available",
        "found by its name at once: {vol}"
    );
    let machine = vol["machine_id"].as_str().unwrap().to_owned();
    let want_rate = 50.0 * vo["price_per_gb_month"].as_f64().unwrap() / 720.0;
    assert!(
        (vol["price_per_hour"].as_f64().unwrap() - want_rate).abs() < 1e-6,
        "{vol}"
    );
    let at_vast = sandbox_volumes(&sb).await;
    assert_eq!(at_vast.len(), 1);
    assert_eq!(at_vast[0]["name"], vid.as_str(), "named by our id");
    assert_eq!(at_vast[0]["machine_id"].to_string(), machine);

    let here = offers_on(&d, &token, &machine, false).await;
    assert!(!here.is_empty(), "offers on the volume's machine");
    let elsewhere = offers_on(&d, &token, &machine, true).await;
    let attach = json!({"volume": {"id": vid, "mount_path": "/data"}});
    // an offer on another machine cannot attach it; a bad mount path is named
    let r = post(
        &d,
        &token,
        &rent_body_with(elsewhere[0]["id"].as_str().unwrap(), &attach).to_string(),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(message(&r).contains("machine"), "{}", message(&r));
    let r = post(
        &d,
        &token,
        &rent_body_with(
            here[0]["id"].as_str().unwrap(),
            &json!({"volume": {"id": vid, "mount_path": "data/../x"}}),
        )
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(message(&r).contains("mount_path"), "{}", message(&r));
    let io = support::rentals::cheapest(&d, &token, "ionet", "").await;
    let r = post(
        &d,
        &token,
        &rent_body_with(io["id"].as_str().unwrap(), &attach).to_string(),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(message(&r).contains("volume"), "{}", message(&r));
    assert_eq!(sb.calls("ionet", "deploy").await, 0);

    // first rental
    let r = post(
        &d,
        &token,
        &rent_body_with(here[0]["id"].as_str().unwrap(), &attach).to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let first = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["volume"]["mount_path"], "/data");
    let create = sb
        .requests("vastai", "create")
        .await
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        create["body"]["volume_info"],
        json!({"mount_path": "/data", "create_new": false,
               "volume_id": at_vast[0]["id"]}),
        "linked as the official client links it: {create}"
    );
    until(&d, &token, &first, "running", |v| v["status"] == "running").await;
    let v = call(&d, &token, "GET", &format!("/v1/volumes/{vid}"), "", None)
        .await
        .json();
    assert_eq!(v["attached_to"], first.as_str(), "{v}");
    // in use: no delete, no second instance
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/volumes/{vid}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 409, "{:?}", r.json());
    assert_eq!(r.json()["error"]["code"], "volume_in_use");
    let second_offer = here.get(1).unwrap_or(&here[0]);
    let r = post(
        &d,
        &token,
        &rent_body_with(second_offer["id"].as_str().unwrap(), &attach).to_string(),
    )
    .await;
    assert_eq!(r.status, 409, "{:?}", r.json());
    assert_eq!(sb.calls("vastai", "volume_delete").await, 0);

    // the instance ends; the volume stays through reconciler rounds
    support::rentals::destroy_until_ended(&d, &token, &first).await;
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let v = call(&d, &token, "GET", &format!("/v1/volumes/{vid}"), "", None)
        .await
        .json();
    assert_eq!(v["status"], "available", "{v}");
    assert_eq!(v["attached_to"], Value::Null);
    assert_eq!(sandbox_volumes(&sb).await[0]["deleted"], false);
    assert_eq!(
        sb.calls("vastai", "volume_delete").await,
        0,
        "never by the reconciler"
    );

    // second rental, by spec: only offers on the volume's machine are tried
    let spec = json!({"spec": {"max_price_per_hour": 100, "providers": ["vastai"]},
                      "image": "pytorch/pytorch:latest", "disk_gb": 20,
                      "volume": {"id": vid, "mount_path": "/data"}});
    let second = support::eventually("a rental by spec on the volume's machine", || async {
        let r = post(&d, &token, &spec.to_string()).await;
        assert!(matches!(r.status, 201 | 409), "{:?}", r.json());
        (r.status == 201).then(|| r.json())
    })
    .await;
    assert!(
        here.iter().any(|o| o["id"] == second["offer_id"]),
        "on the volume's machine: {second}"
    );
    let create = sb
        .requests("vastai", "create")
        .await
        .last()
        .unwrap()
        .clone();
    assert_eq!(create["body"]["volume_info"]["volume_id"], at_vast[0]["id"]);
    let id2 = second["id"].as_str().unwrap().to_owned();
    support::rentals::destroy_until_ended(&d, &token, &id2).await;

    // Vast's bill for the volume (a `volume-<id>` line) is reconciled with the ledger's
    let (_, admin) = db.account_with_key("auditor", &["admin"]);
    let pid = format!("volume-{}", at_vast[0]["id"]);
    let line = support::eventually("the volume's charges compared", || async {
        let v = call(&d, &admin, "GET", "/v1/admin/reconciliation", "", None)
            .await
            .json();
        v["providers"]
            .as_array()?
            .iter()
            .find(|p| p["provider"] == "vastai")?["instances"]
            .as_array()?
            .iter()
            .find(|i| {
                i["provider_instance_id"] == pid.as_str() && i["billed_usd"].as_f64() > Some(0.0)
            })
            .cloned()
    })
    .await;
    assert_eq!(line["instance_id"], vid.as_str(), "{line}");
    let (billed, ledger) = (
        line["billed_usd"].as_f64().unwrap(),
        line["ledger_usd"].as_f64().unwrap(),
    );
    // read at slightly different moments: within a second of the rate
    assert!(
        (billed - ledger).abs() <= want_rate / 3600.0 * 2.0 + 1e-6,
        "{line}"
    );

    // its owner deletes it: it stops billing
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/volumes/{vid}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["status"], "deleted");
    assert_eq!(sandbox_volumes(&sb).await[0]["deleted"], true);
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/volumes/{vid}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "deleting again changes nothing");
    assert_eq!(sb.calls("vastai", "volume_delete").await, 1);
    let types: Vec<String> = account_event_types(&db, "keeper")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert!(types.contains(&"volume.created".to_owned()), "{types:?}");
    assert!(types.contains(&"volume.deleted".to_owned()), "{types:?}");

    // usage counts it as storage, a group of its own
    let r = call(&d, &token, "GET", "/v1/usage?group_by=instance", "", None).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let groups = r.json()["groups"].as_array().unwrap().clone();
    let g = groups
        .iter()
        .find(|g| g["key"] == vid.as_str())
        .unwrap_or_else(|| panic!("the volume in usage: {groups:?}"));
    assert!(g["storage_usd"].as_f64().unwrap() > 0.0, "{g}");
    assert_eq!(g["usd"], g["storage_usd"]);
    assert_eq!(g["instance_hours"].as_f64(), Some(0.0));
}
