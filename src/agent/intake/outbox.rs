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
    /// Queued: the reader writes it after the bell before it went out.
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
    /// A bell is in rumqttc's request queue and has not gone out yet.
    /// Whatever is queued came after it, so waits for it: queued acks
    /// exist only while a bell is out.
    bell: bool,
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
        if s.bell {
            s.queued.push(pkid);
            return Route::Queued;
        }
        s.bell = true;
        Route::Bell
    }

    /// The reader saw a CONNACK: a new connection, nothing queued for it.
    pub fn connected(&self) {
        let mut s = self.state();
        s.connection += 1;
        s.up = true;
        s.bell = false;
        s.queued.clear();
    }

    /// The reader saw the connection fail. rumqttc drops the acks still in
    /// its request queue then, the bell with them.
    pub fn lost(&self) {
        let mut s = self.state();
        s.up = false;
        s.bell = false;
        s.queued.clear();
    }

    /// After a poll; `bell_out`: the poll sent an ack of ours, the bell.
    /// Moves the acks that may go now, in order, to the end of `out`.
    pub fn take(&self, bell_out: bool, out: &mut Vec<u16>) {
        let mut s = self.state();
        if bell_out {
            s.bell = false;
        }
        if !s.bell {
            out.append(&mut s.queued);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the reader: what went out on the wire, in order.
    fn poll(outbox: &Outbox, bell_out: Option<u16>, wire: &mut Vec<u16>) {
        wire.extend(bell_out);
        outbox.take(bell_out.is_some(), wire);
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
    fn any_interleaving_keeps_the_order() {
        // Pushes and polls interleaved by a fixed pseudo-random pattern;
        // the reader's model: a bell goes out at the first poll after it.
        let outbox = Outbox::default();
        outbox.connected();
        let (mut wire, mut in_queue, mut next) = (Vec::new(), None, 0u16);
        let mut x = 0x2545_f491_u32;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if x.is_multiple_of(3) {
                poll(&outbox, in_queue.take(), &mut wire);
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
