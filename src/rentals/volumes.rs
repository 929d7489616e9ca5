//! Volumes: disk on one machine that outlives its instances (Vast; io.net documents none and is
//! refused with a 400). Created from a volume offer (`GET /v1/volume-offers`), billed by the
//! GB-month from creation to deletion (`ledger::volumes`: every budget and `/v1/usage` count
//! it), attached at rent (`volume: {id, mount_path}` on `POST /v1/instances`, an offer on its
//! machine only, one open instance at a time), deleted only by its owner (409 while an instance
//! uses it). The reconciler settles volumes whose create answer named no id (Vast's does not:
//! the volume is found by the name we gave it, our id) and never deletes one; a volume the
//! provider's own list no longer has is ended in the ledger (`volume.deleted`).

use serde::{Deserialize, Serialize};

use super::ledger::{self, VolumeRow};
pub use super::mounts::VolumeAttach;
use super::{Rentals, Renter, new_id};
use crate::error::{Error, Kind, Refusal, Result};
use crate::providers::{ProviderId, UpstreamError, VolumeMount, VolumeOffer, upstream_error};
use crate::types::schema::NO_NUL;

/// `POST /v1/volumes`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[schemars(rename = "NewVolume")]
#[serde(deny_unknown_fields)]
pub struct NewVolume {
    /// From `GET /v1/volume-offers`: `vastai:<volume offer id>`.
    #[schemars(pattern(r"^vastai:[0-9]{1,18}$"))]
    pub offer_id: String,
    /// GB, at most the offer's free disk.
    #[schemars(range(min = 1, max = 100_000))]
    pub size_gb: u32,
    #[schemars(length(max = 256), pattern(NO_NUL))]
    pub name: Option<String>,
}

fn provider_of(offer_id: &str) -> Result<(ProviderId, &str)> {
    offer_id
        .split_once(':')
        .and_then(|(p, l)| Some((ProviderId::parse(p)?, l)))
        .filter(|(_, l)| !l.is_empty() && l.len() <= 18 && l.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            Error::bad_request("invalid `offer_id`: `vastai:<id>` from GET /v1/volume-offers")
        })
}

impl Rentals {
    /// The provider, if it has volumes (`field` names what chose it, for the 400).
    fn volume_provider(
        &self,
        p: ProviderId,
        field: &str,
    ) -> Result<std::sync::Arc<dyn crate::providers::Provider>> {
        let provider = self.provider(p)?.clone();
        if !provider.has_volumes() {
            return Err(Error::bad_request(format!(
                "invalid {field}: {} has no volumes (Vast has)",
                p.as_str()
            )));
        }
        Ok(provider)
    }

    /// `GET /v1/volume-offers`: the provider's volume offers with at least `size_gb` free.
    pub async fn volume_offers(
        &self,
        who: &Renter,
        p: ProviderId,
        size_gb: u32,
    ) -> Result<Vec<VolumeOffer>> {
        let provider = self.volume_provider(p, "query parameter `provider`")?;
        self.upstream_call(who.account_id)?;
        provider
            .volume_offers(size_gb)
            .await
            .map_err(|e| upstream_error(p, &e))
    }

    /// `POST /v1/volumes`: checked against every budget and recorded before the provider is
    /// asked; found again by its name (our id).
    pub async fn create_volume(&self, who: Renter, body: &NewVolume) -> Result<VolumeRow> {
        let (p, local) = provider_of(&body.offer_id)?;
        if !(1..=100_000).contains(&body.size_gb) {
            return Err(Error::bad_request(
                "invalid `size_gb`: between 1 and 100000",
            ));
        }
        if body
            .name
            .as_ref()
            .is_some_and(|n| n.chars().count() > 256 || n.contains('\0'))
        {
            return Err(Error::bad_request("invalid `name`: at most 256 characters"));
        }
        who.policy.provider(p.as_str())?;
        let provider = self.volume_provider(p, "`offer_id`")?;
        let _turn = self.slots.acquire(who.account_id).await;
        self.upstream_call(who.account_id)?;
        let offer = provider
            .volume_offers(body.size_gb)
            .await
            .map_err(|e| upstream_error(p, &e))?
            .into_iter()
            .find(|o| o.id == body.offer_id)
            .ok_or_else(|| {
                Error::refused(
                    Refusal::OfferUnavailable,
                    format!(
                        "volume offer {} is gone or has less than {} GB free",
                        body.offer_id, body.size_gb
                    ),
                    Some(serde_json::json!({"offer_id": body.offer_id})),
                )
            })?;
        let id = new_id();
        let price = (offer.price_per_gb_month * 1e6).round() as i64;
        let row = ledger::reserve_volume(
            &self.db,
            &ledger::NewVolume {
                id: &id,
                account_id: who.account_id,
                api_key_id: who.key_id,
                provider: p.as_str(),
                offer_id: &body.offer_id,
                machine_id: &offer.machine_id,
                name: body.name.as_deref(),
                size_gb: body.size_gb as i32,
                price_micros_per_gb_month: price,
                budget_window_hours: self.config.rentals.budget_window_hours.get(),
            },
        )
        .await?;
        if let Err(e) = provider.create_volume(local, body.size_gb, &id).await {
            if !e.may_have_happened() {
                ledger::end_volume(&self.db, &row, true, &format!("refused: {e}")).await?;
                return Err(upstream_error(p, &e));
            }
            // it may exist: the reconciler finds it by name, or ends it
            tracing::warn!(volume = %id, error = %e, "a volume create's answer was lost; the reconciler settles it");
            return ledger::get_volume(&self.db, who.account_id, &id).await;
        }
        self.find_volume(&row).await?;
        ledger::get_volume(&self.db, who.account_id, &id).await
    }

    /// Looks for a volume still `creating` in its provider's list (by our id as its name).
    async fn find_volume(&self, row: &VolumeRow) -> Result<bool> {
        let Some(p) = ProviderId::parse(&row.provider) else {
            return Ok(false);
        };
        let provider = self.provider(p)?.clone();
        let listed = match provider.list_volumes().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(volume = %row.id, error = %e, "cannot list volumes; the reconciler settles it");
                return Ok(false);
            }
        };
        match listed.iter().find(|v| v.name.as_deref() == Some(&row.id)) {
            Some(v) => {
                ledger::volume_found(&self.db, &row.id, &v.provider_id).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// `DELETE /v1/volumes/{id}`: 409 `volume_in_use` while an open instance uses it; ended in
    /// the ledger once the provider deleted it (or no longer has it).
    pub async fn delete_volume(&self, account_id: i64, id: &str) -> Result<VolumeRow> {
        let _turn = self.slots.acquire(account_id).await;
        let row = ledger::get_volume(&self.db, account_id, id).await?;
        match row.status.as_str() {
            "deleted" | "failed" => return Ok(row),
            "creating" if !self.find_volume(&row).await? => {
                return Err(Error::refused(
                    Refusal::VolumeNotReady,
                    format!("volume {id} is still being created; delete it once it is available"),
                    Some(serde_json::json!({"volume_id": id, "status": row.status})),
                ));
            }
            _ => {}
        }
        let row = ledger::get_volume(&self.db, account_id, id).await?;
        if let Some(by) = &row.attached_to {
            return Err(Error::refused(
                Refusal::VolumeInUse,
                format!("volume {id} is used by instance {by}: destroy it first"),
                Some(serde_json::json!({"volume_id": id, "instance_id": by})),
            ));
        }
        let p = ProviderId::parse(&row.provider)
            .ok_or_else(|| Error::internal(std::io::Error::other("bad provider in ledger")))?;
        let provider = self.provider(p)?.clone();
        let pid = row.provider_volume_id.clone().unwrap_or_default();
        self.upstream_call(account_id)?;
        match provider.delete_volume(&pid).await {
            Ok(_) => {}
            Err(UpstreamError::Status {
                status: 400,
                detail,
            }) if detail.contains("in_use") => {
                return Err(Error::refused(
                    Refusal::VolumeInUse,
                    format!("{}: the volume is still in use there", p.as_str()),
                    Some(serde_json::json!({"volume_id": id})),
                ));
            }
            Err(e) => return Err(upstream_error(p, &e)),
        }
        ledger::end_volume(&self.db, &row, false, "deleted by its owner").await?;
        ledger::get_volume(&self.db, account_id, id).await
    }

    /// The volume a rental attaches, checked: the caller's, available, on the offer's provider
    /// and (when the offer says) machine, and free (checked again under the budget lock).
    pub(super) async fn volume_for_rental(
        &self,
        account_id: i64,
        attach: &VolumeAttach,
        provider: ProviderId,
    ) -> Result<VolumeRow> {
        attach.check()?;
        let v = ledger::get_volume(&self.db, account_id, &attach.id)
            .await
            .map_err(|e| match e.kind {
                Kind::NotFound => Error::bad_request(format!(
                    "invalid `volume.id`: no volume {} of yours",
                    crate::error::truncate(&attach.id, 64)
                )),
                _ => e,
            })?;
        if v.provider != provider.as_str() {
            return Err(Error::bad_request(format!(
                "invalid `volume`: volume {} is on {}, the offer on {}",
                v.id,
                v.provider,
                provider.as_str()
            )));
        }
        if v.status != "available" && !(v.status == "creating" && self.find_volume(&v).await?) {
            return Err(Error::refused(
                Refusal::VolumeNotReady,
                format!("volume {} is {}", v.id, v.status),
                Some(serde_json::json!({"volume_id": v.id, "status": v.status})),
            ));
        }
        let v = ledger::get_volume(&self.db, account_id, &attach.id).await?;
        if let Some(by) = &v.attached_to {
            return Err(Error::refused(
                Refusal::VolumeInUse,
                format!("volume {} is used by instance {by}", v.id),
                Some(serde_json::json!({"volume_id": v.id, "instance_id": by})),
            ));
        }
        Ok(v)
    }

    /// What the provider is sent for an attached volume.
    pub(super) fn mount(v: &VolumeRow, attach: &VolumeAttach) -> VolumeMount {
        VolumeMount {
            provider_volume_id: v.provider_volume_id.clone().unwrap_or_default(),
            mount_path: attach.mount_path.clone(),
        }
    }

    /// The reconciler's part for provider `p`: volumes still `creating` are found by name, or
    /// ended as never made once older than `rentals.intent_timeout_ms`; an available one the
    /// provider's list no longer has is ended. Nothing is ever deleted at the provider here.
    pub(super) async fn reconcile_volumes(&self, p: &dyn crate::providers::Provider) -> Result<()> {
        let name = p.id().as_str();
        let rows = ledger::live_volumes(&self.db, name).await?;
        if rows.is_empty() || !p.has_volumes() {
            return Ok(());
        }
        let listed = match p.list_volumes().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(provider = name, error = %e, "cannot list volumes; nothing concluded");
                return Ok(());
            }
        };
        let timeout = self.config.rentals.intent_timeout_ms.ms() as f64 / 1000.0;
        for v in &rows {
            let by_name = listed.iter().find(|x| x.name.as_deref() == Some(&v.id));
            let by_id = v
                .provider_volume_id
                .as_deref()
                .and_then(|pid| listed.iter().find(|x| x.provider_id == pid));
            match (v.status.as_str(), by_name, by_id) {
                ("creating", Some(found), _) => {
                    ledger::volume_found(&self.db, &v.id, &found.provider_id).await?;
                }
                ("creating", None, _) if super::ending::now() - v.created_at > timeout => {
                    ledger::end_volume(&self.db, v, true, "the provider never listed it").await?;
                }
                ("available", _, None) if by_name.is_none() => {
                    tracing::warn!(volume = %v.id, provider = name, "the provider no longer lists a volume; ended in the ledger");
                    ledger::end_volume(&self.db, v, false, "the provider no longer has it").await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
