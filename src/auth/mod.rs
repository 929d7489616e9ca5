//! Authentication: who is calling. `Authorization: Bearer <API key or JWT>` becomes a
//! [`Principal`], looked up in three layers: the in-process cache (`cache`), Redis, PostgreSQL.
//!
//! - Unknown ids are cached negatively (`auth.negative_ttl_ms`), in process and in Redis, so a
//!   brute-force run against one id does not reach the database.
//! - Revoking a key (or suspending an account) deletes its Redis entry and publishes its id on
//!   the `<prefix>auth:revoked` channel; every daemon drops it from its in-process cache at once.
//!   After a Redis disconnection each daemon clears its in-process cache (messages sent meanwhile
//!   are lost). While Redis is unreachable, a revoked key can still pass on another daemon for at
//!   most `auth.cache_ttl_ms` (its in-process entry's life), plus `auth.redis_ttl_ms` if the
//!   revoking side could not delete the Redis entry.
//! - PostgreSQL unreachable: cached keys keep working (entries up to `auth.stale_if_error_ms`
//!   old), anything else gets 503 `auth_unavailable`, never 401.
//! - `last_used_at` is written in one batched UPDATE per `auth.last_used_flush_ms`.
//! - With `DATABASE_READ_URL`, PostgreSQL lookups go to that replica first (`replica`).

pub mod admin;
pub use crate::accounts::apikey;
pub mod cache;
pub mod jwt;
pub mod replica;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use metrics::counter;

use crate::accounts::Db;
use crate::accounts::store::{self, KeyRecord, unix_now};
use crate::cache::Redis;
use crate::config::Config;
use crate::error::{Error, Kind, Side};
use crate::metrics::{AUTH_FAILURES_TOTAL, AUTH_LOOKUPS_TOTAL};
use cache::{Cached, KeyCache};
use jwt::Jwt;

/// Longest `Authorization` value looked at; a JWT from this daemon is well under 1 KB.
const MAX_AUTHORIZATION_LEN: usize = 4096;

/// A single-flight fetch's outcome, shared by every request that waited for it.
type Fetched = Result<Option<Arc<KeyRecord>>, Arc<Error>>;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    ApiKey,
    Jwt,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key: Arc<KeyRecord>,
    pub via: Via,
    /// When the credential stops working by itself (unix seconds): the key's expiry, or a
    /// token's `exp` if sooner. What a long-lived stream it opened must end at.
    pub expires_at: Option<i64>,
}

impl Principal {
    pub fn account_id(&self) -> i64 {
        self.key.account_id
    }
    pub fn is_admin(&self) -> bool {
        self.key.scopes.iter().any(|s| s == "admin")
    }

    /// 403 `insufficient_scope` for a `read` key asked to change something (REST write methods,
    /// MCP tools that are not read-only): `accounts::policy`.
    pub fn may_change(&self) -> Result<(), Error> {
        if self.key.read_only() {
            return Err(Error::forbidden(
                "insufficient_scope",
                "this key has the `read` scope: it can search, list and read, not change anything",
            ));
        }
        Ok(())
    }
}

pub struct Auth {
    db: Option<Arc<Db>>,
    /// `DATABASE_READ_URL`'s pool, asked before `db` (see `replica`).
    replica: Option<replica::ReadReplica>,
    redis: Option<Redis>,
    cache: KeyCache,
    /// See [`Auth::forgotten`].
    forgotten: tokio::sync::broadcast::Sender<Arc<Vec<String>>>,
    jwt: Option<Jwt>,
    /// key id → unix second of its last use, waiting for the next batched write.
    pending_uses: papaya::HashMap<i64, i64, foldhash::fast::RandomState>,
    redis_ttl: Duration,
    negative_ttl: Duration,
    /// Lookups being fetched now, by public id (see `lookup`).
    inflight: std::sync::Mutex<HashMap<Box<str>, Arc<tokio::sync::OnceCell<Fetched>>>>,
    /// Lookups past the in-process cache allowed per second (`auth.max_uncached_lookups_per_second`).
    misses: MissBudget,
    /// Registered once: looking a labelled counter up per request cost more than the cache hit.
    hits_memory: metrics::Counter,
    hits_redis: metrics::Counter,
    hits_database: metrics::Counter,
    hits_stale: metrics::Counter,
}

/// Removes a public id from the single-flight map when dropped.
struct Forget<'a>(
    &'a std::sync::Mutex<HashMap<Box<str>, Arc<tokio::sync::OnceCell<Fetched>>>>,
    &'a str,
);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.1);
    }
}

/// A token bucket for the lookups the in-process cache cannot answer: `per_second` a second,
/// as many at once. One lock, taken on misses only.
struct MissBudget {
    per_second: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl MissBudget {
    fn new(per_second: u32) -> MissBudget {
        let per_second = f64::from(per_second);
        MissBudget {
            per_second,
            state: std::sync::Mutex::new((per_second, std::time::Instant::now())),
        }
    }

    fn take(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.per_second;
        s.0 = (s.0 + refill).min(self.per_second);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Auth {
    pub fn new(
        config: &Config,
        db: Option<Arc<Db>>,
        read_db: Option<Arc<Db>>,
        redis: Option<Redis>,
    ) -> Arc<Auth> {
        let a = &config.auth;
        Arc::new(Auth {
            db,
            replica: read_db.map(|r| {
                replica::ReadReplica::new(r, config.database.read_primary_after_change_ms.get())
            }),
            redis,
            forgotten: tokio::sync::broadcast::channel(64).0,
            cache: KeyCache::new(
                a.cache_ttl_ms.ms(),
                a.negative_ttl_ms.ms(),
                a.stale_if_error_ms.ms(),
                a.cache_max_entries.get(),
            ),
            jwt: config.secrets.jwt_secret.as_ref().map(|s| Jwt::new(s, a)),
            pending_uses: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .build(),
            redis_ttl: a.redis_ttl_ms.get(),
            negative_ttl: a
                .negative_ttl_ms
                .get()
                .max(std::time::Duration::from_millis(1)),
            inflight: Default::default(),
            misses: MissBudget::new(a.max_uncached_lookups_per_second.get()),
            hits_memory: counter!(AUTH_LOOKUPS_TOTAL, "source" => "memory"),
            hits_redis: counter!(AUTH_LOOKUPS_TOTAL, "source" => "redis"),
            hits_database: counter!(AUTH_LOOKUPS_TOTAL, "source" => "database"),
            hits_stale: counter!(AUTH_LOOKUPS_TOTAL, "source" => "stale"),
        })
    }

    /// Whether the read replica answers; `None` without `DATABASE_READ_URL`.
    pub fn replica_up(&self) -> Option<bool> {
        self.replica.as_ref().map(|r| r.db().is_up())
    }

    pub fn jwt(&self) -> Option<&Jwt> {
        self.jwt.as_ref()
    }

    /// The caller behind the request's `Authorization` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Error> {
        let r = self.authenticate_inner(headers).await;
        if let Err(e) = &r {
            counter!(AUTH_FAILURES_TOTAL, "code" => e.kind.code()).increment(1);
        }
        r
    }

    /// A token passed outside `Authorization` (a browser's event stream: `?access_token=` or a
    /// WebSocket subprotocol): a token from `POST /v1/auth/token` only, never an API key, whose
    /// secret would end up in URLs and proxy logs.
    pub async fn authenticate_token(&self, token: &str) -> Result<Principal, Error> {
        let r = if apikey::parse(token).is_some() {
            Err(Error::unauthorized(
                "invalid_credentials",
                "only a token from POST /v1/auth/token may be passed outside the Authorization header, never an API key",
            ))
        } else {
            self.authenticate_credential(token).await
        };
        if let Err(e) = &r {
            counter!(AUTH_FAILURES_TOTAL, "code" => e.kind.code()).increment(1);
        }
        r
    }

    async fn authenticate_inner(&self, headers: &HeaderMap) -> Result<Principal, Error> {
        self.authenticate_credential(bearer(headers)?).await
    }

    async fn authenticate_credential(&self, credential: &str) -> Result<Principal, Error> {
        if let Some((id, secret)) = apikey::parse(credential) {
            let key = self.lookup(id).await?.ok_or_else(invalid)?;
            if !apikey::verify(secret, &key.secret_hash) {
                return Err(invalid());
            }
            self.admit(key, Via::ApiKey, None)
        } else if credential.bytes().filter(|b| *b == b'.').count() == 2 {
            let jwt = self.jwt.as_ref().ok_or_else(invalid)?;
            let claims = jwt.validate(credential)?;
            if !apikey::is_public_id(&claims.kid) {
                return Err(invalid());
            }
            let key = self.lookup(&claims.kid).await?.ok_or_else(invalid)?;
            if claims.sub != key.account_id.to_string() {
                return Err(invalid());
            }
            self.admit(key, Via::Jwt, Some(claims.exp))
        } else {
            Err(invalid())
        }
    }

    /// Checks what the record itself says (revoked, expired, account suspended) and notes the use.
    /// `token_exp`: a token's own expiry.
    fn admit(
        &self,
        key: Arc<KeyRecord>,
        via: Via,
        token_exp: Option<i64>,
    ) -> Result<Principal, Error> {
        check_record(&key)?;
        let now = unix_now();
        let uses = self.pending_uses.pin();
        if uses.get(&key.key_id) != Some(&now) {
            uses.insert(key.key_id, now);
        }
        let expires_at = match (key.expires_at, token_exp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Principal {
            key,
            via,
            expires_at,
        })
    }

    /// Whether the key `public_id` is still admitted, read afresh (its cache entry was just
    /// dropped: a revocation, a suspension, a change): `Err` with the refusal when it is not
    /// (`key_revoked`, `key_expired`, `account_suspended`, or `invalid_credentials` for a key
    /// gone), or when it cannot be told (the database unreachable: a caller keeps what it has).
    pub async fn recheck(&self, public_id: &str) -> Result<(), Error> {
        let key = self.lookup(public_id).await?.ok_or_else(invalid)?;
        check_record(&key)
    }

    /// Tells of key ids dropped from the cache (`forget`), and of a cleared cache (an empty
    /// list: every key may have changed).
    pub fn forgotten(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<String>>> {
        self.forgotten.subscribe()
    }
}

/// What a key record itself refuses: revoked, expired, its account suspended.
fn check_record(key: &KeyRecord) -> Result<(), Error> {
    if key.revoked {
        return Err(Error::unauthorized(
            "key_revoked",
            "this API key has been revoked",
        ));
    }
    if key.expires_at.is_some_and(|e| e <= unix_now()) {
        return Err(Error::unauthorized(
            "key_expired",
            "this API key has expired",
        ));
    }
    if !key.account_active {
        return Err(Error::forbidden(
            "account_suspended",
            "the account is suspended",
        ));
    }
    Ok(())
}

impl Auth {
    /// The key record for a public id: in-process cache, then Redis, then PostgreSQL.
    pub async fn lookup(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, Error> {
        let stale = match self.cache.get(id) {
            Cached::Fresh(r) => {
                self.hits_memory.increment(1);
                return Ok(r);
            }
            Cached::Stale(r) => Some(r),
            Cached::Miss => None,
        };
        // Single flight: when an entry expires under load, every request holding that key misses
        // at once; one of them fetches, the others wait for its answer.
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            inflight.entry(id.into()).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async {
                // the entry goes when this fetch ends, also when its request is dropped
                // mid-fetch (it stayed forever otherwise: one per random id)
                let _forget = Forget(&self.inflight, id);
                if !self.misses.take() {
                    // over budget: a key that was cached keeps working from its stale entry
                    return match stale {
                        Some(r) => {
                            self.hits_stale.increment(1);
                            Ok(Some(r))
                        }
                        None => Err(Arc::new(Error::new(
                            Kind::AuthBusy,
                            Side::Internal,
                            "too many keys to look up right now (auth.max_uncached_lookups_per_second); retry in a second",
                        ))),
                    };
                }
                // boxed: this miss path (Redis, PostgreSQL) would otherwise make every
                // authenticated request's future several KB, copied on each request
                Box::pin(self.fetch(id, stale)).await.map_err(Arc::new)
            })
            .await;
        match result {
            Ok(r) => Ok(r.clone()),
            Err(e) => Err(Error::new(e.kind.clone(), e.side, e.message.clone())),
        }
    }

    /// The miss path of [`Auth::lookup`]: Redis, then PostgreSQL (or the stale entry when the
    /// database is unreachable).
    async fn fetch(
        &self,
        id: &str,
        stale: Option<Arc<KeyRecord>>,
    ) -> Result<Option<Arc<KeyRecord>>, Error> {
        let rkey = self
            .redis
            .as_ref()
            .map(|r| r.key(&format!("auth:key:{id}")));
        if let (Some(redis), Some(rkey)) = (&self.redis, &rkey)
            && let Some(text) = redis.get(rkey).await
        {
            let rec = if text == "none" {
                Some(None)
            } else {
                serde_json::from_str::<KeyRecord>(&text)
                    .ok()
                    .map(|r| Some(Arc::new(r)))
            };
            if let Some(rec) = rec {
                self.hits_redis.increment(1);
                self.cache.put(id, rec.clone());
                return Ok(rec);
            }
        }
        let Some(db) = &self.db else {
            return Err(Error::new(
                Kind::AuthUnavailable,
                Side::Internal,
                "authentication is not configured on this daemon (DATABASE_URL is unset)",
            ));
        };
        let found = match &self.replica {
            Some(r) => r.key_record(db, id).await,
            None => store::key_record(db, id)
                .await
                .map(|r| (r, replica::Source::Primary)),
        };
        match found {
            Ok((rec, source)) => {
                if matches!(source, replica::Source::Primary) {
                    self.hits_database.increment(1);
                }
                let rec = rec.map(Arc::new);
                self.cache.put(id, rec.clone());
                if let (Some(redis), Some(rkey)) = (&self.redis, rkey) {
                    let (text, ttl) = match &rec {
                        Some(r) => (
                            serde_json::to_string(&**r).map_err(Error::internal)?,
                            self.redis_ttl,
                        ),
                        None => ("none".to_owned(), self.negative_ttl),
                    };
                    redis.set_ex(&rkey, text, ttl).await;
                }
                Ok(rec)
            }
            Err(e) if matches!(e.kind, Kind::DatabaseUnavailable) => match stale {
                Some(r) => {
                    self.hits_stale.increment(1);
                    Ok(Some(r))
                }
                None => Err(Error::new(
                    Kind::AuthUnavailable,
                    Side::Internal,
                    "credentials cannot be checked right now (database unreachable); retry shortly",
                )
                .with_source(e)),
            },
            Err(e) => Err(e),
        }
    }

    /// Drops keys from this daemon's cache.
    pub fn forget(&self, ids: &[&str]) {
        if let Some(r) = &self.replica {
            r.changed();
        }
        for id in ids {
            self.cache.remove(id);
        }
        // no receiver (no stream open): nothing to tell
        let _ = self
            .forgotten
            .send(Arc::new(ids.iter().map(|s| (*s).to_owned()).collect()));
    }

    /// Starts the background work: the revocation subscriber, the `last_used_at` writer and
    /// the cache sweeper.
    pub fn spawn_tasks(self: &Arc<Self>, config: &Config) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(redis) = &self.redis {
            let (a, b) = (self.clone(), self.clone());
            let subscribed = std::sync::atomic::AtomicBool::new(false);
            match redis.subscribe(
                revocation_channel(redis),
                move |msg| a.forget(&msg.split(',').collect::<Vec<_>>()),
                move || {
                    // after a disconnection messages may have been lost: the replica may hide
                    // a change too (the first subscription, at start, missed nothing)
                    if let Some(r) = &b.replica
                        && subscribed.swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        r.changed();
                    }
                    b.cache.clear();
                    let _ = b.forgotten.send(Arc::new(Vec::new()));
                },
            ) {
                Ok(t) => tasks.push(t),
                Err(e) => tracing::error!(error = %e, "cannot subscribe to key revocations"),
            }
        }
        if let Some(r) = &self.replica {
            tasks.push(tokio::spawn(
                r.db()
                    .clone()
                    .probe(config.database.health_interval_ms.get()),
            ));
        }
        if self.db.is_some() {
            let me = self.clone();
            let every = config.auth.last_used_flush_ms.get();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    me.flush_last_used().await;
                }
            }));
        }
        let me = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                me.cache.sweep();
            }
        }));
        tasks
    }

    /// Writes the pending `last_used_at` values in one statement; keeps them for the next round
    /// when the database is unreachable.
    pub async fn flush_last_used(&self) {
        let Some(db) = &self.db else { return };
        let taken: Vec<(i64, i64)> = {
            let uses = self.pending_uses.pin();
            let keys: Vec<i64> = uses.keys().copied().collect();
            keys.into_iter()
                .filter_map(|k| uses.remove(&k).map(|t| (k, *t)))
                .collect()
        };
        if taken.is_empty() {
            return;
        }
        let rows: Vec<(i64, SystemTime)> = taken
            .iter()
            .map(|(k, t)| (*k, UNIX_EPOCH + Duration::from_secs(*t as u64)))
            .collect();
        if let Err(e) = store::touch_last_used(db, &rows).await {
            tracing::warn!(error = %e, keys = rows.len(), "cannot write last_used_at; will retry");
            let uses = self.pending_uses.pin();
            for (k, t) in taken {
                uses.compute(k, |old| match old {
                    Some((_, v)) if *v >= t => papaya::Operation::Abort(()),
                    _ => papaya::Operation::Insert(t),
                });
            }
        }
    }
}

/// Deletes the Redis entries of these keys and tells every daemon to drop them.
/// Used by the admin endpoints and commands after revoking or suspending.
pub async fn publish_revoked(redis: &Redis, ids: &[String]) -> Result<(), String> {
    let keys = ids
        .iter()
        .map(|i| redis.key(&format!("auth:key:{i}")))
        .collect();
    redis.del(keys).await?;
    for chunk in ids.chunks(100) {
        redis
            .publish(&revocation_channel(redis), chunk.join(","))
            .await?;
    }
    Ok(())
}

fn revocation_channel(redis: &Redis) -> String {
    redis.key("auth:revoked")
}

fn invalid() -> Error {
    Error::unauthorized("invalid_credentials", "invalid API key or token")
}

fn malformed(message: &'static str) -> Error {
    Error::unauthorized("malformed_authorization", message)
}

/// The credential of `Authorization: Bearer <credential>`.
fn bearer(headers: &HeaderMap) -> Result<&str, Error> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Error::unauthorized(
            "missing_credentials",
            "send `Authorization: Bearer <API key or token>`",
        ));
    };
    if values.next().is_some() {
        return Err(malformed("send exactly one Authorization header"));
    }
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(malformed("the Authorization header is too long"));
    }
    let text = value
        .to_str()
        .map_err(|_| malformed("the Authorization header must be printable ASCII"))?;
    let text = text.trim();
    let (scheme, rest) = match text.bytes().position(|b| b == b' ') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed(
            "expected the Bearer scheme: `Authorization: Bearer <API key or token>`",
        ));
    }
    let credential = rest.trim();
    if credential.is_empty() {
        return Err(malformed("the Bearer credential is empty"));
    }
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with(v: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(
            bearer(&HeaderMap::new()).unwrap_err().kind.code(),
            "missing_credentials"
        );
        for bad in [
            &b""[..],
            b"Bearer",
            b"Bearer   ",
            b"Basic dXNlcjpwYXNz",
            b"Token abc",
            "Bearer caf\u{e9}".as_bytes(),
        ] {
            assert_eq!(
                bearer(&with(bad)).unwrap_err().kind.code(),
                "malformed_authorization",
                "{bad:?}"
            );
        }
        let huge = format!("Bearer {}", "a".repeat(10_000));
        assert_eq!(
            bearer(&with(huge.as_bytes())).unwrap_err().kind.code(),
            "malformed_authorization"
        );
        assert_eq!(bearer(&with(b"bearer  gpx_x ")).unwrap(), "gpx_x");
    }
}
