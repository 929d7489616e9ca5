//! Durations in the config: written in milliseconds (the `*_ms` keys, as operators write them),
//! read as a `Duration` wherever they are used, with no conversion at each use.
//!
//! Two types say what 0 means, so no key is checked for zero by name: [`Millis`] refuses 0 as
//! it is read (a timeout or an interval of 0 would disable a guard or spin a loop), and
//! [`MillisOrZero`] is for the keys where 0 is documented ("at once", "none", "off").

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A positive duration in milliseconds: 0 is refused when the configuration is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            0 => Err(serde::de::Error::custom("must be greater than 0")),
            n => Ok(Millis(n)),
        }
    }
}

/// A duration in milliseconds where 0 has a meaning of its own (the key's comment says which).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MillisOrZero(pub u64);

impl MillisOrZero {
    pub const fn get(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// The number as written (for checks and messages).
    pub const fn ms(self) -> u64 {
        self.0
    }
}

impl Millis {
    pub const fn get(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// The number as written (for checks and messages).
    pub const fn ms(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_as_a_plain_number() {
        let m: Millis = serde_json::from_str("1500").unwrap();
        assert_eq!(m.get(), Duration::from_millis(1500));
        assert_eq!(serde_json::to_string(&m).unwrap(), "1500");
        let e = serde_json::from_str::<Millis>("0").unwrap_err();
        assert!(e.to_string().contains("must be greater than 0"), "{e}");
        let z: MillisOrZero = serde_json::from_str("0").unwrap();
        assert_eq!(z.get(), Duration::ZERO);
    }
}
