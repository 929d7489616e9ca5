//! Typed services: each API operation a function over typed input (serde structs for path,
//! query and body) returning a typed, `Serialize` view. The carriers (REST handlers in `api/`,
//! the MCP tools, later gRPC) are thin: they read their wire format into these types, call the
//! operation, and write the view back; none calls another carrier.
//!
//! - `body`: JSON bodies into structs, with a 400 naming the field at fault.
//! - `query`: query strings into structs, with a 400 naming the parameter for every refusal.
//! - `offers`: offer search across providers, through the offers cache and rendered pages.
//! - `instances`: renting, listing, showing, destroying, extending, stopping and starting.
//! - `usage`: spend reports.

pub mod body;
pub mod instances;
pub mod offers;
pub mod query;
pub mod usage;

use std::time::{Duration, UNIX_EPOCH};

/// A time as the API shows it: RFC 3339 with milliseconds, `null` when unknown.
pub fn time(epoch: Option<f64>) -> Option<String> {
    epoch.filter(|e| e.is_finite() && *e >= 0.0).map(|e| {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs_f64(e)).to_string()
    })
}
