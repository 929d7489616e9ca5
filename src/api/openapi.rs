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

/// The API reference, docs/api.md (between its `generated` markers), from the document: per
/// tag, each operation with its summary, description and parameters. An operation without a
/// summary is an error, so an undocumented route fails the docs test.
pub fn reference() -> Result<String, String> {
    let doc: serde_json::Value = serde_json::from_str(DOCUMENT).map_err(|e| e.to_string())?;
    let paths = doc["paths"].as_object().ok_or("no paths")?;
    let mut out = String::new();
    let mut missing = Vec::new();
    let tags = doc["tags"].as_array().ok_or("no tags")?;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().into_iter().flatten() {
            let tagged = op["tags"][0].as_str();
            if method != "parameters" && !tags.iter().any(|t| t["name"].as_str() == tagged) {
                missing.push(format!(
                    "{} {path} (no declared tag)",
                    method.to_uppercase()
                ));
            }
        }
    }
    for tag in tags {
        let name = tag["name"].as_str().unwrap_or_default();
        out += &format!("\n## {name}\n");
        if let Some(d) = tag["description"].as_str() {
            out += &format!("\n{d}.\n");
        }
        for (path, ops) in paths {
            for (method, op) in ops.as_object().into_iter().flatten() {
                if method == "parameters" || !op["tags"].as_array().is_some_and(|t| t[0] == name) {
                    continue;
                }
                let m = method.to_uppercase();
                let Some(summary) = op["summary"].as_str() else {
                    missing.push(format!("{m} {path}"));
                    continue;
                };
                out += &format!("\n### `{m} {path}`\n\n{summary}.\n");
                if let Some(d) = op["description"].as_str() {
                    out += &format!("\n{}\n", d.trim());
                }
                let params: Vec<_> = op["parameters"].as_array().into_iter().flatten().collect();
                if !params.is_empty() {
                    out += "\n| parameter | in | what |\n|---|---|---|\n";
                    for p in params {
                        let p = match p["$ref"].as_str() {
                            Some(r) => r
                                .strip_prefix("#/")
                                .map(|r| r.split('/').fold(&doc, |v, k| &v[k]))
                                .unwrap_or(p),
                            None => p,
                        };
                        out += &format!(
                            "| `{}` | {} | {} |\n",
                            p["name"].as_str().unwrap_or("?"),
                            p["in"].as_str().unwrap_or("?"),
                            p["description"]
                                .as_str()
                                .unwrap_or("")
                                .replace('\n', " ")
                                .replace('|', "\\|")
                        );
                    }
                }
                let codes: Vec<&String> = op["responses"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(c, _)| c)
                    .collect();
                let codes: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
                out += &format!("\nAnswers: {}.\n", codes.join(", "));
            }
        }
    }
    if missing.is_empty() {
        Ok(out.trim_start().to_owned())
    } else {
        Err(format!(
            "operations without a summary: {}",
            missing.join(", ")
        ))
    }
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

    /// A GET route's query parameters in the document are the fields of the type its handler
    /// reads the query into (the route table names the type).
    #[test]
    fn query_parameters_are_the_route_types_fields() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let resolve = |p: &serde_json::Value| match p["$ref"].as_str() {
            Some(r) => r
                .strip_prefix("#/")
                .unwrap()
                .split('/')
                .fold(&doc, |v, k| &v[k])
                .clone(),
            None => p.clone(),
        };
        for r in ROUTES.iter().filter(|r| !r.debug_only) {
            let Some(op) = doc["paths"][r.pattern].get("get") else {
                continue;
            };
            let mut documented: Vec<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(resolve)
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            documented.sort();
            let mut declared: Vec<String> = r
                .query
                .map(|f| f().iter().map(|s| s.to_string()).collect())
                .unwrap_or_default();
            declared.sort();
            assert_eq!(documented, declared, "GET {}", r.pattern);
        }
    }
}
