//! Commands through instance agents (issue 31), against a real stack: exec refused without the
//! account's and the key's policy; the real `gpuproxy-agent` running commands (output and exit
//! code to the API and the event feed, a timeout, a program that cannot start); a command sent
//! while the agent is offline, delivered when it reconnects; a command entering daemon B for an
//! agent held by daemon A; expiry; the channel of a destroyed instance ended; an agent over its
//! message rate cut; and a rental with `agent: true` installing the agent through `onstart`.

use crate::support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use support::accounts::{TestDb, public_id};
use support::agents::{closed, hello, mint, next_text};
use support::daemon::DaemonProc;
use support::rentals::{account, call, rent_cheapest_running};
use support::sandbox::Sandbox;
use support::ws::open;
use tokio_tungstenite::tungstenite::Message;

/// Runs an admin command that reaches the sandbox's daemons (their cached keys are dropped).
fn admin(db: &TestDb<'_>, sb: &Sandbox, args: &[&str]) -> Value {
    let prefix = sb.redis_prefix();
    db.cli_env(args, &[("GPUPROXY_REDIS_KEY_PREFIX", prefix.as_str())])
}

/// Turns exec on for the account and its key (the sandbox's daemons drop their cached keys).
fn allow_exec(db: &TestDb<'_>, sb: &Sandbox, name: &str, key: &str) {
    let prefix = sb.redis_prefix();
    db.allow_exec(name, key, &[("GPUPROXY_REDIS_KEY_PREFIX", prefix.as_str())]);
}

/// POSTs `body` to `path` with an `Idempotency-Key`; its 202.
async fn post_keyed(
    d: &DaemonProc,
    key: &str,
    path: &str,
    body: &Value,
    idem: &str,
) -> support::client::Resp {
    let r = call(d, key, "POST", path, &body.to_string(), Some(idem)).await;
    assert_eq!(r.status, 202, "{}", r.text());
    r
}

/// POSTs a command; its 202 view.
async fn send(d: &DaemonProc, key: &str, instance: &str, body: &Value) -> Value {
    let r = call(
        d,
        key,
        "POST",
        &format!("/v1/instances/{instance}/commands"),
        &body.to_string(),
        None,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "queued", "{v}");
    let loc = r.headers.get("location").unwrap().to_str().unwrap();
    assert_eq!(
        loc,
        format!(
            "/v1/instances/{instance}/commands/{}",
            v["id"].as_str().unwrap()
        )
    );
    v
}

async fn show(d: &DaemonProc, key: &str, instance: &str, id: &str) -> Value {
    let r = call(
        d,
        key,
        "GET",
        &format!("/v1/instances/{instance}/commands/{id}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Waits until the command has a final status; its view.
async fn finished(d: &DaemonProc, key: &str, instance: &str, id: &str) -> Value {
    support::eventually("command finished", || async {
        let v = show(d, key, instance, id).await;
        let s = v["status"].as_str().unwrap().to_owned();
        ["exited", "timed_out", "start_failed", "expired", "lost"]
            .contains(&s.as_str())
            .then_some(v)
    })
    .await
}

fn agent_process(
    d: &DaemonProc,
    dir: &std::path::Path,
    instance: &str,
    token: &str,
) -> tokio::process::Child {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, std::fs::read(d.dir.join("server.crt")).unwrap()).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_gpuproxy-agent"))
        .args(["--max-backoff-s", "1"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "GPUPROXY_URL",
            format!("https://localhost:{}", d.https.port()),
        )
        .env("GPUPROXY_INSTANCE_ID", instance)
        .env("GPUPROXY_AGENT_TOKEN", token)
        .env("GPUPROXY_CACERT", &ca)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn connected_count(db: &TestDb<'_>, account: &str, n: usize) {
    support::eventually("instance.agent_connected", || async {
        let v = db.events_of(account, "instance.agent_connected").await;
        (v.len() >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_commands_for_the_renter_when_allowed() {
    let db = TestDb::new(support::services::shared(), "agent_exec");
    let sb = Sandbox::start(&["--provision-time", "300ms"]);
    let d = sb
        .daemon(
            &db,
            &[
                "rentals.status_cache_ms=100",
                "ratelimit.enabled=false",
                "agents.sweep_interval_ms=200",
                "agents.command_output_bytes=64",
            ],
        )
        .await;
    let key = account(&db, "execer", 10_000.0, 5);
    let id = rent_cheapest_running(&d, &key, "vastai").await;
    let echo = json!({"kind": "exec", "argv": ["sh", "-c", "echo hello; echo oops >&2; exit 3"]});
    let path = format!("/v1/instances/{id}/commands");

    // off unless the account and the key allow it; a read key changes nothing
    let r = call(&d, &key, "POST", &path, &echo.to_string(), None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "exec_not_allowed");
    assert!(r.text().contains("account"), "{}", r.text());
    admin(
        &db,
        &sb,
        &["accounts", "update", "execer", "--agent-exec", "true"],
    );
    let r = call(&d, &key, "POST", &path, &echo.to_string(), None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("allow_exec"), "{}", r.text());
    allow_exec(&db, &sb, "execer", &key);
    let reader = db.cli(&["keys", "create", "--account", "execer", "--scope", "read"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = call(&d, &reader, "POST", &path, &echo.to_string(), None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // bad input: 400 naming the field, nothing recorded
    for (bad, field) in [
        (json!({"kind": "shell", "argv": ["true"]}), "kind"),
        (json!({"kind": "exec", "argv": []}), "argv"),
        (
            json!({"kind": "exec", "argv": ["true"], "timeout_s": 0}),
            "timeout_s",
        ),
        (
            json!({"kind": "exec", "argv": ["true"], "extra": 1}),
            "extra",
        ),
    ] {
        let r = call(&d, &key, "POST", &path, &bad.to_string(), None).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.text().contains(field), "{bad}: {}", r.text());
    }
    let r = call(&d, &key, "GET", &path, "", None).await;
    assert_eq!(r.json()["commands"].as_array().unwrap().len(), 0);

    // the agent is not running yet: the command waits, queued
    let first = send(&d, &key, &id, &echo).await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(show(&d, &key, &id, &first_id).await["status"], "queued");

    // the agent comes: it gets the command at its hello and runs it
    let token = mint(&d, &key, &id).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_process(&d, dir.path(), &id, &token);
    let v = finished(&d, &key, &id, &first_id).await;
    assert_eq!(v["status"], "exited", "{v}");
    assert_eq!(v["exit_code"], 3);
    let out = v["output"].as_str().unwrap();
    assert!(out.contains("hello") && out.contains("oops"), "{v}");
    assert_eq!(v["key"], public_id(&key));
    assert!(
        v["started_at"].is_string() && v["finished_at"].is_string(),
        "{v}"
    );

    // the audit event names the key; output and the end are on the feed
    let created = db.events_of("execer", "command.created").await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["key"], public_id(&key));
    assert_eq!(created[0]["argv"][0], "sh");
    let output = db.events_of("execer", "command.output").await;
    let joined: String = output.iter().map(|o| o["data"].as_str().unwrap()).collect();
    assert!(
        joined.contains("hello") && joined.contains("oops"),
        "{output:?}"
    );
    let ended = db.events_of("execer", "command.finished").await;
    assert_eq!(ended[0]["status"], "exited");
    assert_eq!(ended[0]["exit_code"], 3);

    // an Idempotency-Key records and runs a command once: the same key and body answer the
    // command it recorded, as it is now; another body with it is 422, a malformed key 400
    let once = json!({"kind": "exec", "argv": ["sh", "-c", "echo once"]});
    let r1 = post_keyed(&d, &key, &path, &once, "cmd-once-1").await;
    assert!(r1.headers.get("idempotent-replayed").is_none());
    let once_id = r1.json()["id"].as_str().unwrap().to_owned();
    let r2 = post_keyed(&d, &key, &path, &once, "cmd-once-1").await;
    assert_eq!(r2.headers["idempotent-replayed"], "true");
    assert_eq!(r2.json()["id"], once_id.as_str());
    let v = finished(&d, &key, &id, &once_id).await;
    assert_eq!(
        (v["status"].as_str(), v["output"].as_str()),
        (Some("exited"), Some("once\n"))
    );
    let r3 = post_keyed(&d, &key, &path, &once, "cmd-once-1").await;
    assert_eq!(r3.headers["idempotent-replayed"], "true");
    assert_eq!(r3.json()["status"], "exited", "the command as it is now");
    let r = call(
        &d,
        &key,
        "POST",
        &path,
        &echo.to_string(),
        Some("cmd-once-1"),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "idempotency_key_reused");
    let r = call(&d, &key, "POST", &path, &once.to_string(), Some("a b")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("Idempotency-Key"), "{}", r.text());
    let created = db.events_of("execer", "command.created").await;
    assert_eq!(
        created.len(),
        2,
        "one more command, recorded once: {created:?}"
    );
    let ended = db.events_of("execer", "command.finished").await;
    assert_eq!(ended.len(), 2, "run once: {ended:?}");

    // output past agents.command_output_bytes is counted, not kept
    let long = send(
        &d,
        &key,
        &id,
        &json!({"kind": "exec", "argv": ["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x"]}),
    )
    .await;
    let v = finished(&d, &key, &id, long["id"].as_str().unwrap()).await;
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["output"].as_str().unwrap().len(), 64);
    assert_eq!(v["output_bytes"], 5000);
    assert_eq!(v["output_truncated"], true);

    // killed at its timeout; a program that cannot start
    let slow = send(
        &d,
        &key,
        &id,
        &json!({"kind": "exec", "argv": ["sleep", "30"], "timeout_s": 1}),
    )
    .await;
    let missing = send(
        &d,
        &key,
        &id,
        &json!({"kind": "exec", "argv": ["/no/such/program"]}),
    )
    .await;
    let v = finished(&d, &key, &id, slow["id"].as_str().unwrap()).await;
    assert_eq!(v["status"], "timed_out", "{v}");
    let v = finished(&d, &key, &id, missing["id"].as_str().unwrap()).await;
    assert_eq!(v["status"], "start_failed", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("/no/such/program"),
        "{v}"
    );

    // listed newest first, paged
    let r = call(&d, &key, "GET", &format!("{path}?limit=2"), "", None).await;
    let page = r.json();
    assert_eq!(page["commands"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!(page["commands"][0]["id"], missing["id"]);
    let before = page["next_before"].as_str().unwrap();
    let r = call(
        &d,
        &key,
        "GET",
        &format!("{path}?limit=10&before={before}"),
        "",
        None,
    )
    .await;
    // the first, the idempotent one, the long one
    assert_eq!(r.json()["commands"].as_array().unwrap().len(), 3);
    let page = d.scrape().await;
    assert!(
        support::metrics::value(
            &page,
            "gpuproxy_agent_command_seconds_count{stage=\"result\"}"
        ) >= 4.0,
        "{page}"
    );
    assert!(support::metrics::value(&page, "gpuproxy_agent_connect_seconds_count") >= 1.0);

    // the instance ends: its live channel is closed within a sweep, the agent's token is
    // refused at its reconnection (it stops, 77), and a command still queued is expired
    let r = call(&d, &key, "GET", &format!("/v1/instances/{id}"), "", None).await;
    assert_eq!(r.status, 200);
    support::rentals::destroy_until_ended(&d, &key, &id).await;
    let lost = support::eventually("agent_lost", || async {
        let v = db.events_of("execer", "instance.agent_lost").await;
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(lost[0]["reason"], "instance_ended", "{lost:?}");
    let status = tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .expect("the agent stops within 30 s")
        .unwrap();
    assert_eq!(status.code(), Some(77));
    let r = call(&d, &key, "POST", &path, &echo.to_string(), None).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "instance_not_open");
}

/// An agent client (tokio-tungstenite) on daemon A; commands posted to daemon B reach it through
/// its presence and A's notice channel, and its answers are visible from B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_entering_another_daemon_reaches_the_agent() {
    let db = TestDb::new(support::services::shared(), "agent_route");
    let sb = Sandbox::start(&["--provision-time", "300ms"]);
    let set = [
        "rentals.status_cache_ms=100",
        "ratelimit.enabled=false",
        "agents.sweep_interval_ms=200",
        "agents.command_queue_ttl_ms=800",
        "agents.messages_per_minute=60",
        "agents.message_burst=8",
        "rentals.idempotency_ttl_ms=1000",
    ];
    let a = sb.daemon(&db, &set).await;
    let b = sb.daemon(&db, &set).await;
    let key = account(&db, "router", 10_000.0, 5);
    allow_exec(&db, &sb, "router", &key);
    let id = rent_cheapest_running(&a, &key, "vastai").await;
    let idle = rent_cheapest_running(&a, &key, "vastai").await;
    let token = mint(&a, &key, &id).await;

    let mut ws = open(a.https, &token, "/v1/agent", &[]).await.unwrap();
    ws.send(hello(&id)).await.unwrap();
    assert_eq!(next_text(&mut ws).await["type"], "welcome");
    connected_count(&db, "router", 1).await;

    let c = send(
        &b,
        &key,
        &id,
        &json!({"kind": "exec", "argv": ["uname", "-a"], "timeout_s": 5}),
    )
    .await;
    let exec = next_text(&mut ws).await;
    assert_eq!(exec["type"], "exec", "{exec}");
    assert_eq!(exec["id"], c["id"]);
    assert_eq!(exec["argv"], json!(["uname", "-a"]));
    assert_eq!(exec["timeout_s"], 5);
    let cid = c["id"].as_str().unwrap();
    for m in [
        json!({"type": "started", "id": cid}),
        json!({"type": "output", "id": cid, "stream": "stdout", "data": "Linux box\n"}),
        json!({"type": "finished", "id": cid, "exit_code": 0}),
    ] {
        ws.send(Message::text(m.to_string())).await.unwrap();
    }
    let v = finished(&b, &key, &id, cid).await;
    assert_eq!(
        (v["status"].as_str(), v["exit_code"].as_i64()),
        (Some("exited"), Some(0))
    );
    assert_eq!(v["output"], "Linux box\n");
    let page = a.scrape().await;
    assert_eq!(
        support::metrics::value(
            &page,
            "gpuproxy_agent_command_seconds_count{stage=\"routed\"}"
        ),
        1.0,
        "{page}"
    );

    // the agent goes away; a command sent meanwhile waits, and is delivered when it is back
    ws.close(None).await.unwrap();
    support::eventually("agent_lost", || async {
        let v = db.events_of("router", "instance.agent_lost").await;
        (!v.is_empty()).then_some(())
    })
    .await;
    let c = send(&b, &key, &id, &json!({"kind": "exec", "argv": ["true"]})).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        show(&b, &key, &id, c["id"].as_str().unwrap()).await["status"],
        "queued"
    );
    let mut ws = open(b.https, &token, "/v1/agent", &[]).await.unwrap();
    ws.send(hello(&id)).await.unwrap();
    assert_eq!(next_text(&mut ws).await["type"], "welcome");
    let exec = next_text(&mut ws).await;
    assert_eq!((&exec["type"], &exec["id"]), (&json!("exec"), &c["id"]));
    assert_eq!(
        show(&a, &key, &id, c["id"].as_str().unwrap()).await["status"],
        "sent"
    );

    // an instance with no agent: its command expires (agents.command_queue_ttl_ms). Sent with
    // an Idempotency-Key: the same key through the other daemon answers the same command; once
    // the key is released (rentals.idempotency_ttl_ms, by the sweep) it records a new one
    let body = json!({"kind": "exec", "argv": ["true"]});
    let path = format!("/v1/instances/{idle}/commands");
    let c = post_keyed(&b, &key, &path, &body, "route-idle-1")
        .await
        .json();
    let r = post_keyed(&a, &key, &path, &body, "route-idle-1").await;
    assert_eq!(r.headers["idempotent-replayed"], "true");
    assert_eq!(r.json()["id"], c["id"]);
    let v = finished(&b, &key, &idle, c["id"].as_str().unwrap()).await;
    assert_eq!(v["status"], "expired", "{v}");
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
    let again = support::eventually("the key released", || async {
        let r = post_keyed(&a, &key, &path, &body, "route-idle-1").await;
        r.headers
            .get("idempotent-replayed")
            .is_none()
            .then(|| r.json())
    })
    .await;
    assert_ne!(again["id"], c["id"]);

    // an agent over its message rate (burst 8) is cut: 1008 rate_limited
    for _ in 0..20 {
        if ws
            .send(Message::text(r#"{"type":"heartbeat","gpus":[]}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, reason) = closed(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1008, "rate_limited"));
}

/// `agent: true` on Vast: a token is minted, the environment carries it (and never the start
/// script), and the script at the head of `onstart` downloads the agent from the daemon, checks
/// its SHA-256 and starts it: run here as Vast would run it, the agent connects. A tampered
/// checksum installs nothing. io.net (no start hook) shows the install line instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rental_with_agent_installs_it_through_onstart() {
    use sha2::Digest;
    let db = TestDb::new(support::services::shared(), "agent_install");
    let sb = Sandbox::start(&["--provision-time", "300ms"]);
    let mut first = sb.daemon(&db, &[]).await;
    let url = format!("https://localhost:{}", first.https.port());
    let public = format!("agents.public_url={url:?}");
    let set = [
        "rentals.status_cache_ms=100",
        "ratelimit.enabled=false",
        public.as_str(),
    ];
    let d = sb.restart_in_place(&db, &set, &mut first).await;
    let key = account(&db, "installer", 10_000.0, 5);

    // the program and the script, as the machine fetches them
    let program = std::fs::read(env!("CARGO_BIN_EXE_gpuproxy-agent")).unwrap();
    let sha = hex(&sha2::Sha256::digest(&program));
    let r = support::client::get(d.https, "/v1/agent/download").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-checksum-sha256"), Some(sha.as_str()));
    assert_eq!(r.body.len(), program.len());
    let etag = r.header("etag").unwrap().to_owned();
    let again = support::client::authed(
        d.https,
        "",
        "GET",
        "/v1/agent/download",
        "",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);
    let script = support::client::get(d.https, "/v1/agent/install.sh").await;
    assert_eq!(script.status, 200);
    assert!(script.text().contains(&sha), "{}", script.text());

    // too long an onstart of its own leaves no room: 400 before anything is rented
    let offer = support::rentals::cheapest(&d, &key, "vastai", "").await;
    let offer_id = offer["id"].as_str().unwrap();
    let long = support::rentals::rent_body_with(
        offer_id,
        &json!({"agent": true, "onstart": "x".repeat(4000)}),
    );
    let r = support::rentals::post(&d, &key, &long.to_string()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("onstart"), "{}", r.text());

    let body = support::rentals::rent_body_with(
        offer_id,
        &json!({"agent": true, "onstart": "echo mine > /dev/null"}),
    );
    let r = support::rentals::post(&d, &key, &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_owned();
    let pid = v["provider_instance_id"].as_str().unwrap().to_owned();
    let at_vast = sb
        .vast_api("GET", &format!("/api/v0/instances/{pid}/"), "")
        .await["instances"]
        .clone();
    let onstart = at_vast["onstart"].as_str().unwrap().to_owned();
    let env: std::collections::BTreeMap<String, String> = at_vast["extra_env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
        .collect();
    let token = env["GPUPROXY_AGENT_TOKEN"].clone();
    assert!(token.starts_with("gpa_"), "{env:?}");
    assert_eq!(env["GPUPROXY_INSTANCE_ID"], id);
    assert_eq!(env["GPUPROXY_URL"], url);
    assert!(onstart.starts_with("# gpuproxy agent"), "{onstart}");
    assert!(onstart.ends_with("echo mine > /dev/null"), "{onstart}");
    assert!(
        onstart.contains(&sha) && !onstart.contains(&token),
        "{onstart}"
    );
    assert!(!d.log().contains(&token), "the token is never logged");

    // Vast runs it: a tampered checksum installs nothing; the real one starts the agent
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, std::fs::read(d.dir.join("server.crt")).unwrap()).unwrap();
    let run = |script: String, sub: &str| {
        let bin = dir.path().join(sub);
        let mut c = std::process::Command::new("sh");
        c.arg("-c")
            .arg(script)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .env("GPUPROXY_CACERT", &ca)
            .env("GPUPROXY_AGENT_DIR", &bin)
            .env("GPUPROXY_AGENT_LOG", dir.path().join(format!("{sub}.log")));
        assert!(c.status().unwrap().success());
        bin.join("gpuproxy-agent")
    };
    let tampered = run(onstart.replace(&sha, &"0".repeat(64)), "tampered");
    let real = run(onstart.clone(), "real");
    support::eventually("the installed agent connects", || async {
        let v = db.events_of("installer", "instance.agent_connected").await;
        (!v.is_empty()).then_some(())
    })
    .await;
    assert!(!tampered.exists(), "a mismatched download is not installed");
    assert!(real.exists());
    let v = call(&d, &key, "GET", &format!("/v1/instances/{id}"), "", None)
        .await
        .json();
    assert_eq!(v["agent"]["connected"], true, "{v}");
    // stop the agent this test started (it runs detached)
    let _ = std::process::Command::new("pkill")
        .args(["-f", real.to_str().unwrap()])
        .status();

    // io.net starts no script: the instance shows the line to run, and no token
    let ionet = support::rentals::cheapest(&d, &key, "ionet", "").await;
    let body = support::rentals::rent_body_with(
        ionet["id"].as_str().unwrap(),
        &json!({"agent": true, "duration_hours": 1}),
    );
    let r = support::rentals::post(&d, &key, &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let io = r.json()["id"].as_str().unwrap().to_owned();
    let v = call(&d, &key, "GET", &format!("/v1/instances/{io}"), "", None)
        .await
        .json();
    let line = v["agent"]["install"].as_str().unwrap();
    assert!(
        line.starts_with(&format!("curl -fsSL {url}/v1/agent/install.sh |")),
        "{line}"
    );
    assert!(line.contains(&io) && !line.contains("gpa_"), "{line}");
    assert_eq!(v["agent"]["connected"], false);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
