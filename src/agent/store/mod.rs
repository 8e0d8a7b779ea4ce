//! Where points rest between the broker's ack and InfluxDB's answer: the
//! `appender` thread that decodes what the intake hands over and commits
//! it (`appender`, `decode`), the spool on the card ([`spool`]) and what
//! is known about the clocks the points were stamped with ([`trueclock`]).
//! Nothing here speaks MQTT or HTTP, and nothing here knows a credential.

pub(crate) mod appender;
pub(crate) mod arrivals;
pub(crate) mod decode;
pub mod spool;
pub mod trueclock;
