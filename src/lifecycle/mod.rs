//! What both daemons share in their lifecycle, whatever they do:
//! - [`threads`]: named threads that report when they end;
//! - [`health`]: each thread's progress beat;
//! - [`watchdog`]: systemd's watchdog, pinged while every beat moves;
//! - [`notify`]: systemd's notify protocol (`READY=1`, `STATUS=`,
//!   `STOPPING=1`);
//! - [`files`]: owner-only state directories and JSON files written whole;
//! - [`wake`]: sleeping in poll(2) on a socket or inotify until it is ready
//!   or the thread is woken (shutdown).
//!
//! `leasegate run` ([`crate::agent`]) and `leasegate-authority serve`
//! (`crate::authority`) build their start, supervision and drain from these
//! parts. Nothing here knows MQTT, InfluxDB or leases, and nothing here
//! wakes a daemon that has nothing to do.

pub mod files;
pub mod health;
pub mod notify;
pub mod threads;
pub mod wake;
pub mod watchdog;
