//! A database outage behind PgBouncer, end to end (issue 19): while PostgreSQL is down rentals
//! get 503 `database_unavailable` and `/ready` says `degraded` (200: a shared dependency's outage
//! must not take every daemon out of the balancer); once PostgreSQL answers again, a rental made
//! 2 s later succeeds (the shipped PgBouncer settings retry a failed server login after 1 s, not
//! PgBouncer's default 15 s).

mod support;

use std::time::Duration;

use support::accounts::TestDb;
use support::rentals::{account, cheapest, post, rent_body};
use support::sandbox::Sandbox;
use support::services::Services;

async fn ready_status(d: &support::daemon::DaemonProc) -> (u16, String) {
    let r = support::client::get(d.https, "/ready").await;
    (
        r.status,
        r.json()["status"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rentals_recover_within_two_seconds_of_postgres_coming_back() {
    // its own services: this test stops PostgreSQL
    let s = Services::start();
    let db = TestDb::new(&s, "outage");
    let sandbox = Sandbox::start(&[]);
    let token = account(&db, "outage", 1000.0, 10);
    let d = sandbox.daemon(&db, &["ratelimit.enabled=false"]).await;
    let offer = cheapest(&d, &token, "vastai", "").await;
    let body = rent_body(offer["id"].as_str().unwrap());
    assert_eq!(post(&d, &token, &body).await.status, 201);

    s.postgres.stop_with(libc::SIGINT);
    support::eventually("/ready to say degraded", || async {
        let (status, text) = ready_status(&d).await;
        (text == "degraded").then_some(status)
    })
    .await;
    assert_eq!(ready_status(&d).await.0, 200, "still in the balancer");
    let r = post(&d, &token, &body).await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.json()["error"]["code"], "database_unavailable");

    s.postgres.start();
    // PostgreSQL answers again (directly, not through PgBouncer) ...
    let url = s.postgres_url("postgres");
    support::eventually("PostgreSQL to answer again", || async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(conn);
        client.simple_query("SELECT 1").await.ok()
    })
    .await;
    // ... and 2 s later the first rental attempted through PgBouncer goes through
    tokio::time::sleep(Duration::from_secs(2)).await;
    let offer = cheapest(&d, &token, "vastai", "").await;
    let r = post(&d, &token, &rent_body(offer["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(ready_status(&d).await, (200, "ready".to_owned()));
}
