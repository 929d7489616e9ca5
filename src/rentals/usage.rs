//! Usage reports from the ledger: what an account's instances billed between two times, in USD,
//! GPU-hours and instance-hours, grouped by UTC day, instance, key or provider.
//!
//! The figures are the ledger's event segments (see `ledger`), cut at `from`, `to` and at UTC
//! midnight: USD is rate × hours; instance-hours count every segment that bills (provisioning,
//! running, stopped, interrupted, frozen, unknown, terminating); GPU-hours count GPUs × hours of
//! the segments billing the full price. Bandwidth (Vast charge items `bwu`/`bwd`) is known only
//! from the provider's charges: once they arrive (`rentals.billing_reconcile_interval_ms`) it is
//! `bandwidth_usd`, counted in `usd` on the day its charge period ends. Time paid up front
//! (io.net) counts in `usd` on the day it was paid, its refunds on the day of the payment they
//! return (`ledger::lumps`). By key, each amount and segment goes to the key that paid it (the
//! caller's key pays). The totals are the sums of the groups, and equal the spend the budgets
//! see over the same span.

use serde::Serialize;
use tokio_postgres::types::Type;

use crate::accounts::Db;
use crate::error::{Error, Result};

/// How a report's rows are grouped.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Day,
    Instance,
    Key,
    Provider,
    /// One group per instance and UTC day (`YYYY-MM-DD <instance id>`): the CSV export's rows.
    #[serde(rename = "instance_day")]
    InstanceDay,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s {
            "day" => Some(GroupBy::Day),
            "instance" => Some(GroupBy::Instance),
            "key" => Some(GroupBy::Key),
            "provider" => Some(GroupBy::Provider),
            "instance_day" => Some(GroupBy::InstanceDay),
            _ => None,
        }
    }

    /// The SQL expression a row is grouped by (a fixed string per variant).
    fn expr(self) -> &'static str {
        match self {
            GroupBy::Day => "to_char(day, 'YYYY-MM-DD')",
            GroupBy::Instance => "instance",
            GroupBy::Key => "coalesce(public_id, '-')",
            GroupBy::Provider => "provider",
            GroupBy::InstanceDay => "to_char(day, 'YYYY-MM-DD') || ' ' || instance",
        }
    }

    /// The name of the group column in a CSV export (`instance_day` is two: day, instance).
    fn csv_columns(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Instance => "instance_id",
            GroupBy::Key => "key",
            GroupBy::Provider => "provider",
            GroupBy::InstanceDay => "day,instance_id",
        }
    }
}

/// What a report covers; `from` `None`: the start of the current UTC month; `to` `None`: now.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub from: Option<f64>,
    pub to: Option<f64>,
}

/// The longest span one report covers (days).
pub const MAX_SPAN_DAYS: f64 = 400.0;

/// What `from` / `to` of a report may be.
pub const TIME_FORMS: &str = "an RFC 3339 time with its zone (2026-12-01T00:00:00Z, 2026-12-01T01:00:00+01:00) or a date (2026-12-01)";

/// `from` / `to` of a report: RFC 3339, or a date (`2026-12-01`, midnight UTC), as epoch seconds.
pub fn time_of(v: &str) -> Option<f64> {
    let text = if v.len() == 10 {
        format!("{v}T00:00:00Z")
    } else {
        v.to_owned()
    };
    crate::types::text::rfc3339(&text)
}

/// [`time_of`], with an error that names `field`.
pub fn parse_time(field: &str, v: &str) -> Result<f64> {
    time_of(v).ok_or_else(|| Error::bad_request(format!("invalid `{field}`: {TIME_FORMS}")))
}

impl Span {
    pub fn check(&self) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if let (Some(f), t) = (self.from, self.to.unwrap_or(now)) {
            if f >= t {
                return Err(Error::bad_request("invalid `from`: it must be before `to`"));
            }
            if t - f > MAX_SPAN_DAYS * 86_400.0 {
                return Err(Error::bad_request(format!(
                    "invalid `from`: a report covers at most {MAX_SPAN_DAYS} days"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, schemars::JsonSchema)]
#[schemars(rename = "UsageFigures")]
pub struct Figures {
    /// Everything billed, bandwidth included.
    pub usd: f64,
    /// The part of `usd` that is bandwidth, from the provider's charges (lags by up to
    /// `rentals.billing_reconcile_interval_ms`).
    pub bandwidth_usd: f64,
    /// The part of `usd` that is storage alone: instances stopped or interrupted (their disk),
    /// and volumes (a volume is a group of its own with `group_by=instance`, keyed by its id).
    pub storage_usd: f64,
    pub gpu_hours: f64,
    pub instance_hours: f64,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Group {
    pub key: String,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub account_id: i64,
    /// Epoch seconds (the API shows RFC 3339).
    pub from: f64,
    pub to: f64,
    pub group_by: GroupBy,
    pub totals: Figures,
    pub groups: Vec<Group>,
}

const REPORT: &str = "WITH span AS (SELECT coalesce(to_timestamp($2), \
      (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')) AS t0, \
      least(coalesce(to_timestamp($3), now()), now()) AS t1), \
    seg AS ( \
      SELECT i.id AS instance, i.provider, k.public_id, i.gpu_count, \
        coalesce(e.rate_per_hour, 0) AS rate, e.status, e.at AS s0, \
        least(coalesce(lead(e.at) OVER (PARTITION BY e.instance_id ORDER BY e.id), now()), now()) AS s1 \
      FROM instance_events e JOIN instances i ON i.id = e.instance_id \
        LEFT JOIN api_keys k ON k.id = coalesce(e.paid_by, i.api_key_id), span \
      WHERE i.account_id = $1 AND i.created_at < span.t1 \
        AND coalesce(i.terminated_at, now()) > span.t0 \
      UNION ALL \
      SELECT v.id, v.provider, k.public_id, 0, v.rate_per_hour, 'volume', v.created_at, \
        least(coalesce(v.deleted_at, now()), now()) \
      FROM volumes v LEFT JOIN api_keys k ON k.id = v.api_key_id, span \
      WHERE v.account_id = $1 AND v.status <> 'failed' AND v.created_at < span.t1 \
        AND coalesce(v.deleted_at, now()) > span.t0), \
    billed AS (SELECT * FROM seg WHERE status NOT IN ('pending', 'failed', 'terminated')), \
    days AS (SELECT (d AT TIME ZONE 'UTC') AS d0, ((d + interval '1 day') AT TIME ZONE 'UTC') AS d1 \
      FROM span, generate_series(date_trunc('day', span.t0 AT TIME ZONE 'UTC'), \
        span.t1 AT TIME ZONE 'UTC', interval '1 day') AS d), \
    parts AS ( \
      SELECT b.*, days.d0 AS day, extract(epoch from (least(b.s1, days.d1, span.t1) \
        - greatest(b.s0, days.d0, span.t0))) / 3600.0 AS h \
      FROM billed b JOIN days ON b.s0 < days.d1 AND b.s1 > days.d0, span) \
    SELECT {group}::text, coalesce(sum(rate * h), 0)::float8, \
      coalesce(sum(rate * h) FILTER (WHERE status IN ('stopped', 'interrupted', 'volume')), 0)::float8, \
      coalesce(sum(gpu_count * h) FILTER (WHERE status IN ('provisioning', 'running', 'frozen', 'unknown', 'terminating')), 0)::float8, \
      coalesce(sum(h) FILTER (WHERE status <> 'volume'), 0)::float8 \
    FROM parts WHERE h > 0 GROUP BY 1 ORDER BY 1";

const SPAN: &str = "SELECT extract(epoch from coalesce(to_timestamp($1), \
      (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')))::float8, \
    extract(epoch from least(coalesce(to_timestamp($2), now()), now()))::float8";

/// What an account's instances were billed apart from their event segments, by group over
/// `span` (same bounds as [`REPORT`]), in micro-dollars: bandwidth (provider charge items
/// `bwu`/`bwd`, on the day each charge period ends), and the amounts of their events (time paid
/// up front on the day it was paid, its refunds on the day of what they return; the unrefunded
/// rest of a minimum paid time, on the day of the event).
const EXTRAS: &str = "WITH span AS (SELECT coalesce(to_timestamp($2), \
      (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')) AS t0, \
      least(coalesce(to_timestamp($3), now()), now()) AS t1), \
    x AS ( \
      SELECT i.id AS instance, i.provider, k.public_id, \
        (coalesce(c.period_end, c.at) AT TIME ZONE 'UTC') AS day, c.amount_micros AS m, \
        true AS bandwidth \
      FROM provider_charges c \
        JOIN instances i ON i.provider = c.provider AND i.provider_instance_id = c.provider_instance_id \
        LEFT JOIN api_keys k ON k.id = i.api_key_id, span \
      WHERE i.account_id = $1 AND c.item IN ('bwu', 'bwd') \
        AND coalesce(c.period_end, c.at) > span.t0 AND coalesce(c.period_end, c.at) <= span.t1 \
      UNION ALL \
      SELECT i.id, i.provider, k.public_id, (coalesce(e.counts_at, e.at) AT TIME ZONE 'UTC'), \
        e.lump_micros, false \
      FROM instance_events e JOIN instances i ON i.id = e.instance_id \
        LEFT JOIN api_keys k ON k.id = coalesce(e.paid_by, i.api_key_id), span \
      WHERE i.account_id = $1 AND e.lump_micros <> 0 AND coalesce(e.counts_at, e.at) > span.t0 \
        AND coalesce(e.counts_at, e.at) <= span.t1) \
    SELECT {group}::text, coalesce(sum(m) FILTER (WHERE bandwidth), 0)::int8, \
      coalesce(sum(m) FILTER (WHERE NOT bandwidth), 0)::int8 FROM x GROUP BY 1 ORDER BY 1";

/// An account's usage over `span`, grouped by `group_by`.
pub async fn report(db: &Db, account_id: i64, span: Span, group_by: GroupBy) -> Result<Report> {
    span.check()?;
    let sql = REPORT.replace("{group}", group_by.expr());
    let rows = db
        .query(
            &sql,
            &[
                (&account_id, Type::INT8),
                (&span.from, Type::FLOAT8),
                (&span.to, Type::FLOAT8),
            ],
        )
        .await?;
    let bounds = db
        .query(
            SPAN,
            &[(&span.from, Type::FLOAT8), (&span.to, Type::FLOAT8)],
        )
        .await?;
    let (from, to): (f64, f64) = bounds.first().map_or((0.0, 0.0), |r| (r.get(0), r.get(1)));
    // (+ 0.0: no "-0.0" in answers)
    let round = |x: f64| (x * 1e6).round() / 1e6 + 0.0;
    let mut groups: std::collections::BTreeMap<String, Figures> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Figures {
                    usd: r.get(1),
                    storage_usd: r.get(2),
                    bandwidth_usd: 0.0,
                    gpu_hours: r.get(3),
                    instance_hours: r.get(4),
                },
            )
        })
        .collect();
    let extras = db
        .query(
            &EXTRAS.replace("{group}", group_by.expr()),
            &[
                (&account_id, Type::INT8),
                (&span.from, Type::FLOAT8),
                (&span.to, Type::FLOAT8),
            ],
        )
        .await?;
    for r in &extras {
        let (bandwidth, lumps) = (
            r.get::<_, i64>(1) as f64 / 1e6,
            r.get::<_, i64>(2) as f64 / 1e6,
        );
        let f = groups.entry(r.get(0)).or_default();
        f.bandwidth_usd += bandwidth;
        f.usd += bandwidth + lumps;
    }
    let groups: Vec<Group> = groups
        .into_iter()
        .map(|(key, figures)| Group { key, figures })
        .collect();
    let totals = Figures {
        usd: round(groups.iter().map(|g| g.figures.usd).sum()),
        bandwidth_usd: round(groups.iter().map(|g| g.figures.bandwidth_usd).sum()),
        storage_usd: round(groups.iter().map(|g| g.figures.storage_usd).sum()),
        gpu_hours: round(groups.iter().map(|g| g.figures.gpu_hours).sum()),
        instance_hours: round(groups.iter().map(|g| g.figures.instance_hours).sum()),
    };
    Ok(Report {
        account_id,
        from,
        to,
        group_by,
        totals,
        groups: groups
            .into_iter()
            .map(|g| Group {
                key: g.key,
                figures: Figures {
                    usd: round(g.figures.usd),
                    bandwidth_usd: round(g.figures.bandwidth_usd),
                    storage_usd: round(g.figures.storage_usd),
                    gpu_hours: round(g.figures.gpu_hours),
                    instance_hours: round(g.figures.instance_hours),
                },
            })
            .collect(),
    })
}

impl Report {
    /// The report as CSV (RFC 4180): a header, then one row per group (with `instance_day`, one
    /// per instance and UTC day); the figures as in JSON. The rows add up to the totals.
    pub fn to_csv(&self) -> String {
        let mut out = format!(
            "{},usd,storage_usd,bandwidth_usd,gpu_hours,instance_hours\r\n",
            self.group_by.csv_columns()
        );
        for g in &self.groups {
            let key = match self.group_by {
                GroupBy::InstanceDay => {
                    let (day, instance) = g.key.split_once(' ').unwrap_or((&g.key, ""));
                    format!("{},{}", csv_field(day), csv_field(instance))
                }
                _ => csv_field(&g.key),
            };
            let f = &g.figures;
            out.push_str(&format!(
                "{key},{:.6},{:.6},{:.6},{:.6},{:.6}\r\n",
                f.usd, f.storage_usd, f.bandwidth_usd, f.gpu_hours, f.instance_hours
            ));
        }
        out
    }
}

/// One CSV field: quoted when it holds a comma, a quote or a line break (quotes doubled); a
/// leading `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet does not run it.
fn csv_field(s: &str) -> String {
    let s = if s.len() > 1 && s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// A report as `GET /v1/usage`, the MCP tool `get_usage` and `gpuproxyd usage --json` show it
/// (times in RFC 3339).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Usage")]
pub struct ReportView {
    pub account_id: i64,
    pub account: String,
    pub from: String,
    pub to: String,
    pub group_by: GroupBy,
    pub currency: &'static str,
    pub totals: Figures,
    pub groups: Vec<Group>,
}

impl ReportView {
    pub fn of(account_name: &str, r: &Report) -> ReportView {
        let t = |x: f64| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(x.max(0.0)),
            )
            .to_string()
        };
        ReportView {
            account_id: r.account_id,
            account: account_name.to_owned(),
            from: t(r.from),
            to: t(r.to),
            group_by: r.group_by,
            currency: "USD",
            totals: r.totals.clone(),
            groups: r.groups.clone(),
        }
    }
}
