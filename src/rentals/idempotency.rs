//! `Idempotency-Key` on `POST /v1/instances` and `DELETE /v1/instances/{id}`: the first request
//! with a key runs; the same key with the same request and body replays the first answer (status
//! and body); the same key with another request or body gets 422 `idempotency_key_reused`.
//!
//! - The operation runs in a task of its own ([`Local::run`]), which always records its outcome,
//!   also when the client disconnects (hyper drops the request future, not the task).
//! - A running record holds a lease (`rentals.idempotency_lease_ms`) that its task renews; a
//!   record whose lease ran out (its daemon died) is taken over by the next request with the key.
//! - Requests that find the key running wait for its outcome: woken at once when it finishes in
//!   this daemon, else polling with a back-off from 50 ms to 1 s, for at most
//!   `rentals.idempotency_wait_ms`. At most `rentals.idempotency_max_waiters` wait per key and
//!   daemon; more get 409 `idempotency_in_progress` (with `Retry-After`) without a query.
//! - Only answers worth replaying are kept: successes, and failures whose outcome is unknown
//!   (they name the instance: a retry must never rent twice). Anything else drops the record,
//!   so a retry runs again (a refusal is not stored a thousand times).
//! - A rental's key is bound to what it rents (`subject`: the instance id, or a rental by spec's
//!   request id) before any provider call. A request that takes the key over (its daemon died)
//!   or finds a kept unknown outcome (a 5xx naming the instance) reopens it and gets
//!   `Begin::Run { before: Some(subject) }`: the rental resolves that subject first (rented:
//!   its instance is the answer; failed: it runs again, [`rebind`]ing the key; still unknown: 502
//!   again), so one key never starts two rentals.
//! - The reconciler deletes expired records ([`sweep`]); they live
//!   `rentals.idempotency_ttl_ms`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_postgres::types::Type;

use crate::accounts::Db;
use crate::config::RentalsConfig;
use crate::error::{Error, Refusal, Result};

pub enum Begin {
    /// This request runs: hand its operation to [`Local::run`]. `before`: the subject of an
    /// earlier run under this key whose outcome is not known (taken over, or reopened).
    Run { before: Option<String> },
    /// An earlier request with this key answered this.
    Replay { status: u16, body: String },
}

/// An `Idempotency-Key` as [`check_key`] accepts it.
pub struct KeyForm;

crate::types::schema::schema_of!(KeyForm, "IdempotencyKey", {"type": "string",
    "pattern": "^[!-~]{1,255}$", "description": "1 to 255 visible ASCII characters"});

pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(Error::bad_request(
            "invalid `Idempotency-Key`: 1 to 255 visible ASCII characters",
        ));
    }
    Ok(())
}

pub fn hash(request: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(request.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().to_vec()
}

/// Whether an answer is kept for replay: a success, or a failure whose outcome is unknown.
pub fn worth_replaying(status: u16, outcome_unknown: bool) -> bool {
    (200..300).contains(&status) || outcome_unknown
}

type Slot = (i64, String);

/// This daemon's side of the keys: who waits on which, and how to wake them.
#[derive(Default)]
pub struct Local {
    waiting: Mutex<HashMap<Slot, (usize, Arc<Notify>)>>,
}

/// A place among a key's waiters, given back on drop.
struct Waiter<'a> {
    local: &'a Local,
    slot: Slot,
    wake: Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut w = self.local.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = w.get_mut(&self.slot) {
            e.0 -= 1;
            if e.0 == 0 {
                w.remove(&self.slot);
            }
        }
    }
}

fn in_progress() -> Error {
    Error::refused(
        Refusal::IdempotencyInProgress,
        "a request with this Idempotency-Key is still running; retry later",
        None,
    )
}

/// What one request with a key asks for.
pub struct Request<'a> {
    pub account_id: i64,
    pub key: &'a str,
    /// `"POST /v1/instances"`, `"DELETE /v1/instances/<id>"`: one key serves one request.
    pub request: &'a str,
    pub digest: &'a [u8],
    /// What this run is about (a rental's id), recorded with the key before it runs.
    pub subject: Option<&'a str>,
}

impl Local {
    fn wake(&self, account_id: i64, key: &str) {
        let w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = w.get(&(account_id, key.to_owned())) {
            n.notify_waiters();
        }
    }

    fn join(&self, account_id: i64, key: &str, max: usize) -> Option<Waiter<'_>> {
        let slot = (account_id, key.to_owned());
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let e = w
            .entry(slot.clone())
            .or_insert_with(|| (0, Arc::new(Notify::new())));
        if e.0 >= max {
            return None;
        }
        e.0 += 1;
        Some(Waiter {
            local: self,
            slot,
            wake: e.1.clone(),
        })
    }

    /// Claims the key for this request, or returns the answer it already has, or waits for the
    /// request running with it.
    pub async fn begin(&self, db: &Db, cfg: &RentalsConfig, r: &Request<'_>) -> Result<Begin> {
        let max = cfg.idempotency_max_waiters.get() as usize;
        // enough wait here already: refuse before touching the database
        let waiter = self
            .join(r.account_id, r.key, max)
            .ok_or_else(in_progress)?;
        let deadline = Instant::now() + cfg.idempotency_wait_ms.get();
        let mut pause = Duration::from_millis(50);
        let mut claim = true;
        loop {
            if claim {
                if claimed(db, cfg, r).await? {
                    return Ok(Begin::Run { before: None });
                }
                claim = false;
            }
            let row = db
                .query_opt(
                    "SELECT request, body_sha256, status, response, expires_at < now(), \
                       coalesce(lease_until, created_at + interval '60 seconds') < now(), subject \
                     FROM idempotency_keys WHERE account_id = $1 AND key = $2",
                    &[(&r.account_id, Type::INT8), (&r.key, Type::TEXT)],
                )
                .await?;
            let Some(row) = row else {
                // dropped (a failure not worth replaying): this request runs
                claim = true;
                continue;
            };
            let (req, h): (String, Vec<u8>) = (row.get(0), row.get(1));
            let (status, response): (Option<i32>, Option<String>) = (row.get(2), row.get(3));
            let (expired, lease_over): (bool, bool) = (row.get(4), row.get(5));
            let subject: Option<String> = row.get(6);
            if expired {
                db.query(
                    "DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2 \
                     AND expires_at < now()",
                    &[(&r.account_id, Type::INT8), (&r.key, Type::TEXT)],
                )
                .await?;
                claim = true;
                continue;
            }
            if req != r.request || h != r.digest {
                return Err(Error::refused(
                    Refusal::IdempotencyKeyReused,
                    "this Idempotency-Key was used for a different request or body",
                    None,
                ));
            }
            // a kept unknown outcome of a rental: what became of it is asked again
            if let (Some(s), Some(_)) = (status, &subject)
                && s >= 500
            {
                if reopened(db, cfg, r, s).await? {
                    return Ok(Begin::Run { before: subject });
                }
                continue;
            }
            if let (Some(status), Some(body)) = (status, response) {
                return Ok(Begin::Replay {
                    status: status as u16,
                    body,
                });
            }
            if lease_over && took_over(db, cfg, r).await? {
                tracing::warn!(
                    account = r.account_id,
                    "took over an Idempotency-Key whose request stopped renewing its lease"
                );
                return Ok(Begin::Run { before: subject });
            }
            if Instant::now() >= deadline {
                return Err(in_progress());
            }
            // woken when it finishes here; polled for other daemons
            let _ = tokio::time::timeout(pause, waiter.wake.notified()).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Runs `op` in a task of its own under a claimed key: the lease is renewed while it runs,
    /// and its answer is recorded (or the record dropped) whatever becomes of the request.
    pub async fn run<F>(
        self: &Arc<Self>,
        db: Arc<Db>,
        cfg: &RentalsConfig,
        account_id: i64,
        key: String,
        op: F,
    ) -> Result<Outcome>
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let lease = cfg.idempotency_lease_ms.get();
        let local = self.clone();
        let task = tokio::spawn(async move {
            tokio::pin!(op);
            let mut renew = tokio::time::interval(lease / 3);
            renew.tick().await;
            let out = loop {
                tokio::select! {
                    out = &mut op => break out,
                    _ = renew.tick() => {
                        let secs = lease.as_secs_f64();
                        if let Err(e) = db.query(
                            "UPDATE idempotency_keys SET lease_until = now() + make_interval(secs => $3) \
                             WHERE account_id = $1 AND key = $2 AND status IS NULL",
                            &[(&account_id, Type::INT8), (&key, Type::TEXT), (&secs, Type::FLOAT8)],
                        ).await {
                            tracing::warn!(error = %e, "Idempotency-Key lease not renewed");
                        }
                    }
                }
            };
            let recorded = if worth_replaying(out.status, out.outcome_unknown) {
                let status = i32::from(out.status);
                db.query(
                    "UPDATE idempotency_keys SET status = $3, response = $4 \
                     WHERE account_id = $1 AND key = $2",
                    &[
                        (&account_id, Type::INT8),
                        (&key, Type::TEXT),
                        (&status, Type::INT4),
                        (&out.body, Type::TEXT),
                    ],
                )
                .await
            } else {
                db.query(
                    "DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2",
                    &[(&account_id, Type::INT8), (&key, Type::TEXT)],
                )
                .await
            };
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "Idempotency-Key outcome not recorded; its lease runs out and a retry takes it over");
            }
            local.wake(account_id, &key);
            out
        });
        task.await.map_err(Error::internal)
    }
}

/// What an operation under a key answered.
pub struct Outcome {
    pub status: u16,
    /// The JSON body.
    pub body: String,
    /// A failure that names the instance: whether it was rented is not known yet.
    pub outcome_unknown: bool,
}

async fn claimed(db: &Db, cfg: &RentalsConfig, r: &Request<'_>) -> Result<bool> {
    let ttl = cfg.idempotency_ttl_ms.get().as_secs_f64();
    let lease = cfg.idempotency_lease_ms.get().as_secs_f64();
    Ok(!db
        .query(
            "INSERT INTO idempotency_keys (account_id, key, request, body_sha256, expires_at, \
               lease_until, subject) \
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), \
               now() + make_interval(secs => $6), $7) \
             ON CONFLICT (account_id, key) DO NOTHING RETURNING 1",
            &[
                (&r.account_id, Type::INT8),
                (&r.key, Type::TEXT),
                (&r.request, Type::TEXT),
                (&r.digest, Type::BYTEA),
                (&ttl, Type::FLOAT8),
                (&lease, Type::FLOAT8),
                (&r.subject, Type::TEXT),
            ],
        )
        .await?
        .is_empty())
}

/// Takes over a running record whose lease ran out (one request wins).
async fn took_over(db: &Db, cfg: &RentalsConfig, r: &Request<'_>) -> Result<bool> {
    let lease = cfg.idempotency_lease_ms.get().as_secs_f64();
    Ok(!db
        .query(
            "UPDATE idempotency_keys SET lease_until = now() + make_interval(secs => $3) \
             WHERE account_id = $1 AND key = $2 AND status IS NULL \
               AND coalesce(lease_until, created_at + interval '60 seconds') < now() \
             RETURNING 1",
            &[
                (&r.account_id, Type::INT8),
                (&r.key, Type::TEXT),
                (&lease, Type::FLOAT8),
            ],
        )
        .await?
        .is_empty())
}

/// Reopens a kept unknown outcome (`status`) for this request to resolve (one request wins).
async fn reopened(db: &Db, cfg: &RentalsConfig, r: &Request<'_>, status: i32) -> Result<bool> {
    let lease = cfg.idempotency_lease_ms.get().as_secs_f64();
    Ok(!db
        .query(
            "UPDATE idempotency_keys SET status = NULL, response = NULL, \
               lease_until = now() + make_interval(secs => $3) \
             WHERE account_id = $1 AND key = $2 AND status = $4 RETURNING 1",
            &[
                (&r.account_id, Type::INT8),
                (&r.key, Type::TEXT),
                (&lease, Type::FLOAT8),
                (&status, Type::INT4),
            ],
        )
        .await?
        .is_empty())
}

/// Binds the key to a new subject: the earlier one failed and this request runs again.
pub async fn rebind(db: &Db, account_id: i64, key: &str, subject: &str) -> Result<()> {
    db.query(
        "UPDATE idempotency_keys SET subject = $3 WHERE account_id = $1 AND key = $2",
        &[
            (&account_id, Type::INT8),
            (&key, Type::TEXT),
            (&subject, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// Deletes expired records (a batch per call); returns how many.
pub async fn sweep(db: &Db) -> Result<usize> {
    Ok(db
        .query(
            "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys \
             WHERE expires_at < now() LIMIT 10000) RETURNING 1",
            &[],
        )
        .await?
        .len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_successes_and_unknown_outcomes_are_replayed() {
        assert!(worth_replaying(201, false));
        assert!(worth_replaying(200, false));
        assert!(worth_replaying(502, true));
        assert!(!worth_replaying(409, false));
        assert!(!worth_replaying(402, false));
        assert!(!worth_replaying(503, false));
    }

    #[test]
    fn waiters_per_key_are_capped_and_given_back() {
        let l = Local::default();
        let a = l.join(1, "k", 2).unwrap();
        let _b = l.join(1, "k", 2).unwrap();
        assert!(l.join(1, "k", 2).is_none());
        assert!(l.join(2, "k", 2).is_some(), "another account's key");
        drop(a);
        assert!(l.join(1, "k", 2).is_some());
    }
}
