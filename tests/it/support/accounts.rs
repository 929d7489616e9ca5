//! Accounts for tests: a migrated database of a test's own, the admin commands as a real user
//! runs them, and the environment a daemon needs to reach the services.

use std::process::{Command, Output};

use super::services::{Services, free_port};

/// A database of one test's own inside a service set, migrated with `gpuproxyd migrate`.
pub struct TestDb<'a> {
    pub services: &'a Services,
    pub name: String,
}

/// The database goes when the test ends (after its daemons, which are declared after it).
impl Drop for TestDb<'_> {
    fn drop(&mut self) {
        self.services.drop_database(&self.name);
    }
}

impl<'a> TestDb<'a> {
    /// The `data` of `account`'s events of type `kind`, in log order.
    pub async fn events_of(&self, account: &str, kind: &str) -> Vec<serde_json::Value> {
        self.client()
            .await
            .query(
                "SELECT e.data FROM account_events e JOIN accounts a ON a.id = e.account_id \
                 WHERE a.name = $1 AND e.type = $2 ORDER BY e.seq",
                &[&account, &kind],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// How many events `account`'s log holds.
    pub async fn event_count(&self, account: &str) -> i64 {
        self.client()
            .await
            .query_one(
                "SELECT count(*) FROM account_events e JOIN accounts a ON a.id = e.account_id \
                 WHERE a.name = $1",
                &[&account],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Writes `n` `budget.warning` events to `account`'s log the way a writer does (the next
    /// seqs, in one transaction), each padded with `pad` bytes: a burst no client reads as
    /// fast as it comes, or events for webhooks to deliver.
    pub async fn write_events(&self, account: &str, n: i64, pad: i32) {
        self.client()
            .await
            .execute(
                "WITH a AS (UPDATE accounts SET event_seq = event_seq + $2 WHERE name = $1 \
                            RETURNING id, event_seq) \
                 INSERT INTO account_events (account_id, seq, type, data) \
                 SELECT a.id, a.event_seq - $2 + g, 'budget.warning', \
                        jsonb_build_object('n', g, 'pad', repeat('x', $3)) \
                 FROM a, generate_series(1, $2) g",
                &[&account, &n, &pad],
            )
            .await
            .unwrap();
    }

    pub fn new(services: &'a Services, prefix: &str) -> TestDb<'a> {
        let name = format!("{prefix}_{}", free_port());
        services.create_database(&name);
        let out = gpuproxyd(
            &["migrate", "--database-url", &services.postgres_url(&name)],
            &[],
        );
        assert!(out.status.success(), "migrate failed: {}", stderr(&out));
        TestDb { services, name }
    }

    /// DATABASE_URL (through PgBouncer), REDIS_URL and JWT_SECRET, for a daemon or a command.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "DATABASE_URL".into(),
                self.services.pgbouncer_url(&self.name),
            ),
            ("REDIS_URL".into(), self.services.redis_url()),
            ("JWT_SECRET".into(), JWT_SECRET.into()),
            // one Redis namespace per test database: the daemons and commands of one test share
            // caches, revocations and rate-limit shares; other tests' are another deployment
            (
                "GPUPROXY_REDIS_KEY_PREFIX".into(),
                format!("gpx:{}:", self.name),
            ),
        ]
    }

    /// A direct connection to this database (not through PgBouncer), for reading the ledger.
    pub async fn client(&self) -> tokio_postgres::Client {
        let url = self.services.postgres_url(&self.name);
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// Turns exec on (docs/agents.md) for `account` and its key `token`; `env`: more of the
    /// CLI's environment (a sandbox's key prefix, so its daemons drop their cached keys).
    pub fn allow_exec(&self, account: &str, token: &str, env: &[(&str, &str)]) {
        self.cli_env(
            &["accounts", "update", account, "--agent-exec", "true"],
            env,
        );
        self.cli_env(
            &["keys", "update", public_id(token), "--allow-exec", "true"],
            env,
        );
    }

    /// Runs `gpuproxyd <args> --json` against this database and returns its JSON output.
    pub fn cli(&self, args: &[&str]) -> serde_json::Value {
        self.cli_env(args, &[])
    }

    /// [`TestDb::cli`] with more environment (later entries win: another `REDIS_URL`, the
    /// key prefix of a sandbox's daemons, …).
    pub fn cli_env(&self, args: &[&str], extra: &[(&str, &str)]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let mut env = self.env();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let out = gpuproxyd(&a, &env);
        assert!(
            out.status.success(),
            "gpuproxyd {args:?} failed: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "gpuproxyd {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Creates an account and one key for it; returns (account id, token).
    pub fn account_with_key(&self, name: &str, scopes: &[&str]) -> (i64, String) {
        let a = self.cli(&["accounts", "create", "--name", name]);
        let id = a[0]["id"].as_i64().unwrap();
        let mut args = vec!["keys", "create", "--account", name];
        for s in scopes {
            args.extend(["--scope", s]);
        }
        let k = self.cli(&args);
        (id, k["token"].as_str().unwrap().to_owned())
    }
}

pub const JWT_SECRET: &str = "test-secret-0123456789-0123456789-abcdef";

pub fn gpuproxyd(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpuproxyd"))
        .args(args)
        .envs(env.iter().cloned())
        .env_remove("RUST_LOG")
        .output()
        .expect("run gpuproxyd")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The public id of a token `gpx_<id>_<secret>`.
pub fn public_id(token: &str) -> &str {
    &token[4..16]
}
