//! The reconciler: at start and every `rentals.reconcile_interval_ms` it lists each provider's
//! instances (ours carry our id in the Vast label / io.net deployment name) and
//! - settles intents left `pending` (by a crash, or a lost answer) once they are older than
//!   `rentals.intent_timeout_ms`, or at start any pending from before this process: an instance
//!   with our id is adopted (`adopted`), otherwise the intent is marked failed (`abandoned`);
//! - destroys an instance that exists for an intent marked failed (`orphan_destroyed`);
//! - brings open instances' statuses up to date (`status_synced`), and marks terminated the
//!   ones the provider no longer lists (`vanished`);
//! - publishes `gpuproxy_instances_running{provider}` and `gpuproxy_spend_usd_per_hour`.
//!
//! A provider that cannot be listed is skipped for that round: nothing is concluded from silence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge};

use super::Rentals;
use super::ledger;
use crate::error::Result;
use crate::metrics::{INSTANCES_RUNNING, RECONCILER_ACTIONS_TOTAL, SPEND_USD_PER_HOUR};
use crate::providers::{InstanceStatus, Provider, ProviderId, RemoteInstance, UpstreamError};

/// Looks for the instance created for our id.
pub async fn find_ours(
    p: &dyn Provider,
    our_id: &str,
) -> Result<Option<RemoteInstance>, UpstreamError> {
    Ok(p.list_instances()
        .await?
        .into_iter()
        .find(|r| r.our_id.as_deref() == Some(our_id)))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn act(action: &'static str) {
    counter!(RECONCILER_ACTIONS_TOTAL, "action" => action).increment(1);
}

/// Runs at once, then every `interval`, until dropped.
pub async fn run(r: Arc<Rentals>, interval: Duration) {
    let process_start = now();
    for a in [
        "adopted",
        "abandoned",
        "orphan_destroyed",
        "status_synced",
        "vanished",
    ] {
        counter!(RECONCILER_ACTIONS_TOTAL, "action" => a).absolute(0);
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = once(&r, process_start).await {
            tracing::warn!(error = %e, "reconciler round failed; next round retries");
        }
    }
}

/// One round over every provider.
pub async fn once(r: &Rentals, process_start: f64) -> Result<()> {
    let timeout = r.config.rentals.intent_timeout_ms as f64 / 1000.0;
    let db = r.db.clone();
    let rows = ledger::for_reconciler(&db, 7.0 * 86_400.0).await?;
    publish_gauges(&rows);
    let pending: Vec<_> = rows.iter().filter(|x| x.status == "pending").collect();
    let failed: Vec<_> = rows.iter().filter(|x| x.status == "failed").collect();
    let open: Vec<_> = rows
        .iter()
        .filter(|x| !matches!(x.status.as_str(), "pending" | "failed"))
        .collect();
    for p in &r.providers.list {
        let name = p.id().as_str();
        // nothing of ours there: no call
        if !rows.iter().any(|x| x.provider == name) {
            continue;
        }
        let remote = match p.list_instances().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(provider = name, error = %e, "reconciler cannot list instances; skipping this provider");
                continue;
            }
        };
        let ours: HashMap<&str, &RemoteInstance> = remote
            .iter()
            .filter_map(|i| Some((i.our_id.as_deref()?, i)))
            .collect();
        let by_pid: HashMap<&str, &RemoteInstance> =
            remote.iter().map(|i| (i.provider_id.as_str(), i)).collect();

        for row in pending.iter().filter(|x| x.provider == name) {
            let stale = now() - row.created_at > timeout || row.created_at < process_start;
            if !stale {
                continue;
            }
            match ours.get(row.id.as_str()) {
                Some(i) if i.status.is_open() => {
                    let detail = format!("provider instance {} found by our id", i.provider_id);
                    if ledger::transition(
                        &db,
                        &row.id,
                        &["pending"],
                        "provisioning",
                        "adopted",
                        Some(&i.provider_id),
                        None,
                        Some(&detail),
                    )
                    .await?
                    .is_some()
                    {
                        tracing::info!(instance = %row.id, provider = name, "adopted an instance a lost answer left unrecorded");
                        act("adopted");
                    }
                }
                _ => {
                    if ledger::transition(
                        &db,
                        &row.id,
                        &["pending"],
                        "failed",
                        "abandoned",
                        None,
                        None,
                        Some("no instance with our id at the provider"),
                    )
                    .await?
                    .is_some()
                    {
                        act("abandoned");
                    }
                }
            }
        }

        for row in failed.iter().filter(|x| x.provider == name) {
            if let Some(i) = ours.get(row.id.as_str()).filter(|i| i.status.is_open()) {
                tracing::warn!(instance = %row.id, provider = name, provider_id = %i.provider_id, "destroying an instance created for a failed intent");
                if p.destroy(&i.provider_id).await.is_ok() {
                    let detail = format!("destroyed provider instance {}", i.provider_id);
                    ledger::transition(
                        &db,
                        &row.id,
                        &["failed"],
                        "failed",
                        "orphan_destroyed",
                        Some(&i.provider_id),
                        None,
                        Some(&detail),
                    )
                    .await?;
                    act("orphan_destroyed");
                }
            }
        }

        for row in open.iter().filter(|x| x.provider == name) {
            let Some(pid) = row.provider_instance_id.as_deref() else {
                continue;
            };
            let (status, kind) = match by_pid.get(pid) {
                Some(i) => (i.status, "status"),
                None => (InstanceStatus::Terminated, "vanished"),
            };
            if status.as_str() != row.status {
                let ssh = by_pid.get(pid).and_then(|i| i.ssh.as_ref());
                if ledger::transition(
                    &db,
                    &row.id,
                    &[row.status.as_str()],
                    status.as_str(),
                    kind,
                    None,
                    ssh,
                    None,
                )
                .await?
                .is_some()
                {
                    act(if kind == "vanished" {
                        "vanished"
                    } else {
                        "status_synced"
                    });
                }
            }
        }
    }
    Ok(())
}

/// `gpuproxy_instances_running{provider}` and `gpuproxy_spend_usd_per_hour` from the ledger rows
/// of this round (as of its start).
fn publish_gauges(rows: &[ledger::InstanceRow]) {
    let open = || {
        rows.iter()
            .filter(|x| !matches!(x.status.as_str(), "failed" | "terminated"))
    };
    for p in ProviderId::ALL {
        let running = open()
            .filter(|x| x.provider == p.as_str() && x.status == "running")
            .count();
        gauge!(INSTANCES_RUNNING, "provider" => p.as_str()).set(running as f64);
    }
    gauge!(SPEND_USD_PER_HOUR).set(open().map(|x| x.price_per_hour).sum::<f64>());
}
