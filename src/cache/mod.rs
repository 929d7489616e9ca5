//! Redis (fred): the shared cache layer behind the in-process ones, and pub/sub between daemons.
//! Redis is never the only copy of anything and never on the critical path: a command that is
//! not answered within `redis.command_timeout_ms` (or at once while disconnected) is a miss.

pub mod redis;
pub mod swr;

pub use redis::Redis;
