//! Durations in the config: written in milliseconds (the `*_ms` keys, as operators write them),
//! read as a `Duration` wherever they are used, with no conversion at each use.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

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
    }
}
