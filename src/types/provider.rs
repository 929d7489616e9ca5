//! Which provider something belongs to: the id that config tables (`[providers.<id>]`), offer
//! ids, ledger rows and metric labels share.
//!
//! Ids are the names of the config tables, registered once when the configuration is loaded;
//! after that an id is a `&'static str` (copied, compared and used as a metric label for free).
//! Registering leaks the name: there are as many as there are tables, a handful per process.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Mutex;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

static REGISTERED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// A configured provider (`vastai`, `ionet`, or any other `[providers.<id>]` table).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderId(&'static str);

impl ProviderId {
    /// Whether `name` can be a provider id: 1 to 32 lower-case letters, digits, `_` or `-`,
    /// starting with a letter (it appears in offer ids, paths and metric labels).
    pub fn valid(name: &str) -> bool {
        (1..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    }

    /// Registers `name` (the config loader does it for every table); `None` when it is not a
    /// valid id.
    pub fn register(name: &str) -> Option<ProviderId> {
        if !Self::valid(name) {
            return None;
        }
        let mut set = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = set.get(name) {
            return Some(ProviderId(known));
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        set.insert(leaked);
        Some(ProviderId(leaked))
    }

    /// A registered provider by name (case-insensitive); `None` for anything else.
    pub fn parse(s: &str) -> Option<ProviderId> {
        let set = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
        set.iter()
            .find(|n| n.eq_ignore_ascii_case(s))
            .map(|n| ProviderId(n))
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for ProviderId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

crate::types::schema::schema_of!(ProviderId, "ProviderId", {"type": "string",
    "description": "A configured provider id (`[providers.<id>]`)"});

impl<'de> Deserialize<'de> for ProviderId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ProviderId::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a configured provider")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_registered_once_and_checked() {
        let a = ProviderId::register("acme-gpu").unwrap();
        assert_eq!(ProviderId::register("acme-gpu"), Some(a));
        assert_eq!(ProviderId::parse("ACME-gpu"), Some(a));
        assert_eq!(a.as_str(), "acme-gpu");
        assert_eq!(ProviderId::parse("never-registered"), None);
        for bad in ["", "Acme", "1x", "a b", "a:b", &"x".repeat(33)] {
            assert_eq!(ProviderId::register(bad), None, "{bad:?}");
        }
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"acme-gpu\"");
        let back: ProviderId = serde_json::from_str("\"acme-gpu\"").unwrap();
        assert_eq!(back, a);
        assert!(serde_json::from_str::<ProviderId>("\"nope\"").is_err());
    }
}
