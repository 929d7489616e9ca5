//! Key lookups on a read replica (`DATABASE_READ_URL`), so the primary is spared the reads
//! authentication makes. A replica lags: what it does not know (a key created a moment ago) is
//! asked of the primary, and for `database.read_primary_after_change_ms` after any change this
//! daemon hears of (a revocation or account change on the revocation channel, a resubscription
//! after Redis was away), every lookup goes to the primary, because the replica may still show
//! the row as it was. An unreachable replica is skipped until its probe answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::counter;

use crate::accounts::Db;
use crate::accounts::store::{self, KeyRecord};
use crate::error::Error;
use crate::metrics::AUTH_LOOKUPS_TOTAL;

pub struct ReadReplica {
    db: Arc<Db>,
    started: Instant,
    /// Milliseconds after `started` until which lookups go to the primary.
    primary_until_ms: AtomicU64,
    window: Duration,
    hits: metrics::Counter,
}

/// Where a record came from (each counts in `gpuproxy_auth_lookups_total` under its own source).
pub enum Source {
    Replica,
    Primary,
}

impl ReadReplica {
    pub fn new(db: Arc<Db>, window: Duration) -> ReadReplica {
        ReadReplica {
            db,
            started: Instant::now(),
            primary_until_ms: AtomicU64::new(0),
            window,
            hits: counter!(AUTH_LOOKUPS_TOTAL, "source" => "replica"),
        }
    }

    /// The replica's pool, for its probe and `/ready`.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// A key or account changed: the replica may not show it yet.
    pub fn changed(&self) {
        let until = (self.started.elapsed() + self.window).as_millis() as u64;
        self.primary_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    fn usable(&self) -> bool {
        self.db.is_up()
            && self.started.elapsed().as_millis() as u64
                >= self.primary_until_ms.load(Ordering::Relaxed)
    }

    /// The record of `public_id`: from the replica when it is usable and knows the key,
    /// otherwise from `primary`.
    pub async fn key_record(
        &self,
        primary: &Db,
        public_id: &str,
    ) -> Result<(Option<KeyRecord>, Source), Error> {
        if self.usable()
            && let Ok(Some(rec)) = store::key_record(&self.db, public_id).await
        {
            self.hits.increment(1);
            return Ok((Some(rec), Source::Replica));
        }
        Ok((
            store::key_record(primary, public_id).await?,
            Source::Primary,
        ))
    }
}
