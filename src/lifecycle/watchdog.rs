//! systemd's watchdog: `WATCHDOG=1` at a quarter of the interval the unit
//! asks for (`WatchdogSec=`), and only while every beat of the daemon's
//! [`Health`] makes progress. A beat silent for half the interval
//! withholds the ping (logged once), and systemd restarts the daemon.
//!
//! It owns the timing and the decision; what the beats stand for is the
//! daemon's. Without a watchdog (not under systemd, or no `WatchdogSec=`)
//! nothing wakes up for it.

use std::time::{Duration, Instant};

use super::health::Health;
use super::notify::Notifier;
use crate::shutdown::Shutdown;

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this
/// process per `WATCHDOG_PID` when set).
pub fn interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The pinging side of the watchdog, for a loop that calls [`Watchdog::check`]
/// when [`Watchdog::due`] says.
pub struct Watchdog {
    interval: Duration,
    notifier: Notifier,
    next: Instant,
    withheld: bool,
}

impl Watchdog {
    /// The watchdog systemd asks for, if any.
    pub fn from_env() -> Option<Watchdog> {
        let interval = interval()?;
        // The first ping a quarter interval in: after READY=1, which a
        // daemon sends once it has started.
        Some(Watchdog {
            interval,
            notifier: Notifier::from_env(),
            next: Instant::now() + interval / 4,
            withheld: false,
        })
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When the next ping is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Pings if every beat of `health` made progress within half the
    /// interval; otherwise withholds the ping and says which is stuck.
    pub fn check(&mut self, health: &Health) {
        self.next = Instant::now() + self.interval / 4;
        match health.stalled(self.interval / 2) {
            None => {
                self.notifier.send("WATCHDOG=1");
                self.withheld = false;
            }
            Some((name, silent)) if !self.withheld => {
                log::error!(
                    "the {name} thread has made no progress for {}; withholding the watchdog ping",
                    humantime::format_duration(Duration::from_millis(silent.as_millis() as u64))
                );
                self.withheld = true;
            }
            Some(_) => {}
        }
    }

    /// Runs the watchdog on a thread of its own until `shutdown`, for a
    /// daemon without a loop of its own to run it in.
    pub fn spawn(
        mut self,
        health: std::sync::Arc<Health>,
        shutdown: Shutdown,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                loop {
                    let wait = self.due().saturating_duration_since(Instant::now());
                    if shutdown.sleep(wait) {
                        return;
                    }
                    self.check(&health);
                }
            })
    }
}
