//! The agent channel (issue 31, first step), against a real stack: the renter mints an
//! instance's agent token; an agent client (tokio-tungstenite) opens `/v1/agent` with it, says
//! hello, is welcomed, sends heartbeats; its coming and going are events and a gauge. Refused:
//! an API key, a hello naming another instance, a malformed message, one over the size cap, a
//! missed pong, the token once the instance has ended.

use crate::support;
use crate::support::stack::Stack;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::agents::{closed, hello, mint, next_text};
use support::rentals::{account, call, rent_cheapest_running};
use support::ws::open;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_says_hello_beats_and_its_end_is_an_event() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "agents",
        &["--provision-time", "300ms"],
        &[
            "rentals.status_cache_ms=100",
            "ratelimit.enabled=false",
            "agents.ping_interval_ms=300",
            "agents.pong_timeout_ms=300",
            "agents.max_message_bytes=4096",
        ],
    )
    .await;
    let key = account(&db, "agent_owner", 10_000.0, 5);
    let id = rent_cheapest_running(&d, &key, "vastai").await;
    let other = rent_cheapest_running(&d, &key, "vastai").await;
    let token = mint(&d, &key, &id).await;

    // an API key opens no agent channel; an agent token is no API key
    let (status, body) = open(d.https, &key, "/v1/agent", &[]).await.unwrap_err();
    assert_eq!(status, 401, "{body}");
    let r = call(&d, &token, "GET", "/v1/account", "", None).await;
    assert_eq!(r.status, 401);
    // not a WebSocket
    let r = call(&d, &token, "GET", "/v1/agent", "", None).await;
    assert_eq!(r.status, 400, "{}", r.text());

    // hello, welcome, heartbeats (the client answers the pings as it reads)
    let mut ws = open(d.https, &token, "/v1/agent", &[]).await.unwrap();
    ws.send(hello(&id)).await.unwrap();
    let w = next_text(&mut ws).await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["instance_id"], id.as_str());
    assert!(w["heartbeat_s"].as_u64().unwrap() >= 1);
    for util in [12.5, 80.0] {
        ws.send(Message::text(
            json!({"type": "heartbeat", "gpus": [{"index": 0, "util_pct": util, "memory_used_mb": 900}]})
                .to_string(),
        ))
        .await
        .unwrap();
    }
    let connected = db
        .events_of("agent_owner", "instance.agent_connected")
        .await;
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0]["host"]["hostname"], "box");
    assert_eq!(connected[0]["gpus"][0]["name"], "NVIDIA GeForce RTX 4090");
    // still open across several ping rounds, because the client reads (and so answers)
    let until = std::time::Instant::now() + Duration::from_millis(1000);
    while std::time::Instant::now() < until {
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(50), ws.next()).await {
            assert!(matches!(m, Some(Ok(Message::Ping(_)))), "{m:?}");
        }
    }
    ws.send(Message::text(r#"{"type":"heartbeat","gpus":[]}"#))
        .await
        .unwrap();
    let page = d.scrape().await;
    assert_eq!(
        support::metrics::value(&page, "gpuproxy_agents_connected"),
        1.0,
        "{page}"
    );
    ws.close(None).await.unwrap();
    let lost = support::eventually("agent_lost", || async {
        let v = db.events_of("agent_owner", "instance.agent_lost").await;
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(lost[0]["reason"], "disconnected");

    // refusals close 1008 with the reason
    let cases: Vec<(Vec<Message>, &str)> = vec![
        (vec![hello(&other)], "not the token's instance"),
        (
            vec![Message::text("{\"type\":\"heartbeat\",\"gpus\":[]}")],
            "`hello` first",
        ),
        (
            vec![hello(&id), Message::text("{\"type\":\"nope\"}")],
            "unknown variant",
        ),
        (
            vec![hello(&id), Message::text("not json")],
            "invalid message",
        ),
        (
            vec![hello(&id), Message::binary(vec![1, 2, 3])],
            "text messages only",
        ),
        (
            vec![hello(&id), Message::text("x".repeat(5000))],
            "message_too_big",
        ),
    ];
    for (msgs, says) in cases {
        let mut ws = open(d.https, &token, "/v1/agent", &[]).await.unwrap();
        for m in msgs {
            let _ = ws.send(m).await;
        }
        let (code, reason) = closed(&mut ws).await;
        assert_eq!(code, u16::from(CloseCode::Policy), "{says}: {reason}");
        assert!(reason.contains(says), "{says}: {reason}");
    }

    // a missed pong: the client stops reading after its welcome, so it answers no ping
    let mut ws = open(d.https, &token, "/v1/agent", &[]).await.unwrap();
    ws.send(hello(&id)).await.unwrap();
    support::eventually("ping_timeout", || async {
        let page = d.scrape().await;
        (support::metrics::value(
            &page,
            "gpuproxy_agent_channels_closed_total{reason=\"ping_timeout\"}",
        ) >= 1.0)
            .then_some(())
    })
    .await;
    let (code, reason) = closed(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1008, "ping_timeout"));

    // minting again replaces the token; an ended instance's token opens nothing
    let again = mint(&d, &key, &id).await;
    assert_eq!(
        open(d.https, &token, "/v1/agent", &[]).await.unwrap_err().0,
        401
    );
    support::rentals::destroy_until_ended(&d, &key, &id).await;
    assert_eq!(
        open(d.https, &again, "/v1/agent", &[]).await.unwrap_err().0,
        401
    );
    let r = call(
        &d,
        &key,
        "POST",
        &format!("/v1/instances/{id}/agent-token"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
}

/// The real `gpuproxy-agent` against a real stack: it says hello with the GPUs `nvidia-smi`
/// lists (a stand-in script here) and the host's facts, sends heartbeats at the welcome's
/// interval, reconnects by itself when its daemon restarts (SIGTERM, a new daemon on the same
/// address), and stops with status 77 once its token is refused (the instance destroyed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_holds_its_channel_across_a_restart_and_stops_when_refused() {
    use std::os::unix::fs::PermissionsExt;
    let db = support::accounts::TestDb::new(support::services::shared(), "agent_bin");
    let sb = support::sandbox::Sandbox::start(&["--provision-time", "300ms"]);
    let set = [
        "rentals.status_cache_ms=100",
        "ratelimit.enabled=false",
        "agents.heartbeat_interval_ms=1000",
    ];
    let mut d1 = sb.daemon(&db, &set).await;
    let port = d1.https.port();
    let cert = std::fs::read_to_string(d1.dir.join("server.crt")).unwrap();
    let key = account(&db, "agent_bin", 10_000.0, 5);
    let id = rent_cheapest_running(&d1, &key, "vastai").await;
    let token = mint(&d1, &key, &id).await;

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let smi = dir.path().join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\ncase \"$1\" in\n  *memory.total*) echo '0, NVIDIA GeForce RTX 4090, 24564' ;;\n  *) echo '0, 42, 1000' ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_gpuproxy-agent"))
        .args(["--max-backoff-s", "1"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GPUPROXY_URL", format!("https://localhost:{port}"))
        .env("GPUPROXY_INSTANCE_ID", &id)
        .env("GPUPROXY_AGENT_TOKEN", &token)
        .env("GPUPROXY_CACERT", &ca)
        .env("GPUPROXY_NVIDIA_SMI", &smi)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let connected = |n: usize| {
        let db = &db;
        async move {
            support::eventually("instance.agent_connected", || async {
                let v = db.events_of("agent_bin", "instance.agent_connected").await;
                (v.len() >= n).then_some(v)
            })
            .await
        }
    };
    let first = connected(1).await;
    assert_eq!(first[0]["gpus"][0]["name"], "NVIDIA GeForce RTX 4090");
    assert_eq!(first[0]["gpus"][0]["memory_mb"], 24564);
    assert_eq!(first[0]["host"]["os"], "linux");
    // heartbeats at the welcome's interval (1 s): hello plus two beats at least
    support::eventually("heartbeats", || async {
        let page = d1.scrape().await;
        (support::metrics::value(
            &page,
            "gpuproxy_agent_messages_total{direction=\"in\",result=\"ok\"}",
        ) >= 3.0)
            .then_some(())
    })
    .await;

    // the daemon restarts: the channel ends `draining`, the agent comes back by itself
    let mut d2 = sb.restart_in_place(&db, &set, &mut d1).await;
    connected(2).await;
    let lost = db.events_of("agent_bin", "instance.agent_lost").await;
    assert_eq!(lost[0]["reason"], "draining", "{lost:?}");

    // the instance ends; at its next connection the agent's token is refused and it stops
    support::rentals::destroy_until_ended(&d2, &key, &id).await;
    let _d3 = sb.restart_in_place(&db, &set, &mut d2).await;
    let status = tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .expect("the agent stops within 30 s")
        .unwrap();
    assert_eq!(status.code(), Some(77));
    let mut err = String::new();
    use tokio::io::AsyncReadExt;
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(err.contains("refused the agent token"), "{err}");
    assert!(!err.contains(&token), "the token is never printed");
}

/// A live agent's reading drives the idle policy: the provider (the sandbox's Vast) reports the
/// GPU busy, the agent reports it idle, and the instance is warned and stopped as idle; before
/// the agent spoke, the provider's busy reading kept it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_policy_reads_a_live_agent_before_the_provider() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "agent_idle",
        &["--provision-time", "300ms"],
        &[
            "rentals.status_cache_ms=100",
            "rentals.reconcile_interval_ms=200",
            "rentals.idle_notice_ms=1500",
            "ratelimit.enabled=false",
        ],
    )
    .await;
    let key = account(&db, "agent_idler", 10_000.0, 5);
    let offer = support::rentals::cheapest(&d, &key, "vastai", "").await;
    let body = support::rentals::rent_body_with(
        offer["id"].as_str().unwrap(),
        &json!({"idle": {"gpu_util_below": 5, "for_minutes": 0.05, "action": "stop"}}),
    );
    let r = support::rentals::post(&d, &key, &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    support::rentals::until(&d, &key, &id, "running", |v| v["status"] == "running").await;
    // the sandbox reports the GPU busy (37.5%): rounds pass with no idle span
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        db.events_of("agent_idler", "instance.idle")
            .await
            .is_empty()
    );

    let token = mint(&d, &key, &id).await;
    let mut ws = open(d.https, &token, "/v1/agent", &[]).await.unwrap();
    ws.send(hello(&id)).await.unwrap();
    assert_eq!(next_text(&mut ws).await["type"], "welcome");
    let beat = json!({"type": "heartbeat", "gpus": [
        {"index": 0, "util_pct": 1.0, "memory_used_mb": 10},
        {"index": 1, "util_pct": 2.5, "memory_used_mb": 10}]});
    ws.send(Message::text(beat.to_string())).await.unwrap();
    support::rentals::until(&d, &key, &id, "stopped as idle", |v| {
        v["status"] == "stopped"
    })
    .await;
    let idle = db.events_of("agent_idler", "instance.idle").await;
    assert_eq!(idle.len(), 2, "{idle:?}");
    assert_eq!(idle[0]["phase"], "warning");
    assert_eq!(
        idle[0]["gpu_util"], 2.5,
        "the busiest GPU's reading: {idle:?}"
    );
    // the policy stopped it (the status change itself may be recorded first by a read of the
    // provider's status, without the policy's detail)
    assert_eq!(idle[1]["phase"], "stopped");
}

/// A live agent outweighs the provider's `offline`: with `unreachable_policy = destroy`, an
/// instance whose host Vast reports offline past the grace is kept while its agent holds a
/// channel (`agent_kept`), and destroyed once the agent is gone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_agent_keeps_an_instance_the_provider_calls_offline() {
    let Stack { db, sb, d } = Stack::start(
        "agent_offline",
        &["--provision-time", "300ms"],
        &[
            "rentals.status_cache_ms=100",
            "rentals.reconcile_interval_ms=200",
            "rentals.unreachable_grace_ms=1000",
            "rentals.unreachable_policy=\"destroy\"",
            "ratelimit.enabled=false",
        ],
    )
    .await;
    let key = account(&db, "agent_offline", 10_000.0, 5);
    let id = rent_cheapest_running(&d, &key, "vastai").await;
    let v = call(&d, &key, "GET", &format!("/v1/instances/{id}"), "", None)
        .await
        .json();
    let pid = v["provider_instance_id"].as_str().unwrap().to_owned();
    let token = mint(&d, &key, &id).await;
    let mut ws = open(d.https, &token, "/v1/agent", &[]).await.unwrap();
    ws.send(hello(&id)).await.unwrap();
    assert_eq!(next_text(&mut ws).await["type"], "welcome");

    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/host",
        &json!({"id": pid.parse::<u64>().unwrap(), "offline": true}).to_string(),
    )
    .await;
    support::rentals::until(&d, &key, &id, "unreachable", |v| v["status"] == "unknown").await;
    // past the grace, round after round: kept, because the agent is there
    support::eventually("agent_kept", || async {
        let page = d.scrape().await;
        (support::metrics::value(
            &page,
            "gpuproxy_reconciler_actions_total{action=\"agent_kept\"}",
        ) >= 3.0)
            .then_some(())
    })
    .await;
    let v = call(&d, &key, "GET", &format!("/v1/instances/{id}"), "", None)
        .await
        .json();
    assert_eq!(v["status"], "unknown", "kept while the agent is there: {v}");

    // the agent goes too: nothing outweighs the provider any more
    ws.close(None).await.unwrap();
    let v = support::rentals::until(&d, &key, &id, "destroyed", |v| {
        v["status"] == "failed" || v["status"] == "terminated"
    })
    .await;
    assert!(
        support::rentals::kinds(&v)
            .iter()
            .any(|k| k == "unreachable_destroyed"),
        "{v}"
    );
}

/// io.net reports no GPU utilisation: an idle policy is refused there, unless the rental has an
/// agent to report it; then the agent's reading drives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ionet_rental_takes_an_idle_policy_with_an_agent() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "agent_ionet_idle",
        &["--provision-time", "300ms"],
        &[
            "rentals.status_cache_ms=100",
            "rentals.reconcile_interval_ms=200",
            "rentals.idle_notice_ms=1000",
            "ratelimit.enabled=false",
            // io.net starts no script: the URL only goes into the install line
            "agents.public_url=\"https://gpu.example.com\"",
        ],
    )
    .await;
    let key = account(&db, "ionet_idler", 10_000.0, 5);
    let offer = support::rentals::cheapest(&d, &key, "ionet", "").await;
    let idle = json!({"gpu_util_below": 5, "for_minutes": 0.05, "action": "destroy"});
    let without = support::rentals::rent_body_with(
        offer["id"].as_str().unwrap(),
        &json!({"idle": idle, "duration_hours": 1}),
    );
    let r = support::rentals::post(&d, &key, &without.to_string()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("agent: true"), "{}", r.text());
    let with = support::rentals::rent_body_with(
        offer["id"].as_str().unwrap(),
        &json!({"idle": idle, "duration_hours": 1, "agent": true}),
    );
    let r = support::rentals::post(&d, &key, &with.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    support::rentals::until(&d, &key, &id, "running", |v| v["status"] == "running").await;

    let token = mint(&d, &key, &id).await;
    let mut ws = open(d.https, &token, "/v1/agent", &[]).await.unwrap();
    ws.send(hello(&id)).await.unwrap();
    assert_eq!(next_text(&mut ws).await["type"], "welcome");
    let beat =
        json!({"type": "heartbeat", "gpus": [{"index": 0, "util_pct": 0.5, "memory_used_mb": 1}]});
    ws.send(Message::text(beat.to_string())).await.unwrap();
    support::rentals::until(&d, &key, &id, "destroyed as idle", |v| {
        v["status"] == "terminated"
    })
    .await;
    let idle = db.events_of("ionet_idler", "instance.idle").await;
    assert_eq!(idle.last().unwrap()["phase"], "destroyed", "{idle:?}");
    assert_eq!(idle[0]["gpu_util"], 0.5, "{idle:?}");
}

/// Admission: with `agents.max_opening = 1`, a channel whose token check waits (the token table
/// locked) holds the one place; a second agent opening meanwhile gets 503 `over_capacity` with
/// `Retry-After` after `agents.opening_wait_ms`, and the API keeps answering. Once the lock goes
/// both open; a second channel of one instance replaces the first (1008 `replaced`), over
/// HTTP/1.1 and over HTTP/2 (RFC 8441); their
/// comings and goings are in the event log in order (written in batches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_open_a_few_at_a_time_and_the_rest_are_told_to_come_back() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "agents_admission",
        &["--provision-time", "300ms"],
        &[
            "ratelimit.enabled=false",
            "agents.max_opening=1",
            "agents.opening_wait_ms=300",
        ],
    )
    .await;
    let key = account(&db, "agent_admission", 10_000.0, 5);
    let a = rent_cheapest_running(&d, &key, "vastai").await;
    let b = rent_cheapest_running(&d, &key, "vastai").await;
    let (ta, tb) = (mint(&d, &key, &a).await, mint(&d, &key, &b).await);

    let s = support::services::shared();
    let (locker, conn) = tokio_postgres::connect(&s.postgres_url(&db.name), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; LOCK TABLE agent_tokens IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let https = d.https;
    let ta2 = ta.clone();
    let first = tokio::spawn(async move { open(https, &ta2, "/v1/agent", &[]).await });
    support::eventually("the first token check to wait on the lock", || async {
        let n: i64 = locker
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'agent_tokens'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    let (status, body) = open(d.https, &tb, "/v1/agent", &[]).await.unwrap_err();
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "over_capacity", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agents.max_opening"),
        "{body}"
    );
    // it says when to come back
    let tls = support::ws::tls_http1(tokio::net::TcpStream::connect(d.https).await.unwrap()).await;
    let mut req = "wss://localhost/v1/agent".into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {tb}").parse().unwrap());
    match tokio_tungstenite::client_async(req, tls).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 503);
            assert_eq!(r.headers()["retry-after"], "1");
        }
        other => panic!("{:?}", other.map(|r| r.1)),
    }
    let r = call(&d, &key, "GET", "/v1/account", "", None).await;
    assert_eq!(r.status, 200, "the API answers meanwhile: {}", r.text());

    locker.batch_execute("COMMIT").await.unwrap();
    let mut wa = first.await.unwrap().expect("the first channel opens");
    wa.send(hello(&a)).await.unwrap();
    assert_eq!(next_text(&mut wa).await["type"], "welcome");
    let mut wb = open(d.https, &tb, "/v1/agent", &[]).await.unwrap();
    wb.send(hello(&b)).await.unwrap();
    assert_eq!(next_text(&mut wb).await["type"], "welcome");
    // a second channel of the same instance replaces the first
    let mut wa2 = open(d.https, &ta, "/v1/agent", &[]).await.unwrap();
    wa2.send(hello(&a)).await.unwrap();
    assert_eq!(next_text(&mut wa2).await["type"], "welcome");
    assert_eq!(closed(&mut wa).await, (1008, "replaced".to_owned()));
    // the channel over HTTP/2 too (an extended CONNECT, RFC 8441): it replaces b's
    let (mut wh2, _conn) = support::ws::open_h2(d.https, &tb, "/v1/agent")
        .await
        .unwrap();
    wh2.send(hello(&b)).await.unwrap();
    let w = support::ws::next(&mut wh2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(w["type"], "welcome", "{w}");
    wh2.send(Message::text(r#"{"type":"heartbeat","gpus":[]}"#))
        .await
        .unwrap();
    assert_eq!(closed(&mut wb).await, (1008, "replaced".to_owned()));
    wa2.close(None).await.unwrap();
    wh2.close(None).await.unwrap();
    let lost = support::eventually("four agent_lost", || async {
        let v = db.events_of("agent_admission", "instance.agent_lost").await;
        (v.len() == 4).then_some(v)
    })
    .await;
    let mut reasons: Vec<&str> = lost.iter().map(|l| l["reason"].as_str().unwrap()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["disconnected", "disconnected", "replaced", "replaced"],
        "{lost:?}"
    );
    // each account's events keep one gapless sequence, batched or not
    let seqs: Vec<i64> = db
        .client()
        .await
        .query(
            "SELECT e.seq FROM account_events e JOIN accounts a ON a.id = e.account_id \
             WHERE a.name = 'agent_admission' ORDER BY e.seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let page = d.scrape().await;
    assert_eq!(
        support::metrics::value(
            &page,
            "gpuproxy_agent_channels_closed_total{reason=\"not_admitted\"}"
        ),
        2.0,
        "{page}"
    );
}

/// A slow agent: one that sends pings and reads nothing. Their pongs fill the socket, then the
/// channel's write queue (`agents.max_queued_messages`), and the channel is cut (1013
/// `slow_consumer`); its end is an `instance.agent_lost` saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_reads_nothing_is_cut_as_a_slow_consumer() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "agents_slow",
        &["--provision-time", "300ms"],
        &["ratelimit.enabled=false", "agents.max_queued_messages=10"],
    )
    .await;
    let key = account(&db, "agent_slow", 10_000.0, 5);
    let id = rent_cheapest_running(&d, &key, "vastai").await;
    let token = mint(&d, &key, &id).await;
    let mut ws = open(d.https, &token, "/v1/agent", &[]).await.unwrap();
    ws.send(hello(&id)).await.unwrap();
    assert_eq!(next_text(&mut ws).await["type"], "welcome");
    // 125-byte pings, never reading the pongs, until the channel is cut (the kernel's buffers
    // on both sides take some MB first)
    let payload = vec![b'p'; 125];
    'flood: for _ in 0..300 {
        for _ in 0..1000 {
            if ws
                .feed(Message::Ping(payload.clone().into()))
                .await
                .is_err()
            {
                break 'flood;
            }
        }
        if ws.flush().await.is_err() {
            break;
        }
        let page = d.scrape().await;
        if support::metrics::value(
            &page,
            "gpuproxy_agent_channels_closed_total{reason=\"slow_consumer\"}",
        ) >= 1.0
        {
            break;
        }
    }
    let lost = support::eventually("agent_lost slow_consumer", || async {
        let v = db.events_of("agent_slow", "instance.agent_lost").await;
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(lost[0]["reason"], "slow_consumer", "{lost:?}");
}
