//! The reconciler: at start and every `rentals.reconcile_interval_ms` it lists each provider's
//! instances (ours carry our id in the Vast label / io.net deployment name) and
//! - records at once the rentals the provider accepted while the ledger could not record them;
//! - settles intents left `pending` (by a crash, or a lost answer) once they are older than
//!   `rentals.intent_timeout_ms`, or at start any pending from before this process: an instance
//!   with our id is adopted (`adopted`), otherwise the intent is marked failed (`abandoned`);
//! - destroys an instance that exists for an intent marked failed (`orphan_destroyed`);
//! - brings open instances' statuses up to date (`status_synced`; an outbid bid instance becomes
//!   `interrupted`), and marks terminated the ones the provider no longer lists and, asked for
//!   them one by one, says are gone (`vanished`);
//! - destroys and marks failed an instance that has never run and that the provider has reported
//!   in a state that never reaches `running` for `rentals.dead_state_grace_ms`
//!   (`dead_destroyed`), or that is still not running `rentals.provisioning_timeout_ms` after its
//!   latest (re)start (`stuck_destroyed`): both stop billing in the ledger. An instance that has
//!   ever run is never destroyed for either (a stop→start, a reboot, a host restart pass through
//!   `loading`); one whose host goes `offline`/`unknown` gets `instance.unreachable`, and after
//!   `rentals.unreachable_grace_ms` the `rentals.unreachable_policy` (`keep`, or `destroy`:
//!   `unreachable_destroyed`); none of these is destroyed while its instance agent holds a
//!   channel (`agent_kept`: the machine is up whatever the provider says);
//! - applies each rental's own policies (`upkeep`: idle, interrupted) and answers hosts' price
//!   increases (`repricing`);
//! - settles paid extensions whose answer was lost with the provider's `amount_paid`, once they
//!   are older than twice `providers.total_timeout_ms` (`paid_settled`; `ledger::lumps`);
//! - retries SSH keys not yet attached (providers that take them per instance);
//! - deletes expired `Idempotency-Key` records;
//! - enforces the budgets (`budget`): warnings, and the account's policy once one is spent;
//! - publishes `gpuproxy_instances_running{provider}` and `gpuproxy_spend_usd_per_hour`.
//!
//! A provider that cannot be listed is skipped for that round: nothing is concluded from silence.

use std::collections::HashMap;

use std::time::{Duration, UNIX_EPOCH};

use metrics::{counter, gauge};

use super::Rentals;
pub use super::ending::now;
use super::ending::{act, act_n, end};
use super::ledger::{self, Status, Transition};
use crate::config::UnreachablePolicy;
use crate::error::Result;
use crate::metrics::{INSTANCES_RUNNING, RECONCILER_ACTIONS_TOTAL, SPEND_USD_PER_HOUR};
use crate::providers::{InstanceStatus, Provider, RemoteInstance, UpstreamError};

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

/// Runs at once, then every `interval`, until dropped.
/// The reconciler's series, at 0 from the start (the alerts and dashboards divide by them).
pub fn register_metrics() {
    for a in [
        "adopted",
        "abandoned",
        "orphan_destroyed",
        "status_synced",
        "vanished",
        "dead_destroyed",
        "stuck_destroyed",
        "unreachable_destroyed",
        "agent_kept",
        "expired",
        "paid_settled",
        "idle_warned",
        "idle_stopped",
        "idle_destroyed",
        "rebid",
        "rebid_refused",
        "interrupt_destroyed",
        "interrupt_failed_over",
        "interrupt_failover_failed",
        "price_increase_accepted",
        "price_increase_rejected",
    ] {
        counter!(RECONCILER_ACTIONS_TOTAL, "action" => a).absolute(0);
    }
}

/// One round over every provider.
pub async fn once(r: &std::sync::Arc<Rentals>, process_start: f64) -> Result<()> {
    // rentals the ledger missed while it was down, first: no need to wait for the intent timeout
    let recorded = r.commit_missed().await;
    if recorded > 0 {
        act_n("adopted", recorded);
    }
    super::upkeep::resume_failovers(r).await?;
    let timeout = r.config.rentals.intent_timeout_ms.ms() as f64 / 1000.0;
    let db = r.db.clone();
    let rows = ledger::for_reconciler(&db, 7.0 * 86_400.0).await?;
    publish_gauges(&r.providers, &rows);
    let pending: Vec<_> = rows
        .iter()
        .filter(|x| x.status == Status::Pending)
        .collect();
    let failed: Vec<_> = rows.iter().filter(|x| x.status == Status::Failed).collect();
    let open: Vec<_> = rows
        .iter()
        .filter(|x| !matches!(x.status, Status::Pending | Status::Failed))
        .collect();
    for p in &r.providers.list {
        let name = p.id().as_str();
        // nothing of ours there (no instance, no volume): no call
        if !rows.iter().any(|x| x.provider == name)
            && (!p.has_volumes() || ledger::live_volumes(&db, name).await?.is_empty())
        {
            continue;
        }
        if !same_account(r, p.as_ref()).await? {
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
                        Transition::new(&[Status::Pending], Status::Provisioning, "adopted")
                            .provider_id(Some(&i.provider_id))
                            .detail(&detail),
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
                        Transition::new(&[Status::Pending], Status::Failed, "abandoned")
                            .detail("no instance with our id at the provider"),
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
            // (one being torn down already needs nothing more)
            if let Some(i) = ours
                .get(row.id.as_str())
                .filter(|i| i.status.is_open() && i.status != InstanceStatus::Terminating)
            {
                tracing::warn!(instance = %row.id, provider = name, provider_id = %i.provider_id, "destroying an instance created for a failed intent");
                if p.destroy(&i.provider_id).await.is_ok() {
                    let detail = format!("destroyed provider instance {}", i.provider_id);
                    ledger::transition(
                        &db,
                        &row.id,
                        Transition::new(&[Status::Failed], Status::Failed, "orphan_destroyed")
                            .provider_id(Some(&i.provider_id))
                            .detail(&detail),
                    )
                    .await?;
                    act("orphan_destroyed");
                }
            }
        }

        let grace = r.config.rentals.dead_state_grace_ms.ms() as f64 / 1000.0;
        let stuck_after = r.config.rentals.provisioning_timeout_ms.ms() as f64 / 1000.0;
        let unreachable_after = r.config.rentals.unreachable_grace_ms.ms() as f64 / 1000.0;
        for row in open.iter().filter(|x| x.provider == name) {
            let Some(pid) = row.provider_instance_id.as_deref() else {
                continue;
            };
            // missing from the list: gone only if the provider says so for this instance too
            // (its own not-found answer); a list that left it out, or a provider that cannot
            // answer now, concludes nothing (docs/providers.md, "A 404 is not gone")
            let asked;
            let i = match by_pid.get(pid) {
                Some(i) => *i,
                None => match p.instance(pid).await {
                    Ok(None) => {
                        // gone past its lifetime: it ended because of it (the expiry service's
                        // destroy, racing this round, or one whose record a crash lost)
                        let why = if row.expires_at.is_some_and(|t| t <= now()) {
                            "expired"
                        } else {
                            "vanished"
                        };
                        if ledger::transition(
                            &db,
                            &row.id,
                            Transition::new(&[row.status], Status::Terminated, why),
                        )
                        .await?
                        .is_some()
                        {
                            act(why);
                        }
                        continue;
                    }
                    Ok(Some(found)) => {
                        asked = found;
                        &asked
                    }
                    Err(e) => {
                        tracing::warn!(instance = %row.id, provider = name, error = %e, "an instance the list left out could not be asked for; nothing concluded");
                        continue;
                    }
                },
            };
            let view = super::RemoteView::of(i);
            let after = r.apply((*row).clone(), &view, "status").await?;
            if after.status != row.status || i.dead != row.dead_reason {
                act("status_synced");
                // a status read before this change must not roll the ledger back
                r.status.forget(&format!("{}:{pid}", row.provider)).await;
            }
            let since = |t: Option<f64>| t.map(|t| now() - t);
            // an instance that has ever run is never destroyed as dead or stuck: the renter's
            // data is on it (a restart passes through `loading`, a host may go offline a while)
            let why = match (&i.dead, since(after.dead_since)) {
                (Some(dead), Some(age)) if !after.has_run() && age >= grace => Some((
                    "dead_destroyed",
                    format!(
                        "the provider reported `{dead}` for {age:.0} s (rentals.dead_state_grace_ms): it never reaches running"
                    ),
                )),
                (Some(dead), Some(age))
                    if after.has_run()
                        && age >= unreachable_after
                        && r.config.rentals.unreachable_policy == UnreachablePolicy::Destroy =>
                {
                    Some((
                        "unreachable_destroyed",
                        format!(
                            "the provider reported `{dead}` for {age:.0} s after it ran (rentals.unreachable_grace_ms, unreachable_policy = destroy)"
                        ),
                    ))
                }
                _ if after.status == Status::Provisioning
                    && !after.has_run()
                    && since(after.restarted_at.or(after.started_at))
                        .is_some_and(|a| a >= stuck_after) =>
                {
                    Some((
                        "stuck_destroyed",
                        format!(
                            "not running {stuck_after:.0} s after its start (rentals.provisioning_timeout_ms)"
                        ),
                    ))
                }
                _ => None,
            };
            // a live agent on the machine outweighs the provider's word that it is dead,
            // offline or not up yet: the renter's work is running there
            let why = match why {
                Some((action, _)) if r.agent_live(&row.id).await => {
                    tracing::info!(instance = %row.id, action, "kept: its agent holds a channel");
                    act("agent_kept");
                    None
                }
                w => w,
            };
            if let Some((action, detail)) = why {
                destroy_failed(r, p.as_ref(), &after, pid, action, &detail).await?;
            } else if after.expires_at.is_some_and(|t| t <= now()) {
                expire(r, p.as_ref(), &after, pid).await?;
            } else {
                if after.expires_at.is_some_and(|t| {
                    t - now() <= r.config.events.expiring_notice_ms.get().as_secs_f64()
                }) {
                    notify_expiring(r, &after).await?;
                }
                // the rental's own policies: idle, interrupted
                super::upkeep::run(r, p.as_ref(), &after, i, pid).await?;
            }
        }

        // volumes being created are found by name; none is ever deleted here (`volumes`)
        r.reconcile_volumes(p.as_ref()).await?;

        // hosts' price increases on our running contracts (`repricing`)
        let ours_open: Vec<&ledger::InstanceRow> = open
            .iter()
            .filter(|x| x.provider == name)
            .copied()
            .collect();
        if !ours_open.is_empty() {
            super::repricing::round(r, p.as_ref(), &ours_open).await?;
        }

        // extensions whose answer was lost: the provider's `amount_paid` settles them
        if p.sells_time() {
            for row in ledger::extends_in_doubt(&db, name, r.extend_in_flight_secs()).await? {
                let Some(pid) = row.provider_instance_id.clone() else {
                    continue;
                };
                if let Ok(Some(i)) = p.instance(&pid).await {
                    r.apply(row, &super::RemoteView::of(&i), "status").await?;
                    act("paid_settled");
                }
            }
        }

        if !p.ssh_keys_at_create() {
            let pending = ledger::with_pending_keys(&db).await?;
            for row in open
                .iter()
                .filter(|x| x.provider == name && pending.contains(&x.id))
            {
                if let Some(pid) = row.provider_instance_id.as_deref() {
                    super::keys::attach_pending(&db, p.as_ref(), &row.id, pid, 0).await?;
                }
            }
        }
    }
    Ok(())
}

/// Forgets what has expired: the per-account upstream-call limiters' idle entries,
/// `Idempotency-Key` records past `rentals.idempotency_ttl_ms`, and events past
/// `events.retention_hours` (the background service `sweeps`).
pub async fn sweep(r: &Rentals) -> std::result::Result<(), String> {
    r.upstream_calls.sweep();
    let mut failed = Vec::new();
    match super::idempotency::sweep(&r.db).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(deleted = n, "expired Idempotency-Key records swept"),
        Err(e) => failed.push(format!("Idempotency-Key records: {e}")),
    }
    match crate::events::sweep(&r.db, r.config.events.retention_hours.get()).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(deleted = n, "events past events.retention_hours swept"),
        Err(e) => failed.push(format!("the event log: {e}")),
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// Whether the provider's key still belongs to the account first seen with it (recorded in
/// `provider_identities`); a provider that names no account passes. Otherwise (or when it cannot
/// say now) the round concludes nothing for the provider: a key of another account would list
/// none of our instances, successfully. It counts as an authentication fault.
async fn same_account(r: &Rentals, p: &dyn Provider) -> Result<bool> {
    let name = p.id().as_str();
    let seen = match p.identity().await {
        Ok(None) => return Ok(true),
        Ok(Some(id)) => id,
        Err(e) => {
            tracing::warn!(provider = name, error = %e, "cannot tell which account the provider key belongs to; skipping this provider");
            return Ok(false);
        }
    };
    let first: String =
        r.db.query(
            "WITH ins AS (INSERT INTO provider_identities (provider, identity) VALUES ($1, $2) \
               ON CONFLICT (provider) DO NOTHING RETURNING identity) \
             SELECT identity FROM ins UNION ALL \
             SELECT identity FROM provider_identities WHERE provider = $1 LIMIT 1",
            &[
                (&name, tokio_postgres::types::Type::TEXT),
                (&seen, tokio_postgres::types::Type::TEXT),
            ],
        )
        .await?
        .first()
        .map(|row| row.get(0))
        .unwrap_or_else(|| seen.clone());
    if first == seen {
        return Ok(true);
    }
    counter!(crate::metrics::PROVIDER_AUTH_FAILURES_TOTAL, "provider" => name).increment(1);
    tracing::error!(
        provider = name,
        "the provider key belongs to another account than the one the ledger's instances were rented with; nothing is concluded (delete its provider_identities row to accept the move)"
    );
    Ok(false)
}

/// Destroys an instance whose lifetime is over and marks it terminated (`expired`): it stops
/// billing there. Left for the next round when the provider refuses the destroy.
pub(super) async fn expire(
    r: &Rentals,
    p: &dyn Provider,
    row: &ledger::InstanceRow,
    pid: &str,
) -> Result<()> {
    let detail = "its lifetime ended (max_duration_hours / expires_at)";
    end(r, p, row, pid, "expired", detail).await.map(|_| ())
}

/// `instance.expiring` for an instance whose end is within `events.expiring_notice_ms`, once per
/// end time: the row remembers the end it was written for (`expiring_notified_for`), so the next
/// rounds skip it and an extension earns a new notice.
async fn notify_expiring(r: &Rentals, row: &ledger::InstanceRow) -> Result<()> {
    r.db.transaction(async |tx| {
        let rows = tx
            .query_typed(
                "UPDATE instances SET expiring_notified_for = expires_at \
                 WHERE id = $1 AND expires_at IS NOT NULL \
                   AND expiring_notified_for IS DISTINCT FROM expires_at \
                 RETURNING account_id, extract(epoch FROM expires_at)::float8",
                &[(&row.id, tokio_postgres::types::Type::TEXT)],
            )
            .await
            .map_err(crate::accounts::classify)?;
        if let Some(found) = rows.first() {
            let (account_id, end): (i64, f64) = (found.get(0), found.get(1));
            let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs_f64(end));
            let data = serde_json::json!({"expires_at": at.to_string(),
                "seconds_left": (end - now()).max(0.0).round()});
            crate::events::append(
                tx,
                account_id,
                crate::events::EXPIRING,
                Some(&row.id),
                &data,
            )
            .await?;
        }
        Ok(())
    })
    .await
}

/// Destroys an instance that will never serve (dead or stuck) and marks it failed with why:
/// its spend stops there. Left for the next round when the provider refuses the destroy.
async fn destroy_failed(
    r: &Rentals,
    p: &dyn Provider,
    row: &ledger::InstanceRow,
    pid: &str,
    action: &'static str,
    detail: &str,
) -> Result<()> {
    if super::ending::end_as(r, p, row, pid, Status::Failed, action, detail).await? {
        tracing::warn!(instance = %row.id, provider_id = pid, action, detail, "destroyed an instance that will not run");
    }
    Ok(())
}

/// `gpuproxy_instances_running{provider}` and `gpuproxy_spend_usd_per_hour` from the ledger rows
/// of this round (as of its start).
fn publish_gauges(providers: &crate::providers::Providers, rows: &[ledger::InstanceRow]) {
    let open = || rows.iter().filter(|x| x.status.is_open());
    for p in providers.list.iter().map(|p| p.id()) {
        let running = open()
            .filter(|x| x.provider == p.as_str() && x.status == Status::Running)
            .count();
        gauge!(INSTANCES_RUNNING, "provider" => p.as_str()).set(running as f64);
    }
    gauge!(SPEND_USD_PER_HOUR).set(open().map(|x| x.rate(x.status)).sum::<f64>());
}
