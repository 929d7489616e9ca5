//! The OpenAPI document works with the generators users run: `openapi-python-client` (pinned,
//! from PyPI, in a cached virtual environment) generates a client with every operation of
//! `openapi/openapi.json`, and that client drives the stack the demo runs (the daemon with
//! PostgreSQL through PgBouncer, Redis and the sandbox providers): offers, a rental (replayed
//! under its `Idempotency-Key`), the instance, the list, a destroy.

use crate::support;
use crate::support::stack::Stack;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::rentals::account;

const GENERATOR: &str = "openapi-python-client==0.29.1";

/// Generates the client into `dir`; the generator's warnings (a schema it could not read drops
/// its operations) fail the test.
fn generate(dir: &Path) -> std::path::PathBuf {
    let bin = support::pyenv::venv(GENERATOR);
    let config = dir.join("config.yml");
    // no post-processing hooks (formatters): the generated code is used as generated
    std::fs::write(&config, "post_hooks: []\n").unwrap();
    let out = Command::new(bin.join("openapi-python-client"))
        .current_dir(dir)
        .args(["generate", "--meta", "none", "--config"])
        .arg(&config)
        .arg("--path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
        .output()
        .expect("spawn openapi-python-client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the generator failed:\n{text}");
    assert!(
        !text.contains("Warning") && !text.contains("Unable to"),
        "the generator could not read all of the document:\n{text}"
    );
    dir.to_path_buf()
}

/// Every operation of the document is a module of the generated client.
fn operations(generated: &Path) -> (usize, usize) {
    let doc: Value = gpuproxyd::api::openapi::Document::new().value;
    let documented = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|ops| ops.as_object().unwrap().keys())
        .filter(|m| *m != "parameters")
        .count();
    let mut generated_ops = 0;
    let api = generated.join("gpuproxyd_api_client/api");
    for tag in std::fs::read_dir(&api).unwrap() {
        let tag = tag.unwrap().path();
        if tag.is_dir() {
            generated_ops += std::fs::read_dir(&tag)
                .unwrap()
                .filter(|f| {
                    let name = f.as_ref().unwrap().file_name();
                    let name = name.to_string_lossy();
                    name.ends_with(".py") && name != "__init__.py"
                })
                .count();
        }
    }
    (documented, generated_ops)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generated_python_client_has_every_operation_and_rents_with_the_demo_stack() {
    let Stack {
        db,
        sb: _sandbox,
        d,
    } = Stack::start("generated_client", &[], &["ratelimit.enabled=false"]).await;
    let token = account(&db, "generated", 1000.0, 5);
    let tmp = tempfile::tempdir().unwrap();
    let generated = tokio::task::block_in_place(|| generate(tmp.path()));
    let (documented, ops) = operations(&generated);
    assert_eq!(ops, documented, "operations generated vs documented");

    let python = support::pyenv::venv(GENERATOR).join("python");
    let url = format!("https://{}", d.https);
    let out = tokio::task::block_in_place(|| {
        Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/it/openapi_client/drive.py"
            ))
            .arg(&generated)
            .args([&url, &token])
            .output()
            .expect("spawn the generated client's driver")
    });
    assert!(
        out.status.success(),
        "the generated client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["offers"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["statuses"]["rent"], 201, "{report}");
    assert_eq!(report["replayed_same"], true, "{report}");
    let id = report["rented"]["id"].as_str().unwrap();
    assert_eq!(report["shown"]["id"], id);
    assert!(report["shown"]["events"].as_u64().unwrap() >= 2, "{report}");
    assert!(
        report["listed"].as_array().unwrap().iter().any(|x| x == id),
        "{report}"
    );
    assert!(
        ["terminating", "terminated"].contains(&report["destroyed"].as_str().unwrap()),
        "{report}"
    );
}
