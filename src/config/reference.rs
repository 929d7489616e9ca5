//! The configuration reference, docs/configuration.md, generated from the commented example
//! (config/gpuproxyd.toml) and the built-in defaults ([`Config::default`]): a table per section,
//! every key with its default, the example's value and the comment that documents it. A key
//! without a comment is an error, so an undocumented key fails the docs test.
//!
//! A comment documents the keys that follow it up to the next blank line or comment (keys set
//! together share one); a key right after a section header without a comment of its own takes
//! the comment above the header.

use super::Config;

/// One documented key.
#[derive(Debug)]
struct Entry {
    section: String,
    key: String,
    example: String,
    doc: String,
}

/// The reference as Markdown, or the keys that have no comment.
pub fn reference(example: &str) -> Result<String, String> {
    let entries = entries(example)?;
    let defaults = toml::Value::try_from(Config::default()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let mut section = None::<&str>;
    for e in &entries {
        if section != Some(e.section.as_str()) {
            section = Some(&e.section);
            out += &format!(
                "\n### `[{}]`\n\n| key | default | demo | what |\n|---|---|---|---|\n",
                e.section
            );
        }
        let default = lookup(&defaults, &e.section, &e.key)
            .map(|v| shown(&v.to_string()))
            .unwrap_or_else(|| "(none)".to_owned());
        let example = shown(&e.example);
        let demo = if example == default {
            String::new()
        } else {
            example
        };
        out += &format!(
            "| `{}` | {default} | {demo} | {} |\n",
            e.key,
            e.doc.replace('|', "\\|")
        );
    }
    Ok(out.trim_start().to_owned())
}

fn lookup<'v>(root: &'v toml::Value, section: &str, key: &str) -> Option<&'v toml::Value> {
    let mut v = root;
    for part in section.split('.').chain([key]) {
        v = v.get(part)?;
    }
    Some(v)
}

/// A value as a table cell: code, shortened when long (rule lists).
fn shown(v: &str) -> String {
    let v = v.trim();
    if v.starts_with('[') && v.len() > 40 {
        return "(a list; see the file)".to_owned();
    }
    format!("`{}`", v.replace('|', "\\|"))
}

fn entries(example: &str) -> Result<Vec<Entry>, String> {
    let (mut out, mut missing) = (Vec::new(), Vec::new());
    let mut section = String::new();
    let mut pending: Vec<&str> = Vec::new(); // comment lines since the last key or blank line
    let mut above_header = String::new(); // the comment above the current section header
    let mut group = None::<String>; // the comment of the keys being read together
    let mut in_list = false;
    let mut seen_section = false;
    for line in example.lines() {
        let t = line.trim();
        if in_list {
            in_list = !t.starts_with(']');
            continue;
        }
        if t.is_empty() {
            group = None;
            if !seen_section {
                pending.clear(); // the file's own header
            }
            continue;
        }
        if let Some(c) = t.strip_prefix('#') {
            pending.push(c.trim());
            group = None;
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.to_owned();
            above_header = pending.join(" ");
            pending.clear();
            group = None;
            seen_section = true;
            continue;
        }
        let Some((key, value)) = t.split_once('=') else {
            return Err(format!("cannot read line `{t}`"));
        };
        let (key, value) = (key.trim().to_owned(), value.trim().to_owned());
        in_list = value.starts_with('[') && !value.ends_with(']');
        let doc = if !pending.is_empty() {
            let d = pending.join(" ");
            pending.clear();
            group = Some(d.clone());
            d
        } else if let Some(g) = &group {
            g.clone()
        } else if out.last().is_none_or(|e: &Entry| e.section != section)
            && !above_header.is_empty()
        {
            group = Some(above_header.clone());
            above_header.clone()
        } else {
            missing.push(format!("{section}.{key}"));
            String::new()
        };
        out.push(Entry {
            section: section.clone(),
            key,
            example: value,
            doc,
        });
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "keys without a comment in config/gpuproxyd.toml: {}",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_document_the_keys_after_them() {
        let text = "# file header\n\n[server]\n# one\na = 1\nb = 2\n\nc = 3\n";
        let e = entries(text).unwrap_err();
        assert!(e.contains("server.c"), "{e}");
        let text =
            "# the table\n[providers.x]\nkind = \"x\"\nlist = [\n  \"a\",\n]\n# own\nz = 1\n";
        let e = entries(text).unwrap();
        let docs: Vec<_> = e.iter().map(|e| (e.key.as_str(), e.doc.as_str())).collect();
        assert_eq!(
            docs,
            [("kind", "the table"), ("list", "the table"), ("z", "own")]
        );
    }

    #[test]
    fn the_shipped_example_documents_every_key() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gpuproxyd.toml");
        let text = std::fs::read_to_string(path).unwrap();
        reference(&text).unwrap();
    }
}
