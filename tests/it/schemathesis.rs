//! The OpenAPI document against the running daemon: schemathesis generates requests from
//! `openapi/openapi.json` (valid and invalid ones, then stateful sequences following the links it
//! infers) and fails on any 5xx, any status or header the document does not list, any body that
//! breaks its schema, a schema-valid request refused or an invalid one accepted.
//!
//! The daemon runs as a process with PostgreSQL (through PgBouncer), Redis and the sandbox
//! providers, so the requests reach the real handlers and the real upstream clients. Rate limits
//! are off (the run is one client sending thousands of requests). Schemathesis is installed into
//! a virtual environment under `~/.cache` on first use (pinned version, from PyPI).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::accounts::TestDb;
use support::sandbox::Sandbox;
use support::services;

const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// The `st` executable of a virtual environment holding [`SCHEMATHESIS`], created on first use.
fn schemathesis() -> PathBuf {
    let st = support::pyenv::venv(SCHEMATHESIS).join("st");
    assert!(st.exists(), "{} missing after install", st.display());
    st
}

/// One `st run` over the operations `include` selects (a path regex), authenticated by `token`.
/// Its failures as text when it found any.
fn st_run(
    st: &Path,
    url: &str,
    token: &str,
    include: &[&str],
    exclude: &[&str],
    report: &Path,
) -> Result<(), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi");
    // schemathesis keeps a cache (crashes to replay first) in its working directory: a fresh one
    // per run, so every run is the same seeded run, and nothing lands in the source tree
    let cwd = report.join("workdir");
    let _ = std::fs::remove_dir_all(&cwd);
    std::fs::create_dir_all(&cwd).expect("schemathesis working directory");
    let mut cmd = Command::new(st);
    cmd.current_dir(&cwd)
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .arg(dir.join("openapi.json"))
        .args(["--url", url])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--tls-verify", "false"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,\
             positive_data_acceptance,negative_data_rejection",
        ])
        .args(["--seed", "1"])
        .args(["--max-examples", "150"])
        // one worker: Python 3.11's `ast` is not thread-safe (CPython gh-106905), and hypothesis
        // parses sources while describing strategies
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(report)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false");
    for p in include {
        cmd.args(["--include-path-regex", p]);
    }
    for p in exclude {
        cmd.args(["--exclude-path-regex", p]);
    }
    let out = cmd.output().expect("spawn st");
    let text = String::from_utf8_lossy(&out.stdout);
    std::fs::write(
        report.join(format!("st-{}.log", out.status)),
        text.as_bytes(),
    )
    .ok();
    if !out.status.success() {
        return Err(format!(
            "schemathesis found failures ({}; full output in {}):\n{}\n{}",
            out.status,
            report.display(),
            failures(&text),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // a run that tested nothing would pass too
    assert!(
        text.contains(" generated") && !text.contains("Tested: 0"),
        "schemathesis ran no case:\n{text}"
    );
    Ok(())
}

/// The failures section and the summary of an `st run` output, without the long tracebacks of
/// its errors section.
fn failures(text: &str) -> String {
    let from = |h: &str| text.find(h);
    let failures = from("= FAILURES =").map_or("", |i| {
        let end = from("= WARNINGS =")
            .or(from("= SUMMARY ="))
            .unwrap_or(text.len());
        &text[i..end.max(i)]
    });
    let errors = from("= ERRORS =").map_or(String::new(), |i| {
        text[i..]
            .lines()
            .filter(|l| l.starts_with('_') || l.contains("Error"))
            .map(|l| l.chars().take(300).collect::<String>())
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    });
    let summary = from("= SUMMARY =").map_or("", |i| &text[i..]);
    let mut out = format!("{errors}\n{failures}\n{summary}");
    if out.len() > 30_000 {
        out = out.chars().take(30_000).collect();
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_holds_for_generated_requests() {
    let st = schemathesis();
    let s = services::shared();
    let db = TestDb::new(s, "st");
    let sandbox = Sandbox::start(&[]);
    // the user routes run on an account with room to rent; the admin routes with a key of an
    // account of its own, since they suspend and resume whatever account names they generate
    db.cli(&[
        "accounts",
        "create",
        "--name",
        "tenant",
        "--daily-budget-usd",
        "1000",
        "--max-instances",
        "50",
    ]);
    let user = db.cli(&["keys", "create", "--account", "tenant"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, admin) = db.account_with_key("operators", &["admin"]);
    let d = sandbox
        .daemon(
            &db,
            &[
                "ratelimit.enabled=false",
                "rentals.account_upstream_calls_per_minute=100000",
                // webhooks it creates may name any public address: never sent to from here
                "webhooks.paused=true",
                // a connection that ends without an answer says why in the log
                "log.level=\"info,gpuproxyd::server=debug\"",
                // no idle reaping while it runs: a keep-alive connection the daemon closes after
                // its idle minute just as the client's pool reuses it for a POST is HTTP/1.1's
                // inherent race (RFC 9112 9.6), which the client cannot retry (two full runs
                // failed so, each with one `idle_timeout` close)
                "connections.idle_timeout_ms=600000",
            ],
        )
        .await;
    let url = format!("https://{}", d.https);
    // kept after the test, for `st replay` and the JUnit report
    let report = std::env::temp_dir().join("gpuproxyd-schemathesis");
    let admin_paths = "^/v1/admin/";
    std::fs::create_dir_all(&report).unwrap();
    let result = tokio::task::block_in_place(|| {
        st_run(&st, &url, &user, &[], &[admin_paths], &report)?;
        st_run(&st, &url, &admin, &[admin_paths], &[], &report)
    });
    if let Err(failures) = result {
        // the daemon's own account of the failing requests (errors and internal failures)
        let log = d.log();
        std::fs::write(report.join("daemon.log"), &log).ok();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("\"ERROR\"") || l.contains("\"WARN\"") || l.contains("connection error")
            })
            .take(30)
            .collect();
        let page = d.scrape().await;
        let closes: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("gpuproxy_connections_closed_total") && !l.ends_with(" 0"))
            .collect();
        panic!(
            "{failures}\ndaemon errors, warnings and connection errors:\n{}\nconnections the daemon closed:\n{}",
            errors.join("\n"),
            closes.join("\n")
        );
    }
}
