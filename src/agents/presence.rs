//! Which daemon holds which agent, and what an agent's coming and going tells its renter.
//!
//! - Presence: Redis key `agent:<instance id>` = the holding daemon's id and the GPU
//!   utilisation of the last heartbeat (its busiest GPU, percent; `-` before one), set at `hello`
//!   and refreshed by each heartbeat (TTL `agents.presence_ttl_ms`, so a daemon that dies leaves
//!   no agent listed for long), deleted when the channel ends (only if still this daemon's: the
//!   agent may already be back on another). The idle policy reads the utilisation
//!   (`rentals::upkeep`) before the provider's.
//! - Events: `instance.agent_connected` (the hello's facts) and `instance.agent_lost` (why the
//!   channel ended), in the account's event log (written in batches: `journal`), delivered to
//!   its streams and webhooks.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::json;

use super::journal::Journal;
use super::protocol::{AgentMessage, GpuInfo, GpuSample, HostInfo};
use super::tokens::AgentIdentity;
use crate::cache::Redis;
use crate::error::Result;
use crate::events::{AGENT_CONNECTED, AGENT_LOST};

/// This daemon's id in presence records: host name, process id and a random part (a restarted
/// process is another holder).
pub fn daemon_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "daemon".into());
        let mut r = [0u8; 4];
        getrandom::fill(&mut r).expect("the OS random source works");
        format!(
            "{host}-{}-{:08x}",
            std::process::id(),
            u32::from_be_bytes(r)
        )
    })
}

fn key(redis: &Redis, instance_id: &str) -> String {
    redis.key(&format!("agent:{instance_id}"))
}

/// Records this daemon as the holder of `id`'s agent (or refreshes it), with the GPUs'
/// utilisation of a heartbeat (its busiest GPU's; `None`: none reported).
pub async fn hold(redis: Option<&Redis>, id: &AgentIdentity, ttl: Duration, gpus: &[GpuSample]) {
    if let Some(r) = redis {
        let util = gpus
            .iter()
            .map(|g| g.util_pct)
            .fold(None, |m: Option<f64>, u| Some(m.map_or(u, |m| m.max(u))));
        let value = match util {
            Some(u) => format!("{} {u}", daemon_id()),
            None => format!("{} -", daemon_id()),
        };
        r.set_ex(&key(r, &id.instance_id), value, ttl).await;
    }
}

/// The presence record of `instance_id`'s agent: (holding daemon, utilisation).
async fn record(redis: &Redis, instance_id: &str) -> Option<(String, Option<f64>)> {
    let v = redis.get(&key(redis, instance_id)).await?;
    let (daemon, util) = v.split_once(' ').unwrap_or((&v, "-"));
    Some((daemon.to_owned(), util.parse::<f64>().ok()))
}

/// The daemon holding `instance_id`'s agent, if one does.
pub async fn holder(redis: &Redis, instance_id: &str) -> Option<String> {
    record(redis, instance_id).await.map(|r| r.0)
}

/// The GPU utilisation (percent, busiest GPU) the live agent of `instance_id` last reported.
pub async fn gpu_util(redis: &Redis, instance_id: &str) -> Option<f64> {
    record(redis, instance_id).await?.1
}

/// The agent's hello: presence and `instance.agent_connected` (committed when this returns);
/// whether commands are queued for the instance.
pub async fn connected(
    journal: &Journal,
    redis: Option<&Redis>,
    id: &AgentIdentity,
    hello: &AgentMessage,
    ttl: Duration,
) -> Result<bool> {
    hold(redis, id, ttl, &[]).await;
    let data = match hello {
        AgentMessage::Hello {
            agent_version,
            gpus,
            host,
            ..
        } => facts(agent_version, gpus, host),
        _ => json!({}),
    };
    journal
        .record(id.account_id, &id.instance_id, AGENT_CONNECTED, data)
        .await
}

fn facts(version: &str, gpus: &[GpuInfo], host: &HostInfo) -> serde_json::Value {
    json!({
        "agent_version": version,
        "daemon": daemon_id(),
        "gpus": gpus,
        "host": host,
    })
}

/// The channel ended (`reason`): `instance.agent_lost` handed to the journal's next batch now
/// (a shutdown's `Journal::flush` writes it), and the presence dropped if still ours (not when
/// a newer channel here `replaced` it: that one holds it now), by a task of its own.
pub fn lost(journal: &Journal, redis: Option<&Redis>, id: &AgentIdentity, reason: &str) {
    journal.record_later(
        id.account_id,
        &id.instance_id,
        AGENT_LOST,
        json!({"reason": reason, "daemon": daemon_id()}),
    );
    let Some(r) = redis.filter(|_| reason != "replaced").cloned() else {
        return;
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return; // the runtime is going: the presence's TTL ends it
    };
    let instance = id.instance_id.clone();
    rt.spawn(async move {
        if holder(&r, &instance).await.as_deref() == Some(daemon_id()) {
            let _ = r.del(vec![key(&r, &instance)]).await;
        }
    });
}
