//! Reconciling the ledger with what the providers billed. Every
//! `rentals.billing_reconcile_interval_ms` (a day; also shortly after start) each provider that
//! publishes charges (Vast: `GET /api/v0/charges/`) is asked for the lines of the last
//! [`LOOKBACK_DAYS`]; they are stored in `provider_charges` (a line read again replaces its
//! amount) and compared, per instance, with the ledger's spend up to the moment they were read.
//!
//! The difference per instance (billed − ledger) is what `GET /v1/admin/reconciliation` lists;
//! `gpuproxy_billing_drift_usd{provider}` is the sum of its absolute values, which the
//! `GpuproxyBillingDrift` alert compares with `rentals.billing_drift_alert_usd`. Known, small,
//! sources of drift: the ledger bills the full price from the provider's acceptance while Vast
//! bills the GPU from `running`, and the ledger learns of state changes when it polls.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::gauge;
use serde::Serialize;
use tokio_postgres::types::Type;

use super::Rentals;
use crate::accounts::Db;
use crate::error::Result;
use crate::metrics::{BILLING_DRIFT_ALERT_USD, BILLING_DRIFT_USD, BILLING_RECONCILED_AT};
use crate::providers::Provider;

/// How far back each run asks for charges (a month and a day).
pub const LOOKBACK_DAYS: i32 = 32;

/// Runs shortly after start, then every `interval`, until dropped.
pub async fn run(r: Arc<Rentals>, interval: Duration) {
    gauge!(BILLING_DRIFT_ALERT_USD).set(r.config.rentals.billing_drift_alert_usd);
    for p in r.providers.list.iter().filter(|p| p.publishes_charges()) {
        gauge!(BILLING_DRIFT_USD, "provider" => p.id().as_str()).set(0.0);
    }
    // after the reconciler's first round, not in the middle of start-up
    tokio::time::sleep(interval.min(Duration::from_secs(30))).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for p in r.providers.list.iter().filter(|p| p.publishes_charges()) {
            if let Err(e) = once(&r, p.as_ref()).await {
                tracing::warn!(provider = p.id().as_str(), error = %e, "billing reconciliation failed; the next run retries");
            }
        }
    }
}

/// Pulls one provider's charges, stores them and publishes the drift.
pub async fn once(r: &Rentals, p: &dyn Provider) -> Result<()> {
    let name = p.id().as_str();
    let now = super::reconcile::now();
    let from = now - f64::from(LOOKBACK_DAYS) * 86_400.0;
    let charges = match p.charges(from, now).await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::warn!(provider = name, error = %e, "cannot read the provider's charges");
            return Ok(());
        }
    };
    for c in &charges {
        r.db.query(
            "INSERT INTO provider_charges (provider, charge_key, provider_instance_id, at, \
               description, amount_usd) \
             VALUES ($1, $2, $3, to_timestamp($4), $5, $6) \
             ON CONFLICT (provider, charge_key) DO UPDATE \
               SET amount_usd = excluded.amount_usd, fetched_at = now()",
            &[
                (&name, Type::TEXT),
                (&c.key(), Type::TEXT),
                (&c.provider_instance_id, Type::TEXT),
                (&c.at, Type::FLOAT8),
                (&c.description, Type::TEXT),
                (&c.amount_usd, Type::FLOAT8),
            ],
        )
        .await?;
    }
    let rep = report(&r.db, name).await?;
    gauge!(BILLING_DRIFT_USD, "provider" => p.id().as_str()).set(rep.drift_usd);
    gauge!(BILLING_RECONCILED_AT, "provider" => p.id().as_str()).set(now);
    if rep.drift_usd > r.config.rentals.billing_drift_alert_usd {
        tracing::warn!(
            provider = name,
            drift_usd = rep.drift_usd,
            "the provider billed differently from the ledger (GET /v1/admin/reconciliation)"
        );
    }
    Ok(())
}

/// One instance's bill against its ledger spend.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceDrift {
    pub provider_instance_id: String,
    /// Ours; `None` for an instance the ledger does not know (billed to the shared key by
    /// something other than this proxy).
    pub instance_id: Option<String>,
    pub account_id: Option<i64>,
    pub billed_usd: f64,
    pub ledger_usd: f64,
    /// billed − ledger.
    pub drift_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderReport {
    pub provider: String,
    /// When the charges were last read (epoch seconds); `None`: never.
    pub as_of: Option<f64>,
    pub billed_usd: f64,
    pub ledger_usd: f64,
    /// Sum over instances of |billed − ledger|.
    pub drift_usd: f64,
    pub instances_compared: usize,
    /// Largest differences first, at most 100.
    pub instances: Vec<InstanceDrift>,
}

/// The comparison, from the stored charges and the ledger (every daemon answers the same).
pub async fn report(db: &Db, provider: &str) -> Result<ProviderReport> {
    let billed = db
        .query(
            "SELECT provider_instance_id, sum(amount_usd)::float8, \
               extract(epoch from max(fetched_at))::float8 \
             FROM provider_charges WHERE provider = $1 \
               AND at > now() - make_interval(days => $2) GROUP BY 1",
            &[(&provider, Type::TEXT), (&LOOKBACK_DAYS, Type::INT4)],
        )
        .await?;
    let as_of = billed.iter().map(|r| r.get::<_, f64>(2)).reduce(f64::max);
    // the ledger up to the moment the charges were read
    let until = as_of.unwrap_or_else(super::reconcile::now);
    let ledger = db
        .query(
            "WITH seg AS ( \
               SELECT i.id, i.provider_instance_id, i.account_id, coalesce(e.rate_per_hour, 0) AS rate, \
                 e.status, e.at AS t0, \
                 coalesce(lead(e.at) OVER (PARTITION BY e.instance_id ORDER BY e.id), now()) AS t1 \
               FROM instance_events e JOIN instances i ON i.id = e.instance_id \
               WHERE i.provider = $1 AND i.provider_instance_id IS NOT NULL \
                 AND i.created_at > now() - make_interval(days => $2)) \
             SELECT id, provider_instance_id, account_id, \
               coalesce(sum(rate * extract(epoch from (least(t1, to_timestamp($3)) - t0))) \
                 FILTER (WHERE status NOT IN ('pending', 'failed', 'terminated') \
                   AND t0 < to_timestamp($3)), 0)::float8 / 3600.0 \
             FROM seg GROUP BY 1, 2, 3",
            &[
                (&provider, Type::TEXT),
                (&LOOKBACK_DAYS, Type::INT4),
                (&until, Type::FLOAT8),
            ],
        )
        .await?;
    let mut by_pid: BTreeMap<String, InstanceDrift> = BTreeMap::new();
    for r in &ledger {
        let pid: String = r.get(1);
        by_pid.insert(
            pid.clone(),
            InstanceDrift {
                provider_instance_id: pid,
                instance_id: Some(r.get(0)),
                account_id: Some(r.get(2)),
                billed_usd: 0.0,
                ledger_usd: r.get(3),
                drift_usd: 0.0,
            },
        );
    }
    for r in &billed {
        let pid: String = r.get(0);
        by_pid
            .entry(pid.clone())
            .or_insert(InstanceDrift {
                provider_instance_id: pid,
                instance_id: None,
                account_id: None,
                billed_usd: 0.0,
                ledger_usd: 0.0,
                drift_usd: 0.0,
            })
            .billed_usd = r.get(1);
    }
    // (+ 0.0: no "-0.0" in answers)
    let round = |x: f64| (x * 1e6).round() / 1e6 + 0.0;
    let mut instances: Vec<InstanceDrift> = by_pid
        .into_values()
        .map(|mut d| {
            d.drift_usd = round(d.billed_usd - d.ledger_usd);
            d.billed_usd = round(d.billed_usd);
            d.ledger_usd = round(d.ledger_usd);
            d
        })
        .collect();
    instances.sort_by(|a, b| b.drift_usd.abs().total_cmp(&a.drift_usd.abs()));
    let sum = |f: fn(&InstanceDrift) -> f64| round(instances.iter().map(f).sum());
    let rep = ProviderReport {
        provider: provider.to_owned(),
        as_of,
        billed_usd: sum(|d| d.billed_usd),
        ledger_usd: sum(|d| d.ledger_usd),
        drift_usd: sum(|d| d.drift_usd.abs()),
        instances_compared: instances.len(),
        instances: instances.into_iter().take(100).collect(),
    };
    Ok(rep)
}
