//! The writer thread: reads batches from the disk spool, writes them to
//! InfluxDB through the [`Sink`], and releases them from the spool only once
//! InfluxDB has accepted them.
//!
//! A batch goes when it reaches the line or byte limit, or `flush_interval`
//! after its first line; a backlog goes in full batches back to back, as
//! fast as InfluxDB takes them. A failed write is retried with capped,
//! jittered backoff, holding the batch. The writer must never release a
//! batch InfluxDB has not taken (content it refused is the exception, and
//! is logged), and it never touches MQTT: acks happen when points reach the
//! spool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use super::deadletter::{DeadLetters, Rejection, Source};
use super::refusal::Refusal;
use super::sink::{Sink, WriteError};
use super::spool::{self, Spool};
use super::stats::Stats;
use crate::backoff::Backoff;
use crate::config::Batch;
use crate::shutdown::Shutdown;

/// How often an unreachable InfluxDB is probed during a backoff wait.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub struct Writer {
    pub sink: Arc<Sink>,
    /// Replaced whole by a configuration reload; read per batch.
    pub batch: Arc<Mutex<Batch>>,
    pub spool: Arc<Spool>,
    pub shutdown: Shutdown,
    pub stats: Arc<Stats>,
    /// Shared with the spool thread, which records rejected messages.
    pub dead_letters: Arc<Mutex<DeadLetters>>,
}

impl Writer {
    /// Runs until shutdown. What is not written stays in the spool for the
    /// next start.
    pub fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60), 0.25);
        while !self.shutdown.is_triggered() {
            self.stats.health.writer.beat();
            let batch = match self.collect() {
                Ok(b) => b,
                Err(e) => {
                    log::error!("cannot read the spool: {}", crate::error_chain(&e));
                    self.shutdown.sleep(backoff.next_delay());
                    continue;
                }
            };
            if batch.records == 0 {
                if let Err(e) = self.spool.sync_if_due() {
                    log::error!("cannot sync the spool: {}", crate::error_chain(&e));
                }
                continue;
            }
            if !self.write(&batch, &mut backoff) {
                return;
            }
            if let Err(e) = self.spool.release(&batch) {
                log::error!("cannot free spool space: {}", crate::error_chain(&e));
            }
        }
    }

    /// Reads one batch: whatever is waiting up to the limits; if that is not
    /// a full batch, keeps reading until `flush_interval` after the first
    /// line. Returns an empty batch after a quiet spell (to check shutdown).
    fn collect(&self) -> Result<spool::Batch, spool::SpoolError> {
        let limits = self.batch.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let max_lines = limits.max_lines as u64;
        let max_bytes = limits.max_bytes as usize;
        let mut batch = self
            .spool
            .read(max_lines, max_bytes, Duration::from_millis(200))?;
        if batch.records == 0 {
            return Ok(batch);
        }
        let deadline = Instant::now() + limits.flush_interval;
        while batch.points < max_lines
            && batch.data.len() < max_bytes
            && !self.shutdown.is_triggered()
        {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.stats.health.writer.beat();
            let wait = (deadline - now).min(Duration::from_millis(200));
            let more =
                self.spool
                    .read(max_lines - batch.points, max_bytes - batch.data.len(), wait)?;
            batch.append(more);
        }
        Ok(batch)
    }

    /// Writes the batch, retrying until it is written or refused as content
    /// (true), or shutdown starts during a retry (false).
    fn write(&self, batch: &spool::Batch, backoff: &mut Backoff) -> bool {
        self.write_lines(&batch.data, batch.points, backoff)
    }

    /// Writes `data` (whole lines, `points` of them), retrying until it is
    /// written or refused as content (true), or shutdown starts during a
    /// retry (false). A body InfluxDB finds too large (413) is split at a
    /// line boundary and the halves are written in order. Lines refused for
    /// their content go to the dead-letter file and the rest is written:
    /// where InfluxDB names the bad lines they are taken out, otherwise the
    /// batch is bisected down to them.
    fn write_lines(&self, data: &[u8], points: u64, backoff: &mut Backoff) -> bool {
        let mut data = std::borrow::Cow::Borrowed(data);
        let mut points = points;
        loop {
            self.stats.health.writer.beat();
            let started = Instant::now();
            let e = match self.sink.write(&data) {
                Ok(()) => {
                    self.stats.write_latency.observe(started.elapsed());
                    log::debug!("wrote {points} points in {:?}", started.elapsed());
                    Stats::add(&self.stats.points_written, points);
                    backoff.reset();
                    return true;
                }
                Err(e) => e,
            };
            if matches!(e, WriteError::NoLease) {
                if !self.wait_for_lease(points) {
                    return false;
                }
                continue;
            }
            let status = match &e {
                WriteError::Status { status, .. } => *status,
                _ => 0,
            };
            let mut split = |why: &str| {
                let (first, second) = split_lines(&data);
                let first_points = count_lines(first);
                log::info!("{why}; writing the batch of {points} points in halves");
                self.write_lines(first, first_points, backoff)
                    && self.write_lines(second, points - first_points, backoff)
            };
            if status == 413 {
                if points > 1 {
                    return split("InfluxDB found a batch too large (413)");
                }
                self.refuse(&data, &[(0, "too large even alone".into())], &e);
                return true;
            }
            match e.refusal(self.sink.api(), &data) {
                Refusal::Lines { bad, rest_written } => {
                    let refused = self.refuse(&data, &bad, &e);
                    if rest_written {
                        Stats::add(&self.stats.points_written, points - refused);
                        backoff.reset();
                        return true;
                    }
                    // The rest was refused with them: write it again.
                    let rest = without_lines(&data, &bad);
                    points -= refused;
                    if points == 0 {
                        return true;
                    }
                    data = std::borrow::Cow::Owned(rest);
                }
                Refusal::Unknown if points > 1 => {
                    return split(&format!(
                        "InfluxDB refused some lines ({status}) without saying which"
                    ));
                }
                Refusal::Unknown => {
                    let reason = match &e {
                        WriteError::Status { message, .. } => message.clone(),
                        _ => e.to_string(),
                    };
                    self.refuse(&data, &[(0, reason)], &e);
                    return true;
                }
                Refusal::NotContent => {
                    // A refused credential goes back to its holder: with
                    // static credentials, the file it came from.
                    if matches!(status, 401 | 403) && self.took_new_credential(status) {
                        continue;
                    }
                    if !self.wait_to_retry(&e, points, backoff) {
                        return false;
                    }
                }
            }
        }
    }

    /// No lease yet (not enrolled, or the last one ran out while the
    /// authority was away): the batch waits in the spool, without backoff,
    /// and goes as soon as a lease is installed. False at shutdown.
    fn wait_for_lease(&self, points: u64) -> bool {
        log::info!("holding {points} points until there is a lease to write with");
        loop {
            if let Err(e) = self.spool.sync_if_due() {
                log::error!("cannot sync the spool: {}", crate::error_chain(&e));
            }
            self.stats.health.writer.beat();
            if self.sink.lease_id().is_some() {
                return true;
            }
            if self.shutdown.sleep(Duration::from_millis(100)) {
                return false;
            }
        }
    }

    /// A refused credential goes back to its holder: the lease keeper gets
    /// a new lease, or the credential's file is read again. True if there
    /// is a new credential to retry with at once.
    fn took_new_credential(&self, status: u16) -> bool {
        let refused_lease = self.sink.lease_id();
        let reloaded = self.sink.reload_credential(&self.shutdown);
        self.stats.health.writer.beat();
        match reloaded {
            Ok(true) if self.sink.is_leased() => {
                log::info!(
                    "InfluxDB refused lease {} ({status}); retrying with lease {}",
                    refused_lease.unwrap_or_default(),
                    self.sink.lease_id().unwrap_or_default()
                );
                true
            }
            Ok(true) => {
                let file = self.sink.secret_file().map(|p| p.display().to_string());
                log::info!(
                    "InfluxDB refused the credential ({status}); took the new one from {}",
                    file.unwrap_or_default()
                );
                true
            }
            Ok(false) => false,
            Err(e) => {
                log::error!("InfluxDB refused the credential ({status}) and {e}");
                false
            }
        }
    }

    /// Dead-letters the `bad` lines of `data` (indices from 0, with the
    /// server's reason) and counts them; returns how many there were.
    fn refuse(&self, data: &[u8], bad: &[(usize, String)], e: &WriteError) -> u64 {
        let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
        let mut seen = std::collections::BTreeSet::new();
        let mut dead_letters = self
            .dead_letters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (index, reason) in bad {
            let Some(line) = lines.get(*index) else {
                continue;
            };
            if !seen.insert(*index) {
                continue;
            }
            dead_letters.record(&Rejection {
                source: Source::Influxdb,
                topic: String::new(),
                subscription: String::new(),
                reason: format!("InfluxDB refused the line: {reason}"),
                payload: line.strip_suffix(b"\n").unwrap_or(line).to_vec(),
            });
        }
        let refused = seen.len() as u64;
        Stats::add(&self.stats.points_refused, refused);
        log::error!(
            "InfluxDB refused {refused} line(s) for their content ({}); they are in the dead-letter file, the rest is written",
            crate::error_chain(e)
        );
        refused
    }

    /// Waits before retrying a failed write: the server's Retry-After if it
    /// gave one, at least 10 s for a missing database, else the backoff.
    /// False if shutdown started meanwhile.
    fn wait_to_retry(&self, e: &WriteError, points: u64, backoff: &mut Backoff) -> bool {
        Stats::add(&self.stats.write_failures, 1);
        let delay = match e {
            // Honour the server's wait, but never spin on 0.
            WriteError::Status {
                retry_after: Some(after),
                ..
            } => (*after).clamp(Duration::from_millis(100), Duration::from_secs(300)),
            // A missing database or bucket takes a human to fix.
            WriteError::Status { status: 404, .. } => {
                backoff.next_delay().max(Duration::from_secs(10))
            }
            _ => backoff.next_delay(),
        };
        let hint = match e {
            WriteError::Status { status: 404, .. } => {
                " (the database or bucket does not exist; create it, the points are held meanwhile)"
                    .to_owned()
            }
            WriteError::Status {
                status: 401 | 403, ..
            } if self.sink.is_leased() => {
                " (the lease is refused; asking the authority for a new one; the points are held)"
                    .to_owned()
            }
            WriteError::Status {
                status: 401 | 403, ..
            } => match self.sink.secret_file() {
                Some(file) => format!(
                    " (the credential is refused; put a working one in {}, it is read again before each retry; the points are held)",
                    file.display()
                ),
                None => {
                    " (the credential is refused; the points are held until it works)".to_owned()
                }
            },
            _ => String::new(),
        };
        log::warn!(
            "write of {points} points failed: {}{hint}; retrying in {}",
            crate::error_chain(e),
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
        );
        // A server that could not be reached is probed every second, so
        // that the backlog starts draining soon after it is back rather
        // than up to a full backoff later.
        // Only a server that refuses connections now is probed: one that
        // takes them but times out keeps its full backoff.
        let probe = matches!(e, WriteError::Transport { .. }) && !self.sink.reachable(PROBE_EVERY);
        let until = Instant::now() + delay;
        let lease = self.sink.lease_id();
        loop {
            // Waiting in steps also keeps `fsync = "interval"` syncing what
            // was acked meanwhile, however long InfluxDB is away.
            if let Err(e) = self.spool.sync_if_due() {
                log::error!("cannot sync the spool: {}", crate::error_chain(&e));
            }
            self.stats.health.writer.beat();
            let left = until.saturating_duration_since(Instant::now());
            let step = left.min(PROBE_EVERY);
            if self.shutdown.sleep(step) {
                log::info!("stopping with {points} points unwritten; they stay in the spool");
                return false;
            }
            if Instant::now() >= until {
                return true;
            }
            if probe && self.sink.reachable(PROBE_EVERY) {
                log::info!("InfluxDB takes connections again; retrying now");
                return true;
            }
            // A new lease (or none) changes what the next try can do.
            if self.sink.lease_id() != lease {
                return true;
            }
        }
    }
}

/// `data` without the lines at the given indices.
fn without_lines(data: &[u8], bad: &[(usize, String)]) -> Vec<u8> {
    let bad: std::collections::BTreeSet<usize> = bad.iter().map(|(i, _)| *i).collect();
    data.split_inclusive(|&b| b == b'\n')
        .enumerate()
        .filter(|(i, _)| !bad.contains(i))
        .flat_map(|(_, line)| line.iter().copied())
        .collect()
}

/// Splits whole lines into two halves of about equal size.
fn split_lines(data: &[u8]) -> (&[u8], &[u8]) {
    let middle = data.len() / 2;
    let cut = data[middle..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| middle + i + 1)
        .filter(|&c| c < data.len())
        .or_else(|| {
            data[..middle]
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| i + 1)
        })
        .unwrap_or(data.len());
    data.split_at(cut)
}

fn count_lines(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_split_at_line_boundaries() {
        let data = b"a 1\nbb 2\nccc 3\nd 4\n";
        let (x, y) = split_lines(data);
        assert_eq!([x, y].concat(), data);
        assert!(x.ends_with(b"\n") && !x.is_empty() && !y.is_empty());
        assert_eq!(count_lines(x) + count_lines(y), 4);
        // A long last line still leaves two non-empty halves.
        let data = b"a 1\nb 2\nlonglonglonglonglonglonglonglong 3\n";
        let (x, y) = split_lines(data);
        assert_eq!((count_lines(x), count_lines(y)), (2, 1));
    }

    #[test]
    fn refused_lines_are_taken_out_in_order() {
        let data = b"a 1\nb 2\nc 3\nd 4\n";
        let bad = [(1, String::new()), (3, String::new()), (1, String::new())];
        assert_eq!(without_lines(data, &bad), b"a 1\nc 3\n");
        assert_eq!(without_lines(data, &[]), data);
    }
}
