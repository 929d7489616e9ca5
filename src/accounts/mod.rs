//! PostgreSQL: the pool (reached through PgBouncer in transaction mode), the migrations, and the
//! account and key records (`store`).
//!
//! PgBouncer 1.18 in transaction mode cannot carry named prepared statements (measured:
//! `query` fails ~half the time; docs/design.md, "Measured crate behaviour"). So every statement here goes through
//! [`Db::query`], which uses tokio-postgres' `query_typed` (one unnamed statement per call, one
//! round trip, parameter types given up front), and every column read is a built-in type. bb8's
//! check-on-checkout is off (it cost a round trip per query); broken connections are dropped when
//! they are returned, and a query that met a closed connection is retried once on a fresh one.

pub mod apikey;
pub mod event_log;
pub mod migrate;
pub mod policy;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bb8::{Pool, PooledConnection, RunError};
use bb8_postgres::PostgresConnectionManager;
use metrics::{gauge, histogram};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Row};

use crate::config::{DatabaseConfig, Secret};
use crate::error::{Error, Kind, Side};
use crate::metrics::{
    DB_CONNECTIONS_ACTIVE, DB_CONNECTIONS_MAX, DB_POOL_WAIT_MS, DB_QUERIES_TOTAL, DB_UP,
};
use metrics::counter;

/// A typed parameter: value and its PostgreSQL type (what `query_typed` needs).
pub type Param<'a> = (&'a (dyn ToSql + Sync), Type);

pub struct Db {
    pool: Pool<PostgresConnectionManager<NoTls>>,
    query_timeout: Duration,
    max: u32,
    /// Last probe's result, for `/ready`; request failures set it too.
    up: AtomicBool,
    /// Told, after a transaction commits, which accounts it wrote events for (the event
    /// streams' fan-out publishes them); set once at start.
    on_events: std::sync::OnceLock<EventsHook>,
}

/// What [`Db::on_events_committed`] installs.
type EventsHook = Box<dyn Fn(&[i64]) + Send + Sync>;

tokio::task_local! {
    /// The accounts the running transaction wrote events for ([`events_written`]).
    static EVENT_ACCOUNTS: std::cell::RefCell<Vec<i64>>;
}

/// Called by whatever appends to the event log inside [`Db::transaction`]: once the
/// transaction commits, the `on_events` hook hears of `account_id` (and not if it rolls back).
pub fn events_written(account_id: i64) {
    let _ = EVENT_ACCOUNTS.try_with(|a| a.borrow_mut().push(account_id));
}

impl Db {
    /// Builds the pool without connecting: the daemon starts (and reports the database down)
    /// even while PgBouncer is unreachable, and the pool connects once it is back.
    pub fn new(url: &Secret, cfg: &DatabaseConfig) -> Result<Arc<Db>, String> {
        let mut pg: tokio_postgres::Config = url
            .expose()
            .parse()
            .map_err(|e| format!("DATABASE_URL: {e}"))?;
        pg.connect_timeout(cfg.connect_timeout_ms.get());
        if pg.get_application_name().is_none() {
            pg.application_name("gpuproxyd");
        }
        let pool = Pool::builder()
            .max_size(cfg.pool_size.get())
            .min_idle(None)
            .test_on_check_out(false)
            .connection_timeout(cfg.acquire_timeout_ms.get())
            .max_lifetime(Some(
                cfg.max_lifetime_ms
                    .get()
                    .max(std::time::Duration::from_millis(1)),
            ))
            .idle_timeout(Some(
                cfg.idle_timeout_ms
                    .get()
                    .max(std::time::Duration::from_millis(1)),
            ))
            .build_unchecked(PostgresConnectionManager::new(pg, NoTls));
        Ok(Arc::new(Db {
            pool,
            query_timeout: cfg.query_timeout_ms.get(),
            max: cfg.pool_size.get(),
            up: AtomicBool::new(false),
            on_events: std::sync::OnceLock::new(),
        }))
    }

    /// Sets the hook told of committed events (see [`events_written`]); later calls are ignored.
    pub fn on_events_committed(&self, f: impl Fn(&[i64]) + Send + Sync + 'static) {
        let _ = self.on_events.set(Box::new(f));
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A pooled connection that is still open. Connections whose server went away (PgBouncer
    /// stopped or switched to the next host of `DATABASE_URL`, PostgreSQL restarted) are
    /// dropped here, not handed to a query: a switch costs reconnects, not failed requests.
    async fn checkout(
        &self,
    ) -> Result<PooledConnection<'_, PostgresConnectionManager<NoTls>>, Error> {
        let mut dropped = 0;
        loop {
            match self.pool.get().await {
                // back in the pool, bb8 sees it broken (`is_closed`) and discards it
                Ok(c) if c.is_closed() && dropped <= self.max => dropped += 1,
                Ok(c) => return Ok(c),
                Err(e) => {
                    self.up.store(false, Ordering::Relaxed);
                    return Err(match e {
                        RunError::User(e) => unavailable("cannot connect to the database", e),
                        RunError::TimedOut => Error::new(
                            Kind::DatabaseUnavailable,
                            Side::Internal,
                            "no database connection available in time",
                        ),
                    });
                }
            }
        }
    }

    /// Runs one statement as an unnamed prepared statement and returns its rows.
    pub async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error> {
        self.run(sql, params, true).await
    }

    /// `counted`: whether the statement shows in `gpuproxy_db_queries_total` (the health probe
    /// does not, so the counter measures what requests and jobs cost).
    async fn run(&self, sql: &str, params: &[Param<'_>], counted: bool) -> Result<Vec<Row>, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let waited = Instant::now();
            let conn = self.checkout().await?;
            histogram!(DB_POOL_WAIT_MS).record(waited.elapsed().as_secs_f64() * 1e3);
            let r = tokio::time::timeout(self.query_timeout, conn.query_typed(sql, params)).await;
            if counted {
                let ok = matches!(r, Ok(Ok(_)));
                counter!(DB_QUERIES_TOTAL, "result" => if ok { "ok" } else { "error" })
                    .increment(1);
            }
            match r {
                Ok(Ok(rows)) => {
                    self.up.store(true, Ordering::Relaxed);
                    return Ok(rows);
                }
                // A connection PgBouncer closed (restart, server_lifetime, a crash) is only
                // noticed on use; the next attempt gets another (checkout skips those already
                // known closed), up to one per pooled connection.
                Ok(Err(e)) if e.is_closed() && attempt <= self.max => continue,
                Ok(Err(e)) => {
                    let err = classify(e);
                    if matches!(err.kind, Kind::DatabaseUnavailable) {
                        self.up.store(false, Ordering::Relaxed);
                    }
                    return Err(err);
                }
                Err(_) => {
                    self.up.store(false, Ordering::Relaxed);
                    return Err(Error::new(
                        Kind::DatabaseUnavailable,
                        Side::Internal,
                        "database query timed out",
                    ));
                }
            }
        }
    }

    /// Runs `f` in one transaction on one pooled connection (BEGIN/COMMIT go as simple queries,
    /// which transaction pooling carries; statements inside use `query_typed` like everything
    /// else). Rolled back when `f` fails; the whole is bounded by `database.query_timeout_ms`
    /// times 4 (a few statements).
    pub async fn transaction<T>(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let work = async {
            let mut conn = self.checkout().await?;
            let tx = conn.transaction().await.map_err(classify)?;
            match f(&tx).await {
                Ok(v) => {
                    tx.commit().await.map_err(classify)?;
                    counter!(DB_QUERIES_TOTAL, "result" => "ok").increment(1);
                    Ok(v)
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            }
        };
        let (result, accounts) = EVENT_ACCOUNTS
            .scope(std::cell::RefCell::new(Vec::new()), async {
                let r = tokio::time::timeout(self.query_timeout * 4, work).await;
                (r, EVENT_ACCOUNTS.with(|a| a.take()))
            })
            .await;
        match result {
            Ok(r) => {
                if r.is_ok()
                    && !accounts.is_empty()
                    && let Some(f) = self.on_events.get()
                {
                    f(&accounts);
                }
                r
            }
            Err(_) => Err(Error::new(
                Kind::DatabaseUnavailable,
                Side::Internal,
                "database transaction timed out",
            )),
        }
    }

    pub async fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, Error> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// [`Db::query_opt`] for a create under a per-account cap (`INSERT … WHERE (SELECT count(*)
    /// …) < cap`): run in a transaction that first takes a lock on (`cap`, `account_id`), so
    /// concurrent creates of one account count one after another. Without it, under READ
    /// COMMITTED each sees room and all insert (40 parallel creates stored 21 of 20 watches). The
    /// lock is a transaction-scoped advisory lock, not the account's row: rentals and the event
    /// log lock that row, and a cap must not take part in their lock order.
    pub async fn query_opt_capped(
        &self,
        cap: &str,
        account_id: i64,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, Error> {
        self.transaction(async |tx| {
            tx.query_typed(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
                &[(&cap, Type::TEXT), (&account_id, Type::INT8)],
            )
            .await
            .map_err(classify)?;
            Ok(tx
                .query_typed(sql, params)
                .await
                .map_err(classify)?
                .into_iter()
                .next())
        })
        .await
    }

    /// Probes a pool whose figures are not published (the read replica's), every `interval`:
    /// keeps [`Db::is_up`] true while it answers, so callers can skip it while it does not.
    pub async fn probe(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = self.run("SELECT 1", &[], false).await;
        }
    }

    /// Publishes the pool's size (alerts divide the busy connections by it).
    pub fn publish_pool_size(&self) {
        gauge!(DB_CONNECTIONS_MAX).set(self.max as f64);
    }

    /// One health probe (the background service `database_health`): `SELECT 1` (which sets
    /// `up` either way), then the up and busy-connection gauges.
    pub async fn health_round(&self) {
        let _ = self.run("SELECT 1", &[], false).await;
        gauge!(DB_UP).set(if self.is_up() { 1.0 } else { 0.0 });
        let s = self.pool.state();
        gauge!(DB_CONNECTIONS_ACTIVE).set(s.connections.saturating_sub(s.idle_connections) as f64);
    }
}

fn unavailable(what: &'static str, e: tokio_postgres::Error) -> Error {
    Error::new(Kind::DatabaseUnavailable, Side::Internal, what).with_source(e)
}

/// Splits database errors into "the database is unreachable" (503, retry later), a uniqueness
/// conflict (409) and everything else (500).
pub fn classify(e: tokio_postgres::Error) -> Error {
    let code = e.as_db_error().map(|d| d.code().code().to_owned());
    match code.as_deref() {
        Some("23505") => Error::new(Kind::Conflict, Side::Client, "already exists").with_source(e),
        // connection exception, operator intervention (shutdown), insufficient resources,
        // PgBouncer's own errors (08P01)
        // a read-only server (a standby that `DATABASE_URL` reached without
        // `target_session_attrs=read-write`, or a primary just demoted): unavailable for writes
        Some("25006") => unavailable("the database is read-only", e),
        Some(c) if c.starts_with("08") || c.starts_with("57") || c.starts_with("53") => {
            unavailable("the database is unavailable", e)
        }
        Some(_) => Error::internal(e),
        None => unavailable("the database is unavailable", e),
    }
}
