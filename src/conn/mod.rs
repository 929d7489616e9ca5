//! Connection governance: the sharded connection table with admission caps (`table`), client
//! address grouping and CIDRs (`ip`), the reaper that enforces idle/first-request/age limits
//! (`reaper`), and file-descriptor limits (`fdlimit`).

pub mod fdlimit;
pub use crate::types::ip;
pub mod reaper;
pub mod table;

pub use table::{CloseReason, ConnHandle, ConnShared, ConnTable, Phase, RejectReason};

/// Creates this module's series at zero, so alerts see them before the first event.
pub fn init_series() {
    use crate::metrics::{
        CONNECTIONS_ACTIVE, CONNECTIONS_CLOSED_TOTAL, CONNECTIONS_REJECTED_TOTAL,
    };
    for r in RejectReason::ALL {
        metrics::counter!(CONNECTIONS_REJECTED_TOTAL, "reason" => r.as_str()).absolute(0);
    }
    for r in CloseReason::ALL {
        metrics::counter!(CONNECTIONS_CLOSED_TOTAL, "reason" => r.as_str()).absolute(0);
    }
    metrics::gauge!(CONNECTIONS_ACTIVE).increment(0.0);
}

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

pub use crate::types::listener::ListenerKind;
