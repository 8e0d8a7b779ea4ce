//! Group commit: when the messages the intake holds go to the appender
//! together, to be stored under one commit (one fsync) and acked: when a
//! page of the spool file is full, when the oldest held message has
//! waited `spool.commit_delay`, or when the broker is waiting for acks.
//!
//! The rule ([`GroupRule`]) works on plain values and the clock the caller
//! passes in; it must never block, sleep or look at a message's content.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::agent::message::Handover;
use crate::agent::store::spool::Tail;
use crate::shutdown::Shutdown;

use super::acks::AckClock;

/// Most messages held in one group.
pub const MAX_MESSAGES: usize = 4096;
/// Most estimated bytes held in one group (a backlog streams through in
/// groups of this size).
pub const MAX_BYTES: u64 = 1 << 20;
/// Silence after a window's burst that ends its group. A broker with a
/// small in-flight window (Mosquitto's `max_inflight_messages`, 20 by
/// default) sends its window, then nothing until acks come: ending the
/// group then, not after `commit_delay`, keeps the stream flowing. A
/// stream's own pauses never end a group: sensors pause all the time, and
/// each such commit would cost a page.
pub const MIN_PAUSE: Duration = Duration::from_millis(2);
/// Messages closer than this are back to back: a broker sending what it
/// queued (on loopback, the round trip after our acks is well under it).
pub const BURST: Duration = Duration::from_millis(1);
/// A record's header in the spool, counted once per group.
const RECORD_HEADER: u64 = 14;

/// Why a group must go (the page boundary is [`GroupRule::ends_before`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The oldest held message waited `commit_delay`, which bounds every
    /// ack's delay.
    Delay,
    /// The broker is waiting for acks: its window's burst ended.
    Pause,
    /// [`MAX_MESSAGES`] or [`MAX_BYTES`].
    Size,
    /// No holding: `commit_delay` is zero.
    AtOnce,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Delay => "delay",
            Reason::Pause => "pause",
            Reason::Size => "size",
            Reason::AtOnce => "at once",
        }
    }
}

/// The group-commit rule and what it needs to remember between messages.
/// An fsync writes every page it finds dirty: committing each message
/// alone would rewrite the same partly filled page again and again, on
/// flash that wears by the page. Holding the acks of a few hundred
/// milliseconds of messages costs each a little latency and saves that.
#[derive(Debug)]
pub struct GroupRule {
    delay: Duration,
    page: u64,
    /// Messages held, and their estimated bytes in the spool.
    messages: usize,
    bytes: u64,
    /// Where in the spool file the held group will start.
    start: u64,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    /// When acks last went out.
    acked_at: Option<Instant>,
    /// The held group is a window's burst: it started right after acks
    /// and its messages came back to back.
    burst: bool,
}

impl GroupRule {
    /// `delay`: `spool.commit_delay`; `page`: the system's page size.
    pub fn new(delay: Duration, page: u64) -> GroupRule {
        GroupRule {
            delay,
            page: page.max(512),
            messages: 0,
            bytes: 0,
            start: 0,
            first_at: None,
            last_at: None,
            acked_at: None,
            burst: false,
        }
    }

    /// Bytes a message of `payload` bytes takes in the spool, as far as
    /// the intake can tell without decoding it: line protocol is stored as
    /// it came, with a newline.
    pub fn estimate(payload: &[u8]) -> u64 {
        payload.len() as u64 + u64::from(!payload.ends_with(b"\n"))
    }

    /// Whether a message of `bytes` (an [`GroupRule::estimate`]) must start
    /// a new group, the held one being handed over first because it ends
    /// at a page boundary: the next group starts a fresh page, and no page
    /// is dirtied twice.
    pub fn ends_before(&self, bytes: u64) -> bool {
        if self.messages == 0 {
            return false;
        }
        let end = self.start + self.bytes;
        let boundary = (end / self.page + 1) * self.page;
        end + bytes > boundary
    }

    /// Counts a message that arrived at `now` into the held group (which
    /// starts at `tail` in the spool file if it is new). Returns why the
    /// group must go now, if it must.
    #[cfg(test)]
    pub fn add(&mut self, bytes: u64, now: Instant, tail: u64) -> Option<Reason> {
        self.add_read(bytes, now, now, tail)
    }

    /// [`GroupRule::add`] for a message read at `now` that may have come
    /// as early as `earliest` (it waited in the socket while the reader
    /// paused): the delay counts from `earliest`, the burst is told by
    /// when messages were read.
    pub fn add_read(
        &mut self,
        bytes: u64,
        earliest: Instant,
        now: Instant,
        tail: u64,
    ) -> Option<Reason> {
        if self.messages == 0 {
            self.start = tail;
            self.bytes = RECORD_HEADER;
            self.first_at = Some(earliest.min(now));
            // A broker that waited for those acks sends at once; a
            // message that may have come before them was not sent for them.
            self.burst = self.acked_at.is_some_and(|a| {
                self.last_at.is_none_or(|l| a >= l)
                    && earliest >= a
                    && now.saturating_duration_since(a) <= BURST
            });
        } else if self
            .last_at
            .is_some_and(|l| now.saturating_duration_since(l) > BURST)
        {
            self.burst = false;
        }
        self.messages += 1;
        self.bytes += bytes;
        self.last_at = Some(now);
        if self.delay.is_zero() {
            Some(Reason::AtOnce)
        } else if self.messages >= MAX_MESSAGES || self.bytes >= MAX_BYTES {
            Some(Reason::Size)
        } else {
            None
        }
    }

    /// When the held group must go if nothing else arrives, and why; None
    /// when nothing is held.
    pub fn deadline(&self) -> Option<(Instant, Reason)> {
        let first = self.first_at.filter(|_| self.messages > 0)?;
        let by_delay = first + self.delay;
        match self.last_at {
            Some(last) if self.burst && last + MIN_PAUSE < by_delay => {
                Some((last + MIN_PAUSE, Reason::Pause))
            }
            _ => Some((by_delay, Reason::Delay)),
        }
    }

    /// Where the held group is estimated to end in the spool file.
    pub fn end(&self) -> u64 {
        self.start + self.bytes
    }

    /// The held group was handed over.
    pub fn handed(&mut self) {
        self.messages = 0;
        self.bytes = 0;
        self.first_at = None;
    }

    /// Acks went out at `at` (the latest of them, if several did).
    pub fn acked(&mut self, at: Instant) {
        self.acked_at = Some(self.acked_at.map_or(at, |a| a.max(at)));
    }

    /// Estimated spool bytes of the held group, its record header
    /// included.
    #[cfg(test)]
    fn held_bytes(&self) -> u64 {
        self.bytes
    }
}

/// The messages held for the next group, and what the group rule needs
/// to know from outside: where the spool ends, and when acks went out.
pub(super) struct Held {
    pub(super) group: Handover,
    pub(super) rule: GroupRule,
    pub(super) tail: Tail,
    /// The spool's tail when the last group was handed over, and where
    /// that group should end: until the appender has stored it, the next
    /// group starts at the estimate.
    pub(super) tail_at_handover: u64,
    pub(super) expected_tail: u64,
    pub(super) acked: Arc<AckClock>,
    pub(super) acked_seen: u64,
}

impl Held {
    /// Hands the held group to the appender. A group of QoS 0 messages
    /// only is dropped when the appender is behind (they promise nothing);
    /// one with QoS 1 messages waits for room. Without a channel (shutting
    /// down) or at shutdown, the group is left to the broker.
    pub(super) async fn hand_over(
        &mut self,
        deliveries: Option<&mpsc::Sender<Handover>>,
        shutdown: &Shutdown,
        why: &str,
    ) {
        if self.group.is_empty() {
            return;
        }
        log::trace!(
            "handing over {} messages ({why}, the first held {:?})",
            self.group.len(),
            self.group[0].at.elapsed()
        );
        self.tail_at_handover = self.tail.get();
        self.expected_tail = self.rule.end();
        self.rule.handed();
        let group = std::mem::take(&mut self.group);
        let Some(tx) = deliveries else { return };
        let group = match tx.try_send(group) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                log::error!("the appender stopped; messages left for the broker to redeliver");
                return;
            }
            Err(mpsc::error::TrySendError::Full(group)) => group,
        };
        if group.iter().all(|m| m.ack.is_none()) {
            log::warn!("dropped {} QoS 0 messages: writer is behind", group.len());
            return;
        }
        tokio::select! {
            sent = tx.send(group) => if sent.is_err() {
                log::error!("the appender stopped; messages left for the broker to redeliver");
            },
            // Shutdown while the spool is not taking more: left unacked,
            // the broker keeps the messages.
            _ = shutdown.wait() => {}
        }
    }

    /// Where a group starting now starts in the spool file: the spool's
    /// tail once the appender has stored the last group (it moved since),
    /// else where that group should end. A fast stream's next message
    /// comes before the appender has appended.
    pub(super) fn tail_now(&self) -> u64 {
        let tail = self.tail.get();
        if tail != self.tail_at_handover {
            tail
        } else {
            self.expected_tail.max(tail)
        }
    }

    /// Tells the rule when acks last went out, if they did since the last
    /// message.
    pub(super) fn seen_acks(&mut self) {
        let micros = self.acked.micros.load(Ordering::Relaxed);
        if micros != self.acked_seen {
            self.acked_seen = micros;
            self.rule
                .acked(self.acked.epoch + Duration::from_micros(micros));
        }
    }
}

/// Sleeps until `deadline`; forever without one (the branch is disabled
/// then anyway).
pub(super) async fn sleep_until(deadline: Option<(Instant, Reason)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;
    const MS: Duration = Duration::from_millis(1);

    fn rule() -> GroupRule {
        GroupRule::new(Duration::from_millis(750), PAGE)
    }

    #[test]
    fn a_group_ends_at_the_page_boundary() {
        let mut r = rule();
        let t0 = Instant::now();
        // Starting 8 bytes into a segment (its magic), 64-byte messages:
        // the header and 63 messages fit in the first page, the 64th
        // would cross it.
        let mut n = 0;
        while !r.ends_before(64) {
            assert_eq!(r.add(64, t0 + MS * n, 8), None);
            n += 1;
        }
        assert_eq!(n, (PAGE as u32 - 8 - RECORD_HEADER as u32) / 64);
        assert!(8 + r.held_bytes() <= PAGE);
        assert!(8 + r.held_bytes() + 64 > PAGE);
        r.handed();
        // The next group starts where that one ended and fills the
        // second page the same way.
        let tail = 8 + RECORD_HEADER + 63 * 64;
        assert!(!r.ends_before(64), "nothing held: nothing to end");
        r.add(64, t0 + MS * (n + 1), tail);
        let mut m = 1;
        while !r.ends_before(64) {
            r.add(64, t0 + MS * (n + 1 + m), tail);
            m += 1;
        }
        assert!(tail + r.held_bytes() <= 2 * PAGE);
        assert!(tail + r.held_bytes() + 64 > 2 * PAGE);
    }

    #[test]
    fn a_message_larger_than_a_page_is_a_group_of_its_own() {
        let mut r = rule();
        let t0 = Instant::now();
        r.add(100, t0, 0);
        assert!(r.ends_before(10_000), "crosses the boundary");
        r.handed();
        assert!(!r.ends_before(10_000), "an empty group takes anything");
        assert_eq!(r.add(10_000, t0, 114), None);
        // It ends 10,128 bytes in, in the third page; what still fits
        // there joins it.
        assert!(!r.ends_before(3 * PAGE - 10_128));
        assert!(r.ends_before(3 * PAGE - 10_128 + 1));
    }

    #[test]
    fn the_oldest_message_waits_at_most_the_delay() {
        let mut r = rule();
        let t0 = Instant::now();
        // A steady stream every 10 ms: its gaps are 10 ms, so it never
        // pauses for the 15 ms that would end a group, and the delay does.
        for i in 0..75 {
            assert_eq!(r.add(10, t0 + 10 * MS * i, 8), None);
            let (at, _) = r.deadline().unwrap();
            assert!(at >= t0 + 10 * MS * i + 10 * MS, "{i}");
        }
        let (at, why) = r.deadline().unwrap();
        assert_eq!(why, Reason::Delay);
        assert_eq!(at, t0 + Duration::from_millis(750));
    }

    #[test]
    fn a_streams_own_pauses_never_end_a_group() {
        let mut r = rule();
        let t0 = Instant::now();
        // Acks went out just before a stream of messages 10 ms apart, with
        // a long pause in the middle: only the delay ends the group.
        r.acked(t0);
        for at in [3, 13, 23, 300, 310] {
            assert_eq!(r.add(10, t0 + MS * at, 8), None);
            assert_eq!(
                r.deadline().unwrap(),
                (t0 + Duration::from_millis(753), Reason::Delay)
            );
        }
        // A burst that does not follow acks is no window either.
        let mut r = rule();
        for i in 0..10 {
            r.add(10, t0 + Duration::from_micros(20 * i), 8);
        }
        assert_eq!(r.deadline().unwrap().1, Reason::Delay);
        // Nor is one that starts long after them.
        let mut r = rule();
        r.acked(t0);
        for i in 0..10 {
            r.add(10, t0 + 5 * MS + Duration::from_micros(20 * i), 8);
        }
        assert_eq!(r.deadline().unwrap().1, Reason::Delay);
    }

    #[test]
    fn a_burst_after_acks_stops_being_one_at_its_first_gap() {
        let mut r = rule();
        let t0 = Instant::now();
        r.acked(t0);
        r.add(10, t0 + Duration::from_micros(200), 8);
        assert_eq!(r.deadline().unwrap().1, Reason::Pause);
        r.add(10, t0 + 10 * MS, 8);
        assert_eq!(r.deadline().unwrap().1, Reason::Delay);
    }

    #[test]
    fn a_window_limited_broker_is_not_made_to_wait() {
        // Mosquitto with max_inflight_messages 20 and a backlog: it sends
        // 20 messages back to back, then nothing until they are acked.
        let mut r = rule();
        let mut now = Instant::now();
        let mut waits = Vec::new();
        for _cycle in 0..5 {
            for _ in 0..20 {
                now += Duration::from_micros(20);
                assert_eq!(r.add(70, now, 8), None);
            }
            let (at, _why) = r.deadline().unwrap();
            waits.push(at - now);
            // Handed over at the deadline; the acks go out after the
            // commit's fsync, 30 ms later (a slow SD card), and the next
            // window follows them within the round trip.
            r.handed();
            r.acked(at + 30 * MS);
            now = at + 30 * MS + Duration::from_micros(100);
        }
        // The first window waits out the delay (no acks went out yet);
        // every later one comes right after acks, back to back, and goes
        // MIN_PAUSE after its last message.
        assert_eq!(
            waits[0],
            Duration::from_millis(750) - Duration::from_micros(380)
        );
        for w in &waits[1..] {
            assert_eq!(*w, MIN_PAUSE, "{waits:?}");
        }
    }

    #[test]
    fn a_zero_delay_hands_every_message_over_at_once() {
        let mut r = GroupRule::new(Duration::ZERO, PAGE);
        assert_eq!(r.add(10, Instant::now(), 8), Some(Reason::AtOnce));
    }

    #[test]
    fn size_limits_end_a_group() {
        let mut r = rule();
        let t0 = Instant::now();
        for i in 0..MAX_MESSAGES - 1 {
            assert_eq!(r.add(1, t0 + MS * i as u32, 8), None);
        }
        assert_eq!(r.add(1, t0, 8), Some(Reason::Size));
        r.handed();
        assert_eq!(r.add(MAX_BYTES, t0, 8), Some(Reason::Size));
    }

    #[test]
    fn the_estimate_counts_the_newline_line_protocol_gets() {
        assert_eq!(GroupRule::estimate(b"m v=1"), 6);
        assert_eq!(GroupRule::estimate(b"m v=1\n"), 6);
    }

    #[test]
    fn a_message_that_waited_in_the_socket_counts_from_its_earliest_arrival() {
        let mut r = rule();
        let t0 = Instant::now();
        r.acked(t0 + 80 * MS);
        // Read right after the acks, but it may have come 80 ms before
        // them: its delay runs from then, and it is no window's burst.
        assert_eq!(r.add_read(70, t0, t0 + 81 * MS, 0), None);
        assert_eq!(r.deadline(), Some((t0 + 750 * MS, Reason::Delay)));
    }
}
