//! `gpx`, the tenant CLI (issue 32, point 4), run as a process against a real stack: login (the
//! key kept with mode 0600), offers, rent by offer with `--wait` and an idempotency key (twice:
//! one instance), ls, show, events, usage as CSV, destroy, and the exit statuses (64 usage, 77 a
//! refused key, 65 a refused request).

use crate::support;
use crate::support::stack::Stack;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::rentals::account;

/// `gpx <args>` with `home` as its HOME (where its login lives): (status, stdout, stderr).
fn gpx(home: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gpx"))
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run gpx");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpx_logs_in_rents_lists_follows_and_destroys() {
    let Stack { db, sb, d } = Stack::start(
        "gpx",
        &["--provision-time", "300ms"],
        &["rentals.status_cache_ms=100", "ratelimit.enabled=false"],
    )
    .await;
    let token = account(&db, "cli", 10_000.0, 5);
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let url = format!("https://localhost:{}", d.https.port());
    let ca = d.dir.join("server.crt");
    let ca = ca.to_str().unwrap();

    // usage errors are 64; a key the daemon refuses is 77 and nothing is saved
    let (code, _, _) = gpx(h, &["--no-such-flag"], &[]);
    assert_eq!(code, 64);
    let (code, _, err) = gpx(
        h,
        &[
            "--url",
            &url,
            "--cacert",
            ca,
            "login",
            "--key",
            "gpx_nope_nope",
        ],
        &[],
    );
    assert_eq!(code, 77, "{err}");
    assert!(!h.join(".config/gpx/config.json").exists());
    let (code, out, err) = gpx(
        h,
        &["--url", &url, "--cacert", ca, "login", "--key", &token],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let saved = h.join(".config/gpx/config.json");
    let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key is readable by its owner only");

    // from here on the saved login is used
    let (code, out, err) = gpx(h, &["offers", "--providers", "vastai", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let offers: Value = serde_json::from_str(&out).unwrap();
    let offer = offers["offers"][0]["id"].as_str().unwrap().to_owned();
    let (code, out, _) = gpx(h, &["offers", "--limit", "3"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ID"), "a table: {out}");
    assert_eq!(out.lines().count(), 4, "{out}");

    // a spec without a price ceiling is a usage error, before anything is sent
    let (code, _, err) = gpx(h, &["rent", "--gpu", "H100"], &[]);
    assert_eq!(code, 64, "{err}");

    // rent --wait, twice with one idempotency key: one instance, the SSH command printed
    let rent = [
        "rent",
        "--offer",
        &offer,
        "--idempotency-key",
        "gpx-1",
        "--wait",
    ];
    let (code, first, err) = gpx(h, &rent, &[]);
    assert_eq!(code, 0, "{err}");
    let id = first.split_whitespace().next().unwrap().to_owned();
    assert!(first.contains("running"), "{first}");
    assert!(
        first.lines().nth(1).unwrap_or("").starts_with("ssh -p "),
        "{first}"
    );
    let (code, again, _) = gpx(h, &rent, &[]);
    assert_eq!(code, 0);
    assert_eq!(again.split_whitespace().next(), Some(id.as_str()));
    assert_eq!(
        sb.calls("vastai", "create").await,
        1,
        "one rental for one key"
    );

    let (code, out, _) = gpx(h, &["ls"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(&id), "{out}");
    let (code, out, _) = gpx(h, &["show", &id], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("running"), "{out}");

    // events from the start of the account's log: one JSON line each
    let (code, out, err) = gpx(h, &["events", "--after", "0", "--count", "3"], &[]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["id"], 1);
    assert!(lines.iter().all(|l| l["type"].is_string()));

    // usage as CSV: the header, then one row per instance and day
    let (code, out, err) = gpx(h, &["usage", "--csv"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("day,instance_id,usd"), "{out}");
    assert!(out.contains(&id), "{out}");

    // refused requests are 65 with the server's message; the key from the environment wins
    let (code, _, err) = gpx(h, &["destroy", "no-such-instance"], &[]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("not_found") || err.contains("no instance"),
        "{err}"
    );
    let (code, _, _) = gpx(h, &["ls"], &[("GPX_API_KEY", "gpx_bad_bad")]);
    assert_eq!(code, 77);

    // the account's own keys, never a secret
    let (code, out, err) = gpx(h, &["keys", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let keys: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(1), "{keys}");
    assert!(!out.contains(&token), "the secret never comes back");

    // a volume and an idle policy through gpx: created, attached at rent, refused while in use
    let (code, out, err) = gpx(h, &["volumes", "offers", "--size-gb", "10", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let vo: Value = serde_json::from_str(&out).unwrap();
    let all = offers["offers"].as_array().unwrap();
    let (vol_offer, host) = vo["offers"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| {
            let o = all
                .iter()
                .find(|o| o["machine_id"] == v["machine_id"] && o["id"] != offer.as_str())?;
            Some((v["id"].as_str()?.to_owned(), o["id"].as_str()?.to_owned()))
        })
        .expect("a volume offer on a listed offer's machine");
    let (code, out, err) = gpx(
        h,
        &[
            "volumes",
            "create",
            "--offer",
            &vol_offer,
            "--size-gb",
            "10",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let vid = out.split_whitespace().next().unwrap().to_owned();
    assert!(out.contains("available"), "{out}");
    let (code, out, err) = gpx(
        h,
        &[
            "rent",
            "--offer",
            &host,
            "--volume",
            &vid,
            "--idle-below",
            "5",
            "--idle-minutes",
            "30",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let on_vol: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(on_vol["volume"]["id"], vid.as_str(), "{on_vol}");
    assert_eq!(on_vol["idle"]["action"], "stop");
    let (code, _, err) = gpx(h, &["volumes", "rm", &vid], &[]);
    assert_eq!(code, 65, "in use: {err}");
    assert!(err.contains("volume_in_use"), "{err}");
    let (code, out, _) = gpx(h, &["volumes", "ls"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(&vid), "{out}");
    let (code, _, err) = gpx(h, &["destroy", on_vol["id"].as_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = gpx(h, &["destroy", &id], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");
    let (code, out, _) = gpx(h, &["completions", "bash"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("gpx"), "a completion script");
}

/// `gpx events --follow` across a daemon restart (SIGTERM, a new daemon on the same address with
/// the same certificate): every event once, in order, none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpx_events_follow_resumes_across_a_restart_without_gap_or_duplicate() {
    use tokio::io::AsyncBufReadExt;
    let db = support::accounts::TestDb::new(support::services::shared(), "gpx_follow");
    let sb = support::sandbox::Sandbox::start(&["--provision-time", "300ms"]);
    let set = ["rentals.status_cache_ms=100", "ratelimit.enabled=false"];
    let mut d1 = sb.daemon(&db, &set).await;
    let port = d1.https.port();
    let token = account(&db, "follower", 10_000.0, 5);
    let home = tempfile::tempdir().unwrap();
    let ca = d1.dir.join("server.crt");
    let cert = std::fs::read_to_string(&ca).unwrap();
    let ca_copy = home.path().join("ca.pem");
    std::fs::write(&ca_copy, &cert).unwrap();
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_gpx"))
        .args(["events", "--follow", "--after", "0"])
        .env_clear()
        .env("HOME", home.path())
        .env("GPX_URL", format!("https://localhost:{port}"))
        .env("GPX_API_KEY", &token)
        .env("GPX_CACERT", &ca_copy)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut ids: Vec<i64> = Vec::new();
    let mut read_until = async |ids: &mut Vec<i64>, n: usize| {
        while ids.len() < n {
            let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
                .await
                .expect("an event within 30 s")
                .unwrap()
                .expect("gpx still following");
            let v: Value = serde_json::from_str(&line).unwrap();
            ids.push(v["id"].as_i64().unwrap());
        }
    };

    // events before the restart: a rental's
    let id = support::rentals::rent_cheapest_running(&d1, &token, "vastai").await;
    read_until(&mut ids, 3).await;
    let d2 = sb.restart_in_place(&db, &set, &mut d1).await;
    // events after it: the destroy's
    support::rentals::destroy_until_ended(&d2, &token, &id).await;
    let total = db.event_count("follower").await;
    read_until(&mut ids, total as usize).await;
    let want: Vec<i64> = (1..=total).collect();
    assert_eq!(ids, want, "every event once, in order, across the restart");
}
