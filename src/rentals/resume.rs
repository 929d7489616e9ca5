//! What became of a rental an `Idempotency-Key` was bound to, asked before the key's retry runs
//! anything (`idempotency`): one key never starts a second rental.
//!
//! The subject is an instance id (a rental of one offer) or a rental by spec's request id. Its
//! rows in the ledger say:
//! - one the provider has (open and past `pending`, or ended after it ran): **rented**, that
//!   instance is the answer;
//! - a `pending` intent (its daemon died, or the provider's answer was lost): the provider's
//!   list is searched for our id now; found open → adopted and the answer; otherwise **unknown**
//!   (502 `outcome_unknown` naming the instance) until the reconciler settles it;
//! - nothing, or only failed tries: **failed**, the rental runs again (its offer claims, dead with
//!   the run that held them, are dropped).

use super::ledger::{self, InstanceRow, Status};
use super::{Rentals, outcome_unknown, reconcile};
use crate::error::{Kind, Result};
use crate::providers::ProviderId;

impl Rentals {
    /// `Some(instance)` when the rental `subject` of `account_id` rented one, `None` when it
    /// failed (run again), an `outcome_unknown` error while that is not known, also when the
    /// ledger cannot be read or written now (the key keeps it, and the next retry asks again).
    pub async fn resume(&self, account_id: i64, subject: &str) -> Result<Option<InstanceRow>> {
        self.resume_once(account_id, subject).await.map_err(|e| {
            if matches!(e.kind, Kind::OutcomeUnknown) {
                e
            } else {
                outcome_unknown(
                    subject,
                    "ledger_unavailable",
                    &format!("what became of an earlier request with this Idempotency-Key cannot be read now ({})", e.message),
                )
            }
        })
    }

    async fn resume_once(&self, account_id: i64, subject: &str) -> Result<Option<InstanceRow>> {
        let rows = ledger::of_rental(&self.db, account_id, subject).await?;
        if let Some(row) = rows
            .iter()
            .rev()
            .find(|r| r.status != Status::Pending && r.status != Status::Failed)
        {
            return self.refresh(row.clone()).await.map(Some);
        }
        if let Some(row) = rows.iter().find(|r| r.status == Status::Pending) {
            let provider = ProviderId::parse(&row.provider).and_then(|p| self.providers.get(p));
            if let Some(p) = provider
                && let Ok(Some(remote)) = reconcile::find_ours(p.as_ref(), &row.id).await
                && remote.status.is_open()
            {
                tracing::info!(instance = %row.id, "a retried key found its rental at the provider; adopted");
                return self
                    .commit(row, &remote.provider_id, "adopted")
                    .await
                    .map(Some);
            }
            return Err(outcome_unknown(
                &row.id,
                "pending",
                "an earlier request with this Idempotency-Key began this rental and its outcome is not known yet",
            ));
        }
        for row in &rows {
            ledger::release_claims_of(&self.db, &row.id).await?;
        }
        Ok(None)
    }
}
