//! The real-service harness itself: PostgreSQL behind PgBouncer (transaction mode) and Redis start,
//! answer, and are gone after the harness is dropped.

use crate::support;

use std::path::Path;

use fred::prelude::*;
use support::services::{Services, shared};

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn query_through_pgbouncer_reaches_postgres_and_redis_answers() {
    let s = shared();
    s.create_database("harness_check");
    let client = pg_connect(&s.pgbouncer_url("harness_check")).await;
    // The port the *server* sees is PostgreSQL's, not PgBouncer's: the query went through.
    let rows = client
        .simple_query("SELECT inet_server_port()::text, current_database()")
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(row.get(0), Some(s.postgres.port.to_string().as_str()));
    assert_eq!(row.get(1), Some("harness_check"));
    assert_ne!(s.postgres.port, s.pgbouncer.port);

    // PgBouncer is in transaction mode
    let admin = pg_connect(&s.pgbouncer_url("pgbouncer")).await;
    let cfg = admin.simple_query("SHOW CONFIG").await.unwrap();
    let mode = cfg
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("pool_mode") => {
                r.get(1).map(str::to_string)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(mode, "transaction");

    let config = Config::from_url(&s.redis_url()).unwrap();
    let redis = Builder::from_config(config).build().unwrap();
    redis.init().await.unwrap();
    let pong: String = redis.ping(None).await.unwrap();
    assert_eq!(pong, "PONG");
    redis.quit().await.unwrap();
}

fn alive(pid: u32) -> bool {
    // kill(pid, 0) succeeds while the process exists (zombies were reaped by wait()).
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn everything_started_is_gone_after_drop() {
    let s = Services::start();
    let pids = s.pids();
    let dir = s.dir.clone();
    let ports = [s.postgres.port, s.pgbouncer.port, s.redis.port];
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|p| alive(*p)));
    drop(s);
    for p in pids {
        assert!(!alive(p), "process {p} still running");
    }
    assert!(!Path::new(&dir).exists(), "{} left behind", dir.display());
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still open"
        );
    }
    // and no PostgreSQL backend of ours is left (they are children of the postmaster)
    let out = std::process::Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "left: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_stopped_service_starts_again_on_the_same_port() {
    let s = Services::start();
    let port = s.redis.port;
    s.redis.kill();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    s.redis.start();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    s.pgbouncer.stop();
    s.pgbouncer.start();
}

/// Run only as a child of `shared_services_are_stopped_when_a_test_panics`.
#[tokio::test]
#[ignore = "helper: panics on purpose"]
async fn helper_panics_while_holding_shared_services() {
    let s = shared();
    println!("SERVICES_DIR={}", s.dir.display());
    println!("SERVICES_PIDS={:?}", s.pids());
    panic!("on purpose");
}

#[test]
fn shared_services_are_stopped_when_a_test_panics() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "harness::helper_panics_while_holding_shared_services",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the helper panics");
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = text
        .lines()
        .find_map(|l| l.strip_prefix("SERVICES_DIR="))
        .unwrap_or_else(|| panic!("helper output: {text}"));
    let pids: Vec<u32> = text
        .lines()
        .find_map(|l| l.strip_prefix("SERVICES_PIDS="))
        .unwrap()
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    for p in pids {
        assert!(!alive(p), "process {p} survived the panic");
    }
    assert!(!Path::new(dir).exists(), "{dir} left behind");
}
