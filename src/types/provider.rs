//! Which provider something belongs to: the id that config tables, offer ids, ledger rows and
//! metric labels share.

use serde::{Deserialize, Serialize};

/// Which provider an offer or instance belongs to; also the `provider` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderId {
    Vastai,
    Ionet,
}

impl ProviderId {
    pub const ALL: [ProviderId; 2] = [ProviderId::Vastai, ProviderId::Ionet];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderId::Vastai => "vastai",
            ProviderId::Ionet => "ionet",
        }
    }

    pub fn parse(s: &str) -> Option<ProviderId> {
        ProviderId::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}
