//! Offer watches (`/v1/watches`): an account's standing search, a rental spec and a price per GPU.
//!
//! Evaluated on what the offers cache already fetched, never with a call of its own: every
//! upstream answer that refreshes the cache ([`SwrCache::on_fetched`]) is matched against every
//! watch, in memory (watches × offers, no search), outside any transaction. An offer that
//! matches at or below a watch's price fires for that watch once per `rentals.watch_cooldown_ms`:
//! the match row (`offer_watch_matches`, keyed by watch and offer) is written or renewed by one
//! statement whose answer says which matches are new, so several daemons refreshing the same
//! answer, or one answer fetched again, fire it once. What fires is bounded per answer: a watch
//! with more than `rentals.watch_events_per_refresh` new matches gets one event listing them, and
//! an account past `rentals.watch_account_events_per_refresh` events gets one per watch. Each
//! account's events are then written in a short transaction of its own.
//!
//! [`SwrCache::on_fetched`]: crate::cache::swr::SwrCache::on_fetched

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::failover::Spec;
use crate::accounts::Db;
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
        .query_opt_capped(
            "rentals.max_watches",
            account_id,
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

/// What one upstream answer may fire (`rentals.watch_*`).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub cooldown_secs: f64,
    pub per_watch: usize,
    pub per_account: usize,
}

impl Caps {
    pub fn of(cfg: &crate::config::RentalsConfig) -> Caps {
        Caps {
            cooldown_secs: cfg.watch_cooldown_ms.get().as_secs_f64(),
            per_watch: cfg.watch_events_per_refresh.get() as usize,
            per_account: cfg.watch_account_events_per_refresh.get() as usize,
        }
    }
}

/// A watch's new matches in one answer.
struct Fired<'a> {
    watch: String,
    offers: Vec<&'a Offer>,
}

/// The events an account's new matches make (each a payload), within `caps`: one per offer; a
/// watch past `per_watch` offers one listing its cheapest; an account past `per_account` events
/// one per watch.
fn payloads(fired: &mut [Fired<'_>], caps: Caps) -> Vec<Value> {
    for f in fired.iter_mut() {
        f.offers.sort_by(|a, b| {
            a.price_per_gpu_hour
                .total_cmp(&b.price_per_gpu_hour)
                .then_with(|| a.id.cmp(&b.id))
        });
    }
    let summary = |f: &Fired<'_>| {
        json!({"watch_id": f.watch, "matched": f.offers.len(),
               "offers": f.offers.iter().take(caps.per_watch).collect::<Vec<_>>()})
    };
    let mut out = Vec::new();
    for f in fired.iter() {
        if f.offers.len() > caps.per_watch {
            out.push(summary(f));
        } else {
            out.extend(
                f.offers
                    .iter()
                    .map(|o| json!({"watch_id": f.watch, "offer": o})),
            );
        }
    }
    if out.len() > caps.per_account {
        out = fired.iter().map(summary).collect();
    }
    out
}

/// Matches a fresh upstream answer against every watch; returns the events written.
pub async fn evaluate(
    db: &Db,
    enabled: &[ProviderId],
    offers: &[Offer],
    caps: Caps,
) -> Result<usize> {
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
    // new matches, and matches older than the cooldown, answer; one statement, no lock held
    // past it
    let new = db
        .query(
            "INSERT INTO offer_watch_matches (watch_id, offer_id, price_per_gpu_hour) \
             SELECT w, o, p FROM unnest($1::text[], $2::text[], $3::float8[]) AS x(w, o, p) \
             WHERE EXISTS (SELECT 1 FROM offer_watches WHERE id = x.w) \
             ON CONFLICT (watch_id, offer_id) DO UPDATE \
               SET matched_at = now(), price_per_gpu_hour = EXCLUDED.price_per_gpu_hour \
               WHERE offer_watch_matches.matched_at < now() - make_interval(secs => $4) \
             RETURNING watch_id, offer_id",
            &[
                (&watch_ids, Type::TEXT_ARRAY),
                (&offer_ids, Type::TEXT_ARRAY),
                (&prices, Type::FLOAT8_ARRAY),
                (&caps.cooldown_secs, Type::FLOAT8),
            ],
        )
        .await?;
    // the new matches by account and watch, in linear time
    let by_key: HashMap<(&str, &str), (i64, &Offer)> = hits
        .iter()
        .map(|(w, a, o)| ((w.as_str(), o.id.as_str()), (*a, *o)))
        .collect();
    let mut accounts: HashMap<i64, Vec<Fired<'_>>> = HashMap::new();
    for r in &new {
        let (w, o): (&str, &str) = (r.get(0), r.get(1));
        let Some(&(account, offer)) = by_key.get(&(w, o)) else {
            continue;
        };
        let fired = accounts.entry(account).or_default();
        match fired.iter_mut().find(|f| f.watch == w) {
            Some(f) => f.offers.push(offer),
            None => fired.push(Fired {
                watch: w.to_owned(),
                offers: vec![offer],
            }),
        }
    }
    let mut written = 0;
    for (account, mut fired) in accounts {
        let events = payloads(&mut fired, caps);
        db.transaction(async |tx| {
            for data in &events {
                append(tx, account, WATCH_MATCHED, None, data).await?;
            }
            Ok(())
        })
        .await?;
        written += events.len();
    }
    Ok(written)
}

/// Installs the evaluation on the offers cache: each upstream answer, in a task of its own.
pub fn install(
    db: Arc<Db>,
    enabled: Vec<ProviderId>,
    caps: Caps,
    offers: &crate::cache::swr::SwrCache<Vec<Offer>>,
) {
    offers.on_fetched(move |answer: Arc<crate::cache::swr::Entry<Vec<Offer>>>| {
        let (db, enabled) = (db.clone(), enabled.clone());
        tokio::spawn(async move {
            match evaluate(&db, &enabled, &answer.value, caps).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(events = n, "offer watches matched"),
                Err(e) => {
                    tracing::warn!(error = %e, "offer watches not evaluated on this answer")
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired<'a>(watch: &str, offers: &[&'a Offer]) -> Fired<'a> {
        Fired {
            watch: watch.into(),
            offers: offers.to_vec(),
        }
    }

    const CAPS: Caps = Caps {
        cooldown_secs: 3600.0,
        per_watch: 2,
        per_account: 3,
    };

    #[test]
    fn a_few_matches_are_an_event_each_many_are_one_listing_the_cheapest() {
        let (a, b, c) = (
            Offer::sample("vastai:1", 3.0, 1, None),
            Offer::sample("vastai:2", 1.0, 1, None),
            Offer::sample("vastai:3", 2.0, 1, None),
        );
        let mut two = [fired("w1", &[&a, &b])];
        let p = payloads(&mut two, CAPS);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0]["offer"]["id"], "vastai:2", "cheapest first");
        let mut three = [fired("w1", &[&a, &b, &c])];
        let p = payloads(&mut three, CAPS);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0]["matched"], 3);
        let ids: Vec<&str> = p[0]["offers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["vastai:2", "vastai:3"]);
    }

    #[test]
    fn an_account_past_its_cap_gets_one_event_per_watch() {
        let (a, b) = (
            Offer::sample("vastai:1", 1.0, 1, None),
            Offer::sample("vastai:2", 2.0, 1, None),
        );
        // 2 + 2 single events would be 4 > 3: one per watch instead
        let mut f = [fired("w1", &[&a, &b]), fired("w2", &[&a, &b])];
        let p = payloads(&mut f, CAPS);
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|e| e["matched"] == 2));
    }
}
