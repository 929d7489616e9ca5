//! `[events]`: the account event log (`GET /v1/events`): retention, streams, fan-out.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use super::{Millis, nz32};

/// The event log and the streams that deliver it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events are kept this long (a stream resumes with `Last-Event-ID` within it), then swept
    /// by the reconciler.
    pub retention_hours: NonZeroU32,
    /// A stream with nothing to send gets a comment (SSE) this often, so proxies and clients
    /// see it alive; a WebSocket gets a ping this often whatever it sends.
    pub ping_interval_ms: Millis,
    /// A WebSocket whose client has not answered a ping within this is closed (1008
    /// `ping_timeout`): a dead peer does not hold a stream until TCP gives up.
    pub pong_timeout_ms: Millis,
    /// Concurrent streams per account (and per key: the same cap); more get 429.
    pub max_streams_per_account: NonZeroU32,
    /// Events a stream may have waiting for its client; one more and the stream is closed with
    /// `slow_consumer` (the client resumes from the log), so a slow client never slows others.
    pub max_queue: NonZeroU32,
    /// An instance whose lifetime (`max_duration_hours` / `expires_at`) ends within this gets
    /// one `instance.expiring` event (per end time: an extension earns a new one); the
    /// reconciler looks every `rentals.reconcile_interval_ms`.
    pub expiring_notice_ms: Millis,
    /// New events reach the streams through Redis pub/sub at once; the log is also read this
    /// often, so an event published while Redis was down arrives at most this late.
    pub poll_fallback_ms: Millis,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            retention_hours: nz32(72),
            ping_interval_ms: Millis(30_000),
            pong_timeout_ms: Millis(10_000),
            max_streams_per_account: nz32(20),
            max_queue: nz32(100),
            poll_fallback_ms: Millis(2_000),
            expiring_notice_ms: Millis(900_000),
        }
    }
}
