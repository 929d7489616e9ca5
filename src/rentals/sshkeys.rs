//! An account's SSH public keys (`/v1/ssh-keys`): parsing and checking the OpenSSH form, the
//! fingerprint OpenSSH prints (`SHA256:…`), and the rows in PostgreSQL. Rentals name keys by id
//! (`ssh_key_ids`) or pass one inline (`ssh_public_key`); either way the instance gets exactly
//! the renter's keys, attached the way its provider documents (see `Provider::attach_ssh_key`).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_postgres::types::Type;

use crate::accounts::Db;
use crate::error::{Error, Kind, Refusal, Result, Side};

/// Key types a provider's images accept (OpenSSH names).
const TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// A checked public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// `type base64` (no comment): what is stored and sent to providers.
    pub canonical: String,
    pub fingerprint: String,
    pub comment: Option<String>,
}

/// Reads one length-prefixed string of the SSH wire format.
fn wire_string<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let s = b.get(4..4 + len)?;
    *b = &b[4 + len..];
    Some(s)
}

/// Parses `type base64 [comment]`; the error says what is wrong (for a 400 naming the field).
pub fn parse(text: &str) -> std::result::Result<PublicKey, String> {
    let text = text.trim();
    if text.len() > 16_384 || text.contains(['\n', '\r']) {
        return Err("one key on one line, at most 16 KiB".into());
    }
    let mut parts = text.splitn(3, ' ');
    let kind = parts.next().unwrap_or_default();
    let b64 = parts.next().unwrap_or_default();
    let comment = parts.next().map(str::trim).filter(|c| !c.is_empty());
    if !TYPES.contains(&kind) {
        return Err(format!(
            "key type `{}` is not one of {}",
            crate::error::truncate(kind, 32),
            TYPES.join(", ")
        ));
    }
    let blob = STANDARD
        .decode(b64)
        .map_err(|_| "the key data is not valid base64".to_owned())?;
    let mut rest = blob.as_slice();
    let inner = wire_string(&mut rest).ok_or("the key data is truncated")?;
    if inner != kind.as_bytes() {
        return Err("the key data is of another type than the one named".into());
    }
    let ok = match kind {
        "ssh-ed25519" => wire_string(&mut rest).is_some_and(|k| k.len() == 32),
        "ssh-rsa" => {
            let e = wire_string(&mut rest);
            let n = wire_string(&mut rest);
            // modulus with its sign byte: at least 2048 bits
            matches!((e, n), (Some(e), Some(n)) if !e.is_empty() && n.len() >= 256)
        }
        _ => {
            let curve = wire_string(&mut rest);
            let point = wire_string(&mut rest);
            matches!((curve, point), (Some(c), Some(p))
                if kind.ends_with(std::str::from_utf8(c).unwrap_or("-")) && p.first() == Some(&4))
        }
    };
    if !ok || !rest.is_empty() {
        return Err(format!(
            "not a valid {kind} public key (RSA keys need at least 2048 bits)"
        ));
    }
    Ok(PublicKey {
        canonical: format!("{kind} {b64}"),
        fingerprint: format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&blob))),
        comment: comment.map(str::to_owned),
    })
}

/// `POST /v1/ssh-keys` body.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[schemars(rename = "NewSshKey")]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[schemars(length(min = 1, max = 64), pattern(crate::types::schema::NO_NUL))]
    pub name: String,
    /// OpenSSH form: `ssh-ed25519 AAAA… [comment]`.
    #[schemars(pattern(PUBLIC_KEY_FORM))]
    pub public_key: String,
}

/// The OpenSSH public key line a JSON Schema can check: a known type, base64, a comment.
pub const PUBLIC_KEY_FORM: &str = r"^(ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|ssh-rsa) [A-Za-z0-9+/]+={0,2}( [^\x00-\x1f]*)?$";

/// A stored key as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct Key {
    pub id: String,
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    pub created_at: f64,
}

fn bad(field: &str, why: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("invalid `{field}`: {why}"))
}

fn key_row(r: &tokio_postgres::Row) -> Key {
    Key {
        id: r.get(0),
        name: r.get(1),
        public_key: r.get(2),
        fingerprint: r.get(3),
        created_at: r.get(4),
    }
}

const COLS: &str = "id, name, public_key, fingerprint, extract(epoch from created_at)::float8";

pub async fn create(db: &Db, account_id: i64, max: u32, k: &NewKey) -> Result<Key> {
    let name = k.name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(bad("name", "1 to 64 printable characters"));
    }
    let key = parse(&k.public_key).map_err(|why| bad("public_key", why))?;
    let id = format!("sshk_{}", &super::new_id().replace('-', "")[..20]);
    let max = i64::from(max);
    // the count and the insert under the account's cap lock: parallel creates cannot pass the cap
    let row = db
        .query_opt_capped(
            "rentals.max_ssh_keys",
            account_id,
            &format!(
                "INSERT INTO ssh_keys (id, account_id, name, public_key, fingerprint) \
                 SELECT $1, $2, $3, $4, $5 \
                 WHERE (SELECT count(*) FROM ssh_keys WHERE account_id = $2) < $6 \
                 ON CONFLICT (account_id, fingerprint) DO NOTHING RETURNING {COLS}"
            ),
            &[
                (&id, Type::TEXT),
                (&account_id, Type::INT8),
                (&name, Type::TEXT),
                (&key.canonical, Type::TEXT),
                (&key.fingerprint, Type::TEXT),
                (&max, Type::INT8),
            ],
        )
        .await?;
    if let Some(r) = row {
        return Ok(key_row(&r));
    }
    let dup = db
        .query_opt(
            "SELECT id FROM ssh_keys WHERE account_id = $1 AND fingerprint = $2",
            &[(&account_id, Type::INT8), (&key.fingerprint, Type::TEXT)],
        )
        .await?;
    Err(match dup {
        Some(r) => Error::refused(
            Refusal::SshKeyExists,
            format!("this key is stored already as {}", r.get::<_, String>(0)),
            Some(json!({"id": r.get::<_, String>(0), "fingerprint": key.fingerprint})),
        ),
        None => Error::refused(
            Refusal::SshKeyLimit,
            format!("the account has {max} SSH keys already (rentals.max_ssh_keys)"),
            Some(json!({"max_ssh_keys": max})),
        ),
    })
}

pub async fn list(db: &Db, account_id: i64) -> Result<Vec<Key>> {
    Ok(db
        .query(
            &format!("SELECT {COLS} FROM ssh_keys WHERE account_id = $1 ORDER BY created_at, id"),
            &[(&account_id, Type::INT8)],
        )
        .await?
        .iter()
        .map(key_row)
        .collect())
}

/// One of the account's keys (anyone else's is "no such key", like an unknown one).
pub async fn get(db: &Db, account_id: i64, id: &str) -> Result<Key> {
    db.query_opt(
        &format!("SELECT {COLS} FROM ssh_keys WHERE id = $1 AND account_id = $2"),
        &[(&id, Type::TEXT), (&account_id, Type::INT8)],
    )
    .await?
    .map(|r| key_row(&r))
    .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, format!("no SSH key {id}")))
}

/// Deletes one of the account's keys (instances that have it keep it).
pub async fn delete(db: &Db, account_id: i64, id: &str) -> Result<Key> {
    db.query_opt(
        &format!("DELETE FROM ssh_keys WHERE id = $1 AND account_id = $2 RETURNING {COLS}"),
        &[(&id, Type::TEXT), (&account_id, Type::INT8)],
    )
    .await?
    .map(|r| key_row(&r))
    .ok_or_else(|| Error::new(Kind::NotFound, Side::Client, format!("no SSH key {id}")))
}

/// The keys a rental asked for, as (name, canonical key, fingerprint), checked: ids must be the
/// account's own (anyone else's is "unknown", as is a missing one), the inline key must parse.
pub async fn for_rental(
    db: &Db,
    account_id: i64,
    ids: &[String],
    inline: Option<&str>,
) -> Result<Vec<(String, String, String)>> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    if !ids.is_empty() {
        let rows = db
            .query(
                "SELECT id, name, public_key, fingerprint FROM ssh_keys \
                 WHERE account_id = $1 AND id = ANY($2)",
                &[(&account_id, Type::INT8), (&ids, Type::TEXT_ARRAY)],
            )
            .await?;
        for id in ids {
            let r = rows
                .iter()
                .find(|r| r.get::<_, &str>(0) == id)
                .ok_or_else(|| {
                    bad(
                        "ssh_key_ids",
                        format!(
                            "no SSH key `{}` in this account (see GET /v1/ssh-keys)",
                            crate::error::truncate(id, 64)
                        ),
                    )
                })?;
            out.push((r.get(1), r.get(2), r.get(3)));
        }
    }
    if let Some(text) = inline {
        let k = parse(text).map_err(|why| bad("ssh_public_key", why))?;
        out.push((
            k.comment.unwrap_or_else(|| "inline".into()),
            k.canonical,
            k.fingerprint,
        ));
    }
    out.sort_by(|a, b| a.2.cmp(&b.2));
    out.dedup_by(|a, b| a.2 == b.2);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ssh-keygen -t ed25519` output (a throwaway key).
    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3RrZXl0ZXN0 user@host";

    #[test]
    fn ed25519_parses_with_the_openssh_fingerprint() {
        let k = parse(ED).unwrap();
        assert_eq!(
            k.canonical,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3RrZXl0ZXN0"
        );
        assert!(k.fingerprint.starts_with("SHA256:"));
        assert_eq!(k.fingerprint.len(), "SHA256:".len() + 43);
        assert_eq!(k.comment.as_deref(), Some("user@host"));
        // same key, other comment: same fingerprint
        assert_eq!(
            parse(&ED.replace("user@host", "x")).unwrap().fingerprint,
            k.fingerprint
        );
    }

    #[test]
    fn malformed_keys_say_why() {
        for (text, why) in [
            ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "is not one of"),
            ("ssh-ed25519 !!!", "base64"),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "not a valid"),
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3RrZXl0ZXN0",
                "another type",
            ),
            (
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3RrZXl0ZXN0\nx",
                "one line",
            ),
            ("", "is not one of"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        // a short RSA modulus
        let mut blob = Vec::new();
        for part in [&b"ssh-rsa"[..], &[1, 0, 1], &[0xab; 128]] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        let short = format!("ssh-rsa {}", STANDARD.encode(&blob));
        assert!(parse(&short).unwrap_err().contains("2048"));
    }
}
