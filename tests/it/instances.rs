//! Rentals end to end: the daemon as a process against both sandbox providers, with PostgreSQL
//! (through PgBouncer) holding the ledger and Redis the caches.

use crate::support;
use crate::support::stack::Stack;

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use support::accounts::TestDb;
use support::client::{Conn, Resp, request};
use support::daemon::DaemonProc;
use support::eventually;
use support::rentals::{account, call, cheapest, message, post, rent_body, spawn_post, try_post};
use support::sandbox::Sandbox;
use support::services;

async fn daemon(db: &TestDb<'_>, sb: &Sandbox, set: &[&str]) -> DaemonProc {
    sb.daemon(db, set).await
}

/// The cheapest available offer of a provider.
async fn offer(d: &DaemonProc, token: &str, provider: &str) -> Value {
    cheapest(d, token, provider, "").await
}

/// Rents `offer` (as listed by `/v1/offers`) and returns the instance; the rental must succeed.
async fn rent(d: &DaemonProc, token: &str, offer: &Value) -> Value {
    let r = call(
        d,
        token,
        "POST",
        "/v1/instances",
        &rent_body(offer["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    r.json()
}

/// `DELETE /v1/instances/{id}` as the holder of `token`.
async fn destroy(d: &DaemonProc, token: &str, id: &str) -> Resp {
    call(d, token, "DELETE", &format!("/v1/instances/{id}"), "", None).await
}

async fn lifecycle(provider: &str) {
    let Stack { db, sb, d } = Stack::start(
        &format!("rent_{provider}"),
        &["--provision-time", "1s", "--ionet-deploy-response", "empty"],
        &["ratelimit.ip_burst=10000"],
    )
    .await;
    let token = account(&db, "renter", 10_000.0, 5);
    let (_, other) = db.account_with_key("someone_else", &[]);
    // io.net's deploy answers an empty body here (as reported live): the daemon finds the
    // deployment by its unique name

    let o = offer(&d, &token, provider).await;
    let r = post(&d, &token, &rent_body(o["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let inst = r.json();
    let id = inst["id"].as_str().unwrap().to_owned();
    assert_eq!(inst["status"], "provisioning");
    assert_eq!(inst["provider"], provider);
    assert_eq!(inst["offer_id"], o["id"]);
    if provider == "ionet" {
        // priced at io.net's total for the paid time (24 h by default), fees and discount in
        let dep = sb.ionet_deployment(&inst["provider_instance_id"]).await;
        let total = inst["price_per_hour"].as_f64().unwrap() * 24.0;
        assert!(
            (total - dep["amount_paid"].as_f64().unwrap()).abs() < 1e-3,
            "{inst} {dep}"
        );
        let events = call(&d, &token, "GET", &format!("/v1/instances/{id}"), "", None)
            .await
            .json();
        assert!(
            events["events"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("fees included"),
            "the quote is recorded: {events}"
        );
    } else {
        assert_eq!(inst["price_per_hour"], o["price_per_hour"]);
    }
    assert!(inst["provider_instance_id"].is_string());

    // another account cannot see or touch it: 404, not 403
    assert_eq!(
        call(&d, &other, "GET", &format!("/v1/instances/{id}"), "", None)
            .await
            .status,
        404
    );
    assert_eq!(destroy(&d, &other, &id).await.status, 404);

    let running = eventually("the instance to run", || async {
        let v = call(&d, &token, "GET", &format!("/v1/instances/{id}"), "", None)
            .await
            .json();
        (v["status"] == "running").then_some(v)
    })
    .await;
    assert!(running["ssh"]["host"].is_string(), "{running}");
    assert!(running["ssh"]["port"].as_u64().unwrap() > 0);

    // a hundred pollers at once: the status cache makes it about one provider call
    let before = sb.calls(provider, "show").await;
    let mut polls = Vec::new();
    for _ in 0..100 {
        let (https, token, path) = (d.https, token.clone(), format!("/v1/instances/{id}"));
        polls.push(tokio::spawn(async move {
            let mut c = Conn::tls(https, &[b"http/1.1"]).await.unwrap();
            let mut req = request("GET", &path, Bytes::new());
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            c.send(req).await.unwrap().status
        }));
    }
    for p in polls {
        assert_eq!(p.await.unwrap(), 200);
    }
    let calls = sb.calls(provider, "show").await - before;
    assert!(calls <= 3, "{calls} provider status calls for 100 polls");

    let r = destroy(&d, &token, &id).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let done = eventually("the instance to be terminated", || async {
        let v = call(&d, &token, "GET", &format!("/v1/instances/{id}"), "", None)
            .await
            .json();
        (v["status"] == "terminated").then_some(v)
    })
    .await;
    assert!(done["terminated_at"].is_string());
    let kinds: Vec<&str> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let statuses: Vec<&str> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds[..2], ["intent", "committed"], "{kinds:?}");
    assert_eq!(statuses[statuses.len() - 1], "terminated", "{kinds:?}");
    assert!(kinds.contains(&"destroy_requested"));
    let pos = |s: &str| {
        statuses
            .iter()
            .position(|x| *x == s)
            .unwrap_or_else(|| panic!("{s} in {statuses:?}"))
    };
    assert!(
        pos("pending") < pos("provisioning")
            && pos("provisioning") < pos("running")
            && pos("running") < pos("terminated")
    );
    for e in done["events"].as_array().unwrap() {
        assert_eq!(e["price_per_hour"], inst["price_per_hour"]);
    }
    // the list shows it; the provider key never appears anywhere a client sees
    let list = call(&d, &token, "GET", "/v1/instances", "", None).await;
    assert_eq!(list.json()["instances"][0]["id"], id.as_str());
    assert!(!String::from_utf8_lossy(&list.body).contains(support::sandbox::VAST_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_on_vastai() {
    lifecycle("vastai").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_on_ionet() {
    lifecycle("ionet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_twenty_times_rents_once() {
    let Stack { db, sb, d } = Stack::start("rent_idem", &[], &[]).await;
    let token = account(&db, "retrier", 10_000.0, 5);
    let o = offer(&d, &token, "vastai").await;
    let body = rent_body(o["id"].as_str().unwrap());
    // a slow provider, so the twenty overlap
    sb.faults("vastai", r#"{"ops": ["create"], "answer_delay_ms": 500}"#)
        .await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(spawn_post(
            d.https,
            token.clone(),
            body.clone(),
            Some("rent-once-7f3a"),
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 201, "{:?}", r.json());
        ids.insert(r.json()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "every answer names the same instance");
    assert_eq!(
        sb.calls("vastai", "create").await,
        1,
        "one rental at the provider"
    );

    // the same key with another body is refused
    let other = rent_body("vastai:5000007");
    let r = call(
        &d,
        &token,
        "POST",
        "/v1/instances",
        &other,
        Some("rent-once-7f3a"),
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["code"], "idempotency_key_reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_rentals_only_fit_the_budget() {
    let Stack { db, sb, d } = Stack::start("rent_budget", &[], &[]).await;
    // an account to read prices with, then the budgeted one
    let probe = account(&db, "probe", 10_000.0, 5);
    let o = offer(&d, &probe, "ionet").await;
    let price = o["price_per_hour"].as_f64().unwrap();
    // room for two rentals over the 24 h window ahead, not three
    let budget = price * 24.0 * 2.5;
    let token = account(&db, "budgeted", budget, 10);
    let body = rent_body(o["id"].as_str().unwrap());
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(spawn_post(d.https, token.clone(), body.clone(), None));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            201 => ok += 1,
            402 => {
                refused += 1;
                let e = &r.json()["error"];
                assert_eq!(e["code"], "budget_exceeded");
                assert!(
                    e["details"]["projected_spend_usd"].as_f64().unwrap()
                        > e["details"]["daily_budget_usd"].as_f64().unwrap()
                );
            }
            other => panic!("unexpected {other}: {:?}", r.json()),
        }
    }
    assert_eq!((ok, refused), (2, 3));
    assert_eq!(sb.calls("ionet", "deploy").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_price_is_refused_and_nothing_is_rented() {
    let Stack { db, sb, d } = Stack::start("rent_price", &[], &[]).await;
    let token = account(&db, "careful", 10_000.0, 5);
    let o = offer(&d, &token, "vastai").await;
    let id = o["id"].as_str().unwrap();
    let shown = o["price_per_hour"].as_f64().unwrap();

    // above the caller's ceiling
    let body = json!({"offer_id": id, "image": "ubuntu:22.04", "disk_gb": 20, "max_price_per_hour": shown / 2.0}).to_string();
    let r = post(&d, &token, &body).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"]["code"], "price_changed");
    assert_eq!(
        r.json()["error"]["details"]["current_price_per_hour"],
        shown
    );

    // moved since the caller saw it (the offers cache still has the old price)
    let a: std::net::SocketAddr = sb.vast.trim_start_matches("http://").parse().unwrap();
    let mut c = Conn::plain(a, false).await.unwrap();
    let r = c
        .send(request(
            "POST",
            "/_sandbox/reprice",
            Bytes::from_static(br#"{"factor": 1.5}"#),
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = post(&d, &token, &rent_body(id)).await;
    assert_eq!(r.status, 409, "{:?}", r.json());
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], "price_changed");
    assert_eq!(e["details"]["quoted_price_per_hour"], shown);
    assert!(e["details"]["current_price_per_hour"].as_f64().unwrap() > shown * 1.4);
    assert_eq!(sb.calls("vastai", "create").await, 0, "nothing rented");
    let list = call(&d, &token, "GET", "/v1/instances", "", None)
        .await
        .json();
    assert_eq!(list["instances"].as_array().unwrap().len(), 0);

    // bad input is named
    let r = post(
        &d,
        &token,
        r#"{"offer_id": "aws:1", "image": "x", "disk_gb": 20}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(message(&r).contains("`offer_id`"));
    let r = post(&d, &token, r#"{"offer_id": "vastai:1", "image": "x"}"#).await;
    assert_eq!(r.status, 400);
    // a launch spec that cannot be run is named and rents nothing
    let long = "x".repeat(4049);
    for (extra, field) in [
        (json!({ "onstart": long }), "`onstart`"),
        (json!({"onstart": ""}), "`onstart`"),
        (json!({"launch_mode": "ssh", "args": ["a"]}), "`args`"),
        (json!({"launch_mode": "jupyter"}), "launch_mode"),
        (json!({"args": "python -m x"}), "args"),
        (
            json!({"template_hash_id": "not-a-hash"}),
            "`template_hash_id`",
        ),
    ] {
        let body = support::rentals::rent_body_with(id, &extra);
        let r = post(&d, &token, &body.to_string()).await;
        assert_eq!(r.status, 400, "{extra}: {:?}", r.json());
        assert!(message(&r).contains(field), "{extra}: {}", message(&r));
    }
    assert_eq!(sb.calls("vastai", "create").await, 0, "nothing rented");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_provider_and_ledger_is_reconciled_at_start() {
    let Stack { db, sb, d } = Stack::start("rent_crash", &[], &[]).await;
    let token = account(&db, "crashy", 10_000.0, 5);
    let o = offer(&d, &token, "vastai").await;
    // the provider accepts at once but answers 30 s later: the daemon dies in between
    sb.faults("vastai", r#"{"ops": ["create"], "answer_delay_ms": 30000}"#)
        .await;
    let body = rent_body(o["id"].as_str().unwrap());
    let (https, t2) = (d.https, token.clone());
    let pending = tokio::spawn(async move { try_post(https, &t2, body, None).await });
    eventually("the provider to have the instance", || async {
        (sb.calls("vastai", "create").await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.signal(libc::SIGKILL);
    assert!(
        pending.await.unwrap().is_err(),
        "the client saw the connection die"
    );
    drop(d);
    sb.heal("vastai").await;

    // restarted: the reconciler adopts what the provider created
    let d = daemon(&db, &sb, &[]).await;
    let list = eventually("the intent to be adopted", || async {
        let v = call(&d, &token, "GET", "/v1/instances", "", None)
            .await
            .json();
        (v["instances"][0]["provider_instance_id"].is_string()).then_some(v)
    })
    .await;
    let insts = list["instances"].as_array().unwrap();
    assert_eq!(insts.len(), 1, "no lost record, no duplicate");
    let id = insts[0]["id"].as_str().unwrap();
    let v = call(&d, &token, "GET", &format!("/v1/instances/{id}"), "", None)
        .await
        .json();
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[..2], ["intent", "adopted"], "{kinds:?}");
    assert_eq!(sb.calls("vastai", "create").await, 1, "rented once");
    let page = d.scrape().await;
    assert!(
        page.contains(r#"gpuproxy_reconciler_actions_total{action="adopted"} 1"#),
        "{page}"
    );
    // and it can be destroyed like any other
    let r = destroy(&d, &token, id).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
}

/// One key, one outcome across a crash (issue 27): the provider takes the rental but its answer
/// is late, the daemon is killed meanwhile, and the client retries with its `Idempotency-Key`
/// against the restarted daemon. The retry takes the key over and first resolves the rental the
/// key was bound to: it answers that instance (201), and nothing is rented twice (io.net used to
/// deploy again; Vast answered 409 `offer_unavailable` for the dead daemon's offer claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_lost_answer_then_a_retry_with_its_key_rents_once() {
    let lease = "rentals.idempotency_lease_ms=1000";
    let Stack { db, sb, mut d } = Stack::start("rent_crash_key", &[], &[lease]).await;
    let token = account(&db, "crashy", 10_000.0, 5);
    for (provider, op) in [("ionet", "deploy"), ("vastai", "create")] {
        let o = offer(&d, &token, provider).await;
        let body = rent_body(o["id"].as_str().unwrap());
        let faults = format!(r#"{{"ops": ["{op}"], "answer_delay_ms": 30000}}"#);
        sb.faults(provider, &faults).await;
        let key = format!("crash-{provider}");
        let (https, t2, b2, k2) = (d.https, token.clone(), body.clone(), key.clone());
        let pending = tokio::spawn(async move { try_post(https, &t2, b2, Some(&k2)).await });
        eventually("the provider to have the rental", || async {
            (sb.calls(provider, op).await == 1).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        d.signal(libc::SIGKILL);
        assert!(
            pending.await.unwrap().is_err(),
            "the client saw the connection die"
        );
        sb.heal(provider).await;
        drop(d);
        d = daemon(&db, &sb, &[lease]).await;

        let r = call(&d, &token, "POST", "/v1/instances", &body, Some(&key)).await;
        assert_eq!(r.status, 201, "{provider}: {:?}", r.json());
        let id = r.json()["id"].as_str().unwrap().to_owned();
        assert!(
            r.json()["provider_instance_id"].is_string(),
            "{:?}",
            r.json()
        );
        let again = call(&d, &token, "POST", "/v1/instances", &body, Some(&key)).await;
        assert_eq!(again.status, 201);
        assert_eq!(again.json()["id"], id.as_str(), "the key names one rental");
        assert_eq!(sb.calls(provider, op).await, 1, "{provider}: rented once");
        let list = call(&d, &token, "GET", "/v1/instances", "", None)
            .await
            .json();
        let ours: Vec<&Value> = list["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["provider"] == provider)
            .collect();
        assert_eq!(
            ours.len(),
            1,
            "{provider}: one row, the retry's answer: {list}"
        );
        assert_eq!(ours[0]["id"], id.as_str());
    }
}

/// A create whose answer is lost and that the provider does not list (yet) is not "failed"
/// (issue 27: a retry used to rent again while io.net might still deploy it): the intent stays
/// pending, still counted, the answer is 502 `outcome_unknown` naming it, and so is every retry
/// with the key, until the reconciler settles it from the provider's list. Then the key runs
/// again; the paid hours the failed intent held are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_is_lost_stays_unknown_until_the_list_settles_it() {
    let Stack { db, sb, d } = Stack::start(
        "rent_lost_unknown",
        &[],
        &[
            "rentals.intent_timeout_ms=1500",
            "rentals.reconcile_interval_ms=300",
        ],
    )
    .await;
    let token = account(&db, "unsure", 10_000.0, 5);
    let o = offer(&d, &token, "ionet").await;
    let body = rent_body(o["id"].as_str().unwrap());
    sb.faults("ionet", r#"{"ops": ["deploy"], "error_rate": 1.0}"#)
        .await;
    let r = call(&d, &token, "POST", "/v1/instances", &body, Some("lost-1")).await;
    assert_eq!(r.status, 502, "{:?}", r.json());
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], "outcome_unknown", "{e}");
    let id = e["details"]["instance_id"].as_str().unwrap().to_owned();
    let v = call(&d, &token, "GET", &format!("/v1/instances/{id}"), "", None)
        .await
        .json();
    assert_eq!(v["status"], "provisioning", "not failed: {v}");
    assert!(
        support::rentals::spent(&db, "unsure").await > 0.0,
        "its paid hours still count"
    );
    let again = call(&d, &token, "POST", "/v1/instances", &body, Some("lost-1")).await;
    assert_eq!(again.status, 502, "{:?}", again.json());
    assert_eq!(again.json()["error"]["details"]["instance_id"], id.as_str());
    sb.heal("ionet").await;
    let v = support::rentals::until(&d, &token, &id, "settled", |v| v["status"] == "failed").await;
    assert!(
        support::rentals::kinds(&v).contains(&"abandoned".to_owned()),
        "{v}"
    );
    assert!(
        support::rentals::spent(&db, "unsure").await.abs() < 1e-9,
        "nothing was deployed: nothing is spent"
    );
    let r = call(&d, &token, "POST", "/v1/instances", &body, Some("lost-1")).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_ne!(
        r.json()["id"],
        id.as_str(),
        "a new rental: the first one failed"
    );
    assert_eq!(sb.ionet_deployments().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_is_allow_listed_and_owner_only() {
    let Stack { db, sb: _sb, d } = Stack::start("passthru", &[], &[]).await;
    let token = account(&db, "owner", 10_000.0, 5);
    let (_, other) = db.account_with_key("stranger", &[]);
    let o = offer(&d, &token, "vastai").await;
    let inst = rent(&d, &token, &o).await;
    let pid = inst["provider_instance_id"].as_str().unwrap().to_owned();

    // allowed, the key injected by the daemon (the sandbox refuses calls without it)
    let path = format!("/v1/providers/vastai/api/v0/instances/{pid}/");
    let r = call(&d, &token, "GET", &path, "", None).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["instances"]["label"], inst["id"]);
    assert!(!String::from_utf8_lossy(&r.body).contains(support::sandbox::VAST_KEY));
    let r = call(
        &d,
        &token,
        "POST",
        "/v1/providers/vastai/api/v0/bundles/",
        r#"{"limit": 2}"#,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["offers"].as_array().unwrap().len(), 2);

    // another account's instance: refused, naming the rule
    let r = call(&d, &other, "GET", &path, "", None).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "passthrough_forbidden");
    assert_eq!(
        r.json()["error"]["details"]["rule"],
        "GET /api/v0/instances/{instance}/"
    );
    // paths off the list: the instance list (every account's), creating, destroying, the account
    for (m, p) in [
        ("GET", "/v1/providers/vastai/api/v1/instances/"),
        ("PUT", "/v1/providers/vastai/api/v0/asks/5000000/"),
        (
            "DELETE",
            &format!("/v1/providers/vastai/api/v0/instances/{pid}/"),
        ),
        ("GET", "/v1/providers/vastai/api/v0/users/current/"),
        (
            "GET",
            &format!("/v1/providers/vastai/api/v0/instances/{pid}/../../users/current/"),
        ),
        (
            "GET",
            "/v1/providers/ionet/enterprise/v1/io-cloud/vmaas/deployments",
        ),
    ] {
        let r = call(&d, &token, m, p, "", None).await;
        assert_eq!(
            r.status,
            403,
            "{m} {p}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"]["code"], "passthrough_forbidden");
    }
    // io.net's catalogue through passthrough, with its own header
    let r = call(
        &d,
        &token,
        "GET",
        "/v1/providers/ionet/enterprise/v1/io-cloud/vmaas/hardware",
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!String::from_utf8_lossy(&r.body).contains(support::sandbox::IONET_KEY));

    // the provider keys never reach the daemon's log
    let log = d.log();
    assert!(
        log.contains("/v1/providers/"),
        "the access log has the calls"
    );
    for key in [support::sandbox::VAST_KEY, support::sandbox::IONET_KEY] {
        assert!(!log.contains(key), "the log holds a provider key");
    }
}

/// Live instances at the sandbox's Vast.ai, read with its key.
async fn vast_instances(sb: &Sandbox) -> Vec<Value> {
    let a: std::net::SocketAddr = sb.vast.trim_start_matches("http://").parse().unwrap();
    let mut c = Conn::plain(a, false).await.unwrap();
    let mut req = request("GET", "/api/v1/instances/?limit=25", Bytes::new());
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", support::sandbox::VAST_KEY)
            .parse()
            .unwrap(),
    );
    let r = c.send(req).await.unwrap();
    r.json()["instances"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_still_created_an_instance_leaves_nothing_running() {
    let Stack { db, sb, d } =
        Stack::start("rent_quirk", &["--vast-refuse-after-create"], &[]).await;
    let token = account(&db, "quirky", 10_000.0, 5);
    let o = offer(&d, &token, "vastai").await;
    let r = post(&d, &token, &rent_body(o["id"].as_str().unwrap())).await;
    assert!(r.status >= 400, "{:?}", r.json());
    assert_eq!(sb.calls("vastai", "create").await, 1);
    assert!(
        vast_instances(&sb).await.is_empty(),
        "the instance Vast made anyway was destroyed"
    );
    let list = call(&d, &token, "GET", "/v1/instances", "", None)
        .await
        .json();
    assert_eq!(list["instances"][0]["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_destroys_an_instance_made_for_a_failed_intent() {
    let Stack { db, sb, d } = Stack::start("rent_orphan", &[], &[]).await;
    let token = account(&db, "orphaned", 10_000.0, 5);
    let o = offer(&d, &token, "vastai").await;
    let inst = rent(&d, &token, &o).await;
    let id = inst["id"].as_str().unwrap().to_owned();
    assert_eq!(vast_instances(&sb).await.len(), 1);
    drop(d);
    // the ledger says the intent failed (as after a lost answer), yet the provider has it
    let s = services::shared();
    let (client, conn) = tokio_postgres::connect(&s.postgres_url(&db.name), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute(
            "UPDATE instances SET status = 'failed', provider_instance_id = NULL WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let d = daemon(&db, &sb, &[]).await;
    eventually("the orphan to be destroyed", || async {
        vast_instances(&sb).await.is_empty().then_some(())
    })
    .await;
    // the ledger records it once the provider has confirmed (a moment after the sandbox shows it)
    let v = eventually("the orphan's destruction to be recorded", || async {
        let v = call(&d, &token, "GET", &format!("/v1/instances/{id}"), "", None)
            .await
            .json();
        let last = v["events"].as_array()?.last()?["kind"].clone();
        (last == "orphan_destroyed").then_some(v)
    })
    .await;
    assert_eq!(v["status"], "failed");
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"orphan_destroyed"), "{kinds:?}");
    assert!(
        d.scrape()
            .await
            .contains(r#"gpuproxy_reconciler_actions_total{action="orphan_destroyed"} 1"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_expire() {
    let Stack { db, sb: _sb, d } =
        Stack::start("rent_idem_ttl", &[], &["rentals.idempotency_ttl_ms=300"]).await;
    let token = account(&db, "forgetful", 10_000.0, 5);
    let a = offer(&d, &token, "ionet").await;
    let body = rent_body(a["id"].as_str().unwrap());
    let first = call(&d, &token, "POST", "/v1/instances", &body, Some("k-ttl")).await;
    assert_eq!(first.status, 201);
    let replay = call(&d, &token, "POST", "/v1/instances", &body, Some("k-ttl")).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json()["id"], first.json()["id"]);
    // once expired the key is free again: the same request runs anew
    let again = eventually("the key to expire", || async {
        let r = call(&d, &token, "POST", "/v1/instances", &body, Some("k-ttl")).await;
        (r.header("idempotent-replayed").is_none()).then_some(r)
    })
    .await;
    assert_eq!(again.status, 201);
    assert_ne!(again.json()["id"], first.json()["id"]);
    // a key that is not visible ASCII is refused
    let r = call(&d, &token, "POST", "/v1/instances", &body, Some("bad key")).await;
    assert_eq!(r.status, 400);
}

/// Ports and endpoints (issue 30): a rental's `ports` go to Vast as `-p` mappings and to io.net
/// as network services; once the provider maps them the instance shows `endpoints` (public
/// address and port), with an `endpoints_ready` event and `instance.endpoints_ready` for the
/// account. Bad ports are named and rent nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_are_exposed_and_their_endpoints_appear_with_an_event() {
    let Stack { db, sb, d } = Stack::start(
        "rent_ports",
        &["--provision-time", "300ms"],
        &["rentals.status_cache_ms=100", "ratelimit.enabled=false"],
    )
    .await;
    let token = account(&db, "porter", 10_000.0, 5);
    let ports = json!([{"port": 8000}, {"port": 9000, "protocol": "udp"}]);
    for provider in ["vastai", "ionet"] {
        let o = offer(&d, &token, provider).await;
        let mut body = support::rentals::rent_body_with(o["id"].as_str().unwrap(), &json!({}));
        for (bad, why) in [
            (json!([{"port": 8000}, {"port": 8000}]), "ports"),
            (json!([{"port": 0}]), "ports"),
            (json!([{"port": 70000}]), "ports"),
            (json!([{"port": 80, "protocol": "sctp"}]), "ports"),
        ] {
            body["ports"] = bad.clone();
            let r = post(&d, &token, &body.to_string()).await;
            assert_eq!(r.status, 400, "{bad}: {:?}", r.json());
            assert!(message(&r).contains(why), "{bad}: {}", message(&r));
        }
        body["ports"] = ports.clone();
        let r = post(&d, &token, &body.to_string()).await;
        assert_eq!(r.status, 201, "{provider}: {:?}", r.json());
        let id = r.json()["id"].as_str().unwrap().to_owned();
        let v = support::rentals::until(&d, &token, &id, "endpoints", |v| {
            v["endpoints"].as_array().is_some_and(|e| e.len() == 2)
        })
        .await;
        let e = &v["endpoints"];
        assert_eq!(e[0]["port"], 8000, "{v}");
        assert_eq!(e[0]["protocol"], "tcp");
        assert_eq!(e[1]["port"], 9000);
        assert_eq!(e[1]["protocol"], "udp");
        assert!(e[0]["public_port"].as_u64().unwrap() > 0);
        let ip = if provider == "vastai" {
            "203.0.113.7"
        } else {
            "198.51.100.9"
        };
        assert_eq!(e[0]["public_ip"], ip, "trimmed: {v}");
        assert!(
            support::rentals::kinds(&v).contains(&"endpoints_ready".to_owned()),
            "{v}"
        );
        let n: i64 = db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM account_events WHERE type = 'instance.endpoints_ready' \
                   AND instance_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "one event for one mapping, however often it is read");
    }
    // what the providers were asked: Vast's `-p` env keys, io.net's network services
    let create = &sb.requests("vastai", "create").await[0];
    assert_eq!(create["body"]["env"]["-p 8000:8000"], "1", "{create}");
    assert_eq!(create["body"]["env"]["-p 9000:9000/udp"], "1", "{create}");
    let deploy = &sb.requests("ionet", "deploy").await[0];
    assert_eq!(
        deploy["body"]["network_services"]["udp-9000"],
        json!({"port": 9000, "protocol": "udp", "whitelist": ["0.0.0.0/0"]}),
        "{deploy}"
    );
    // an allow-list: io.net's whitelist; Vast, which maps publicly, refuses it by name
    let allow = json!([{"port": 8080, "allow_from": ["203.0.113.0/24", "198.51.100.7/32"]}]);
    let o = offer(&d, &token, "ionet").await;
    let body =
        support::rentals::rent_body_with(o["id"].as_str().unwrap(), &json!({"ports": allow}));
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let deploys = sb.requests("ionet", "deploy").await;
    let last = deploys.last().unwrap();
    assert_eq!(
        last["body"]["network_services"]["tcp-8080"]["whitelist"],
        json!(["203.0.113.0/24", "198.51.100.7/32"]),
        "{last}"
    );
    let o = offer(&d, &token, "vastai").await;
    let mut body =
        support::rentals::rent_body_with(o["id"].as_str().unwrap(), &json!({"ports": allow}));
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(message(&r).contains("allow_from"), "{}", message(&r));
    body["ports"] = json!([{"port": 8080, "allow_from": ["not-a-cidr"]}]);
    let r = post(&d, &token, &body.to_string()).await;
    assert_eq!(r.status, 400, "{:?}", r.json());
}
