//! Secrets: read from the environment only, printable only as `<redacted>`.

use std::collections::BTreeMap;
use std::fmt;

/// A secret value: printable only as `<redacted>`, so it cannot leak through `{:?}` or a log field.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The one way to read the value; call it only where the secret is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The secrets, from the environment variables of the same (upper-case) names.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub database_url: Option<Secret>,
    pub redis_url: Option<Secret>,
    pub jwt_secret: Option<Secret>,
    /// A read replica for key lookups (optional).
    pub database_read_url: Option<Secret>,
    /// Provider API keys, by the environment variable their table names (`api_key_env`).
    pub provider_keys: BTreeMap<String, Secret>,
}

/// Environment variable names of the secrets every deployment has, in the order of
/// [`Secrets`]' fields (provider keys come from the variables their tables name).
pub const SECRET_VARS: [&str; 4] = [
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET",
    "DATABASE_READ_URL",
];

impl Secrets {
    /// The secrets from `env`; `key_vars` are the provider tables' `api_key_env` names.
    pub fn from_env<'a>(
        env: &[(String, String)],
        key_vars: impl IntoIterator<Item = &'a str>,
    ) -> Secrets {
        let get = |name: &str| {
            env.iter()
                .find(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| Secret::new(v.clone()))
        };
        Secrets {
            database_url: get(SECRET_VARS[0]),
            redis_url: get(SECRET_VARS[1]),
            jwt_secret: get(SECRET_VARS[2]),
            database_read_url: get(SECRET_VARS[3]),
            provider_keys: key_vars
                .into_iter()
                .filter(|v| !v.is_empty())
                .filter_map(|v| Some((v.to_owned(), get(v)?)))
                .collect(),
        }
    }

    /// The API key in the environment variable `var` (a provider table's `api_key_env`).
    pub fn provider_key(&self, var: &str) -> Option<&Secret> {
        self.provider_keys.get(var)
    }

    pub(super) fn presence(&self, key_vars: &[&str]) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = vec![
            (SECRET_VARS[0].into(), self.database_url.is_some()),
            (SECRET_VARS[1].into(), self.redis_url.is_some()),
            (SECRET_VARS[2].into(), self.jwt_secret.is_some()),
            (SECRET_VARS[3].into(), self.database_read_url.is_some()),
        ];
        v.extend(
            key_vars
                .iter()
                .map(|k| (k.to_string(), self.provider_keys.contains_key(*k))),
        );
        v
    }
}

impl Secrets {
    /// The URLs parse and the JWT secret is long enough; a read replica needs a primary.
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        use super::err;
        for (name, url) in [
            ("DATABASE_URL", &self.database_url),
            ("DATABASE_READ_URL", &self.database_read_url),
        ] {
            if let Some(url) = url {
                url.expose()
                    .parse::<tokio_postgres::Config>()
                    .map_err(|e| err(name, format!("not a PostgreSQL URL: {e}")))?;
            }
        }
        if self.database_read_url.is_some() && self.database_url.is_none() {
            return Err(err(
                "DATABASE_READ_URL",
                "needs DATABASE_URL too (the replica only serves key lookups)",
            ));
        }
        if let Some(url) = &self.redis_url {
            fred::prelude::Config::from_url(url.expose())
                .map_err(|e| err("REDIS_URL", format!("not a Redis URL: {e}")))?;
        }
        if self
            .jwt_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 32)
        {
            return Err(err(
                "JWT_SECRET",
                "must be at least 32 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        Ok(())
    }
}
