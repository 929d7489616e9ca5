//! What a handler receives and gives back: [`Call`] (the request, its caller and path parameter),
//! [`Reply`], and who may call a route ([`Access`]). Kept apart from the route table so that the
//! handlers depend on this file and the table on the handlers, never both ways.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::{Api, Body};
use crate::accounts::Db;
use crate::auth::Principal;
use crate::error::{Error, Kind, Result, Side};
use crate::types::text::percent_decode;

/// The request's `Idempotency-Key` header, if it has one (its form is checked where it is used).
pub fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>> {
    match req.headers().get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_owned()))
            .map_err(|_| Error::bad_request("invalid `Idempotency-Key`: visible ASCII only")),
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Any valid key or token.
    User,
    /// Keys (and their tokens) with the `admin` scope.
    Admin,
    /// As `User`; besides, a browser (whose EventSource and WebSocket cannot set
    /// `Authorization`) may pass a token, never an API key, as `?access_token=` or as the
    /// WebSocket subprotocol `bearer.<token>` (`feed_query::browser_token`).
    Stream,
}

/// A path parameter's form: any text without control characters, percent-encoded in the path
/// (what [`Call::decoded_param`] accepts).
pub struct PathText;

impl schemars::JsonSchema for PathText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PathText".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "minLength": 1,
            "pattern": crate::types::schema::NO_CONTROL,
            "description": "Any text without control characters (percent-encoded in the path)."})
    }
}

/// A request as a handler receives it: authenticated already where the route needs it.
pub struct Call {
    pub api: Arc<Api>,
    /// The caller (`None` on public routes).
    pub caller: Option<Principal>,
    /// The path parameter(s), still percent-encoded (see the module header).
    pub param: Option<String>,
    pub req: Request<Incoming>,
}

impl Call {
    /// The caller of a route that is not public.
    pub fn principal(&self) -> Result<&Principal> {
        self.caller
            .as_ref()
            .ok_or_else(|| Error::new(Kind::Internal, Side::Internal, "route without a caller"))
    }

    /// The database, or a 503 naming what needs it (`what`: "webhooks") when none is configured.
    pub fn db(&self, what: &str) -> Result<Arc<Db>> {
        crate::service::db(&self.api, what)
    }

    /// The path parameter, percent-decoded; `what` names it in the error.
    pub fn decoded_param(&self, what: &str) -> Result<String> {
        self.param
            .as_deref()
            .and_then(percent_decode)
            .ok_or_else(|| Error::bad_request(format!("invalid {what}")))
    }
}

/// What a handler gives back: the answer at once (cheap routes, no allocation), or a boxed future
/// (so a request's own future stays small whatever the handler holds).
pub enum Reply {
    Now(Result<Response<Body>>),
    Later(Pin<Box<dyn Future<Output = Result<Response<Body>>> + Send>>),
}

impl Reply {
    /// Runs a cheap handler at once (a closure, so it can use `?`).
    pub fn now(f: impl FnOnce() -> Result<Response<Body>>) -> Reply {
        Reply::Now(f())
    }

    pub async fn resolve(self) -> Result<Response<Body>> {
        match self {
            Reply::Now(r) => r,
            Reply::Later(f) => f.await,
        }
    }
}

pub type Handler = fn(Call) -> Reply;
