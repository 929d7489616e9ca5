//! `GET /v1/offers` end to end: the daemon as a process, against the sandbox providers, with
//! real PostgreSQL/PgBouncer (for the API key) and Redis (the shared cache layer).

use crate::support;
use crate::support::stack::Stack;

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use support::accounts::TestDb;
use support::client::{Conn, Resp, request};
use support::daemon::DaemonProc;
use support::eventually;
use support::sandbox::Sandbox;
use support::services::{self, Services};

async fn offers(d: &DaemonProc, token: &str, query: &str) -> Resp {
    let path = format!("/v1/offers{query}");
    support::client::authed(d.https, token, "GET", &path, "", &[]).await
}

async fn daemon(db: &TestDb<'_>, sb: &Sandbox, set: &[&str]) -> DaemonProc {
    sb.daemon(db, set).await
}

fn ids(v: &Value) -> Vec<String> {
    v["offers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Offers filtered by the ports they can map directly (issue 30): counted from the sandbox's raw
/// Vast payloads (`direct_port_count`); io.net publishes none, so none of its offers pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_filter_by_the_ports_they_can_map() {
    let Stack { db, sb, d } = Stack::start("offers_ports", &[], &[]).await;
    let (_, token) = db.account_with_key("porter", &[]);
    let (vast, _) = sb.raw_inventory().await;
    let want = vast
        .iter()
        .filter(|o| o["direct_port_count"].as_u64().unwrap_or(0) >= 16)
        .filter(|o| o["rentable"] != false && o["rented"] != true)
        .count();
    assert!(
        want > 0 && want < vast.len(),
        "the seeded inventory has both kinds"
    );
    let r = offers(&d, &token, "?min_direct_ports=16&limit=200").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let got = r.json()["offers"].as_array().unwrap().clone();
    assert!(!got.is_empty());
    assert!(
        got.iter()
            .all(|o| o["provider"] == "vastai" && o["direct_ports"].as_u64().unwrap() >= 16),
        "{got:?}"
    );
    let r = offers(&d, &token, "?min_direct_ports=0").await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("min_direct_ports")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_filtered_sorted_and_paged() {
    let Stack { db, sb, d } = Stack::start("offers_merge", &[], &[]).await;
    let (_, token) = db.account_with_key("buyer", &[]);

    // what the sandbox holds, counted from its raw payloads (not through our normalizers)
    let (vast, ionet) = sb.raw_inventory().await;
    let want_vast = vast
        .iter()
        .filter(|o| o["gpu_name"] == "RTX 4090" && o["num_gpus"].as_u64().unwrap() >= 2)
        .count();
    let want_ionet = ionet
        .iter()
        .filter(|h| {
            h["name"] == "GeForce RTX 4090"
                && h["num_cards"].as_u64().unwrap() >= 2
                && h["sold_out"] != true
        })
        .count();
    assert!(
        want_vast > 0 && want_ionet > 0,
        "the seeded inventory has both"
    );

    let q = "?gpu=GeForce%20RTX%204090&min_gpus=2&sort=price&limit=7";
    let r = offers(&d, &token, q).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let v = r.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["providers"]["vastai"]["status"], "ok");
    assert_eq!(v["providers"]["ionet"]["status"], "ok");
    assert_eq!(v["providers"]["vastai"]["offers"], want_vast);
    assert_eq!(v["providers"]["ionet"]["offers"], want_ionet);
    assert_eq!(v["total"], want_vast + want_ionet);
    assert_eq!(v["count"], 7);

    // walk every page: all offers match, prices never decrease, no id twice
    let mut all: Vec<Value> = Vec::new();
    let mut page = v;
    loop {
        all.extend(page["offers"].as_array().unwrap().iter().cloned());
        let Some(c) = page["next_cursor"].as_str() else {
            break;
        };
        let r = offers(&d, &token, &format!("{q}&cursor={c}")).await;
        assert_eq!(r.status, 200, "{:?}", r.json());
        page = r.json();
    }
    assert_eq!(all.len(), want_vast + want_ionet);
    let mut seen = std::collections::HashSet::new();
    let mut last = 0.0;
    for o in &all {
        assert_eq!(o["gpu_model"], "RTX 4090");
        assert!(o["gpu_count"].as_u64().unwrap() >= 2);
        assert_eq!(o["gpu_memory_gb"].as_f64().unwrap().round(), 24.0);
        let p = o["price_per_hour"].as_f64().unwrap();
        assert!(p >= last, "sorted by price");
        last = p;
        assert!(seen.insert(o["id"].as_str().unwrap().to_owned()));
    }
    assert!(all.iter().any(|o| o["provider"] == "vastai"));
    assert!(all.iter().any(|o| o["provider"] == "ionet"));

    // more filters: countries, provider choice, price ceiling, reliability sort
    let r = offers(
        &d,
        &token,
        "?countries=US,CA&max_price=5&providers=vastai&sort=reliability&limit=50",
    )
    .await;
    let v = r.json();
    assert_eq!(v["providers"]["ionet"]["status"], "skipped");
    let list = v["offers"].as_array().unwrap();
    assert!(!list.is_empty());
    let mut rel = 1.0;
    for o in list {
        assert_eq!(o["provider"], "vastai");
        assert!(["US", "CA"].contains(&o["country"].as_str().unwrap()));
        assert!(o["price_per_hour"].as_f64().unwrap() <= 5.0);
        let r = o["reliability"].as_f64().unwrap();
        assert!(r <= rel);
        rel = r;
    }
    // interruptible: only Vast.ai sells them, priced from the minimum bid
    let v = offers(&d, &token, "?interruptible=true&limit=3")
        .await
        .json();
    assert_eq!(v["providers"]["ionet"]["status"], "skipped");
    for o in v["offers"].as_array().unwrap() {
        assert_eq!(o["interruptible"], true);
    }

    // bad input: 400 naming the parameter; a cursor from another query is refused
    for (q, param) in [
        ("?min_gpus=zero", "min_gpus"),
        ("?providers=aws", "providers"),
        ("?sort=cheapest", "sort"),
        ("?limit=0", "limit"),
        ("?gpus=2", "gpus"),
        ("?gpu=A100&cursor=7.deadbeef", "cursor"),
    ] {
        let r = offers(&d, &token, q).await;
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.json()["error"]["code"], "bad_request");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(&format!("`{param}`")), "{q}: {msg}");
    }
    // a key is needed
    let mut c = Conn::tls(d.https, &[b"http/1.1"]).await.unwrap();
    assert_eq!(c.get("/v1/offers").await.unwrap().status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_misses_make_one_upstream_call_per_provider() {
    let s = services::shared();
    let db = TestDb::new(s, "offers_flight");
    let (_, token) = db.account_with_key("herd", &[]);
    let sb = Sandbox::start(&[]);
    let d = daemon(
        &db,
        &sb,
        &[
            "ratelimit.ip_per_minute=1000000",
            "ratelimit.ip_burst=100000",
            "connections.max_per_ip=5000",
        ],
    )
    .await;
    // slow providers, so every request arrives while the first fetch is still out
    sb.faults("vastai", r#"{"latency_ms": 3000}"#).await;
    sb.faults("ionet", r#"{"latency_ms": 3000}"#).await;

    // 1,000 connections first, then one request on each, all at once
    let mut conns = Vec::new();
    for _ in 0..1000 {
        conns.push(Conn::tls(d.https, &[b"http/1.1"]).await.unwrap());
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(conns.len()));
    let mut tasks = Vec::new();
    for mut c in conns {
        let (token, start) = (token.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let mut req = request("GET", "/v1/offers?gpu=H100&limit=5", Bytes::new());
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            start.wait().await;
            c.send(req).await.unwrap().status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(sb.calls("vastai", "search").await, 1);
    assert_eq!(sb.calls("ionet", "hardware").await, 1);
    let page = d.scrape().await;
    assert_eq!(
        support::metrics::value(&page, "gpuproxy_cache_misses_total"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_provider_failure_gives_a_partial_answer() {
    let s = services::shared();
    let db = TestDb::new(s, "offers_faults");
    let (_, token) = db.account_with_key("faulty", &[]);
    let sb = Sandbox::start(&[]);
    let d = daemon(
        &db,
        &sb,
        &[
            "providers.request_timeout_ms=400",
            "providers.max_retries=0",
            "providers.breaker_consecutive_failures=1000",
            "providers.rate_limit_backoff_ms=60000",
        ],
    )
    .await;
    for (faults, code) in [
        (r#"{"error_rate": 1.0, "error_status": 503}"#, "bad_status"),
        (r#"{"latency_ms": 1500}"#, "timeout"),
        (r#"{"reset_rate": 1.0}"#, "connection_reset"),
        (r#"{"malformed_rate": 1.0}"#, "malformed_response"),
        (r#"{"truncate_rate": 1.0}"#, "connection_reset"),
        (r#"{"slow_body_ms": 300}"#, "timeout"),
        (r#"{"rate_limit_burst": 1}"#, "rate_limited"),
    ] {
        sb.faults("ionet", faults).await;
        let r = offers(&d, &token, "?limit=3").await;
        assert_eq!(r.status, 200, "{faults}: {:?}", r.json());
        let v = r.json();
        assert_eq!(v["status"], "partial", "{faults}");
        assert_eq!(v["providers"]["vastai"]["status"], "ok");
        assert_eq!(v["providers"]["ionet"]["status"], "error");
        assert_eq!(
            v["providers"]["ionet"]["error"]["code"], code,
            "{faults}: {v}"
        );
        assert!(!ids(&v).is_empty(), "the other provider's offers are there");
        assert!(!v.to_string().contains(support::sandbox::IONET_KEY));
    }
    // after the 429, io.net is left alone: no call goes out while backing off
    sb.heal("ionet").await;
    let before = sb.calls("ionet", "hardware").await;
    let v = offers(&d, &token, "?limit=3").await.json();
    assert_eq!(v["providers"]["ionet"]["error"]["code"], "backing_off");
    assert_eq!(sb.calls("ionet", "hardware").await, before);

    // both failing and nothing cached: 502 with a clear code
    let sb2 = Sandbox::start(&[]);
    sb2.faults("vastai", r#"{"error_rate": 1.0}"#).await;
    sb2.faults("ionet", r#"{"error_rate": 1.0}"#).await;
    let d2 = daemon(&db, &sb2, &["providers.max_retries=0"]).await;
    let r = offers(&d2, &token, "?limit=3").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "providers_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_serves_stale_and_recovers() {
    let s = services::shared();
    let db = TestDb::new(s, "offers_breaker");
    let (_, token) = db.account_with_key("breaker", &[]);
    let sb = Sandbox::start(&[]);
    let d = daemon(
        &db,
        &sb,
        &[
            "providers.max_retries=0",
            "providers.breaker_consecutive_failures=3",
            "providers.breaker_open_ms=1500",
            "offers.cache_ttl_ms=300",
            "offers.stale_while_revalidate_ms=0",
            "offers.stale_if_error_ms=120000",
        ],
    )
    .await;
    let fresh = offers(&d, &token, "?limit=5").await.json();
    assert_eq!(fresh["providers"]["ionet"]["status"], "ok");

    sb.faults("ionet", r#"{"error_rate": 1.0}"#).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // past its TTL, the provider failing: the old answer is served, marked stale
    for _ in 0..3 {
        let v = offers(&d, &token, "?limit=5").await.json();
        assert_eq!(v["providers"]["ionet"]["status"], "stale", "{v}");
        assert_eq!(v["stale"], true);
        assert!(v["providers"]["ionet"]["offers"].as_u64().unwrap() > 0);
    }
    // three failures in a row: the circuit is open, no call goes out
    let page = d.scrape().await;
    assert_eq!(
        support::metrics::value(&page, r#"gpuproxy_circuit_open{provider="ionet"}"#),
        1.0
    );
    let calls = sb.calls("ionet", "hardware").await;
    let v = offers(&d, &token, "?limit=5").await.json();
    assert_eq!(v["providers"]["ionet"]["error"]["code"], "circuit_open");
    assert_eq!(v["providers"]["ionet"]["status"], "stale");
    assert_eq!(sb.calls("ionet", "hardware").await, calls);

    // healed: after the pause one probe goes out, succeeds, and the circuit closes
    sb.heal("ionet").await;
    eventually("the circuit to close", || async {
        let v = offers(&d, &token, "?limit=5").await.json();
        (v["providers"]["ionet"]["status"] == "ok").then_some(())
    })
    .await;
    let page = d.scrape().await;
    assert_eq!(
        support::metrics::value(&page, r#"gpuproxy_circuit_open{provider="ionet"}"#),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_fails_no_request() {
    // its own services: this test kills Redis
    let s = Services::start();
    let db = TestDb::new(&s, "offers_redis");
    let (_, token) = db.account_with_key("cachey", &[]);
    let sb = Sandbox::start(&[]);
    let a = daemon(&db, &sb, &[]).await;
    let b = daemon(&db, &sb, &[]).await;

    let v = offers(&a, &token, "?gpu=A100&disk_gb=30").await.json();
    assert_eq!(v["providers"]["vastai"]["source"], "upstream");
    // the second daemon finds it in Redis (written before a answered)
    let v = offers(&b, &token, "?gpu=A100&disk_gb=30").await.json();
    assert_eq!(v["providers"]["vastai"]["source"], "redis", "{v}");
    assert_eq!(v["status"], "ok");

    s.redis.kill();
    for (i, d) in [&a, &b, &a, &b].into_iter().enumerate() {
        let r = offers(d, &token, &format!("?gpu=L40S&disk_gb={}", 40 + i)).await;
        assert_eq!(r.status, 200, "{:?}", r.json());
        assert_eq!(r.json()["status"], "ok");
    }
    let ready = eventually("/ready to say degraded", || async {
        let r = support::client::get(a.https, "/ready").await;
        (r.json()["status"] == "degraded").then_some(r)
    })
    .await;
    assert_eq!(ready.status, 200);

    s.redis.start();
    for d in [&a, &b] {
        eventually("/ready to say ready", || async {
            let r = support::client::get(d.https, "/ready").await;
            (r.json()["status"] == "ready").then_some(())
        })
        .await;
    }
    // Redis is used again: a's fresh answer reaches b through it
    let v = offers(&a, &token, "?gpu=RTX%203090&disk_gb=60")
        .await
        .json();
    assert_eq!(v["providers"]["vastai"]["source"], "upstream");
    let v = offers(&b, &token, "?gpu=RTX%203090&disk_gb=60")
        .await
        .json();
    assert_eq!(v["providers"]["vastai"]["source"], "redis", "{v}");
}
