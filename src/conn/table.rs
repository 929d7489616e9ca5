//! The sharded connection table: every client socket the daemon holds, with admission caps.
//!
//! A socket first takes a global [`Reservation`] (one atomic add, checked against the global cap)
//! at accept time, then — once its client address is known, which with the PROXY protocol is
//! after the header — registers in the shard its client IP hashes to. The per-IP count and the
//! insert happen under that one shard's lock, so admission for one IP touches one shard. The
//! [`ConnHandle`] that registration returns removes the entry when dropped, on every path (normal
//! close, error, panic, shutdown).
//!
//! Each entry is an `Arc<ConnShared>` that the connection's task updates without locks (activity
//! time, requests, in-flight count, phase) and that the reaper (`reaper.rs`) reads to close idle,
//! stalled or too-old connections through `close`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use metrics::counter;
use slab::Slab;
use tokio::sync::Notify;

use super::ip::IpKey;
use super::{ListenerKind, Protocol};
use crate::metrics::{
    ACCEPT_ERRORS_TOTAL, CONNECTIONS_CLOSED_TOTAL, CONNECTIONS_REJECTED_TOTAL, CONNECTIONS_TOTAL,
};

/// Why a connection was refused before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    GlobalCap,
    PerIpCap,
    /// A PROXY header from an address not in the trusted list.
    ProxyUntrusted,
    /// A missing, malformed or truncated PROXY header from a trusted address.
    ProxyInvalid,
}

impl RejectReason {
    pub const ALL: [RejectReason; 4] = [
        RejectReason::GlobalCap,
        RejectReason::PerIpCap,
        RejectReason::ProxyUntrusted,
        RejectReason::ProxyInvalid,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::GlobalCap => "global_cap",
            RejectReason::PerIpCap => "per_ip_cap",
            RejectReason::ProxyUntrusted => "proxy_untrusted",
            RejectReason::ProxyInvalid => "proxy_invalid",
        }
    }
}

/// Why the daemon (not the client) closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    IdleTimeout = 1,
    /// No complete request head in time (slowloris, or a silent new connection).
    HeaderTimeout = 2,
    HandshakeTimeout = 3,
    MaxAge = 4,
    Drain = 5,
    /// The client read nothing of an answer for `connections.write_timeout_ms` (closed hard).
    WriteTimeout = 6,
    /// Asked to close, still open `connections.force_close_after_ms` later (closed hard).
    Forced = 7,
    /// It carried an event stream that took no event for `events.max_lag_ms` while events
    /// waited: the client stopped reading (HTTP/1.1: closed hard; HTTP/2: GOAWAY, then
    /// `connections.force_close_after_ms`).
    SlowConsumer = 8,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::IdleTimeout,
        CloseReason::HeaderTimeout,
        CloseReason::HandshakeTimeout,
        CloseReason::MaxAge,
        CloseReason::Drain,
        CloseReason::WriteTimeout,
        CloseReason::Forced,
        CloseReason::SlowConsumer,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::MaxAge => "max_age",
            CloseReason::Drain => "drain",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::Forced => "forced",
            CloseReason::SlowConsumer => "slow_consumer",
        }
    }
    fn from_u8(v: u8) -> Option<CloseReason> {
        CloseReason::ALL.into_iter().find(|r| *r as u8 == v)
    }
}

/// Where a connection is in its life; the reaper treats each differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// TLS handshake (bounded by its own timeout).
    Handshake = 0,
    /// No HTTP state held: waiting for the socket to become readable.
    Waiting = 1,
    /// hyper is serving it.
    Active = 2,
}

#[derive(Debug, Clone, Copy)]
pub struct TableConfig {
    /// A power of two.
    pub shards: usize,
    pub max_total: u64,
    pub max_per_ip: u32,
    pub v6_prefix: u8,
}

pub struct ConnTable {
    shards: Box<[Mutex<Shard>]>,
    cfg: TableConfig,
    /// Reserved plus registered connections: what the global cap bounds.
    open: AtomicU64,
    total: AtomicU64,
    rejected: [AtomicU64; 4],
    closed: [AtomicU64; CloseReason::ALL.len()],
    requests_by_proto: [AtomicU64; 2],
    accept_errors: AtomicU64,
    epoch: Instant,
    accepted_https: metrics::Counter,
    accepted_http: metrics::Counter,
}

#[derive(Default)]
struct Shard {
    conns: Slab<Arc<ConnShared>>,
    /// Open connections per client key; a key leaves the map when its count reaches 0.
    per_ip: HashMap<IpKey, u32>,
}

/// What the connection's task and the reaper share about one connection.
#[derive(Debug)]
pub struct ConnShared {
    pub client: SocketAddr,
    pub key: IpKey,
    pub listener: ListenerKind,
    pub tls: bool,
    /// Milliseconds since the table's epoch.
    pub accepted_ms: u64,
    last_activity_ms: AtomicU64,
    /// When bytes last arrived, and when a response last finished: a connection is parked only
    /// if nothing arrived after its last response (no request head half-read by hyper).
    last_read_ms: AtomicU64,
    last_done_ms: AtomicU64,
    /// The client asked for `Connection: close` (or spoke HTTP/1.0): do not park, close.
    wants_close: std::sync::atomic::AtomicBool,
    /// A long-lived response (an event stream) is being written: the TLS buffers are freed
    /// whenever empty, as on a parked connection, since this one will not park for its life.
    streaming: std::sync::atomic::AtomicBool,
    /// The next response head hyper writes is not sent (an HTTP/1 event stream writes its own:
    /// see `server::connection::raw_stream`).
    swallow_head: std::sync::atomic::AtomicBool,
    requests: AtomicU64,
    inflight: AtomicU32,
    phase: AtomicU8,
    /// 0 = unknown yet, 1 = h1, 2 = h2.
    proto: AtomicU8,
    close_reason: AtomicU8,
    /// When `close_reason` was set (ms), for the forced close of one that does not go.
    close_asked_ms: AtomicU64,
    /// Since when a write has been waiting for the client to read (ms + 1; 0 = not waiting).
    write_blocked_ms: AtomicU64,
    /// Signalled by the reaper (with `close_reason` set first).
    pub close: Notify,
    /// Signalled by the reaper to drop the connection at once (no graceful end: the client does
    /// not read, or did not go when asked).
    pub kill: Notify,
    epoch: Instant,
}

impl ConnShared {
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
    pub fn touch(&self) {
        self.last_activity_ms.store(self.now_ms(), Relaxed);
    }
    /// Bytes arrived from the client.
    pub fn touch_read(&self) {
        let now = self.now_ms();
        self.last_activity_ms.store(now, Relaxed);
        self.last_read_ms.store(now, Relaxed);
    }
    /// Nothing has arrived since the last response finished (and at least one did).
    pub fn quiet_since_response(&self) -> bool {
        let done = self.last_done_ms.load(Relaxed);
        done > 0 && self.last_read_ms.load(Relaxed) <= done
    }
    pub fn set_wants_close(&self) {
        self.wants_close.store(true, Relaxed);
    }
    pub fn wants_close(&self) -> bool {
        self.wants_close.load(Relaxed)
    }
    pub fn set_streaming(&self) {
        self.streaming.store(true, Relaxed);
    }
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Relaxed)
    }
    pub fn swallow_next_head(&self) {
        self.swallow_head.store(true, Relaxed);
    }
    pub fn swallowing_head(&self) -> bool {
        self.swallow_head.load(Relaxed)
    }
    pub fn head_swallowed(&self) {
        self.swallow_head.store(false, Relaxed);
    }
    pub fn idle_ms(&self) -> u64 {
        self.now_ms()
            .saturating_sub(self.last_activity_ms.load(Relaxed))
    }
    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Relaxed);
    }
    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Handshake,
            1 => Phase::Waiting,
            _ => Phase::Active,
        }
    }
    pub fn set_protocol(&self, p: Protocol) {
        self.proto.store(p as u8 + 1, Relaxed);
    }
    pub fn protocol(&self) -> Option<Protocol> {
        match self.proto.load(Relaxed) {
            1 => Some(Protocol::Http1),
            2 => Some(Protocol::Http2),
            _ => None,
        }
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Relaxed)
    }
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.inflight.fetch_add(1, Relaxed);
        self.touch();
    }
    pub fn request_finished(&self) {
        self.inflight.fetch_sub(1, Relaxed);
        let now = self.now_ms().max(1);
        self.last_activity_ms.store(now, Relaxed);
        self.last_done_ms.store(now, Relaxed);
    }
    /// Asks the connection's task to close (gracefully where a request is in flight). The first
    /// reason given wins. Returns whether this call set it.
    pub fn request_close(&self, reason: CloseReason) -> bool {
        let set = self
            .close_reason
            .compare_exchange(0, reason as u8, Relaxed, Relaxed)
            .is_ok();
        if set {
            self.close_asked_ms.store(self.now_ms(), Relaxed);
            self.close.notify_one();
        }
        set
    }
    /// How long ago the connection was asked to close, if it was.
    pub fn close_asked_for_ms(&self) -> Option<u64> {
        self.close_reason().map(|_| {
            self.now_ms()
                .saturating_sub(self.close_asked_ms.load(Relaxed))
        })
    }
    /// A write could not proceed (the client's receive window is full).
    pub fn write_blocked(&self) {
        let _ = self
            .write_blocked_ms
            .compare_exchange(0, self.now_ms() + 1, Relaxed, Relaxed);
    }
    /// A write went through.
    pub fn write_progressed(&self) {
        if self.write_blocked_ms.load(Relaxed) != 0 {
            self.write_blocked_ms.store(0, Relaxed);
        }
    }
    /// How long a write has been waiting for the client to read (0 when none is).
    pub fn write_stalled_ms(&self) -> u64 {
        match self.write_blocked_ms.load(Relaxed) {
            0 => 0,
            t => self.now_ms().saturating_sub(t - 1),
        }
    }
    /// Drops the connection at once; `reason` replaces any earlier one (what closed it).
    pub fn kill(&self, reason: CloseReason) {
        if !self.request_close(reason) {
            self.close_reason.store(reason as u8, Relaxed);
        }
        self.kill.notify_one();
    }
    pub fn close_reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.close_reason.load(Relaxed))
    }
}

/// A place under the global cap, held from accept until registration (or refusal).
pub struct Reservation {
    table: Arc<ConnTable>,
    armed: bool,
}

/// A registered connection; dropping it removes the entry.
pub struct ConnHandle {
    table: Arc<ConnTable>,
    shard: usize,
    slot: usize,
    pub shared: Arc<ConnShared>,
}

/// Counts by listener and protocol, for `/stats`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ListenerCounts {
    pub h1: u64,
    pub h2: u64,
    /// TLS handshake not finished or protocol not settled yet.
    pub pending: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TableSnapshot {
    pub open: u64,
    pub max: u64,
    pub max_per_ip: u32,
    pub total: u64,
    pub per_shard: Vec<u64>,
    pub by_protocol: ListenerCounts,
    pub https: ListenerCounts,
    pub http: ListenerCounts,
    /// Connections with no HTTP state held (waiting for the next request).
    pub waiting: u64,
    pub rejected: HashMap<&'static str, u64>,
    pub closed: HashMap<&'static str, u64>,
    pub accept_errors: u64,
    pub requests_total: u64,
    pub requests_h1: u64,
    pub requests_h2: u64,
}

impl ConnTable {
    pub fn new(cfg: TableConfig) -> Arc<ConnTable> {
        assert!(cfg.shards.is_power_of_two());
        Arc::new(ConnTable {
            shards: (0..cfg.shards)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            cfg,
            open: AtomicU64::new(0),
            total: AtomicU64::new(0),
            rejected: Default::default(),
            closed: Default::default(),
            requests_by_proto: Default::default(),
            accept_errors: AtomicU64::new(0),
            epoch: Instant::now(),
            accepted_https: counter!(CONNECTIONS_TOTAL, "listener" => "https"),
            accepted_http: counter!(CONNECTIONS_TOTAL, "listener" => "http"),
        })
    }

    pub fn config(&self) -> &TableConfig {
        &self.cfg
    }

    pub fn open(&self) -> u64 {
        self.open.load(Relaxed)
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard lock leaves consistent data (every update is one step).
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place under the global cap, or refuses (and counts the refusal).
    pub fn reserve(self: &Arc<Self>, listener: ListenerKind) -> Result<Reservation, RejectReason> {
        match listener {
            ListenerKind::Https => self.accepted_https.increment(1),
            ListenerKind::Http => self.accepted_http.increment(1),
        }
        if self.open.fetch_add(1, Relaxed) >= self.cfg.max_total {
            self.open.fetch_sub(1, Relaxed);
            self.count_reject(RejectReason::GlobalCap);
            return Err(RejectReason::GlobalCap);
        }
        Ok(Reservation {
            table: self.clone(),
            armed: true,
        })
    }

    pub fn count_reject(&self, r: RejectReason) {
        self.rejected[r as usize].fetch_add(1, Relaxed);
        counter!(CONNECTIONS_REJECTED_TOTAL, "reason" => r.as_str()).increment(1);
    }

    pub fn count_close(&self, r: CloseReason) {
        self.closed[r as usize - 1].fetch_add(1, Relaxed);
        counter!(CONNECTIONS_CLOSED_TOTAL, "reason" => r.as_str()).increment(1);
    }

    /// accept() failed (e.g. EMFILE); the accept loop backs off.
    pub fn count_accept_error(&self) {
        self.accept_errors.fetch_add(1, Relaxed);
        counter!(ACCEPT_ERRORS_TOTAL).increment(1);
    }

    pub fn count_request(&self, p: Protocol) {
        self.requests_by_proto[p as usize].fetch_add(1, Relaxed);
    }

    /// Calls `f` on every registered connection, one shard lock at a time.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<ConnShared>)) {
        for i in 0..self.shards.len() {
            let shard = self.lock(i);
            for (_, c) in shard.conns.iter() {
                f(c);
            }
        }
    }

    /// Asks every connection to close (drain).
    pub fn close_all(&self, reason: CloseReason) {
        self.for_each(|c| {
            c.request_close(reason);
        });
    }

    pub fn snapshot(&self) -> TableSnapshot {
        let mut per_shard = Vec::with_capacity(self.shards.len());
        let (mut https, mut http, mut waiting) =
            (ListenerCounts::default(), ListenerCounts::default(), 0);
        for i in 0..self.shards.len() {
            let shard = self.lock(i);
            per_shard.push(shard.conns.len() as u64);
            for (_, c) in shard.conns.iter() {
                let l = match c.listener {
                    ListenerKind::Https => &mut https,
                    ListenerKind::Http => &mut http,
                };
                match c.protocol() {
                    Some(Protocol::Http1) => l.h1 += 1,
                    Some(Protocol::Http2) => l.h2 += 1,
                    None => l.pending += 1,
                }
                if c.phase() == Phase::Waiting {
                    waiting += 1;
                }
            }
        }
        let by_protocol = ListenerCounts {
            h1: https.h1 + http.h1,
            h2: https.h2 + http.h2,
            pending: https.pending + http.pending,
        };
        let h1 = self.requests_by_proto[0].load(Relaxed);
        let h2 = self.requests_by_proto[1].load(Relaxed);
        TableSnapshot {
            open: self.open(),
            max: self.cfg.max_total,
            max_per_ip: self.cfg.max_per_ip,
            total: self.total.load(Relaxed),
            per_shard,
            by_protocol,
            https,
            http,
            waiting,
            rejected: RejectReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.rejected[*r as usize].load(Relaxed)))
                .collect(),
            closed: CloseReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.closed[*r as usize - 1].load(Relaxed)))
                .collect(),
            accept_errors: self.accept_errors.load(Relaxed),
            requests_total: h1 + h2,
            requests_h1: h1,
            requests_h2: h2,
        }
    }

    /// The `n` client keys holding the most connections, most first.
    pub fn top_clients(&self, n: usize) -> Vec<(IpKey, u32)> {
        let mut all: Vec<(IpKey, u32)> = Vec::new();
        for i in 0..self.shards.len() {
            let shard = self.lock(i);
            all.extend(shard.per_ip.iter().map(|(k, v)| (*k, *v)));
        }
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Connections one client key holds now.
    pub fn count_for(&self, key: IpKey) -> u32 {
        let i = self.shard_of(key);
        self.lock(i).per_ip.get(&key).copied().unwrap_or(0)
    }

    fn shard_of(&self, key: IpKey) -> usize {
        (key.mix() as usize) & (self.shards.len() - 1)
    }
}

impl Reservation {
    /// Registers the connection under its client address, or refuses it for the per-IP cap.
    pub fn register(
        mut self,
        client: SocketAddr,
        listener: ListenerKind,
        tls: bool,
    ) -> Result<ConnHandle, RejectReason> {
        let table = self.table.clone();
        let key = IpKey::new(client.ip(), table.cfg.v6_prefix);
        let shard_idx = table.shard_of(key);
        let now = table.now_ms();
        let shared = {
            let mut shard = table.lock(shard_idx);
            let n = shard.per_ip.entry(key).or_insert(0);
            if *n >= table.cfg.max_per_ip {
                if *n == 0 {
                    shard.per_ip.remove(&key);
                }
                drop(shard);
                table.count_reject(RejectReason::PerIpCap);
                return Err(RejectReason::PerIpCap); // the reservation's drop gives the place back
            }
            *n += 1;
            let shared = Arc::new(ConnShared {
                client,
                key,
                listener,
                tls,
                accepted_ms: now,
                last_activity_ms: AtomicU64::new(now),
                last_read_ms: AtomicU64::new(0),
                last_done_ms: AtomicU64::new(0),
                wants_close: std::sync::atomic::AtomicBool::new(false),
                streaming: std::sync::atomic::AtomicBool::new(false),
                swallow_head: std::sync::atomic::AtomicBool::new(false),
                requests: AtomicU64::new(0),
                inflight: AtomicU32::new(0),
                phase: AtomicU8::new(if tls {
                    Phase::Handshake as u8
                } else {
                    Phase::Waiting as u8
                }),
                proto: AtomicU8::new(0),
                close_reason: AtomicU8::new(0),
                close_asked_ms: AtomicU64::new(0),
                write_blocked_ms: AtomicU64::new(0),
                close: Notify::new(),
                kill: Notify::new(),
                epoch: table.epoch,
            });
            let slot = shard.conns.insert(shared.clone());
            (shared, slot)
        };
        self.armed = false;
        table.total.fetch_add(1, Relaxed);
        Ok(ConnHandle {
            table,
            shard: shard_idx,
            slot: shared.1,
            shared: shared.0,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            self.table.open.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        {
            let mut shard = self.table.lock(self.shard);
            shard.conns.remove(self.slot);
            if let Some(n) = shard.per_ip.get_mut(&self.shared.key) {
                *n -= 1;
                if *n == 0 {
                    shard.per_ip.remove(&self.shared.key);
                }
            }
            // Keep an emptied shard from holding the memory of a past peak.
            if shard.conns.is_empty() && shard.conns.capacity() > 1024 {
                shard.conns.shrink_to_fit();
                shard.per_ip.shrink_to_fit();
            }
        }
        self.table.open.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_total: u64, max_per_ip: u32) -> Arc<ConnTable> {
        ConnTable::new(TableConfig {
            shards: 8,
            max_total,
            max_per_ip,
            v6_prefix: 64,
        })
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn admit(t: &Arc<ConnTable>, a: &str) -> Result<ConnHandle, RejectReason> {
        t.reserve(ListenerKind::Http)?
            .register(addr(a), ListenerKind::Http, false)
    }

    #[test]
    fn per_ip_cap_is_per_ip() {
        let t = table(100, 2);
        let a1 = admit(&t, "10.0.0.1:1").unwrap();
        let _a2 = admit(&t, "10.0.0.1:2").unwrap();
        assert_eq!(admit(&t, "10.0.0.1:3").err(), Some(RejectReason::PerIpCap));
        let _b = admit(&t, "10.0.0.2:1").unwrap();
        assert_eq!(t.open(), 3, "a refused registration gives its place back");
        drop(a1);
        let _a3 = admit(&t, "10.0.0.1:4").unwrap();
        let s = t.snapshot();
        assert_eq!(s.rejected["per_ip_cap"], 1);
        assert_eq!(s.per_shard.iter().sum::<u64>(), 3);
    }

    #[test]
    fn ipv6_neighbours_share_a_cap() {
        let t = table(100, 1);
        let _a = admit(&t, "[2001:db8::1]:1").unwrap();
        assert!(admit(&t, "[2001:db8::2]:1").is_err(), "same /64");
        assert!(admit(&t, "[2001:db8:0:1::1]:1").is_ok(), "another /64");
    }

    #[test]
    fn global_cap() {
        let t = table(2, 10);
        let _a = admit(&t, "10.0.0.1:1").unwrap();
        let r = t.reserve(ListenerKind::Https).unwrap();
        assert_eq!(
            admit(&t, "10.0.0.2:1").err(),
            Some(RejectReason::GlobalCap),
            "a reservation counts"
        );
        drop(r);
        let _b = admit(&t, "10.0.0.2:1").unwrap();
        assert_eq!(t.snapshot().rejected["global_cap"], 1);
    }

    #[test]
    fn everything_is_released_and_the_map_empties() {
        let t = table(10_000, 10_000);
        let handles: Vec<_> = (0..5000)
            .map(|i| admit(&t, &format!("10.0.{}.{}:1", i / 250, i % 250)).unwrap())
            .collect();
        assert_eq!(t.top_clients(1)[0].1, 1);
        drop(handles);
        assert_eq!(t.open(), 0);
        assert!(t.top_clients(10).is_empty());
        assert_eq!(t.snapshot().per_shard.iter().sum::<u64>(), 0);
    }

    #[test]
    fn top_clients_sorted() {
        let t = table(100, 100);
        let mut hs = Vec::new();
        for (ip, n) in [("10.0.0.1", 3), ("10.0.0.2", 5), ("10.0.0.3", 1)] {
            for p in 0..n {
                hs.push(admit(&t, &format!("{ip}:{p}")).unwrap());
            }
        }
        let top = t.top_clients(2);
        assert_eq!(
            top.iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect::<Vec<_>>(),
            vec![("10.0.0.2".into(), 5), ("10.0.0.1".into(), 3)]
        );
    }

    #[test]
    fn first_close_reason_wins() {
        let t = table(10, 10);
        let h = admit(&t, "10.0.0.1:1").unwrap();
        assert!(h.shared.request_close(CloseReason::IdleTimeout));
        assert!(!h.shared.request_close(CloseReason::Drain));
        assert_eq!(h.shared.close_reason(), Some(CloseReason::IdleTimeout));
    }
}
