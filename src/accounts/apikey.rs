//! API keys: `gpx_<public id>_<secret>`.
//!
//! The public id (12 base-62 characters) finds the key; the secret (32 base-62 characters, about
//! 190 random bits from the OS) proves it. Only SHA-256 of the secret is stored: with that much
//! entropy there is nothing to brute-force, so a slow password hash would only cost CPU on every
//! cache miss. Comparison is constant-time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "gpx_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A newly made key: the full token (shown once) and what is stored.
pub struct NewKey {
    pub public_id: String,
    pub token: String,
    pub secret_hash: [u8; 32],
}

pub fn generate() -> NewKey {
    let public_id = random_base62(ID_LEN);
    let secret = random_base62(SECRET_LEN);
    NewKey {
        token: format!("{PREFIX}{public_id}_{secret}"),
        secret_hash: hash(&secret),
        public_id,
    }
}

/// Splits a presented token into (public id, secret) when it has the shape of a key.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    // fixed layout: no searching on every request; `_` is one byte, so both cuts fall on
    // character boundaries
    if rest.len() != ID_LEN + 1 + SECRET_LEN || rest.as_bytes()[ID_LEN] != b'_' {
        return None;
    }
    let (id, secret) = (&rest[..ID_LEN], &rest[ID_LEN + 1..]);
    (alphanumeric(id) && alphanumeric(secret)).then_some((id, secret))
}

/// A key's public id as a path parameter (what [`is_public_id`] accepts).
pub struct PublicId;

impl schemars::JsonSchema for PublicId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PublicId".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": format!("^[0-9A-Za-z]{{{ID_LEN}}}$")})
    }
}

/// Whether `public_id` has the shape of a key id (checked before it reaches a query or a cache).
pub fn is_public_id(s: &str) -> bool {
    s.len() == ID_LEN && alphanumeric(s)
}

/// Every byte an ASCII letter or digit. A fold without early exit: it runs on every
/// authenticated request, and this form compiles to a branch-free loop.
fn alphanumeric(s: &str) -> bool {
    s.bytes().fold(true, |ok, b| ok & b.is_ascii_alphanumeric())
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time check of a presented secret against a stored hash (compared as four words:
/// `subtle` on a byte slice pays an optimization barrier per byte).
pub fn verify(secret: &str, stored: &[u8]) -> bool {
    let Ok(stored) = <&[u8; 32]>::try_from(stored) else {
        return false;
    };
    let presented = hash(secret);
    let word = |h: &[u8; 32], i: usize| {
        u64::from_ne_bytes(h[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    };
    let same = (0..4).fold(subtle::Choice::from(1), |acc, i| {
        acc & word(&presented, i).ct_eq(&word(stored, i))
    });
    bool::from(same)
}

/// Uniform base-62 characters by rejection sampling of OS random bytes.
pub fn random_base62(n: usize) -> String {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).expect("the OS random source works");
        for &b in &buf {
            // 248 = 4 × 62: bytes above would bias the first characters
            if b < 248 && out.len() < n {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify() {
        let k = generate();
        let (id, secret) = parse(&k.token).unwrap();
        assert_eq!(id, k.public_id);
        assert!(verify(secret, &k.secret_hash));
        assert!(!verify("x", &k.secret_hash));
        let other = generate();
        assert_ne!(other.public_id, k.public_id);
        assert!(!verify(parse(&other.token).unwrap().1, &k.secret_hash));
        // a stored hash differing in any one byte, or of another length, does not match
        for i in 0..32 {
            let mut h = k.secret_hash;
            h[i] ^= 0x01;
            assert!(!verify(secret, &h), "byte {i}");
        }
        assert!(!verify(secret, &k.secret_hash[..31]));
        assert!(!verify(secret, &[k.secret_hash.as_slice(), &[0]].concat()));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        for t in [
            "",
            "gpx_",
            "gpx_abc_def",
            "gpy_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            "gpx_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB-",
            "gpx_AAAAAAAAAAA\u{e9}_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            "gpx_AAAAAAAAAAA\u{e9}BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            "gpx_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB\u{e9}",
            "gpx_AAAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            "gpx_AAAAAAAAAAAA_BBBBBBBBBBBBBBBB_BBBBBBBBBBBBBBB",
        ] {
            assert!(parse(t).is_none(), "{t}");
        }
        assert!(parse("gpx_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB").is_some());
    }

    #[test]
    fn alphabet_is_used_evenly() {
        let s: String = (0..200).map(|_| random_base62(62)).collect();
        for c in ALPHABET {
            let n = s.bytes().filter(|b| b == c).count();
            assert!(n > 100 && n < 320, "{} seen {n} times", *c as char);
        }
    }
}
