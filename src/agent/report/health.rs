//! The health report each lease request carries to the authority
//! (`crate::wire::health`), made from the status report: rates since the
//! previous one, the spool's figures, the clock, the disk and the last
//! write. It never includes a credential or a point.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::agent::report::status::Reporter;
use crate::agent::stats::Stats;
use crate::wire::health::{HealthReport, LastWrite, WriteOutcome};

/// Makes reports, and keeps what the rates are counted from.
pub struct Prober {
    reporter: Arc<Reporter>,
    started: Instant,
    /// The counters at the previous report: (when, points in, written).
    previous: Mutex<(Instant, u64, u64)>,
}

impl Prober {
    pub fn new(reporter: Arc<Reporter>) -> Prober {
        let now = Instant::now();
        Prober {
            reporter,
            started: now,
            previous: Mutex::new((now, 0, 0)),
        }
    }

    /// The report as of now; the rates are over the time since the last.
    pub fn report(&self) -> HealthReport {
        let r = self.reporter.report();
        let now = Instant::now();
        let (then, was_in, was_out) = std::mem::replace(
            &mut *self.previous.lock().unwrap_or_else(|p| p.into_inner()),
            (now, r.points_in, r.points_written),
        );
        let secs = now.duration_since(then).as_secs_f64();
        let rate = |n: u64, was: u64| {
            if secs > 0.0 {
                n.saturating_sub(was) as f64 / secs
            } else {
                0.0
            }
        };
        let stats = &self.reporter.sources().stats;
        let dir = self.reporter.sources().spool.dir().to_path_buf();
        HealthReport {
            version: env!("CARGO_PKG_VERSION").into(),
            target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
            uptime_secs: self.started.elapsed().as_secs(),
            points_in_per_sec: round(rate(r.points_in, was_in)),
            points_out_per_sec: round(rate(r.points_written, was_out)),
            spool_bytes: r.spool_bytes,
            points_waiting: r.spool_points + Stats::get(&stats.points_in_flight),
            oldest_waiting_secs: r.oldest_point_age_secs,
            runway_hours: r.spool_runway_secs.map(|s| round(s as f64 / 3600.0)),
            dead_letters: r.points_dead_lettered,
            last_write: stats.last_write().map(|(status, ago)| LastWrite {
                outcome: WriteOutcome::of_status(status),
                status: (status != 0).then_some(status),
                ago_secs: ago.as_secs(),
            }),
            clock_synchronized: r.clock_synchronized,
            clock_offset_ms: r.enrollment.clock_offset_ms.map(round),
            disk_free_bytes: rustix::fs::statvfs(&dir)
                .ok()
                .map(|s| s.f_bavail.saturating_mul(s.f_frsize)),
            mqtt_connected: r.mqtt_connected,
            spool_error: r.spool_error.map(|e| cut(&e, 200)),
            // The keeper knows its schedule, and adds it.
            retry_within_secs: None,
        }
    }
}

/// Two decimals are all a report needs, and keep it short.
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `text` to at most `max` bytes, on a character boundary, control
/// characters blanked (the authority refuses them).
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
