//! What a rental asks to happen to it later, without anyone at the keyboard: `on_interrupt`
//! (an outbid interruptible instance: wait, rebid up to a cap, fail over by the same spec,
//! destroy) and `idle` (an instance whose GPUs sit unused: warned, then stopped or destroyed).
//! Checked here at rent time; applied by the reconciler (`rentals::upkeep`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A rental's policies as the ledger keeps them (`instances.policies`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Policies {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_interrupt: Option<OnInterrupt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdlePolicy>,
}

impl Policies {
    /// The JSON the ledger keeps, none when there is no policy.
    pub fn stored(&self) -> Option<serde_json::Value> {
        (self.on_interrupt.is_some() || self.idle.is_some())
            .then(|| serde_json::to_value(self).ok())
            .flatten()
    }
}

/// `on_interrupt` of `POST /v1/instances`: what the reconciler does when the provider reports the
/// (interruptible) instance outbid.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[schemars(rename = "OnInterrupt")]
#[schemars(extend("oneOf" = [
    {"properties": {"action": {"const": "rebid"}}, "required": ["max_bid_per_hour"]},
    {"properties": {"action": {"enum": ["wait", "failover", "destroy"]}},
     "not": {"required": ["max_bid_per_hour"]}},
]))]
#[serde(deny_unknown_fields)]
pub struct OnInterrupt {
    pub action: InterruptAction,
    /// `rebid` only: the highest bid (compute USD/h) the reconciler may place; at least the
    /// rental's own bid.
    #[schemars(range(min = 0.001, max = 128))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bid_per_hour: Option<f64>,
}

/// What to do with an outbid instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InterruptAction {
    /// Nothing: it stays `interrupted` (billing its disk) until the bid is raised by hand or the
    /// competing renter leaves.
    Wait,
    /// Raise the bid to the offer's current minimum bid, if that is at most `max_bid_per_hour`
    /// and the budgets allow it.
    Rebid,
    /// Destroy it, then rent by the rental's `spec` again, leaving out the offer that was lost:
    /// one live instance at a time (a rental by spec only).
    Failover,
    /// Destroy it: an outbid instance bills its disk for nothing.
    Destroy,
}

impl InterruptAction {
    pub fn as_str(self) -> &'static str {
        match self {
            InterruptAction::Wait => "wait",
            InterruptAction::Rebid => "rebid",
            InterruptAction::Failover => "failover",
            InterruptAction::Destroy => "destroy",
        }
    }
}

/// `idle` of `POST /v1/instances`: when the provider's reported GPU utilisation stays below
/// `gpu_util_below` for `for_minutes`, the instance is stopped or destroyed; an `instance.idle`
/// event warns `rentals.idle_notice_ms` ahead (at once when the whole span is shorter).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[schemars(rename = "IdlePolicy")]
#[serde(deny_unknown_fields)]
pub struct IdlePolicy {
    /// Percent (above 0, at most 100): a reading below this is idle.
    #[schemars(range(max = 100), extend("exclusiveMinimum" = 0))]
    pub gpu_util_below: f64,
    /// How long (minutes, above 0, at most a week; fractions allowed) every reading must stay
    /// idle before the action.
    #[schemars(range(max = 10080), extend("exclusiveMinimum" = 0))]
    pub for_minutes: f64,
    pub action: IdleAction,
}

/// What to do with an idle instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IdleAction {
    /// Stop it: it bills its disk only and keeps its data (start it again to use it).
    Stop,
    /// Destroy it.
    Destroy,
}

impl IdleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            IdleAction::Stop => "stop",
            IdleAction::Destroy => "destroy",
        }
    }
}

fn bad(field: &str, why: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("invalid `{field}`: {why}"))
}

/// The longest idle span (a week, in minutes).
const MAX_IDLE_MINUTES: f64 = 10_080.0;

impl IdlePolicy {
    pub fn check(&self) -> Result<()> {
        if !(self.gpu_util_below.is_finite()
            && self.gpu_util_below > 0.0
            && self.gpu_util_below <= 100.0)
        {
            return Err(bad(
                "idle.gpu_util_below",
                "a percentage above 0 and at most 100",
            ));
        }
        if !(self.for_minutes.is_finite()
            && self.for_minutes > 0.0
            && self.for_minutes <= MAX_IDLE_MINUTES)
        {
            return Err(bad(
                "idle.for_minutes",
                "minutes above 0 and at most 10080 (a week)",
            ));
        }
        Ok(())
    }

    /// The idle span in seconds.
    pub fn span_secs(&self) -> f64 {
        self.for_minutes * 60.0
    }
}

/// What the rest of the rental says, for the checks that span fields.
pub struct Rental {
    /// Rented at a bid (an interruptible offer, or a spec of interruptible offers).
    pub interruptible: bool,
    /// Rented by spec (what a failover rents by again).
    pub by_spec: bool,
    /// The bid asked for, if any.
    pub bid: Option<f64>,
    /// An SSH key given inline (not stored, so a failover could not give it again).
    pub inline_ssh_key: bool,
    /// The rental's price ceiling.
    pub max_price: Option<f64>,
}

impl OnInterrupt {
    /// Checked against the rest of the rental: a policy that contradicts it is a 400 naming the
    /// field.
    pub fn check(&self, rental: &Rental) -> Result<()> {
        if !rental.interruptible {
            return Err(bad(
                "on_interrupt",
                "only an interruptible rental (an offer id ending in `:bid`, or a spec with `interruptible: true`) can be outbid",
            ));
        }
        match (self.action, self.max_bid_per_hour) {
            (InterruptAction::Rebid, None) => {
                return Err(bad(
                    "on_interrupt.max_bid_per_hour",
                    "`rebid` needs the highest bid it may place",
                ));
            }
            (InterruptAction::Rebid, Some(max)) => {
                super::check_bid("on_interrupt.max_bid_per_hour", max, None)?;
                if let Some(bid) = rental.bid
                    && max < bid
                {
                    return Err(bad(
                        "on_interrupt.max_bid_per_hour",
                        format!("{max} is below the rental's own `bid_per_hour` {bid}"),
                    ));
                }
                if let Some(cap) = rental.max_price
                    && max > cap
                {
                    return Err(bad(
                        "on_interrupt.max_bid_per_hour",
                        format!("{max} is above the rental's `max_price_per_hour` {cap}"),
                    ));
                }
            }
            (_, Some(_)) => {
                return Err(bad(
                    "on_interrupt.max_bid_per_hour",
                    "only with `action: rebid`",
                ));
            }
            (InterruptAction::Failover, None) if !rental.by_spec => {
                return Err(bad(
                    "on_interrupt.action",
                    "`failover` rents by the rental's `spec` again: rent by `spec`, not `offer_id`",
                ));
            }
            (InterruptAction::Failover, None) if rental.inline_ssh_key => {
                return Err(bad(
                    "on_interrupt.action",
                    "`failover` gives the new instance the rental's keys again, and an inline `ssh_public_key` is not stored: register it (POST /v1/ssh-keys) and pass `ssh_key_ids`",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rental(interruptible: bool, by_spec: bool) -> Rental {
        Rental {
            interruptible,
            by_spec,
            bid: Some(0.5),
            inline_ssh_key: false,
            max_price: None,
        }
    }

    fn on(action: InterruptAction, max: Option<f64>) -> OnInterrupt {
        OnInterrupt {
            action,
            max_bid_per_hour: max,
        }
    }

    #[test]
    fn an_interruption_policy_that_contradicts_the_rental_is_refused_by_name() {
        let err = |o: OnInterrupt, r: Rental| o.check(&r).unwrap_err().message;
        assert!(
            err(on(InterruptAction::Wait, None), rental(false, false)).contains("on_interrupt")
        );
        assert!(
            err(on(InterruptAction::Rebid, None), rental(true, false))
                .contains("on_interrupt.max_bid_per_hour")
        );
        assert!(err(on(InterruptAction::Rebid, Some(0.4)), rental(true, false)).contains("below"));
        assert!(
            err(on(InterruptAction::Destroy, Some(1.0)), rental(true, false))
                .contains("only with `action: rebid`")
        );
        assert!(
            err(on(InterruptAction::Failover, None), rental(true, false))
                .contains("on_interrupt.action")
        );
        let mut r = rental(true, true);
        r.inline_ssh_key = true;
        assert!(err(on(InterruptAction::Failover, None), r).contains("ssh_key_ids"));
        on(InterruptAction::Rebid, Some(0.9))
            .check(&rental(true, false))
            .unwrap();
        on(InterruptAction::Failover, None)
            .check(&rental(true, true))
            .unwrap();
    }

    #[test]
    fn an_idle_policy_is_a_share_and_a_span_within_bounds() {
        let p = |u: f64, m: f64| IdlePolicy {
            gpu_util_below: u,
            for_minutes: m,
            action: IdleAction::Stop,
        };
        assert!(p(0.0, 10.0).check().is_err());
        assert!(p(101.0, 10.0).check().is_err());
        assert!(p(5.0, 0.0).check().is_err());
        assert!(p(5.0, 20_000.0).check().is_err());
        assert!(p(f64::NAN, 1.0).check().is_err());
        p(5.0, 0.5).check().unwrap();
        assert_eq!(p(5.0, 0.5).span_secs(), 30.0);
    }
}
