//! gRPC beside REST on the same listeners (docs/grpc.md). A request with `content-type:
//! application/grpc…` on an HTTP/2 connection comes here from `api::handle` instead of the route
//! table, and takes REST's steps in REST's order: the per-IP tier; the method's entry in
//! [`METHODS`] (who may call it); authentication from the `authorization` metadata (an API key
//! or a token, as REST's header); the key's scope and the caller's rate limit; then the call,
//! under the `grpc-timeout` deadline (`deadline`). Metrics and the access log are REST's, with
//! the method's path as the route. Errors become statuses in one place (`respond::grpc_status`).
//!
//! - `pb`: the messages and service traits generated from `proto/gpuproxy/v1` (build.rs).
//! - `registry`: which server answers which gRPC service (ours, health, reflection).
//! - `services`: Offers, Instances, Account and Usage over the typed services (`service::*`).
//! - `offers_page`: `SearchOffersResponse` with its offers encoded once per rendered page.
//! - `events`: the event stream over `service::events`.
//! - `codec`: prost's codec with smaller per-call buffers.
//! - `convert`: the services' views as messages, and request messages as the services' input.
//! - `deadline`: `grpc-timeout`, and a tonic body as the API's body, ended at the deadline.

mod codec;
mod convert;
mod deadline;
mod events;
mod offers_page;
pub mod pb;
mod registry;
mod services;

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response};

use super::call::Access;
use super::{Api, Body, ConnCtx, respond};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::ratelimit::gcra::Decision;
use crate::types::ip::IpKey;

pub use registry::Registry;

/// One gRPC method: its path (also its `route` metric label), who may call it, and whether it
/// changes something (a `read` key is refused it).
pub struct Method {
    pub path: &'static str,
    /// What it is in REST (the docs' table).
    pub rest: &'static str,
    pub access: Access,
    pub changes: bool,
    /// The per-IP tier applies (not to health checks, like REST's probes).
    pub rate_limited: bool,
}

const fn user(path: &'static str, rest: &'static str, changes: bool) -> Method {
    Method {
        path,
        rest,
        access: Access::User,
        changes,
        rate_limited: true,
    }
}

const fn public(path: &'static str, rest: &'static str, rate_limited: bool) -> Method {
    Method {
        path,
        rest,
        access: Access::Public,
        changes: false,
        rate_limited,
    }
}

/// Every gRPC method served, declared once: the docs' table and the metric labels come from it.
pub static METHODS: &[Method] = &[
    user(
        "/gpuproxy.v1.OffersService/SearchOffers",
        "GET /v1/offers",
        false,
    ),
    user(
        "/gpuproxy.v1.InstancesService/RentInstance",
        "POST /v1/instances",
        true,
    ),
    user(
        "/gpuproxy.v1.InstancesService/GetInstance",
        "GET /v1/instances/{id}",
        false,
    ),
    user(
        "/gpuproxy.v1.InstancesService/ListInstances",
        "GET /v1/instances",
        false,
    ),
    user(
        "/gpuproxy.v1.InstancesService/DestroyInstance",
        "DELETE /v1/instances/{id}",
        true,
    ),
    user(
        "/gpuproxy.v1.InstancesService/ExtendInstance",
        "POST /v1/instances/{id}/extend",
        true,
    ),
    user(
        "/gpuproxy.v1.InstancesService/StopInstance",
        "POST /v1/instances/{id}/stop",
        true,
    ),
    user(
        "/gpuproxy.v1.InstancesService/StartInstance",
        "POST /v1/instances/{id}/start",
        true,
    ),
    user(
        "/gpuproxy.v1.EventsService/StreamEvents",
        "GET /v1/events",
        false,
    ),
    user(
        "/gpuproxy.v1.AccountService/GetAccount",
        "GET /v1/account",
        false,
    ),
    user("/gpuproxy.v1.UsageService/GetUsage", "GET /v1/usage", false),
    user(
        "/gpuproxy.v1.CommandsService/RunCommand",
        "POST /v1/instances/{id}/commands",
        true,
    ),
    user(
        "/gpuproxy.v1.CommandsService/GetCommand",
        "GET /v1/instances/{id}/commands/{command_id}",
        false,
    ),
    user(
        "/gpuproxy.v1.CommandsService/ListCommands",
        "GET /v1/instances/{id}/commands",
        false,
    ),
    user(
        "/gpuproxy.v1.SshKeysService/CreateSshKey",
        "POST /v1/ssh-keys",
        true,
    ),
    user(
        "/gpuproxy.v1.SshKeysService/ListSshKeys",
        "GET /v1/ssh-keys",
        false,
    ),
    user(
        "/gpuproxy.v1.SshKeysService/GetSshKey",
        "GET /v1/ssh-keys/{id}",
        false,
    ),
    user(
        "/gpuproxy.v1.SshKeysService/DeleteSshKey",
        "DELETE /v1/ssh-keys/{id}",
        true,
    ),
    user(
        "/gpuproxy.v1.VolumesService/ListVolumeOffers",
        "GET /v1/volume-offers",
        false,
    ),
    user(
        "/gpuproxy.v1.VolumesService/CreateVolume",
        "POST /v1/volumes",
        true,
    ),
    user(
        "/gpuproxy.v1.VolumesService/ListVolumes",
        "GET /v1/volumes",
        false,
    ),
    user(
        "/gpuproxy.v1.VolumesService/GetVolume",
        "GET /v1/volumes/{id}",
        false,
    ),
    user(
        "/gpuproxy.v1.VolumesService/DeleteVolume",
        "DELETE /v1/volumes/{id}",
        true,
    ),
    user(
        "/gpuproxy.v1.WebhooksService/CreateWebhook",
        "POST /v1/webhooks",
        true,
    ),
    user(
        "/gpuproxy.v1.WebhooksService/ListWebhooks",
        "GET /v1/webhooks",
        false,
    ),
    user(
        "/gpuproxy.v1.WebhooksService/GetWebhook",
        "GET /v1/webhooks/{id}",
        false,
    ),
    user(
        "/gpuproxy.v1.WebhooksService/DeleteWebhook",
        "DELETE /v1/webhooks/{id}",
        true,
    ),
    user(
        "/gpuproxy.v1.WebhooksService/EnableWebhook",
        "POST /v1/webhooks/{id}/enable",
        true,
    ),
    user(
        "/gpuproxy.v1.WebhooksService/ListWebhookDeliveries",
        "GET /v1/webhooks/{id}/deliveries",
        false,
    ),
    user(
        "/gpuproxy.v1.WatchesService/CreateWatch",
        "POST /v1/watches",
        true,
    ),
    user(
        "/gpuproxy.v1.WatchesService/ListWatches",
        "GET /v1/watches",
        false,
    ),
    user(
        "/gpuproxy.v1.WatchesService/GetWatch",
        "GET /v1/watches/{id}",
        false,
    ),
    user(
        "/gpuproxy.v1.WatchesService/DeleteWatch",
        "DELETE /v1/watches/{id}",
        true,
    ),
    public("/grpc.health.v1.Health/Check", "GET /ready", false),
    public("/grpc.health.v1.Health/Watch", "GET /ready", false),
    public("/grpc.health.v1.Health/List", "GET /ready", false),
    public(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "GET /openapi.json",
        true,
    ),
    public(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "GET /openapi.json",
        true,
    ),
];

/// docs/grpc.md's table of methods, from [`METHODS`].
pub fn docs_table() -> String {
    let mut out =
        String::from("| Method | REST | Credentials | A `read` key |\n|---|---|---|---|\n");
    for m in METHODS {
        let creds = match m.access {
            Access::Public if m.rate_limited => "none (per-IP limit)",
            Access::Public => "none",
            _ => "API key or token",
        };
        let read = match (m.access, m.changes) {
            (Access::Public, _) => "",
            (_, true) => "PERMISSION_DENIED",
            (_, false) => "allowed",
        };
        out += &format!("| `{}` | `{}` | {creds} | {read} |\n", m.path, m.rest);
    }
    out
}

/// The `route` labels of the gRPC request metrics: each method, then one for unknown methods.
pub fn metric_labels() -> Vec<&'static str> {
    let mut v: Vec<_> = METHODS.iter().map(|m| m.path).collect();
    v.push("grpc_unmatched");
    v
}

/// A gRPC request: HTTP/2 with a gRPC content type (`application/grpc`, `+proto`, …).
pub fn is_grpc(req: &Request<Incoming>) -> bool {
    req.version() == hyper::Version::HTTP_2
        && req
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// What a service method finds in its request's extensions: the API and the caller (`None` on
/// public methods), put there once the request is admitted.
#[derive(Clone)]
pub struct Caller {
    pub api: Arc<Api>,
    pub principal: Option<Principal>,
    pub request_id: String,
}

/// Serves one gRPC request (see the module header).
pub async fn handle(
    state: Arc<Api>,
    ctx: ConnCtx,
    mut req: Request<Incoming>,
    request_id: String,
) -> Response<Body> {
    let start = Instant::now();
    let slot = METHODS.iter().position(|m| m.path == req.uri().path());
    let access_path = state
        .config
        .log
        .access_log
        .then(|| req.uri().path().to_owned());
    let admitted = match slot {
        None => Err(tonic::Status::unimplemented(format!(
            "no such method: {}",
            crate::error::truncate(req.uri().path(), 128)
        ))),
        Some(i) => admit(&state, ctx, &METHODS[i], &req)
            .await
            .and_then(|p| deadline::of(req.headers()).map(|d| (p, d)))
            .map_err(|e| respond::grpc_status(&e, &request_id)),
    };
    let resp = match admitted {
        Err(status) => deadline::status_response(status),
        Ok((principal, deadline)) => {
            req.extensions_mut().insert(Caller {
                api: state.clone(),
                principal,
                request_id: request_id.clone(),
            });
            state.grpc.call(req, deadline).await
        }
    };
    let code = deadline::head_code(&resp);
    let status = http_status_of(code);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    state
        .grpc_metrics
        .record(slot.unwrap_or(METHODS.len()), status, ms);
    if let Some(path) = access_path {
        tracing::info!(
            target: "access",
            request_id = %request_id,
            method = "POST",
            path = %path,
            status = status,
            grpc_status = code as i32,
            duration_ms = ms,
            client = %ctx.peer,
            proto = ctx.proto.as_str(),
        );
    }
    resp
}

/// REST's admission steps for one method: the per-IP tier, credentials, scope, the caller's
/// rate limit. The caller, on methods that are not public.
async fn admit(
    state: &Api,
    ctx: ConnCtx,
    m: &Method,
    req: &Request<Incoming>,
) -> Result<Option<Principal>> {
    if m.rate_limited {
        let key = IpKey::new(ctx.peer.ip(), state.config.connections.ipv6_prefix_len);
        if let Some(v) = state.limits.check_ip(key)
            && matches!(v.decision, Decision::Limited { .. })
        {
            return Err(Error::rate_limited(v));
        }
    }
    if m.access == Access::Public {
        return Ok(None);
    }
    let p = state.auth.authenticate(req.headers()).await?;
    if m.changes {
        p.may_change()?;
    }
    if let Some(v) = state.limits.check_caller(&p.key)
        && matches!(v.decision, Decision::Limited { .. })
    {
        return Err(Error::rate_limited(v));
    }
    Ok(Some(p))
}

/// The HTTP status a gRPC code stands for in the request metrics and the access log (the
/// inverse of `respond::grpc_code`), so REST's dashboards and alerts count gRPC failures too.
fn http_status_of(code: tonic::Code) -> u16 {
    use tonic::Code;
    match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => 409,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}
