//! Redis deployments other than one node, from Debian's `redis-server` on free loopback ports:
//! a Cluster of masters, a master with a replica watched by Sentinel, and one node over TLS. Each
//! process is a [`Svc`] (stopped with its owner, bound to the test process like every service).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::certs;
use super::services::{Svc, chown_to_service_user, free_port, poll_until, run_ok, which};

fn redis_bin() -> PathBuf {
    which("redis-server", &[], "redis-server")
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(which("redis-cli", &[], "redis-tools"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn workdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gpuproxyd-{what}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    chown_to_service_user(&dir);
    dir
}

/// A `redis-server` on `port` with `args`, no persistence, its files in `dir`.
fn node(name: &'static str, port: u16, dir: PathBuf, args: Vec<String>) -> Svc {
    Svc::new(name, port, libc::SIGTERM, move || {
        let mut c = Command::new(redis_bin());
        c.args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !args.iter().any(|a| a == "--tls-port") {
            c.args(["--port", &port.to_string()]);
        }
        c
    })
}

/// A Redis Cluster of `masters` masters (slots spread evenly, no replicas).
pub struct RedisCluster {
    pub nodes: Vec<Svc>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        let dir = workdir("redis-cluster");
        let nodes: Vec<Svc> = (0..masters)
            .map(|i| {
                let port = free_port();
                let d = dir.join(format!("n{i}"));
                std::fs::create_dir_all(&d).unwrap();
                chown_to_service_user(&d);
                node(
                    "redis-cluster-node",
                    port,
                    d,
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                        // the bus port explicitly: port + 10000 may be taken
                        "--cluster-port",
                        &free_port().to_string(),
                    ]
                    .map(String::from)
                    .to_vec(),
                )
            })
            .collect();
        for n in &nodes {
            n.start();
        }
        let mut create = Command::new(which("redis-cli", &[], "redis-tools"));
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        run_ok(&mut create, "redis-cli --cluster create");
        for n in &nodes {
            poll_until("the cluster to be ok", Duration::from_secs(30), || {
                cli(n.port, &["cluster", "info"])
                    .contains("cluster_state:ok")
                    .then_some(())
            });
        }
        RedisCluster { nodes }
    }

    /// `redis-cluster://` with the first node as the host and the others as `node=` seeds.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("node=127.0.0.1:{}", n.port))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            self.nodes[0].port,
            seeds.join("&")
        )
    }

    /// How many keys each node holds (to show they are spread over the slots).
    pub fn keys_per_node(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| cli(n.port, &["dbsize"]).trim().parse().unwrap_or(0))
            .collect()
    }
}

/// A master, one replica and one Sentinel (quorum 1) that promotes the replica 1 s after the
/// master stops answering.
pub struct RedisSentinel {
    pub master: Svc,
    pub replica: Svc,
    pub sentinel: Svc,
}

pub const SENTINEL_SERVICE: &str = "gpxmaster";

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        let dir = workdir("redis-sentinel");
        let (mp, rp, sp) = (free_port(), free_port(), free_port());
        let sub = |n: &str| {
            let d = dir.join(n);
            std::fs::create_dir_all(&d).unwrap();
            chown_to_service_user(&d);
            d
        };
        let master = node("redis-master", mp, sub("master"), vec![]);
        let replica = node(
            "redis-replica",
            rp,
            sub("replica"),
            vec!["--replicaof".into(), format!("127.0.0.1 {mp}")],
        );
        // Sentinel rewrites its configuration file: it lives in a directory it owns
        let sdir = sub("sentinel");
        let conf = sdir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sp}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                 sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {mp} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                 sentinel failover-timeout {SENTINEL_SERVICE} 10000\n",
                sdir.display()
            ),
        )
        .unwrap();
        chown_to_service_user(&conf);
        let sentinel = Svc::new("redis-sentinel", sp, libc::SIGTERM, move || {
            let mut c = Command::new(redis_bin());
            c.arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        });
        master.start();
        replica.start();
        poll_until("the replica to sync", Duration::from_secs(30), || {
            cli(rp, &["info", "replication"])
                .contains("master_link_status:up")
                .then_some(())
        });
        sentinel.start();
        poll_until(
            "Sentinel to know the replica",
            Duration::from_secs(30),
            || {
                cli(sp, &["sentinel", "replicas", SENTINEL_SERVICE])
                    .contains(&rp.to_string())
                    .then_some(())
            },
        );
        RedisSentinel {
            master,
            replica,
            sentinel,
        }
    }

    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SENTINEL_SERVICE}",
            self.sentinel.port
        )
    }

    /// The port of the master Sentinel names now.
    pub fn master_port(&self) -> u16 {
        let out = cli(
            self.sentinel.port,
            &["sentinel", "get-master-addr-by-name", SENTINEL_SERVICE],
        );
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// One node that speaks only TLS, with a certificate from a private CA (written to `ca_file`).
pub struct RedisTls {
    pub node: Svc,
    pub ca_file: PathBuf,
}

impl RedisTls {
    pub fn start() -> RedisTls {
        let dir = workdir("redis-tls");
        let c = certs::generate_ca_signed();
        let (ca, cert, key) = (
            dir.join("ca.crt"),
            dir.join("server.crt"),
            dir.join("server.key"),
        );
        std::fs::write(&ca, &c.ca_pem).unwrap();
        std::fs::write(&cert, &c.cert_pem).unwrap();
        std::fs::write(&key, &c.key_pem).unwrap();
        for f in [&ca, &cert, &key] {
            chown_to_service_user(f);
        }
        let port = free_port();
        let args = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let node = node("redis-tls", port, dir, args);
        node.start();
        RedisTls { node, ca_file: ca }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.node.port)
    }
}
