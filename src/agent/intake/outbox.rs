//! The acks on their way to the broker. rumqttc writes and flushes each
//! request on its own: one `writev`, one TCP segment and one wake-up of
//! the broker per ack. Here the acker queues them, and the reader writes
//! all that are queued with one flush between two polls of the event loop;
//! only the first ack of a burst goes through rumqttc's request queue, to
//! end a poll that waits on the network. It must keep the acks in the
//! order they were queued, and never let an ack reach a connection other
//! than the one its message came on.

use std::sync::Mutex;

/// Where an ack goes, as [`Outbox::push`] decides.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Through rumqttc's request queue: no ack is on its way that way, so
    /// the reader may be waiting in a poll that only a request ends.
    Bell,
    /// Queued: the reader writes it once the bell ahead of it went out.
    Queued,
    /// Its connection is gone: the broker sends the message again on the
    /// new one, and that copy is acked once stored.
    Dropped,
}

#[derive(Debug, Default)]
struct State {
    /// Connections the reader has seen made (the session numbers them
    /// the same way: 1 is the first).
    connection: u64,
    up: bool,
    /// The packet id of the bell in rumqttc's request queue that has not
    /// gone out yet. Whatever is queued came after it, so waits for it:
    /// queued acks exist only while a bell is out.
    bell: Option<u16>,
    queued: Vec<u16>,
}

/// Shared by the acker (which pushes) and the reader (which takes); both
/// run on the intake's thread, so the lock is never contended for long.
#[derive(Debug, Default)]
pub struct Outbox(Mutex<State>);

impl Outbox {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain data with no invariant a panic could break halfway.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The acker has the ack for `pkid`, a message of `connection`.
    pub fn push(&self, connection: u64, pkid: u16) -> Route {
        let mut s = self.state();
        if !s.up || connection != s.connection {
            return Route::Dropped;
        }
        if s.bell.is_some() {
            s.queued.push(pkid);
            return Route::Queued;
        }
        s.bell = Some(pkid);
        Route::Bell
    }

    /// The reader saw a CONNACK: a new connection, nothing queued for it.
    pub fn connected(&self) {
        let mut s = self.state();
        s.connection += 1;
        s.up = true;
        s.bell = None;
        s.queued.clear();
    }

    /// The reader saw the connection fail. rumqttc drops the acks still in
    /// its request queue then, the bell with them (and the reader drops
    /// the events it read before the failure, an echo of the bell too).
    pub fn lost(&self) {
        let mut s = self.state();
        s.up = false;
        s.bell = None;
        s.queued.clear();
    }

    /// After a poll; `sent`: the ack of ours the poll sent, if it did. The
    /// bell's own packet id ends its wait (no other), and then the acks
    /// queued behind it move, in order, to the end of `out`.
    pub fn take(&self, sent: Option<u16>, out: &mut Vec<u16>) {
        let mut s = self.state();
        if sent.is_some() && sent == s.bell {
            s.bell = None;
        }
        if s.bell.is_none() {
            out.append(&mut s.queued);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the reader: what went out on the wire, in order.
    fn poll(outbox: &Outbox, sent: Option<u16>, wire: &mut Vec<u16>) {
        wire.extend(sent);
        outbox.take(sent, wire);
    }

    #[test]
    fn a_burst_goes_out_in_order_behind_its_bell() {
        let outbox = Outbox::default();
        outbox.connected();
        assert_eq!(outbox.push(1, 10), Route::Bell);
        for pkid in 11..15 {
            assert_eq!(outbox.push(1, pkid), Route::Queued);
        }
        let mut wire = Vec::new();
        // A poll that read a packet while the bell still waits in
        // rumqttc's queue: nothing may overtake it.
        poll(&outbox, None, &mut wire);
        assert!(wire.is_empty());
        poll(&outbox, Some(10), &mut wire);
        assert_eq!(wire, [10, 11, 12, 13, 14]);
        // The next ack rings again.
        assert_eq!(outbox.push(1, 15), Route::Bell);
    }

    #[test]
    fn acks_of_a_lost_connection_never_reach_the_next() {
        let outbox = Outbox::default();
        assert_eq!(outbox.push(0, 1), Route::Dropped, "before any CONNACK");
        outbox.connected();
        assert_eq!(outbox.push(1, 1), Route::Bell);
        assert_eq!(outbox.push(1, 2), Route::Queued);
        outbox.lost();
        assert_eq!(outbox.push(1, 3), Route::Dropped);
        outbox.connected();
        // Released late, for the first connection: dropped.
        assert_eq!(outbox.push(1, 4), Route::Dropped);
        let mut wire = Vec::new();
        poll(&outbox, None, &mut wire);
        assert!(wire.is_empty(), "{wire:?}");
        // The bell rumqttc dropped with the old connection does not hold
        // up the new one's acks.
        assert_eq!(outbox.push(2, 7), Route::Bell);
        assert_eq!(outbox.push(2, 8), Route::Queued);
        poll(&outbox, Some(7), &mut wire);
        assert_eq!(wire, [7, 8]);
    }

    #[test]
    fn an_echo_that_is_not_the_bell_moves_nothing() {
        let outbox = Outbox::default();
        outbox.connected();
        assert_eq!(outbox.push(1, 5), Route::Bell);
        assert_eq!(outbox.push(1, 6), Route::Queued);
        let mut wire = Vec::new();
        // An ack of a dead connection that rumqttc still sent.
        poll(&outbox, Some(9), &mut wire);
        assert_eq!(wire, [9]);
        poll(&outbox, Some(5), &mut wire);
        assert_eq!(wire, [9, 5, 6]);
    }

    #[test]
    fn any_interleaving_keeps_the_order() {
        // Pushes and polls interleaved by a fixed pseudo-random pattern;
        // a poll may return without sending the bell (rumqttc read a
        // packet instead), or send it.
        let outbox = Outbox::default();
        outbox.connected();
        let (mut wire, mut in_queue, mut next) = (Vec::new(), None, 0u16);
        let mut x = 0x2545_f491_u32;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if x.is_multiple_of(3) {
                let sent = if x.is_multiple_of(2) {
                    in_queue.take()
                } else {
                    None
                };
                poll(&outbox, sent, &mut wire);
            } else {
                if outbox.push(1, next) == Route::Bell {
                    assert!(in_queue.replace(next).is_none(), "two bells out");
                }
                next += 1;
            }
        }
        poll(&outbox, in_queue.take(), &mut wire);
        assert_eq!(wire, (0..next).collect::<Vec<_>>());
    }
}
