//! Account and API-key records: every query the daemon and the admin commands run against them.
//! All go through [`Db::query`] (unnamed statements, built-in column types only).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::Db;
use super::apikey;
use super::policy::{KeyPolicy, PolicyFields};
use crate::error::{Error, Kind, Side};
use crate::types::schema::{MaybeTime, NO_NUL, Time};

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Account {
    pub id: i64,
    pub name: String,
    /// `active` or `suspended`; a suspended account's keys and tokens are refused.
    #[schemars(extend("enum" = ["active", "suspended"]))]
    pub status: String,
    /// USD per rolling window of `rentals.budget_window_hours` (24 h by default).
    pub daily_budget_usd: f64,
    /// USD per UTC month (none when null).
    pub monthly_budget_usd: Option<f64>,
    /// What the reconciler does once a budget is spent.
    #[schemars(extend("enum" = BUDGET_POLICIES))]
    pub on_budget_exhausted: String,
    pub max_instances: i32,
    pub rate_limit_per_minute: Option<i32>,
    pub rate_limit_burst: Option<i32>,
    /// Keys of this account with the `allow_exec` policy may run commands on its instances
    /// through their agents (docs/agents.md).
    pub agent_exec: bool,
    #[serde(serialize_with = "rfc3339")]
    #[schemars(with = "Time")]
    pub created_at: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    #[schemars(with = "Time")]
    pub updated_at: SystemTime,
}

/// A key as shown to administrators (never the secret or its hash).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(rename = "Key")]
pub struct KeyInfo {
    pub public_id: String,
    pub account_id: i64,
    #[schemars(extend("items" = {"enum": ["user", "admin", "read"]}))]
    pub scopes: Vec<String>,
    pub label: Option<String>,
    pub rate_limit_per_minute: Option<i32>,
    pub rate_limit_burst: Option<i32>,
    /// USD per rolling window the instances this key rented may spend (none when null).
    pub spend_limit_usd: Option<f64>,
    /// What this key may rent (`accounts::policy`); fields left out do not apply.
    pub policy: PolicyFields,
    #[serde(serialize_with = "rfc3339")]
    #[schemars(with = "Time")]
    pub created_at: SystemTime,
    #[serde(serialize_with = "rfc3339_opt")]
    #[schemars(with = "MaybeTime")]
    pub expires_at: Option<SystemTime>,
    #[serde(serialize_with = "rfc3339_opt")]
    #[schemars(with = "MaybeTime")]
    pub revoked_at: Option<SystemTime>,
    #[serde(serialize_with = "rfc3339_opt")]
    #[schemars(with = "MaybeTime")]
    pub last_used_at: Option<SystemTime>,
}

/// What authentication needs to know about a key, as cached in process and in Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    pub key_id: i64,
    pub public_id: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub revoked: bool,
    pub account_id: i64,
    pub account_active: bool,
    /// What `GET /v1/account` shows, carried here so that answering it needs no query.
    pub account_name: String,
    pub account_daily_budget_usd: f64,
    pub account_max_instances: i32,
    pub account_rate_limit: Option<(u32, Option<u32>)>,
    pub key_rate_limit: Option<(u32, Option<u32>)>,
    /// What the key may rent (`accounts::policy`).
    #[serde(default)]
    pub policy: KeyPolicy,
    /// The account allows commands through instance agents (`accounts.agent_exec`).
    #[serde(default)]
    pub account_agent_exec: bool,
}

impl KeyRecord {
    /// Only reads: its one scope is `read`.
    pub fn read_only(&self) -> bool {
        !self.scopes.iter().any(|s| s == "user" || s == "admin")
    }
}

#[cfg(test)]
impl KeyRecord {
    /// An active user key of account 7, for unit tests.
    pub fn sample(public_id: &str) -> KeyRecord {
        KeyRecord {
            key_id: 1,
            public_id: public_id.into(),
            secret_hash: vec![0; 32],
            scopes: vec!["user".into()],
            expires_at: None,
            revoked: false,
            account_id: 7,
            account_active: true,
            account_name: "acme".into(),
            account_daily_budget_usd: 100.0,
            account_max_instances: 5,
            account_rate_limit: None,
            key_rate_limit: None,
            policy: KeyPolicy::default(),
            account_agent_exec: false,
        }
    }
}

/// Fields of a new account; `None` takes the schema's default.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[serde(deny_unknown_fields)]
#[schemars(extend("dependentRequired" = {"rate_limit_burst": ["rate_limit_per_minute"]}))]
pub struct NewAccount {
    /// Not only spaces, no control characters, not a number (numbers name accounts by id).
    #[schemars(length(min = 1, max = 100), pattern(NO_NUL))]
    #[schemars(extend("allOf" = [{"pattern": r"^[^\x00-\x1f\x7f-\x9f]*$"}, {"pattern": r"\S"}],
                      "not" = {"pattern": r"^\s*[+-]?[0-9]+\s*$"}))]
    pub name: String,
    #[schemars(range(min = 0, max = 1e9), extend("default" = 100))]
    pub daily_budget_usd: Option<f64>,
    /// null or left out: none.
    #[schemars(range(min = 0, max = 1e9))]
    pub monthly_budget_usd: Option<f64>,
    #[schemars(extend("enum" = BUDGET_POLICIES))]
    pub on_budget_exhausted: Option<String>,
    #[schemars(range(min = 0, max = 2147483647), extend("default" = 5))]
    pub max_instances: Option<i32>,
    #[schemars(range(min = 1, max = 2147483647))]
    pub rate_limit_per_minute: Option<i32>,
    #[schemars(range(min = 1, max = 2147483647))]
    pub rate_limit_burst: Option<i32>,
}

/// A change to an account's spending terms; an absent field is left as it is, and
/// `monthly_budget_usd: null` removes the monthly budget.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "AccountTerms")]
pub struct AccountChange {
    /// USD per rolling window of rentals.budget_window_hours
    #[schemars(range(min = 0, max = 1e9))]
    pub daily_budget_usd: Option<f64>,
    /// USD per UTC month; null removes it
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<f64>", range(min = 0, max = 1e9))]
    pub monthly_budget_usd: Option<Option<f64>>,
    #[schemars(extend("enum" = BUDGET_POLICIES))]
    pub on_budget_exhausted: Option<String>,
    #[schemars(range(min = 0, max = 2147483647))]
    pub max_instances: Option<i32>,
    /// Keys with the `allow_exec` policy may run commands through instance agents.
    pub agent_exec: Option<bool>,
}

/// A change to a key: its spend cap (`spend_limit_usd: null` removes it) and its policies
/// (`policy` replaces them all; `{}` clears them).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[serde(deny_unknown_fields)]
pub struct KeyChange {
    /// USD per rolling window; null removes the cap
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<f64>", range(min = 0, max = 1e9))]
    pub spend_limit_usd: Option<Option<f64>>,
    pub policy: Option<PolicyFields>,
}

/// A field that may be given as `null` (Some(None)) or left out (None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

/// The policies `on_budget_exhausted` takes.
pub const BUDGET_POLICIES: [&str; 3] = ["stop", "destroy", "alert"];

fn check_money(field: &str, v: Option<f64>) -> Result<(), Error> {
    if v.is_some_and(|b| !b.is_finite() || !(0.0..=1e9).contains(&b)) {
        return Err(Error::bad_request(format!(
            "invalid `{field}`: 0 or more (USD, at most 1e9)"
        )));
    }
    Ok(())
}

fn check_policy(p: Option<&str>) -> Result<(), Error> {
    if let Some(p) = p
        && !BUDGET_POLICIES.contains(&p)
    {
        return Err(Error::bad_request(format!(
            "invalid `on_budget_exhausted`: `stop`, `destroy` or `alert`, not `{}`",
            crate::error::truncate(p, 32)
        )));
    }
    Ok(())
}

/// Fields of a new key.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewKey")]
#[schemars(extend("dependentRequired" = {"rate_limit_burst": ["rate_limit_per_minute"]}))]
pub struct NewKeySpec {
    /// `user` (the default), `admin`, or `read` alone (search, list and read; no change).
    #[serde(default)]
    #[schemars(extend("items" = {"enum": ["user", "admin", "read"]}, "default" = ["user"]))]
    pub scopes: Vec<String>,
    /// At most 200 characters.
    #[schemars(length(max = 200), pattern(NO_NUL))]
    pub label: Option<String>,
    #[schemars(range(min = 1, max = 36500))]
    pub expires_in_days: Option<u32>,
    #[schemars(range(min = 1, max = 2147483647))]
    pub rate_limit_per_minute: Option<i32>,
    #[schemars(range(min = 1, max = 2147483647))]
    pub rate_limit_burst: Option<i32>,
    /// USD per rolling window for the instances this key rents; null or left out: none.
    #[schemars(range(min = 0, max = 1e9))]
    pub spend_limit_usd: Option<f64>,
    /// What this key may rent (`accounts::policy`).
    pub policy: Option<PolicyFields>,
}

macro_rules! account_cols {
    () => {
        "id, name, status, daily_budget_usd::float8, max_instances, rate_limit_per_minute, \
         rate_limit_burst, created_at, updated_at, monthly_budget_usd::float8, on_budget_exhausted, \
         agent_exec"
    };
}
/// A key's policy columns, in the order `policy_at` reads them (names only `api_keys` has, so
/// they need no table prefix in a join with `accounts`).
macro_rules! policy_cols {
    () => {
        "max_price_micros_per_hour, allowed_providers, allowed_gpu_models, \
         require_max_duration_hours, key_max_instances, allow_exec"
    };
}
macro_rules! key_cols {
    () => {
        concat!(
            "public_id, account_id, scopes, label, rate_limit_per_minute, rate_limit_burst, \
             created_at, expires_at, revoked_at, last_used_at, spend_limit_usd::float8, ",
            policy_cols!()
        )
    };
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, Error> {
    row.try_get(i).map_err(Error::internal)
}

fn account(row: &Row) -> Result<Account, Error> {
    Ok(Account {
        id: get(row, 0)?,
        name: get(row, 1)?,
        status: get(row, 2)?,
        daily_budget_usd: get(row, 3)?,
        max_instances: get(row, 4)?,
        rate_limit_per_minute: get(row, 5)?,
        rate_limit_burst: get(row, 6)?,
        created_at: get(row, 7)?,
        updated_at: get(row, 8)?,
        monthly_budget_usd: get(row, 9)?,
        on_budget_exhausted: get(row, 10)?,
        agent_exec: get(row, 11)?,
    })
}

fn key_info(row: &Row) -> Result<KeyInfo, Error> {
    Ok(KeyInfo {
        public_id: get(row, 0)?,
        account_id: get(row, 1)?,
        scopes: get(row, 2)?,
        label: get(row, 3)?,
        rate_limit_per_minute: get(row, 4)?,
        rate_limit_burst: get(row, 5)?,
        created_at: get(row, 6)?,
        expires_at: get(row, 7)?,
        revoked_at: get(row, 8)?,
        last_used_at: get(row, 9)?,
        spend_limit_usd: get(row, 10)?,
        policy: policy_at(row, 11)?.fields(),
    })
}

/// The policy columns from `at` on (in `key_cols!` order).
fn policy_at(row: &Row, at: usize) -> Result<KeyPolicy, Error> {
    Ok(KeyPolicy {
        max_price_micros_per_hour: get(row, at)?,
        allowed_providers: get(row, at + 1)?,
        allowed_gpu_models: get(row, at + 2)?,
        require_max_duration_hours: get(row, at + 3)?,
        max_instances: get(row, at + 4)?,
        allow_exec: get(row, at + 5)?,
    })
}

/// What key `key_id` may rent now (for work done on its behalf later: a failover rents as the
/// key that rented). A key since deleted rents nothing: its policy is the narrowest.
pub async fn policy_of_key(db: &Db, key_id: i64) -> Result<Option<KeyPolicy>, Error> {
    let row = db
        .query_opt(
            concat!(
                "SELECT ",
                policy_cols!(),
                " FROM api_keys WHERE id = $1 AND revoked_at IS NULL"
            ),
            &[(&key_id, Type::INT8)],
        )
        .await?;
    row.map(|r| policy_at(&r, 0)).transpose()
}

/// Writes a key's policy columns.
async fn set_policy(db: &Db, public_id: &str, p: &KeyPolicy) -> Result<(), Error> {
    db.query(
        "UPDATE api_keys SET max_price_micros_per_hour = $2, allowed_providers = $3, \
           allowed_gpu_models = $4, require_max_duration_hours = $5, key_max_instances = $6, \
           allow_exec = $7 \
         WHERE public_id = $1",
        &[
            (&public_id, Type::TEXT),
            (&p.max_price_micros_per_hour, Type::INT8),
            (&p.allowed_providers, Type::TEXT_ARRAY),
            (&p.allowed_gpu_models, Type::TEXT_ARRAY),
            (&p.require_max_duration_hours, Type::FLOAT8),
            (&p.max_instances, Type::INT4),
            (&p.allow_exec, Type::BOOL),
        ],
    )
    .await?;
    Ok(())
}

/// How an account is named on the command line and in admin URLs: its id, or its name.
pub enum AccountRef<'a> {
    Id(i64),
    Name(&'a str),
}

impl<'a> AccountRef<'a> {
    pub fn parse(s: &'a str) -> AccountRef<'a> {
        s.parse().map_or(AccountRef::Name(s), AccountRef::Id)
    }
}

pub async fn create_account(db: &Db, a: &NewAccount) -> Result<Account, Error> {
    check_account_name(&a.name)?;
    let name = a.name.trim();
    let digits = name.strip_prefix(['+', '-']).unwrap_or(name);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::bad_request(
            "`name` must not be a number (numbers name accounts by id)",
        ));
    }
    check_money("daily_budget_usd", a.daily_budget_usd)?;
    check_money("monthly_budget_usd", a.monthly_budget_usd)?;
    check_policy(a.on_budget_exhausted.as_deref())?;
    if a.max_instances.is_some_and(|n| n < 0) {
        return Err(Error::bad_request("`max_instances` must be 0 or more"));
    }
    check_rate_limit(a.rate_limit_per_minute, a.rate_limit_burst)?;
    let rows = db
        .query(
            concat!(
                "INSERT INTO accounts (name, daily_budget_usd, max_instances, \
                 rate_limit_per_minute, rate_limit_burst, monthly_budget_usd, on_budget_exhausted) \
                 VALUES ($1, COALESCE($2::float8::numeric, 100), COALESCE($3, 5), $4, $5, \
                   $6::float8::numeric, COALESCE($7, 'stop')) \
                 RETURNING ",
                account_cols!()
            ),
            &[
                (&name, Type::TEXT),
                (&a.daily_budget_usd, Type::FLOAT8),
                (&a.max_instances, Type::INT4),
                (&a.rate_limit_per_minute, Type::INT4),
                (&a.rate_limit_burst, Type::INT4),
                (&a.monthly_budget_usd, Type::FLOAT8),
                (&a.on_budget_exhausted, Type::TEXT),
            ],
        )
        .await
        .map_err(|e| conflict_as(e, format!("an account named `{name}` already exists")))?;
    account(rows.first().ok_or_else(no_row)?)
}

pub async fn list_accounts(db: &Db, after_id: i64, limit: i64) -> Result<Vec<Account>, Error> {
    db.query(
        concat!(
            "SELECT ",
            account_cols!(),
            " FROM accounts WHERE id > $1 ORDER BY id LIMIT $2"
        ),
        &[(&after_id, Type::INT8), (&limit, Type::INT8)],
    )
    .await?
    .iter()
    .map(account)
    .collect()
}

pub async fn get_account(db: &Db, r: &AccountRef<'_>) -> Result<Account, Error> {
    let row = match r {
        AccountRef::Id(id) => {
            db.query_opt(
                concat!("SELECT ", account_cols!(), " FROM accounts WHERE id = $1"),
                &[(id, Type::INT8)],
            )
            .await?
        }
        AccountRef::Name(n) => {
            db.query_opt(
                concat!("SELECT ", account_cols!(), " FROM accounts WHERE name = $1"),
                &[(n, Type::TEXT)],
            )
            .await?
        }
    };
    account(&row.ok_or_else(|| account_not_found(r))?)
}

/// Changes an account's spending terms; returns the account and the public ids of its keys
/// (whose cached entries carry the budget `GET /v1/account` shows).
pub async fn update_account(
    db: &Db,
    r: &AccountRef<'_>,
    c: &AccountChange,
) -> Result<(Account, Vec<String>), Error> {
    check_money("daily_budget_usd", c.daily_budget_usd)?;
    check_money("monthly_budget_usd", c.monthly_budget_usd.flatten())?;
    check_policy(c.on_budget_exhausted.as_deref())?;
    if c.max_instances.is_some_and(|n| n < 0) {
        return Err(Error::bad_request("invalid `max_instances`: 0 or more"));
    }
    let id = get_account(db, r).await?.id;
    let (set_monthly, monthly) = (
        c.monthly_budget_usd.is_some(),
        c.monthly_budget_usd.flatten(),
    );
    let row = db
        .query_opt(
            concat!(
                "UPDATE accounts SET \
                   daily_budget_usd = COALESCE($2::float8::numeric, daily_budget_usd), \
                   monthly_budget_usd = CASE WHEN $3 THEN $4::float8::numeric \
                     ELSE monthly_budget_usd END, \
                   on_budget_exhausted = COALESCE($5, on_budget_exhausted), \
                   max_instances = COALESCE($6, max_instances), \
                   agent_exec = COALESCE($7, agent_exec), updated_at = now() \
                 WHERE id = $1 RETURNING ",
                account_cols!()
            ),
            &[
                (&id, Type::INT8),
                (&c.daily_budget_usd, Type::FLOAT8),
                (&set_monthly, Type::BOOL),
                (&monthly, Type::FLOAT8),
                (&c.on_budget_exhausted, Type::TEXT),
                (&c.max_instances, Type::INT4),
                (&c.agent_exec, Type::BOOL),
            ],
        )
        .await?
        .ok_or_else(|| account_not_found(r))?;
    Ok((account(&row)?, account_key_ids(db, id).await?))
}

async fn account_key_ids(db: &Db, account_id: i64) -> Result<Vec<String>, Error> {
    db.query(
        "SELECT public_id FROM api_keys WHERE account_id = $1",
        &[(&account_id, Type::INT8)],
    )
    .await?
    .iter()
    .map(|r| get(r, 0))
    .collect()
}

/// Sets or removes a key's spend cap, and replaces its policies when given. Cached records carry
/// the policies: `auth::admin::update_key` drops them everywhere.
pub async fn update_key(db: &Db, public_id: &str, c: &KeyChange) -> Result<KeyInfo, Error> {
    if let Some(p) = &c.policy {
        let policy = p.to_policy()?;
        get_key(db, public_id).await?;
        set_policy(db, public_id, &policy).await?;
    }
    let Some(limit) = c.spend_limit_usd else {
        return get_key(db, public_id).await;
    };
    check_money("spend_limit_usd", limit)?;
    let row = db
        .query_opt(
            concat!(
                "UPDATE api_keys SET spend_limit_usd = $2::float8::numeric \
                 WHERE public_id = $1 RETURNING ",
                key_cols!()
            ),
            &[(&public_id, Type::TEXT), (&limit, Type::FLOAT8)],
        )
        .await?
        .ok_or_else(|| key_not_found(public_id))?;
    key_info(&row)
}

/// Sets `active`/`suspended`; returns the account and the public ids of its keys (whose cached
/// entries must now be dropped everywhere).
pub async fn set_account_status(
    db: &Db,
    r: &AccountRef<'_>,
    active: bool,
) -> Result<(Account, Vec<String>), Error> {
    let id = get_account(db, r).await?.id;
    let status = if active { "active" } else { "suspended" };
    let row = db
        .query_opt(
            concat!(
                "UPDATE accounts SET status = $2, updated_at = now() WHERE id = $1 RETURNING ",
                account_cols!()
            ),
            &[(&id, Type::INT8), (&status, Type::TEXT)],
        )
        .await?
        .ok_or_else(|| account_not_found(r))?;
    Ok((account(&row)?, account_key_ids(db, id).await?))
}

/// Creates a key for an account; returns its record and the full token, which exists only in
/// this return value.
pub async fn create_key(
    db: &Db,
    r: &AccountRef<'_>,
    spec: &NewKeySpec,
) -> Result<(KeyInfo, String), Error> {
    let account_id = get_account(db, r).await?.id;
    let mut scopes = spec.scopes.clone();
    if scopes.is_empty() {
        scopes.push("user".into());
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| !["user", "admin", "read"].contains(&s.as_str()))
    {
        return Err(Error::bad_request(format!(
            "unknown scope `{}` (scopes are `user`, `admin` and `read`)",
            crate::error::truncate(bad, 40)
        )));
    }
    scopes.sort();
    scopes.dedup();
    if scopes.len() > 1 && scopes.iter().any(|s| s == "read") {
        return Err(Error::bad_request(
            "invalid `scopes`: `read` stands alone (a key that may change things is `user`)",
        ));
    }
    let policy = spec
        .policy
        .as_ref()
        .map(PolicyFields::to_policy)
        .transpose()?
        .unwrap_or_default();
    if spec.label.as_ref().is_some_and(|l| l.chars().count() > 200) {
        return Err(Error::bad_request("`label` must be at most 200 characters"));
    }
    check_rate_limit(spec.rate_limit_per_minute, spec.rate_limit_burst)?;
    check_money("spend_limit_usd", spec.spend_limit_usd)?;
    let expires: Option<SystemTime> = match spec.expires_in_days {
        Some(d) if !(1..=MAX_KEY_DAYS).contains(&d) => {
            return Err(Error::bad_request(format!(
                "`expires_in_days` must be 1 to {MAX_KEY_DAYS}"
            )));
        }
        Some(d) => Some(SystemTime::now() + Duration::from_secs(u64::from(d) * 86_400)),
        None => None,
    };
    let k = apikey::generate();
    let hash = k.secret_hash.to_vec();
    let rows = db
        .query(
            concat!(
                "INSERT INTO api_keys (account_id, public_id, secret_hash, scopes, label, \
                 expires_at, rate_limit_per_minute, rate_limit_burst, spend_limit_usd) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::float8::numeric) RETURNING ",
                key_cols!()
            ),
            &[
                (&account_id, Type::INT8),
                (&k.public_id, Type::TEXT),
                (&hash, Type::BYTEA),
                (&scopes, Type::TEXT_ARRAY),
                (&spec.label, Type::TEXT),
                (&expires, Type::TIMESTAMPTZ),
                (&spec.rate_limit_per_minute, Type::INT4),
                (&spec.rate_limit_burst, Type::INT4),
                (&spec.spend_limit_usd, Type::FLOAT8),
            ],
        )
        .await?;
    let key = key_info(rows.first().ok_or_else(no_row)?)?;
    if policy.is_empty() {
        return Ok((key, k.token));
    }
    set_policy(db, &key.public_id, &policy).await?;
    Ok((get_key(db, &key.public_id).await?, k.token))
}

pub async fn list_keys(db: &Db, r: &AccountRef<'_>) -> Result<Vec<KeyInfo>, Error> {
    let id = get_account(db, r).await?.id;
    db.query(
        concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE account_id = $1 ORDER BY id"
        ),
        &[(&id, Type::INT8)],
    )
    .await?
    .iter()
    .map(key_info)
    .collect()
}

pub async fn get_key(db: &Db, public_id: &str) -> Result<KeyInfo, Error> {
    let row = db
        .query_opt(
            concat!(
                "SELECT ",
                key_cols!(),
                " FROM api_keys WHERE public_id = $1"
            ),
            &[(&public_id, Type::TEXT)],
        )
        .await?
        .ok_or_else(|| key_not_found(public_id))?;
    key_info(&row)
}

/// Revokes a key (revoking a revoked key changes nothing and succeeds); the first revocation
/// is a `key.revoked` event of the key's account.
pub async fn revoke_key(db: &Db, public_id: &str) -> Result<KeyInfo, Error> {
    db.transaction(async |tx| {
        let fresh = tx
            .query_typed(
                "SELECT account_id, revoked_at IS NULL FROM api_keys WHERE public_id = $1 \
                 FOR UPDATE",
                &[(&public_id, Type::TEXT)],
            )
            .await
            .map_err(super::classify)?;
        let Some(fresh) = fresh.first() else {
            return Err(key_not_found(public_id));
        };
        let rows = tx
            .query_typed(
                concat!(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) \
                     WHERE public_id = $1 RETURNING ",
                    key_cols!()
                ),
                &[(&public_id, Type::TEXT)],
            )
            .await
            .map_err(super::classify)?;
        let key = key_info(rows.first().ok_or_else(|| key_not_found(public_id))?)?;
        if fresh.get::<_, bool>(1) {
            let data = serde_json::json!({"public_id": public_id, "label": key.label});
            super::event_log::append(tx, fresh.get(0), super::event_log::KEY_REVOKED, None, &data)
                .await?;
        }
        Ok(key)
    })
    .await
}

/// The record authentication caches, or `None` when no key has this public id.
pub async fn key_record(db: &Db, public_id: &str) -> Result<Option<KeyRecord>, Error> {
    let row = db
        .query_opt(
            concat!(
                "SELECT k.id, k.public_id, k.secret_hash, k.scopes, \
                    extract(epoch FROM k.expires_at)::int8, k.revoked_at IS NOT NULL, \
                    a.id, a.status = 'active', a.rate_limit_per_minute, a.rate_limit_burst, \
                    k.rate_limit_per_minute, k.rate_limit_burst, \
                    a.name, a.daily_budget_usd::float8, a.max_instances, a.agent_exec, ",
                policy_cols!(),
                " FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.public_id = $1"
            ),
            &[(&public_id, Type::TEXT)],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let limit = |rpm: Option<i32>, burst: Option<i32>| {
        rpm.map(|r| (r.max(1) as u32, burst.map(|b| b.max(1) as u32)))
    };
    Ok(Some(KeyRecord {
        key_id: get(&row, 0)?,
        public_id: get(&row, 1)?,
        secret_hash: get(&row, 2)?,
        scopes: get(&row, 3)?,
        expires_at: get(&row, 4)?,
        revoked: get(&row, 5)?,
        account_id: get(&row, 6)?,
        account_active: get(&row, 7)?,
        account_name: get(&row, 12)?,
        account_daily_budget_usd: get(&row, 13)?,
        account_max_instances: get(&row, 14)?,
        account_rate_limit: limit(get(&row, 8)?, get(&row, 9)?),
        key_rate_limit: limit(get(&row, 10)?, get(&row, 11)?),
        account_agent_exec: get(&row, 15)?,
        policy: policy_at(&row, 16)?,
    }))
}

/// Writes `last_used_at` for many keys in one statement.
pub async fn touch_last_used(db: &Db, uses: &[(i64, SystemTime)]) -> Result<(), Error> {
    if uses.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = uses.iter().map(|u| u.0).collect();
    let times: Vec<SystemTime> = uses.iter().map(|u| u.1).collect();
    db.query(
        "UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, u.t) \
         FROM unnest($1::int8[], $2::timestamptz[]) AS u(id, t) WHERE k.id = u.id",
        &[(&ids, Type::INT8_ARRAY), (&times, Type::TIMESTAMPTZ_ARRAY)],
    )
    .await?;
    Ok(())
}

/// The longest key lifetime (a hundred years: "never" is leaving `expires_in_days` out).
const MAX_KEY_DAYS: u32 = 36_500;

/// 1 to 100 characters, not only spaces, no control characters (a name is also a path segment
/// of the admin routes, where control characters are refused).
fn check_account_name(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "`name` must be 1 to 100 characters, not only spaces, without control characters",
        ));
    }
    Ok(())
}

fn check_rate_limit(rpm: Option<i32>, burst: Option<i32>) -> Result<(), Error> {
    if rpm.is_some_and(|r| r <= 0) {
        return Err(Error::bad_request(
            "`rate_limit_per_minute` must be at least 1",
        ));
    }
    if burst.is_some_and(|b| b <= 0) {
        return Err(Error::bad_request("`rate_limit_burst` must be at least 1"));
    }
    if burst.is_some() && rpm.is_none() {
        return Err(Error::bad_request(
            "`rate_limit_burst` needs `rate_limit_per_minute`",
        ));
    }
    Ok(())
}

fn conflict_as(e: Error, message: String) -> Error {
    match e.kind {
        Kind::Conflict => Error {
            message: message.into(),
            ..e
        },
        _ => e,
    }
}

fn no_row() -> Error {
    Error::new(Kind::Internal, Side::Internal, "statement returned no row")
}

fn account_not_found(r: &AccountRef<'_>) -> Error {
    let what = match r {
        AccountRef::Id(id) => format!("no account with id {id}"),
        AccountRef::Name(n) => format!("no account named `{}`", crate::error::truncate(n, 100)),
    };
    Error::new(Kind::NotFound, Side::Client, what)
}

fn key_not_found(public_id: &str) -> Error {
    Error::new(
        Kind::NotFound,
        Side::Client,
        format!("no key `{}`", crate::error::truncate(public_id, 40)),
    )
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}

fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// Unix seconds now (key expiry is compared in these).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
