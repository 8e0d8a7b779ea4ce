//! Progress beats of the daemon's threads, for systemd's watchdog.
//!
//! Each pipeline thread beats when it makes progress or finishes a bounded
//! wait, and says when it is idle (waiting for input that has not come, or
//! on the next stage's backpressure, which that stage's own beat covers).
//! The watchdog ping is sent only while no thread has been busy without a
//! beat for longer than the limit: a wedged thread stops the pings, and
//! systemd restarts the daemon. It owns no policy beyond that and never
//! blocks a thread.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn elapsed_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[derive(Debug, Default)]
pub struct Beat {
    last_ms: AtomicU64,
    idle: AtomicBool,
}

impl Beat {
    pub fn beat(&self) {
        self.last_ms.store(elapsed_ms(), Ordering::Relaxed);
    }

    /// Idle threads are not expected to beat; leaving idle counts as one.
    pub fn set_idle(&self, idle: bool) {
        self.beat();
        self.idle.store(idle, Ordering::Relaxed);
    }

    /// How long the thread has been busy without a beat.
    pub fn silent_for(&self) -> Duration {
        if self.idle.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        Duration::from_millis(elapsed_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The watched threads, by name.
#[derive(Debug, Default)]
pub struct Health {
    pub mqtt: Beat,
    pub spool: Beat,
    pub writer: Beat,
    pub lease: Beat,
}

impl Health {
    /// Marks every thread as just started (so none is stale before it
    /// first runs).
    pub fn start(&self) {
        for (_, b) in self.beats() {
            b.beat();
        }
    }

    fn beats(&self) -> [(&'static str, &Beat); 4] {
        [
            ("mqtt", &self.mqtt),
            ("spool", &self.spool),
            ("writer", &self.writer),
            ("lease", &self.lease),
        ]
    }

    /// The first thread busy without a beat for longer than `limit`.
    pub fn stalled(&self, limit: Duration) -> Option<(&'static str, Duration)> {
        self.beats()
            .into_iter()
            .map(|(name, b)| (name, b.silent_for()))
            .find(|(_, silent)| *silent > limit)
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this
/// process per `WATCHDOG_PID` when set).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_without_beats_is_stalled_an_idle_one_is_not() {
        let h = Health::default();
        h.start();
        assert_eq!(h.stalled(Duration::from_millis(50)), None);
        h.spool.set_idle(true);
        std::thread::sleep(Duration::from_millis(80));
        h.mqtt.beat();
        h.writer.beat();
        h.lease.beat();
        assert_eq!(h.stalled(Duration::from_millis(50)), None, "idle is fine");
        std::thread::sleep(Duration::from_millis(80));
        h.mqtt.beat();
        h.spool.beat();
        h.lease.beat();
        let (name, silent) = h.stalled(Duration::from_millis(50)).unwrap();
        assert_eq!(name, "writer");
        assert!(silent >= Duration::from_millis(80));
    }
}
