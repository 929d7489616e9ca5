//! Offer watches (`/v1/watches`): an account's standing search, a rental spec and a price per GPU.
//!
//! Evaluated on what the offers cache already fetched, never with a call of its own: every
//! upstream answer that refreshes the cache ([`SwrCache::on_fetched`]) is matched against every
//! watch, and an offer that matches at or below a watch's price gets one `offer.watch_matched`
//! event for that watch. The match rows (`offer_watch_matches`, keyed by watch and offer) and the
//! events are written in one transaction, so several daemons refreshing the same answer, or one
//! answer fetched again, fire it once.
//!
//! [`SwrCache::on_fetched`]: crate::cache::swr::SwrCache::on_fetched

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::failover::Spec;
use crate::accounts::{Db, classify};
use crate::error::{Error, Kind, Refusal, Result, Side};
use crate::events::{WATCH_MATCHED, append};
use crate::providers::{Offer, ProviderId};

/// `POST /v1/watches`'s body.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[serde(deny_unknown_fields)]
pub struct NewWatch {
    /// What a matching offer is; its price per GPU is `max_price_per_gpu` beside it.
    #[schemars(extend("not" = {"required": ["max_price_per_gpu"]}))]
    pub spec: Spec,
    /// USD per GPU-hour: an offer at or below it (and matching `spec`) fires
    /// `offer.watch_matched`.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_price_per_gpu: f64,
}

/// A watch as its owner sees it.
#[derive(Debug, Clone)]
pub struct Watch {
    pub id: String,
    pub spec: Value,
    pub max_price_per_gpu: f64,
    pub created_at: f64,
    /// Offers it has matched so far.
    pub matches: i64,
    pub last_matched_at: Option<f64>,
}

const COLS: &str = "w.id, w.spec, w.max_price_per_gpu, extract(epoch FROM w.created_at)::float8, \
    (SELECT count(*) FROM offer_watch_matches m WHERE m.watch_id = w.id), \
    (SELECT extract(epoch FROM max(matched_at))::float8 FROM offer_watch_matches m \
     WHERE m.watch_id = w.id)";

fn watch(r: &Row) -> Watch {
    Watch {
        id: r.get(0),
        spec: r.get(1),
        max_price_per_gpu: r.get(2),
        created_at: r.get(3),
        matches: r.get(4),
        last_matched_at: r.get(5),
    }
}

fn not_found() -> Error {
    Error::new(Kind::NotFound, Side::Client, "no such watch")
}

/// The spec with the watch's price as its ceiling per GPU: what offers must pass.
fn priced(spec: &Spec, max_price_per_gpu: f64) -> Spec {
    Spec {
        max_price_per_gpu: Some(max_price_per_gpu),
        ..spec.clone()
    }
}

pub async fn create(
    db: &Db,
    max: u32,
    enabled: &[ProviderId],
    account_id: i64,
    new: &NewWatch,
) -> Result<Watch> {
    let price = new.max_price_per_gpu;
    if !(price.is_finite() && price > 0.0) {
        return Err(Error::bad_request(
            "invalid `max_price_per_gpu`: a number greater than 0",
        ));
    }
    if new.spec.max_price_per_gpu.is_some() {
        return Err(Error::bad_request(
            "invalid `spec.max_price_per_gpu`: a watch's price is `max_price_per_gpu`, beside `spec`",
        ));
    }
    // the rental spec's rules, every error naming its field
    priced(&new.spec, price).check(enabled)?;
    let mut spec = serde_json::to_value(&new.spec)
        .map_err(|e| Error::new(Kind::Internal, Side::Internal, "spec").with_source(e))?;
    // only the fields given
    if let Some(o) = spec.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    let id = format!("watch_{}", &super::new_id().replace('-', "")[..20]);
    let max = i64::from(max);
    let row = db
        .query_opt(
            "INSERT INTO offer_watches (id, account_id, spec, max_price_per_gpu) \
                 SELECT $1, $2, $3, $4 \
                 WHERE (SELECT count(*) FROM offer_watches WHERE account_id = $2) < $5 \
                 RETURNING id, spec, max_price_per_gpu, extract(epoch FROM created_at)::float8, \
                           0::int8, NULL::float8",
            &[
                (&id, Type::TEXT),
                (&account_id, Type::INT8),
                (&spec, Type::JSONB),
                (&price, Type::FLOAT8),
                (&max, Type::INT8),
            ],
        )
        .await?;
    row.map(|r| watch(&r)).ok_or_else(|| {
        Error::refused(
            Refusal::WatchLimit,
            format!("the account has {max} watches already (rentals.max_watches)"),
            None,
        )
    })
}

pub async fn list(db: &Db, account_id: i64) -> Result<Vec<Watch>> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLS} FROM offer_watches w WHERE w.account_id = $1 ORDER BY w.created_at, w.id"
            ),
            &[(&account_id, Type::INT8)],
        )
        .await?;
    Ok(rows.iter().map(watch).collect())
}

/// One of the account's watches (another account's is 404, like an unknown one).
pub async fn get(db: &Db, account_id: i64, id: &str) -> Result<Watch> {
    db.query_opt(
        &format!("SELECT {COLS} FROM offer_watches w WHERE w.id = $1 AND w.account_id = $2"),
        &[(&id, Type::TEXT), (&account_id, Type::INT8)],
    )
    .await?
    .map(|r| watch(&r))
    .ok_or_else(not_found)
}

pub async fn delete(db: &Db, account_id: i64, id: &str) -> Result<Watch> {
    let w = get(db, account_id, id).await?;
    db.query(
        "DELETE FROM offer_watches WHERE id = $1 AND account_id = $2",
        &[(&id, Type::TEXT), (&account_id, Type::INT8)],
    )
    .await?;
    Ok(w)
}

/// Matches a fresh upstream answer against every watch; returns the events written.
pub async fn evaluate(db: &Db, enabled: &[ProviderId], offers: &[Offer]) -> Result<usize> {
    if offers.is_empty() {
        return Ok(0);
    }
    let rows = db
        .query(
            "SELECT id, account_id, spec, max_price_per_gpu FROM offer_watches",
            &[],
        )
        .await?;
    let mut hits: Vec<(String, i64, &Offer)> = Vec::new();
    for r in &rows {
        let (id, account, spec, price): (String, i64, Value, f64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let Ok(spec) = serde_json::from_value::<Spec>(spec) else {
            continue;
        };
        // a provider disabled since the watch was made: the spec no longer checks
        let Ok((filter, providers)) = priced(&spec, price).check(enabled) else {
            continue;
        };
        hits.extend(
            offers
                .iter()
                .filter(|o| providers.contains(&o.provider) && filter.matches(o))
                .map(|o| (id.clone(), account, o)),
        );
    }
    if hits.is_empty() {
        return Ok(0);
    }
    let watch_ids: Vec<&str> = hits.iter().map(|h| h.0.as_str()).collect();
    let offer_ids: Vec<&str> = hits.iter().map(|h| h.2.id.as_str()).collect();
    let prices: Vec<f64> = hits.iter().map(|h| h.2.price_per_gpu_hour).collect();
    db.transaction(async |tx| {
        let new = tx
            .query_typed(
                "INSERT INTO offer_watch_matches (watch_id, offer_id, price_per_gpu_hour) \
                 SELECT w, o, p FROM unnest($1::text[], $2::text[], $3::float8[]) AS x(w, o, p) \
                 WHERE EXISTS (SELECT 1 FROM offer_watches WHERE id = x.w) \
                 ON CONFLICT (watch_id, offer_id) DO NOTHING RETURNING watch_id, offer_id",
                &[
                    (&watch_ids, Type::TEXT_ARRAY),
                    (&offer_ids, Type::TEXT_ARRAY),
                    (&prices, Type::FLOAT8_ARRAY),
                ],
            )
            .await
            .map_err(classify)?;
        for r in &new {
            let (w, o): (&str, &str) = (r.get(0), r.get(1));
            if let Some((_, account, offer)) = hits.iter().find(|h| h.0 == w && h.2.id == o) {
                let data = json!({"watch_id": w, "offer": offer});
                append(tx, *account, WATCH_MATCHED, None, &data).await?;
            }
        }
        Ok(new.len())
    })
    .await
}

/// Installs the evaluation on the offers cache: each upstream answer, in a task of its own.
pub fn install(
    db: Arc<Db>,
    enabled: Vec<ProviderId>,
    offers: &crate::cache::swr::SwrCache<Vec<Offer>>,
) {
    offers.on_fetched(move |answer: Arc<crate::cache::swr::Entry<Vec<Offer>>>| {
        let (db, enabled) = (db.clone(), enabled.clone());
        tokio::spawn(async move {
            match evaluate(&db, &enabled, &answer.value).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(events = n, "offer watches matched"),
                Err(e) => {
                    tracing::warn!(error = %e, "offer watches not evaluated on this answer")
                }
            }
        });
    });
}
