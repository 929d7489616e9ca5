//! The sandbox providers (`gpuproxy-sandbox`) as a process on free ports, with helpers to switch
//! faults, read its call counters and fetch its raw inventory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub const VAST_KEY: &str = "test-vast-key";
pub const IONET_KEY: &str = "test-ionet-key";

pub struct Sandbox {
    child: Child,
    pub vast: String,
    pub ionet: String,
}

impl Sandbox {
    pub fn start(extra: &[&str]) -> Sandbox {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gpuproxy-sandbox"))
            .args(["--vast-key", VAST_KEY, "--ionet-key", IONET_KEY])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gpuproxy-sandbox");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("sandbox prints its URLs");
        let v: Value = serde_json::from_str(&line).expect("a JSON line of URLs");
        Sandbox {
            child,
            vast: v["vastai"].as_str().unwrap().to_owned(),
            ionet: v["ionet"].as_str().unwrap().to_owned(),
        }
    }

    /// `--set` overrides pointing a daemon at this sandbox.
    pub fn daemon_settings(&self) -> Vec<String> {
        vec![
            format!("providers.vastai.base_url={:?}", self.vast),
            format!("providers.ionet.base_url={:?}", self.ionet),
        ]
    }

    /// A daemon against this sandbox, `db` and its Redis, with extra `--set` overrides. One Redis
    /// namespace per sandbox: the daemons of one test share it; other tests' entries (from another
    /// sandbox) are not seen.
    pub async fn daemon(
        &self,
        db: &super::accounts::TestDb<'_>,
        set: &[&str],
    ) -> super::daemon::DaemonProc {
        self.daemon_with_env(db, set, &[]).await
    }

    /// [`Sandbox::daemon`] with more environment variables (another provider's key, say).
    pub async fn daemon_with_env(
        &self,
        db: &super::accounts::TestDb<'_>,
        set: &[&str],
        extra_env: &[(&str, &str)],
    ) -> super::daemon::DaemonProc {
        super::daemon::DaemonProc::start(self.daemon_opts(db, set, extra_env)).await
    }

    /// Restarts `old` in place: SIGTERM (its drain), then a new daemon with the `set` overrides
    /// on the same HTTPS address with the same certificate (what clients that reconnect see).
    pub async fn restart_in_place(
        &self,
        db: &super::accounts::TestDb<'_>,
        set: &[&str],
        old: &mut super::daemon::DaemonProc,
    ) -> super::daemon::DaemonProc {
        let cert = std::fs::read_to_string(old.dir.join("server.crt")).unwrap();
        let key = std::fs::read_to_string(old.dir.join("server.key")).unwrap();
        old.signal(libc::SIGTERM);
        old.wait_exit(std::time::Duration::from_secs(30)).await;
        let mut opts = self.daemon_opts(db, set, &[]);
        opts.https_port = Some(old.https.port());
        let new = super::daemon::DaemonProc::start(opts).await;
        super::daemon::replace_cert(&new, &cert, &key);
        new.signal(libc::SIGHUP);
        new
    }

    /// What [`Sandbox::daemon_with_env`] starts a daemon with, for callers that add options
    /// (a fixed port).
    pub fn daemon_opts(
        &self,
        db: &super::accounts::TestDb<'_>,
        set: &[&str],
        extra_env: &[(&str, &str)],
    ) -> super::daemon::Opts {
        let mut env = db.env();
        env.extend(Sandbox::daemon_env());
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut all = self.daemon_settings();
        all.push(format!("redis.key_prefix={:?}", self.redis_prefix()));
        all.extend(set.iter().map(|s| s.to_string()));
        super::daemon::Opts {
            env,
            set: all,
            ..Default::default()
        }
    }

    /// The Redis namespace of this sandbox's daemons (a command that should reach them, such as
    /// `keys revoke`, needs it as `GPUPROXY_REDIS_KEY_PREFIX`).
    pub fn redis_prefix(&self) -> String {
        format!("gpx:{}:", self.vast.rsplit(':').next().unwrap())
    }

    pub fn daemon_env() -> Vec<(String, String)> {
        vec![
            ("VASTAI_API_KEY".into(), VAST_KEY.into()),
            ("IONET_API_KEY".into(), IONET_KEY.into()),
        ]
    }

    fn base(&self, provider: &str) -> &str {
        if provider == "vastai" {
            &self.vast
        } else {
            &self.ionet
        }
    }

    pub async fn faults(&self, provider: &str, faults: &str) {
        let out = raw_call(
            self.base(provider),
            "POST",
            "/_sandbox/faults",
            faults,
            None,
        )
        .await;
        assert_eq!(out["ok"], true, "faults refused: {out}");
    }

    pub async fn heal(&self, provider: &str) {
        self.faults(provider, "{}").await;
    }

    /// Calls received per operation since the last reset.
    pub async fn calls(&self, provider: &str, op: &str) -> u64 {
        let v = raw_call(self.base(provider), "GET", "/_sandbox/stats", "", None).await;
        v["calls"][op].as_u64().unwrap_or(0)
    }

    /// The requests of operation `op` one provider's sandbox recorded, oldest first (method,
    /// path, query, body).
    pub async fn requests(&self, provider: &str, op: &str) -> Vec<Value> {
        let log = self
            .control(provider, "GET", "/_sandbox/requests", "")
            .await;
        log["requests"]
            .as_array()
            .map(|r| r.iter().filter(|r| r["op"] == op).cloned().collect())
            .unwrap_or_default()
    }

    /// A sandbox control call (`/_sandbox/...`) on one provider's listener.
    pub async fn control(&self, provider: &str, method: &str, path: &str, body: &str) -> Value {
        raw_call(self.base(provider), method, path, body, None).await
    }

    /// A call to the sandbox Vast's own API with the provider key, as the renter's own tools
    /// (Vast's console, its CLI) would make it: a reboot, say.
    pub async fn vast_api(&self, method: &str, path: &str, body: &str) -> Value {
        let bearer = format!("Bearer {VAST_KEY}");
        raw_call(
            &self.vast,
            method,
            path,
            body,
            Some(("authorization", &bearer)),
        )
        .await
    }

    /// The sandbox Vast's instances (live and destroyed): keys, bid, charges.
    pub async fn vast_ledger(&self) -> Vec<Value> {
        self.control("vastai", "GET", "/_sandbox/vast/instances", "")
            .await["instances"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The sandbox io.net's deployments: configuration, price, keys.
    pub async fn ionet_deployments(&self) -> Vec<Value> {
        self.control("ionet", "GET", "/_sandbox/ionet/deployments", "")
            .await["deployments"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The sandbox io.net's deployment with this id (`provider_instance_id` of an instance).
    pub async fn ionet_deployment(&self, id: &Value) -> Value {
        self.ionet_deployments()
            .await
            .into_iter()
            .find(|x| x["id"] == *id)
            .unwrap_or_else(|| panic!("no sandbox deployment {id}"))
    }

    pub async fn reset(&self) {
        for p in ["vastai", "ionet"] {
            raw_call(self.base(p), "POST", "/_sandbox/reset", "", None).await;
        }
    }

    /// The raw Vast.ai offers (up to 10,000) and io.net hardware, as the providers send them.
    pub async fn raw_inventory(&self) -> (Vec<Value>, Vec<Value>) {
        let v = raw_call(
            &self.vast,
            "POST",
            "/api/v0/bundles/",
            r#"{"limit":10000}"#,
            None,
        )
        .await;
        let i = raw_call(
            &self.ionet,
            "GET",
            "/enterprise/v1/io-cloud/vmaas/hardware",
            "",
            Some(("x-api-key", IONET_KEY)),
        )
        .await;
        (
            v["offers"].as_array().unwrap().clone(),
            i["data"]["hardware"].as_array().unwrap().clone(),
        )
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn raw_call(
    base: &str,
    method: &str,
    path: &str,
    body: &str,
    header: Option<(&str, &str)>,
) -> Value {
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let mut c = super::client::Conn::plain(addr, false)
        .await
        .expect("connect to the sandbox");
    let mut req =
        super::client::request(method, path, bytes::Bytes::copy_from_slice(body.as_bytes()));
    if let Some((k, v)) = header {
        req.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let r = c.send(req).await.expect("sandbox answers");
    serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "sandbox answered non-JSON ({e}): {}",
            String::from_utf8_lossy(&r.body)
        )
    })
}
