//! `gpuproxyd doctor --ledger`: ledger rows that an earlier gpuproxyd ended or destroyed on a
//! misreading of the provider (docs/providers.md), for an operator to check at the provider.
//!
//! Before provider truth landed, a status poll that got any 404 marked the instance `terminated`
//! (Vast answers a wrong or revoked key with 404: the instance may still run and bill there), and
//! the reconciler destroyed as stuck or dead an instance that had run (a stop→start, a reboot or
//! a host restart passes through `loading`; a host may go offline for a while). Neither happens
//! now; this finds the rows it left, from the events: nothing is changed.

use serde::Serialize;

use crate::accounts::Db;
use crate::error::Result;

/// One row worth a look.
#[derive(Debug, Clone, Serialize)]
pub struct Suspect {
    pub instance_id: String,
    pub account_id: i64,
    pub provider: String,
    pub provider_instance_id: Option<String>,
    /// When it was ended (RFC 3339).
    pub ended_at: String,
    /// The ledger event that ended it.
    pub event: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LedgerAudit {
    /// Marked terminated by a status read that found nothing (any 404 then), never destroyed
    /// through gpuproxyd: it may still run, and bill, at the provider.
    pub ended_by_not_found: Vec<Suspect>,
    /// Destroyed as stuck or dead after it had been seen running: the renter's data went with it.
    pub destroyed_after_running: Vec<Suspect>,
}

impl LedgerAudit {
    pub fn is_clean(&self) -> bool {
        self.ended_by_not_found.is_empty() && self.destroyed_after_running.is_empty()
    }
}

const SELECT: &str = "SELECT i.id, i.account_id, i.provider, i.provider_instance_id, \
    to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), e.kind \
    FROM instances i JOIN instance_events e ON e.instance_id = i.id";

pub async fn ledger(db: &Db) -> Result<LedgerAudit> {
    let rows = |sql: String| async move {
        db.query(&sql, &[]).await.map(|rows| {
            rows.iter()
                .map(|r| Suspect {
                    instance_id: r.get(0),
                    account_id: r.get(1),
                    provider: r.get(2),
                    provider_instance_id: r.get(3),
                    ended_at: r.get(4),
                    event: r.get(5),
                })
                .collect::<Vec<_>>()
        })
    };
    let ended_by_not_found = rows(format!(
        "{SELECT} WHERE i.status = 'terminated' AND e.status = 'terminated' \
           AND e.kind = 'status' \
           AND NOT EXISTS (SELECT 1 FROM instance_events d WHERE d.instance_id = i.id \
             AND d.kind = 'destroy_requested') \
         ORDER BY e.at"
    ))
    .await?;
    let destroyed_after_running = rows(format!(
        "{SELECT} WHERE i.status = 'failed' AND e.kind IN ('stuck_destroyed', 'dead_destroyed') \
           AND EXISTS (SELECT 1 FROM instance_events r WHERE r.instance_id = i.id \
             AND r.status = 'running' AND r.id < e.id) \
         ORDER BY e.at"
    ))
    .await?;
    Ok(LedgerAudit {
        ended_by_not_found,
        destroyed_after_running,
    })
}
