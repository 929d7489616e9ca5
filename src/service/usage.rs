//! Usage reports as typed operations: the caller's account ([`mine`]) or any account for admin
//! keys ([`of_account`]), over a [`UsageQuery`], answering a `rentals::usage::ReportView`.

use serde::{Deserialize, Deserializer};

use crate::accounts::store::{self, AccountRef};
use crate::auth::Principal;
use crate::error::Result;
use crate::rentals::usage::{self, GroupBy, ReportView, Span};
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
    /// How the figures are grouped.
    #[schemars(extend("default" = "day"))]
    pub group_by: Option<GroupBy>,
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
    Ok((span, q.group_by.unwrap_or(GroupBy::Day)))
}

/// The caller's account's usage.
pub async fn mine(app: &AppState, p: &Principal, q: UsageQuery) -> Result<ReportView> {
    let (span, group_by) = span(&q)?;
    let r = usage::report(
        &*super::db(app, "usage reports")?,
        p.account_id(),
        span,
        group_by,
    )
    .await?;
    Ok(ReportView::of(&p.key.account_name, &r))
}

/// Any account's usage (admin keys), by id or name.
pub async fn of_account(app: &AppState, account: &str, q: UsageQuery) -> Result<ReportView> {
    let (span, group_by) = span(&q)?;
    let db = super::db(app, "usage reports")?;
    let account = store::get_account(&db, &AccountRef::parse(account)).await?;
    let r = usage::report(&db, account.id, span, group_by).await?;
    Ok(ReportView::of(&account.name, &r))
}
