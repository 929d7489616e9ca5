//! Hardening against a hostile client (issue 18): input that used to reach a 500 or wrap, and the
//! abuse scenarios of the review, each reproduced against the daemon as a process with
//! PostgreSQL (through PgBouncer), Redis and the sandbox providers.

mod support;

use support::accounts::TestDb;
use support::rentals::{account, call, message};
use support::sandbox::Sandbox;
use support::services;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_and_huge_cursors_are_client_errors_naming_the_parameter() {
    let s = services::shared();
    let db = TestDb::new(s, "hard_input");
    let token = account(&db, "prober", 100.0, 5);
    let (_, admin) = db.account_with_key("root", &["admin"]);
    let sb = Sandbox::start(&[]);
    let d = sb.daemon(&db, &[]).await;
    for (who, path) in [
        (&token, "/v1/instances/%00"),
        (&token, "/v1/instances/a%00b/stop"),
        (&token, "/v1/ssh-keys/%00"),
        (&token, "/v1/providers/vastai/api/v0/instances/%00/"),
        (&admin, "/v1/admin/accounts/%00"),
        (&admin, "/v1/admin/accounts/%00/usage"),
    ] {
        let method = if path.ends_with("/stop") {
            "POST"
        } else {
            "GET"
        };
        let r = call(&d, who, method, path, "", None).await;
        assert!(
            (400..500).contains(&r.status),
            "{path}: {} {:?}",
            r.status,
            r.json()
        );
        assert!(r.json()["error"]["code"].is_string(), "{path}");
    }
    for cursor in ["1e300", "1e20", "9223372036854775807", "-5", "NaN", "inf"] {
        let r = call(
            &d,
            &token,
            "GET",
            &format!("/v1/instances?cursor={cursor}"),
            "",
            None,
        )
        .await;
        assert_eq!(r.status, 400, "{cursor}: {:?}", r.json());
        assert!(message(&r).contains("cursor"), "{cursor}: {}", message(&r));
    }
    // an offers cursor with an offset near 2^64 is refused, not wrapped
    let r = call(&d, &token, "GET", "/v1/offers?limit=1", "", None).await;
    let next = r.json()["next_cursor"].as_str().unwrap().to_owned();
    let fp = next.split_once('.').unwrap().1;
    for off in [
        "18446744073709551615",
        "18446744073709551616",
        "99999999999",
    ] {
        let r = call(
            &d,
            &token,
            "GET",
            &format!("/v1/offers?limit=1&cursor={off}.{fp}"),
            "",
            None,
        )
        .await;
        assert_eq!(r.status, 400, "{off}: {:?}", r.json());
        assert!(message(&r).contains("cursor"), "{}", message(&r));
    }
    // a NUL in a query value too
    let r = call(&d, &token, "GET", "/v1/offers?gpu=a%00", "", None).await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(message(&r).contains("gpu"), "{}", message(&r));
}
