//! `gpuproxyd migrate`: applies the SQL files in `migrations/` in order, each once.
//!
//! Each migration runs in its own transaction that first takes `pg_advisory_xact_lock`, then
//! checks `schema_migrations`: two daemons migrating at once serialize on the lock and the second
//! finds the work done. Only the simple query protocol is used, so this works directly against
//! PostgreSQL (the usual way for DDL) and through PgBouncer in transaction mode alike.

use tokio_postgres::{NoTls, SimpleQueryMessage};

/// The migrations, in order: (version, name, SQL). New files are appended here.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "accounts", include_str!("migrations/0001_accounts.sql")),
    (2, "rentals", include_str!("migrations/0002_rentals.sql")),
    (
        3,
        "rentals_truth",
        include_str!("migrations/0003_rentals_truth.sql"),
    ),
    (
        4,
        "provider_registry",
        include_str!("migrations/0004_provider_registry.sql"),
    ),
    (
        5,
        "rental_lifetime",
        include_str!("migrations/0005_rental_lifetime.sql"),
    ),
    (
        6,
        "spec_rentals",
        include_str!("migrations/0006_spec_rentals.sql"),
    ),
    (
        7,
        "budget_policies",
        include_str!("migrations/0007_budget_policies.sql"),
    ),
    (
        8,
        "provider_charges",
        include_str!("migrations/0008_provider_charges.sql"),
    ),
    (
        9,
        "idempotency_lease",
        include_str!("migrations/0009_idempotency_lease.sql"),
    ),
    (
        10,
        "account_events",
        include_str!("migrations/0010_account_events.sql"),
    ),
    (
        11,
        "expiring_notice",
        include_str!("migrations/0011_expiring_notice.sql"),
    ),
    (12, "webhooks", include_str!("migrations/0012_webhooks.sql")),
    (
        13,
        "offer_watches",
        include_str!("migrations/0013_offer_watches.sql"),
    ),
    (
        14,
        "provider_truth",
        include_str!("migrations/0014_provider_truth.sql"),
    ),
];

/// Key of the advisory lock every migration takes ("gpuproxy" in ASCII).
const LOCK_KEY: i64 = 0x6770_7570_726f_7879;

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub applied: Vec<(i64, &'static str)>,
    pub already: usize,
}

pub async fn run(url: &str) -> Result<Report, String> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    let conn_task = tokio::spawn(conn);
    let result = apply_all(&client).await;
    drop(client);
    let _ = conn_task.await;
    result
}

async fn apply_all(client: &tokio_postgres::Client) -> Result<Report, String> {
    let mut report = Report::default();
    for &(version, name, sql) in MIGRATIONS {
        let applied = one(client, version, name, sql).await.map_err(|e| {
            format!(
                "migration {version:04} ({name}) failed: {}",
                e.as_db_error()
                    .map_or(e.to_string(), |d| d.message().to_owned())
            )
        })?;
        if applied {
            report.applied.push((version, name));
        } else {
            report.already += 1;
        }
    }
    Ok(report)
}

/// Applies one migration unless it is recorded; returns whether it ran.
async fn one(
    client: &tokio_postgres::Client,
    version: i64,
    name: &str,
    sql: &str,
) -> Result<bool, tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({LOCK_KEY});
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version bigint PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());"
        ))
        .await?;
    let done = client
        .simple_query(&format!(
            "SELECT 1 FROM schema_migrations WHERE version = {version}"
        ))
        .await
        .map(|msgs| msgs.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))));
    let result = match done {
        Ok(true) => Ok(false),
        Ok(false) => {
            let quoted = name.replace('\'', "''");
            match client.batch_execute(sql).await {
                Ok(()) => client
                    .batch_execute(&format!(
                        "INSERT INTO schema_migrations (version, name) VALUES ({version}, '{quoted}')"
                    ))
                    .await
                    .map(|()| true),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(ran) => client.batch_execute("COMMIT").await.map(|()| ran),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}
