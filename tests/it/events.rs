//! The account event stream (`GET /v1/events`, issue 17), end to end: the daemon as a process
//! with PostgreSQL (through PgBouncer), Redis and the sandbox providers; rentals made over HTTP;
//! the stream read as Server-Sent Events.

use crate::support;
use crate::support::stack::Stack;

use std::time::Duration;

use serde_json::Value;
use support::accounts::TestDb;
use support::rentals::{account, call, rent_and_destroy};
use support::sandbox::Sandbox;
use support::services;
use support::sse::{Sse, SseEvent};
use support::ws;

const WAIT: Duration = Duration::from_secs(15);

fn is_status(e: &SseEvent, instance: &str, status: &str) -> bool {
    e.event == "instance.status_changed"
        && e.data["instance_id"] == instance
        && e.data["data"]["status"] == status
}

#[tokio::test(flavor = "multi_thread")]
async fn status_changes_stream_in_order_resume_without_gaps_and_stay_in_their_account() {
    let Stack {
        db,
        sb: _sandbox,
        d,
    } = Stack::start("ev1", &[], &["ratelimit.enabled=false"]).await;
    let a = account(&db, "alpha", 1000.0, 10);
    let b = account(&db, "beta", 1000.0, 10);

    let mut sa = Sse::open(d.https, &a, "/v1/events", None, None)
        .await
        .unwrap();
    let mut sb = Sse::open(d.https, &b, "/v1/events", None, None)
        .await
        .unwrap();
    let open = sa.next(WAIT).await.unwrap();
    assert_eq!(open.event, "open");
    assert_eq!(open.retry, Some(2000));
    let start = open.data["last_event_id"].as_i64().unwrap();
    assert_eq!(sb.next(WAIT).await.unwrap().event, "open");

    let id = rent_and_destroy(&d, &a).await;
    let got = sa.until(WAIT, |e| is_status(e, &id, "terminated")).await;
    // every event has the next id: nothing missing, nothing twice, in commit order
    let ids: Vec<i64> = got.iter().map(|e| e.id.unwrap()).collect();
    let expected: Vec<i64> = (start + 1..=start + got.len() as i64).collect();
    assert_eq!(ids, expected, "{got:#?}");
    // the statuses are the ledger's, in its order
    let statuses: Vec<&str> = got
        .iter()
        .filter(|e| e.event == "instance.status_changed")
        .map(|e| e.data["data"]["status"].as_str().unwrap())
        .collect();
    let ledger = call(&d, &a, "GET", &format!("/v1/instances/{id}"), "", None)
        .await
        .json();
    let mut ledger_statuses: Vec<&str> = ledger["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect();
    ledger_statuses.dedup();
    let mut stream_statuses = statuses.clone();
    stream_statuses.dedup();
    assert_eq!(stream_statuses, ledger_statuses, "{got:#?}\n{ledger:#?}");
    assert_eq!(statuses.first(), Some(&"pending"));
    for e in &got {
        assert_eq!(e.data["id"].as_i64(), e.id, "data.id is the event id");
        assert!(e.data["at"].as_str().unwrap().ends_with('Z'));
    }

    // resume after the second event: the rest again, from the log, then live
    let after = ids[1];
    let mut again = Sse::open(d.https, &a, "/v1/events", Some(after), None)
        .await
        .unwrap();
    assert_eq!(
        again.next(WAIT).await.unwrap().data["last_event_id"],
        after,
        "it starts where it was asked to"
    );
    let replay = again.until(WAIT, |e| is_status(e, &id, "terminated")).await;
    let replay_ids: Vec<i64> = replay.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(replay_ids, ids[2..].to_vec());
    // `?after=` does the same, and filters choose what is sent
    let mut filtered = Sse::open(
        d.https,
        &a,
        &format!("/v1/events?after={start}&types=instance.status_changed&instance={id}"),
        None,
        None,
    )
    .await
    .unwrap();
    filtered.next(WAIT).await.unwrap();
    let only = filtered
        .until(WAIT, |e| is_status(e, &id, "terminated"))
        .await;
    assert!(only.iter().all(|e| e.event == "instance.status_changed"));
    assert_eq!(only.len(), statuses.len());

    // account B saw none of it; its own event (a key revoked) reaches it alone
    let extra = db.cli(&["keys", "create", "--account", "beta"]);
    let public_id = extra["key"]["public_id"]
        .as_str()
        .or(extra["public_id"].as_str())
        .unwrap()
        .to_owned();
    db.cli(&["keys", "revoke", &public_id]);
    let e = sb.next(WAIT).await.expect("B's own event");
    assert_eq!(e.event, "key.revoked", "{e:?}");
    assert_eq!(e.data["data"]["public_id"], public_id.as_str());
    assert!(
        sa.next(Duration::from_millis(1500)).await.is_none(),
        "A never sees B's events"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_and_the_stream_cap_get_json_errors() {
    let Stack {
        db,
        sb: _sandbox,
        d,
    } = Stack::start(
        "ev2",
        &[],
        &[
            "ratelimit.enabled=false",
            "events.max_streams_per_account=2",
        ],
    )
    .await;
    let a = account(&db, "gamma", 100.0, 1);
    for (path, last, what) in [
        ("/v1/events?after=-3", None, "after"),
        ("/v1/events?types=instance.bogus", None, "types"),
        ("/v1/events?bogus=1", None, "bogus"),
        ("/v1/events", Some(-1), "Last-Event-ID"),
    ] {
        let Err((status, body)) = Sse::open(d.https, &a, path, last, None).await else {
            panic!("{path} opened");
        };
        assert_eq!(status, 400, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(what),
            "{v}"
        );
    }
    let Err((status, _)) = Sse::open(d.https, "gpx_nope", "/v1/events", None, None).await else {
        panic!("opened without a key");
    };
    assert_eq!(status, 401);
    let _one = Sse::open(d.https, &a, "/v1/events", None, None)
        .await
        .unwrap();
    let _two = Sse::open(d.https, &a, "/v1/events", None, None)
        .await
        .unwrap();
    let Err((status, body)) = Sse::open(d.https, &a, "/v1/events", None, None).await else {
        panic!("a third stream opened");
    };
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("stream_limit"), "{body}");
    // a stream closed frees its place
    drop(_one);
    support::eventually("the closed stream's place", || async {
        Sse::open(d.https, &a, "/v1/events", None, None).await.ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_closed_as_slow_consumer_and_others_keep_up() {
    let Stack {
        db,
        sb: _sandbox,
        d,
    } = Stack::start(
        "ev3",
        &[],
        &[
            "ratelimit.enabled=false",
            "events.poll_fallback_ms=200",
            "events.max_queue=1000",
        ],
    )
    .await;
    let slow = account(&db, "slowpoke", 100.0, 1);
    let other = account(&db, "prompt", 100.0, 1);
    // a small receive buffer, and nothing read after the first event
    let mut stalled = Sse::open(d.https, &slow, "/v1/events", None, Some(4096))
        .await
        .unwrap();
    let start = stalled.next(WAIT).await.unwrap().data["last_event_id"]
        .as_i64()
        .unwrap();
    let mut reader = Sse::open(d.https, &other, "/v1/events", None, None)
        .await
        .unwrap();
    reader.next(WAIT).await.unwrap();

    // about 40 MB: more than the socket buffers and hyper's hold
    db.write_events("slowpoke", 40_000, 1000).await;
    support::eventually(
        "the stalled stream to be dropped as slow_consumer",
        || async {
            let page = d.scrape().await;
            (support::metrics::value(
                &page,
                "gpuproxy_event_streams_closed_total{reason=\"slow_consumer\"}",
            ) >= 1.0)
                .then_some(())
        },
    )
    .await;
    // the other account's stream is not held up: its event arrives
    let extra = db.cli(&["keys", "create", "--account", "prompt"]);
    let public_id = extra["key"]["public_id"].as_str().unwrap().to_owned();
    db.cli(&["keys", "revoke", &public_id]);
    let e = reader.next(WAIT).await.expect("the other client's event");
    assert_eq!(e.event, "key.revoked");

    // the stalled client, reading again: what was buffered, in order, then the reason
    let mut expect = start + 1;
    let close = loop {
        let e = stalled
            .next(WAIT)
            .await
            .expect("buffered events, then close");
        if e.event == "close" {
            break e;
        }
        assert_eq!(e.id, Some(expect), "no gap in what was delivered");
        expect += 1;
    };
    assert_eq!(close.data["reason"], "slow_consumer");
    let last = close.data["last_event_id"].as_i64().unwrap();
    assert_eq!(last, expect - 1);
    assert!(last < start + 40_000, "it was dropped before the end");
    assert!(
        stalled.next(Duration::from_secs(2)).await.is_none(),
        "and ended"
    );
    // resuming from there reads the log on: nothing lost
    let mut resumed = Sse::open(d.https, &slow, "/v1/events", Some(last), None)
        .await
        .unwrap();
    resumed.next(WAIT).await.unwrap();
    assert_eq!(resumed.next(WAIT).await.unwrap().id, Some(last + 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn events_cross_daemons_through_redis_survive_its_loss_and_streams_end_on_drain() {
    // its own services: this test kills Redis
    let s = services::Services::start();
    let db = TestDb::new(&s, "ev4");
    let sandbox = Sandbox::start(&[]);
    let a = account(&db, "delta", 1000.0, 10);
    // the writer and a reader that polls only once a minute: what reaches it fast came
    // through Redis
    let slow_poll = ["ratelimit.enabled=false", "events.poll_fallback_ms=60000"];
    let writer = sandbox.daemon(&db, &slow_poll).await;
    let via_redis = sandbox.daemon(&db, &slow_poll).await;
    let polling = sandbox
        .daemon(
            &db,
            &["ratelimit.enabled=false", "events.poll_fallback_ms=500"],
        )
        .await;
    let mut on_redis = Sse::open(via_redis.https, &a, "/v1/events", None, None)
        .await
        .unwrap();
    let mut on_poll = Sse::open(polling.https, &a, "/v1/events", None, None)
        .await
        .unwrap();
    let start = on_redis.next(WAIT).await.unwrap().data["last_event_id"]
        .as_i64()
        .unwrap();
    on_poll.next(WAIT).await.unwrap();

    let id = rent_and_destroy(&writer, &a).await;
    let got = on_redis
        .until(WAIT, |e| is_status(e, &id, "terminated"))
        .await;
    assert_eq!(got[0].id, Some(start + 1));
    let end = got.last().unwrap().id.unwrap();
    let got = on_poll.until(WAIT, |e| e.id == Some(end)).await;
    assert_eq!(got.len() as i64, end - start);

    // Redis gone: the polling daemon still gets every event, within its poll
    s.redis.kill();
    let id = rent_and_destroy(&writer, &a).await;
    let got = on_poll
        .until(WAIT, |e| is_status(e, &id, "terminated"))
        .await;
    let ids: Vec<i64> = got.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (end + 1..=end + ids.len() as i64).collect::<Vec<_>>());
    let end = *ids.last().unwrap();
    // Redis back: the daemon that missed the notices reads what it missed at once
    s.redis.start();
    let got = on_redis.until(WAIT, |e| e.id == Some(end)).await;
    assert_eq!(
        got[0].id,
        Some(start + (end - start) - ids.len() as i64 + 1)
    );

    // SIGTERM: the stream ends with its reconnect hint
    polling.signal(libc::SIGTERM);
    let close = on_poll.until(WAIT, |e| e.event == "close").await;
    let close = close.last().unwrap();
    assert_eq!(close.data["reason"], "draining");
    assert_eq!(close.retry, Some(2000));
    assert_eq!(close.data["last_event_id"], end);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_carries_the_same_feed_resumes_and_closes_with_a_code() {
    let Stack {
        db,
        sb: _sandbox,
        d,
    } = Stack::start(
        "ev5",
        &[],
        &[
            "ratelimit.enabled=false",
            "events.ping_interval_ms=300",
            "events.pong_timeout_ms=300",
        ],
    )
    .await;
    let a = account(&db, "echo", 1000.0, 10);
    let b = account(&db, "foxtrot", 1000.0, 10);
    let mut wa = ws::open(d.https, &a, "/v1/events", &[]).await.unwrap();
    let mut wb = ws::open(d.https, &b, "/v1/events", &[]).await.unwrap();
    let open = ws::next(&mut wa, WAIT).await.unwrap();
    assert_eq!(open["type"], "open");
    let start = open["last_event_id"].as_i64().unwrap();
    ws::next(&mut wb, WAIT).await.unwrap();

    // a rental's status changes arrive in order, ids without gaps, as the SSE data; both
    // clients read all along (answering the 300 ms pings), B getting nothing
    let read_a = async {
        let mut got = Vec::new();
        loop {
            let e = ws::next(&mut wa, WAIT).await.unwrap();
            got.push(e["id"].as_i64().unwrap());
            if e["type"] == "instance.status_changed" && e["data"]["status"] == "terminated" {
                break (got, e["instance_id"].clone());
            }
        }
    };
    let work = async { tokio::join!(rent_and_destroy(&d, &a), read_a) };
    let (id, (got, ended)) = tokio::select! {
        r = work => r,
        m = ws::next(&mut wb, WAIT * 2) => panic!("account B got {m:?}"),
    };
    assert_eq!(ended, id.as_str());
    assert_eq!(
        got,
        (start + 1..=start + got.len() as i64).collect::<Vec<_>>()
    );
    // account B's stream is still open (its pings were answered meanwhile)
    let quiet = tokio::time::timeout(Duration::from_millis(700), ws::next(&mut wb, WAIT)).await;
    assert!(quiet.is_err(), "account B got {quiet:?}");

    // resume from the log with ?after=, filtered to status changes of that instance
    let path = format!("/v1/events?after={start}&types=instance.status_changed&instance={id}");
    let mut again = ws::open(d.https, &a, &path, &[]).await.unwrap();
    assert_eq!(
        ws::next(&mut again, WAIT).await.unwrap()["last_event_id"],
        start
    );
    let first = ws::next(&mut again, WAIT).await.unwrap();
    assert_eq!(first["type"], "instance.status_changed");
    assert!(first["id"].as_i64().unwrap() > start);

    // a client that stops answering pings is closed with a code and a reason
    let mut silent = ws::open(d.https, &a, "/v1/events", &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let closed = loop {
        match ws::next(&mut silent, WAIT).await {
            Ok(_) => continue,
            Err(c) => break c,
        }
    };
    assert_eq!(closed, (1008, "ping_timeout".to_owned()));

    // a client's ping is answered with its payload; its close is answered with a close
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let mut p = ws::open(d.https, &a, "/v1/events", &[]).await.unwrap();
        ws::next(&mut p, WAIT).await.unwrap();
        p.send(Message::Ping("hello".into())).await.unwrap();
        loop {
            match tokio::time::timeout(WAIT, p.next()).await.unwrap() {
                Some(Ok(Message::Pong(b))) => {
                    assert_eq!(&b[..], b"hello");
                    break;
                }
                Some(Ok(Message::Ping(_))) => continue,
                other => panic!("a pong, not {other:?}"),
            }
        }
        p.send(Message::Close(None)).await.unwrap();
        assert_eq!(ws::next(&mut p, WAIT).await, Err((1000, String::new())));
        // a message over 64 KiB is refused (1009), whatever is in it
        let mut big = ws::open(d.https, &a, "/v1/events", &[]).await.unwrap();
        ws::next(&mut big, WAIT).await.unwrap();
        big.send(Message::text("x".repeat(70_000))).await.unwrap();
        assert_eq!(
            ws::next(&mut big, WAIT).await,
            Err((1009, "message too big".to_owned()))
        );
    }

    // refused upgrades are JSON errors
    let Err((status, body)) = ws::open(d.https, "gpx_nope", "/v1/events", &[]).await else {
        panic!("a bad key upgraded")
    };
    assert_eq!(status, 401, "{body}");
    let Err((status, body)) = ws::open(d.https, &a, "/v1/events?after=x", &[]).await else {
        panic!("a bad resume point upgraded")
    };
    assert_eq!(status, 400);
    assert!(body.contains("after"), "{body}");

    // SIGTERM: the stream ends with 1001 and the reconnect reason (a fresh one: `wa` went
    // unread above, so it answered no ping and is closed as ping_timeout too)
    let mut wd = ws::open(d.https, &a, "/v1/events", &[]).await.unwrap();
    ws::next(&mut wd, WAIT).await.unwrap();
    d.signal(libc::SIGTERM);
    let closed = loop {
        match ws::next(&mut wd, WAIT).await {
            Ok(_) => continue,
            Err(c) => break c,
        }
    };
    assert_eq!(closed, (1001, "draining".to_owned()));
    drop(wa);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_passes_a_token_in_the_url_or_a_subprotocol_never_an_api_key() {
    let Stack {
        db,
        sb: _sandbox,
        d,
    } = Stack::start("ev6", &[], &["ratelimit.enabled=false"]).await;
    let a = account(&db, "golf", 1000.0, 10);
    let r = call(&d, &a, "POST", "/v1/auth/token", "", None).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let jwt = r.json()["token"].as_str().unwrap().to_owned();

    // EventSource: ?access_token=, no Authorization header
    let mut sse = Sse::open(
        d.https,
        "",
        &format!("/v1/events?access_token={jwt}"),
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(sse.next(WAIT).await.unwrap().event, "open");
    // WebSocket: the token as a subprotocol, with ours beside it (and ours is what is answered)
    let protocols = format!("gpuproxy.events, bearer.{jwt}");
    let mut w = ws::open(
        d.https,
        "",
        "/v1/events",
        &[("sec-websocket-protocol", &protocols)],
    )
    .await
    .unwrap();
    assert_eq!(ws::next(&mut w, WAIT).await.unwrap()["type"], "open");
    let id = rent_and_destroy(&d, &a).await;
    loop {
        let e = ws::next(&mut w, WAIT).await.unwrap();
        if e["instance_id"] == id && e["data"]["status"] == "terminated" {
            break;
        }
    }

    // an API key never travels in a URL; a token without our subprotocol is refused; a bad
    // token is 401
    let Err((status, body)) = Sse::open(
        d.https,
        "",
        &format!("/v1/events?access_token={a}"),
        None,
        None,
    )
    .await
    else {
        panic!("an API key in the URL opened a stream")
    };
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("never an API key"), "{body}");
    let only_token = format!("bearer.{jwt}");
    let Err((status, body)) = ws::open(
        d.https,
        "",
        "/v1/events",
        &[("sec-websocket-protocol", &only_token)],
    )
    .await
    else {
        panic!("a token without gpuproxy.events upgraded")
    };
    assert_eq!(status, 400, "{body}");
    let Err((status, _)) =
        Sse::open(d.https, "", "/v1/events?access_token=a.b.c", None, None).await
    else {
        panic!("a bad token opened a stream")
    };
    assert_eq!(status, 401);
    // the token never reaches the log
    drop((sse, w));
    assert!(
        !d.log().contains(&jwt[jwt.len() - 20..]),
        "the token is in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_near_its_end_gets_one_expiring_event_per_end_time() {
    let Stack {
        db,
        sb: _sandbox,
        d,
    } = Stack::start(
        "ev7",
        &[],
        &[
            "ratelimit.enabled=false",
            "rentals.reconcile_interval_ms=200",
            // 2 h: a 1-hour rental is near its end from the start
            "events.expiring_notice_ms=7200000",
        ],
    )
    .await;
    let a = account(&db, "hotel", 1000.0, 10);
    let mut stream = Sse::open(
        d.https,
        &a,
        "/v1/events?types=instance.expiring",
        None,
        None,
    )
    .await
    .unwrap();
    stream.next(WAIT).await.unwrap();
    let offer = support::rentals::cheapest(&d, &a, "vastai", "").await;
    let body = serde_json::json!({"offer_id": offer["id"], "image": "pytorch/pytorch:latest",
        "disk_gb": 20, "max_duration_hours": 1, "ssh_public_key": format!("{} t@e", support::rentals::KEY_A)});
    let r = support::rentals::post(&d, &a, &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let e = stream.next(WAIT).await.expect("instance.expiring");
    assert_eq!(e.event, "instance.expiring");
    assert_eq!(e.data["instance_id"], id);
    let first_end = e.data["data"]["expires_at"].as_str().unwrap().to_owned();
    let left = e.data["data"]["seconds_left"].as_f64().unwrap();
    assert!(left > 3000.0 && left <= 3600.0, "{left}");
    // the next rounds (every 200 ms) write no second notice for the same end
    assert!(
        stream.next(Duration::from_millis(1500)).await.is_none(),
        "a second notice for one end time"
    );
    // an extension moves the end: a new notice for the new end
    let r = call(
        &d,
        &a,
        "POST",
        &format!("/v1/instances/{id}/extend"),
        r#"{"hours": 1}"#,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let e = stream.next(WAIT).await.expect("a notice for the new end");
    assert_eq!(e.data["instance_id"], id);
    assert_ne!(e.data["data"]["expires_at"].as_str().unwrap(), first_end);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_over_http2_carries_the_feed_beside_other_streams() {
    let Stack {
        db,
        sb: _sandbox,
        d,
    } = Stack::start("ev8", &[], &["ratelimit.enabled=false"]).await;
    let a = account(&db, "hotel", 1000.0, 10);
    let (mut w, mut send) = ws::open_h2(d.https, &a, "/v1/events").await.unwrap();
    let open = ws::next(&mut w, WAIT).await.unwrap();
    assert_eq!(open["type"], "open");
    let start = open["last_event_id"].as_i64().unwrap();
    // the same connection serves other requests while the WebSocket stream is open
    let health = send
        .send_request(
            hyper::Request::get("https://localhost/health")
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let id = rent_and_destroy(&d, &a).await;
    let mut got = Vec::new();
    loop {
        let e = ws::next(&mut w, WAIT).await.unwrap();
        got.push(e["id"].as_i64().unwrap());
        if e["type"] == "instance.status_changed"
            && e["instance_id"] == id
            && e["data"]["status"] == "terminated"
        {
            break;
        }
    }
    assert_eq!(
        got,
        (start + 1..=start + got.len() as i64).collect::<Vec<_>>()
    );
    // refusals are the usual JSON errors, on the CONNECT's answer
    let Err((status, body)) = ws::open_h2(d.https, "gpx_nope", "/v1/events").await else {
        panic!("a bad key upgraded")
    };
    assert_eq!(status, 401, "{body}");
    let Err((status, body)) = ws::open_h2(d.https, &a, "/v1/events?types=nope").await else {
        panic!("a bad filter upgraded")
    };
    assert_eq!(status, 400);
    assert!(body.contains("types"), "{body}");
    // SIGTERM: 1001 and the reconnect reason, over HTTP/2 too
    d.signal(libc::SIGTERM);
    let closed = loop {
        match ws::next(&mut w, WAIT).await {
            Ok(_) => continue,
            Err(c) => break c,
        }
    };
    assert_eq!(closed, (1001, "draining".to_owned()));
}

/// Access ends streams: revoking a key closes its SSE and WebSocket streams on every daemon
/// (the revocation reaches the other daemon through Redis) within about a second, with the
/// refusal as the reason (WebSocket 1008); suspending an account closes its token's stream;
/// a stream opened with a token ends when the token expires.
#[tokio::test(flavor = "multi_thread")]
async fn streams_end_when_their_access_ends() {
    let cfg = ["ratelimit.enabled=false", "auth.jwt_ttl_ms=3000"];
    let Stack { db, sb, d } = Stack::start("ev_access", &[], &cfg).await;
    let d2 = sb.daemon(&db, &cfg).await;
    let a = account(&db, "revoked", 100.0, 1);
    let public_id = a.split('_').nth(1).unwrap().to_owned();
    let mut sse = Sse::open(d2.https, &a, "/v1/events", None, None)
        .await
        .unwrap();
    assert_eq!(sse.next(WAIT).await.unwrap().event, "open");
    let mut w = ws::open(d.https, &a, "/v1/events", &[]).await.unwrap();
    assert_eq!(ws::next(&mut w, WAIT).await.unwrap()["type"], "open");

    let at = std::time::Instant::now();
    let prefix = sb.redis_prefix();
    let reach = [("GPUPROXY_REDIS_KEY_PREFIX", prefix.as_str())];
    db.cli_env(&["keys", "revoke", &public_id], &reach);
    let seen = sse
        .until(Duration::from_secs(3), |e| e.event == "close")
        .await;
    assert_eq!(
        seen.last().unwrap().data["reason"],
        "key_revoked",
        "{seen:?}"
    );
    let closed = loop {
        match ws::next(&mut w, Duration::from_secs(3)).await {
            Ok(_) => continue, // the key.revoked event itself may come first
            Err(c) => break c,
        }
    };
    assert_eq!(closed, (1008, "key_revoked".to_owned()));
    // the CLI's revocation notice, the recheck and the close: well within a second or two here
    assert!(
        at.elapsed() < Duration::from_secs(3),
        "streams outlived the revocation by {:?}",
        at.elapsed()
    );
    assert!(
        sse.next(Duration::from_millis(500)).await.is_none(),
        "nothing after close"
    );

    // a token's stream: ended by the account's suspension
    let b = account(&db, "suspended", 100.0, 1);
    let token = |key: String| {
        let d = &d;
        async move {
            let r = call(d, &key, "POST", "/v1/auth/token", "", None).await;
            assert_eq!(r.status, 200, "{:?}", r.json());
            r.json()["token"].as_str().unwrap().to_owned()
        }
    };
    let jwt = token(b.clone()).await;
    let mut sse = Sse::open(d2.https, &jwt, "/v1/events", None, None)
        .await
        .unwrap();
    assert_eq!(sse.next(WAIT).await.unwrap().event, "open");
    db.cli_env(&["accounts", "suspend", "suspended"], &reach);
    let seen = sse
        .until(Duration::from_secs(3), |e| e.event == "close")
        .await;
    assert_eq!(seen.last().unwrap().data["reason"], "account_suspended");

    // a token's stream ends when the token expires (auth.jwt_ttl_ms = 3 s)
    let c = account(&db, "expiring", 100.0, 1);
    let jwt = token(c).await;
    let mut sse = Sse::open(d.https, &jwt, "/v1/events", None, None)
        .await
        .unwrap();
    assert_eq!(sse.next(WAIT).await.unwrap().event, "open");
    let seen = sse
        .until(Duration::from_secs(6), |e| e.event == "close")
        .await;
    assert_eq!(seen.last().unwrap().data["reason"], "token_expired");
}

/// A client that stops reading behind HAProxy: what its stream sends fills HAProxy's and the
/// kernel's buffers, then the daemon's writes wait and the stream's queue stops draining;
/// `events.max_lag_ms` later the stream is cut (its connection closed), the daemon's memory
/// goes back near where it was, other streams are not held up, and the client resumes from the
/// log without a gap.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_stops_reading_behind_haproxy_is_cut_and_its_memory_returned() {
    use support::metrics::value;
    use support::topology::Topology;
    let s = services::shared();
    let db = TestDb::new(s, "ev_cut");
    let sandbox = Sandbox::start(&[]);
    let t = Topology::start(
        &sandbox,
        &db,
        1,
        &[
            "ratelimit.enabled=false",
            "events.poll_fallback_ms=200",
            "events.max_lag_ms=2000",
            "events.max_queue=100000",
        ],
        &[],
    )
    .await;
    let d = t.daemon(0);
    let front = t.haproxy.front;
    let stalls = account(&db, "stalls", 100.0, 1);
    let other = account(&db, "keepsup", 100.0, 1);
    // small events, so the stream's writes keep up with the burst until the buffers between it
    // and the client are full: then its writes wait, its queue fills (events.max_queue_bytes)
    // and it cannot even write its `close`
    const N: i64 = 200_000;
    const CHUNK: i64 = 500;
    const PAD: i32 = 100;

    // a reader that keeps up, warmed with a burst like the one to come, then the baseline
    let mut reader = Sse::open_from(Some("127.0.0.2"), front, &other, "/v1/events", None, None)
        .await
        .unwrap();
    let first = reader.next(WAIT).await.unwrap().data["last_event_id"]
        .as_i64()
        .unwrap();
    db.write_events("keepsup", 500, PAD).await;
    let got = reader.until(WAIT, |e| e.id == Some(first + 500)).await;
    assert_eq!(got.len(), 500);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = d.rss_kib();

    // a small receive buffer, and nothing read after the open event
    let mut stalled = Sse::open_from(
        Some("127.0.0.3"),
        front,
        &stalls,
        "/v1/events",
        None,
        Some(4096),
    )
    .await
    .unwrap();
    let start = stalled.next(WAIT).await.unwrap().data["last_event_id"]
        .as_i64()
        .unwrap();
    // events trickle in (a chunk every 50 ms): the stream writes each as it comes until the
    // buffers are full, then its queue fills and waits
    let mut written = 0;
    let page = loop {
        assert!(written < N, "{N} events written and the stream was not cut");
        db.write_events("stalls", CHUNK, PAD).await;
        written += CHUNK;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let page = d.scrape().await;
        if value(&page, "gpuproxy_event_streams_cut_total") >= 1.0 {
            break page;
        }
    };
    assert_eq!(
        value(
            &page,
            "gpuproxy_event_streams_closed_total{reason=\"slow_consumer\"}"
        ),
        1.0
    );
    support::eventually("the stalled stream's connection to close", || async {
        let page = d.scrape().await;
        (value(
            &page,
            "gpuproxy_connections_closed_total{reason=\"slow_consumer\"}",
        ) == 1.0
            && value(&page, "gpuproxy_event_streams") == 1.0)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_cut = d.rss_kib();

    // the other account's stream was not held up
    db.write_events("keepsup", 1, 10).await;
    assert_eq!(
        reader.next(WAIT).await.unwrap().id,
        Some(first + 501),
        "the reader's next event"
    );

    // the stalled client, reading again: what sat in the buffers, in order, then the end
    let mut last = start;
    while let Some(e) = stalled.next(Duration::from_secs(5)).await {
        assert_eq!(e.id, Some(last + 1), "no gap in what was delivered");
        last += 1;
    }
    let buffered = last - start;
    assert!(
        buffered < written,
        "it was cut before the end ({buffered} of {written})"
    );
    // resuming from there reads the log on to the end: nothing lost
    let mut resumed = Sse::open_from(
        Some("127.0.0.3"),
        front,
        &stalls,
        "/v1/events",
        Some(last),
        None,
    )
    .await
    .unwrap();
    resumed.next(WAIT).await.unwrap();
    let rest = resumed.until(WAIT, |e| e.id == Some(start + written)).await;
    assert_eq!(rest.len() as i64, start + written - last);
    assert_eq!(rest[0].id, Some(last + 1));
    drop(resumed);
    support::eventually("the resumed stream to end", || async {
        (value(&d.scrape().await, "gpuproxy_event_streams") == 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_catch_up = d.rss_kib();
    eprintln!(
        "stalled behind HAProxy: {buffered} events (~{} KiB) delivered before the cut; \
         RSS baseline {baseline} KiB, after the cut {after_cut} KiB, after the catch-up \
         {after_catch_up} KiB",
        buffered * (PAD as i64 + 120) / 1024
    );
    for (when, rss) in [("the cut", after_cut), ("the catch-up", after_catch_up)] {
        assert!(
            rss < baseline + 16 * 1024,
            "RSS after {when}: {rss} KiB, baseline {baseline} KiB"
        );
    }
}

/// Over HTTP/2, a client that keeps its connection alive but never opens its stream's
/// flow-control window: the socket takes every write (the write timeout cannot fire) while the
/// stream's events wait; `events.max_lag_ms` later its connection is told GOAWAY and closed
/// `connections.force_close_after_ms` after that.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_stream_whose_window_is_never_opened_is_cut() {
    use support::metrics::value;
    let Stack { db, sb: _sb, d } = Stack::start(
        "ev_h2cut",
        &[],
        &[
            "ratelimit.enabled=false",
            "events.poll_fallback_ms=200",
            "events.max_lag_ms=1000",
            "connections.force_close_after_ms=1000",
        ],
    )
    .await;
    let token = account(&db, "windowless", 100.0, 1);
    let connector = tokio_rustls::TlsConnector::from(support::testkit::insecure_client_config(
        &[b"h2"],
        rustls::DEFAULT_VERSIONS,
    ));
    let tcp = tokio::net::TcpStream::connect(d.https).await.unwrap();
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    // a 16 KiB window for the stream, never opened further: its body is never read
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(16 * 1024)
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("https://localhost:{}/v1/events", d.https.port()))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _unread = resp.into_body();

    // far more than the window
    db.write_events("windowless", 100, 1000).await;
    support::eventually("the stalled stream to be cut", || async {
        (value(&d.scrape().await, "gpuproxy_event_streams_cut_total") >= 1.0).then_some(())
    })
    .await;
    tokio::time::timeout(WAIT, conn)
        .await
        .expect("the connection closed")
        .unwrap()
        .ok();
    support::eventually("the stream to be gone", || async {
        (value(&d.scrape().await, "gpuproxy_event_streams") == 0.0).then_some(())
    })
    .await;
}
