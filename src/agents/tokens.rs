//! Agent tokens: what an instance's agent authenticates with on `/v1/agent`.
//!
//! - One per instance, minted for the instance's renter (`POST /v1/instances/{id}/agent-token`):
//!   `gpa_` and 43 base-62 characters (256 bits), shown once, kept as its SHA-256. Minting
//!   again replaces the token (the old one stops working).
//! - Scoped to its instance: it opens the channel for that instance and nothing else (an API
//!   key is no agent token, and an agent token is no API key: neither is accepted for the other).
//! - Good only while the instance is open: the check joins the instance's status, so the token
//!   is revoked the moment the instance ends, with nothing to write then.

use tokio_postgres::types::Type;

use crate::accounts::Db;
use crate::error::{Error, Kind, Result, Side};

/// What every agent token starts with (so a leaked one is recognisable, and never taken for an
/// API key).
pub const PREFIX: &str = "gpa_";

/// Random characters after the prefix (base 62: about 5.95 bits each, 256 bits in all).
const RANDOM_LEN: usize = 43;

/// The instance an agent token opens the channel for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub instance_id: String,
    pub account_id: i64,
    /// The token's SHA-256: the channel ends when it is no longer the instance's (`channels`).
    pub token_hash: [u8; 32],
}

/// Mints the agent token of the caller's open instance `instance_id`, replacing any earlier one.
pub async fn mint(db: &Db, account_id: i64, instance_id: &str) -> Result<String> {
    let row = db
        .query_opt(
            "SELECT status FROM instances WHERE id = $1 AND account_id = $2",
            &[(&instance_id, Type::TEXT), (&account_id, Type::INT8)],
        )
        .await?
        .ok_or_else(|| {
            Error::new(
                Kind::NotFound,
                Side::Client,
                format!(
                    "no instance {}",
                    crate::types::text::truncate(instance_id, 128)
                ),
            )
        })?;
    let status: String = row.get(0);
    if matches!(status.as_str(), "terminated" | "failed") {
        return Err(Error::refused(
            crate::error::Refusal::InstanceNotOpen,
            format!("instance {instance_id} has ended ({status}): it has no agent"),
            None,
        ));
    }
    let token = format!(
        "{PREFIX}{}",
        crate::accounts::apikey::random_base62(RANDOM_LEN)
    );
    let hash = crate::accounts::apikey::hash(&token).to_vec();
    db.query(
        "INSERT INTO agent_tokens (instance_id, account_id, token_hash) VALUES ($1, $2, $3) \
         ON CONFLICT (instance_id) DO UPDATE SET token_hash = $3, created_at = now(), \
         revoked_at = NULL",
        &[
            (&instance_id, Type::TEXT),
            (&account_id, Type::INT8),
            (&hash, Type::BYTEA),
        ],
    )
    .await?;
    Ok(token)
}

/// The form of an agent token (checked before it reaches a query).
pub fn looks_like_token(s: &str) -> bool {
    s.len() == PREFIX.len() + RANDOM_LEN
        && s.starts_with(PREFIX)
        && s[PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The instance `token` opens the channel for, while the instance is open; otherwise 401
/// `invalid_credentials` (which part was wrong is never told).
pub async fn authenticate(db: &Db, token: &str) -> Result<AgentIdentity> {
    let refused = || Error::unauthorized("invalid_credentials", "not a valid agent token");
    if !looks_like_token(token) {
        return Err(refused());
    }
    let token_hash = crate::accounts::apikey::hash(token);
    let hash = token_hash.to_vec();
    let row = db
        .query_opt(
            "SELECT t.instance_id, t.account_id FROM agent_tokens t \
             JOIN instances i ON i.id = t.instance_id \
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL \
               AND i.status NOT IN ('terminated', 'failed')",
            &[(&hash, Type::BYTEA)],
        )
        .await?
        .ok_or_else(refused)?;
    Ok(AgentIdentity {
        instance_id: row.get(0),
        account_id: row.get(1),
        token_hash,
    })
}

/// Of these channels (instance, token hash), those whose token no longer opens one: the
/// instance ended, or a newer token replaced it.
pub async fn no_longer_valid(db: &Db, held: &[(String, [u8; 32])]) -> Result<Vec<String>> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = held.iter().map(|h| h.0.as_str()).collect();
    let hashes: Vec<&[u8]> = held.iter().map(|h| &h.1[..]).collect();
    Ok(db
        .query(
            "SELECT u.id FROM unnest($1::text[], $2::bytea[]) AS u(id, h) \
             WHERE NOT EXISTS (SELECT 1 FROM agent_tokens t JOIN instances i ON i.id = t.instance_id \
               WHERE t.instance_id = u.id AND t.token_hash = u.h AND t.revoked_at IS NULL \
                 AND i.status NOT IN ('terminated', 'failed'))",
            &[(&ids, Type::TEXT_ARRAY), (&hashes, Type::BYTEA_ARRAY)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_one_form() {
        let t = format!(
            "{PREFIX}{}",
            crate::accounts::apikey::random_base62(RANDOM_LEN)
        );
        assert!(looks_like_token(&t));
        assert!(!looks_like_token("gpx_abc_def"));
        assert!(!looks_like_token(&t[..t.len() - 1]));
        assert!(!looks_like_token(&format!("{}!", &t[..t.len() - 1])));
    }
}
