//! MQTT intake: keeps the broker session, subscribes at QoS 1, hands the
//! messages as they came to the `appender` thread in groups (the group
//! commit of [`super::group`]: one hand-over and one commit for many
//! messages), and sends the acks that thread releases once the points are
//! stored.
//!
//! The session is persistent (clean session off) with manual acks, so a
//! message that is not stored yet stays with the broker across restarts and
//! reconnects. This module must never wait on an HTTP write, on the disk or
//! on decoding (a hostile payload must not delay a keep-alive): it passes
//! raw messages over a channel bounded in bytes and keeps polling the event
//! loop (pings, acks, reconnects), and it never acks a packet id on a
//! connection other than the one the message arrived on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;

use super::deadletter::{DeadLetters, Rejection, Source};
use super::decode::topic_matches;
use super::group::{GroupRule, Reason};
use super::message::{AckToken, Group, Received};
use super::reader::{Client, Pace, Polled, forward_events};
use super::spool::Tail;
use super::stats::Stats;
use crate::backoff::Backoff;
use crate::config::{Mqtt, Subscription};
use crate::lifecycle::health::Beat;
use crate::shutdown::Shutdown;

pub struct Intake {
    pub config: Mqtt,
    pub deliveries: mpsc::Sender<Group>,
    /// `spool.commit_delay`: the longest a message is held for its group.
    pub commit_delay: Duration,
    /// Where the spool's next append goes, so that groups end at page
    /// boundaries.
    pub tail: Tail,
    pub acks: mpsc::UnboundedReceiver<AckToken>,
    pub shutdown: Shutdown,
    pub stats: Arc<Stats>,
    /// Where a message cleared off the session unread is recorded.
    pub dead_letters: Arc<std::sync::Mutex<DeadLetters>>,
    /// New subscriptions from a configuration reload (SIGHUP).
    pub reload: tokio::sync::watch::Receiver<Vec<Subscription>>,
    /// With `publish_status`: the report to publish, retained.
    pub status: Option<Arc<super::status::Reporter>>,
    /// With systemd's watchdog: this runtime's beat and how often a task
    /// on it beats (it runs only while the thread is not stuck). Without
    /// one, nothing wakes for it.
    pub beat: Option<(Arc<Beat>, Duration)>,
    /// Told once, when the broker first confirms the subscriptions.
    pub subscribed: Box<dyn Fn() + Send>,
}

impl Intake {
    pub async fn run(self) {
        let Intake {
            config,
            deliveries,
            commit_delay,
            tail,
            acks,
            shutdown,
            stats,
            dead_letters,
            mut reload,
            status,
            beat,
            subscribed,
        } = self;
        let status_topic = status
            .as_ref()
            .map(|_| format!("leasegate/{}/status", config.client_id));
        let (client, eventloop) = AsyncClient::new(options(&config, status_topic.as_deref()), 1024);
        let client = Client::new(client);
        let (connected, watch_connected) = tokio::sync::watch::channel(false);
        let helpers = Helpers {
            client: client.clone(),
            acks,
            status: status.zip(status_topic),
            status_interval: config.status_interval,
            connected: watch_connected,
            beat,
        };
        let (tasks, connection, acked) = helpers.spawn();
        let (mut events, resume, poller) =
            start_reader(eventloop, &client, &config, commit_delay, &acked, &stats);
        let mut session = Session::new(client, config, stats, connection, connected, subscribed);
        let mut held = Held {
            group: Vec::new(),
            rule: GroupRule::new(commit_delay, crate::lifecycle::files::page_size()),
            tail,
            tail_at_handover: 0,
            expected_tail: 0,
            acked,
            acked_seen: 0,
        };
        let mut deliveries = Some(deliveries);
        loop {
            let due = held.rule.deadline();
            let event = tokio::select! {
                biased;
                _ = shutdown.wait(), if deliveries.is_some() => {
                    // What is held goes first. Closing the channel then
                    // lets the appender finish; the acker disconnects once
                    // those acks are out.
                    held.hand_over(deliveries.as_ref(), &shutdown, "shutdown").await;
                    deliveries = None;
                    continue;
                }
                Ok(()) = reload.changed() => {
                    let new = reload.borrow_and_update().clone();
                    session.resubscribe(new);
                    continue;
                }
                _ = sleep_until(due), if due.is_some() => {
                    let why = due.map_or("", |(_, why)| why.as_str());
                    held.hand_over(deliveries.as_ref(), &shutdown, why).await;
                    continue;
                }
                read = events.recv() => match read {
                    Some(read) => read,
                    None => break,
                },
            };
            let go_on = session
                .on_event(
                    event.event,
                    (event.earliest, event.arrived),
                    &mut held,
                    deliveries.as_ref(),
                    &shutdown,
                    &dead_letters,
                )
                .await;
            if matches!(go_on, Next::Resume) {
                // Reconnects once the backoff is over.
                let _ = resume.try_send(());
            }
            if matches!(go_on, Next::Stop) {
                break;
            }
        }
        poller.abort();
        for t in tasks {
            t.abort();
        }
    }
}

/// Starts the task that reads the broker connection ([`forward_events`]),
/// paced for `commit_delay`.
fn start_reader(
    eventloop: rumqttc::EventLoop,
    client: &Client,
    config: &Mqtt,
    commit_delay: Duration,
    acked: &Arc<AckClock>,
    stats: &Arc<Stats>,
) -> (
    mpsc::Receiver<super::reader::Read>,
    mpsc::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let pace = Pace::new(commit_delay);
    log::debug!(
        "MQTT reads pause up to {:?} between light reads",
        pace.pause()
    );
    let broker = (!config.url.tls).then(|| (config.url.host.clone(), config.url.port));
    let (acked, stats) = (acked.clone(), stats.clone());
    forward_events(
        eventloop,
        client,
        pace,
        broker,
        move || acked.last(),
        move || Stats::get(&stats.points_stamped),
    )
}

/// What the session's loop does after an event.
enum Next {
    Go,
    /// Go on, and let the poller reconnect (after a failed connection).
    Resume,
    Stop,
}

/// The intake's tasks beside the event loop: the acker, the status
/// publisher and the watchdog beat.
struct Helpers {
    client: Client,
    acks: mpsc::UnboundedReceiver<AckToken>,
    /// With `publish_status`: the report and its topic.
    status: Option<(Arc<super::status::Reporter>, String)>,
    status_interval: Duration,
    connected: tokio::sync::watch::Receiver<bool>,
    beat: Option<(Arc<Beat>, Duration)>,
}

impl Helpers {
    /// Spawns them; returns their handles, the connection number the
    /// acker checks tokens against, and the clock of its last ack.
    fn spawn(
        self,
    ) -> (
        Vec<tokio::task::JoinHandle<()>>,
        Arc<AtomicU64>,
        Arc<AckClock>,
    ) {
        let mut tasks = Vec::new();
        let status_topic = self.status.as_ref().map(|(_, topic)| topic.clone());
        if let Some((reporter, topic)) = self.status {
            tasks.push(tokio::spawn(publish_status(
                self.client.clone(),
                topic,
                reporter,
                self.status_interval,
                self.connected,
            )));
        }
        let connection = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AckClock::new());
        tasks.push(tokio::spawn(send_acks(
            self.client,
            self.acks,
            connection.clone(),
            acked.clone(),
            status_topic,
        )));
        if let Some((beat, every)) = self.beat {
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    beat.beat();
                }
            }));
        }
        (tasks, connection, acked)
    }
}

/// The session's options: a persistent session with manual acks, the
/// broker's TLS and login, and a last will when the status is published.
fn options(config: &Mqtt, status_topic: Option<&str>) -> MqttOptions {
    let mut options = MqttOptions::new(&config.client_id, &config.url.host, config.url.port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        // A larger packet is refused by its header, before it is read;
        // the connection drops and `oversize` clears it off the session.
        .set_max_packet_size(incoming_limit(config.max_packet_size), 64 * 1024);
    if let Some(tls) = &config.tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.0.clone()),
        ));
    }
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        options.set_credentials(user, password.expose());
    } else if let Some(user) = &config.username {
        options.set_credentials(user, "");
    }
    if let Some(topic) = status_topic {
        // The broker says "offline" for us if we vanish without a word.
        options.set_last_will(rumqttc::LastWill::new(
            topic,
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    }
    options
}

/// What the event loop keeps between events.
struct Session {
    client: Client,
    config: Mqtt,
    stats: Arc<Stats>,
    broker: String,
    /// Bytes of messages between here and the appender: with the broker's
    /// in-flight window this bounds what a flood of large messages can
    /// hold in memory.
    budget: Arc<tokio::sync::Semaphore>,
    budget_bytes: usize,
    /// Number of the current broker connection, for ack tokens.
    current: u64,
    connection: Arc<AtomicU64>,
    connected: tokio::sync::watch::Sender<bool>,
    backoff: Backoff,
    /// Set once the broker has confirmed the configured subscriptions.
    subscribed_once: bool,
    subscribed: Box<dyn Fn() + Send>,
    /// Filters a reload added that the broker has not confirmed yet.
    unconfirmed: Vec<String>,
    drops: DropWatch,
    /// Brokers answer SUBSCRIBEs in order: what each SubAck is for.
    suback_for: std::collections::VecDeque<Subscribed>,
}

impl Session {
    fn new(
        client: Client,
        config: Mqtt,
        stats: Arc<Stats>,
        connection: Arc<AtomicU64>,
        connected: tokio::sync::watch::Sender<bool>,
        subscribed: Box<dyn Fn() + Send>,
    ) -> Session {
        let budget_bytes = queue_bytes(config.max_packet_size);
        Session {
            client,
            broker: format!("{}:{}", config.url.host, config.url.port),
            config,
            stats,
            budget: Arc::new(tokio::sync::Semaphore::new(budget_bytes)),
            budget_bytes,
            current: 0,
            connection,
            connected,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 0.25),
            subscribed_once: false,
            subscribed,
            unconfirmed: Vec::new(),
            drops: DropWatch::default(),
            suback_for: std::collections::VecDeque::new(),
        }
    }

    fn set_connected(&self, up: bool) {
        self.stats.mqtt_connected.store(up, Ordering::Relaxed);
        self.connected.send_replace(up);
    }

    fn on_connack(&mut self, ack: &rumqttc::ConnAck) {
        self.backoff.reset();
        self.set_connected(true);
        self.current = self.connection.fetch_add(1, Ordering::SeqCst) + 1;
        log::info!(
            "connected to MQTT broker {} (session present: {})",
            self.broker,
            ack.session_present
        );
        // A broker that kept our session kept our subscriptions too;
        // subscribing again would replay retained messages. SUBSCRIBEs of
        // the old connection that were never answered are gone with it.
        self.suback_for.clear();
        if !ack.session_present || !self.subscribed_once {
            let filters = self
                .config
                .subscribe
                .iter()
                .map(|s| rumqttc::SubscribeFilter::new(s.topic.clone(), QoS::AtLeastOnce));
            self.unconfirmed.clear();
            // Not awaited: this task is the one that drains the request
            // queue the call would wait on.
            match self.client.try_subscribe_many(filters) {
                Ok(()) => self.suback_for.push_back(Subscribed::Configured),
                Err(e) => log::error!("cannot subscribe: {e}"),
            }
            // Apart, so that a broker that refuses it (or disconnects for
            // it) costs only the warning.
            if self.config.watch_broker_drops
                && self
                    .client
                    .try_subscribe(BROKER_DROPS, QoS::AtMostOnce)
                    .is_ok()
            {
                self.suback_for.push_back(Subscribed::BrokerDrops);
            }
        } else if !self.unconfirmed.is_empty() {
            // Added by a reload and not confirmed before the connection
            // dropped: the kept session lacks them.
            let filters = self
                .unconfirmed
                .iter()
                .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
            if self.client.try_subscribe_many(filters).is_ok() {
                self.suback_for
                    .push_back(Subscribed::Added(self.unconfirmed.clone()));
            }
        }
    }

    fn on_suback(&mut self, ack: &rumqttc::SubAck) {
        match self.suback_for.pop_front() {
            Some(Subscribed::BrokerDrops) => {
                log::debug!("broker drop counter subscription: {:?}", ack.return_codes);
            }
            Some(Subscribed::Added(topics)) => {
                self.unconfirmed.retain(|t| !topics.contains(t));
                for (topic, code) in topics.iter().zip(&ack.return_codes) {
                    match code {
                        SubscribeReasonCode::Failure => {
                            log::error!("broker refused the new subscription to {topic:?}")
                        }
                        SubscribeReasonCode::Success(qos) => {
                            log::info!("subscribed to {topic:?} at {qos:?} (reload)")
                        }
                    }
                }
            }
            Some(Subscribed::Configured) | None => {
                for (sub, code) in self.config.subscribe.iter().zip(&ack.return_codes) {
                    match code {
                        SubscribeReasonCode::Failure => {
                            log::error!("broker refused the subscription to {:?}", sub.topic)
                        }
                        SubscribeReasonCode::Success(qos) => {
                            log::info!("subscribed to {:?} at {qos:?}", sub.topic)
                        }
                    }
                }
                if !self.subscribed_once {
                    self.subscribed_once = true;
                    (self.subscribed)();
                }
            }
        }
    }

    /// Acts on one connection event; says whether the loop goes on.
    async fn on_event(
        &mut self,
        event: Polled,
        times: (std::time::Instant, std::time::Instant),
        held: &mut Held,
        deliveries: Option<&mpsc::Sender<Group>>,
        shutdown: &Shutdown,
        dead_letters: &Arc<std::sync::Mutex<DeadLetters>>,
    ) -> Next {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.on_connack(&ack);
                Next::Go
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                self.on_suback(&ack);
                Next::Go
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                self.on_publish(publish, times, held, deliveries, shutdown)
                    .await;
                Next::Go
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Next::Stop,
            Ok(_) => Next::Go,
            // Stopping and the connection is gone: nothing more can be
            // acked; the broker redelivers the rest.
            Err(_) if deliveries.is_none() => {
                self.set_connected(false);
                Next::Stop
            }
            Err(e) => {
                // Stored, not dropped: the QoS 0 ones would be lost.
                held.hand_over(deliveries, shutdown, "connection lost")
                    .await;
                if self.on_error(&e, dead_letters, shutdown).await {
                    Next::Resume
                } else {
                    Next::Stop
                }
            }
        }
    }

    /// Adds a message as it came (as early as `earliest`, as [`Pace`]
    /// stamps it, and its receipt time `arrived`) to the held group,
    /// handing the group
    /// over when the group rule says so. A QoS 0 message that does not fit
    /// in the byte budget is dropped (it promises nothing); a QoS 1 message
    /// waits for room, as the broker keeps it until it is acked.
    async fn on_publish(
        &mut self,
        publish: Publish,
        (earliest, arrived): (std::time::Instant, std::time::Instant),
        held: &mut Held,
        deliveries: Option<&mpsc::Sender<Group>>,
        shutdown: &Shutdown,
    ) {
        if publish.topic == BROKER_DROPS {
            if let Some(warning) = self.drops.observe(&publish.payload) {
                log::warn!("{warning}");
            }
            return;
        }
        if deliveries.is_none() {
            // Shutting down: left unacked, the broker redelivers it.
            return;
        }
        Stats::add(&self.stats.messages_in, 1);
        let bytes = (publish.payload.len() + publish.topic.len()).min(self.budget_bytes) as u32;
        let ack = (publish.qos != QoS::AtMostOnce).then_some(AckToken {
            connection: self.current,
            pkid: publish.pkid,
        });
        let estimate = GroupRule::estimate(&publish.payload);
        if held.rule.ends_before(estimate) {
            held.hand_over(deliveries, shutdown, "page full").await;
        }
        let permit = match self.budget.clone().try_acquire_many_owned(bytes) {
            Ok(permit) => Some(permit),
            Err(_) if ack.is_none() => {
                log::warn!(
                    "dropped a QoS 0 message on {:?}: writer is behind",
                    publish.topic
                );
                return;
            }
            Err(_) => {
                // The held group holds budget too: it goes first, or this
                // wait could be for itself. Then waits while the appender
                // is behind.
                held.hand_over(deliveries, shutdown, "budget").await;
                tokio::select! {
                    permit = self.budget.clone().acquire_many_owned(bytes) => permit.ok(),
                    // Shutdown while the spool is not taking more: left
                    // unacked, the broker keeps the message.
                    _ = shutdown.wait() => return,
                }
            }
        };
        let now = std::time::Instant::now();
        held.seen_acks();
        let tail = held.tail_now();
        let why = held.rule.add_read(estimate, earliest, now, tail);
        held.group.push(Received {
            publish,
            ack,
            at: earliest,
            arrived,
            budget: permit,
        });
        if why.is_some() {
            held.hand_over(deliveries, shutdown, "size").await;
        }
    }

    /// The connection failed: clears an oversized message off the session
    /// if that was why, else waits out the backoff before reconnecting.
    /// False when the loop should end.
    async fn on_error(
        &mut self,
        e: &rumqttc::ConnectionError,
        dead_letters: &Arc<std::sync::Mutex<DeadLetters>>,
        shutdown: &Shutdown,
    ) -> bool {
        self.set_connected(false);
        if let Some(size) = oversized(e) {
            log::warn!(
                "the broker handed over a message of {size} bytes, more than mqtt.max_packet_size ({}); taking it off the session unread",
                self.config.max_packet_size
            );
            let cleared = clear_oversized(&self.config, dead_letters, &self.stats, shutdown);
            let cleared = tokio::select! {
                n = cleared => n,
                _ = shutdown.wait() => 0,
            };
            if cleared > 0 {
                // What came after it is delivered at once.
                return true;
            }
        }
        let delay = self.backoff.next_delay();
        log::warn!(
            "MQTT broker {}: {}; reconnecting in {}",
            self.broker,
            crate::error_chain(e),
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => {}
        }
        true
    }

    /// Applies reloaded subscriptions on the live session (the appender's
    /// decoder takes the new formats from the same reload).
    fn resubscribe(&mut self, new: Vec<Subscription>) {
        resubscribe(
            &self.client,
            &mut self.config,
            &mut self.suback_for,
            &mut self.unconfirmed,
            new,
        );
    }
}

/// Sends the acks the appender releases, in order, skipping those from an
/// earlier connection; when the appender is done (its sender dropped),
/// disconnects cleanly.
async fn send_acks(
    client: Client,
    mut acks: mpsc::UnboundedReceiver<AckToken>,
    connection: Arc<AtomicU64>,
    acked: Arc<AckClock>,
    status_topic: Option<String>,
) {
    while let Some(token) = acks.recv().await {
        if token.connection != connection.load(Ordering::SeqCst) {
            // The broker resends that message on the new connection; its
            // new copy is acked once stored.
            continue;
        }
        let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
        p.pkid = token.pkid;
        if let Err(e) = client.ack(&p).await {
            log::warn!("cannot queue MQTT ack: {e}");
        }
        acked.mark();
    }
    if let Some(topic) = status_topic {
        // A clean stop sends no last will: say it ourselves.
        let _ = client
            .publish(topic, QoS::AtLeastOnce, true, "offline")
            .await;
    }
    let _ = client.disconnect().await;
}

/// The messages held for the next group, and what the group rule needs
/// to know from outside: where the spool ends, and when acks went out.
struct Held {
    group: Group,
    rule: GroupRule,
    tail: Tail,
    /// The spool's tail when the last group was handed over, and where
    /// that group should end: until the appender has stored it, the next
    /// group starts at the estimate.
    tail_at_handover: u64,
    expected_tail: u64,
    acked: Arc<AckClock>,
    acked_seen: u64,
}

impl Held {
    /// Hands the held group to the appender. A group of QoS 0 messages
    /// only is dropped when the appender is behind (they promise nothing);
    /// one with QoS 1 messages waits for room. Without a channel (shutting
    /// down) or at shutdown, the group is left to the broker.
    async fn hand_over(
        &mut self,
        deliveries: Option<&mpsc::Sender<Group>>,
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
    fn tail_now(&self) -> u64 {
        let tail = self.tail.get();
        if tail != self.tail_at_handover {
            tail
        } else {
            self.expected_tail.max(tail)
        }
    }

    /// Tells the rule when acks last went out, if they did since the last
    /// message.
    fn seen_acks(&mut self) {
        let micros = self.acked.micros.load(Ordering::Relaxed);
        if micros != self.acked_seen {
            self.acked_seen = micros;
            self.rule
                .acked(self.acked.epoch + Duration::from_micros(micros));
        }
    }
}

/// When the acker last sent an ack, as microseconds since `epoch` (0:
/// never), shared without a lock between the acker task and the session.
struct AckClock {
    epoch: std::time::Instant,
    micros: AtomicU64,
}

impl AckClock {
    fn new() -> AckClock {
        AckClock {
            epoch: std::time::Instant::now(),
            micros: AtomicU64::new(0),
        }
    }

    fn last(&self) -> Option<std::time::Instant> {
        match self.micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(self.epoch + Duration::from_micros(micros)),
        }
    }

    fn mark(&self) {
        let micros = self.epoch.elapsed().as_micros().max(1) as u64;
        self.micros.store(micros, Ordering::Relaxed);
    }
}

/// Sleeps until `deadline`; forever without one (the branch is disabled
/// then anyway).
async fn sleep_until(deadline: Option<(std::time::Instant, Reason)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Publishes the status report, retained, every `interval` while the
/// broker session is up, and once at each new connection.
async fn publish_status(
    client: Client,
    topic: String,
    reporter: Arc<super::status::Reporter>,
    interval: Duration,
    mut connected: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = connected.changed() => {
                if changed.is_err() {
                    return;
                }
                if !*connected.borrow_and_update() {
                    continue;
                }
                tick.reset();
            }
            _ = tick.tick() => {
                if !*connected.borrow() {
                    continue;
                }
            }
        }
        let body = serde_json::to_vec(&reporter.report()).expect("plain data always serializes");
        if let Err(e) = client.try_publish(topic.clone(), QoS::AtLeastOnce, true, body) {
            log::debug!("cannot queue the status message: {e}");
        }
    }
}

/// Where Mosquitto publishes how many messages it dropped for queue and
/// in-flight limits (every `sys_interval`). While the daemon is away the
/// broker's queue is the only buffer, so a drop there is data lost before
/// leasegate could take it: the daemon says so. Other brokers never publish
/// it, and nothing changes.
const BROKER_DROPS: &str = "$SYS/broker/publish/messages/dropped";

#[derive(Debug, PartialEq, Eq)]
enum Subscribed {
    Configured,
    BrokerDrops,
    /// Subscriptions a reload added, in order.
    Added(Vec<String>),
}

/// Applies reloaded subscriptions on the live session (the appender's
/// decoder takes the new formats from the same reload): new filters are
/// subscribed and dropped ones unsubscribed. A message already on its way for a dropped filter finds
/// no subscription and goes to the dead-letter file, acked: nothing is
/// lost silently.
fn resubscribe(
    client: &Client,
    config: &mut Mqtt,
    suback_for: &mut std::collections::VecDeque<Subscribed>,
    unconfirmed: &mut Vec<String>,
    new: Vec<Subscription>,
) {
    let had = |t: &str| config.subscribe.iter().any(|s| s.topic == t);
    let added: Vec<String> = new
        .iter()
        .filter(|s| !had(&s.topic))
        .map(|s| s.topic.clone())
        .collect();
    unconfirmed.retain(|t| new.iter().any(|s| &s.topic == t));
    let removed: Vec<String> = config
        .subscribe
        .iter()
        .filter(|s| !new.iter().any(|n| n.topic == s.topic))
        .map(|s| s.topic.clone())
        .collect();
    config.subscribe = new;
    if !added.is_empty() {
        let filters = added
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        unconfirmed.extend(added.iter().cloned());
        match client.try_subscribe_many(filters) {
            Ok(()) => suback_for.push_back(Subscribed::Added(added)),
            Err(e) => log::error!("cannot subscribe to the reloaded filters: {e}"),
        }
    }
    for topic in removed {
        match client.try_unsubscribe(topic.clone()) {
            Ok(()) => log::info!("unsubscribed from {topic:?} (reload)"),
            Err(e) => log::error!("cannot unsubscribe from {topic:?}: {e}"),
        }
    }
}

/// Follows the broker's drop counter across reconnects.
#[derive(Default)]
struct DropWatch {
    last: Option<u64>,
}

impl DropWatch {
    /// A warning when the broker reports drops not reported before.
    fn observe(&mut self, payload: &[u8]) -> Option<String> {
        let now: u64 = std::str::from_utf8(payload).ok()?.trim().parse().ok()?;
        let before = self.last.replace(now);
        let hint = "it drops QoS 1 messages beyond max_queued_messages for a client that is \
                    away or behind; if they were this gateway's, they are lost: raise the \
                    limit (README: What to set on the gateway's Mosquitto)";
        match before {
            None if now > 0 => Some(format!(
                "the MQTT broker reports {now} dropped messages since it started; {hint}"
            )),
            Some(b) if now > b => Some(format!(
                "the MQTT broker dropped {} more messages ({now} since it started); {hint}",
                now - b
            )),
            _ => None,
        }
    }
}

/// The largest packet taken from the broker: a payload of
/// `max_packet_size` with the longest topic MQTT allows and a packet id. A
/// payload just over the limit still arrives and is refused by the decoder
/// (kept whole in the dead-letter record); anything larger is refused by
/// its header.
fn incoming_limit(max_packet_size: u64) -> usize {
    max_packet_size as usize + 2 + 65_535 + 2
}

/// The size of the packet the client refused for its size, if that is why
/// the connection dropped.
fn oversized(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(size),
        )) => Some(*size),
        _ => None,
    }
}

/// Runs [`super::oversize::clear`] on a thread of its own (it blocks on
/// the network) while the session is down; each message it takes is in
/// the dead-letter file before it is acked.
async fn clear_oversized(
    config: &Mqtt,
    dead_letters: &Arc<std::sync::Mutex<DeadLetters>>,
    stats: &Arc<Stats>,
    shutdown: &Shutdown,
) -> usize {
    let (done, result) = tokio::sync::oneshot::channel();
    let (config, dead_letters, stats, shutdown) = (
        config.clone(),
        dead_letters.clone(),
        stats.clone(),
        shutdown.clone(),
    );
    let spawned = std::thread::Builder::new()
        .name("mqtt-clear".into())
        .spawn(move || {
            let limit = incoming_limit(config.max_packet_size);
            let mut record = |c: &super::oversize::Cleared| {
                let slot = config
                    .subscribe
                    .iter()
                    .position(|s| topic_matches(&s.topic, &c.topic));
                Stats::add(&stats.messages_in, 1);
                if let Some(counter) = stats.rejected.get(slot.unwrap_or(config.subscribe.len())) {
                    Stats::add(counter, 1);
                }
                let reason = format!(
                    "{} bytes, more than mqtt.max_packet_size ({}); taken off the session unread, its first {} bytes kept",
                    c.bytes,
                    config.max_packet_size,
                    c.sample.len()
                );
                log::warn!("rejected message on {:?}: {reason}", c.topic);
                dead_letters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .try_record(&Rejection {
                        source: Source::Mqtt,
                        topic: c.topic.clone(),
                        subscription: slot
                            .map(|i| config.subscribe[i].topic.clone())
                            .unwrap_or_default(),
                        reason,
                        payload: c.sample.clone(),
                    })
            };
            let outcome = super::oversize::clear(&config, limit, &mut record, &shutdown);
            let _ = done.send(outcome);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the thread that clears an oversized message: {e}");
        return 0;
    }
    match result.await {
        Ok(Ok(done)) => {
            if done.lost_qos0 > 0 {
                log::warn!(
                    "{} QoS 0 message(s) reached the clearing connection and are lost",
                    done.lost_qos0
                );
            }
            if done.cleared == 0 {
                log::info!("no oversized message was waiting any more");
            } else {
                log::info!(
                    "{} oversized message(s) taken off the session",
                    done.cleared
                );
            }
            done.cleared
        }
        Ok(Err(e)) => {
            log::warn!(
                "could not clear the oversized message, trying again after reconnecting: {}",
                crate::error_chain(&e)
            );
            0
        }
        Err(_) => 0,
    }
}

/// Bytes of payload allowed between the session and the appender:
/// room for a few of the largest messages taken, and never less than 8 MiB
/// so that small messages stream.
fn queue_bytes(max_packet_size: u64) -> usize {
    (max_packet_size as usize)
        .saturating_mul(2)
        .clamp(8 << 20, u32::MAX as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_drops_are_reported_once_each() {
        let mut w = DropWatch::default();
        assert!(w.observe(b"0").is_none());
        let first = w.observe(b"400").unwrap();
        assert!(
            first.contains("dropped 400 more messages (400 since"),
            "{first}"
        );
        assert!(w.observe(b"400").is_none());
        assert!(w.observe(b"not a number").is_none());
        // Seen for the first time with drops already counted.
        let mut w = DropWatch::default();
        let first = w.observe(b"12\n").unwrap();
        assert!(first.contains("reports 12 dropped messages"), "{first}");
        // A broker restart resets its counter: no warning for going down.
        assert!(w.observe(b"3").is_none());
    }
}
