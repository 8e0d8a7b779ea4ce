//! Reading the broker connection: rumqttc's event loop on a task of its
//! own, read in bunches at the rates gateways see ([`Pace`]), the acks
//! queued in the [`Outbox`] written between two polls, and the handle
//! through which the intake's tasks send to the broker ([`Client`]). Each
//! event carries the earliest moment its packet can have arrived, and when
//! it did arrive as far as can be told. It must never look at a message's
//! content, and never drop an event the session needs (only the echoes of
//! our own outgoing packets, which the session ignores, stay here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ClientError, Event, Outgoing, Packet, PubAck, Publish, QoS};
use tokio::sync::{Notify, mpsc};

use super::arrival::Arrivals;
use super::outbox::Outbox;

/// A connection event, or why the connection failed.
pub type Polled = Result<Event, rumqttc::ConnectionError>;

/// An event with the earliest moment its packet can have arrived, and
/// when it did arrive (as far as can be told: at worst, when it was read).
pub struct Read {
    pub event: Polled,
    /// After a pause, the end of the read before it: the group's deadline
    /// and the ack-delay figures count from here, so that `commit_delay`
    /// still bounds every ack.
    pub earliest: Instant,
    /// The receipt time a point without a timestamp is given.
    pub arrived: Instant,
}

/// The longest read pause, whatever `commit_delay` allows.
pub const MAX_PAUSE: Duration = Duration::from_millis(100);
/// The longest read pause while arrivals are not tracked: a message read
/// after it is stamped at most this late.
pub const UNTRACKED_PAUSE: Duration = Duration::from_millis(15);
/// How long a pause goes on after a message arrived in it (see
/// [`paused`]): what a message may wait unread, and so unacked by TCP.
pub const ARRIVAL_HOLD: Duration = Duration::from_millis(15);
/// How long receipt times are kept precise after the last point that was
/// stamped on receipt (and after the start, before anything is known).
pub const PRECISE_FOR: Duration = Duration::from_secs(5);

/// Whether receipt times are being given, from the count of points
/// stamped so far: plain values and the clock the caller passes in. While
/// they are, a pause notes each arrival and ends early, and the kernel
/// acks reads at once (`paused`, `quickack_due`); that costs a wake-up per
/// message or two, so a stream whose points carry their own timestamps is
/// read in full pauses instead.
#[derive(Debug)]
pub struct Precision {
    seen: u64,
    changed: Instant,
}

impl Precision {
    pub fn new(now: Instant) -> Precision {
        Precision {
            seen: 0,
            changed: now,
        }
    }

    /// `stamped`: points stamped on receipt so far. True while the last of
    /// them (or the start) is less than [`PRECISE_FOR`] ago.
    pub fn precise(&mut self, stamped: u64, now: Instant) -> bool {
        if stamped != self.seen {
            self.seen = stamped;
            self.changed = now;
        }
        now.saturating_duration_since(self.changed) < PRECISE_FOR
    }
}
/// A read that brings this many messages or more is not paused after:
/// more are likely waiting (rumqttc reads at most 9 packets at a time).
pub const FULL_READ: u32 = 8;
/// After a pause that brought no more than one message, this many light
/// reads go without one (then a pause is tried again): a stream of a few
/// messages a second gains nothing from waiting.
pub const SKIP_AFTER_IDLE_PAUSE: u32 = 8;
/// Acks sent this recently mean the broker may be sending the next
/// window: no pause.
pub const AFTER_ACKS: Duration = Duration::from_millis(10);

/// The intake's handle on the broker session: rumqttc's client, waking
/// the reader for every request so that a pause never holds up an ack.
#[derive(Clone)]
pub struct Client {
    inner: AsyncClient,
    wake: Arc<Notify>,
}

impl Client {
    pub fn new(inner: AsyncClient) -> Client {
        Client {
            inner,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Woken before a request too: if the request queue is full, the
    /// reader must drain it for the call to return.
    pub async fn ack(&self, publish: &Publish) -> Result<(), ClientError> {
        self.wake.notify_one();
        let sent = self.inner.ack(publish).await;
        self.wake.notify_one();
        sent
    }

    pub async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        body: &'static str,
    ) -> Result<(), ClientError> {
        self.wake.notify_one();
        let sent = self.inner.publish(topic, qos, retain, body).await;
        self.wake.notify_one();
        sent
    }

    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.wake.notify_one();
        let sent = self.inner.disconnect().await;
        self.wake.notify_one();
        sent
    }

    /// The `try_` calls never wait: the session's own task drains the
    /// queue they would wait on.
    pub fn try_publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        body: Vec<u8>,
    ) -> Result<(), ClientError> {
        let sent = self.inner.try_publish(topic, qos, retain, body);
        self.wake.notify_one();
        sent
    }

    pub fn try_subscribe(&self, topic: &str, qos: QoS) -> Result<(), ClientError> {
        let sent = self.inner.try_subscribe(topic, qos);
        self.wake.notify_one();
        sent
    }

    pub fn try_subscribe_many(
        &self,
        filters: impl IntoIterator<Item = rumqttc::SubscribeFilter>,
    ) -> Result<(), ClientError> {
        let sent = self.inner.try_subscribe_many(filters);
        self.wake.notify_one();
        sent
    }

    pub fn try_unsubscribe(&self, topic: String) -> Result<(), ClientError> {
        let sent = self.inner.try_unsubscribe(topic);
        self.wake.notify_one();
        sent
    }
}

/// When the reader pauses, and how each event is stamped: plain values
/// and the clock the caller passes in, so it is tested without a broker.
/// Each read costs a wake-up, an `epoll_wait`, a `recv` and a TCP ack; the
/// intake holds messages for their group commit anyway, so after a light
/// read a message may wait in the socket a moment, and the next read takes
/// several at once. A request for the broker ends a pause at once.
#[derive(Debug)]
pub struct Pace {
    pause: Duration,
    /// Messages the last read of the socket brought.
    messages: u32,
    /// When the last read of the socket returned.
    read_at: Option<Instant>,
    /// The reader paused since that read.
    paused: bool,
    /// The last poll brought a packet from the broker: one that sent a
    /// request of ours is followed by the next request, if one waits, not
    /// by a pause (the requests queue behind it).
    after_read: bool,
    /// The last read came after a pause (whether it paid is told once).
    read_after_pause: bool,
    /// Light reads still to go without a pause, after one that brought
    /// no more than a message.
    skip: u32,
    /// The stamp of the current read's events.
    earliest: Option<Instant>,
}

impl Pace {
    /// `commit_delay`: how long the intake may hold a message. A pause is
    /// an eighth of it, at most [`MAX_PAUSE`]: a small part of each ack's
    /// delay bound, enough for several messages a read at 100 a second.
    pub fn new(commit_delay: Duration) -> Pace {
        Pace::new_with((commit_delay / 8).min(MAX_PAUSE))
    }

    fn new_with(pause: Duration) -> Pace {
        Pace {
            pause,
            messages: 0,
            read_at: None,
            paused: false,
            after_read: false,
            read_after_pause: false,
            skip: 0,
            earliest: None,
        }
    }

    pub fn pause(&self) -> Duration {
        self.pause
    }

    /// Before a poll that reads the network (`buffered`: rumqttc still
    /// holds events of the last read, so it does not): how long to pause
    /// first. `acked_at`: when acks last went out.
    pub fn before_read(
        &mut self,
        buffered: bool,
        now: Instant,
        acked_at: Option<Instant>,
    ) -> Option<Duration> {
        if buffered || self.pause.is_zero() {
            return None;
        }
        if std::mem::take(&mut self.read_after_pause) && self.messages < 2 {
            // The stream is slower than one message a pause: pausing
            // costs a timer's wake-up and saves nothing.
            self.skip = SKIP_AFTER_IDLE_PAUSE;
        }
        let light = self.after_read && self.messages > 0 && self.messages < FULL_READ;
        let acks_just_went =
            acked_at.is_some_and(|a| now.saturating_duration_since(a) < AFTER_ACKS);
        if !light || acks_just_went {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        Some(self.pause)
    }

    /// Whether the reads are light: the last one (the current one, while
    /// its events are still buffered) brought less than [`FULL_READ`]
    /// messages.
    pub fn light(&self) -> bool {
        self.messages < FULL_READ
    }

    /// A pause (or part of one) was waited.
    pub fn paused(&mut self) {
        self.paused = true;
    }

    /// A poll returned at `now` with `event`, from the network unless
    /// `buffered`. Returns the stamp for the event. Only a packet from the
    /// broker is a read of the socket: a poll that sent one of our
    /// requests (it may end a pause) leaves what was read, and when, as
    /// it was.
    pub fn on_event(&mut self, buffered: bool, event: &Polled, now: Instant) -> Instant {
        match event {
            Ok(Event::Incoming(packet)) => {
                if !buffered {
                    self.read_after_pause = self.paused;
                    let before = self.read_at.replace(now);
                    self.earliest = Some(match before {
                        Some(before) if self.paused => before,
                        _ => now,
                    });
                    self.paused = false;
                    self.messages = 0;
                }
                if matches!(packet, Packet::Publish(_)) {
                    self.messages += 1;
                }
                self.after_read = true;
                self.earliest.unwrap_or(now)
            }
            Ok(Event::Outgoing(_)) => {
                self.after_read = false;
                now
            }
            Err(_) => {
                // A new connection starts afresh.
                *self = Pace::new_with(self.pause);
                now
            }
        }
    }
}

/// Polls the event loop on a task of its own and passes each event on,
/// pacing the reads as [`Pace`] says. A poll is never cancelled halfway
/// this way: the session's loop selects on timers (the group commit's)
/// as well, and rumqttc's poll dropped in the middle of writing a packet
/// (an ack, a subscribe) loses that packet. After an error the poller
/// waits for `resume` before it reconnects, so that the session's backoff
/// paces the reconnects. `acked_at` tells when acks last went out.
/// `broker`: where a plain TCP session connects, for tracking arrivals
/// (None over TLS); `stamped`: how many points were stamped on receipt so
/// far.
pub fn forward_events(
    mut eventloop: rumqttc::EventLoop,
    (client, outbox): (&Client, Arc<Outbox>),
    mut pace: Pace,
    broker: Option<(String, u16)>,
    acked_at: impl Fn() -> Option<Instant> + Send + 'static,
    stamped: impl Fn() -> u64 + Send + 'static,
) -> (
    mpsc::Receiver<Read>,
    mpsc::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    // One event in the channel: what waits here is outside the intake's
    // byte budget.
    let (tx, rx) = mpsc::channel(1);
    let (resume, mut resumed) = mpsc::channel(1);
    let wake = client.wake.clone();
    let poller = tokio::spawn(async move {
        let mut arrivals = Arrivals::default();
        let mut precision = Precision::new(Instant::now());
        // Our acks went out since the last read: the kernel holds its own
        // TCP acks back after them (see `Arrivals::ack_now`). Told at most
        // once an ARRIVAL_HOLD: a fast stream, whose acks and messages
        // interleave, needs no such help.
        let mut acked = false;
        let mut told: Option<Instant> = None;
        let mut acks = AckWriter::new(outbox);
        loop {
            let buffered = !eventloop.state.events.is_empty();
            if let Some(pause) = pace
                .before_read(buffered, Instant::now(), acked_at())
                .filter(|_| !arrivals.waiting() && acks.failed.is_none())
            {
                let precise = precision.precise(stamped(), Instant::now());
                match (precise, arrivals.is_tracking()) {
                    (false, _) => coarse_pause(pause, &wake).await,
                    (true, true) => Box::pin(paused(pause, &wake, &mut arrivals)).await,
                    (true, false) => coarse_pause(pause.min(UNTRACKED_PAUSE), &wake).await,
                }
                pace.paused();
            }
            let (event, wrote) = acks.poll(&mut eventloop).await;
            acked |= wrote;
            let now = Instant::now();
            // Before the event counts: for a new read, the last one.
            let light = pace.light();
            let earliest = pace.on_event(buffered, &event, now);
            let arrived = match &event {
                Ok(Event::Incoming(packet)) => {
                    if matches!(packet, Packet::ConnAck(_)) {
                        arrivals = match &broker {
                            Some(broker) => Box::pin(attach(broker)).await,
                            None => Arrivals::default(),
                        };
                    }
                    if acked && matches!(packet, Packet::Publish(_)) {
                        // Asked anew here, not only at a pause: a stream
                        // read at full speed never pauses, and would keep
                        // the start's precision (and its acks) for ever.
                        let precise = precision.precise(stamped(), now);
                        if quickack_due(precise, light, told, now) {
                            arrivals.ack_now();
                            acked = false;
                            told = Some(now);
                        }
                    }
                    arrivals.packet(packet.size(), now)
                }
                Ok(Event::Outgoing(o)) => {
                    acked |= matches!(o, Outgoing::PubAck(_));
                    now
                }
                Err(_) => {
                    arrivals.detach();
                    now
                }
            };
            if matches!(&event, Ok(Event::Outgoing(o)) if !matches!(o, Outgoing::Disconnect)) {
                // Our own acks, pings and subscribes: nothing for the
                // session, and a wake-up less per ack.
                continue;
            }
            let failed = event.is_err();
            let read = Read {
                event,
                earliest,
                arrived,
            };
            if tx.send(read).await.is_err() {
                return;
            }
            if failed && resumed.recv().await.is_none() {
                return;
            }
        }
    });
    (rx, resume, poller)
}

/// The reader's side of the [`Outbox`]: polls, and writes the acks due
/// after each poll.
struct AckWriter {
    outbox: Arc<Outbox>,
    batch: Vec<u16>,
    /// Writing acks failed after the last poll: that is the next event.
    failed: Option<rumqttc::ConnectionError>,
}

impl AckWriter {
    fn new(outbox: Arc<Outbox>) -> AckWriter {
        AckWriter {
            outbox,
            batch: Vec::new(),
            failed: None,
        }
    }

    /// The next event (a poll's, or the failure of the acks written
    /// after the last one), and whether acks went out after it.
    async fn poll(&mut self, eventloop: &mut rumqttc::EventLoop) -> (Polled, bool) {
        let event = match self.failed.take() {
            Some(e) => Err(e),
            None => eventloop.poll().await,
        };
        if event.is_err() {
            // What rumqttc read before the failure belongs to the dead
            // connection (it would come out first on the next, and be
            // acked there): the broker sends it again.
            eventloop.state.events.clear();
        }
        match write_queued_acks(eventloop, &self.outbox, &event, &mut self.batch).await {
            Ok(wrote) => (event, wrote),
            Err(e) => {
                self.failed = Some(e);
                (event, false)
            }
        }
    }
}

/// Writes the acks `outbox` holds for after this poll's `event` on the
/// connection, with one flush, between polls so that no write of
/// rumqttc's is cut in two; says whether any went. A write that fails or
/// takes longer than rumqttc's own timeout ends the connection as a
/// failed poll would (rumqttc's keep-alive runs only inside a poll, so a
/// write stuck here would hide a dead broker): the error is returned, for
/// the session, and the broker sends the unacked messages again.
async fn write_queued_acks(
    eventloop: &mut rumqttc::EventLoop,
    outbox: &Outbox,
    event: &Polled,
    batch: &mut Vec<u16>,
) -> Result<bool, rumqttc::ConnectionError> {
    let sent = match event {
        Ok(Event::Incoming(Packet::ConnAck(_))) => {
            outbox.connected();
            None
        }
        Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => Some(*pkid),
        Err(_) => {
            outbox.lost();
            None
        }
        _ => None,
    };
    outbox.take(sent, batch);
    if batch.is_empty() {
        return Ok(false);
    }
    let timeout = Duration::from_secs(eventloop.network_options().connection_timeout());
    let Some(network) = eventloop.network.as_mut() else {
        batch.clear();
        return Ok(false);
    };
    let written = tokio::time::timeout(timeout, async {
        for pkid in batch.drain(..) {
            network.write(Packet::PubAck(PubAck::new(pkid))).await?;
        }
        network.flush().await
    })
    .await;
    batch.clear();
    let failed = match written {
        Ok(Ok(())) => return Ok(true),
        Ok(Err(e)) => rumqttc::ConnectionError::MqttState(e),
        Err(_) => rumqttc::ConnectionError::FlushTimeout,
    };
    // At once, not at the error's turn: an ack released before then would
    // ring a bell into the queue `clean` has just emptied, and go out on
    // the next connection.
    outbox.lost();
    eventloop.clean();
    Err(failed)
}

/// Whether to tell the kernel to ack at once, after our acks went out
/// and a message came: only while receipt times are precise, while the
/// stream is `light` (the reads bring less than [`FULL_READ`] messages),
/// and at most once an [`ARRIVAL_HOLD`]. Each time costs a syscall and a
/// TCP ack of its own, which the broker answers too; a full stream does
/// not need it: its segments are full, and Nagle's algorithm holds back
/// only a small one.
fn quickack_due(precise: bool, light: bool, told: Option<Instant>, now: Instant) -> bool {
    precise && light && told.is_none_or(|t| now.duration_since(t) >= ARRIVAL_HOLD)
}

/// Waits out a read pause (a request for the broker ends it), noting
/// every arrival on the socket meanwhile. The pause ends at most
/// [`ARRIVAL_HOLD`] after the first arrival in it: a message left unread
/// is also left without its TCP ack, and a broker with Nagle's algorithm
/// on (Mosquitto's default) sends nothing more until that ack comes, so
/// a longer pause would make the next messages arrive late.
async fn paused(pause: Duration, wake: &Notify, arrivals: &mut Arrivals) {
    let started = Instant::now();
    arrivals.ack_now();
    arrivals.watch(started);
    let sleep = tokio::time::sleep(pause);
    tokio::pin!(sleep);
    let mut held = false;
    loop {
        tokio::select! {
            _ = &mut sleep => break,
            _ = wake.notified() => break,
            new = arrivals.next_arrival() => {
                if new && !held {
                    held = true;
                    let until = (Instant::now() + ARRIVAL_HOLD).min(started + pause);
                    sleep.as_mut().reset(tokio::time::Instant::from_std(until));
                }
            }
        }
    }
    arrivals.unwatch();
}

/// Waits out a read pause without noting arrivals; a request for the
/// broker ends it.
async fn coarse_pause(pause: Duration, wake: &Notify) {
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = wake.notified() => {}
    }
}

/// Arrival tracking for the connection just made to `broker`.
async fn attach((host, port): &(String, u16)) -> Arrivals {
    match tokio::net::lookup_host((host.as_str(), *port)).await {
        Ok(peers) => Arrivals::attach(&peers.collect::<Vec<_>>()),
        Err(e) => {
            log::debug!("no arrival tracking: cannot resolve {host}: {e}");
            Arrivals::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[allow(clippy::result_large_err, reason = "rumqttc's own type")]
    fn publish() -> Polled {
        Ok(Event::Incoming(Packet::Publish(Publish::new(
            "t",
            QoS::AtLeastOnce,
            "m v=1",
        ))))
    }

    #[allow(clippy::result_large_err, reason = "rumqttc's own type")]
    fn ping() -> Polled {
        Ok(Event::Outgoing(Outgoing::PingReq))
    }

    /// One network read of `n` messages at `at`.
    fn read(pace: &mut Pace, n: u32, at: Instant) -> Vec<Instant> {
        (0..n)
            .map(|i| pace.on_event(i > 0, &publish(), at))
            .collect()
    }

    #[test]
    fn a_stream_that_never_pauses_stops_forcing_acks_once_precision_ends() {
        let t0 = Instant::now();
        let mut p = Precision::new(t0);
        let mut told = None;
        let mut forced = 0;
        // 10 s of messages every millisecond, each after our acks, with no
        // point stamped on receipt: forced acks only in the first 5 s, at
        // most one per ARRIVAL_HOLD.
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            if quickack_due(p.precise(0, now), true, told, now) {
                forced += 1;
                told = Some(now);
                assert!(ms < PRECISE_FOR.as_millis() as u64, "forced at {ms} ms");
            }
        }
        let most = (PRECISE_FOR.as_millis() / ARRIVAL_HOLD.as_millis()) as u32 + 1;
        assert!((most - 1..=most).contains(&forced), "{forced} forced acks");
        // A full stream is not helped, precise or not.
        assert!(!quickack_due(true, false, None, t0));
    }

    #[test]
    fn reads_of_a_backlog_are_full_and_of_a_slow_stream_light() {
        let t0 = Instant::now();
        let mut pace = Pace::new(Duration::from_millis(750));
        assert!(pace.light());
        // A backlog: each read brings nine.
        for i in 0..FULL_READ + 1 {
            pace.on_event(i > 0, &publish(), t0);
        }
        // What the next read's first message is judged by.
        assert!(!pace.light());
        // A slow stream: reads of one message each.
        pace.on_event(false, &publish(), t0 + MS);
        pace.on_event(false, &publish(), t0 + 2 * MS);
        assert!(pace.light());
    }

    #[test]
    fn receipt_times_are_precise_while_points_are_stamped_on_receipt() {
        let t0 = Instant::now();
        let mut p = Precision::new(t0);
        // Nothing known yet: precise for a while after the start.
        assert!(p.precise(0, t0 + PRECISE_FOR / 2));
        assert!(!p.precise(0, t0 + PRECISE_FOR));
        // A point stamped on receipt: precise again, for as long.
        let t1 = t0 + 10 * PRECISE_FOR;
        assert!(p.precise(1, t1));
        assert!(p.precise(1, t1 + PRECISE_FOR - MS));
        assert!(!p.precise(1, t1 + PRECISE_FOR));
        assert!(p.precise(2, t1 + 2 * PRECISE_FOR));
    }

    #[test]
    fn a_light_read_is_followed_by_a_pause_of_an_eighth_of_the_delay() {
        let mut pace = Pace::new(Duration::from_millis(400));
        let t0 = Instant::now();
        read(&mut pace, 1, t0);
        assert_eq!(pace.before_read(false, t0, None), Some(50 * MS));
        // Not while rumqttc still holds events of that read.
        assert_eq!(pace.before_read(true, t0, None), None);
    }

    #[test]
    fn a_slow_stream_is_not_paused_for_nothing() {
        let mut pace = Pace::new(Duration::from_millis(750));
        let mut t = Instant::now();
        read(&mut pace, 1, t);
        assert!(pace.before_read(false, t, None).is_some());
        pace.paused();
        // One message a pause: the pause saved no read.
        t += 100 * MS;
        read(&mut pace, 1, t);
        for _ in 0..SKIP_AFTER_IDLE_PAUSE {
            assert_eq!(pace.before_read(false, t, None), None);
            t += 100 * MS;
            read(&mut pace, 1, t);
        }
        // Then it tries again; a pause that brings several keeps pausing.
        assert!(pace.before_read(false, t, None).is_some());
        pace.paused();
        t += 100 * MS;
        read(&mut pace, 3, t);
        assert!(pace.before_read(false, t, None).is_some());
    }

    #[test]
    fn the_pause_is_capped() {
        let pace = Pace::new(Duration::from_secs(5));
        assert_eq!(pace.pause(), MAX_PAUSE);
    }

    #[test]
    fn no_holding_means_no_pause() {
        let mut pace = Pace::new(Duration::ZERO);
        let t0 = Instant::now();
        read(&mut pace, 1, t0);
        assert_eq!(pace.before_read(false, t0, None), None);
    }

    #[test]
    fn a_full_read_is_read_again_at_once() {
        let mut pace = Pace::new(Duration::from_millis(750));
        let t0 = Instant::now();
        read(&mut pace, FULL_READ, t0);
        assert_eq!(pace.before_read(false, t0, None), None);
        // A read of fewer after it pauses again.
        read(&mut pace, FULL_READ - 1, t0 + MS);
        assert!(pace.before_read(false, t0 + MS, None).is_some());
    }

    #[test]
    fn no_pause_right_after_acks_went_out() {
        let mut pace = Pace::new(Duration::from_millis(750));
        let t0 = Instant::now();
        read(&mut pace, 1, t0);
        assert_eq!(pace.before_read(false, t0 + 5 * MS, Some(t0)), None);
        assert!(pace.before_read(false, t0 + 20 * MS, Some(t0)).is_some());
    }

    #[test]
    fn a_read_of_no_messages_is_no_reason_to_pause() {
        let mut pace = Pace::new(Duration::from_millis(750));
        let t0 = Instant::now();
        pace.on_event(false, &ping(), t0);
        assert_eq!(pace.before_read(false, t0, None), None);
        let suback = Ok(Event::Incoming(Packet::PingResp));
        pace.on_event(false, &suback, t0);
        assert_eq!(pace.before_read(false, t0, None), None);
    }

    #[test]
    fn sending_an_ack_during_a_pause_is_no_read() {
        let mut pace = Pace::new(Duration::from_millis(750));
        let t0 = Instant::now();
        read(&mut pace, 1, t0);
        assert!(pace.before_read(false, t0, None).is_some());
        pace.paused();
        // The ack ends the pause and goes out; a message that came during
        // the pause is read right after it.
        pace.on_event(false, &ping(), t0 + 40 * MS);
        // More requests may be queued behind it: no pause.
        assert_eq!(pace.before_read(false, t0 + 40 * MS, None), None);
        assert_eq!(read(&mut pace, 2, t0 + 41 * MS), vec![t0; 2]);
        assert!(pace.before_read(false, t0 + 41 * MS, None).is_some());
    }

    #[test]
    fn a_lost_connection_starts_afresh() {
        let mut pace = Pace::new(Duration::from_millis(750));
        let t0 = Instant::now();
        read(&mut pace, 1, t0);
        pace.paused();
        pace.on_event(false, &Err(rumqttc::ConnectionError::RequestsDone), t0 + MS);
        let t1 = t0 + 2 * MS;
        assert_eq!(read(&mut pace, 1, t1), vec![t1]);
    }

    #[test]
    fn messages_read_after_a_pause_count_from_the_read_before_it() {
        let mut pace = Pace::new(Duration::from_millis(750));
        let t0 = Instant::now();
        assert_eq!(read(&mut pace, 1, t0), vec![t0]);
        assert!(pace.before_read(false, t0, None).is_some());
        pace.paused();
        let t1 = t0 + 90 * MS;
        // They may have come right after the first read.
        assert_eq!(read(&mut pace, 3, t1), vec![t0; 3]);
        // Read without a pause: stamped when read.
        let t2 = t1 + 30 * MS;
        assert_eq!(read(&mut pace, FULL_READ, t2)[0], t2);
        assert_eq!(pace.before_read(false, t2, None), None);
        let t3 = t2 + MS;
        assert_eq!(read(&mut pace, 1, t3), vec![t3]);
    }
}
