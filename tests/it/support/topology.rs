//! The deployment the daemon is made for, as real processes on loopback: HAProxy (the shipped
//! `haproxy/haproxy.cfg`, TCP with PROXY v2 and TLS health checks on `/ready`) in front of N
//! daemons that share PostgreSQL (through PgBouncer), Redis and the sandbox providers.
//!
//! HAProxy connects to the daemons from 127.0.0.254, the only address they trust to send a
//! PROXY header; clients connect to HAProxy from other loopback addresses (passed on in the
//! header), and the test helpers that call a daemon directly from 127.0.0.1 work unchanged.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use super::accounts::TestDb;
use super::client::{Conn, connect_from};
use super::daemon::DaemonProc;
use super::sandbox::Sandbox;
use super::services::free_port;

/// The shipped HAProxy configuration for `backends` (servers `gpx1`…), listening on `front`
/// with its stats page on `stats`, minus the settings that need root (chroot, user, the admin
/// socket, the fd limit), with health checks quick enough for a test and, with `source`, the
/// address it connects to the daemons from.
pub fn haproxy_config(
    backends: &[SocketAddr],
    front: u16,
    stats: u16,
    source: Option<&str>,
) -> String {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("haproxy/haproxy.cfg"))
            .unwrap();
    let mut out = Vec::new();
    for line in shipped.lines() {
        let t = line.trim();
        if t.starts_with("chroot")
            || t.starts_with("user ")
            || t.starts_with("group ")
            || t.starts_with("stats socket")
            || t.starts_with("fd-hard-limit")
            || t.starts_with("server gpx2")
        {
            continue;
        }
        if t.starts_with("balance ")
            && let Some(src) = source
        {
            out.push(line.to_owned());
            out.push(format!("    source {src}"));
            continue;
        }
        if t.starts_with("server gpx1") {
            for (i, b) in backends.iter().enumerate() {
                out.push(format!("    server gpx{} {b}", i + 1));
            }
            continue;
        }
        out.push(
            line.replace("bind :443", &format!("bind 127.0.0.1:{front}"))
                .replace("bind 127.0.0.1:8404", &format!("bind 127.0.0.1:{stats}"))
                .replace("inter 1s", "inter 200ms")
                .replace("slowstart 30s", "slowstart 1s")
                .replace("maxconn 250000", "maxconn 5000"),
        );
    }
    out.join("\n") + "\n"
}

/// HAProxy as a process with a configuration of its own; killed when dropped.
pub struct Haproxy {
    child: Child,
    dir: tempfile::TempDir,
    pub front: SocketAddr,
    pub stats: SocketAddr,
}

impl Haproxy {
    pub fn start(backends: &[SocketAddr], source: Option<&str>) -> Haproxy {
        let (front, stats) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, haproxy_config(backends, front, stats, source)).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(std::fs::File::create(dir.path().join("haproxy.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("haproxy.err")).unwrap())
            .spawn()
            .expect("haproxy (apt-get install haproxy)");
        Haproxy {
            child,
            dir,
            front: SocketAddr::from(([127, 0, 0, 1], front)),
            stats: SocketAddr::from(([127, 0, 0, 1], stats)),
        }
    }

    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("haproxy.log"), read("haproxy.err"))
    }

    /// Each backend server's status as HAProxy's stats page says it (`UP`, `DOWN`, `UP 1/2`…).
    pub async fn server_status(&mut self) -> Vec<(String, String)> {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("haproxy exited: {st}\n{}", self.log());
        }
        let Ok(mut c) = Conn::plain(self.stats, false).await else {
            return Vec::new();
        };
        let Ok(r) = c.get("/stats;csv").await else {
            return Vec::new();
        };
        String::from_utf8_lossy(&r.body)
            .lines()
            .filter(|l| l.starts_with("gpuproxyd,gpx"))
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[1].to_owned(), f.get(17).copied().unwrap_or("").to_owned())
            })
            .collect()
    }

    /// Waits until HAProxy has every backend server `UP`.
    pub async fn wait_all_up(&mut self, n: usize) {
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.server_status().await;
            if s.len() == n && s.iter().all(|(_, st)| st == "UP") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "HAProxy does not see every daemon up: {s:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where HAProxy connects to the daemons from.
pub const HAPROXY_SOURCE: &str = "127.0.0.254";

/// Settings every daemon of a topology runs with: PROXY v2 from HAProxy only, a drain long
/// enough for HAProxy's health checks (200 ms × 2) to take it out of rotation first.
pub const BEHIND_HAPROXY: [&str; 4] = [
    "proxy_protocol.https=true",
    "proxy_protocol.trusted_cidrs=[\"127.0.0.254/32\"]",
    "server.drain_delay_ms=1500",
    "server.shutdown_grace_ms=5000",
];

/// N daemons (fixed ports, so one can be restarted in its own place) behind one HAProxy.
pub struct Topology {
    pub daemons: Vec<Option<DaemonProc>>,
    ports: Vec<u16>,
    opts: (Vec<String>, Vec<(String, String)>),
    pub haproxy: Haproxy,
}

impl Topology {
    pub async fn start(
        sandbox: &Sandbox,
        db: &TestDb<'_>,
        n: usize,
        set: &[&str],
        env: &[(&str, &str)],
    ) -> Topology {
        let mut all: Vec<&str> = BEHIND_HAPROXY.to_vec();
        all.extend_from_slice(set);
        let base = sandbox.daemon_opts(db, &all, env);
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut t = Topology {
            daemons: Vec::new(),
            haproxy: Haproxy::start(
                &ports
                    .iter()
                    .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
                    .collect::<Vec<_>>(),
                Some(HAPROXY_SOURCE),
            ),
            ports,
            opts: (base.set, base.env),
        };
        for i in 0..n {
            let d = t.spawn(i).await;
            t.daemons.push(Some(d));
        }
        t.haproxy.wait_all_up(n).await;
        t
    }

    async fn spawn(&self, i: usize) -> DaemonProc {
        DaemonProc::start(super::daemon::Opts {
            set: self.opts.0.clone(),
            env: self.opts.1.clone(),
            https_port: Some(self.ports[i]),
            ..Default::default()
        })
        .await
    }

    pub fn daemon(&self, i: usize) -> &DaemonProc {
        self.daemons[i].as_ref().expect("daemon running")
    }

    /// Stops daemon `i` with SIGTERM (it drains: `/ready` 503 first, then the listener closes),
    /// starts a new one in its place and waits until HAProxy has it back in rotation.
    pub async fn restart(&mut self, i: usize) {
        let mut old = self.daemons[i].take().expect("daemon running");
        old.signal(libc::SIGTERM);
        let st = old.wait_exit(Duration::from_secs(30)).await;
        assert!(st.success(), "daemon {i} exited {st}\n{}", old.log());
        let new = self.spawn(i).await;
        self.daemons[i] = Some(new);
        self.haproxy.wait_all_up(self.ports.len()).await;
    }

    /// A TLS connection through HAProxy from `src` (127.0.0.2 and up).
    pub async fn connect(&self, src: &str) -> std::io::Result<Conn> {
        let tcp = connect_from(src, self.haproxy.front).await?;
        Conn::tls_over(tcp, &[b"http/1.1"], rustls::DEFAULT_VERSIONS).await
    }

    /// A TLS connection straight to daemon `i` from `src` (served as a direct client).
    pub async fn connect_direct(&self, i: usize, src: &str) -> std::io::Result<Conn> {
        let tcp = connect_from(src, self.daemon(i).https).await?;
        Conn::tls_over(tcp, &[b"http/1.1"], rustls::DEFAULT_VERSIONS).await
    }
}
