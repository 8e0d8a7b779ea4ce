//! The lease authority (`leasegate-authority`): tickets, identities, roles
//! and the real InfluxDB credentials behind each lease.
//!
//! Server-only: compiled only with the `authority` feature, so nothing here
//! may be needed by the gateway. So far it holds the configuration; the
//! server, store, backends and reaper come with the authority issue.

pub mod config;
