//! Progress beats of a daemon's threads, for systemd's watchdog. Each
//! watched thread (or runtime) gets a [`Beat`] from the daemon's
//! [`Health`], beats on progress or at the end of a bounded wait, and says
//! it is idle around a wait that may never end. A thread busy without a
//! beat for too long stops the pings of [`super::watchdog`].
//!
//! It owns no policy beyond that, never blocks a thread, and never wakes
//! one: a beat is one relaxed store, so an idle daemon stays asleep.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn elapsed_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One thread's progress: when it last beat, and whether it is idle.
#[derive(Debug)]
pub struct Beat {
    last_ms: AtomicU64,
    idle: AtomicBool,
}

impl Default for Beat {
    /// A beat made now, so that no thread is stale before it first runs.
    fn default() -> Self {
        Beat {
            last_ms: AtomicU64::new(elapsed_ms()),
            idle: AtomicBool::new(false),
        }
    }
}

impl Beat {
    pub fn beat(&self) {
        self.last_ms.store(elapsed_ms(), Ordering::Relaxed);
    }

    /// Idle threads are not expected to beat; leaving idle counts as one.
    /// A thread waiting on the next stage's backpressure is idle too: that
    /// stage's own beat covers the wait.
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

/// The watched beats of one daemon, by name, in the order they were made.
#[derive(Debug, Default)]
pub struct Health {
    beats: Mutex<Vec<(String, Arc<Beat>)>>,
}

impl Health {
    /// A new beat watched under `name` (a thread's or a runtime's name).
    pub fn beat(&self, name: &str) -> Arc<Beat> {
        let beat = Arc::new(Beat::default());
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_owned(), beat.clone()));
        beat
    }

    /// The first beat busy without a beat for longer than `limit`, and for
    /// how long.
    pub fn stalled(&self, limit: Duration) -> Option<(String, Duration)> {
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, b)| (name, b.silent_for()))
            .find(|(_, silent)| *silent > limit)
            .map(|(name, silent)| (name.clone(), silent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_without_beats_is_stalled_an_idle_one_is_not() {
        let h = Health::default();
        let (mqtt, appender, writer) = (h.beat("mqtt"), h.beat("appender"), h.beat("writer"));
        assert_eq!(h.stalled(Duration::from_millis(50)), None);
        appender.set_idle(true);
        std::thread::sleep(Duration::from_millis(80));
        mqtt.beat();
        writer.beat();
        assert_eq!(h.stalled(Duration::from_millis(50)), None, "idle is fine");
        std::thread::sleep(Duration::from_millis(80));
        mqtt.beat();
        appender.beat();
        let (name, silent) = h.stalled(Duration::from_millis(50)).unwrap();
        assert_eq!(name, "writer");
        assert!(silent >= Duration::from_millis(80));
    }
}
