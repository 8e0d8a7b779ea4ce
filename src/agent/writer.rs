//! The writer thread: groups queued lines into batches, writes them to
//! InfluxDB through the [`Sink`], and only then releases the MQTT acks of
//! the messages they came from.
//!
//! Batching is group commit: a batch is everything that arrived while the
//! previous write was in flight, up to the configured limits. The broker
//! stops sending QoS 1 messages once its in-flight window of unacked
//! messages is full (Mosquitto: 20 by default), so waiting for a timer would
//! only stall. A failed write is retried with capped, jittered backoff;
//! the writer must never ack a message whose points InfluxDB has not taken,
//! and must never block the MQTT event loop (it runs on its own thread).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::sink::{Sink, WriteError};
use super::stats::Stats;
use crate::backoff::Backoff;
use crate::config::Batch;
use crate::shutdown::Shutdown;

/// The lines decoded from one MQTT message, and how to acknowledge it.
#[derive(Debug)]
pub struct Delivery {
    /// Line protocol, each line ending in `\n`.
    pub lines: String,
    pub points: u64,
    /// Packet id to acknowledge once written; `None` for QoS 0 messages and
    /// messages with nothing to write.
    pub ack: Option<u16>,
}

pub struct Writer {
    pub sink: Sink,
    pub batch: Batch,
    pub deliveries: mpsc::Receiver<Delivery>,
    pub acks: mpsc::UnboundedSender<u16>,
    pub shutdown: Shutdown,
    pub stats: Arc<Stats>,
    /// How long a write may keep being retried after shutdown started.
    pub drain_timeout: Duration,
}

struct Pending {
    body: Vec<u8>,
    points: u64,
    acks: Vec<u16>,
}

impl Writer {
    /// Runs until the intake closes the delivery channel (it does so on
    /// shutdown) and the last batch is written or given up.
    pub fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60), 0.25);
        let mut pending = Pending {
            body: Vec::new(),
            points: 0,
            acks: Vec::new(),
        };
        let mut carry: Option<Delivery> = None;
        loop {
            let first = match carry.take() {
                Some(d) => d,
                None => match self.deliveries.blocking_recv() {
                    Some(d) => d,
                    None => break,
                },
            };
            pending.add(first);
            // Take what is already waiting, without blocking, up to the
            // limits; a delivery that would overflow them starts the next
            // batch.
            while pending.points < self.batch.max_lines as u64
                && (pending.body.len() as u64) < self.batch.max_bytes
            {
                match self.deliveries.try_recv() {
                    Ok(d) if pending.fits(&d, &self.batch) => pending.add(d),
                    Ok(d) => {
                        carry = Some(d);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !self.flush(&mut pending, &mut backoff) {
                // Shutdown deadline passed with the batch unwritten: its
                // messages stay unacked, so the broker redelivers them.
                log::warn!(
                    "shutting down with {} points unwritten; the broker keeps them for the next start",
                    pending.points
                );
                return;
            }
        }
    }

    /// Writes the pending batch, retrying until it is written, refused as
    /// content, or the shutdown deadline passes (returns false then).
    fn flush(&self, pending: &mut Pending, backoff: &mut Backoff) -> bool {
        if pending.body.is_empty() {
            self.release(pending);
            return true;
        }
        loop {
            let started = Instant::now();
            match self.sink.write(&pending.body) {
                Ok(()) => {
                    log::debug!("wrote {} points in {:?}", pending.points, started.elapsed());
                    Stats::add(&self.stats.points_written, pending.points);
                    backoff.reset();
                    self.release(pending);
                    return true;
                }
                Err(e) if e.is_rejected_content() => {
                    // InfluxDB 1.x has already written the valid lines of a
                    // 400 answer; sending the batch again cannot help.
                    log::error!(
                        "InfluxDB refused a batch of {} points: {}",
                        pending.points,
                        crate::error_chain(&e)
                    );
                    Stats::add(&self.stats.points_refused, pending.points);
                    self.release(pending);
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
                        pending.points,
                        crate::error_chain(&e),
                        humantime::format_duration(round_ms(delay))
                    );
                    if !self.wait(delay) {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits before a retry. Before shutdown, any shutdown cuts the wait
    /// short so the drain can start; after it, waits only while the drain
    /// deadline allows. Returns false when no retry is allowed any more.
    fn wait(&self, delay: Duration) -> bool {
        match self.shutdown.started_at() {
            None => {
                self.shutdown.sleep(delay);
                true
            }
            Some(started) => {
                let deadline = started + self.drain_timeout;
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                std::thread::sleep(delay.min(deadline - now));
                Instant::now() < deadline
            }
        }
    }

    fn release(&self, pending: &mut Pending) {
        for id in pending.acks.drain(..) {
            // The receiver is gone only when the MQTT side has stopped; the
            // broker then redelivers, which is safe (writes are idempotent).
            let _ = self.acks.send(id);
        }
        pending.body.clear();
        pending.points = 0;
    }
}

impl Pending {
    fn add(&mut self, d: Delivery) {
        self.body.extend_from_slice(d.lines.as_bytes());
        self.points += d.points;
        self.acks.extend(d.ack);
    }

    fn fits(&self, d: &Delivery, batch: &Batch) -> bool {
        self.points + d.points <= batch.max_lines as u64
            && (self.body.len() + d.lines.len()) as u64 <= batch.max_bytes
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
