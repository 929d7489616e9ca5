//! The serving core end to end, against the real binary: TLS with ALPN, HTTP/1.1 and HTTP/2, the
//! error shape, request ids, metrics, and `check-config`.

use crate::support;

use std::process::Command;

use support::client::{Conn, request};
use support::daemon::{DaemonProc, Opts};

#[tokio::test]
async fn h1_and_h2_over_tls_and_alpn_prefers_h2() {
    let d = DaemonProc::start(Opts::default()).await;

    let mut h2 = Conn::tls(d.https, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(
        h2.alpn.as_deref(),
        Some(&b"h2"[..]),
        "ALPN picks h2 when offered"
    );
    let r = h2.get("/health").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, hyper::Version::HTTP_2);
    assert_eq!(r.json()["status"], "ok");

    let mut h1 = Conn::tls(d.https, &[b"http/1.1"]).await.unwrap();
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    for _ in 0..3 {
        // keep-alive: several requests on one connection
        let r = h1.get("/health").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.version, hyper::Version::HTTP_11);
    }

    // no ALPN at all: HTTP/1.1
    let mut none = Conn::tls(d.https, &[]).await.unwrap();
    assert_eq!(none.alpn, None);
    assert_eq!(none.get("/health").await.unwrap().status, 200);

    let stats = Conn::plain(d.metrics, false)
        .await
        .unwrap()
        .get("/stats")
        .await
        .unwrap()
        .json();
    assert!(
        stats["connections"]["open"].as_u64().unwrap() >= 3,
        "{stats}"
    );
    assert_eq!(stats["connections"]["by_protocol"]["h2"], 1, "{stats}");
    assert!(
        stats["requests"]["by_protocol"]["h1"].as_u64().unwrap() >= 4,
        "{stats}"
    );
    assert!(stats["uptime_seconds"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn tls_12_and_13_both_work() {
    let d = DaemonProc::start(Opts::default()).await;
    for (v, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut c = Conn::tls_versions(d.https, &[b"h2"], &[v]).await.unwrap();
        assert_eq!(c.tls_version, Some(want));
        assert_eq!(c.get("/health").await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn plain_listener_speaks_h1_and_h2_prior_knowledge() {
    let d = DaemonProc::start(Opts {
        plain: true,
        ..Opts::default()
    })
    .await;
    let addr = d.http.unwrap();
    let mut h1 = Conn::plain(addr, false).await.unwrap();
    let r = h1.get("/health").await.unwrap();
    assert_eq!((r.status, r.version), (200, hyper::Version::HTTP_11));
    let mut h2 = Conn::plain(addr, true).await.unwrap();
    let r = h2.get("/health").await.unwrap();
    assert_eq!((r.status, r.version), (200, hyper::Version::HTTP_2));
}

#[tokio::test]
async fn errors_have_one_shape_and_the_right_status() {
    let d = DaemonProc::start(Opts::default()).await;
    let mut c = Conn::tls(d.https, &[b"http/1.1"]).await.unwrap();

    let r = c.get("/no/such/route").await.unwrap();
    assert_eq!(r.status, 404);
    let v = r.json();
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(
        v["error"]["request_id"].as_str(),
        r.header("x-request-id"),
        "body and header carry the same id"
    );

    let r = c.send(request("DELETE", "/health", "")).await.unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(r.json()["error"]["code"], "method_not_allowed");

    // over h2 the early 413 reaches the client while the body is still being sent
    let mut c2 = Conn::tls(d.https, &[b"h2"]).await.unwrap();
    let big = vec![b'x'; (1 << 20) + 1];
    let r = c2.send(request("GET", "/health", big)).await.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "payload_too_large");

    // the debug route is off by default
    assert_eq!(c.get("/debug/sleep?ms=1").await.unwrap().status, 404);
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let d = DaemonProc::start(Opts::default()).await;
    let mut c = Conn::tls(d.https, &[b"h2"]).await.unwrap();
    let a = c.get("/health").await.unwrap();
    let b = c.get("/nope").await.unwrap();
    let (ia, ib) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert!(!ia.is_empty() && ia != ib);

    // a caller's plain id is kept, a hostile one replaced
    let mut req = request("GET", "/health", "");
    req.headers_mut()
        .insert("x-request-id", "trace-abc.123".parse().unwrap());
    assert_eq!(
        c.send(req).await.unwrap().header("x-request-id"),
        Some("trace-abc.123")
    );
    let mut req = request("GET", "/health", "");
    req.headers_mut()
        .insert("x-request-id", "a b\tc".parse().unwrap());
    assert_ne!(
        c.send(req).await.unwrap().header("x-request-id"),
        Some("a b\tc")
    );
}

#[tokio::test]
async fn access_log_is_json_with_the_request_fields() {
    let d = DaemonProc::start(Opts::default()).await;
    let r = support::client::get(d.https, "/health").await;
    let id = r.header("x-request-id").unwrap().to_string();
    let line = support::services::poll_until(
        "access log line",
        std::time::Duration::from_secs(10),
        || {
            d.log()
                .lines()
                .find(|l| l.contains(&id))
                .map(str::to_string)
        },
    );
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(v["target"], "access");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/health");
    assert_eq!(v["status"], 200);
    assert!(v["duration_ms"].is_number());
    assert!(v["client"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[tokio::test]
async fn metrics_listener_lists_the_core_metrics() {
    let d = DaemonProc::start(Opts::default()).await;
    support::client::get(d.https, "/health").await;
    let page = d.scrape().await;
    for name in [
        "gpuproxy_requests_total{route=\"/health\",status=\"200\"}",
        "gpuproxy_requests_failed",
        "gpuproxy_request_duration_milliseconds_bucket{route=\"/health\",le=\"0.1\"}",
        "gpuproxy_request_duration_milliseconds_bucket{route=\"/health\",le=\"10000\"}",
        "gpuproxy_connections_active",
        "gpuproxy_connections_total",
        "gpuproxy_tls_handshake_failures_total",
        "gpuproxy_build_info{version=",
    ] {
        assert!(page.contains(name), "missing {name} in\n{page}");
    }
}

#[tokio::test]
async fn failed_handshake_is_counted() {
    let d = DaemonProc::start(Opts::default()).await;
    // plain HTTP on the TLS port is not a ClientHello
    let mut c = Conn::plain(d.https, false).await.unwrap();
    assert!(c.get("/health").await.is_err());
    support::eventually("handshake failure metric", || async {
        d.scrape()
            .await
            .contains("gpuproxy_tls_handshake_failures_total 1")
            .then_some(())
    })
    .await;
}

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gpuproxyd"))
        .arg("check-config")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[server]\nhttps_listen = \"off\"\nhttp_listen = \"127.0.0.1:1\"\nworkrs = 4\n",
    )
    .unwrap();
    let (code, _, err) = check_config(&["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("server.workrs"), "unknown key named: {err}");

    std::fs::write(
        &cfg,
        "[server]\nhttps_listen = \"off\"\nhttp_listen = \"127.0.0.1:1\"\nshutdown_grace_ms = -5\n",
    )
    .unwrap();
    let (code, _, err) = check_config(&["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("server.shutdown_grace_ms"), "{err}");

    std::fs::write(&cfg, "[server\n").unwrap();
    let (code, _, err) = check_config(&["--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("bad.toml"), "{err}");

    let (code, _, err) = check_config(&["--config", "/nonexistent.toml"], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent.toml"), "{err}");
}

#[test]
fn check_config_prints_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ok.toml");
    std::fs::write(
        &cfg,
        "[server]\nhttps_listen = \"off\"\nhttp_listen = \"127.0.0.1:1\"\nworkers = 2\n",
    )
    .unwrap();
    let (code, out, err) = check_config(
        &["--config", cfg.to_str().unwrap(), "--workers", "3"],
        &[
            ("GPUPROXY_LOG_LEVEL", "debug"),
            ("JWT_SECRET", "s3cr3t-value-s3cr3t-value-s3cr3t-value"),
            ("DATABASE_URL", "postgres://u:pw-xyz@h/db"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("workers = 3"), "flag beats file:\n{out}");
    assert!(out.contains("level = \"debug\""), "env applies:\n{out}");
    assert!(out.contains("JWT_SECRET = <set, redacted>"), "{out}");
    assert!(
        !out.contains("s3cr3t-value") && !out.contains("pw-xyz"),
        "{out}"
    );
    assert!(!err.contains("s3cr3t-value") && !err.contains("pw-xyz"));
}

#[test]
fn help_and_version() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["check-config", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gpuproxyd"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_gpuproxyd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
