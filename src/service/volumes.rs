//! Volumes as typed operations: the provider's volume offers, and the caller's volumes (create,
//! list, get, delete). Another account's volume id is 404, like an unknown one.

use serde::{Deserialize, Serialize};

use super::time;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::providers::{ProviderId, VolumeOffer};
use crate::rentals::ledger::{self, VolumeRow};
use crate::rentals::volumes::NewVolume;
use crate::rentals::{Rentals, Renter};
use crate::state::AppState;

/// A volume as the API shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Volume")]
pub struct VolumeView {
    pub id: String,
    pub provider: String,
    /// The provider's id, once its list shows the volume.
    pub provider_volume_id: Option<String>,
    pub offer_id: String,
    /// The machine it lives on: only offers with this `machine_id` can attach it.
    pub machine_id: String,
    pub name: Option<String>,
    pub size_gb: i32,
    pub price_per_gb_month: f64,
    /// What it bills per hour, whatever its instances do (`size_gb × price_per_gb_month / 720`).
    pub price_per_hour: f64,
    /// `creating`, `available`, `deleted`, or `failed` (never made: it billed nothing).
    pub status: String,
    pub failure: Option<String>,
    pub created_at: Option<String>,
    pub deleted_at: Option<String>,
    /// The open instance using it.
    pub attached_to: Option<String>,
}

impl VolumeView {
    fn of(v: &VolumeRow) -> VolumeView {
        VolumeView {
            id: v.id.clone(),
            provider: v.provider.clone(),
            provider_volume_id: v.provider_volume_id.clone(),
            offer_id: v.offer_id.clone(),
            machine_id: v.machine_id.clone(),
            name: v.name.clone(),
            size_gb: v.size_gb,
            price_per_gb_month: v.price_micros_per_gb_month as f64 / 1e6,
            price_per_hour: (v.rate_per_hour * 1e6).round() / 1e6,
            status: v.status.clone(),
            failure: v.failure.clone(),
            created_at: time(Some(v.created_at)),
            deleted_at: time(v.deleted_at),
            attached_to: v.attached_to.clone(),
        }
    }
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct VolumeList {
    pub volumes: Vec<VolumeView>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct VolumeOfferList {
    pub offers: Vec<VolumeOffer>,
}

/// `GET /v1/volume-offers`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeOffersQuery {
    /// `vastai` (the default; io.net has no volumes).
    #[schemars(pattern(r"^vastai$"))]
    pub provider: Option<String>,
    /// The free disk (GB) an offer must have, 1 to 100000 (default 1).
    #[schemars(range(min = 1, max = 100_000))]
    pub size_gb: Option<u32>,
}

fn rentals(app: &AppState) -> Result<&std::sync::Arc<Rentals>> {
    app.rentals
        .as_ref()
        .ok_or_else(|| super::needs_database("volumes"))
}

pub async fn offers(
    app: &AppState,
    p: &Principal,
    q: VolumeOffersQuery,
) -> Result<VolumeOfferList> {
    let provider = match q.provider.as_deref() {
        None => ProviderId::parse("vastai"),
        Some(s) => ProviderId::parse(s),
    }
    .ok_or_else(|| Error::bad_request("invalid query parameter `provider`: vastai"))?;
    let size = q.size_gb.unwrap_or(1);
    if !(1..=100_000).contains(&size) {
        return Err(Error::bad_request(
            "invalid query parameter `size_gb`: 1 to 100000",
        ));
    }
    let offers = rentals(app)?
        .volume_offers(&Renter::of(p), provider, size)
        .await?;
    Ok(VolumeOfferList { offers })
}

pub async fn create(app: &AppState, p: &Principal, body: NewVolume) -> Result<VolumeView> {
    let v = rentals(app)?.create_volume(Renter::of(p), &body).await?;
    Ok(VolumeView::of(&v))
}

pub async fn list(app: &AppState, p: &Principal) -> Result<VolumeList> {
    let r = rentals(app)?;
    let rows = ledger::list_volumes(r.db(), p.account_id()).await?;
    Ok(VolumeList {
        volumes: rows.iter().map(VolumeView::of).collect(),
    })
}

pub async fn get(app: &AppState, p: &Principal, id: &str) -> Result<VolumeView> {
    let r = rentals(app)?;
    Ok(VolumeView::of(
        &ledger::get_volume(r.db(), p.account_id(), id).await?,
    ))
}

pub async fn delete(app: &AppState, p: &Principal, id: &str) -> Result<VolumeView> {
    let v = rentals(app)?.delete_volume(p.account_id(), id).await?;
    Ok(VolumeView::of(&v))
}
