//! A database outage behind PgBouncer, end to end (issue 19): while PostgreSQL is down rentals
//! get 503 `database_unavailable` and `/ready` says `degraded` (200: a shared dependency's outage
//! must not take every daemon out of the balancer); once PostgreSQL answers again, a rental made
//! 2 s later succeeds (the shipped PgBouncer settings retry a failed server login after 1 s, not
//! PgBouncer's default 15 s). And a `DATABASE_URL` naming several PgBouncers with
//! `target_session_attrs=read-write`: a read-only host is passed over, and a PgBouncer that
//! crashes under load costs reconnects to the next host, not failed requests. And a streaming
//! replica at `DATABASE_READ_URL` serving key lookups without ever trusting its lag, and a
//! primary switch (the standby promoted) that costs a reconnect, not an outage.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use support::accounts::{TestDb, public_id};
use support::poller::Poller;
use support::rentals::{account, call, cheapest, post, rent_body};
use support::sandbox::Sandbox;
use support::services::Services;

async fn ready_status(d: &support::daemon::DaemonProc) -> (u16, String) {
    let r = support::client::get(d.https, "/ready").await;
    (
        r.status,
        r.json()["status"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rentals_recover_within_two_seconds_of_postgres_coming_back() {
    // its own services: this test stops PostgreSQL
    let s = Services::start();
    let db = TestDb::new(&s, "outage");
    let sandbox = Sandbox::start(&[]);
    let token = account(&db, "outage", 1000.0, 10);
    let d = sandbox.daemon(&db, &["ratelimit.enabled=false"]).await;
    let offer = cheapest(&d, &token, "vastai", "").await;
    let body = rent_body(offer["id"].as_str().unwrap());
    assert_eq!(post(&d, &token, &body).await.status, 201);

    s.postgres.stop_with(libc::SIGINT);
    support::eventually("/ready to say degraded", || async {
        let (status, text) = ready_status(&d).await;
        (text == "degraded").then_some(status)
    })
    .await;
    assert_eq!(ready_status(&d).await.0, 200, "still in the balancer");
    let r = post(&d, &token, &body).await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.json()["error"]["code"], "database_unavailable");

    s.postgres.start();
    // PostgreSQL answers again (directly, not through PgBouncer) ...
    let url = s.postgres_url("postgres");
    support::eventually("PostgreSQL to answer again", || async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(conn);
        client.simple_query("SELECT 1").await.ok()
    })
    .await;
    // ... and 2 s later the first rental attempted through PgBouncer goes through
    tokio::time::sleep(Duration::from_secs(2)).await;
    let offer = cheapest(&d, &token, "vastai", "").await;
    let r = post(&d, &token, &rent_body(offer["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(ready_status(&d).await, (200, "ready".to_owned()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_host_database_url_skips_read_only_hosts_and_rides_out_a_pgbouncer_crash() {
    let s = support::services::shared();
    let db = TestDb::new(s, "multihost");
    let sandbox = Sandbox::start(&[]);
    let token = account(&db, "multihost", 1000.0, 10);
    // first a host whose sessions are read-only (as a hot standby's), then two that write
    let read_only = s.extra_pgbouncer(
        "pgbouncer-ro",
        "connect_query='SET default_transaction_read_only = on'",
    );
    let first = s.extra_pgbouncer("pgbouncer-rw1", "");
    let d = read_write_daemon(
        &sandbox,
        &db,
        &[read_only.port, first.port, s.pgbouncer.port],
    )
    .await;
    // a rental writes: it went to a read-write host
    let offer = cheapest(&d, &token, "vastai", "").await;
    let r = post(&d, &token, &rent_body(offer["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 201, "{:?}", r.json());

    // clients list their instances (a database read each time) while the PgBouncer in use dies
    let d = Arc::new(d);
    let load = Poller::start(&d, &token, "/v1/instances", 4);
    load.progress(20).await;
    first.kill();
    load.progress(100).await;
    let (ok, failed) = load.finish().await;
    eprintln!("through the PgBouncer crash: {ok} answered 200, {failed} not");
    assert_eq!(failed, 0);
    let offer = cheapest(&d, &token, "vastai", "").await;
    let r = post(&d, &token, &rent_body(offer["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(ready_status(&d).await, (200, "ready".to_owned()));
}

/// A daemon whose `DATABASE_URL` names the servers on `ports` (tried in order) and wants a
/// read-write one (`target_session_attrs=read-write`).
async fn read_write_daemon(
    sandbox: &Sandbox,
    db: &TestDb<'_>,
    ports: &[u16],
) -> support::daemon::DaemonProc {
    let url = db
        .services
        .multi_host_url(ports, &db.name, "target_session_attrs=read-write");
    sandbox
        .daemon_with_env(
            db,
            &["ratelimit.enabled=false"],
            &[("DATABASE_URL", url.as_str())],
        )
        .await
}

async fn ready(d: &support::daemon::DaemonProc) -> serde_json::Value {
    support::client::get(d.https, "/ready").await.json()
}

async fn account_status(d: &support::daemon::DaemonProc, token: &str) -> u16 {
    call(d, token, "GET", "/v1/account", "", None).await.status
}

async fn replica_lookups(d: &support::daemon::DaemonProc) -> f64 {
    support::metrics::value(
        &d.scrape().await,
        "gpuproxy_auth_lookups_total{source=\"replica\"}",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn key_lookups_read_a_replica_and_never_trust_its_lag() {
    let s = support::services::shared();
    let db = TestDb::new(s, "replica");
    let sandbox = Sandbox::start(&[]);
    let (_, token) = db.account_with_key("replicated", &[]);
    let replica = s.start_replica();
    let replica_url = s.url_on_port(replica.port, &db.name);
    let d = sandbox
        .daemon_with_env(
            &db,
            &["ratelimit.enabled=false", "auth.cache_ttl_ms=600000"],
            &[("DATABASE_READ_URL", replica_url.as_str())],
        )
        .await;
    support::eventually("the replica to be up", || async {
        (ready(&d).await["database_read"] == "up").then_some(())
    })
    .await;

    // a key the replica has is looked up there
    assert_eq!(account_status(&d, &token).await, 200);
    assert_eq!(replica_lookups(&d).await, 1.0);

    // replay paused: the replica lags as far as we like
    let (rc, conn) = tokio_postgres::connect(&replica_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    rc.simple_query("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    // a key created since is not on the replica: the primary is asked, not "unknown key"
    let (_, fresh) = db.account_with_key("fresh", &[]);
    assert_eq!(account_status(&d, &fresh).await, 200);
    // a revocation the replica does not show yet still takes effect at once
    let prefix = sandbox.redis_prefix();
    db.cli_env(
        &["keys", "revoke", public_id(&token)],
        &[("GPUPROXY_REDIS_KEY_PREFIX", prefix.as_str())],
    );
    support::eventually("the revoked key to be refused", || async {
        (account_status(&d, &token).await == 401).then_some(())
    })
    .await;
    let still = rc
        .query_one(
            "SELECT revoked_at IS NULL FROM api_keys WHERE public_id = $1",
            &[&public_id(&token)],
        )
        .await
        .unwrap();
    assert!(
        still.get::<_, bool>(0),
        "the replica still shows the key active"
    );

    // the replica gone: lookups go to the primary, /ready says so
    drop(rc);
    replica.stop_with(libc::SIGINT);
    support::eventually("/ready to report the replica down", || async {
        let r = ready(&d).await;
        (r["database_read"] == "down").then_some(r)
    })
    .await;
    let (_, third) = db.account_with_key("third", &[]);
    assert_eq!(account_status(&d, &third).await, 200);
    assert_eq!(ready(&d).await["status"], "degraded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promoted_standby_takes_over_the_writes_without_a_restart() {
    // its own services: this test stops the primary
    let s = Services::start();
    let db = TestDb::new(&s, "promote");
    let sandbox = Sandbox::start(&[]);
    let token = account(&db, "promoted", 1000.0, 10);
    let standby = s.start_replica();
    // the primary and the standby, directly: the writable one is whichever is primary now
    let d = read_write_daemon(&sandbox, &db, &[s.postgres.port, standby.port]).await;
    let offer = cheapest(&d, &token, "vastai", "").await;
    let body = rent_body(offer["id"].as_str().unwrap());
    assert_eq!(post(&d, &token, &body).await.status, 201);

    // the primary goes away and the standby is promoted (what a failover manager does)
    s.postgres.stop_with(libc::SIGINT);
    let r = post(&d, &token, &body).await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    let (sc, conn) = tokio_postgres::connect(
        &s.url_on_port(standby.port, &db.name),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sc.simple_query("SELECT pg_promote()").await.unwrap();
    // the daemon's next connections skip the dead host and find the new primary writable
    let offer = cheapest(&d, &token, "vastai", "").await;
    let body = rent_body(offer["id"].as_str().unwrap());
    let r = support::eventually("a rental on the promoted primary", || async {
        let r = post(&d, &token, &body).await;
        (r.status == 201).then_some(r)
    })
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(ready_status(&d).await, (200, "ready".to_owned()));
}
