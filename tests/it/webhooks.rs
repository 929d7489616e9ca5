//! Signed webhooks (issue 17), end to end: the daemon as a process with PostgreSQL (through
//! PgBouncer), Redis and the sandbox; a receiver on loopback that checks every signature and
//! answers 503 before it takes a delivery.

use crate::support;
use crate::support::stack::Stack;

use serde_json::Value;
use support::accounts::TestDb;
use support::eventually;
use support::receiver::{Receiver, verify};
use support::rentals::{account, call};

/// The webhook's delivery log once its newest delivery is in `state`.
async fn latest_delivery(
    d: &support::daemon::DaemonProc,
    token: &str,
    id: &str,
    state: &'static str,
) -> Value {
    eventually(&format!("the newest delivery {state}"), || async move {
        let v = call(
            d,
            token,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries"),
            "",
            None,
        )
        .await
        .json();
        (v["deliveries"][0]["state"] == state).then_some(v)
    })
    .await
}

/// A key created and revoked for `account`: one `key.revoked` event.
fn revoke_a_key(db: &TestDb<'_>, account: &str) -> String {
    let k = db.cli(&["keys", "create", "--account", account]);
    let id = k["key"]["public_id"]
        .as_str()
        .or(k["public_id"].as_str())
        .unwrap()
        .to_owned();
    db.cli(&["keys", "revoke", &id]);
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_are_signed_retried_after_a_503_logged_and_stay_in_their_account() {
    let Stack {
        db,
        sb: _sandbox,
        d,
    } = Stack::start(
        "wh1",
        &[],
        &[
            "ratelimit.enabled=false",
            "webhooks.allow_private_targets=true",
            "webhooks.retry_base_ms=100",
            "webhooks.retry_max_ms=400",
            "webhooks.poll_interval_ms=100",
        ],
    )
    .await;
    let a = account(&db, "hooked", 100.0, 1);
    let b = account(&db, "other", 100.0, 1);
    let rx = Receiver::start().await;
    let body = serde_json::json!({"url": rx.url("/in?src=gpuproxyd"), "types": ["key.revoked"]});
    let created = call(&d, &a, "POST", "/v1/webhooks", &body.to_string(), None).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    let (id, secret) = (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    );
    assert!(secret.starts_with("whsec_"));
    // the secret is shown once
    let listed = call(&d, &a, "GET", "/v1/webhooks", "", None).await.json();
    assert_eq!(listed["webhooks"][0]["id"], id.as_str());
    assert!(!listed.to_string().contains(&secret));
    let shown = call(&d, &a, "GET", &format!("/v1/webhooks/{id}"), "", None).await;
    assert_eq!(shown.status, 200);
    assert!(!shown.text().contains(&secret));
    // another account sees no such webhook
    for (m, p) in [
        ("GET", format!("/v1/webhooks/{id}")),
        ("GET", format!("/v1/webhooks/{id}/deliveries")),
        ("DELETE", format!("/v1/webhooks/{id}")),
    ] {
        let r = call(&d, &b, m, &p, "", None).await;
        assert_eq!(r.status, 404, "{m} {p}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "not_found");
    }

    rx.answer(&[503, 503]);
    // B's event is not A's; a type A did not ask for is not sent
    revoke_a_key(&db, "other");
    let public_id = revoke_a_key(&db, "hooked");
    let got = eventually("three attempts at the receiver", || {
        let got = rx.received();
        async move { (got.len() >= 3).then_some(got) }
    })
    .await;
    for r in &got {
        assert!(
            verify(&secret, &r.signature, &r.body),
            "signature {} does not verify",
            r.signature
        );
        assert!(!verify("whsec_wrong", &r.signature, &r.body));
        assert_eq!(r.event, "key.revoked");
        assert_eq!(r.delivery, got[0].delivery, "one delivery, attempted again");
        let e = r.json();
        assert_eq!(e["type"], "key.revoked");
        assert_eq!(e["data"]["public_id"], public_id.as_str());
    }
    // the log shows the attempts
    let log = latest_delivery(&d, &a, &id, "delivered").await;
    let one = &log["deliveries"][0];
    assert_eq!(log["deliveries"].as_array().unwrap().len(), 1, "{log:#}");
    assert_eq!(one["attempts"], 3);
    assert_eq!(one["event_type"], "key.revoked");
    assert_eq!(one["id"].to_string(), got[0].delivery);
    let statuses: Vec<&Value> = one["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(
        statuses,
        [&Value::from(503), &Value::from(503), &Value::from(200)]
    );
    // nothing more arrives: delivered once it was taken
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(rx.received().len(), 3);

    // a final 4xx is not retried; a deleted webhook sends nothing more
    rx.answer(&[410]);
    revoke_a_key(&db, "hooked");
    let failed = latest_delivery(&d, &a, &id, "failed").await;
    assert_eq!(failed["deliveries"][0]["attempts"], 1);
    assert_eq!(failed["deliveries"][0]["last_status"], 410);
    let deleted = call(&d, &a, "DELETE", &format!("/v1/webhooks/{id}"), "", None).await;
    assert_eq!(deleted.status, 200);
    let before = rx.received().len();
    revoke_a_key(&db, "hooked");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(rx.received().len(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn private_targets_are_refused_unless_allowed_and_failing_webhooks_are_disabled() {
    let Stack {
        db,
        sb: _sandbox,
        d,
    } = Stack::start(
        "wh2",
        &[],
        &[
            "ratelimit.enabled=false",
            "webhooks.retry_base_ms=100",
            "webhooks.retry_max_ms=200",
            "webhooks.poll_interval_ms=100",
            "webhooks.disable_after_failures=3",
            // the count alone (the time rule has a test of its own)
            "webhooks.disable_after_ms=0",
            "webhooks.max_per_account=2",
        ],
    )
    .await;
    let a = account(&db, "guarded", 100.0, 1);
    let rx = Receiver::start().await;
    let post = |body: Value| {
        let (d, a) = (&d, &a);
        async move { call(d, a, "POST", "/v1/webhooks", &body.to_string(), None).await }
    };
    // an address literal that is not public: refused at once
    for url in [
        rx.url("/"),
        "http://[::1]:9/".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://[::ffff:10.0.0.1]/".to_owned(),
    ] {
        let r = post(serde_json::json!({"url": url})).await;
        assert_eq!(r.status, 400, "{url}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "target_not_allowed", "{url}");
    }
    // bad input: a JSON error naming what is wrong
    for (body, what) in [
        (serde_json::json!({"url": "ftp://example.com/"}), "scheme"),
        (
            serde_json::json!({"url": "https://u:p@example.com/"}),
            "credentials",
        ),
        (
            serde_json::json!({"url": "https://hooks.example.com/", "types": ["nope"]}),
            "nope",
        ),
        (serde_json::json!({"types": []}), "url"),
        (
            serde_json::json!({"url": "https://hooks.example.com/", "extra": 1}),
            "extra",
        ),
    ] {
        let r = post(body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(what),
            "{body}: {}",
            r.text()
        );
    }
    // a name is checked after it is resolved, at delivery: localhost is loopback
    let by_name = post(serde_json::json!({
        "url": format!("http://localhost:{}/in", rx.addr.port())
    }))
    .await;
    assert_eq!(by_name.status, 201, "{}", by_name.text());
    let id = by_name.json()["id"].as_str().unwrap().to_owned();
    revoke_a_key(&db, "guarded");
    let log = latest_delivery(&d, &a, &id, "failed").await;
    let err = log["deliveries"][0]["last_error"].as_str().unwrap();
    assert!(err.contains("not a public address"), "{err}");
    assert!(
        rx.received().is_empty(),
        "nothing reached the loopback receiver"
    );
    // the cap
    let second = post(serde_json::json!({"url": "https://hooks.example.com/x"})).await;
    assert_eq!(second.status, 201);
    let third = post(serde_json::json!({"url": "https://hooks.example.com/y"})).await;
    assert_eq!(third.status, 409);
    assert_eq!(third.json()["error"]["code"], "webhook_limit");
    let second_id = second.json()["id"].as_str().unwrap().to_owned();
    call(
        &d,
        &a,
        "DELETE",
        &format!("/v1/webhooks/{second_id}"),
        "",
        None,
    )
    .await;

    // three failed attempts in a row (a refused target is final: one attempt per event)
    revoke_a_key(&db, "guarded");
    revoke_a_key(&db, "guarded");
    let w = eventually("the webhook disabled", || {
        let (d, a, id) = (&d, &a, &id);
        async move {
            let v = call(d, a, "GET", &format!("/v1/webhooks/{id}"), "", None)
                .await
                .json();
            (v["enabled"] == false).then_some(v)
        }
    })
    .await;
    assert!(
        w["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("disable_after_failures"),
        "{w:#}"
    );
    assert_eq!(w["consecutive_failures"], 3);
    let page = d.scrape().await;
    assert!(support::metrics::sum(&page, "gpuproxy_webhooks_disabled_total") >= 1.0);
    // and its owner is told, in the account's event log
    let told = db.events_of("guarded", "webhook.disabled").await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["webhook_id"], id.as_str(), "{told:?}");
    // enabled again by its owner, with its count reset
    let again = call(
        &d,
        &a,
        "POST",
        &format!("/v1/webhooks/{id}/enable"),
        "",
        None,
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["enabled"], true);
    assert_eq!(again.json()["consecutive_failures"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offer_watch_fires_once_per_offer_on_refreshed_answers_without_calls_of_its_own() {
    use std::time::Duration;
    use support::sse::Sse;
    let Stack { db, sb: sandbox, d } = Stack::start(
        "wh3",
        &[],
        &[
            "ratelimit.enabled=false",
            "offers.cache_ttl_ms=200",
            "offers.stale_while_revalidate_ms=0",
            "webhooks.allow_private_targets=true",
            "webhooks.poll_interval_ms=100",
            // one event per offer here (the bounds have a test of their own)
            "rentals.watch_events_per_refresh=1000",
            "rentals.watch_account_events_per_refresh=1000",
        ],
    )
    .await;
    let a = account(&db, "watcher", 100.0, 1);
    let b = account(&db, "bystander", 100.0, 1);
    let offers_page = |who: &str| {
        let (d, who) = (&d, who.to_owned());
        async move {
            let r = call(
                d,
                &who,
                "GET",
                "/v1/offers?providers=vastai&limit=200",
                "",
                None,
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        }
    };
    let page = offers_page(&a).await;
    let cheapest = page["offers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["interruptible"] == false)
        .map(|o| o["price_per_gpu_hour"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert!(cheapest.is_finite(), "{page:#}");
    // nothing is that cheap yet
    let price = cheapest * 0.9;
    let rx = Receiver::start().await;
    let hook = serde_json::json!({"url": rx.url("/"), "types": ["offer.watch_matched"]});
    let secret = call(&d, &a, "POST", "/v1/webhooks", &hook.to_string(), None)
        .await
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    // bad input first: JSON errors naming the field
    for (body, what) in [
        (
            serde_json::json!({"spec": {"gpu": "RTX 4090"}}),
            "max_price_per_gpu",
        ),
        (
            serde_json::json!({"spec": {}, "max_price_per_gpu": -1}),
            "max_price_per_gpu",
        ),
        (
            serde_json::json!({"spec": {"min_gpus": 0}, "max_price_per_gpu": 1}),
            "spec.min_gpus",
        ),
        (
            serde_json::json!({"spec": {"providers": ["nope"]}, "max_price_per_gpu": 1}),
            "spec.providers",
        ),
        (
            serde_json::json!({"spec": {"max_price_per_gpu": 1}, "max_price_per_gpu": 1}),
            "spec.max_price_per_gpu",
        ),
    ] {
        let r = call(&d, &a, "POST", "/v1/watches", &body.to_string(), None).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(what),
            "{body}: {}",
            r.text()
        );
    }
    let body = serde_json::json!({"spec": {"providers": ["vastai"]}, "max_price_per_gpu": price});
    let w = call(&d, &a, "POST", "/v1/watches", &body.to_string(), None).await;
    assert_eq!(w.status, 201, "{}", w.text());
    let watch_id = w.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        w.json()["spec"],
        serde_json::json!({"providers": ["vastai"], "interruptible": false})
    );
    let r = call(&d, &b, "GET", &format!("/v1/watches/{watch_id}"), "", None).await;
    assert_eq!(r.status, 404, "another account's watch");

    let mut stream = Sse::open(
        d.https,
        &a,
        "/v1/events?types=offer.watch_matched",
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        stream.next(Duration::from_secs(5)).await.unwrap().event,
        "open"
    );
    // a watch makes no upstream call: the searches are the clients' alone
    let searches = sandbox.calls("vastai", "search").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sandbox.calls("vastai", "search").await, searches);
    // a refreshed answer with nothing at the price: no event
    offers_page(&a).await;
    assert!(stream.next(Duration::from_millis(500)).await.is_none());

    // prices halve; the next refresh brings matches, each offer once
    sandbox
        .control("vastai", "POST", "/_sandbox/reprice", r#"{"factor": 0.5}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let page = offers_page(&b).await; // anyone's search refreshes the cache
    let expected: std::collections::BTreeSet<String> = page["offers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["interruptible"] == false && o["available"] != false)
        .filter(|o| o["price_per_gpu_hour"].as_f64().unwrap() <= price)
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!expected.is_empty(), "{page:#}");
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < expected.len() {
        let e = stream
            .next(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("matches for {expected:?}, seen {seen:?}"));
        assert_eq!(e.event, "offer.watch_matched");
        assert_eq!(e.data["data"]["watch_id"], watch_id.as_str());
        let offer = &e.data["data"]["offer"];
        assert!(
            offer["price_per_gpu_hour"].as_f64().unwrap() <= price,
            "{offer}"
        );
        assert!(
            seen.insert(offer["id"].as_str().unwrap().to_owned()),
            "twice: {offer}"
        );
    }
    assert_eq!(seen, expected);
    // refreshed again: nothing new
    tokio::time::sleep(Duration::from_millis(250)).await;
    offers_page(&a).await;
    assert!(stream.next(Duration::from_millis(800)).await.is_none());
    let shown = call(&d, &a, "GET", &format!("/v1/watches/{watch_id}"), "", None)
        .await
        .json();
    assert_eq!(shown["matches"], expected.len());
    // the same events reached the webhook, signed
    let got = eventually("the matches delivered to the webhook", || {
        let got = rx.received();
        let n = expected.len();
        async move { (got.len() >= n).then_some(got) }
    })
    .await;
    assert!(
        got.iter()
            .all(|r| verify(&secret, &r.signature, &r.body) && r.event == "offer.watch_matched")
    );
    // deleted: no more matches (prices halve again)
    let del = call(
        &d,
        &a,
        "DELETE",
        &format!("/v1/watches/{watch_id}"),
        "",
        None,
    )
    .await;
    assert_eq!(del.status, 200);
    let list = call(&d, &a, "GET", "/v1/watches", "", None).await.json();
    assert_eq!(list["watches"].as_array().unwrap().len(), 0);
    sandbox
        .control("vastai", "POST", "/_sandbox/reprice", r#"{"factor": 0.5}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    offers_page(&a).await;
    assert!(stream.next(Duration::from_millis(800)).await.is_none());
}

/// A webhook behind events that were swept (past `events.retention_hours`) before it was sent
/// them: its cursor moves past them instead of coming back as behind every round.
#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_behind_swept_events_moves_past_them() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "wh_swept",
        &[],
        &[
            "webhooks.allow_private_targets=true",
            "webhooks.poll_interval_ms=100",
        ],
    )
    .await;
    let a = account(&db, "swept", 100.0, 1);
    let r = call(
        &d,
        &a,
        "POST",
        "/v1/webhooks",
        r#"{"url": "https://127.0.0.1:9/hook"}"#,
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    // five events committed and swept before the sender read them: the sequence moved on, the
    // rows are gone
    let client = db.client().await;
    client
        .execute(
            "UPDATE accounts SET event_seq = event_seq + 5 WHERE name = 'swept'",
            &[],
        )
        .await
        .unwrap();
    eventually("the cursor past the swept events", || async {
        let row = client
            .query_one(
                "SELECT w.cursor = a.event_seq FROM webhooks w JOIN accounts a \
                 ON a.id = w.account_id WHERE a.name = 'swept'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, bool>(0).then_some(())
    })
    .await;
    let r = call(
        &d,
        &a,
        "GET",
        &format!(
            "/v1/webhooks/{}/deliveries",
            r.json()["id"].as_str().unwrap()
        ),
        "",
        None,
    )
    .await;
    assert_eq!(r.json()["deliveries"].as_array().unwrap().len(), 0);
}

/// Broad watches are bounded: 20 watches matching every offer make one event per watch per
/// answer (listing how many matched and the cheapest), not one per offer, and a refreshed
/// answer with the same offers makes none (the cooldown).
#[tokio::test(flavor = "multi_thread")]
async fn broad_watches_make_a_bounded_number_of_events() {
    use std::time::Duration;
    let Stack { db, sb: _sb, d } = Stack::start(
        "wh_broad",
        &[],
        &[
            "ratelimit.enabled=false",
            "offers.cache_ttl_ms=200",
            "offers.stale_while_revalidate_ms=0",
        ],
    )
    .await;
    let a = account(&db, "broad", 100.0, 1);
    let search = || async {
        let r = call(
            &d,
            &a,
            "GET",
            "/v1/offers?providers=vastai&limit=200",
            "",
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    for _ in 0..20 {
        let body =
            serde_json::json!({"spec": {"providers": ["vastai"]}, "max_price_per_gpu": 1000});
        let r = call(&d, &a, "POST", "/v1/watches", &body.to_string(), None).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let page = search().await;
    let listed = page["total"].as_u64().unwrap();
    assert!(listed > 5, "more offers than a watch's cap: {listed}");
    let count = || async { db.events_of("broad", "offer.watch_matched").await.len() };
    let n = eventually("the watches' events", || async {
        let n = count().await;
        (n >= 20).then_some(n)
    })
    .await;
    assert_eq!(n, 20, "one event per watch, not one per offer");
    let e = db.events_of("broad", "offer.watch_matched").await[0].clone();
    assert!(e["matched"].as_u64().unwrap() > 5, "{e}");
    assert_eq!(e["offers"].as_array().unwrap().len(), 5, "{e}");
    // refreshed with the same offers: nothing new within the cooldown
    tokio::time::sleep(Duration::from_millis(250)).await;
    search().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(count().await, 20);
}

/// Fair delivery: a receiver that holds every answer keeps only its webhook's share of the
/// send slots, so another account's receiver gets its event while the slow one still holds
/// its requests; a receiver failing for a few seconds (503) is retried through its outage, not
/// disabled (the time rule), and gets everything once it answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_receiver_holds_only_its_share_and_an_outage_is_retried_through() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "wh_fair",
        &[],
        &[
            "webhooks.allow_private_targets=true",
            "webhooks.poll_interval_ms=100",
            "webhooks.max_in_flight=6",
            "webhooks.max_in_flight_per_webhook=2",
            "webhooks.max_in_flight_per_account=4",
            "webhooks.timeout_ms=60000",
            "webhooks.retry_base_ms=100",
            "webhooks.retry_max_ms=300",
            "webhooks.max_attempts=100",
            "webhooks.disable_after_failures=3",
            "webhooks.disable_after_ms=60000",
        ],
    )
    .await;
    let slow_key = account(&db, "slow", 100.0, 1);
    let healthy_key = account(&db, "healthy", 100.0, 1);
    let flaky_key = account(&db, "flaky", 100.0, 1);
    let (slow, healthy, flaky) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    slow.hold();
    flaky.answer(&[503; 8]);
    let mut hooks = Vec::new();
    for (key, rx) in [
        (&slow_key, &slow),
        (&healthy_key, &healthy),
        (&flaky_key, &flaky),
    ] {
        let body = serde_json::json!({"url": rx.url("/"), "types": ["budget.warning"]});
        let r = call(&d, key, "POST", "/v1/webhooks", &body.to_string(), None).await;
        assert_eq!(r.status, 201, "{}", r.text());
        hooks.push(r.json()["id"].as_str().unwrap().to_owned());
    }

    // the slow receiver is sent its share and holds it
    db.write_events("slow", 20, 0).await;
    eventually("the slow receiver's share in flight", || async {
        (slow.received().len() == 2).then_some(())
    })
    .await;
    // another account's event goes while the slow one holds its two
    db.write_events("healthy", 1, 0).await;
    eventually("the healthy receiver's event", || async {
        (healthy.received().len() == 1).then_some(())
    })
    .await;
    assert_eq!(slow.received().len(), 2, "no more than its share");

    // a 503 run of eight answers, retried through (failing for less than disable_after_ms)
    db.write_events("flaky", 3, 0).await;
    eventually("the flaky receiver's events after its outage", || async {
        let got = flaky.received();
        let delivered: std::collections::BTreeSet<String> =
            got.iter().skip(8).map(|r| r.delivery.clone()).collect();
        (delivered.len() == 3).then_some(())
    })
    .await;
    let r = call(
        &d,
        &flaky_key,
        "GET",
        &format!("/v1/webhooks/{}", hooks[2]),
        "",
        None,
    )
    .await;
    assert_eq!(r.json()["enabled"], true, "{}", r.text());
    assert_eq!(r.json()["consecutive_failures"], 0);

    // released, the slow receiver gets all twenty
    slow.release();
    eventually("the slow receiver's twenty", || async {
        let ids: std::collections::BTreeSet<String> =
            slow.received().iter().map(|r| r.delivery.clone()).collect();
        (ids.len() == 20).then_some(())
    })
    .await;
}

/// A webhook disabled for failing is probed with its oldest pending delivery; once the receiver
/// answers 2xx it is enabled again and gets what waited, without its owner.
#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_webhook_is_enabled_again_by_a_successful_probe() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "wh_probe",
        &[],
        &[
            "webhooks.allow_private_targets=true",
            "webhooks.poll_interval_ms=100",
            "webhooks.retry_base_ms=100",
            "webhooks.retry_max_ms=200",
            "webhooks.max_attempts=100",
            "webhooks.disable_after_failures=2",
            "webhooks.disable_after_ms=0",
            "webhooks.probe_interval_ms=500",
        ],
    )
    .await;
    let key = account(&db, "probed", 100.0, 1);
    let rx = Receiver::start().await;
    rx.answer(&[503; 4]);
    let body = serde_json::json!({"url": rx.url("/"), "types": ["budget.warning"]});
    let r = call(&d, &key, "POST", "/v1/webhooks", &body.to_string(), None).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    db.write_events("probed", 2, 0).await;
    let disabled = || async { db.events_of("probed", "webhook.disabled").await.len() };
    eventually("the webhook disabled", || async {
        (disabled().await == 1).then_some(())
    })
    .await;
    let w = eventually("enabled again by a probe, everything delivered", || async {
        let w = call(&d, &key, "GET", &format!("/v1/webhooks/{id}"), "", None)
            .await
            .json();
        let delivered: std::collections::BTreeSet<String> = rx
            .received()
            .iter()
            .skip(4)
            .map(|r| r.delivery.clone())
            .collect();
        (w["enabled"] == true && delivered.len() == 2).then_some(w)
    })
    .await;
    assert_eq!(w["consecutive_failures"], 0, "{w}");
    assert!(w["disabled_reason"].is_null(), "{w}");
}

/// A receiver that answers only after `webhooks.timeout_ms` (it may well have taken the event)
/// is recorded failing: each attempt is logged failed with the time-out, counted against the
/// webhook, and retried, never left in flight; once it answers in time the delivery is
/// `delivered` and the count starts again.
#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_answering_after_the_timeout_is_recorded_failing_and_retried() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "wh_late",
        &[],
        &[
            "webhooks.allow_private_targets=true",
            "webhooks.poll_interval_ms=100",
            "webhooks.timeout_ms=300",
            "webhooks.retry_base_ms=100",
            "webhooks.retry_max_ms=200",
            "webhooks.max_attempts=100",
        ],
    )
    .await;
    let key = account(&db, "late", 100.0, 1);
    let rx = Receiver::start().await;
    rx.hold();
    let body = serde_json::json!({"url": rx.url("/"), "types": ["budget.warning"]});
    let r = call(&d, &key, "POST", "/v1/webhooks", &body.to_string(), None).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();

    db.write_events("late", 1, 0).await;
    let log = eventually("three timed-out attempts", || async {
        let v = call(
            &d,
            &key,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries"),
            "",
            None,
        )
        .await
        .json();
        let logged = v["deliveries"][0]["attempt_log"]
            .as_array()
            .map_or(0, Vec::len);
        (logged >= 3).then_some(v)
    })
    .await;
    let one = &log["deliveries"][0];
    assert_eq!(one["state"], "pending", "retried, not given up: {one:#}");
    for a in one["attempt_log"].as_array().unwrap() {
        assert!(a["status"].is_null(), "{a:#}");
        assert!(
            a["error"]
                .as_str()
                .is_some_and(|e| e.contains("no answer within 300 ms")),
            "{a:#}"
        );
    }
    let hook = call(&d, &key, "GET", &format!("/v1/webhooks/{id}"), "", None)
        .await
        .json();
    assert!(hook["consecutive_failures"].as_i64() >= Some(3), "{hook:#}");
    assert!(
        rx.received().len() >= 3,
        "each attempt reached the receiver"
    );

    // answering in time again: delivered, the count back to 0
    rx.release();
    latest_delivery(&d, &key, &id, "delivered").await;
    let hook = call(&d, &key, "GET", &format!("/v1/webhooks/{id}"), "", None)
        .await
        .json();
    assert_eq!(hook["consecutive_failures"], 0, "{hook:#}");
}
