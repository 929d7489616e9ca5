//! Which server answers which gRPC service: ours (generated from the protos, over the
//! [`Carrier`]), the standard health service (`grpc.health.v1.Health`: SERVING while the
//! daemon's phase is ready, NOT_SERVING starting and draining) and server reflection (v1 and
//! v1alpha, so grpcurl-style tools work without the protos).
//!
//! The generated servers are tower services that are always ready, so a call is a clone and a
//! `call` (no `poll_ready`).

use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::super::Body;
use super::pb::account_service_server::AccountServiceServer;
use super::pb::commands_service_server::CommandsServiceServer;
use super::pb::events_service_server::EventsServiceServer;
use super::pb::instances_service_server::InstancesServiceServer;
use super::pb::offers_service_server::OffersServiceServer;
use super::pb::ssh_keys_service_server::SshKeysServiceServer;
use super::pb::usage_service_server::UsageServiceServer;
use super::pb::volumes_service_server::VolumesServiceServer;
use super::pb::watches_service_server::WatchesServiceServer;
use super::pb::webhooks_service_server::WebhooksServiceServer;
use super::services::Carrier;
use crate::metrics::GRPC_CALLS_IN_FLIGHT;
use crate::state::{AppState, Phase};

type Answer = BoxFuture<'static, Result<Response<tonic::body::Body>, Infallible>>;
type Call = Box<dyn Fn(Request<Incoming>) -> Answer + Send + Sync>;

/// The gRPC services, by their full name.
pub struct Registry {
    services: Vec<(&'static str, Call)>,
    health: HealthReporter,
}

fn entry<S>(svc: S) -> (&'static str, Call)
where
    S: Service<Request<Incoming>, Response = Response<tonic::body::Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    (
        S::NAME,
        Box::new(move |req| {
            let mut s = svc.clone();
            Box::pin(s.call(req))
        }),
    )
}

impl Registry {
    /// `max_message`: the largest request message (the REST body cap, `server.max_body_bytes`).
    pub fn new(max_message: usize) -> Registry {
        let (health, health_server) = tonic_health::server::health_reporter();
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(super::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let v1 = reflection()
            .build_v1()
            .expect("the protos' descriptors load");
        let v1alpha = reflection()
            .build_v1alpha()
            .expect("the protos' descriptors load");
        Registry {
            services: vec![
                entry(OffersServiceServer::new(Carrier).max_decoding_message_size(max_message)),
                entry(InstancesServiceServer::new(Carrier).max_decoding_message_size(max_message)),
                entry(EventsServiceServer::new(Carrier).max_decoding_message_size(max_message)),
                entry(AccountServiceServer::new(Carrier).max_decoding_message_size(max_message)),
                entry(UsageServiceServer::new(Carrier).max_decoding_message_size(max_message)),
                entry(CommandsServiceServer::new(Carrier).max_decoding_message_size(max_message)),
                entry(SshKeysServiceServer::new(Carrier).max_decoding_message_size(max_message)),
                entry(VolumesServiceServer::new(Carrier).max_decoding_message_size(max_message)),
                entry(WebhooksServiceServer::new(Carrier).max_decoding_message_size(max_message)),
                entry(WatchesServiceServer::new(Carrier).max_decoding_message_size(max_message)),
                entry(health_server),
                entry(v1),
                entry(v1alpha),
            ],
            health,
        }
    }

    /// Answers `req` with the server of its service, under `deadline`; an unknown service is
    /// UNIMPLEMENTED.
    pub async fn call(
        &self,
        req: Request<Incoming>,
        deadline: Option<tokio::time::Instant>,
    ) -> Response<Body> {
        let name = req.uri().path().trim_start_matches('/');
        let name = name.split_once('/').map_or(name, |(s, _)| s);
        match self.services.iter().find(|(n, _)| *n == name) {
            None => super::deadline::status_response(tonic::Status::unimplemented(format!(
                "no such service: {}",
                crate::error::truncate(name, 128)
            ))),
            Some((_, call)) => {
                let answer = call(req);
                let running = InFlight::start();
                super::deadline::run(deadline, async move {
                    let _running = running;
                    answer.await.unwrap_or_else(|never| match never {})
                })
                .await
            }
        }
    }

    /// Keeps the health service's statuses on the daemon's phase, while `app` lives.
    pub fn follow_phase(&self, app: &Arc<AppState>) {
        let (reporter, app): (HealthReporter, Weak<AppState>) =
            (self.health.clone(), Arc::downgrade(app));
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut last = None;
            loop {
                let Some(app) = app.upgrade() else { return };
                let status = match app.phase() {
                    Phase::Ready => ServingStatus::Serving,
                    _ => ServingStatus::NotServing,
                };
                drop(app);
                if last != Some(status) {
                    for name in health_names() {
                        reporter.set_service_status(name, status).await;
                    }
                    last = Some(status);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
}

/// A call counted in `gpuproxy_grpc_calls_in_flight` until dropped (answered, or cut at its
/// deadline). The gauge's handle is looked up once (a `gauge!` per call is a registry lookup).
struct InFlight(&'static metrics::Gauge);

impl InFlight {
    fn start() -> InFlight {
        static GAUGE: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();
        let g = GAUGE.get_or_init(|| metrics::gauge!(GRPC_CALLS_IN_FLIGHT));
        g.increment(1.0);
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The names the health service answers for: the whole server (`""`) and each of our services,
/// taken from the method table (`grpc::METHODS`).
fn health_names() -> Vec<&'static str> {
    let mut names = vec![""];
    for m in super::METHODS {
        let service = m
            .path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        if service.starts_with("gpuproxy.") && !names.contains(&service) {
            names.push(service);
        }
    }
    names
}
