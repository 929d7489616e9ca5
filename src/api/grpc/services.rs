//! The gRPC services over the typed services (`service::*`): each method reads its message into
//! the service's input (`convert`), calls the operation with the caller admitted by
//! `grpc::handle` (found in the request's extensions), and writes the view back as a message.
//! An idempotent operation's answer is the recorded one, so a replayed refusal comes back as
//! the status it was.

use serde_json::Value;
use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use super::{Caller, respond};
use crate::auth::{Principal, Via};
use crate::error::Error;
use crate::service::instances::{self, Answer, Extend};
use crate::service::offers::{self, Filters};
use crate::service::{commands, sshkeys, volumes, watches, webhooks};

/// The one implementation of every generated service trait (zero-sized: what a call needs
/// comes in its request, [`Caller`]).
#[derive(Debug, Clone, Copy)]
pub struct Carrier;

/// The admitted caller of a request, and its principal.
pub(super) fn caller<T>(r: &Request<T>) -> Result<(Caller, Principal), Status> {
    let c = r
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("a call that was not admitted"))?;
    let p = c
        .principal
        .clone()
        .ok_or_else(|| Status::internal("a method without a caller"))?;
    Ok((c, p))
}

impl Caller {
    /// An error as this call's status.
    pub fn status(&self, e: &Error) -> Status {
        respond::grpc_status(e, &self.request_id)
    }

    /// An idempotent operation's recorded answer: the instance and whether it was replayed, or
    /// the refusal it recorded.
    fn answered(&self, a: &Answer) -> Result<(pb::Instance, bool), Status> {
        let v: Value =
            serde_json::from_str(&a.body).map_err(|e| self.status(&Error::internal(e)))?;
        if a.status >= 400 {
            let e = &v["error"];
            let code = e["code"].as_str().unwrap_or("internal");
            return Err(respond::status_with_info(
                respond::grpc_code(a.status, code),
                e["message"].as_str().unwrap_or(""),
                code,
                &self.request_id,
                e.get("details"),
                None,
            ));
        }
        Ok((convert::instance(&v), a.replayed))
    }
}

fn key(k: &Option<String>) -> Option<String> {
    k.clone()
}

#[tonic::async_trait]
impl pb::offers_service_server::OffersService for Carrier {
    async fn search_offers(
        &self,
        req: Request<pb::SearchOffersRequest>,
    ) -> Result<Response<super::offers_page::SearchOffersResponse>, Status> {
        let (c, _) = caller(&req)?;
        let api = &c.api;
        let q = convert::offers_query(req.get_ref()).map_err(|e| c.status(&e))?;
        let f = Filters::parse(Some(&q), &api.config.offers).map_err(|e| c.status(&e))?;
        let page = offers::search(api, &api.offer_pages, f)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(convert::offers_page(&page)))
    }
}

#[tonic::async_trait]
impl pb::instances_service_server::InstancesService for Carrier {
    async fn rent_instance(
        &self,
        req: Request<pb::RentInstanceRequest>,
    ) -> Result<Response<pb::RentInstanceResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.get_ref();
        let body = convert::rent_body(r).map_err(|e| c.status(&e))?;
        let a = instances::rent(&c.api, &p, key(&r.idempotency_key), &body)
            .await
            .map_err(|e| c.status(&e))?;
        let (instance, replayed) = c.answered(&a)?;
        Ok(Response::new(pb::RentInstanceResponse {
            instance: Some(instance),
            replayed,
        }))
    }

    async fn get_instance(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Result<Response<pb::GetInstanceResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = instances::get(&c.api, &p, &req.get_ref().id)
            .await
            .map_err(|e| c.status(&e))?;
        let instance = convert::instance_of(&v).map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::GetInstanceResponse {
            instance: Some(instance),
        }))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.get_ref();
        let q = crate::service::query::query(Some(&convert::list_query(r)))
            .map_err(|e| c.status(&e))?;
        let page = instances::list(&c.api, &p, q)
            .await
            .map_err(|e| c.status(&e))?;
        let instances = page
            .instances
            .iter()
            .map(convert::instance_of)
            .collect::<crate::error::Result<Vec<_>>>()
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::ListInstancesResponse {
            instances,
            next_cursor: page.next_cursor,
        }))
    }

    async fn destroy_instance(
        &self,
        req: Request<pb::DestroyInstanceRequest>,
    ) -> Result<Response<pb::DestroyInstanceResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.get_ref();
        let a = instances::destroy(&c.api, &p, &r.id, key(&r.idempotency_key))
            .await
            .map_err(|e| c.status(&e))?;
        let (instance, replayed) = c.answered(&a)?;
        Ok(Response::new(pb::DestroyInstanceResponse {
            instance: Some(instance),
            replayed,
        }))
    }

    async fn extend_instance(
        &self,
        req: Request<pb::ExtendInstanceRequest>,
    ) -> Result<Response<pb::ExtendInstanceResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.get_ref();
        if !(1..=8760).contains(&r.hours) {
            return Err(c.status(&Error::bad_request("invalid `hours`: 1 to 8760")));
        }
        let b = Extend { hours: r.hours };
        let a = instances::extend(&c.api, &p, &r.id, b, key(&r.idempotency_key))
            .await
            .map_err(|e| c.status(&e))?;
        let (instance, replayed) = c.answered(&a)?;
        Ok(Response::new(pb::ExtendInstanceResponse {
            instance: Some(instance),
            replayed,
        }))
    }

    async fn stop_instance(
        &self,
        req: Request<pb::StopInstanceRequest>,
    ) -> Result<Response<pb::StopInstanceResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.get_ref();
        let a = instances::set_running(&c.api, &p, &r.id, false, key(&r.idempotency_key))
            .await
            .map_err(|e| c.status(&e))?;
        let (instance, replayed) = c.answered(&a)?;
        Ok(Response::new(pb::StopInstanceResponse {
            instance: Some(instance),
            replayed,
        }))
    }

    async fn start_instance(
        &self,
        req: Request<pb::StartInstanceRequest>,
    ) -> Result<Response<pb::StartInstanceResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.get_ref();
        let a = instances::set_running(&c.api, &p, &r.id, true, key(&r.idempotency_key))
            .await
            .map_err(|e| c.status(&e))?;
        let (instance, replayed) = c.answered(&a)?;
        Ok(Response::new(pb::StartInstanceResponse {
            instance: Some(instance),
            replayed,
        }))
    }
}

#[tonic::async_trait]
impl pb::account_service_server::AccountService for Carrier {
    async fn get_account(
        &self,
        req: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let (_, p) = caller(&req)?;
        let k = &p.key;
        Ok(Response::new(pb::GetAccountResponse {
            account_id: k.account_id,
            name: k.account_name.clone(),
            status: if k.account_active {
                "active"
            } else {
                "suspended"
            }
            .to_owned(),
            daily_budget_usd: convert::usd(k.account_daily_budget_usd),
            max_instances: k.account_max_instances,
            key_public_id: k.public_id.clone(),
            scopes: k.scopes.clone(),
            via: match p.via {
                Via::ApiKey => "api_key",
                Via::Jwt => "jwt",
            }
            .to_owned(),
        }))
    }
}

#[tonic::async_trait]
impl pb::usage_service_server::UsageService for Carrier {
    async fn get_usage(
        &self,
        req: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let (c, p) = caller(&req)?;
        let q = convert::usage_query(req.get_ref());
        let q = crate::service::query::query(Some(&q)).map_err(|e| c.status(&e))?;
        let r = crate::service::usage::mine(&c.api, &p, q)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(convert::usage(&r)))
    }
}

#[tonic::async_trait]
impl pb::commands_service_server::CommandsService for Carrier {
    async fn run_command(
        &self,
        req: Request<pb::RunCommandRequest>,
    ) -> Result<Response<pb::RunCommandResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.get_ref();
        let body = convert::command_body(r);
        let (v, replayed) = commands::create(
            &c.api,
            &p,
            &r.instance_id,
            r.idempotency_key.as_deref(),
            &body,
        )
        .await
        .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::RunCommandResponse {
            command: Some(convert::command(&v)),
            replayed,
        }))
    }

    async fn get_command(
        &self,
        req: Request<pb::GetCommandRequest>,
    ) -> Result<Response<pb::GetCommandResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.get_ref();
        let v = commands::get(&c.api, &p, &r.instance_id, &r.command_id)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::GetCommandResponse {
            command: Some(convert::command(&v)),
        }))
    }

    async fn list_commands(
        &self,
        req: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.get_ref();
        let q = crate::service::query::arguments(convert::commands_page(r))
            .map_err(|e| c.status(&e))?;
        let page = commands::list(&c.api, &p, &r.instance_id, q)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::ListCommandsResponse {
            commands: page.commands.iter().map(convert::command).collect(),
            next_before: page.next_before,
        }))
    }
}

#[tonic::async_trait]
impl pb::ssh_keys_service_server::SshKeysService for Carrier {
    async fn create_ssh_key(
        &self,
        req: Request<pb::CreateSshKeyRequest>,
    ) -> Result<Response<pb::CreateSshKeyResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.into_inner();
        let k = crate::rentals::sshkeys::NewKey {
            name: r.name,
            public_key: r.public_key,
        };
        let v = sshkeys::create(&c.api, &p, k)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::CreateSshKeyResponse {
            ssh_key: Some(convert::ssh_key(&v)),
        }))
    }

    async fn list_ssh_keys(
        &self,
        req: Request<pb::ListSshKeysRequest>,
    ) -> Result<Response<pb::ListSshKeysResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = sshkeys::list(&c.api, &p).await.map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::ListSshKeysResponse {
            ssh_keys: v.ssh_keys.iter().map(convert::ssh_key).collect(),
        }))
    }

    async fn get_ssh_key(
        &self,
        req: Request<pb::GetSshKeyRequest>,
    ) -> Result<Response<pb::GetSshKeyResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = sshkeys::get(&c.api, &p, &req.get_ref().id)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::GetSshKeyResponse {
            ssh_key: Some(convert::ssh_key(&v)),
        }))
    }

    async fn delete_ssh_key(
        &self,
        req: Request<pb::DeleteSshKeyRequest>,
    ) -> Result<Response<pb::DeleteSshKeyResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = sshkeys::delete(&c.api, &p, &req.get_ref().id)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::DeleteSshKeyResponse {
            ssh_key: Some(convert::ssh_key(&v)),
        }))
    }
}

#[tonic::async_trait]
impl pb::volumes_service_server::VolumesService for Carrier {
    async fn list_volume_offers(
        &self,
        req: Request<pb::ListVolumeOffersRequest>,
    ) -> Result<Response<pb::ListVolumeOffersResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.into_inner();
        let q = volumes::VolumeOffersQuery {
            provider: r.provider,
            size_gb: r.size_gb,
        };
        let v = volumes::offers(&c.api, &p, q)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::ListVolumeOffersResponse {
            offers: v.offers.iter().map(convert::volume_offer).collect(),
        }))
    }

    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.into_inner();
        let body = crate::rentals::volumes::NewVolume {
            offer_id: r.offer_id,
            size_gb: r.size_gb,
            name: r.name,
        };
        let v = volumes::create(&c.api, &p, body)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(convert::volume(&v)),
        }))
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = volumes::list(&c.api, &p).await.map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::ListVolumesResponse {
            volumes: v.volumes.iter().map(convert::volume).collect(),
        }))
    }

    async fn get_volume(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::GetVolumeResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = volumes::get(&c.api, &p, &req.get_ref().id)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::GetVolumeResponse {
            volume: Some(convert::volume(&v)),
        }))
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = volumes::delete(&c.api, &p, &req.get_ref().id)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::DeleteVolumeResponse {
            volume: Some(convert::volume(&v)),
        }))
    }
}

#[tonic::async_trait]
impl pb::webhooks_service_server::WebhooksService for Carrier {
    async fn create_webhook(
        &self,
        req: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.into_inner();
        let new = crate::events::webhook::NewWebhook {
            url: r.url,
            types: r.types,
        };
        let v = webhooks::create(&c.api, &p, new)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::CreateWebhookResponse {
            webhook: Some(convert::webhook(&v)),
        }))
    }

    async fn list_webhooks(
        &self,
        req: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = webhooks::list(&c.api, &p).await.map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: v.webhooks.iter().map(convert::webhook).collect(),
        }))
    }

    async fn get_webhook(
        &self,
        req: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::GetWebhookResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = webhooks::get(&c.api, &p, &req.get_ref().id)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::GetWebhookResponse {
            webhook: Some(convert::webhook(&v)),
        }))
    }

    async fn delete_webhook(
        &self,
        req: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = webhooks::delete(&c.api, &p, &req.get_ref().id)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::DeleteWebhookResponse {
            webhook: Some(convert::webhook(&v)),
        }))
    }

    async fn enable_webhook(
        &self,
        req: Request<pb::EnableWebhookRequest>,
    ) -> Result<Response<pb::EnableWebhookResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = webhooks::enable(&c.api, &p, &req.get_ref().id)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::EnableWebhookResponse {
            webhook: Some(convert::webhook(&v)),
        }))
    }

    async fn list_webhook_deliveries(
        &self,
        req: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let (c, p) = caller(&req)?;
        let r = req.get_ref();
        let q = crate::service::query::arguments(convert::deliveries_page(r))
            .map_err(|e| c.status(&e))?;
        let page = webhooks::deliveries(&c.api, &p, &r.id, q)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries: page.deliveries.iter().map(convert::delivery).collect(),
            next_before: page.next_before,
        }))
    }
}

#[tonic::async_trait]
impl pb::watches_service_server::WatchesService for Carrier {
    async fn create_watch(
        &self,
        req: Request<pb::CreateWatchRequest>,
    ) -> Result<Response<pb::CreateWatchResponse>, Status> {
        let (c, p) = caller(&req)?;
        let new = convert::watch_body(req.get_ref())
            .and_then(|b| crate::service::body::parse(&b))
            .map_err(|e| c.status(&e))?
            .ok_or_else(|| Status::internal("an empty watch"))?;
        let v = watches::create(&c.api, &p, new)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::CreateWatchResponse {
            watch: Some(convert::watch(&v)),
        }))
    }

    async fn list_watches(
        &self,
        req: Request<pb::ListWatchesRequest>,
    ) -> Result<Response<pb::ListWatchesResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = watches::list(&c.api, &p).await.map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::ListWatchesResponse {
            watches: v.watches.iter().map(convert::watch).collect(),
        }))
    }

    async fn get_watch(
        &self,
        req: Request<pb::GetWatchRequest>,
    ) -> Result<Response<pb::GetWatchResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = watches::get(&c.api, &p, &req.get_ref().id)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::GetWatchResponse {
            watch: Some(convert::watch(&v)),
        }))
    }

    async fn delete_watch(
        &self,
        req: Request<pb::DeleteWatchRequest>,
    ) -> Result<Response<pb::DeleteWatchResponse>, Status> {
        let (c, p) = caller(&req)?;
        let v = watches::delete(&c.api, &p, &req.get_ref().id)
            .await
            .map_err(|e| c.status(&e))?;
        Ok(Response::new(pb::DeleteWatchResponse {
            watch: Some(convert::watch(&v)),
        }))
    }
}
