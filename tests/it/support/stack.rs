//! One test's stack in one call: its own database in the shared PostgreSQL/PgBouncer/Redis,
//! a sandbox of the providers, and a daemon over both. Tests that need another shape (no
//! sandbox, several daemons, a replica) put the parts together themselves.

use super::accounts::TestDb;
use super::daemon::DaemonProc;
use super::sandbox::Sandbox;
use super::services;

/// Fields drop in declaration order: the daemon goes before the sandbox and the database.
pub struct Stack {
    pub d: DaemonProc,
    pub sb: Sandbox,
    pub db: TestDb<'static>,
}

impl Stack {
    /// A database named after `name`, a sandbox started with `sandbox` (its flags) and a
    /// daemon with the `--set` overrides `config`.
    pub async fn start(name: &str, sandbox: &[&str], config: &[&str]) -> Stack {
        let db = TestDb::new(services::shared(), name);
        let sb = Sandbox::start(sandbox);
        let d = sb.daemon(&db, config).await;
        Stack { db, sb, d }
    }
}
