//! Rental lifecycle and spend control (issue 16), end to end: renting by spec with failover,
//! budgets enforced over time by the reconciler, usage reports, and reconciling the ledger with
//! what the provider billed. The daemon runs as a process against the sandbox providers over
//! HTTP, with PostgreSQL (through PgBouncer) and Redis.

mod support;

use serde_json::{Value, json};
use support::accounts::TestDb;
use support::rentals::{KEY_A, account, call, kinds, message, post, until};
use support::sandbox::Sandbox;
use support::services;

/// A rental by spec: on-demand Vast offers up to `max` USD/h, 20 GB of disk.
fn spec_body(spec: Value) -> String {
    json!({"spec": spec, "image": "pytorch/pytorch:latest", "disk_gb": 20,
           "ssh_public_key": format!("{KEY_A} test@example")})
    .to_string()
}

/// The on-demand Vast offers for 20 GB of disk, in the order a rental by spec tries them:
/// cheapest first, then the more reliable, then by id.
async fn ranked_vast_offers(d: &support::daemon::DaemonProc, token: &str) -> Vec<Value> {
    let r = call(
        d,
        token,
        "GET",
        "/v1/offers?providers=vastai&disk_gb=20&limit=200&sort=price",
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let mut offers = r.json()["offers"].as_array().unwrap().clone();
    offers.sort_by(|a, b| {
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(-1.0);
        f(a, "price_per_hour")
            .total_cmp(&f(b, "price_per_hour"))
            .then_with(|| f(b, "reliability").total_cmp(&f(a, "reliability")))
            .then_with(|| a["id"].as_str().cmp(&b["id"].as_str()))
    });
    offers
}

/// The Vast sandbox's own id of an offer (`vastai:<id>`).
fn ask_id(offer: &Value) -> u64 {
    offer["id"]
        .as_str()
        .unwrap()
        .strip_prefix("vastai:")
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_rental_fails_over_gone_refused_and_dead_offers_to_one_live_instance() {
    let s = services::shared();
    let db = TestDb::new(s, "spend_failover");
    let token = account(&db, "failover", 10_000.0, 5);
    let sb = Sandbox::start(&["--provision-time", "1s"]);
    let d = sb
        .daemon(
            &db,
            &[
                "rentals.dead_state_grace_ms=300",
                "rentals.status_cache_ms=100",
                "rentals.max_offers_tried=5",
            ],
        )
        .await;
    let ranked = ranked_vast_offers(&d, &token).await;
    assert!(ranked.len() >= 4, "{ranked:?}");
    // the cheapest is rented elsewhere after the daemon cached it; the next host declines;
    // the third is created and never runs
    let r = sb
        .control(
            "vastai",
            "POST",
            "/_sandbox/vast/withdraw",
            &json!({"id": ask_id(&ranked[0])}).to_string(),
        )
        .await;
    assert_eq!(r["withdrawn"], 1, "{r}");
    let r = sb
        .control(
            "vastai",
            "POST",
            "/_sandbox/vast/script",
            r#"{"next_states": ["refused", "exited"]}"#,
        )
        .await;
    assert_eq!(r["ok"], true);
    let body = spec_body(json!({"providers": ["vastai"], "max_price_per_hour": 1000}));
    let r = call(&d, &token, "POST", "/v1/instances", &body, Some("spec-1")).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let v = r.json();
    let tries = v["tries"].as_array().unwrap().clone();
    assert_eq!(tries.len(), 4, "{v:#}");
    for (t, o) in tries.iter().zip(&ranked) {
        assert_eq!(t["offer_id"], o["id"], "tried in rank order: {v:#}");
    }
    assert_eq!(tries[0]["status"], "failed");
    assert!(
        tries[0]["left_because"]
            .as_str()
            .unwrap()
            .contains("offer_unavailable"),
        "{v:#}"
    );
    assert_eq!(tries[1]["status"], "failed");
    assert!(
        tries[1]["left_because"]
            .as_str()
            .unwrap()
            .contains("declined"),
        "{v:#}"
    );
    assert_eq!(tries[2]["status"], "failed");
    assert!(
        tries[2]["left_because"]
            .as_str()
            .unwrap()
            .contains("exited"),
        "{v:#}"
    );
    assert_eq!(tries[3]["instance_id"], v["id"]);
    assert_eq!(v["status"], "running", "{v:#}");
    assert_eq!(v["offer_id"], ranked[3]["id"]);

    // exactly one live instance at the provider: the dead one was destroyed first
    let at_vast = sb.vast_ledger().await;
    let live: Vec<&Value> = at_vast.iter().filter(|i| i["destroyed"] != true).collect();
    assert_eq!(live.len(), 1, "{at_vast:#?}");
    assert_eq!(
        live[0]["id"].as_u64().map(|x| x.to_string()).as_deref(),
        v["provider_instance_id"].as_str()
    );
    assert_eq!(
        at_vast.len(),
        2,
        "a refused try creates nothing: {at_vast:#?}"
    );

    // four intents in the ledger, one per try; the dead one abandoned with why
    let list = call(&d, &token, "GET", "/v1/instances", "", None)
        .await
        .json();
    assert_eq!(list["instances"].as_array().unwrap().len(), 4, "{list:#}");
    let dead = call(
        &d,
        &token,
        "GET",
        &format!(
            "/v1/instances/{}",
            tries[2]["instance_id"].as_str().unwrap()
        ),
        "",
        None,
    )
    .await
    .json();
    let k = kinds(&dead);
    assert_eq!(k.first().map(String::as_str), Some("intent"), "{k:?}");
    assert_eq!(
        k.last().map(String::as_str),
        Some("failover_abandoned"),
        "{k:?}"
    );
    assert_eq!(
        dead["tries"], v["tries"],
        "every try shows the whole failover"
    );
    // the one that landed shows the tries too
    let shown = until(&d, &token, v["id"].as_str().unwrap(), "tries shown", |x| {
        x["tries"].is_array()
    })
    .await;
    assert_eq!(shown["tries"].as_array().unwrap().len(), 4);

    // a retry with the same Idempotency-Key replays the whole failover's answer
    let again = call(&d, &token, "POST", "/v1/instances", &body, Some("spec-1")).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], v["id"]);
    assert_eq!(again.json()["tries"], v["tries"]);
    assert_eq!(sb.vast_ledger().await.len(), 2, "the replay rented nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_rental_with_nothing_rentable_says_why_and_leaves_nothing_running() {
    let s = services::shared();
    let db = TestDb::new(s, "spend_failover_none");
    let token = account(&db, "unlucky", 10_000.0, 5);
    let sb = Sandbox::start(&["--provision-time", "1s"]);
    let d = sb
        .daemon(
            &db,
            &[
                "rentals.dead_state_grace_ms=300",
                "rentals.status_cache_ms=100",
                "rentals.max_offers_tried=2",
            ],
        )
        .await;
    let ranked = ranked_vast_offers(&d, &token).await;
    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/script",
        r#"{"next_states": ["oci_failed", "refused"]}"#,
    )
    .await;
    let body = spec_body(json!({"providers": ["vastai"], "max_price_per_gpu": 1000}));
    let r = post(&d, &token, &body).await;
    assert_eq!(r.status, 409, "{:?}", r.json());
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], "offer_unavailable");
    let tries = e["details"]["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 2, "at most rentals.max_offers_tried: {e:#}");
    assert_eq!(tries[0]["offer_id"], ranked[0]["id"]);
    assert!(tries.iter().all(|t| t["status"] == "failed"), "{e:#}");
    let at_vast = sb.vast_ledger().await;
    assert!(
        at_vast.iter().all(|i| i["destroyed"] == true),
        "{at_vast:#?}"
    );

    // a spec nothing matches: 409, nothing written
    let body = spec_body(json!({"gpu": "H200", "min_gpus": 64, "max_price_per_hour": 0.01}));
    let r = post(&d, &token, &body).await;
    assert_eq!(r.status, 409, "{:?}", r.json());
    assert_eq!(r.json()["error"]["details"]["offers_matching"], 0);
    let list = call(&d, &token, "GET", "/v1/instances", "", None)
        .await
        .json();
    assert_eq!(list["instances"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_spec_input_names_the_field_and_changes_nothing() {
    let s = services::shared();
    let db = TestDb::new(s, "spend_bad_spec");
    let token = account(&db, "careless", 10_000.0, 5);
    let sb = Sandbox::start(&[]);
    let d = sb.daemon(&db, &[]).await;
    let base = |spec: Value| spec_body(spec);
    let cases: Vec<(String, &str)> = vec![
        (base(json!({"gpus": 2, "max_price_per_hour": 5})), "gpus"),
        (base(json!({"gpu": "RTX 4090"})), "spec.max_price_per_hour"),
        (
            base(json!({"max_price_per_hour": -1})),
            "spec.max_price_per_hour",
        ),
        (
            base(json!({"max_price_per_hour": 5, "min_gpus": 4, "max_gpus": 2})),
            "spec.min_gpus",
        ),
        (
            base(json!({"max_price_per_hour": 5, "providers": ["lambda"]})),
            "spec.providers",
        ),
        (
            base(json!({"max_price_per_hour": 5, "countries": ["USA"]})),
            "spec.countries",
        ),
        (
            base(json!({"max_price_per_hour": 5, "min_reliability": 2})),
            "spec.min_reliability",
        ),
        (
            json!({"offer_id": "vastai:1", "spec": {"max_price_per_hour": 5},
                   "image": "x", "disk_gb": 20})
            .to_string(),
            "spec",
        ),
        (json!({"image": "x", "disk_gb": 20}).to_string(), "offer_id"),
        (
            json!({"spec": {"max_price_per_hour": 5}, "image": "x", "disk_gb": 20,
                   "bid_per_hour": 0.5})
            .to_string(),
            "bid_per_hour",
        ),
        (
            json!({"spec": {"max_price_per_hour": 5}, "image": "x", "disk_gb": 2}).to_string(),
            "disk_gb",
        ),
    ];
    for (body, field) in cases {
        let r = post(&d, &token, &body).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.json());
        assert!(message(&r).contains(field), "{body}: {}", message(&r));
    }
    let list = call(&d, &token, "GET", "/v1/instances", "", None)
        .await
        .json();
    assert_eq!(list["instances"], json!([]));
    assert!(sb.vast_ledger().await.is_empty());
}
