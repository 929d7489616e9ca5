//! Provider truth (docs/providers.md): what Vast.ai reports after an instance first ran, and what
//! a refused key looks like, never costs a renter the machine or the ledger its record.
//!
//! The daemon runs as a process against the sandbox Vast over HTTP, with PostgreSQL (through
//! PgBouncer) and Redis. "Later" is a mock clock: the ledger's timestamps are moved back (the
//! reconciler reads the age of a state from them), so a test shows what 15 minutes of a restart,
//! or 5 minutes of a host outage, does without waiting for it.

use crate::support;
use crate::support::stack::Stack;

use serde_json::{Value, json};
use support::accounts::TestDb;
use support::rentals::{account, call, cheapest, kinds, post, rent_body, until};
use support::sandbox::Sandbox;

/// Moves every timestamp the reconciler ages an instance by `minutes` into the past.
async fn age(db: &TestDb<'_>, id: &str, minutes: i32) {
    db.client()
        .await
        .execute(
            "UPDATE instances SET created_at = created_at - make_interval(mins => $2), \
               started_at = started_at - make_interval(mins => $2), \
               restarted_at = restarted_at - make_interval(mins => $2), \
               ran_at = ran_at - make_interval(mins => $2), \
               dead_since = dead_since - make_interval(mins => $2) \
             WHERE id = $1",
            &[&id, &minutes],
        )
        .await
        .unwrap();
}

async fn rent_running(d: &support::daemon::DaemonProc, token: &str) -> (String, u64) {
    let o = cheapest(d, token, "vastai", "").await;
    let r = post(d, token, &rent_body(o["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let v = until(d, token, &id, "running", |v| v["status"] == "running").await;
    let pid = v["provider_instance_id"].as_str().unwrap().parse().unwrap();
    (id, pid)
}

async fn sandbox_instance(sb: &Sandbox, pid: u64) -> Value {
    sb.vast_ledger()
        .await
        .into_iter()
        .find(|i| i["id"] == pid)
        .unwrap()
}

/// Lets the reconciler run several rounds (`rentals.reconcile_interval_ms` is 200 here).
async fn rounds() {
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_a_reboot_a_host_outage_and_a_freeze_never_destroy_an_instance_that_ran() {
    let Stack { db, sb, d } = Stack::start(
        "truth_lifecycle",
        &["--provision-time", "2s"],
        &[
            "rentals.reconcile_interval_ms=200",
            "ratelimit.enabled=false",
        ],
    )
    .await;
    let token = account(&db, "renter", 10_000.0, 5);
    // the default timeouts: 10 min provisioning, 2 min dead state, 30 min unreachable
    let (a, a_pid) = rent_running(&d, &token).await;
    let (b, b_pid) = rent_running(&d, &token).await;
    // 15 minutes after creation (mock clock)
    age(&db, &a, 15).await;
    age(&db, &b, 15).await;

    // A: stopped and started through the API; B: rebooted by its renter at Vast
    for path in ["stop", "start"] {
        let r = call(
            &d,
            &token,
            "POST",
            &format!("/v1/instances/{a}/{path}"),
            "",
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.json());
    }
    let r = sb
        .vast_api("PUT", &format!("/api/v0/instances/reboot/{b_pid}/"), "{}")
        .await;
    assert_eq!(r["success"], true, "{r}");
    let b_seen = until(&d, &token, &b, "B loading again", |v| {
        v["status"] == "provisioning"
    })
    .await;
    assert_eq!(b_seen["status"], "provisioning");
    for (id, pid) in [(&a, a_pid), (&b, b_pid)] {
        let v = until(&d, &token, id, "running again", |v| {
            v["status"] == "running"
        })
        .await;
        let k = kinds(&v);
        assert!(
            !k.iter().any(|k| k.contains("destroyed")),
            "{id} was not destroyed: {k:?}"
        );
        assert_eq!(sandbox_instance(&sb, pid).await["destroyed"], false);
    }
    let v = until(&d, &token, &a, "A's events", |v| v["status"] == "running").await;
    let k = kinds(&v);
    let started = k
        .iter()
        .position(|k| k == "started")
        .expect("a start event");
    assert!(k[started..].iter().any(|k| k == "status"), "{k:?}");

    // A's host goes offline for 5 minutes (mock clock): reported, kept, billed
    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/host",
        &json!({"id": a_pid, "offline": true}).to_string(),
    )
    .await;
    let v = until(&d, &token, &a, "A unreachable", |v| {
        v["status"] == "unknown"
    })
    .await;
    assert!(
        kinds(&v).iter().any(|k| k == "unreachable"),
        "{:?}",
        kinds(&v)
    );
    let ev = v["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        ev["rate_per_hour"], v["price_per_hour"],
        "an unreachable instance bills in full: {ev}"
    );
    let n: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM account_events WHERE type = 'instance.unreachable' \
               AND instance_id = $1",
            &[&a],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "one instance.unreachable in the account's events");
    age(&db, &a, 5).await;
    rounds().await;
    let v = call(&d, &token, "GET", &format!("/v1/instances/{a}"), "", None)
        .await
        .json();
    assert_eq!(
        v["status"], "unknown",
        "still there after 5 minutes offline: {v}"
    );
    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/host",
        &json!({"id": a_pid, "offline": false}).to_string(),
    )
    .await;
    until(&d, &token, &a, "A back", |v| v["status"] == "running").await;
    assert_eq!(sandbox_instance(&sb, a_pid).await["destroyed"], false);

    // B frozen: paused with its memory, billing the GPU
    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/freeze",
        &json!({"id": b_pid, "frozen": true}).to_string(),
    )
    .await;
    let v = until(&d, &token, &b, "B frozen", |v| v["status"] == "frozen").await;
    let ev = v["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(ev["rate_per_hour"], v["price_per_hour"], "{ev}");
    rounds().await;
    let v = call(&d, &token, "GET", &format!("/v1/instances/{b}"), "", None)
        .await
        .json();
    assert_eq!(v["status"], "frozen", "{v}");

    // B destroyed by its renter at Vast: gone from the list and, asked for, gone: it ends
    let r = sb
        .vast_api("DELETE", &format!("/api/v0/instances/{b_pid}/"), "{}")
        .await;
    assert_eq!(r["success"], true, "{r}");
    let v = until(&d, &token, &b, "B ended", |v| v["status"] == "terminated").await;
    assert!(
        kinds(&v).iter().any(|k| k == "vanished" || k == "status"),
        "{:?}",
        kinds(&v)
    );

    // an instance that never ran is still destroyed when it never gets there
    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/script",
        r#"{"next_states": ["stuck"]}"#,
    )
    .await;
    let o = cheapest(&d, &token, "vastai", "").await;
    let r = post(&d, &token, &rent_body(o["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let stuck = r.json()["id"].as_str().unwrap().to_owned();
    until(&d, &token, &stuck, "loading", |v| {
        v["status"] == "provisioning"
    })
    .await;
    age(&db, &stuck, 11).await;
    let v = until(&d, &token, &stuck, "destroyed as stuck", |v| {
        v["status"] == "failed"
    })
    .await;
    assert!(
        kinds(&v).iter().any(|k| k == "stuck_destroyed"),
        "{:?}",
        kinds(&v)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_provider_key_alerts_and_leaves_every_instance_billing() {
    let Stack { db, sb, d } = Stack::start(
        "truth_revoked",
        &["--provision-time", "1s"],
        &[
            "rentals.reconcile_interval_ms=200",
            "rentals.status_cache_ms=100",
            // the breaker would soon answer for the provider (503): keep asking it here
            "providers.breaker_consecutive_failures=100000",
            "providers.breaker_window=100000",
            "providers.max_retries=0",
            "ratelimit.enabled=false",
        ],
    )
    .await;
    let token = account(&db, "renter", 10_000.0, 5);
    let (a, a_pid) = rent_running(&d, &token).await;
    let (b, _) = rent_running(&d, &token).await;

    // the key is revoked at Vast: every call answers 404 `auth_error`
    let r = sb
        .control(
            "vastai",
            "POST",
            "/_sandbox/vast/key",
            r#"{"revoked": true}"#,
        )
        .await;
    assert_eq!(r["revoked"], true);
    support::eventually("auth failures counted", || async {
        let page = d.scrape().await;
        let n = support::metrics::value(
            &page,
            "gpuproxy_provider_auth_failures_total{provider=\"vastai\"}",
        );
        (n >= 3.0).then_some(())
    })
    .await;
    rounds().await;
    for id in [&a, &b] {
        let v = call(&d, &token, "GET", &format!("/v1/instances/{id}"), "", None)
            .await
            .json();
        assert_eq!(v["status"], "running", "the ledger is unchanged: {v}");
        let k = kinds(&v);
        assert!(
            !k.iter().any(|k| k == "vanished" || k == "terminated"),
            "{k:?}"
        );
    }
    let usage = call(&d, &token, "GET", "/v1/usage?group_by=instance", "", None).await;
    assert_eq!(usage.status, 200, "{:?}", usage.json());

    // a DELETE cannot be confirmed: 502, the instance stays terminating (and billing)
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/instances/{a}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 502, "{:?}", r.json());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key"),
        "{:?}",
        r.json()
    );
    assert!(!r.json().to_string().contains(support::sandbox::VAST_KEY));
    let v = call(&d, &token, "GET", &format!("/v1/instances/{a}"), "", None)
        .await
        .json();
    assert_eq!(v["status"], "terminating", "{v}");
    let ev = v["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        ev["rate_per_hour"], v["price_per_hour"],
        "still billing: {ev}"
    );
    assert_eq!(sandbox_instance(&sb, a_pid).await["destroyed"], false);
    rounds().await;
    let v = call(&d, &token, "GET", &format!("/v1/instances/{a}"), "", None)
        .await
        .json();
    assert_eq!(v["status"], "terminating", "{v}");

    // a working key of another Vast account: it lists nothing and shows none of ours,
    // successfully; the ledger still concludes nothing (the account differs from the one seen)
    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/key",
        r#"{"other_account": true}"#,
    )
    .await;
    let before = support::metrics::value(
        &d.scrape().await,
        "gpuproxy_provider_auth_failures_total{provider=\"vastai\"}",
    );
    support::eventually("the other account noticed", || async {
        let n = support::metrics::value(
            &d.scrape().await,
            "gpuproxy_provider_auth_failures_total{provider=\"vastai\"}",
        );
        (n > before).then_some(())
    })
    .await;
    rounds().await;
    let v = call(&d, &token, "GET", &format!("/v1/instances/{b}"), "", None)
        .await
        .json();
    assert_ne!(v["status"], "terminated", "{v}");
    assert!(
        !kinds(&v).iter().any(|k| k == "vanished"),
        "{:?}",
        kinds(&v)
    );

    // the key comes back: the DELETE goes through
    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/key",
        r#"{"revoked": false}"#,
    )
    .await;
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/instances/{a}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    until(&d, &token, &a, "terminated", |v| {
        v["status"] == "terminated"
    })
    .await;
    assert_eq!(sandbox_instance(&sb, a_pid).await["destroyed"], true);
    assert!(
        d.log()
            .lines()
            .all(|l| !l.contains(support::sandbox::VAST_KEY))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_ledger_finds_rows_an_earlier_version_ended_on_a_misreading() {
    let Stack { db, sb: _sb, d } = Stack::start(
        "truth_doctor",
        &["--provision-time", "300ms"],
        &["ratelimit.enabled=false"],
    )
    .await;
    let token = account(&db, "renter", 10_000.0, 5);
    // (the tests poll: no rate limit in the way)
    let (a, _) = rent_running(&d, &token).await;
    let (b, _) = rent_running(&d, &token).await;
    let (c, _) = rent_running(&d, &token).await;
    let doctor = || {
        let out = support::accounts::gpuproxyd(&["doctor", "--ledger", "--json"], &db.env());
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", support::accounts::stderr(&out)));
        (out.status.code(), v)
    };
    let (code, v) = doctor();
    assert_eq!(code, Some(0), "a clean ledger: {v}");
    // C destroyed through the API: a destroy, not a misreading
    let r = call(
        &d,
        &token,
        "DELETE",
        &format!("/v1/instances/{c}"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    until(&d, &token, &c, "C ended", |v| v["status"] == "terminated").await;
    // what an earlier version wrote: A ended by a status read that got a 404, B destroyed as
    // stuck after it had run
    let client = db.client().await;
    for (id, status, kind) in [
        (&a, "terminated", "status"),
        (&b, "failed", "stuck_destroyed"),
    ] {
        client
            .execute(
                "UPDATE instances SET status = $2, terminated_at = now() WHERE id = $1",
                &[id, &status],
            )
            .await
            .unwrap();
        client
            .execute(
                "INSERT INTO instance_events (instance_id, kind, status, price_per_hour, \
                   rate_per_hour) VALUES ($1, $2, $3, 0, 0)",
                &[id, &kind, &status],
            )
            .await
            .unwrap();
    }
    let (code, v) = doctor();
    assert_eq!(code, Some(1), "{v}");
    let ids = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s["instance_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("ended_by_not_found"), vec![a.clone()], "{v}");
    assert_eq!(ids("destroyed_after_running"), vec![b.clone()], "{v}");
    assert!(v["ended_by_not_found"][0]["provider_instance_id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vast_charges_reconcile_per_item_and_bandwidth_reaches_usage_and_budgets() {
    let Stack { db, sb, d } = Stack::start(
        "truth_charges",
        &["--provision-time", "100ms"],
        &[
            "rentals.reconcile_interval_ms=200",
            "rentals.billing_reconcile_interval_ms=300",
            "ratelimit.enabled=false",
        ],
    )
    .await;
    let token = account(&db, "renter", 10_000.0, 5);
    let (_, admin) = db.account_with_key("auditor", &["admin"]);
    let o = cheapest(&d, &token, "vastai", "").await;
    assert!(
        o["upload_usd_per_gb"].is_number(),
        "offers show bandwidth prices: {o}"
    );
    assert!(o["download_usd_per_gb"].is_number(), "{o}");
    let (id, pid) = rent_running(&d, &token).await;
    let spent_before = support::rentals::spent(&db, "renter").await;
    // 20 s of running, with traffic, then destroyed: long enough for the 100 ms Vast bills the
    // disk only (the ledger bills from acceptance) to stay under 1%
    sb.control(
        "vastai",
        "POST",
        "/_sandbox/vast/traffic",
        &json!({"id": pid, "up_gb": 40.0, "down_gb": 160.0}).to_string(),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(20)).await;
    let ended = support::rentals::destroy_until_ended(&d, &token, &id).await;
    let at_vast = sandbox_instance(&sb, pid).await;
    let bandwidth =
        at_vast["charged_bwu_usd"].as_f64().unwrap() + at_vast["charged_bwd_usd"].as_f64().unwrap();
    assert!(bandwidth > 0.1, "{at_vast}");
    let end = humantime::parse_rfc3339_weak(ended["terminated_at"].as_str().unwrap())
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let inst = support::eventually("a reconciliation after the end", || async {
        let v = call(&d, &admin, "GET", "/v1/admin/reconciliation", "", None)
            .await
            .json();
        let vast = v["providers"]
            .as_array()?
            .iter()
            .find(|p| p["provider"] == "vastai")?
            .clone();
        let as_of = humantime::parse_rfc3339_weak(vast["as_of"].as_str()?)
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        let inst = vast["instances"]
            .as_array()?
            .iter()
            .find(|i| {
                i["provider_instance_id"]
                    .as_str()
                    .and_then(|p| p.parse::<u64>().ok())
                    == Some(pid)
            })?
            .clone();
        (as_of > end + 0.2).then_some(inst)
    })
    .await;
    let part = |kind: &str| {
        inst["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} part: {inst}"))
            .clone()
    };
    let near = |a: f64, b: f64| (a - b).abs() <= 1e-5 + b.abs() * 1e-6;
    assert!(
        near(
            part("gpu")["billed_usd"].as_f64().unwrap(),
            at_vast["charged_gpu_usd"].as_f64().unwrap()
        ),
        "{inst}\n{at_vast}"
    );
    assert!(
        near(
            part("disk")["billed_usd"].as_f64().unwrap(),
            at_vast["charged_disk_usd"].as_f64().unwrap()
        ),
        "{inst}\n{at_vast}"
    );
    assert!(
        near(part("bandwidth")["billed_usd"].as_f64().unwrap(), bandwidth),
        "{inst}"
    );
    assert_eq!(
        part("bandwidth")["drift_usd"],
        0.0,
        "bandwidth is taken as billed: {inst}"
    );
    let ratio = inst["drift_ratio"].as_f64().unwrap();
    eprintln!("itemised reconciliation after 20 s: {inst}");
    assert!(ratio < 0.01, "drift under 1% per instance: {inst}");
    // the bandwidth reaches usage and the budgets
    let usage = call(&d, &token, "GET", "/v1/usage?group_by=instance", "", None)
        .await
        .json();
    let g = usage["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == id.as_str())
        .unwrap()
        .clone();
    assert!(
        near(g["bandwidth_usd"].as_f64().unwrap(), bandwidth),
        "{usage}"
    );
    let spent_after = support::rentals::spent(&db, "renter").await;
    assert!(
        spent_after - spent_before >= bandwidth,
        "the budget counts the bandwidth: {spent_before} -> {spent_after}"
    );
    assert!(
        (usage["totals"]["usd"].as_f64().unwrap() - spent_after).abs() < 1e-3,
        "usage and budgets agree: {usage} vs {spent_after}"
    );
}
