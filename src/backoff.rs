//! Capped exponential backoff with random jitter.
//!
//! Retry loops across the crate take their delays from here so that every
//! one of them is capped, jittered (thousands of gateways must not retry in
//! step after an outage) and reset on success. It never sleeps itself: the
//! caller sleeps on its [`Shutdown`](crate::shutdown::Shutdown).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Fraction of each delay that is randomised, 0.0 to 1.0.
    jitter: f64,
    current: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Self {
        Backoff {
            initial,
            max,
            jitter: jitter.clamp(0.0, 1.0),
            current: initial,
            rng: seed(),
        }
    }

    /// The next delay: the current step minus up to `jitter` of it, then the
    /// step doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        step.mul_f64(1.0 - self.jitter * self.random_unit())
    }

    /// The next delay at its longest, while failures have lengthened it
    /// (None right after a reset).
    pub fn engaged(&self) -> Option<Duration> {
        (self.current > self.initial).then_some(self.current)
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// A uniform value in [0, 1), from xorshift64*: jitter needs spread, not
    /// cryptographic strength.
    fn random_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process from the OS; mixing in the time
    // gives distinct sequences to backoffs made in the same process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.25);
        let expected = [100, 200, 400, 800, 1000, 1000];
        for ms in expected {
            let d = b.next_delay();
            let step = Duration::from_millis(ms);
            assert!(d <= step && d >= step.mul_f64(0.75), "{d:?} vs {step:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 0.5);
        let delays: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 10);
    }
}
