//! Counters the pipeline keeps about itself: messages and points in,
//! written, refused and rejected, write failures and latency.
//!
//! Plain atomics, written by the intake, the appender and the writer, and
//! read by whatever reports them (`leasegate status`, the metrics page,
//! systemd's `STATUS=`, the final log line). Must never hold a lock or
//! anything a reader could block the pipeline on; progress beats for the
//! watchdog are not counters and live in [`crate::lifecycle::health`].

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
    /// How long accepted writes took.
    pub write_latency: Histogram,
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

/// Upper bounds (seconds) of the write latency buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A latency histogram in Prometheus' shape, lock-free: a count per bucket
/// (not cumulative here), the count and the sum in microseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound, the total count and the sum in
    /// seconds.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut running = 0;
        let cumulative = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (*bound, running)
            })
            .collect();
        (
            cumulative,
            self.count.load(Ordering::Relaxed),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let (buckets, count, sum) = h.snapshot();
        assert_eq!(buckets[0], (0.005, 1));
        assert_eq!(buckets[3], (0.05, 2));
        assert_eq!(buckets.last().unwrap().1, 2, "60 s is only in +Inf");
        assert_eq!(count, 3);
        assert!((sum - 60.033).abs() < 1e-6);
    }
}
