//! `GET /v1/offers` query parameters: parsing and checking them (every error names the
//! parameter), the filter an offer must pass, the sort, and the fingerprint a cursor is tied to.

use std::fmt::Write as _;
use std::hash::BuildHasher;

use crate::config::OffersConfig;
use crate::error::{Error, Result};
use crate::providers::{Offer, OfferFilter, ProviderId, SearchQuery, gpu};

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
    /// What an offer must be (shared with renting by spec).
    pub offer: OfferFilter,
    pub providers: Option<Vec<ProviderId>>,
    pub disk_gb: u32,
    pub sort: Sort,
    pub limit: u32,
    pub offset: usize,
}

/// The largest offset a cursor may carry.
const MAX_OFFSET: usize = 10_000_000;

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
    crate::types::text::percent_decode(&raw.replace('+', " "))
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
            offer: OfferFilter::default(),
            providers: None,
            disk_gb: cfg.default_disk_gb,
            sort: Sort::Price,
            limit: cfg.default_limit.get(),
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
                    f.offer.gpu = Some(gpu::canonical(&v, None));
                }
                "min_gpus" | "max_gpus" => {
                    let n: u32 = number(name, &v)?;
                    if !(1..=64).contains(&n) {
                        return Err(bad(name, "must be between 1 and 64"));
                    }
                    if *name == "min_gpus" {
                        f.offer.min_gpus = Some(n)
                    } else {
                        f.offer.max_gpus = Some(n)
                    }
                }
                "min_gpu_memory_gb" => {
                    f.offer.min_gpu_memory_gb = Some(positive(name, number(name, &v)?)?)
                }
                "max_price" => f.offer.max_price = Some(positive(name, number(name, &v)?)?),
                "max_price_per_gpu" => {
                    f.offer.max_price_per_gpu = Some(positive(name, number(name, &v)?)?)
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
                    f.offer.countries = Some(list);
                }
                "interruptible" => f.offer.interruptible = boolean(name, &v)?,
                "include_unavailable" => f.offer.include_unavailable = boolean(name, &v)?,
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
        if let (Some(lo), Some(hi)) = (f.offer.min_gpus, f.offer.max_gpus)
            && lo > hi
        {
            return Err(bad("min_gpus", "greater than max_gpus"));
        }
        if let Some(c) = cursor {
            let (off, fp) = c
                .split_once('.')
                .ok_or_else(|| bad("cursor", "not a cursor from a previous page"))?;
            // no page is further than the longest answer we would ever hold
            let off: usize = off
                .parse()
                .ok()
                .filter(|o| *o <= MAX_OFFSET)
                .ok_or_else(|| bad("cursor", "not a cursor from a previous page"))?;
            if fp != format!("{:x}", f.fingerprint()) {
                return Err(bad("cursor", "belongs to a query with other filters"));
            }
            f.offset = off;
        }
        Ok(f)
    }

    /// Identifies the filters and sort (not the page), so a cursor is only used with its query.
    pub(super) fn fingerprint(&self) -> u64 {
        let mut s = String::new();
        let _ = write!(
            s,
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{:?}|{}",
            self.offer.gpu,
            self.offer.min_gpus,
            self.offer.max_gpus,
            self.offer.min_gpu_memory_gb,
            self.offer.max_price,
            self.offer.max_price_per_gpu,
            self.providers,
            self.offer.countries,
            self.offer.interruptible,
            self.offer.include_unavailable,
            self.disk_gb,
            self.sort,
            self.limit
        );
        foldhash::fast::FixedState::with_seed(0x6770_7864).hash_one(&s)
    }

    pub fn search_query(&self) -> SearchQuery {
        SearchQuery {
            gpu: self.offer.gpu.clone(),
            interruptible: self.offer.interruptible,
            // a few sizes upstream (prices are scaled back to `disk_gb` when rendered)
            disk_gb: crate::providers::model::disk_bucket(self.disk_gb),
        }
    }

    pub fn wants(&self, p: ProviderId) -> bool {
        self.providers.as_ref().is_none_or(|l| l.contains(&p))
    }

    pub fn matches(&self, o: &Offer) -> bool {
        self.offer.matches(o)
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

#[cfg(test)]
mod tests {
    use super::super::testing::{offer, parse};
    use super::*;

    #[test]
    fn parses_every_filter() {
        for p in ["vastai", "ionet"] {
            ProviderId::register(p);
        }
        let f = parse("gpu=geforce+rtx+4090&min_gpus=2&max_gpus=8&min_gpu_memory_gb=20&max_price=3.5&providers=ionet,vastai&countries=us,ca&interruptible=false&sort=price_per_gpu&limit=5&disk_gb=50").unwrap();
        assert_eq!(f.offer.gpu.as_deref(), Some("RTX 4090"));
        assert_eq!((f.offer.min_gpus, f.offer.max_gpus), (Some(2), Some(8)));
        assert_eq!(
            f.providers,
            // a set, kept sorted by id
            Some(vec![
                ProviderId::register("ionet").unwrap(),
                ProviderId::register("vastai").unwrap()
            ])
        );
        assert_eq!(
            f.offer.countries,
            Some(vec!["CA".to_owned(), "US".to_owned()])
        );
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
            assert_eq!(e.kind.status(), hyper::StatusCode::BAD_REQUEST, "{q}");
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
}
