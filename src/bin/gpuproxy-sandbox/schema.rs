//! Request validation against a provider's published OpenAPI definitions, answering as FastAPI
//! does (io.net's API is FastAPI): 422 `{"detail": [{"loc", "msg", "type"}]}` naming every
//! parameter or body field that breaks its definition. The definitions are the repository's copy
//! of io.net's (`openapi/providers/ionet-vmaas.json`, each operation with its source page), so
//! the sandbox refuses exactly what they refuse, no more and no less.
//!
//! The JSON Schema subset io.net's definitions use: `type` (one or a list), `anyOf`, `enum`,
//! `$ref` to `#/components/schemas/`, `required`, `properties`, `additionalProperties` (false or
//! a schema), `items`, `minItems`/`maxItems`, `minimum`/`maximum`/`exclusiveMinimum`, and
//! `format: uuid`.

use serde_json::{Value, json};

/// One operation's definition, found by method and path.
pub struct Operation<'a> {
    pub id: &'a str,
    /// Path parameters by name, as they appear in the request.
    path_params: Vec<(String, String)>,
    op: &'a Value,
}

/// The definitions document, loaded once.
pub struct Definitions {
    doc: Value,
}

impl Definitions {
    pub fn new(text: &str) -> Definitions {
        Definitions {
            doc: serde_json::from_str(text).expect("the stored definitions are JSON"),
        }
    }

    /// The operation `method path` is, if the definitions have one.
    pub fn operation(&self, method: &str, path: &str) -> Option<Operation<'_>> {
        let paths = self.doc["paths"].as_object()?;
        let method = method.to_ascii_lowercase();
        let want: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        for (template, item) in paths {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != want.len() {
                continue;
            }
            let mut params = Vec::new();
            let fits = parts.iter().zip(&want).all(|(t, w)| {
                match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    Some(name) => {
                        params.push((name.to_owned(), (*w).to_owned()));
                        !w.is_empty()
                    }
                    None => t == w,
                }
            });
            if let (true, Some(op)) = (fits, item.get(&method)) {
                return Some(Operation {
                    id: op["operationId"].as_str().unwrap_or("unknown"),
                    path_params: params,
                    op,
                });
            }
        }
        None
    }

    /// The FastAPI errors of a request to `op` (empty: valid). `query` is decoded pairs.
    pub fn check(&self, op: &Operation<'_>, query: &[(String, String)], body: &[u8]) -> Vec<Value> {
        let mut errors = Vec::new();
        for p in op.op["parameters"].as_array().into_iter().flatten() {
            let (name, place) = (
                p["name"].as_str().unwrap_or(""),
                p["in"].as_str().unwrap_or(""),
            );
            let given = match place {
                "query" => query
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone()),
                "path" => op
                    .path_params
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone()),
                _ => continue,
            };
            let loc = vec![json!(place), json!(name)];
            match given {
                None if p["required"] == json!(true) => {
                    errors.push(error(&loc, "Field required", "missing"));
                }
                None => {}
                Some(text) => {
                    self.check_text(&p["schema"], &text, &loc, &mut errors);
                }
            }
        }
        if let Some(schema) = op
            .op
            .pointer("/requestBody/content/application~1json/schema")
        {
            match serde_json::from_slice::<Value>(body) {
                Ok(v) => self.check_value(schema, &v, &[json!("body")], &mut errors),
                Err(_) if body.is_empty() => {
                    errors.push(error(&[json!("body")], "Field required", "missing"));
                }
                Err(e) => errors.push(error(
                    &[json!("body"), json!(e.column())],
                    "JSON decode error",
                    "json_invalid",
                )),
            }
        }
        errors
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
        {
            Some(name) => self.resolve(&self.doc["components"]["schemas"][name]),
            None => schema,
        }
    }

    /// A query or path value (text) against its schema: parsed as the schema's type first.
    fn check_text(&self, schema: &Value, text: &str, loc: &[Value], errors: &mut Vec<Value>) {
        let schema = self.resolve(schema);
        if let Some(any) = schema["anyOf"].as_array() {
            // FastAPI takes the first alternative the text parses as
            any_of(any, errors, |alt, e| self.check_text(alt, text, loc, e));
            return;
        }
        let value = match schema["type"].as_str() {
            Some("integer") => match text.trim().parse::<i64>() {
                Ok(n) => json!(n),
                Err(_) => {
                    errors.push(error(
                        loc,
                        "Input should be a valid integer, unable to parse string as an integer",
                        "int_parsing",
                    ));
                    return;
                }
            },
            Some("number") => match text.trim().parse::<f64>() {
                Ok(n) => json!(n),
                Err(_) => {
                    errors.push(error(
                        loc,
                        "Input should be a valid number, unable to parse string as a number",
                        "float_parsing",
                    ));
                    return;
                }
            },
            Some("null") => {
                errors.push(error(loc, "Input should be None", "none_required"));
                return;
            }
            _ => json!(text),
        };
        self.check_value(schema, &value, loc, errors);
    }

    /// A JSON value against its schema.
    fn check_value(&self, schema: &Value, v: &Value, loc: &[Value], errors: &mut Vec<Value>) {
        let schema = self.resolve(schema);
        if let Some(any) = schema["anyOf"].as_array() {
            any_of(any, errors, |alt, e| self.check_value(alt, v, loc, e));
            return;
        }
        if let Some(t) = schema["type"].as_str()
            && !of_type(t, v)
        {
            let (msg, kind) = match t {
                "integer" => ("Input should be a valid integer", "int_type"),
                "number" => ("Input should be a valid number", "float_type"),
                "string" => ("Input should be a valid string", "string_type"),
                "boolean" => ("Input should be a valid boolean", "bool_type"),
                "array" => ("Input should be a valid list", "list_type"),
                "object" => ("Input should be a valid dictionary", "dict_type"),
                _ => ("Input should be None", "none_required"),
            };
            errors.push(error(loc, msg, kind));
            return;
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(v)
        {
            let names: Vec<String> = allowed.iter().map(|a| format!("{a}")).collect();
            errors.push(error(
                loc,
                &format!("Input should be {}", names.join(" or ")),
                "enum",
            ));
            return;
        }
        if let Some(n) = v.as_f64() {
            for (key, ok, msg, kind) in [
                (
                    "minimum",
                    n >= schema["minimum"].as_f64().unwrap_or(f64::MIN),
                    "greater than or equal to",
                    "greater_than_equal",
                ),
                (
                    "maximum",
                    n <= schema["maximum"].as_f64().unwrap_or(f64::MAX),
                    "less than or equal to",
                    "less_than_equal",
                ),
                (
                    "exclusiveMinimum",
                    n > schema["exclusiveMinimum"].as_f64().unwrap_or(f64::MIN),
                    "greater than",
                    "greater_than",
                ),
            ] {
                if !ok {
                    errors.push(error(
                        loc,
                        &format!("Input should be {msg} {}", schema[key]),
                        kind,
                    ));
                }
            }
        }
        if schema["format"] == "uuid" && v.as_str().is_some_and(|s| !is_uuid(s)) {
            errors.push(error(loc, "Input should be a valid UUID", "uuid_parsing"));
        }
        if let Some(items) = v.as_array() {
            let n = items.len() as u64;
            if schema["minItems"].as_u64().is_some_and(|m| n < m) {
                errors.push(error(
                    loc,
                    &format!("List should have at least {} item", schema["minItems"]),
                    "too_short",
                ));
            }
            if schema["maxItems"].as_u64().is_some_and(|m| n > m) {
                errors.push(error(
                    loc,
                    &format!("List should have at most {} item", schema["maxItems"]),
                    "too_long",
                ));
            }
            if schema.get("items").is_some() {
                for (i, item) in items.iter().enumerate() {
                    let mut l = loc.to_vec();
                    l.push(json!(i));
                    self.check_value(&schema["items"], item, &l, errors);
                }
            }
        }
        if let Some(obj) = v.as_object() {
            for r in schema["required"].as_array().into_iter().flatten() {
                let name = r.as_str().unwrap_or("");
                if !obj.contains_key(name) {
                    let mut l = loc.to_vec();
                    l.push(json!(name));
                    errors.push(error(&l, "Field required", "missing"));
                }
            }
            let props = schema["properties"].as_object();
            for (k, val) in obj {
                let mut l = loc.to_vec();
                l.push(json!(k));
                match (
                    props.and_then(|p| p.get(k)),
                    schema.get("additionalProperties"),
                ) {
                    (Some(s), _) => self.check_value(s, val, &l, errors),
                    (None, Some(Value::Bool(false))) => {
                        errors.push(error(
                            &l,
                            "Extra inputs are not permitted",
                            "extra_forbidden",
                        ));
                    }
                    (None, Some(s)) if s.is_object() => self.check_value(s, val, &l, errors),
                    _ => {}
                }
            }
        }
    }
}

/// `anyOf`: valid when one alternative holds; otherwise the first alternative's errors.
fn any_of(alts: &[Value], errors: &mut Vec<Value>, mut check: impl FnMut(&Value, &mut Vec<Value>)) {
    let mut first = None;
    for alt in alts {
        let mut e = Vec::new();
        check(alt, &mut e);
        if e.is_empty() {
            return;
        }
        first.get_or_insert(e);
    }
    errors.extend(first.unwrap_or_default());
}

fn of_type(t: &str, v: &Value) -> bool {
    match t {
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => true,
    }
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn error(loc: &[Value], msg: &str, kind: &str) -> Value {
    json!({"loc": loc, "msg": msg, "type": kind})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs() -> Definitions {
        Definitions::new(include_str!("../../../openapi/providers/ionet-vmaas.json"))
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_published_bounds_are_enforced() {
        let d = defs();
        let vms =
            "/enterprise/v1/io-cloud/vmaas/deployment/0b8f6a0e-1c2d-4e5f-8a9b-0c1d2e3f4a5b/vms";
        let op = d.operation("GET", vms).unwrap();
        assert_eq!(op.id, "vms");
        let e = d.check(&op, &q(&[("page", "0"), ("page_size", "20")]), b"");
        assert_eq!(e[0]["loc"], json!(["query", "page"]));
        assert_eq!(e[0]["type"], "greater_than_equal");
        assert!(
            d.check(&op, &q(&[("page", "1"), ("page_size", "100")]), b"")
                .is_empty()
        );
        let e = d.check(&op, &q(&[("page_size", "101")]), b"");
        assert_eq!(e[0]["type"], "less_than_equal");
        let bad = d
            .operation("GET", "/enterprise/v1/io-cloud/vmaas/deployment/nope/vms")
            .unwrap();
        assert_eq!(d.check(&bad, &[], b"")[0]["type"], "uuid_parsing");

        let deploy = d
            .operation("POST", "/enterprise/v1/io-cloud/vmaas/deploy")
            .unwrap();
        let ok = br#"{"resource_private_name":"x","duration_hours":1,"gpus_per_vm":1,"hardware_id":12,"location_ids":["US"]}"#;
        assert!(d.check(&deploy, &[], ok).is_empty());
        let e = d.check(
            &deploy,
            &[],
            br#"{"resource_private_name":"x","duration_hours":0,"gpus_per_vm":9,"hardware_id":12,"image":"ubuntu","location_ids":[]}"#,
        );
        let types: Vec<&str> = e.iter().map(|x| x["type"].as_str().unwrap()).collect();
        assert!(types.contains(&"greater_than"), "{e:?}");
        assert!(types.contains(&"less_than_equal"), "{e:?}");
        assert!(types.contains(&"extra_forbidden"), "{e:?}");
        assert!(types.contains(&"too_short"), "{e:?}");
        let e = d.check(&deploy, &[], br#"{"duration_hours":1}"#);
        assert_eq!(e.len(), 3, "three required fields missing: {e:?}");

        let price = d
            .operation("GET", "/enterprise/v1/io-cloud/vmaas/price")
            .unwrap();
        let e = d.check(
            &price,
            &q(&[("hardware_id", "12"), ("currency", "eur")]),
            b"",
        );
        let locs: Vec<String> = e.iter().map(|x| x["loc"][1].to_string()).collect();
        assert!(locs.contains(&"\"currency\"".into()), "{e:?}");
        assert!(locs.contains(&"\"duration_hours\"".into()), "{e:?}");
        assert!(
            d.operation("GET", "/enterprise/v1/io-cloud/vmaas/nothing")
                .is_none()
        );
    }
}
