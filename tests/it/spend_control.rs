//! Rental lifecycle and spend control (issue 16), end to end: renting by spec with failover,
//! budgets enforced over time by the reconciler, usage reports, and reconciling the ledger with
//! what the provider billed. The daemon runs as a process against the sandbox providers over
//! HTTP, with PostgreSQL (through PgBouncer) and Redis.

use crate::support;
use crate::support::stack::Stack;

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
    let Stack { db, sb, d } = Stack::start(
        "spend_failover",
        &["--provision-time", "1s"],
        &[
            "rentals.dead_state_grace_ms=300",
            "rentals.status_cache_ms=100",
            "rentals.max_offers_tried=5",
        ],
    )
    .await;
    let token = account(&db, "failover", 10_000.0, 5);
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
    // gone, refused by the host, dead after create: each left, and why
    for (t, why) in tries
        .iter()
        .zip(["offer_unavailable", "declined", "exited"])
    {
        assert_eq!(t["status"], "failed", "{v:#}");
        let left = t["left_because"].as_str().unwrap();
        assert!(left.contains(why), "{why}: {v:#}");
    }
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
    let Stack { db, sb, d } = Stack::start(
        "spend_failover_none",
        &["--provision-time", "1s"],
        &[
            "rentals.dead_state_grace_ms=300",
            "rentals.status_cache_ms=100",
            "rentals.max_offers_tried=2",
        ],
    )
    .await;
    let token = account(&db, "unlucky", 10_000.0, 5);
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
    let Stack { db, sb, d } = Stack::start("spend_bad_spec", &[], &[]).await;
    let token = account(&db, "careless", 10_000.0, 5);
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

/// Rows of a query against the test database (the ledger's own tables).
async fn sql(db: &TestDb<'_>, query: &str) -> Vec<tokio_postgres::Row> {
    db.client().await.query(query, &[]).await.unwrap()
}

/// `(budget, kind, instance)` of an account's budget events, in order.
async fn budget_events(db: &TestDb<'_>, account: &str) -> Vec<(String, String, Option<String>)> {
    sql(
        db,
        &format!(
            "SELECT e.budget, e.kind, e.instance_id FROM budget_events e \
             JOIN accounts a ON a.id = e.account_id WHERE a.name = '{account}' ORDER BY e.id"
        ),
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// The `n` most expensive on-demand Vast offers (spend adds up in seconds).
async fn dear_offers(d: &support::daemon::DaemonProc, token: &str, n: usize) -> Vec<String> {
    let ranked = ranked_vast_offers(d, token).await;
    ranked
        .iter()
        .rev()
        .filter(|o| o["price_per_hour"].as_f64().unwrap() < 100.0)
        .take(n)
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

fn offer_body(offer_id: &str) -> String {
    json!({"offer_id": offer_id, "image": "pytorch/pytorch:latest", "disk_gb": 20}).to_string()
}

async fn rent_running(d: &support::daemon::DaemonProc, token: &str, offer_id: &str) -> Value {
    let r = post(d, token, &offer_body(offer_id)).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    until(d, token, &id, "running", |v| v["status"] == "running").await
}

/// The public id of a key (`gpx_<public id>_<secret>`).
fn public_id(token: &str) -> &str {
    token.split('_').nth(1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_crossed_by_running_instances_warns_once_then_stops_them_and_refuses_rentals() {
    let Stack { db, sb, d } = Stack::start(
        "spend_budget_stop",
        &["--provision-time", "400ms"],
        &[
            "rentals.reconcile_interval_ms=200",
            "rentals.status_cache_ms=100",
            // a warning once a few thousandths of a dollar are spent
            "rentals.budget_warn_ratio=0.0000003",
        ],
    )
    .await;
    let token = account(&db, "spender", 10_000.0, 5);
    let offers = dear_offers(&d, &token, 3).await;
    let a = rent_running(&d, &token, &offers[0]).await;
    let b = rent_running(&d, &token, &offers[1]).await;
    // the warning: once, however many rounds pass
    support::eventually("a budget warning", || async {
        budget_events(&db, "spender")
            .await
            .iter()
            .any(|e| e.1 == "budget.warning")
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let ev = budget_events(&db, "spender").await;
    assert_eq!(ev, vec![("window".into(), "budget.warning".into(), None)]);

    // spend passes the budget (lowered under what was spent): the next round stops both
    support::eventually("spend over 0.0002 USD", || async {
        (support::rentals::spent(&db, "spender").await > 0.0002).then_some(())
    })
    .await;
    db.cli(&[
        "accounts",
        "update",
        "spender",
        "--daily-budget-usd",
        "0.0001",
    ]);
    for inst in [&a, &b] {
        let id = inst["id"].as_str().unwrap();
        // stopped, with the budget's reason: a GET's status sync may record the provider's stop
        // a moment before the budget records why (as a note then)
        until(&d, &token, id, "stopped by the budget", |v| {
            v["status"] == "stopped" && kinds(v).contains(&"budget_stopped".to_owned())
        })
        .await;
        let pid = inst["provider_instance_id"].as_str().unwrap();
        let at_vast = sb
            .vast_ledger()
            .await
            .into_iter()
            .find(|i| i["id"].as_u64().map(|x| x.to_string()).as_deref() == Some(pid))
            .unwrap();
        assert_eq!(at_vast["actual_status"], "stopped", "{at_vast}");
    }
    let ev = budget_events(&db, "spender").await;
    let kinds_of: Vec<&str> = ev.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        kinds_of,
        [
            "budget.warning",
            "budget.exhausted",
            "budget.action",
            "budget.action"
        ],
        "{ev:?}"
    );
    // new rentals and starts: 402 until spend falls back
    let r = post(&d, &token, &offer_body(&offers[2])).await;
    assert_eq!(r.status, 402, "{:?}", r.json());
    assert_eq!(r.json()["error"]["details"]["budget"], "window");
    let start = call(
        &d,
        &token,
        "POST",
        &format!("/v1/instances/{}/start", a["id"].as_str().unwrap()),
        "",
        None,
    )
    .await;
    assert_eq!(start.status, 402, "{:?}", start.json());
    // more rounds: nothing recorded twice
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(budget_events(&db, "spender").await.len(), 4);
    // a raised budget lets rentals through again
    db.cli(&[
        "accounts",
        "update",
        "spender",
        "--daily-budget-usd",
        "10000",
    ]);
    let r = post(&d, &token, &offer_body(&offers[2])).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_budget_destroys_and_a_key_cap_alerts_per_policy() {
    let s = services::shared();
    let db = TestDb::new(s, "spend_budget_month_key");
    let token = account(&db, "monthly", 10_000.0, 5);
    let other = db.cli(&["keys", "create", "--account", "monthly"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let sb = Sandbox::start(&["--provision-time", "400ms"]);
    let d = sb
        .daemon(
            &db,
            &[
                "rentals.reconcile_interval_ms=200",
                "rentals.status_cache_ms=100",
            ],
        )
        .await;
    let offers = dear_offers(&d, &token, 4).await;

    // a key's cap, policy alert: recorded and counted, nothing stopped, that key refused
    db.cli(&[
        "accounts",
        "update",
        "monthly",
        "--on-budget-exhausted",
        "alert",
    ]);
    let a = rent_running(&d, &token, &offers[0]).await;
    support::eventually("spend over 0.0002 USD", || async {
        (support::rentals::spent(&db, "monthly").await > 0.0002).then_some(())
    })
    .await;
    let k = db.cli(&[
        "keys",
        "update",
        public_id(&token),
        "--spend-limit-usd",
        "0.0001",
    ]);
    assert_eq!(k[0]["spend_limit_usd"], 0.0001);
    support::eventually("the key's budget exhausted", || async {
        budget_events(&db, "monthly")
            .await
            .iter()
            .any(|e| e.0 == "key" && e.1 == "budget.exhausted")
            .then_some(())
    })
    .await;
    let r = post(&d, &token, &offer_body(&offers[1])).await;
    assert_eq!(r.status, 402, "{:?}", r.json());
    assert_eq!(r.json()["error"]["details"]["budget"], "key");
    let b = post(&d, &other, &offer_body(&offers[1])).await;
    assert_eq!(b.status, 201, "another key of the account: {:?}", b.json());
    let v = call(
        &d,
        &token,
        "GET",
        &format!("/v1/instances/{}", a["id"].as_str().unwrap()),
        "",
        None,
    )
    .await
    .json();
    assert_eq!(v["status"], "running", "alert only: {v:#}");

    // the month's budget, policy destroy: every open instance destroyed
    db.cli(&[
        "accounts",
        "update",
        "monthly",
        "--monthly-budget-usd",
        "0.0001",
        "--on-budget-exhausted",
        "destroy",
    ]);
    for id in [a["id"].as_str().unwrap(), b.json()["id"].as_str().unwrap()] {
        // ended, with the budget's reason (noted when a status sync recorded the end first)
        until(&d, &other, id, "destroyed by the budget", |v| {
            v["status"] == "terminated" && kinds(v).contains(&"budget_destroyed".to_owned())
        })
        .await;
    }
    assert!(
        sb.vast_ledger()
            .await
            .iter()
            .all(|i| i["destroyed"] == true),
        "destroyed at the provider"
    );
    let r = post(&d, &other, &offer_body(&offers[2])).await;
    assert_eq!(r.status, 402, "{:?}", r.json());
    assert_eq!(r.json()["error"]["details"]["budget"], "monthly");
    // bad input to the account and key changes names the field
    for (args, field) in [
        (
            vec![
                "accounts",
                "update",
                "monthly",
                "--on-budget-exhausted",
                "pause",
            ],
            "on_budget_exhausted",
        ),
        (
            vec!["accounts", "update", "monthly", "--monthly-budget-usd=-3"],
            "monthly_budget_usd",
        ),
        (
            vec!["keys", "update", public_id(&token), "--spend-limit-usd=-1"],
            "spend_limit_usd",
        ),
    ] {
        let out = support::accounts::gpuproxyd(&args, &db.env());
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(field),
            "{args:?}"
        );
    }
}

fn epoch(t: &str) -> f64 {
    humantime::parse_rfc3339_weak(t)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn rfc3339(t: f64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t))
        .to_string()
}

/// An instance's spend between `from` and `to`, from its events as the API shows them: rate ×
/// hours of each segment that bills (an oracle written apart from the report's SQL).
fn spend_from_events(v: &Value, from: f64, to: f64) -> f64 {
    let ev = v["events"].as_array().unwrap();
    let mut usd = 0.0;
    for (i, e) in ev.iter().enumerate() {
        let status = e["status"].as_str().unwrap_or("");
        if matches!(status, "pending" | "failed" | "terminated") {
            continue;
        }
        let t0 = epoch(e["at"].as_str().unwrap());
        let t1 = ev
            .get(i + 1)
            .map(|n| epoch(n["at"].as_str().unwrap()))
            .unwrap_or(to);
        let (a, b) = (t0.max(from), t1.min(to));
        if b > a {
            usd += e["rate_per_hour"].as_f64().unwrap() * (b - a) / 3600.0;
        }
    }
    usd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_report_adds_up_to_the_ledger_and_the_providers_charges() {
    let s = services::shared();
    let db = TestDb::new(s, "spend_usage");
    let token = account(&db, "user", 10_000.0, 5);
    let second = db.cli(&["keys", "create", "--account", "user"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, admin) = db.account_with_key("ops", &["admin"]);
    let sb = Sandbox::start(&["--provision-time", "400ms"]);
    let d = sb
        .daemon(
            &db,
            &[
                "rentals.reconcile_interval_ms=200",
                "rentals.status_cache_ms=100",
            ],
        )
        .await;
    let from = rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            - 1.0,
    );
    let offers = dear_offers(&d, &token, 2).await;
    let a = rent_running(&d, &token, &offers[0]).await;
    let b = rent_running(&d, &second, &offers[1]).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let a_id = a["id"].as_str().unwrap();
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/instances/{a_id}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let a = until(&d, &token, a_id, "terminated", |v| {
        v["status"] == "terminated"
    })
    .await;
    let to = rfc3339(epoch(a["terminated_at"].as_str().unwrap()) + 0.5);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    let b_id = b["id"].as_str().unwrap();
    let b = call(
        &d,
        &second,
        "GET",
        &format!("/v1/instances/{b_id}"),
        "",
        None,
    )
    .await
    .json();
    let (f, t) = (epoch(&from), epoch(&to));
    let want_a = spend_from_events(&a, f, t);
    let want_b = spend_from_events(&b, f, t);
    assert!(want_a > 0.0 && want_b > 0.0);
    let q = |g: &str| format!("/v1/usage?from={from}&to={to}&group_by={g}");
    let mut totals = Vec::new();
    for g in ["day", "instance", "key", "provider"] {
        let r = call(&d, &token, "GET", &q(g), "", None).await;
        assert_eq!(r.status, 200, "{:?}", r.json());
        let v = r.json();
        let groups = v["groups"].as_array().unwrap();
        let sum: f64 = groups.iter().map(|x| x["usd"].as_f64().unwrap()).sum();
        let total = v["totals"]["usd"].as_f64().unwrap();
        assert!((sum - total).abs() < 1e-5, "{g}: {v:#}");
        assert!(
            (total - (want_a + want_b)).abs() < 1e-5,
            "{g}: report {total}, events {}: {v:#}",
            want_a + want_b
        );
        assert!(v["totals"]["gpu_hours"].as_f64().unwrap() > 0.0);
        assert!(v["totals"]["instance_hours"].as_f64().unwrap() > 0.0);
        match g {
            "instance" => {
                let of = |id: &str| {
                    groups.iter().find(|x| x["key"] == id).unwrap()["usd"]
                        .as_f64()
                        .unwrap()
                };
                assert!((of(a_id) - want_a).abs() < 1e-5, "{v:#}");
                assert!((of(b_id) - want_b).abs() < 1e-5, "{v:#}");
            }
            "key" => {
                let keys: Vec<&str> = groups.iter().map(|x| x["key"].as_str().unwrap()).collect();
                let mut want = vec![public_id(&token), public_id(&second)];
                want.sort();
                assert_eq!(keys, want, "{v:#}");
            }
            "provider" => assert_eq!(groups[0]["key"], "vastai"),
            _ => {}
        }
        totals.push(total);
    }
    // an admin sees the same for the account, and the command prints the same
    let r = call(
        &d,
        &admin,
        "GET",
        &format!("/v1/admin/accounts/user/usage?from={from}&to={to}&group_by=instance"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["totals"]["usd"].as_f64().unwrap(), totals[0]);
    let cli = db.cli(&["usage", "--account", "user", "--from", &from, "--to", &to]);
    assert_eq!(cli["totals"]["usd"].as_f64().unwrap(), totals[0]);
    let out = support::accounts::gpuproxyd(
        &[
            "usage",
            "--account",
            "user",
            "--from",
            &from,
            "--to",
            &to,
            "--group-by",
            "key",
        ],
        &db.env(),
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("TOTAL") && table.contains(public_id(&second)),
        "{table}"
    );

    // CSV, one row per instance and UTC day: the rows add up to the JSON report's totals, by
    // `format=csv`, by `Accept: text/csv`, for an admin and from the command
    let q = format!("from={from}&to={to}");
    let json_day = call(
        &d,
        &token,
        "GET",
        &format!("/v1/usage?{q}&group_by=instance_day"),
        "",
        None,
    )
    .await
    .json();
    let sums = |csv: &str| -> (usize, f64, f64, f64) {
        let mut lines = csv.split("\r\n").filter(|l| !l.is_empty());
        assert_eq!(
            lines.next(),
            Some("day,instance_id,usd,storage_usd,bandwidth_usd,gpu_hours,instance_hours")
        );
        let rows: Vec<Vec<f64>> = lines
            .map(|l| l.split(',').skip(2).map(|x| x.parse().unwrap()).collect())
            .collect();
        let col = |i: usize| rows.iter().map(|r| r[i]).sum::<f64>();
        (rows.len(), col(0), col(3), col(4))
    };
    let by_query = call(
        &d,
        &token,
        "GET",
        &format!("/v1/usage?{q}&format=csv"),
        "",
        None,
    )
    .await;
    assert_eq!(by_query.status, 200);
    assert_eq!(
        by_query.header("content-type"),
        Some("text/csv; charset=utf-8")
    );
    let by_accept = support::client::authed(
        d.https,
        &token,
        "GET",
        &format!("/v1/usage?{q}"),
        "",
        &[("accept", "text/csv")],
    )
    .await;
    let by_admin = call(
        &d,
        &admin,
        "GET",
        &format!("/v1/admin/accounts/user/usage?{q}&format=csv"),
        "",
        None,
    )
    .await;
    let by_cli = support::accounts::gpuproxyd(
        &[
            "usage",
            "--account",
            "user",
            "--from",
            &from,
            "--to",
            &to,
            "--group-by",
            "instance_day",
            "--csv",
        ],
        &db.env(),
    );
    for csv in [
        by_query.text(),
        by_accept.text(),
        by_admin.text(),
        String::from_utf8_lossy(&by_cli.stdout).into_owned(),
    ] {
        let (n, usd, gpu_h, inst_h) = sums(&csv);
        assert_eq!(n, json_day["groups"].as_array().unwrap().len(), "{csv}");
        let t = &json_day["totals"];
        assert!(
            (usd - totals[0]).abs() < 1e-5 * n as f64,
            "{usd} vs {}: {csv}",
            totals[0]
        );
        assert!((gpu_h - t["gpu_hours"].as_f64().unwrap()).abs() < 1e-5 * n as f64);
        assert!((inst_h - t["instance_hours"].as_f64().unwrap()).abs() < 1e-5 * n as f64);
    }

    // the ended instance against what the provider charged: the ledger bills the full price
    // from the provider's acceptance, Vast the GPU from `running` (storage before), so they
    // differ by at most the provisioning time at the compute price
    let pid = a["provider_instance_id"].as_str().unwrap();
    let charged = sb
        .vast_ledger()
        .await
        .into_iter()
        .find(|i| i["id"].as_u64().map(|x| x.to_string()).as_deref() == Some(pid))
        .unwrap()["charged_usd"]
        .as_f64()
        .unwrap();
    let whole = spend_from_events(&a, 0.0, f64::MAX);
    let slack = a["price_per_hour"].as_f64().unwrap() * 1.0 / 3600.0;
    assert!(
        (whole - charged).abs() <= slack,
        "ledger {whole}, provider {charged}, slack {slack}"
    );

    // bad input: 400 naming the parameter; another account's report only for admins
    for (path, field) in [
        (format!("/v1/usage?from={to}&to={from}"), "from"),
        ("/v1/usage?group_by=week".to_owned(), "group_by"),
        ("/v1/usage?from=yesterday".to_owned(), "from"),
        ("/v1/usage?account=ops".to_owned(), "account"),
        ("/v1/usage?format=xlsx".to_owned(), "format"),
    ] {
        let r = call(&d, &token, "GET", &path, "", None).await;
        assert_eq!(r.status, 400, "{path}: {:?}", r.json());
        assert!(message(&r).contains(field), "{path}: {}", message(&r));
    }
    let r = call(&d, &token, "GET", "/v1/admin/accounts/ops/usage", "", None).await;
    assert_eq!(r.status, 403);
}

/// `GET /v1/admin/reconciliation`, Vast's part of it, and the line of one provider instance.
async fn reconciliation(
    d: &support::daemon::DaemonProc,
    admin: &str,
    pid: &str,
) -> (Value, Value, Option<Value>) {
    let v = call(d, admin, "GET", "/v1/admin/reconciliation", "", None)
        .await
        .json();
    let vast = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "vastai")
        .unwrap()
        .clone();
    let inst = vast["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["provider_instance_id"] == pid)
        .cloned();
    (v, vast, inst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_charges_are_reconciled_and_a_billing_difference_shows_as_drift() {
    let Stack { db, sb, d } = Stack::start(
        "spend_billing",
        &["--provision-time", "400ms"],
        &[
            "rentals.reconcile_interval_ms=200",
            "rentals.status_cache_ms=100",
            "rentals.billing_reconcile_interval_ms=300",
            "rentals.billing_drift_alert_usd=0.5",
        ],
    )
    .await;
    let token = account(&db, "billed", 10_000.0, 5);
    let (_, admin) = db.account_with_key("auditor", &["admin"]);
    let offers = dear_offers(&d, &token, 2).await;
    let a = rent_running(&d, &token, &offers[0]).await;
    let a_id = a["id"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/instances/{a_id}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let a = until(&d, &token, a_id, "terminated", |v| {
        v["status"] == "terminated"
    })
    .await;
    let pid = a["provider_instance_id"].as_str().unwrap().to_owned();
    let slack = a["price_per_hour"].as_f64().unwrap() * 1.0 / 3600.0;

    // a run after the instance ended: billed and ledger agree within the provisioning time
    let (v, vast, inst) =
        support::eventually("a reconciliation with the ended instance", || async {
            let (v, vast, inst) = reconciliation(&d, &admin, &pid).await;
            let inst = inst?;
            // a run that read the bill after the instance ended
            let after_end =
                epoch(vast["as_of"].as_str()?) > epoch(a["terminated_at"].as_str().unwrap()) + 0.2;
            (after_end && inst["billed_usd"].as_f64()? > 0.0).then_some((v, vast, inst))
        })
        .await;
    assert_eq!(vast["status"], "reconciled", "{v:#}");
    assert_eq!(inst["instance_id"], a_id);
    let ledger = spend_from_events(&a, 0.0, f64::MAX);
    assert!(
        (inst["ledger_usd"].as_f64().unwrap() - ledger).abs() < 1e-5,
        "{v:#}"
    );
    assert!(inst["drift_usd"].as_f64().unwrap().abs() <= slack, "{v:#}");
    let io = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "ionet")
        .unwrap();
    assert_eq!(io["status"], "no_charges_api");
    let page = d.scrape().await;
    assert!(
        support::metrics::value(&page, "gpuproxy_billing_drift_usd{provider=\"vastai\"}") < 0.5,
        "{page}"
    );
    assert_eq!(
        support::metrics::value(&page, "gpuproxy_billing_drift_alert_usd"),
        0.5
    );

    // the provider bills 2 USD more than its model: the next run shows it, first in the list
    let r = sb
        .control(
            "vastai",
            "POST",
            "/_sandbox/vast/surcharge",
            &json!({"id": pid.parse::<u64>().unwrap(), "amount": 2.0}).to_string(),
        )
        .await;
    assert_eq!(r["ok"], true);
    let (v, _, inst) = support::eventually("the surcharge reconciled", || async {
        let (v, vast, inst) = reconciliation(&d, &admin, &pid).await;
        let inst = inst?;
        (inst["drift_usd"].as_f64()? > 1.9 && vast["instances"][0] == inst)
            .then_some((v, vast, inst))
    })
    .await;
    assert!(
        (inst["billed_usd"].as_f64().unwrap() - inst["ledger_usd"].as_f64().unwrap() - 2.0).abs()
            <= slack,
        "{v:#}"
    );
    let drift = support::eventually("the drift metric", || async {
        let page = d.scrape().await;
        let x = support::metrics::value(&page, "gpuproxy_billing_drift_usd{provider=\"vastai\"}");
        (x > 1.9).then_some(x)
    })
    .await;
    assert!(
        drift > 0.5,
        "above rentals.billing_drift_alert_usd: GpuproxyBillingDrift fires"
    );
    // only admins; no parameters
    let r = call(&d, &token, "GET", "/v1/admin/reconciliation", "", None).await;
    assert_eq!(r.status, 403);
    let r = call(
        &d,
        &admin,
        "GET",
        "/v1/admin/reconciliation?provider=x",
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(message(&r).contains("provider"), "{}", message(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_to_the_lifecycle_and_budget_endpoints_names_the_field_and_changes_nothing() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "spend_bad_input",
        &["--provision-time", "400ms"],
        &["rentals.status_cache_ms=100"],
    )
    .await;
    let token = account(&db, "owner", 10_000.0, 5);
    let stranger = account(&db, "stranger", 10_000.0, 5);
    let (_, admin) = db.account_with_key("root", &["admin"]);
    let offers = dear_offers(&d, &token, 1).await;
    let body = json!({"offer_id": offers[0], "image": "pytorch/pytorch:latest", "disk_gb": 20,
                      "max_duration_hours": 2})
    .to_string();
    let r = post(&d, &token, &body).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let v = until(&d, &token, &id, "running", |v| v["status"] == "running").await;
    let before = (v["expires_at"].clone(), kinds(&v).len());

    let extend = format!("/v1/instances/{id}/extend");
    for (b, field) in [
        (r#"{"hours": -1}"#, "hours"),
        (r#"{"hours": 0}"#, "hours"),
        (r#"{"hours": 2.5}"#, "hours"),
        (r#"{"hours": 2, "minutes": 5}"#, "minutes"),
        ("", "hours"),
    ] {
        let r = call(&d, &token, "POST", &extend, b, None).await;
        assert_eq!(r.status, 400, "{b}: {:?}", r.json());
        assert!(message(&r).contains(field), "{b}: {}", message(&r));
    }
    // another account's instance does not exist for it
    for path in [
        extend.clone(),
        format!("/v1/instances/{id}/stop"),
        format!("/v1/instances/{id}/start"),
    ] {
        let r = call(&d, &stranger, "POST", &path, r#"{"hours": 1}"#, None).await;
        assert_eq!(r.status, 404, "{path}: {:?}", r.json());
        assert_eq!(r.json()["error"]["code"], "not_found");
    }
    let v = call(&d, &token, "GET", &format!("/v1/instances/{id}"), "", None)
        .await
        .json();
    assert_eq!((v["expires_at"].clone(), kinds(&v).len()), before, "{v:#}");
    assert_eq!(v["status"], "running");

    // account and key changes over HTTPS
    let account_path = "/v1/admin/accounts/owner";
    for (b, field) in [
        (r#"{"daily_budget": 5}"#, "daily_budget"),
        (r#"{"on_budget_exhausted": "pause"}"#, "on_budget_exhausted"),
        (r#"{"monthly_budget_usd": -1}"#, "monthly_budget_usd"),
        (r#"{"max_instances": -2}"#, "max_instances"),
    ] {
        let r = call(&d, &admin, "PATCH", account_path, b, None).await;
        assert_eq!(r.status, 400, "{b}: {:?}", r.json());
        assert!(message(&r).contains(field), "{b}: {}", message(&r));
    }
    let shown = call(&d, &admin, "GET", account_path, "", None).await.json();
    assert_eq!(shown["on_budget_exhausted"], "stop");
    assert_eq!(shown["monthly_budget_usd"], Value::Null);
    let r = call(
        &d,
        &admin,
        "PATCH",
        account_path,
        r#"{"monthly_budget_usd": 900, "on_budget_exhausted": "alert"}"#,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["account"]["monthly_budget_usd"], 900.0);
    assert_eq!(
        r.json()["account"]["daily_budget_usd"],
        10_000.0,
        "left as it was"
    );
    let r = call(
        &d,
        &admin,
        "PATCH",
        account_path,
        r#"{"monthly_budget_usd": null}"#,
        None,
    )
    .await;
    assert_eq!(r.json()["account"]["monthly_budget_usd"], Value::Null);
    assert_eq!(r.json()["account"]["on_budget_exhausted"], "alert");
    let key_path = format!("/v1/admin/keys/{}", public_id(&token));
    for (b, field) in [
        (r#"{"spend_limit_usd": -1}"#, "spend_limit_usd"),
        (r#"{"spend_limit": 1}"#, "spend_limit"),
    ] {
        let r = call(&d, &admin, "PATCH", &key_path, b, None).await;
        assert_eq!(r.status, 400, "{b}: {:?}", r.json());
        assert!(message(&r).contains(field), "{b}: {}", message(&r));
    }
    let r = call(
        &d,
        &admin,
        "PATCH",
        &key_path,
        r#"{"spend_limit_usd": 12.5}"#,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["spend_limit_usd"], 12.5);
    // not for users
    let r = call(
        &d,
        &token,
        "PATCH",
        &key_path,
        r#"{"spend_limit_usd": null}"#,
        None,
    )
    .await;
    assert_eq!(r.status, 403);
}

/// Starts race no more (issue 27): three stopped instances and a budget with room for one of
/// them running; three concurrent `start`s give one 200 and two 402, and only one start reaches
/// the provider. Each start is checked and recorded under the account's lock before the
/// provider is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_with_a_budget_for_one_start_one() {
    let Stack { db, sb, d } = Stack::start(
        "spend_starts",
        &["--provision-time", "300ms"],
        &["rentals.status_cache_ms=100"],
    )
    .await;
    let token = account(&db, "starter", 10_000.0, 5);
    let offers = dear_offers(&d, &token, 3).await;
    let mut ids = Vec::new();
    let (mut price, mut storage) = (0.0f64, 0.0f64);
    for o in &offers {
        let v = rent_running(&d, &token, o).await;
        price = price.max(v["price_per_hour"].as_f64().unwrap());
        storage = storage.max(v["storage_per_hour"].as_f64().unwrap());
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let r = call(
            &d,
            &token,
            "POST",
            &format!("/v1/instances/{id}/stop"),
            "",
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.json());
    }
    // room for one running beside two stopped, not for two: (3 storage + 1.5 price) × 24 h
    assert!(price > 4.0 * storage, "price {price}, storage {storage}");
    let budget = (3.0 * storage + 1.5 * price) * 24.0;
    db.cli(&[
        "accounts",
        "update",
        "starter",
        "--daily-budget-usd",
        &format!("{budget:.4}"),
    ]);
    let starts_before = sb.calls("vastai", "manage").await;
    let answers = futures_util::future::join_all(ids.iter().map(|id| {
        let (d, token, path) = (&d, &token, format!("/v1/instances/{id}/start"));
        async move { call(d, token, "POST", &path, "", None).await }
    }))
    .await;
    support::rentals::one_passed_the_rest_over_budget(&answers, 200);
    assert_eq!(
        sb.calls("vastai", "manage").await - starts_before,
        1,
        "a refused start never reaches the provider"
    );
    // the ledger agrees: one provisioning or running, two stopped
    let mut running = 0;
    for id in &ids {
        let v = call(&d, &token, "GET", &format!("/v1/instances/{id}"), "", None)
            .await
            .json();
        match v["status"].as_str().unwrap() {
            "provisioning" | "running" => running += 1,
            "stopped" => {}
            s => panic!("{id} is {s}"),
        }
    }
    assert_eq!(running, 1);

    // the caller's key pays: another key of the account, capped at a hundredth of a cent, starts
    // nobody's instance although the account has room
    db.cli(&[
        "accounts",
        "update",
        "starter",
        "--daily-budget-usd",
        "10000",
    ]);
    let other = db.cli(&["keys", "create", "--account", "starter"]);
    let other = other["token"].as_str().unwrap().to_owned();
    db.cli(&[
        "keys",
        "update",
        public_id(&other),
        "--spend-limit-usd",
        "0.0001",
    ]);
    let stopped = &ids[answers.iter().position(|r| r.status != 200).unwrap()];
    let path = format!("/v1/instances/{stopped}/start");
    let r = call(&d, &other, "POST", &path, "", None).await;
    assert_eq!(r.status, 402, "{:?}", r.json());
    assert_eq!(
        r.json()["error"]["details"]["budget"],
        "key",
        "{:?}",
        r.json()
    );
    // the renting key may: it pays from then on
    let r = call(&d, &token, "POST", &path, "", None).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
}

/// No deadlocks, no starved neighbours (issue 27): 40 concurrent rentals by spec for one account
/// answer only 201, 402 or 409 (never a 5xx from a deadlock or a drained pool), PostgreSQL counts
/// no deadlock, and another account's requests meanwhile all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_spec_rentals_of_one_account_never_deadlock() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "spend_no_deadlock",
        &["--provision-time", "300ms"],
        &[
            "ratelimit.enabled=false",
            "rentals.account_upstream_calls_per_minute=100000",
        ],
    )
    .await;
    let busy = account(&db, "busy", 50.0, 40);
    let other = account(&db, "neighbour", 50.0, 5);
    let body = spec_body(json!({"providers": ["vastai"], "max_price_per_gpu": 1000}));
    let rentals = futures_util::future::join_all((0..40).map(|_| {
        let (d, busy, body) = (&d, &busy, &body);
        async move { post(d, busy, body).await }
    }));
    let neighbour = async {
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(
                call(&d, &other, "GET", "/v1/instances", "", None)
                    .await
                    .status,
            );
        }
        statuses
    };
    let (answers, theirs) = tokio::join!(rentals, neighbour);
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    for r in &answers {
        assert!(
            matches!(r.status, 201 | 402 | 409),
            "{statuses:?}: {}",
            r.text()
        );
    }
    assert!(statuses.contains(&201), "{statuses:?}");
    assert!(theirs.iter().all(|s| *s == 200), "{theirs:?}");
    // the deadlocks PostgreSQL detected in this test's database (reported by each backend when
    // it goes idle)
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let deadlocks: i64 = sql(
        &db,
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    )
    .await[0]
        .get(0);
    assert_eq!(deadlocks, 0);
}
