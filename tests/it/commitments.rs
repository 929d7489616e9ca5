//! Commitments are spend (issue 27), end to end against the io.net sandbox: time paid up front
//! counts in full the moment it is bought (at rent and at every extend), extends are checked and
//! recorded under the account's lock, the caller's key pays, the ledger holds what io.net says
//! was paid (`amount_paid`), and the unused hours come back on destroy, the first hour kept.

use crate::support;
use crate::support::stack::Stack;

use serde_json::{Value, json};
use support::rentals::{account, call, cheapest, post, spent, until};

fn rent(offer: &Value, hours: u32) -> String {
    json!({"offer_id": offer["id"], "image": "general", "disk_gb": 20, "duration_hours": hours})
        .to_string()
}

/// A year of io.net paid up front on a 50 USD/day account is 402 before anything is deployed
/// (it was accepted: the budget looked at the price per hour); one hour fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_paid_up_front_beyond_the_budget_are_refused_before_any_deploy() {
    let Stack { db, sb, d } =
        Stack::start("commit_rent", &["--provision-time", "300ms"], &[]).await;
    let token = account(&db, "yearly", 50.0, 5);
    let o = cheapest(&d, &token, "ionet", "").await;
    let r = post(&d, &token, &rent(&o, 8760)).await;
    assert_eq!(r.status, 402, "{:?}", r.json());
    let e = &r.json()["error"];
    assert_eq!(e["code"], "budget_exceeded", "{e}");
    assert!(
        e["details"]["paid_now_usd"].as_f64().unwrap() > 50.0,
        "the year's price is what counts: {e}"
    );
    assert_eq!(sb.calls("ionet", "deploy").await, 0, "nothing was deployed");
    let r = post(&d, &token, &rent(&o, 1)).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let dep = &sb.ionet_deployments().await[0];
    let committed = spent(&db, "yearly").await;
    assert!(
        (committed - dep["amount_paid"].as_f64().unwrap()).abs() < 1e-4,
        "the hour is spent once paid: {committed} vs {dep}"
    );
}

/// 25 extends (20 at once, then 5 one after another) with a budget for one: one 200 and 24 × 402,
/// one extend at io.net, and the ledger's committed spend is io.net's `amount_paid`. A key capped
/// at a cent cannot extend another key's instance (the caller's key pays). Destroyed within its
/// first hour, the deployment keeps the first hour of what was paid: the ledger's refund leaves
/// what io.net charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extends_with_a_budget_for_one_buy_once_and_the_ledger_holds_what_was_paid() {
    let Stack { db, sb, d } = Stack::start(
        "commit_extend",
        &["--provision-time", "300ms"],
        &[
            "ratelimit.enabled=false",
            "rentals.max_concurrent_changes_per_account=4",
        ],
    )
    .await;
    let token = account(&db, "extender", 10_000.0, 5);
    let o = cheapest(&d, &token, "ionet", "").await;
    let r = post(&d, &token, &rent(&o, 1)).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let v = until(&d, &token, &id, "running", |v| v["status"] == "running").await;
    let pid = v["provider_instance_id"].clone();
    let hour = sb.ionet_deployment(&pid).await["amount_paid"]
        .as_f64()
        .unwrap();
    // room for the hour and one extend of 10 h (11 h in all), not for two (21 h)
    let budget = 16.0 * hour;
    db.cli(&[
        "accounts",
        "update",
        "extender",
        "--daily-budget-usd",
        &format!("{budget:.6}"),
    ]);
    let path = format!("/v1/instances/{id}/extend");
    let mut answers = futures_util::future::join_all((0..20).map(|_| {
        let (d, token, path) = (&d, &token, &path);
        async move { call(d, token, "POST", path, r#"{"hours": 10}"#, None).await }
    }))
    .await;
    for _ in 0..5 {
        answers.push(call(&d, &token, "POST", &path, r#"{"hours": 10}"#, None).await);
    }
    support::rentals::one_passed_the_rest_over_budget(&answers, 200);
    assert_eq!(
        sb.calls("ionet", "extend").await,
        1,
        "one extend reached io.net"
    );
    let dep = sb.ionet_deployment(&pid).await;
    assert_eq!(dep["duration_hours"], 11, "{dep}");
    let paid = dep["amount_paid"].as_f64().unwrap();
    let committed = spent(&db, "extender").await;
    assert!(
        (committed - paid).abs() < 1e-6,
        "the ledger holds what io.net says was paid: {committed} vs {paid}"
    );

    // another key of the account, capped at a cent, extends nothing it would pay for
    let other = db.cli(&["keys", "create", "--account", "extender"]);
    let other = other["token"].as_str().unwrap().to_owned();
    db.cli(&[
        "keys",
        "update",
        support::accounts::public_id(&other),
        "--spend-limit-usd",
        "0.01",
    ]);
    db.cli(&[
        "accounts",
        "update",
        "extender",
        "--daily-budget-usd",
        "10000",
    ]);
    let r = call(&d, &other, "POST", &path, r#"{"hours": 1}"#, None).await;
    assert_eq!(r.status, 402, "{:?}", r.json());
    assert_eq!(
        r.json()["error"]["details"]["budget"],
        "key",
        "{:?}",
        r.json()
    );
    assert_eq!(sb.calls("ionet", "extend").await, 1, "nothing more bought");

    // destroyed in its first hour: io.net keeps an hour of the 11 paid, the ledger too
    let v = support::rentals::destroy_until_ended(&d, &token, &id).await;
    let kinds = support::rentals::kinds(&v);
    assert!(kinds.contains(&"refund".to_owned()), "{kinds:?}");
    let charged = sb.ionet_deployment(&pid).await["charged_usd"]
        .as_f64()
        .unwrap();
    let left = spent(&db, "extender").await;
    assert!(
        (left - charged).abs() < 1e-4,
        "after the refund the ledger has what io.net charged: {left} vs {charged}"
    );
    let usage = call(&d, &token, "GET", "/v1/usage", "", None).await.json();
    assert!(
        (usage["totals"]["usd"].as_f64().unwrap() - left).abs() < 1e-4,
        "{usage}"
    );
}
