//! What `leasegate status` shows: the daemon's report, served as one JSON
//! object on `runtime_dir/status.sock` and written to
//! `state_dir/status.json` at start, at stop, and while there is no socket.
//! It owns the report's shape and its human rendering.
//!
//! The report must never include a credential: it is built only from
//! counters, the spool's statistics and the lease keeper's view. Nothing
//! here runs on a timer: a report costs nothing until someone asks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::credential::lease::LeaseView;
use crate::agent::stats::Stats;
use crate::agent::store::arrivals::Arrivals;
use crate::agent::store::spool::Spool;

pub const STATUS_FILE: &str = "status.json";
/// How often the report file is rewritten while there is no socket.
pub const FILE_EVERY: Duration = Duration::from_secs(10);
/// A report older than this means the daemon is not running (or stuck).
pub const STALE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub pid: u32,
    pub updated_ms: i64,
    /// "lease" or "static".
    pub credentials: String,
    pub enrollment: LeaseView,
    pub mqtt_connected: bool,
    pub points_in: u64,
    pub points_written: u64,
    /// Invalid lines and lines InfluxDB refused, both in the dead-letter
    /// file.
    pub points_dead_lettered: u64,
    /// Dropped by the spool's overflow policy.
    pub points_dropped: u64,
    /// Dropped by InfluxDB as older than its retention policy keeps (also
    /// in `points_dead_lettered`).
    #[serde(default)]
    pub points_beyond_retention: u64,
    /// Points stamped on receipt whose stamps a trusted time corrected,
    /// and those sent as stamped for want of one.
    #[serde(default)]
    pub points_time_corrected: u64,
    #[serde(default)]
    pub points_time_unverified: u64,
    pub spool_points: u64,
    pub spool_bytes: u64,
    /// Seconds since the oldest point still in the spool arrived (to the
    /// second; points from before the daemon started count from its start).
    pub oldest_point_age_secs: Option<u64>,
    /// Why the spool cannot store points (a read-only, full or failing
    /// disk, or no room it may take), and since when: nothing is acked
    /// meanwhile, and the broker keeps the messages.
    #[serde(default)]
    pub spool_error: Option<String>,
    #[serde(default)]
    pub spool_failing_since_ms: Option<i64>,
    /// Seconds until the spool is full if nothing is written, at the rate
    /// points came over the last minute (packed as the last pack was);
    /// None while none come.
    #[serde(default)]
    pub spool_runway_secs: Option<u64>,
    /// Segments packed while they wait for InfluxDB.
    #[serde(default)]
    pub spool_packed_segments: usize,
    /// The kernel's clock: kept in sync (by NTP or the like), and its
    /// bound on its error. None where the kernel does not say. The offset
    /// to the authority's clock is in `enrollment`.
    #[serde(default)]
    pub clock_synchronized: Option<bool>,
    #[serde(default)]
    pub clock_max_error_ms: Option<f64>,
    pub stopped: bool,
}

/// What a report is made of.
pub struct Sources {
    pub stats: Arc<Stats>,
    pub spool: Arc<Spool>,
    /// When the unread points arrived (the appender marks them).
    pub arrivals: Arc<Arrivals>,
    /// The lease keeper's view; None with static credentials.
    pub view: Option<Arc<Mutex<LeaseView>>>,
}

pub struct Reporter {
    path: PathBuf,
    sources: Sources,
}

impl Reporter {
    /// What the reports are made of.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    pub fn new(state_dir: &Path, sources: Sources) -> Reporter {
        Reporter {
            path: state_dir.join(STATUS_FILE),
            sources,
        }
    }

    /// The report as of now.
    pub fn report(&self) -> Report {
        let stats = &self.sources.stats;
        let spool = self.sources.spool.stats();
        let appended = Stats::get(&stats.points_in);
        let age = self
            .sources
            .arrivals
            .oldest_age_secs(appended, spool.points_unread);
        let kernel = crate::clock::kernel();
        Report {
            pid: std::process::id(),
            updated_ms: crate::now_ms(),
            credentials: if self.sources.view.is_some() {
                "lease"
            } else {
                "static"
            }
            .into(),
            enrollment: match &self.sources.view {
                Some(view) => view.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                None => LeaseView {
                    state: "static credentials".into(),
                    ..LeaseView::default()
                },
            },
            mqtt_connected: stats
                .mqtt_connected
                .load(std::sync::atomic::Ordering::Relaxed),
            points_in: appended,
            points_written: Stats::get(&stats.points_written),
            points_dead_lettered: Stats::get(&stats.points_invalid)
                + Stats::get(&stats.points_refused),
            points_dropped: spool.dropped_points,
            points_beyond_retention: Stats::get(&stats.points_beyond_retention),
            points_time_corrected: Stats::get(&stats.points_time_corrected),
            points_time_unverified: Stats::get(&stats.points_time_unverified),
            spool_points: spool.points_unread,
            spool_bytes: spool.bytes,
            oldest_point_age_secs: age,
            spool_failing_since_ms: spool.fault.as_ref().map(|f| f.since_ms),
            spool_runway_secs: spool.runway.map(|r| r.as_secs()),
            spool_packed_segments: spool.packed_segments,
            spool_error: spool.fault.map(|f| f.error),
            clock_synchronized: kernel.map(|k| k.synchronized),
            clock_max_error_ms: kernel.map(|k| k.max_error_us as f64 / 1e3),
            stopped: false,
        }
    }

    /// Writes the report file (left to the kernel to flush: a status
    /// report must not wear an SD card).
    pub fn write_file(&self) {
        if let Err(e) = crate::lifecycle::files::write_json(&self.path, &self.report(), false) {
            log::debug!("cannot write {}: {e}", self.path.display());
        }
    }

    /// Writes the report of a stopped daemon.
    pub fn stopped(&self) {
        let mut r = self.report();
        r.stopped = true;
        let _ = crate::lifecycle::files::write_json(&self.path, &r, false);
    }
}

/// One line for systemd's `STATUS=`: the state and the backlog.
pub fn one_line(r: &Report, now_ms: i64) -> String {
    let e = &r.enrollment;
    let state = match (&e.lease_id, e.lease_expires_ms) {
        (Some(lease), Some(t)) => format!(
            "{} as {}, lease {lease} expires {}",
            e.state,
            e.identity_name.as_deref().unwrap_or("-"),
            crate::render::expiry(t, now_ms).trim_start_matches("in ")
        ),
        _ => e.state.clone(),
    };
    format!(
        "{state}; mqtt {}; {} points written, {} in the spool{}",
        if r.mqtt_connected {
            "connected"
        } else {
            "disconnected"
        },
        r.points_written,
        r.spool_points,
        if r.spool_error.is_some() {
            "; not acking: the spool cannot store"
        } else {
            ""
        }
    )
}

pub const STATUS_SOCKET: &str = "status.sock";

/// Serves the report on `runtime_dir/status.sock` until `shutdown`, on its
/// own thread, which sleeps in poll(2) until a client or the shutdown
/// comes; None (with a warning) when the socket cannot be made.
pub fn serve(
    runtime_dir: &Path,
    reporter: Arc<Reporter>,
    shutdown: crate::shutdown::Shutdown,
) -> Option<std::thread::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::net::UnixListener;
    let path = runtime_dir.join(STATUS_SOCKET);
    let made = std::fs::create_dir_all(runtime_dir)
        .and_then(|()| match std::fs::remove_file(&path) {
            // A socket left by a daemon that died: nobody listens on it.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .and_then(|()| UnixListener::bind(&path))
        .and_then(|l| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
            Ok(l)
        });
    let listener = match made {
        Ok(l) => l,
        Err(e) => {
            log::warn!(
                "no status socket at {}: {e}; `leasegate status` reads {STATUS_FILE} instead",
                path.display()
            );
            return None;
        }
    };
    crate::lifecycle::threads::spawn("status", move || {
        let served = crate::lifecycle::wake::serve_each(
            &listener,
            &shutdown,
            |l| l.accept().map(|(conn, _)| conn),
            |mut conn| {
                use std::io::Write as _;
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                let body = serde_json::to_vec(&Some(reporter.report()))
                    .expect("plain data always serializes");
                let _ = conn.write_all(&body);
            },
        );
        if let Err(e) = served {
            log::warn!("the status socket stopped: {e}");
        }
        let _ = std::fs::remove_file(&path);
    })
    .ok()
}

/// The running daemon's report from its socket, else the last one it
/// wrote to the state dir.
pub fn fetch(runtime_dirs: &[PathBuf], state_dir: &Path) -> Result<Report, String> {
    use std::io::Read as _;
    let found = runtime_dirs.iter().find_map(|d| {
        let path = d.join(STATUS_SOCKET);
        std::os::unix::net::UnixStream::connect(&path)
            .ok()
            .map(|c| (path, c))
    });
    if let Some((path, mut conn)) = found {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut body = Vec::new();
        conn.read_to_end(&mut body)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match serde_json::from_slice::<Option<Report>>(&body) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) => return Err("the daemon is starting; no report yet".into()),
            Err(e) => return Err(format!("{}: not a status report: {e}", path.display())),
        }
    }
    read(state_dir)
}

pub fn read(state_dir: &Path) -> Result<Report, String> {
    let path = state_dir.join(STATUS_FILE);
    let text = std::fs::read(&path).map_err(|e| {
        format!(
            "cannot read {}: {e} (is the daemon running?)",
            path.display()
        )
    })?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))
}

/// The kernel's clock state and the offset to the authority's.
fn clock_line(r: &Report, now_ms: i64) -> String {
    let kernel = match (r.clock_synchronized, r.clock_max_error_ms) {
        (Some(true), Some(err)) => format!("synchronized (max error {err:.0} ms)"),
        (Some(true), None) => "synchronized".to_owned(),
        (Some(false), _) => "not synchronized".to_owned(),
        (None, _) => "state unknown".to_owned(),
    };
    let e = &r.enrollment;
    let mut text = match (
        e.clock_offset_ms,
        e.clock_offset_error_ms,
        e.clock_measured_ms,
    ) {
        (Some(ms), Some(err), Some(at)) => format!(
            "{kernel}; {} ({})",
            crate::clock::describe((ms * 1e6) as i64, (err * 1e6) as i64),
            crate::render::relative(at, now_ms)
        ),
        _ => kernel,
    };
    if r.points_time_corrected > 0 {
        text.push_str(&format!(
            "; {} receipt stamps corrected",
            r.points_time_corrected
        ));
    }
    if r.points_time_unverified > 0 {
        text.push_str(&format!(
            "; {} sent without a trusted time",
            r.points_time_unverified
        ));
    }
    text
}

/// Human rendering, with times relative to `now_ms`.
pub fn render(r: &Report, now_ms: i64) -> String {
    use crate::render::{expiry, relative};
    let e = &r.enrollment;
    let running = if r.stopped {
        format!("stopped ({})", relative(r.updated_ms, now_ms))
    } else if now_ms - r.updated_ms > STALE.as_millis() as i64 {
        format!(
            "not answering: last report {}",
            relative(r.updated_ms, now_ms)
        )
    } else {
        format!("running (pid {})", r.pid)
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    line("daemon:", running);
    line("enrollment:", e.state.clone());
    line(
        "identity:",
        match (&e.identity_id, &e.identity_name) {
            (Some(id), Some(name)) => format!("{name} ({id})"),
            _ => "-".into(),
        },
    );
    line("authority:", opt(&e.authority_url));
    line("lease:", opt(&e.lease_id));
    line(
        "expires:",
        e.lease_expires_ms.map_or("-".into(), |t| expiry(t, now_ms)),
    );
    line(
        "next renewal:",
        e.next_renewal_ms
            .map_or("-".into(), |t| relative(t, now_ms)),
    );
    line("last error:", opt(&e.last_error));
    line(
        "mqtt:",
        if r.mqtt_connected {
            "connected"
        } else {
            "disconnected"
        }
        .into(),
    );
    line("points in:", r.points_in.to_string());
    line("written:", r.points_written.to_string());
    line(
        "dead-lettered:",
        match r.points_beyond_retention {
            0 => r.points_dead_lettered.to_string(),
            old => format!(
                "{} ({old} older than InfluxDB's retention policy)",
                r.points_dead_lettered
            ),
        },
    );
    line("dropped:", r.points_dropped.to_string());
    line("clock:", clock_line(r, now_ms));
    line(
        "spool:",
        format!(
            "{} points, {} bytes{}{}{}",
            r.spool_points,
            r.spool_bytes,
            match r.spool_packed_segments {
                0 => String::new(),
                n => format!(" ({n} segments packed)"),
            },
            r.oldest_point_age_secs
                .map(|a| format!(
                    ", oldest {} old",
                    humantime::format_duration(Duration::from_secs(a))
                ))
                .unwrap_or_default(),
            r.spool_runway_secs
                .map(|s| format!(
                    "; full in {} without InfluxDB at the current rate",
                    humantime::format_duration(Duration::from_secs(s))
                ))
                .unwrap_or_default()
        ),
    );
    if let Some(error) = &r.spool_error {
        line(
            "not acking:",
            format!(
                "the spool cannot store points{}: {error}",
                r.spool_failing_since_ms
                    .map(|t| format!(" (since {})", relative(t, now_ms)))
                    .unwrap_or_default()
            ),
        );
    }
    out
}
