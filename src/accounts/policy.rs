//! Key policies: what one API key may rent, set when it is created or updated, so a key handed to
//! an LLM agent or a script is bounded whatever the account could afford.
//!
//! - `read` scope (a key whose only scope): search, list, read and stream; every change (REST
//!   write methods, MCP tools that are not read-only) is 403 `insufficient_scope`.
//! - `max_price_per_hour`: no rental (on demand or bid) above this USD/h; a spec's ceiling is
//!   lowered to it. Stored in micro-dollars.
//! - `allowed_providers`, `allowed_gpu_models`: rentals of other offers are refused; a rental by
//!   spec tries only these.
//! - `require_max_duration_hours`: every rental must carry a lifetime (`max_duration_hours` /
//!   `expires_at`, or the configured default) of at most this, and an extend may not take it
//!   further.
//! - `max_instances`: at most this many open instances rented by the key (checked under the
//!   account's budget lock, with the account's own limit).
//!
//! - `allow_exec`: the key may run commands on its account's instances through their agents
//!   (`POST /v1/instances/{id}/commands`), if the account allows it too (`agent_exec`). Unlike
//!   the others this one grants: left out, the key may not.
//!
//! A refusal is 403 `key_policy` naming the policy (`details.policy`), before any provider call.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result};

/// A key's policies (all optional: none set, the key may do what its account may).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyPolicy {
    #[serde(default)]
    pub max_price_micros_per_hour: Option<i64>,
    #[serde(default)]
    pub allowed_providers: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_gpu_models: Option<Vec<String>>,
    #[serde(default)]
    pub require_max_duration_hours: Option<f64>,
    #[serde(default)]
    pub max_instances: Option<i32>,
    #[serde(default)]
    pub allow_exec: Option<bool>,
}

/// The policies as the API shows and takes them (`max_price_per_hour` in USD).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[serde(deny_unknown_fields)]
pub struct PolicyFields {
    /// No rental above this USD/h (the bid for interruptible offers).
    #[schemars(range(min = 0.0001, max = 1000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price_per_hour: Option<f64>,
    /// Providers this key may rent from (`vastai`, `ionet`, ...).
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("items" = {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,31}$"}))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_providers: Option<Vec<String>>,
    /// GPU models this key may rent (as `GET /v1/offers` names them, e.g. `RTX 4090`).
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("items" = {"type": "string", "minLength": 1, "maxLength": 64,
                                 "pattern": r"^[^\x00]*\S[^\x00]*$"}))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_gpu_models: Option<Vec<String>>,
    /// Every rental by this key must end within this many hours.
    #[schemars(range(min = 0.01, max = 8760))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_max_duration_hours: Option<f64>,
    /// Open instances this key may have rented at once.
    #[schemars(range(min = 0, max = 100000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<i32>,
    /// This key may run commands on the account's instances through their agents (when the
    /// account allows it too: `agent_exec`). Left out: it may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_exec: Option<bool>,
}

impl PolicyFields {
    /// The policy these fields set, checked (400 naming the field).
    pub fn to_policy(&self) -> Result<KeyPolicy> {
        let bad = |field: &str, why: &str| Error::bad_request(format!("invalid `{field}`: {why}"));
        let max_price = match self.max_price_per_hour {
            Some(p) if !(p.is_finite() && (0.0001..=1000.0).contains(&p)) => {
                return Err(bad("max_price_per_hour", "0.0001 to 1000 USD/h"));
            }
            Some(p) => Some((p * 1e6).round() as i64),
            None => None,
        };
        let list = |field: &str, v: &Option<Vec<String>>, max: usize, len: usize| match v {
            Some(l)
                if l.is_empty()
                    || l.len() > max
                    || l.iter().any(|s| {
                        s.trim().is_empty() || s.chars().count() > len || s.contains('\0')
                    }) =>
            {
                Err(bad(
                    field,
                    &format!("1 to {max} names of 1 to {len} characters (leave it out for any)"),
                ))
            }
            Some(l) => Ok(Some(l.clone())),
            None => Ok(None),
        };
        let providers = list("allowed_providers", &self.allowed_providers, 16, 32)?;
        if let Some(p) = providers
            .iter()
            .flatten()
            .find(|p| !crate::types::ProviderId::valid(p))
        {
            return Err(bad(
                "allowed_providers",
                &format!(
                    "`{}` is not a provider id (a configured `[providers.<id>]` name: lower-case letters, digits, `_`, `-`)",
                    crate::error::truncate(p, 32)
                ),
            ));
        }
        let models = list("allowed_gpu_models", &self.allowed_gpu_models, 64, 64)?;
        if let Some(h) = self.require_max_duration_hours
            && !(h.is_finite() && (0.01..=8760.0).contains(&h))
        {
            return Err(bad("require_max_duration_hours", "0.01 to 8760 hours"));
        }
        if self
            .max_instances
            .is_some_and(|m| !(0..=100_000).contains(&m))
        {
            return Err(bad("max_instances", "0 to 100000"));
        }
        Ok(KeyPolicy {
            max_price_micros_per_hour: max_price,
            allowed_providers: providers,
            allowed_gpu_models: models,
            require_max_duration_hours: self.require_max_duration_hours,
            max_instances: self.max_instances,
            allow_exec: self.allow_exec,
        })
    }
}

impl KeyPolicy {
    pub fn fields(&self) -> PolicyFields {
        PolicyFields {
            max_price_per_hour: self.max_price_micros_per_hour.map(|m| m as f64 / 1e6),
            allowed_providers: self.allowed_providers.clone(),
            allowed_gpu_models: self.allowed_gpu_models.clone(),
            require_max_duration_hours: self.require_max_duration_hours,
            max_instances: self.max_instances,
            allow_exec: self.allow_exec,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == KeyPolicy::default()
    }

    /// The provider, when the key may not rent from it.
    pub fn provider(&self, provider: &str) -> Result<()> {
        match &self.allowed_providers {
            Some(l) if !l.iter().any(|p| p == provider) => Err(refused(
                "allowed_providers",
                format!("this key may rent from {l:?} only, not `{provider}`"),
                json!({"allowed_providers": l, "provider": provider}),
            )),
            _ => Ok(()),
        }
    }

    /// The GPU model, when the key may not rent it.
    pub fn gpu_model(&self, model: &str) -> Result<()> {
        match &self.allowed_gpu_models {
            Some(l) if !l.iter().any(|m| m.eq_ignore_ascii_case(model)) => Err(refused(
                "allowed_gpu_models",
                format!("this key may rent {l:?} only, not `{model}`"),
                json!({"allowed_gpu_models": l, "gpu_model": model}),
            )),
            _ => Ok(()),
        }
    }

    /// A price (USD/h), when it is above the key's cap.
    pub fn price(&self, per_hour: f64) -> Result<()> {
        match self.max_price_micros_per_hour {
            Some(cap) if (per_hour * 1e6).round() as i64 > cap => Err(refused(
                "max_price_per_hour",
                format!(
                    "{per_hour:.4} USD/h is above this key's cap of {:.4} USD/h",
                    cap as f64 / 1e6
                ),
                json!({"max_price_per_hour": cap as f64 / 1e6, "price_per_hour": per_hour}),
            )),
            _ => Ok(()),
        }
    }

    /// The cap as USD/h, to lower a spec's ceiling to.
    pub fn max_price(&self) -> Option<f64> {
        self.max_price_micros_per_hour.map(|m| m as f64 / 1e6)
    }

    /// A lifetime (hours from now; `None`: none), when the key requires a shorter one.
    pub fn lifetime(&self, hours: Option<f64>) -> Result<()> {
        match (self.require_max_duration_hours, hours) {
            (Some(cap), None) => Err(refused(
                "require_max_duration_hours",
                format!(
                    "this key's rentals must end within {cap} h: give `max_duration_hours` (or `expires_at`)"
                ),
                json!({"require_max_duration_hours": cap}),
            )),
            // a second of slack: `expires_at` is read a moment after it was computed
            (Some(cap), Some(h)) if h > cap + 1.0 / 3600.0 => Err(refused(
                "require_max_duration_hours",
                format!("this key's rentals must end within {cap} h, not {h:.2} h from now"),
                json!({"require_max_duration_hours": cap, "lifetime_hours": h}),
            )),
            _ => Ok(()),
        }
    }
}

impl KeyPolicy {
    /// Whether the key may run commands through agents (`allow_exec`), given whether its account
    /// may (`agent_exec`): 403 `exec_not_allowed` saying which one does not.
    pub fn exec(&self, account_allows: bool) -> Result<()> {
        let refuse = |who: &str, how: &str| {
            let mut e = Error::forbidden(
                "exec_not_allowed",
                format!("commands through instance agents are off for this {who}: {how}"),
            );
            e.details = Some(Box::new(json!({"account_agent_exec": account_allows,
                "key_allow_exec": self.allow_exec == Some(true)})));
            e
        };
        if !account_allows {
            return Err(refuse(
                "account",
                "an administrator turns them on (`agent_exec` on the account)",
            ));
        }
        if self.allow_exec != Some(true) {
            return Err(refuse(
                "key",
                "give the key the `allow_exec` policy (`PATCH /v1/admin/keys/{public_id}`)",
            ));
        }
        Ok(())
    }
}

/// 403 `key_policy` naming the policy.
pub fn refused(policy: &'static str, message: String, details: serde_json::Value) -> Error {
    let mut e = Error::forbidden("key_policy", message);
    let mut d = details;
    d["policy"] = json!(policy);
    e.details = Some(Box::new(d));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_and_kept_exactly() {
        let f = PolicyFields {
            max_price_per_hour: Some(0.35),
            allowed_providers: Some(vec!["vastai".into()]),
            ..Default::default()
        };
        let p = f.to_policy().unwrap();
        assert_eq!(p.max_price_micros_per_hour, Some(350_000));
        assert_eq!(p.fields(), f);
        for bad in [
            PolicyFields {
                max_price_per_hour: Some(-1.0),
                ..Default::default()
            },
            PolicyFields {
                allowed_providers: Some(vec!["Not A Provider".into()]),
                ..Default::default()
            },
            PolicyFields {
                allowed_gpu_models: Some(vec![]),
                ..Default::default()
            },
            PolicyFields {
                require_max_duration_hours: Some(0.0),
                ..Default::default()
            },
        ] {
            assert_eq!(bad.to_policy().unwrap_err().kind.status(), 400, "{bad:?}");
        }
    }

    #[test]
    fn each_policy_refuses_by_name() {
        let p = PolicyFields {
            max_price_per_hour: Some(0.5),
            allowed_providers: Some(vec!["vastai".into()]),
            allowed_gpu_models: Some(vec!["RTX 4090".into()]),
            require_max_duration_hours: Some(2.0),
            max_instances: None,
            allow_exec: None,
        }
        .to_policy()
        .unwrap();
        let exec = |account: bool, key: Option<bool>| {
            KeyPolicy {
                allow_exec: key,
                ..KeyPolicy::default()
            }
            .exec(account)
            .map_err(|e| (e.kind.code(), e.message.contains("account")))
        };
        assert_eq!(exec(false, Some(true)), Err(("exec_not_allowed", true)));
        assert_eq!(exec(true, None), Err(("exec_not_allowed", false)));
        assert_eq!(exec(true, Some(false)), Err(("exec_not_allowed", false)));
        assert_eq!(exec(true, Some(true)), Ok(()));
        let name = |r: Result<()>| r.unwrap_err().details.unwrap()["policy"].clone();
        assert_eq!(name(p.provider("ionet")), "allowed_providers");
        assert!(p.provider("vastai").is_ok());
        assert_eq!(name(p.gpu_model("H100 SXM")), "allowed_gpu_models");
        assert!(p.gpu_model("rtx 4090").is_ok());
        assert_eq!(name(p.price(0.51)), "max_price_per_hour");
        assert!(p.price(0.5).is_ok());
        assert_eq!(name(p.lifetime(None)), "require_max_duration_hours");
        assert_eq!(name(p.lifetime(Some(3.0))), "require_max_duration_hours");
        assert!(p.lifetime(Some(2.0)).is_ok());
        assert!(KeyPolicy::default().lifetime(None).is_ok());
    }
}
