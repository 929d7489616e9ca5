//! The generated parts of the docs are what the code and the shipped files say: the metrics
//! table (from `metrics::CATALOG`), the gRPC methods (from `api::grpc::METHODS`), the configuration reference (from config/gpuproxyd.toml and
//! the built-in defaults), the API reference (from openapi/openapi.json), and a runbook entry
//! for every alert rule. Each generator fails on an undocumented metric, key or route.
//! `GPUPROXY_BLESS=1 cargo test --test it docs::` writes the generated parts in place.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Checks (or, blessing, writes) the text between `<!-- generated:NAME -->` and
/// `<!-- end:NAME -->` in `file`.
fn check(file: &str, name: &str, generated: &str) {
    let path = root().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let (open, close) = (
        format!("<!-- generated:{name} -->\n"),
        format!("<!-- end:{name} -->"),
    );
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("{file} has no {open}"))
        + open.len();
    let end = text[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("{file} has no {close}"))
        + start;
    let want = format!("{}\n", generated.trim_end());
    if text[start..end] == want {
        return;
    }
    if std::env::var_os("GPUPROXY_BLESS").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &text[..start], &text[end..])).unwrap();
        return;
    }
    panic!(
        "{file}: the generated part `{name}` is out of date; run \
         GPUPROXY_BLESS=1 cargo test --test it docs:: and commit the result"
    );
}

#[test]
fn the_metrics_reference_lists_every_metric() {
    check(
        "docs/metrics.md",
        "metrics",
        &gpuproxyd::metrics::docs_table(),
    );
}

#[test]
fn the_grpc_page_lists_every_method() {
    check(
        "docs/grpc.md",
        "grpc-methods",
        &gpuproxyd::api::grpc::docs_table(),
    );
}

#[test]
fn the_configuration_reference_documents_every_key() {
    let example = std::fs::read_to_string(root().join("config/gpuproxyd.toml")).unwrap();
    let reference = gpuproxyd::config::reference::reference(&example).unwrap();
    check("docs/configuration.md", "config", &reference);
}

#[test]
fn the_api_reference_documents_every_route() {
    check(
        "docs/api.md",
        "api",
        &gpuproxyd::api::openapi::reference::reference(
            &gpuproxyd::api::openapi::Document::new().value,
        )
        .unwrap(),
    );
}

/// Every alert in config/prometheus/alerts.yml has a runbook entry (`### AlertName`) in
/// docs/metrics.md, and every entry names a live alert.
#[test]
fn every_alert_has_a_runbook_entry() {
    let rules = std::fs::read_to_string(root().join("config/prometheus/alerts.yml")).unwrap();
    let mut alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:").map(str::trim))
        .collect();
    alerts.sort();
    let docs = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let mut entries: Vec<&str> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .filter(|h| h.starts_with("Gpuproxy"))
        .collect();
    entries.sort();
    assert!(!alerts.is_empty());
    assert_eq!(
        alerts, entries,
        "alerts vs runbook entries in docs/metrics.md"
    );
}

/// No doc of the repository points outside it (the design sheets the project started from are
/// not shipped): relative links resolve to files in the checkout.
#[test]
fn docs_link_only_to_files_in_the_repository() {
    let mut files = vec![root().join("README.md"), root().join("loadtest/RESULTS.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        files.push(e.unwrap().path());
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("../shared/"),
            "{} names ../shared/",
            f.display()
        );
        let dir = f.parent().unwrap();
        for (at, _) in text.match_indices("](") {
            let target = text[at + 2..].split([')', '#']).next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            assert!(
                dir.join(target).exists(),
                "{}: link to {target}, which is not in the repository",
                f.display()
            );
        }
    }
}

/// Nor does the code: a comment that cites a fact points into the repository (docs/), never to
/// notes outside it.
#[test]
fn the_code_cites_only_the_repository() {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p
                .extension()
                .is_some_and(|x| x == "rs" || x == "sh" || x == "py")
            {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    for d in ["src", "scripts", "loadtest"] {
        walk(&root().join(d), &mut files);
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for outside in [
            "STACK-NOTES",
            "shared/DESIGN",
            "../shared/",
            "shared/providers.md",
        ] {
            assert!(
                !text.contains(outside),
                "{} cites {outside}, which is not in the repository",
                f.display()
            );
        }
    }
}
