//! Accounts and keys for keys with the `admin` scope, as typed operations: the same operations
//! as the `gpuproxyd accounts|keys` commands (`accounts::store`, `auth::admin`), and the
//! providers' charges against the ledger.

use serde::{Deserialize, Serialize};

use super::query::Bounded;
use super::{db, time};
use crate::accounts::store::{
    self, Account, AccountChange, AccountRef, KeyChange, KeyInfo, NewAccount, NewKeySpec,
};
use crate::auth::admin::{self, Propagation};
use crate::auth::apikey;
use crate::error::{Error, Result};
use crate::rentals::billing::{self, InstanceDrift};
use crate::state::AppState;

/// `GET /v1/admin/accounts`'s query.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountsPage {
    /// Return accounts with a larger id (the previous page's `next_after`).
    pub after: Option<Bounded<0, { i64::MAX }>>,
    /// Page size, 1 to 500.
    #[schemars(extend("default" = 100))]
    pub limit: Option<Bounded<1, 500>>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct AccountList {
    pub accounts: Vec<Account>,
    /// Pass as `after` for the next page; `null` on the last.
    pub next_after: Option<i64>,
}

/// An account changed, and whether every daemon heard of it at once.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "AccountChange")]
pub struct AccountChanged {
    pub account: Account,
    pub propagation: Propagation,
}

/// A new key: its token is in this answer only.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "NewKeyResult")]
pub struct NewKeyView {
    pub key: KeyInfo,
    pub token: String,
    pub note: &'static str,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// A key revoked, and whether every daemon heard of it at once.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct KeyRevoked {
    pub key: KeyInfo,
    pub propagation: Propagation,
}

/// The providers' charges against the ledger.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Reconciliation {
    /// `rentals.billing_drift_alert_usd`.
    pub alert_threshold_usd: f64,
    /// `rentals.billing_reconcile_interval_ms`.
    pub interval_ms: u64,
    pub providers: Vec<ProviderReconciliation>,
}

/// One provider's part: `reconciled`, `not_yet` (its charges were never read) or
/// `no_charges_api` (it publishes none: only `provider` and `status`).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ProviderReconciliation {
    pub provider: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billed_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances_compared: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<InstanceDrift>>,
}

/// A key's public id as a path gives it: 12 letters and digits.
fn public_id(id: &str) -> Result<&str> {
    if apikey::is_public_id(id) {
        Ok(id)
    } else {
        Err(Error::bad_request(
            "a key's public id is 12 letters and digits (the part after `gpx_`)",
        ))
    }
}

pub async fn create_account(app: &AppState, new: NewAccount) -> Result<Account> {
    store::create_account(&*db(app, "accounts")?, &new).await
}

pub async fn list_accounts(app: &AppState, q: AccountsPage) -> Result<AccountList> {
    let after = q.after.map_or(0, |a| a.0);
    let n = q.limit.map_or(100, |l| l.0);
    let accounts = store::list_accounts(&*db(app, "accounts")?, after, n).await?;
    let next_after = (accounts.len() as i64 == n)
        .then(|| accounts.last().map(|a| a.id))
        .flatten();
    Ok(AccountList {
        accounts,
        next_after,
    })
}

/// An account by id or name.
pub async fn get_account(app: &AppState, account: &str) -> Result<Account> {
    store::get_account(&*db(app, "accounts")?, &AccountRef::parse(account)).await
}

pub async fn update_account(
    app: &AppState,
    account: &str,
    change: AccountChange,
) -> Result<AccountChanged> {
    let (account, propagation) = admin::update_account(
        &*db(app, "accounts")?,
        Some(&app.auth),
        app.redis.as_ref(),
        &AccountRef::parse(account),
        &change,
    )
    .await?;
    Ok(AccountChanged {
        account,
        propagation,
    })
}

/// Suspends (`active: false`) or resumes an account.
pub async fn set_account_status(
    app: &AppState,
    account: &str,
    active: bool,
) -> Result<AccountChanged> {
    let (account, propagation) = admin::set_account_status(
        &*db(app, "accounts")?,
        Some(&app.auth),
        app.redis.as_ref(),
        &AccountRef::parse(account),
        active,
    )
    .await?;
    Ok(AccountChanged {
        account,
        propagation,
    })
}

pub async fn create_key(app: &AppState, account: &str, spec: NewKeySpec) -> Result<NewKeyView> {
    let (key, token) =
        store::create_key(&*db(app, "keys")?, &AccountRef::parse(account), &spec).await?;
    Ok(NewKeyView {
        key,
        token,
        note: "store the token now: only its hash is kept, it cannot be shown again",
    })
}

pub async fn list_keys(app: &AppState, account: &str) -> Result<KeyList> {
    let keys = store::list_keys(&*db(app, "keys")?, &AccountRef::parse(account)).await?;
    Ok(KeyList { keys })
}

pub async fn get_key(app: &AppState, id: &str) -> Result<KeyInfo> {
    store::get_key(&*db(app, "keys")?, public_id(id)?).await
}

pub async fn update_key(app: &AppState, id: &str, change: KeyChange) -> Result<KeyInfo> {
    let db = db(app, "keys")?;
    let (key, _) = admin::update_key(
        &db,
        Some(&app.auth),
        app.redis.as_ref(),
        public_id(id)?,
        &change,
    )
    .await?;
    Ok(key)
}

pub async fn revoke_key(app: &AppState, id: &str) -> Result<KeyRevoked> {
    let (key, propagation) = admin::revoke_key(
        &*db(app, "keys")?,
        Some(&app.auth),
        app.redis.as_ref(),
        public_id(id)?,
    )
    .await?;
    Ok(KeyRevoked { key, propagation })
}

/// Every provider's charges against the ledger, per instance (`rentals::billing`).
pub async fn reconciliation(app: &AppState) -> Result<Reconciliation> {
    let db = db(app, "billing reconciliation")?;
    let mut providers = Vec::new();
    for p in app.providers.list.iter() {
        let name = p.id().as_str().to_owned();
        if !p.publishes_charges() {
            providers.push(ProviderReconciliation {
                provider: name,
                status: "no_charges_api",
                as_of: None,
                billed_usd: None,
                ledger_usd: None,
                drift_usd: None,
                instances_compared: None,
                instances: None,
            });
            continue;
        }
        let rep = billing::report(&db, &name).await?;
        providers.push(ProviderReconciliation {
            provider: rep.provider,
            status: if rep.as_of.is_some() {
                "reconciled"
            } else {
                "not_yet"
            },
            as_of: Some(time(rep.as_of)),
            billed_usd: Some(rep.billed_usd),
            ledger_usd: Some(rep.ledger_usd),
            drift_usd: Some(rep.drift_usd),
            instances_compared: Some(rep.instances_compared),
            instances: Some(rep.instances),
        });
    }
    Ok(Reconciliation {
        alert_threshold_usd: app.config.rentals.billing_drift_alert_usd,
        interval_ms: app.config.rentals.billing_reconcile_interval_ms.ms(),
        providers,
    })
}
