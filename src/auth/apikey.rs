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
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == ID_LEN
        && secret.len() == SECRET_LEN
        && id
            .bytes()
            .chain(secret.bytes())
            .all(|b| b.is_ascii_alphanumeric());
    ok.then_some((id, secret))
}

/// Whether `public_id` has the shape of a key id (checked before it reaches a query or a cache).
pub fn is_public_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time check of a presented secret against a stored hash.
pub fn verify(secret: &str, stored: &[u8]) -> bool {
    stored.len() == 32 && bool::from(hash(secret).ct_eq(stored))
}

/// Uniform base-62 characters by rejection sampling of OS random bytes.
fn random_base62(n: usize) -> String {
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
