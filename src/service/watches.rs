//! The caller's offer watches as typed operations: a rental spec and a price per GPU; a
//! matching offer arrives as an `offer.watch_matched` event. Another account's watch is 404,
//! like an unknown one.

use serde::Serialize;
use serde_json::Value;

use super::{db, time};
use crate::auth::Principal;
use crate::error::Result;
use crate::providers::ProviderId;
use crate::rentals::watches::{self, NewWatch, Watch};
use crate::state::AppState;

/// A watch as the API shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Watch")]
pub struct WatchView {
    pub id: String,
    /// The spec fields given.
    pub spec: Value,
    pub max_price_per_gpu: f64,
    /// Offers matched so far (each fired one event).
    pub matches: i64,
    pub last_matched_at: Option<String>,
    pub created_at: Option<String>,
}

impl WatchView {
    fn of(w: &Watch) -> WatchView {
        WatchView {
            id: w.id.clone(),
            spec: w.spec.clone(),
            max_price_per_gpu: w.max_price_per_gpu,
            matches: w.matches,
            last_matched_at: time(w.last_matched_at),
            created_at: time(Some(w.created_at)),
        }
    }
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct WatchList {
    pub watches: Vec<WatchView>,
}

pub async fn create(app: &AppState, p: &Principal, new: NewWatch) -> Result<WatchView> {
    let enabled: Vec<ProviderId> = app.providers.list.iter().map(|p| p.id()).collect();
    let max = app.config.rentals.max_watches.get();
    let w = watches::create(&*db(app, "watches")?, max, &enabled, p.account_id(), &new).await?;
    Ok(WatchView::of(&w))
}

pub async fn list(app: &AppState, p: &Principal) -> Result<WatchList> {
    let all = watches::list(&*db(app, "watches")?, p.account_id()).await?;
    Ok(WatchList {
        watches: all.iter().map(WatchView::of).collect(),
    })
}

pub async fn get(app: &AppState, p: &Principal, id: &str) -> Result<WatchView> {
    let w = watches::get(&*db(app, "watches")?, p.account_id(), id).await?;
    Ok(WatchView::of(&w))
}

pub async fn delete(app: &AppState, p: &Principal, id: &str) -> Result<WatchView> {
    let w = watches::delete(&*db(app, "watches")?, p.account_id(), id).await?;
    Ok(WatchView::of(&w))
}
