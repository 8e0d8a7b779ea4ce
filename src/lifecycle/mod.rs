//! What both daemons share in their lifecycle, whatever they do: named
//! [`threads`] that report their end, each thread's [`health`] beat,
//! systemd's [`watchdog`] and [`notify`] protocol, owner-only state
//! [`files`], [`wake`] (poll(2) until ready or woken) and the metrics
//! [`page`]. `leasegate run` and `leasegate-authority serve` build their
//! start, supervision and drain from them.
//!
//! Nothing here knows MQTT, InfluxDB or leases, or wakes an idle daemon.

pub mod files;
pub mod health;
pub mod notify;
pub mod page;
pub mod threads;
pub mod wake;
pub mod watchdog;
