//! Connection governance: the sharded connection table with admission caps (`table`), client
//! address grouping and CIDRs (`ip`), the reaper that enforces idle/first-request/age limits
//! (`reaper`), and file-descriptor limits (`fdlimit`).

pub mod fdlimit;
pub mod ip;
pub mod reaper;
pub mod table;

pub use table::{CloseReason, ConnHandle, ConnShared, ConnTable, Phase, RejectReason};

/// The HTTP version a connection speaks, settled by ALPN (TLS) or by the client preface (plain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1 = 0,
    Http2 = 1,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "h1",
            Protocol::Http2 => "h2",
        }
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
