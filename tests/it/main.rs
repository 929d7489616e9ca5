//! The integration tests, one module per area, linked into one test binary (one link, one set
//! of shared services for the whole run: `support::services::shared`). Each starts the daemon
//! as a process against real PostgreSQL, PgBouncer and Redis on free ports, and the sandbox
//! providers; `support` holds that harness.

mod support;

mod agent_commands;
mod agent_keys;
mod agents;
mod auth;
mod commitments;
mod connections;
mod docs;
mod events;
mod gpx;
mod grpc;
mod hardening;
mod harness;
mod instances;
mod ionet_conformance;
mod lifecycle;
mod mcp;
mod offers;
mod openapi_client;
mod ops;
mod outage;
mod policies;
mod properties;
mod provider_truth;
mod ratelimit;
mod redis_topologies;
mod registry;
mod rentals_truth;
mod schemathesis;
mod serving;
mod spend_control;
mod topology;
mod vast_conformance;
mod volumes;
mod webhooks;
