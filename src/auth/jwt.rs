//! Short-lived tokens: HS256 with `JWT_SECRET`, issued by `POST /v1/auth/token` in exchange for an
//! API key. A token names the key it came from (`kid` claim), and every use looks that key up
//! through the auth cache, so revoking the key (or suspending the account) rejects its tokens too.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::accounts::store::{KeyRecord, unix_now};
use crate::config::{AuthConfig, Secret};
use crate::error::Error;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The account id.
    pub sub: String,
    /// Public id of the API key the token was exchanged for.
    pub kid: String,
    pub scopes: Vec<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

pub struct Jwt {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl_s: i64,
}

impl Jwt {
    pub fn new(secret: &Secret, cfg: &AuthConfig) -> Jwt {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&cfg.jwt_issuer]);
        validation.set_audience(&[&cfg.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = cfg.jwt_leeway_s;
        Jwt {
            enc: EncodingKey::from_secret(secret.expose().as_bytes()),
            dec: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
            issuer: cfg.jwt_issuer.clone(),
            audience: cfg.jwt_audience.clone(),
            ttl_s: (cfg.jwt_ttl_ms.ms() / 1000).max(1) as i64,
        }
    }

    /// A token for the key's account and scopes, valid from now for the configured lifetime
    /// (never past the key's own expiry).
    pub fn issue(&self, key: &KeyRecord) -> Result<(String, Claims), Error> {
        let now = unix_now();
        let exp = key
            .expires_at
            .map_or(now + self.ttl_s, |k| k.min(now + self.ttl_s));
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: key.account_id.to_string(),
            kid: key.public_id.clone(),
            scopes: key.scopes.clone(),
            iat: now,
            nbf: now,
            exp,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .map_err(Error::internal)?;
        Ok((token, claims))
    }

    /// Checks signature, algorithm, `exp`, `nbf`, issuer and audience.
    pub fn validate(&self, token: &str) -> Result<Claims, Error> {
        jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => {
                    Error::unauthorized("token_expired", "the token has expired; get a new one")
                }
                ErrorKind::ImmatureSignature => {
                    Error::unauthorized("invalid_credentials", "the token is not valid yet")
                }
                _ => Error::unauthorized("invalid_credentials", "invalid API key or token"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt() -> Jwt {
        Jwt::new(
            &Secret::new("0123456789abcdef0123456789abcdef"),
            &AuthConfig::default(),
        )
    }

    fn key() -> KeyRecord {
        KeyRecord::sample("AAAAAAAAAAAA")
    }

    #[test]
    fn issued_tokens_validate_and_tampering_fails() {
        let j = jwt();
        let (t, c) = j.issue(&key()).unwrap();
        let back = j.validate(&t).unwrap();
        assert_eq!(back.sub, "7");
        assert_eq!(back.kid, "AAAAAAAAAAAA");
        assert_eq!(c.exp - c.iat, 900);
        // flip one character of the payload
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let p = &mut parts[1];
        let last = p.pop().unwrap();
        p.push(if last == 'A' { 'B' } else { 'A' });
        let e = j.validate(&parts.join(".")).unwrap_err();
        assert_eq!(e.kind.code(), "invalid_credentials");
        // another secret
        let other = Jwt::new(
            &Secret::new("another-secret-another-secret-xx"),
            &AuthConfig::default(),
        );
        assert_eq!(
            other.validate(&t).unwrap_err().kind.code(),
            "invalid_credentials"
        );
    }

    #[test]
    fn expiry_issuer_audience_are_checked() {
        let j = jwt();
        let now = unix_now();
        let sign = |c: &Claims| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                c,
                &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            )
            .unwrap()
        };
        let base = j.issue(&key()).unwrap().1;
        let expired = Claims {
            exp: now - 60,
            ..base.clone()
        };
        assert_eq!(
            j.validate(&sign(&expired)).unwrap_err().kind.code(),
            "token_expired"
        );
        let future = Claims {
            nbf: now + 600,
            ..base.clone()
        };
        assert!(j.validate(&sign(&future)).is_err());
        let wrong_iss = Claims {
            iss: "someone".into(),
            ..base.clone()
        };
        assert!(j.validate(&sign(&wrong_iss)).is_err());
        let wrong_aud = Claims {
            aud: "other".into(),
            ..base.clone()
        };
        assert!(j.validate(&sign(&wrong_aud)).is_err());
        // alg=none is refused
        let none = format!(
            "eyJhbGciOiJub25lIn0.{}.",
            sign(&base).split('.').nth(1).unwrap()
        );
        assert!(j.validate(&none).is_err());
    }

    #[test]
    fn token_never_outlives_its_key() {
        let mut k = key();
        k.expires_at = Some(unix_now() + 30);
        let (_, c) = jwt().issue(&k).unwrap();
        assert_eq!(c.exp, k.expires_at.unwrap());
    }
}
