//! Redis deployments beyond one node (issue 19), end to end with real processes: a 3-master
//! Cluster (keys spread over the slots, revocations and events fanned out to every daemon, the
//! rate-limit heartbeat counting peers), a Sentinel failover under load (no failed request, the
//! daemon finds the new master by itself), and TLS with a private CA.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use support::accounts::{TestDb, gpuproxyd, public_id, stderr};
use support::daemon::DaemonProc;
use support::poller::Poller;
use support::redis_topology::{RedisCluster, RedisSentinel, RedisTls};
use support::rentals::{account, call, rent_and_destroy};
use support::sandbox::Sandbox;
use support::services;
use support::sse::Sse;

const WAIT: Duration = Duration::from_secs(15);

/// `keys revoke` run as an operator would, against `redis_url` and the sandbox daemons'
/// namespace (and any extra environment).
fn revoke(
    sandbox: &Sandbox,
    db: &TestDb<'_>,
    token: &str,
    redis_url: &str,
    extra: &[(&str, &str)],
) {
    let prefix = sandbox.redis_prefix();
    let mut env = vec![
        ("REDIS_URL", redis_url),
        ("GPUPROXY_REDIS_KEY_PREFIX", prefix.as_str()),
    ];
    env.extend_from_slice(extra);
    let v = db.cli_env(&["keys", "revoke", public_id(token)], &env);
    assert_eq!(v["propagation"]["propagated"], true, "{v}");
}

async fn account_status(d: &DaemonProc, token: &str) -> u16 {
    call(d, token, "GET", "/v1/account", "", None).await.status
}

async fn ready(d: &DaemonProc) -> serde_json::Value {
    support::client::get(d.https, "/ready").await.json()
}

/// Waits until `d` says Redis is up.
async fn redis_up(d: &DaemonProc) {
    support::eventually("the daemon to reach Redis", || async {
        (ready(d).await["redis"] == "up").then_some(())
    })
    .await;
}

/// In-process key entries live 10 minutes and events are polled once a minute: what reaches
/// a daemon faster came through Redis.
const ONLY_REDIS_EXPLAINS: [&str; 3] = [
    "ratelimit.enabled=false",
    "auth.cache_ttl_ms=600000",
    "events.poll_fallback_ms=60000",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_spreads_keys_and_fans_out_revocations_and_events() {
    let cluster = RedisCluster::start(3);
    let s = services::shared();
    let db = TestDb::new(s, "rcluster");
    let sandbox = Sandbox::start(&[]);
    let token = account(&db, "clustered", 1000.0, 10);
    let url = cluster.url();
    let env = [("REDIS_URL", url.as_str())];
    let mut set = ONLY_REDIS_EXPLAINS.to_vec();
    set[0] = "ratelimit.peer_heartbeat_ms=200";
    let a = sandbox.daemon_with_env(&db, &set, &env).await;
    let b = sandbox.daemon_with_env(&db, &set, &env).await;
    for d in [&a, &b] {
        redis_up(d).await;
        assert_eq!(ready(d).await["status"], "ready");
    }
    // the heartbeat (one set and its member keys, read with one MGET) counts both daemons
    for d in [&a, &b] {
        support::eventually("both daemons to count 2 peers", || async {
            let page = d.scrape().await;
            (support::metrics::value(&page, "gpuproxy_ratelimit_daemons") == 2.0).then_some(())
        })
        .await;
    }

    // an event written through one daemon reaches a stream on the other
    let mut stream = Sse::open(b.https, &token, "/v1/events", None, None)
        .await
        .unwrap();
    stream.next(WAIT).await.expect("the open event");
    let id = rent_and_destroy(&a, &token).await;
    stream
        .until(WAIT, |e| {
            e.event == "instance.status_changed"
                && e.data["instance_id"] == id
                && e.data["data"]["status"] == "terminated"
        })
        .await;

    // keys written by the daemons live on every master: 30 unknown key ids make 30 negative
    // auth entries (`auth:key:<id>`), spread over the slots
    for i in 0..30 {
        let unknown = format!("gpx_UNKNOW{i:06}_{}", "Z".repeat(32));
        assert_eq!(account_status(&a, &unknown).await, 401);
    }
    let spread = cluster.keys_per_node();
    assert!(spread.iter().all(|n| *n > 0), "keys per node: {spread:?}");

    // a revocation published through the Cluster reaches both daemons' in-process caches
    for d in [&a, &b] {
        assert_eq!(account_status(d, &token).await, 200);
    }
    revoke(&sandbox, &db, &token, &url, &[]);
    for d in [&a, &b] {
        support::eventually("the revoked key to be refused", || async {
            (account_status(d, &token).await == 401).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_failover_under_load_fails_no_request() {
    let redis = RedisSentinel::start();
    let s = services::shared();
    let db = TestDb::new(s, "rsentinel");
    let sandbox = Sandbox::start(&[]);
    let token = account(&db, "watched", 1000.0, 10);
    let url = redis.url();
    let d = sandbox
        .daemon_with_env(&db, &ONLY_REDIS_EXPLAINS, &[("REDIS_URL", url.as_str())])
        .await;
    redis_up(&d).await;
    let d = Arc::new(d);

    // clients keep calling a cached-key route through the failover
    let load = Poller::start(&d, &token, "/v1/account", 4);
    load.progress(20).await;
    let before = load.answered();
    redis.master.kill();
    support::eventually("Sentinel to promote the replica", || async {
        (redis.master_port() == redis.replica.port).then_some(())
    })
    .await;
    // the daemon finds the new master by itself and says so
    redis_up(&d).await;
    assert_eq!(ready(&d).await["status"], "ready");
    let (ok, failed) = load.finish().await;
    eprintln!("through the failover: {ok} requests answered 200, {failed} not");
    assert_eq!(failed, 0);
    assert!(ok > before, "requests went on during the failover");

    // the subscription moved to the new master too: a revocation still arrives at once
    revoke(&sandbox, &db, &token, &url, &[]);
    support::eventually("the revoked key to be refused", || async {
        (account_status(&d, &token).await == 401).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls_with_a_private_ca() {
    let redis = RedisTls::start();
    let s = services::shared();
    let db = TestDb::new(s, "rtls");
    let sandbox = Sandbox::start(&[]);
    let token = account(&db, "encrypted", 1000.0, 10);
    let url = redis.url();
    let ca = redis.ca_file.display().to_string();
    let ca_set = format!("redis.tls_ca_file={ca:?}");
    let mut set = ONLY_REDIS_EXPLAINS.to_vec();
    set.push(&ca_set);
    let d = sandbox
        .daemon_with_env(&db, &set, &[("REDIS_URL", url.as_str())])
        .await;
    redis_up(&d).await;
    assert_eq!(account_status(&d, &token).await, 200);
    revoke(
        &sandbox,
        &db,
        &token,
        &url,
        &[("GPUPROXY_REDIS_TLS_CA_FILE", ca.as_str())],
    );
    support::eventually("the revoked key to be refused", || async {
        (account_status(&d, &token).await == 401).then_some(())
    })
    .await;

    // a CA file with a plain redis:// URL is a configuration error, said at start
    let mut env = db.env();
    env.push(("GPUPROXY_REDIS_TLS_CA_FILE".into(), ca.clone()));
    let out = gpuproxyd(&["keys", "revoke", public_id(&token), "--json"], &env);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("redis.tls_ca_file"),
        "{}",
        stderr(&out)
    );
}
