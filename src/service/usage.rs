//! Usage reports as typed operations: the caller's account ([`mine`]) or any account for admin
//! keys ([`of_account`]), over a [`UsageQuery`], answering a `rentals::usage::ReportView`.

use serde::{Deserialize, Deserializer};

use crate::accounts::store::{self, AccountRef};
use crate::auth::Principal;
use crate::error::Result;
use crate::rentals::usage::{self, GroupBy, Report, ReportView, Span};
use crate::state::AppState;

/// `GET /v1/usage`'s query (and the MCP tool `get_usage`'s arguments).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// RFC 3339 or a date (midnight UTC); default the start of the UTC month. Must be before
    /// `to`, at most 400 days before it.
    pub from: Option<UsageTime>,
    /// RFC 3339 or a date; default (and at most) now.
    pub to: Option<UsageTime>,
    /// How the figures are grouped (default `day`; `instance_day` in CSV).
    pub group_by: Option<GroupBy>,
    /// `json` (the default) or `csv` (also chosen by `Accept: text/csv`): one row per group, by
    /// default per instance and UTC day.
    pub format: Option<UsageFormat>,
}

/// How a usage report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageFormat {
    Json,
    Csv,
}

/// A report's `from` or `to` (epoch seconds), read from RFC 3339 or a date.
#[derive(Debug, Clone, Copy)]
pub struct UsageTime(pub f64);

crate::types::schema::schema_of!(UsageTime, "UsageTime", {"anyOf": [
    {"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]});

impl<'de> Deserialize<'de> for UsageTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = super::query::scalar_text(d)?;
        usage::time_of(&s)
            .map(UsageTime)
            .ok_or_else(|| serde::de::Error::custom(usage::TIME_FORMS))
    }
}

fn span(q: &UsageQuery) -> Result<(Span, GroupBy)> {
    let span = Span {
        from: q.from.map(|t| t.0),
        to: q.to.map(|t| t.0),
    };
    span.check()?;
    let default = if q.format == Some(UsageFormat::Csv) {
        GroupBy::InstanceDay
    } else {
        GroupBy::Day
    };
    Ok((span, q.group_by.unwrap_or(default)))
}

/// The caller's account's usage: the report and the account's name (`ReportView::of` writes it
/// as JSON, `Report::to_csv` as CSV).
pub async fn mine_report(
    app: &AppState,
    p: &Principal,
    q: &UsageQuery,
) -> Result<(String, Report)> {
    let (span, group_by) = span(q)?;
    let db = super::db(app, "usage reports")?;
    let r = usage::report(&db, p.account_id(), span, group_by).await?;
    Ok((p.key.account_name.clone(), r))
}

/// The caller's account's usage, as JSON.
pub async fn mine(app: &AppState, p: &Principal, q: UsageQuery) -> Result<ReportView> {
    let (name, r) = mine_report(app, p, &q).await?;
    Ok(ReportView::of(&name, &r))
}

/// Any account's usage (admin keys), by id or name: the report and the account's name.
pub async fn of_account(app: &AppState, account: &str, q: &UsageQuery) -> Result<(String, Report)> {
    let (span, group_by) = span(q)?;
    let db = super::db(app, "usage reports")?;
    let account = store::get_account(&db, &AccountRef::parse(account)).await?;
    let r = usage::report(&db, account.id, span, group_by).await?;
    Ok((account.name, r))
}
