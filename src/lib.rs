//! leasegate: forwards MQTT sensor readings to InfluxDB with short-lived,
//! least-privilege leased credentials.
//!
//! The library holds all the logic; the two binaries in `src/bin` are thin
//! command-line shells over it. Server-only parts live behind the
//! `authority` cargo feature so the gateway build carries none of them.

pub mod lineproto;
