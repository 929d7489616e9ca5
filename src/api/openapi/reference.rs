//! docs/api.md's generated part: the API reference, written from the OpenAPI document.

/// The API reference, docs/api.md (between its `generated` markers), from the document: per
/// tag, each operation with its summary, description and parameters. An operation without a
/// summary is an error, so an undocumented route fails the docs test.
pub fn reference(doc: &serde_json::Value) -> Result<String, String> {
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
                // the path's parameters, then the operation's own
                let params: Vec<_> = [&ops["parameters"], &op["parameters"]]
                    .into_iter()
                    .flat_map(|p| p.as_array().into_iter().flatten())
                    .collect();
                if !params.is_empty() {
                    out += "\n| parameter | in | what |\n|---|---|---|\n";
                    for p in params {
                        let p = match p["$ref"].as_str() {
                            Some(r) => r
                                .strip_prefix("#/")
                                .map(|r| r.split('/').fold(doc, |v, k| &v[k]))
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
