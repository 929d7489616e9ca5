//! What a rental asks for: the `POST /v1/instances` body ([`RentBody`]), checked before anything
//! is spent (the image, disk, lifetime, bid, SSH keys and the offer or spec), and the bid range.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::policies::{IdlePolicy, InterruptAction, OnInterrupt, Policies};
use super::{failover, policies, sshkeys};
use crate::error::{Error, Result};
use crate::providers::{Launch, ONSTART_MAX, PortSpec, ProviderId};
use crate::types::schema::NO_NUL;

/// `POST /v1/instances` body. Give `offer_id` (one offer) or `spec` (the matching offers are
/// tried in order, cheapest first, up to `rentals.max_offers_tried`), not both.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[schemars(rename = "RentRequest")]
#[schemars(extend("oneOf" = [{"required": ["offer_id"]}, {"required": ["spec"]}],
                  "not" = {"required": ["max_duration_hours", "expires_at"]},
                  "dependentSchemas" = {"bid_per_hour": {"required": ["offer_id"],
                                        "properties": {"offer_id": {"pattern": ":bid$"}}}}))]
#[serde(deny_unknown_fields)]
pub struct RentBody {
    /// From `GET /v1/offers`: `vastai:<id>` (on demand), `vastai:<id>:bid` (interruptible,
    /// rented at a bid), `ionet:<cards>x<hardware>@<location>` (one io.net configuration). Not
    /// with `spec`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(pattern(r"^(vastai|ionet):[^\x00]{1,128}$"), extend("example" = "vastai:5000210"))]
    pub offer_id: String,
    /// What any acceptable offer is: the matching offers are tried in order (failover). Not
    /// with `offer_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<failover::Spec>,
    /// A container image (Vast.ai). io.net deploys VMs from its own images: `general` or
    /// `datascience`; anything else, or any `env`, is refused there with a 400 naming the
    /// field (a rental by spec skips io.net instead). `disk_gb` above what the offer has is
    /// refused with a 400.
    #[schemars(length(min = 1, max = 512), pattern(r"^[^\x00]*\S[^\x00]*$"))]
    pub image: String,
    #[schemars(range(min = 8, max = 100_000))]
    pub disk_gb: u32,
    #[schemars(length(max = 256), pattern(NO_NUL))]
    pub label: Option<String>,
    #[serde(default)]
    #[schemars(extend("additionalProperties" = {"type": "string", "maxLength": 4096, "pattern": NO_NUL},
                      "maxProperties" = 64,
                      "propertyNames" = {"minLength": 1, "maxLength": 128, "pattern": NO_NUL}))]
    pub env: BTreeMap<String, String>,
    /// A script run when the instance starts, at most 4,048 characters (Vast's `onstart`). Vast
    /// only: refused with a 400 elsewhere.
    #[schemars(length(min = 1, max = 4048), pattern(NO_NUL))]
    pub onstart: Option<String>,
    /// `ssh` (the default; Vast replaces the image's entrypoint with an SSH server) or
    /// `entrypoint` (the image runs as built, its entrypoint kept, given `args`; no SSH unless the
    /// image runs one). With a `template_hash_id` and no `launch_mode`, the template's. Vast only
    /// for `entrypoint`.
    pub launch_mode: Option<LaunchMode>,
    /// Arguments to the image's entrypoint (`launch_mode: entrypoint`, which they imply).
    #[schemars(length(max = 64))]
    #[schemars(extend("items" = {"type": "string", "maxLength": 4096, "pattern": NO_NUL}))]
    pub args: Option<Vec<String>>,
    /// A Vast template's hash (32 hexadecimal characters): its settings, with `image` and the
    /// fields above applied over them. Vast only.
    #[schemars(pattern(r"^[0-9a-f]{32}$"))]
    pub template_hash_id: Option<String>,
    /// Ports of the instance to reach from outside (at most 16, each once): Vast maps them
    /// (`-p`), io.net exposes them as network services. The instance shows `endpoints` (public
    /// address and port) once the provider reports them.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub ports: Vec<PortSpec>,
    /// One OpenSSH public key (ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa of 2048 bits
    /// or more), not stored. io.net gets it in the deploy body, Vast attaches it to this
    /// instance once it exists (never account-wide).
    #[schemars(pattern(sshkeys::PUBLIC_KEY_FORM))]
    pub ssh_public_key: Option<String>,
    /// Ids from `GET /v1/ssh-keys` (this account's only).
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[schemars(extend("items" = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": NO_NUL}))]
    pub ssh_key_ids: Vec<String>,
    /// io.net only (its deployments run for a fixed time).
    #[schemars(range(min = 1, max = 8760))]
    pub duration_hours: Option<u32>,
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_price_per_hour: Option<f64>,
    /// Interruptible offers only: the bid (compute USD/h), sent as Vast's `price`. Default: the
    /// offer's current minimum bid. The instance's price is the bid plus its storage.
    #[schemars(range(min = 0.001, max = 128))]
    pub bid_per_hour: Option<f64>,
    /// The instance is destroyed this long after the rental (the reconciler does it and records
    /// why). Not with `expires_at`. Default: `rentals.default_max_duration_hours` (0: none).
    #[schemars(range(max = 8760), extend("exclusiveMinimum" = 0))]
    pub max_duration_hours: Option<f64>,
    /// The instance is destroyed at this time (in the future, at most a year ahead). Not with
    /// `max_duration_hours`.
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: Option<String>,
    /// Interruptible rentals: what the reconciler does when the provider reports the instance
    /// outbid (`wait`, the default; `rebid` up to `max_bid_per_hour`; `failover`, by spec only;
    /// `destroy`).
    pub on_interrupt: Option<OnInterrupt>,
    /// Stop or destroy the instance once its GPUs have been idle a while, by the utilisation its
    /// agent reports when one holds a channel, else the provider's (Vast's `gpu_util`; io.net
    /// reports none: refused there with a 400 unless `agent` is set, and a rental by spec skips
    /// it).
    pub idle: Option<IdlePolicy>,
    /// Install and start the instance agent (docs/agents.md): on Vast an agent token is
    /// minted and the install script runs first in `onstart` (which must then leave it room);
    /// where a provider starts no script (io.net), `GET /v1/instances/{id}` shows the line to
    /// run on the machine. Needs the daemon's `agents.public_url`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent: bool,
    /// A volume of yours to attach (`POST /v1/volumes`; Vast only): the offer must be on the
    /// volume's machine (a rental by spec tries only offers there), and no other open instance
    /// may use it.
    pub volume: Option<super::volumes::VolumeAttach>,
    /// What a failover rents by again: the rental's own body, set for the tries of a rental by
    /// spec with `on_interrupt: failover`; never read from a request.
    #[serde(skip)]
    #[schemars(skip)]
    pub relaunch: Option<serde_json::Value>,
}

/// How a rented container starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LaunchMode {
    /// An SSH server instead of the image's entrypoint (Vast runtype `ssh`).
    Ssh,
    /// The image's own entrypoint, with `args` (Vast runtype `args`).
    Entrypoint,
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
            let at = crate::types::text::rfc3339(t).ok_or_else(|| {
                Error::bad_request(
                    "invalid `expires_at`: an RFC 3339 time with its zone, e.g. \
                     2026-12-24T18:00:00Z or 2026-12-24T20:00:00+02:00",
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

    /// What the instance runs, checked: `onstart` within Vast's limit, `args` only with the
    /// entrypoint launch.
    pub(super) fn launch(&self) -> Result<Launch> {
        let bad = |field: &str, why: &str| Error::bad_request(format!("invalid `{field}`: {why}"));
        if let Some(s) = &self.onstart
            && (s.is_empty() || s.chars().count() > ONSTART_MAX || s.contains('\0'))
        {
            return Err(bad(
                "onstart",
                &format!("a script of 1 to {ONSTART_MAX} characters (Vast's limit)"),
            ));
        }
        let entrypoint_args = match (self.launch_mode, &self.args) {
            (Some(LaunchMode::Ssh), Some(_)) => {
                return Err(bad(
                    "args",
                    "arguments go to the image's entrypoint: `launch_mode` `entrypoint`, not `ssh`",
                ));
            }
            (_, Some(a))
                if a.len() > 64
                    || a.iter()
                        .any(|x| x.chars().count() > 4096 || x.contains('\0')) =>
            {
                return Err(bad("args", "at most 64 arguments of up to 4096 characters"));
            }
            (_, Some(a)) => Some(a.clone()),
            (Some(LaunchMode::Entrypoint), None) => Some(Vec::new()),
            _ => None,
        };
        if let Some(h) = &self.template_hash_id
            && !(h.len() == 32
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(bad(
                "template_hash_id",
                "a Vast template hash: 32 hexadecimal characters",
            ));
        }
        for p in &self.ports {
            if let Some(l) = &p.allow_from
                && (l.is_empty()
                    || l.len() > 16
                    || l.iter().any(|c| !crate::providers::model::is_cidr4(c)))
            {
                return Err(bad(
                    "ports",
                    &format!(
                        "`allow_from` of port {}: 1 to 16 IPv4 CIDRs such as 203.0.113.0/24",
                        p.port
                    ),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if self.ports.len() > 16
            || self
                .ports
                .iter()
                .any(|p| p.port == 0 || !seen.insert((p.port, p.protocol.as_str())))
        {
            return Err(bad(
                "ports",
                "at most 16 ports from 1 to 65535, each port and protocol once",
            ));
        }
        Ok(Launch {
            image: self.image.clone(),
            env: self.env.clone(),
            onstart: self.onstart.clone(),
            entrypoint_args,
            template_hash_id: self.template_hash_id.clone(),
            ports: self.ports.clone(),
        })
    }

    /// The rental's policies as the ledger keeps them.
    pub fn policies(&self) -> Policies {
        Policies {
            on_interrupt: self.on_interrupt.clone(),
            idle: self.idle.clone(),
        }
    }

    /// The policies checked against the rest of the rental (a policy that contradicts it is a
    /// 400 naming the field), and what a failover would rent by again.
    pub(super) fn check_policies(&self) -> Result<Option<serde_json::Value>> {
        if let Some(idle) = &self.idle {
            idle.check()?;
        }
        let Some(on) = &self.on_interrupt else {
            return Ok(None);
        };
        let by_spec = self.spec.is_some();
        on.check(&policies::Rental {
            interruptible: match &self.spec {
                Some(s) => s.interruptible,
                None => self
                    .offer_id
                    .ends_with(crate::providers::vastai::BID_SUFFIX),
            },
            by_spec,
            bid: self.bid_per_hour,
            inline_ssh_key: self.ssh_public_key.is_some(),
            max_price: self
                .max_price_per_hour
                .or(self.spec.as_ref().and_then(|s| s.max_price_per_hour)),
        })?;
        if on.action != InterruptAction::Failover {
            return Ok(None);
        }
        let mut again = self.clone();
        again.relaunch = None;
        again.ssh_public_key = None;
        Ok(serde_json::to_value(&again).ok())
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
        self.launch()?;
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
