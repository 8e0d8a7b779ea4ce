//! The supervisor: what the daemon's main thread does while the pipeline
//! runs. It sleeps on one channel of [`Event`]s, wakes otherwise only for
//! the duties that have a time (systemd's watchdog and `STATUS=`, the
//! status file while there is no status socket), and applies reloads.
//!
//! It decides nothing about points. A thread that ends before shutdown
//! must become a shutdown: the binary then exits non-zero and systemd
//! restarts it.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::agent::pipeline::Pipeline;
use crate::agent::reload;
use crate::agent::report::status::{self, FILE_EVERY};
use crate::config::Config;
use crate::lifecycle::notify::Notifier;
use crate::lifecycle::watchdog::Watchdog;
use crate::shutdown::Shutdown;

/// How often systemd hears the status line once the daemon is ready.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How often a daemon still waiting for its broker asks systemd for more
/// start-up time.
const EXTEND_EVERY: Duration = Duration::from_secs(10);

/// What the supervisor hears.
#[derive(Debug)]
pub enum Event {
    /// A pipeline thread ended (normally only during a shutdown).
    Ended(&'static str),
    /// The broker confirmed the configured subscriptions.
    Subscribed,
    /// SIGHUP.
    Reload,
    Shutdown,
}

/// How the run ended.
pub struct Supervised {
    /// The configuration in force at the end.
    pub config: Config,
    /// A thread that ended before shutdown, if one did.
    pub died: Option<&'static str>,
    /// The threads that have ended so far.
    pub ended: Vec<&'static str>,
}

pub struct Supervisor<'a> {
    pub pipeline: &'a Pipeline,
    pub config: Config,
    /// The file a SIGHUP reads again.
    pub reload_path: Option<PathBuf>,
    /// Whether `leasegate status` has a socket to ask; without one the
    /// status file is kept fresh instead.
    pub status_socket: bool,
    pub notifier: Notifier,
    pub watchdog: Option<Watchdog>,
}

/// The duties with a time, and when each is next due.
struct Due {
    status_line: Option<Instant>,
    extend: Option<Instant>,
    status_file: Option<Instant>,
}

impl Supervisor<'_> {
    /// Runs until shutdown (or a thread ending, which starts it).
    pub fn run(mut self, events: &Receiver<Event>, shutdown: &Shutdown) -> Supervised {
        let now = Instant::now();
        let notify = self.notifier.is_enabled();
        let mut due = Due {
            status_line: None,
            extend: notify.then(|| now + EXTEND_EVERY),
            status_file: (!self.status_socket).then(|| now + FILE_EVERY),
        };
        let mut ended = Vec::new();
        let mut died = None;
        loop {
            let next = [
                due.status_line,
                due.extend,
                due.status_file,
                self.watchdog.as_ref().map(Watchdog::due),
            ]
            .into_iter()
            .flatten()
            .min();
            // No timed duty (outside systemd, with a status socket): an
            // idle gateway gives the supervisor nothing to do.
            let event = match next {
                None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(t) => events.recv_timeout(t.saturating_duration_since(Instant::now())),
            };
            match event {
                Err(RecvTimeoutError::Timeout) => self.duties(&mut due),
                Err(RecvTimeoutError::Disconnected) | Ok(Event::Shutdown) => break,
                Ok(Event::Ended(name)) => {
                    ended.push(name);
                    if !shutdown.is_triggered() {
                        died = Some(name);
                        shutdown.trigger();
                    }
                    break;
                }
                Ok(Event::Subscribed) => {
                    self.ready();
                    due.extend = None;
                    due.status_line = notify.then(|| Instant::now() + STATUS_EVERY);
                }
                Ok(Event::Reload) => self.reload(),
            }
        }
        Supervised {
            config: self.config,
            died,
            ended,
        }
    }

    /// The broker confirmed the subscriptions: systemd hears READY=1 (the
    /// spool is open already), and from now on messages flow.
    fn ready(&self) {
        let line = status::one_line(&self.pipeline.reporter.report(), crate::now_ms());
        self.notifier.send(&format!("READY=1\nSTATUS={line}"));
        log::info!("ready: the spool is open and the subscriptions are confirmed");
    }

    fn reload(&mut self) {
        let Some(path) = &self.reload_path else {
            return;
        };
        let live = reload::Live {
            subscriptions: &self.pipeline.subscriptions,
            batch: &self.pipeline.batch,
            rescan: self.pipeline.keeper.as_ref().map(|k| &k.rescan),
        };
        let current = self.config.clone();
        self.config = reload::apply(path, current, &live);
    }

    /// Whatever of the timed duties is due now.
    fn duties(&mut self, due: &mut Due) {
        let now = Instant::now();
        if let Some(w) = &mut self.watchdog
            && now >= w.due()
        {
            w.check(&self.pipeline.health);
        }
        if due.extend.is_some_and(|t| now >= t) {
            // A healthy daemon waiting for its broker asks systemd for
            // more start-up time, so a broker down at boot is no failed
            // start.
            if self
                .pipeline
                .health
                .stalled(Duration::from_secs(30))
                .is_none()
            {
                self.notifier.send(
                    "EXTEND_TIMEOUT_USEC=60000000\nSTATUS=waiting for the broker to confirm the subscriptions",
                );
            }
            due.extend = Some(now + EXTEND_EVERY);
        }
        if due.status_line.is_some_and(|t| now >= t) {
            let line = status::one_line(&self.pipeline.reporter.report(), crate::now_ms());
            self.notifier.send(&format!("STATUS={line}"));
            due.status_line = Some(now + STATUS_EVERY);
        }
        if due.status_file.is_some_and(|t| now >= t) {
            self.pipeline.reporter.write_file();
            due.status_file = Some(now + FILE_EVERY);
        }
    }
}
