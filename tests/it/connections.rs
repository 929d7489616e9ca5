//! Connection governance end to end against the real binary: per-IP and global caps, counts after
//! closes and resets, header/idle timeouts and the reaper, PROXY protocol v1/v2, the fd-limit check
//! at start, and a 15,000-connection hold.

use crate::support;

use std::process::Command;
use std::time::Duration;

use support::client::{Conn, connect_from};
use support::daemon::{DaemonProc, Opts};
use support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn opts(plain: bool, set: &[&str]) -> Opts {
    Opts {
        plain,
        set: set.iter().map(|s| s.to_string()).collect(),
        ..Opts::default()
    }
}

/// `/stats` from the metrics listener (it includes the top clients).
async fn stats(d: &DaemonProc) -> serde_json::Value {
    let mut c = Conn::plain(d.metrics, false).await.unwrap();
    c.get("/stats").await.unwrap().json()
}

/// Reads until EOF (or error), returning what arrived; fails the test if the server keeps it open.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("server closed the connection");
    out
}

#[tokio::test]
async fn per_ip_cap_refuses_the_next_connection_from_that_ip_only() {
    let d = DaemonProc::start(opts(true, &["connections.max_per_ip=3"])).await;
    let addr = d.http.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Conn::plain_over(connect_from("127.0.0.2", addr).await.unwrap(), false)
            .await
            .unwrap();
        assert_eq!(c.get("/health").await.unwrap().status, 200);
        held.push(c);
    }
    // the 4th from 127.0.0.2 gets a minimal 503 and is closed
    let mut s = connect_from("127.0.0.2", addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply.contains("connection: close") && reply.contains("\"over_capacity\""),
        "{reply}"
    );
    // another address is still served
    let mut other = Conn::plain_over(connect_from("127.0.0.3", addr).await.unwrap(), false)
        .await
        .unwrap();
    assert_eq!(other.get("/health").await.unwrap().status, 200);

    let v = stats(&d).await;
    assert_eq!(v["connections"]["rejected"]["per_ip_cap"], 1, "{v}");
    assert_eq!(v["connections"]["open"], 4, "{v}");
    assert_eq!(v["top_clients"][0]["client"], "127.0.0.2");
    assert_eq!(v["top_clients"][0]["connections"], 3);
    assert!(
        d.scrape()
            .await
            .contains("gpuproxy_connections_rejected_total{reason=\"per_ip_cap\"} 1")
    );

    // an abrupt reset frees its place too
    let s = connect_from("127.0.0.2", addr).await; // refused again while 3 are held
    drop(s);
    drop(held.pop()); // orderly close
    let rst = held.pop().unwrap();
    drop(rst);
    eventually("counts drop after close and reset", || async {
        let v = stats(&d).await;
        (v["connections"]["open"] == 2).then_some(())
    })
    .await;
    let mut again = Conn::plain_over(connect_from("127.0.0.2", addr).await.unwrap(), false)
        .await
        .unwrap();
    assert_eq!(again.get("/health").await.unwrap().status, 200);
}

#[tokio::test]
async fn reset_connections_leave_the_table() {
    let d = DaemonProc::start(opts(true, &[])).await;
    let addr = d.http.unwrap();
    for i in 0..20 {
        let s = connect_from("127.0.0.4", addr).await.unwrap();
        let mut s = s;
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await.unwrap();
        if i % 2 == 0 {
            // SO_LINGER 0: close sends RST
            s.set_zero_linger().unwrap();
        }
        drop(s);
    }
    eventually("all closed or reset connections removed", || async {
        (stats(&d).await["connections"]["open"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn global_cap_refuses_beyond_the_limit() {
    let d = DaemonProc::start(opts(false, &["connections.max=3"])).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let tcp = connect_from(&format!("127.0.0.{}", 10 + i), d.https)
            .await
            .unwrap();
        let mut c = Conn::tls_over(tcp, &[b"h2"], rustls::DEFAULT_VERSIONS)
            .await
            .unwrap();
        assert_eq!(c.get("/health").await.unwrap().status, 200);
        held.push(c);
    }
    let tcp = connect_from("127.0.0.20", d.https).await.unwrap();
    assert!(
        Conn::tls_over(tcp, &[b"h2"], rustls::DEFAULT_VERSIONS)
            .await
            .is_err(),
        "a TLS connection over the cap is closed at once"
    );
    let v = stats(&d).await;
    assert_eq!(v["connections"]["rejected"]["global_cap"], 1, "{v}");
    assert_eq!(v["connections"]["max"], 3);
    drop(held.pop());
    eventually("a place frees up", || async {
        let tcp = connect_from("127.0.0.21", d.https).await.ok()?;
        let mut c = Conn::tls_over(tcp, &[b"h2"], rustls::DEFAULT_VERSIONS)
            .await
            .ok()?;
        (c.get("/health").await.ok()?.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn slow_headers_and_silent_connections_are_cut() {
    let d = DaemonProc::start(opts(
        true,
        &[
            "server.header_read_timeout_ms=600",
            "connections.reap_interval_ms=100",
        ],
    ))
    .await;
    let addr = d.http.unwrap();
    // slowloris: part of a request head, then nothing
    let mut slow = connect_from("127.0.0.30", addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap();
    read_to_close(&mut slow).await;
    // a connection that never says anything
    let mut silent = connect_from("127.0.0.31", addr).await.unwrap();
    read_to_close(&mut silent).await;
    // and the same over TLS: handshake done, then a partial head
    let tcp = connect_from("127.0.0.32", d.https).await.unwrap();
    let tls = Conn::tls_over(tcp, &[b"http/1.1"], rustls::DEFAULT_VERSIONS)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), tls.closed)
        .await
        .expect("silent TLS connection closed")
        .unwrap();
    let v = stats(&d).await;
    assert!(
        v["connections"]["closed"]["header_timeout"]
            .as_u64()
            .unwrap()
            >= 3,
        "{v}"
    );
}

#[tokio::test]
async fn idle_connections_are_reaped_but_active_ones_are_not() {
    let d = DaemonProc::start(opts(
        true,
        &[
            "connections.idle_timeout_ms=700",
            "connections.reap_interval_ms=100",
            "connections.park_after_ms=200",
            "server.debug_routes=true",
        ],
    ))
    .await;
    let addr = d.http.unwrap();
    let mut idle = Conn::plain(addr, false).await.unwrap();
    assert_eq!(idle.get("/health").await.unwrap().status, 200);
    // a request that runs well past the idle timeout is not touched
    let mut busy = Conn::plain(addr, false).await.unwrap();
    let busy_req = tokio::spawn(async move {
        let r = busy.get("/debug/sleep?ms=2500").await;
        (r, busy)
    });
    tokio::time::timeout(Duration::from_secs(10), idle.closed)
        .await
        .expect("idle keep-alive connection closed by the reaper")
        .unwrap();
    let (r, mut busy) = busy_req.await.unwrap();
    assert_eq!(
        r.expect("in-flight request survives the reaper").status,
        200
    );
    // and the busy connection is still usable right after
    assert_eq!(busy.get("/health").await.unwrap().status, 200);
    let v = stats(&d).await;
    assert!(
        v["connections"]["closed"]["idle_timeout"].as_u64().unwrap() >= 1,
        "{v}"
    );
}

#[tokio::test]
async fn parked_connections_keep_working() {
    // parking gives hyper's buffers back; the next request on the same connection must still work,
    // also when it arrives in pieces and when requests are pipelined
    let d = DaemonProc::start(opts(true, &["connections.park_after_ms=50"])).await;
    let addr = d.http.unwrap();
    let mut c = Conn::plain(addr, false).await.unwrap();
    for _ in 0..3 {
        assert_eq!(c.get("/health").await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    eventually("connection parked", || async {
        (stats(&d).await["connections"]["waiting"].as_u64()? >= 1).then_some(())
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\nGET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let _ = s.read(&mut buf).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // parked now
    s.write_all(b"GET /hea").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"lth HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn parked_tls_connections_keep_working_and_never_served_ones_are_left_alone() {
    // TLS keeps no buffers while parked (tls_io.rs); requests after parking, over h1 and h2, and
    // a connection that has not sent a request yet all still work
    let d = DaemonProc::start(opts(false, &["connections.park_after_ms=50"])).await;
    let fresh = Conn::tls(d.https, &[b"http/1.1"]).await.unwrap();
    let mut c = Conn::tls(d.https, &[b"http/1.1"]).await.unwrap();
    let mut h2 = Conn::tls(d.https, &[b"h2"]).await.unwrap();
    for _ in 0..3 {
        assert_eq!(c.get("/health").await.unwrap().status, 200);
        assert_eq!(h2.get("/health").await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    eventually("a TLS connection parked", || async {
        (stats(&d).await["connections"]["waiting"].as_u64()? >= 1).then_some(())
    })
    .await;
    assert_eq!(c.get("/health").await.unwrap().status, 200);
    // a response of many TLS records after parking
    let r = c.get("/openapi.json").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.len() > 20_000, "{} bytes", r.body.len());
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_ok());
    // never served, idle past park_after: still answers
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fresh = fresh;
    assert_eq!(fresh.get("/health").await.unwrap().status, 200);
}

fn proxy_opts() -> Opts {
    opts(
        true,
        &[
            "proxy_protocol.http=true",
            "proxy_protocol.https=true",
            "proxy_protocol.trusted_cidrs=[\"127.0.0.1/32\"]",
            "connections.max_per_ip=1",
        ],
    )
}

#[tokio::test]
async fn proxy_v2_from_a_trusted_peer_sets_the_client_address() {
    let d = DaemonProc::start(proxy_opts()).await;
    let addr = d.http.unwrap();
    let claimed: std::net::SocketAddr = "10.9.8.7:5555".parse().unwrap();
    let mut tcp = connect_from("127.0.0.1", addr).await.unwrap();
    tcp.write_all(&gpuproxyd::server::proxy::encode_v2(claimed, addr))
        .await
        .unwrap();
    let mut c = Conn::plain_over(tcp, false).await.unwrap();
    assert_eq!(c.get("/health").await.unwrap().status, 200);
    let v = stats(&d).await;
    assert_eq!(v["top_clients"][0]["client"], "10.9.8.7", "{v}");

    // the per-IP cap (1) applies to the claimed address, not to the proxy's
    let mut tcp = connect_from("127.0.0.1", addr).await.unwrap();
    tcp.write_all(&gpuproxyd::server::proxy::encode_v2(claimed, addr))
        .await
        .unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = String::from_utf8_lossy(&read_to_close(&mut tcp).await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    let mut tcp = connect_from("127.0.0.1", addr).await.unwrap();
    tcp.write_all(&gpuproxyd::server::proxy::encode_v2(
        "10.9.8.6:1".parse().unwrap(),
        addr,
    ))
    .await
    .unwrap();
    let mut c2 = Conn::plain_over(tcp, false).await.unwrap();
    assert_eq!(
        c2.get("/health").await.unwrap().status,
        200,
        "another claimed client"
    );

    // PROXY v1 and v2 before a TLS ClientHello on the HTTPS listener
    let mut tcp = connect_from("127.0.0.1", d.https).await.unwrap();
    tcp.write_all(b"PROXY TCP4 10.1.1.1 10.0.0.1 4000 443\r\n")
        .await
        .unwrap();
    let mut t = Conn::tls_over(tcp, &[b"h2"], rustls::DEFAULT_VERSIONS)
        .await
        .unwrap();
    assert_eq!(t.get("/health").await.unwrap().status, 200);
    let v = stats(&d).await;
    let clients: Vec<String> = v["top_clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap().to_string())
        .collect();
    assert!(clients.contains(&"10.1.1.1".to_string()), "{v}");
    drop(c);
}

#[tokio::test]
async fn proxy_headers_from_untrusted_or_malformed_are_refused() {
    let d = DaemonProc::start(proxy_opts()).await;
    let addr = d.http.unwrap();
    // an untrusted peer forging its address
    let mut tcp = connect_from("127.0.0.5", addr).await.unwrap();
    tcp.write_all(&gpuproxyd::server::proxy::encode_v2(
        "10.0.0.9:1".parse().unwrap(),
        addr,
    ))
    .await
    .unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut tcp).await.is_empty());
    // the same peer without a header is a direct client
    let mut c = Conn::plain_over(connect_from("127.0.0.5", addr).await.unwrap(), false)
        .await
        .unwrap();
    assert_eq!(c.get("/health").await.unwrap().status, 200);
    // a trusted peer with a malformed header, and one with no header at all
    let mut tcp = connect_from("127.0.0.1", addr).await.unwrap();
    let mut bad = gpuproxyd::server::proxy::encode_v2("10.0.0.9:1".parse().unwrap(), addr);
    bad[12] = 0x31; // version 3
    tcp.write_all(&bad).await.unwrap();
    assert!(read_to_close(&mut tcp).await.is_empty());
    let mut tcp = connect_from("127.0.0.1", addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut tcp).await.is_empty());
    let v = stats(&d).await;
    assert_eq!(v["connections"]["rejected"]["proxy_untrusted"], 1, "{v}");
    assert_eq!(v["connections"]["rejected"]["proxy_invalid"], 2, "{v}");
}

#[test]
fn startup_refuses_a_cap_the_fd_limit_cannot_hold() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let too_many = lim.rlim_max + 1;
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuproxyd"));
        cmd.args(["serve", "--https-listen", "off", "--metrics-listen", "off"])
            .args(["--http-listen", "127.0.0.1:0"])
            .arg("--set")
            .arg(format!("connections.max={too_many}"))
            .args(extra)
            .current_dir(dir.path());
        cmd
    };
    let out = run(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&too_many.to_string()), "names the cap: {err}");
    assert!(
        err.contains(&lim.rlim_max.to_string()),
        "names the limit: {err}"
    );
    assert!(err.contains("LimitNOFILE"), "says how to raise it: {err}");

    // with --clamp-to-fd-limit it starts (and is stopped by us)
    let mut child = run(&["--clamp-to-fd-limit"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let line = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("clamped")))
        .expect("clamp logged")
        .unwrap();
    assert!(line.contains(&too_many.to_string()), "{line}");
    // wait until it serves (signal handlers installed) before asking it to stop
    lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("listening")))
        .expect("listening logged")
        .unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn health_is_answered_under_a_15000_connection_hold() {
    let d = DaemonProc::start(opts(true, &["log.access_log=false"])).await;
    let mut hold = tokio::process::Command::new(env!("CARGO_BIN_EXE_gpuproxy-connhold"))
        .args(["--target", &d.http.unwrap().to_string()])
        .args([
            "--connections",
            "15000",
            "--per-process",
            "7500",
            "--sources",
            "100",
        ])
        .args(["--hold-secs", "300"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(hold.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        use tokio::io::AsyncBufReadExt;
        lines.read_line(&mut line).await.unwrap();
    })
    .await
    .expect("hold established");
    let report: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(report["held"], 15000, "{report}");
    assert_eq!(stats(&d).await["connections"]["open"], 15000);
    // a normal client still gets an answer, over TLS and over plain HTTP
    let r = support::client::get(d.https, "/health").await;
    assert_eq!(r.status, 200);
    let mut c = Conn::plain(d.http.unwrap(), false).await.unwrap();
    assert_eq!(c.get("/health").await.unwrap().status, 200);
    hold.kill().await.unwrap();
    eventually("hold released", || async {
        (stats(&d).await["connections"]["open"].as_u64()? <= 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn out_of_file_descriptors_backs_off_and_keeps_serving() {
    // 64 descriptors, almost none reserved: the cap (63) is above what is really left, so accept()
    // runs into EMFILE while connections are held
    let d = DaemonProc::start(Opts {
        plain: true,
        nofile: Some(64),
        set: vec![
            "connections.fd_reserve=1".into(),
            "log.access_log=false".into(),
        ],
        ..Opts::default()
    })
    .await;
    let addr = d.http.unwrap();
    let mut first = Conn::plain(addr, false).await.unwrap();
    assert_eq!(first.get("/health").await.unwrap().status, 200);
    // /stats lives on the metrics listener: its connection is opened before descriptors run out
    let mut metrics = Conn::plain(d.metrics, false).await.unwrap();
    assert_eq!(metrics.get("/stats").await.unwrap().status, 200);
    // the kernel completes these handshakes in the backlog; the daemon cannot accept them all
    let mut flood = Vec::new();
    for _ in 0..80 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            flood.push(s);
        }
    }
    let end = std::time::Instant::now() + Duration::from_secs(15);
    let v = loop {
        let v = metrics.get("/stats").await.unwrap().json();
        if v["connections"]["accept_errors"].as_u64().unwrap() > 0 {
            break v;
        }
        assert!(std::time::Instant::now() < end, "no accept error seen: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(v["connections"]["open"].as_u64().unwrap() < 80, "{v}");
    // the open connection is still served
    assert_eq!(first.get("/health").await.unwrap().status, 200);
    // once descriptors free up, new connections are accepted again
    drop(flood);
    eventually("accepting again", || async {
        let mut c = Conn::plain(addr, false).await.ok()?;
        (c.get("/health").await.ok()?.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn silent_untrusted_peers_on_a_proxy_listener_count_against_their_own_cap() {
    let d = DaemonProc::start(proxy_opts()).await;
    let addr = d.http.unwrap();
    // 127.0.0.9 is not trusted: it is its own client, capped at 1 from accept on
    let _silent = connect_from("127.0.0.9", addr).await.unwrap();
    // (let the daemon accept and count the first)
    eventually("the first silent connection counted", || async {
        (stats(&d).await["connections"]["open"].as_u64()? >= 1).then_some(())
    })
    .await;
    let mut second = connect_from("127.0.0.9", addr).await.unwrap();
    let reply = String::from_utf8_lossy(&read_to_close(&mut second).await).into_owned();
    assert!(
        reply.starts_with("HTTP/1.1 503"),
        "refused at once: {reply}"
    );
    let v = stats(&d).await;
    assert!(
        v["connections"]["rejected"]["per_ip_cap"].as_u64().unwrap() >= 1,
        "{v}"
    );
}
