//! Lifetimes end on time: every second (a background service) the open instances whose
//! `expires_at` has passed are destroyed and ended `expired`. The reconciler's round does the
//! same, but only every `rentals.reconcile_interval_ms`: a 36 s lifetime was billed a minute.
//! Two daemons ending the same instance is harmless: a destroy of what is gone counts as done,
//! and one transition wins.

use super::{Rentals, ledger, reconcile};
use crate::types::ProviderId;

/// Instances ended per round at most (the next round, a second later, takes the rest).
const BATCH: i64 = 100;

/// One round: ends every instance whose lifetime is over.
pub async fn round(r: &Rentals) -> Result<(), String> {
    let due = ledger::due_to_expire(&r.db, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    for row in due {
        let Some(pid) = row.provider_instance_id.clone() else {
            continue;
        };
        let Some(provider) = ProviderId::parse(&row.provider).and_then(|p| r.providers.get(p))
        else {
            continue;
        };
        reconcile::expire(r, provider.as_ref(), &row, &pid)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
