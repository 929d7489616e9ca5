//! Three daemons behind HAProxy (the shipped config, PROXY v2), sharing PostgreSQL through
//! PgBouncer, Redis (a master with a replica under Sentinel) and the sandbox providers, all real
//! processes (issue 19): one deployment to its clients. A key revoked through one daemon is refused
//! by all, a rental made through one is seen and destroyed through the others, the per-IP limit
//! through HAProxy stays within its documented bound, a Redis failover fails no request; a
//! rolling restart and a PgBouncer outage under load lose no request and take no daemon out of
//! rotation.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::accounts::{TestDb, public_id};
use support::client::{Conn, Resp, Unsent, request};
use support::redis_topology::RedisSentinel;
use support::rentals::{account, cheapest, rent_body};
use support::sandbox::Sandbox;
use support::services::{self, Services};
use support::topology::Topology;

const DAEMONS: usize = 3;

/// A request with `Authorization: Bearer <token>` on `c`.
async fn send(c: &mut Conn, token: &str, method: &str, path: &str, body: &str) -> Resp {
    try_send(c, token, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"))
}

async fn try_send(
    c: &mut Conn,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Resp, Unsent> {
    let mut req = request(method, path, Bytes::copy_from_slice(body.as_bytes()));
    let h = req.headers_mut();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    if !body.is_empty() {
        h.insert("content-type", "application/json".parse().unwrap());
    }
    c.try_send(req).await
}

/// Source addresses for load (127.0.10.1 and up, one per request), so the per-IP tier of a
/// test that also measures it does not throttle the load.
fn next_source() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("127.0.{}.{}", 10 + (n / 250) % 200, 1 + n % 250)
}

/// Clients calling `GET /v1/account` (a cached key: no database on the way) through HAProxy on
/// keep-alive connections until stopped, each from an address of its own and used for at most
/// `per_connection` requests (under a per-IP limit, a new address keeps the load unthrottled). A request the connection would not take (closed
/// before it was sent) is sent again on a new one, as any HTTP client does; a request sent and
/// not answered, or answered with anything but 200, is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        t: &Arc<tokio::sync::RwLock<Topology>>,
        token: &str,
        clients: usize,
        per_connection: u32,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (t, token, stop) = (t.clone(), token.to_owned(), stop.clone());
                let (ok, failures) = (ok.clone(), failures.clone());
                tokio::spawn(async move {
                    let front = t.read().await.haproxy.front;
                    let mut conn: Option<Conn> = None;
                    let mut used = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if used == per_connection {
                            conn = None;
                            used = 0;
                        }
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => {
                                let tcp =
                                    support::client::connect_from(&next_source(), front).await;
                                let c = match tcp {
                                    Ok(tcp) => {
                                        Conn::tls_over(
                                            tcp,
                                            &[b"http/1.1"],
                                            rustls::DEFAULT_VERSIONS,
                                        )
                                        .await
                                    }
                                    Err(e) => Err(e),
                                };
                                match c {
                                    Ok(c) => conn.insert(c),
                                    Err(e) => {
                                        failures.lock().unwrap().push(format!("connect: {e}"));
                                        tokio::time::sleep(Duration::from_millis(20)).await;
                                        continue;
                                    }
                                }
                            }
                        };
                        used += 1;
                        match try_send(c, &token, "GET", "/v1/account", "").await {
                            Ok(r) => {
                                if r.status == 200 {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    failures.lock().unwrap().push(format!(
                                        "{} {}",
                                        r.status,
                                        String::from_utf8_lossy(&r.body)
                                    ));
                                }
                                if r.header("connection") == Some("close") {
                                    conn = None;
                                    used = 0;
                                }
                            }
                            Err(Unsent::NotSent(_)) => {
                                conn = None;
                                used = 0;
                            }
                            Err(Unsent::Failed(e)) => {
                                failures.lock().unwrap().push(format!("lost: {e}"));
                                conn = None;
                                used = 0;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits for `more` answers beyond the current count.
    async fn progress(&self, more: u64) {
        let target = self.answered() + more;
        support::eventually("the load to make progress", || async {
            (self.answered() >= target).then_some(())
        })
        .await;
    }

    /// Stops the clients; returns (answered, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let f = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), f)
    }
}

/// `GET /v1/account` straight to daemon `i`, from an address of its own.
async fn status_direct(t: &Topology, i: usize, token: &str) -> u16 {
    let mut c = t.connect_direct(i, &next_source()).await.unwrap();
    send(&mut c, token, "GET", "/v1/account", "").await.status
}

async fn ready(t: &Topology, i: usize) -> serde_json::Value {
    support::client::get(t.daemon(i).https, "/ready")
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_daemons_are_one_deployment_for_keys_rentals_limits_and_a_redis_failover() {
    let s = services::shared();
    let redis = RedisSentinel::start();
    let db = TestDb::new(s, "topo1");
    let sandbox = Sandbox::start(&[]);
    let token = account(&db, "tenant", 1000.0, 10);
    let (_, admin) = db.account_with_key("operators", &["admin"]);
    let url = redis.url();
    let t = Topology::start(
        &sandbox,
        &db,
        DAEMONS,
        &[
            // in-process entries live 10 minutes: only the Redis message explains a fast 401
            "auth.cache_ttl_ms=600000",
            "ratelimit.ip_per_minute=60",
            "ratelimit.ip_burst=30",
            // the failover load below is one account's: only the per-IP tier is under test (a
            // large burst too: a huge rate with the default burst leaves a tolerance of well
            // under a millisecond, which the workers' clocks can disagree by)
            "ratelimit.account_per_minute=100000000",
            "ratelimit.account_burst=10000000",
            "ratelimit.key_per_minute=100000000",
            "ratelimit.key_burst=10000000",
            "ratelimit.peer_heartbeat_ms=200",
        ],
        &[("REDIS_URL", url.as_str())],
    )
    .await;
    for i in 0..DAEMONS {
        support::eventually("each daemon to count 3 peers", || async {
            let page = t.daemon(i).scrape().await;
            (support::metrics::value(&page, "gpuproxy_ratelimit_daemons") == 3.0).then_some(())
        })
        .await;
    }

    // a rental made through daemon 0 is seen through daemon 1 and destroyed through daemon 2
    let mut c0 = t.connect_direct(0, &next_source()).await.unwrap();
    let offer = cheapest(t.daemon(0), &token, "vastai", "").await;
    let r = send(
        &mut c0,
        &token,
        "POST",
        "/v1/instances",
        &rent_body(offer["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let mut c1 = t.connect_direct(1, &next_source()).await.unwrap();
    let r = send(&mut c1, &token, "GET", &format!("/v1/instances/{id}"), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], id);
    let mut c2 = t.connect_direct(2, &next_source()).await.unwrap();
    let r = send(
        &mut c2,
        &token,
        "DELETE",
        &format!("/v1/instances/{id}"),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r = send(&mut c0, &token, "GET", &format!("/v1/instances/{id}"), "").await;
    assert_eq!(r.json()["status"], "terminated");

    // the per-IP limit through HAProxy: one address, a new connection per request, spread over
    // the three daemons; admitted ≤ burst + (n − 1) + rate × t (docs/operations.md, Rate limiting)
    let started = Instant::now();
    let (mut admitted, mut limited) = (0u32, 0u32);
    for _ in 0..60 {
        let mut c = t.connect("127.0.0.60").await.unwrap();
        match send(&mut c, &token, "GET", "/v1/account", "").await.status {
            200 => admitted += 1,
            429 => limited += 1,
            s => panic!("status {s}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let bound = 30.0 + (DAEMONS as f64 - 1.0) + secs.ceil();
    eprintln!(
        "per-IP limit through HAProxy: {admitted} admitted, {limited} limited in {secs:.2} s \
         (bound {bound})"
    );
    assert!(
        f64::from(admitted) <= bound,
        "{admitted} admitted, bound {bound}"
    );
    assert!(admitted >= 10 && limited > 0);

    // a key revoked through daemon 0 is refused by every daemon (10-minute cache entries: only
    // the Redis message explains it)
    let (_, victim) = db.account_with_key("victim", &[]);
    for i in 0..DAEMONS {
        assert_eq!(status_direct(&t, i, &victim).await, 200);
    }
    let revoked_at = Instant::now();
    let r = send(
        &mut c0,
        &admin,
        "DELETE",
        &format!("/v1/admin/keys/{}", public_id(&victim)),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    for i in 0..DAEMONS {
        support::eventually("the revoked key to be refused", || async {
            (status_direct(&t, i, &victim).await == 401).then_some(())
        })
        .await;
    }
    eprintln!(
        "revocation through daemon 0 refused by all {DAEMONS} after {:?}",
        revoked_at.elapsed()
    );

    // a Redis failover under load through HAProxy: no failed request, every daemon back to
    // ready by itself
    let t = Arc::new(tokio::sync::RwLock::new(t));
    let load = Load::start(&t, &token, 4, 5);
    load.progress(50).await;
    redis.master.kill();
    support::eventually("Sentinel to promote the replica", || async {
        (redis.master_port() == redis.replica.port).then_some(())
    })
    .await;
    {
        let t = t.read().await;
        for i in 0..DAEMONS {
            support::eventually("each daemon to report ready again", || async {
                (ready(&t, i).await["status"] == "ready").then_some(())
            })
            .await;
        }
    }
    load.progress(50).await;
    let (answered, failures) = load.finish().await;
    eprintln!(
        "through the Redis failover: {answered} answered, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_and_a_pgbouncer_outage_under_load_lose_no_request() {
    // its own services: this test stops PgBouncer
    let s = Services::start();
    let db = TestDb::new(&s, "topo2");
    let sandbox = Sandbox::start(&[]);
    let token = account(&db, "steady", 1000.0, 10);
    let t = Topology::start(&sandbox, &db, DAEMONS, &["ratelimit.enabled=false"], &[]).await;
    let t = Arc::new(tokio::sync::RwLock::new(t));

    // rolling restart: each daemon drained and replaced in turn while clients keep calling
    let load = Load::start(&t, &token, 4, u32::MAX);
    load.progress(50).await;
    for i in 0..DAEMONS {
        t.write().await.restart(i).await;
        load.progress(20).await;
    }
    let (answered, failures) = load.finish().await;
    eprintln!(
        "through a rolling restart of {DAEMONS} daemons: {answered} answered, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");

    // PgBouncer stopped under load: cached keys keep working, rentals get 503, every daemon
    // stays in rotation and says degraded
    let offer = {
        let t = t.read().await;
        cheapest(t.daemon(0), &token, "vastai", "").await
    };
    let body = rent_body(offer["id"].as_str().unwrap());
    let load = Load::start(&t, &token, 4, u32::MAX);
    load.progress(50).await;
    s.pgbouncer.stop_with(libc::SIGINT);
    let outage = Instant::now();
    {
        let mut t = t.write().await;
        for i in 0..DAEMONS {
            support::eventually("each daemon to say degraded", || async {
                let r = ready(&t, i).await;
                (r["status"] == "degraded" && r["database"] == "down").then_some(())
            })
            .await;
        }
        let mut c = t.connect("127.0.0.6").await.unwrap();
        let r = send(&mut c, &token, "POST", "/v1/instances", &body).await;
        assert_eq!(r.status, 503, "{:?}", r.json());
        assert_eq!(r.json()["error"]["code"], "database_unavailable");
        // the outage lasts 5 s; HAProxy keeps every daemon in rotation throughout
        while outage.elapsed() < Duration::from_secs(5) {
            let st = t.haproxy.server_status().await;
            assert!(
                st.len() == DAEMONS && st.iter().all(|(_, s)| s == "UP"),
                "a daemon left the rotation during the outage: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    s.pgbouncer.start();
    // 2 s after PgBouncer is back, a rental through HAProxy succeeds
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let t = t.read().await;
        let mut c = t.connect("127.0.0.7").await.unwrap();
        let r = send(&mut c, &token, "POST", "/v1/instances", &body).await;
        assert_eq!(r.status, 201, "{:?}", r.json());
    }
    let (answered, failures) = load.finish().await;
    eprintln!(
        "through a 5 s PgBouncer outage: {answered} answered, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
}
