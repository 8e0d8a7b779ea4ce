//! Counters the pipeline keeps about itself.
//!
//! Plain atomics, written by the intake and the writer and read by whoever
//! reports (logs now, `leasegate status` later). Must never hold a lock or
//! anything a reader could block the pipeline on.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// MQTT messages received.
    pub messages_in: AtomicU64,
    /// Points stored in the spool (and so acknowledged to the broker).
    pub points_in: AtomicU64,
    /// Lines rejected by the parser (never queued).
    pub points_invalid: AtomicU64,
    /// Points InfluxDB accepted.
    pub points_written: AtomicU64,
    /// Points in batches InfluxDB refused as content (400/422).
    pub points_refused: AtomicU64,
    pub write_failures: AtomicU64,
    /// Whether the broker session is up (set by the intake).
    pub mqtt_connected: std::sync::atomic::AtomicBool,
    /// The threads' progress beats, for the watchdog.
    pub health: super::health::Health,
    /// Whether the broker has answered the configured subscriptions once.
    pub subscribed: std::sync::atomic::AtomicBool,
    /// Rejected messages per subscription, in config order; the last slot
    /// counts messages that matched no subscription.
    pub rejected: Vec<AtomicU64>,
}

impl Stats {
    pub fn new(subscriptions: usize) -> Stats {
        Stats {
            rejected: (0..=subscriptions).map(|_| AtomicU64::new(0)).collect(),
            ..Stats::default()
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
