//! The OpenAPI 3.1 description of the API: generated at start-up from the route table
//! (`generate`, from each operation's [`op::Op`] and the JSON Schemas of its types), served at
//! `GET /openapi.json`, read by the MCP tool listing, and rendered as docs/api.md (`reference`).
//! `openapi/openapi.json` is the committed copy for tools that read a file; a test holds it equal
//! to the generated one.

pub mod generate;
pub mod op;
pub mod reference;

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::Value;

use super::{Body, respond};

/// The document, generated once.
pub struct Document {
    pub value: Value,
    text: Bytes,
}

impl Document {
    /// The document of [`super::router::ROUTES`]. A route whose documentation is incomplete (no
    /// summary, an unknown tag or path parameter) is a programming error, caught by the unit
    /// tests before it can ship.
    pub fn new() -> Document {
        let text = generate::text(super::router::ROUTES)
            .unwrap_or_else(|e| panic!("the OpenAPI document cannot be generated: {e}"));
        let value = serde_json::from_str(&text).expect("the generated document is JSON");
        Document {
            value,
            text: Bytes::from(text),
        }
    }

    pub fn response(&self) -> Response<Body> {
        let mut resp = Response::new(respond::full(self.text.clone()));
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.text).expect("generated from a String")
    }
}

impl Default for Document {
    fn default() -> Self {
        Document::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::router::{Access, ROUTES};

    /// Every route and method of the table is in the document, public ones without `security`.
    #[test]
    fn document_lists_exactly_the_routes() {
        let doc = Document::new().value;
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        let mut want = Vec::new();
        for r in ROUTES.iter().filter(|r| !r.debug_only) {
            for (m, _, _) in r.methods {
                want.push(format!("{} {}", m.as_str().to_lowercase(), r.pattern));
                let op = &paths[r.pattern][m.as_str().to_lowercase()];
                let public = op
                    .get("security")
                    .is_some_and(|s| s.as_array().is_some_and(|a| a.is_empty()));
                assert_eq!(public, r.access == Access::Public, "{m} {}", r.pattern);
            }
        }
        let mut have: Vec<String> = paths
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| *k != "parameters")
                    .map(move |m| format!("{m} {p}"))
            })
            .collect();
        want.sort();
        have.sort();
        assert_eq!(want, have);
    }

    /// The committed copy is the generated document (`GPUPROXY_BLESS=1 cargo test` rewrites it).
    #[test]
    fn committed_copy_is_the_generated_document() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
        let generated = Document::new();
        if std::env::var_os("GPUPROXY_BLESS").is_some() {
            std::fs::write(path, generated.text()).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap();
        assert!(
            committed == generated.text(),
            "openapi/openapi.json is not the generated document: run \
             `GPUPROXY_BLESS=1 cargo test --lib openapi` and commit the result"
        );
    }

    /// Operation ids are unique (generated clients name their calls by them).
    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<&str> = ROUTES
            .iter()
            .flat_map(|r| r.methods.iter().map(|(_, _, op)| op.id))
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }
}
