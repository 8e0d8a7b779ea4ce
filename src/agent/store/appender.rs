//! The `appender` thread: decodes the groups of messages the intake hands
//! over, appends them to the disk spool, commits once per group, and only
//! then releases their MQTT acks. Rejected messages go to the dead-letter
//! file here, before their ack.
//!
//! It must never ack a message whose points are not in the spool, except
//! when the overflow policy drops them or a record can never fit. While the
//! spool or the disk cannot store, it stops acking: the broker keeps them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::arrivals::Arrivals;
use crate::agent::deadletter::DeadLetters;
use crate::agent::message::{AckToken, Delivery, Handover};
use crate::agent::stats::Stats;
use crate::agent::store::decode::Decoder;
use crate::agent::store::spool::{Appended, Spool, SpoolError};
use crate::backoff::Backoff;
use crate::clock::{BootId, Stamping};
use crate::config::Subscription;
use crate::lifecycle::health::Beat;
use crate::shutdown::Shutdown;

/// Most messages stored under one commit (more when one group is
/// larger).
const GROUP: usize = 4096;
/// Most bytes of small messages stored together as one spool record; a
/// larger message gets a record of its own. A corrupt record costs all its
/// points, so this stays small: 16 KiB already makes writes 200 times
/// fewer for one-point messages.
pub const RECORD_BYTES: usize = 16 << 10;

pub struct Appender {
    pub spool: Arc<Spool>,
    pub dead_letters: Arc<Mutex<DeadLetters>>,
    pub deliveries: mpsc::Receiver<Handover>,
    pub decoder: Decoder,
    /// New subscriptions from a configuration reload (SIGHUP), for the
    /// decoder.
    pub reload: tokio::sync::watch::Receiver<Vec<Subscription>>,
    pub acks: mpsc::UnboundedSender<AckToken>,
    pub shutdown: Shutdown,
    pub stats: Arc<Stats>,
    pub beat: Arc<Beat>,
    /// Told how many points are stored so far after each commit, for the
    /// age of the oldest point in the status report.
    pub arrivals: Arc<Arrivals>,
    /// Limits of a record holding several messages: [`RECORD_BYTES`], and
    /// at most a writer batch of points, so that batches keep their size.
    pub record_bytes: usize,
    pub record_points: u64,
    /// The page size the kernel writes back.
    pub page: u64,
}

impl Appender {
    /// Runs until the intake closes the channel and everything received is
    /// stored and acked, or shutdown interrupts a retry. It wakes once per
    /// group, not per message, and commits once for all it took (one fsync
    /// under `fsync = "batch"`).
    pub fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10), 0.25);
        let mut group = Vec::with_capacity(GROUP);
        let stats = self.stats.clone();
        let beat = self.beat.clone();
        loop {
            beat.set_idle(true);
            let Some(first) = self.deliveries.blocking_recv() else {
                break;
            };
            beat.set_idle(false);
            self.decoder.begin_group();
            if self.reload.has_changed().unwrap_or(false) {
                let subscriptions = self.reload.borrow_and_update().clone();
                self.decoder.set_subscriptions(subscriptions);
            }
            group.extend(first.into_iter().map(|m| self.decoder.decode(m, &stats)));
            // Groups that queued up while the last commit ran share this
            // one.
            while group.len() < GROUP {
                match self.deliveries.try_recv() {
                    Ok(more) => {
                        group.extend(more.into_iter().map(|m| self.decoder.decode(m, &stats)))
                    }
                    Err(_) => break,
                }
            }
            // Dead-lettered here, before the acks, so that disk writes stay
            // off the MQTT event loop.
            let mut rejected = group.iter().filter_map(|d| d.rejected.as_ref()).peekable();
            if rejected.peek().is_some() {
                let mut dead_letters = self
                    .dead_letters
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                rejected.for_each(|r| dead_letters.record(r));
            }
            let stamping = self.decoder.stamping();
            if !self.store(&group, stamping, &mut backoff) {
                log::warn!(
                    "stopping with {} messages not stored; the broker keeps them for the next start",
                    group.len()
                );
                return;
            }
            self.arrivals.mark(
                Stats::get(&stats.points_in),
                self.spool.stats().points_unread,
            );
            let now = std::time::Instant::now();
            for d in group.drain(..) {
                if let Some(token) = d.ack {
                    stats.ack_delay.observe(now.saturating_duration_since(d.at));
                    // Gone only when the MQTT side stopped; the broker then
                    // redelivers, which is safe.
                    let _ = self.acks.send(token);
                }
            }
        }
    }

    /// Appends and commits the group, retrying while the spool is full
    /// (block) or the disk fails. Returns false if shutdown stopped it.
    /// Points stamped on receipt go in records of their own, with how
    /// they were stamped (`stamping`).
    fn store(&self, group: &[Delivery], stamping: Option<Stamping>, backoff: &mut Backoff) -> bool {
        if !self.store_part(group, None, backoff) {
            return false;
        }
        if group.iter().any(|d| d.stamped_points > 0) {
            // Always there when a point was stamped; the fallback is the
            // clocks' relation now, which is as good within a group.
            let stamping = stamping.unwrap_or_else(|| Stamping::now(BootId::current()));
            if !self.store_part(group, Some(stamping), backoff) {
                return false;
            }
        }
        self.commit(backoff)
    }

    /// Appends one part of each message: the lines stamped on receipt
    /// with `stamping`, or the others without. Small messages are stored together, several to a record,
    /// because one write per message costs more CPU than everything else
    /// the pipeline does with a one-point message.
    fn store_part(
        &self,
        group: &[Delivery],
        stamping: Option<Stamping>,
        backoff: &mut Backoff,
    ) -> bool {
        let mut record = Vec::new();
        let mut record_points = 0;
        let mut next = 0;
        // Said once when the room runs out and once when it is back: the
        // wait may last hours (an outage under `overflow = "block"`).
        let mut full_since: Option<std::time::Instant> = None;
        while next < group.len() || !record.is_empty() {
            // Fill the record with whole messages, up to its limits.
            while let Some((lines, points)) = group.get(next).map(|d| d.part(stamping.is_some())) {
                let fits = record.is_empty()
                    || (record.len() + lines.len() <= self.record_bytes
                        && record_points + points <= self.record_points);
                if !fits {
                    break;
                }
                record.extend_from_slice(lines);
                record_points += points;
                next += 1;
            }
            if record_points == 0 {
                record.clear();
                continue;
            }
            let appended = match stamping {
                Some(stamping) => self.spool.append_stamped(stamping, &record, record_points),
                None => self.spool.append(&record, record_points),
            };
            if appended.is_ok()
                && let Some(since) = full_since.take()
            {
                log::info!(
                    "the spool has room again after {}; acking",
                    humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
                );
            }
            match appended {
                Ok(Appended::Stored) => {
                    Stats::add(&self.stats.points_in, record_points);
                }
                Ok(Appended::DroppedNewest(points)) => {
                    log::warn!("spool full: dropped {points} new points (overflow = drop_newest)");
                }
                Err(SpoolError::TooLarge(bytes)) => {
                    log::error!("a message of {bytes} bytes can never fit in the spool; dropped");
                    Stats::add(&self.stats.points_invalid, record_points);
                }
                Err(SpoolError::Full(no_room)) => {
                    self.beat.beat();
                    if full_since.is_none() {
                        full_since = Some(std::time::Instant::now());
                        log::warn!(
                            "cannot store points: spool is full: {no_room}; not acking until there is room"
                        );
                    }
                    // Commit what is appended so the writer can drain it.
                    if self.spool.commit().is_err()
                        || self.shutdown.sleep(Duration::from_millis(50))
                    {
                        return false;
                    }
                    continue;
                }
                Err(e) => {
                    // A failing disk is a wait, not a wedge: still alive.
                    self.beat.beat();
                    // What this group appended before the failure is made
                    // readable (its acks still wait for the whole group):
                    // on a full disk the writer must be able to drain and
                    // free that segment, or the space never comes back.
                    if let Err(commit) = self.spool.commit() {
                        log::debug!("cannot commit before retrying: {commit}");
                    }
                    let delay = backoff.next_delay();
                    log::error!(
                        "cannot store points: {}; not acking, retrying in {delay:?}",
                        crate::error_chain(&e)
                    );
                    if self.shutdown.sleep(delay) {
                        return false;
                    }
                    continue;
                }
            }
            record.clear();
            record_points = 0;
        }
        true
    }

    /// Commits what the group appended, retrying while the disk fails.
    fn commit(&self, backoff: &mut Backoff) -> bool {
        // A group that nearly filled its page ends it, so that the next
        // commit does not rewrite it (best effort: a failure only costs
        // that page).
        if let Err(e) = self.spool.pad_page(self.page, self.page / 8) {
            log::debug!("cannot pad the spool page: {e}");
        }
        loop {
            match self.spool.commit() {
                Ok(()) => {
                    backoff.reset();
                    return true;
                }
                Err(e) => {
                    // A failing disk is a wait, not a wedge: still alive.
                    self.beat.beat();
                    let delay = backoff.next_delay();
                    log::error!(
                        "cannot sync the spool: {}; not acking, retrying in {delay:?}",
                        crate::error_chain(&e)
                    );
                    if self.shutdown.sleep(delay) {
                        return false;
                    }
                }
            }
        }
    }
}
