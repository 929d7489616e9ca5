//! Offer search (`GET /v1/offers`, the MCP tool `search_offers`): both providers searched in parallel (through the offers cache), merged,
//! filtered, sorted and paged. One provider failing still gives an answer with the other's offers
//! (`status: "partial"`) and a `providers` section saying which failed and why.
//!
//! What each provider is asked upstream is only what changes its answer (GPU model for Vast.ai,
//! interruptible or not, disk size); every other filter, the sort and the paging run here on the
//! cached answer, so many different client queries share one upstream call per TTL.

mod filters;
mod pages;

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

pub use filters::{Filters, OffersQuery, Sort, sort};
use pages::render;
pub use pages::{PageCache, RenderedPage};

use crate::cache::swr::{Entry, Lookup};
use crate::error::{Error, Kind, Result, Side};
use crate::providers::{Offer, Provider, UpstreamError};
use crate::state::AppState;

/// One provider's part in an answer.
enum Outcome {
    Answered(Lookup<Vec<Offer>>),
    Failed(UpstreamError),
    Disabled(&'static str),
    /// Not asked: excluded by `providers`, or it sells nothing of the kind asked for.
    Skipped(&'static str),
}

/// One provider's part in an answer, for carriers (`OffersPage::reports`).
pub struct ProviderPart<'a> {
    pub provider: &'static str,
    pub status: &'static str,
    pub offers: Option<usize>,
    pub error: Option<(&'static str, &'a str)>,
}

/// One provider's part in an answer.
#[derive(Serialize, schemars::JsonSchema)]
struct ProviderReport {
    #[schemars(extend("enum" = ["ok", "stale", "error", "disabled", "skipped"]))]
    status: &'static str,
    /// Offers of this provider matching the filters.
    #[serde(skip_serializing_if = "Option::is_none")]
    offers: Option<usize>,
    /// Where the answer came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["memory", "redis", "upstream", "stale"]))]
    source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    age_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ReportError>,
}

#[derive(Serialize, schemars::JsonSchema)]
struct ReportError {
    code: &'static str,
    message: String,
}

async fn ask(state: &AppState, p: &Arc<dyn Provider>, f: &Filters) -> Outcome {
    if !f.wants(p.id()) {
        return Outcome::Skipped("not among the providers asked for");
    }
    if let Some(why) = p.disabled() {
        return Outcome::Disabled(why);
    }
    let q = f.search_query();
    let Some(key) = p.search_key(&q) else {
        return Outcome::Skipped("sells no offers of this kind");
    };
    let provider = p.clone();
    match state
        .offers_cache
        .get(&key, move || async move { provider.search(&q).await })
        .await
    {
        Ok(l) => Outcome::Answered(l),
        Err(e) => Outcome::Failed(e),
    }
}

/// One page of offers: the answer's status, the rendered page (shared by every caller of the
/// same query over the same provider answers) and each provider's part.
pub struct OffersPage {
    pub status: &'static str,
    pub stale: bool,
    page: Arc<RenderedPage>,
    providers: std::collections::BTreeMap<&'static str, ProviderReport>,
}

/// The answer as [`OffersPage::to_json`] writes it.
impl schemars::JsonSchema for OffersPage {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OffersPage".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let offer = g.subschema_for::<Offer>();
        let report = g.subschema_for::<ProviderReport>();
        schemars::json_schema!({"type": "object",
            "required": ["status", "stale", "offers", "count", "total", "next_cursor", "providers"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "partial"]},
                "stale": {"type": "boolean",
                          "description": "Some offers come from an answer past its TTL"},
                "offers": {"type": "array", "items": offer},
                "count": {"type": "integer"},
                "total": {"type": "integer", "description": "Matching offers over all pages"},
                "next_cursor": {"type": ["string", "null"]},
                "providers": {"type": "object", "additionalProperties": report}}})
    }
}

impl OffersPage {
    /// The page's offers (what `to_json` writes as `offers`).
    pub fn offers(&self) -> &[Offer] {
        &self.page.offers
    }

    /// The page's offers as `encode` writes them, made once per rendered page (by its first
    /// caller) and shared by every caller after: a carrier with its own encoding (gRPC) then
    /// costs what the JSON fragment costs REST.
    pub fn offers_encoded(&self, encode: impl FnOnce(&[Offer]) -> bytes::Bytes) -> bytes::Bytes {
        self.page
            .encoded
            .get_or_init(|| encode(&self.page.offers))
            .clone()
    }

    /// Matching offers over all pages.
    pub fn total(&self) -> usize {
        self.page.total
    }

    pub fn next_cursor(&self) -> Option<&str> {
        self.page.next_cursor.as_deref()
    }

    /// Each provider's part: (provider, status, matching offers, error code and message).
    pub fn reports(&self) -> impl Iterator<Item = ProviderPart<'_>> {
        self.providers.iter().map(|(name, r)| ProviderPart {
            provider: name,
            status: r.status,
            offers: r.offers,
            error: r.error.as_ref().map(|e| (e.code, e.message.as_str())),
        })
    }

    /// The answer as JSON: `status`, `stale`, the page (`offers`, `count`, `total`,
    /// `next_cursor`) and `providers`, written from the rendered page without serializing the
    /// offers again.
    pub fn to_json(&self) -> Vec<u8> {
        let providers = serde_json::to_vec(&self.providers).expect("reports serialize");
        let mut body = Vec::with_capacity(self.page.fragment.len() + providers.len() + 64);
        let _ = write!(
            ByteWriter(&mut body),
            "{{\"status\":\"{}\",\"stale\":{},",
            self.status,
            self.stale
        );
        body.extend_from_slice(&self.page.fragment);
        body.extend_from_slice(b",\"providers\":");
        body.extend_from_slice(&providers);
        body.push(b'}');
        body
    }
}

/// Searches every enabled provider (through the offers cache) for `f`; `pages` holds rendered
/// pages (the API's, shared by its callers).
pub async fn search(state: &AppState, pages: &PageCache, f: Filters) -> Result<OffersPage> {
    let ps = &state.providers.list;
    // every provider at once, however many there are
    let outcomes: Vec<Outcome> =
        futures_util::future::join_all(ps.iter().map(|p| ask(state, p, &f))).await;

    let mut reports = std::collections::BTreeMap::new();
    let mut entries: Vec<Arc<Entry<Vec<Offer>>>> = Vec::new();
    let mut answered: Vec<&'static str> = Vec::new();
    let (mut failed, mut stale) = (Vec::new(), false);
    for (p, o) in ps.iter().zip(outcomes) {
        let name = p.id().as_str();
        let report = match o {
            Outcome::Answered(l) => {
                stale |= l.stale;
                let r = ProviderReport {
                    status: if l.stale { "stale" } else { "ok" },
                    offers: None,
                    source: Some(if l.stale { "stale" } else { l.source.as_str() }),
                    age_seconds: Some((l.age.as_secs_f64() * 10.0).round() / 10.0),
                    error: l.error.as_ref().map(|e| ReportError {
                        code: e.code(),
                        message: e.to_string(),
                    }),
                };
                answered.push(name);
                entries.push(l.entry);
                r
            }
            Outcome::Failed(e) => {
                failed.push(format!("{name}: {e}"));
                ProviderReport::not_answering("error", e.code(), e.to_string())
            }
            Outcome::Disabled(why) => {
                ProviderReport::not_answering("disabled", "disabled", why.into())
            }
            Outcome::Skipped(why) => {
                ProviderReport::not_answering("skipped", "skipped", why.into())
            }
        };
        reports.insert(name, report);
    }
    if answered.is_empty() && !failed.is_empty() {
        return Err(Error::new(
            Kind::ProvidersUnavailable,
            Side::Upstream,
            format!("no provider could answer: {}", failed.join("; ")),
        ));
    }

    let key = (f.fingerprint(), f.offset);
    let versions: Vec<u64> = entries.iter().map(|e| e.id).collect();
    let page = match pages.get(key, &versions) {
        Some(p) => p,
        None => {
            let p = Arc::new(render(&f, &entries));
            pages.insert(key, p.clone());
            p
        }
    };
    for (name, n) in answered.iter().zip(&page.matching) {
        if let Some(r) = reports.get_mut(name) {
            r.offers = Some(*n);
        }
    }
    Ok(OffersPage {
        status: if failed.is_empty() { "ok" } else { "partial" },
        stale,
        page,
        providers: reports,
    })
}

/// `fmt::Write` into a byte buffer.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

impl ProviderReport {
    fn not_answering(status: &'static str, code: &'static str, message: String) -> ProviderReport {
        ProviderReport {
            status,
            offers: None,
            source: None,
            age_seconds: None,
            error: Some(ReportError { code, message }),
        }
    }
}

/// Test helpers the filters and pages tests share.
#[cfg(test)]
mod testing {
    use super::Filters;
    use crate::config::OffersConfig;
    use crate::error::Result;
    use crate::providers::Offer;

    pub fn parse(q: &str) -> Result<Filters> {
        Filters::parse(Some(q), &OffersConfig::default())
    }

    pub fn offer(id: &str, price: f64, gpus: u32, rel: Option<f64>) -> Offer {
        Offer::sample(id, price, gpus, rel)
    }
}
