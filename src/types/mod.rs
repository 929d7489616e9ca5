//! Leaf types: plain data that several layers share and that depends on nothing else in the
//! crate (config sections deserialize straight into them). Provider ids, passthrough rules,
//! client address keys and CIDRs, rate-limit verdicts as header values, short text helpers,
//! certificates from PEM files.
//! Nothing here imports another module of the crate.

pub mod ip;
pub mod limits;
pub mod listener;
pub mod passthrough;
pub mod pem;
pub mod provider;
pub mod schema;
pub mod text;

pub use provider::ProviderId;
