//! Typed services: each API operation a function over typed input (serde structs for path,
//! query and body) returning a typed, `Serialize` view. The carriers (REST handlers in `api/`,
//! the MCP tools, later gRPC) are thin: they read their wire format into these types, call the
//! operation, and write the view back; none calls another carrier.
//!
//! - `account`: the caller's account view and tokens for its API key.
//! - `admin`: accounts, keys and billing reconciliation for admin keys.
//! - `body`: JSON bodies into structs, with a 400 naming the field at fault.
//! - `commands`: commands run on the caller's instances through their agents.
//! - `events`: the caller's event feed (what it resumes from and keeps), opened for a carrier.
//! - `query`: query strings into structs, with a 400 naming the parameter for every refusal.
//! - `offers`: offer search across providers, through the offers cache and rendered pages.
//! - `instances`: renting, listing, showing, destroying, extending, stopping and starting.
//! - `passthrough`: allow-listed calls to a provider's own API, approved before the body is read.
//! - `usage`: spend reports.
//! - `sshkeys`, `watches`, `webhooks`: the caller's SSH keys, offer watches and webhooks.

pub mod account;
pub mod admin;
pub mod body;
pub mod commands;
pub mod events;
pub mod instances;
pub mod offers;
pub mod passthrough;
pub mod query;
pub mod sshkeys;
pub mod usage;
pub mod volumes;
pub mod watches;
pub mod webhooks;

use std::sync::Arc;

use crate::accounts::Db;
use crate::error::{Error, Kind, Result, Side};
use crate::state::AppState;

/// The database, or a 503 naming what needs it (`what`: "webhooks") when none is configured.
pub fn db(app: &AppState, what: &str) -> Result<Arc<Db>> {
    app.db.clone().ok_or_else(|| needs_database(what))
}

/// The 503 of a feature (`what`) on a daemon without a database.
pub fn needs_database(what: &str) -> Error {
    Error::new(
        Kind::DatabaseUnavailable,
        Side::Internal,
        format!("{what} need the database (DATABASE_URL is not set)"),
    )
}

/// A time as the API shows it: RFC 3339 with milliseconds, `null` when unknown.
pub fn time(epoch: Option<f64>) -> Option<String> {
    crate::types::text::rfc3339_of(epoch)
}
