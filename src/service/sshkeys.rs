//! The caller's SSH public keys as typed operations (rentals name them in `ssh_key_ids`).
//! Another account's key id is 404, like an unknown one.

use serde::Serialize;

use super::{db, time};
use crate::auth::Principal;
use crate::error::Result;
use crate::rentals::sshkeys::{self, Key, NewKey};
use crate::state::AppState;

/// A key as the API shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "SshKey")]
pub struct SshKeyView {
    pub id: String,
    pub name: String,
    pub public_key: String,
    /// `SHA256:` fingerprint, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub created_at: Option<String>,
}

impl SshKeyView {
    fn of(k: &Key) -> SshKeyView {
        SshKeyView {
            id: k.id.clone(),
            name: k.name.clone(),
            public_key: k.public_key.clone(),
            fingerprint: k.fingerprint.clone(),
            created_at: time(Some(k.created_at)),
        }
    }
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SshKeyList {
    pub ssh_keys: Vec<SshKeyView>,
}

pub async fn create(app: &AppState, p: &Principal, k: NewKey) -> Result<SshKeyView> {
    let max = app.config.rentals.max_ssh_keys.get();
    let key = sshkeys::create(&*db(app, "SSH keys")?, p.account_id(), max, &k).await?;
    Ok(SshKeyView::of(&key))
}

pub async fn list(app: &AppState, p: &Principal) -> Result<SshKeyList> {
    let keys = sshkeys::list(&*db(app, "SSH keys")?, p.account_id()).await?;
    Ok(SshKeyList {
        ssh_keys: keys.iter().map(SshKeyView::of).collect(),
    })
}

pub async fn get(app: &AppState, p: &Principal, id: &str) -> Result<SshKeyView> {
    let key = sshkeys::get(&*db(app, "SSH keys")?, p.account_id(), id).await?;
    Ok(SshKeyView::of(&key))
}

pub async fn delete(app: &AppState, p: &Principal, id: &str) -> Result<SshKeyView> {
    let key = sshkeys::delete(&*db(app, "SSH keys")?, p.account_id(), id).await?;
    Ok(SshKeyView::of(&key))
}
