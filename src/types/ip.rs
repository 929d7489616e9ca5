//! Client addresses as the caps see them: IPv4 as is, IPv6 grouped by a prefix (one /64 is usually
//! one customer), IPv4-mapped IPv6 as IPv4. And CIDR blocks for the PROXY-protocol trust list.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The unit a per-IP cap counts: an IPv4 address or an IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpKey {
    V4(u32),
    /// The address with the bits past the prefix cleared.
    V6(u128),
}

impl IpKey {
    pub fn new(ip: IpAddr, v6_prefix: u8) -> IpKey {
        match ip {
            IpAddr::V4(a) => IpKey::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(u32::from(v4)),
                None => IpKey::V6(u128::from(a) & prefix_mask(v6_prefix)),
            },
        }
    }

    /// A well-mixed 64-bit hash (for choosing a shard), without a hasher object.
    pub fn mix(self) -> u64 {
        let x = match self {
            IpKey::V4(a) => u64::from(a) ^ 0x9e37_79b9,
            IpKey::V6(a) => (a as u64) ^ ((a >> 64) as u64).rotate_left(17),
        };
        // splitmix64 finalizer
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IpKey::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(a)),
            IpKey::V6(a) => write!(f, "{}", std::net::Ipv6Addr::from(a)),
        }
    }
}

fn prefix_mask(len: u8) -> u128 {
    match len {
        0 => 0,
        l if l >= 128 => u128::MAX,
        l => u128::MAX << (128 - u32::from(l)),
    }
}

/// An address block such as `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128).
/// Read from config as its text (`serde(try_from)`): a bad block is a config error naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = (prefix_mask(self.len + 96) & 0xffff_ffff) as u32;
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = prefix_mask(self.len);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Cidr, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_grouped_by_prefix_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::new(a, 64), IpKey::new(b, 64));
        assert_ne!(IpKey::new(a, 64), IpKey::new(c, 64));
        assert_ne!(IpKey::new(a, 128), IpKey::new(b, 128));
        let m: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(IpKey::new(m, 64), IpKey::V4(0x0a01_0203));
        assert_eq!(IpKey::new(a, 64).to_string(), "2001:db8:1:2::");
    }

    #[test]
    fn cidr_contains() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.1.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }
}
