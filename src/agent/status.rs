//! What `leasegate status` shows. The daemon answers on a unix socket,
//! `runtime_dir/status.sock` (mode 0660), with its current report as one
//! JSON object; it also writes the report to `state_dir/status.json` every
//! ten seconds (whole file, renamed in), which the command reads when the
//! socket is not there (a daemon that could not make it, or has stopped)
//! and says how fresh it is.
//!
//! It owns the report's shape and its human rendering. The report is built
//! from counters, the spool's statistics and the lease keeper's view, none
//! of which holds a secret; it must never include a credential.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::lease::{LeaseLink, LeaseView};
use super::spool::Spool;
use super::stats::Stats;

pub const STATUS_FILE: &str = "status.json";
/// How often the report file is rewritten.
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
    pub spool_points: u64,
    pub spool_bytes: u64,
    /// Seconds since the oldest point still in the spool arrived (to the
    /// second; points from before the daemon started count from its start).
    pub oldest_point_age_secs: Option<u64>,
    pub stopped: bool,
}

pub struct Reporter {
    path: PathBuf,
    leased: bool,
    started: Instant,
    inner: Mutex<Tracking>,
}

struct Tracking {
    last: Option<Instant>,
    written: Option<Instant>,
    /// (when, points appended so far): to tell when the oldest unread
    /// point arrived.
    marks: VecDeque<(Instant, u64)>,
    report: Option<Report>,
}

impl Reporter {
    pub fn new(state_dir: &Path, leased: bool) -> Reporter {
        Reporter {
            path: state_dir.join(STATUS_FILE),
            leased,
            started: Instant::now(),
            inner: Mutex::new(Tracking {
                last: None,
                written: None,
                marks: VecDeque::new(),
                report: None,
            }),
        }
    }

    /// Writes the report if a second has passed since the last one.
    pub fn maybe_write(&self, stats: &Stats, spool: &Spool, link: &LeaseLink) {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if t.last.is_some_and(|l| now - l < Duration::from_secs(1)) {
            return;
        }
        t.last = Some(now);
        let spool_stats = spool.stats();
        let appended = Stats::get(&stats.points_in);
        if t.marks.back().is_none_or(|m| m.1 != appended) {
            t.marks.push_back((now, appended));
        }
        // Points appended so far minus those still unread: the index of the
        // oldest unread one among this run's points.
        let oldest = appended.saturating_sub(spool_stats.points_unread);
        while t.marks.len() > 1 && t.marks[1].1 <= oldest {
            t.marks.pop_front();
        }
        let age = if spool_stats.points_unread == 0 {
            None
        } else if spool_stats.points_unread > appended {
            Some(self.started.elapsed().as_secs())
        } else {
            t.marks
                .iter()
                .find(|m| m.1 > oldest)
                .map(|m| now.duration_since(m.0).as_secs())
        };
        let report = Report {
            pid: std::process::id(),
            updated_ms: crate::now_ms(),
            credentials: if self.leased { "lease" } else { "static" }.into(),
            enrollment: if self.leased {
                link.view()
            } else {
                LeaseView {
                    state: "static credentials".into(),
                    ..LeaseView::default()
                }
            },
            mqtt_connected: stats
                .mqtt_connected
                .load(std::sync::atomic::Ordering::Relaxed),
            points_in: appended,
            points_written: Stats::get(&stats.points_written),
            points_dead_lettered: Stats::get(&stats.points_invalid)
                + Stats::get(&stats.points_refused),
            points_dropped: spool_stats.dropped_points,
            spool_points: spool_stats.points_unread,
            spool_bytes: spool_stats.bytes,
            oldest_point_age_secs: age,
            stopped: false,
        };
        // The socket serves the report of every second; the file, for when
        // the socket is not there, is rewritten less often (flash wears).
        if t.written.is_none_or(|w| now - w >= FILE_EVERY) {
            if let Err(e) = super::identity::write_json(&self.path, &report, false) {
                log::debug!("cannot write {}: {e}", self.path.display());
            }
            t.written = Some(now);
        }
        t.report = Some(report);
    }

    /// Marks the report as from a stopped daemon.
    pub fn stopped(&self) {
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut r) = t.report.clone() {
            r.stopped = true;
            r.updated_ms = crate::now_ms();
            let _ = super::identity::write_json(&self.path, &r, false);
        }
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
        "{state}; mqtt {}; {} points written, {} in the spool",
        if r.mqtt_connected {
            "connected"
        } else {
            "disconnected"
        },
        r.points_written,
        r.spool_points
    )
}

/// The last report written, if any.
impl Reporter {
    pub fn last(&self) -> Option<Report> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report
            .clone()
    }
}

pub const STATUS_SOCKET: &str = "status.sock";

/// Serves the report on `runtime_dir/status.sock` until `shutdown`, on its
/// own thread; None (with a warning) when the socket cannot be made.
pub fn serve(
    runtime_dir: &Path,
    reporter: std::sync::Arc<Reporter>,
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
            l.set_nonblocking(true)?;
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
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            while !shutdown.sleep(Duration::from_millis(50)) {
                while let Ok((mut conn, _)) = listener.accept() {
                    use std::io::Write as _;
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                    let mut report = reporter.last();
                    if let Some(r) = &mut report {
                        r.updated_ms = crate::now_ms();
                    }
                    let body = serde_json::to_vec(&report).expect("plain data always serializes");
                    let _ = conn.write_all(&body);
                }
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
    line("dead-lettered:", r.points_dead_lettered.to_string());
    line("dropped:", r.points_dropped.to_string());
    line(
        "spool:",
        format!(
            "{} points, {} bytes{}",
            r.spool_points,
            r.spool_bytes,
            r.oldest_point_age_secs
                .map(|a| format!(
                    ", oldest {} old",
                    humantime::format_duration(Duration::from_secs(a))
                ))
                .unwrap_or_default()
        ),
    );
    out
}
