//! When the points still in the spool arrived, to about a second: the
//! appender marks each commit, the status report asks the age of the
//! oldest unread point. It keeps at most one mark per second of points not
//! read yet, and never touches the disk.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far apart the marks are, at least: the oldest point's age is told
/// to about this.
const MARK_EVERY: Duration = Duration::from_secs(1);

pub struct Arrivals {
    started: Instant,
    /// (when, points appended so far), at most one per [`MARK_EVERY`].
    marks: Mutex<VecDeque<(Instant, u64)>>,
}

impl Default for Arrivals {
    fn default() -> Self {
        Arrivals {
            started: Instant::now(),
            marks: Mutex::new(VecDeque::new()),
        }
    }
}

impl Arrivals {
    /// Notes that `appended` points have been appended so far, `unread` of
    /// them (or of earlier runs) not read yet; marks of points already read
    /// are dropped.
    pub fn mark(&self, appended: u64, unread: u64) {
        let now = Instant::now();
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        match marks.back_mut() {
            Some(last) if now - last.0 < MARK_EVERY => last.1 = last.1.max(appended),
            _ => marks.push_back((now, appended)),
        }
        let oldest = appended.saturating_sub(unread);
        while marks.len() > 1 && marks[1].1 <= oldest {
            marks.pop_front();
        }
    }

    /// The age in seconds of the oldest of `unread` points when `appended`
    /// have been appended since the start; None when none is unread.
    /// Points from before the start count from the start.
    pub fn oldest_age_secs(&self, appended: u64, unread: u64) -> Option<u64> {
        // Points appended so far minus those still unread: the index of the
        // oldest unread one among this run's points.
        let oldest = appended.saturating_sub(unread);
        if unread == 0 {
            None
        } else if unread > appended {
            Some(self.started.elapsed().as_secs())
        } else {
            let now = Instant::now();
            let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
            marks
                .iter()
                .find(|m| m.1 > oldest)
                .map(|m| now.duration_since(m.0).as_secs())
        }
    }
}
