//! `gpuproxyd migrate`: applies the SQL files in `migrations/` in name order, each once. The
//! list is made from the folder at build time (build.rs): a new migration is one new file.
//! Each applied migration's SHA-256 is recorded, and a migration whose text changed after it
//! was applied stops the run (the database would no longer be what the files say).
//!
//! Each migration runs in its own transaction that first takes `pg_advisory_xact_lock`, then
//! checks `schema_migrations`: two daemons migrating at once serialize on the lock and the second
//! finds the work done. Only the simple query protocol is used, so this works directly against
//! PostgreSQL (the usual way for DDL) and through PgBouncer in transaction mode alike.

use tokio_postgres::{NoTls, SimpleQueryMessage};

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

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
        let applied = one(client, version, name, sql)
            .await
            .map_err(|e| format!("migration {version:04} ({name}) failed: {e}"))?;
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
) -> Result<bool, String> {
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({LOCK_KEY});
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version bigint PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());
             ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text;"
        ))
        .await
        .map_err(db_error)?;
    let sum = checksum(sql);
    let recorded = client
        .simple_query(&format!(
            "SELECT coalesce(checksum, '') FROM schema_migrations WHERE version = {version}"
        ))
        .await
        .map(|msgs| {
            msgs.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
                _ => None,
            })
        });
    let result = match recorded {
        // applied before checksums were kept: record this one
        Ok(Some(r)) if r.is_empty() => client
            .batch_execute(&format!(
                "UPDATE schema_migrations SET checksum = '{sum}' WHERE version = {version}"
            ))
            .await
            .map(|()| false)
            .map_err(db_error),
        Ok(Some(r)) if r == sum => Ok(false),
        Ok(Some(r)) => Err(format!(
            "its file changed after it was applied (SHA-256 {sum}, applied as {r}); \
             restore the file and put the change in a new migration"
        )),
        Ok(None) => {
            let quoted = name.replace('\'', "''");
            match client.batch_execute(sql).await {
                Ok(()) => client
                    .batch_execute(&format!(
                        "INSERT INTO schema_migrations (version, name, checksum) \
                         VALUES ({version}, '{quoted}', '{sum}')"
                    ))
                    .await
                    .map(|()| true)
                    .map_err(db_error),
                Err(e) => Err(db_error(e)),
            }
        }
        Err(e) => Err(db_error(e)),
    };
    match result {
        Ok(ran) => client
            .batch_execute("COMMIT")
            .await
            .map(|()| ran)
            .map_err(db_error),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// A migration's SHA-256, hex.
fn checksum(sql: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn db_error(e: tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or(e.to_string(), |d| d.message().to_owned())
}
