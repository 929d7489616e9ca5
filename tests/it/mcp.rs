//! MCP (`POST /mcp`, issue 17), end to end: the daemon as a process with PostgreSQL (through
//! PgBouncer), Redis and the sandbox; an agent session driven by the official MCP Python SDK
//! (`mcp` from PyPI, pinned, installed on first use) in both protocol eras it negotiates, and the
//! transport's rules checked request by request.

use crate::support;
use crate::support::stack::Stack;

use std::process::Command;

use serde_json::{Value, json};
use support::client::authed;
use support::rentals::{KEY_A, account};

const MCP_SDK: &str = "mcp==2.3.0";

/// Runs tests/mcp/agent.py against the daemon; its JSON report.
fn agent(url: &str, token: &str, mode: &str) -> Value {
    let python = support::pyenv::venv(MCP_SDK).join("python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/mcp/agent.py");
    let out = Command::new(python)
        .arg(script)
        .args([url, token, mode, &format!("{KEY_A} agent@example")])
        .output()
        .expect("spawn the MCP agent");
    assert!(
        out.status.success(),
        "the MCP agent ({mode}) failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "agent output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_sdk_lists_the_tools_searches_rents_and_destroys_in_both_eras() {
    let Stack {
        db,
        sb: _sandbox,
        d,
    } = Stack::start("mcp1", &[], &["ratelimit.enabled=false"]).await;
    let token = account(&db, "agentic", 1000.0, 5);
    // commands need the account's and the key's exec policy (set before the key is first used)
    db.allow_exec("agentic", &token, &[]);
    let url = format!("https://{}/mcp", d.https);
    let tools = [
        "destroy_instance",
        "get_command",
        "get_instance",
        "get_usage",
        "list_commands",
        "list_instances",
        "rent_instance",
        "run_command",
        "search_offers",
    ];
    for (mode, version) in [("auto", "2026-07-28"), ("legacy", "2025-11-25")] {
        let report = tokio::task::block_in_place(|| agent(&url, &token, mode));
        assert_eq!(report["protocol_version"], version, "{mode}: {report:#}");
        assert_eq!(report["tools"], json!(tools), "{mode}");
        assert_eq!(report["schemas_are_objects"], true);
        assert!(report["offers_seen"].as_u64().unwrap() > 0);
        // one idempotency key, one instance
        assert_eq!(
            report["rented"], report["rented_again"],
            "{mode}: {report:#}"
        );
        let id = report["rented"].as_str().unwrap();
        assert!(report["listed"].as_array().unwrap().iter().any(|x| x == id));
        // one idempotency key, one command; no agent there, so it waits
        assert_eq!(
            report["command"], report["command_again"],
            "{mode}: {report:#}"
        );
        assert_eq!(report["command_status"], "queued", "{report:#}");
        assert_eq!(report["command_argv"], json!(["nvidia-smi", "-L"]));
        assert_eq!(report["commands_listed"], json!([report["command"]]));
        assert_eq!(
            report["command_bad_error"]["code"], "bad_request",
            "{report:#}"
        );
        assert!(
            report["command_bad_error"]["message"]
                .as_str()
                .unwrap()
                .contains("kind"),
            "{report:#}"
        );
        assert_eq!(report["destroyed_status"], "terminated", "{report:#}");
        assert!(report["usage_keys"].as_array().unwrap().len() > 1);
        // a bad call is a tool error the model can read, with the REST error's code
        assert_eq!(report["bad_is_error"], true);
        assert_eq!(report["bad_error"]["code"], "bad_request", "{report:#}");
        assert!(
            report["bad_error"]["message"]
                .as_str()
                .unwrap()
                .contains("image")
        );
        assert_eq!(report["missing_error"], "not_found");
        // the rental is the REST one: in the ledger, seen by GET /v1/instances/{id}
        let r = authed(
            d.https,
            &token,
            "GET",
            &format!("/v1/instances/{id}"),
            "",
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["status"], "terminated");
    }
    // two sessions, each renting once (the retried call replayed): two instances in the ledger
    let all = authed(d.https, &token, "GET", "/v1/instances", "", &[])
        .await
        .json();
    assert_eq!(all["instances"].as_array().unwrap().len(), 2, "{all:#}");
}

/// One raw POST /mcp.
async fn post(
    d: &support::daemon::DaemonProc,
    token: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> support::client::Resp {
    let mut h = vec![("accept", "application/json, text/event-stream")];
    h.extend_from_slice(headers);
    authed(d.https, token, "POST", "/mcp", body, &h).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_transport_checks_origin_versions_headers_and_input() {
    let Stack { db, sb: sandbox, d } = Stack::start(
        "mcp2",
        &[],
        &[
            "ratelimit.enabled=false",
            r#"mcp.allowed_origins=["https://console.example.com"]"#,
        ],
    )
    .await;
    let token = account(&db, "careful", 100.0, 1);
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    // the handshake era with no version header: 2025-03-26 by default
    let r = post(&d, &token, list, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["result"]["tools"].as_array().unwrap().len(), 9);
    assert!(r.header("mcp-session-id").is_none(), "stateless");
    // Origin: listed passes, any other is 403 with a JSON error
    let ok = post(
        &d,
        &token,
        list,
        &[("origin", "https://console.example.com")],
    )
    .await;
    assert_eq!(ok.status, 200);
    let evil = post(&d, &token, list, &[("origin", "https://evil.example")]).await;
    assert_eq!(evil.status, 403);
    assert_eq!(evil.json()["error"]["code"], "origin_not_allowed");
    // credentials as for every route
    let anon = post(&d, "not-a-key", list, &[]).await;
    assert_eq!(anon.status, 401);
    // no server stream: GET is 405 naming POST
    let get = authed(d.https, &token, "GET", "/mcp", "", &[]).await;
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow"), Some("POST"));
    // notifications are accepted without an answer
    let note = post(
        &d,
        &token,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &[],
    )
    .await;
    assert_eq!(note.status, 202);
    assert!(note.body.is_empty());
    // bad input: JSON-RPC errors with a fitting status
    for (body, headers, status, code) in [
        ("{not json", vec![], 400, -32700),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            vec![],
            400,
            -32600,
        ),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            vec![],
            400,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/list"}"#,
            vec![],
            404,
            -32601,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"format_disk"}}"#,
            vec![],
            400,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_instance","arguments":[1]}}"#,
            vec![],
            400,
            -32602,
        ),
        (
            list,
            vec![("mcp-protocol-version", "1999-01-01")],
            400,
            -32022,
        ),
        // the 2026-07-28 envelope: headers must agree with it, its version must be served
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#,
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ],
            400,
            -32020,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2099-01-01","io.modelcontextprotocol/clientCapabilities":{}}}}"#,
            vec![
                ("mcp-protocol-version", "2099-01-01"),
                ("mcp-method", "tools/list"),
            ],
            400,
            -32022,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{}}"#,
            vec![("mcp-method", "server/discover")],
            400,
            -32602,
        ),
    ] {
        let r = post(&d, &token, body, &headers).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // an invalid id is not echoed
    let r = post(
        &d,
        &token,
        r#"{"jsonrpc":"2.0","id":false,"result":{}}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["id"], Value::Null);
    assert_eq!(r.json()["error"]["code"], -32600);
    let unsupported = post(
        &d,
        &token,
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2099-01-01","io.modelcontextprotocol/clientCapabilities":{}}}}"#,
        &[("mcp-protocol-version", "2099-01-01"), ("mcp-method", "tools/list")],
    )
    .await
    .json();
    assert_eq!(unsupported["id"], 7);
    assert_eq!(
        unsupported["error"]["data"]["supported"],
        json!(["2026-07-28"])
    );
    // off: /mcp is not served
    let off = sandbox
        .daemon(&db, &["ratelimit.enabled=false", "mcp.enabled=false"])
        .await;
    let r = post(&off, &token, list, &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
}
