//! Agent-safe keys (issue 30): a `read` key searches and reads but changes nothing, over REST or
//! MCP; a key's policies (price cap, providers, GPU models, required lifetime, instance limit)
//! refuse by name with 403 before any provider call, and a policy change reaches the daemon at
//! once.

use crate::support;
use crate::support::stack::Stack;

use serde_json::{Value, json};
use support::accounts::public_id;
use support::client::authed;
use support::rentals::{account, call, post, rent_body};

/// One raw POST /mcp.
async fn mcp(d: &support::daemon::DaemonProc, token: &str, body: &str) -> Value {
    let h = [("accept", "application/json, text/event-stream")];
    let r = authed(d.https, token, "POST", "/mcp", body, &h).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_key_searches_and_reads_but_changes_nothing_over_rest_or_mcp() {
    let Stack { db, sb, d } = Stack::start("keys_read", &[], &["ratelimit.enabled=false"]).await;
    let _ = account(&db, "agents", 10_000.0, 5);
    let k = db.cli(&["keys", "create", "--account", "agents", "--scope", "read"]);
    assert_eq!(k["key"]["scopes"], json!(["read"]), "{k}");
    let token = k["token"].as_str().unwrap().to_owned();
    let offers = call(
        &d,
        &token,
        "GET",
        "/v1/offers?providers=vastai&limit=5",
        "",
        None,
    )
    .await;
    assert_eq!(offers.status, 200, "{:?}", offers.json());
    let offer = offers.json()["offers"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in ["/v1/instances", "/v1/usage", "/v1/account", "/v1/ssh-keys"] {
        let r = call(&d, &token, "GET", path, "", None).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.json());
    }
    // a token for it reads too, and is refused the same changes
    let t = call(&d, &token, "POST", "/v1/auth/token", "", None).await;
    assert_eq!(t.status, 200, "{:?}", t.json());
    let jwt = t.json()["token"].as_str().unwrap().to_owned();
    for tok in [&token, &jwt] {
        let r = post(&d, tok, &rent_body(&offer)).await;
        assert_eq!(r.status, 403, "{:?}", r.json());
        assert_eq!(r.json()["error"]["code"], "insufficient_scope");
        let r = call(
            &d,
            tok,
            "POST",
            "/v1/ssh-keys",
            &json!({"name": "x", "public_key": support::rentals::KEY_A}).to_string(),
            None,
        )
        .await;
        assert_eq!(r.status, 403, "{:?}", r.json());
    }
    // MCP: only the read-only tools, and a write tool by name is refused
    let list = mcp(
        &d,
        &token,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    )
    .await;
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"search_offers"), "{names:?}");
    assert!(
        !names.contains(&"rent_instance")
            && !names.contains(&"destroy_instance")
            && !names.contains(&"run_command"),
        "{names:?}"
    );
    assert!(names.contains(&"get_command"), "{names:?}");
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "rent_instance",
                                 "arguments": {"offer_id": offer, "image": "ubuntu:22.04", "disk_gb": 20}}});
    let r = mcp(&d, &token, &body.to_string()).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert_eq!(
        r["result"]["structuredContent"]["error"]["code"],
        "insufficient_scope"
    );
    assert_eq!(sb.calls("vastai", "create").await, 0, "nothing rented");
    // `read` stands alone
    let out = support::accounts::gpuproxyd(
        &[
            "keys",
            "create",
            "--account",
            "agents",
            "--scope",
            "read",
            "--scope",
            "user",
        ],
        &db.env(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`read` stands alone"));
}

/// The Vast offers of one GPU model at two prices, and an offer of another model.
async fn pick(d: &support::daemon::DaemonProc, token: &str) -> (String, Value, Value, Value) {
    let r = call(
        d,
        token,
        "GET",
        "/v1/offers?providers=vastai&disk_gb=20&limit=200&sort=price",
        "",
        None,
    )
    .await;
    let offers: Vec<Value> = r.json()["offers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["available"] == true && !o["id"].as_str().unwrap().ends_with(":bid"))
        .cloned()
        .collect();
    let price = |o: &Value| o["price_per_hour"].as_f64().unwrap();
    for m in &offers {
        let model = m["gpu_model"].as_str().unwrap();
        let same: Vec<&Value> = offers.iter().filter(|o| o["gpu_model"] == model).collect();
        let (cheap, dear) = (same[0], same[same.len() - 1]);
        if price(dear) > price(cheap) * 1.2
            && let Some(other) = offers.iter().find(|o| o["gpu_model"] != model)
        {
            return (model.to_owned(), cheap.clone(), dear.clone(), other.clone());
        }
    }
    panic!("no model offered at two prices");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_policies_refuse_by_name_before_any_provider_call() {
    let Stack { db, sb, d } = Stack::start(
        "keys_policy",
        &["--provision-time", "300ms"],
        &["ratelimit.enabled=false"],
    )
    .await;
    let token = account(&db, "bounded", 10_000.0, 10);
    let (model, cheap, dear, other) = pick(&d, &token).await;
    let cap = (cheap["price_per_hour"].as_f64().unwrap()
        + dear["price_per_hour"].as_f64().unwrap())
        / 2.0;
    let k = db.cli(&[
        "keys",
        "create",
        "--account",
        "bounded",
        "--max-price-per-hour",
        &format!("{cap:.4}"),
        "--allowed-providers",
        "vastai",
        "--allowed-gpu-models",
        &model,
        "--require-max-duration-hours",
        "2",
        "--key-max-instances",
        "1",
    ]);
    assert_eq!(
        k["key"]["policy"]["allowed_gpu_models"],
        json!([model]),
        "{k}"
    );
    let agent = k["token"].as_str().unwrap().to_owned();
    let io = support::rentals::cheapest(&d, &token, "ionet", "").await;
    let quotes = || async {
        let searches = sb.requests("vastai", "search").await;
        searches
            .iter()
            .filter(|r| r["body"].get("id").is_some())
            .count()
    };
    let quoted = quotes().await;
    let with_life = |o: &Value, hours: f64| {
        support::rentals::rent_body_with(
            o["id"].as_str().unwrap(),
            &json!({ "max_duration_hours": hours }),
        )
        .to_string()
    };
    for (body, policy) in [
        (with_life(&io, 1.0), "allowed_providers"),
        (with_life(&other, 1.0), "allowed_gpu_models"),
        (with_life(&dear, 1.0), "max_price_per_hour"),
        (
            rent_body(cheap["id"].as_str().unwrap()),
            "require_max_duration_hours",
        ),
        (with_life(&cheap, 3.0), "require_max_duration_hours"),
    ] {
        let r = post(&d, &agent, &body).await;
        assert_eq!(r.status, 403, "{policy}: {:?}", r.json());
        let e = &r.json()["error"];
        assert_eq!(e["code"], "key_policy", "{e}");
        assert_eq!(e["details"]["policy"], policy, "{e}");
    }
    assert_eq!(quotes().await, quoted, "no quote was asked");
    assert_eq!(sb.calls("vastai", "create").await, 0);
    assert_eq!(sb.calls("ionet", "deploy").await, 0);
    // within every policy: rented; a second is over the key's instance limit
    let r = post(&d, &agent, &with_life(&cheap, 2.0)).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = post(&d, &agent, &with_life(&cheap, 1.0)).await;
    assert_eq!(r.status, 403, "{:?}", r.json());
    assert_eq!(r.json()["error"]["details"]["policy"], "max_instances");
    // nor may it live longer than the cap
    let path = format!("/v1/instances/{id}/extend");
    let r = call(&d, &agent, "POST", &path, r#"{"hours": 1}"#, None).await;
    assert_eq!(r.status, 403, "{:?}", r.json());
    assert_eq!(
        r.json()["error"]["details"]["policy"],
        "require_max_duration_hours"
    );
    // a rental by spec tries only what the key may rent
    let r = call(
        &d,
        &agent,
        "DELETE",
        &format!("/v1/instances/{id}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    support::rentals::until(&d, &agent, &id, "ended", |v| v["status"] == "terminated").await;
    let spec = json!({"spec": {"max_price_per_hour": 1000.0}, "image": "ubuntu:22.04",
                      "disk_gb": 20, "max_duration_hours": 1});
    let r = post(&d, &agent, &spec.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["gpu_model"], model.as_str(), "{:?}", r.json());
    assert!(r.json()["price_per_hour"].as_f64().unwrap() <= cap + 1e-9);

    // an administrator clears the policies: the daemon knows at once
    let admin = db.account_with_key("ops", &["admin"]).1;
    let r = call(
        &d,
        &admin,
        "PATCH",
        &format!("/v1/admin/keys/{}", public_id(&agent)),
        r#"{"policy": {}}"#,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["policy"], json!({}), "{:?}", r.json());
    let r = post(&d, &agent, &rent_body(dear["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    // bad policies are named
    for (policy, field) in [
        (json!({"max_price_per_hour": -1}), "max_price_per_hour"),
        (
            json!({"allowed_providers": ["Amazon EC2"]}),
            "allowed_providers",
        ),
        (json!({"allowed_gpu_models": []}), "allowed_gpu_models"),
        (json!({"max_instances": -2}), "max_instances"),
        (json!({"surprise": true}), "surprise"),
    ] {
        let r = call(
            &d,
            &admin,
            "PATCH",
            &format!("/v1/admin/keys/{}", public_id(&agent)),
            &json!({ "policy": policy }).to_string(),
            None,
        )
        .await;
        assert_eq!(r.status, 400, "{policy}: {:?}", r.json());
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(field),
            "{policy}: {:?}",
            r.json()
        );
    }
}
