//! Rendered `GET /v1/offers` pages, and rendering one: the answers filtered, sorted, paged and
//! serialized once per (query, provider answers) instead of once per request.

use std::sync::Arc;

use serde::Serialize;

use super::filters::{Filters, sort};
use crate::cache::swr::Entry;
use crate::providers::Offer;

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
    pub(super) fragment: bytes::Bytes,
    pub(super) matching: Vec<usize>,
    /// The page's offers themselves, for carriers that write their own encoding (gRPC).
    pub(super) offers: Vec<Offer>,
    pub(super) total: usize,
    pub(super) next_cursor: Option<String>,
    /// The offers in another carrier's encoding (gRPC's), made on its first use of the page.
    pub(super) encoded: std::sync::OnceLock<bytes::Bytes>,
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

    pub(super) fn get(&self, key: (u64, usize), versions: &[u64]) -> Option<Arc<RenderedPage>> {
        self.map
            .pin()
            .get(&key)
            .filter(|p| p.versions == versions)
            .cloned()
    }

    pub(super) fn insert(&self, key: (u64, usize), page: Arc<RenderedPage>) {
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
pub(super) fn render(f: &Filters, entries: &[Arc<Entry<Vec<Offer>>>]) -> RenderedPage {
    let mut matching_per: Vec<usize> = Vec::with_capacity(entries.len());
    // the answers are priced for the disk size the search was made for; the client asked for
    // `disk_gb`, so filters and prices see the offers at that size
    let priced = crate::providers::model::disk_bucket(f.disk_gb);
    let mut owned: Vec<Offer> = Vec::new();
    for e in entries {
        let before = owned.len();
        owned.extend(
            e.value
                .iter()
                .map(|o| o.at_disk(f.disk_gb, priced))
                .filter(|o| f.matches(o)),
        );
        matching_per.push(owned.len() - before);
    }
    let mut matching: Vec<&Offer> = owned.iter().collect();
    sort(&mut matching, f.sort);
    let total = matching.len();
    let end = f.offset.saturating_add(f.limit as usize).min(total);
    let page: Vec<&Offer> = matching
        .get(f.offset.min(total)..end)
        .unwrap_or_default()
        .to_vec();
    let next_cursor = (end < total).then(|| format!("{end}.{:x}", f.fingerprint()));
    let offers: Vec<Offer> = page.iter().map(|o| (*o).clone()).collect();
    let json = serde_json::to_vec(&PageFragment {
        count: page.len(),
        offers: page,
        total,
        next_cursor: next_cursor.clone(),
    })
    .expect("offers serialize");
    RenderedPage {
        versions: entries.iter().map(|e| e.id).collect(),
        // the object's members without its braces, to splice into the answer
        fragment: bytes::Bytes::from(json[1..json.len() - 1].to_vec()),
        matching: matching_per,
        offers,
        total,
        next_cursor,
        encoded: std::sync::OnceLock::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{offer, parse};
    use super::*;

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
