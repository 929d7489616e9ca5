//! The providers: one [`Provider`] trait, the Vast.ai and io.net clients behind it, the normalized
//! model they map into, and what every upstream call goes through (`http` for the pooled client
//! and its timeouts, `resilience` for retries, back-off and the circuit breaker).
//!
//! Provider keys are read from `VASTAI_API_KEY` / `IONET_API_KEY` into [`crate::config::Secret`]s,
//! exposed only where a request header is built, and never copied into an error message: an
//! upstream error carries the provider's status and a short, redacted excerpt of its body.

pub mod api;
pub mod credit;
pub mod generic;
pub mod gpu;
pub mod http;
pub mod ionet;
pub mod model;
pub mod resilience;
pub mod vastai;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use credit::credit_round;
pub use model::{
    Charge, Endpoint, InstanceStatus, Launch, ONSTART_MAX, Offer, OfferFilter, Paid, PortSpec,
    PriceIncrease, Protocol, ProviderId, Quote, RemoteInstance, RemoteVolume, RentRequest, Ssh,
    TimeQuote, VolumeMount, VolumeOffer,
};

use crate::config::{Config, ProviderKind};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What of an offers query a provider answers upstream; everything else is applied to the
/// provider's answer in process, so different client queries share one upstream call and one
/// cache entry (Vast.ai allows about 10 searches a minute per IP).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchQuery {
    /// Canonical GPU model or family (see `gpu`), pushed down where the provider can filter on it.
    pub gpu: Option<String>,
    pub interruptible: bool,
    /// Disk the renter wants, in GB: Vast.ai prices storage (and filters hosts) by it.
    pub disk_gb: u32,
}

/// A GPU-rental provider.
pub trait Provider: Send + Sync {
    fn id(&self) -> ProviderId;

    /// Why the provider cannot be used as configured (e.g. no API key), if so.
    fn disabled(&self) -> Option<&'static str> {
        None
    }

    /// The normalized upstream query for `q`: the cache key of the answer. `None` when the
    /// provider has nothing for such a query (io.net sells no interruptible capacity), so no call
    /// is made.
    fn search_key(&self, q: &SearchQuery) -> Option<String>;

    /// The provider's offers for `q`, normalized. Offers that cannot be read are skipped (and
    /// logged), not fatal to the answer.
    fn search<'a>(&'a self, q: &'a SearchQuery)
    -> BoxFuture<'a, Result<Vec<Offer>, UpstreamError>>;

    /// The circuit breaker and back-off state, for `/ready` and `/stats`.
    fn gate(&self) -> &resilience::Gate;

    /// The offer's current terms (`offer` is the provider's part of the id); `None` when it is
    /// gone. Never cached: this is the price check at rent time.
    fn quote<'a>(
        &'a self,
        offer: &'a str,
        disk_gb: u32,
    ) -> BoxFuture<'a, Result<Option<Quote>, UpstreamError>>;

    /// Rents; returns the provider's instance id. Not idempotent, so never retried: a failure
    /// whose outcome is unknown (timeout, reset) is settled by the reconciler, which finds the
    /// instance by our id in its label/name.
    fn create<'a>(&'a self, req: &'a RentRequest) -> BoxFuture<'a, Result<String, UpstreamError>>;

    /// The instance as the provider sees it; `None` once it is gone.
    fn instance<'a>(
        &'a self,
        provider_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RemoteInstance>, UpstreamError>>;

    /// Destroys; an instance already gone counts as destroyed.
    fn destroy<'a>(&'a self, provider_id: &'a str) -> BoxFuture<'a, Result<(), UpstreamError>>;

    /// Where passthrough requests go: the API root, the client, and the header carrying the key
    /// (`None` when no key is configured).
    fn passthrough(
        &self,
    ) -> (
        &str,
        &http::HttpClient,
        Option<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    );

    /// Every instance of ours the provider lists (all pages), for the reconciler.
    fn list_instances(&self) -> BoxFuture<'_, Result<Vec<RemoteInstance>, UpstreamError>>;

    /// Whether the provider's part of an offer id can name an offer at all (checked before
    /// anything is asked of the provider); the error says what one looks like.
    fn check_offer_id(&self, _local: &str) -> Result<(), &'static str> {
        Ok(())
    }

    /// The current minimum bid (compute USD/h) for an interruptible offer, rented or not (what an
    /// outbid instance must bid again to run); `None` where the provider has no bids or shows
    /// none now.
    fn current_min_bid<'a>(
        &'a self,
        _offer: &'a str,
    ) -> BoxFuture<'a, Result<Option<f64>, UpstreamError>> {
        Box::pin(async { Ok(None) })
    }

    /// Whether the provider has volumes: disk that outlives instances (Vast). io.net documents
    /// none: volume requests are refused there.
    fn has_volumes(&self) -> bool {
        false
    }

    /// Volume offers with at least `size_gb` free (cheapest first).
    fn volume_offers(
        &self,
        _size_gb: u32,
    ) -> BoxFuture<'_, Result<Vec<VolumeOffer>, UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Disabled("no volumes")) })
    }

    /// Creates a volume of `size_gb` from volume offer `offer` (the provider's part of its id),
    /// named `name` (our volume id, to find it again). Not idempotent: a lost answer is settled by
    /// listing the volumes by name.
    fn create_volume<'a>(
        &'a self,
        _offer: &'a str,
        _size_gb: u32,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Disabled("no volumes")) })
    }

    /// Every volume of the provider account.
    fn list_volumes(&self) -> BoxFuture<'_, Result<Vec<RemoteVolume>, UpstreamError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Deletes a volume; `Ok(false)` when the provider no longer has it.
    fn delete_volume<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<bool, UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Disabled("no volumes")) })
    }

    /// Hosts' pending price increases on this account's running contracts (Vast); none where the
    /// provider has no such thing.
    fn pending_price_increases(&self) -> BoxFuture<'_, Result<Vec<PriceIncrease>, UpstreamError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Accepts or rejects one pending price increase (its provider id). `Ok(false)` when it is
    /// no longer pending (answered elsewhere, or withdrawn).
    fn answer_price_increase<'a>(
        &'a self,
        _id: &'a str,
        _accept: bool,
    ) -> BoxFuture<'a, Result<bool, UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Disabled("no price increases to answer")) })
    }

    /// Whether the provider reports each instance's GPU utilisation (what an idle policy judges
    /// by): Vast's `gpu_util`; io.net documents none.
    fn reports_gpu_util(&self) -> bool {
        false
    }

    /// Why this provider cannot honour a rental's launch spec: the field and why (a 400 naming
    /// it, before anything is reserved; a rental by spec skips this provider's offers). A field
    /// is sent the provider's documented way or refused, never dropped.
    /// By default a provider takes an image and an environment and none of Vast's launch fields
    /// (a start script, the image's entrypoint, a template).
    fn launch_refusal(&self, launch: &Launch) -> Option<(&'static str, String)> {
        if let Some(field) = launch.vast_only_field() {
            return Some((
                field,
                format!(
                    "{} takes no `{field}` (a start script, an entrypoint launch and templates are Vast's)",
                    self.id().as_str()
                ),
            ));
        }
        (!launch.ports.is_empty()).then(|| {
            (
                "ports",
                format!(
                    "{} exposes no ports (Vast and io.net do)",
                    self.id().as_str()
                ),
            )
        })
    }

    /// One offer is one machine that only one renter can hold (Vast): a rented offer leaves the
    /// cached answers at once. io.net configurations have several replicas.
    fn exclusive_offers(&self) -> bool {
        false
    }

    /// SSH keys go in the create call (`RentRequest::ssh_keys`); otherwise they are attached one
    /// by one with [`Provider::attach_ssh_key`] once the instance exists.
    fn ssh_keys_at_create(&self) -> bool {
        true
    }

    /// Adds one public key to one instance (never to the provider account: with one shared
    /// provider key that would reach every tenant's instances).
    fn attach_ssh_key<'a>(
        &'a self,
        _provider_id: &'a str,
        _public_key: &'a str,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Disabled("keys are given at create here")) })
    }

    /// Its instances run for a paid time that `extend` buys more of (io.net); otherwise they run
    /// until destroyed.
    fn sells_time(&self) -> bool {
        false
    }

    /// The provider account's credit, in micro-dollars, where the provider publishes it (Vast:
    /// `GET /api/v0/users/current/` `credit`); `None` otherwise.
    fn credit(&self) -> BoxFuture<'_, Result<Option<i64>, UpstreamError>> {
        Box::pin(async { Ok(None) })
    }

    /// Which provider account the key belongs to (Vast: the user id), where the provider says;
    /// `None` otherwise. The reconciler concludes nothing while it differs from the one first
    /// seen (a key of another account lists none of our instances, successfully).
    fn identity(&self) -> BoxFuture<'_, Result<Option<String>, UpstreamError>> {
        Box::pin(async { Ok(None) })
    }

    /// Paid time the provider never refunds, whenever the instance ends (io.net: the first hour):
    /// the ledger charges the rest of it when an instance ends sooner.
    fn minimum_billed_hours(&self) -> Option<f64> {
        None
    }

    /// What `hours` of the offer cost in all (fees and discount included), where the provider
    /// sells paid time and prices it apart from its catalogue (io.net); `None` otherwise.
    fn quote_time<'a>(
        &'a self,
        _offer: &'a str,
        _hours: u32,
    ) -> BoxFuture<'a, Result<Option<TimeQuote>, UpstreamError>> {
        Box::pin(async { Ok(None) })
    }

    /// Buys `hours` more of a deployment that runs for a paid time (see `sells_time`); answers
    /// what it cost in all since, when the provider says.
    fn extend<'a>(
        &'a self,
        _provider_id: &'a str,
        _hours: u32,
    ) -> BoxFuture<'a, Result<Option<Paid>, UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Disabled("this provider sells no paid time")) })
    }

    /// Stops (`running: false`) or starts an instance; providers that cannot stop one (io.net
    /// deployments run for their paid hours) answer `Disabled`.
    fn set_running<'a>(
        &'a self,
        _provider_id: &'a str,
        _running: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async {
            Err(UpstreamError::Disabled(
                "this provider cannot stop an instance",
            ))
        })
    }

    /// Changes an interruptible instance's bid (compute USD/h).
    fn set_bid<'a>(
        &'a self,
        _provider_id: &'a str,
        _bid_per_hour: f64,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Disabled("this provider has no bids")) })
    }

    /// Whether `charges` reads the provider's bill (the others answer `None`).
    fn publishes_charges(&self) -> bool {
        false
    }

    /// What the provider billed between `from` and `to` (epoch seconds), line by line, for
    /// reconciling the ledger; `None` when it publishes no charges.
    fn charges<'a>(
        &'a self,
        _from: f64,
        _to: f64,
    ) -> BoxFuture<'a, Result<Option<Vec<Charge>>, UpstreamError>> {
        Box::pin(async { Ok(None) })
    }
}

/// The configured providers: one client per enabled `[providers.<id>]` table, in id order.
#[derive(Clone)]
pub struct Providers {
    pub list: Vec<Arc<dyn Provider>>,
}

impl Providers {
    pub fn get(&self, id: ProviderId) -> Option<&Arc<dyn Provider>> {
        self.list.iter().find(|p| p.id() == id)
    }

    /// The registry: each enabled table becomes the client of its `kind`. Adding a provider
    /// whose API is new is one client file and one line here; one more of a known kind is a
    /// config table alone.
    pub fn from_config(config: &Config) -> Providers {
        let client = http::HttpClient::new(&config.providers);
        let mut list: Vec<Arc<dyn Provider>> = Vec::new();
        for (name, t) in config.providers.tables.iter().filter(|(_, t)| t.enabled) {
            let id = ProviderId::register(name).expect("ids are checked when config loads");
            let c = client.clone();
            // the kind is checked when the configuration loads
            let Some(kind) = t.kind(name) else { continue };
            list.push(match kind {
                ProviderKind::Vastai => Arc::new(vastai::Vastai::new(id, t, config, c)),
                ProviderKind::Ionet => Arc::new(ionet::Ionet::new(id, t, config, c)),
                ProviderKind::Generic => Arc::new(generic::Generic::new(id, t, config, c)),
            });
        }
        Providers { list }
    }
}

/// The error a client sees for a failed provider call: `provider_error`, retryable, with the
/// provider and the reason in `details` (the status is `error`'s to pick from the fault).
pub fn upstream_error(p: ProviderId, e: &UpstreamError) -> crate::error::Error {
    use crate::error::{Error, Kind, Side, UpstreamFault};
    let fault = match e {
        UpstreamError::Timeout => UpstreamFault::Timeout,
        UpstreamError::CircuitOpen
        | UpstreamError::BackingOff
        | UpstreamError::RateLimited
        | UpstreamError::Disabled(_) => UpstreamFault::NotAsked,
        _ => UpstreamFault::Failed,
    };
    let mut err = Error::new(Kind::Upstream(fault), Side::Upstream, format!("{p}: {e}"));
    err.retryable = true;
    err.details = Some(Box::new(
        serde_json::json!({"provider": p.as_str(), "reason": e.code()}),
    ));
    err
}

/// Why an upstream call failed. Display never includes a key or a full body.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamError {
    /// TCP or TLS connect failed.
    Connect(String),
    /// An attempt (or the whole call) ran past its deadline.
    Timeout,
    /// The connection broke mid-request or mid-body.
    Reset(String),
    /// A non-success status; `detail` is the provider's own code/message, truncated and redacted.
    Status { status: u16, detail: String },
    /// The provider answered 429; it is left alone for a while.
    RateLimited,
    /// The body was not the JSON expected.
    Decode(String),
    /// The provider's circuit is open: no call was made.
    CircuitOpen,
    /// The provider asked us to slow down (a 429) and the back-off has not ended: no call made.
    BackingOff,
    /// The provider refused our key: a 401 or 403, or a 404 that is not the provider's own
    /// not-found answer for the thing asked about (Vast.ai answers a wrong or revoked key, and an
    /// expired session, with 404; docs/providers.md, "A 404 is not gone"). Nothing is concluded
    /// about the instance: the ledger is left as it is and `gpuproxy_provider_auth_failures_total`
    /// counts it.
    Auth { status: u16, detail: String },
    /// The provider is not configured (no key).
    Disabled(&'static str),
}

impl UpstreamError {
    /// The call may have done what it asked although it failed (no answer, a broken or garbled
    /// one, a 5xx): the provider's list settles it, not this error.
    pub fn may_have_happened(&self) -> bool {
        match self {
            UpstreamError::Timeout | UpstreamError::Reset(_) | UpstreamError::Decode(_) => true,
            UpstreamError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Stable code, used in `/v1/offers`' `providers` section and as a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect_error",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Reset(_) => "connection_reset",
            UpstreamError::Status { .. } => "bad_status",
            UpstreamError::RateLimited => "rate_limited",
            UpstreamError::Decode(_) => "malformed_response",
            UpstreamError::CircuitOpen => "circuit_open",
            UpstreamError::BackingOff => "backing_off",
            UpstreamError::Auth { .. } => "auth_failed",
            UpstreamError::Disabled(_) => "disabled",
        }
    }

    /// Worth another attempt of an idempotent call (the next one may well succeed).
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Timeout | UpstreamError::Reset(_) => true,
            UpstreamError::Status { status, .. } => matches!(status, 500 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// Counts against the provider's health (a 4xx other than 429 is our request's fault).
    pub fn is_provider_fault(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => *status >= 500,
            UpstreamError::Connect(_)
            | UpstreamError::Timeout
            | UpstreamError::Reset(_)
            | UpstreamError::Decode(_)
            | UpstreamError::Auth { .. }
            | UpstreamError::RateLimited => true,
            UpstreamError::CircuitOpen | UpstreamError::BackingOff | UpstreamError::Disabled(_) => {
                false
            }
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "cannot connect: {e}"),
            UpstreamError::Timeout => f.write_str("timed out"),
            UpstreamError::Reset(e) => write!(f, "connection broken: {e}"),
            UpstreamError::Status { status, detail } if detail.is_empty() => {
                write!(f, "answered HTTP {status}")
            }
            UpstreamError::Status { status, detail } => {
                write!(f, "answered HTTP {status}: {detail}")
            }
            UpstreamError::RateLimited => f.write_str("rate limited us (HTTP 429)"),
            UpstreamError::Decode(e) => write!(f, "sent a malformed response: {e}"),
            UpstreamError::CircuitOpen => {
                f.write_str("circuit open after repeated failures; not called")
            }
            UpstreamError::BackingOff => f.write_str("backing off after a 429; not called"),
            UpstreamError::Auth { status, detail } => {
                write!(f, "refused our API key (HTTP {status}): {detail}")
            }
            UpstreamError::Disabled(why) => f.write_str(why),
        }
    }
}
