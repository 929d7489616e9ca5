//! A rental's own policies (issue 30), applied by the reconciler against the sandbox: an idle
//! instance is warned, then stopped; an outbid one is rebid within its cap, destroyed, or failed
//! over by its spec with never more than one live instance. Policies that contradict the rental
//! are refused by name and rent nothing.

use crate::support;
use crate::support::stack::Stack;

use serde_json::{Value, json};
use support::accounts::TestDb;
use support::rentals::{account, call, cheapest, message, post, rent_body_with, until};
use support::sandbox::Sandbox;

const FAST: &[&str] = &[
    "rentals.status_cache_ms=100",
    "rentals.reconcile_interval_ms=200",
    "ratelimit.enabled=false",
];

/// The account events of one instance, in order: (type, data).
async fn account_events(db: &TestDb<'_>, id: &str) -> Vec<(String, Value)> {
    db.client()
        .await
        .query(
            "SELECT type, data FROM account_events WHERE instance_id = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn sandbox_instance(sb: &Sandbox, pid: &str) -> Value {
    sb.vast_ledger()
        .await
        .into_iter()
        .find(|i| i["id"].as_u64().is_some_and(|n| n.to_string() == pid))
        .unwrap_or_else(|| panic!("no sandbox instance {pid}"))
}

async fn set_util(sb: &Sandbox, pid: &str, util: f64) {
    let r = sb
        .control(
            "vastai",
            "POST",
            "/_sandbox/vast/gpu_util",
            &json!({"id": pid.parse::<u64>().unwrap(), "util": util}).to_string(),
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
}

async fn outbid(sb: &Sandbox, pid: &str) {
    let r = sb
        .control(
            "vastai",
            "POST",
            "/_sandbox/vast/outbid",
            &json!({"id": pid.parse::<u64>().unwrap()}).to_string(),
        )
        .await;
    assert_eq!(r["outbid"], 1, "{r}");
}

fn pid_of(v: &Value) -> String {
    v["provider_instance_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_is_warned_then_stopped() {
    let mut cfg = FAST.to_vec();
    cfg.push("rentals.idle_notice_ms=1500");
    let Stack { db, sb, d } =
        Stack::start("policy_idle", &["--provision-time", "300ms"], &cfg).await;
    let token = account(&db, "idler", 10_000.0, 5);

    // bad idle policies are named and rent nothing
    let o = cheapest(&d, &token, "vastai", "").await;
    let oid = o["id"].as_str().unwrap();
    for (idle, field) in [
        (
            json!({"gpu_util_below": 0, "for_minutes": 1, "action": "stop"}),
            "idle",
        ),
        (
            json!({"gpu_util_below": 101, "for_minutes": 1, "action": "stop"}),
            "idle",
        ),
        (
            json!({"gpu_util_below": 5, "for_minutes": 0, "action": "stop"}),
            "idle",
        ),
        (
            json!({"gpu_util_below": 5, "for_minutes": 20000, "action": "stop"}),
            "idle",
        ),
        (
            json!({"gpu_util_below": 5, "for_minutes": 1, "action": "pause"}),
            "idle",
        ),
        (
            json!({"gpu_util_below": 5, "for_minutes": 1, "action": "stop", "x": 1}),
            "idle",
        ),
        (json!({"gpu_util_below": 5, "action": "stop"}), "idle"),
    ] {
        let body = rent_body_with(oid, &json!({"idle": idle}));
        let r = post(&d, &token, &body.to_string()).await;
        assert_eq!(r.status, 400, "{idle}: {:?}", r.json());
        assert!(message(&r).contains(field), "{idle}: {}", message(&r));
    }
    // io.net reports no utilisation: refused by name, before any deploy
    let io = cheapest(&d, &token, "ionet", "").await;
    let body = rent_body_with(
        io["id"].as_str().unwrap(),
        &json!({"idle": {"gpu_util_below": 5, "for_minutes": 1, "action": "stop"}}),
    );
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(
        message(&r).contains("`idle`") && message(&r).contains("ionet"),
        "{}",
        message(&r)
    );
    assert_eq!(sb.calls("ionet", "deploy").await, 0);
    assert_eq!(sb.calls("vastai", "create").await, 0);

    // 3 s below 5%: warned 1.5 s ahead, then stopped
    let idle = json!({"gpu_util_below": 5, "for_minutes": 0.05, "action": "stop"});
    let body = rent_body_with(oid, &json!({"idle": idle}));
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let inst = r.json();
    assert_eq!(
        inst["idle"]["action"], "stop",
        "the instance shows its policy: {inst}"
    );
    assert_eq!(inst["idle"]["for_minutes"].as_f64(), Some(0.05), "{inst}");
    let id = inst["id"].as_str().unwrap().to_owned();
    let pid = pid_of(&inst);
    until(&d, &token, &id, "running", |v| v["status"] == "running").await;
    // busy (the sandbox reports 37.5%): a few rounds pass with no idle span
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        account_events(&db, &id)
            .await
            .iter()
            .all(|(t, _)| t != "instance.idle"),
        "a busy instance is never idle"
    );
    set_util(&sb, &pid, 1.0).await;
    let v = until(&d, &token, &id, "stopped by the idle policy", |v| {
        v["status"] == "stopped"
    })
    .await;
    assert_eq!(sb.calls("vastai", "manage").await, 1, "one stop at Vast");
    assert_eq!(
        sandbox_instance(&sb, &pid).await["actual_status"],
        "stopped"
    );
    let ev = account_events(&db, &id).await;
    let idle_events: Vec<&Value> = ev
        .iter()
        .filter(|(t, _)| t == "instance.idle")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(idle_events.len(), 2, "{ev:?}");
    assert_eq!(idle_events[0]["phase"], "warning");
    assert_eq!(idle_events[0]["action"], "stop");
    assert!(idle_events[0]["acts_at"].is_string());
    assert_eq!(idle_events[1]["phase"], "stopped");
    let stopped = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "stopped")
        .unwrap_or_else(|| panic!("{v}"));
    assert!(
        stopped["detail"].as_str().unwrap().contains("idle policy"),
        "the ledger says why: {stopped}"
    );
    // stopped, it is no longer watched: no second stop
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(sb.calls("vastai", "manage").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbid_instance_is_rebid_within_its_cap_or_destroyed() {
    let Stack { db, sb, d } =
        Stack::start("policy_rebid", &["--provision-time", "300ms"], FAST).await;
    let token = account(&db, "rebidder", 10_000.0, 5);
    let o = cheapest(&d, &token, "vastai", "&interruptible=true").await;
    let oid = o["id"].as_str().unwrap().to_owned();
    let od = cheapest(&d, &token, "vastai", "").await;

    // policies that contradict the rental: named, nothing rented
    for (body, field) in [
        (
            rent_body_with(
                od["id"].as_str().unwrap(),
                &json!({"on_interrupt": {"action": "wait"}}),
            ),
            "on_interrupt",
        ),
        (
            rent_body_with(&oid, &json!({"on_interrupt": {"action": "rebid"}})),
            "on_interrupt.max_bid_per_hour",
        ),
        (
            rent_body_with(
                &oid,
                &json!({"on_interrupt": {"action": "destroy", "max_bid_per_hour": 1}}),
            ),
            "on_interrupt.max_bid_per_hour",
        ),
        (
            rent_body_with(
                &oid,
                &json!({"bid_per_hour": 1.0,
                        "on_interrupt": {"action": "rebid", "max_bid_per_hour": 0.5}}),
            ),
            "on_interrupt.max_bid_per_hour",
        ),
        (
            rent_body_with(&oid, &json!({"on_interrupt": {"action": "failover"}})),
            "on_interrupt.action",
        ),
        (
            rent_body_with(&oid, &json!({"on_interrupt": {"action": "sulk"}})),
            "on_interrupt",
        ),
    ] {
        let r = post(&d, &token, &body.to_string()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.json());
        assert!(message(&r).contains(field), "{body}: {}", message(&r));
    }
    assert_eq!(sb.calls("vastai", "create").await, 0);

    // rebid up to about twice the first bid: two outbids are answered (each a quarter more)
    let bid = o["min_bid_per_hour"].as_f64().unwrap() - o["storage_per_hour"].as_f64().unwrap();
    let cap = ((bid * 1.8) * 1e4).round() / 1e4;
    let body = rent_body_with(
        &oid,
        &json!({"on_interrupt": {"action": "rebid", "max_bid_per_hour": cap}}),
    );
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let inst = r.json();
    assert_eq!(inst["on_interrupt"]["action"], "rebid");
    let id = inst["id"].as_str().unwrap().to_owned();
    let pid = pid_of(&inst);
    let mut expected = inst["bid_per_hour"].as_f64().unwrap();
    until(&d, &token, &id, "running", |v| v["status"] == "running").await;
    for round in 1..=2 {
        outbid(&sb, &pid).await;
        // the competing bid (the sandbox's: a quarter more) is the offer's minimum now
        expected = ((expected * 1.25) * 1e4).round() / 1e4;
        let v = until(&d, &token, &id, "rebid and running", |v| {
            v["status"] == "running" && v["bid_per_hour"].as_f64() == Some(expected)
        })
        .await;
        assert!(
            expected <= cap,
            "round {round}: {expected} within {cap}: {v}"
        );
        assert_eq!(
            sandbox_instance(&sb, &pid).await["bid"].as_f64(),
            Some(expected)
        );
    }
    let handled: Vec<Value> = account_events(&db, &id)
        .await
        .into_iter()
        .filter(|(t, _)| t == "instance.interrupt_handled")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(handled.len(), 2, "{handled:?}");
    assert!(
        handled.iter().all(|h| h["outcome"] == "rebid"),
        "{handled:?}"
    );
    assert_eq!(sb.calls("vastai", "set_bid").await, 2);
    // a third outbid asks more than the cap: refused once, left interrupted
    outbid(&sb, &pid).await;
    until(&d, &token, &id, "interrupted", |v| {
        v["status"] == "interrupted"
    })
    .await;
    support::eventually("the refusal", || async {
        account_events(&db, &id)
            .await
            .iter()
            .any(|(t, d)| t == "instance.interrupt_handled" && d["outcome"] == "refused")
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(
        sb.calls("vastai", "set_bid").await,
        2,
        "no bid above the cap"
    );
    let refused = account_events(&db, &id)
        .await
        .into_iter()
        .filter(|(t, d)| t == "instance.interrupt_handled" && d["outcome"] == "refused")
        .count();
    assert_eq!(refused, 1, "one event for one refusal, however many rounds");

    // destroy: the outbid instance is ended and stops billing (another offer: this one is held)
    let others = call(
        &d,
        &token,
        "GET",
        "/v1/offers?providers=vastai&interruptible=true&limit=10&sort=price",
        "",
        None,
    )
    .await
    .json();
    let other = others["offers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] != oid.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = rent_body_with(&other, &json!({"on_interrupt": {"action": "destroy"}}));
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id2 = r.json()["id"].as_str().unwrap().to_owned();
    let pid2 = pid_of(&r.json());
    until(&d, &token, &id2, "running", |v| v["status"] == "running").await;
    outbid(&sb, &pid2).await;
    let v = until(&d, &token, &id2, "destroyed", |v| {
        v["status"] == "terminated"
    })
    .await;
    assert!(
        support::rentals::kinds(&v).contains(&"interrupt_destroyed".to_owned()),
        "{v}"
    );
    assert_eq!(sandbox_instance(&sb, &pid2).await["destroyed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbid_rental_by_spec_fails_over_with_one_live_instance() {
    let Stack { db, sb, d } =
        Stack::start("policy_failover", &["--provision-time", "300ms"], FAST).await;
    let token = account(&db, "mover", 10_000.0, 5);
    let spec = json!({"max_price_per_hour": 100, "interruptible": true, "providers": ["vastai"]});
    // an inline key is not kept, so a failover could not give it again
    let inline = json!({"spec": spec, "image": "pytorch/pytorch:latest", "disk_gb": 20,
                        "ssh_public_key": format!("{} t@e", support::rentals::KEY_A),
                        "on_interrupt": {"action": "failover"}});
    let r = post(&d, &token, &inline.to_string()).await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(message(&r).contains("ssh_key_ids"), "{}", message(&r));

    let body = json!({"spec": spec, "image": "pytorch/pytorch:latest", "disk_gb": 20,
                      "on_interrupt": {"action": "failover"}});
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let old = r.json();
    let id = old["id"].as_str().unwrap().to_owned();
    let pid = pid_of(&old);
    until(&d, &token, &id, "running", |v| v["status"] == "running").await;
    outbid(&sb, &pid).await;

    // watched all along: never two live instances at Vast
    let live = || async {
        sb.vast_ledger()
            .await
            .iter()
            .filter(|i| i["destroyed"] == false)
            .count()
    };
    let replaced = support::eventually("the replacement running", || async {
        assert!(live().await <= 1, "two live instances at once");
        let v = call(&d, &token, "GET", &format!("/v1/instances/{id}"), "", None)
            .await
            .json();
        let req = v["replaced_by"].as_str()?.to_owned();
        let row = db
            .client()
            .await
            .query_opt(
                "SELECT id, status, offer_id FROM instances \
                 WHERE rental_request_id = $1 AND status = 'running'",
                &[&req],
            )
            .await
            .unwrap()?;
        Some((v, req, row.get::<_, String>(0), row.get::<_, String>(2)))
    })
    .await;
    let (v, req, new_id, new_offer) = replaced;
    assert_eq!(v["status"], "terminated", "{v}");
    assert!(
        support::rentals::kinds(&v).contains(&"interrupt_failed_over".to_owned()),
        "{v}"
    );
    assert_ne!(
        new_offer,
        old["offer_id"].as_str().unwrap(),
        "not the lost offer"
    );
    assert_eq!(live().await, 1);
    assert_eq!(sandbox_instance(&sb, &pid).await["destroyed"], true);
    // the replacement carries the policy on
    let n = call(
        &d,
        &token,
        "GET",
        &format!("/v1/instances/{new_id}"),
        "",
        None,
    )
    .await
    .json();
    assert_eq!(n["on_interrupt"]["action"], "failover", "{n}");
    let handled: Vec<Value> = support::eventually("the failover's outcome", || async {
        let h: Vec<Value> = account_events(&db, &id)
            .await
            .into_iter()
            .filter(|(t, _)| t == "instance.interrupt_handled")
            .map(|(_, d)| d)
            .collect();
        h.iter().any(|d| d["outcome"] == "failed_over").then_some(h)
    })
    .await;
    let done = handled
        .iter()
        .find(|d| d["outcome"] == "failed_over")
        .unwrap();
    assert_eq!(done["replaced_by"], new_id.as_str());
    assert_eq!(done["rental_request_id"], req.as_str());
    assert!(
        account_events(&db, &id)
            .await
            .iter()
            .any(|(t, _)| t == "rental.failed_over")
    );
}

/// Vast's pending price increases (issue 30, point 7): an increase within
/// `rentals.price_increase_reject_above_pct` is accepted and the ledger's price follows from the
/// contract's end; one above it is rejected; each is decided, told and answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_price_increase_is_accepted_within_the_limit_and_rejected_above_it() {
    let mut cfg = FAST.to_vec();
    cfg.push("rentals.price_increase_reject_above_pct=10");
    let Stack { db, sb, d } =
        Stack::start("policy_reprice", &["--provision-time", "300ms"], &cfg).await;
    let token = account(&db, "repriced", 10_000.0, 5);
    let offers = call(
        &d,
        &token,
        "GET",
        "/v1/offers?providers=vastai&limit=5&sort=price",
        "",
        None,
    )
    .await
    .json();
    let mut rented = Vec::new();
    for o in offers["offers"].as_array().unwrap().iter().take(2) {
        let body = rent_body_with(o["id"].as_str().unwrap(), &json!({}));
        let r = post(&d, &token, &body.to_string()).await;
        assert_eq!(r.status, 201, "{:?}", r.json());
        let id = r.json()["id"].as_str().unwrap().to_owned();
        until(&d, &token, &id, "running", |v| v["status"] == "running").await;
        rented.push((id, pid_of(&r.json()), r.json()));
    }
    let ask = |pid: &str, factor: f64, cutover: f64| {
        json!({"id": pid.parse::<u64>().unwrap(), "gpu_factor": factor, "cutover_in_s": cutover})
            .to_string()
    };
    let (a, b) = (&rented[0], &rented[1]);
    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/price_increase",
        &ask(&a.1, 1.05, 2.0),
    )
    .await;
    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/price_increase",
        &ask(&b.1, 1.5, 2.0),
    )
    .await;
    let rows = support::eventually("both answered", || async {
        let v = sb
            .control("vastai", "GET", "/_sandbox/vast/price_increases", "")
            .await;
        let rows = v["price_increases"].as_array().unwrap().clone();
        rows.iter()
            .all(|r| r["status"] != "pending")
            .then_some(rows)
    })
    .await;
    let status_of = |pid: &str| {
        rows.iter()
            .find(|r| r["contract_id"].as_u64().map(|n| n.to_string()).as_deref() == Some(pid))
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status_of(&a.1), "accepted", "+5% is within 10%");
    assert_eq!(status_of(&b.1), "rejected", "+50% is not");
    let told = |id: String| {
        let db = &db;
        async move {
            account_events(db, &id)
                .await
                .into_iter()
                .filter(|(t, _)| t == "instance.price_increase")
                .map(|(_, d)| d)
                .collect::<Vec<Value>>()
        }
    };
    let ea = told(a.0.clone()).await;
    assert_eq!(ea.len(), 1, "{ea:?}");
    assert_eq!(ea[0]["decision"], "accepted");
    assert!(
        (ea[0]["increase_pct"].as_f64().unwrap() - 5.0).abs() < 0.01,
        "{ea:?}"
    );
    assert!(ea[0]["applies_at"].is_string());
    let eb = told(b.0.clone()).await;
    assert_eq!(eb[0]["decision"], "rejected");
    assert_eq!(eb[0]["price_per_hour_after"], Value::Null);

    // from the contract's end, the ledger bills what Vast bills
    let storage = a.2["storage_per_hour"].as_f64().unwrap();
    let before = a.2["price_per_hour"].as_f64().unwrap();
    let want = (before - storage) * 1.05 + storage;
    let v = until(&d, &token, &a.0, "the new price", |v| {
        (v["price_per_hour"].as_f64().unwrap() - want).abs() < 1e-5
    })
    .await;
    assert!(
        support::rentals::kinds(&v).contains(&"price_changed".to_owned()),
        "{v}"
    );
    let at_vast = sandbox_instance(&sb, &a.1).await;
    assert!(
        // (the ledger's price is the offer's as shown, to four decimals)
        (at_vast["dph_base"].as_f64().unwrap() - (want - storage)).abs() < 1e-4,
        "{at_vast} vs {want}"
    );
    let vb = call(
        &d,
        &token,
        "GET",
        &format!("/v1/instances/{}", b.0),
        "",
        None,
    )
    .await
    .json();
    assert_eq!(
        vb["price_per_hour"], b.2["price_per_hour"],
        "rejected: unchanged"
    );
    // several rounds later: still one answer each, one event each
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(sb.calls("vastai", "accept_price_increase").await, 1);
    assert_eq!(sb.calls("vastai", "reject_price_increase").await, 1);
    assert_eq!(told(a.0.clone()).await.len(), 1);
}

/// A failover with nothing to rent instead: the outbid instance is still destroyed (its policy
/// asked for that), the renter is told why (`outcome: failed`), and the operator's counter (the
/// `GpuproxyInterruptFailoverFailed` alert's) rises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_with_no_other_offer_says_so() {
    let Stack { db, sb, d } =
        Stack::start("policy_failover_none", &["--provision-time", "300ms"], FAST).await;
    let token = account(&db, "stranded", 10_000.0, 5);
    let r = call(
        &d,
        &token,
        "GET",
        "/v1/offers?providers=vastai&interruptible=true&limit=2&sort=price",
        "",
        None,
    )
    .await;
    let two = r.json()["offers"].as_array().unwrap().clone();
    let (a, b) = (&two[0], &two[1]);
    let (pa, pb) = (
        a["price_per_hour"].as_f64().unwrap(),
        b["price_per_hour"].as_f64().unwrap(),
    );
    assert!(
        pa < pb,
        "the cheapest bid offer is alone at its price: {two:?}"
    );
    // a ceiling only the cheapest passes
    let spec = json!({"max_price_per_hour": pa, "interruptible": true, "providers": ["vastai"]});
    let body = json!({"spec": spec, "image": "pytorch/pytorch:latest", "disk_gb": 20,
                      "on_interrupt": {"action": "failover"}});
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["offer_id"], a["id"]);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let pid = pid_of(&r.json());
    until(&d, &token, &id, "running", |v| v["status"] == "running").await;
    outbid(&sb, &pid).await;
    let failed = support::eventually("the failover's failure", || async {
        account_events(&db, &id)
            .await
            .into_iter()
            .find(|(t, d)| t == "instance.interrupt_handled" && d["outcome"] == "failed")
            .map(|(_, d)| d)
    })
    .await;
    assert_eq!(failed["error"]["code"], "offer_unavailable", "{failed}");
    assert_eq!(sandbox_instance(&sb, &pid).await["destroyed"], true);
    let page = d.scrape().await;
    assert_eq!(
        support::metrics::value(
            &page,
            "gpuproxy_reconciler_actions_total{action=\"interrupt_failover_failed\"}"
        ),
        1.0
    );
    // no second attempt: the request has no try, but the outcome is recorded
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(sb.calls("vastai", "create").await, 1);
}

/// A busy reading ends an idle span: an instance warned, then busy again, is not stopped when
/// the first span would have run out; idle again, it is warned anew before it is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_reading_ends_the_idle_span_and_a_new_one_warns_again() {
    let mut cfg = FAST.to_vec();
    cfg.push("rentals.idle_notice_ms=5000");
    let Stack { db, sb, d } =
        Stack::start("policy_idle_reset", &["--provision-time", "300ms"], &cfg).await;
    let token = account(&db, "fidget", 10_000.0, 5);
    let o = cheapest(&d, &token, "vastai", "").await;
    // 6 s below 5%, warned 5 s ahead (after 1 s idle)
    let idle = json!({"gpu_util_below": 5, "for_minutes": 0.1, "action": "stop"});
    let body = rent_body_with(o["id"].as_str().unwrap(), &json!({"idle": idle}));
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let pid = pid_of(&r.json());
    until(&d, &token, &id, "running", |v| v["status"] == "running").await;
    set_util(&sb, &pid, 1.0).await;
    support::eventually("the first warning", || async {
        let n = account_events(&db, &id)
            .await
            .iter()
            .filter(|(t, d)| t == "instance.idle" && d["phase"] == "warning")
            .count();
        (n == 1).then_some(())
    })
    .await;
    set_util(&sb, &pid, 60.0).await;
    // past the end of the first span: still running, never stopped
    tokio::time::sleep(std::time::Duration::from_millis(7000)).await;
    let v = call(&d, &token, "GET", &format!("/v1/instances/{id}"), "", None)
        .await
        .json();
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(sb.calls("vastai", "manage").await, 0);
    // idle again: a new warning, then the stop
    set_util(&sb, &pid, 1.0).await;
    until(&d, &token, &id, "stopped", |v| v["status"] == "stopped").await;
    let phases: Vec<String> = account_events(&db, &id)
        .await
        .into_iter()
        .filter(|(t, _)| t == "instance.idle")
        .map(|(_, d)| d["phase"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(phases, ["warning", "warning", "stopped"], "{phases:?}");
}
