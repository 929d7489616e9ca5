//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, kept in the repository as
//! `openapi/openapi.json` (a test checks it lists exactly the routes and methods of `Route`).

use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use super::{Body, respond};

pub const DOCUMENT: &str = include_str!("../../openapi/openapi.json");

pub fn document() -> Response<Body> {
    let mut resp = Response::new(respond::full(DOCUMENT));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::router::{Access, ROUTES};

    #[test]
    fn document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        let mut want = Vec::new();
        for r in ROUTES {
            if r.debug_only {
                continue; // off in production, not part of the API
            }
            for (m, _) in r.methods {
                want.push(format!("{} {}", m.as_str().to_lowercase(), r.pattern));
                let op = &paths[r.pattern][m.as_str().to_lowercase()];
                assert!(op.is_object(), "{} {} is not documented", m, r.pattern);
                assert!(
                    op["responses"].is_object(),
                    "{m} {} has no responses",
                    r.pattern
                );
                let public = op
                    .get("security")
                    .is_some_and(|s| s.as_array().is_some_and(|a| a.is_empty()));
                assert_eq!(
                    public,
                    r.access == Access::Public,
                    "{m} {}: `security` does not match the route's access",
                    r.pattern
                );
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
}
