//! The real services tests need, started on free ports in a temporary directory: PostgreSQL
//! (initdb + postgres, stopped with pg_ctl), PgBouncer in transaction mode in front of it, and
//! Redis without persistence.
//!
//! [`shared`] starts one set per test binary (tests isolate themselves by database name or key
//! prefix); [`Services::start`] starts a private set that is stopped when dropped. Either way the
//! processes are also bound to this test process: they get a parent-death signal (they are spawned
//! from a thread that lives as long as the process), and the shared set is stopped by an `atexit`
//! hook, so a panicking or failing test leaves nothing behind. Readiness is polled with a deadline.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const DB_USER: &str = "gpuproxy";

/// A port nobody listens on right now, below the ephemeral range (32768+), so the many outgoing
/// connections tests make cannot take it between choosing and binding.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seed = RandomState::new();
    loop {
        let n = seed.hash_one((std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let port = 20_000 + (n % 12_000) as u16;
        // never the same port twice in one process: two services (or two temporary directories
        // named after a port) chosen before either binds would otherwise collide
        static HANDED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
        let mut handed = HANDED.lock().unwrap();
        if !handed.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.push(port);
            return port;
        }
    }
}

/// Polls `f` until it returns `Some` or the deadline passes.
pub fn poll_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn which(name: &str, dirs: &[PathBuf], package: &str) -> PathBuf {
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "`{name}` not found: install the Debian package `{package}` (apt-get install {package})"
    );
}

/// Directories of the newest PostgreSQL server binaries Debian installed.
fn pg_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    dirs
}

/// The unprivileged account the servers run as when tests run as root (PostgreSQL and PgBouncer
/// refuse to run as root).
fn service_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        panic!(
            "tests run as root and there is no `postgres` user: install the Debian package `postgresql`"
        );
    }
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Children are spawned from this thread, which never exits: the parent-death signal fires when
/// the spawning *thread* ends, so spawning from a short-lived test thread would kill them early.
fn spawn(mut cmd: Command, death_signal: i32) -> Child {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let user = service_user();
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user
                && (libc::setgid(gid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            // after setuid, which clears it
            libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong);
            Ok(())
        });
    }
    let tx = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnJob>();
            std::thread::Builder::new()
                .name("service-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .unwrap();
            Mutex::new(tx)
        })
        .lock()
        .unwrap()
        .clone();
    let (rtx, rrx) = mpsc::channel();
    tx.send((cmd, rtx)).unwrap();
    rrx.recv().unwrap().expect("spawn service")
}

pub fn chown_to_service_user(path: &Path) {
    if let Some((uid, gid)) = service_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

pub fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// The settings of the shipped `config/pgbouncer.ini` that decide how an outage ends (the
/// line after each `; recovery` comment), so the tests run PgBouncer as operators are told to.
fn shipped_recovery_settings() -> String {
    let ini = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgbouncer.ini"),
    )
    .expect("config/pgbouncer.ini");
    let mut out = String::new();
    let mut take = false;
    for line in ini.lines() {
        if line.starts_with("; recovery") {
            take = true;
        } else if take && !line.starts_with(';') {
            out.push_str(line);
            out.push('\n');
            take = false;
        }
    }
    assert!(
        out.contains("server_login_retry"),
        "recovery settings in config/pgbouncer.ini"
    );
    out
}

/// A PostgreSQL server on `port` over the cluster in `data` (its socket in `sock`), set up for
/// tests: no fsync, loopback only.
fn postgres(name: &'static str, bin: &Path, data: &Path, sock: &Path, port: u16) -> Svc {
    let (bin, data, sock) = (bin.to_path_buf(), data.to_path_buf(), sock.to_path_buf());
    Svc::new(name, port, libc::SIGQUIT, move || {
        let mut c = Command::new(&bin);
        c.arg("-D").arg(&data).arg("-p").arg(port.to_string());
        c.arg("-k").arg(&sock);
        for s in [
            "listen_addresses=127.0.0.1",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=300",
            "shared_buffers=32MB",
            "log_min_messages=warning",
        ] {
            c.arg("-c").arg(s);
        }
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    })
}

/// A PgBouncer (transaction pooling, the shipped recovery settings) on a free port in front of
/// the PostgreSQL on `pg_port`, its files `dir/<name>.*`; `db_params` go on its catch-all
/// database line (a `connect_query`, say).
fn pgbouncer(dir: &Path, name: &'static str, pg_port: u16, pool_size: u32, db_params: &str) -> Svc {
    let bin = which("pgbouncer", &[], "pgbouncer");
    let port = free_port();
    let ini = dir.join(format!("{name}.ini"));
    let userlist = dir.join(format!("{name}.users"));
    std::fs::write(&userlist, format!("\"{DB_USER}\" \"\"\n")).unwrap();
    std::fs::write(
        &ini,
        format!(
            "[databases]\n* = host=127.0.0.1 port={pg_port} {db_params}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
             default_pool_size = {pool_size}\nmax_client_conn = 5000\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             admin_users = {DB_USER}\nlogfile = {}\nserver_reset_query =\n{}",
            userlist.display(),
            dir.join(format!("{name}.log")).display(),
            shipped_recovery_settings()
        ),
    )
    .unwrap();
    for p in [&ini, &userlist] {
        chown_to_service_user(p);
    }
    Svc::new(name, port, libc::SIGINT, move || {
        let mut c = Command::new(&bin);
        c.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
        c
    })
}

/// One server process that can be stopped and started again on the same port.
pub struct Svc {
    pub name: &'static str,
    pub port: u16,
    make: Box<dyn Fn() -> Command + Send + Sync>,
    death_signal: i32,
    child: Mutex<Option<Child>>,
}

impl Svc {
    pub fn new(
        name: &'static str,
        port: u16,
        death_signal: i32,
        make: impl Fn() -> Command + Send + Sync + 'static,
    ) -> Svc {
        Svc {
            name,
            port,
            make: Box::new(make),
            death_signal,
            child: Mutex::new(None),
        }
    }

    /// Starts the process and waits until its port accepts connections.
    pub fn start(&self) {
        let mut guard = self.child.lock().unwrap();
        assert!(guard.is_none(), "{} already running", self.name);
        let mut cmd = (self.make)();
        cmd.stdin(Stdio::null());
        let mut child = spawn(cmd, self.death_signal);
        let port = self.port;
        poll_until(
            &format!("{} on port {port}", self.name),
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{} exited during start-up: {status}", self.name);
                }
                port_open(port).then_some(())
            },
        );
        *guard = Some(child);
    }

    /// Stops the process (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            stop_child(&mut child, libc::SIGTERM);
        }
    }

    /// Stops the process with `sig` (PostgreSQL: SIGINT is its fast shutdown, which ends client
    /// sessions instead of waiting for them), and waits for it.
    pub fn stop_with(&self, sig: i32) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            stop_child(&mut child, sig);
        }
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }
}

/// A service a test started for itself stops with it (the shared set is stopped by its
/// `atexit` hook instead).
impl Drop for Svc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop_child(child: &mut Child, sig: i32) {
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// PostgreSQL, PgBouncer (transaction pooling) and Redis, each on its own free port.
pub struct Services {
    pub dir: PathBuf,
    pub postgres: Svc,
    pub pgbouncer: Svc,
    pub redis: Svc,
    pg_bin: PathBuf,
}

pub struct Options {
    /// PgBouncer's `default_pool_size`: server connections per database/user pair.
    pub pgbouncer_pool_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pgbouncer_pool_size: 20,
        }
    }
}

impl Services {
    pub fn start() -> Services {
        Services::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Services {
        let dir = std::env::temp_dir().join(format!(
            "gpuproxyd-services-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        chown_to_service_user(&dir);

        let pg_dirs = pg_bin_dirs();
        let initdb = which("initdb", &pg_dirs, "postgresql");
        let postgres_bin = which("postgres", &pg_dirs, "postgresql");
        let pg_bin = postgres_bin.parent().unwrap().to_path_buf();
        let redis_bin = which("redis-server", &[], "redis-server");

        let data = dir.join("pg");
        let mut init = Command::new(&initdb);
        init.args(["-D"]).arg(&data).args([
            "-U",
            DB_USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--no-instructions",
        ]);
        if let Some((uid, gid)) = service_user() {
            init.uid(uid).gid(gid);
        }
        run_ok(&mut init, "initdb");

        let pg_port = free_port();
        let pg = postgres("postgres", &postgres_bin, &data, &dir, pg_port);

        let bouncer = pgbouncer(&dir, "pgbouncer", pg_port, opts.pgbouncer_pool_size, "");

        let redis_port = free_port();
        let redis_dir = dir.join("redis");
        std::fs::create_dir_all(&redis_dir).unwrap();
        chown_to_service_user(&redis_dir);
        let redis = Svc::new("redis", redis_port, libc::SIGTERM, move || {
            let mut c = Command::new(&redis_bin);
            c.args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .arg("--dir")
                .arg(&redis_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        });

        let s = Services {
            dir,
            postgres: pg,
            pgbouncer: bouncer,
            redis,
            pg_bin,
        };
        s.postgres.start();
        s.pgbouncer.start();
        s.redis.start();
        s
    }

    /// A URL that reaches PostgreSQL through PgBouncer (what the daemon uses).
    pub fn pgbouncer_url(&self, db: &str) -> String {
        format!(
            "postgres://{DB_USER}@127.0.0.1:{}/{db}",
            self.pgbouncer.port
        )
    }

    /// Another PgBouncer in front of this PostgreSQL, started (stopped when dropped: the caller
    /// owns it). `db_params` as for the built-in one, e.g. a `connect_query` that makes every
    /// session read-only, as a hot standby's are.
    pub fn extra_pgbouncer(&self, name: &'static str, db_params: &str) -> Svc {
        let b = pgbouncer(&self.dir, name, self.postgres.port, 20, db_params);
        b.start();
        b
    }

    /// A hot standby of this PostgreSQL (`pg_basebackup -R`, streaming replication), started;
    /// stopped when the returned service is dropped.
    pub fn start_replica(&self) -> Svc {
        let port = free_port();
        let data = self.dir.join(format!("replica-{port}"));
        let mut backup = Command::new(which(
            "pg_basebackup",
            std::slice::from_ref(&self.pg_bin),
            "postgresql",
        ));
        backup
            .args(["-h", "127.0.0.1", "-p", &self.postgres.port.to_string()])
            .args([
                "-U",
                DB_USER,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-D",
            ])
            .arg(&data);
        if let Some((uid, gid)) = service_user() {
            backup.uid(uid).gid(gid);
        }
        run_ok(&mut backup, "pg_basebackup");
        let replica = postgres(
            "postgres-replica",
            &self.pg_bin.join("postgres"),
            &data,
            &self.dir,
            port,
        );
        replica.start();
        replica
    }

    /// A direct URL to a server of this set other than the primary (a replica).
    pub fn url_on_port(&self, port: u16, db: &str) -> String {
        format!("postgres://{DB_USER}@127.0.0.1:{port}/{db}")
    }

    /// A `DATABASE_URL` naming several PgBouncers (tried in order when connecting), with
    /// `query` appended (`target_session_attrs=read-write`, say).
    pub fn multi_host_url(&self, ports: &[u16], db: &str, query: &str) -> String {
        let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("postgres://{DB_USER}@{}/{db}?{query}", hosts.join(","))
    }

    /// A URL that reaches PostgreSQL directly (for migrations and DDL).
    pub fn postgres_url(&self, db: &str) -> String {
        format!("postgres://{DB_USER}@127.0.0.1:{}/{db}", self.postgres.port)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis.port)
    }

    /// `psql -c sql` against the `postgres` database of this set's PostgreSQL.
    fn psql(&self, sql: &str) -> Command {
        let psql = which(
            "psql",
            std::slice::from_ref(&self.pg_bin),
            "postgresql-client",
        );
        let mut c = Command::new(psql);
        c.args(["-h", "127.0.0.1", "-p", &self.postgres.port.to_string()])
            .args(["-U", DB_USER, "-d", "postgres", "-q", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "3");
        c
    }

    /// Creates a database for one test to own.
    pub fn create_database(&self, name: &str) {
        run_ok(
            &mut self.psql(&format!("CREATE DATABASE \"{name}\"")),
            "CREATE DATABASE",
        );
    }

    /// Drops a test's database and ends every connection to it, PgBouncer's idle server
    /// connections included: a finished test holds none of PostgreSQL's `max_connections`
    /// (PgBouncer would keep them for `server_idle_timeout`, 10 minutes, and a suite run
    /// leaves hundreds). Best effort: the server may be stopped by the test itself.
    pub fn drop_database(&self, name: &str) {
        if self.postgres.is_running() {
            let _ = self
                .psql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Every process id this set started that is still running.
    pub fn pids(&self) -> Vec<u32> {
        [&self.postgres, &self.pgbouncer, &self.redis]
            .iter()
            .filter_map(|s| s.pid())
            .collect()
    }

    fn shutdown(&self) {
        self.redis.stop();
        self.pgbouncer.stop();
        if self.postgres.is_running() {
            // pg_ctl's fast shutdown waits for the server to be gone.
            let _ = Command::new(self.pg_bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("pg"))
                .args(["stop", "-m", "fast", "-w", "-t", "20"])
                .uid(service_user().map_or(unsafe { libc::getuid() }, |u| u.0))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.postgres.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.shutdown();
    }
}

static SHARED: OnceLock<Services> = OnceLock::new();

extern "C" fn stop_shared() {
    if let Some(s) = SHARED.get() {
        s.shutdown();
    }
}

/// The set shared by every test of this binary, started on first use and stopped at exit.
pub fn shared() -> &'static Services {
    SHARED.get_or_init(|| {
        let s = Services::start();
        unsafe {
            libc::atexit(stop_shared);
        }
        s
    })
}
