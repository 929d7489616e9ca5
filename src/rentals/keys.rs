//! Attaching a rental's SSH keys where the provider takes them only after create (Vast: per
//! instance, `POST /api/v0/instances/{id}/ssh/`). Right after a rental a task tries every
//! `KEY_RETRY` until each key is attached, the instance has ended, or
//! `rentals.provisioning_timeout_ms` has passed; the reconciler tries again each round for keys
//! still pending (after a restart, say). Failures while the instance is still coming up are
//! expected and only recorded on the key; once it runs, a key that still fails
//! `MAX_ATTEMPTS_RUNNING` more times is given up, with an `ssh_key_failed` event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ledger::{self, InstanceRow};
use crate::accounts::Db;
use crate::config::Config;
use crate::error::Result;
use crate::providers::{InstanceStatus, Provider};

const KEY_RETRY: Duration = Duration::from_millis(1_000);
/// Attempts on a running instance before a key is given up.
const MAX_ATTEMPTS_RUNNING: u32 = 3;

/// Starts the attach loop for a new rental.
pub fn spawn_attach(
    db: Arc<Db>,
    provider: Arc<dyn Provider>,
    row: InstanceRow,
    config: Arc<Config>,
) {
    let Some(pid) = row.provider_instance_id.clone() else {
        return;
    };
    let deadline = Instant::now() + config.rentals.provisioning_timeout_ms.get();
    tokio::spawn(async move {
        let mut failures_running = 0u32;
        while Instant::now() < deadline {
            match attach_pending(&db, provider.as_ref(), &row.id, &pid, failures_running).await {
                Ok(Pass::Done) => return,
                Ok(Pass::Pending { running }) => {
                    if running {
                        failures_running += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %row.id, error = %e, "SSH key attach pass failed")
                }
            }
            tokio::time::sleep(KEY_RETRY).await;
        }
    });
}

/// What one pass left.
pub enum Pass {
    /// Nothing pending (attached or given up), or the instance is gone.
    Done,
    /// Some key is still pending; whether the instance is running already.
    Pending { running: bool },
}

/// One try of every pending key of an instance. `failures_running`: passes that already failed
/// on a running instance (the reconciler passes how many attempts the keys show).
pub async fn attach_pending(
    db: &Db,
    provider: &dyn Provider,
    instance_id: &str,
    provider_id: &str,
    failures_running: u32,
) -> Result<Pass> {
    let pending: Vec<_> = ledger::instance_keys(db, instance_id)
        .await?
        .into_iter()
        .filter(|k| k.state == "pending")
        .collect();
    if pending.is_empty() {
        return Ok(Pass::Done);
    }
    let mut running = None;
    let mut left = false;
    for k in pending {
        match provider.attach_ssh_key(provider_id, &k.public_key).await {
            Ok(()) => {
                ledger::key_attempt(db, instance_id, &k.fingerprint, None, false).await?;
                ledger::note(
                    db,
                    instance_id,
                    "ssh_key_attached",
                    &format!("{} ({})", k.fingerprint, k.name),
                )
                .await?;
            }
            Err(e) => {
                if running.is_none() {
                    running = Some(match provider.instance(provider_id).await {
                        Ok(Some(r)) if !r.status.is_open() => return Ok(Pass::Done),
                        Ok(None) => return Ok(Pass::Done),
                        Ok(Some(r)) => r.status == InstanceStatus::Running,
                        Err(_) => false,
                    });
                }
                let give_up = running == Some(true) && failures_running + 1 >= MAX_ATTEMPTS_RUNNING;
                let why = e.to_string();
                // the event before the key's state: whoever sees `failed` sees why
                if give_up {
                    tracing::warn!(instance = instance_id, fingerprint = %k.fingerprint, error = %why, "SSH key could not be attached; giving up");
                    ledger::note(
                        db,
                        instance_id,
                        "ssh_key_failed",
                        &format!("{} ({}): {why}", k.fingerprint, k.name),
                    )
                    .await?;
                } else {
                    left = true;
                }
                ledger::key_attempt(db, instance_id, &k.fingerprint, Some(&why), give_up).await?;
            }
        }
    }
    Ok(if left {
        Pass::Pending {
            running: running == Some(true),
        }
    } else {
        Pass::Done
    })
}
