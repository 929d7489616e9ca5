//! Administrative changes that must reach every daemon's cache: revoking a key and suspending
//! or resuming an account. Shared by the `gpuproxyd accounts|keys` commands and the
//! `/v1/admin/...` endpoints, so both behave the same.

use serde::Serialize;

use super::Auth;
use crate::accounts::Db;
use crate::accounts::store::{self, Account, AccountRef, KeyInfo};
use crate::cache::Redis;
use crate::error::Error;

/// Whether the other daemons were told at once (through Redis), or will notice only when their
/// cached entries expire.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Propagation {
    pub propagated: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Drops the keys from this process's cache (when it is a daemon) and tells the others.
async fn propagate(local: Option<&Auth>, redis: Option<&Redis>, ids: &[String]) -> Propagation {
    if let Some(auth) = local {
        auth.forget(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let Some(redis) = redis else {
        return Propagation {
            propagated: false,
            note: Some(
                "REDIS_URL is unset: other daemons drop the key when their cache entry expires \
                 (auth.cache_ttl_ms)"
                    .into(),
            ),
        };
    };
    match crate::auth::publish_revoked(redis, ids).await {
        Ok(()) => Propagation {
            propagated: true,
            note: None,
        },
        Err(e) => Propagation {
            propagated: false,
            note: Some(format!(
                "Redis unreachable ({e}): other daemons drop the key when their cache entry \
                 expires (auth.cache_ttl_ms, plus auth.redis_ttl_ms for the Redis copy)"
            )),
        },
    }
}

pub async fn revoke_key(
    db: &Db,
    local: Option<&Auth>,
    redis: Option<&Redis>,
    public_id: &str,
) -> Result<(KeyInfo, Propagation), Error> {
    let key = store::revoke_key(db, public_id).await?;
    let p = propagate(local, redis, std::slice::from_ref(&key.public_id)).await;
    Ok((key, p))
}

/// Changes a key's spend cap or policies, and drops its cached record (it carries the policies)
/// here and, through Redis, in every daemon.
pub async fn update_key(
    db: &Db,
    local: Option<&Auth>,
    redis: Option<&Redis>,
    public_id: &str,
    change: &store::KeyChange,
) -> Result<(KeyInfo, Propagation), Error> {
    let key = store::update_key(db, public_id, change).await?;
    let p = propagate(local, redis, std::slice::from_ref(&key.public_id)).await;
    Ok((key, p))
}

/// Changes an account's spending terms, and drops its keys' cached records (they carry the budget
/// `GET /v1/account` shows) here and, through Redis, in every daemon.
pub async fn update_account(
    db: &Db,
    local: Option<&Auth>,
    redis: Option<&Redis>,
    r: &AccountRef<'_>,
    change: &store::AccountChange,
) -> Result<(Account, Propagation), Error> {
    let (account, ids) = store::update_account(db, r, change).await?;
    let p = propagate(local, redis, &ids).await;
    Ok((account, p))
}

pub async fn set_account_status(
    db: &Db,
    local: Option<&Auth>,
    redis: Option<&Redis>,
    r: &AccountRef<'_>,
    active: bool,
) -> Result<(Account, Propagation), Error> {
    let (account, ids) = store::set_account_status(db, r, active).await?;
    let p = propagate(local, redis, &ids).await;
    Ok((account, p))
}
