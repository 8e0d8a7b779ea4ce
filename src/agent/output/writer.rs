//! The writer thread: reads batches from the disk spool, writes them to
//! InfluxDB through the [`Sink`] with the credential in force ([`Slot`]),
//! and releases them from the spool only once InfluxDB has accepted them.
//! A failed write is retried with capped, jittered backoff; a refused
//! credential is reported to its owner ([`Outcomes`]).
//!
//! It must never release a batch InfluxDB has not taken (refused content
//! goes to the dead-letter file), and never touches MQTT.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::credential::{Credential, Outcome, Outcomes, Slot};
use crate::agent::deadletter::{DeadLetters, Rejection, Source};
use crate::agent::output::poison;
use crate::agent::output::refusal::Refusal;
use crate::agent::output::sink::{self, Sink, WriteError};
use crate::agent::stats::Stats;
use crate::agent::store::spool::{self, Spool};
use crate::agent::store::trueclock::{Settled, TrueClock};
use crate::backoff::Backoff;
use crate::config::BatchLimits;
use crate::lifecycle::health::Beat;
use crate::lineproto::{count_lines, split_lines, without_lines};
use crate::shutdown::Shutdown;

/// How often an unreachable InfluxDB is probed during a backoff wait.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a write refused for its lease waits for the next lease before
/// it backs off like any failed write.
const NEW_LEASE_WAIT: Duration = Duration::from_secs(20);

pub struct Writer {
    pub sink: Sink,
    /// The credential in force, and where to report what became of it.
    pub slot: Arc<Slot>,
    pub outcomes: Outcomes,
    /// Replaced whole by a configuration reload; read per batch.
    pub batch: Arc<Mutex<BatchLimits>>,
    pub spool: Arc<Spool>,
    pub shutdown: Shutdown,
    pub stats: Arc<Stats>,
    pub beat: Arc<Beat>,
    /// Shared with the appender, which records rejected messages.
    pub dead_letters: Arc<Mutex<DeadLetters>>,
    /// Corrects receipt stamps before they are sent.
    pub clock: Arc<TrueClock>,
}

/// When a wait of the writer must wake by itself for an `fsync =
/// "interval"` spool.
#[derive(Clone, Copy)]
enum Wake {
    /// When a sync is due: the wait is for new data, whose commit wakes it.
    ForDueSync,
    /// Also at each interval while nothing is unsynced yet: data committed
    /// during the wait (which does not wake it) gets synced in time.
    ForAnySync,
}

/// The credential version whose success was last reported: a write that
/// worked is reported once per credential, not once per batch.
#[derive(Default)]
struct Reported(Option<u64>);

impl Writer {
    /// Runs until shutdown. What is not written stays in the spool for the
    /// next start.
    pub fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60), 0.25);
        let mut reported = Reported::default();
        while !self.shutdown.is_triggered() {
            let mut batch = match self.collect() {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(e) => {
                    log::error!("cannot read the spool: {}", crate::error_chain(&e));
                    self.shutdown.sleep(backoff.next_delay());
                    continue;
                }
            };
            self.stats
                .points_in_flight
                .store(batch.points, Ordering::Relaxed);
            // Receipt stamps are settled once there is something to write
            // with: with leases, the first lease of a boot tells the time.
            let no_credential = batch.points > 0 && self.slot.current().1.is_none();
            if (no_credential && !self.wait_for_credential(batch.points))
                || !self.settle(&mut batch)
            {
                return;
            }
            // Only padding (records of no points): nothing to write.
            if batch.points > 0
                && !self.write_lines(
                    &batch.data,
                    batch.points,
                    &mut backoff,
                    &mut reported,
                    false,
                )
            {
                return;
            }
            self.stats.points_in_flight.store(0, Ordering::Relaxed);
            if let Err(e) = self.spool.release(&batch) {
                log::error!("cannot free spool space: {}", crate::error_chain(&e));
            }
        }
    }

    /// Waits for the spool to have something, then reads one batch:
    /// whatever is waiting up to the limits; if that is not a full batch,
    /// what comes until `flush_interval` after the first line. None at
    /// shutdown.
    fn collect(&self) -> Result<Option<spool::Batch>, spool::SpoolError> {
        // Only new data can end this wait, and a commit wakes it: it needs
        // to wake by itself only for an interval fsync that is due.
        if !self.idle_until(Wake::ForDueSync, |wait| {
            self.spool.wait_readable(wait, &self.shutdown)
        }) {
            return Ok(None);
        }
        let limits = self.batch.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let max_lines = limits.max_lines as u64;
        let max_bytes = limits.max_bytes as usize;
        let mut batch = self.spool.read(max_lines, max_bytes, Duration::ZERO)?;
        let deadline = Instant::now() + limits.flush_interval;
        while batch.points < max_lines && batch.data.len() < max_bytes {
            let left = deadline.saturating_duration_since(Instant::now());
            // Waiting for more input, as the watchdog sees it: a long
            // flush interval is no stall.
            self.beat.set_idle(true);
            let more = !left.is_zero() && self.spool.wait_readable(Some(left), &self.shutdown);
            self.beat.set_idle(false);
            if !more {
                break;
            }
            match self.spool.read(
                max_lines - batch.points,
                max_bytes - batch.data.len(),
                Duration::ZERO,
            ) {
                Ok(more) => batch.append(more),
                // What was read is written first: the cursor is past it.
                // The failure comes back at the next read.
                Err(e) => {
                    log::warn!(
                        "cannot read more of the spool for this batch: {}",
                        crate::error_chain(&e)
                    );
                    break;
                }
            }
        }
        Ok(Some(batch))
    }

    /// Waits until the batch's receipt stamps may go, corrected where a
    /// trusted time says so (waiting for the time is no stall). False at
    /// shutdown.
    fn settle(&self, batch: &mut spool::Batch) -> bool {
        self.idle_until(Wake::ForAnySync, |limit| {
            match self.clock.settle(batch, &self.stats) {
                Settled::Ready => true,
                Settled::Wait(wait) => {
                    self.shutdown.sleep(limit.map_or(wait, |l| l.min(wait)));
                    false
                }
            }
        })
    }

    /// Idles (as the watchdog sees it) until `ready` says so, keeping an
    /// `fsync = "interval"` spool synced meanwhile: `ready` gets how long it
    /// may block (None: as long as it takes) and returns whether to go on.
    /// False at shutdown. Every wait is on a condition variable (the spool's
    /// commit, the slot's change, shutdown), so an idle writer sleeps.
    fn idle_until(&self, wake: Wake, mut ready: impl FnMut(Option<Duration>) -> bool) -> bool {
        self.beat.set_idle(true);
        let went_on = loop {
            let wait = match wake {
                Wake::ForDueSync => self.spool.sync_due_in(),
                Wake::ForAnySync => self.spool.sync_interval_bound(),
            };
            if ready(wait) {
                break true;
            }
            if self.shutdown.is_triggered() {
                break false;
            }
            if let Err(e) = self.spool.sync_if_due() {
                log::error!("cannot sync the spool: {}", crate::error_chain(&e));
            }
        };
        self.beat.set_idle(false);
        went_on
    }

    /// Writes `data` (whole lines, `points` of them), retrying until it is
    /// written or refused as content (true), or shutdown starts during a
    /// retry (false). A body InfluxDB finds too large (413) is split at a
    /// line boundary and the halves are written in order. Lines refused for
    /// their content go to the dead-letter file and the rest is written:
    /// where InfluxDB names the bad lines they are taken out, otherwise the
    /// batch is bisected down to them. So is a batch whose writes go
    /// unanswered while the server answers others ([`poison`]); `suspect`
    /// for a part of one.
    fn write_lines(
        &self,
        data: &[u8],
        points: u64,
        backoff: &mut Backoff,
        reported: &mut Reported,
        suspect: bool,
    ) -> bool {
        let mut data = Cow::Borrowed(data);
        let mut points = points;
        let mut unanswered = poison::Unanswered::new(suspect);
        loop {
            self.beat.beat();
            let (version, credential) = self.slot.current();
            let Some(credential) = credential else {
                if !self.wait_for_credential(points) {
                    return false;
                }
                continue;
            };
            let started = Instant::now();
            let written = self.sink.write(&credential, &data);
            self.stats
                .wrote_with(written.as_ref().map_or_else(WriteError::status, |_| 204));
            let e = match written {
                Ok(()) => {
                    self.wrote(points, started.elapsed(), version, &credential, reported);
                    backoff.reset();
                    return true;
                }
                Err(e) => e,
            };
            let status = e.status();
            let mut split = |why: &str, suspect: bool| {
                let (first, second) = split_lines(&data);
                let first_points = count_lines(first);
                log::info!("{why}; writing the batch of {points} points in halves");
                self.write_lines(first, first_points, backoff, reported, suspect)
                    && self.write_lines(second, points - first_points, backoff, reported, suspect)
            };
            if status == 413 {
                if points > 1 {
                    return split("InfluxDB found a batch too large (413)", false);
                }
                self.refuse(&data, &[(0, "too large even alone".into())], &e);
                return true;
            }
            match e.refusal(credential.api, &data) {
                Refusal::Lines { bad, rest_written } => {
                    let refused = self.refuse(&data, &bad, &e);
                    if rest_written {
                        Stats::add(&self.stats.points_written, points - refused);
                        backoff.reset();
                        return true;
                    }
                    // The rest was refused with them: write it again.
                    points -= refused;
                    if points == 0 {
                        return true;
                    }
                    data = Cow::Owned(without_lines(&data, &bad));
                }
                Refusal::BeyondRetention { bad } => {
                    let refused = self.refuse(&data, &bad, &e);
                    Stats::add(&self.stats.points_beyond_retention, refused);
                    Stats::add(&self.stats.points_written, points - refused);
                    backoff.reset();
                    return true;
                }
                Refusal::Unknown if points > 1 => {
                    return split(
                        &format!("InfluxDB refused some lines ({status}) without saying which"),
                        false,
                    );
                }
                Refusal::Unknown => {
                    self.refuse(&data, &[(0, e.server_message())], &e);
                    return true;
                }
                Refusal::NotContent => {
                    if matches!(status, 401 | 403) && self.replaced(&credential, version, status) {
                        continue;
                    }
                    if unanswered.poisoned(&e, points, &self.sink, &credential) {
                        Stats::add(&self.stats.write_failures, 1);
                        if points > 1 {
                            return split(&unanswered.split_reason(), true);
                        }
                        self.refuse(&data, &[(0, unanswered.reason())], &e);
                        return true;
                    }
                    if self.shutdown.is_triggered()
                        || !self.wait_to_retry(&e, points, backoff, version, &credential)
                    {
                        return false;
                    }
                }
            }
        }
    }

    /// Counts a written batch and tells the credential's owner, once per
    /// credential, that it works.
    fn wrote(
        &self,
        points: u64,
        took: Duration,
        version: u64,
        credential: &Arc<Credential>,
        reported: &mut Reported,
    ) {
        self.stats.write_latency.observe(took);
        log::debug!("wrote {points} points in {took:?}");
        Stats::add(&self.stats.points_written, points);
        if reported.0 != Some(version) {
            reported.0 = Some(version);
            self.outcomes.send(Outcome::Wrote(credential.clone()));
        }
    }

    /// Reports a refused credential to its owner and waits (bounded) for a
    /// new one: the lease keeper asks the authority, a static credential's
    /// file is read again at once. True when another is in force.
    fn replaced(&self, refused: &Arc<Credential>, version: u64, status: u16) -> bool {
        self.outcomes.send(Outcome::Refused {
            credential: refused.clone(),
            status,
        });
        let wait = if refused.lease_id().is_some() {
            NEW_LEASE_WAIT
        } else {
            Duration::ZERO
        };
        let until = Instant::now() + wait;
        let mut changed = false;
        self.idle_until(Wake::ForAnySync, |sync| {
            let left = until.saturating_duration_since(Instant::now());
            let step = sync.map_or(left, |s| s.min(left));
            changed = self.slot.wait_changed(version, Some(step), &self.shutdown);
            changed || Instant::now() >= until
        });
        if changed && let (_, Some(next)) = self.slot.current() {
            if next.lease_id().is_some() {
                log::info!(
                    "InfluxDB refused {} ({status}); retrying with {}",
                    refused.describe(),
                    next.describe()
                );
            }
            return true;
        }
        // None in force now (the identity was revoked): the next try waits
        // for a lease.
        changed
    }

    /// No credential yet (not enrolled, or the last lease ran out while the
    /// authority was away): the batch waits in the spool, without backoff,
    /// and goes as soon as a credential is in force. False at shutdown.
    fn wait_for_credential(&self, points: u64) -> bool {
        log::info!("holding {points} points until there is a lease to write with");
        // Data acked meanwhile goes to the spool, which keeps committing:
        // an interval fsync must still come, so this wait is bounded by it.
        self.idle_until(Wake::ForAnySync, |wait| {
            let (version, credential) = self.slot.current();
            credential.is_some() || self.slot.wait_changed(version, wait, &self.shutdown)
        })
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
    /// gave one, at least 10 s for a missing database, else the backoff;
    /// less if another credential comes into force meanwhile or an
    /// unreachable server takes connections again. False at shutdown.
    fn wait_to_retry(
        &self,
        e: &WriteError,
        points: u64,
        backoff: &mut Backoff,
        version: u64,
        credential: &Credential,
    ) -> bool {
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
        log::warn!(
            "write of {points} points failed: {}{}; retrying in {}",
            crate::error_chain(e),
            retry_hint(e, credential),
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
        );
        // Only a server that refuses connections now is probed (every
        // second, so that a backlog moves soon after it is back); one that
        // takes them but times out keeps its full backoff.
        let probe =
            matches!(e, WriteError::Transport { .. }) && !sink::reachable(credential, PROBE_EVERY);
        let until = Instant::now() + delay;
        let mut done = false;
        let went_on = self.idle_until(Wake::ForAnySync, |wait| {
            let left = until.saturating_duration_since(Instant::now());
            let step = [Some(left), wait, probe.then_some(PROBE_EVERY)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(left);
            if done || left.is_zero() || self.slot.wait_changed(version, Some(step), &self.shutdown)
            {
                return true;
            }
            if probe && !self.shutdown.is_triggered() && sink::reachable(credential, PROBE_EVERY) {
                log::info!("InfluxDB takes connections again; retrying now");
                done = true;
            }
            done || Instant::now() >= until
        });
        if !went_on {
            log::info!("stopping with {points} points unwritten; they stay in the spool");
        }
        went_on
    }
}

/// What an operator should know about a failed write, after its error.
fn retry_hint(e: &WriteError, credential: &Credential) -> String {
    match (e.status(), credential.lease_id(), &credential.origin) {
        (404, _, _) => {
            " (the database or bucket does not exist; create it, the points are held meanwhile)"
                .to_owned()
        }
        (401 | 403, Some(_), _) => {
            " (the lease is refused; asking the authority for a new one; the points are held)"
                .to_owned()
        }
        (401 | 403, None, crate::agent::credential::Origin::Static { file: Some(file) }) => {
            format!(
                " (the credential is refused; put a working one in {}, it is read again before each retry; the points are held)",
                file.display()
            )
        }
        (401 | 403, None, _) => {
            " (the credential is refused; the points are held until it works)".to_owned()
        }
        _ => String::new(),
    }
}
