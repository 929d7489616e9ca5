//! The daemon as a real process (the built `gpuproxyd` binary) on free ports, for tests that send
//! it signals or read its logs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::certs::{self, TestCert};
use super::services::free_port;

pub struct DaemonProc {
    child: Child,
    pub dir: PathBuf,
    pub https: SocketAddr,
    pub metrics: SocketAddr,
    pub http: Option<SocketAddr>,
    pub cert: TestCert,
    log: PathBuf,
}

#[derive(Default)]
pub struct Opts {
    /// Extra `--set key=value` overrides.
    pub set: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Also open the plain-HTTP listener.
    pub plain: bool,
    /// Run with this RLIMIT_NOFILE (soft and hard).
    pub nofile: Option<u64>,
    /// Bind the HTTPS listener to this port (a balancer's fixed backend address; a restarted
    /// daemon takes its predecessor's place) instead of a free one.
    pub https_port: Option<u16>,
}

impl DaemonProc {
    pub async fn start(opts: Opts) -> DaemonProc {
        let dir = std::env::temp_dir().join(format!(
            "gpuproxyd-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = certs::generate();
        let (cert_path, key_path) = cert.write(&dir);
        // every listener on port 0: the daemon binds, then says where (no probe-then-bind race)
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let http = opts.plain.then_some(any);
        let https = SocketAddr::from(([127, 0, 0, 1], opts.https_port.unwrap_or(0)));
        let log = dir.join("daemon.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuproxyd"));
        cmd.arg("serve")
            .args(["--https-listen", &https.to_string()])
            .args(["--metrics-listen", &any.to_string()])
            .args([
                "--http-listen",
                &http.map_or("off".to_string(), |a| a.to_string()),
            ])
            .arg("--set")
            .arg(format!(
                "server.tls_cert={:?}",
                cert_path.display().to_string()
            ))
            .arg("--set")
            .arg(format!(
                "server.tls_key={:?}",
                key_path.display().to_string()
            ));
        for s in &opts.set {
            cmd.arg("--set").arg(s);
        }
        cmd.envs(opts.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit());
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn gpuproxyd");
        let bound = Self::bound(&mut child, &log, opts.plain).await;
        let mut d = DaemonProc {
            child,
            dir,
            https: bound["https"],
            metrics: bound["metrics"],
            http: bound.get("http").copied(),
            cert,
            log,
        };
        d.wait_ready().await;
        d
    }

    /// The addresses the daemon's listeners bound, read from its `listening` log lines.
    async fn bound(
        child: &mut Child,
        log: &std::path::Path,
        plain: bool,
    ) -> std::collections::HashMap<String, SocketAddr> {
        let want: &[&str] = if plain {
            &["https", "metrics", "http"]
        } else {
            &["https", "metrics"]
        };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let found: std::collections::HashMap<String, SocketAddr> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| {
                    let f = v.get("fields").unwrap_or(&v);
                    (f["message"] == "listening").then_some(())?;
                    Some((
                        f["listener"].as_str()?.to_owned(),
                        f["addr"].as_str()?.parse().ok()?,
                    ))
                })
                .collect();
            if want.iter().all(|w| found.contains_key(*w)) {
                return found;
            }
            if let Ok(Some(s)) = child.try_wait() {
                panic!("gpuproxyd exited during start-up: {s}\n{text}");
            }
            assert!(
                Instant::now() < end,
                "gpuproxyd never said where it listens\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the metrics listener's `/stats` until the daemon says it is ready (the API
    /// listeners may require a PROXY header, so they are not used for this).
    async fn wait_ready(&mut self) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("gpuproxyd exited during start-up: {s}\n{}", self.log());
            }
            if let Ok(mut c) = super::client::Conn::plain(self.metrics, false).await
                && let Ok(r) = c.get("/stats").await
                && r.status == 200
                && r.json()["phase"] == "ready"
            {
                return;
            }
            assert!(
                Instant::now() < end,
                "gpuproxyd not ready in time\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The process's resident memory (`VmRSS`), KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit, failing the test after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < end,
                "gpuproxyd did not exit within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The metrics page as text.
    pub async fn scrape(&self) -> String {
        let mut c = super::client::Conn::plain(self.metrics, false)
            .await
            .expect("connect metrics");
        let r = c.get("/metrics").await.expect("scrape");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body.to_vec()).unwrap()
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a new pair into the daemon's certificate files (for SIGHUP tests).
pub fn replace_cert(d: &DaemonProc, cert_pem: &str, key_pem: &str) {
    certs::write_atomic(&d.dir.join("server.crt"), cert_pem);
    certs::write_atomic(&d.dir.join("server.key"), key_pem);
}
