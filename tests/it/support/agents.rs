//! Helpers of the agent tests: minting an instance's agent token, and reading an agent
//! channel's messages and its close.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::daemon::DaemonProc;
use super::rentals::call;
use super::ws::Ws;

/// Mints `instance`'s agent token as the renter `key`.
pub async fn mint(d: &DaemonProc, key: &str, instance: &str) -> String {
    let r = call(
        d,
        key,
        "POST",
        &format!("/v1/instances/{instance}/agent-token"),
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let t = r.json()["token"].as_str().unwrap().to_owned();
    assert!(t.starts_with("gpa_"), "{t}");
    t
}

/// An agent's hello for `instance`, with one GPU.
pub fn hello(instance: &str) -> Message {
    Message::text(
        json!({"type": "hello", "instance_id": instance, "agent_version": "test",
               "gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 4090", "memory_mb": 24564}],
               "host": {"hostname": "box", "os": "linux", "cpus": 8, "memory_mb": 32000}})
        .to_string(),
    )
}

/// The next text message (pings are answered by the client as it reads).
pub async fn next_text(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the channel open")
            .expect("a frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Reads until the server's close: its code and reason.
pub async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a close within 10 s")
        {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (0, String::new()),
            Some(Ok(_)) => {}
        }
    }
}
