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

use super::sink::{Sink, WriteError};
use super::spool::{self, Spool};
use super::stats::Stats;
use crate::backoff::Backoff;
use crate::config::Batch;
use crate::shutdown::Shutdown;

pub struct Writer {
    pub sink: Sink,
    pub batch: Batch,
    pub spool: Arc<Spool>,
    pub shutdown: Shutdown,
    pub stats: Arc<Stats>,
}

impl Writer {
    /// Runs until shutdown. What is not written stays in the spool for the
    /// next start.
    pub fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60), 0.25);
        while !self.shutdown.is_triggered() {
            let batch = match self.collect() {
                Ok(b) => b,
                Err(e) => {
                    log::error!("cannot read the spool: {}", crate::error_chain(&e));
                    self.shutdown.sleep(backoff.next_delay());
                    continue;
                }
            };
            if batch.records == 0 {
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
        let max_lines = self.batch.max_lines as u64;
        let max_bytes = self.batch.max_bytes as usize;
        let mut batch = self
            .spool
            .read(max_lines, max_bytes, Duration::from_millis(200))?;
        if batch.records == 0 {
            return Ok(batch);
        }
        let deadline = Instant::now() + self.batch.flush_interval;
        while batch.points < max_lines
            && batch.data.len() < max_bytes
            && !self.shutdown.is_triggered()
        {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
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
        loop {
            let started = Instant::now();
            match self.sink.write(&batch.data) {
                Ok(()) => {
                    log::debug!("wrote {} points in {:?}", batch.points, started.elapsed());
                    Stats::add(&self.stats.points_written, batch.points);
                    backoff.reset();
                    return true;
                }
                Err(e) if e.is_partial_write(self.sink.api()) => {
                    // The valid lines are written; the rest never can be.
                    log::error!(
                        "InfluxDB wrote part of a batch of {} points and refused the rest: {}",
                        batch.points,
                        crate::error_chain(&e)
                    );
                    Stats::add(&self.stats.points_refused, batch.points);
                    return true;
                }
                Err(e) => {
                    Stats::add(&self.stats.write_failures, 1);
                    let delay = match &e {
                        WriteError::Status {
                            retry_after: Some(after),
                            ..
                        } => (*after).min(Duration::from_secs(300)),
                        _ => backoff.next_delay(),
                    };
                    log::warn!(
                        "write of {} points failed: {}; retrying in {}",
                        batch.points,
                        crate::error_chain(&e),
                        humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                    );
                    if self.shutdown.sleep(delay) {
                        log::info!(
                            "stopping with {} points unwritten; they stay in the spool",
                            batch.points
                        );
                        return false;
                    }
                }
            }
        }
    }
}
