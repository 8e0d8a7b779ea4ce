//! What both daemons share in their lifecycle, whatever they do:
//! - [`threads`]: named threads that report when they end;
//! - [`health`]: each thread's progress beat;
//! - [`watchdog`]: systemd's watchdog, pinged while every beat moves;
//! - [`notify`]: systemd's notify protocol (`READY=1`, `STATUS=`,
//!   `STOPPING=1`);
//! - [`files`]: owner-only state directories and JSON files written whole.
//!
//! `leasegate run` ([`crate::agent`]) and `leasegate-authority serve`
//! (`crate::authority`) build their start, supervision and drain from these
//! parts. Nothing here knows MQTT, InfluxDB or leases, and nothing here
//! wakes a daemon that has nothing to do.

pub mod files;
pub mod health;
pub mod notify;
pub mod threads;
pub mod watchdog;
