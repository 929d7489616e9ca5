//! What several handlers read from a query or write into a view the same way: page sizes and
//! times (RFC 3339 with milliseconds, `null` when unknown).

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// A time as the API shows it: RFC 3339 with milliseconds, `null` when unknown.
pub fn time(epoch: Option<f64>) -> Value {
    epoch
        .filter(|e| e.is_finite() && *e >= 0.0)
        .map(|e| {
            json!(
                humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs_f64(e))
                    .to_string()
            )
        })
        .unwrap_or(Value::Null)
}

/// A page size (`limit=`) of the list routes: 1 to 200.
pub fn limit_param(v: &str) -> Result<i64> {
    v.parse()
        .ok()
        .filter(|n| (1..=200).contains(n))
        .ok_or_else(|| Error::bad_request("invalid query parameter `limit`: 1 to 200"))
}
