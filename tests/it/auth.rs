//! Accounts and authentication end to end: the admin commands, API keys and JWTs against real
//! PostgreSQL (through PgBouncer in transaction mode) and Redis, with the daemon as a process.

use crate::support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::accounts::{JWT_SECRET, TestDb, public_id};
use support::client::{Conn, Resp, request};
use support::daemon::{DaemonProc, Opts};
use support::eventually;
use support::services;

async fn call(d: &DaemonProc, method: &str, path: &str, auth: Option<&[u8]>, body: &str) -> Resp {
    let mut c = Conn::tls(d.https, &[b"http/1.1"]).await.expect("connect");
    let mut req = request(method, path, Bytes::copy_from_slice(body.as_bytes()));
    if let Some(a) = auth {
        req.headers_mut().insert(
            "authorization",
            hyper::header::HeaderValue::from_bytes(a).unwrap(),
        );
    }
    if !body.is_empty() {
        req.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
    }
    c.send(req).await.expect("request")
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

async fn account(d: &DaemonProc, token: &str) -> Resp {
    call(d, "GET", "/v1/account", Some(&bearer(token)), "").await
}

fn code(r: &Resp) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_owned()
}

async fn daemon(db: &TestDb<'_>, set: &[&str]) -> DaemonProc {
    DaemonProc::start(Opts {
        env: db.env(),
        set: set.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_key_authenticates_and_revocation_reaches_every_daemon() {
    let s = services::shared();
    let db = TestDb::new(s, "revoke");
    let (account_id, token) = db.account_with_key("acme", &[]);
    assert!(token.starts_with("gpx_"));
    // in-process entries would live 10 minutes: only the Redis message can explain a fast 401
    let set = ["auth.cache_ttl_ms=600000"];
    let a = daemon(&db, &set).await;
    let b = daemon(&db, &set).await;
    for d in [&a, &b] {
        let r = account(d, &token).await;
        assert_eq!(r.status, 200, "{:?}", r.json());
        assert_eq!(r.json()["account"]["id"], account_id);
        assert_eq!(r.json()["account"]["name"], "acme");
        assert_eq!(r.json()["key"]["via"], "api_key");
        assert!(r.header("ratelimit").is_some());
    }
    // a wrong secret for a real id, and an unknown id, get the same answer
    let wrong = format!(
        "{}{}",
        &token[..token.len() - 1],
        if token.ends_with('A') { 'B' } else { 'A' }
    );
    let r1 = account(&a, &wrong).await;
    let r2 = account(&a, "gpx_ZZZZZZZZZZZZ_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ").await;
    assert_eq!((r1.status, r2.status), (401, 401));
    assert_eq!(code(&r1), "invalid_credentials");
    assert_eq!(r1.json()["error"]["message"], r2.json()["error"]["message"]);
    assert!(r1.header("www-authenticate").unwrap().starts_with("Bearer"));

    let revoked = db.cli(&["keys", "revoke", public_id(&token)]);
    assert_eq!(revoked["propagation"]["propagated"], true);
    let t0 = Instant::now();
    for d in [&a, &b] {
        let r = eventually("the revoked key is refused", || async {
            let r = account(d, &token).await;
            (r.status == 401).then_some(r)
        })
        .await;
        assert_eq!(code(&r), "key_revoked");
    }
    eprintln!("revocation seen by both daemons after {:?}", t0.elapsed());
    // the secret never appears in a log line
    let secret = &token[17..];
    assert!(!a.log().contains(secret) && !b.log().contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_issued_accepted_expired_tampered_and_revoked() {
    let s = services::shared();
    let db = TestDb::new(s, "jwt");
    let (account_id, key) = db.account_with_key("jwtco", &[]);
    let d = daemon(&db, &[]).await;
    let r = call(&d, "POST", "/v1/auth/token", Some(&bearer(&key)), "").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let jwt = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["expires_in"], 900);
    let ok = account(&d, &jwt).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["key"]["via"], "jwt");
    assert_eq!(ok.json()["account"]["id"], account_id);
    // a token cannot buy another token
    let r = call(&d, "POST", "/v1/auth/token", Some(&bearer(&jwt)), "").await;
    assert_eq!((r.status, code(&r).as_str()), (403, "api_key_required"));

    // expired: same claims, signed with the real secret, exp in the past
    let claims: serde_json::Value = {
        use base64_payload as b;
        b::decode(jwt.split('.').nth(1).unwrap())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut old = claims.clone();
    old["exp"] = (now - 120).into();
    old["nbf"] = (now - 1000).into();
    old["iat"] = (now - 1000).into();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &old,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let r = account(&d, &expired).await;
    assert_eq!((r.status, code(&r).as_str()), (401, "token_expired"));
    // tampered: another account id in the payload, original signature
    let mut other = claims.clone();
    other["sub"] = "999".into();
    let parts: Vec<&str> = jwt.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64_payload::encode(&other),
        parts[2]
    );
    let r = account(&d, &forged).await;
    assert_eq!((r.status, code(&r).as_str()), (401, "invalid_credentials"));

    db.cli(&["keys", "revoke", public_id(&key)]);
    let r = eventually("tokens of a revoked key are refused", || async {
        let r = account(&d, &jwt).await;
        (r.status == 401).then_some(r)
    })
    .await;
    assert_eq!(code(&r), "key_revoked");
}

/// base64url without padding, for reading and forging JWT payloads in tests.
mod base64_payload {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn decode(s: &str) -> serde_json::Value {
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes() {
            let v = A.iter().position(|a| *a == c).unwrap() as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
                bits &= (1 << n) - 1;
            }
        }
        serde_json::from_slice(&out).unwrap()
    }

    pub fn encode(v: &serde_json::Value) -> String {
        let data = serde_json::to_vec(v).unwrap();
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_authorization_headers_get_401_with_a_code() {
    let s = services::shared();
    let db = TestDb::new(s, "malformed");
    let d = daemon(&db, &[]).await;
    let r = call(&d, "GET", "/v1/account", None, "").await;
    assert_eq!((r.status, code(&r).as_str()), (401, "missing_credentials"));
    let huge = format!("Bearer gpx_{}", "a".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("scheme only", b"Bearer".to_vec()),
        ("wrong scheme", b"Basic dXNlcjpwYXNz".to_vec()),
        ("huge", huge.into_bytes()),
        ("non-ASCII", b"Bearer gpx_caf\xe9".to_vec()),
    ];
    for (what, value) in cases {
        let r = call(&d, "GET", "/v1/account", Some(&value), "").await;
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(code(&r), "malformed_authorization", "{what}");
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
    }
    let r = call(&d, "GET", "/v1/account", Some(b"Bearer not-a-key"), "").await;
    assert_eq!((r.status, code(&r).as_str()), (401, "invalid_credentials"));
    // a head over server.max_header_bytes (16 KiB) is refused before authentication
    let over = format!("Bearer gpx_{}", "a".repeat(20_000));
    let r = call(&d, "GET", "/v1/account", Some(over.as_bytes()), "").await;
    assert_eq!(r.status, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_admin_scope() {
    let s = services::shared();
    let db = TestDb::new(s, "admin");
    let (_, admin) = db.account_with_key("ops", &["admin"]);
    let (_, user) = db.account_with_key("plain", &[]);
    let d = daemon(&db, &[]).await;
    let (a, u) = (bearer(&admin), bearer(&user));

    let r = call(&d, "GET", "/v1/admin/accounts", Some(&u), "").await;
    assert_eq!((r.status, code(&r).as_str()), (403, "insufficient_scope"));

    let r = call(
        &d,
        "POST",
        "/v1/admin/accounts",
        Some(&a),
        r#"{"name":"newco","daily_budget_usd":12.5,"max_instances":3}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["daily_budget_usd"], 12.5);
    let r = call(
        &d,
        "POST",
        "/v1/admin/accounts",
        Some(&a),
        r#"{"name":"newco"}"#,
    )
    .await;
    assert_eq!((r.status, code(&r).as_str()), (409, "conflict"));
    let r = call(
        &d,
        "POST",
        "/v1/admin/accounts",
        Some(&a),
        r#"{"name":"x","max_instances":"many"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_instances")
    );
    let r = call(
        &d,
        "POST",
        "/v1/admin/accounts",
        Some(&a),
        r#"{"name":"x","bogus":1}"#,
    )
    .await;
    assert_eq!(r.status, 400);

    let r = call(
        &d,
        "POST",
        "/v1/admin/accounts/newco/keys",
        Some(&a),
        r#"{"label":"ci"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let new_token = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(account(&d, &new_token).await.status, 200);
    let r = call(&d, "GET", "/v1/admin/accounts/newco/keys", Some(&a), "").await;
    assert_eq!(r.json()["keys"].as_array().unwrap().len(), 1);
    assert!(
        !r.body
            .windows(10)
            .any(|w| new_token.as_bytes()[17..27] == *w),
        "secret listed"
    );

    let r = call(&d, "POST", "/v1/admin/accounts/newco/suspend", Some(&a), "").await;
    assert_eq!(r.status, 200);
    let r = account(&d, &new_token).await;
    assert_eq!((r.status, code(&r).as_str()), (403, "account_suspended"));
    call(&d, "POST", "/v1/admin/accounts/newco/resume", Some(&a), "").await;
    assert_eq!(account(&d, &new_token).await.status, 200);

    let path = format!("/v1/admin/keys/{}", public_id(&new_token));
    let r = call(&d, "DELETE", &path, Some(&a), "").await;
    assert_eq!(r.status, 200);
    assert!(r.json()["key"]["revoked_at"].is_string());
    let r = account(&d, &new_token).await;
    assert_eq!((r.status, code(&r).as_str()), (401, "key_revoked"));

    let r = call(&d, "GET", "/v1/admin/accounts/nosuch", Some(&a), "").await;
    assert_eq!((r.status, code(&r).as_str()), (404, "not_found"));
    let r = call(&d, "GET", "/v1/admin/keys/bad", Some(&a), "").await;
    assert_eq!(r.status, 400);

    let r = call(&d, "GET", "/openapi.json", None, "").await;
    assert_eq!(r.status, 200);
    assert!(r.json()["paths"]["/v1/admin/keys/{public_id}"]["delete"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_caches_send_no_query_and_unknown_ids_are_cached_negatively() {
    let s = services::shared();
    let db = TestDb::new(s, "warm");
    let (_, token) = db.account_with_key("warmco", &[]);
    // the background readers that query on a timer (the webhook sender, the event log's
    // fallback poll, the agents' sweep) and the caches' expiry are pushed out of the counted window: on a loaded
    // machine the 400 requests can take longer than a second, and their queries are not the
    // requests'
    let d = daemon(
        &db,
        &[
            "auth.last_used_flush_ms=3000",
            "ratelimit.ip_burst=10000",
            "webhooks.poll_interval_ms=600000",
            "events.poll_fallback_ms=600000",
            "agents.sweep_interval_ms=600000",
            "auth.cache_ttl_ms=600000",
            "auth.negative_ttl_ms=600000",
        ],
    )
    .await;
    assert_eq!(account(&d, &token).await.status, 200);
    // the background services' first rounds (at start) are done before the count begins
    support::eventually("the background services' first rounds", || async {
        let page = d.scrape().await;
        ["agent_sweep", "reconcile", "budgets", "sweeps"]
            .iter()
            .all(|s| {
                support::metrics::value(
                    &page,
                    &format!("gpuproxy_background_rounds_total{{service=\"{s}\",result=\"ok\"}}"),
                ) >= 1.0
            })
            .then_some(())
    })
    .await;
    let before = support::metrics::sum(&d.scrape().await, "gpuproxy_db_queries_total");
    let mut c = Conn::tls(d.https, &[b"h2"]).await.unwrap();
    for _ in 0..200 {
        let mut req = request("POST", "/v1/auth/token", Bytes::new());
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(c.send(req).await.unwrap().status, 200);
    }
    // a brute-force run against one unknown id
    for i in 0..200 {
        let mut req = request("POST", "/v1/auth/token", Bytes::new());
        let guess = format!("Bearer gpx_QQQQQQQQQQQQ_{:0>32}", i);
        req.headers_mut()
            .insert("authorization", guess.parse().unwrap());
        assert_eq!(c.send(req).await.unwrap().status, 401);
    }
    let after = support::metrics::sum(&d.scrape().await, "gpuproxy_db_queries_total");
    // one lookup of the unknown id (later ones hit the negative entry) and at most a couple of
    // batched last_used writes; none per request
    assert!(
        after - before <= 4.0,
        "{} queries for 400 requests",
        after - before
    );
    let keys = eventually("last_used_at written", || async {
        let k = db.cli(&["keys", "list", "--account", "warmco"]);
        k[0]["last_used_at"].is_string().then_some(k)
    })
    .await;
    assert!(keys[0]["revoked_at"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rate_limit_override_from_the_database() {
    let s = services::shared();
    let db = TestDb::new(s, "rlkey");
    db.cli(&["accounts", "create", "--name", "slow"]);
    let k = db.cli(&[
        "keys",
        "create",
        "--account",
        "slow",
        "--rate-limit-per-minute",
        "60",
        "--rate-limit-burst",
        "2",
    ]);
    let token = k["token"].as_str().unwrap().to_owned();
    let d = daemon(&db, &[]).await;
    assert_eq!(account(&d, &token).await.status, 200);
    assert_eq!(account(&d, &token).await.status, 200);
    let r = account(&d, &token).await;
    assert_eq!(r.status, 429);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`key`")
    );
    assert_eq!(r.header("ratelimit-policy"), Some("\"key\";q=60;w=60"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        d.scrape()
            .await
            .contains("gpuproxy_rate_limited_total{tier=\"key\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_migrations_at_once_leave_one_schema() {
    let s = services::shared();
    let name = format!("migr_{}", services::free_port());
    s.create_database(&name);
    let url = s.postgres_url(&name);
    let run = |url: String| {
        std::thread::spawn(move || {
            support::accounts::gpuproxyd(&["migrate", "--database-url", &url], &[])
        })
    };
    let (a, b) = (run(url.clone()), run(url.clone()));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert!(a.status.success(), "{}", support::accounts::stderr(&a));
    assert!(b.status.success(), "{}", support::accounts::stderr(&b));
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout)
    );
    let total = gpuproxyd::accounts::migrate::MIGRATIONS.len();
    for n in 1..=total {
        let applied = format!("applied {n:04}");
        assert_eq!(out.matches(&applied).count(), 1, "{out}");
    }
    // and again: nothing to do
    let c = support::accounts::gpuproxyd(&["migrate", "--database-url", &url], &[]);
    let again = String::from_utf8_lossy(&c.stdout);
    assert!(
        again.contains(&format!("0 applied now, {total} already applied")),
        "{again}"
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, gpuproxyd::accounts::migrate::MIGRATIONS.len());
    // the list comes from the folder, in name order
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/accounts/migrations"
    ))
    .unwrap()
    .count();
    assert_eq!(files, total);
    // a row from before checksums were kept gets one; a migration whose text changed stops the run
    client
        .batch_execute("UPDATE schema_migrations SET checksum = NULL WHERE version = 2")
        .await
        .unwrap();
    let c = support::accounts::gpuproxyd(&["migrate", "--database-url", &url], &[]);
    assert!(c.status.success(), "{}", support::accounts::stderr(&c));
    let sum: String = client
        .query_one(
            "SELECT checksum FROM schema_migrations WHERE version = 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum.len(), 64);
    client
        .batch_execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 3")
        .await
        .unwrap();
    let c = support::accounts::gpuproxyd(&["migrate", "--database-url", &url], &[]);
    assert!(!c.status.success());
    let err = support::accounts::stderr(&c);
    assert!(
        err.contains("migration 0003") && err.contains("changed after it was applied"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_of_20_through_pgbouncer_pool_of_2_has_no_errors() {
    let s = services::Services::start_with(services::Options {
        pgbouncer_pool_size: 2,
    });
    let db = TestDb::new(&s, "pool");
    let (_, token) = db.account_with_key("poolco", &[]);
    let pool = gpuproxyd::accounts::Db::new(
        &gpuproxyd::config::Secret::new(s.pgbouncer_url(&db.name)),
        &gpuproxyd::config::DatabaseConfig {
            pool_size: 20.try_into().unwrap(),
            acquire_timeout_ms: gpuproxyd::config::Millis(30_000),
            query_timeout_ms: gpuproxyd::config::Millis(30_000),
            ..Default::default()
        },
    )
    .unwrap();
    let id = public_id(&token).to_owned();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (pool, id) = (pool.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for _ in 0..50 {
                match gpuproxyd::accounts::store::key_record(&pool, &id).await {
                    Ok(Some(r)) => assert_eq!(r.public_id, id),
                    Ok(None) => errors.push("key not found".to_string()),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
}

/// POSTs /v1/auth/token with `token` on one connection until `stop`, returning every status.
fn token_stream(
    d: &DaemonProc,
    token: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u16>> {
    let addr = d.https;
    tokio::spawn(async move {
        let mut c = Conn::tls(addr, &[b"h2"]).await.unwrap();
        let mut statuses = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut req = request("POST", "/v1/auth/token", Bytes::new());
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            statuses.push(c.send(req).await.unwrap().status);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        statuses
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_killed_and_restarted_during_a_stream() {
    let s = services::Services::start();
    let db = TestDb::new(&s, "outage");
    let (_, cached) = db.account_with_key("cachedco", &[]);
    let (_, uncached) = db.account_with_key("coldco", &[]);
    // short in-process life, so lookups during the outage go past the first layer
    let d = daemon(
        &db,
        &[
            "auth.cache_ttl_ms=200",
            "database.acquire_timeout_ms=300",
            "database.health_interval_ms=100",
            "ratelimit.ip_burst=100000",
        ],
    )
    .await;
    let ok = call(&d, "POST", "/v1/auth/token", Some(&bearer(&cached)), "").await;
    assert_eq!(ok.status, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = token_stream(&d, cached.clone(), stop.clone());

    s.pgbouncer.kill();
    let r = eventually(
        "an uncached key gets 503 while PgBouncer is down",
        || async {
            let r = call(&d, "POST", "/v1/auth/token", Some(&bearer(&uncached)), "").await;
            (r.status != 200).then_some(r)
        },
    )
    .await;
    assert_eq!((r.status, code(&r).as_str()), (503, "auth_unavailable"));
    // a shared outage keeps the daemon in rotation: 200 degraded, the database named down
    let r = eventually("/ready reports the database down", || async {
        let r = call(&d, "GET", "/ready", None, "").await;
        (r.json()["database"] == "down").then_some(r)
    })
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "degraded");
    assert_eq!(r.json()["redis"], "up");
    // the outage lasts past several in-process lifetimes of the cached key
    tokio::time::sleep(Duration::from_millis(1000)).await;

    s.pgbouncer.start();
    let t0 = Instant::now();
    eventually("the uncached key works again", || async {
        let r = call(&d, "POST", "/v1/auth/token", Some(&bearer(&uncached)), "").await;
        (r.status == 200).then_some(())
    })
    .await;
    eventually("/ready is 200 again", || async {
        (call(&d, "GET", "/ready", None, "").await.status == 200).then_some(())
    })
    .await;
    eprintln!("recovered {:?} after PgBouncer restarted", t0.elapsed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = stream.await.unwrap();
    assert!(statuses.len() > 20, "{} requests", statuses.len());
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "cached key failed {} of {} times",
        failed.len(),
        statuses.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_degrades_but_auth_keeps_working() {
    let s = services::Services::start();
    let db = TestDb::new(&s, "redisdown");
    let (_, token) = db.account_with_key("redisco", &[]);
    let d = daemon(&db, &["database.health_interval_ms=100"]).await;
    eventually("/ready with both dependencies up", || async {
        let r = call(&d, "GET", "/ready", None, "").await;
        (r.json()["status"] == "ready").then_some(())
    })
    .await;
    s.redis.kill();
    let r = eventually("/ready says degraded", || async {
        let r = call(&d, "GET", "/ready", None, "").await;
        (r.json()["status"] == "degraded").then_some(r)
    })
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["redis"], "down");
    // never seen before: straight from PostgreSQL
    let r = account(&d, &token).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    // revoking while Redis is down still works, and says the others were not told
    let out = db.cli(&["keys", "revoke", public_id(&token)]);
    assert_eq!(out["propagation"]["propagated"], false);
    s.redis.start();
    eventually("/ready is ready again", || async {
        let r = call(&d, "GET", "/ready", None, "").await;
        (r.json()["status"] == "ready").then_some(())
    })
    .await;
    // after reconnecting the daemon dropped what it cached meanwhile: the revocation holds
    let r = eventually("revoked key refused", || async {
        let r = account(&d, &token).await;
        (r.status == 401).then_some(r)
    })
    .await;
    assert_eq!(code(&r), "key_revoked");
}
