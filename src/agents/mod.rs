//! Instance agents (docs/agents.md): a small program on a rented machine that holds a WebSocket
//! to the daemon (`/v1/agent`), says what the machine has, and reports its GPUs' use.
//!
//! - `presence`: which daemon holds which agent (Redis), and the events of its coming and going.
//! - `protocol`: the channel's messages and their validation.
//! - `tokens`: the per-instance agent token: minted for the instance's renter, kept as a hash,
//!   revoked when the instance ends.

pub mod presence;
pub mod protocol;
pub mod tokens;
