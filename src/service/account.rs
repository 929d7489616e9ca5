//! The caller's own account as typed operations: its view (`GET /v1/account`, rendered once per
//! cached key record: [`AccountViews`]) and a short-lived token for its API key
//! (`POST /v1/auth/token`: [`TokenView`]).

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::accounts::store::KeyRecord;
use crate::auth::{Principal, Via};
use crate::config::RateLimitConfig;
use crate::error::{Error, Kind, Side};
use crate::state::AppState;

/// Rendered `GET /v1/account` bodies by (key id, how the caller authenticated). The body is a
/// function of the key record and the (immutable) config only, and this is the cheapest
/// authenticated route, the one load tests and dashboards poll: rendering it once per record
/// takes serialization off the per-request path.
///
/// An entry is valid while it was rendered from the very record the caller holds
/// (`Arc::ptr_eq`): a refetched record (new limits, renamed account) renders anew. Bounded like
/// the key cache; when full, entries whose record the key cache no longer holds are dropped.
pub struct AccountViews {
    map: papaya::HashMap<(i64, bool), (Arc<KeyRecord>, Bytes), foldhash::fast::RandomState>,
    max: usize,
}

impl AccountViews {
    pub fn new(max: usize) -> AccountViews {
        AccountViews {
            map: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .build(),
            max,
        }
    }

    pub fn body(&self, key: &Arc<KeyRecord>, via: Via, rl: &RateLimitConfig) -> Bytes {
        let id = (key.key_id, via == Via::Jwt);
        let map = self.map.pin();
        if let Some((rec, body)) = map.get(&id)
            && Arc::ptr_eq(rec, key)
        {
            return body.clone();
        }
        let body = Bytes::from(render(key, via, rl));
        if map.len() >= self.max && !map.contains_key(&id) {
            // the key cache holds one reference to every record it still serves
            map.retain(|_, (rec, _)| Arc::strong_count(rec) > 1);
            if map.len() >= self.max {
                return body;
            }
        }
        map.insert(id, (key.clone(), body.clone()));
        body
    }

    pub fn len(&self) -> usize {
        self.map.pin().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn render(k: &KeyRecord, via: Via, rl: &RateLimitConfig) -> Vec<u8> {
    let (acct_rpm, acct_burst) = crate::ratelimit::effective(
        k.account_rate_limit,
        rl.account_per_minute.get(),
        rl.account_burst.get(),
    );
    let (key_rpm, key_burst) = crate::ratelimit::effective(
        k.key_rate_limit,
        rl.key_per_minute.get(),
        rl.key_burst.get(),
    );
    serde_json::to_vec(&AccountView {
        account: AccountSummary {
            id: k.account_id,
            name: &k.account_name,
            status: if k.account_active {
                "active"
            } else {
                "suspended"
            },
            daily_budget_usd: k.account_daily_budget_usd,
            max_instances: k.account_max_instances,
        },
        limits: Limits {
            account: Limit {
                requests_per_minute: acct_rpm,
                burst: acct_burst,
            },
            key: Limit {
                requests_per_minute: key_rpm,
                burst: key_burst,
            },
            max_instances: k.account_max_instances,
        },
        budget: Budget {
            daily_usd: k.account_daily_budget_usd,
        },
        key: KeySummary {
            public_id: &k.public_id,
            scopes: &k.scopes,
            via: match via {
                Via::ApiKey => "api_key",
                Via::Jwt => "jwt",
            },
        },
    })
    .expect("the account view serializes")
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct AccountView<'a> {
    account: AccountSummary<'a>,
    limits: Limits,
    budget: Budget,
    key: KeySummary<'a>,
}

#[derive(Serialize, schemars::JsonSchema)]
struct AccountSummary<'a> {
    id: i64,
    name: &'a str,
    #[schemars(extend("enum" = ["active", "suspended"]))]
    status: &'static str,
    daily_budget_usd: f64,
    max_instances: i32,
}

#[derive(Serialize, schemars::JsonSchema)]
struct Limits {
    account: Limit,
    key: Limit,
    max_instances: i32,
}

#[derive(Serialize, schemars::JsonSchema)]
struct Limit {
    requests_per_minute: u64,
    burst: u64,
}

#[derive(Serialize, schemars::JsonSchema)]
struct Budget {
    daily_usd: f64,
}

#[derive(Serialize, schemars::JsonSchema)]
struct KeySummary<'a> {
    public_id: &'a str,
    scopes: &'a [String],
    #[schemars(extend("enum" = ["api_key", "jwt"]))]
    via: &'static str,
}

/// A token for the caller's API key (`POST /v1/auth/token`).
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Token")]
pub struct TokenView {
    pub token: String,
    #[schemars(extend("const" = "Bearer"))]
    pub token_type: &'static str,
    /// Seconds.
    pub expires_in: i64,
    /// Unix seconds.
    pub expires_at: i64,
    pub account_id: i64,
    pub scopes: Vec<String>,
}

/// Exchanges the caller's API key (not a token) for a short-lived JWT.
pub fn token(app: &AppState, p: &Principal) -> Result<TokenView, Error> {
    if p.via != Via::ApiKey {
        return Err(Error::forbidden(
            "api_key_required",
            "a token is exchanged for an API key, not for another token",
        ));
    }
    let jwt = app.auth.jwt().ok_or_else(|| {
        Error::new(
            Kind::Unavailable,
            Side::Internal,
            "tokens are not enabled on this daemon (JWT_SECRET is unset)",
        )
    })?;
    let (token, claims) = jwt.issue(&p.key)?;
    Ok(TokenView {
        token,
        token_type: "Bearer",
        expires_in: claims.exp - claims.iat,
        expires_at: claims.exp,
        account_id: p.account_id(),
        scopes: claims.scopes,
    })
}

/// `GET /v1/account/keys`: the keys of the caller's account (never their secrets), as an
/// operator sees them with `GET /v1/admin/accounts/{account}/keys`.
pub async fn keys(app: &AppState, p: &Principal) -> Result<super::admin::KeyList, Error> {
    let db = super::db(app, "keys")?;
    let keys = crate::accounts::store::list_keys(
        &db,
        &crate::accounts::store::AccountRef::Id(p.account_id()),
    )
    .await?;
    Ok(super::admin::KeyList { keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(body: &Bytes) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn bodies_are_rendered_once_per_record_and_bounded() {
        let rl = crate::config::Config::default().ratelimit;
        let views = AccountViews::new(2);
        let a = Arc::new(KeyRecord::sample("AAAAAAAAAAAA"));
        let first = views.body(&a, Via::ApiKey, &rl);
        assert_eq!(views.body(&a, Via::ApiKey, &rl).as_ptr(), first.as_ptr());
        assert_eq!(view(&first)["key"]["via"], "api_key");
        assert_eq!(view(&first)["account"]["name"], "acme");
        assert_eq!(view(&views.body(&a, Via::Jwt, &rl))["key"]["via"], "jwt");

        // a refetched record (the account was renamed) is rendered anew
        let mut renamed = KeyRecord::sample("AAAAAAAAAAAA");
        renamed.account_name = "acme-2".into();
        let b = Arc::new(renamed);
        assert_eq!(
            view(&views.body(&b, Via::ApiKey, &rl))["account"]["name"],
            "acme-2"
        );

        // full: records nobody else holds make room; while all are held, nothing is kept
        drop(a);
        let mut other = KeyRecord::sample("BBBBBBBBBBBB");
        other.key_id = 2;
        let c = Arc::new(other);
        views.body(&c, Via::ApiKey, &rl);
        assert_eq!(views.len(), 2);
        let mut third = KeyRecord::sample("CCCCCCCCCCCC");
        third.key_id = 3;
        let d = Arc::new(third);
        assert_eq!(
            view(&views.body(&d, Via::ApiKey, &rl))["key"]["public_id"],
            "CCCCCCCCCCCC"
        );
        assert_eq!(views.len(), 2);
    }
}
