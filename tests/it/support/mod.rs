//! Shared helpers for the integration tests: real services, the daemon as a process, a TLS
//! client and test certificates.
#![allow(dead_code)]

pub mod accounts;
pub mod agents;
pub mod certs;
pub mod client;
pub mod daemon;
pub mod metrics;
pub mod poller;
pub mod pyenv;
pub mod receiver;
pub mod redis_topology;
pub mod rentals;
pub mod sandbox;
pub mod services;
pub mod sse;
pub mod stack;
#[path = "../../../src/testkit.rs"]
pub mod testkit;
pub mod topology;
pub mod ws;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, failing the test after 15 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
