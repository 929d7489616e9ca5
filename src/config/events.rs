//! `[events]`: the account event log (`GET /v1/events`): retention, streams, fan-out.

use std::num::{NonZeroU32, NonZeroU64};

use serde::{Deserialize, Serialize};

use super::{Millis, MillisOrZero, nz32, nz64};

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
    /// ... or this many bytes of events (their JSON); one event alone may be bigger.
    pub max_queue_bytes: NonZeroU64,
    /// A stream whose connection has taken no event for this long while events wait for it is
    /// ended `slow_consumer` and its connection closed: the client stopped reading and what the
    /// stream sent sits in buffers (a proxy's, the kernel's) or behind an HTTP/2 window the
    /// client does not open, so nothing else would end it. Looked at every
    /// `events.poll_fallback_ms`.
    pub max_lag_ms: Millis,
    /// The kernel send buffer of a connection carrying an event stream over HTTP/1.1 (bytes;
    /// the kernel doubles it for its bookkeeping): a client that stops reading holds at most
    /// this much of the daemon's memory in the socket before the stream's writes wait and
    /// `events.max_lag_ms` applies. 0: the kernel's own sizing (up to
    /// `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default).
    pub stream_send_buffer_bytes: u32,
    /// An instance whose lifetime (`max_duration_hours` / `expires_at`) ends within this gets
    /// one `instance.expiring` event (per end time: an extension earns a new one); the
    /// reconciler looks every `rentals.reconcile_interval_ms`.
    pub expiring_notice_ms: MillisOrZero,
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
            max_queue_bytes: nz64(1 << 20),
            max_lag_ms: Millis(30_000),
            stream_send_buffer_bytes: 64 * 1024,
            poll_fallback_ms: Millis(2_000),
            expiring_notice_ms: MillisOrZero(900_000),
        }
    }
}

/// `[webhooks]`: signed HTTP deliveries of the event log, for clients that hold no connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Webhooks per account; more get 409 `webhook_limit`.
    pub max_per_account: NonZeroU32,
    /// Attempts per delivery (the first included); a delivery still failing after this many is
    /// `failed` and stays in the delivery log.
    pub max_attempts: NonZeroU32,
    /// Back-off before the second attempt; doubled each attempt, up to `retry_max_ms`, each
    /// wait drawn between half and all of it (jitter, so receivers coming back are not hit
    /// by every daemon at once). A `Retry-After` from the receiver lengthens it.
    pub retry_base_ms: Millis,
    pub retry_max_ms: Millis,
    /// One attempt: connect, TLS, request and answer.
    pub timeout_ms: Millis,
    /// Consecutive failed attempts (any delivery of the webhook) that, together with
    /// `disable_after_ms` of failing, disable it, so a dead receiver does not cost retries
    /// forever; a success resets the count.
    pub disable_after_failures: NonZeroU32,
    /// How long a webhook must have been failing (no success since its first failure) before
    /// `disable_after_failures` disables it: an outage of minutes is retried through, not a
    /// reason to stop. 0: the count alone.
    pub disable_after_ms: MillisOrZero,
    /// A webhook disabled for failing is probed this often with its oldest pending delivery; a
    /// 2xx enables it again (and what waited is sent). 0: only its owner enables it.
    pub probe_interval_ms: MillisOrZero,
    /// Deliveries one daemon has in flight at once.
    pub max_in_flight: NonZeroU32,
    /// ... of them for one webhook: a slow or failing receiver holds only its own share.
    pub max_in_flight_per_webhook: NonZeroU32,
    /// ... and for one account's webhooks together.
    pub max_in_flight_per_account: NonZeroU32,
    /// How often the log and the due retries are looked at when nothing wakes the sender (a
    /// commit on this daemon wakes it at once; events written on another daemon wait this).
    pub poll_interval_ms: Millis,
    /// Allows targets on private, loopback, link-local and other non-public addresses (tests,
    /// on-premises receivers). Off: a target is refused when any address its name resolves to
    /// is one of those, checked at every delivery (no DNS rebinding), and redirects are never
    /// followed.
    pub allow_private_targets: bool,
    /// Deliveries are recorded but not sent while set (an egress freeze, a receiver fleet
    /// moving); clearing it sends the backlog, retries counted as before.
    pub paused: bool,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            max_per_account: nz32(10),
            max_attempts: nz32(8),
            retry_base_ms: Millis(10_000),
            retry_max_ms: Millis(3_600_000),
            timeout_ms: Millis(10_000),
            disable_after_failures: nz32(50),
            disable_after_ms: MillisOrZero(86_400_000),
            probe_interval_ms: MillisOrZero(3_600_000),
            max_in_flight: nz32(32),
            max_in_flight_per_webhook: nz32(4),
            max_in_flight_per_account: nz32(8),
            poll_interval_ms: Millis(1_000),
            allow_private_targets: false,
            paused: false,
        }
    }
}

impl WebhooksConfig {
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        if self.retry_max_ms < self.retry_base_ms {
            return Err(super::err(
                "webhooks.retry_max_ms",
                "must be at least webhooks.retry_base_ms",
            ));
        }
        Ok(())
    }
}
