//! What an operator sees of a running daemon: the status report
//! ([`status`]: `leasegate status`, the status file and topic) and the
//! Prometheus page ([`metrics`]), and the health report each lease
//! request carries ([`health`]). It reads counters, the spool's figures
//! and the lease keeper's view; it never changes them, and it never shows
//! a secret.

pub mod health;
pub mod metrics;
pub mod status;
