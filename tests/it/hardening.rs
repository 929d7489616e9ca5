//! Hardening against a hostile client (issue 18): input that used to reach a 500 or wrap, and the
//! abuse scenarios of the review, each reproduced against the daemon as a process with
//! PostgreSQL (through PgBouncer), Redis and the sandbox providers.

use crate::support;
use crate::support::stack::Stack;

use support::accounts::TestDb;
use support::rentals::{account, call, message};
use support::sandbox::Sandbox;
use support::services;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_and_huge_cursors_are_client_errors_naming_the_parameter() {
    let Stack { db, sb: _sb, d } = Stack::start("hard_input", &[], &[]).await;
    let token = account(&db, "prober", 100.0, 5);
    let (_, admin) = db.account_with_key("root", &["admin"]);
    for (who, path) in [
        (&token, "/v1/instances/%00"),
        (&token, "/v1/instances/a%00b/stop"),
        (&token, "/v1/ssh-keys/%00"),
        (&token, "/v1/providers/vastai/api/v0/instances/%00/"),
        (&admin, "/v1/admin/accounts/%00"),
        (&admin, "/v1/admin/accounts/%00/usage"),
    ] {
        let method = if path.ends_with("/stop") {
            "POST"
        } else {
            "GET"
        };
        let r = call(&d, who, method, path, "", None).await;
        assert!(
            (400..500).contains(&r.status),
            "{path}: {} {:?}",
            r.status,
            r.json()
        );
        assert!(r.json()["error"]["code"].is_string(), "{path}");
    }
    for cursor in ["1e300", "1e20", "9223372036854775807", "-5", "NaN", "inf"] {
        let r = call(
            &d,
            &token,
            "GET",
            &format!("/v1/instances?cursor={cursor}"),
            "",
            None,
        )
        .await;
        assert_eq!(r.status, 400, "{cursor}: {:?}", r.json());
        assert!(message(&r).contains("cursor"), "{cursor}: {}", message(&r));
    }
    // an offers cursor with an offset near 2^64 is refused, not wrapped
    let r = call(&d, &token, "GET", "/v1/offers?limit=1", "", None).await;
    let next = r.json()["next_cursor"].as_str().unwrap().to_owned();
    let fp = next.split_once('.').unwrap().1;
    for off in [
        "18446744073709551615",
        "18446744073709551616",
        "99999999999",
    ] {
        let r = call(
            &d,
            &token,
            "GET",
            &format!("/v1/offers?limit=1&cursor={off}.{fp}"),
            "",
            None,
        )
        .await;
        assert_eq!(r.status, 400, "{off}: {:?}", r.json());
        assert!(message(&r).contains("cursor"), "{}", message(&r));
    }
    // a NUL in a query value too
    let r = call(&d, &token, "GET", "/v1/offers?gpu=a%00", "", None).await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(message(&r).contains("gpu"), "{}", message(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_idempotency_key_neither_floods_the_database_nor_sticks() {
    use std::time::{Duration, Instant};
    let s = services::shared();
    let db = TestDb::new(s, "hard_idem");
    let token = account(&db, "abandoner", 10_000.0, 5);
    let sb = Sandbox::start(&[]);
    let d = sb
        .daemon(
            &db,
            // the waiters, not the rate limits, are under test
            &[
                "rentals.idempotency_max_waiters=32",
                "ratelimit.enabled=false",
            ],
        )
        .await;
    let offer = support::rentals::cheapest(&d, &token, "vastai", "").await;
    let body = support::rentals::rent_body(offer["id"].as_str().unwrap());
    // the provider takes 4 s to answer the rental
    sb.faults("vastai", r#"{"ops": ["create"], "answer_delay_ms": 4000}"#)
        .await;
    let first =
        support::rentals::spawn_post(d.https, token.clone(), body.clone(), Some("abandoned-1"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    // the client goes away mid-rental
    first.abort();
    let _ = first.await;

    let before = support::metrics::sum(&d.scrape().await, "gpuproxy_db_queries_total");
    let t0 = Instant::now();
    let waiters: Vec<_> = (0..200)
        .map(|_| {
            support::rentals::spawn_post(d.https, token.clone(), body.clone(), Some("abandoned-1"))
        })
        .collect();
    // the daemon stays ready meanwhile
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = support::client::Conn::tls(d.https, &[b"http/1.1"])
        .await
        .unwrap()
        .get("/ready")
        .await
        .unwrap();
    assert_eq!(ready.status, 200, "{:?}", ready.json());
    let (mut replayed, mut busy) = (std::collections::HashSet::new(), 0);
    for w in waiters {
        let r = w.await.unwrap();
        match r.status {
            201 => {
                replayed.insert(r.json()["id"].as_str().unwrap().to_owned());
            }
            409 => {
                assert_eq!(r.json()["error"]["code"], "idempotency_in_progress");
                assert!(r.header("retry-after").is_some(), "409 says when to retry");
                busy += 1;
            }
            other => panic!("{other}: {:?}", r.json()),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let after = support::metrics::sum(&d.scrape().await, "gpuproxy_db_queries_total");
    let per_second = (after - before) / elapsed;
    eprintln!(
        "200 waiters: {} statements in {elapsed:.1} s = {per_second:.0}/s; {} answered the rental, {busy} told to retry",
        after - before,
        200 - busy
    );
    assert!(per_second < 150.0, "{per_second} statements/s");
    assert!(busy >= 200 - 32, "at most 32 wait: {busy} refused");
    assert_eq!(
        replayed.len(),
        1,
        "every waiter that got an answer got the same instance"
    );

    // the abandoned request's outcome was recorded: a retry replays it, one rental in all
    let r = call(
        &d,
        &token,
        "POST",
        "/v1/instances",
        &body,
        Some("abandoned-1"),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert!(replayed.contains(r.json()["id"].as_str().unwrap()));
    assert_eq!(sb.calls("vastai", "create").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_not_stored_under_their_idempotency_keys() {
    let Stack { db, sb: _sb, d } = Stack::start("hard_idem_refusals", &[], &[]).await;
    let token = account(&db, "poor", 0.01, 5);
    let offer = support::rentals::cheapest(&d, &token, "vastai", "").await;
    let body = support::rentals::rent_body(offer["id"].as_str().unwrap());
    for i in 0..20 {
        let r = call(
            &d,
            &token,
            "POST",
            "/v1/instances",
            &body,
            Some(&format!("k-{i}")),
        )
        .await;
        assert_eq!(r.status, 402, "{:?}", r.json());
    }
    let client = db.client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM idempotency_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a refusal is not worth replaying: nothing kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_daemon_died_is_taken_over_once_its_lease_runs_out() {
    use std::time::Duration;
    let s = services::shared();
    let db = TestDb::new(s, "hard_idem_lease");
    let token = account(&db, "survivor", 10_000.0, 5);
    let sb = Sandbox::start(&[]);
    let set = ["rentals.idempotency_lease_ms=1000"];
    let a = sb.daemon(&db, &set).await;
    let offer = support::rentals::cheapest(&a, &token, "vastai", "").await;
    let body = support::rentals::rent_body(offer["id"].as_str().unwrap());
    sb.faults("vastai", r#"{"ops": ["create"], "answer_delay_ms": 2000}"#)
        .await;
    let first = support::rentals::spawn_post(a.https, token.clone(), body.clone(), Some("lease-1"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // the daemon dies mid-rental, its record left running
    a.signal(libc::SIGKILL);
    let _ = first.await;
    let b = sb.daemon(&db, &set).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = std::time::Instant::now();
    let r = call(&b, &token, "POST", "/v1/instances", &body, Some("lease-1")).await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "answered, not held until idempotency_wait_ms"
    );
    assert_ne!(
        r.json()["error"]["code"],
        "idempotency_in_progress",
        "{:?}",
        r.json()
    );
    // the takeover first resolves the rental the key was bound to: the provider had it, so it
    // is the answer (it used to run again and get 409 `offer_unavailable` from the dead
    // daemon's claim, never learning which instance its key rented)
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert!(
        r.json()["provider_instance_id"].is_string(),
        "{:?}",
        r.json()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sb.calls("vastai", "create").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_stay_off_the_api_and_passthrough_forwards_only_what_it_checked() {
    let Stack { db, sb, d } = Stack::start("hard_exposure", &[], &[]).await;
    let token = account(&db, "curious", 100.0, 5);
    // /stats walks every connection and names client addresses: metrics listener only
    let r = support::client::get(d.https, "/stats").await;
    assert_eq!(r.status, 404, "{:?}", r.json());
    let mut m = support::client::Conn::plain(d.metrics, false)
        .await
        .unwrap();
    assert_eq!(m.get("/stats").await.unwrap().status, 200);

    let offer = support::rentals::cheapest(&d, &token, "ionet", "").await;
    // `ionet:<cards>x<hardware>@<place>`: the configuration the price is asked for
    let (cards, deploy, place) = support::rentals::ionet_config(offer["id"].as_str().unwrap());
    let base = "/v1/providers/ionet/enterprise/v1/io-cloud/vmaas/price";
    let q = format!(
        "location_ids=%5B%22{place}%22%5D&hardware_id={deploy}&currency=usdc&duration_hours=2&gpus_per_vm={cards}&replica_count=1"
    );
    let r = call(&d, &token, "GET", &format!("{base}?{q}"), "", None).await;
    assert_eq!(
        r.status,
        200,
        "the named parameters reach io.net: {:?}",
        r.json()
    );
    assert!(r.json()["data"]["total_cost_usdc"].as_f64().unwrap() > 0.0);
    let before = sb.calls("ionet", "price").await;
    for extra in ["api_key=x", "page_size=1000", "%00=1"] {
        let r = call(&d, &token, "GET", &format!("{base}?{q}&{extra}"), "", None).await;
        assert_eq!(r.status, 403, "{extra}: {:?}", r.json());
        assert_eq!(r.json()["error"]["code"], "passthrough_forbidden");
    }
    let r = call(
        &d,
        &token,
        "GET",
        &format!("{base}?{q}&api_key=x"),
        "",
        None,
    )
    .await;
    assert!(message(&r).contains("`api_key`"), "{}", message(&r));
    assert_eq!(
        sb.calls("ionet", "price").await,
        before,
        "nothing refused was sent"
    );
    // the paid extend is not a passthrough rule (it would bypass the budget and the ledger)
    let r = call(
        &d,
        &token,
        "POST",
        "/v1/providers/ionet/enterprise/v1/io-cloud/vmaas/deployment/00000000-0000-0000-0000-000000000000/extend",
        r#"{"duration_hours": 100}"#,
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{:?}", r.json());
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads what the server sends until it closes (or `wait` passes); returns it.
async fn read_until_close(s: &mut tokio::net::TcpStream, wait: std::time::Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_heads_get_431_hold_little_memory_and_the_backlog_is_as_configured() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let d = support::daemon::DaemonProc::start(support::daemon::Opts {
        plain: true,
        set: vec![
            "server.body_read_timeout_ms=1000".into(),
            "log.access_log=false".into(),
        ],
        ..Default::default()
    })
    .await;
    let addr = d.http.unwrap();

    // the listen backlog asked for is the configured one
    let ss = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", d.https.port())])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&ss.stdout).into_owned();
    let send_q: u32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(send_q, 4096.min(somaxconn), "{line}");

    // a 400 KB header line: 431, not 200
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let big = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(400_000)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let answer = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{:?}",
        &answer[..answer.len().min(200)]
    );

    // 500 connections each holding an unfinished head just under the cap
    let before = rss_kib(d.pid());
    let mut held = Vec::new();
    for i in 0..500 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET /health HTTP/1.1\r\nhost: x\r\nx-{i}: {}",
            "b".repeat(15_000)
        );
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(d.pid());
    let per = (after.saturating_sub(before)) as f64 / 500.0;
    eprintln!("500 unfinished 15 KB heads: RSS {before} -> {after} KiB, {per:.1} KiB each");
    assert!(per < 32.0, "{per} KiB per connection");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_and_its_connection_closes() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = services::shared();
    let db = TestDb::new(s, "hard_trickle");
    let token = account(&db, "trickler", 100.0, 5);
    let mut env = db.env();
    env.extend(support::sandbox::Sandbox::daemon_env());
    let d = support::daemon::DaemonProc::start(support::daemon::Opts {
        plain: true,
        env,
        set: vec!["server.body_read_timeout_ms=1000".into()],
        ..Default::default()
    })
    .await;
    let stream = tokio::net::TcpStream::connect(d.http.unwrap())
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /v1/ssh-keys HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nauthorization: Bearer {token}\r\ncontent-length: 1000\r\n\r\n{{"
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let t = Instant::now();
    // one byte every 100 ms, for up to a minute
    let trickle = tokio::spawn(async move {
        for _ in 0..600 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut out)).await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&out);
    eprintln!("trickled body answered and closed after {:?}", t.elapsed());
    assert!(closed.is_ok(), "the connection was closed: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.body_read_timeout_ms"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_headers_only_on_both_protocols() {
    let d = support::daemon::DaemonProc::start(support::daemon::Opts::default()).await;
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let mut c = support::client::Conn::tls(d.https, &[alpn]).await.unwrap();
        let get = c.get("/openapi.json").await.unwrap();
        let head = c
            .send(support::client::request(
                "HEAD",
                "/openapi.json",
                bytes::Bytes::new(),
            ))
            .await
            .unwrap();
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert_eq!(
            head.header("content-length"),
            Some(get.body.len().to_string().as_str()),
            "{alpn:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_key_ids_cost_at_most_the_capped_lookups() {
    use std::time::Instant;
    let s = services::shared();
    let db = TestDb::new(s, "hard_random_keys");
    let token = account(&db, "real", 100.0, 5);
    let mut env = db.env();
    env.extend(support::sandbox::Sandbox::daemon_env());
    let d = support::daemon::DaemonProc::start(support::daemon::Opts {
        env,
        set: vec![
            "auth.max_uncached_lookups_per_second=50".into(),
            // the lookups, not the rate limits, are under test
            "ratelimit.enabled=false".into(),
            "log.access_log=false".into(),
        ],
        ..Default::default()
    })
    .await;
    // a real key, cached before the flood
    assert_eq!(
        call(&d, &token, "GET", "/v1/account", "", None)
            .await
            .status,
        200
    );
    let page = d.scrape().await;
    let lookups = |p: &str| {
        support::metrics::value(p, "gpuproxy_auth_lookups_total{source=\"database\"}")
            + support::metrics::value(p, "gpuproxy_auth_lookups_total{source=\"redis\"}")
    };
    let before = lookups(&page);
    let t0 = Instant::now();
    // 10,000 random key ids from 50 addresses
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (addr, token) = (d.https, token.clone());
            tokio::spawn(async move {
                let tcp = support::client::connect_from(&format!("127.0.5.{}", i + 1), addr)
                    .await
                    .unwrap();
                let mut c =
                    support::client::Conn::tls_over(tcp, &[b"h2"], rustls::DEFAULT_VERSIONS)
                        .await
                        .unwrap();
                let (mut unknown, mut busy) = (0u32, 0u32);
                for n in 0..200u32 {
                    let id = format!("{:0>12}", format!("r{i}x{n}"));
                    let fake = format!("gpx_{id}{}", &token[16..]);
                    let mut req =
                        support::client::request("GET", "/v1/account", bytes::Bytes::new());
                    req.headers_mut()
                        .insert("authorization", format!("Bearer {fake}").parse().unwrap());
                    let r = c.send(req).await.unwrap();
                    match (r.status, r.json()["error"]["code"].as_str()) {
                        (401, Some("invalid_credentials")) => unknown += 1,
                        (503, Some("auth_busy")) => {
                            assert!(r.header("retry-after").is_some());
                            busy += 1
                        }
                        other => panic!("{other:?}"),
                    }
                }
                (unknown, busy)
            })
        })
        .collect();
    let (mut unknown, mut busy) = (0, 0);
    for t in tasks {
        let (u, b) = t.await.unwrap();
        unknown += u;
        busy += b;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let made = lookups(&d.scrape().await) - before;
    eprintln!(
        "10,000 random ids in {elapsed:.1} s: {made} lookups past the cache (cap 50/s), {unknown} answered 401, {busy} 503 auth_busy"
    );
    assert!(
        made <= 50.0 * elapsed + 50.0 + 1.0,
        "{made} lookups in {elapsed} s"
    );
    assert_eq!(unknown + busy, 10_000);
    // the real key kept working throughout
    assert_eq!(
        call(&d, &token, "GET", "/v1/account", "", None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_disk_sizes_make_a_bounded_number_of_upstream_searches() {
    let Stack { db, sb, d } = Stack::start(
        "hard_disk_sizes",
        &[],
        &["ratelimit.enabled=false", "log.access_log=false"],
    )
    .await;
    let token = account(&db, "sizer", 100.0, 5);
    let before = sb.calls("vastai", "search").await;
    let sizes: Vec<u32> = (0..60).map(|i| 1 + i * 1_693).collect();
    let mut price_of = std::collections::BTreeMap::new();
    for gb in &sizes {
        let r = call(
            &d,
            &token,
            "GET",
            &format!("/v1/offers?providers=vastai&disk_gb={gb}&sort=price&limit=200"),
            "",
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{gb}: {:?}", r.json());
        for o in r.json()["offers"].as_array().unwrap() {
            price_of.insert(
                (o["id"].as_str().unwrap().to_owned(), *gb),
                o["price_per_hour"].as_f64().unwrap(),
            );
        }
    }
    let searches = sb.calls("vastai", "search").await - before;
    let buckets: std::collections::BTreeSet<u32> = sizes
        .iter()
        .map(|g| gpuproxyd::providers::model::disk_bucket(*g))
        .collect();
    eprintln!(
        "60 disk sizes: {searches} upstream searches ({} size steps)",
        buckets.len()
    );
    assert!(searches <= buckets.len() as u64, "{searches} searches");
    // prices still follow the size asked: more disk never costs less
    let one = price_of.keys().next().unwrap().0.clone();
    let mut last = 0.0;
    for gb in &sizes {
        if let Some(p) = price_of.get(&(one.clone(), *gb)) {
            assert!(*p >= last, "{one} at {gb} GB: {p} < {last}");
            last = *p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_account_costs_no_provider_calls() {
    let Stack { db, sb, d } = Stack::start("hard_spent", &[], &["ratelimit.enabled=false"]).await;
    let token = account(&db, "spent", 0.0, 5);
    let offers = call(
        &d,
        &token,
        "GET",
        "/v1/offers?providers=vastai&limit=20",
        "",
        None,
    )
    .await
    .json()["offers"]
        .as_array()
        .unwrap()
        .clone();
    let before = sb.calls("vastai", "search").await;
    for (i, o) in offers.iter().enumerate() {
        let body = support::rentals::rent_body(o["id"].as_str().unwrap());
        let r = call(
            &d,
            &token,
            "POST",
            "/v1/instances",
            &body,
            Some(&format!("spent-{i}")),
        )
        .await;
        assert_eq!(r.status, 402, "{:?}", r.json());
    }
    assert_eq!(
        sb.calls("vastai", "search").await,
        before,
        "refused before the quote: no upstream search"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rental_the_ledger_could_not_record_says_its_outcome_is_unknown() {
    let s = services::shared();
    let db = TestDb::new(s, "hard_unknown");
    let token = account(&db, "unlucky", 10_000.0, 5);
    let sb = Sandbox::start(&[]);
    let d = sb
        .daemon(
            &db,
            // the intent timeout stays long: the missed record is made the next round anyway
            &[
                "rentals.reconcile_interval_ms=200",
                "rentals.intent_timeout_ms=120000",
            ],
        )
        .await;
    let offer = support::rentals::cheapest(&d, &token, "vastai", "").await;
    let body = support::rentals::rent_body(offer["id"].as_str().unwrap());
    // the ledger fails right when it would record what the provider created
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE FUNCTION gpx_test_boom() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'the ledger is down (test)'; END $$; \
         CREATE TRIGGER boom BEFORE UPDATE ON instances FOR EACH ROW \
           WHEN (NEW.status = 'provisioning') EXECUTE FUNCTION gpx_test_boom();",
    )
    .await
    .unwrap();
    let r = call(
        &d,
        &token,
        "POST",
        "/v1/instances",
        &body,
        Some("unknown-1"),
    )
    .await;
    assert_eq!(r.status, 502, "{:?}", r.json());
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], "outcome_unknown", "{e}");
    assert_eq!(e["details"]["outcome"], "unknown");
    assert_eq!(e["details"]["reason"], "ledger_unavailable");
    let id = e["details"]["instance_id"].as_str().unwrap().to_owned();
    assert_eq!(sb.calls("vastai", "create").await, 1);
    // a retry under the key is told the same, and rents nothing
    let again = call(
        &d,
        &token,
        "POST",
        "/v1/instances",
        &body,
        Some("unknown-1"),
    )
    .await;
    assert_eq!(again.status, 502);
    assert_eq!(again.json()["error"]["details"]["instance_id"], id.as_str());
    assert_eq!(sb.calls("vastai", "create").await, 1);
    // the ledger is back: the reconciler adopts what the provider created
    pg.batch_execute("DROP TRIGGER boom ON instances")
        .await
        .unwrap();
    let v = support::rentals::until(&d, &token, &id, "adopted", |v| {
        v["provider_instance_id"].is_string()
    })
    .await;
    assert!(
        support::rentals::kinds(&v).contains(&"adopted".to_owned()),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_dropped_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let d = support::daemon::DaemonProc::start(support::daemon::Opts {
        plain: true,
        set: vec![
            "connections.write_timeout_ms=1000".into(),
            "connections.reap_interval_ms=200".into(),
            "ratelimit.enabled=false".into(),
            "log.access_log=false".into(),
        ],
        ..Default::default()
    })
    .await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(d.http.unwrap()).await.unwrap();
    // 300 pipelined requests for a 100 KB document, and never a byte read
    let one = "GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n".repeat(300);
    s.write_all(one.as_bytes()).await.unwrap();
    let metrics = d.metrics;
    let closed = support::eventually("the stalled connection dropped", || async {
        let mut m = support::client::Conn::plain(metrics, false).await.ok()?;
        let v = m.get("/stats").await.ok()?.json();
        let n = v["connections"]["closed"]["write_timeout"].as_u64()?;
        (n >= 1).then_some(v)
    })
    .await;
    assert_eq!(closed["connections"]["open"], 0, "{closed}");
    // the daemon still serves
    let mut m2 = support::client::Conn::plain(d.http.unwrap(), false)
        .await
        .unwrap();
    assert_eq!(m2.get("/health").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_does_not_go_when_asked_is_forced_closed() {
    let d = support::daemon::DaemonProc::start(support::daemon::Opts {
        plain: true,
        set: vec![
            "server.debug_routes=true".into(),
            "connections.max_age_ms=300".into(),
            "connections.force_close_after_ms=1000".into(),
            "connections.reap_interval_ms=200".into(),
        ],
        ..Default::default()
    })
    .await;
    let mut c = support::client::Conn::plain(d.http.unwrap(), false)
        .await
        .unwrap();
    // asked to close at 300 ms (max age), gracefully: it waits for the request, which runs 30 s
    let t = std::time::Instant::now();
    let r = c.get("/debug/sleep?ms=30000").await;
    assert!(
        r.is_err(),
        "dropped before the answer: {:?}",
        r.map(|r| r.status)
    );
    eprintln!("forced close after {:?}", t.elapsed());
    let mut m = support::client::Conn::plain(d.metrics, false)
        .await
        .unwrap();
    let v = m.get("/stats").await.unwrap().json();
    assert_eq!(v["connections"]["closed"]["forced"], 1, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_cannot_spend_the_shared_provider_calls() {
    let Stack { db, sb, d } = Stack::start(
        "hard_upstream_budget",
        &[],
        &[
            // 8 a minute, bursts of 2
            "rentals.account_upstream_calls_per_minute=8",
            "ratelimit.enabled=false",
        ],
    )
    .await;
    let token = account(&db, "greedy", 10_000.0, 5);
    let other = account(&db, "polite", 10_000.0, 5);
    let before = sb.calls("vastai", "search").await;
    let gone = support::rentals::rent_body("vastai:999999999");
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = call(&d, &token, "POST", "/v1/instances", &gone, None).await;
        if r.status == 429 {
            assert_eq!(r.json()["error"]["code"], "upstream_budget_exceeded");
            assert!(r.header("retry-after").is_some());
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses[..2], [409, 409], "{statuses:?}");
    assert!(statuses[2..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(
        sb.calls("vastai", "search").await - before,
        2,
        "quotes only within the budget"
    );
    // another account is not affected
    let r = call(&d, &other, "POST", "/v1/instances", &gone, None).await;
    assert_eq!(r.status, 409, "{:?}", r.json());
}

/// Per-account caps hold under parallel creates (issue 27): 40 at once for each of watches (cap
/// 20), webhooks (10) and SSH keys (20) store exactly the cap, the rest answered 409 with the
/// cap's code.
#[tokio::test(flavor = "multi_thread")]
async fn parallel_creates_never_pass_a_cap() {
    use base64::Engine;
    let Stack { db, sb: _sb, d } = Stack::start(
        "hard_caps",
        &[],
        &[
            "ratelimit.enabled=false",
            "webhooks.allow_private_targets=true",
            "webhooks.paused=true",
        ],
    )
    .await;
    let a = account(&db, "racer", 100.0, 1);
    // a distinct well-formed ed25519 public key for each n
    let ssh_key = |n: u8| {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[n; 32]);
        format!(
            "ssh-ed25519 {}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    };
    /// A path, its cap, the refusal's code and the n-th create's body.
    type Case<'a> = (&'a str, usize, &'a str, Box<dyn Fn(u8) -> String>);
    let cases: [Case; 3] = [
        (
            "/v1/watches",
            20,
            "watch_limit",
            Box::new(|n| {
                serde_json::json!({"spec": {"min_gpus": 1 + u32::from(n)}, "max_price_per_gpu": 1})
                    .to_string()
            }),
        ),
        (
            "/v1/webhooks",
            10,
            "webhook_limit",
            Box::new(|n| serde_json::json!({"url": format!("http://127.0.0.1:9/{n}")}).to_string()),
        ),
        (
            "/v1/ssh-keys",
            20,
            "ssh_key_limit",
            Box::new(move |n| {
                serde_json::json!({"name": format!("k{n}"), "public_key": ssh_key(n)}).to_string()
            }),
        ),
    ];
    for (path, cap, code, body) in cases {
        let tries = (0..40u8).map(|n| {
            let (d, a, body) = (&d, &a, body(n));
            async move { call(d, a, "POST", path, &body, None).await }
        });
        let answers = futures_util::future::join_all(tries).await;
        let created = answers.iter().filter(|r| r.status == 201).count();
        assert_eq!(created, cap, "{path}: {created} created");
        for r in answers.iter().filter(|r| r.status != 201) {
            assert_eq!(r.status, 409, "{path}: {}", r.text());
            assert_eq!(r.json()["error"]["code"], code, "{path}: {}", r.text());
        }
        let list = call(&d, &a, "GET", path, "", None).await.json();
        let stored = list
            .as_object()
            .and_then(|o| o.values().find_map(|v| v.as_array()))
            .or(list.as_array())
            .map_or(0, Vec::len);
        assert_eq!(stored, cap, "{path}: {list:#}");
    }
}

/// A request hyper cannot parse (a control character in a header, as schemathesis's coverage
/// phase sends) whose body follows a moment later: the client reads the whole 400 and a TLS
/// `close_notify`, never a reset. The connection used to be dropped at once, so the late body
/// hit a closed socket and the kernel's reset could reach the client before the 400 (the
/// schemathesis "EOF occurred in violation of protocol" of earlier full runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_request_with_a_late_body_gets_its_400_and_a_clean_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = support::daemon::DaemonProc::start(support::daemon::Opts {
        set: vec!["ratelimit.enabled=false".into()],
        ..Default::default()
    })
    .await;
    for _ in 0..5 {
        let tcp = tokio::net::TcpStream::connect(d.https).await.unwrap();
        let mut tls = support::ws::tls_http1(tcp).await;
        let body = vec![b'x'; 256 * 1024];
        tls.write_all(
            format!(
                "POST /v1/instances/x/extend HTTP/1.1\r\nhost: a\r\nidempotency-key: a\x01b\r\n\
                 content-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // the body, sent after the server has answered (its writes may fail: it closed its side)
        let _ = tls.write_all(&body).await;
        let mut answer = Vec::new();
        let read = tls.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{text:?} ({read:?})");
        assert!(read.is_ok(), "a clean close after the 400, not {read:?}");
    }
}

/// A body over `server.max_body_bytes` is refused from its `Content-Length` (413) before it is
/// read; the client, still sending it, reads the whole 413 and a clean close, never a reset (a
/// generated rental or command body can be that large: schemathesis's "EOF occurred in
/// violation of protocol").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_its_413_and_a_clean_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = support::daemon::DaemonProc::start(support::daemon::Opts {
        set: vec!["ratelimit.enabled=false".into()],
        ..Default::default()
    })
    .await;
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(d.https).await.unwrap();
        let mut tls = support::ws::tls_http1(tcp).await;
        let body = vec![b'x'; 3 << 20];
        let head = format!(
            "POST /v1/instances HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        );
        let mut all = head.into_bytes();
        all.extend_from_slice(&body);
        // the whole request in one go, as an HTTP client writes it (the writes may fail once
        // the server has answered)
        let _ = tls.write_all(&all).await;
        let mut answer = Vec::new();
        let read = tls.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413"), "{text:?} ({read:?})");
        assert!(read.is_ok(), "a clean close after the 413, not {read:?}");
    }
}
