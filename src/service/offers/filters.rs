//! `GET /v1/offers` query parameters: parsing and checking them (every error names the
//! parameter), the filter an offer must pass, the sort, and the fingerprint a cursor is tied to.

use std::fmt::Write as _;
use std::hash::BuildHasher;

use crate::config::OffersConfig;
use crate::error::{Error, Result};
use crate::providers::{Offer, OfferFilter, ProviderId, SearchQuery, gpu};
use crate::service::query::{Bounded, query, scalar_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum Sort {
    // cheapest first
    Price,
    PricePerGpu,
    // most reliable first (offers without a figure last)
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

/// `GET /v1/offers`'s query as the route declares it (and the MCP tool `search_offers`'s
/// arguments); [`Filters::from_query`] checks what one field cannot check alone.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OffersQuery {
    /// GPU model or family in any provider's spelling (`RTX 4090`, `GeForce RTX 4090`,
    /// `4090`, `H100`); an unknown name matches nothing.
    #[schemars(length(max = 64))]
    pub gpu: Option<String>,
    /// At least this many GPUs.
    pub min_gpus: Option<Bounded<1, 64>>,
    /// At most this many GPUs.
    pub max_gpus: Option<Bounded<1, 64>>,
    /// Memory per GPU, GB.
    pub min_gpu_memory_gb: Option<Positive>,
    /// USD per hour for the whole offer.
    pub max_price: Option<Positive>,
    /// USD per GPU-hour.
    pub max_price_per_gpu: Option<Positive>,
    /// Comma-separated provider ids (`vastai`, `ionet`).
    #[schemars(extend("example" = "vastai,ionet"))]
    pub providers: Option<String>,
    /// Comma-separated ISO 3166-1 alpha-2 codes.
    #[schemars(extend("example" = "US,CA"))]
    pub countries: Option<String>,
    /// `true` lists interruptible (bid) offers priced at the minimum bid; `false` on-demand
    /// offers only.
    #[schemars(extend("default" = false))]
    pub interruptible: Option<Flag>,
    /// Also list offers marked rented or sold out.
    #[schemars(extend("default" = false))]
    pub include_unavailable: Option<Flag>,
    /// At least this many ports the machine can map directly (Vast `direct_port_count`; offers
    /// that publish none, io.net's, do not pass).
    pub min_direct_ports: Option<Bounded<1, 65535>>,
    /// Disk to price Vast.ai storage for (default `offers.default_disk_gb`).
    pub disk_gb: Option<Bounded<1, 100_000>>,
    /// Cheapest first, cheapest per GPU first, or most reliable first; ties by id.
    #[schemars(extend("default" = "price"))]
    pub sort: Option<Sort>,
    /// Page size (default `offers.default_limit`, at most `offers.max_limit`, 200 unless
    /// configured).
    #[schemars(range(max = 200))]
    pub limit: Option<Bounded<1, { u32::MAX as i64 }>>,
    /// `next_cursor` of the previous page; only valid with the same filters.
    #[schemars(pattern(r"^[0-9]{1,7}\.[0-9a-f]{1,16}$"))]
    pub cursor: Option<String>,
}

/// A number greater than 0.
#[derive(Debug, Clone, Copy)]
pub struct Positive(pub f64);

crate::types::schema::schema_of!(Positive, "Positive", {"type": "number", "exclusiveMinimum": 0});
crate::types::schema::schema_of!(Flag, "Flag", {"type": "boolean"});

impl<'de> serde::Deserialize<'de> for Positive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = scalar_text(d)?;
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x > 0.0)
            .map(Positive)
            .ok_or_else(|| serde::de::Error::custom("must be a number greater than 0"))
    }
}

/// `true`/`1` or `false`/`0`.
#[derive(Debug, Clone, Copy)]
pub struct Flag(pub bool);

impl<'de> serde::Deserialize<'de> for Flag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match scalar_text(d)?.as_str() {
            "true" | "1" => Ok(Flag(true)),
            "false" | "0" => Ok(Flag(false)),
            _ => Err(serde::de::Error::custom("expected true or false")),
        }
    }
}

fn bad(param: &str, why: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("invalid query parameter `{param}`: {why}"))
}

/// A text parameter's value: not empty.
fn text<'a>(param: &str, v: &'a str) -> Result<&'a str> {
    if v.is_empty() {
        Err(bad(param, "empty value"))
    } else {
        Ok(v)
    }
}

impl Filters {
    pub fn parse(q: Option<&str>, cfg: &OffersConfig) -> Result<Filters> {
        Filters::from_query(query(q)?, cfg)
    }

    pub fn from_query(q: OffersQuery, cfg: &OffersConfig) -> Result<Filters> {
        let mut f = Filters {
            offer: OfferFilter::default(),
            providers: None,
            disk_gb: q.disk_gb.map_or(cfg.default_disk_gb, |d| d.0 as u32),
            sort: q.sort.unwrap_or(Sort::Price),
            limit: cfg.default_limit.get(),
            offset: 0,
        };
        if let Some(v) = &q.gpu {
            let v = text("gpu", v)?;
            if v.len() > 64 {
                return Err(bad("gpu", "at most 64 characters"));
            }
            f.offer.gpu = Some(gpu::canonical(v, None));
        }
        f.offer.min_gpus = q.min_gpus.map(|n| n.0 as u32);
        f.offer.min_direct_ports = q.min_direct_ports.map(|n| n.0 as u32);
        f.offer.max_gpus = q.max_gpus.map(|n| n.0 as u32);
        f.offer.min_gpu_memory_gb = q.min_gpu_memory_gb.map(|x| x.0);
        f.offer.max_price = q.max_price.map(|x| x.0);
        f.offer.max_price_per_gpu = q.max_price_per_gpu.map(|x| x.0);
        if let Some(v) = &q.providers {
            let mut list = Vec::new();
            for p in text("providers", v)?.split(',').map(str::trim) {
                let id = ProviderId::parse(p).ok_or_else(|| {
                    bad(
                        "providers",
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
        if let Some(v) = &q.countries {
            let mut list = Vec::new();
            for c in text("countries", v)?.split(',').map(str::trim) {
                list.push(crate::types::text::iso_country(c).ok_or_else(|| {
                    bad(
                        "countries",
                        format!(
                            "`{}` is not an ISO 3166-1 alpha-2 code",
                            crate::error::truncate(c, 16)
                        ),
                    )
                })?);
            }
            list.sort();
            list.dedup();
            f.offer.countries = Some(list);
        }
        f.offer.interruptible = q.interruptible.is_some_and(|b| b.0);
        f.offer.include_unavailable = q.include_unavailable.is_some_and(|b| b.0);
        if let Some(n) = q.limit {
            if n.0 > i64::from(cfg.max_limit) {
                return Err(bad(
                    "limit",
                    format!("must be between 1 and {}", cfg.max_limit),
                ));
            }
            f.limit = n.0 as u32;
        }
        if let (Some(lo), Some(hi)) = (f.offer.min_gpus, f.offer.max_gpus)
            && lo > hi
        {
            return Err(bad("min_gpus", "greater than max_gpus"));
        }
        if let Some(c) = q.cursor {
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
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{:?}|{}|{:?}",
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
            self.limit,
            self.offer.min_direct_ports
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
