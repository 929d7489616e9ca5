//! Connection accounting: what is open, by listener and protocol, and what it has served.
//!
//! Every accepted socket holds a [`ConnGuard`] for its whole life; dropping the guard (on any path:
//! normal close, error, panic, shutdown) takes it out of the counts, so `/stats`, the
//! `gpuproxy_connections_active` gauge and the drain on shutdown all see the same numbers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use metrics::{counter, gauge};

use crate::metrics::{CONNECTIONS_ACTIVE, CONNECTIONS_TOTAL};

/// The HTTP version a connection speaks, settled by ALPN (TLS) or by the client preface (plain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "h1",
            Protocol::Http2 => "h2",
        }
    }
    fn idx(self) -> usize {
        self as usize
    }
}

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Https,
    Http,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Https => "https",
            ListenerKind::Http => "http",
        }
    }
}

/// Process-wide connection and request counts.
#[derive(Debug, Default)]
pub struct ConnStats {
    open: AtomicU64,
    total: AtomicU64,
    /// Open connections whose protocol is settled, indexed by [`Protocol`].
    open_by_proto: [AtomicU64; 2],
    requests_by_proto: [AtomicU64; 2],
}

/// A snapshot for `/stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnSnapshot {
    pub open: u64,
    pub total: u64,
    pub open_h1: u64,
    pub open_h2: u64,
    pub requests_total: u64,
    pub requests_h1: u64,
    pub requests_h2: u64,
}

impl ConnStats {
    pub fn open(&self) -> u64 {
        self.open.load(Relaxed)
    }

    /// Registers a newly accepted socket.
    pub fn register(self: &Arc<Self>, listener: ListenerKind) -> ConnGuard {
        self.open.fetch_add(1, Relaxed);
        self.total.fetch_add(1, Relaxed);
        gauge!(CONNECTIONS_ACTIVE).increment(1.0);
        counter!(CONNECTIONS_TOTAL, "listener" => listener.as_str()).increment(1);
        ConnGuard {
            stats: self.clone(),
            proto: None,
        }
    }

    pub fn count_request(&self, proto: Protocol) {
        self.requests_by_proto[proto.idx()].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> ConnSnapshot {
        let h1 = self.requests_by_proto[0].load(Relaxed);
        let h2 = self.requests_by_proto[1].load(Relaxed);
        ConnSnapshot {
            open: self.open.load(Relaxed),
            total: self.total.load(Relaxed),
            open_h1: self.open_by_proto[0].load(Relaxed),
            open_h2: self.open_by_proto[1].load(Relaxed),
            requests_total: h1 + h2,
            requests_h1: h1,
            requests_h2: h2,
        }
    }
}

/// Keeps one connection counted while it lives.
#[derive(Debug)]
pub struct ConnGuard {
    stats: Arc<ConnStats>,
    proto: Option<Protocol>,
}

impl ConnGuard {
    /// Records the protocol once it is known (after ALPN or the plain-text preface).
    pub fn set_protocol(&mut self, proto: Protocol) {
        if self.proto.is_none() {
            self.stats.open_by_proto[proto.idx()].fetch_add(1, Relaxed);
            self.proto = Some(proto);
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
        if let Some(p) = self.proto {
            self.stats.open_by_proto[p.idx()].fetch_sub(1, Relaxed);
        }
        gauge!(CONNECTIONS_ACTIVE).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_and_uncounts() {
        let s = Arc::new(ConnStats::default());
        let mut a = s.register(ListenerKind::Https);
        a.set_protocol(Protocol::Http2);
        a.set_protocol(Protocol::Http1); // settled once; ignored
        let b = s.register(ListenerKind::Http);
        s.count_request(Protocol::Http2);
        let snap = s.snapshot();
        assert_eq!(
            (snap.open, snap.total, snap.open_h2, snap.open_h1),
            (2, 2, 1, 0)
        );
        assert_eq!((snap.requests_total, snap.requests_h2), (1, 1));
        drop(a);
        drop(b);
        let snap = s.snapshot();
        assert_eq!((snap.open, snap.total, snap.open_h2), (0, 2, 0));
    }
}
