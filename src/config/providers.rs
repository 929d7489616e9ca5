//! `[providers]` (shared HTTP settings and one `[providers.<id>]` table per provider),
//! `[offers]` and `[passthrough]`.

use std::collections::BTreeMap;

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};

use serde::{Deserialize, Serialize};

use super::{nz32, nz64, nzsize};

use super::{Millis, MillisOrZero};

/// The provider clients this build has, registered once: the name a `[providers.<id>]` table
/// gives as its `kind`, the table a built-in provider gets by default (its API root, the
/// environment variable of its key, its passthrough rules), and, matched exhaustively in
/// `providers::Providers::from_config`, the client it is built with. A provider with a new API
/// is one variant here and one client file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Vastai,
    Ionet,
    /// A provider that serves our own offer and instance format (an in-house pool, a reseller).
    Generic,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::Vastai,
        ProviderKind::Ionet,
        ProviderKind::Generic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Vastai => "vastai",
            ProviderKind::Ionet => "ionet",
            ProviderKind::Generic => "generic",
        }
    }

    pub fn parse(name: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether its provider answers passthrough calls without the operator's own rules.
    pub fn passthrough_by_default(self) -> bool {
        self.default_table()
            .is_some_and(|t| !t.passthrough.is_empty())
    }

    /// The names, for messages.
    pub fn names() -> String {
        ProviderKind::ALL.map(ProviderKind::name).join(", ")
    }

    /// The table this kind's provider has when the file does not change it (a generic
    /// provider has none: it is a table of the operator's own).
    fn default_table(self) -> Option<ProviderTable> {
        let (base_url, api_key_env, passthrough): (&str, &str, &[&str]) = match self {
            ProviderKind::Vastai => (
                "https://console.vast.ai",
                "VASTAI_API_KEY",
                &[
                    "GET /api/v0/instances/{instance}/",
                    // start/stop only: the label holds our id, and a state change is recorded
                    "PUT /api/v0/instances/{instance}/ body=state",
                    "PUT /api/v0/instances/reboot/{instance}/ body=",
                    "PUT /api/v0/instances/request_logs/{instance}/ body=",
                    "POST /api/v0/bundles/",
                ],
            ),
            ProviderKind::Ionet => (
                "https://api.io.solutions",
                "IONET_API_KEY",
                &[
                    "GET /enterprise/v1/io-cloud/vmaas/deployment/{instance}",
                    "GET /enterprise/v1/io-cloud/vmaas/deployment/{instance}/vms",
                    "GET /enterprise/v1/io-cloud/vmaas/hardware query=gpu,regions,gpu_family[],gpu_memory_min,gpu_memory_max,cpu_cores_min,cpu_cores_max,device_memory_min,device_memory_max,storage_min,storage_max,supplier",
                    "GET /enterprise/v1/io-cloud/vmaas/available-vms query=hardware_id,hardware_qty,node_pool_id",
                    "GET /enterprise/v1/io-cloud/vmaas/price query=location_ids,hardware_id,currency,duration_hours,gpus_per_vm,replica_count",
                ],
            ),
            ProviderKind::Generic => return None,
        };
        Some(ProviderTable {
            base_url: base_url.into(),
            api_key_env: api_key_env.into(),
            passthrough: rules(passthrough),
            ..ProviderTable::default()
        })
    }
}

/// The provider clients: one `[providers.<id>]` table per provider (the registry: adding a
/// provider is a table, plus a client file when its API is new), and the HTTP settings they
/// share: how long a call may take and how failures are contained.
///
/// (No `deny_unknown_fields` here: serde cannot combine it with the flattened tables. A
/// misspelled setting is still refused, as a value that is not a provider table.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProvidersConfig {
    /// TCP + TLS connect, per attempt.
    pub connect_timeout_ms: Millis,
    /// One attempt: request sent to the whole body read.
    pub request_timeout_ms: Millis,
    /// Every attempt and back-off of one call together; retries never go past it.
    pub total_timeout_ms: Millis,
    /// Idle keep-alive connections kept per provider host.
    pub pool_max_idle_per_host: usize,
    /// Requests in flight (so connections) per provider host at most; more wait for a slot
    /// within their timeout.
    pub max_connections_per_host: NonZeroUsize,
    pub pool_idle_timeout_ms: MillisOrZero,
    /// Retries of an idempotent call after a connect error, timeout, 429, 502, 503 or 504.
    pub max_retries: u32,
    /// First back-off; doubles per retry up to `retry_max_backoff_ms`, with full jitter.
    pub retry_base_backoff_ms: MillisOrZero,
    pub retry_max_backoff_ms: MillisOrZero,
    /// After an upstream 429 without `Retry-After` (Vast.ai never sends one), calls to that
    /// provider wait this long (they fail fast, so cached or stale answers are used meanwhile).
    pub rate_limit_backoff_ms: MillisOrZero,
    /// Consecutive failed calls that open a provider's circuit.
    pub breaker_consecutive_failures: NonZeroU32,
    /// Or: this share of failed calls among the last `breaker_window` calls.
    pub breaker_error_rate: f64,
    pub breaker_window: NonZeroU32,
    /// How long an open circuit refuses calls before one half-open probe is let through.
    pub breaker_open_ms: MillisOrZero,
    /// Largest upstream body read (a provider answering more is treated as failing).
    pub max_body_bytes: NonZeroU64,
    /// How often each provider account's credit is read (Vast `GET /api/v0/users/current/`
    /// `credit`) into `gpuproxy_provider_credit_usd`.
    pub credit_interval_ms: Millis,
    /// A provider account's credit below this many USD fires `GpuproxyProviderCreditLow`
    /// (`gpuproxy_provider_credit_alert_usd`).
    pub credit_alert_usd: f64,
    /// `[providers.<id>]`: every provider by id (the table's name, which prefixes its offer ids
    /// and labels its metrics).
    #[serde(flatten)]
    pub tables: BTreeMap<String, ProviderTable>,
}

/// One provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderTable {
    /// The client that speaks its API (a [`ProviderKind`] name); empty: the table's name.
    pub kind: String,
    /// Offered at all; a disabled provider is not asked and cannot be rented from.
    pub enabled: bool,
    /// API root (tests and the demo point it at the sandbox).
    pub base_url: String,
    /// The environment variable holding its API key (keys never sit in a file). Without the
    /// key, Vast.ai still searches (its search needs none); io.net reports `disabled`.
    pub api_key_env: String,
    /// Offers one search asks for (Vast.ai's `limit`; others list everything).
    pub search_limit: NonZeroU32,
    /// `/v1/providers/<id>/{path}` rules (see `[passthrough]`): `METHOD /path [body=keys]`.
    pub passthrough: Vec<crate::types::passthrough::Rule>,
}

impl Default for ProviderTable {
    fn default() -> Self {
        ProviderTable {
            kind: String::new(),
            enabled: true,
            base_url: String::new(),
            api_key_env: String::new(),
            search_limit: nz32(1_000),
            passthrough: Vec::new(),
        }
    }
}

impl ProviderTable {
    /// The client kind (the table's name when `kind` is not given), if this build has it.
    pub fn kind(&self, id: &str) -> Option<ProviderKind> {
        ProviderKind::parse(if self.kind.is_empty() { id } else { &self.kind })
    }
}

fn rules(list: &[&str]) -> Vec<crate::types::passthrough::Rule> {
    list.iter()
        .map(|r| crate::types::passthrough::Rule::parse(r).expect("default rules parse"))
        .collect()
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        ProvidersConfig {
            tables: ProviderKind::ALL
                .into_iter()
                .filter_map(|k| Some((k.name().to_owned(), k.default_table()?)))
                .collect(),
            connect_timeout_ms: Millis(2_000),
            request_timeout_ms: Millis(5_000),
            total_timeout_ms: Millis(10_000),
            pool_max_idle_per_host: 32,
            max_connections_per_host: nzsize(128),
            pool_idle_timeout_ms: MillisOrZero(60_000),
            max_retries: 2,
            retry_base_backoff_ms: MillisOrZero(100),
            retry_max_backoff_ms: MillisOrZero(2_000),
            rate_limit_backoff_ms: MillisOrZero(6_000),
            breaker_consecutive_failures: nz32(5),
            breaker_error_rate: 0.5,
            breaker_window: nz32(20),
            breaker_open_ms: MillisOrZero(10_000),
            max_body_bytes: nz64(32 * 1024 * 1024),
            credit_interval_ms: Millis(300_000),
            credit_alert_usd: 50.0,
        }
    }
}

/// `GET /v1/offers`: the cache in front of the providers, and paging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffersConfig {
    /// A provider's answer is fresh this long.
    pub cache_ttl_ms: Millis,
    /// After that, it is still served (marked stale) for this long while one background refresh
    /// runs.
    pub stale_while_revalidate_ms: MillisOrZero,
    /// While a provider fails, an answer up to this old is served (marked stale) instead of an
    /// error; also the life of the Redis copy.
    pub stale_if_error_ms: Millis,
    /// Provider answers the in-process layer keeps at most.
    pub cache_max_entries: NonZeroUsize,
    /// Page size when `limit` is not given, and the largest `limit` accepted.
    pub default_limit: NonZeroU32,
    pub max_limit: u32,
    /// Disk size used to price Vast.ai storage when `disk_gb` is not given.
    pub default_disk_gb: u32,
}

impl Default for OffersConfig {
    fn default() -> Self {
        OffersConfig {
            cache_ttl_ms: Millis(30_000),
            stale_while_revalidate_ms: MillisOrZero(30_000),
            stale_if_error_ms: Millis(600_000),
            cache_max_entries: nzsize(4_096),
            default_limit: nz32(20),
            max_limit: 200,
            default_disk_gb: 20,
        }
    }
}

/// `/v1/providers/{provider}/{path}`: provider API calls forwarded with the provider key. Only
/// the `passthrough` rules of the provider's table pass (`METHOD /path [body=keys]`);
/// `{instance}` matches one path segment that must be the provider id of one of the caller's
/// own instances; a trailing `*` matches the rest. Listing or creating instances, and account
/// endpoints, stay out: every account shares one provider key, so those would show or spend
/// across accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassthroughConfig {
    pub enabled: bool,
}

impl Default for PassthroughConfig {
    fn default() -> Self {
        PassthroughConfig { enabled: true }
    }
}

impl ProvidersConfig {
    /// Every table names a known kind and an http(s) URL, under a valid provider id.
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        use super::err;
        for (id, t) in &self.tables {
            let key = |k: &str| format!("providers.{id}.{k}");
            if crate::types::ProviderId::register(id).is_none() {
                return Err(err(
                    format!("providers.{id}"),
                    "not a provider table, or not a valid provider id (1 to 32 lower-case letters, \
                     digits, `_` or `-`, starting with a letter)",
                ));
            }
            if t.kind(id).is_none() {
                let named = if t.kind.is_empty() { id } else { &t.kind };
                return Err(err(
                    key("kind"),
                    format!(
                        "unknown provider kind `{named}` (known: {})",
                        ProviderKind::names()
                    ),
                ));
            }
            let ok = t.base_url.parse::<hyper::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(err(
                    key("base_url"),
                    format!("`{}` is not an http(s) URL", t.base_url),
                ));
            }
        }
        if !(self.breaker_error_rate > 0.0 && self.breaker_error_rate <= 1.0) {
            return Err(err("providers.breaker_error_rate", "must be in (0, 1]"));
        }
        if !(self.credit_alert_usd.is_finite() && self.credit_alert_usd >= 0.0) {
            return Err(err("providers.credit_alert_usd", "USD, 0 or more"));
        }
        Ok(())
    }
}

impl OffersConfig {
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        use super::err;
        if self.max_limit < self.default_limit.get() {
            return Err(err(
                "offers.max_limit",
                "must be at least offers.default_limit",
            ));
        }
        if self.stale_if_error_ms < self.cache_ttl_ms {
            return Err(err(
                "offers.stale_if_error_ms",
                "must be at least offers.cache_ttl_ms",
            ));
        }
        Ok(())
    }
}
