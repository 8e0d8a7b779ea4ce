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
    /// How long QoS 1 messages waited from arrival to their ack (the
    /// group commit's delay and the fsync).
    pub ack_delay: Delays,
    /// Rejected messages per subscription, in config order; the last slot
    /// counts messages that matched no subscription.
    pub rejected: Vec<AtomicU64>,
    /// Points that came without a timestamp and were given the time
    /// their message arrived.
    pub points_stamped: AtomicU64,
    /// Points InfluxDB dropped as older than its retention policy keeps
    /// (also in `points_refused`, and dead-lettered).
    pub points_beyond_retention: AtomicU64,
    /// Points stamped on receipt whose stamps were corrected by a trusted
    /// time before they were sent (`crate::agent::store::trueclock`).
    pub points_time_corrected: AtomicU64,
    /// Points stamped on receipt sent as stamped because no trusted time
    /// came (`clock.max_wait`, or an earlier boot's).
    pub points_time_unverified: AtomicU64,
    /// The last write's answer: its HTTP status (0: none came) and when,
    /// by `CLOCK_BOOTTIME` in ms, packed by [`Stats::wrote_with`]; 0 before
    /// the first.
    pub last_write: AtomicU64,
    /// Points the writer has read from the spool and not yet written:
    /// still in the spool, but no longer counted as unread there.
    pub points_in_flight: AtomicU64,
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

    /// Notes a write's answer: HTTP `status`, or 0 when none came.
    pub fn wrote_with(&self, status: u16) {
        let at_ms = (crate::clock::boottime_ns() / 1_000_000).max(1) as u64;
        let packed = (at_ms << 16) | u64::from(status);
        self.last_write.store(packed, Ordering::Relaxed);
    }

    /// The last write's HTTP status (0: none came) and how long ago it
    /// was; None before the first.
    pub fn last_write(&self) -> Option<(u16, std::time::Duration)> {
        let packed = self.last_write.load(Ordering::Relaxed);
        if packed == 0 {
            return None;
        }
        let now_ms = (crate::clock::boottime_ns() / 1_000_000).max(1) as u64;
        let ago = now_ms.saturating_sub(packed >> 16);
        Some((
            (packed & 0xffff) as u16,
            std::time::Duration::from_millis(ago),
        ))
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

/// Sub-buckets per power of two in [`Delays`]: 1/8 of an octave, so a
/// quantile is within 12.5% of the truth.
const SUB: u64 = 8;
const DELAY_BUCKETS: usize = 8 + 8 * 32;

/// A lock-free histogram of delays fine enough for quantiles (p50, p99):
/// log-linear buckets of microseconds, exact below 8 µs, up to about an
/// hour (longer ones count in the last bucket).
#[derive(Debug)]
pub struct Delays {
    buckets: [AtomicU64; DELAY_BUCKETS],
    sum_micros: AtomicU64,
}

impl Default for Delays {
    fn default() -> Self {
        Delays {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Delays {
    pub fn observe(&self, d: std::time::Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[delay_bucket(micros)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The sum of all delays, in seconds.
    pub fn sum_secs(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The delay below which a share `q` (0 to 1) of the observations
    /// fall, as its bucket's upper bound; None with no observation.
    pub fn quantile(&self, q: f64) -> Option<std::time::Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut running = 0;
        let index = counts
            .iter()
            .position(|n| {
                running += n;
                running >= rank
            })
            .unwrap_or(DELAY_BUCKETS - 1);
        Some(std::time::Duration::from_micros(bucket_upper(index)))
    }
}

fn delay_bucket(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let octave = u64::from(63 - micros.leading_zeros());
    let sub = (micros >> (octave - 3)) & (SUB - 1);
    ((SUB * (octave - 2) + sub) as usize).min(DELAY_BUCKETS - 1)
}

fn bucket_upper(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let octave = index / SUB + 2;
    let lower = (SUB + index % SUB) << (octave - 3);
    lower + (1 << (octave - 3)) - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn delay_buckets_are_contiguous_and_within_an_eighth() {
        let mut last = 0;
        for micros in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            1000,
            123_456,
            999_999,
            3_600_000_000,
        ] {
            let i = delay_bucket(micros);
            assert!(i >= last, "{micros}");
            last = i;
            let upper = bucket_upper(i);
            assert!(upper >= micros, "{micros} <= {upper}");
            assert!(
                upper as f64 <= micros as f64 * 1.125 + 1.0,
                "{micros}: {upper}"
            );
        }
        for i in 1..DELAY_BUCKETS {
            let lower = bucket_upper(i - 1) + 1;
            assert_eq!(delay_bucket(lower), i, "bucket {i} starts at {lower}");
            assert_eq!(delay_bucket(bucket_upper(i)), i, "bucket {i} ends");
        }
    }

    #[test]
    fn delay_quantiles() {
        let d = Delays::default();
        assert_eq!(d.quantile(0.5), None);
        for ms in 1..=100 {
            d.observe(Duration::from_millis(ms));
        }
        let p50 = d.quantile(0.5).unwrap();
        let p99 = d.quantile(0.99).unwrap();
        assert!(
            p50 >= Duration::from_millis(50) && p50 <= Duration::from_micros(56_250),
            "{p50:?}"
        );
        assert!(
            p99 >= Duration::from_millis(99) && p99 <= Duration::from_micros(111_375),
            "{p99:?}"
        );
        assert_eq!(d.count(), 100);
    }

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
