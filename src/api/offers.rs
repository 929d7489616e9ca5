//! `GET /v1/offers`: both providers searched in parallel (through the offers cache), merged,
//! filtered, sorted and paged. One provider failing still gives an answer with the other's offers
//! (`status: "partial"`) and a `providers` section saying which failed and why.
//!
//! What each provider is asked upstream is only what changes its answer (GPU model for Vast.ai,
//! interruptible or not, disk size); every other filter, the sort and the paging run here on the
//! cached answer, so many different client queries share one upstream call per TTL.

use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::Arc;

use hyper::header::{CACHE_CONTROL, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::Api;
use super::{Body, respond};
use crate::cache::swr::{Entry, Lookup};
use crate::config::OffersConfig;
use crate::error::{Error, Kind, Result, Side};
use crate::providers::{Offer, Provider, ProviderId, SearchQuery, UpstreamError, gpu};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Cheapest first.
    Price,
    PricePerGpu,
    /// Most reliable first (offers without a figure last).
    Reliability,
}

/// The client's query, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Filters {
    pub gpu: Option<String>,
    pub min_gpus: Option<u32>,
    pub max_gpus: Option<u32>,
    pub min_gpu_memory_gb: Option<f64>,
    pub max_price: Option<f64>,
    pub max_price_per_gpu: Option<f64>,
    pub providers: Option<Vec<ProviderId>>,
    pub countries: Option<Vec<String>>,
    pub interruptible: bool,
    pub include_unavailable: bool,
    pub disk_gb: u32,
    pub sort: Sort,
    pub limit: u32,
    pub offset: usize,
}

const PARAMS: &[&str] = &[
    "gpu",
    "min_gpus",
    "max_gpus",
    "min_gpu_memory_gb",
    "max_price",
    "max_price_per_gpu",
    "providers",
    "countries",
    "interruptible",
    "include_unavailable",
    "disk_gb",
    "sort",
    "limit",
    "cursor",
];

fn bad(param: &str, why: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("invalid query parameter `{param}`: {why}"))
}

fn decode(raw: &str) -> Option<String> {
    super::router::percent_decode(&raw.replace('+', " "))
}

fn number<T: std::str::FromStr>(param: &str, v: &str) -> Result<T> {
    v.trim()
        .parse::<T>()
        .map_err(|_| bad(param, format!("`{v}` is not a valid number")))
}

fn boolean(param: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad(param, "expected true or false")),
    }
}

fn positive(param: &str, x: f64) -> Result<f64> {
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err(bad(param, "must be a number greater than 0"))
    }
}

impl Filters {
    pub fn parse(query: Option<&str>, cfg: &OffersConfig) -> Result<Filters> {
        let mut f = Filters {
            gpu: None,
            min_gpus: None,
            max_gpus: None,
            min_gpu_memory_gb: None,
            max_price: None,
            max_price_per_gpu: None,
            providers: None,
            countries: None,
            interruptible: false,
            include_unavailable: false,
            disk_gb: cfg.default_disk_gb,
            sort: Sort::Price,
            limit: cfg.default_limit,
            offset: 0,
        };
        let mut seen: Vec<&str> = Vec::new();
        let mut cursor = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let name = PARAMS.iter().find(|p| **p == k).ok_or_else(|| {
                Error::bad_request(format!(
                    "unknown query parameter `{}` (known: {})",
                    crate::error::truncate(&decode(k).unwrap_or_default(), 64),
                    PARAMS.join(", ")
                ))
            })?;
            if seen.contains(name) {
                return Err(bad(name, "given more than once"));
            }
            seen.push(name);
            let v = decode(v).ok_or_else(|| bad(name, "broken percent-encoding"))?;
            if v.is_empty() {
                return Err(bad(name, "empty value"));
            }
            match *name {
                "gpu" => {
                    if v.len() > 64 {
                        return Err(bad(name, "at most 64 characters"));
                    }
                    f.gpu = Some(gpu::canonical(&v, None));
                }
                "min_gpus" | "max_gpus" => {
                    let n: u32 = number(name, &v)?;
                    if !(1..=64).contains(&n) {
                        return Err(bad(name, "must be between 1 and 64"));
                    }
                    if *name == "min_gpus" {
                        f.min_gpus = Some(n)
                    } else {
                        f.max_gpus = Some(n)
                    }
                }
                "min_gpu_memory_gb" => {
                    f.min_gpu_memory_gb = Some(positive(name, number(name, &v)?)?)
                }
                "max_price" => f.max_price = Some(positive(name, number(name, &v)?)?),
                "max_price_per_gpu" => {
                    f.max_price_per_gpu = Some(positive(name, number(name, &v)?)?)
                }
                "providers" => {
                    let mut list = Vec::new();
                    for p in v.split(',').map(str::trim) {
                        let id = ProviderId::parse(p).ok_or_else(|| {
                            bad(
                                name,
                                format!(
                                    "unknown provider `{}` (see `providers` in an answer)",
                                    crate::error::truncate(p, 32)
                                ),
                            )
                        })?;
                        if !list.contains(&id) {
                            list.push(id);
                        }
                    }
                    list.sort();
                    f.providers = Some(list);
                }
                "countries" => {
                    let mut list = Vec::new();
                    for c in v.split(',').map(str::trim) {
                        if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
                            return Err(bad(
                                name,
                                format!(
                                    "`{}` is not an ISO 3166-1 alpha-2 code",
                                    crate::error::truncate(c, 16)
                                ),
                            ));
                        }
                        list.push(c.to_ascii_uppercase());
                    }
                    list.sort();
                    list.dedup();
                    f.countries = Some(list);
                }
                "interruptible" => f.interruptible = boolean(name, &v)?,
                "include_unavailable" => f.include_unavailable = boolean(name, &v)?,
                "disk_gb" => {
                    let n: u32 = number(name, &v)?;
                    if !(1..=100_000).contains(&n) {
                        return Err(bad(name, "must be between 1 and 100000"));
                    }
                    f.disk_gb = n;
                }
                "sort" => {
                    f.sort = match v.as_str() {
                        "price" => Sort::Price,
                        "price_per_gpu" => Sort::PricePerGpu,
                        "reliability" => Sort::Reliability,
                        _ => return Err(bad(name, "expected price, price_per_gpu or reliability")),
                    }
                }
                "limit" => {
                    let n: u32 = number(name, &v)?;
                    if !(1..=cfg.max_limit).contains(&n) {
                        return Err(bad(
                            name,
                            format!("must be between 1 and {}", cfg.max_limit),
                        ));
                    }
                    f.limit = n;
                }
                "cursor" => cursor = Some(v),
                _ => unreachable!("every known parameter is handled"),
            }
        }
        if let (Some(lo), Some(hi)) = (f.min_gpus, f.max_gpus)
            && lo > hi
        {
            return Err(bad("min_gpus", "greater than max_gpus"));
        }
        if let Some(c) = cursor {
            let (off, fp) = c
                .split_once('.')
                .ok_or_else(|| bad("cursor", "not a cursor from a previous page"))?;
            let off: usize = off
                .parse()
                .map_err(|_| bad("cursor", "not a cursor from a previous page"))?;
            if fp != format!("{:x}", f.fingerprint()) {
                return Err(bad("cursor", "belongs to a query with other filters"));
            }
            f.offset = off;
        }
        Ok(f)
    }

    /// Identifies the filters and sort (not the page), so a cursor is only used with its query.
    fn fingerprint(&self) -> u64 {
        let mut s = String::new();
        let _ = write!(
            s,
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{:?}|{}",
            self.gpu,
            self.min_gpus,
            self.max_gpus,
            self.min_gpu_memory_gb,
            self.max_price,
            self.max_price_per_gpu,
            self.providers,
            self.countries,
            self.interruptible,
            self.include_unavailable,
            self.disk_gb,
            self.sort,
            self.limit
        );
        foldhash::fast::FixedState::with_seed(0x6770_7864).hash_one(&s)
    }

    pub fn search_query(&self) -> SearchQuery {
        SearchQuery {
            gpu: self.gpu.clone(),
            interruptible: self.interruptible,
            disk_gb: self.disk_gb,
        }
    }

    pub fn wants(&self, p: ProviderId) -> bool {
        self.providers.as_ref().is_none_or(|l| l.contains(&p))
    }

    pub fn matches(&self, o: &Offer) -> bool {
        (self.include_unavailable || o.available)
            && o.interruptible == self.interruptible
            && self
                .gpu
                .as_ref()
                .is_none_or(|g| gpu::matches(g, &o.gpu_model))
            && self.min_gpus.is_none_or(|n| o.gpu_count >= n)
            && self.max_gpus.is_none_or(|n| o.gpu_count <= n)
            && self
                .min_gpu_memory_gb
                .is_none_or(|m| o.gpu_memory_gb + 0.05 >= m)
            && self.max_price.is_none_or(|m| o.price_per_hour <= m)
            && self
                .max_price_per_gpu
                .is_none_or(|m| o.price_per_gpu_hour <= m)
            && self.countries.as_ref().is_none_or(|cs| {
                o.country
                    .as_ref()
                    .is_some_and(|c| cs.iter().any(|x| x == c))
            })
    }
}

/// Sorts by the chosen key, then by id, so pages are stable for a given set of offers.
pub fn sort(offers: &mut [&Offer], by: Sort) {
    offers.sort_by(|a, b| {
        let primary = match by {
            Sort::Price => a.price_per_hour.total_cmp(&b.price_per_hour),
            Sort::PricePerGpu => a.price_per_gpu_hour.total_cmp(&b.price_per_gpu_hour),
            Sort::Reliability => b
                .reliability
                .unwrap_or(-1.0)
                .total_cmp(&a.reliability.unwrap_or(-1.0))
                .then(a.price_per_hour.total_cmp(&b.price_per_hour)),
        };
        primary.then_with(|| a.id.cmp(&b.id))
    });
}

/// Rendered pages: for a query (its filters' fingerprint and offset) over given provider answers
/// (their entry ids), the `offers`/`count`/`total`/`next_cursor` members as JSON text and each
/// provider's matching count. A hot query then costs a lookup instead of filtering, sorting and
/// serializing a few hundred offers; a refreshed provider answer has a new entry id, so its pages
/// are rendered again. Bounded like the answers cache.
pub struct PageCache {
    map: papaya::HashMap<(u64, usize), Arc<RenderedPage>, foldhash::fast::RandomState>,
    max: usize,
}

pub struct RenderedPage {
    versions: Vec<u64>,
    fragment: bytes::Bytes,
    matching: Vec<usize>,
}

impl PageCache {
    pub fn new(max: usize) -> PageCache {
        PageCache {
            map: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            max: max.max(1),
        }
    }

    fn get(&self, key: (u64, usize), versions: &[u64]) -> Option<Arc<RenderedPage>> {
        self.map
            .pin()
            .get(&key)
            .filter(|p| p.versions == versions)
            .cloned()
    }

    fn insert(&self, key: (u64, usize), page: Arc<RenderedPage>) {
        let map = self.map.pin();
        if map.len() >= self.max
            && !map.contains_key(&key)
            && let Some(k) = map.keys().next().copied()
        {
            map.remove(&k);
        }
        map.insert(key, page);
    }
}

#[derive(Serialize)]
struct PageFragment<'a> {
    offers: Vec<&'a Offer>,
    count: usize,
    total: usize,
    next_cursor: Option<String>,
}

/// Filters, sorts and pages the providers' answers (in `entries` order) and renders the result.
fn render(f: &Filters, entries: &[Arc<Entry<Vec<Offer>>>]) -> RenderedPage {
    let mut matching_per: Vec<usize> = Vec::with_capacity(entries.len());
    let mut matching: Vec<&Offer> = Vec::new();
    for e in entries {
        let before = matching.len();
        matching.extend(e.value.iter().filter(|o| f.matches(o)));
        matching_per.push(matching.len() - before);
    }
    sort(&mut matching, f.sort);
    let total = matching.len();
    let end = (f.offset + f.limit as usize).min(total);
    let page: Vec<&Offer> = matching
        .get(f.offset.min(total)..end)
        .unwrap_or_default()
        .to_vec();
    let json = serde_json::to_vec(&PageFragment {
        count: page.len(),
        offers: page,
        total,
        next_cursor: (end < total).then(|| format!("{end}.{:x}", f.fingerprint())),
    })
    .expect("offers serialize");
    RenderedPage {
        versions: entries.iter().map(|e| e.id).collect(),
        // the object's members without its braces, to splice into the answer
        fragment: bytes::Bytes::from(json[1..json.len() - 1].to_vec()),
        matching: matching_per,
    }
}

/// One provider's part in an answer.
enum Outcome {
    Answered(Lookup<Vec<Offer>>),
    Failed(UpstreamError),
    Disabled(&'static str),
    /// Not asked: excluded by `providers`, or it sells nothing of the kind asked for.
    Skipped(&'static str),
}

#[derive(Serialize)]
struct ProviderReport {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    offers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    age_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ReportError>,
}

#[derive(Serialize)]
struct ReportError {
    code: &'static str,
    message: String,
}

async fn ask(state: &Arc<Api>, p: &Arc<dyn Provider>, f: &Filters) -> Outcome {
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

pub async fn list(state: &Arc<Api>, query: Option<&str>) -> Result<Response<Body>> {
    let f = Filters::parse(query, &state.config.offers)?;
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
                    age_seconds: Some((l.entry.age().as_secs_f64() * 10.0).round() / 10.0),
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
    let page = match state.offer_pages.get(key, &versions) {
        Some(p) => p,
        None => {
            let p = Arc::new(render(&f, &entries));
            state.offer_pages.insert(key, p.clone());
            p
        }
    };
    for (name, n) in answered.iter().zip(&page.matching) {
        if let Some(r) = reports.get_mut(name) {
            r.offers = Some(*n);
        }
    }
    let providers = serde_json::to_vec(&reports).expect("reports serialize");
    let status = if failed.is_empty() { "ok" } else { "partial" };
    let mut body = Vec::with_capacity(page.fragment.len() + providers.len() + 64);
    let _ = write!(
        ByteWriter(&mut body),
        "{{\"status\":\"{status}\",\"stale\":{stale},"
    );
    body.extend_from_slice(&page.fragment);
    body.extend_from_slice(b",\"providers\":");
    body.extend_from_slice(&providers);
    body.push(b'}');
    let mut resp = respond::json_bytes(StatusCode::OK, body);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(resp)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<Filters> {
        Filters::parse(Some(q), &OffersConfig::default())
    }

    fn offer(id: &str, price: f64, gpus: u32, rel: Option<f64>) -> Offer {
        Offer {
            id: id.into(),
            provider: ProviderId::register("vastai").unwrap(),
            gpu_model: "RTX 4090".into(),
            provider_gpu_name: "RTX 4090".into(),
            gpu_count: gpus,
            gpu_memory_gb: 24.0,
            price_per_hour: price,
            price_per_gpu_hour: price / f64::from(gpus),
            cpu_cores: None,
            ram_gb: None,
            disk_gb: None,
            country: Some("US".into()),
            region: None,
            reliability: rel,
            interruptible: false,
            min_bid_per_hour: None,
            storage_per_hour: 0.0,
            available: true,
        }
    }

    #[test]
    fn parses_every_filter() {
        for p in ["vastai", "ionet"] {
            ProviderId::register(p);
        }
        let f = parse("gpu=geforce+rtx+4090&min_gpus=2&max_gpus=8&min_gpu_memory_gb=20&max_price=3.5&providers=ionet,vastai&countries=us,ca&interruptible=false&sort=price_per_gpu&limit=5&disk_gb=50").unwrap();
        assert_eq!(f.gpu.as_deref(), Some("RTX 4090"));
        assert_eq!((f.min_gpus, f.max_gpus), (Some(2), Some(8)));
        assert_eq!(
            f.providers,
            // a set, kept sorted by id
            Some(vec![
                ProviderId::register("ionet").unwrap(),
                ProviderId::register("vastai").unwrap()
            ])
        );
        assert_eq!(f.countries, Some(vec!["CA".to_owned(), "US".to_owned()]));
        assert_eq!((f.sort, f.limit, f.disk_gb), (Sort::PricePerGpu, 5, 50));
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (q, param) in [
            ("min_gpus=0", "min_gpus"),
            ("min_gpus=abc", "min_gpus"),
            ("max_price=-1", "max_price"),
            ("max_price=NaN", "max_price"),
            ("providers=aws", "providers"),
            ("countries=USA", "countries"),
            ("interruptible=maybe", "interruptible"),
            ("sort=cheap", "sort"),
            ("limit=100000", "limit"),
            ("limit=", "limit"),
            ("min_gpus=4&max_gpus=2", "min_gpus"),
            ("gpu=a&gpu=b", "gpu"),
            ("cursor=zzz", "cursor"),
            ("colour=red", "colour"),
        ] {
            let e = parse(q).unwrap_err();
            assert_eq!(e.kind.status(), StatusCode::BAD_REQUEST, "{q}");
            assert!(
                e.message.contains(&format!("`{param}`")),
                "{q}: {}",
                e.message
            );
        }
    }

    #[test]
    fn a_cursor_only_works_with_its_own_query() {
        let f = parse("gpu=A100&limit=2").unwrap();
        let c = format!("2.{:x}", f.fingerprint());
        assert_eq!(
            parse(&format!("gpu=A100&limit=2&cursor={c}"))
                .unwrap()
                .offset,
            2
        );
        assert!(parse(&format!("gpu=H100&limit=2&cursor={c}")).is_err());
    }

    #[test]
    fn filters_and_sorts() {
        let a = offer("vastai:1", 2.0, 2, Some(0.99));
        let b = offer("vastai:2", 1.0, 1, None);
        let c = offer("ionet:x@US", 1.5, 4, Some(0.95));
        let mut v = vec![&a, &b, &c];
        sort(&mut v, Sort::Price);
        assert_eq!(
            v.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            ["vastai:2", "ionet:x@US", "vastai:1"]
        );
        sort(&mut v, Sort::PricePerGpu);
        assert_eq!(v[0].id, "ionet:x@US");
        sort(&mut v, Sort::Reliability);
        assert_eq!(
            v.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            ["vastai:1", "ionet:x@US", "vastai:2"]
        );
        let f = parse("min_gpus=2&max_price=1.8").unwrap();
        assert!(f.matches(&c) && !f.matches(&a) && !f.matches(&b));
        let f = parse("countries=CA").unwrap();
        assert!(!f.matches(&a));
        let f = parse("gpu=A100").unwrap();
        assert!(!f.matches(&a));
    }

    #[test]
    fn pages_are_rendered_again_for_a_refreshed_answer() {
        let f = parse("limit=1").unwrap();
        let old = Arc::new(Entry::new(vec![offer("vastai:1", 2.0, 1, None)], 0));
        let cache = PageCache::new(8);
        let key = (f.fingerprint(), f.offset);
        let p = Arc::new(render(&f, std::slice::from_ref(&old)));
        assert_eq!(p.matching, [1]);
        cache.insert(key, p);
        assert!(cache.get(key, &[old.id]).is_some());
        let new = Arc::new(Entry::new(
            vec![
                offer("vastai:2", 1.0, 1, None),
                offer("vastai:3", 3.0, 1, None),
            ],
            1,
        ));
        assert!(
            cache.get(key, &[new.id]).is_none(),
            "another answer, another page"
        );
        let p = render(&f, std::slice::from_ref(&new));
        let text = String::from_utf8(p.fragment.to_vec()).unwrap();
        assert!(
            text.starts_with("\"offers\":[{\"id\":\"vastai:2\""),
            "{text}"
        );
        assert!(text.contains("\"total\":2") && text.contains("\"next_cursor\":\"1."));
    }
}
