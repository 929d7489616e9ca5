//! What a rental asks for: the `POST /v1/instances` body ([`RentBody`]), checked before anything
//! is spent (the image, disk, lifetime, bid, SSH keys and the offer or spec), and the bid range.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{failover, sshkeys};
use crate::error::{Error, Result};
use crate::providers::ProviderId;

/// `POST /v1/instances` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RentBody {
    /// One offer (from `GET /v1/offers`) ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub offer_id: String,
    /// ... or what any acceptable offer is: the matching offers are tried in order (failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<failover::Spec>,
    pub image: String,
    pub disk_gb: u32,
    pub label: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// One OpenSSH public key given inline (it is not stored in `/v1/ssh-keys`).
    pub ssh_public_key: Option<String>,
    /// Keys of the account's `/v1/ssh-keys` the instance gets.
    #[serde(default)]
    pub ssh_key_ids: Vec<String>,
    /// io.net only (its deployments run for a fixed time).
    pub duration_hours: Option<u32>,
    pub max_price_per_hour: Option<f64>,
    /// Interruptible offers (`vastai:<id>:bid`) only: the bid, compute USD/h (the instance's
    /// price is the bid plus its storage). Default: the offer's current minimum bid.
    pub bid_per_hour: Option<f64>,
    /// The instance is destroyed this long after the rental (hours, fractions allowed) ...
    pub max_duration_hours: Option<f64>,
    /// ... or at this time (RFC 3339). Default: `rentals.default_max_duration_hours` (0: none).
    pub expires_at: Option<String>,
}

/// The longest lifetime a rental may ask for (a year).
const MAX_LIFETIME_HOURS: f64 = 8760.0;

/// Vast's accepted bid range (USD/h).
pub const MAX_BID: f64 = 128.0;

/// Checks a bid (`field` names it in the error).
pub fn check_bid(field: &str, bid: f64, cap: Option<f64>) -> Result<()> {
    let cap = cap.unwrap_or(MAX_BID).min(MAX_BID);
    if !(bid.is_finite() && bid >= 0.001 && bid <= cap) {
        return Err(Error::bad_request(format!(
            "invalid `{field}`: a bid of at least 0.001 and at most {cap} USD/h"
        )));
    }
    Ok(())
}

impl RentBody {
    /// When the instance is to be destroyed (epoch seconds), from the body or the default.
    pub(super) fn expiry(&self, now: f64, default_hours: f64) -> Result<Option<f64>> {
        if let Some(t) = &self.expires_at {
            let at = humantime::parse_rfc3339_weak(t)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64())
                .ok_or_else(|| {
                    Error::bad_request(
                        "invalid `expires_at`: an RFC 3339 time, e.g. 2026-12-24T18:00:00Z",
                    )
                })?;
            if at <= now || at > now + MAX_LIFETIME_HOURS * 3600.0 {
                return Err(Error::bad_request(
                    "invalid `expires_at`: in the future, at most a year from now",
                ));
            }
            return Ok(Some(at));
        }
        let hours = self.max_duration_hours.unwrap_or(default_hours);
        Ok((hours > 0.0).then_some(now + hours * 3600.0))
    }

    /// The offer's provider and the provider's part of its id, the rest of the body checked.
    pub(super) fn validate(&self) -> Result<(ProviderId, &str)> {
        let bad = |field: &str, why: &str| Error::bad_request(format!("invalid `{field}`: {why}"));
        let (p, local) = self
            .offer_id
            .split_once(':')
            .and_then(|(p, l)| Some((ProviderId::parse(p)?, l)))
            .filter(|(_, l)| !l.is_empty() && l.chars().count() <= 128)
            .ok_or_else(|| {
                bad(
                    "offer_id",
                    "expected `vastai:<id>`, `vastai:<id>:bid` or `ionet:<cards>x<id>@<location>` from GET /v1/offers",
                )
            })?;
        self.check_common()?;
        if let Some(bid) = self.bid_per_hour {
            if !local.ends_with(crate::providers::vastai::BID_SUFFIX) {
                return Err(bad(
                    "bid_per_hour",
                    "only for interruptible offers (ids ending in `:bid`, from GET /v1/offers?interruptible=true)",
                ));
            }
            check_bid("bid_per_hour", bid, self.max_price_per_hour)?;
        }
        Ok((p, local))
    }

    /// Everything but the offer: image, disk, env, keys, durations, the price ceiling.
    pub(super) fn check_common(&self) -> Result<()> {
        let bad = |field: &str, why: &str| Error::bad_request(format!("invalid `{field}`: {why}"));
        if self.image.trim().is_empty() || self.image.chars().count() > 512 {
            return Err(bad(
                "image",
                "a container image reference of 1 to 512 characters",
            ));
        }
        if !(8..=100_000).contains(&self.disk_gb) {
            return Err(bad("disk_gb", "between 8 and 100000"));
        }
        if self.label.as_ref().is_some_and(|l| l.chars().count() > 256) {
            return Err(bad("label", "at most 256 characters"));
        }
        if self.env.len() > 64
            || self
                .env
                .iter()
                .any(|(k, v)| k.is_empty() || k.chars().count() > 128 || v.chars().count() > 4096)
        {
            return Err(bad(
                "env",
                "at most 64 variables, names of 1 to 128 and values up to 4096 characters",
            ));
        }
        if let Some(k) = &self.ssh_public_key {
            sshkeys::parse(k).map_err(|why| bad("ssh_public_key", &why))?;
        }
        if self.ssh_key_ids.len() > 64
            || self
                .ssh_key_ids
                .iter()
                .any(|k| k.is_empty() || k.chars().count() > 64)
        {
            return Err(bad("ssh_key_ids", "at most 64 ids from GET /v1/ssh-keys"));
        }
        if self
            .duration_hours
            .is_some_and(|h| !(1..=8760).contains(&h))
        {
            return Err(bad("duration_hours", "between 1 and 8760"));
        }
        if self
            .max_price_per_hour
            .is_some_and(|m| !(m.is_finite() && m > 0.0))
        {
            return Err(bad("max_price_per_hour", "a price greater than 0"));
        }
        match (self.max_duration_hours, &self.expires_at) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "max_duration_hours",
                    "give either `max_duration_hours` or `expires_at`, not both",
                ));
            }
            (Some(h), None) if !(h.is_finite() && h > 0.0 && h <= MAX_LIFETIME_HOURS) => {
                return Err(bad(
                    "max_duration_hours",
                    "more than 0 and at most 8760 hours",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}
