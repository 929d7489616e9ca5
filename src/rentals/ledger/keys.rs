//! The SSH keys an instance must get, and how far each attach is.

use serde::Serialize;
use tokio_postgres::types::Type;

use crate::accounts::Db;
use crate::error::Result;

/// One key an instance must get, and how far it is.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct InstanceKey {
    pub name: String,
    pub fingerprint: String,
    #[serde(skip)]
    pub public_key: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

pub async fn instance_keys(db: &Db, id: &str) -> Result<Vec<InstanceKey>> {
    Ok(db
        .query(
            "SELECT name, fingerprint, public_key, state, attempts, last_error \
             FROM instance_ssh_keys WHERE instance_id = $1 ORDER BY name, fingerprint",
            &[(&id, Type::TEXT)],
        )
        .await?
        .iter()
        .map(|r| InstanceKey {
            name: r.get(0),
            fingerprint: r.get(1),
            public_key: r.get(2),
            state: r.get(3),
            attempts: r.get(4),
            last_error: r.get(5),
        })
        .collect())
}

/// Instances with keys still to attach (every account: the reconciler's view).
pub async fn with_pending_keys(db: &Db) -> Result<Vec<String>> {
    Ok(db
        .query(
            "SELECT DISTINCT k.instance_id FROM instance_ssh_keys k \
             JOIN instances i ON i.id = k.instance_id \
             WHERE k.state = 'pending' AND i.status IN ('provisioning', 'running') \
               AND i.provider_instance_id IS NOT NULL",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Records an attach attempt: `error` `None` = attached; `give_up` turns a failure final.
pub async fn key_attempt(
    db: &Db,
    id: &str,
    fingerprint: &str,
    error: Option<&str>,
    give_up: bool,
) -> Result<()> {
    let state = match (error, give_up) {
        (None, _) => "attached",
        (Some(_), true) => "failed",
        (Some(_), false) => "pending",
    };
    db.query(
        "UPDATE instance_ssh_keys SET state = $3, attempts = attempts + 1, last_error = $4, \
           attached_at = CASE WHEN $3 = 'attached' THEN now() ELSE attached_at END \
         WHERE instance_id = $1 AND fingerprint = $2 AND state = 'pending'",
        &[
            (&id, Type::TEXT),
            (&fingerprint, Type::TEXT),
            (&state, Type::TEXT),
            (&error, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// Marks every pending key of an instance attached (the provider took them at create).
pub async fn keys_attached_at_create(db: &Db, id: &str) -> Result<()> {
    db.query(
        "UPDATE instance_ssh_keys SET state = 'attached', attempts = 1, attached_at = now() \
         WHERE instance_id = $1 AND state = 'pending'",
        &[(&id, Type::TEXT)],
    )
    .await?;
    Ok(())
}
