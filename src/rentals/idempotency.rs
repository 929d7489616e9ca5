//! `Idempotency-Key` on `POST /v1/instances` and `DELETE /v1/instances/{id}`: the first request
//! with a key runs; the same key with the same request and body replays the first answer (status
//! and body); the same key with another request or body gets 422 `idempotency_key_reused`.
//! Concurrent requests with one key wait for the first to finish (up to 60 s, then 409
//! `idempotency_in_progress`). Records expire after `rentals.idempotency_ttl_ms`.
//!
//! An answer is kept unless it is a failure after which nothing happened and a retry may
//! succeed (5xx without an instance id): then the record is dropped so the retry runs. A failure
//! whose outcome is unknown (it names the instance) is kept: a retry must never rent twice.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_postgres::types::Type;

use crate::accounts::Db;
use crate::error::{Error, Refusal, Result};

pub enum Begin {
    /// This request runs; call `finish` (or `abandon`) with its answer.
    Run,
    /// An earlier request with this key answered this.
    Replay { status: u16, body: String },
}

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

pub async fn begin(
    db: &Db,
    account_id: i64,
    key: &str,
    request: &str,
    digest: &[u8],
    ttl: Duration,
) -> Result<Begin> {
    let ttl_s = ttl.as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let inserted = db
            .query(
                "INSERT INTO idempotency_keys (account_id, key, request, body_sha256, expires_at) \
                 VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) \
                 ON CONFLICT (account_id, key) DO NOTHING RETURNING 1",
                &[
                    (&account_id, Type::INT8),
                    (&key, Type::TEXT),
                    (&request, Type::TEXT),
                    (&digest, Type::BYTEA),
                    (&ttl_s, Type::FLOAT8),
                ],
            )
            .await?;
        if !inserted.is_empty() {
            return Ok(Begin::Run);
        }
        let row = db
            .query_opt(
                "SELECT request, body_sha256, status, response, expires_at < now() \
                 FROM idempotency_keys WHERE account_id = $1 AND key = $2",
                &[(&account_id, Type::INT8), (&key, Type::TEXT)],
            )
            .await?;
        let Some(row) = row else { continue };
        let (req, h, status, response, expired): (
            String,
            Vec<u8>,
            Option<i32>,
            Option<String>,
            bool,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if expired {
            db.query(
                "DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2 AND expires_at < now()",
                &[(&account_id, Type::INT8), (&key, Type::TEXT)],
            )
            .await?;
            continue;
        }
        if req != request || h != digest {
            return Err(Error::refused(
                Refusal::IdempotencyKeyReused,
                "this Idempotency-Key was used for a different request or body",
                None,
            ));
        }
        if let (Some(status), Some(body)) = (status, response) {
            return Ok(Begin::Replay {
                status: status as u16,
                body,
            });
        }
        if Instant::now() > deadline {
            return Err(Error::refused(
                Refusal::IdempotencyInProgress,
                "a request with this Idempotency-Key is still running; retry later",
                None,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn finish(db: &Db, account_id: i64, key: &str, status: u16, body: &str) -> Result<()> {
    let status = i32::from(status);
    db.query(
        "UPDATE idempotency_keys SET status = $3, response = $4 WHERE account_id = $1 AND key = $2",
        &[
            (&account_id, Type::INT8),
            (&key, Type::TEXT),
            (&status, Type::INT4),
            (&body, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

pub async fn abandon(db: &Db, account_id: i64, key: &str) -> Result<()> {
    db.query(
        "DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2",
        &[(&account_id, Type::INT8), (&key, Type::TEXT)],
    )
    .await?;
    Ok(())
}
