//! The one typed configuration tree, and where every config key is named.
//!
//! Layers, later wins: built-in defaults < TOML file < `GPUPROXY_*` environment < CLI flags
//! (`--set section.key=value` and the named flags in `cli.rs`). Every layer is merged as a TOML value
//! and deserialized once, with unknown keys rejected, so an error always names the key at fault.
//!
//! Secrets (`DATABASE_URL`, `DATABASE_READ_URL`, `REDIS_URL`, `JWT_SECRET`, `VASTAI_API_KEY`, `IONET_API_KEY`) are read only
//! from the environment, held in [`Secret`], and never printed.
//!
//! The sections live in this module's files (`server`, `ratelimit`, `storage`, `providers`,
//! `rentals`, `secrets`); this file loads, merges and validates them.

mod agents;
mod events;
mod mcp;
mod millis;
mod providers;
mod ratelimit;
pub mod reference;
mod rentals;
mod secrets;
mod server;
mod storage;

pub use agents::AgentsConfig;
pub use events::{EventsConfig, WebhooksConfig};
pub use mcp::McpConfig;
pub use millis::{Millis, MillisOrZero};
pub use providers::{
    OffersConfig, PassthroughConfig, ProviderKind, ProviderTable, ProvidersConfig,
};
pub use ratelimit::RateLimitConfig;
pub use rentals::{RentalsConfig, UnreachablePolicy};
pub use secrets::{SECRET_VARS, Secret, Secrets};
pub use server::{
    ConnectionsConfig, Listen, LogConfig, LogFormat, ProxyProtocolConfig, ServerConfig,
};
pub use storage::{AuthConfig, DatabaseConfig, RedisConfig};

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A non-zero default (config counts where 0 would be meaningless are `NonZero*`: a 0 in a file
/// is refused when it is read, naming the key).
pub(crate) const fn nz32(v: u32) -> std::num::NonZeroU32 {
    match std::num::NonZeroU32::new(v) {
        Some(n) => n,
        None => panic!("a zero default"),
    }
}

pub(crate) const fn nz64(v: u64) -> std::num::NonZeroU64 {
    match std::num::NonZeroU64::new(v) {
        Some(n) => n,
        None => panic!("a zero default"),
    }
}

pub(crate) const fn nzsize(v: usize) -> std::num::NonZeroUsize {
    match std::num::NonZeroUsize::new(v) {
        Some(n) => n,
        None => panic!("a zero default"),
    }
}

/// Prefix of environment variables that override config keys: `GPUPROXY_SERVER_HTTPS_LISTEN`
/// sets `server.https_listen`.
pub const ENV_PREFIX: &str = "GPUPROXY_";

/// Exit status for a bad configuration (sysexits.h `EX_USAGE`), used by `serve` and `check-config`.
pub const EXIT_BAD_CONFIG: i32 = 64;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub connections: ConnectionsConfig,
    pub proxy_protocol: ProxyProtocolConfig,
    pub ratelimit: RateLimitConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub providers: ProvidersConfig,
    pub offers: OffersConfig,
    pub rentals: RentalsConfig,
    pub events: EventsConfig,
    pub webhooks: WebhooksConfig,
    pub agents: AgentsConfig,
    pub mcp: McpConfig,
    pub passthrough: PassthroughConfig,
    pub log: LogConfig,
    /// Read from the environment only; skipped by (de)serialization so a file cannot carry them.
    #[serde(skip)]
    pub secrets: Secrets,
}

/// A configuration error that names the key (`server.https_listen`) or the source at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, environment variable, flag or file the error is about.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// Everything [`load`] reads, gathered by the caller so tests can pass their own.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// The TOML file, if one is given.
    pub file: Option<PathBuf>,
    /// The process environment (only `GPUPROXY_*` and the secret names are looked at).
    pub env: Vec<(String, String)>,
    /// `key.path=value` overrides from the command line, applied last.
    pub overrides: Vec<String>,
}

/// Builds the effective configuration from all layers and validates it.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let config = load_unchecked(sources)?;
    validate(&config)?;
    Ok(config)
}

/// [`load`] without the checks that only matter to a serving daemon (certificate files,
/// listeners): for the admin commands, which read the storage sections only.
pub fn load_unchecked(sources: &Sources) -> Result<Config, ConfigError> {
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialize");
    let mut merged = defaults.clone();

    if let Some(path) = &sources.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path.display().to_string(), format!("cannot read: {e}")))?;
        let file: toml::Value = toml::from_str(&text)
            .map_err(|e| err(path.display().to_string(), e.to_string().trim().to_string()))?;
        merge(&mut merged, file);
    }

    let mut env: Vec<_> = sources
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    env.sort();
    for (name, value) in env {
        let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let path = resolve_env_key(&defaults, &rest).ok_or_else(|| {
            err(
                name.clone(),
                "does not name a config key (GPUPROXY_<SECTION>_<KEY>, e.g. GPUPROXY_SERVER_WORKERS)",
            )
        })?;
        set_path(&mut merged, &path, parse_scalar(value));
    }

    for o in &sources.overrides {
        let (key, value) = o
            .split_once('=')
            .ok_or_else(|| err(o.clone(), "expected --set key.path=value"))?;
        let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        set_path(&mut merged, &path, parse_scalar(value.trim()));
    }

    check_provider_tables(&merged)?;
    let mut config: Config = serde_path_to_error::deserialize(merged).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // An unknown field is reported at its parent (top level) or at itself (nested):
        // make the key always end with the field's own name.
        let key = match inner.split('`').nth(1) {
            Some(field) if inner.starts_with("unknown field") => {
                if path == "." {
                    field.to_string()
                } else if path == field || path.ends_with(&format!(".{field}")) {
                    path
                } else {
                    format!("{path}.{field}")
                }
            }
            _ => path,
        };
        err(key, inner)
    })?;
    let key_vars: Vec<String> = config
        .providers
        .tables
        .values()
        .map(|t| t.api_key_env.clone())
        .collect();
    config.secrets = Secrets::from_env(&sources.env, key_vars.iter().map(String::as_str));
    Ok(config)
}

/// The provider tables are flattened into `providers`, where serde loses the path of an error:
/// check what can fail inside them first, so the error names `providers.<id>.<key>`.
fn check_provider_tables(merged: &toml::Value) -> Result<(), ConfigError> {
    let Some(tables) = merged.get("providers").and_then(toml::Value::as_table) else {
        return Ok(());
    };
    let defaults = toml::Value::try_from(ProvidersConfig::default()).expect("defaults serialize");
    let settings = defaults.as_table().expect("a table");
    if let Some((k, _)) = tables
        .iter()
        .find(|(k, v)| !v.is_table() && !settings.contains_key(*k))
    {
        return Err(err(
            format!("providers.{k}"),
            "unknown setting of [providers] (and not a [providers.<id>] table)",
        ));
    }
    for (id, t) in tables.iter().filter(|(_, t)| t.is_table()) {
        let rules = t.get("passthrough").and_then(toml::Value::as_array);
        for (i, r) in rules.into_iter().flatten().enumerate() {
            let key = format!("providers.{id}.passthrough[{i}]");
            let text = r.as_str().ok_or_else(|| err(&key, "a rule is a string"))?;
            crate::types::passthrough::Rule::parse(text).map_err(|e| err(&key, e))?;
        }
        ProviderTable::deserialize(t.clone())
            .map_err(|e| err(format!("providers.{id}"), e.to_string()))?;
    }
    Ok(())
}

/// Checks that cannot be expressed by types alone: each section checks itself (in its own
/// file), then what spans sections. Durations need no check here: [`Millis`] refuses 0 as it is
/// read, and [`MillisOrZero`] is for the keys where 0 means something.
fn validate(config: &Config) -> Result<(), ConfigError> {
    config.server.validate()?;
    config.connections.validate()?;
    config.ratelimit.validate()?;
    config.secrets.validate()?;
    config.providers.validate()?;
    config.offers.validate()?;
    config.webhooks.validate()?;
    config.rentals.validate()?;
    config.agents.validate()?;
    tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .map_err(|e| err("log.level", format!("not a valid filter: {e}")))?;
    Ok(())
}

/// Finds the key path an environment variable (lower-cased, prefix removed) names, by walking the
/// defaults: `server_https_listen` → `["server", "https_listen"]`. Section and key names may
/// themselves contain underscores; the defaults tree disambiguates.
fn resolve_env_key(tree: &toml::Value, rest: &str) -> Option<Vec<String>> {
    let table = tree.as_table()?;
    for (k, v) in table {
        if rest == k && !v.is_table() {
            return Some(vec![k.clone()]);
        }
        if let Some(tail) = rest
            .strip_prefix(k.as_str())
            .and_then(|t| t.strip_prefix('_'))
            && v.is_table()
            && let Some(mut path) = resolve_env_key(v, tail)
        {
            path.insert(0, k.clone());
            return Some(path);
        }
    }
    None
}

/// An override's value: a TOML literal if it parses as one (`8`, `true`, `[1,2]`), else a string.
fn parse_scalar(s: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {s}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(s.to_string()))
}

fn set_path(root: &mut toml::Value, path: &[String], value: toml::Value) {
    let mut cur = root;
    for (i, k) in path.iter().enumerate() {
        let table = match cur {
            toml::Value::Table(t) => t,
            other => {
                *other = toml::Value::Table(Default::default());
                other.as_table_mut().expect("just set")
            }
        };
        if i + 1 == path.len() {
            table.insert(k.clone(), value);
            return;
        }
        cur = table
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

impl Config {
    /// The effective configuration as TOML, with each secret shown only as set or unset.
    pub fn render_redacted(&self) -> String {
        let mut out = toml::to_string_pretty(self).expect("config serializes");
        out.push_str("\n# secrets (environment only)\n");
        let vars: Vec<&str> = self
            .providers
            .tables
            .values()
            .map(|t| t.api_key_env.as_str())
            .filter(|v| !v.is_empty())
            .collect();
        for (name, set) in self.secrets.presence(&vars) {
            out.push_str(&format!(
                "# {name} = {}\n",
                if set { "<set, redacted>" } else { "<unset>" }
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(file: Option<&str>, env: &[(&str, &str)], overrides: &[&str]) -> Sources {
        let file = file.map(|text| {
            let dir = std::env::temp_dir().join(format!(
                "gpuproxyd-config-test-{}-{}",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join("c.toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        Sources {
            file,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    const PLAIN: &str = "[server]\nhttps_listen = \"off\"\nhttp_listen = \"127.0.0.1:1\"\n";

    /// A duration that cannot be 0 is refused as it is read, naming the key; one where 0 means
    /// something is taken.
    #[test]
    fn zero_durations_are_refused_by_type_not_by_name() {
        for key in [
            "rentals.reconcile_interval_ms",
            "connections.idle_timeout_ms",
            "webhooks.timeout_ms",
            "providers.total_timeout_ms",
        ] {
            let e = load(&sources(Some(PLAIN), &[], &[&format!("{key}=0")])).unwrap_err();
            assert_eq!(e.key, key);
            assert!(e.message.contains("must be greater than 0"), "{e:?}");
        }
        for key in ["server.drain_delay_ms", "connections.park_after_ms"] {
            load(&sources(Some(PLAIN), &[], &[&format!("{key}=0")])).unwrap();
        }
    }

    #[test]
    fn layers_apply_in_order() {
        let c = load(&sources(
            Some(&format!("{PLAIN}workers = 3\n[log]\nlevel = \"debug\"\n")),
            &[
                ("GPUPROXY_SERVER_WORKERS", "5"),
                ("GPUPROXY_LOG_ACCESS_LOG", "false"),
            ],
            &["server.shutdown_grace_ms=7"],
        ))
        .unwrap();
        assert_eq!(c.server.workers, 5, "env beats file");
        assert_eq!(c.log.level, "debug", "file beats default");
        assert!(!c.log.access_log);
        assert_eq!(c.server.shutdown_grace_ms.ms(), 7, "flag applies");
        let c = load(&sources(
            Some(PLAIN),
            &[("GPUPROXY_SERVER_WORKERS", "5")],
            &["server.workers=9"],
        ))
        .unwrap();
        assert_eq!(c.server.workers, 9, "flag beats env");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load(&sources(Some(&format!("{PLAIN}bogus = 1\n")), &[], &[])).unwrap_err();
        assert_eq!(e.key, "server.bogus");
        let e = load(&sources(Some("[nosuch]\nx=1\n"), &[], &[])).unwrap_err();
        assert_eq!(e.key, "nosuch");
        let e = load(&sources(Some(PLAIN), &[("GPUPROXY_SERVER_NOPE", "1")], &[])).unwrap_err();
        assert_eq!(e.key, "GPUPROXY_SERVER_NOPE");
    }

    #[test]
    fn bad_values_are_named() {
        let e = load(&sources(
            Some(&format!("{PLAIN}workers = \"many\"\n")),
            &[],
            &[],
        ))
        .unwrap_err();
        assert_eq!(e.key, "server.workers");
        let e = load(&sources(
            Some("[server]\nhttps_listen = \"off\"\nhttp_listen = \"nonsense\"\n"),
            &[],
            &[],
        ))
        .unwrap_err();
        assert_eq!(e.key, "server.http_listen");
        assert!(e.message.contains("nonsense"), "{e}");
        let e = load(&sources(
            Some(&format!("{PLAIN}max_body_bytes = 0\n")),
            &[],
            &[],
        ))
        .unwrap_err();
        assert_eq!(e.key, "server.max_body_bytes");
    }

    #[test]
    fn secrets_only_from_env_and_redacted() {
        let c = load(&sources(
            Some(PLAIN),
            &[
                ("JWT_SECRET", "hunter2-hunter2-hunter2-hunter2-hunter2"),
                ("VASTAI_API_KEY", "vk-123"),
            ],
            &[],
        ))
        .unwrap();
        assert_eq!(
            c.secrets.jwt_secret.as_ref().unwrap().expose(),
            "hunter2-hunter2-hunter2-hunter2-hunter2"
        );
        let shown = format!("{}{:?}", c.render_redacted(), c);
        assert!(
            !shown.contains("hunter2") && !shown.contains("vk-123"),
            "{shown}"
        );
        assert!(shown.contains("# JWT_SECRET = <set, redacted>"));
        assert!(shown.contains("# DATABASE_URL = <unset>"));
        // a secret is not a config key, so a file cannot set it
        let e = load(&sources(
            Some(&format!("{PLAIN}[secrets]\njwt_secret = \"x\"\n")),
            &[],
            &[],
        ))
        .unwrap_err();
        assert_eq!(e.key, "secrets");
        // a short JWT secret is refused, by name
        let e = load(&sources(Some(PLAIN), &[("JWT_SECRET", "short")], &[])).unwrap_err();
        assert_eq!(e.key, "JWT_SECRET");
        let e = load(&sources(
            Some(PLAIN),
            &[("DATABASE_URL", "nonsense://")],
            &[],
        ))
        .unwrap_err();
        assert_eq!(e.key, "DATABASE_URL");
    }

    fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(t) = v.as_table() {
            for (k, v) in t {
                let path = format!("{prefix}{k}");
                if v.is_table() {
                    keys(v, &format!("{path}."), out);
                } else {
                    out.push(path);
                }
            }
        }
    }

    #[test]
    fn shipped_example_names_every_key() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gpuproxyd.toml");
        let file: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let (mut want, mut have) = (Vec::new(), Vec::new());
        keys(&defaults, "", &mut want);
        keys(&file, "", &mut have);
        want.sort();
        have.sort();
        assert_eq!(want, have, "config/gpuproxyd.toml must list every key");
        // and it is valid (certificate files aside, which the demo creates)
        let dir = std::env::temp_dir().join(format!("gpuproxyd-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["server.crt", "server.key"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let mut src = sources(None, &[], &[]);
        src.file = Some(path);
        src.overrides = vec![
            format!(
                "server.tls_cert={:?}",
                dir.join("server.crt").display().to_string()
            ),
            format!(
                "server.tls_key={:?}",
                dir.join("server.key").display().to_string()
            ),
        ];
        load(&src).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn rendered_config_loads_back() {
        let c = load(&sources(Some(PLAIN), &[], &[])).unwrap();
        let again = load(&sources(Some(&c.render_redacted()), &[], &[])).unwrap();
        assert_eq!(again.server.http_listen, c.server.http_listen);
        assert_eq!(again.server.https_listen, Listen(None));
    }
}
