//! Offer claims: one rental of an offer at a time, across daemons (a row in `offer_claims`).

use tokio_postgres::types::Type;

use crate::accounts::Db;
use crate::error::Result;

/// Claims `offer` for the rental `instance` until `ttl_ms` from now; `false` when another rental
/// holds a live claim on it (or the ledger has an open instance on it already).
pub async fn claim_offer(
    db: &Db,
    provider: &str,
    offer: &str,
    instance: &str,
    ttl_ms: u64,
) -> Result<bool> {
    let key = format!("{provider}:{offer}");
    let ttl = ttl_ms as f64 / 1000.0;
    let bid = format!("{key}{}", crate::providers::vastai::BID_SUFFIX);
    Ok(!db
        .query(
            "INSERT INTO offer_claims (offer_id, instance_id, expires_at) \
             SELECT $1, $2, now() + make_interval(secs => $3) \
             WHERE NOT EXISTS (SELECT 1 FROM instances WHERE offer_id IN ($1, $4) \
               AND status NOT IN ('failed', 'terminated')) \
             ON CONFLICT (offer_id) DO UPDATE SET instance_id = EXCLUDED.instance_id, \
               expires_at = EXCLUDED.expires_at WHERE offer_claims.expires_at < now() \
             RETURNING 1",
            &[
                (&key, Type::TEXT),
                (&instance, Type::TEXT),
                (&ttl, Type::FLOAT8),
                (&bid, Type::TEXT),
            ],
        )
        .await?
        .is_empty())
}

/// Drops every offer claim the rental `instance` holds (its run is over: it died, or failed).
pub async fn release_claims_of(db: &Db, instance: &str) -> Result<()> {
    db.query(
        "DELETE FROM offer_claims WHERE instance_id = $1",
        &[(&instance, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// Keeps the claim of a running rental alive for `ttl_ms` more (its lease, renewed while it runs:
/// the claim of a daemon that dies ends with the lease).
pub async fn renew_offer(
    db: &Db,
    provider: &str,
    offer: &str,
    instance: &str,
    ttl_ms: u64,
) -> Result<()> {
    let key = format!("{provider}:{offer}");
    let ttl = ttl_ms as f64 / 1000.0;
    db.query(
        "UPDATE offer_claims SET expires_at = now() + make_interval(secs => $3) \
         WHERE offer_id = $1 AND instance_id = $2",
        &[
            (&key, Type::TEXT),
            (&instance, Type::TEXT),
            (&ttl, Type::FLOAT8),
        ],
    )
    .await?;
    Ok(())
}

pub async fn release_offer(db: &Db, provider: &str, offer: &str, instance: &str) -> Result<()> {
    let key = format!("{provider}:{offer}");
    db.query(
        "DELETE FROM offer_claims WHERE offer_id = $1 AND instance_id = $2",
        &[(&key, Type::TEXT), (&instance, Type::TEXT)],
    )
    .await?;
    Ok(())
}
