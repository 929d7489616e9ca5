//! Signals against the real binary: SIGTERM drains (in-flight requests finish, new connections are
//! refused, idle ones closed, HTTP/2 gets GOAWAY), a second signal exits at once, SIGHUP reloads
//! the certificate without dropping connections and refuses a broken pair.

use crate::support;

use std::time::Duration;

use support::client::Conn;
use support::daemon::{DaemonProc, Opts, replace_cert};
use support::eventually;

fn debug_opts(grace_ms: u64) -> Opts {
    Opts {
        set: vec![
            "server.debug_routes=true".into(),
            format!("server.shutdown_grace_ms={grace_ms}"),
        ],
        ..Opts::default()
    }
}

/// `/stats` from the metrics listener.
async fn stats(d: &DaemonProc) -> serde_json::Value {
    let mut c = support::client::Conn::plain(d.metrics, false)
        .await
        .unwrap();
    c.get("/stats").await.unwrap().json()
}

/// Waits until the daemon has started handling `n` requests in total.
async fn requests_seen(d: &DaemonProc, n: u64) {
    eventually("in-flight request to reach the handler", || async {
        let v = stats(d).await;
        (v["requests"]["total"].as_u64()? >= n).then_some(())
    })
    .await;
}

async fn requests_total(d: &DaemonProc) -> u64 {
    stats(d).await["requests"]["total"].as_u64().unwrap()
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_refuses_new_connections() {
    let mut d = DaemonProc::start(debug_opts(20_000)).await;
    let before = requests_total(&d).await;

    // a slow request on HTTP/1.1 and one on HTTP/2
    let mut slow_h1 = Conn::tls(d.https, &[b"http/1.1"]).await.unwrap();
    let mut slow_h2 = Conn::tls(d.https, &[b"h2"]).await.unwrap();
    let h1_task = tokio::spawn(async move { slow_h1.get("/debug/sleep?ms=1500").await });
    let h2_task = tokio::spawn(async move { slow_h2.get("/debug/sleep?ms=1500").await });
    // an idle keep-alive connection and an idle HTTP/2 connection
    let mut idle = Conn::tls(d.https, &[b"http/1.1"]).await.unwrap();
    idle.get("/health").await.unwrap();
    let mut idle_h2 = Conn::tls(d.https, &[b"h2"]).await.unwrap();
    idle_h2.get("/health").await.unwrap();
    requests_seen(&d, before + 4).await;

    d.signal(libc::SIGTERM);

    // new connections are refused once the listener is closed
    eventually("connection refused", || async {
        tokio::net::TcpStream::connect(d.https)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    // the idle connections are closed: HTTP/1.1 at once, HTTP/2 after GOAWAY
    tokio::time::timeout(Duration::from_secs(5), idle.closed)
        .await
        .expect("idle keep-alive connection closed on drain")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), idle_h2.closed)
        .await
        .expect("idle HTTP/2 connection closed (GOAWAY) on drain")
        .unwrap();

    // the in-flight requests complete
    let r1 = h1_task
        .await
        .unwrap()
        .expect("in-flight h1 request completes");
    assert_eq!(r1.status, 200);
    let r2 = h2_task
        .await
        .unwrap()
        .expect("in-flight h2 request completes");
    assert_eq!(r2.status, 200);

    let status = d.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(d.log().contains("all connections drained"), "{}", d.log());
}

#[tokio::test]
async fn ready_turns_503_during_the_drain_delay() {
    let mut d = DaemonProc::start(Opts {
        set: vec!["server.drain_delay_ms=2000".into()],
        ..Opts::default()
    })
    .await;
    assert_eq!(support::client::get(d.https, "/ready").await.status, 200);
    d.signal(libc::SIGTERM);
    let r = eventually("/ready turns 503", || async {
        let r = support::client::get(d.https, "/ready").await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(r.json()["status"], "draining");
    // liveness is unaffected while draining
    assert_eq!(support::client::get(d.https, "/health").await.status, 200);
    let status = d.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn second_signal_exits_at_once() {
    let mut d = DaemonProc::start(debug_opts(60_000)).await;
    let mut slow = Conn::tls(d.https, &[b"http/1.1"]).await.unwrap();
    let before = requests_total(&d).await;
    let _task = tokio::spawn(async move { slow.get("/debug/sleep?ms=60000").await });
    requests_seen(&d, before + 1).await;
    d.signal(libc::SIGTERM);
    eventually("drain started", || async {
        d.log().contains("stop requested").then_some(())
    })
    .await;
    d.signal(libc::SIGINT);
    let status = d.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1), "forced exit status");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let d = DaemonProc::start(Opts::default()).await;
    let mut open = Conn::tls(d.https, &[b"http/1.1"]).await.unwrap();
    assert_eq!(open.peer_cert, d.cert.der);
    assert_eq!(open.get("/health").await.unwrap().status, 200);

    let new = support::certs::generate();
    replace_cert(&d, &new.cert_pem, &new.key_pem);
    d.signal(libc::SIGHUP);
    eventually("new connections see the new certificate", || async {
        let c = Conn::tls(d.https, &[b"h2"]).await.ok()?;
        (c.peer_cert == new.der).then_some(())
    })
    .await;
    // the connection opened before the reload still works
    assert_eq!(open.get("/health").await.unwrap().status, 200);

    // a broken pair (the key of another certificate) is refused, the current one stays
    let other = support::certs::generate();
    replace_cert(&d, &new.cert_pem, &other.key_pem);
    d.signal(libc::SIGHUP);
    eventually("the refused reload is counted", || async {
        d.scrape()
            .await
            .contains("gpuproxy_tls_reloads_total{result=\"error\"} 1")
            .then_some(())
    })
    .await;
    let c = Conn::tls(d.https, &[b"h2"]).await.unwrap();
    assert_eq!(c.peer_cert, new.der, "old pair still in use");
    assert!(
        d.log().contains("new TLS certificate refused"),
        "{}",
        d.log()
    );

    // garbage PEM likewise
    replace_cert(&d, "not a certificate", "nor a key");
    d.signal(libc::SIGHUP);
    eventually("second refused reload", || async {
        d.scrape()
            .await
            .contains("gpuproxy_tls_reloads_total{result=\"error\"} 2")
            .then_some(())
    })
    .await;
    let mut c = Conn::tls(d.https, &[b"h2"]).await.unwrap();
    assert_eq!(c.peer_cert, new.der);
    assert_eq!(c.get("/health").await.unwrap().status, 200);
    assert_eq!(open.get("/health").await.unwrap().status, 200);
}

/// Keeps requesting on one connection until the server says it closes (`Connection: close`, or
/// the connection will not take another request); returns (answered, failed).
async fn keep_requesting(mut c: Conn) -> (u64, u64, String) {
    use support::client::Unsent;
    let mut ok = 0;
    loop {
        match c
            .try_send(support::client::request(
                "GET",
                "/health",
                bytes::Bytes::new(),
            ))
            .await
        {
            Ok(r) => {
                ok += 1;
                if r.header("connection") == Some("close") {
                    return (ok, 0, String::new());
                }
            }
            Err(Unsent::NotSent(_)) => return (ok, 0, String::new()),
            Err(Unsent::Failed(e)) => return (ok, 1, format!("{e:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_request_on_keep_alive_connections() {
    let mut d = DaemonProc::start(Opts {
        set: vec!["log.access_log=false".into()],
        ..Opts::default()
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let alpn: &[&[u8]] = if i % 5 == 0 { &[b"h2"] } else { &[b"http/1.1"] };
        let c = Conn::tls(d.https, alpn).await.unwrap();
        if alpn[0] == b"h2" {
            // more HTTP/2 connections: 32 HTTP/1.1 and 40 HTTP/2 in all
            for _ in 0..4 {
                let c2 = Conn::tls(d.https, alpn).await.unwrap();
                tasks.push(tokio::spawn(keep_requesting(c2)));
            }
        }
        tasks.push(tokio::spawn(keep_requesting(c)));
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    d.signal(libc::SIGTERM);
    let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
    for t in tasks {
        let (o, f, e) = t.await.unwrap();
        ok += o;
        failed += f;
        if f > 0 {
            errors.push(e);
        }
    }
    eprintln!("through SIGTERM: {ok} answered, {failed} failed {errors:?}");
    assert!(ok > 100, "the load ran: {ok}");
    assert_eq!(failed, 0, "{errors:?}");
    let status = d.wait_exit(std::time::Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
}
