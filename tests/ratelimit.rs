//! Per-IP rate limiting end to end: the 1,001st request in a minute from one address gets 429 with
//! `Retry-After` and the RateLimit headers, another address is still served, probes are exempt,
//! and a retry after `Retry-After` succeeds.

mod support;

use std::time::Duration;

use support::client::{Conn, connect_from};
use support::daemon::{DaemonProc, Opts};

async fn h2_from(src: &str, d: &DaemonProc) -> Conn {
    let tcp = connect_from(src, d.https).await.unwrap();
    Conn::tls_over(tcp, &[b"h2"], rustls::DEFAULT_VERSIONS)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_1001st_request_in_a_minute_is_limited() {
    let d = DaemonProc::start(Opts {
        set: vec![
            "ratelimit.ip_per_minute=1000".into(),
            "ratelimit.ip_burst=1000".into(),
            "log.access_log=false".into(),
        ],
        ..Opts::default()
    })
    .await;
    let mut c = h2_from("127.0.0.40", &d).await;
    // GCRA refills continuously (1000/min = one per 60 ms), so what passes before the first 429
    // is the burst plus what refilled meanwhile.
    let start = std::time::Instant::now();
    let mut admitted = 0u64;
    let r = loop {
        let r = c.get("/stats").await.unwrap();
        if r.status != 200 {
            break r;
        }
        if admitted == 0 {
            assert_eq!(r.header("ratelimit-policy"), Some("\"ip\";q=1000;w=60"));
            assert_eq!(
                r.header("ratelimit").unwrap().split(';').nth(1),
                Some("r=999")
            );
        }
        admitted += 1;
        assert!(admitted < 5000, "never limited");
    };
    let refill = (start.elapsed().as_secs_f64() * 1000.0 / 60.0).ceil() as u64;
    assert!(
        (1000..=1000 + refill + 1).contains(&admitted),
        "admitted {admitted}, refill {refill}"
    );
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`ip`"),
        "{v}"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"ip\";q=1000;w=60"));
    assert!(
        r.header("ratelimit").unwrap().starts_with("\"ip\";r=0;t="),
        "{:?}",
        r.header("ratelimit")
    );

    // probes are exempt, other addresses are not affected
    assert_eq!(c.get("/health").await.unwrap().status, 200);
    let mut other = h2_from("127.0.0.41", &d).await;
    assert_eq!(other.get("/stats").await.unwrap().status, 200);

    // honouring Retry-After works
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(c.get("/stats").await.unwrap().status, 200);

    let page = d.scrape().await;
    assert!(
        page.contains("gpuproxy_rate_limited_total{tier=\"ip\"} 1"),
        "{page}"
    );
}
