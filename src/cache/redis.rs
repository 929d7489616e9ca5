//! The Redis client: one multiplexed connection for commands, one for subscriptions.
//!
//! `REDIS_URL` picks the deployment (fred parses it): one node (`redis://`), a Cluster
//! (`redis-cluster://`, seed nodes as `node=` parameters), or a master found through Sentinel
//! (`redis-sentinel://…?sentinelServiceName=`), each over TLS with the `rediss` schemes. In a
//! Cluster no command may span hash slots: keys read or written together share a hash tag
//! ([`Redis::tagged_key`]) and deletes of several keys go one key per command. Plain pub/sub
//! reaches every node of a Cluster, so the channels need nothing special.
//!
//! fred's default builder has no reconnect policy (after a Redis restart commands hang forever)
//! and no timeouts (commands queue during an outage): docs/design.md, "Measured crate behaviour". Here reconnecting never
//! stops (exponential back-off up to `redis.reconnect_max_delay_ms`), and every request-path
//! command runs with `fail_fast` and a timeout, so a down Redis costs a request well under a
//! millisecond.

use std::time::Duration;

use fred::prelude::{
    Builder, Client, ClientLike, Config as FredConfig, EventInterface, KeysInterface, Options,
    PubsubInterface, ReconnectPolicy, SetsInterface,
};
use fred::types::Expiration;

use crate::config::{RedisConfig, Secret};

#[derive(Clone)]
pub struct Redis {
    client: Client,
    /// Kept to build the subscriber connection with the same settings.
    builder_cfg: (FredConfig, RedisConfig),
    opts: Options,
    prefix: String,
}

impl Redis {
    /// Builds the client and starts connecting in the background; returns at once even when
    /// Redis is down (the daemon then runs degraded until it is back).
    pub fn connect(url: &Secret, cfg: &RedisConfig) -> Result<Redis, String> {
        let mut fc = FredConfig::from_url(url.expose()).map_err(|e| format!("REDIS_URL: {e}"))?;
        if !cfg.tls_ca_file.is_empty() {
            let Some(tls) = fc.tls.as_mut() else {
                return Err("redis.tls_ca_file is set but REDIS_URL is not a TLS URL \
                            (rediss://, rediss-cluster:// or rediss-sentinel://)"
                    .into());
            };
            tls.connector = tls_connector(&cfg.tls_ca_file)?;
        }
        let client = build(&fc, cfg)?;
        client.connect();
        Ok(Redis {
            client,
            builder_cfg: (fc, cfg.clone()),
            opts: Options {
                fail_fast: true,
                timeout: Some(cfg.command_timeout_ms.get()),
                max_attempts: Some(1),
                ..Default::default()
            },
            prefix: cfg.key_prefix.clone(),
        })
    }

    /// Waits (up to `within`) for the first connection; for command-line tools that publish one
    /// message and exit.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.client.wait_for_connect())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn is_up(&self) -> bool {
        self.client.is_connected()
    }

    /// `<prefix><name>`: every key and channel the daemon uses goes through here.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        self.client
            .with_options(&self.opts)
            .get::<Option<String>, _>(key)
            .await
            .ok()
            .flatten()
    }

    /// Best effort: a failure only means the next reader goes to PostgreSQL.
    pub async fn set_ex(&self, key: &str, value: String, ttl: Duration) {
        let secs = ttl.as_millis().max(1) as i64;
        let _ = self
            .client
            .with_options(&self.opts)
            .set::<(), _, _>(key, value, Some(Expiration::PX(secs)), None, false)
            .await;
    }

    /// `<prefix><name>` as one hash tag: keys built on it (`<tagged>:…`) all live in one slot
    /// of a Cluster, so one command may read several of them.
    pub fn tagged_key(&self, name: &str) -> String {
        format!("{{{}{name}}}", self.prefix)
    }

    /// Announces this daemon among its peers: `member` gets a key `<members>:<member>` that expires
    /// after `ttl`, and is listed in the set `members` (a [`Redis::tagged_key`], so the set and the
    /// member keys share a Cluster slot and one MGET reads them). Returns how many listed members are still
    /// alive (their key exists), dropping the dead ones from the set. Three round trips, once per
    /// heartbeat; errors are returned so the caller can keep its last count.
    pub async fn heartbeat(
        &self,
        members: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<u32, String> {
        let c = self.client.with_options(&self.opts);
        let own = format!("{members}:{member}");
        let ms = ttl.as_millis().max(1) as i64;
        c.set::<(), _, _>(&own, "1", Some(Expiration::PX(ms)), None, false)
            .await
            .map_err(|e| e.to_string())?;
        c.sadd::<(), _, _>(members, member)
            .await
            .map_err(|e| e.to_string())?;
        let listed: Vec<String> = c.smembers(members).await.map_err(|e| e.to_string())?;
        let keys: Vec<String> = listed.iter().map(|m| format!("{members}:{m}")).collect();
        let alive: Vec<Option<String>> = c.mget(keys).await.map_err(|e| e.to_string())?;
        let dead: Vec<&String> = listed
            .iter()
            .zip(&alive)
            .filter(|(_, a)| a.is_none())
            .map(|(m, _)| m)
            .collect();
        if !dead.is_empty() {
            let _ = c
                .srem::<(), _, _>(members, dead.into_iter().cloned().collect::<Vec<_>>())
                .await;
        }
        Ok(alive.iter().filter(|a| a.is_some()).count().max(1) as u32)
    }

    /// Deletes `keys`, one key per command (sent together): unrelated keys live in different
    /// slots of a Cluster, where one DEL naming them all is refused (CROSSSLOT).
    pub async fn del(&self, keys: Vec<String>) -> Result<(), String> {
        let c = self.client.with_options(&self.opts);
        futures_util::future::try_join_all(keys.into_iter().map(|k| c.del::<(), _>(k)))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub async fn publish(&self, channel: &str, message: String) -> Result<(), String> {
        self.client
            .with_options(&self.opts)
            .publish::<(), _, _>(channel, message)
            .await
            .map_err(|e| e.to_string())
    }

    /// Delivers every message published on `channel` to `on_message`, for the life of the
    /// process. `on_resubscribe` runs after every (re)subscription, because messages sent while
    /// disconnected are lost: the caller drops what they might have invalidated.
    pub fn subscribe(
        &self,
        channel: String,
        on_message: impl Fn(&str) + Send + Sync + 'static,
        on_resubscribe: impl Fn() + Send + Sync + 'static,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let sub = build(&self.builder_cfg.0, &self.builder_cfg.1)?;
        let mut messages = sub.message_rx();
        let mut reconnects = sub.reconnect_rx();
        sub.connect();
        Ok(tokio::spawn(async move {
            let subscribe = |sub: Client, channel: String| async move {
                loop {
                    if sub.wait_for_connect().await.is_ok()
                        && sub.subscribe(channel.clone()).await.is_ok()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            subscribe(sub.clone(), channel.clone()).await;
            // connections made before that subscription succeeded (the first one among them)
            // are covered by it: only later ones are reconnections
            while reconnects.try_recv().is_ok() {}
            on_resubscribe();
            loop {
                tokio::select! {
                    m = messages.recv() => match m {
                        Ok(m) => {
                            if let Some(text) = m.value.as_str() {
                                on_message(&text);
                            }
                        }
                        // lagged: messages were lost, so treat it like a reconnect
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => on_resubscribe(),
                        Err(_) => return,
                    },
                    r = reconnects.recv() => {
                        if r.is_err() { return; }
                        subscribe(sub.clone(), channel.clone()).await;
                        on_resubscribe();
                    }
                }
            }
        }))
    }
}

/// A rustls connector trusting only the CA certificates in the PEM file at `path`.
fn tls_connector(path: &str) -> Result<fred::types::config::TlsConnector, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(path).map_err(|e| format!("redis.tls_ca_file {path}: {e}"))?
    {
        let cert = cert.map_err(|e| format!("redis.tls_ca_file {path}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("redis.tls_ca_file {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("redis.tls_ca_file {path}: no certificate in it"));
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tls.into())
}

fn build(fc: &FredConfig, cfg: &RedisConfig) -> Result<Client, String> {
    Builder::from_config(fc.clone())
        .with_connection_config(|c| {
            c.connection_timeout = cfg.connect_timeout_ms.get();
            c.internal_command_timeout = cfg.connect_timeout_ms.get();
            c.max_command_attempts = 2;
            c.unresponsive.max_timeout = Some(Duration::from_secs(2));
            c.unresponsive.interval = Duration::from_millis(500);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = cfg.command_timeout_ms.get();
        })
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            100,
            cfg.reconnect_max_delay_ms.ms().min(u32::MAX as u64) as u32,
            2,
        ))
        .build()
        .map_err(|e| format!("cannot build the Redis client: {e}"))
}
