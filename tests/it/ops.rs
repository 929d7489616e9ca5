//! The operations files, each checked by its ecosystem's own tool, and the daemon's side of them:
//! sysctl keys against /proc/sys, `systemd-analyze verify`, the notify protocol, `haproxy -c`,
//! `promtool check/test rules`, alert metric names against a live `/metrics`, and a real HAProxy
//! in front of two daemons (PROXY v2 client address, drain without a failed request).

use crate::support;

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::client::{Conn, connect_from};
use support::daemon::{DaemonProc, Opts};
use support::eventually;

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn sysctl_keys_exist_and_values_parse() {
    let text = std::fs::read_to_string(repo("sysctl/99-gpuproxy-100k.conf")).unwrap();
    let mut module = None;
    let mut keys = 0;
    let mut commented = true;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            commented = false;
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            module = c
                .trim()
                .strip_prefix("requires-module:")
                .map(|m| m.trim().to_owned())
                .or(module);
            commented = true;
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not `key = value`: {line}"));
        let (k, v) = (k.trim(), v.trim());
        // each key sits in a block of lines that starts with a comment saying why
        assert!(commented, "{k} has no comment saying why");
        let proc = Path::new("/proc/sys").join(k.replace('.', "/"));
        if module.is_none() {
            assert!(proc.exists(), "{k}: no {}", proc.display());
        }
        let numeric = v.split_whitespace().all(|x| x.parse::<u64>().is_ok());
        let word = v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        assert!(numeric || word, "{k} = {v}: neither numbers nor a name");
        if k == "net.ipv4.tcp_congestion_control" {
            let avail =
                std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
                    .unwrap_or_default();
            assert!(
                avail.split_whitespace().any(|a| a == v) || module.is_some(),
                "{v} not available"
            );
        }
        keys += 1;
        module = None;
    }
    assert!(keys >= 15, "only {keys} keys");
    for must in [
        "net.core.somaxconn",
        "fs.nr_open",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_tw_reuse",
        "net.core.default_qdisc",
    ] {
        assert!(text.contains(must), "{must} missing");
    }
}

#[test]
fn systemd_unit_verifies_and_outlasts_the_drain() {
    let unit = std::fs::read_to_string(repo("systemd/gpuproxyd.service")).unwrap();
    for must in [
        "Type=notify",
        "LimitNOFILE=1048576",
        "Restart=on-failure",
        "EnvironmentFile=",
        "User=gpuproxyd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "WatchdogSec=",
    ] {
        assert!(unit.contains(must), "{must} missing");
    }
    // stop must wait longer than the drain: drain delay + shutdown grace (defaults)
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec=<n>s");
    let c = gpuproxyd::config::ServerConfig::default();
    assert!(
        stop * 1000 > c.shutdown_grace_ms.ms() + c.drain_delay_ms.ms(),
        "TimeoutStopSec {stop}s"
    );
    // verify it with the binary in place of /usr/local/bin/gpuproxyd
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("gpuproxyd.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/gpuproxyd", env!("CARGO_BIN_EXE_gpuproxyd")),
    )
    .unwrap();
    let (ok, out) = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    let limits = std::fs::read_to_string(repo("systemd/limits.conf")).unwrap();
    assert!(limits.contains("gpuproxyd  hard  nofile  1048576"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_protocol_ready_watchdog_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut d = DaemonProc::start(Opts {
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), "200000".into()),
        ],
        ..Default::default()
    })
    .await;
    let recv = |sock: &UnixDatagram| {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv(&sock);
    assert!(first.lines().any(|l| l == "READY=1"), "{first}");
    let next = recv(&sock);
    assert_eq!(next, "WATCHDOG=1");
    d.signal(libc::SIGTERM);
    let mut seen = Vec::new();
    loop {
        let m = recv(&sock);
        if m.lines().any(|l| l == "STOPPING=1") {
            break;
        }
        seen.push(m);
        assert!(seen.len() < 100, "no STOPPING=1: {seen:?}");
    }
    assert!(d.wait_exit(Duration::from_secs(30)).await.success());
}

#[test]
fn haproxy_config_checks() {
    let (ok, out) = run(Command::new("haproxy").args(["-c", "-f", &repo("haproxy/haproxy.cfg")]));
    assert!(ok, "haproxy -c: {out}");
    let cfg = std::fs::read_to_string(repo("haproxy/haproxy.cfg")).unwrap();
    for must in [
        "mode tcp",
        "send-proxy-v2",
        "balance leastconn",
        "uri /ready",
        "slowstart",
        "maxconn 250000",
    ] {
        assert!(cfg.contains(must), "{must} missing");
    }
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let (ok, out) = run(Command::new("promtool").args([
        "check",
        "rules",
        &repo("config/prometheus/alerts.yml"),
    ]));
    assert!(ok, "promtool check rules: {out}");
    let (ok, out) = run(Command::new("promtool").args([
        "test",
        "rules",
        &repo("config/prometheus/alerts_test.yml"),
    ]));
    assert!(ok, "promtool test rules: {out}");
    // every alert has a firing test
    let rules = std::fs::read_to_string(repo("config/prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(repo("config/prometheus/alerts_test.yml")).unwrap();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no unit test"
        );
    }
}

/// `gpuproxy_*` names an expression uses (histogram suffixes folded to the family).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("gpuproxy_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        out.insert(text[start..end].to_owned());
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_an_alert_uses_is_exported() {
    let s = support::services::shared();
    let db = support::accounts::TestDb::new(s, "ops_metrics");
    let (_, token) = db.account_with_key("watcher", &[]);
    let sb = support::sandbox::Sandbox::start(&[]);
    let mut env = db.env();
    env.extend(support::sandbox::Sandbox::daemon_env());
    let d = DaemonProc::start(Opts {
        env,
        set: sb.daemon_settings(),
        ..Default::default()
    })
    .await;
    // one request of each kind the alerts look at
    let mut c = Conn::tls(d.https, &[b"http/1.1"]).await.unwrap();
    let mut req = support::client::request("GET", "/v1/offers?limit=1", bytes::Bytes::new());
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(c.send(req).await.unwrap().status, 200);
    let page = eventually("the database gauges and the provider credit", || async {
        let p = d.scrape().await;
        (p.contains("gpuproxy_db_connections_active")
            && p.contains("gpuproxy_spend_usd_per_hour")
            && p.contains("gpuproxy_provider_credit_usd{"))
        .then_some(p)
    })
    .await;
    // the sandbox's Vast account holds 1000 USD of credit (users/current `credit`)
    assert!(
        page.lines()
            .any(|l| l.starts_with("gpuproxy_provider_credit_usd{provider=\"vastai\"} 1000")),
        "{page}"
    );
    let rules = std::fs::read_to_string(repo("config/prometheus/alerts.yml")).unwrap();
    let exprs: String = rules
        .split("expr: |")
        .skip(1)
        .map(|e| e.split("for:").next().unwrap_or(""))
        .collect();
    let used = metric_names(&exprs);
    assert!(used.len() >= 10, "{used:?}");
    for m in &used {
        let exported = page.lines().any(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{m}{{")) || l.starts_with(&format!("{m} ")))
        });
        assert!(exported, "{m} is used by an alert but not on /metrics");
    }
    // and the dashboard only shows real metrics too
    let dash = std::fs::read_to_string(repo("config/grafana/gpuproxyd.json")).unwrap();
    for m in metric_names(&dash) {
        let family = m
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            page.contains(family),
            "{m} is on the dashboard but not on /metrics"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_passes_the_client_address_and_drains_a_daemon() {
    let proxy = [
        "proxy_protocol.https=true",
        "proxy_protocol.trusted_cidrs=[\"127.0.0.1/32\"]",
        "server.drain_delay_ms=3000",
        "server.shutdown_grace_ms=5000",
        "ratelimit.ip_burst=100000",
    ];
    let start = || async {
        DaemonProc::start(Opts {
            set: proxy.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
    };
    let (mut a, b) = (start().await, start().await);
    // the shipped file, with this test's addresses; both servers up (health checks over TLS
    // with PROXY v2)
    let mut haproxy = support::topology::Haproxy::start(&[a.https, b.https], None);
    haproxy.wait_all_up(2).await;
    let front_addr = haproxy.front;

    // the client address reaches the daemon through PROXY v2
    let tcp = connect_from("127.0.0.77", front_addr).await.unwrap();
    let mut c = Conn::tls_over(tcp, &[b"http/1.1"], rustls::DEFAULT_VERSIONS)
        .await
        .unwrap();
    assert_eq!(c.get("/health").await.unwrap().status, 200);
    drop(c);
    eventually("the access log to show the client address", || async {
        (a.log().contains("127.0.0.77") || b.log().contains("127.0.0.77")).then_some(())
    })
    .await;

    // a stream of requests (a new connection each) while daemon a is drained out
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut ok = 0u32;
        loop {
            if rx.try_recv().is_ok() {
                break;
            }
            let r = async {
                let tcp = connect_from("127.0.0.78", front_addr).await?;
                let mut c = Conn::tls_over(tcp, &[b"http/1.1"], rustls::DEFAULT_VERSIONS).await?;
                c.get("/health").await.map_err(std::io::Error::other)
            }
            .await;
            match r {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => failures.push(format!("status {}", r.status)),
                Err(e) => failures.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, failures)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal(libc::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(30)).await.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.send(()).unwrap();
    let (ok, failures) = client.await.unwrap();
    drop(haproxy);
    assert!(ok > 20, "only {ok} requests made it");
    assert!(
        failures.is_empty(),
        "{} failed requests during the drain: {failures:?}",
        failures.len()
    );
    drop(b);
}

#[test]
fn doctor_passes_a_config_that_fits_and_fails_one_that_does_not() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let doctor = |max: u64| {
        Command::new(env!("CARGO_BIN_EXE_gpuproxyd"))
            .args([
                "doctor",
                "--https-listen",
                "off",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--set",
                &format!("connections.max={max}"),
                "--set",
                "connections.fd_reserve=1024",
            ])
            .output()
            .unwrap()
    };
    let fits = doctor(lim.rlim_max.saturating_sub(1024).max(1));
    let text = String::from_utf8_lossy(&fits.stdout);
    assert!(fits.status.success(), "{text}");
    assert!(text.contains("net.core.somaxconn") && text.contains("RLIMIT_NOFILE"));
    let capped = doctor(lim.rlim_max * 2);
    let text = String::from_utf8_lossy(&capped.stdout);
    assert_eq!(capped.status.code(), Some(1), "{text}");
    assert!(text.contains("CAPPED: RLIMIT_NOFILE hard limit"), "{text}");
}

#[test]
fn production_config_is_valid_and_fits_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, "").unwrap();
    std::fs::write(&key, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gpuproxyd"))
        .args([
            "check-config",
            "--config",
            &repo("config/production-100k.toml"),
        ])
        .arg("--set")
        .arg(format!("server.tls_cert={:?}", cert.display().to_string()))
        .arg("--set")
        .arg(format!("server.tls_key={:?}", key.display().to_string()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: gpuproxyd::config::Config =
        toml::from_str(&std::fs::read_to_string(repo("config/production-100k.toml")).unwrap())
            .unwrap();
    assert!(c.connections.max >= 100_000);
    assert!(
        c.connections.max + c.connections.fd_reserve <= 1_048_576,
        "fits LimitNOFILE"
    );
    assert!(c.proxy_protocol.https, "behind HAProxy with send-proxy-v2");
    assert!(
        c.server.drain_delay_ms.ms() + c.server.shutdown_grace_ms.ms() < 45_000,
        "under TimeoutStopSec"
    );
}
