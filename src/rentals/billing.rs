//! Reconciling the ledger with what the providers billed. Every
//! `rentals.billing_reconcile_interval_ms` (a day; also shortly after start) each provider that
//! publishes charges (Vast: `GET /api/v0/charges/`) is asked for the lines of the last
//! [`LOOKBACK_DAYS`]; they are stored in `provider_charges` (a line read again replaces its
//! amount) and compared, per instance, with the ledger's spend up to the moment they were read.
//!
//! Volumes are compared too, as `volume-<id>` (all of a volume's bill is disk; the ledger's is
//! its storage rate from creation to deletion).
//!
//! Vast itemises each line (docs/providers.md, "Charges"): the parts are compared by kind: `gpu`
//! (the ledger's full-price time minus its storage), `disk` (the storage price over every open
//! segment), `bandwidth` (`bwu`/`bwd`: the ledger cannot know it, so the bill is taken as it is
//! and no drift is counted for it), and `other`/`total` (items of other kinds, lines without
//! items: no ledger figure, all drift). The difference per instance (billed − ledger, summed over
//! its parts) is what `GET /v1/admin/reconciliation` lists with the parts;
//! `gpuproxy_billing_drift_usd{provider}` is the sum of its absolute values, which the
//! `GpuproxyBillingDrift` alert compares with `rentals.billing_drift_alert_usd`. Known, small,
//! sources of drift: the ledger bills the full price from the provider's acceptance while Vast
//! bills the GPU from `running`, and the ledger learns of state changes when it polls. Amounts are
//! stored in micro-dollars, as the provider wrote them.

use std::collections::BTreeMap;

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

/// The billing series, at 0 from the start.
pub fn register_metrics(r: &Rentals) {
    gauge!(BILLING_DRIFT_ALERT_USD).set(r.config.rentals.billing_drift_alert_usd);
    for p in r.providers.list.iter().filter(|p| p.publishes_charges()) {
        gauge!(BILLING_DRIFT_USD, "provider" => p.id().as_str()).set(0.0);
    }
}

/// One round (the background service `billing`): every provider that publishes charges.
pub async fn round(r: &Rentals) -> std::result::Result<(), String> {
    let mut failed = Vec::new();
    for p in r.providers.list.iter().filter(|p| p.publishes_charges()) {
        if let Err(e) = once(r, p.as_ref()).await {
            failed.push(format!("{}: {e}", p.id().as_str()));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
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
               period_end, description, item, amount_micros) \
             VALUES ($1, $2, $3, to_timestamp($4), to_timestamp($5), $6, $7, $8) \
             ON CONFLICT (provider, charge_key) DO UPDATE \
               SET amount_micros = excluded.amount_micros, period_end = excluded.period_end, \
                 fetched_at = now()",
            &[
                (&name, Type::TEXT),
                (&c.key(), Type::TEXT),
                (&c.provider_instance_id, Type::TEXT),
                (&c.start, Type::FLOAT8),
                (&c.end, Type::FLOAT8),
                (&c.description, Type::TEXT),
                (&c.item, Type::TEXT),
                (&c.amount_micros, Type::INT8),
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

/// One kind of an instance's bill (`gpu`, `disk`, `bandwidth`, `other`, `total`) against the
/// ledger's figure for it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PartDrift {
    pub kind: &'static str,
    pub billed_usd: f64,
    /// For `bandwidth`: the bill itself (the ledger learns bandwidth from it).
    pub ledger_usd: f64,
    pub drift_usd: f64,
}

/// One instance's bill against its ledger spend.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct InstanceDrift {
    /// The provider's instance id, or `volume-<id>` for a volume.
    pub provider_instance_id: String,
    /// Ours (an instance's or a volume's id); `None` for one the ledger does not know (billed to
    /// the shared key by something other than this proxy).
    pub instance_id: Option<String>,
    pub account_id: Option<i64>,
    pub billed_usd: f64,
    pub ledger_usd: f64,
    /// billed − ledger, over the parts.
    pub drift_usd: f64,
    /// |drift| / billed without bandwidth (what is compared), when something was billed.
    pub drift_ratio: Option<f64>,
    /// By kind, in a fixed order: where the difference is.
    pub parts: Vec<PartDrift>,
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

/// The kinds a report shows, in order.
const KINDS: [&str; 5] = ["gpu", "disk", "bandwidth", "other", "total"];

/// (billed, ledger) micro-dollars by kind, of one instance.
#[derive(Default)]
struct Sums {
    instance_id: Option<String>,
    account_id: Option<i64>,
    billed: [i64; 5],
    ledger: [i64; 5],
}

fn kind_index(item: &str) -> usize {
    let k = crate::providers::Charge::kind(item);
    KINDS.iter().position(|x| *x == k).unwrap_or(3)
}

/// The comparison, from the stored charges and the ledger (every daemon answers the same).
pub async fn report(db: &Db, provider: &str) -> Result<ProviderReport> {
    let billed = db
        .query(
            "SELECT provider_instance_id, item, sum(amount_micros)::int8, \
               extract(epoch from max(fetched_at))::float8 \
             FROM provider_charges WHERE provider = $1 \
               AND at > now() - make_interval(days => $2) GROUP BY 1, 2",
            &[(&provider, Type::TEXT), (&LOOKBACK_DAYS, Type::INT4)],
        )
        .await?;
    let as_of = billed.iter().map(|r| r.get::<_, f64>(3)).reduce(f64::max);
    // the ledger up to the moment the charges were read, split into the GPU part (the rate above
    // the storage price) and the disk part (the storage price over every open segment)
    let until = as_of.unwrap_or_else(super::reconcile::now);
    let ledger = db
        .query(
            "WITH seg AS ( \
               SELECT i.id, i.provider_instance_id, i.account_id, \
                 coalesce(e.rate_per_hour, 0) AS rate, i.storage_per_hour AS storage, \
                 e.status, e.at AS t0, \
                 coalesce(lead(e.at) OVER (PARTITION BY e.instance_id ORDER BY e.id), now()) AS t1 \
               FROM instance_events e JOIN instances i ON i.id = e.instance_id \
               WHERE i.provider = $1 AND i.provider_instance_id IS NOT NULL \
                 AND i.created_at > now() - make_interval(days => $2)), \
             part AS ( \
               SELECT id, provider_instance_id, account_id, \
                 greatest(rate - storage, 0) AS gpu, least(storage, rate) AS disk, \
                 extract(epoch from (least(t1, to_timestamp($3)) - t0)) / 3600.0 AS hours, \
                 status, t0 FROM seg) \
             SELECT id, provider_instance_id, account_id, \
               round(coalesce(sum(gpu * hours) FILTER (WHERE status NOT IN \
                 ('pending', 'failed', 'terminated') AND t0 < to_timestamp($3)), 0) * 1e6)::int8, \
               round(coalesce(sum(disk * hours) FILTER (WHERE status NOT IN \
                 ('pending', 'failed', 'terminated') AND t0 < to_timestamp($3)), 0) * 1e6)::int8 \
             FROM part GROUP BY 1, 2, 3",
            &[
                (&provider, Type::TEXT),
                (&LOOKBACK_DAYS, Type::INT4),
                (&until, Type::FLOAT8),
            ],
        )
        .await?;
    // volumes: their storage rate from creation to deletion, all of it disk (`volume-<id>`)
    let volumes = db
        .query(
            "SELECT v.id, 'volume-' || v.provider_volume_id, v.account_id, 0::int8, \
               round(v.rate_per_hour * greatest(extract(epoch from \
                 (least(coalesce(v.deleted_at, now()), to_timestamp($3)) - v.created_at)), 0) \
                 / 3600.0 * 1e6)::int8 \
             FROM volumes v WHERE v.provider = $1 AND v.provider_volume_id IS NOT NULL \
               AND v.status <> 'failed' AND v.created_at > now() - make_interval(days => $2)",
            &[
                (&provider, Type::TEXT),
                (&LOOKBACK_DAYS, Type::INT4),
                (&until, Type::FLOAT8),
            ],
        )
        .await?;
    let mut by_pid: BTreeMap<String, Sums> = BTreeMap::new();
    for r in ledger.iter().chain(volumes.iter()) {
        let s = by_pid.entry(r.get(1)).or_default();
        s.instance_id = Some(r.get(0));
        s.account_id = Some(r.get(2));
        s.ledger[0] += r.get::<_, i64>(3);
        s.ledger[1] += r.get::<_, i64>(4);
    }
    for r in &billed {
        let s = by_pid.entry(r.get(0)).or_default();
        let k = kind_index(r.get::<_, &str>(1));
        s.billed[k] += r.get::<_, i64>(2);
    }
    let usd = |m: i64| m as f64 / 1e6 + 0.0;
    let mut instances: Vec<InstanceDrift> = by_pid
        .into_iter()
        .map(|(pid, mut s)| {
            // bandwidth is known only from the bill: the ledger takes it as billed
            s.ledger[2] = s.billed[2];
            let parts: Vec<PartDrift> = KINDS
                .iter()
                .enumerate()
                .filter(|(i, _)| s.billed[*i] != 0 || s.ledger[*i] != 0 || *i < 2)
                .map(|(i, kind)| PartDrift {
                    kind,
                    billed_usd: usd(s.billed[i]),
                    ledger_usd: usd(s.ledger[i]),
                    drift_usd: usd(s.billed[i] - s.ledger[i]),
                })
                .collect();
            let (b, l): (i64, i64) = (s.billed.iter().sum(), s.ledger.iter().sum());
            InstanceDrift {
                provider_instance_id: pid,
                instance_id: s.instance_id,
                account_id: s.account_id,
                billed_usd: usd(b),
                ledger_usd: usd(l),
                drift_usd: usd(b - l),
                // over what is compared (bandwidth is taken as billed: it would only dilute)
                drift_ratio: (b != s.billed[2]).then(|| {
                    ((b - l).abs() as f64 / (b - s.billed[2]).abs() as f64 * 1e4).round() / 1e4
                }),
                parts,
            }
        })
        .collect();
    instances.sort_by(|a, b| b.drift_usd.abs().total_cmp(&a.drift_usd.abs()));
    let round = |x: f64| (x * 1e6).round() / 1e6 + 0.0;
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
