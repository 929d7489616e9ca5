//! Instance agents (docs/agents.md): a small program on a rented machine that holds a WebSocket
//! to the daemon (`/v1/agent`), says what the machine has, and reports its GPUs' use.
//!
//! - `channels`: the channels this daemon holds, and routing commands to them from any daemon.
//! - `commands`: commands run through agents, recorded in PostgreSQL before anything else.
//! - `journal`: the agents' comings and goings written to the event log in batches.
//! - `install`: the agent program handed out, its install script, and a rental's launch set up
//!   to run it.
//! - `presence`: which daemon holds which agent (Redis), and the events of its coming and going.
//! - `protocol`: the channel's messages and their validation.
//! - `tokens`: the per-instance agent token: minted for the instance's renter, kept as a hash,
//!   revoked when the instance ends.

pub mod channels;
pub mod commands;
pub mod install;
pub mod journal;
pub mod presence;
pub mod protocol;
pub mod tokens;
