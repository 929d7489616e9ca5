//! The one error type of the request path.
//!
//! An [`Error`] carries a [`Kind`] (which fixes the HTTP status and the stable `code` string clients
//! match on), the [`Side`] at fault, and whether the same request may be retried as it is. It is
//! turned into an HTTP response in exactly one place: `api::respond::error_response`. Messages are
//! written for the client; anything secret stays in `source`, which is logged, never sent.

use std::borrow::Cow;
use std::fmt;

use hyper::{Method, StatusCode};

/// Who caused the failure: decides the log level and whether it counts as a server error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

#[derive(Debug, Clone)]
pub enum Kind {
    BadRequest,
    NotFound,
    /// Carries the methods the route does allow, for the `Allow` header.
    MethodNotAllowed(Vec<Method>),
    /// The request body did not arrive in time (408).
    RequestTimeout,
    PayloadTooLarge {
        limit: u64,
    },
    UnsupportedMediaType,
    /// The daemon is starting or draining.
    Unavailable,
    /// A connection cap refused the connection.
    OverCapacity,
    /// A rate limit refused the request; carries the headers' values.
    RateLimited(crate::types::limits::Verdict),
    /// No valid credentials; carries the code (`missing_credentials`, `malformed_authorization`,
    /// `invalid_credentials`, `token_expired`, `key_revoked`, `key_expired`). Which part of a key
    /// was wrong is never told.
    Unauthorized(&'static str),
    /// Valid credentials that may not do this (`insufficient_scope`, `account_suspended`).
    Forbidden(&'static str),
    /// The record already exists (a unique name).
    Conflict,
    /// PostgreSQL (or PgBouncer) cannot be reached; the request may be retried.
    DatabaseUnavailable,
    /// Credentials could not be checked because the database is unreachable and they are not
    /// cached: 503, never 401, so a client does not throw away a good key.
    AuthUnavailable,
    /// Too many lookups the key cache cannot answer right now (503 with `Retry-After`).
    AuthBusy,
    /// A rental whose outcome is not known (the provider's answer or our record of it was lost):
    /// `details.instance_id` names it; the reconciler settles it (502).
    OutcomeUnknown,
    /// No provider could answer (and nothing cached was young enough to stand in).
    ProvidersUnavailable,
    /// A business rule said no; the error's `details` carry the figures. Domain layers name the
    /// rule, this module alone decides its status.
    Refused(Refusal),
    /// A provider failed, refused, or could not be asked (`provider_error`).
    Upstream(UpstreamFault),
    Internal,
}

/// The business rules that refuse a request, as the domain layers name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BudgetExceeded,
    PriceChanged,
    BidTooLow,
    OfferUnavailable,
    InstanceLimit,
    InstancePending,
    InstanceNotOpen,
    NotInterruptible,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    PassthroughForbidden,
    ProviderDisabled,
    SshKeyExists,
    SshKeyLimit,
    NotStoppable,
    /// The account's provider calls this minute are spent (429, `Retry-After`).
    UpstreamBudget,
    /// `events.max_streams_per_account` event streams are open for the account or key.
    StreamLimit,
    /// `webhooks.max_per_account` webhooks exist for the account.
    WebhookLimit,
    /// A webhook URL on an address `webhooks.allow_private_targets` does not allow (400).
    TargetNotAllowed,
    /// `watches.max_per_account` offer watches exist for the account.
    WatchLimit,
    /// A volume an open instance uses (it cannot be deleted, or attached to another, now).
    VolumeInUse,
    /// A volume not ready to be used (still being created, or ended).
    VolumeNotReady,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::BudgetExceeded => "budget_exceeded",
            Refusal::PriceChanged => "price_changed",
            Refusal::BidTooLow => "bid_too_low",
            Refusal::OfferUnavailable => "offer_unavailable",
            Refusal::InstanceLimit => "instance_limit",
            Refusal::InstancePending => "instance_pending",
            Refusal::InstanceNotOpen => "instance_not_open",
            Refusal::NotInterruptible => "not_interruptible",
            Refusal::IdempotencyInProgress => "idempotency_in_progress",
            Refusal::IdempotencyKeyReused => "idempotency_key_reused",
            Refusal::PassthroughForbidden => "passthrough_forbidden",
            Refusal::ProviderDisabled => "provider_disabled",
            Refusal::SshKeyExists => "ssh_key_exists",
            Refusal::SshKeyLimit => "ssh_key_limit",
            Refusal::NotStoppable => "not_stoppable",
            Refusal::UpstreamBudget => "upstream_budget_exceeded",
            Refusal::StreamLimit => "stream_limit",
            Refusal::WebhookLimit => "webhook_limit",
            Refusal::TargetNotAllowed => "target_not_allowed",
            Refusal::WatchLimit => "watch_limit",
            Refusal::VolumeInUse => "volume_in_use",
            Refusal::VolumeNotReady => "volume_not_ready",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::BudgetExceeded => StatusCode::PAYMENT_REQUIRED,
            Refusal::UpstreamBudget | Refusal::StreamLimit => StatusCode::TOO_MANY_REQUESTS,
            Refusal::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::PassthroughForbidden => StatusCode::FORBIDDEN,
            Refusal::ProviderDisabled | Refusal::TargetNotAllowed => StatusCode::BAD_REQUEST,
            Refusal::PriceChanged
            | Refusal::BidTooLow
            | Refusal::OfferUnavailable
            | Refusal::InstanceLimit
            | Refusal::InstancePending
            | Refusal::InstanceNotOpen
            | Refusal::NotInterruptible
            | Refusal::IdempotencyInProgress
            | Refusal::SshKeyExists
            | Refusal::SshKeyLimit
            | Refusal::VolumeInUse
            | Refusal::VolumeNotReady
            | Refusal::WebhookLimit
            | Refusal::WatchLimit
            | Refusal::NotStoppable => StatusCode::CONFLICT,
        }
    }
}

/// How a provider call went wrong, as far as the client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFault {
    /// It did not answer in time (504).
    Timeout,
    /// It was not asked: circuit open, backing off after a 429, no key (503, retry later).
    NotAsked,
    /// It answered with an error or garbage, or the connection broke (502).
    Failed,
}

impl Kind {
    pub fn status(&self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Kind::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Unavailable | Kind::OverCapacity => StatusCode::SERVICE_UNAVAILABLE,
            Kind::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Kind::Forbidden(_) => StatusCode::FORBIDDEN,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::DatabaseUnavailable | Kind::AuthUnavailable | Kind::AuthBusy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Kind::ProvidersUnavailable => StatusCode::BAD_GATEWAY,
            Kind::Refused(r) => r.status(),
            Kind::Upstream(UpstreamFault::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Kind::Upstream(UpstreamFault::NotAsked) => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Upstream(UpstreamFault::Failed) | Kind::OutcomeUnknown => StatusCode::BAD_GATEWAY,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code in the JSON body.
    /// Codes the OpenAPI document shows as examples of `error.code`.
    pub const EXAMPLE_CODES: [&'static str; 13] = [
        "invalid_credentials",
        "malformed_authorization",
        "missing_credentials",
        "token_expired",
        "key_revoked",
        "key_expired",
        "account_suspended",
        "insufficient_scope",
        "auth_unavailable",
        "rate_limited",
        "bad_request",
        "not_found",
        "conflict",
    ];

    pub fn code(&self) -> &'static str {
        match self {
            Kind::BadRequest => "bad_request",
            Kind::NotFound => "not_found",
            Kind::MethodNotAllowed(_) => "method_not_allowed",
            Kind::PayloadTooLarge { .. } => "payload_too_large",
            Kind::RequestTimeout => "request_timeout",
            Kind::UnsupportedMediaType => "unsupported_media_type",
            Kind::Unavailable => "unavailable",
            Kind::OverCapacity => "over_capacity",
            Kind::RateLimited(_) => "rate_limited",
            Kind::Unauthorized(code) | Kind::Forbidden(code) => code,
            Kind::Conflict => "conflict",
            Kind::DatabaseUnavailable => "database_unavailable",
            Kind::AuthUnavailable => "auth_unavailable",
            Kind::AuthBusy => "auth_busy",
            Kind::OutcomeUnknown => "outcome_unknown",
            Kind::ProvidersUnavailable => "providers_unavailable",
            Kind::Refused(r) => r.code(),
            Kind::Upstream(_) => "provider_error",
            Kind::Internal => "internal",
        }
    }
}

pub struct Error {
    pub kind: Kind,
    pub side: Side,
    /// True when repeating the same request later can succeed without change.
    pub retryable: bool,
    /// Shown to the client.
    pub message: Cow<'static, str>,
    /// Logged only; may hold details the client must not see.
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// Shown to the client as `error.details`: the figures behind a refusal (budget, prices).
    pub details: Option<Box<serde_json::Value>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, side: Side, message: impl Into<Cow<'static, str>>) -> Self {
        let retryable = matches!(
            kind,
            Kind::Unavailable
                | Kind::DatabaseUnavailable
                | Kind::AuthUnavailable
                | Kind::AuthBusy
                | Kind::ProvidersUnavailable
        );
        Error {
            kind,
            side,
            retryable,
            message: message.into(),
            source: None,
            details: None,
        }
    }

    /// A refusal by a business rule, with the figures the client needs to understand it.
    pub fn refused(
        rule: Refusal,
        message: impl Into<Cow<'static, str>>,
        details: Option<serde_json::Value>,
    ) -> Self {
        let mut e = Error::new(Kind::Refused(rule), Side::Client, message);
        e.details = details.map(Box::new);
        e
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Kind::BadRequest, Side::Client, message)
    }

    pub fn not_found(path: &str) -> Self {
        Error::new(
            Kind::NotFound,
            Side::Client,
            format!("no route for {}", truncate(path, 200)),
        )
    }

    pub fn method_not_allowed(method: &Method, allowed: Vec<Method>) -> Self {
        let list = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Error::new(
            Kind::MethodNotAllowed(allowed),
            Side::Client,
            format!("method {method} is not allowed here; allowed: {list}"),
        )
    }

    pub fn payload_too_large(limit: u64) -> Self {
        Error::new(
            Kind::PayloadTooLarge { limit },
            Side::Client,
            format!("request body larger than {limit} bytes"),
        )
    }

    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Kind::Unavailable, Side::Internal, message)
    }

    pub fn over_capacity(cap: &str) -> Self {
        Error {
            retryable: true,
            ..Error::new(
                Kind::OverCapacity,
                Side::Client,
                format!("connection refused by the {cap} connection limit; retry later"),
            )
        }
    }

    /// 503 `over_capacity` for work admitted a few at a time (`message` says which), to be
    /// retried (`Retry-After`).
    pub fn busy(message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            retryable: true,
            ..Error::new(Kind::OverCapacity, Side::Client, message)
        }
    }

    pub fn rate_limited(v: crate::types::limits::Verdict) -> Self {
        let wait = match v.decision {
            crate::types::limits::Decision::Limited { retry_after } => {
                crate::types::limits::ceil_secs(retry_after)
            }
            _ => 0,
        };
        Error {
            retryable: true,
            ..Error::new(
                Kind::RateLimited(v),
                Side::Client,
                format!(
                    "rate limit `{}` ({} requests per {} s) exceeded; retry after {wait} s",
                    v.tier.as_str(),
                    v.quota.per_period,
                    v.quota.period.as_secs()
                ),
            )
        }
    }

    pub fn unauthorized(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Kind::Unauthorized(code), Side::Client, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Kind::Forbidden(code), Side::Client, message)
    }

    pub fn internal(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error {
            source: Some(Box::new(source)),
            ..Error::new(Kind::Internal, Side::Internal, "internal error")
        }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("side", &self.side)
            .field("retryable", &self.retryable)
            .field("message", &self.message)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)?;
        if let Some(s) = &self.source {
            // the whole chain: a database error says what went wrong only in its source
            write!(f, " ({s}")?;
            let mut inner = s.source();
            while let Some(e) = inner {
                write!(f, ": {e}")?;
                inner = e.source();
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

pub use crate::types::text::truncate;
